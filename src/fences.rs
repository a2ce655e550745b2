//! Pure: invalidations remembered for a while in cluster mode, so that an entry arriving later
//! by MIGRATE/RESTORE — from the source of a slot migration, where the invalidation never ran
//! (Redis routes it to one side only) — is invalidated on arrival instead of being served again.
//!
//! Dropping an arriving entry is always safe for a cache (the next read recomputes it), so a
//! fence errs on that side: while it lasts it also drops matching entries written on the
//! source after the invalidation.

use crate::glob::Glob;
use std::collections::{HashMap, VecDeque};

/// What happens to an arriving entry a fence covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Delete,
    /// SOFT invalidation: the entry becomes stale.
    MarkStale,
}

#[derive(Debug)]
struct PatternFence {
    pattern: Glob,
    action: Action,
    until_ms: i64,
}

/// At most this many tenants (and as many tags) are fenced at once; past it the fence closest
/// to its end goes first.
pub const MAX_FENCES: usize = 4096;
/// At most this many pattern fences per tenant; the oldest go first.
pub const MAX_PER_TENANT: usize = 64;

/// (db, tenant or None for every tenant).
type Scope = (i32, Option<Vec<u8>>);

/// Fences are found by the arriving entry's tenant, so an arrival costs the fences of its own
/// tenant (and of `*`), never all of them.
#[derive(Debug, Default)]
pub struct MigrationFences {
    patterns: HashMap<Scope, VecDeque<PatternFence>>,
    /// (db, tag) → (action, until).
    tags: HashMap<(i32, Vec<u8>), (Action, i64)>,
}

fn stronger(a: Action, b: Action) -> Action {
    if a == Action::Delete || b == Action::Delete {
        Action::Delete
    } else {
        Action::MarkStale
    }
}

impl MigrationFences {
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty() && self.tags.is_empty()
    }

    pub fn len(&self) -> usize {
        let patterns: usize = self.patterns.values().map(VecDeque::len).sum();
        patterns.saturating_add(self.tags.len())
    }

    pub fn add_pattern(&mut self, db: i32, tenant: Option<&[u8]>, pattern: &[u8], action: Action, until_ms: i64) {
        let scope: Scope = (db, tenant.map(<[u8]>::to_vec));
        if self.patterns.len() >= MAX_FENCES && !self.patterns.contains_key(&scope) {
            let ending = self
                .patterns
                .iter()
                .min_by_key(|(_, q)| q.back().map_or(i64::MIN, |f| f.until_ms))
                .map(|(k, _)| k.clone());
            if let Some(k) = ending {
                self.patterns.remove(&k);
            }
        }
        let queue = self.patterns.entry(scope).or_default();
        if queue.len() >= MAX_PER_TENANT {
            queue.pop_front();
        }
        queue.push_back(PatternFence { pattern: Glob::new(pattern), action, until_ms });
    }

    pub fn add_tags(&mut self, db: i32, tags: &[Vec<u8>], action: Action, until_ms: i64) {
        for t in tags {
            if self.tags.len() >= MAX_FENCES && !self.tags.contains_key(&(db, t.clone())) {
                // Bounded: forget the fence closest to its end.
                let first = self.tags.iter().min_by_key(|(_, (_, until))| *until).map(|(k, _)| k.clone());
                if let Some(k) = first {
                    self.tags.remove(&k);
                }
            }
            let slot = self.tags.entry((db, t.clone())).or_insert((action, until_ms));
            *slot = (stronger(slot.0, action), slot.1.max(until_ms));
        }
    }

    /// What a live fence says about an entry arriving at `key` (tenant, tags) in `db`.
    pub fn covering(&self, db: i32, key: &[u8], tenant: &[u8], tags: &[Vec<u8>], now_ms: i64) -> Option<Action> {
        let scopes = [(db, Some(tenant.to_vec())), (db, None)];
        let by_pattern = scopes
            .iter()
            .filter_map(|scope| self.patterns.get(scope))
            .flatten()
            .filter(|f| f.until_ms > now_ms && f.pattern.matches(key))
            .map(|f| f.action);
        let by_tag = tags
            .iter()
            .filter_map(|t| self.tags.get(&(db, t.clone())))
            .filter(|(_, until)| *until > now_ms)
            .map(|(action, _)| *action);
        by_pattern.chain(by_tag).reduce(stronger)
    }

    /// Forgets fences that have ended.
    pub fn prune(&mut self, now_ms: i64) {
        self.patterns.retain(|_, queue| {
            queue.retain(|f| f.until_ms > now_ms);
            !queue.is_empty()
        });
        self.tags.retain(|_, (_, until)| *until > now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_cover_matching_arrivals_until_they_end() {
        let mut f = MigrationFences::default();
        f.add_pattern(0, Some(b"t42"), b"fmpa:*", Action::Delete, 1000);
        f.add_tags(0, &[b"products".to_vec()], Action::MarkStale, 500);
        assert_eq!(f.covering(0, b"fmpa:list:{t42}", b"t42", &[], 10), Some(Action::Delete));
        assert_eq!(f.covering(0, b"other:{t42}", b"t42", &[], 10), None, "outside the pattern");
        assert_eq!(f.covering(0, b"fmpa:list:{t7}", b"t7", &[], 10), None, "another tenant");
        assert_eq!(f.covering(1, b"fmpa:list:{t42}", b"t42", &[], 10), None, "another database");
        assert_eq!(f.covering(0, b"x", b"", &[b"products".to_vec()], 10), Some(Action::MarkStale));
        assert_eq!(f.covering(0, b"fmpa:x:{t42}", b"t42", &[b"products".to_vec()], 10), Some(Action::Delete), "the stronger wins");
        assert_eq!(f.covering(0, b"x", b"", &[b"products".to_vec()], 500), None, "ended");
        f.prune(1000);
        assert!(f.is_empty());
    }

    #[test]
    fn every_tenant_and_bounded() {
        let mut f = MigrationFences::default();
        f.add_pattern(0, None, b"*", Action::Delete, 10);
        assert_eq!(f.covering(0, b"k", b"any", &[], 0), Some(Action::Delete));
        for i in 0..(MAX_FENCES + 10) {
            f.add_pattern(0, Some(format!("t{i}").as_bytes()), b"*", Action::Delete, 10 + i as i64);
            f.add_tags(0, &[format!("tag{i}").into_bytes()], Action::Delete, 10 + i as i64);
        }
        for i in 0..(MAX_PER_TENANT + 5) {
            f.add_pattern(0, Some(b"busy"), format!("p{i}").as_bytes(), Action::Delete, 10_000);
        }
        assert!(f.len() <= 2 * MAX_FENCES + MAX_PER_TENANT, "{}", f.len());
        assert_eq!(f.covering(0, b"k", b"any", &[], 0), None, "the fence closest to its end went first");
        assert_eq!(f.covering(0, b"p0", b"busy", &[], 0), None, "a tenant keeps its newest fences");
        assert_eq!(f.covering(0, b"p68", b"busy", &[], 0), Some(Action::Delete));
    }
}
