//! Tag → the keys carrying it. Pure data, no Redis calls.
//!
//! Most tags in real workloads (`item:<id>`) are carried by a single key. Every tag has a slot
//! in `tags` holding that key, or nothing when its keys are many and live in a set of `sets`:
//! an `Option<Name>` is 8 bytes where an enum of a name or a set is 16 (it needs a
//! discriminant), and the slot of every tag is that much smaller.

use crate::key::Key;
use crate::name::Name;
use crate::shardmap::{Entry, Hashed, ShardMap};

/// Key names, and the epoch the oldest of them was written in or before (see `pending`): when
/// no pending invalidation is that recent, none of them is invalidated.
#[derive(Debug, Default)]
pub struct NameSet<S = ShardMap<Key, ()>> {
    pub since: u64,
    pub names: S,
}

/// The keys of one tag, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum Members<'a> {
    One(&'a Key),
    Many(&'a NameSet),
}

/// The keys of one tag, taken out of the map.
#[derive(Debug)]
pub enum Taken {
    One(Key),
    Many(NameSet),
}

impl<'a> Members<'a> {
    pub fn len(self) -> usize {
        match self {
            Members::One(_) => 1,
            Members::Many(set) => set.names.len(),
        }
    }

    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    pub fn contains(self, key: &[u8]) -> bool {
        match self {
            Members::One(k) => **k == *key,
            Members::Many(set) => set.names.contains_key(key),
        }
    }

    pub fn iter(self) -> Box<dyn Iterator<Item = &'a Key> + 'a> {
        match self {
            Members::One(k) => Box::new(std::iter::once(k)),
            Members::Many(set) => Box::new(set.names.keys()),
        }
    }

    /// The members whose hash has `bucket` in its low `bits` bits (see
    /// `ShardMap::names_in_bucket`).
    pub fn in_bucket(self, bits: u32, bucket: u64) -> Vec<Key> {
        match self {
            Members::One(k) if crate::shardmap::bucket_of(k, bits) == bucket => vec![k.clone()],
            Members::One(_) => Vec::new(),
            Members::Many(set) => set.names.names_in_bucket(bits, bucket),
        }
    }
}

/// Heap bytes of one tag besides the map slots: its name and, for many keys, its set's tables.
fn footprint(tag: &Name, set: Option<&NameSet>) -> usize {
    tag.footprint().saturating_add(set.map_or(0, |s| s.names.heap_bytes()))
}

#[derive(Debug, Default)]
pub struct TagMap {
    /// Every tag: its one key, or None when its keys are in `sets`.
    tags: ShardMap<Name, Option<Key>>,
    /// The tags carried by more than one key.
    sets: ShardMap<Name, NameSet>,
    /// Heap bytes of the tag names and of the sets' tables (kept up to date).
    item_bytes: usize,
    /// While deferred (`defer`): keys to add to tags the map holds already, with each key's
    /// hash.
    later: Option<Vec<(Name, Key, u64)>>,
}

impl TagMap {
    /// How many tags have at least one key.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    pub fn get(&self, tag: &[u8]) -> Option<Members<'_>> {
        self.get_key_value(tag).map(|(_, m)| m)
    }

    /// The map's shared copy of the tag's name, and its keys.
    pub fn get_key_value(&self, tag: &[u8]) -> Option<(&Name, Members<'_>)> {
        let t = Hashed::of(tag);
        match self.tags.get_key_value_hashed(t)? {
            (name, Some(one)) => Some((name, Members::One(one))),
            (name, None) => self.sets.get_hashed(t).map(|set| (name, Members::Many(set))),
        }
    }

    /// Makes room at once for about `tags` tags in an empty map (see `ShardMap::presize`).
    pub fn presize(&mut self, tags: usize) {
        self.tags.presize(tags);
    }

    /// Gives back room `presize` made that was left unused.
    pub fn compact(&mut self) {
        self.tags.compact();
    }

    /// The map's shared copy of the tag's name, when some key carries it.
    pub fn shared_name(&self, tag: &[u8]) -> Option<Name> {
        self.tags.get_key_value(tag).map(|(name, _)| name.clone())
    }

    /// Adds `key` (whose name hashes to `hash`) to the keys of `tag`; `born_of` gives the write
    /// epoch of a key already there. Returns the map's shared copy of the tag's name.
    pub fn add(&mut self, tag: &Name, key: &Key, hash: u64, born_of: impl FnOnce(&[u8]) -> u64) -> Name {
        let t = Hashed::of(tag);
        let mut added = 0;
        let mut became_many = None;
        let deferring = self.later.is_some();
        let mut defer = false;
        let Some((shared, many)) = self.tags.with_entry_hashed(tag.clone(), t.hash, |e| match e {
            Entry::Occupied(mut e) => {
                let name = e.key().clone();
                match e.get() {
                    Some(one) if *one == *key => (name, false),
                    _ if deferring => {
                        defer = true;
                        (name, false)
                    }
                    Some(_) => {
                        became_many = e.insert(None);
                        (name, false)
                    }
                    None => (name, true),
                }
            }
            Entry::Vacant(e) => {
                let name = e.key().clone();
                added = name.footprint();
                e.insert(Some(key.clone()));
                (name, false)
            }
        }) else {
            return tag.clone();
        };
        if defer {
            if let Some(later) = self.later.as_mut() {
                later.push((shared.clone(), key.clone(), hash));
            }
            return shared;
        }
        if let Some(first) = became_many {
            let mut set = NameSet { since: born_of(&first), names: ShardMap::default() };
            set.names.insert(first, ());
            set.names.insert_hashed(key.clone(), hash, ());
            added = set.names.heap_bytes();
            self.sets.insert_hashed(shared.clone(), t.hash, set);
        } else if many {
            if let Some(set) = self.sets.get_mut_hashed(t) {
                let before = set.names.heap_bytes();
                set.names.insert_hashed(key.clone(), hash, ());
                self.item_bytes = self.item_bytes.saturating_sub(before);
                added = set.names.heap_bytes();
            }
        }
        self.item_bytes = self.item_bytes.saturating_add(added);
        shared
    }

    /// Adds keys to tags the map holds already in bulk until `settle` (each new tag still
    /// gets its first key at once, so that its name is shared): a tag's set is then built at
    /// once, in a table of its size. Nothing may read the keys of a tag, or remove one, until
    /// then.
    pub fn defer(&mut self) {
        self.later.get_or_insert_with(Vec::new);
    }

    /// Whether keys are waiting for `settle`.
    pub fn deferred(&self) -> bool {
        self.later.as_ref().is_some_and(|later| !later.is_empty())
    }

    /// Adds the keys deferred so far (and stops deferring); `born_of` gives the write epoch of
    /// a tag's first key, as for `add`.
    pub fn settle(&mut self, born_of: impl Fn(&[u8]) -> u64) {
        let Some(mut later) = self.later.take() else {
            return;
        };
        later.sort_unstable_by_key(|(tag, _, _)| tag.as_ptr() as usize);
        let mut later = later.into_iter().peekable();
        while let Some((tag, key, hash)) = later.next() {
            let mut keys = vec![(key, hash)];
            while let Some((_, key, hash)) = later.next_if(|(next, _, _)| next.as_ptr() == tag.as_ptr()) {
                keys.push((key, hash));
            }
            let t = Hashed::of(&tag);
            let first = match self.tags.get_mut_hashed(t) {
                Some(slot @ Some(_)) => slot.take(),
                Some(None) => None,
                None => continue,
            };
            let before = self.sets.get_hashed(t).map_or(0, |set| set.names.heap_bytes());
            if let Some(first) = first {
                let mut names = ShardMap::default();
                names.presize(keys.len().saturating_add(1));
                let since = born_of(&first);
                names.insert(first, ());
                self.sets.insert_hashed(tag.clone(), t.hash, NameSet { since, names });
            }
            if let Some(set) = self.sets.get_mut_hashed(t) {
                for (key, hash) in keys {
                    set.names.insert_hashed(key, hash, ());
                }
                self.item_bytes = self.item_bytes.saturating_sub(before).saturating_add(set.names.heap_bytes());
            }
        }
    }

    /// Removes `key` from the keys of `tag` (nothing when it is not one of them: a set made
    /// after an invalidation moved the tag's keys away may not hold it); a tag left with one
    /// key keeps it inline, a tag left with none is forgotten.
    pub fn remove_member(&mut self, tag: &[u8], key: Hashed<'_>) {
        let t = Hashed::of(tag);
        match self.tags.get_hashed(t) {
            None => {}
            Some(Some(one)) => {
                let held = **one == *key.name;
                if held {
                    self.take(t);
                }
            }
            Some(None) => {
                let Some(set) = self.sets.get_mut_hashed(t) else {
                    return;
                };
                let before = set.names.heap_bytes();
                set.names.remove_hashed(key);
                let after = set.names.heap_bytes();
                let last = if set.names.len() <= 1 { Some(set.names.keys().next().cloned()) } else { None };
                self.item_bytes = self.item_bytes.saturating_sub(before).saturating_add(after);
                match last {
                    None => {}
                    Some(None) => {
                        self.take(t);
                    }
                    Some(Some(last)) => {
                        if let Some(set) = self.sets.remove_hashed(t) {
                            self.item_bytes = self.item_bytes.saturating_sub(set.1.names.heap_bytes());
                        }
                        if let Some(slot) = self.tags.get_mut_hashed(t) {
                            *slot = Some(last);
                        }
                    }
                }
            }
        }
    }

    /// Takes a tag and its keys out of the map.
    pub fn remove_entry(&mut self, tag: &[u8]) -> Option<(Name, Taken)> {
        self.take(Hashed::of(tag))
    }

    fn take(&mut self, t: Hashed<'_>) -> Option<(Name, Taken)> {
        let (name, one) = self.tags.remove_hashed(t)?;
        let taken = match one {
            Some(one) => Taken::One(one),
            None => Taken::Many(self.sets.remove_hashed(t).map(|(_, set)| set).unwrap_or_default()),
        };
        let set = match &taken {
            Taken::One(_) => None,
            Taken::Many(set) => Some(set),
        };
        self.item_bytes = self.item_bytes.saturating_sub(footprint(&name, set));
        Some((name, taken))
    }

    /// Every tag with its keys.
    pub fn iter(&self) -> impl Iterator<Item = (&Name, Members<'_>)> + '_ {
        self.tags.iter().filter_map(|(name, one)| match one {
            Some(one) => Some((name, Members::One(one))),
            None => self.sets.get(name).map(|set| (name, Members::Many(set))),
        })
    }

    /// Heap bytes of the map: tables, tag names and sets, in O(1).
    pub fn heap_bytes(&self) -> usize {
        crate::mem::sum([self.tags.heap_bytes(), self.sets.heap_bytes(), self.item_bytes])
    }

    /// `item_bytes` recomputed from scratch (what the running figure must equal).
    #[cfg(test)]
    pub fn item_bytes_recounted(&self) -> usize {
        crate::mem::sum(self.iter().map(|(name, members)| {
            footprint(name, match members {
                Members::One(_) => None,
                Members::Many(set) => Some(set),
            })
        }))
    }

    #[cfg(test)]
    pub fn item_bytes(&self) -> usize {
        self.item_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Key {
        Key::new_key(format!("k{i}").as_bytes(), 0, crate::expiry::NEVER, 0, Default::default())
    }

    fn add(map: &mut TagMap, tag: &str, k: &Key) -> Name {
        map.add(&Name::new(tag.as_bytes()), k, Hashed::of(k).hash, |_| 0)
    }

    #[test]
    fn a_tag_slot_is_two_pointers() {
        assert_eq!(std::mem::size_of::<(Name, Option<Key>)>(), 16);
    }

    #[test]
    fn one_key_inline_many_in_a_set_and_back() {
        let mut map = TagMap::default();
        let shared = add(&mut map, "t", &key(1));
        assert_eq!(&*shared, b"t");
        assert!(matches!(map.get(b"t"), Some(Members::One(k)) if **k == *b"k1"));
        assert!(std::ptr::eq(map.get_key_value(b"t").map_or(&[][..], |(n, _)| &n[..]).as_ptr(), shared.as_ptr()), "one shared copy");
        add(&mut map, "t", &key(1));
        assert_eq!(map.get(b"t").map(Members::len), Some(1), "the same key twice is one member");
        for i in 2..100 {
            add(&mut map, "t", &key(i));
        }
        assert!(matches!(map.get(b"t"), Some(Members::Many(_))));
        assert_eq!(map.get(b"t").map(Members::len), Some(99));
        assert_eq!(map.item_bytes(), map.item_bytes_recounted());
        map.remove_member(b"t", Hashed::of(b"not a member"));
        assert_eq!(map.get(b"t").map(Members::len), Some(99));
        for i in 1..99 {
            map.remove_member(b"t", Hashed::of(key(i).as_bytes()));
            assert_eq!(map.item_bytes(), map.item_bytes_recounted());
        }
        assert!(matches!(map.get(b"t"), Some(Members::One(k)) if **k == *b"k99"));
        assert!(map.get(b"t").is_some_and(|m| m.contains(b"k99") && !m.contains(b"k1")));
        map.remove_member(b"t", Hashed::of(b"k99"));
        assert_eq!((map.len(), map.heap_bytes()), (0, 0));
    }

    #[test]
    fn taking_a_tag_hands_over_its_keys() {
        let mut map = TagMap::default();
        add(&mut map, "one", &key(1));
        for i in 0..10 {
            add(&mut map, "many", &key(i));
        }
        assert_eq!(map.iter().count(), 2);
        let bucketed = |map: &TagMap, tag: &[u8]| -> usize { (0..4).map(|b| map.get(tag).map_or(0, |m| m.in_bucket(2, b).len())).sum() };
        assert_eq!((bucketed(&map, b"one"), bucketed(&map, b"many")), (1, 10), "every key in exactly one bucket");
        assert!(matches!(map.remove_entry(b"one"), Some((_, Taken::One(k))) if *k == *b"k1"));
        assert!(matches!(map.remove_entry(b"many"), Some((_, Taken::Many(set))) if set.names.len() == 10));
        assert!(map.remove_entry(b"many").is_none());
        assert_eq!((map.len(), map.heap_bytes()), (0, 0));
    }
}
