//! CACHE.GETORMARK, CACHE.FILL and CACHE.ABANDON: stampede protection.

use super::args::{parse_write_options, wrong_arity, wrongtype, CmdError, Cursor};
use crate::config::{self, MAX_MS};
use crate::accounting::{record, stats_tenant};
use crate::engine;
use crate::entry::Entry;
use crate::name::Labels;
use crate::keyspace::{self, now_ms};
use crate::parking;
use crate::stampede::{evaluate, reply_busy, GetOptions, Verdict};
use crate::state::with_state;
use crate::stats::Event;
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

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
    crate::engine::purge_key(ctx, key.as_slice());
    match evaluate(ctx, key, db, &opts) {
        Verdict::Replied => Ok(RedisValue::NoReply),
        Verdict::WrongType => Err(wrongtype()),
        Verdict::Busy(retry) => {
            let name = key.as_slice();
            let room = with_state(|s| s.leases.waiters_on(db, name))
                < usize::try_from(config::get(&config::MAX_WAITERS)).unwrap_or(0);
            let tenant = stats_tenant(db, name, opts.tenant.as_deref());
            if wait_ms > 0 && can_block(ctx) && room && parking::park(ctx, key, opts, tenant.clone(), wait_ms) {
                return Ok(RedisValue::NoReply);
            }
            record(Event::Miss, &tenant, name);
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
    let source = engine::source(ctx);
    let opts = parse_write_options(Cursor::new(&args, 4), source)?;
    let name = key.as_slice();
    engine::check_tenant_slot(ctx, name, opts.tenant, source)?;
    let db = keyspace::selected_db(ctx.ctx);
    let now = now_ms();
    let tags = opts.normalized_tags();
    let (tenant, tenant_explicit) = engine::resolve_tenant(name, opts.tenant);
    let taken = with_state(|s| s.leases.take_for_fill(db, name, token.as_slice(), &tags, now));
    // A fence applies only to keys its user may write (an invalidation by a user restricted
    // to other keys never refuses this fill).
    let fenced = |fences: &[crate::lease::Fence]| fences.iter().any(|f| engine::fence_applies(ctx, f.user.as_deref(), name));
    let lease = match taken {
        Ok((lease, fences)) if !fenced(&fences) => lease,
        _ => {
            record(Event::FillRejected, &tenant, name);
            // A lease consumed by a refused fill leaves parked callers to the next taker.
            parking::hand_over(ctx, db, name);
            return Err(lease_error());
        }
    };
    let deadline = engine::resolve_deadline(name, &opts, now);
    let labels = Labels::new(tenant.as_slice().into(), tags.into_iter().map(Into::into).collect());
    let fill_ms = u32::try_from(now.saturating_sub(lease.granted_at_ms).max(0)).unwrap_or(u32::MAX);
    let entry = Entry::new(value.as_slice(), labels, tenant_explicit, deadline.stale_ms, fill_ms);
    if let Err(e) = engine::store(ctx, key, value, &opts, entry, deadline, engine::Notice::Fill) {
        // The lease is spent and no value came: parked callers go to the next taker now
        // instead of waiting out their timeout.
        parking::hand_over(ctx, db, name);
        return Err(e);
    }
    record(Event::Fill, &tenant, name);
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
        record(Event::LeaseAbandoned, tenant, name);
        parking::hand_over(ctx, db, name);
    }
    Ok(RedisValue::Integer(i64::from(released.is_some())))
}
