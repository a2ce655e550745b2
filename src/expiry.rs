//! When indexed entries expire, coarsely: key names bucketed by expiry time (128 ms buckets),
//! so the entries whose TTL has passed but that Redis has not removed yet are found by walking
//! only the buckets already due, not every entry. Pure data, no Redis calls.

use crate::mem::times;
use crate::key::Key;
use crate::shardmap::{Hashed, ShardMap};
use std::collections::BTreeMap;

pub use crate::ttl::{has_expired, held, NEVER};

/// Bucket width as a power of two of milliseconds.
const BUCKET_SHIFT: u32 = 7;

fn bucket(at_ms: i64) -> i64 {
    at_ms >> BUCKET_SHIFT
}

#[derive(Debug, Default)]
pub struct Expiries {
    buckets: BTreeMap<i64, ShardMap<Key, ()>>,
    /// Heap bytes of the buckets' tables and of the B-tree holding them, kept up to date.
    heap: usize,
    /// While deferred (`defer`): names to add, with their bucket and hash.
    later: Option<Vec<(i64, u64, Key)>>,
}

/// A B-tree slot holding one bucket, counted two-thirds full.
fn bucket_slot() -> usize {
    times(std::mem::size_of::<(i64, ShardMap<Key, ()>)>(), 3) / 2
}

impl Expiries {
    /// Records that `name` (whose `Hashed::hash` is `hash`) expires at `at_ms` (nothing for
    /// `NEVER`).
    pub fn add(&mut self, name: &Key, hash: u64, at_ms: i64) {
        if at_ms == NEVER {
            return;
        }
        let b = bucket(at_ms);
        if let Some(later) = self.later.as_mut() {
            later.push((b, hash, name.clone()));
            return;
        }
        let set = self.buckets.entry(b).or_default();
        let before = set.heap_bytes();
        let fresh = set.is_empty();
        set.insert_hashed(name.clone(), hash, ());
        self.heap = self.heap.saturating_sub(before).saturating_add(set.heap_bytes());
        if fresh {
            self.heap = self.heap.saturating_add(bucket_slot());
        }
    }

    /// Adds names in bulk until `settle` (`due`, `contains` and `len` do not see them until
    /// then): each bucket is then built at once, in a table of
    /// its size, from names sorted by bucket (a bucket's table stays in cache while it fills).
    pub fn defer(&mut self) {
        self.later.get_or_insert_with(Vec::new);
    }

    /// Adds the names deferred so far (and stops deferring).
    pub fn settle(&mut self) {
        let Some(mut later) = self.later.take() else {
            return;
        };
        later.sort_unstable_by_key(|(b, _, _)| *b);
        let mut names = later.into_iter().peekable();
        while let Some(&(b, _, _)) = names.peek() {
            let mut batch = Vec::new();
            while let Some((_, hash, name)) = names.next_if(|(next, _, _)| *next == b) {
                batch.push((hash, name));
            }
            let set = self.buckets.entry(b).or_default();
            let (before, fresh) = (set.heap_bytes(), set.is_empty());
            set.presize(batch.len());
            for (hash, name) in batch {
                set.insert_hashed(name, hash, ());
            }
            self.heap = self.heap.saturating_sub(before).saturating_add(set.heap_bytes());
            if fresh {
                self.heap = self.heap.saturating_add(bucket_slot());
            }
        }
    }

    /// Forgets that `name` expires at `at_ms`.
    pub fn remove(&mut self, name: Hashed<'_>, at_ms: i64) {
        if at_ms == NEVER {
            return;
        }
        if self.later.as_ref().is_some_and(|later| !later.is_empty()) {
            // Rare (a key written twice while deferring): add what was deferred first.
            self.settle();
            self.defer();
        }
        let b = bucket(at_ms);
        let Some(set) = self.buckets.get_mut(&b) else {
            return;
        };
        let before = set.heap_bytes();
        set.remove_hashed(name);
        self.heap = self.heap.saturating_sub(before).saturating_add(set.heap_bytes());
        if set.is_empty() {
            self.buckets.remove(&b);
            self.heap = self.heap.saturating_sub(bucket_slot());
        }
    }

    /// Names that may have expired by `now_ms`: every name of the buckets already begun (the
    /// caller checks each one's exact time). As many as Redis has not reaped yet, plus the
    /// names of one bucket.
    pub fn due(&self, now_ms: i64) -> impl Iterator<Item = &Key> + '_ {
        self.buckets.range(..=bucket(now_ms)).flat_map(|(_, set)| set.keys())
    }

    /// Whether `name` is recorded as expiring at `at_ms` (always for `NEVER`).
    pub fn contains(&self, name: &[u8], at_ms: i64) -> bool {
        at_ms == NEVER || self.buckets.get(&bucket(at_ms)).is_some_and(|set| set.contains_key(name))
    }

    pub fn len(&self) -> usize {
        self.buckets.values().map(ShardMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Heap bytes of the buckets, in O(1).
    pub fn heap_bytes(&self) -> usize {
        self.heap
    }

    /// `heap_bytes` recomputed from scratch.
    #[cfg(test)]
    pub fn heap_recounted(&self) -> usize {
        self.buckets.values().map(|s| s.heap_bytes().saturating_add(bucket_slot())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Key {
        Key::new_key(s.as_bytes(), 0, NEVER, 0, Default::default())
    }

    fn add(e: &mut Expiries, s: &str, at_ms: i64) {
        e.add(&name(s), Hashed::of(s.as_bytes()).hash, at_ms);
    }

    #[test]
    fn due_names_are_those_of_begun_buckets_only() {
        let mut e = Expiries::default();
        add(&mut e, "a", 1_000);
        add(&mut e, "b", 1_100);
        add(&mut e, "c", 5_000);
        add(&mut e, "n", NEVER);
        let mut due: Vec<&[u8]> = e.due(1_050).map(|n| &n[..]).collect();
        due.sort();
        // a is in the bucket begun at 896, b in the one begun at 1 024; c's has not begun.
        assert_eq!(due, vec![&b"a"[..], b"b"]);
        assert_eq!(e.due(1_023).count(), 1, "only the bucket begun at 896 (a)");
        assert_eq!(e.due(895).count(), 0);
        assert_eq!(e.len(), 3);
        assert!(has_expired(1_000, 1_001));
        assert!(!has_expired(1_000, 1_000));
        assert!(!has_expired(NEVER, i64::MAX));
    }

    #[test]
    fn removal_empties_buckets_and_gives_memory_back() {
        let mut e = Expiries::default();
        for i in 0..10_000i64 {
            add(&mut e, &format!("k{i}"), i.saturating_mul(3));
            assert_eq!(e.heap_bytes(), e.heap_recounted());
        }
        for i in 0..10_000i64 {
            e.remove(Hashed::of(format!("k{i}").as_bytes()), i.saturating_mul(3));
        }
        assert!(e.is_empty());
        assert_eq!(e.heap_bytes(), 0);
        // Removing what is not there changes nothing.
        e.remove(Hashed::of(b"k1"), 3);
        assert_eq!(e.heap_bytes(), 0);
    }
}
