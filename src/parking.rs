//! Parking GETORMARK callers inside the server (glue over the lease table).
//!
//! Callers block on the key with `BlockClientOnKeys`. A FILL or SET signals the key and every
//! parked caller re-evaluates in `on_ready` (HIT, or keep waiting). Redis 7.0 serves module
//! clients only when the key exists, so when a lease ends without a value (ABANDON, deadline,
//! invalidation) the module itself picks exactly one caller, grants it a lease and unblocks it:
//! for key-blocked clients Redis runs the timeout callback, which answers `MISS token`.
// The raw pointers taken by these functions are handles Redis passes to callbacks.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use crate::commands::lease::{evaluate, reply_busy, reply_miss, retry_ms, GetOptions, Verdict};
use crate::engine;
use crate::keyspace::{self, now_ms};
use crate::mem::Shrink;
use crate::state::{with_state, ParkedClient};
use crate::stats::Event;
use redis_module::{raw, Context, RedisString};
use std::os::raw::{c_int, c_void};

/// What a parked caller carries through the blocking callbacks.
struct Parked {
    id: u64,
    db: i32,
    key: Vec<u8>,
    opts: GetOptions,
    /// The tenant this caller's events are counted under.
    tenant: Vec<u8>,
}

/// Blocks the caller on `key` for at most `wait_ms`. Returns false when Redis refused to block.
pub fn park(ctx: &Context, key: &RedisString, opts: GetOptions, tenant: Vec<u8>, wait_ms: i64) -> bool {
    let Some(block) = api!(RedisModule_BlockClientOnKeys) else {
        return false;
    };
    let db = keyspace::selected_db(ctx.ctx);
    let id = with_state(|s| {
        s.next_waiter_id = s.next_waiter_id.wrapping_add(1);
        s.next_waiter_id
    });
    let lease_ms = opts.lease_ms;
    let parked = Box::into_raw(Box::new(Parked {
        id,
        db,
        key: key.as_slice().to_vec(),
        opts,
        tenant: tenant.clone(),
    }));
    let mut keys = [key.inner];
    // SAFETY: ctx is the command's context; keys outlives the call (Redis copies the names);
    // privdata is ours until free_parked runs.
    let handle = unsafe {
        block(
            ctx.ctx,
            Some(on_ready),
            Some(on_timeout),
            Some(free_parked),
            wait_ms,
            keys.as_mut_ptr(),
            1,
            parked.cast(),
        )
    };
    if handle.is_null() {
        // SAFETY: Redis did not take the privdata.
        drop(unsafe { Box::from_raw(parked) });
        return false;
    }
    let name = key.as_slice();
    with_state(|s| {
        s.leases.add_waiter(db, name, id);
        s.parked.insert(id, ParkedClient { handle: handle as usize, lease_ms, tenant: tenant.clone() });
    });
    engine::record(Event::Wait, &tenant, name);
    arm_lease_timer(ctx, db, name);
    true
}

fn parked_of<'a>(ctx: *mut raw::RedisModuleCtx) -> Option<&'a Parked> {
    let get = api!(RedisModule_GetBlockedClientPrivateData)?;
    // SAFETY: the privdata of our blocked clients is always a Box<Parked>, alive until free_parked.
    unsafe { get(ctx).cast::<Parked>().as_ref() }
}

/// The key was signalled (a FILL or SET landed): answer, or return an error status to keep waiting.
unsafe extern "C" fn on_ready(ctx: *mut raw::RedisModuleCtx, _argv: *mut *mut raw::RedisModuleString, _argc: c_int) -> c_int {
    let Some(p) = parked_of(ctx) else {
        return raw::REDISMODULE_ERR as c_int;
    };
    let context = Context::new(ctx);
    let key = keyspace::string(&context, &p.key);
    match evaluate(&context, &key, p.db, &p.opts) {
        Verdict::Busy(_) => raw::REDISMODULE_ERR as c_int,
        Verdict::WrongType => {
            context.reply(Err(crate::commands::args::wrongtype()));
            leave(p, Event::WaitServed);
            raw::REDISMODULE_OK as c_int
        }
        Verdict::Replied => {
            leave(p, Event::WaitServed);
            raw::REDISMODULE_OK as c_int
        }
    }
}

/// The wait ended: either the module handed this caller a lease (→ MISS token) or its WAIT
/// elapsed (→ BUSY).
unsafe extern "C" fn on_timeout(ctx: *mut raw::RedisModuleCtx, _argv: *mut *mut raw::RedisModuleString, _argc: c_int) -> c_int {
    let Some(p) = parked_of(ctx) else {
        return raw::REDISMODULE_OK as c_int;
    };
    let context = Context::new(ctx);
    let (handoff, released) = with_state(|s| (s.leases.take_handoff(p.id), s.leases.take_released(p.id)));
    match handoff {
        Some(token) => {
            reply_miss(&context, &token);
            engine::record(Event::LeaseGranted, &p.tenant, &p.key);
            engine::record(Event::Miss, &p.tenant, &p.key);
            leave(p, Event::WaitServed);
        }
        // Its database was flushed, swapped or reloaded: retry at once against what is there now.
        None if released => {
            reply_busy(&context, 1);
            engine::record(Event::Miss, &p.tenant, &p.key);
            leave(p, Event::WaitServed);
        }
        None => {
            let retry = with_state(|s| retry_ms(&s.leases, p.db, &p.key, now_ms()));
            reply_busy(&context, retry);
            engine::record(Event::Miss, &p.tenant, &p.key);
            leave(p, Event::WaitTimeout);
        }
    }
    raw::REDISMODULE_OK as c_int
}

