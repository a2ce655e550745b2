//! A shared name (key, tenant or tag): one allocation holding the reference count, a header,
//! the length and the bytes, reached through an 8-byte pointer. The index holds each key name
//! in up to six places (key map, tenant order, member sets, expiry bucket…): a fat `Arc<[u8]>`
//! would spend 16 bytes on each.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use triomphe::ThinArc;

/// A shared name with a header `H` in the same allocation (see `Key` for the one with a
/// header): equality, order and hash are those of the bytes alone.
pub struct Named<H>(ThinArc<H, u8>);

/// A tenant's or a tag's name, or a key's outside the index.
pub type Name = Named<()>;

impl<H> Clone for Named<H> {
    fn clone(&self) -> Self {
        Named(self.0.clone())
    }
}

impl<H> Named<H> {
    pub fn with_header(header: H, bytes: &[u8]) -> Self {
        Named(ThinArc::from_header_and_slice(header, bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0.slice
    }

    pub fn header(&self) -> &H {
        &self.0.header.header
    }

    /// Bytes the allocator holds for this name: the reference count, the header and the
    /// length, then the bytes.
    pub fn footprint(&self) -> usize {
        let header = 2usize.saturating_mul(std::mem::size_of::<usize>()).saturating_add(std::mem::size_of::<H>());
        crate::mem::allocation(self.len().saturating_add(header))
    }
}

impl Name {
    pub fn new(bytes: &[u8]) -> Name {
        Named::with_header((), bytes)
    }
}

impl Default for Name {
    fn default() -> Name {
        Name::new(&[])
    }
}

impl<H> Deref for Named<H> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl<H> Borrow<[u8]> for Named<H> {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl<H> AsRef<[u8]> for Named<H> {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Equality, order and hash are those of the bytes (so a map of names can be searched by
/// `&[u8]`); the same allocation is equal without comparing them.
impl<H> PartialEq for Named<H> {
    fn eq(&self, other: &Self) -> bool {
        self.0.ptr() == other.0.ptr() || self.as_bytes() == other.as_bytes()
    }
}

impl<H> Eq for Named<H> {}

impl<H> PartialOrd for Named<H> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<H> Ord for Named<H> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl<H> Hash for Named<H> {
    fn hash<S: Hasher>(&self, state: &mut S) {
        self.as_bytes().hash(state);
    }
}

impl<H> fmt::Debug for Named<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_bytes(), f)
    }
}

impl From<&[u8]> for Name {
    fn from(bytes: &[u8]) -> Name {
        Name::new(bytes)
    }
}

impl From<Vec<u8>> for Name {
    fn from(bytes: Vec<u8>) -> Name {
        Name::new(&bytes)
    }
}

impl From<&Vec<u8>> for Name {
    fn from(bytes: &Vec<u8>) -> Name {
        Name::new(bytes)
    }
}

/// An entry's tenant and its tags (sorted, without duplicates) in one shared allocation, thin
/// like `Name`: the entry and the index's key record hold the same one, and the entries of a
/// tenant that carry no tag share one.
#[derive(Clone)]
pub struct Labels(ThinArc<Name, Name>);

impl Labels {
    pub fn new(tenant: Name, tags: Vec<Name>) -> Labels {
        Labels(ThinArc::from_header_and_iter(tenant, tags.into_iter()))
    }

    pub fn tenant(&self) -> &Name {
        &self.0.header.header
    }

    pub fn tags(&self) -> &[Name] {
        &self.0.slice
    }

    /// Whether both are the same allocation.
    pub fn same(&self, other: &Labels) -> bool {
        self.0.ptr() == other.0.ptr()
    }

    /// Rewrites the tenant and every tag in place when this is the only holder; false (nothing
    /// done) when it is shared.
    pub fn rewrite_if_unique(&mut self, tenant: impl FnOnce(&mut Name), mut tag: impl FnMut(&mut Name)) -> bool {
        self.0.with_arc_mut(|labels| match triomphe::Arc::get_mut(labels) {
            Some(unique) => {
                tenant(unique.header_mut());
                unique.slice_mut().iter_mut().for_each(&mut tag);
                true
            }
            None => false,
        })
    }

    /// Gives these labels another tenant: in place when nobody else holds them, else as new
    /// labels with the same tags.
    pub fn set_tenant(&mut self, tenant: Name) {
        let mut tenant = Some(tenant);
        if !self.rewrite_if_unique(|t| *t = tenant.take().unwrap_or_default(), |_| {}) {
            if let Some(tenant) = tenant {
                *self = Labels::new(tenant, self.tags().to_vec());
            }
        }
    }

    /// Bytes the allocator holds for this allocation (the names it refers to excluded).
    pub fn footprint(&self) -> usize {
        const HEADER: usize = 3 * std::mem::size_of::<usize>();
        crate::mem::allocation(crate::mem::times(self.tags().len(), std::mem::size_of::<Name>()).saturating_add(HEADER))
    }
}

impl Default for Labels {
    fn default() -> Labels {
        Labels::new(Name::default(), Vec::new())
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Labels) -> bool {
        self.same(other) || (self.tenant() == other.tenant() && self.tags() == other.tags())
    }
}

impl Eq for Labels {}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Labels").field("tenant", self.tenant()).field("tags", &self.tags()).finish()
    }
}

