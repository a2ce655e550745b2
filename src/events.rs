//! Keyspace and server event handlers that keep the index exact however a key appears,
//! disappears or moves. They only touch module memory (7.0 forbids keyspace writes here).
// The raw pointers taken by these functions are handles Redis passes to callbacks.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use crate::config;
use crate::engine::derived_tenant;
use crate::entry::string_bytes;
use crate::keyspace::{self, Key};
use crate::state::with_state;
use redis_module::{raw, Context, NotifyEvent};
use std::os::raw::{c_int, c_void};

/// The type's `unlink2`: the key left the keyspace (DEL, UNLINK, expiry, eviction, overwrite,
/// RENAME's old name, MOVE's source).
///
/// # Safety
/// Called by Redis with a valid key-option context.
pub unsafe extern "C" fn on_unlink(ctx: *mut raw::RedisModuleKeyOptCtx, _value: *const c_void) {
    let (Some(get_name), Some(get_db)) = (
        api!(RedisModule_GetKeyNameFromOptCtx),
        api!(RedisModule_GetDbIdFromOptCtx),
    ) else {
        return;
    };
    if ctx.is_null() {
        return;
    }
    let name = string_bytes(get_name(ctx));
    let db = get_db(ctx);
    let sep = config::NAMESPACE_SEPARATOR.get();
    // The lease stays: it is on the key, not on the value, so expiry and eviction of a stale
    // value must not void a refresher's lease. Deliberate removals void it (`on_keyspace_event`).
    with_state(|s| s.index_remove(db, name, &sep));
}

/// Generic keyspace events: a key deleted by DEL/UNLINK loses its lease; a key that arrives
/// under a new name or in a new database is (re)indexed from the entry itself, and the value
/// that arrived voids any lease on that name (as a SET would).
pub fn on_keyspace_event(ctx: &Context, _kind: NotifyEvent, event: &str, key: &[u8]) {
    let arrived = matches!(event, "rename_to" | "move_to" | "copy_to" | "restore");
    if arrived || event == "del" {
        let db = keyspace::selected_db(ctx.ctx);
        let had_lease = with_state(|s| s.leases.void(db, key));
        if had_lease {
            crate::parking::hand_over(ctx, db, key);
        }
    }
    if arrived {
        let name = keyspace::string(ctx, key);
        reindex_key(ctx.ctx, name.inner);
    }
}

/// Indexes the entry at `name` in the context's selected db (a derived tenant follows the name).
pub fn reindex_key(ctx: *mut raw::RedisModuleCtx, name: *mut raw::RedisModuleString) {
    let mut key = Key::peek(ctx, name);
    let Some(entry) = key.entry() else {
        return;
    };
    let bytes = string_bytes(name);
    if !entry.tenant_explicit {
        entry.tenant = derived_tenant(bytes);
    }
    let db = keyspace::selected_db(ctx);
    let sep = config::NAMESPACE_SEPARATOR.get();
    with_state(|s| s.index_insert(db, bytes, entry, &sep));
}

/// Calls `f(ctx, key name)` for every key of every database (the selected db is restored).
pub fn for_each_key(ctx: *mut raw::RedisModuleCtx, mut f: impl FnMut(*mut raw::RedisModuleCtx, *mut raw::RedisModuleString)) {
    let (Some(select), Some(create), Some(scan), Some(destroy)) = (
        api!(RedisModule_SelectDb),
        api!(RedisModule_ScanCursorCreate),
        api!(RedisModule_Scan),
        api!(RedisModule_ScanCursorDestroy),
    ) else {
        return;
    };
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
    let original = keyspace::selected_db(ctx);
    let mut db: c_int = 0;
    // SAFETY: ctx is a live context; SelectDb fails past the last database.
    while unsafe { select(ctx, db) } == raw::REDISMODULE_OK as c_int {
        let mut names: Vec<Vec<u8>> = Vec::new();
        // SAFETY: the cursor is created, used and destroyed here; the callback only copies names.
        unsafe {
            let cursor = create();
            while scan(ctx, cursor, Some(collect), (&mut names as *mut Vec<Vec<u8>>).cast()) != 0 {}
            destroy(cursor);
        }
        // Keys are opened only after the scan: opening may expire them, which must not happen
        // while the dictionary is being iterated.
        for name in names {
            if let Some(create_string) = api!(RedisModule_CreateString) {
                // SAFETY: creates an owned string freed below.
                let s = unsafe { create_string(ctx, name.as_ptr().cast(), name.len()) };
                if !s.is_null() {
                    f(ctx, s);
                    if let Some(free) = api!(RedisModule_FreeString) {
                        // SAFETY: freed once, created above.
                        unsafe { free(ctx, s) };
                    }
                }
            }
        }
        db = db.saturating_add(1);
    }
    // SAFETY: restoring the db the context had.
    unsafe { select(ctx, original) };
}

