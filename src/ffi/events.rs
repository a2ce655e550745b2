//! Callbacks Redis runs when keys and databases change under the module: the type's `unlink2`,
//! the flush/swapdb/loading server events and the cron tick. They only touch module memory
//! (7.0 forbids keyspace writes there) through the hooks the module installs at load.

use super::keyspace;
use super::strings::string_bytes;
use crate::entry::Entry;
use redis_module::{raw, Context, RedisString};
use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;

/// How a dataset load went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loading {
    Started,
    Ended,
    /// The load failed (what the keyspace holds then is not the load's to say).
    Failed,
}

/// What the module does on each event (installed once, at load).
pub struct Hooks {
    /// A key left the keyspace (DEL, UNLINK, expiry, eviction, overwrite, RENAME's old name,
    /// MOVE's source): db, name.
    pub key_unlinked: fn(i32, &[u8]),
    /// FLUSHDB (Some(db)) or FLUSHALL (None) is about to run.
    pub flushed: fn(Option<i32>),
    /// SWAPDB a b happened.
    pub swapped: fn(i32, i32),
    pub loading: fn(&Context, Loading),
    /// Every server cron tick.
    pub cron: fn(&Context),
}

static HOOKS: OnceLock<Hooks> = OnceLock::new();

/// The type's `unlink2` callback.
///
/// # Safety
/// Called by Redis with a valid key-option context.
pub unsafe extern "C" fn on_unlink(ctx: *mut raw::RedisModuleKeyOptCtx, _value: *const c_void) {
    let (Some(get_name), Some(get_db), Some(hooks)) = (
        api!(RedisModule_GetKeyNameFromOptCtx),
        api!(RedisModule_GetDbIdFromOptCtx),
        HOOKS.get(),
    ) else {
        return;
    };
    if ctx.is_null() {
        return;
    }
    (hooks.key_unlinked)(get_db(ctx), string_bytes(get_name(ctx)));
}

#[repr(C)]
struct SwapDbInfo {
    version: u64,
    dbnum_first: i32,
    dbnum_second: i32,
}

/// SAFETY: called by Redis with the flush event's data.
unsafe extern "C" fn on_flush(_ctx: *mut raw::RedisModuleCtx, _eid: raw::RedisModuleEvent, subevent: u64, data: *mut c_void) {
    if subevent != raw::REDISMODULE_SUBEVENT_FLUSHDB_START {
        return;
    }
    if let (Some(info), Some(hooks)) = (data.cast::<raw::RedisModuleFlushInfoV1>().as_ref(), HOOKS.get()) {
        (hooks.flushed)((info.dbnum >= 0).then_some(info.dbnum));
    }
}

/// SAFETY: called by Redis with the swapdb event's data.
unsafe extern "C" fn on_swapdb(_ctx: *mut raw::RedisModuleCtx, _eid: raw::RedisModuleEvent, _subevent: u64, data: *mut c_void) {
    if let (Some(info), Some(hooks)) = (data.cast::<SwapDbInfo>().as_ref(), HOOKS.get()) {
        (hooks.swapped)(info.dbnum_first, info.dbnum_second);
    }
}

/// SAFETY: called by Redis with a valid context.
unsafe extern "C" fn on_loading(ctx: *mut raw::RedisModuleCtx, _eid: raw::RedisModuleEvent, subevent: u64, _data: *mut c_void) {
    let Some(hooks) = HOOKS.get() else {
        return;
    };
    let phase = if subevent == raw::REDISMODULE_SUBEVENT_LOADING_ENDED {
        Loading::Ended
    } else if subevent == raw::REDISMODULE_SUBEVENT_LOADING_FAILED {
        Loading::Failed
    } else {
        Loading::Started
    };
    (hooks.loading)(&Context::new(ctx), phase);
}

#[redis_module_macros::cron_event_handler]
fn on_cron(ctx: &Context, _hz: u64) {
    if let Some(hooks) = HOOKS.get() {
        (hooks.cron)(ctx);
    }
}

