//! A hash map keyed by byte names that grows and shrinks one small shard at a time (linear
//! hashing over hashbrown tables). A plain hash map rehashes every entry when it resizes: at a
//! million names that is hundreds of milliseconds during which Redis serves nobody. Here a
//! resize touches one shard of a few thousand entries, whatever the map's size.
//!
//! Every name is hashed once per operation ([`Hashed`]), with a hash seeded per process so that
//! names chosen by clients cannot be made to collide. Its low bits address the shard: shard
//! `h mod 2^level`, or `h mod 2^(level+1)` for the shards already split at this level.
//! Splitting shard `split` moves the half of its entries whose bit `level` is set into a new
//! last shard; merging does the reverse. Inside a shard the table is addressed by the same hash
//! mixed with a seed of the map's own (every name of a shard shares the low bits of `h`, and
//! two maps must not share a table order): one hash of the name's bytes serves every map it
//! is looked up in (an index write touches five).

use crate::mem::{allocation, times};
use hashbrown::hash_table::{self, HashTable};
use std::borrow::Borrow;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Average entries per shard above which one more shard is split off.
const SHARD_TARGET: usize = 2048;

#[derive(Debug)]
pub struct ShardMap<K, V> {
    shards: Vec<HashTable<(K, V)>>,
    /// There are `2^level + split` shards; shard `split` is the next to split.
    level: u32,
    split: usize,
    len: usize,
    /// Bytes of the shards' tables, as the allocator rounds them (kept up to date).
    table_bytes: usize,
    /// Mixed into every name's hash to address this map's tables.
    seed: u64,
}

impl<K, V> Default for ShardMap<K, V> {
    fn default() -> Self {
        static MAPS: AtomicU64 = AtomicU64::new(0);
        let n = MAPS.fetch_add(1, Ordering::Relaxed);
        ShardMap { shards: Vec::new(), level: 0, split: 0, len: 0, table_bytes: 0, seed: name_hash(&n.to_le_bytes()) }
    }
}

/// A name with its hash, computed once and used for every map the name is looked up in.
#[derive(Debug, Clone, Copy)]
pub struct Hashed<'a> {
    pub name: &'a [u8],
    pub hash: u64,
}

impl<'a> Hashed<'a> {
    pub fn of(name: &'a [u8]) -> Self {
        Hashed { name, hash: name_hash(name) }
    }
}

/// The per-process seeded hash of a name (see the module documentation).
fn name_hash(name: &[u8]) -> u64 {
    static SEED: OnceLock<foldhash::quality::RandomState> = OnceLock::new();
    SEED.get_or_init(Default::default).hash_one(name)
}

/// `h` mixed with `seed`: a full 64×64→128-bit multiply folded back to 64 bits, so every bit
/// of the result depends on every bit of `h`.
fn mix(h: u64, seed: u64) -> u64 {
    const ODD: u128 = 0x9e37_79b9_7f4a_7c15;
    let p = u128::from(h ^ seed).wrapping_mul(ODD);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The highest bucket number among `2^bits`.
pub fn bucket_mask(bits: u32) -> u64 {
    mask(bits)
}

/// The bucket of `name` among `2^bits` (see `ShardMap::names_in_bucket`).
pub fn bucket_of(name: &[u8], bits: u32) -> u64 {
    name_hash(name) & mask(bits)
}

/// `2^level - 1`.
fn mask(level: u32) -> u64 {
    1u64.checked_shl(level).map_or(u64::MAX, |b| b.wrapping_sub(1))
}

/// Bytes of a hash table with room for `capacity` slots of `slot` bytes: hashbrown allocates
/// buckets (capacity is 7/8 of them) of a slot plus one control byte.
pub fn table_bytes(capacity: usize, slot: usize) -> usize {
    allocation(times(capacity.saturating_mul(8) / 7, slot.saturating_add(1)))
}

/// An entry of the map, found or to be filled (what `with_entry` hands its closure).
pub enum Entry<'a, K, V> {
    Occupied(Occupied<'a, K, V>),
    Vacant(Vacant<'a, K, V>),
}

pub struct Occupied<'a, K, V>(hash_table::OccupiedEntry<'a, (K, V)>);

pub struct Vacant<'a, K, V> {
    slot: hash_table::VacantEntry<'a, (K, V)>,
    key: K,
}

