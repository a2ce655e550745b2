//! Parking GETORMARK callers inside the server (glue over the lease table).
//!
//! Callers block on the key. A FILL or SET signals the key and every parked caller re-evaluates
//! in `on_ready` (HIT, or keep waiting). Redis 7.0 serves module clients only when the key
//! exists, so when a lease ends without a value (ABANDON, deadline, invalidation) the module
//! itself picks exactly one caller, grants it a lease and unblocks it: Redis then runs its
//! timeout callback, which answers `MISS token`.

use crate::accounting::record;
use crate::stampede::{evaluate, reply_busy, reply_miss, retry_ms, GetOptions, Verdict};
use crate::ffi::blocking::{self, Handle, Parkable};
use crate::keyspace::{self, now_ms};
use crate::mem::Shrink;
use crate::state::{with_state, ParkedClient};
use crate::stats::Event;
use redis_module::{Context, RedisString};

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
    let db = keyspace::selected_db(ctx.ctx);
    let id = with_state(|s| {
        s.next_waiter_id = s.next_waiter_id.wrapping_add(1);
        s.next_waiter_id
    });
    let lease_ms = opts.lease_ms;
    let parked = Parked { id, db, key: key.as_slice().to_vec(), opts, tenant: tenant.clone() };
    let Some(handle) = blocking::block_on_key(ctx, key, wait_ms, parked) else {
        return false;
    };
    let name = key.as_slice();
    with_state(|s| {
        s.leases.add_waiter(db, name, id);
        s.parked.insert(id, ParkedClient { handle, lease_ms, tenant: tenant.clone() });
    });
    record(Event::Wait, &tenant, name);
    arm_lease_timer(ctx, db, name);
    true
}

impl Parkable for Parked {
    /// The key was signalled (a FILL or SET landed): answer, or keep waiting.
    fn on_ready(&self, ctx: &Context) -> bool {
        let key = keyspace::string(ctx, &self.key);
        match evaluate(ctx, &key, self.db, &self.opts) {
            Verdict::Busy(_) => false,
            Verdict::WrongType => {
                ctx.reply(Err(crate::commands::args::wrongtype()));
                self.leave(Event::WaitServed);
                true
            }
            Verdict::Replied => {
                self.leave(Event::WaitServed);
                true
            }
        }
    }

    /// The wait ended: the module handed this caller a lease (→ MISS token), released it after
    /// a flush or swap (→ BUSY 1), or its WAIT elapsed (→ BUSY).
    fn on_timeout(&self, ctx: &Context) {
        let (handoff, released) = with_state(|s| (s.leases.take_handoff(self.id), s.leases.take_released(self.id)));
        match handoff {
            Some(token) => {
                reply_miss(ctx, &token);
                record(Event::LeaseGranted, &self.tenant, &self.key);
                record(Event::Miss, &self.tenant, &self.key);
                self.leave(Event::WaitServed);
            }
            // Its database was flushed, swapped or reloaded: retry at once against what is there now.
            None if released => {
                reply_busy(ctx, 1);
                record(Event::Miss, &self.tenant, &self.key);
                self.leave(Event::WaitServed);
            }
            None => {
                let retry = with_state(|s| retry_ms(&s.leases, self.db, &self.key, now_ms()));
                reply_busy(ctx, retry);
                record(Event::Miss, &self.tenant, &self.key);
                self.leave(Event::WaitTimeout);
            }
        }
    }

    /// Redis is done with the blocked client (answered, timed out or disconnected). A lease
    /// handed to a caller that vanished before it could be told is released again.
    fn on_free(self, ctx: Option<&Context>) {
        let now = now_ms();
        let orphaned = with_state(|s| {
            s.leases.remove_waiter(self.db, &self.key, self.id);
            s.leases.take_released(self.id);
            s.parked.remove(&self.id);
            s.parked.shrink_if_sparse();
            s.leases.take_handoff(self.id).and_then(|token| s.leases.abandon(self.db, &self.key, &token, now))
        });
        if let (Some(_), Some(ctx)) = (orphaned, ctx) {
            hand_over(ctx, self.db, &self.key);
        }
    }
}

impl Parked {
    /// Takes an answered caller out of the queue and counts how its wait ended.
    fn leave(&self, how: Event) {
        with_state(|s| s.leases.remove_waiter(self.db, &self.key, self.id));
        record(how, &self.tenant, &self.key);
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
        record(Event::LeaseExpired, &tenant, key);
    }
    let Some(handle) = chosen else {
        return;
    };
    blocking::unblock(handle);
    arm_lease_timer(ctx, db, key);
}

/// Answers at once every caller parked in the databases `dbs` selects (all for `None`) with
/// `BUSY 1` and drops those databases' leases: after FLUSHDB, FLUSHALL, SWAPDB or a dataset
/// reload the value they waited for no longer belongs there, and a retry sees what does.
pub fn release_dbs(dbs: Option<&[i32]>) {
    let handles: Vec<Handle> = with_state(|s| {
        let ids = s.leases.release_dbs(dbs);
        ids.iter().filter_map(|id| s.parked.get(id)).map(|p| p.handle).collect()
    });
    for handle in handles {
        blocking::unblock(handle);
    }
}

/// Wakes the callers parked on a key that just received a value.
pub fn signal_ready(ctx: &Context, db: i32, key: &RedisString) {
    if with_state(|s| s.leases.waiters_on(db, key.as_slice())) > 0 {
        blocking::signal_key_ready(ctx, key);
    }
}

/// Arms a timer at the current lease's deadline, so parked callers are handed the lease when
/// its holder neither fills nor abandons. One timer per key, re-armed when a lease ends
/// earlier than the armed one (a shorter lease handed to a waiter).
pub fn arm_lease_timer(ctx: &Context, db: i32, key: &[u8]) {
    let now = now_ms();
    let armed = with_state(|s| {
        let deadline = s.leases.current(db, key, now)?.deadline_ms;
        if s.leases.waiters_on(db, key) == 0 {
            return None;
        }
        let slot = s.timers.entry((db, key.to_vec())).or_insert(i64::MAX);
        if *slot <= deadline {
            return None;
        }
        *slot = deadline;
        Some(deadline)
    });
    if let Some(deadline) = armed {
        let delay = deadline.saturating_sub(now).saturating_add(1).max(1);
        blocking::start_timer(ctx, delay, (db, key.to_vec(), deadline), on_lease_deadline);
    }
}

fn on_lease_deadline(ctx: &Context, (db, key, deadline): (i32, Vec<u8>, i64)) {
    let k = (db, key);
    // Only the timer for the armed deadline clears the record (an earlier one replaced it).
    with_state(|s| {
        if s.timers.get(&k) == Some(&deadline) {
            s.timers.remove(&k);
            s.timers.shrink_if_sparse();
        }
    });
    hand_over(ctx, k.0, &k.1);
    arm_lease_timer(ctx, k.0, &k.1);
}
