//! CACHE.SET and CACHE.DEL.

use super::args::{parse_write_options, wrong_arity, Cursor};
use crate::engine;
use crate::entry::Entry;
use crate::name::Labels;
use crate::keyspace;
use crate::parking;
use crate::state::with_state;
use redis_module::{Context, RedisResult, RedisString, RedisValue};

/// `CACHE.SET key value [EX s|PX ms|EXAT s|PXAT ms|NOEXPIRE] [STALE s] [TAGS n tag…] [TENANT t]`
pub fn set(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let (Some(key), Some(value)) = (args.get(1), args.get(2)) else {
        return Err(wrong_arity("cache.set"));
    };
    let source = engine::source(ctx);
    let opts = parse_write_options(Cursor::new(&args, 3), source)?;
    let name = key.as_slice();
    engine::check_tenant_slot(ctx, name, opts.tenant, source)?;
    let (tenant, tenant_explicit) = engine::resolve_tenant(name, opts.tenant);
    let deadline = engine::resolve_deadline(name, &opts, keyspace::now_ms());
    let labels = Labels::new(tenant.into(), opts.normalized_tags().into_iter().map(Into::into).collect());
    let entry = Entry::new(value.as_slice(), labels, tenant_explicit, deadline.stale_ms, 0);
    engine::store(ctx, key, value, &opts, entry, deadline, engine::Notice::Set)?;
    Ok(super::reply_ok(ctx))
}

/// `CACHE.DEL key [key …]` → number of entries removed. Also voids leases on those keys.
pub fn del(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() < 2 {
        return Err(wrong_arity("cache.del"));
    }
    let keys: Vec<Vec<u8>> = args.iter().skip(1).map(|k| k.as_slice().to_vec()).collect();
    let db = keyspace::selected_db(ctx.ctx);
    let removed = engine::delete_entries(ctx, &keys, engine::Notice::Del).len();
    with_state(|s| {
        for k in &keys {
            s.leases.void(db, k);
        }
    });
    for k in &keys {
        parking::hand_over(ctx, db, k);
    }
    Ok(RedisValue::Integer(removed as i64))
}
