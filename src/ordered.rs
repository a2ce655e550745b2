//! A tenant's key names in name order: sorted runs ("chunks") of at most 64 names, in a B-tree
//! keyed by each chunk's first name. Pure data, no Redis calls.
//!
//! `BTreeSet` splits a full node in the middle, so names that arrive in order (ids that
//! grow, the common case) leave every leaf half full: about 20 bytes per name. A chunk that
//! fills at the end of the order is not split but followed by a new one, so names arriving in
//! order fill their chunks; other inserts split a full chunk in two halves. Such an insert
//! costs one comparison with the last name, where a B-tree compares a name at every level.

use crate::key::Key;
use crate::mem::{allocation, sum, times};
use std::collections::{btree_map, BTreeMap};
use std::ops::Bound;

/// Names per chunk at most.
const CHUNK: usize = 64;

#[derive(Debug, Default)]
pub struct OrderedKeys {
    chunks: BTreeMap<Key, Vec<Key>>,
    len: usize,
    /// Bytes the allocator holds for the chunks (kept up to date).
    chunk_bytes: usize,
}

fn chunk_bytes(chunk: &Vec<Key>) -> usize {
    allocation(times(chunk.capacity(), std::mem::size_of::<Key>()))
}

impl OrderedKeys {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first name of the chunk that holds `name`, or would: the last chunk starting at
    /// or before it, else the first chunk.
    fn chunk_for(&self, name: &[u8]) -> Option<Key> {
        self.chunks
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(name)))
            .next_back()
            .or_else(|| self.chunks.first_key_value())
            .map(|(first, _)| first.clone())
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.chunk_for(name)
            .and_then(|first| self.chunks.get(&first[..]))
            .is_some_and(|chunk| chunk.binary_search_by(|k| k.as_bytes().cmp(name)).is_ok())
    }

    /// Runs `change` on the chunk starting at `first` (taken out of the map), puts back what
    /// it leaves (re-keyed by its new first name, empty chunks dropped) and keeps the byte
    /// figure right.
    fn with_chunk<R>(&mut self, first: &[u8], change: impl FnOnce(&mut Vec<Key>) -> (R, Option<Vec<Key>>)) -> Option<R> {
        let (_, mut chunk) = self.chunks.remove_entry(first)?;
        self.chunk_bytes = self.chunk_bytes.saturating_sub(chunk_bytes(&chunk));
        let (result, split) = change(&mut chunk);
        for part in [Some(chunk), split].into_iter().flatten() {
            if let Some(head) = part.first().cloned() {
                self.chunk_bytes = self.chunk_bytes.saturating_add(chunk_bytes(&part));
                self.chunks.insert(head, part);
            }
        }
        Some(result)
    }

    /// Adds `key`; false (nothing changed) when its name is there already.
    pub fn insert(&mut self, key: Key) -> bool {
        if let Some(mut last) = self.chunks.last_entry() {
            if last.get().last().is_some_and(|l| *l < key) {
                // In order: at the end of the last chunk, or in a new one when it is full.
                if last.get().len() < CHUNK {
                    let chunk = last.get_mut();
                    let before = chunk_bytes(chunk);
                    chunk.push(key);
                    let after = chunk_bytes(chunk);
                    self.chunk_bytes = self.chunk_bytes.saturating_sub(before).saturating_add(after);
                } else {
                    self.chunk_bytes = self.chunk_bytes.saturating_add(allocation(std::mem::size_of::<Key>()));
                    self.chunks.insert(key.clone(), vec![key]);
                }
                self.len = self.len.saturating_add(1);
                return true;
            }
        }
        let Some(first) = self.chunk_for(&key) else {
            self.chunk_bytes = allocation(std::mem::size_of::<Key>());
            self.chunks.insert(key.clone(), vec![key]);
            self.len = 1;
            return true;
        };
        let added = self
            .with_chunk(&first, |chunk| {
                let Err(at) = chunk.binary_search(&key) else {
                    return (false, None);
                };
                if chunk.len() < CHUNK {
                    chunk.insert(at, key);
                    return (true, None);
                }
                // Full: split in halves, the right one in a chunk of its own size.
                let mut right = chunk.split_off(CHUNK / 2);
                match at.checked_sub(CHUNK / 2) {
                    Some(i) => right.insert(i, key),
                    None => chunk.insert(at, key),
                }
                (true, Some(right))
            })
            .unwrap_or(false);
        if added {
            self.len = self.len.saturating_add(1);
        }
        added
    }

    /// Removes the name; false when it was not there. A chunk left a quarter full takes in
    /// the next one when both fit in one chunk; a chunk gives back spare capacity.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        let Some(first) = self.chunk_for(name) else {
            return false;
        };
        let removed = self.with_chunk(&first, |chunk| {
            let Ok(at) = chunk.binary_search_by(|k| k.as_bytes().cmp(name)) else {
                return (None, None);
            };
            chunk.remove(at);
            if chunk.capacity() > chunk.len().saturating_mul(4) {
                chunk.shrink_to(chunk.len().saturating_mul(2));
            }
            (Some(chunk.first().cloned()), None)
        });
        let Some(Some(head)) = removed else {
            return false;
        };
        self.len = self.len.saturating_sub(1);
        if let Some(head) = head {
            self.merge_small(&head);
        }
        true
    }

    /// Joins the chunk starting at `first`, when a quarter full, with its next or else its
    /// previous neighbour, if both fit in one chunk.
    fn merge_small(&mut self, first: &[u8]) {
        let Some((this, size)) = self.chunks.get_key_value(first).map(|(k, c)| (k.clone(), c.len())) else {
            return;
        };
        if size > CHUNK / 4 {
            return;
        }
        let fits = |(k, c): (&Key, &Vec<Key>)| (c.len().saturating_add(size) <= CHUNK).then(|| k.clone());
        let next = self.chunks.range::<[u8], _>((Bound::Excluded(first), Bound::Unbounded)).next().and_then(fits);
        let previous = || self.chunks.range::<[u8], _>((Bound::Unbounded, Bound::Excluded(first))).next_back().and_then(fits);
        let (into, from) = match next {
            Some(next) => (this, next),
            None => match previous() {
                Some(previous) => (previous, this),
                None => return,
            },
        };
        let Some(mut taken) = self.chunks.remove(&from[..]) else {
            return;
        };
        self.chunk_bytes = self.chunk_bytes.saturating_sub(chunk_bytes(&taken));
        self.with_chunk(&into, |chunk| {
            chunk.append(&mut taken);
            ((), None)
        });
    }

    pub fn iter(&self) -> impl Iterator<Item = &Key> + '_ {
        self.chunks.values().flatten()
    }

    /// The names from `from` on, in order.
    pub fn range_from<'a>(&'a self, from: Bound<&[u8]>) -> impl Iterator<Item = &'a Key> + 'a {
        let start = match from {
            Bound::Unbounded => None,
            Bound::Included(b) | Bound::Excluded(b) => self.chunk_for(b),
        };
        let chunks = match &start {
            Some(first) => self.chunks.range::<[u8], _>((Bound::Included(&first[..]), Bound::Unbounded)),
            None => self.chunks.range::<[u8], _>(..),
        };
        let mut chunks = chunks.map(|(_, c)| c.as_slice());
        let head = chunks.next().unwrap_or_default();
        let skip = match from {
            Bound::Unbounded => 0,
            Bound::Included(b) => head.partition_point(|k| k.as_bytes() < b),
            Bound::Excluded(b) => head.partition_point(|k| k.as_bytes() <= b),
        };
        head.get(skip..).unwrap_or_default().iter().chain(chunks.flatten())
    }

    /// Adds names given in order, none of them here yet: straight into full chunks when they
    /// all come after the last name here (a rebuild after a load), else one by one.
    pub fn extend_sorted(&mut self, keys: Vec<Key>) {
        let in_order = match (self.chunks.last_key_value().and_then(|(_, c)| c.last()), keys.first()) {
            (Some(last), Some(first)) => last < first,
            _ => true,
        };
        if !in_order {
            for key in keys {
                self.insert(key);
            }
            return;
        }
        let mut keys = keys.into_iter().peekable();
        while keys.peek().is_some() {
            let chunk: Vec<Key> = keys.by_ref().take(CHUNK).collect();
            if let Some(head) = chunk.first().cloned() {
                self.len = self.len.saturating_add(chunk.len());
                self.chunk_bytes = self.chunk_bytes.saturating_add(chunk_bytes(&chunk));
                self.chunks.insert(head, chunk);
            }
        }
    }

    /// Bytes the allocator holds for the structure: the chunks and the B-tree over them
    /// (its nodes counted two-thirds full), in O(1).
    pub fn heap_bytes(&self) -> usize {
        const NODE: usize = 11 * (std::mem::size_of::<Key>() + std::mem::size_of::<Vec<Key>>()) + 16;
        let nodes = self.chunks.len().saturating_mul(3).div_ceil(2 * 11);
        sum([self.chunk_bytes, times(nodes, allocation(NODE))])
    }
}