impl<'a, K, V> Occupied<'a, K, V> {
    pub fn key(&self) -> &K {
        &self.0.get().0
    }
    pub fn get(&self) -> &V {
        &self.0.get().1
    }
    pub fn get_mut(&mut self) -> &mut V {
        &mut self.0.get_mut().1
    }
    pub fn into_mut(self) -> &'a mut V {
        &mut self.0.into_mut().1
    }
    /// Replaces the value, returning the previous one.
    pub fn insert(&mut self, value: V) -> V {
        std::mem::replace(self.get_mut(), value)
    }
}

impl<'a, K, V> Vacant<'a, K, V> {
    pub fn key(&self) -> &K {
        &self.key
    }
    pub fn insert(self, value: V) -> &'a mut V {
        &mut self.slot.insert((self.key, value)).into_mut().1
    }
}

impl<K: Borrow<[u8]>, V> ShardMap<K, V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sizes an empty map for `n` entries at once: the shards the map would have split into
    /// and tables with room for their share, so that filling it moves no entry. Nothing for a
    /// map that holds entries.
    pub fn presize(&mut self, n: usize) {
        if self.len != 0 {
            return;
        }
        let shards = n.div_ceil(SHARD_TARGET).max(1);
        let level = shards.checked_ilog2().unwrap_or(0);
        let whole = 1usize.checked_shl(level).unwrap_or(usize::MAX);
        let split = shards.saturating_sub(whole);
        let per_whole = n.checked_div(whole).unwrap_or(n);
        let slot = std::mem::size_of::<(K, V)>();
        self.shards = (0..shards)
            .map(|at| {
                // A shard already split at this level holds half of an unsplit one's share.
                let share = if at < split || at >= whole { per_whole / 2 } else { per_whole };
                HashTable::with_capacity(share.saturating_add(share / 16))
            })
            .collect();
        self.level = level;
        self.split = split;
        self.table_bytes = self.shards.iter().map(|t| table_bytes(t.capacity(), slot)).fold(0, usize::saturating_add);
    }

    /// Rebuilds a map left with more shards than growing to its size would have made (what
    /// `presize` made room for was a guess too high) as if grown to its size.
    pub fn compact(&mut self) {
        if self.shards.len() <= self.len.div_ceil(SHARD_TARGET).max(1) {
            return;
        }
        let old = std::mem::take(&mut self.shards);
        let (len, seed) = (self.len, self.seed);
        *self = ShardMap { seed, ..ShardMap::default() };
        self.presize(len);
        for (k, v) in old.into_iter().flatten() {
            let hash = name_hash(k.borrow());
            self.insert_hashed(k, hash, v);
        }
    }

    /// Heap bytes of the map's tables and shard list, in O(1).
    pub fn heap_bytes(&self) -> usize {
        let list = times(self.shards.capacity(), std::mem::size_of::<HashTable<(K, V)>>());
        self.table_bytes.saturating_add(allocation(list))
    }

    /// How a shard's table hashes its entries (on resize).
    fn rehasher(&self) -> impl Fn(&(K, V)) -> u64 {
        let seed = self.seed;
        move |(k, _): &(K, V)| mix(name_hash(k.borrow()), seed)
    }

    fn slot_of(&self, h: u64) -> usize {
        let mut at = h & mask(self.level);
        if at < self.split as u64 {
            at = h & mask(self.level.saturating_add(1));
        }
        usize::try_from(at).unwrap_or(0)
    }

    fn find(&self, n: Hashed<'_>) -> Option<&(K, V)> {
        let shard = self.shards.get(self.slot_of(n.hash))?;
        shard.find(mix(n.hash, self.seed), |(k, _)| k.borrow() == n.name)
    }

    pub fn get(&self, name: &[u8]) -> Option<&V> {
        self.get_hashed(Hashed::of(name))
    }

    pub fn get_hashed(&self, n: Hashed<'_>) -> Option<&V> {
        self.find(n).map(|(_, v)| v)
    }

    pub fn get_key_value(&self, name: &[u8]) -> Option<(&K, &V)> {
        self.get_key_value_hashed(Hashed::of(name))
    }

    pub fn get_key_value_hashed(&self, n: Hashed<'_>) -> Option<(&K, &V)> {
        self.find(n).map(|(k, v)| (k, v))
    }

    pub fn contains_key(&self, name: &[u8]) -> bool {
        self.contains_hashed(Hashed::of(name))
    }

    pub fn contains_hashed(&self, n: Hashed<'_>) -> bool {
        self.find(n).is_some()
    }

    pub fn get_mut(&mut self, name: &[u8]) -> Option<&mut V> {
        self.get_mut_hashed(Hashed::of(name))
    }

    pub fn get_mut_hashed(&mut self, n: Hashed<'_>) -> Option<&mut V> {
        let at = self.slot_of(n.hash);
        let h = mix(n.hash, self.seed);
        let shard = self.shards.get_mut(at)?;
        shard.find_mut(h, |(k, _)| k.borrow() == n.name).map(|(_, v)| v)
    }

    /// The shard `h` belongs to, creating the first shard of an empty map.
    fn locate(&mut self, h: u64) -> usize {
        if self.shards.is_empty() {
            self.shards.push(HashTable::new());
        }
        self.slot_of(h)
    }

    /// Runs `change` on shard `at` and keeps the length and table figures right.
    fn in_shard<R>(&mut self, at: usize, change: impl FnOnce(&mut HashTable<(K, V)>, u64) -> R) -> Option<R> {
        let slot = std::mem::size_of::<(K, V)>();
        let (seed, rehash) = (self.seed, self.rehasher());
        let shard = self.shards.get_mut(at)?;
        let (len, cap) = (shard.len(), shard.capacity());
        let result = change(shard, seed);
        // Shrinking and merging follow removals only: a map sized ahead of its entries
        // (`presize`) keeps its room while it fills.
        if shard.len() < len {
            shrink_if_sparse(shard, &rehash);
        }
        let (grew, shrank) = (shard.len() > len, shard.len() < len);
        self.len = self.len.saturating_sub(len).saturating_add(shard.len());
        self.table_bytes = self
            .table_bytes
            .saturating_sub(table_bytes(cap, slot))
            .saturating_add(table_bytes(shard.capacity(), slot));
        if grew {
            self.split_if_full();
        } else if shrank {
            self.merge_if_sparse();
        }
        Some(result)
    }

    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, name: K, value: V) -> Option<V> {
        let hash = name_hash(name.borrow());
        self.insert_hashed(name, hash, value)
    }

    /// `insert` of a name whose `Hashed::hash` is `hash`.
    pub fn insert_hashed(&mut self, name: K, hash: u64, value: V) -> Option<V> {
        self.with_entry_hashed(name, hash, |e| match e {
            Entry::Occupied(mut o) => Some(o.insert(value)),
            Entry::Vacant(v) => {
                v.insert(value);
                None
            }
        })
        .flatten()
    }

    /// Runs `f` on the map entry of `name` (which `f` may fill or leave vacant). None only if
    /// the map could not place the name, which cannot happen.
    pub fn with_entry<R>(&mut self, name: K, f: impl FnOnce(Entry<'_, K, V>) -> R) -> Option<R> {
        let hash = name_hash(name.borrow());
        self.with_entry_hashed(name, hash, f)
    }

    pub fn with_entry_hashed<R>(&mut self, name: K, hash: u64, f: impl FnOnce(Entry<'_, K, V>) -> R) -> Option<R> {
        let at = self.locate(hash);
        let rehash = self.rehasher();
        self.in_shard(at, |shard, seed| {
            let found = shard.entry(mix(hash, seed), |(k, _)| k.borrow() == name.borrow(), &rehash);
            f(match found {
                hash_table::Entry::Occupied(o) => Entry::Occupied(Occupied(o)),
                hash_table::Entry::Vacant(slot) => Entry::Vacant(Vacant { slot, key: name }),
            })
        })
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<V> {
        self.remove_entry(name).map(|(_, v)| v)
    }

    pub fn remove_entry(&mut self, name: &[u8]) -> Option<(K, V)> {
        self.remove_hashed(Hashed::of(name))
    }

    pub fn remove_hashed(&mut self, n: Hashed<'_>) -> Option<(K, V)> {
        let at = self.slot_of(n.hash);
        let removed = self
            .in_shard(at, |shard, seed| match shard.find_entry(mix(n.hash, seed), |(k, _)| k.borrow() == n.name) {
                Ok(found) => Some(found.remove().0),
                Err(_) => None,
            })
            .flatten();
        if removed.is_some() && self.len == 0 {
            // Nothing left: give every table back.
            *self = ShardMap { seed: self.seed, ..ShardMap::default() };
        }
        removed
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.shards.iter().flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.shards.iter().flat_map(|s| s.iter().map(|(k, _)| k))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.shards.iter().flat_map(|s| s.iter().map(|(_, v)| v))
    }

    pub fn into_values(self) -> impl Iterator<Item = V> {
        self.shards.into_iter().flat_map(|s| s.into_iter().map(|(_, v)| v))
    }

    pub fn into_keys(self) -> IntoKeys<K, V> {
        IntoKeys { left: self.len, shards: self.shards.into_iter(), current: None }
    }

    /// Hash bits that split the map's names into buckets no larger than a shard: a walk over
    /// buckets `0..2^bits` (see `names_in_bucket`) visits every name present throughout once,
    /// whatever splits and merges happen between steps.
    pub fn bucket_bits(&self) -> u32 {
        if self.shards.is_empty() {
            0
        } else {
            self.level.saturating_add(1)
        }
    }

    /// The names whose hash has `bucket` in its low `bits` bits. A shard holds one or several
    /// such buckets, or part of one, depending on how far it has split.
    pub fn names_in_bucket(&self, bits: u32, bucket: u64) -> Vec<K>
    where
        K: Clone,
    {
        let mut out = Vec::new();
        let first_new = 1usize.checked_shl(self.level).unwrap_or(usize::MAX);
        for (j, shard) in self.shards.iter().enumerate() {
            let shard_bits = if j < self.split || j >= first_new {
                self.level.saturating_add(1)
            } else {
                self.level
            };
            let j = j as u64;
            if shard_bits > bits {
                if j & mask(bits) == bucket {
                    out.extend(shard.iter().map(|(k, _)| k.clone()));
                }
            } else if bucket & mask(shard_bits) == j {
                out.extend(shard.iter().map(|(k, _)| k).filter(|k| bucket_of((*k).borrow(), bits) == bucket).cloned());
            }
        }
        out
    }

    /// After an insert: splits one shard when the average shard is above target (at most one
    /// shard's entries move per change).
    fn split_if_full(&mut self) {
        if self.len > self.shards.len().saturating_mul(SHARD_TARGET) {
            self.split_one();
        }
    }

    /// After a removal: merges the last shard back when the average shard is well below
    /// target.
    fn merge_if_sparse(&mut self) {
        let shards = self.shards.len();
        if shards > 1 && self.len < shards.saturating_mul(SHARD_TARGET) / 4 {
            self.merge_one();
        }
    }

    fn split_one(&mut self) {
        let level = self.level;
        let bit = 1u64.checked_shl(level).unwrap_or(0);
        let rehash = self.rehasher();
        let seed = self.seed;
        let mut moved = HashTable::new();
        self.account_resize(self.split, |from| {
            // Both halves are rebuilt in tables fitted to them, each name hashed once (taking
            // half out and shrinking the rest in place would hash most names twice more).
            let half = (from.len() / 2).saturating_add(from.len() / 16);
            let mut stay = HashTable::with_capacity(half);
            moved = HashTable::with_capacity(half);
            for entry in std::mem::take(from) {
                let h = name_hash(entry.0.borrow());
                let to = if h & bit != 0 { &mut moved } else { &mut stay };
                to.insert_unique(mix(h, seed), entry, &rehash);
            }
            *from = stay;
        });
        self.table_bytes = self.table_bytes.saturating_add(table_bytes(moved.capacity(), std::mem::size_of::<(K, V)>()));
        self.shards.push(moved);
        self.split = self.split.saturating_add(1);
        if Some(self.split) == 1usize.checked_shl(level) {
            self.level = level.saturating_add(1);
            self.split = 0;
        }
    }

    fn merge_one(&mut self) {
        if self.split == 0 {
            if self.level == 0 {
                return;
            }
            self.level = self.level.saturating_sub(1);
            self.split = 1usize.checked_shl(self.level).unwrap_or(0);
        }
        self.split = self.split.saturating_sub(1);
        let Some(last) = self.shards.pop() else {
            return;
        };
        let slot = std::mem::size_of::<(K, V)>();
        self.table_bytes = self.table_bytes.saturating_sub(table_bytes(last.capacity(), slot));
        let into = self.split;
        let rehash = self.rehasher();
        self.account_resize(into, |m| {
            m.reserve(last.len(), &rehash);
            for entry in last {
                let h = rehash(&entry);
                m.insert_unique(h, entry, &rehash);
            }
        });
        if self.shards.capacity() > self.shards.len().saturating_mul(4) {
            self.shards.shrink_to(self.shards.len().saturating_mul(2));
        }
    }

    /// Runs `change` on shard `at`, keeping `table_bytes` right.
    fn account_resize(&mut self, at: usize, change: impl FnOnce(&mut HashTable<(K, V)>)) {
        let slot = std::mem::size_of::<(K, V)>();
        if let Some(shard) = self.shards.get_mut(at) {
            let before = shard.capacity();
            change(shard);
            self.table_bytes = self
                .table_bytes
                .saturating_sub(table_bytes(before, slot))
                .saturating_add(table_bytes(shard.capacity(), slot));
        }
    }
}

/// Shrinks a shard to twice its live size once three quarters are empty (amortized O(1)), and
/// to nothing when empty (see `mem::Shrink`, the same rule for std tables).
fn shrink_if_sparse<T>(table: &mut HashTable<T>, rehash: impl Fn(&T) -> u64) {
    let (len, capacity) = (table.len(), table.capacity());
    if capacity > 16 && len.saturating_mul(4) < capacity {
        table.shrink_to(len.saturating_mul(2), rehash);
    }
}

/// The names of a consumed map, with how many are left.
pub struct IntoKeys<K, V> {
    left: usize,
    shards: std::vec::IntoIter<HashTable<(K, V)>>,
    current: Option<hash_table::IntoIter<(K, V)>>,
}

impl<K, V> std::fmt::Debug for IntoKeys<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntoKeys").field("left", &self.left).finish_non_exhaustive()
    }
}

