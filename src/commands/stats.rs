//! CACHE.STATS and the `tagcache` INFO section.

use super::args::Cursor;
use crate::keyspace::now_ms;
use crate::state::{with_state, State};
use crate::stats::{self, Figure};
use crate::ffi::{self, reply::InfoFigure};
use redis_module::{Context, InfoContext, RedisResult, RedisString, RedisValue};

/// Server-wide gauges (all databases).
fn global_gauges(s: &State, now: i64) -> Vec<(&'static str, u64)> {
    let dbs = || s.index.dbs().map(|(_, ix)| ix);
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    vec![
        ("keys", count(s.index.live_keys())),
        ("tenants", count(dbs().map(|ix| ix.tenant_count()).sum())),
        ("tags", count(dbs().map(|ix| ix.tag_count()).sum())),
        ("memory_bytes", count(dbs().map(|ix| ix.entry_bytes()).fold(0, usize::saturating_add))),
        ("index_bytes", count(s.index.heap_bytes())),
        ("leases_active", count(s.leases.active(now))),
        ("waiters", count(s.leases.total_waiters())),
        ("reclaim_pending_entries", count(dbs().map(|ix| ix.pending_footprint().0).sum())),
        ("reclaim_pending_bytes", count(dbs().map(|ix| ix.pending_footprint().1).fold(0, usize::saturating_add))),
        ("reclaim_slices", s.reclaim.slices),
        ("reclaim_longest_slice_us", s.reclaim.longest_slice_us),
        ("reclaimed", s.reclaim.reclaimed),
    ]
}

/// One tenant's gauges: its entries and their memory, over all databases.
fn tenant_gauges(s: &State, tenant: &[u8]) -> Vec<(&'static str, u64)> {
    let (keys, bytes) = s
        .index
        .dbs()
        .map(|(_, ix)| ix.tenant_footprint(tenant))
        .fold((0usize, 0usize), |(k, b), (k2, b2)| (k.saturating_add(k2), b.saturating_add(b2)));
    vec![
        ("keys", u64::try_from(keys).unwrap_or(u64::MAX)),
        ("memory_bytes", u64::try_from(bytes).unwrap_or(u64::MAX)),
    ]
}

/// `CACHE.STATS [TENANT t] [RESET]` → JSON; RESET zeroes the counters after taking the snapshot.
pub fn stats(_ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let (mut tenant, mut reset) = (None, false);
    Cursor::new(&args, 1).options(&["TENANT", "RESET"], |slot, c| {
        match slot {
            0 => tenant = Some(crate::policy::tenant_argument(c.value_of("TENANT")?.as_slice()).to_vec()),
            _ => reset = true,
        }
        Ok(())
    })?;
    let now = now_ms();
    let doc = with_state(|s| {
        let doc = match &tenant {
            Some(t) => stats::to_json(&stats::report(&s.stats.tenant(t), &tenant_gauges(s, t)), None),
            None => {
                let figures = stats::report(&s.stats.global, &global_gauges(s, now));
                stats::to_json(&figures, Some(stats::namespaces_json(s.stats.namespaces())))
            }
        };
        if reset {
            match &tenant {
                Some(t) => s.stats.reset_tenant(t),
                None => s.stats.reset(),
            }
        }
        doc
    });
    Ok(RedisValue::BulkString(doc.to_string()))
}

/// The `tagcache` INFO section: the global figures of CACHE.STATS, one per line
/// (`tagcache_<name>:<value>`).
pub fn info(ctx: &InfoContext, for_crash_report: bool) {
    if for_crash_report {
        // The state lock may be held by the crashing thread.
        return;
    }
    let now = now_ms();
    let figures = with_state(|s| stats::report(&s.stats.global, &global_gauges(s, now)));
    ffi::reply::info_section(
        ctx,
        figures.into_iter().map(|(name, figure)| {
            let figure = match figure {
                Figure::Count(v) => InfoFigure::Count(v),
                Figure::Ratio(r) => InfoFigure::Ratio(r),
            };
            (name, figure)
        }),
    );
}
