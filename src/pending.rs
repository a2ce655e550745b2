//! Pending invalidations of one database: what a large CACHE.INVALIDATE / INVALIDATETAGS made
//! invisible at once and the reclaimer has not removed yet. Pure data, no Redis calls.
//!
//! Every index record carries the epoch it was written in. An invalidation becomes a job: the
//! current epoch, a selector (which entries it covers) and the names still to visit. An entry
//! is dead when a pending job covers it and it was written at or before that job's epoch, so a
//! key written after the invalidation is never affected, and making a whole tenant or a tag
//! dead is O(1): its name set is moved into the job, not walked.
//!
//! A SOFT invalidation is a stale job: covered entries stay in the index (they are still
//! entries, only stale since the job's time) and the job walks their sets in place, with a
//! cursor that survives writes between steps, shortening each entry's TTL as it goes.

use crate::glob::Glob;
use std::sync::Arc;
use std::collections::{btree_set, HashSet, VecDeque};

/// A shared name, as the index holds it.
pub type Name = Arc<[u8]>;

/// Which entries an invalidation covers.
#[derive(Debug)]
pub enum Selector {
    /// Every entry of the database.
    All,
    /// Every entry of one tenant.
    Tenant(Name),
    /// Entries of one tenant (or of every tenant) whose names match a glob.
    Pattern { tenant: Option<Name>, glob: Glob },
    /// Entries carrying any of these tags.
    Tags(Box<[Name]>),
    /// Exactly these names (entries found dead in a saved dataset).
    Names(HashSet<Name>),
}

impl Selector {
    pub fn covers(&self, key: &[u8], tenant: &[u8], tags: &[Name]) -> bool {
        match self {
            Selector::All => true,
            Selector::Tenant(t) => **t == *tenant,
            Selector::Pattern { tenant: scope, glob } => scope.as_ref().is_none_or(|t| **t == *tenant) && glob.matches(key),
            Selector::Tags(wanted) => tags.iter().any(|t| wanted.contains(t)),
            Selector::Names(names) => names.contains(key),
        }
    }
}

/// The names an invalidation still has to visit, consumed as it goes.
#[derive(Debug)]
pub enum Todo {
    Sorted(btree_set::IntoIter<Name>),
    Hashed(crate::shardmap::IntoKeys<Name, ()>),
    Listed(std::vec::IntoIter<Name>),
}

