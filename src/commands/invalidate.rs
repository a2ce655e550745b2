//! CACHE.INVALIDATE and CACHE.INVALIDATETAGS.

use super::args::{wrong_arity, CmdError, Cursor};
use super::read::tenant_scope;
use crate::config;
use crate::engine;
use crate::fences::Action;
use crate::glob::Glob;
use crate::index::{show, How, Key, Name};
use crate::pending::Selector;
use crate::reclaim;
use crate::keyspace;
use crate::parking;
use crate::policy;
use crate::ffi::blocking::block_for_answer;
use crate::state::{with_state, Waiting};
use crate::stats::Event;
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};
use std::time::Instant;

/// Parses a trailing `[SOFT]`.
fn parse_soft(mut cursor: Cursor<'_>) -> Result<bool, CmdError> {
    let mut soft = false;
    cursor.options(&["SOFT"], |_, _| {
        soft = true;
        Ok(())
    })?;
    Ok(soft)
}

/// `CACHE.INVALIDATE tenant pattern [SOFT]` → entries invalidated.
pub fn invalidate(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if super::read::answered_key_positions(ctx, &args, crate::ffi::command_info::KeyAccess::Delete) {
        return Ok(RedisValue::NoReply);
    }
    let (Some(tenant), Some(pattern)) = (args.get(1), args.get(2)) else {
        return Err(wrong_arity("cache.invalidate"));
    };
    let soft = parse_soft(Cursor::new(&args, 3))?;
    let started = Instant::now();
    let scope = tenant_scope(tenant.as_slice());
    let glob = Glob::new(pattern.as_slice());
    let db = keyspace::selected_db(ctx.ctx);
    prepare_index(ctx);
    // Leases on matching keys are voided even when the key holds no value yet; a key without
    // an entry belongs to the tenant recorded on its lease.
    let leased = with_state(|s| s.leases.leased_with_prefix(db, glob.literal_prefix()));
    let void: Vec<Vec<u8>> = leased
        .into_iter()
        .filter(|k| glob.matches(k))
        .filter(|k| scope.as_ref().is_none_or(|t| *t == engine::stats_tenant(db, k, None)))
        .collect();
    // Nothing is touched unless the caller may write every key it would affect.
    engine::check_write_permission(ctx, &void)?;
    let plan = if keyspace::is_loading(ctx) {
        Plan::Now(matching(db, scope.as_deref(), &glob))
    } else {
        in_background_pattern(ctx, db, scope.as_deref(), &glob, how(soft))?
    };
    let (count, background) = plan.run(ctx, soft)?;
    let fence_until = fence_until(ctx);
    let user = engine::current_user(ctx);
    with_state(|s| {
        for k in &void {
            s.leases.void(db, k);
        }
        s.stats.record_invalidation(scope.as_deref());
        if let Some(until) = fence_until {
            s.migration_fences.add_pattern(db, scope.as_deref(), pattern.as_slice(), action(soft), user.as_deref(), until);
        }
    });
    for k in &void {
        parking::hand_over(ctx, db, k);
    }
    if background {
        ctx.replicate_verbatim();
        reclaim::schedule(ctx);
    }
    answer(ctx, db, count, started, || {
        format!(
            "tenant {} pattern {}{}",
            scope.as_deref().map_or_else(|| "*".to_string(), show),
            show(pattern.as_slice()),
            if soft { " SOFT" } else { "" }
        )
    })
}

/// `CACHE.INVALIDATETAGS numtags tag [tag …] [SOFT]` → entries invalidated (each once).
pub fn invalidate_tags(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() < 2 {
        return Err(wrong_arity("cache.invalidatetags"));
    }
    let mut cursor = Cursor::new(&args, 1);
    let n = cursor.int_of("numtags", 1, config::MAX_TAGS_LIMIT * 1024)?;
    let n = usize::try_from(n).map_err(|_| CmdError::Err("numtags out of range".into()))?;
    let tags: Vec<Vec<u8>> = cursor.take(n, "numtags")?.iter().map(|t| t.as_slice().to_vec()).collect();
    let soft = parse_soft(cursor)?;
    let started = Instant::now();
    let db = keyspace::selected_db(ctx.ctx);
    prepare_index(ctx);
    let plan = if keyspace::is_loading(ctx) {
        Plan::Now(tagged(db, &tags))
    } else {
        in_background_tags(ctx, db, &tags, how(soft))?
    };
    let keys = plan.names_checked(ctx)?;
    // The fence on in-flight fills carries the caller: it refuses only fills of keys that user
    // may write.
    let user = engine::current_user(ctx);
    with_state(|s| s.leases.invalidate_tags(db, &tags, user.as_deref()));
    let count = match plan {
        Plan::Background(count) => {
            ctx.replicate_verbatim();
            reclaim::schedule(ctx);
            count
        }
        Plan::Now(_) => Reply::Now(apply(ctx, &keys, soft)),
    };
    let fence_until = fence_until(ctx);
    with_state(|s| {
        s.stats.record_invalidation(None);
        if let Some(until) = fence_until {
            s.migration_fences.add_tags(db, &tags, action(soft), user.as_deref(), until);
        }
    });
    answer(ctx, db, count, started, || {
        let names: Vec<String> = tags.iter().map(|t| show(t)).collect();
        format!("tags {}{}", names.join(" "), if soft { " SOFT" } else { "" })
    })
}