/// Rebuilds the whole index from the keyspace (after RDB/AOF load or a replica's full sync).
pub fn rebuild_index(ctx: *mut raw::RedisModuleCtx) {
    with_state(|s| {
        s.index.clear();
        s.stats.forget_keys();
    });
    for_each_key(ctx, reindex_key);
}

#[repr(C)]
struct SwapDbInfo {
    version: u64,
    dbnum_first: i32,
    dbnum_second: i32,
}

unsafe extern "C" fn on_flush(
    _ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    subevent: u64,
    data: *mut c_void,
) {
    if subevent != raw::REDISMODULE_SUBEVENT_FLUSHDB_START {
        return;
    }
    let Some(info) = data.cast::<raw::RedisModuleFlushInfoV1>().as_ref() else {
        return;
    };
    let db = info.dbnum;
    let sep = config::NAMESPACE_SEPARATOR.get();
    with_state(|s| {
        if db < 0 {
            s.index.clear();
        } else {
            s.index.clear_db(db);
        }
        s.recount_namespaces(&sep);
    });
    crate::parking::release_dbs((db >= 0).then_some(&[db][..]));
}

unsafe extern "C" fn on_swapdb(
    _ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    _subevent: u64,
    data: *mut c_void,
) {
    if let Some(info) = data.cast::<SwapDbInfo>().as_ref() {
        let (a, b) = (info.dbnum_first, info.dbnum_second);
        // The index follows the data; connections, their leases and parked callers stay with
        // the database number, so the leases of both are voided and their callers retry.
        with_state(|s| s.index.swap(a, b));
        crate::parking::release_dbs(Some(&[a, b]));
    }
}

unsafe extern "C" fn on_loading(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    subevent: u64,
    _data: *mut c_void,
) {
    if subevent == raw::REDISMODULE_SUBEVENT_LOADING_ENDED
        || subevent == raw::REDISMODULE_SUBEVENT_LOADING_FAILED
    {
        rebuild_index(ctx);
    } else {
        // The data set is being replaced: nothing indexed or leased survives.
        with_state(|s| {
            s.index.clear();
            s.stats.forget_keys();
        });
        crate::parking::release_dbs(None);
    }
}

/// Once a second: drop leases whose holder never filled, abandoned or came back (keys that
/// nobody asks for again would otherwise keep them forever). Parked callers of such a key are
/// still served by its deadline timer, which hands a new lease on.
#[redis_module_macros::cron_event_handler]
fn sweep_leases(_ctx: &Context, _hz: u64) {
    let now = keyspace::now_ms();
    let swept = with_state(|s| {
        if now.saturating_sub(s.last_sweep_ms) < 1000 || s.leases.is_empty() {
            return Vec::new();
        }
        s.last_sweep_ms = now;
        s.leases.sweep_expired(now)
    });
    for (_, key, tenant) in swept {
        crate::engine::record(crate::stats::Event::LeaseExpired, &tenant, &key);
    }
}

/// Subscribes the raw server events the crate does not expose with the data we need.
pub fn subscribe_server_events(ctx: &Context) -> bool {
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