/// Names seen recently, so that the entries a load reads share one allocation per tenant and
/// per common tag instead of one copy each (which the index would replace on insert anyway).
/// Direct-mapped: a name takes the slot its hash picks and evicts what was there, so names met
/// once (a per-item tag) cost a slot, never growth, and colliding names cost an allocation each.
pub struct NameCache {
    slots: Vec<Option<Name>>,
}

impl NameCache {
    /// A cache of `slots` slots (rounded up to a power of two, at least one).
    pub fn new(slots: usize) -> NameCache {
        NameCache { slots: vec![None; slots.max(1).next_power_of_two()] }
    }

    /// The cached name with these bytes, or a new one that takes its slot.
    pub fn name(&mut self, bytes: &[u8]) -> Name {
        let mut hasher = crate::hash::FastHasher::default();
        hasher.write(bytes);
        let mask = self.slots.len().saturating_sub(1);
        // Truncating the hash is the point: its low bits pick the slot.
        #[allow(clippy::cast_possible_truncation)]
        let Some(slot) = self.slots.get_mut(hasher.finish() as usize & mask) else {
            return Name::new(bytes);
        };
        match slot {
            Some(name) if name.as_bytes() == bytes => name.clone(),
            _ => slot.insert(Name::new(bytes)).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashSet};

    #[test]
    fn a_name_is_one_pointer_and_behaves_like_its_bytes() {
        assert_eq!(std::mem::size_of::<Name>(), 8);
        assert_eq!(std::mem::size_of::<Option<Name>>(), 8);
        let a = Name::from(&b"user:1"[..]);
        let b = Name::from(b"user:1".to_vec());
        assert_eq!(a, b);
        assert_eq!(&*a, b"user:1");
        assert!(Name::from(&b"a"[..]) < Name::from(&b"ab"[..]));
        assert!(Name::from(&b"ab"[..]) < Name::from(&b"b"[..]));
        let set: HashSet<Name> = [a.clone()].into_iter().collect();
        assert!(set.contains(&b"user:1"[..]), "found by its bytes");
        let ordered: BTreeSet<Name> = ["b", "a", "c"].iter().map(|s| Name::from(s.as_bytes())).collect();
        let range: Vec<&[u8]> = ordered.range::<[u8], _>((std::ops::Bound::Included(&b"b"[..]), std::ops::Bound::Unbounded)).map(|n| n.as_bytes()).collect();
        assert_eq!(range, vec![&b"b"[..], b"c"]);
        assert_eq!(Name::default().len(), 0);
        assert_eq!(format!("{:?}", Name::from(&b"x"[..])), format!("{:?}", &b"x"[..]));
    }

    #[test]
    fn labels_are_one_pointer_and_rewritten_in_place_only_when_unshared() {
        assert_eq!(std::mem::size_of::<Labels>(), 8);
        let n = |s: &str| Name::from(s.as_bytes());
        let mut labels = Labels::new(n("t"), vec![n("a"), n("b")]);
        assert_eq!((&labels.tenant()[..], labels.tags()), (&b"t"[..], &[n("a"), n("b")][..]));
        assert!(labels.rewrite_if_unique(|t| *t = n("u"), |tag| *tag = n("z")));
        assert_eq!((&labels.tenant()[..], labels.tags()), (&b"u"[..], &[n("z"), n("z")][..]));
        let shared = labels.clone();
        assert!(shared.same(&labels));
        assert!(!labels.rewrite_if_unique(|t| *t = n("v"), |tag| *tag = n("y")));
        assert_eq!(labels, shared);
        assert_eq!(labels, Labels::new(n("u"), vec![n("z"), n("z")]));
        assert_ne!(labels, Labels::new(n("v"), vec![n("z"), n("z")]));
        assert!(Labels::default().tags().is_empty());
    }

    #[test]
    fn a_name_cache_shares_repeated_names_and_stays_its_size() {
        let same = |a: &Name, b: &Name| std::ptr::eq(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        let mut cache = NameCache::new(5);
        assert_eq!(cache.slots.len(), 8);
        let all = cache.name(b"all");
        assert_eq!(&all[..], b"all");
        assert!(same(&cache.name(b"all"), &all), "a repeated name is the cached one");
        let once: Vec<Name> = (0..1000).map(|i| cache.name(format!("item:{i}").as_bytes())).collect();
        assert!(once.iter().enumerate().all(|(i, n)| n.as_bytes() == format!("item:{i}").as_bytes()));
        assert_eq!(cache.slots.len(), 8, "names met once never grow it");
        let again = cache.name(b"all");
        assert_eq!(again, all, "an evicted name comes back with the same bytes");
        assert!(same(&cache.name(b"all"), &again));
        assert_eq!(&cache.name(b"")[..], b"");
        assert_eq!(NameCache::new(0).name(b"x"), Name::from(&b"x"[..]));
    }
}