/// How an invalidation goes: in the background (its answer), or now on these keys.
enum Plan {
    Background(Reply),
    Now(Vec<Key>),
}

impl Plan {
    /// The names of the keys to invalidate now (none in the background), once the caller is
    /// known to be allowed to write every one.
    fn names_checked(&self, ctx: &Context) -> Result<Vec<Vec<u8>>, RedisError> {
        let names = match self {
            Plan::Background(_) => Vec::new(),
            Plan::Now(keys) => keys.iter().map(|k| k.to_vec()).collect(),
        };
        engine::check_write_permission(ctx, &names)?;
        Ok(names)
    }

    /// Invalidates the keys to invalidate now; the answer, and whether the rest is left to
    /// the background.
    fn run(self, ctx: &Context, soft: bool) -> Result<(Reply, bool), RedisError> {
        let names = self.names_checked(ctx)?;
        Ok(match self {
            Plan::Background(reply) => (reply, true),
            Plan::Now(_) => (Reply::Now(apply(ctx, &names, soft)), false),
        })
    }
}

fn matching(db: i32, scope: Option<&[u8]>, glob: &Glob) -> Vec<Key> {
    with_state(|s| s.index.db(db).map(|ix| ix.matching(scope, glob, usize::MAX)).unwrap_or_default())
}

fn tagged(db: i32, tags: &[Vec<u8>]) -> Vec<Key> {
    with_state(|s| s.index.db(db).map(|ix| ix.tagged(tags)).unwrap_or_default())
}

/// What an invalidation answers.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// This many entries.
    Now(usize),
    /// The count under this ticket, once the reclaimer's slices have made it (some entries
    /// were covered by an older invalidation still pending, and telling them apart one by one
    /// here would stall the server).
    Counting(u64),
}

