//! Keyspace notifications the module emits.

use redis_module::{raw, Context, RedisString};
use std::ffi::CStr;

/// Notification classes the module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Module events (`d` in notify-keyspace-events).
    Module,
    /// Generic events such as `del` (`g`).
    Generic,
}

/// Emits `event` for `key`, skipping all work when its class is not enabled.
pub fn notify(ctx: &Context, class: Class, event: &CStr, key: &RedisString) {
    let class = match class {
        Class::Module => raw::REDISMODULE_NOTIFY_MODULE,
        Class::Generic => raw::REDISMODULE_NOTIFY_GENERIC,
    };
    let (Some(enabled), Some(emit)) = (api!(RedisModule_GetNotifyKeyspaceEvents), api!(RedisModule_NotifyKeyspaceEvent)) else {
        return;
    };
    // SAFETY: plain calls with live arguments.
    unsafe {
        if enabled() & class != 0 {
            emit(ctx.ctx, class, event.as_ptr(), key.inner);
        }
    }
}
