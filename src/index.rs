//! Pure index of live entries, per database: tenant → ordered key names, tag → key names, and
//! key → (tenant, tags) so any removal needs only the key name. Names are shared `Name`s (thin
//! pointers): one allocation per key name, tenant and tag, whatever the number of structures
//! referring to it.

use crate::expiry::{self, Expiries};
use crate::glob::Glob;
use crate::pending::{bucket_batch, sorted_batch, CountSource, Counted, Pending, Selector, Todo, Walk};
use crate::shardmap::{Hashed, ShardMap};
use crate::shardmap::Entry;
use crate::tagmap::{Members, NameSet, TagMap, Taken};
use crate::ordered::OrderedKeys;
use std::collections::{HashMap, HashSet};
use std::ops::Bound;

pub use crate::pending::{Key, Name};

use crate::name::Labels;

/// What the index holds for one key: the key map's copy of its name, with its write epoch,
/// expiry, size and labels (shared with the entry; see `key`).
#[derive(Debug, Clone, Copy)]
struct KeyRecord<'a> {
    key: &'a Key,
    labels: &'a Labels,
}

impl<'a> KeyRecord<'a> {
    fn tenant(self) -> &'a Name {
        self.labels.tenant()
    }

    fn tags(self) -> &'a [Name] {
        self.labels.tags()
    }

    fn born(self) -> u64 {
        self.key.born()
    }

    fn expires_at(self) -> i64 {
        self.key.expires_at()
    }

    fn entry_bytes(self) -> usize {
        self.key.entry_bytes()
    }
}

/// Each key's name, with its record.
type Keys = ShardMap<Key, ()>;

impl<'a> KeyRecord<'a> {
    fn of(key: &'a Key) -> KeyRecord<'a> {
        KeyRecord { key, labels: key.labels() }
    }
}

fn record<'a>(keys: &'a Keys, key: &[u8]) -> Option<KeyRecord<'a>> {
    keys.get_key_value(key).map(|(key, _)| KeyRecord::of(key))
}

fn records(keys: &Keys) -> impl Iterator<Item = KeyRecord<'_>> + '_ {
    keys.keys().map(KeyRecord::of)
}

type TenantKeys = NameSet<OrderedKeys>;

/// A tenant's keys in name order, and the labels its entries without tags share.
#[derive(Debug)]
struct Tenant {
    keys: TenantKeys,
    untagged: Labels,
}

#[derive(Debug, Default)]
pub struct DbIndex {
    keys: Keys,
    tenants: ShardMap<Name, Tenant>,
    tags: TagMap,
    entry_bytes: usize,
    /// Heap bytes of the key and tenant names and the tenants' key orders (the tables excluded;
    /// the tag map keeps its own), kept up to date by every change so `heap_bytes` is O(1).
    item_bytes: usize,
    /// Invalidations made visible but not yet reclaimed.
    pending: Pending,
    /// Names by expiry time, to leave out of an invalidation's count the entries whose TTL
    /// has passed but that Redis has not removed yet.
    expiries: Expiries,
    /// While the index is rebuilt after a load: each new key with its tenant, put into the
    /// tenants' key orders at once by `end_bulk` (see `Index::begin_bulk`).
    bulk: Option<Vec<(Name, Key)>>,
}

/// What an index holds for one key, owned (for checks and reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    pub tenant: Vec<u8>,
    pub tags: Vec<Vec<u8>>,
    /// Unix ms, `expiry::NEVER` without a TTL.
    pub expires_at: i64,
}

impl Indexed {
    fn of(r: KeyRecord<'_>) -> Indexed {
        Indexed {
            tenant: r.tenant().to_vec(),
            tags: r.tags().iter().map(|t| t.to_vec()).collect(),
            expires_at: r.expires_at(),
        }
    }
}

/// What an invalidation does to the entries it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Delete them.
    Remove,
    /// SOFT: mark them stale as of this time (unix ms).
    MarkStale { at_ms: i64 },
}

/// Which invalidations' counts (see `DbIndex::count_some`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counts {
    Hard,
    Soft,
    All,
}

/// What the reclaimer does with the next name it visits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing: the name was rewritten, removed or already dealt with since.
    Skip,
    /// A dead entry (hard invalidation): delete it.
    Remove(Key),
    /// An entry stale since this time (SOFT invalidation): shorten its TTL.
    MarkStale(Key, i64),
}

/// Names a stale job's walk visits next (a few hundred at most), advancing it; the walk is
/// `Done` once nothing is left after this batch.
fn next_batch(walk: &mut Walk, tenants: &ShardMap<Name, Tenant>, tags: &TagMap, keys: &Keys) -> Vec<Key> {
    const BATCH: usize = 256;
    const BUCKETS_PER_BATCH: u32 = 16;
    let mut out = Vec::new();
    let done = match walk {
        Walk::Listed(names) => {
            out.extend(names.by_ref().take(BATCH));
            names.len() == 0
        }
        Walk::Tenant { tenant, after } => {
            if let Some(set) = tenants.get(tenant) {
                let from = after.as_ref().map_or(Bound::Unbounded, |a| Bound::Excluded(&a[..]));
                out.extend(set.keys.names.range_from(from).take(BATCH).cloned());
            }
            *after = out.last().cloned();
            out.is_empty()
        }
        Walk::Tag { tag, bits, bucket } => {
            let last = crate::shardmap::bucket_mask(*bits);
            let members = tags.get(tag);
            for _ in 0..BUCKETS_PER_BATCH {
                if *bucket > last || !out.is_empty() {
                    break;
                }
                if let Some(members) = members {
                    out.extend(members.in_bucket(*bits, *bucket));
                }
                *bucket = bucket.saturating_add(1);
            }
            // A tag gone has no member left from before the invalidation.
            *bucket > last || members.is_none()
        }
        Walk::Keys { bits, bucket } => {
            let last = crate::shardmap::bucket_mask(*bits);
            for _ in 0..BUCKETS_PER_BATCH {
                if *bucket > last || !out.is_empty() {
                    break;
                }
                out.extend(keys.names_in_bucket(*bits, *bucket));
                *bucket = bucket.saturating_add(1);
            }
            *bucket > last
        }
        Walk::Done => true,
    };
    if done {
        *walk = Walk::Done;
    }
    out
}

impl DbIndex {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    pub fn tag_count(&self) -> usize {
        self.tags.len()
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.keys.contains_key(key)
    }

    /// Whether a SOFT invalidation is waiting to be applied here.
    pub fn has_stale_pending(&self) -> bool {
        self.pending.stale_jobs().next().is_some()
    }