/// Replies, or blocks the caller until its count is made (`reclaim::answer_counted`). A
/// caller that cannot block (MULTI, scripts) gets the count made now; a replicated command,
/// whose reply nobody reads, leaves it to the slices (for the log line).
fn answer(ctx: &Context, db: i32, reply: Reply, started: Instant, what: impl FnOnce() -> String) -> RedisResult {
    let ticket = match reply {
        Reply::Now(n) => {
            reclaim::log_if_large(n, started, what);
            return Ok(RedisValue::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
        }
        Reply::Counting(ticket) => ticket,
    };
    let replayed = keyspace::is_replayed(ctx);
    let waiter = if !replayed && keyspace::may_block(ctx) { block_for_answer(ctx) } else { None };
    if waiter.is_none() && !replayed {
        let n = with_state(|s| s.index.answer_now(db, ticket));
        reclaim::log_if_large(n, started, what);
        return Ok(RedisValue::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
    }
    let waiting = Waiting { waiter, what: what(), started };
    with_state(|s| s.waiting.insert(ticket, waiting));
    Ok(if waiter.is_some() { RedisValue::NoReply } else { RedisValue::Integer(0) })
}

/// Whether an invalidation of `count` entries is made visible at once and reclaimed later.
fn large_invalidation(count: usize) -> bool {
    usize::try_from(config::get(&config::RECLAIM_SYNC_MAX)).is_ok_and(|max| count > max)
}

/// A replayed invalidation while the dataset loads finds the index complete (it is otherwise
/// rebuilt once the load ends).
fn prepare_index(ctx: &Context) {
    if keyspace::is_loading(ctx) && !with_state(|s| s.index_ready) {
        crate::events::rebuild_index(ctx);
    }
}

/// A large `INVALIDATE tenant pattern`: the entries become invisible (or stale, SOFT) now and
/// are reclaimed (or get their TTL shortened) in slices. A whole tenant (pattern `*`) costs
/// O(1); another pattern, the walk of its literal prefix range. None when the invalidation is
/// small enough to apply at once.
fn in_background_pattern(ctx: &Context, db: i32, scope: Option<&[u8]>, glob: &Glob, how: How) -> Result<Plan, RedisError> {
    let names = |v: &[Key]| v.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
    if glob.matches_everything() {
        let at_most = with_state(|s| s.index.db(db).map_or(0, |ix| ix.tenant_len(scope)));
        if !large_invalidation(at_most) {
            return Ok(Plan::Now(matching(db, scope, glob)));
        }
        engine::check_write_permission_bulk(ctx, || names(&matching(db, scope, glob)))?;
        return Ok(Plan::Background(with_state(|s| {
            let ticket = s.ticket();
            let answer = s.index.db_mut(db).invalidate_tenant(scope, how, keyspace::now_ms(), ticket);
            answer.map_or(Reply::Counting(ticket), Reply::Now)
        })));
    }
    let keys = matching(db, scope, glob);
    if !large_invalidation(keys.len()) {
        return Ok(Plan::Now(keys));
    }
    engine::check_write_permission_bulk(ctx, || names(&keys))?;
    let selector = Selector::Pattern {
        tenant: scope.map(Name::from),
        glob: glob.clone(),
    };
    Ok(Plan::Background(Reply::Now(with_state(|s| s.index.db_mut(db).invalidate_names(selector, keys, how, keyspace::now_ms())))))
}

/// A large `INVALIDATETAGS`: one tag costs O(1) (its member set moves into the pending job, or
/// is walked in place for SOFT), several tags the union of their members.
fn in_background_tags(ctx: &Context, db: i32, tags: &[Vec<u8>], how: How) -> Result<Plan, RedisError> {
    let names = |v: &[Key]| v.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
    if let [tag] = tags {
        let at_most = with_state(|s| s.index.db(db).map_or(0, |ix| ix.tag_len(tag)));
        if !large_invalidation(at_most) {
            return Ok(Plan::Now(tagged(db, tags)));
        }
        engine::check_write_permission_bulk(ctx, || names(&tagged(db, tags)))?;
        return Ok(Plan::Background(with_state(|s| {
            let ticket = s.ticket();
            let answer = s.index.db_mut(db).invalidate_tag(tag, how, keyspace::now_ms(), ticket);
            answer.map_or(Reply::Counting(ticket), Reply::Now)
        })));
    }
    let keys = tagged(db, tags);
    if !large_invalidation(keys.len()) {
        return Ok(Plan::Now(keys));
    }
    engine::check_write_permission_bulk(ctx, || names(&keys))?;
    let selector = Selector::Tags(tags.iter().map(|t| Name::from(t.as_slice())).collect());
    Ok(Plan::Background(Reply::Now(with_state(|s| s.index.db_mut(db).invalidate_names(selector, keys, how, keyspace::now_ms())))))
}

/// In a cluster an invalidation also fences entries that arrive later by MIGRATE/RESTORE (from
/// the other side of a slot migration) for `tagcache.migration-fence-ms`: until when, if so.
fn fence_until(ctx: &Context) -> Option<i64> {
    let ms = config::get(&config::MIGRATION_FENCE_MS);
    (ms > 0 && keyspace::in_cluster(ctx)).then(|| keyspace::now_ms().saturating_add(ms))
}

/// What a background invalidation does, as of now.
fn how(soft: bool) -> How {
    if soft {
        How::MarkStale { at_ms: keyspace::now_ms() }
    } else {
        How::Remove
    }
}

fn action(soft: bool) -> Action {
    if soft {
        Action::MarkStale
    } else {
        Action::Delete
    }
}

/// Deletes (or soft-expires) the keys, counting each entry actually invalidated for its tenant
/// (an entry found already expired is not counted).
fn apply(ctx: &Context, keys: &[Vec<u8>], soft: bool) -> usize {
    let changed = if soft {
        engine::soft_expire_entries(ctx, keys)
    } else {
        engine::delete_entries(ctx, keys, engine::Notice::Invalidate)
    };
    with_state(|s| {
        for (key, tenant) in &changed {
            s.stats.record(Event::KeyInvalidated, tenant, policy::namespace(key, &s.separator));
        }
    });
    changed.len()
}