impl IntoIterator for OrderedKeys {
    type Item = Key;
    type IntoIter = IntoKeys;

    fn into_iter(self) -> IntoKeys {
        IntoKeys { left: self.len, chunks: self.chunks.into_values(), current: Vec::new().into_iter() }
    }
}

/// The names of an `OrderedKeys`, taken out in order.
#[derive(Debug)]
pub struct IntoKeys {
    left: usize,
    chunks: btree_map::IntoValues<Key, Vec<Key>>,
    current: std::vec::IntoIter<Key>,
}

impl Iterator for IntoKeys {
    type Item = Key;

    fn next(&mut self) -> Option<Key> {
        loop {
            if let Some(key) = self.current.next() {
                self.left = self.left.saturating_sub(1);
                return Some(key);
            }
            self.current = self.chunks.next()?.into_iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for IntoKeys {}

impl FromIterator<Key> for OrderedKeys {
    fn from_iter<I: IntoIterator<Item = Key>>(keys: I) -> OrderedKeys {
        let mut ordered = OrderedKeys::default();
        for key in keys {
            ordered.insert(key);
        }
        ordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn key(s: &str) -> Key {
        Key::new_key(s.as_bytes(), 0, crate::expiry::NEVER, 0, Default::default())
    }

    fn names(it: impl Iterator<Item = impl AsRef<[u8]>>) -> Vec<Vec<u8>> {
        it.map(|k| k.as_ref().to_vec()).collect()
    }

    /// Checks the chunks' invariants and that the set equals `model`.
    fn check(o: &OrderedKeys, model: &BTreeSet<Vec<u8>>) {
        assert_eq!(o.len(), model.len());
        assert_eq!(names(o.iter()), names(model.iter()));
        let mut before: Option<&Key> = None;
        for (first, chunk) in &o.chunks {
            assert!(!chunk.is_empty() && chunk.len() <= CHUNK, "chunk sizes within 1..=64");
            assert_eq!(chunk.first(), Some(first), "a chunk is keyed by its first name");
            assert!(chunk.windows(2).all(|w| w.first() < w.last()), "sorted inside");
            assert!(before.is_none_or(|b| b < first), "sorted across");
            before = chunk.last();
        }
        assert_eq!(o.chunk_bytes, sum(o.chunks.values().map(chunk_bytes)), "byte figure exact");
    }

    /// A small deterministic generator (xorshift).
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn random_inserts_and_removals_match_a_btreeset() {
        let mut next = rng(0x9e37_79b9_7f4a_7c15);
        let mut o = OrderedKeys::default();
        let mut model = BTreeSet::new();
        for round in 0..20_000u32 {
            let n = format!("k{:04}", next() % 3_000);
            if next().is_multiple_of(3) {
                assert_eq!(o.remove(n.as_bytes()), model.remove(n.as_bytes()), "remove {n}");
            } else {
                assert_eq!(o.insert(key(&n)), model.insert(n.clone().into_bytes()), "insert {n}");
            }
            assert_eq!(o.contains(n.as_bytes()), model.contains(n.as_bytes()));
            if round % 500 == 0 {
                check(&o, &model);
            }
        }
        check(&o, &model);
        for bound in ["", "k0", "k1500", "k15005", "k2999", "k3", "z"] {
            for b in [Bound::Included(bound.as_bytes()), Bound::Excluded(bound.as_bytes())] {
                let want: Vec<Vec<u8>> = model.range::<[u8], _>((b, Bound::Unbounded)).cloned().collect();
                assert_eq!(names(o.range_from(b)), want, "range from {b:?}");
            }
        }
        assert_eq!(names(o.range_from(Bound::Unbounded)), names(model.iter()));
        let all: Vec<Key> = std::mem::take(&mut o).into_iter().collect();
        assert_eq!(names(all.iter()), names(model.iter()));
        for n in &model {
            assert!(!o.remove(n), "taken out whole");
        }
        check(&o, &BTreeSet::new());
        assert_eq!(o.heap_bytes(), 0);
    }

    #[test]
    fn names_arriving_in_order_fill_their_chunks() {
        let mut o = OrderedKeys::default();
        for i in 0..6_400 {
            assert!(o.insert(key(&format!("k{i:05}"))));
        }
        assert_eq!(o.chunks.len(), 100, "full chunks");
        assert!(o.heap_bytes() <= 6_400 * 9, "about 8 bytes a name, {} bytes", o.heap_bytes());
        let ascending_btree = 6_400 * 18;
        assert!(o.heap_bytes() < ascending_btree / 2);
        // Emptying gives every byte back, and a quarter-full chunk takes in a small neighbour.
        let mut model: BTreeSet<Vec<u8>> = (0..6_400).map(|i| format!("k{i:05}").into_bytes()).collect();
        for i in (0..6_400).filter(|i| i % 8 != 0) {
            assert!(o.remove(format!("k{i:05}").as_bytes()));
            model.remove(format!("k{i:05}").as_bytes());
        }
        check(&o, &model);
        assert!(o.chunks.len() < 30, "{} chunks for 800 names", o.chunks.len());
        for i in (0..6_400).filter(|i| i % 8 == 0) {
            assert!(o.remove(format!("k{i:05}").as_bytes()));
        }
        assert_eq!((o.len(), o.heap_bytes()), (0, 0));
    }

    #[test]
    fn extend_sorted_builds_full_chunks_or_merges() {
        let mut o = OrderedKeys::default();
        o.extend_sorted((0..200).map(|i| key(&format!("k{i:03}"))).collect());
        assert_eq!(o.chunks.len(), 4);
        let mut model: BTreeSet<Vec<u8>> = (0..200).map(|i| format!("k{i:03}").into_bytes()).collect();
        check(&o, &model);
        // Interleaved with what is there: inserted one by one.
        o.extend_sorted((0..50).map(|i| key(&format!("k{i:03}x"))).collect());
        model.extend((0..50).map(|i| format!("k{i:03}x").into_bytes()));
        check(&o, &model);
    }
}