/// Installs the hooks and subscribes the raw server events (the crate does not expose them
/// with the data we need).
pub fn subscribe(ctx: &Context, hooks: Hooks) -> bool {
    let _ = HOOKS.set(hooks);
    let Some(subscribe) = api!(RedisModule_SubscribeToServerEvent) else {
        return false;
    };
    let events: [(u64, raw::RedisModuleEventCallback); 3] = [
        (raw::REDISMODULE_EVENT_FLUSHDB, Some(on_flush)),
        (raw::REDISMODULE_EVENT_SWAPDB, Some(on_swapdb)),
        (raw::REDISMODULE_EVENT_LOADING, Some(on_loading)),
    ];
    events.into_iter().all(|(id, cb)| {
        let event = raw::RedisModuleEvent { id, dataver: 1 };
        // SAFETY: registering static callbacks during OnLoad.
        unsafe { subscribe(ctx.ctx, event, cb) == raw::REDISMODULE_OK as c_int }
    })
}

/// Runs `body(db)` with each database in turn selected in `ctx`, then restores the selection.
fn for_each_db(ctx: &Context, mut body: impl FnMut(i32)) {
    let Some(select) = api!(RedisModule_SelectDb) else {
        return;
    };
    let original = keyspace::selected_db(ctx.ctx);
    let mut db: c_int = 0;
    // SAFETY: ctx is a live context; SelectDb fails past the last database.
    while unsafe { select(ctx.ctx, db) } == raw::REDISMODULE_OK as c_int {
        body(db);
        db = db.saturating_add(1);
    }
    // SAFETY: restoring the db the context had.
    unsafe { select(ctx.ctx, original) };
}

type Visit<'a> = &'a mut dyn FnMut(&[u8], *mut raw::RedisModuleKey);

/// Calls `visit(name, key handle)` for every key of the database selected in `ctx`. The handle
/// is the scan's own (no lookup, no expiry check) and valid only during the call; `visit` must
/// not touch the keyspace.
fn scan_selected(ctx: &Context, mut visit: Visit) {
    let (Some(create), Some(scan), Some(destroy)) =
        (api!(RedisModule_ScanCursorCreate), api!(RedisModule_Scan), api!(RedisModule_ScanCursorDestroy))
    else {
        return;
    };
    /// SAFETY: called by RedisModule_Scan with a key handle valid for the call and the `Visit`
    /// given as privdata.
    unsafe extern "C" fn trampoline(
        _ctx: *mut raw::RedisModuleCtx,
        name: *mut raw::RedisModuleString,
        key: *mut raw::RedisModuleKey,
        privdata: *mut c_void,
    ) {
        if let Some(visit) = privdata.cast::<Visit>().as_mut() {
            visit(string_bytes(name), key);
        }
    }
    // SAFETY: the cursor is created, used and destroyed here; the callback gets `visit`, which
    // outlives the scan.
    unsafe {
        let cursor = create();
        while scan(ctx.ctx, cursor, Some(trampoline), (&mut visit as *mut Visit).cast()) != 0 {}
        destroy(cursor);
    }
}

/// Calls `f(db, key name, entry, expiry in unix ms)` for every entry of every database, straight from the scan's
/// own key handles (no lookup, no expiry check, no copy of the names): the fast path for
/// rebuilding the index after a load. `f` must not touch the keyspace.
pub fn for_each_entry(ctx: &Context, mut f: impl FnMut(i32, &[u8], &mut Entry, i64)) {
    let (Some(get_type), Some(get_value)) = (api!(RedisModule_ModuleTypeGetType), api!(RedisModule_ModuleTypeGetValue)) else {
        return;
    };
    for_each_db(ctx, |db| {
        scan_selected(ctx, &mut |name, key| {
            if key.is_null() {
                return;
            }
            // SAFETY: a live key handle from the scan, holding a value of some type; the value
            // is read as an Entry only when it is of this module's type.
            let entry = unsafe {
                if get_type(key) != super::datatype::raw_type() {
                    return;
                }
                Entry::borrow_mut(get_value(key))
            };
            if let Some(entry) = entry {
                f(db, name, entry, keyspace::abs_expire(key));
            }
        });
    });
}

/// Calls `f(ctx, key name)` for every key of every database, with that database selected in
/// `ctx` (the original selection is restored). Keys are opened by `f` only after each
/// database's scan: opening may expire them, which must not happen while the dictionary is
/// being iterated.
pub fn for_each_key(ctx: &Context, mut f: impl FnMut(&Context, &RedisString)) {
    for_each_db(ctx, |_| {
        let mut names: Vec<Vec<u8>> = Vec::new();
        scan_selected(ctx, &mut |name, _| names.push(name.to_vec()));
        for name in names {
            f(ctx, &keyspace::string(ctx, &name));
        }
    });
}
