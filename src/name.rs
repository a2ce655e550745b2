//! A shared name (key, tenant or tag): one allocation holding the reference count, the length
//! and the bytes, reached through an 8-byte pointer. The index holds each key name in up to
//! six places (key records, tenant order, member sets, expiry bucket…): a fat `Arc<[u8]>`
//! would spend 16 bytes on each.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use triomphe::ThinArc;

#[derive(Clone)]
pub struct Name(ThinArc<(), u8>);

impl Name {
    pub fn new(bytes: &[u8]) -> Name {
        Name(ThinArc::from_header_and_slice((), bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0.slice
    }

    /// Bytes the allocator holds for this name: the reference count and the length, then the
    /// bytes.
    pub fn footprint(&self) -> usize {
        const HEADER: usize = 2 * std::mem::size_of::<usize>();
        crate::mem::allocation(self.len().saturating_add(HEADER))
    }
}

impl Default for Name {
    fn default() -> Name {
        Name::new(&[])
    }
}

impl Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for Name {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Name {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Equality, order and hash are those of the bytes (so a map of names can be searched by
/// `&[u8]`); the same allocation is equal without comparing them.
impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.0.ptr() == other.0.ptr() || self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for Name {
    fn hash<S: Hasher>(&self, state: &mut S) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for Name {
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

/// A shared list of names (an entry's tags), thin like `Name`: the entry and the index's key
/// record hold the same list.
#[derive(Clone)]
pub struct Names(ThinArc<(), Name>);

impl Names {
    /// Rewrites every name in place when this is the list's only holder; false (nothing done)
    /// when it is shared.
    pub fn rewrite_if_unique(&mut self, mut rewrite: impl FnMut(&mut Name)) -> bool {
        self.0.with_arc_mut(|list| match triomphe::Arc::get_mut(list) {
            Some(unique) => {
                unique.slice_mut().iter_mut().for_each(&mut rewrite);
                true
            }
            None => false,
        })
    }
}

impl Default for Names {
    fn default() -> Names {
        Names::from(Vec::new())
    }
}

impl Deref for Names {
    type Target = [Name];
    fn deref(&self) -> &[Name] {
        &self.0.slice
    }
}

impl PartialEq for Names {
    fn eq(&self, other: &Names) -> bool {
        **self == **other
    }
}

impl Eq for Names {}

impl fmt::Debug for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl From<Vec<Name>> for Names {
    fn from(names: Vec<Name>) -> Names {
        Names(ThinArc::from_header_and_iter((), names.into_iter()))
    }
}

impl FromIterator<Name> for Names {
    fn from_iter<I: IntoIterator<Item = Name>>(names: I) -> Names {
        Names::from(names.into_iter().collect::<Vec<_>>())
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
    fn a_list_is_rewritten_in_place_only_when_unshared() {
        assert_eq!(std::mem::size_of::<Names>(), 8);
        let mut list: Names = ["a", "b"].iter().map(|s| Name::from(s.as_bytes())).collect();
        assert!(list.rewrite_if_unique(|n| *n = Name::from(&b"z"[..])));
        assert_eq!(&*list, &[Name::from(&b"z"[..]), Name::from(&b"z"[..])]);
        let shared = list.clone();
        assert!(!list.rewrite_if_unique(|n| *n = Name::from(&b"y"[..])));
        assert_eq!(list, shared);
        assert!(Names::default().is_empty());
    }
}
