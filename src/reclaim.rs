//! Physical removal of invalidated entries, after the invalidation made them invisible
//! (see `pending`): a timer on the main thread removes them in slices of at most
//! `tagcache.reclaim-slice-us`, and any command that names one removes it first (a command
//! filter), so native commands (EXISTS, TYPE, TTL, DUMP, GET…) never see it either.
//! Nothing here is replicated: each server reclaims what its own copy of the invalidation
//! covers, and a saved dataset lists what is still to reclaim so a load never brings it back.

use crate::config;
use crate::engine;
use crate::ffi::blocking::{answer, start_timer};
use crate::ffi::datatype::{install_persist_hooks, PersistHooks, StaleNames};
use crate::ffi::filter::{self, FilterHooks};
use crate::index::{Name, Step};
use crate::keyspace;
use crate::state::{with_state, RECLAIM_PENDING};
use redis_module::Context;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};



pub fn install(ctx: &Context) {
    install_persist_hooks(PersistHooks { dead_names, loaded_dead, stale_names, loaded_stale, left_out });
    if !filter::register(ctx, FilterHooks { active: maybe_pending, on_argument: purge_named }) {
        ctx.log_warning("tagcache: no command filter: native commands may see invalidated keys until they are reclaimed");
    }
}

fn maybe_pending() -> bool {
    RECLAIM_PENDING.load(Ordering::Relaxed)
}

/// Starts reclaiming after an invalidation left entries to remove.
pub fn schedule(ctx: &Context) {
    RECLAIM_PENDING.store(true, Ordering::Relaxed);
    let arm = with_state(|s| !std::mem::replace(&mut s.reclaim.armed, true));
    if arm {
        start_timer(ctx, 1, (), slice);
    }
}

/// One slice: count for invalidations waiting for their answer first, then remove dead
/// entries, until the budget is spent or nothing is left.
fn slice(ctx: &Context, (): ()) {
    let budget = Duration::from_micros(u64::try_from(config::get(&config::RECLAIM_SLICE_US)).unwrap_or(1000));
    let started = Instant::now();
    let primary = keyspace::is_primary(ctx);
    let mut reclaimed = 0u64;
    let mut out_of_time = count_answers(started, budget);
    answer_counted();
    'dbs: for db in with_state(|s| s.index.pending_dbs()) {
        if out_of_time {
            break;
        }
        if !keyspace::select_db(ctx, db) {
            continue;
        }
        let mut visited = 0u32;
        loop {
            if visited.is_multiple_of(16) && started.elapsed() >= budget {
                out_of_time = true;
                break 'dbs;
            }
            visited = visited.wrapping_add(1);
            let step = with_state(|s| s.index.next_step(db));
            let done = match step {
                None => break,
                Some(Step::Skip) => false,
                Some(Step::Remove(name)) => engine::remove_invalidated(ctx, &name, primary),
                Some(Step::MarkStale(name, at_ms)) => engine::mark_stale(ctx, &name, at_ms, primary),
            };
            if done {
                reclaimed = reclaimed.saturating_add(1);
            }
        }
    }
    let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let more = out_of_time || with_state(|s| !s.index.pending_dbs().is_empty());
    with_state(|s| {
        s.reclaim.slices = s.reclaim.slices.saturating_add(1);
        s.reclaim.longest_slice_us = s.reclaim.longest_slice_us.max(took);
        s.reclaim.reclaimed = s.reclaim.reclaimed.saturating_add(reclaimed);
        s.reclaim.armed = more;
    });
    if more {
        start_timer(ctx, 1, (), slice);
    } else {
        RECLAIM_PENDING.store(false, Ordering::Relaxed);
    }
}

/// Counts for the invalidations waiting for their answer until `budget` is spent since
/// `started`; true when it ran out of time.
fn count_answers(started: Instant, budget: Duration) -> bool {
    const NAMES_PER_STEP: usize = 512;
    for db in with_state(|s| s.index.pending_dbs()) {
        loop {
            if started.elapsed() >= budget {
                return true;
            }
            if !with_state(|s| s.index.db_mut(db).count_some(NAMES_PER_STEP)) {
                break;
            }
        }
    }
    false
}

