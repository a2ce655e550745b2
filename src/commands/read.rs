//! CACHE.GET, CACHE.INSPECT and CACHE.KEYS.

use super::args::{wrong_arity, wrongtype, Cursor};
use super::{json_name, reply_bytes};
use crate::ffi::command_info::KeyAccess;
use crate::engine;
use crate::glob::Glob;
use crate::keyspace::{self, Key, Kind};
use crate::policy;
use crate::state::with_state;
use crate::stats::Event;
use redis_module::{Context, RedisResult, RedisString, RedisValue};
use serde_json::json;

/// `CACHE.GET key [TENANT t]` → the value when fresh, else nil. TENANT names whom a miss on a
/// key without an entry is counted for.
pub fn get(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let Some(key) = args.get(1) else {
        return Err(wrong_arity("cache.get"));
    };
    let mut hint = None;
    Cursor::new(&args, 2).options(&["TENANT"], |_, c| {
        hint = Some(policy::tenant_argument(c.value_of("TENANT")?.as_slice()));
        Ok(())
    })?;
    let name = key.as_slice();
    crate::engine::purge_key(ctx, key.as_slice());
    let mut handle = Key::read(ctx, key);
    match handle.kind() {
        Kind::Other => Err(wrongtype()),
        Kind::Missing => {
            let db = keyspace::selected_db(ctx.ctx);
            engine::record(Event::Miss, &engine::stats_tenant(db, name, hint), name);
            Ok(RedisValue::Null)
        }
        Kind::Entry => {
            let ttl = handle.ttl_ms();
            let Some(entry) = handle.entry() else {
                return Ok(RedisValue::Null);
            };
            if entry.is_fresh(ttl) && entry.fence().is_none() {
                engine::record(Event::Hit, entry.tenant(), name);
                Ok(reply_bytes(ctx, entry.value()))
            } else {
                engine::record(Event::Miss, entry.tenant(), name);
                Ok(RedisValue::Null)
            }
        }
    }
}

/// `CACHE.INSPECT key` → JSON describing the entry and its lease, or nil when there is neither.
pub fn inspect(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let [_, key] = args.as_slice() else {
        return Err(wrong_arity("cache.inspect"));
    };
    let name = key.as_slice();
    let db = keyspace::selected_db(ctx.ctx);
    let now = keyspace::now_ms();
    let (lease, waiters, indexed) = with_state(|s| {
        (
            s.leases.current(db, name, now).map(|l| l.deadline_ms.saturating_sub(now)),
            s.leases.waiters_on(db, name),
            s.index.db(db).is_some_and(|d| d.contains(name)),
        )
    });
    crate::engine::purge_key(ctx, key.as_slice());
    let mut handle = Key::read(ctx, key);
    let mut doc = json!({
        "exists": false,
        "indexed": indexed,
        "lease": {"active": lease.is_some(), "ttl_ms": lease.unwrap_or(0), "waiters": waiters},
    });
    match handle.kind() {
        Kind::Other => return Err(wrongtype()),
        Kind::Missing if lease.is_none() && waiters == 0 => return Ok(RedisValue::Null),
        Kind::Missing => {}
        Kind::Entry => {
            let ttl = handle.ttl_ms();
            if let (Some(e), Some(obj)) = (handle.entry(), doc.as_object_mut()) {
                obj.insert("exists".into(), json!(true));
                obj.insert("tenant".into(), json_name(e.tenant()));
                obj.insert("tenant_explicit".into(), json!(e.tenant_explicit()));
                obj.insert("tags".into(), e.tags().iter().map(|t| json_name(t)).collect());
                obj.insert("ttl_ms".into(), json!(ttl.unwrap_or(-1)));
                obj.insert("fresh_ms".into(), json!(e.fresh_ms(ttl)));
                obj.insert("fresh".into(), json!(e.is_fresh(ttl)));
                obj.insert("stale_ms".into(), json!(e.stale_ms()));
                obj.insert("size".into(), json!(e.value().len()));
                obj.insert("fill_ms".into(), json!(e.fill_ms()));
            }
        }
    }
    Ok(RedisValue::BulkString(doc.to_string()))
}

/// Commands taking a tenant are registered with `getkeys-api`: when Redis asks for their key
/// positions (cluster routing, ACL), the tenant (argument 1) is a key, accessed as `access`
/// says, unless it is `*`, which names no key and so runs on whichever primary receives it.
/// True when this was such a request.
pub fn answered_key_positions(ctx: &Context, args: &[RedisString], access: KeyAccess) -> bool {
    let tenant_is_key = args.get(1).is_some_and(|tenant| tenant.as_slice() != b"*");
    crate::ffi::command_info::answer_key_positions(ctx, tenant_is_key, access)
}

/// A tenant argument: `*` (every tenant), `{t}` or `t`.
pub fn tenant_scope(arg: &[u8]) -> Option<Vec<u8>> {
    (arg != b"*").then(|| policy::tenant_argument(arg).to_vec())
}

/// `CACHE.KEYS tenant pattern [LIMIT n]` → matching entry names from the index.
pub fn keys(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if answered_key_positions(ctx, &args, KeyAccess::Read) {
        return Ok(RedisValue::NoReply);
    }
    let (Some(tenant), Some(pattern)) = (args.get(1), args.get(2)) else {
        return Err(wrong_arity("cache.keys"));
    };
    let mut limit = usize::MAX;
    Cursor::new(&args, 3).options(&["LIMIT"], |_, c| {
        limit = usize::try_from(c.int_of("LIMIT", 1, i64::MAX)?).unwrap_or(usize::MAX);
        Ok(())
    })?;
    let scope = tenant_scope(tenant.as_slice());
    let glob = Glob::new(pattern.as_slice());
    let db = keyspace::selected_db(ctx.ctx);
    let matching = |limit| {
        with_state(|s| {
            s.index
                .db(db)
                .map(|ix| ix.matching(scope.as_deref(), &glob, limit))
                .unwrap_or_default()
        })
    };
    // Entries a pending SOFT invalidation will delete when it reaches them are gone already:
    // asked for more until `limit` remain (only while such an invalidation is pending).
    let mut asked = limit;
    let names = loop {
        let mut names = matching(asked);
        let found = names.len();
        if with_state(|s| s.index.db(db).is_some_and(|ix| ix.has_stale_pending())) {
            names.retain(|n| !engine::soft_deleted_pending(ctx, n));
        }
        if names.len() >= limit || found < asked {
            names.truncate(limit);
            break names;
        }
        asked = asked.saturating_mul(2);
    };
    Ok(RedisValue::Array(
        names.iter().map(|n| RedisValue::StringBuffer(n.to_vec())).collect(),
    ))
}
