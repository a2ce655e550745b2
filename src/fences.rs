//! Pure: invalidations remembered for a while in cluster mode, so that an entry arriving later
//! by MIGRATE/RESTORE — from the source of a slot migration, where the invalidation never ran
//! (Redis routes it to one side only) — is invalidated on arrival instead of being served again.
//!
//! Dropping an arriving entry is always safe for a cache (the next read recomputes it), so a
//! fence errs on that side: while it lasts it also drops matching entries written on the
//! source after the invalidation. Each fence remembers the ACL user who set it: the glue
//! applies it only to keys that user may write.

use crate::glob::Glob;
use std::collections::{HashMap, VecDeque};

/// What happens to an arriving entry a fence covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Delete,
    /// SOFT invalidation: the entry becomes stale.
    MarkStale,
}

/// A fence that covers an arriving entry: what to do, and for whom (None: every key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cover {
    pub action: Action,
    pub user: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Fence {
    action: Action,
    user: Option<Vec<u8>>,
    until_ms: i64,
}

#[derive(Debug)]
struct PatternFence {
    pattern: Glob,
    fence: Fence,
}

/// At most this many tenants (and as many tags) are fenced at once; past it the fence closest
/// to its end goes first.
pub const MAX_FENCES: usize = 4096;
/// At most this many fences per tenant or tag; the oldest go first.
pub const MAX_PER_TENANT: usize = 64;

/// (db, tenant or None for every tenant).
type Scope = (i32, Option<Vec<u8>>);

/// Fences are found by the arriving entry's tenant and tags, so an arrival costs the fences of
/// its own tenant (and of `*`) and tags, never all of them; ended fences are pruned at most
/// once a second.
#[derive(Debug, Default)]
pub struct MigrationFences {
    patterns: HashMap<Scope, VecDeque<PatternFence>>,
    tags: HashMap<(i32, Vec<u8>), VecDeque<Fence>>,
    pruned_at_ms: i64,
}

/// Pushes onto a bounded queue, and keeps the map of queues bounded by dropping the queue whose
/// newest fence ends first.
fn push<K: Clone + Eq + std::hash::Hash, F>(map: &mut HashMap<K, VecDeque<F>>, key: K, item: F, until: impl Fn(&F) -> i64) {
    if map.len() >= MAX_FENCES && !map.contains_key(&key) {
        let ending = map
            .iter()
            .min_by_key(|(_, q)| q.back().map_or(i64::MIN, &until))
            .map(|(k, _)| k.clone());
        if let Some(k) = ending {
            map.remove(&k);
        }
    }
    let queue = map.entry(key).or_default();
    if queue.len() >= MAX_PER_TENANT {
        queue.pop_front();
    }
    queue.push_back(item);
}

impl MigrationFences {
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && self.tags.is_empty()
    }

    pub fn len(&self) -> usize {
        let patterns: usize = self.patterns.values().map(VecDeque::len).sum();
        let tags: usize = self.tags.values().map(VecDeque::len).sum();
        patterns.saturating_add(tags)
    }

    pub fn add_pattern(&mut self, db: i32, tenant: Option<&[u8]>, pattern: &[u8], action: Action, user: Option<&[u8]>, until_ms: i64) {
        let fence = Fence { action, user: user.map(<[u8]>::to_vec), until_ms };
        push(&mut self.patterns, (db, tenant.map(<[u8]>::to_vec)), PatternFence { pattern: Glob::new(pattern), fence }, |f| f.fence.until_ms);
    }

    pub fn add_tags(&mut self, db: i32, tags: &[Vec<u8>], action: Action, user: Option<&[u8]>, until_ms: i64) {
        for t in tags {
            let fence = Fence { action, user: user.map(<[u8]>::to_vec), until_ms };
            push(&mut self.tags, (db, t.clone()), fence, |f| f.until_ms);
        }
    }

    /// The live fences that cover an entry arriving at `key` (tenant, tags) in `db`.
    pub fn covering<T: AsRef<[u8]>>(&self, db: i32, key: &[u8], tenant: &[u8], tags: &[T], now_ms: i64) -> Vec<Cover> {
        let scopes = [(db, Some(tenant.to_vec())), (db, None)];
        let by_pattern = scopes
            .iter()
            .filter_map(|scope| self.patterns.get(scope))
            .flatten()
            .filter(|f| f.pattern.matches(key))
            .map(|f| &f.fence);
        let by_tag = tags.iter().filter_map(|t| self.tags.get(&(db, t.as_ref().to_vec()))).flatten();
        by_pattern
            .chain(by_tag)
            .filter(|f| f.until_ms > now_ms)
            .map(|f| Cover { action: f.action, user: f.user.clone() })
            .collect()
    }

    /// Forgets fences that have ended (at most once a second: arrivals skip ended fences anyway).
    pub fn prune(&mut self, now_ms: i64) {
        if now_ms.saturating_sub(self.pruned_at_ms) < 1000 {
            return;
        }
        self.pruned_at_ms = now_ms;
        self.patterns.retain(|_, queue| {
            queue.retain(|f| f.fence.until_ms > now_ms);
            !queue.is_empty()
        });
        self.tags.retain(|_, queue| {
            queue.retain(|f| f.until_ms > now_ms);
            !queue.is_empty()
        });
    }
}