    /// Whether invalidations are waiting to be reclaimed here.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn dead(&self, r: KeyRecord<'_>) -> bool {
        !self.pending.is_empty() && self.pending.covers(r.born(), r.key, r.tenant(), r.tags())
    }

    /// Whether `key` is an entry a pending invalidation covers (gone for every reader).
    pub fn is_dead(&self, key: &[u8]) -> bool {
        !self.pending.is_empty() && record(&self.keys, key).is_some_and(|r| self.dead(r))
    }

    /// Live (not invalidated) entries among `names`.
    fn live_among<'a>(&self, names: impl Iterator<Item = &'a Key>) -> usize {
        names
            .filter(|k| record(&self.keys, k).is_some_and(|r| !self.dead(r)))
            .count()
    }

    /// Live entries of `tenant` (None: of the database), counted one by one (what the
    /// invalidations' answers are checked against).
    #[cfg(test)]
    fn live_in_tenant(&self, tenant: Option<&[u8]>) -> usize {
        match tenant {
            None => self.live_len(),
            Some(t) => self.tenants.get(t).map_or(0, |set| self.live_among(set.keys.names.iter())),
        }
    }

    /// Live entries carrying `tag`, counted one by one.
    #[cfg(test)]
    fn live_with_tag(&self, tag: &[u8]) -> usize {
        self.tags.get(tag).map_or(0, |members| self.live_among(members.iter()))
    }

    /// Entries of `tenant` (None: of the database), invalidated or not: an upper bound of
    /// its live entries, in O(1).
    pub fn tenant_len(&self, tenant: Option<&[u8]>) -> usize {
        match tenant {
            None => self.keys.len(),
            Some(t) => self.tenants.get(t).map_or(0, |set| set.keys.names.len()),
        }
    }

    /// Entries carrying `tag`, invalidated or not: an upper bound of its live entries, in O(1).
    pub fn tag_len(&self, tag: &[u8]) -> usize {
        self.tags.get(tag).map_or(0, Members::len)
    }

    /// `doom_tenant` or `soften_tenant`, at `now_ms`; see `doom_tenant` for `ticket`.
    pub fn invalidate_tenant(&mut self, tenant: Option<&[u8]>, how: How, now_ms: i64, ticket: u64) -> Option<usize> {
        match how {
            How::Remove => self.doom_tenant(tenant, now_ms, ticket),
            How::MarkStale { at_ms } => self.soften_tenant(tenant, at_ms, now_ms, ticket),
        }
    }

    /// `doom_tag` or `soften_tag`, at `now_ms`; see `doom_tenant` for `ticket`.
    pub fn invalidate_tag(&mut self, tag: &[u8], how: How, now_ms: i64, ticket: u64) -> Option<usize> {
        match how {
            How::Remove => self.doom_tag(tag, now_ms, ticket),
            How::MarkStale { at_ms } => self.soften_tag(tag, at_ms, now_ms, ticket),
        }
    }

    /// Whether `set` (written since `since`) may hold entries a pending invalidation covers,
    /// so that its live entries need counting one by one.
    fn overlaps_pending(&self, since: u64) -> bool {
        self.pending.newest_epoch().is_some_and(|newest| newest >= since)
    }

    /// `doom_names` or `soften_names`, at `now_ms`.
    pub fn invalidate_names(&mut self, selector: Selector, names: Vec<Key>, how: How, now_ms: i64) -> usize {
        match how {
            How::Remove => self.doom_names(selector, names, now_ms),
            How::MarkStale { at_ms } => self.soften_names(selector, names, at_ms, now_ms),
        }
    }

    /// Invalidates every entry of `tenant` (None: of the database) in O(1): the tenant's name
    /// set moves into a pending job (one per tenant for the database). Returns the entries
    /// invalidated (not those found expired at `now_ms`, though they are covered too); or,
    /// when an older pending invalidation may cover some of them, None: they are counted by
    /// `count_some` and the answer comes out of `take_answered` under `ticket`.
    pub fn doom_tenant(&mut self, tenant: Option<&[u8]>, now_ms: i64, ticket: u64) -> Option<usize> {
        let Some(t) = tenant else {
            return Some(self.doom_all(now_ms));
        };
        self.finish_counts(Counts::Soft);
        let Some((name, set)) = self.tenants.remove_entry(t) else {
            return Some(0);
        };
        let selector = Selector::Tenant(name.clone());
        let expired = self.expired_covered(&selector, now_ms);
        self.item_bytes = self.item_bytes.saturating_sub(footprint::tenant(&name, &set));
        if self.overlaps_pending(set.keys.since) {
            self.pending.push_counted(selector, Todo::Tenant(set.keys.names), ticket);
            return self.pending.open_ticket(ticket, 0, expired);
        }
        let len = set.keys.names.len();
        self.pending.push(selector, Todo::Tenant(set.keys.names), len);
        Some(len.saturating_sub(expired))
    }

    /// Invalidates every entry of the database in O(1): every tenant's set moves into a
    /// pending job. Its answer is every entry not invalidated already (`live_len`), exact once
    /// no other invalidation is still counting (finished first: a stall in that case only).
    fn doom_all(&mut self, now_ms: i64) -> usize {
        self.finish_counts(Counts::All);
        let expired = self.expired_covered(&Selector::All, now_ms);
        let count = self.live_len();
        let sets = std::mem::take(&mut self.tenants);
        let moved = sets.iter().map(|(t, set)| footprint::tenant(t, set)).fold(0, usize::saturating_add);
        self.item_bytes = self.item_bytes.saturating_sub(moved);
        let mut covered = count;
        for set in sets.into_values() {
            self.pending.push(Selector::All, Todo::Tenant(set.keys.names), std::mem::take(&mut covered));
        }
        count.saturating_sub(expired)
    }

    /// Invalidates every entry carrying `tag` in O(1): its member set moves into a pending job.
    /// Answers as `doom_tenant`.
    pub fn doom_tag(&mut self, tag: &[u8], now_ms: i64, ticket: u64) -> Option<usize> {
        self.finish_counts(Counts::Soft);
        let Some(name) = self.tags.get_key_value(tag).map(|(name, _)| name.clone()) else {
            return Some(0);
        };
        let selector = Selector::Tags(vec![name].into());
        let expired = self.expired_covered(&selector, now_ms);
        let Some((_, members)) = self.tags.remove_entry(tag) else {
            return Some(0);
        };
        let counted = match members {
            Taken::One(k) => {
                let live = self.live_among(std::iter::once(&k));
                self.pending.push(selector, Todo::Listed(vec![k].into_iter()), live);
                live
            }
            Taken::Many(set) if self.overlaps_pending(set.since) => {
                self.pending.push_counted(selector, Todo::Tag(set.names), ticket);
                0
            }
            Taken::Many(set) => {
                let len = set.names.len();
                self.pending.push(selector, Todo::Tag(set.names), len);
                len
            }
        };
        self.pending.open_ticket(ticket, counted, expired)
    }

    /// Finishes the counts of `which` invalidations now. Two cases need it (a stall in those
    /// double-overlap cases only): a SOFT count walks its tenant or tag set in place, so it
    /// must finish before a hard invalidation moves sets away; and `live_len` is exact only
    /// while no hard invalidation is counting.
    fn finish_counts(&mut self, which: Counts) {
        while self.count_step(which).is_some() {}
    }

    /// Counts, for invalidations waiting for their answer, about `max` more names (hard ones
    /// first); false once nothing is left to count.
    pub fn count_some(&mut self, max: usize) -> bool {
        let mut seen = 0usize;
        while seen < max {
            let Some(counted) = self.count_step(Counts::All) else {
                return false;
            };
            seen = seen.saturating_add(counted.max(1));
        }
        true
    }

    /// One batch of a count of `which` invalidations: how many names it looked at; None when
    /// none of them is counting.
    fn count_step(&mut self, which: Counts) -> Option<usize> {
        if which != Counts::Soft {
            if let Some((job, epoch, names)) = self.pending.next_to_count() {
                let live = self.live_for(epoch, &names);
                self.pending.add_counted(job, live);
                return Some(names.len());
            }
        }
        if which == Counts::Hard {
            return None;
        }
        let (job, epoch, source, mut at) = self.pending.next_stale_to_count()?;
        let names = self.names_after(&source, &mut at);
        let live = names.as_ref().map_or(0, |n| self.live_for(epoch, n));
        self.pending.stale_counted(job, names.is_some().then_some(at), live);
        Some(names.map_or(0, |n| n.len()))
    }

    /// Among `names`, the entries a count of an invalidation made in `epoch` counts.
    fn live_for(&self, epoch: u64, names: &[Key]) -> usize {
        names
            .iter()
            .filter(|k| record(&self.keys, k).is_some_and(|r| self.pending.counts_for(epoch, r.born(), k, r.tenant(), r.tags())))
            .count()
    }

    /// The next names of a tenant's or a tag's set after `at`, advancing it; None once done
    /// (a set gone has no member left from before: each one's removal was counted).
    fn names_after(&self, source: &CountSource, at: &mut Counted) -> Option<Vec<Key>> {
        match (source, at) {
            (CountSource::Tenant(t), Counted::After(after)) => sorted_batch(&self.tenants.get(t)?.keys.names, after),
            (CountSource::Tag(t), Counted::Buckets { bits, next }) => {
                let members = self.tags.get(t)?;
                let bits = *bits;
                bucket_batch(bits, next, |bucket| members.in_bucket(bits, bucket))
            }
            _ => None,
        }
    }

    /// Whether an invalidation is still counting its answer here.
    pub fn counting(&self) -> bool {
        self.pending.counting()
    }

    /// Invalidations answered since last asked: (ticket, entries invalidated).
    pub fn take_answered(&mut self) -> Vec<(u64, usize)> {
        self.pending.take_answered()
    }

    /// Invalidates `names` (live entries already found by `matching`/`tagged`), covered by
    /// `selector`, without touching them now.
    pub fn doom_names(&mut self, selector: Selector, names: Vec<Key>, now_ms: i64) -> usize {
        let count = names.len();
        let expired = self.expired_covered(&selector, now_ms);
        self.pending.push(selector, Todo::Listed(names.into_iter()), count);
        count.saturating_sub(expired)
    }

    /// Invalidates exactly `names` (the dead entries of a saved dataset, after a load).
    pub fn doom_exactly(&mut self, names: HashSet<Name>) {
        let todo: Vec<Key> = names.iter().filter_map(|k| self.keys.get_key_value(k).map(|(k, _)| k.clone())).collect();
        let covered = self.live_among(todo.iter());
        self.pending.push(Selector::Names(names), Todo::Listed(todo.into_iter()), covered);
    }

    /// The next name the reclaimer visits and what to do with it; `None` when nothing is
    /// pending. Hard invalidations go first. The caller acts before asking again.
    pub fn next_step(&mut self) -> Option<Step> {
        if self.pending.has_dead() {
            if let Some(name) = self.pending.next_name() {
                return Some(if self.is_dead(&name) { Step::Remove(name) } else { Step::Skip });
            }
        }
        let name = loop {
            let DbIndex { pending, tenants, tags, keys, .. } = self;
            let job = pending.front_stale()?;
            if job.is_counting() {
                return None;
            }
            if let Some(name) = job.batch.pop() {
                job.left = job.left.saturating_sub(1);
                break name;
            }
            if matches!(job.walk, Walk::Done) {
                pending.drop_front_stale();
                continue;
            }
            job.batch = next_batch(&mut job.walk, tenants, tags, keys);
        };
        Some(match self.stale_since(&name) {
            Some(at_ms) => Step::MarkStale(name, at_ms),
            None => Step::Skip,
        })
    }

    /// When `key` became stale by a pending SOFT invalidation not applied to it yet (None for
    /// a dead entry: it is gone, not stale).
    pub fn stale_since(&self, key: &[u8]) -> Option<i64> {
        if self.pending.is_empty() {
            return None;
        }
        let r = record(&self.keys, key)?;
        if self.dead(r) {
            return None;
        }
        self.pending.stale_since(r.born(), key, r.tenant(), r.tags())
    }

    /// A SOFT invalidation was applied to `key` (its TTL shortened): no pending job covers it
    /// any more, as if it had just been written.
    pub fn restamp(&mut self, key: &[u8]) {
        let epoch = self.pending.epoch();
        if let Some(r) = record(&self.keys, key) {
            self.pending.counting_sees_change(r.born(), key, r.tenant(), r.tags());
            r.key.set_born(epoch);
        }
    }

    /// SOFT-invalidates every entry of `tenant` (None: of the database) as of `at_ms`, in O(1):
    /// a job walks the tenant's names later. Returns the entries invalidated.
    /// Answers as `doom_tenant` (a count walks the tenant's set in place).
    pub fn soften_tenant(&mut self, tenant: Option<&[u8]>, at_ms: i64, now_ms: i64, ticket: u64) -> Option<usize> {
        let (selector, walk, count) = match tenant {
            Some(t) => {
                let Some((name, set)) = self.tenants.get_key_value(t) else {
                    return Some(0);
                };
                let len = set.keys.names.len();
                let count = if self.overlaps_pending(set.keys.since) { Err((len, Counted::After(None))) } else { Ok(len) };
                (Selector::Tenant(name.clone()), Walk::Tenant { tenant: name.clone(), after: None }, count)
            }
            None => {
                self.finish_counts(Counts::Hard);
                (Selector::All, Walk::Keys { bits: self.keys.bucket_bits(), bucket: 0 }, Ok(self.live_len()))
            }
        };
        let expired = self.expired_covered(&selector, now_ms);
        self.push_soft(selector, walk, at_ms, count, expired, ticket)
    }

    /// SOFT-invalidates every entry carrying `tag` as of `at_ms`, in O(1). Answers as
    /// `doom_tenant` (a count walks the tag's set in place).
    pub fn soften_tag(&mut self, tag: &[u8], at_ms: i64, now_ms: i64, ticket: u64) -> Option<usize> {
        let Some((name, members)) = self.tags.get_key_value(tag) else {
            return Some(0);
        };
        let (bits, count) = match members {
            Members::One(k) => (0, Ok(self.live_among(std::iter::once(k)))),
            Members::Many(set) if self.overlaps_pending(set.since) => {
                let bits = set.names.bucket_bits();
                (bits, Err((set.names.len(), Counted::Buckets { bits, next: 0 })))
            }
            Members::Many(set) => (set.names.bucket_bits(), Ok(set.names.len())),
        };
        let walk = Walk::Tag { tag: name.clone(), bits, bucket: 0 };
        let selector = Selector::Tags(vec![name.clone()].into());
        let expired = self.expired_covered(&selector, now_ms);
        self.push_soft(selector, walk, at_ms, count, expired, ticket)
    }

    /// Pushes a SOFT job: its entries counted already (`Ok`), or to count from a cursor
    /// (`Err`: the set's size, where the count starts).
    fn push_soft(&mut self, selector: Selector, walk: Walk, at_ms: i64, count: Result<usize, (usize, Counted)>, expired: usize, ticket: u64) -> Option<usize> {
        match count {
            Ok(count) => {
                self.pending.push_stale(selector, walk, at_ms, count);
                Some(count.saturating_sub(expired))
            }
            Err((size, at)) => {
                self.pending.push_stale_counted(selector, walk, at_ms, size, ticket, at);
                self.pending.open_ticket(ticket, 0, expired)
            }
        }
    }

    /// SOFT-invalidates `names` (live entries found by `matching`/`tagged`) as of `at_ms`.
    pub fn soften_names(&mut self, selector: Selector, names: Vec<Key>, at_ms: i64, now_ms: i64) -> usize {
        let count = names.len();
        let expired = self.expired_covered(&selector, now_ms);
        self.pending.push_stale(selector, Walk::Listed(names.into_iter()), at_ms, count);
        count.saturating_sub(expired)
    }

    /// SOFT-invalidates exactly these entries, each as of its own time (a saved dataset's
    /// stale entries, after a load).
    pub fn soften_exactly(&mut self, names: HashMap<Name, i64>) {
        let mut by_time: HashMap<i64, Vec<Key>> = HashMap::new();
        for (name, at) in names {
            if let Some((key, _)) = self.keys.get_key_value(&name) {
                by_time.entry(at).or_default().push(key.clone());
            }
        }
        for (at, names) in by_time {
            let covered: HashSet<Name> = names.iter().map(|k| Name::new(k)).collect();
            let count = names.len();
            self.pending.push_stale(Selector::Names(covered), Walk::Listed(names.into_iter()), at, count);
        }
    }

    /// Entries stale by a pending SOFT invalidation not applied yet, with since when (what a
    /// saved dataset must not bring back fresh).
    pub fn stale_names(&self) -> Vec<(Key, i64)> {
        if self.pending.stale_jobs().next().is_none() {
            return Vec::new();
        }
        records(&self.keys)
            .filter(|r| !self.dead(*r))
            .filter_map(|r| Some((r.key.clone(), self.pending.stale_since(r.born(), r.key, r.tenant(), r.tags())?)))
            .collect()
    }

    /// Entries invalidated but still in the keyspace.
    pub fn dead_count(&self) -> usize {
        self.pending.dead()
    }

    /// Entries readers see (the invalidated ones are gone for them).
    pub fn live_len(&self) -> usize {
        self.keys.len().saturating_sub(self.pending.dead())
    }

    /// Names the reclaimer still has to visit, and an estimate of their memory.
    pub fn pending_footprint(&self) -> (usize, usize) {
        let names = self.pending.names_left();
        let per_entry = self.entry_bytes.checked_div(self.keys.len()).unwrap_or(0);
        (names, names.saturating_mul(per_entry))
    }

    /// Names of the dead entries (what a saved dataset must not bring back).
    pub fn dead_names(&self) -> Vec<Key> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        records(&self.keys).filter(|r| self.dead(*r)).map(|r| r.key.clone()).collect()
    }

    /// The tenant a key is indexed under.
    pub fn tenant_of(&self, key: &[u8]) -> Option<&[u8]> {
        record(&self.keys, key).map(|r| r.tenant().as_bytes())
    }

    pub fn get(&self, key: &[u8]) -> Option<Indexed> {
        record(&self.keys, key).map(Indexed::of)
    }

    /// How many entries a tenant has here and their memory.
    pub fn tenant_footprint(&self, tenant: &[u8]) -> (usize, usize) {
        let Some(set) = self.tenants.get(tenant) else {
            return (0, 0);
        };
        let live: Vec<KeyRecord<'_>> = set
            .keys
            .names
            .iter()
            .filter_map(|k| record(&self.keys, k).filter(|r| !self.dead(*r)))
            .collect();
        let bytes = live.iter().map(|r| r.entry_bytes()).fold(0usize, usize::saturating_add);
        (live.len(), bytes)
    }

    /// Total memory of the indexed entries (as given to `insert` / `rewritten`).
    pub fn entry_bytes(&self) -> usize {
        self.entry_bytes
    }

    /// An entry overwritten in place (same tenant and tags): its new size and expiry.
    pub fn rewritten(&mut self, key: &[u8], bytes: usize, expires_at: i64) {
        let Some(r) = record(&self.keys, key) else {
            return;
        };
        let replaced = r.key.set_entry_bytes(bytes);
        self.entry_bytes = self.entry_bytes.saturating_sub(replaced).saturating_add(r.entry_bytes());
        let (before, after) = r.key.set_expires_at(expires_at);
        self.move_expiry(key, before, after);
    }

    /// The key's TTL changed: it now expires at `expires_at` (`expiry::NEVER`: no TTL).
    pub fn set_expiry(&mut self, key: &[u8], expires_at: i64) {
        let Some(r) = record(&self.keys, key) else {
            return;
        };
        let (before, after) = r.key.set_expires_at(expires_at);
        self.move_expiry(key, before, after);
    }

    /// Moves an indexed key between expiry buckets (nothing when its time did not change).
    fn move_expiry(&mut self, key: &[u8], before: i64, after: i64) {
        if before == after {
            return;
        }
        let hashed = Hashed::of(key);
        self.expiries.remove(hashed, before);
        if let Some((name, _)) = self.keys.get_key_value(key) {
            self.expiries.add(name, hashed.hash, after);
        }
    }

    /// Entries `selector` covers, not invalidated already, whose TTL has passed at `now_ms`
    /// but that Redis has not removed yet: an invalidation does not count them. Walks only the
    /// names whose expiry bucket has begun.
    fn expired_covered(&self, selector: &Selector, now_ms: i64) -> usize {
        self.expiries
            .due(now_ms)
            .filter(|k| {
                record(&self.keys, k).is_some_and(|r| {
                    expiry::has_expired(r.expires_at(), now_ms) && selector.covers(k, r.tenant(), r.tags()) && !self.dead(r)
                })
            })
            .count()
    }

    /// Adds `key` (whose name hashes to `hash`) to the members of `tag`.
    fn add_to_tag(&mut self, tag: &Name, key: &Key, hash: u64, born: u64) {
        let keys = &self.keys;
        self.tags.add(tag, key, hash, |k| record(keys, k).map_or(born, |r| r.born()));
    }

    /// Indexes `key` (replacing what was indexed for it); true when it was indexed already.
    /// `labels` become those the index shares with the entry: the same tenant and tag names,
    /// and for an entry without tags its tenant's shared labels. Labels nobody else holds (a
    /// new entry's) are rewritten in place.
    pub fn insert(&mut self, key: &[u8], labels: &mut Labels, entry_bytes: usize, expires_at: i64) -> bool {
        // The key's name is hashed once for the five maps it goes into.
        let hashed = Hashed::of(key);
        let replaced = self.remove_hashed(hashed);
        let born = self.pending.epoch();
        // The labels take the index's shared names first (the key's record holds them), then
        // the key goes into its tenant's order and its tags' sets.
        let tenant_hash = Hashed::of(labels.tenant()).hash;
        let (tenant, untagged, fresh) = self
            .tenants
            .with_entry_hashed(labels.tenant().clone(), tenant_hash, |e| match e {
                Entry::Occupied(e) => (e.key().clone(), e.get().untagged.clone(), false),
                Entry::Vacant(e) => {
                    let name = e.key().clone();
                    let keys = TenantKeys { since: born, names: OrderedKeys::default() };
                    let untagged = Labels::new(name.clone(), Vec::new());
                    e.insert(Tenant { keys, untagged: untagged.clone() });
                    (name, untagged, true)
                }
            })
            .unwrap_or_else(|| (labels.tenant().clone(), labels.clone(), true));
        if labels.tags().is_empty() {
            *labels = untagged;
        } else {
            let tags = &self.tags;
            let shared = |tag: &Name| tags.shared_name(tag).unwrap_or_else(|| tag.clone());
            if !labels.rewrite_if_unique(|t| *t = tenant.clone(), |slot| *slot = shared(slot)) {
                *labels = Labels::new(tenant.clone(), labels.tags().iter().map(shared).collect());
            }
        }
        let key = Key::new_key(key, born, expires_at, entry_bytes, labels.clone());
        // As the record holds it, so that removing the key takes back as much.
        self.entry_bytes = self.entry_bytes.saturating_add(key.entry_bytes());
        if let Some(set) = self.tenants.get_mut_hashed(Hashed { name: &tenant, hash: tenant_hash }) {
            let before = if fresh { 0 } else { footprint::tenant(&tenant, set) };
            match self.bulk.as_mut() {
                Some(later) => later.push((tenant.clone(), key.clone())),
                None => {
                    set.keys.names.insert(key.clone());
                }
            }
            let after = footprint::tenant(&tenant, set);
            self.item_bytes = self.item_bytes.saturating_sub(before).saturating_add(after);
        }
        for tag in labels.tags() {
            self.add_to_tag(tag, &key, hashed.hash, born);
        }
        self.item_bytes = self.item_bytes.saturating_add(footprint::key(&key));
        self.expiries.add(&key, hashed.hash, key.expires_at());
        self.keys.insert_hashed(key, hashed.hash, ());
        replaced
    }

    /// Starts a bulk fill (see `Index::begin_bulk`): tenant orders, tag sets and expiry
    /// buckets are filled at its end.
    fn begin_bulk(&mut self) {
        self.bulk.get_or_insert_with(Vec::new);
        self.expiries.defer();
        self.tags.defer();
    }

    fn end_bulk(&mut self) {
        if let Some(added) = self.bulk.take() {
            self.place_in_tenants(added);
        }
        self.settle_tags();
        self.expiries.settle();
        self.keys.compact();
        self.tags.compact();
    }

    /// Adds the tag members deferred by a bulk fill. A tag's first key, written before the
    /// others, dates its set; one removed meanwhile dates it at 0 (no invalidation is older).
    fn settle_tags(&mut self) {
        let keys = &self.keys;
        self.tags.settle(|k| record(keys, k).map_or(0, |r| r.born()));
    }

    /// Puts the keys inserted since `Index::begin_bulk` into their tenants' orders: each
    /// tenant's names sorted once (they fit in cache, one tenant at a time) and built into
    /// full chunks, instead of a million inserts each comparing names scattered in
    /// memory.
    fn place_in_tenants(&mut self, mut added: Vec<(Name, Key)>) {
        added.sort_unstable_by_key(|(tenant, _)| tenant.as_ptr() as usize);
        let mut added = added.into_iter().peekable();
        while let Some((tenant, key)) = added.next() {
            let mut names = vec![key];
            while let Some((_, key)) = added.next_if(|(next, _)| next.as_ptr() == tenant.as_ptr()) {
                names.push(key);
            }
            names.sort_unstable();
            let Some(set) = self.tenants.get_mut(&tenant) else {
                continue;
            };
            let before = footprint::tenant(&tenant, set);
            set.keys.names.extend_sorted(names);
            let after = footprint::tenant(&tenant, set);
            self.item_bytes = self.item_bytes.saturating_sub(before).saturating_add(after);
        }
    }

    /// Forgets a key; true when it was indexed.
    pub fn remove(&mut self, key: &[u8]) -> bool {
        self.remove_hashed(Hashed::of(key))
    }

    fn remove_hashed(&mut self, hashed: Hashed<'_>) -> bool {
        let Some((key, ())) = self.keys.remove_hashed(hashed) else {
            return false;
        };
        let record = KeyRecord::of(&key);
        if let Some(added) = self.bulk.as_mut().filter(|added| !added.is_empty()) {
            // The key may be among those not in their tenant's order yet.
            let added = std::mem::take(added);
            self.place_in_tenants(added);
        }
        if self.tags.deferred() {
            // Or among those not in their tags' sets yet.
            self.settle_tags();
            self.tags.defer();
        }
        self.pending.counting_sees_change(record.born(), &key, record.tenant(), record.tags());
        if self.dead(record) {
            self.pending.dead_gone();
        }
        self.expiries.remove(hashed, record.expires_at());
        self.entry_bytes = self.entry_bytes.saturating_sub(record.entry_bytes());
        let mut freed = footprint::key(&key);
        if let Some(set) = self.tenants.get_mut(record.tenant()) {
            let before = footprint::tenant(record.tenant(), set);
            if set.keys.names.remove(&key) {
                freed = freed.saturating_add(before);
                if set.keys.names.is_empty() {
                    self.tenants.remove(record.tenant());
                } else {
                    self.item_bytes = self.item_bytes.saturating_add(footprint::tenant(record.tenant(), set));
                }
            }
        }
        for tag in record.tags() {
            self.tags.remove_member(tag, hashed);
        }
        self.item_bytes = self.item_bytes.saturating_sub(freed);
        true
    }

    /// Keys of `tenant` (or of every tenant for `None`) whose names match `glob`, in name order
    /// within a tenant, at most `limit`. Only the glob's literal-prefix range is walked.
    pub fn matching(&self, tenant: Option<&[u8]>, glob: &Glob, limit: usize) -> Vec<Key> {
        let mut out = Vec::new();
        let mut scan = |keys: &OrderedKeys| {
            let prefix = glob.literal_prefix();
            let range = keys.range_from(Bound::Included(prefix));
            for key in range.take_while(|k| k.starts_with(prefix)) {
                if out.len() >= limit {
                    return;
                }
                if glob.matches(key) && !self.is_dead(key) {
                    out.push(key.clone());
                }
            }
        };
        match tenant {
            Some(t) => {
                if let Some(set) = self.tenants.get(t) {
                    scan(&set.keys.names);
                }
            }
            None => {
                for set in self.tenants.values() {
                    scan(&set.keys.names);
                }
            }
        }
        out
    }

    /// Distinct keys carrying any of `tags`.
    pub fn tagged(&self, tags: &[Vec<u8>]) -> Vec<Key> {
        let mut seen: HashSet<Key> = HashSet::new();
        for tag in tags {
            if let Some(members) = self.tags.get(tag.as_slice()) {
                seen.extend(members.iter().cloned());
            }
        }
        let mut out: Vec<Key> = seen.into_iter().filter(|k| !self.is_dead(k)).collect();
        out.sort();
        out
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.keys.keys().map(|k| k.as_ref())
    }

    /// All indexed keys with what the index holds for them (for consistency checks).
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], Indexed)> + '_ {
        records(&self.keys).map(|r| (r.key.as_ref(), Indexed::of(r)))
    }

    /// Checks the three maps agree with each other; returns the first problem found.
    pub fn self_check(&self) -> Result<(), String> {
        for record in records(&self.keys) {
            let key = record.key;
            // An invalidated entry may have left its sets already (they moved into its job).
            if self.dead(record) {
                continue;
            }
            if !self.tenants.get(record.tenant()).is_some_and(|s| s.keys.names.contains(key)) {
                return Err(format!("key {} missing from its tenant set", show(key)));
            }
            for tag in record.tags() {
                if !self.tags.get(tag).is_some_and(|s| s.contains(key)) {
                    return Err(format!("key {} missing from tag {}", show(key), show(tag)));
                }
            }
        }
        for (tenant, set) in self.tenants.iter() {
            if let Some(key) = set.keys.names.iter().find(|k| record(&self.keys, k).is_none_or(|r| r.tenant() != tenant)) {
                return Err(format!("tenant {} lists key {}, not one of its entries", show(tenant), show(key)));
            }
        }
        let expiring = self.keys.keys().filter(|k| k.expires_at() != expiry::NEVER).count();
        if expiring != self.expiries.len() {
            return Err(format!("{expiring} keys have a TTL, expiry buckets hold {}", self.expiries.len()));
        }
        if let Some(key) = self.keys.keys().find(|k| !self.expiries.contains(k, k.expires_at())) {
            return Err(format!("key {} missing from its expiry bucket", show(key)));
        }
        if self.has_pending() {
            return Ok(());
        }
        let tenant_members: usize = self.tenants.values().map(|s| s.keys.names.len()).sum();
        if tenant_members != self.keys.len() {
            return Err(format!(
                "tenant sets hold {tenant_members} keys, index has {}",
                self.keys.len()
            ));
        }
        let tag_members: usize = self.tags.iter().map(|(_, m)| m.len()).sum();
        let tag_refs: usize = self.keys.keys().map(|k| k.labels().tags().len()).sum();
        if tag_members != tag_refs {
            return Err(format!("tag sets hold {tag_members} references, keys carry {tag_refs}"));
        }
        Ok(())
    }

    /// Bytes the allocator holds for the index structures of this database, in O(1).
    pub fn heap_bytes(&self) -> usize {
        crate::mem::sum([
            self.keys.heap_bytes(),
            self.tenants.heap_bytes(),
            self.tags.heap_bytes(),
            self.item_bytes,
            self.expiries.heap_bytes(),
        ])
    }

    /// `item_bytes` recomputed from scratch (what the running figure must equal).
    #[cfg(test)]
    fn item_bytes_recounted(&self) -> usize {
        use crate::mem::sum;
        sum([
            sum(self.keys.keys().map(footprint::key)),
            sum(self.tenants.iter().map(|(t, set)| footprint::tenant(t, set))),
        ])
    }
}

