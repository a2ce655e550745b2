//! CACHE.GETORMARK, CACHE.FILL and CACHE.ABANDON: stampede protection.

use super::args::{parse_write_options, wrong_arity, wrongtype, CmdError, Cursor};
use crate::config::{self, MAX_MS};
use crate::engine;
use crate::entry::Entry;
use crate::keyspace::{self, now_ms, Key, Kind};
use crate::lease::Leases;
use crate::parking;
use crate::state::with_state;
use crate::stats::Event;
use crate::ffi;
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

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
    if let Some(entry) = handle.entry() {
        let tenant = entry.tenant.clone();
        let (event, token) = if entry.is_fresh(ttl) {
            (Event::Hit, early_refresh(entry, ttl, db, name, now, opts))
        } else {
            (Event::StaleHit, grant(db, name, now, opts.lease_ms, &tenant))
        };
        match (event, &token) {
            (Event::Hit, None) => reply_tagged(ctx, c"HIT", &[&entry.value]),
            (_, Some(t)) => reply_tagged(ctx, c"STALE", &[&entry.value, t]),
            (_, None) => reply_tagged(ctx, c"STALE", &[&entry.value]),
        }
        engine::record(event, &tenant, name);
        if token.is_some() {
            engine::record(Event::LeaseGranted, &tenant, name);
        }
        return Verdict::Replied;
    }
    let tenant = engine::stats_tenant(db, name, opts.tenant.as_deref());
    match grant(db, name, now, opts.lease_ms, &tenant) {
        Some(token) => {
            reply_miss(ctx, &token);
            engine::record(Event::Miss, &tenant, name);
            engine::record(Event::LeaseGranted, &tenant, name);
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
        engine::record(Event::LeaseExpired, &old_tenant, key);
    }
    token
}

/// XFetch: a fresh entry is handed out for refresh early with probability exp(−t / (β·Δ)),
/// t = fresh time left, Δ = how long its last fill took; never while a lease is live.
fn early_refresh(entry: &Entry, ttl: Option<i64>, db: i32, key: &[u8], now: i64, opts: &GetOptions) -> Option<Vec<u8>> {
    let beta = opts.early_beta?;
    let left = entry.fresh_ms(ttl)?;
    if entry.fill_ms <= 0 {
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

fn parse_get_options(mut cursor: Cursor<'_>) -> Result<(GetOptions, i64), CmdError> {
    let mut opts = GetOptions {
        lease_ms: config::get(&config::LEASE_MS),
        early_beta: None,
        tenant: None,
    };
    let mut wait = 0i64;
    cursor.options(&["LEASE", "WAIT", "EARLY", "TENANT"], |slot, c| {
        match slot {
            0 => opts.lease_ms = c.int_of("LEASE", 1, MAX_MS)?,
            1 => wait = c.int_of("WAIT", 0, MAX_MS)?,
            2 => {
                let beta = std::str::from_utf8(c.value_of("EARLY")?.as_slice()).ok().and_then(|v| v.parse::<f64>().ok());
                match beta {
                    Some(b) if b.is_finite() && b > 0.0 => opts.early_beta = Some(b),
                    _ => return Err(CmdError::Err("EARLY must be a positive number".into())),
                }
            }
            _ => opts.tenant = Some(crate::policy::tenant_argument(c.value_of("TENANT")?.as_slice()).to_vec()),
        }
        Ok(())
    })?;
    Ok((opts, wait.min(config::get(&config::MAX_WAIT_MS))))
}

fn can_block(ctx: &Context) -> bool {
    keyspace::may_block(ctx)
}

/// `CACHE.GETORMARK key [LEASE ms] [WAIT ms] [EARLY beta] [TENANT t]`
pub fn getormark(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let Some(key) = args.get(1) else {
        return Err(wrong_arity("cache.getormark"));
    };
    let (opts, wait_ms) = parse_get_options(Cursor::new(&args, 2))?;
    let db = keyspace::selected_db(ctx.ctx);
    match evaluate(ctx, key, db, &opts) {
        Verdict::Replied => Ok(RedisValue::NoReply),
        Verdict::WrongType => Err(wrongtype()),
        Verdict::Busy(retry) => {
            let name = key.as_slice();
            let room = with_state(|s| s.leases.waiters_on(db, name))
                < usize::try_from(config::get(&config::MAX_WAITERS)).unwrap_or(0);
            let tenant = engine::stats_tenant(db, name, opts.tenant.as_deref());
            if wait_ms > 0 && can_block(ctx) && room && parking::park(ctx, key, opts, tenant.clone(), wait_ms) {
                return Ok(RedisValue::NoReply);
            }
            engine::record(Event::Miss, &tenant, name);
            reply_busy(ctx, retry);
            Ok(RedisValue::NoReply)
        }
    }
}

fn lease_error() -> RedisError {
    super::args::CmdError::Lease.into()
}

/// `CACHE.FILL key token value [SET options]`
pub fn fill(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let (Some(key), Some(token), Some(value)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err(wrong_arity("cache.fill"));
    };
    let opts = parse_write_options(Cursor::new(&args, 4), engine::source(ctx))?;
    let name = key.as_slice();
    let db = keyspace::selected_db(ctx.ctx);
    let now = now_ms();
    let tags = opts.normalized_tags();
    let (tenant, tenant_explicit) = engine::resolve_tenant(name, opts.tenant);
    let taken = with_state(|s| s.leases.take_for_fill(db, name, token.as_slice(), &tags, now));
    let fenced = |fences: &[crate::lease::Fence]| {
        fences.iter().any(|f| match &f.user {
            None => true,
            // A fence applies only to keys its user may write (an invalidation by a user
            // restricted to other keys never refuses this fill).
            Some(user) => engine::user_may_write(ctx, user, name),
        })
    };
    let lease = match taken {
        Ok((lease, fences)) if !fenced(&fences) => lease,
        _ => {
            engine::record(Event::FillRejected, &tenant, name);
            // A lease consumed by a refused fill leaves parked callers to the next taker.
            parking::hand_over(ctx, db, name);
            return Err(lease_error());
        }
    };
    let deadline = engine::resolve_deadline(name, &opts, now);
    let entry = Entry {
        value: value.as_slice().to_vec(),
        tenant: tenant.clone(),
        tenant_explicit,
        tags,
        stale_ms: deadline.stale_ms,
        fill_ms: now.saturating_sub(lease.granted_at_ms).max(0),
    };
    engine::store(ctx, key, value, &opts, entry, deadline, engine::Notice::Fill)?;
    engine::record(Event::Fill, &tenant, name);
    Ok(super::reply_ok(ctx))
}

/// `CACHE.ABANDON key token` → 1 when the lease was released, else 0.
pub fn abandon(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let [_, key, token] = args.as_slice() else {
        return Err(wrong_arity("cache.abandon"));
    };
    let name = key.as_slice();
    let db = keyspace::selected_db(ctx.ctx);
    let released = with_state(|s| s.leases.abandon(db, name, token.as_slice(), now_ms()));
    if let Some(tenant) = &released {
        engine::record(Event::LeaseAbandoned, tenant, name);
        parking::hand_over(ctx, db, name);
    }
    Ok(RedisValue::Integer(i64::from(released.is_some())))
}
