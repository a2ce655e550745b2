//! The stampede decision for one GETORMARK: HIT, MISS (a new lease), STALE (with a refresh
//! lease, or without when someone refreshes), or BUSY; shared by the command and by parked
//! callers re-evaluated when their key is signalled.

use crate::accounting::{record, stats_tenant};
use crate::entry::Entry;
use crate::fences::Action;
use crate::ffi;
use crate::keyspace::{now_ms, Key, Kind};
use crate::lease::Leases;
use crate::state::with_state;
use crate::stats::Event;
use redis_module::{Context, RedisString};

/// Longest BUSY retry suggestion, whatever is left on the lease.
const MAX_RETRY_MS: i64 = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct GetOptions {
    pub lease_ms: i64,
    /// XFetch beta, when EARLY was given.
    pub early_beta: Option<f64>,
    /// The TENANT option: whom a miss on a key without an entry is counted for (and the tenant
    /// recorded on a lease granted then).
    pub tenant: Option<Vec<u8>>,
}

/// What evaluating GETORMARK did.
pub enum Verdict {
    /// The answer (HIT, MISS, STALE) has been sent.
    Replied,
    /// No value and somebody else holds the lease: retry in this many ms.
    Busy(i64),
    WrongType,
}

fn reply_tagged(ctx: &Context, tag: &std::ffi::CStr, items: &[&[u8]]) {
    ffi::reply::tagged(ctx, tag, items);
}

pub fn reply_miss(ctx: &Context, token: &[u8]) {
    reply_tagged(ctx, c"MISS", &[token]);
}

pub fn reply_busy(ctx: &Context, retry_ms: i64) {
    ffi::reply::tagged_number(ctx, c"BUSY", retry_ms);
}

/// Suggested retry delay: time left on the current lease, capped.
pub fn retry_ms(leases: &Leases, db: i32, key: &[u8], now: i64) -> i64 {
    leases
        .current(db, key, now)
        .map_or(1, |l| l.deadline_ms.saturating_sub(now))
        .clamp(1, MAX_RETRY_MS)
}

/// Evaluates GETORMARK for `key` now and answers unless the verdict is BUSY. Shared by the
/// command and by parked callers when their key is signalled.
pub fn evaluate(ctx: &Context, key: &RedisString, db: i32, opts: &GetOptions) -> Verdict {
    let name = key.as_slice();
    let now = now_ms();
    let mut handle = Key::read(ctx, key);
    if handle.kind() == Kind::Other {
        return Verdict::WrongType;
    }
    let ttl = handle.ttl_ms();
    if let Some(entry) = handle.entry().filter(|e| e.fence != Some(Action::Delete)) {
        let entry: &Entry = entry;
        let tenant: &[u8] = &entry.tenant;
        let (event, token) = if entry.is_fresh(ttl) && entry.fence.is_none() {
            (Event::Hit, early_refresh(entry, ttl, db, name, now, opts))
        } else {
            (Event::StaleHit, grant(db, name, now, opts.lease_ms, tenant))
        };
        match (event, &token) {
            (Event::Hit, None) => reply_tagged(ctx, c"HIT", &[&entry.value]),
            (_, Some(t)) => reply_tagged(ctx, c"STALE", &[&entry.value, t]),
            (_, None) => reply_tagged(ctx, c"STALE", &[&entry.value]),
        }
        record(event, tenant, name);
        if token.is_some() {
            record(Event::LeaseGranted, tenant, name);
        }
        return Verdict::Replied;
    }
    let tenant = stats_tenant(db, name, opts.tenant.as_deref());
    match grant(db, name, now, opts.lease_ms, &tenant) {
        Some(token) => {
            reply_miss(ctx, &token);
            record(Event::Miss, &tenant, name);
            record(Event::LeaseGranted, &tenant, name);
            Verdict::Replied
        }
        None => Verdict::Busy(with_state(|s| retry_ms(&s.leases, db, name, now))),
    }
}

/// Grants a lease (counted for `tenant`) unless a live one exists, counting a lease found past
/// its deadline.
fn grant(db: i32, key: &[u8], now: i64, lease_ms: i64, tenant: &[u8]) -> Option<Vec<u8>> {
    let (expired, token) = with_state(|s| {
        let expired = s.leases.expire(db, key, now);
        (expired, s.leases.grant(db, key, now, lease_ms, tenant))
    });
    if let Some(old_tenant) = expired {
        record(Event::LeaseExpired, &old_tenant, key);
    }
    token
}

/// XFetch: a fresh entry is handed out for refresh early with probability exp(−t / (β·Δ)),
/// t = fresh time left, Δ = how long its last fill took; never while a lease is live.
fn early_refresh(entry: &Entry, ttl: Option<i64>, db: i32, key: &[u8], now: i64, opts: &GetOptions) -> Option<Vec<u8>> {
    let beta = opts.early_beta?;
    let left = entry.fresh_ms(ttl)?;
    if entry.fill_ms == 0 {
        return None;
    }
    let p = (-(left as f64) / (beta * entry.fill_ms as f64)).exp();
    let chosen = with_state(|s| s.leases.current(db, key, now).is_none() && s.leases.next_unit() < p);
    if chosen {
        grant(db, key, now, opts.lease_ms, &entry.tenant)
    } else {
        None
    }
}

