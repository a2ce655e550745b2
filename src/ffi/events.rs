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
    let phase = if subevent == raw::REDISMODULE_SUBEVENT_LOADING_ENDED || subevent == raw::REDISMODULE_SUBEVENT_LOADING_FAILED {
        Loading::Ended
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

/// Calls `f(db, key name, entry)` for every entry of every database, straight from the scan's
/// own key handles (no lookup, no expiry check, no copy of the names): the fast path for
/// rebuilding the index after a load. `f` must not touch the keyspace.
pub fn for_each_entry(ctx: &Context, mut f: impl FnMut(i32, &[u8], &mut Entry)) {
    let (Some(select), Some(create), Some(scan), Some(destroy)) = (
        api!(RedisModule_SelectDb),
        api!(RedisModule_ScanCursorCreate),
        api!(RedisModule_Scan),
        api!(RedisModule_ScanCursorDestroy),
    ) else {
        return;
    };
    type Visit<'a> = (i32, &'a mut dyn FnMut(i32, &[u8], &mut Entry));
    /// SAFETY: called by RedisModule_Scan with a key handle valid for the call and the
    /// `Visit` given as privdata.
    unsafe extern "C" fn visit(
        _ctx: *mut raw::RedisModuleCtx,
        name: *mut raw::RedisModuleString,
        key: *mut raw::RedisModuleKey,
        privdata: *mut c_void,
    ) {
        let (Some((db, f)), Some(get_type), Some(get_value)) = (
            privdata.cast::<Visit>().as_mut(),
            api!(RedisModule_ModuleTypeGetType),
            api!(RedisModule_ModuleTypeGetValue),
        ) else {
            return;
        };
        if key.is_null() || get_type(key) != super::datatype::raw_type() {
            return;
        }
        if let Some(entry) = get_value(key).cast::<Entry>().as_mut() {
            f(*db, string_bytes(name), entry);
        }
    }
    let original = keyspace::selected_db(ctx.ctx);
    let mut db: c_int = 0;
    // SAFETY: ctx is a live context; SelectDb fails past the last database.
    while unsafe { select(ctx.ctx, db) } == raw::REDISMODULE_OK as c_int {
        let mut data: Visit = (db, &mut f);
        // SAFETY: the cursor is created, used and destroyed here; the callback gets `data`.
        unsafe {
            let cursor = create();
            while scan(ctx.ctx, cursor, Some(visit), (&mut data as *mut Visit).cast()) != 0 {}
            destroy(cursor);
        }
        db = db.saturating_add(1);
    }
    // SAFETY: restoring the db the context had.
    unsafe { select(ctx.ctx, original) };
}

/// Calls `f(ctx, key name)` for every key of every database, with that database selected in
/// `ctx` (the original selection is restored).
pub fn for_each_key(ctx: &Context, mut f: impl FnMut(&Context, &RedisString)) {
    let (Some(select), Some(create), Some(scan), Some(destroy)) = (
        api!(RedisModule_SelectDb),
        api!(RedisModule_ScanCursorCreate),
        api!(RedisModule_Scan),
        api!(RedisModule_ScanCursorDestroy),
    ) else {
        return;
    };
    /// SAFETY: called by RedisModule_Scan with the Vec given as privdata.
    unsafe extern "C" fn collect(
        _ctx: *mut raw::RedisModuleCtx,
        name: *mut raw::RedisModuleString,
        _key: *mut raw::RedisModuleKey,
        privdata: *mut c_void,
    ) {
        if let Some(names) = privdata.cast::<Vec<Vec<u8>>>().as_mut() {
            names.push(string_bytes(name).to_vec());
        }
    }
    let original = keyspace::selected_db(ctx.ctx);
    let mut db: c_int = 0;
    // SAFETY: ctx is a live context; SelectDb fails past the last database.
    while unsafe { select(ctx.ctx, db) } == raw::REDISMODULE_OK as c_int {
        let mut names: Vec<Vec<u8>> = Vec::new();
        // SAFETY: the cursor is created, used and destroyed here; the callback only copies names.
        unsafe {
            let cursor = create();
            while scan(ctx.ctx, cursor, Some(collect), (&mut names as *mut Vec<Vec<u8>>).cast()) != 0 {}
            destroy(cursor);
        }
        // Keys are opened only after the scan: opening may expire them, which must not happen
        // while the dictionary is being iterated.
        for name in names {
            f(ctx, &keyspace::string(ctx, &name));
        }
        db = db.saturating_add(1);
    }
    // SAFETY: restoring the db the context had.
    unsafe { select(ctx.ctx, original) };
}