/// Answers the invalidations whose count is complete (their callers were blocked) and logs
/// the large ones.
pub fn answer_counted() {
    let done: Vec<(crate::state::Waiting, usize)> = with_state(|s| {
        let answered = s.index.take_answered();
        answered.into_iter().filter_map(|(ticket, n)| Some((s.waiting.remove(&ticket)?, n))).collect()
    });
    for (waiting, n) in done {
        if let Some(waiter) = waiting.waiter {
            answer(waiter, i64::try_from(n).unwrap_or(i64::MAX));
        }
        log_if_large(n, waiting.started, || waiting.what);
    }
}

/// The log line of an invalidation of more than `tagcache.log-invalidations-over` entries.
pub fn log_if_large(count: usize, started: Instant, what: impl FnOnce() -> String) {
    let threshold = config::get(&config::LOG_INVALIDATIONS_OVER);
    if i64::try_from(count).unwrap_or(i64::MAX) > threshold {
        redis_module::logging::log_notice(format!(
            "tagcache: invalidated {count} keys ({}) in {} ms",
            what(),
            started.elapsed().as_millis()
        ));
    }
}

/// A command names `name`: where a pending invalidation covers it, apply it before the
/// command runs (remove it, or shorten its TTL for SOFT).
fn purge_named(ctx: &Context, name: &[u8]) {
    let dbs: Vec<i32> = with_state(|s| {
        s.index
            .pending_dbs()
            .into_iter()
            .filter(|db| s.index.is_dead(*db, name) || s.index.stale_since(*db, name).is_some())
            .collect()
    });
    for db in dbs {
        if keyspace::select_db(ctx, db) && engine::settle_key(ctx, name) {
            with_state(|s| s.reclaim.reclaimed = s.reclaim.reclaimed.saturating_add(1));
        }
    }
}

fn dead_names() -> Vec<(i32, Vec<Vec<u8>>)> {
    with_state(|s| {
        s.index
            .pending_dbs()
            .into_iter()
            .filter_map(|db| {
                let names: Vec<Vec<u8>> = s.index.db(db)?.dead_names().iter().map(|n| n.to_vec()).collect();
                (!names.is_empty()).then_some((db, names))
            })
            .collect()
    })
}

fn stale_names() -> StaleNames {
    with_state(|s| {
        s.index
            .pending_dbs()
            .into_iter()
            .filter_map(|db| {
                let names: Vec<(Vec<u8>, i64)> = s.index.db(db)?.stale_names().into_iter().map(|(n, at)| (n.to_vec(), at)).collect();
                (!names.is_empty()).then_some((db, names))
            })
            .collect()
    })
}

/// A loaded dataset listed entries a SOFT invalidation had made stale (see `loaded_dead`).
fn loaded_stale(db: i32, names: Vec<(Vec<u8>, i64)>) {
    with_state(|s| {
        s.loaded_stale
            .entry(db)
            .or_default()
            .extend(names.into_iter().map(|(n, at)| (Name::from(n), at)));
    });
}

/// A loaded dataset listed entries invalidated before it was saved. Commands replayed after it
/// (the AOF after its preamble) may rewrite or delete them: `forget_loaded_dead` drops those.
fn loaded_dead(db: i32, names: Vec<Vec<u8>>) {
    with_state(|s| {
        s.loaded_dead
            .entry(db)
            .or_default()
            .extend(names.into_iter().map(Name::from));
    });
}


/// After a load and the index rebuild: what the dataset listed as dead is invalidated again,
/// what it listed as stale made stale again.
pub fn after_load(ctx: &Context) {
    let any = with_state(|s| {
        let loaded: Vec<(i32, HashSet<Name>)> = s.loaded_dead.drain().collect();
        let stale: Vec<(i32, std::collections::HashMap<Name, i64>)> = s.loaded_stale.drain().collect();
        let mut any = false;
        for (db, names) in stale {
            if let Some(ix) = s.index.db(db) {
                if names.keys().any(|n| ix.contains(n)) {
                    s.index.db_mut(db).soften_exactly(names);
                    any = true;
                }
            }
        }
        for (db, names) in loaded {
            if names.is_empty() {
                continue;
            }
            if let Some(ix) = s.index.db(db) {
                if names.iter().any(|n| ix.contains(n)) {
                    s.index.db_mut(db).doom_exactly(names);
                    any = true;
                }
            }
        }
        any
    });
    if any {
        schedule(ctx);
    }
}

fn left_out(db: i32, name: &[u8]) -> bool {
    with_state(|s| s.index.is_dead(db, name) || s.index.stale_since(db, name).is_some())
}