impl<K, V> Iterator for IntoKeys<K, V> {
    type Item = K;

    fn next(&mut self) -> Option<K> {
        loop {
            if let Some((k, _)) = self.current.as_mut().and_then(Iterator::next) {
                self.left = self.left.saturating_sub(1);
                return Some(k);
            }
            self.current = Some(self.shards.next()?.into_iter());
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<K, V> ExactSizeIterator for IntoKeys<K, V> {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use std::sync::Arc;

    type Name = Arc<[u8]>;

    fn name(i: u32) -> Name {
        Name::from(format!("key:{i}").as_bytes())
    }

    fn recounted_table_bytes<V>(m: &ShardMap<Name, V>) -> usize {
        let slot = std::mem::size_of::<(Name, V)>();
        m.shards.iter().map(|s| table_bytes(s.capacity(), slot)).sum()
    }

    fn largest_shard<V>(m: &ShardMap<Name, V>) -> usize {
        m.shards.iter().map(HashTable::len).max().unwrap_or(0)
    }

    #[test]
    fn behaves_like_a_hash_map_through_growth_and_shrinking() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut m: ShardMap<Name, u32> = ShardMap::default();
        let mut model: std::collections::HashMap<Name, u32> = std::collections::HashMap::new();
        // Grow to 60 000 names, then drain to nothing, with random churn on the way.
        for phase in [(0..120_000, 0.8), (0..200_000, 0.2)] {
            for step in phase.0 {
                let k = name(rng.gen_range(0..60_000));
                if rng.gen_bool(phase.1) {
                    assert_eq!(m.insert(k.clone(), step), model.insert(k, step));
                } else {
                    assert_eq!(m.remove(&k), model.remove(&k));
                }
                if step % 997 == 0 {
                    assert_eq!(m.len(), model.len());
                    assert_eq!(m.table_bytes, recounted_table_bytes(&m));
                    assert!(largest_shard(&m) <= 4 * SHARD_TARGET, "a shard holds {}", largest_shard(&m));
                    for (k, v) in &model {
                        assert_eq!(m.get(k), Some(v));
                    }
                }
            }
            assert_eq!(m.len(), model.len());
        }
        for k in model.keys().cloned().collect::<Vec<_>>() {
            assert_eq!(m.remove(&k), model.remove(&k));
        }
        assert!(m.is_empty());
        assert_eq!(m.heap_bytes(), 0, "an emptied map gives every table back");
    }

    #[test]
    fn a_presized_map_fills_without_moving_an_entry_and_splits_as_a_grown_one() {
        for n in [0u32, 1, 2048, 2049, 5_000, 100_000, 150_000] {
            let mut m: ShardMap<Name, ()> = ShardMap::default();
            m.presize(n as usize);
            assert_eq!(m.table_bytes, recounted_table_bytes(&m));
            let sized: Vec<usize> = m.shards.iter().map(HashTable::capacity).collect();
            // A miss does not give the room back, nor does an entry looked at and left vacant.
            assert!(m.remove(&name(u32::MAX)).is_none());
            if n > 0 {
                m.with_entry(name(u32::MAX), |_| ());
            }
            let mut grown: ShardMap<Name, ()> = ShardMap::default();
            for i in 0..n {
                m.insert(name(i), ());
                grown.insert(name(i), ());
            }
            let filled: Vec<usize> = m.shards.iter().map(HashTable::capacity).collect();
            assert_eq!(filled, sized, "{n} names: no table resized");
            assert_eq!((m.level, m.split, m.len()), (grown.level, grown.split, n as usize), "{n} names: the shards of a grown map");
            assert_eq!(m.table_bytes, recounted_table_bytes(&m));
            assert!((0..n).step_by(97).all(|i| m.contains_key(&name(i))));
            m.compact();
            assert_eq!(m.shards.iter().map(HashTable::capacity).collect::<Vec<_>>(), filled, "{n} names fill what was made for them");
            if n > 0 {
                // A map holding entries is left as it is.
                m.presize(10 * n as usize + 10_000);
                assert_eq!(m.shards.iter().map(HashTable::capacity).collect::<Vec<_>>(), filled);
            }
        }
    }

    #[test]
    fn a_map_presized_far_too_large_is_compacted_to_the_shape_of_a_grown_one() {
        let mut m: ShardMap<Name, u32> = ShardMap::default();
        m.presize(100_000);
        let mut grown: ShardMap<Name, u32> = ShardMap::default();
        for i in 0..3_000 {
            m.insert(name(i), i);
            grown.insert(name(i), i);
        }
        m.compact();
        assert_eq!((m.level, m.split, m.shards.len(), m.len()), (grown.level, grown.split, grown.shards.len(), 3_000));
        assert_eq!(m.table_bytes, recounted_table_bytes(&m));
        assert!(m.heap_bytes() <= 2 * grown.heap_bytes(), "{} bytes left for 3 000 names", m.heap_bytes());
        assert!((0..3_000).all(|i| m.get(&name(i)) == Some(&i)));
    }

    #[test]
    fn many_names_never_resize_more_than_one_small_shard_at_once() {
        let mut m: ShardMap<Name, ()> = ShardMap::default();
        let mut moved_at_once = 0;
        for i in 0..300_000 {
            let before: Vec<usize> = m.shards.iter().map(HashTable::capacity).collect();
            m.insert(name(i), ());
            // Entries rehashed by this insert: those of any shard whose table changed.
            let rehashed: usize = m
                .shards
                .iter()
                .enumerate()
                .filter(|(at, s)| before.get(*at).is_none_or(|c| *c != s.capacity()))
                .map(|(_, s)| s.len())
                .sum();
            moved_at_once = moved_at_once.max(rehashed);
        }
        assert!(m.shards.len() >= 300_000 / SHARD_TARGET / 2, "{} shards", m.shards.len());
        assert!(moved_at_once <= 4 * SHARD_TARGET, "one insert rehashed {moved_at_once} entries");
        assert_eq!(m.keys().count(), 300_000);
        assert_eq!(m.into_keys().len(), 300_000);
    }

    #[test]
    fn a_bucket_walk_visits_every_name_once_through_splits_and_merges() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut m: ShardMap<Name, ()> = ShardMap::default();
        for i in 0..40_000 {
            m.insert(name(i), ());
        }
        let bits = m.bucket_bits();
        let buckets = 1u64 << bits;
        let shards_at_start = m.shards.len();
        let mut seen: std::collections::HashMap<Name, u32> = std::collections::HashMap::new();
        for bucket in 0..buckets {
            for k in m.names_in_bucket(bits, bucket) {
                *seen.entry(k).or_default() += 1;
            }
            // Between steps the map grows past several splits, then shrinks past merges.
            let grow = bucket < buckets / 2;
            for _ in 0..8000 {
                if grow {
                    m.insert(name(rng.gen_range(40_000..1_000_000)), ());
                } else {
                    let k = name(rng.gen_range(40_000..1_000_000));
                    m.remove(&k);
                }
            }
            if bucket == buckets * 3 / 4 {
                for i in 40_000..1_000_000 {
                    m.remove(&name(i));
                }
            }
        }
        for i in 0..40_000 {
            assert_eq!(seen.get(&name(i)), Some(&1), "name {i}");
        }
        assert!(shards_at_start < (1 << bits), "some shards had not split at the start");
        assert!(seen.len() >= 40_000);
    }

    #[test]
    fn into_keys_counts_down() {
        let mut m: ShardMap<Name, ()> = ShardMap::default();
        for i in 0..10_000 {
            m.insert(name(i), ());
        }
        let mut keys = m.into_keys();
        assert_eq!(keys.len(), 10_000);
        keys.next();
        assert_eq!(keys.len(), 9_999);
        assert_eq!(keys.count(), 9_999);
    }
}