impl Todo {
    fn next(&mut self) -> Option<Name> {
        match self {
            Todo::Sorted(it) => it.next(),
            Todo::Hashed(it) => it.next(),
            Todo::Listed(it) => it.next(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Todo::Sorted(it) => it.len(),
            Todo::Hashed(it) => it.len(),
            Todo::Listed(it) => it.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug)]
pub struct Job {
    /// Entries written at or before this epoch are covered.
    pub epoch: u64,
    pub selector: Selector,
    pub todo: Todo,
}

/// Where a stale job has got to in the sets it walks (resolved by the index, which owns them).
#[derive(Debug)]
pub enum Walk {
    /// Exactly these names.
    Listed(std::vec::IntoIter<Name>),
    /// A tenant's ordered names, after the last one visited.
    Tenant { tenant: Name, after: Option<Name> },
    /// A tag's members, bucket by bucket (see `ShardMap::names_in_bucket`).
    Tag { tag: Name, bits: u32, bucket: u64 },
    /// Every entry of the database, bucket by bucket.
    Keys { bits: u32, bucket: u64 },
    Done,
}

#[derive(Debug)]
pub struct StaleJob {
    /// Entries written at or before this epoch are covered.
    pub epoch: u64,
    /// When the invalidation happened (unix ms): covered entries are stale since then and
    /// expire at the latest when their stale window, counted from then, ends.
    pub at_ms: i64,
    pub selector: Selector,
    pub walk: Walk,
    /// Names found by the walk, still to visit.
    pub batch: Vec<Name>,
    /// Covered entries not visited yet (an estimate, for statistics).
    pub left: usize,
}

/// The pending jobs of a database, oldest first, and its write epoch.
#[derive(Debug, Default)]
pub struct Pending {
    jobs: VecDeque<Job>,
    stale: VecDeque<StaleJob>,
    epoch: u64,
    /// Entries covered and still in the keyspace.
    dead: usize,
}

impl Pending {
    /// The epoch a write made now is stamped with.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Nothing pending, hard or SOFT.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.stale.is_empty()
    }

    /// Whether a hard invalidation is pending (some entries are dead).
    pub fn has_dead(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// The epoch of the most recent pending (hard) invalidation.
    pub fn newest_epoch(&self) -> Option<u64> {
        self.jobs.back().map(|j| j.epoch)
    }

    /// Whether an entry written in `born` with this name, tenant and tags is invalidated.
    pub fn covers(&self, born: u64, key: &[u8], tenant: &[u8], tags: &[Name]) -> bool {
        self.jobs
            .iter()
            .any(|j| born <= j.epoch && j.selector.covers(key, tenant, tags))
    }

    /// When an entry written in `born` with this name, tenant and tags became stale by a
    /// pending SOFT invalidation (the earliest, if several cover it).
    pub fn stale_since(&self, born: u64, key: &[u8], tenant: &[u8], tags: &[Name]) -> Option<i64> {
        self.stale
            .iter()
            .filter(|j| born <= j.epoch && j.selector.covers(key, tenant, tags))
            .map(|j| j.at_ms)
            .min()
    }

    /// Adds a SOFT job covering everything written so far.
    pub fn push_stale(&mut self, selector: Selector, walk: Walk, at_ms: i64, covered: usize) {
        self.stale.push_back(StaleJob { epoch: self.epoch, at_ms, selector, walk, batch: Vec::new(), left: covered });
        self.epoch = self.epoch.saturating_add(1);
    }

    /// The oldest SOFT job, to walk.
    pub fn front_stale(&mut self) -> Option<&mut StaleJob> {
        self.stale.front_mut()
    }

    /// The oldest SOFT job is done.
    pub fn drop_front_stale(&mut self) {
        self.stale.pop_front();
    }

    /// The SOFT jobs, oldest first.
    pub fn stale_jobs(&self) -> impl Iterator<Item = &StaleJob> {
        self.stale.iter()
    }

    /// Adds a job covering everything written so far; later writes get a newer epoch.
    pub fn push(&mut self, selector: Selector, todo: Todo, covered: usize) {
        self.jobs.push_back(Job { epoch: self.epoch, selector, todo });
        self.epoch = self.epoch.saturating_add(1);
        self.dead = self.dead.saturating_add(covered);
    }

    /// A covered entry left the keyspace (reclaimed, or removed any other way).
    pub fn dead_gone(&mut self) {
        self.dead = self.dead.saturating_sub(1);
    }

    /// Covered entries still in the keyspace.
    pub fn dead(&self) -> usize {
        self.dead
    }

    /// The next name to visit, dropping finished jobs first (their last name was dealt with by
    /// the caller before it asked again); None when nothing is pending.
    pub fn next_name(&mut self) -> Option<Name> {
        loop {
            let job = self.jobs.front_mut()?;
            if let Some(name) = job.todo.next() {
                return Some(name);
            }
            self.jobs.pop_front();
            if self.jobs.is_empty() {
                self.dead = 0;
            }
        }
    }

    /// Names still to visit (an upper bound of the entries still to reclaim: a name rewritten
    /// since is visited and skipped).
    pub fn names_left(&self) -> usize {
        let stale = self.stale.iter().map(|j| j.left);
        self.jobs.iter().map(|j| j.todo.len()).chain(stale).fold(0usize, usize::saturating_add)
    }

    pub fn job_count(&self) -> usize {
        self.jobs.len().saturating_add(self.stale.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::from(s.as_bytes())
    }

    #[test]
    fn selectors_cover_what_they_name() {
        let tags = [n("a"), n("b")];
        assert!(Selector::All.covers(b"k", b"t", &tags));
        assert!(Selector::Tenant(n("t")).covers(b"k", b"t", &tags));
        assert!(!Selector::Tenant(n("u")).covers(b"k", b"t", &tags));
        let p = Selector::Pattern { tenant: Some(n("t")), glob: Glob::new(b"user:*") };
        assert!(p.covers(b"user:1", b"t", &[]));
        assert!(!p.covers(b"user:1", b"u", &[]));
        assert!(!p.covers(b"item:1", b"t", &[]));
        let any = Selector::Pattern { tenant: None, glob: Glob::new(b"user:*") };
        assert!(any.covers(b"user:1", b"u", &[]));
        assert!(Selector::Tags(vec![n("b")].into()).covers(b"k", b"t", &tags));
        assert!(!Selector::Tags(vec![n("c")].into()).covers(b"k", b"t", &tags));
        assert!(Selector::Names(HashSet::from([n("k")])).covers(b"k", b"t", &[]));
        assert!(!Selector::Names(HashSet::from([n("k")])).covers(b"j", b"t", &[]));
    }

    #[test]
    fn a_job_covers_only_what_was_written_before_it() {
        let mut p = Pending::default();
        let before = p.epoch();
        p.push(Selector::All, Todo::Listed(vec![n("k")].into_iter()), 1);
        let after = p.epoch();
        assert!(p.covers(before, b"k", b"t", &[]));
        assert!(!p.covers(after, b"k", b"t", &[]));
    }

    #[test]
    fn names_are_visited_in_job_order_and_finished_jobs_drop() {
        let mut p = Pending::default();
        p.push(Selector::All, Todo::Listed(vec![n("a"), n("b")].into_iter()), 2);
        p.push(Selector::All, Todo::Sorted(std::collections::BTreeSet::from([n("d"), n("c")]).into_iter()), 2);
        assert_eq!(p.names_left(), 4);
        let mut seen = Vec::new();
        while let Some(name) = p.next_name() {
            seen.push(name);
        }
        assert_eq!(seen, vec![n("a"), n("b"), n("c"), n("d")]);
        assert!(p.is_empty());
        assert_eq!(p.names_left(), 0);
    }
}
