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
use crate::shardmap::ShardMap;
use crate::ordered::{self, OrderedKeys};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Bound;

pub use crate::key::Key;
pub use crate::name::Name;

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
    /// A tenant's name set, whole (a count may still walk it), consumed once visited.
    Tenant(OrderedKeys),
    /// A tag's member set, whole (a count may still walk it), consumed once visited.
    Tag(ShardMap<Key, ()>),
    Sorted(ordered::IntoKeys),
    Hashed(crate::shardmap::IntoKeys<Key, ()>),
    Listed(std::vec::IntoIter<Key>),
}

impl Todo {
    fn next(&mut self) -> Option<Key> {
        match self {
            Todo::Tenant(set) => {
                *self = Todo::Sorted(std::mem::take(set).into_iter());
                self.next()
            }
            Todo::Tag(set) => {
                *self = Todo::Hashed(std::mem::take(set).into_keys());
                self.next()
            }
            Todo::Sorted(it) => it.next(),
            Todo::Hashed(it) => it.next(),
            Todo::Listed(it) => it.next(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Todo::Tenant(set) => set.len(),
            Todo::Tag(set) => set.len(),
            Todo::Sorted(it) => it.len(),
            Todo::Hashed(it) => it.len(),
            Todo::Listed(it) => it.len(),
        }
    }

    /// Where a count of this (whole) set starts.
    fn count_start(&self) -> Option<Counted> {
        match self {
            Todo::Tenant(_) => Some(Counted::After(None)),
            Todo::Tag(set) => Some(Counted::Buckets { bits: set.bucket_bits(), next: 0 }),
            _ => None,
        }
    }

    /// The next names a count visits after `at`, advancing it; None once the set is done.
    fn count_batch(&self, at: &mut Counted) -> Option<Vec<Key>> {
        match (self, at) {
            (Todo::Tenant(set), Counted::After(after)) => sorted_batch(set, after),
            (Todo::Tag(set), Counted::Buckets { bits, next }) => bucket_batch(*bits, next, |b| set.names_in_bucket(*bits, b)),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The next names of an ordered set after `after` (a few hundred), advancing it; None once
/// nothing is left.
pub fn sorted_batch(set: &OrderedKeys, after: &mut Option<Key>) -> Option<Vec<Key>> {
    const BATCH: usize = 256;
    let from = after.as_ref().map_or(Bound::Unbounded, |a| Bound::Excluded(&a[..]));
    let out: Vec<Key> = set.range_from(from).take(BATCH).cloned().collect();
    *after = Some(out.last()?.clone());
    Some(out)
}

/// The names of the next few hash buckets out of `2^bits` (`in_bucket` lists one), advancing
/// `next`; None once past the last bucket. A batch may be empty.
pub fn bucket_batch(bits: u32, next: &mut u64, in_bucket: impl Fn(u64) -> Vec<Key>) -> Option<Vec<Key>> {
    const BUCKETS_PER_BATCH: u32 = 16;
    let last = crate::shardmap::bucket_mask(bits);
    if *next > last {
        return None;
    }
    let mut out = Vec::new();
    for _ in 0..BUCKETS_PER_BATCH {
        if *next > last || !out.is_empty() {
            break;
        }
        out.extend(in_bucket(*next));
        *next = next.saturating_add(1);
    }
    Some(out)
}

#[derive(Debug)]
pub struct Job {
    /// Entries written at or before this epoch are covered.
    pub epoch: u64,
    pub selector: Selector,
    pub todo: Todo,
    /// While its answer is being counted (see `Pending::push_counted`).
    count: Option<Count>,
}

/// How far a count has walked a job's set: names after it are still to count.
#[derive(Debug, Clone)]
pub enum Counted {
    /// A tenant set, in name order.
    After(Option<Key>),
    /// A tag set, bucket by bucket (`ShardMap::names_in_bucket`).
    Buckets { bits: u32, next: u64 },
}

impl Counted {
    fn passed(&self, name: &[u8]) -> bool {
        match self {
            Counted::After(after) => after.as_ref().is_some_and(|a| name <= &a[..]),
            Counted::Buckets { bits, next } => crate::shardmap::bucket_of(name, *bits) < *next,
        }
    }
}

/// The count of one job's covered entries that no older job covered: an invalidation of a set
/// some of whose members an older pending invalidation already covers is answered once a walk
/// in the reclaimer's slices has counted them, instead of by a walk that stalls the server.
#[derive(Debug)]
struct Count {
    ticket: u64,
    at: Counted,
    live: usize,
}

/// One invalidation's answer while some of its jobs are still counting.
#[derive(Debug, Default)]
struct Ticket {
    jobs_counting: usize,
    counted: usize,
    /// Covered entries whose TTL had passed at the invalidation: not in the answer.
    expired: usize,
}

/// Where a stale job has got to in the sets it walks (resolved by the index, which owns them).
#[derive(Debug)]
pub enum Walk {
    /// Exactly these names.
    Listed(std::vec::IntoIter<Key>),
    /// A tenant's ordered names, after the last one visited.
    Tenant { tenant: Name, after: Option<Key> },
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
    pub batch: Vec<Key>,
    /// Covered entries not visited yet (an estimate, for statistics).
    pub left: usize,
    /// While its answer is being counted (in place, in the set its selector names).
    count: Option<Count>,
}

impl StaleJob {
    /// Its answer is still being counted: it waits (it starts marking once counted).
    pub fn is_counting(&self) -> bool {
        self.count.is_some()
    }
}

/// The set a SOFT job's count walks in place.
#[derive(Debug, Clone)]
pub enum CountSource {
    Tenant(Name),
    Tag(Name),
}

/// The pending jobs of a database, oldest first, and its write epoch.
#[derive(Debug, Default)]
pub struct Pending {
    jobs: VecDeque<Job>,
    stale: VecDeque<StaleJob>,
    epoch: u64,
    /// Entries covered and still in the keyspace (those of jobs still counting as they are
    /// counted).
    dead: usize,
    tickets: HashMap<u64, Ticket>,
    /// Answered invalidations: (ticket, entries invalidated), for the caller to collect.
    answered: Vec<(u64, usize)>,
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

    /// Whether a job older than `epoch` covers the entry.
    fn covered_before(&self, epoch: u64, born: u64, key: &[u8], tenant: &[u8], tags: &[Name]) -> bool {
        self.jobs
            .iter()
            .take_while(|j| j.epoch < epoch)
            .any(|j| born <= j.epoch && j.selector.covers(key, tenant, tags))
    }

    /// Adds a job whose covered entries are counted later (see `Count`), under `ticket`; the
    /// set must be whole (`Todo::Tenant` or `Todo::Tag`). Its covered entries are dead at
    /// once; they enter `dead` as they are counted.
    pub fn push_counted(&mut self, selector: Selector, todo: Todo, ticket: u64) {
        let Some(at) = todo.count_start() else {
            return self.push(selector, todo, 0);
        };
        let t = self.tickets.entry(ticket).or_default();
        t.jobs_counting = t.jobs_counting.saturating_add(1);
        let count = Some(Count { ticket, at, live: 0 });
        self.jobs.push_back(Job { epoch: self.epoch, selector, todo, count });
        self.epoch = self.epoch.saturating_add(1);
    }

    /// The answer of `ticket`, after its jobs were pushed: `counted` entries counted at once,
    /// `expired` to leave out. Returned now when none of its jobs counts, otherwise answered
    /// (`take_answered`) once they have.
    pub fn open_ticket(&mut self, ticket: u64, counted: usize, expired: usize) -> Option<usize> {
        let t = self.tickets.entry(ticket).or_default();
        t.counted = t.counted.saturating_add(counted);
        t.expired = t.expired.saturating_add(expired);
        if t.jobs_counting > 0 {
            return None;
        }
        let t = self.tickets.remove(&ticket)?;
        Some(t.counted.saturating_sub(t.expired))
    }

    fn close(&mut self, ticket: u64) {
        if let Some(t) = self.tickets.remove(&ticket) {
            self.answered.push((ticket, t.counted.saturating_sub(t.expired)));
        }
    }

    /// Whether some invalidation is still counting.
    pub fn counting(&self) -> bool {
        !self.tickets.is_empty()
    }

    /// Answered invalidations since last asked.
    pub fn take_answered(&mut self) -> Vec<(u64, usize)> {
        std::mem::take(&mut self.answered)
    }

    /// An entry written in `born` is about to change (leave the keyspace, be rewritten, or be
    /// restamped by a SOFT invalidation): a counting job that covers it and has not reached it
    /// yet counts it now, unless an older job covers it.
    pub fn counting_sees_change(&mut self, born: u64, key: &[u8], tenant: &[u8], tags: &[Name]) {
        if !self.counting() {
            return;
        }
        let counts_it = |count: &Option<Count>, epoch: u64, selector: &Selector| {
            count.as_ref().is_some_and(|c| !c.at.passed(key))
                && born <= epoch
                && selector.covers(key, tenant, tags)
                && !self.covered_before(epoch, born, key, tenant, tags)
        };
        let hard: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| self.jobs.get(i).is_some_and(|j| counts_it(&j.count, j.epoch, &j.selector)))
            .collect();
        let soft: Vec<usize> = (0..self.stale.len())
            .filter(|&i| self.stale.get(i).is_some_and(|j| counts_it(&j.count, j.epoch, &j.selector)))
            .collect();
        for i in hard {
            if let Some(c) = self.jobs.get_mut(i).and_then(|j| j.count.as_mut()) {
                c.live = c.live.saturating_add(1);
                self.dead = self.dead.saturating_add(1);
            }
        }
        // A SOFT job's entries stay live: they are not in `dead`.
        for i in soft {
            if let Some(c) = self.stale.get_mut(i).and_then(|j| j.count.as_mut()) {
                c.live = c.live.saturating_add(1);
            }
        }
    }

    /// The next names the oldest counting job visits, with its index and epoch, advancing its
    /// walk; a job that has nothing left is finished (its ticket answered when its last job
    /// is) and the next one asked.
    pub fn next_to_count(&mut self) -> Option<(usize, u64, Vec<Key>)> {
        loop {
            let i = self.jobs.iter().position(|j| j.count.is_some())?;
            let job = self.jobs.get_mut(i)?;
            let epoch = job.epoch;
            let Job { todo, count, .. } = job;
            let batch = count.as_mut().and_then(|c| todo.count_batch(&mut c.at));
            match batch {
                Some(names) => return Some((i, epoch, names)),
                None => self.finish_count(i),
            }
        }
    }

    /// Of the entries written in `born` among a counting job's names, those no older job covers.
    pub fn counts_for(&self, epoch: u64, born: u64, key: &[u8], tenant: &[u8], tags: &[Name]) -> bool {
        born <= epoch && !self.covered_before(epoch, born, key, tenant, tags)
    }

    /// `live` more entries counted by job `i`.
    pub fn add_counted(&mut self, i: usize, live: usize) {
        if let Some(c) = self.jobs.get_mut(i).and_then(|j| j.count.as_mut()) {
            c.live = c.live.saturating_add(live);
            self.dead = self.dead.saturating_add(live);
        }
    }

    fn finish_count(&mut self, i: usize) {
        if let Some(c) = self.jobs.get_mut(i).and_then(|j| j.count.take()) {
            self.settle(c);
        }
    }

    /// A job's count is complete: its ticket is answered once all of its jobs' are.
    fn settle(&mut self, c: Count) {
        let Some(t) = self.tickets.get_mut(&c.ticket) else {
            return;
        };
        t.counted = t.counted.saturating_add(c.live);
        t.jobs_counting = t.jobs_counting.saturating_sub(1);
        if t.jobs_counting == 0 {
            self.close(c.ticket);
        }
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
        self.stale.push_back(StaleJob { epoch: self.epoch, at_ms, selector, walk, batch: Vec::new(), left: covered, count: None });
        self.epoch = self.epoch.saturating_add(1);
    }

    /// Adds a SOFT job (see `push_stale`) whose covered entries are counted later, walking in
    /// place the tenant or the tag its selector names from `at`, under `ticket`.
    pub fn push_stale_counted(&mut self, selector: Selector, walk: Walk, at_ms: i64, estimate: usize, ticket: u64, at: Counted) {
        let t = self.tickets.entry(ticket).or_default();
        t.jobs_counting = t.jobs_counting.saturating_add(1);
        let count = Some(Count { ticket, at, live: 0 });
        self.stale.push_back(StaleJob { epoch: self.epoch, at_ms, selector, walk, batch: Vec::new(), left: estimate, count });
        self.epoch = self.epoch.saturating_add(1);
    }

    /// Whether a SOFT invalidation is still counting (its count walks a set in place, which
    /// must not move away meanwhile).
    pub fn stale_counting(&self) -> bool {
        self.stale.iter().any(|j| j.count.is_some())
    }

    /// The oldest counting SOFT job: its index, epoch, the set it walks and where it is.
    pub fn next_stale_to_count(&self) -> Option<(usize, u64, CountSource, Counted)> {
        self.stale.iter().enumerate().find_map(|(i, j)| {
            let c = j.count.as_ref()?;
            let source = match &j.selector {
                Selector::Tenant(t) => CountSource::Tenant(t.clone()),
                Selector::Tags(tags) => CountSource::Tag(tags.first()?.clone()),
                _ => return None,
            };
            Some((i, j.epoch, source, c.at.clone()))
        })
    }

    /// SOFT job `i` counted `live` more entries and got to `at`; None: it is done.
    pub fn stale_counted(&mut self, i: usize, at: Option<Counted>, live: usize) {
        let Some(job) = self.stale.get_mut(i) else {
            return;
        };
        match (at, job.count.as_mut()) {
            (Some(at), Some(c)) => {
                c.at = at;
                c.live = c.live.saturating_add(live);
            }
            _ => {
                if let Some(c) = job.count.take() {
                    self.settle(c);
                }
            }
        }
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
        self.jobs.push_back(Job { epoch: self.epoch, selector, todo, count: None });
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
    /// the caller before it asked again); None when nothing is pending or the oldest job is
    /// still counting.
    pub fn next_name(&mut self) -> Option<Key> {
        loop {
            let job = self.jobs.front_mut()?;
            if job.count.is_some() {
                return None;
            }
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

    fn k(s: &str) -> Key {
        Key::new_key(s.as_bytes(), 0, crate::expiry::NEVER, 0, Default::default())
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
        p.push(Selector::All, Todo::Listed(vec![k("k")].into_iter()), 1);
        let after = p.epoch();
        assert!(p.covers(before, b"k", b"t", &[]));
        assert!(!p.covers(after, b"k", b"t", &[]));
    }

    #[test]
    fn names_are_visited_in_job_order_and_finished_jobs_drop() {
        let mut p = Pending::default();
        p.push(Selector::All, Todo::Listed(vec![k("a"), k("b")].into_iter()), 2);
        p.push(Selector::All, Todo::Sorted(OrderedKeys::from_iter([k("d"), k("c")]).into_iter()), 2);
        assert_eq!(p.names_left(), 4);
        let mut seen = Vec::new();
        while let Some(name) = p.next_name() {
            seen.push(name);
        }
        assert_eq!(seen, vec![k("a"), k("b"), k("c"), k("d")]);
        assert!(p.is_empty());
        assert_eq!(p.names_left(), 0);
    }
}