/// What the allocator holds per name and per structure of the index, sized the way jemalloc
/// rounds requests.
mod footprint {
    use super::{Key, Name, Tenant};
    use crate::mem::sum;

    /// A key's name and record (its labels are the entry's, counted with it).
    pub fn key(key: &Key) -> usize {
        key.footprint()
    }

    /// A tenant's name, the order of its key names and its untagged entries' labels.
    pub fn tenant(tenant: &Name, set: &Tenant) -> usize {
        sum([tenant.footprint(), set.keys.names.heap_bytes(), set.untagged.footprint()])
    }
}

/// Printable form of a binary name for messages.
pub fn show(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// The index of every database, created on first use.
#[derive(Debug, Default)]
pub struct Index {
    dbs: HashMap<i32, DbIndex>,
    /// Answers of databases forgotten while they counted (see `take_answered`).
    answered: Vec<(u64, usize)>,
    /// Between `begin_bulk` and `end_bulk`.
    bulk: bool,
}

impl Index {
    pub fn db(&self, db: i32) -> Option<&DbIndex> {
        self.dbs.get(&db)
    }

    pub fn db_mut(&mut self, db: i32) -> &mut DbIndex {
        let bulk = self.bulk;
        self.dbs.entry(db).or_insert_with(|| {
            let mut d = DbIndex::default();
            if bulk {
                d.begin_bulk();
            }
            d
        })
    }

    /// Starts filling an empty index with many entries (the rebuild after a load): each key's
    /// place in its tenant's order and in its tags' sets, and its expiry bucket, are left for
    /// `end_bulk`. Nothing may read the index until then; a removal (a key the fill meets
    /// twice) first puts what was left in place.
    pub fn begin_bulk(&mut self) {
        self.bulk = true;
        self.dbs.values_mut().for_each(DbIndex::begin_bulk);
    }

    /// Between `begin_bulk` and `end_bulk`: makes room at once for about `keys` keys in a
    /// database not indexed yet (its size, of which only this module's entries are indexed;
    /// `end_bulk` gives back room left unused).
    pub fn presize(&mut self, db: i32, keys: usize) {
        let d = self.db_mut(db);
        if d.bulk.is_some() && d.keys.is_empty() {
            d.keys.presize(keys);
            // A guess: one tag of its own per key (`item:<id>`), the commonest shape.
            d.tags.presize(keys);
        }
    }

    pub fn end_bulk(&mut self) {
        self.bulk = false;
        self.dbs.values_mut().for_each(DbIndex::end_bulk);
        // A database presized but holding no entry of this module.
        self.dbs.retain(|_, d| !d.is_empty() || d.counting());
    }

    pub fn remove(&mut self, db: i32, key: &[u8]) -> bool {
        let Some(d) = self.dbs.get_mut(&db) else {
            return false;
        };
        let removed = d.remove(key);
        if d.is_empty() && !d.counting() {
            self.answered.extend(d.take_answered());
            self.dbs.remove(&db);
        }
        removed
    }

    /// Forgets a database (FLUSHDB); invalidations still counting there are answered first.
    pub fn clear_db(&mut self, db: i32) {
        if let Some(mut d) = self.dbs.remove(&db) {
            d.count_some(usize::MAX);
            self.answered.extend(d.take_answered());
        }
    }

    /// Forgets every database (FLUSHALL, a load); invalidations still counting are answered first.
    pub fn clear(&mut self) {
        for (_, mut d) in self.dbs.drain() {
            d.count_some(usize::MAX);
            self.answered.extend(d.take_answered());
        }
    }

    /// Invalidations answered since last asked, in every database: (ticket, entries invalidated).
    pub fn take_answered(&mut self) -> Vec<(u64, usize)> {
        let mut out = std::mem::take(&mut self.answered);
        for d in self.dbs.values_mut() {
            out.extend(d.take_answered());
        }
        out
    }

    /// The answer of `ticket` in `db`, counted now (for a caller that cannot wait). Other
    /// invalidations counted meanwhile are answered too (`take_answered`).
    pub fn answer_now(&mut self, db: i32, ticket: u64) -> usize {
        let Some(d) = self.dbs.get_mut(&db) else {
            return 0;
        };
        d.count_some(usize::MAX);
        let mut mine = 0;
        for (t, n) in d.take_answered() {
            if t == ticket {
                mine = n;
            } else {
                self.answered.push((t, n));
            }
        }
        mine
    }

    pub fn swap(&mut self, a: i32, b: i32) {
        let ia = self.dbs.remove(&a);
        let ib = self.dbs.remove(&b);
        if let Some(i) = ia {
            self.dbs.insert(b, i);
        }
        if let Some(i) = ib {
            self.dbs.insert(a, i);
        }
    }

    pub fn total_keys(&self) -> usize {
        self.dbs.values().map(DbIndex::len).sum()
    }

    /// Entries readers see, over all databases.
    pub fn live_keys(&self) -> usize {
        self.dbs.values().map(DbIndex::live_len).sum()
    }

    /// Whether `key` of `db` is an invalidated entry not reclaimed yet.
    pub fn is_dead(&self, db: i32, key: &[u8]) -> bool {
        self.dbs.get(&db).is_some_and(|d| d.is_dead(key))
    }

    /// Databases with invalidations waiting to be reclaimed.
    pub fn pending_dbs(&self) -> Vec<i32> {
        self.dbs.iter().filter(|(_, d)| d.has_pending()).map(|(db, _)| *db).collect()
    }

    /// See `DbIndex::next_step`.
    pub fn next_step(&mut self, db: i32) -> Option<Step> {
        self.dbs.get_mut(&db)?.next_step()
    }

    /// See `DbIndex::stale_since`.
    pub fn stale_since(&self, db: i32, key: &[u8]) -> Option<i64> {
        self.dbs.get(&db)?.stale_since(key)
    }

    pub fn restamp(&mut self, db: i32, key: &[u8]) {
        if let Some(d) = self.dbs.get_mut(&db) {
            d.restamp(key);
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.dbs.values().map(DbIndex::heap_bytes).sum()
    }

    pub fn dbs(&self) -> impl Iterator<Item = (i32, &DbIndex)> {
        self.dbs.iter().map(|(k, v)| (*k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `DbIndex::insert` from byte strings.
    fn put(ix: &mut DbIndex, key: &[u8], tenant: &[u8], tags: &[Vec<u8>], bytes: usize) {
        let tags: Vec<Name> = tags.iter().map(|t| Name::from(t.as_slice())).collect();
        ix.insert(key, &mut Labels::new(Name::from(tenant), tags), bytes, expiry::NEVER);
    }

    /// What an invalidation answers, counted to the end if it had to count.
    fn settled(ix: &mut DbIndex, answer: Option<usize>) -> usize {
        answer.unwrap_or_else(|| {
            while ix.count_some(7) {}
            let answered = ix.take_answered();
            assert_eq!(answered.len(), 1, "one invalidation answered");
            answered.iter().map(|(_, n)| n).sum()
        })
    }

    fn doomed_tenant(ix: &mut DbIndex, tenant: Option<&[u8]>, now_ms: i64) -> usize {
        let answer = ix.doom_tenant(tenant, now_ms, 1);
        settled(ix, answer)
    }

    fn doomed_tag(ix: &mut DbIndex, tag: &[u8], now_ms: i64) -> usize {
        let answer = ix.doom_tag(tag, now_ms, 1);
        settled(ix, answer)
    }

    fn softened_tenant(ix: &mut DbIndex, tenant: Option<&[u8]>, at_ms: i64, now_ms: i64) -> usize {
        let answer = ix.soften_tenant(tenant, at_ms, now_ms, 1);
        settled(ix, answer)
    }

    fn softened_tag(ix: &mut DbIndex, tag: &[u8], at_ms: i64, now_ms: i64) -> usize {
        let answer = ix.soften_tag(tag, at_ms, now_ms, 1);
        settled(ix, answer)
    }

    fn tags(t: &[&str]) -> Vec<Vec<u8>> {
        t.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn names(v: Vec<Key>) -> Vec<String> {
        v.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect()
    }

    #[test]
    fn a_tag_held_by_one_key_is_stored_inline_and_grows_and_shrinks() {
        let mut ix = DbIndex::default();
        let t = vec![b"item:1".to_vec()];
        put(&mut ix, b"k1", b"", &t, 0);
        let one = ix.heap_bytes();
        put(&mut ix, b"k2", b"", &t, 0);
        assert!(ix.heap_bytes() > one, "a second key needs a set");
        assert_eq!(ix.tagged(&t).len(), 2);
        assert!(ix.remove(b"k1"));
        assert_eq!(ix.tagged(&t).iter().map(|k| k.to_vec()).collect::<Vec<_>>(), vec![b"k2".to_vec()]);
        assert!(ix.self_check().is_ok());
        put(&mut ix, b"k2", b"", &t, 0);
        assert_eq!(ix.tagged(&t).len(), 1, "re-inserting the same key keeps one member");
        assert!(ix.remove(b"k2"));
        assert_eq!((ix.tag_count(), ix.len()), (0, 0));
        assert!(ix.self_check().is_ok());
    }

    #[test]
    fn emptied_tables_give_memory_back() {
        let mut ix = Index::default();
        let tags = vec![b"all".to_vec(), b"cat".to_vec()];
        for i in 0..20_000 {
            put(ix.db_mut(0), format!("k:{{t{}}}:{i}", i % 50).as_bytes(), format!("t{}", i % 50).as_bytes(), &tags, 100);
        }
        let full = ix.heap_bytes();
        for i in 0..20_000 {
            assert!(ix.remove(0, format!("k:{{t{}}}:{i}", i % 50).as_bytes()));
            if i == 19_000 {
                assert!(ix.heap_bytes() < full / 4, "shrinks along the way");
            }
        }
        assert_eq!((ix.total_keys(), ix.heap_bytes()), (0, 0));
    }

    #[test]
    fn insert_replace_remove_keep_maps_exact() {
        let mut ix = DbIndex::default();
        put(&mut ix, b"a:1", b"t1", &tags(&["x", "y"]), 10);
        put(&mut ix, b"a:2", b"t1", &tags(&["y"]), 10);
        put(&mut ix, b"b:1", b"t2", &tags(&["x"]), 10);
        assert_eq!((ix.len(), ix.tenant_count(), ix.tag_count()), (3, 2, 2));
        put(&mut ix, b"a:1", b"t3", &tags(&["z"]), 10);
        assert_eq!(ix.entry_bytes(), 30, "a replaced key is counted once");
        ix.rewritten(b"a:1", 15, expiry::NEVER);
        assert_eq!(ix.entry_bytes(), 35);
        assert_eq!(ix.get(b"a:1").unwrap().tenant, b"t3");
        assert_eq!(names(ix.tagged(&tags(&["x"]))), ["b:1"]);
        assert_eq!((ix.tenant_count(), ix.tag_count()), (3, 3));
        ix.self_check().unwrap();
        assert!(ix.remove(b"a:1"));
        assert!(!ix.remove(b"a:1"));
        assert_eq!((ix.tenant_count(), ix.tag_count()), (2, 2));
        ix.remove(b"a:2");
        ix.remove(b"b:1");
        assert!(ix.is_empty());
        assert_eq!(ix.entry_bytes(), 0);
        assert_eq!((ix.tenant_count(), ix.tag_count()), (0, 0));
        ix.self_check().unwrap();
        // A record rounds a large entry's size and caps it at about 4 TiB: removing it takes
        // back what was added.
        put(&mut ix, b"huge", b"t", &[], usize::MAX);
        put(&mut ix, b"odd", b"t", &[], 1_000_003);
        assert_eq!(ix.entry_bytes(), (2047usize << 31) + (1_000_003 >> 9 << 9));
        ix.remove(b"huge");
        ix.remove(b"odd");
        assert_eq!(ix.entry_bytes(), 0);
    }

    #[test]
    fn matching_walks_tenant_prefix_range() {
        let mut ix = DbIndex::default();
        for k in ["fmpa:list:1", "fmpa:list:2", "fmpa:item:1", "fmp", "zz"] {
            put(&mut ix, k.as_bytes(), b"t", &[], 10);
        }
        put(&mut ix, b"fmpa:list:9", b"other", &[], 10);
        let g = Glob::new(b"fmpa:list:*");
        assert_eq!(names(ix.matching(Some(b"t"), &g, usize::MAX)), ["fmpa:list:1", "fmpa:list:2"]);
        assert_eq!(ix.matching(None, &g, usize::MAX).len(), 3);
        assert_eq!(ix.matching(Some(b"t"), &Glob::new(b"*"), 2).len(), 2);
        assert_eq!(names(ix.matching(Some(b"t"), &Glob::new(b"*:1"), 10)), ["fmpa:item:1", "fmpa:list:1"]);
        assert!(ix.matching(Some(b"nobody"), &g, 10).is_empty());
    }

    #[test]
    fn tagged_counts_each_key_once() {
        let mut ix = DbIndex::default();
        put(&mut ix, b"k1", b"", &tags(&["a", "b"]), 10);
        put(&mut ix, b"k2", b"", &tags(&["b"]), 10);
        put(&mut ix, b"k3", b"", &tags(&["c"]), 10);
        assert_eq!(names(ix.tagged(&tags(&["a", "b", "zz"]))), ["k1", "k2"]);
    }

    /// Fills one index an insert at a time and another in bulk with the same writes (`ops`
    /// of them; from the first `distinct` on, keys repeat and some are removed); both must end
    /// up the same.
    fn bulk_matches_one_at_a_time(ops: usize, distinct: usize) {
        use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(11);
        let mut fresh: Vec<usize> = (0..distinct).collect();
        fresh.shuffle(&mut rng);
        let (mut one_by_one, mut bulk) = (Index::default(), Index::default());
        bulk.begin_bulk();
        // Sized for eight times the keys written: the fill gives back what it did not use.
        bulk.presize(0, 8 * distinct);
        for step in 0..ops {
            let key = format!("k:{:05}", fresh.get(step).copied().unwrap_or_else(|| rng.gen_range(0..distinct)));
            let tenant = format!("t{}", rng.gen_range(0..7));
            let tags = [format!("tag{}", rng.gen_range(0..50)).into_bytes()];
            let remove = step >= distinct && rng.gen_range(0..4) == 0;
            // Expiry times over a few buckets, some keys without one.
            let at = if rng.gen_range(0..5) == 0 { expiry::NEVER } else { 100_000 + rng.gen_range(0..1_000) };
            let retime = step >= distinct && rng.gen_range(0..9) == 0;
            for ix in [&mut one_by_one, &mut bulk] {
                if remove {
                    ix.remove(0, key.as_bytes());
                } else if retime {
                    ix.db_mut(0).set_expiry(key.as_bytes(), at);
                } else {
                    let tags: Vec<Name> = tags.iter().map(|t| Name::from(t.as_slice())).collect();
                    ix.db_mut(0).insert(key.as_bytes(), &mut Labels::new(Name::from(tenant.as_bytes()), tags), 10, at);
                }
            }
        }
        bulk.end_bulk();
        let (a, b) = (one_by_one.db_mut(0), bulk.db_mut(0));
        for tenant in 0..7 {
            let tenant = format!("t{tenant}");
            let every = Glob::new(b"*");
            let listed = |ix: &DbIndex| ix.matching(Some(tenant.as_bytes()), &every, usize::MAX);
            assert_eq!(listed(a), listed(b), "keys of {tenant}, in order");
        }
        assert_eq!(b.self_check(), Ok(()));
        assert_eq!(b.len(), a.len());
        assert_eq!((b.expiries.len(), b.expiries.heap_bytes()), (a.expiries.len(), b.expiries.heap_recounted()));
        for tag in 0..50 {
            let tag = [format!("tag{tag}").into_bytes()];
            let members = |ix: &DbIndex| ix.tagged(&tag).iter().map(|k| k.to_vec()).collect::<std::collections::BTreeSet<_>>();
            assert_eq!(members(a), members(b), "keys of {:?}", tag);
        }
        assert_eq!(b.tags.item_bytes(), b.tags.item_bytes_recounted());
        for ix in [&*a, &*b] {
            // A tag set dates no later than its oldest member's write.
            for (tag, members) in ix.tags.iter() {
                if let Members::Many(set) = members {
                    let oldest = set.names.keys().filter_map(|k| record(&ix.keys, k)).map(|r| r.born()).min();
                    assert!(oldest.is_none_or(|o| set.since <= o), "set of {tag:?} dated {} after {oldest:?}", set.since);
                }
            }
        }
        // The presized maps were given back the room the fill did not use.
        assert!(b.keys.heap_bytes() <= 2 * a.keys.heap_bytes(), "{} vs {}", b.keys.heap_bytes(), a.keys.heap_bytes());
        assert!(b.tags.heap_bytes() <= 2 * a.tags.heap_bytes(), "{} vs {}", b.tags.heap_bytes(), a.tags.heap_bytes());
        for now in [0, 100_200, 100_500, 101_100] {
            let due = |ix: &DbIndex| ix.expiries.due(now).map(|k| k.to_vec()).collect::<std::collections::BTreeSet<_>>();
            assert_eq!(due(a), due(b), "names due at {now}");
        }
        // The chunks may be cut differently (a bulk fill fills them); the figures are exact.
        assert_eq!((a.item_bytes, b.item_bytes), (a.item_bytes_recounted(), b.item_bytes_recounted()));
        // Written one at a time once the bulk fill is over.
        put(b, b"k:late", b"t1", &[], 10);
        assert!(b.matching(Some(b"t1"), &Glob::new(b"k:late"), 1).len() == 1);
    }

    #[test]
    fn untagged_entries_of_a_tenant_share_its_labels() {
        let mut ix = DbIndex::default();
        let labels = |tenant: &[u8], tags: &[&[u8]]| Labels::new(Name::from(tenant), tags.iter().map(|t| Name::from(*t)).collect());
        let (mut a, mut b, mut c, mut tagged) = (labels(b"t", &[]), labels(b"t", &[]), labels(b"u", &[]), labels(b"t", &[b"x"]));
        for (key, l) in [(&b"k1"[..], &mut a), (b"k2", &mut b), (b"k3", &mut c), (b"k4", &mut tagged)] {
            assert!(!ix.insert(key, l, 10, expiry::NEVER));
        }
        assert!(a.same(&b), "one allocation for t's untagged entries");
        assert!(!a.same(&c) && !a.same(&tagged));
        assert_eq!(tagged.tenant().as_ptr(), a.tenant().as_ptr(), "one tenant name");
        assert_eq!((ix.item_bytes, ix.self_check()), (ix.item_bytes_recounted(), Ok(())));
        for key in [&b"k1"[..], b"k2", b"k3", b"k4"] {
            ix.remove(key);
        }
        assert_eq!((ix.tenant_count(), ix.item_bytes), (0, 0));
    }

    #[test]
    fn a_tenant_invalidated_then_written_again_shares_new_labels() {
        let mut ix = DbIndex::default();
        let untagged = || Labels::new(Name::from(&b"t"[..]), Vec::new());
        let mut old = untagged();
        ix.insert(b"k1", &mut old, 10, expiry::NEVER);
        assert_eq!(doomed_tenant(&mut ix, Some(b"t"), 0), 1);
        let (mut a, mut b) = (untagged(), untagged());
        ix.insert(b"k2", &mut a, 10, expiry::NEVER);
        ix.insert(b"k3", &mut b, 10, expiry::NEVER);
        assert!(a.same(&b) && !a.same(&old), "the new tenant's labels, not the invalidated one's");
        assert_eq!(ix.item_bytes, ix.item_bytes_recounted());
        assert_eq!(ix.matching(Some(b"t"), &Glob::new(b"*"), usize::MAX).len(), 2);
    }

    #[test]
    fn an_entry_indexed_through_relabel_holds_the_shared_tenant() {
        use crate::entry::Entry;
        let mut ix = DbIndex::default();
        put(&mut ix, b"first", b"t", &[], 10);
        let mut entry = Entry::new(b"v", Labels::new(Name::from(&b"t"[..]), vec![Name::from(&b"x"[..])]), false, 0, 0).expect("allocated");
        let fresh = entry.tenant().as_ptr();
        entry.relabel(|labels| ix.insert(b"k", labels, 10, expiry::NEVER));
        let shared = ix.matching(Some(b"t"), &Glob::new(b"*"), usize::MAX);
        assert_eq!(shared.len(), 2);
        assert_ne!(entry.tenant().as_ptr(), fresh, "the entry's own copy was replaced");
        assert_eq!(entry.tenant().as_ptr(), entry.labels().tenant().as_ptr());
        assert_eq!(ix.tenants.get_key_value(&b"t"[..]).map(|(t, _)| t.as_ptr()), Some(entry.tenant().as_ptr()));
    }

    #[test]
    fn a_bulk_fill_orders_each_tenant_as_inserts_one_at_a_time_do() {
        bulk_matches_one_at_a_time(3000, 3000);
    }

    #[test]
    fn a_bulk_fill_with_rewrites_and_removals_ends_as_one_at_a_time() {
        bulk_matches_one_at_a_time(6000, 1500);
    }

    #[test]
    fn the_running_heap_figure_always_equals_a_recount() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(7);
        let mut ix = DbIndex::default();
        for step in 0..20_000 {
            let key = format!("k:{}", rng.gen_range(0..400));
            match rng.gen_range(0..100) {
                0..=59 => {
                    let tenant = format!("t{}", rng.gen_range(0..5));
                    let n = rng.gen_range(0..4);
                    let t: Vec<Vec<u8>> = (0..n).map(|_| format!("tag{}", rng.gen_range(0..30)).into_bytes()).collect();
                    put(&mut ix, key.as_bytes(), tenant.as_bytes(), &t, 10);
                }
                60..=84 => {
                    ix.remove(key.as_bytes());
                }
                85 => {
                    doomed_tenant(&mut ix, Some(format!("t{}", rng.gen_range(0..5)).as_bytes()), 0);
                }
                86 => {
                    doomed_tenant(&mut ix, None, 0);
                }
                87..=89 => {
                    doomed_tag(&mut ix, format!("tag{}", rng.gen_range(0..30)).as_bytes(), 0);
                }
                _ => {
                    if let Some(Step::Remove(name)) = ix.next_step() {
                        ix.remove(&name);
                    }
                }
            }
            assert_eq!(ix.item_bytes, ix.item_bytes_recounted(), "after step {step}");
            assert_eq!(ix.tags.item_bytes(), ix.tags.item_bytes_recounted(), "tags after step {step}");
        }
        while let Some(next) = ix.next_step() {
            if let Step::Remove(name) = next {
                ix.remove(&name);
            }
        }
        for key in ix.keys().map(<[u8]>::to_vec).collect::<Vec<_>>() {
            ix.remove(&key);
        }
        assert_eq!((ix.len(), ix.item_bytes), (0, 0));
    }

    /// Live entries a brute-force walk finds that `covers` (tenant, tags) selects.
    fn live_covered(ix: &DbIndex, covers: impl Fn(&Indexed) -> bool) -> usize {
        ix.entries().filter(|(k, e)| !ix.is_dead(k) && covers(e)).count()
    }

    #[test]
    fn answers_counted_in_slices_equal_a_count_made_at_the_invalidation() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(11);
        let mut ix = DbIndex::default();
        // Ticket → the answer a brute-force count gave when the invalidation was made.
        let mut expected: HashMap<u64, usize> = HashMap::new();
        let mut answered = 0;
        let mut soft_later = 0;
        let mut ticket = 0u64;
        for step in 0..30_000 {
            let key = format!("k:{}", rng.gen_range(0..3000));
            match rng.gen_range(0..1000) {
                0..=549 => {
                    let tenant = format!("t{}", rng.gen_range(0..3));
                    let n = rng.gen_range(0..3);
                    let t: Vec<Vec<u8>> = (0..n).map(|_| format!("tag{}", rng.gen_range(0..6)).into_bytes()).collect();
                    put(&mut ix, key.as_bytes(), tenant.as_bytes(), &t, 10);
                }
                550..=749 => {
                    ix.remove(key.as_bytes());
                }
                750..=759 => {
                    ticket += 1;
                    let soft = rng.gen_bool(0.3).then_some(How::MarkStale { at_ms: 0 });
                    let how = soft.unwrap_or(How::Remove);
                    let (tag, answer) = if rng.gen_bool(0.5) {
                        let tenant = format!("t{}", rng.gen_range(0..3)).into_bytes();
                        let want = live_covered(&ix, |e| e.tenant == tenant);
                        (want, ix.invalidate_tenant(Some(&tenant), how, 0, ticket))
                    } else {
                        let tag = format!("tag{}", rng.gen_range(0..6)).into_bytes();
                        let want = live_covered(&ix, |e| e.tags.contains(&tag));
                        (want, ix.invalidate_tag(&tag, how, 0, ticket))
                    };
                    match answer {
                        Some(n) => assert_eq!(n, tag, "answered at once, step {step}"),
                        None => {
                            soft_later += usize::from(soft.is_some());
                            expected.insert(ticket, tag);
                        }
                    }
                }
                760..=761 => {
                    ticket += 1;
                    let want = live_covered(&ix, |_| true);
                    let how = if rng.gen_bool(0.5) { How::MarkStale { at_ms: 0 } } else { How::Remove };
                    match ix.invalidate_tenant(None, how, 0, ticket) {
                        Some(n) => assert_eq!(n, want, "answered at once, step {step}"),
                        None => {
                            expected.insert(ticket, want);
                        }
                    }
                }
                762..=849 => {
                    ix.count_some(rng.gen_range(1..40));
                }
                // A command naming the key applies a pending invalidation to it first.
                850..=899 => {
                    if ix.is_dead(key.as_bytes()) {
                        ix.remove(key.as_bytes());
                    } else if ix.stale_since(key.as_bytes()).is_some() {
                        ix.restamp(key.as_bytes());
                    }
                }
                _ => match ix.next_step() {
                    Some(Step::Remove(name)) => {
                        ix.remove(&name);
                    }
                    // A SOFT invalidation reaching an entry (its TTL shortened).
                    Some(Step::MarkStale(name, _)) => ix.restamp(&name),
                    _ => {}
                },
            }
            for (t, n) in ix.take_answered() {
                assert_eq!(Some(n), expected.remove(&t), "ticket {t}, answered at step {step}");
                answered += 1;
            }
            if expected.is_empty() && step % 16 == 0 {
                let dead = ix.keys().filter(|k| ix.is_dead(k)).count();
                assert_eq!(ix.dead_count(), dead, "dead entries at step {step}");
            }
        }
        while ix.count_some(100) {}
        for (t, n) in ix.take_answered() {
            assert_eq!(Some(n), expected.remove(&t), "ticket {t}");
            answered += 1;
        }
        assert!(expected.is_empty());
        assert!(answered > 50, "only {answered} invalidations had to count");
        assert!(soft_later > 20, "only {soft_later} SOFT invalidations had to count");
        assert_eq!(ix.self_check(), Ok(()));
    }

    #[test]
    fn a_soft_invalidation_counted_later_counts_entries_marked_removed_or_rewritten_before_it_got_there() {
        let mut ix = DbIndex::default();
        for i in 0..1000 {
            let t = if i % 2 == 0 { tags(&["x"]) } else { Vec::new() };
            put(&mut ix, format!("k{i:04}").as_bytes(), b"t", &t, 10);
        }
        assert_eq!(doomed_tag(&mut ix, b"x", 0), 500);
        assert_eq!(ix.soften_tenant(Some(b"t"), 5, 5, 9), None, "half of t is dead already: counted later");
        assert!(ix.next_step().is_some_and(|s| matches!(s, Step::Remove(_))), "the tag's entries are reclaimed meanwhile");
        // Before the count gets there: one entry marked stale by a command naming it, one
        // removed, one rewritten, one written anew.
        assert_eq!(ix.stale_since(b"k0999"), Some(5));
        ix.restamp(b"k0999");
        assert!(ix.remove(b"k0997"));
        put(&mut ix, b"k0995", b"t", &[], 10);
        put(&mut ix, b"k1000", b"t", &[], 10);
        assert!(!ix.count_some(usize::MAX));
        assert_eq!(ix.take_answered(), vec![(9, 500)]);
        assert_eq!(ix.self_check(), Ok(()));
    }

    #[test]
    fn entries_expired_at_the_invalidation_are_covered_but_not_counted() {
        let mut ix = DbIndex::default();
        for i in 0..100i64 {
            let tenant: &[u8] = if i % 2 == 0 { b"t" } else { b"u" };
            let tags: Vec<Name> = vec![Name::from(&b"all"[..])];
            // Keys 0..10 expire at 1 000, 10..20 at 5 000, the rest never.
            let at = match i {
                0..10 => 1_000,
                10..20 => 5_000,
                _ => expiry::NEVER,
            };
            ix.insert(format!("k{i}").as_bytes(), &mut Labels::new(Name::from(tenant), tags.clone()), 10, at);
        }
        // k10..k20 get a later TTL, then k10 none, as EXPIRE and PERSIST would.
        for i in 10..20 {
            ix.set_expiry(format!("k{i}").as_bytes(), 9_000);
        }
        ix.set_expiry(b"k10", expiry::NEVER);
        assert_eq!(ix.self_check(), Ok(()));
        // At 1 000 nothing has expired yet; at 1 001 k0..k10 have (5 of them in t).
        assert_eq!(softened_tenant(&mut ix, Some(b"t"), 1_000, 1_000), 50);
        assert_eq!(softened_tag(&mut ix, b"all", 1_001, 1_001), 90);
        assert_eq!(doomed_tenant(&mut ix, Some(b"u"), 9_001), 50 - 5 - 5, "k11..k19 odd have expired too");
        assert_eq!(doomed_tag(&mut ix, b"all", 9_001), 50 - 5 - 4, "k12..k18 even, not k10 (persisted)");
        assert_eq!(ix.live_len(), 0, "expired entries are dead too, only not counted");
        drain(&mut ix, |_, _| {});
        assert_eq!((ix.len(), ix.expiries.len(), ix.expiries.heap_bytes()), (0, 0, 0));
    }

    #[test]
    fn counts_after_overlapping_invalidations_are_exact() {
        let mut ix = DbIndex::default();
        put(&mut ix, b"k1", b"t", &tags(&["x", "y"]), 10);
        put(&mut ix, b"k2", b"t", &tags(&["y"]), 10);
        assert_eq!(doomed_tag(&mut ix, b"y", 0), 2);
        // A second key for x: the set x becomes must still see k1 (written before) as dead.
        put(&mut ix, b"k3", b"t", &tags(&["x"]), 10);
        assert_eq!(ix.live_with_tag(b"x"), 1);
        // y is new since the invalidation: every member counts.
        put(&mut ix, b"k4", b"t", &tags(&["y"]), 10);
        put(&mut ix, b"k5", b"u", &tags(&["y"]), 10);
        assert_eq!(ix.live_with_tag(b"y"), 2);
        assert_eq!(ix.live_in_tenant(Some(b"t")), 2, "k3 and k4");
        assert_eq!(ix.live_in_tenant(Some(b"u")), 1);
        assert_eq!(doomed_tag(&mut ix, b"x", 0), 1);
        assert_eq!(doomed_tenant(&mut ix, Some(b"t"), 0), 1, "only k4 is left alive in t");
        assert_eq!(ix.live_len(), 1);
    }

    /// Runs the reclaimer to the end as the engine would (a stale entry is restamped once its
    /// TTL is shortened, a dead one removed), calling `between` after every step; returns the
    /// names marked stale, in order.
    fn drain(ix: &mut DbIndex, mut between: impl FnMut(&mut DbIndex, usize)) -> Vec<Key> {
        let mut marked = Vec::new();
        let mut steps = 0;
        while let Some(step) = ix.next_step() {
            match step {
                Step::Skip => {}
                Step::Remove(k) => {
                    ix.remove(&k);
                }
                Step::MarkStale(k, _) => {
                    ix.restamp(&k);
                    marked.push(k);
                }
            }
            between(ix, steps);
            steps += 1;
        }
        assert!(!ix.has_pending());
        marked
    }

    #[test]
    fn a_soft_invalidation_marks_each_covered_entry_once_despite_writes_meanwhile() {
        for (which, expected) in [("tenant", 20_000), ("tag", 30_000), ("database", 30_000)] {
            let mut ix = DbIndex::default();
            for i in 0..30_000 {
                let tenant: &[u8] = if i % 3 == 0 { b"u" } else { b"t" };
                put(&mut ix, format!("k{i}").as_bytes(), tenant, &tags(&["all", &format!("c{}", i % 7)]), 10);
            }
            let count = match which {
                "tenant" => softened_tenant(&mut ix, Some(b"t"), 1000, 1000),
                "tag" => softened_tag(&mut ix, b"all", 1000, 1000),
                _ => softened_tenant(&mut ix, None, 1000, 1000),
            };
            let covers_u = which != "tenant";
            assert_eq!(count, expected);
            assert_eq!(ix.stale_since(b"k1"), Some(1000));
            assert_eq!(ix.stale_since(b"k0"), covers_u.then_some(1000));
            // Written after the invalidation: never stale by it.
            put(&mut ix, b"late", b"t", &tags(&["all"]), 10);
            assert_eq!(ix.stale_since(b"late"), None);
            let marked = drain(&mut ix, |ix, step| {
                // New members (which make the tag's set split) and removed ones on the way.
                if step % 2 == 0 {
                    put(ix, format!("new{step}").as_bytes(), b"t", &tags(&["all"]), 10);
                }
                if step % 5 == 0 && step < 30_000 {
                    ix.remove(format!("k{}", 29_999 - step).as_bytes());
                }
            });
            let unique: HashSet<&[u8]> = marked.iter().map(|k| k.as_bytes()).collect();
            assert_eq!(unique.len(), marked.len(), "{which}: an entry was marked twice");
            // Every covered entry still there was marked; nothing written after was.
            for i in 0..30_000 {
                let k = format!("k{i}");
                let covered = covers_u || i % 3 != 0;
                if covered && ix.contains(k.as_bytes()) {
                    assert!(unique.contains(k.as_bytes()), "{which}: {k} never marked");
                }
            }
            assert!(marked.iter().all(|k| k.starts_with(b"k")), "{which}: a later write was marked");
            assert_eq!(ix.stale_since(b"k1"), None, "applied: no longer pending");
        }
    }

    #[test]
    fn dead_wins_over_stale_and_counts_stay_exact() {
        let mut ix = DbIndex::default();
        for i in 0..10 {
            put(&mut ix, format!("k{i}").as_bytes(), b"t", &tags(&["x"]), 10);
        }
        assert_eq!(softened_tag(&mut ix, b"x", 5, 5), 10);
        assert_eq!(ix.live_with_tag(b"x"), 10, "stale entries are still entries");
        assert_eq!(softened_tenant(&mut ix, Some(b"t"), 7, 7), 10, "stale again: counted again");
        assert_eq!(ix.stale_since(b"k1"), Some(5), "the earliest time wins");
        assert_eq!(doomed_tenant(&mut ix, Some(b"t"), 0), 10);
        assert_eq!(ix.stale_since(b"k1"), None, "dead, not stale");
        assert!(ix.stale_names().is_empty());
        let mut removed = 0;
        while let Some(step) = ix.next_step() {
            match step {
                Step::Remove(k) => {
                    ix.remove(&k);
                    removed += 1;
                }
                Step::MarkStale(k, _) => panic!("{} marked stale after it died", show(&k)),
                Step::Skip => {}
            }
        }
        assert_eq!((removed, ix.len()), (10, 0));
    }

    #[test]
    fn stale_entries_listed_for_a_save_are_stale_again_after_a_load() {
        let mut ix = DbIndex::default();
        for i in 0..5 {
            put(&mut ix, format!("k{i}").as_bytes(), b"t", &[], 10);
        }
        let k1 = Key::new_key(b"k1", 0, expiry::NEVER, 0, Labels::default());
        ix.soften_names(Selector::Names(HashSet::from([Name::new(&k1)])), vec![k1], 100, 100);
        softened_tenant(&mut ix, Some(b"t"), 200, 200);
        let mut saved = ix.stale_names();
        saved.sort();
        assert_eq!(saved.len(), 5);
        assert!(saved.contains(&(Key::new_key(b"k1", 0, expiry::NEVER, 0, Labels::default()), 100)));
        assert!(saved.contains(&(Key::new_key(b"k2", 0, expiry::NEVER, 0, Labels::default()), 200)));
        let mut loaded = DbIndex::default();
        for i in 0..5 {
            put(&mut loaded, format!("k{i}").as_bytes(), b"t", &[], 10);
        }
        loaded.soften_exactly(saved.into_iter().map(|(k, at)| (Name::new(&k), at)).collect());
        assert_eq!(loaded.stale_since(b"k1"), Some(100));
        assert_eq!(loaded.stale_since(b"k4"), Some(200));
        assert_eq!(drain(&mut loaded, |_, _| {}).len(), 5);
    }

    #[test]
    fn an_answer_survives_its_database_emptied_before_it_was_delivered() {
        let mut index = Index::default();
        for i in 0..10 {
            let t = if i % 2 == 0 { vec![Name::from(&b"x"[..])] } else { Vec::new() };
            index.db_mut(0).insert(format!("k{i}").as_bytes(), &mut Labels::new(Name::from(&b"t"[..]), t), 10, expiry::NEVER);
        }
        let ix = index.db_mut(0);
        assert_eq!(ix.doom_tag(b"x", 0, 1), Some(5));
        assert_eq!(ix.soften_tenant(Some(b"t"), 0, 0, 2), None, "counted later");
        // A hard invalidation finishes the SOFT count before it moves the tenant's set away.
        assert_eq!(ix.doom_tenant(Some(b"t"), 0, 3), None);
        assert!(!ix.count_some(usize::MAX));
        for i in 0..10 {
            index.remove(0, format!("k{i}").as_bytes());
        }
        assert!(index.db(0).is_none(), "an empty database with nothing counting is dropped");
        let mut answered = index.take_answered();
        answered.sort();
        assert_eq!(answered, vec![(2, 5), (3, 5)]);
    }

    #[test]
    fn swap_and_clear_dbs() {
        let mut ix = Index::default();
        put(ix.db_mut(0), b"k", b"", &[], 10);
        ix.swap(0, 3);
        assert!(ix.db(0).is_none());
        assert!(ix.db(3).unwrap().contains(b"k"));
        assert!(ix.remove(3, b"k"));
        put(ix.db_mut(1), b"j", b"", &[], 10);
        ix.clear_db(1);
        assert_eq!(ix.total_keys(), 0);
    }
}
