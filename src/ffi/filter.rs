//! A command filter that lets the module act on the keys a command names before the command
//! runs (native commands included), through a detached context of its own.

use super::strings::string_bytes;
use redis_module::{raw, Context};
use std::os::raw::c_int;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

/// What the filter asks the module.
pub struct FilterHooks {
    /// Cheap: whether anything needs looking at (false on nearly every command).
    pub active: fn() -> bool,
    /// Called with each argument after the command name while `active` is true.
    pub on_argument: fn(&Context, &[u8]),
}

static HOOKS: OnceLock<FilterHooks> = OnceLock::new();
static DETACHED: AtomicPtr<raw::RedisModuleCtx> = AtomicPtr::new(std::ptr::null_mut());

/// Registers the filter; false when the server offers no filters.
pub fn register(ctx: &Context, hooks: FilterHooks) -> bool {
    let (Some(register), Some(detach)) = (api!(RedisModule_RegisterCommandFilter), api!(RedisModule_GetDetachedThreadSafeContext)) else {
        return false;
    };
    let _ = HOOKS.set(hooks);
    // SAFETY: ctx is the OnLoad context; the detached context lives as long as the module.
    let detached = unsafe { detach(ctx.ctx) };
    if detached.is_null() {
        return false;
    }
    DETACHED.store(detached, Ordering::Relaxed);
    // SAFETY: on_command stays valid for the module's lifetime. NOSELF: the module's own
    // RM_Calls are not filtered.
    !unsafe { register(ctx.ctx, Some(on_command), raw::REDISMODULE_CMDFILTER_NOSELF as c_int) }.is_null()
}

/// SAFETY: called by Redis on the main thread with a filter context valid for this call.
unsafe extern "C" fn on_command(fctx: *mut raw::RedisModuleCommandFilterCtx) {
    let Some(hooks) = HOOKS.get() else {
        return;
    };
    if !(hooks.active)() {
        return;
    }
    let (Some(count), Some(arg)) = (api!(RedisModule_CommandFilterArgsCount), api!(RedisModule_CommandFilterArgGet)) else {
        return;
    };
    let detached = DETACHED.load(Ordering::Relaxed);
    if detached.is_null() || fctx.is_null() {
        return;
    }
    let ctx = Context::new(detached);
    for pos in 1..count(fctx) {
        (hooks.on_argument)(&ctx, string_bytes(arg(fctx, pos)));
    }
}