/// The strongest action among covers.
pub fn strongest(covers: impl IntoIterator<Item = Action>) -> Option<Action> {
    covers.into_iter().reduce(|a, b| if a == Action::Delete || b == Action::Delete { Action::Delete } else { Action::MarkStale })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_TAGS: &[Vec<u8>] = &[];

    fn actions(c: Vec<Cover>) -> Option<Action> {
        strongest(c.into_iter().map(|c| c.action))
    }

    #[test]
    fn fences_cover_matching_arrivals_until_they_end() {
        let mut f = MigrationFences::default();
        f.add_pattern(0, Some(b"t42"), b"fmpa:*", Action::Delete, None, 1000);
        f.add_tags(0, &[b"products".to_vec()], Action::MarkStale, Some(b"alice"), 500);
        assert_eq!(actions(f.covering(0, b"fmpa:list:{t42}", b"t42", NO_TAGS, 10)), Some(Action::Delete));
        assert_eq!(actions(f.covering(0, b"other:{t42}", b"t42", NO_TAGS, 10)), None, "outside the pattern");
        assert_eq!(actions(f.covering(0, b"fmpa:list:{t7}", b"t7", NO_TAGS, 10)), None, "another tenant");
        assert_eq!(actions(f.covering(1, b"fmpa:list:{t42}", b"t42", NO_TAGS, 10)), None, "another database");
        let tagged = f.covering(0, b"x", b"", &[b"products".to_vec()], 10);
        assert_eq!(tagged, vec![Cover { action: Action::MarkStale, user: Some(b"alice".to_vec()) }], "the user travels with it");
        assert_eq!(actions(f.covering(0, b"fmpa:x:{t42}", b"t42", &[b"products".to_vec()], 10)), Some(Action::Delete), "the stronger wins");
        assert_eq!(actions(f.covering(0, b"x", b"", &[b"products".to_vec()], 500)), None, "ended");
        f.prune(1000);
        assert!(f.is_empty());
    }

    #[test]
    fn every_tenant_and_bounded() {
        let mut f = MigrationFences::default();
        f.add_pattern(0, None, b"*", Action::Delete, None, 10);
        assert_eq!(actions(f.covering(0, b"k", b"any", NO_TAGS, 0)), Some(Action::Delete));
        for i in 0..(MAX_FENCES + 10) {
            f.add_pattern(0, Some(format!("t{i}").as_bytes()), b"*", Action::Delete, None, 10 + i as i64);
            f.add_tags(0, &[format!("tag{i}").into_bytes()], Action::Delete, None, 10 + i as i64);
        }
        for i in 0..(MAX_PER_TENANT + 5) {
            f.add_pattern(0, Some(b"busy"), format!("p{i}").as_bytes(), Action::Delete, None, 10_000);
        }
        assert!(f.len() <= 2 * MAX_FENCES + MAX_PER_TENANT, "{}", f.len());
        assert_eq!(actions(f.covering(0, b"k", b"any", NO_TAGS, 0)), None, "the fence closest to its end went first");
        assert_eq!(actions(f.covering(0, b"p0", b"busy", NO_TAGS, 0)), None, "a tenant keeps its newest fences");
        assert_eq!(actions(f.covering(0, b"p68", b"busy", NO_TAGS, 0)), Some(Action::Delete));
    }
}