/// Takes an answered caller out of the queue and counts how its wait ended.
fn leave(p: &Parked, how: Event) {
    with_state(|s| s.leases.remove_waiter(p.db, &p.key, p.id));
    engine::record(how, &p.tenant, &p.key);
}

/// Redis is done with the blocked client (answered, timed out or disconnected).
unsafe extern "C" fn free_parked(ctx: *mut raw::RedisModuleCtx, privdata: *mut c_void) {
    if privdata.is_null() {
        return;
    }
    let p = Box::from_raw(privdata.cast::<Parked>());
    let now = now_ms();
    // A lease handed to a caller that vanished before it could be told is released again.
    let orphaned = with_state(|s| {
        s.leases.remove_waiter(p.db, &p.key, p.id);
        s.leases.take_released(p.id);
        s.parked.remove(&p.id);
        s.parked.shrink_if_sparse();
        s.leases.take_handoff(p.id).and_then(|token| s.leases.abandon(p.db, &p.key, &token, now))
    });
    if orphaned.is_some() && !ctx.is_null() {
        hand_over(&Context::new(ctx), p.db, &p.key);
    }
}

/// When `key` has parked callers and no live lease, grants a lease to the longest-waiting one
/// and unblocks it (it answers `MISS token`); the others keep waiting.
pub fn hand_over(ctx: &Context, db: i32, key: &[u8]) {
    let now = now_ms();
    let (expired, chosen) = with_state(|s| {
        let expired = s.leases.expire(db, key, now);
        let default_ms = crate::config::get(&crate::config::LEASE_MS);
        let parked = &s.parked;
        let id = s.leases.hand_over(db, key, now, |id| {
            parked.get(&id).map_or((default_ms, Vec::new()), |p| (p.lease_ms, p.tenant.clone()))
        });
        (expired, id.and_then(|id| s.parked.get(&id)).map(|p| p.handle))
    });
    if let Some(tenant) = expired {
        engine::record(Event::LeaseExpired, &tenant, key);
    }
    let Some(handle) = chosen else {
        return;
    };
    if let Some(unblock) = api!(RedisModule_UnblockClient) {
        // SAFETY: the handle stays valid until free_parked, which removes it from `parked`.
        unsafe { unblock(handle as *mut raw::RedisModuleBlockedClient, std::ptr::null_mut()) };
    }
    arm_lease_timer(ctx, db, key);
}

/// Answers at once every caller parked in the databases `dbs` selects (all for `None`) with
/// `BUSY 1` and drops those databases' leases: after FLUSHDB, FLUSHALL, SWAPDB or a dataset
/// reload the value they waited for no longer belongs there, and a retry sees what does.
pub fn release_dbs(dbs: Option<&[i32]>) {
    let handles: Vec<usize> = with_state(|s| {
        let ids = s.leases.release_dbs(dbs);
        ids.iter().filter_map(|id| s.parked.get(id)).map(|p| p.handle).collect()
    });
    let Some(unblock) = api!(RedisModule_UnblockClient) else {
        return;
    };
    for handle in handles {
        // SAFETY: the handle stays valid until free_parked, which removes it from `parked`;
        // Redis answers it from on_timeout, which sees it released.
        unsafe { unblock(handle as *mut raw::RedisModuleBlockedClient, std::ptr::null_mut()) };
    }
}

/// Wakes the callers parked on a key that just received a value.
pub fn signal_ready(ctx: &Context, db: i32, key: &RedisString) {
    if with_state(|s| s.leases.waiters_on(db, key.as_slice())) == 0 {
        return;
    }
    if let Some(signal) = api!(RedisModule_SignalKeyAsReady) {
        // SAFETY: ctx and key are live for this call.
        unsafe { signal(ctx.ctx, key.inner) };
    }
}

/// Arms (once per key) a timer at the current lease's deadline, so parked callers are handed
/// the lease when its holder neither fills nor abandons.
pub fn arm_lease_timer(ctx: &Context, db: i32, key: &[u8]) {
    let now = now_ms();
    let delay = with_state(|s| {
        let deadline = s.leases.current(db, key, now)?.deadline_ms;
        if s.leases.waiters_on(db, key) == 0 || !s.timers.insert((db, key.to_vec())) {
            return None;
        }
        Some(deadline.saturating_sub(now).saturating_add(1).max(1))
    });
    let (Some(delay), Some(create)) = (delay, api!(RedisModule_CreateTimer)) else {
        return;
    };
    let data = Box::into_raw(Box::new((db, key.to_vec())));
    // SAFETY: the timer owns `data` until on_lease_deadline takes it back.
    unsafe { create(ctx.ctx, delay, Some(on_lease_deadline), data.cast()) };
}

unsafe extern "C" fn on_lease_deadline(ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if data.is_null() {
        return;
    }
    let (db, key) = *Box::from_raw(data.cast::<(i32, Vec<u8>)>());
    with_state(|s| s.timers.remove(&(db, key.clone())));
    let context = Context::new(ctx);
    hand_over(&context, db, &key);
    arm_lease_timer(&context, db, &key);
}
