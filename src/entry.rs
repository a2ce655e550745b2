//! The `tagcache0` native type: one cache entry per key.
//!
//! Freshness is derived from the key's own Redis TTL: the key expires at `fresh_until + stale
//! window`, so an entry is fresh while `PTTL > stale_ms`. Native EXPIRE/PERSIST therefore move
//! the fresh deadline too, and the TTL needs no copy in the entry (Redis persists and replicates it).

use crate::fences::Action;
use crate::ffi::thin::Thin;
use crate::index::Name;
use crate::name::Labels;
use crate::mem;
use std::borrow::Cow;

/// Encoding version of the RDB layout (bump on layout changes, never the type name). 2: the
/// aux data after the keyspace also lists entries stale by a pending SOFT invalidation;
/// entries themselves are laid out as in 1.
pub const ENCODING_VERSION: i32 = 2;

/// A cache entry: `EntryHead` then the value's bytes, in one allocation (see `ffi::thin`).
pub type Entry = Thin<EntryHead>;

/// What an entry holds besides its value: 24 bytes, so that with the length and a value of
/// up to 32 bytes the entry fits a 64-byte allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHead {
    /// `labels.tenant()`, kept here too: a hit counts its tenant's statistics without
    /// reading the labels (another cache miss per read).
    tenant: Name,
    /// The tenant and the tags (sorted, without duplicates), shared with the index: the
    /// allocation and every name in it.
    labels: Labels,
    /// The stale window in seconds (STALE takes whole seconds, at most 10^9).
    stale_s: u32,
    /// `Packed`: the fill time, whether the tenant was given, the fence.
    packed: u32,
}

/// How long the fill that produced the value took, in ms (low 29 bits: 0 when unknown,
/// saturating at about 6 days); whether the tenant was given with TENANT, else it follows the
/// key's name (bit 29); and a fence (bits 30–31: none, delete, mark stale): the entry arrived
/// by MIGRATE/RESTORE under an invalidation's fence and is about to be removed (reads treat it
/// as missing) or marked stale (reads treat it as stale). The fence is never persisted.
struct Packed;

impl Packed {
    const FILL_MAX: u32 = (1 << 29) - 1;
    const EXPLICIT: u32 = 1 << 29;
    const FENCE_SHIFT: u32 = 30;

    fn of(fill_ms: u32, tenant_explicit: bool) -> u32 {
        fill_ms.min(Self::FILL_MAX) | if tenant_explicit { Self::EXPLICIT } else { 0 }
    }

    fn fence(packed: u32) -> Option<Action> {
        match packed >> Self::FENCE_SHIFT {
            1 => Some(Action::Delete),
            2 => Some(Action::MarkStale),
            _ => None,
        }
    }

    fn with_fence(packed: u32, fence: Option<Action>) -> u32 {
        let code: u32 = match fence {
            None => 0,
            Some(Action::Delete) => 1,
            Some(Action::MarkStale) => 2,
        };
        (packed & !(3 << Self::FENCE_SHIFT)) | (code << Self::FENCE_SHIFT)
    }
}

impl Thin<EntryHead> {
    /// A new entry (None when the allocator fails). `stale_ms` is kept in whole seconds.
    pub fn new(value: &[u8], labels: Labels, tenant_explicit: bool, stale_ms: i64, fill_ms: u32) -> Option<Box<Entry>> {
        let stale_s = u32::try_from(stale_ms.max(0) / 1000).unwrap_or(u32::MAX);
        let head = EntryHead { tenant: labels.tenant().clone(), labels, stale_s, packed: Packed::of(fill_ms, tenant_explicit) };
        Thin::alloc(head, value)
    }

    /// A copy in an allocation of its own (None when the allocator fails).
    pub fn copied(&self) -> Option<Box<Entry>> {
        Thin::alloc(self.head().clone(), self.value())
    }

    pub fn value(&self) -> &[u8] {
        self.bytes()
    }

    pub fn tenant(&self) -> &Name {
        &self.head().tenant
    }

    pub fn labels(&self) -> &Labels {
        &self.head().labels
    }

    pub fn tags(&self) -> &[Name] {
        self.head().labels.tags()
    }

    pub fn stale_ms(&self) -> i64 {
        i64::from(self.head().stale_s).saturating_mul(1000)
    }

    pub fn fill_ms(&self) -> u32 {
        self.head().packed & Packed::FILL_MAX
    }

    pub fn tenant_explicit(&self) -> bool {
        self.head().packed & Packed::EXPLICIT != 0
    }

    pub fn fence(&self) -> Option<Action> {
        Packed::fence(self.head().packed)
    }

    pub fn set_fence(&mut self, fence: Option<Action>) {
        let head = self.head_mut();
        head.packed = Packed::with_fence(head.packed, fence);
    }

    /// Gives the entry another tenant (its labels follow).
    pub fn set_tenant(&mut self, tenant: Name) {
        self.relabel(|l| l.set_tenant(tenant));
    }

    /// Changes the labels through `change` (the tenant follows).
    pub fn relabel<R>(&mut self, change: impl FnOnce(&mut Labels) -> R) -> R {
        let head = self.head_mut();
        let result = change(&mut head.labels);
        if !head.labels.tenant().as_ptr().eq(&head.tenant.as_ptr()) {
            head.tenant = head.labels.tenant().clone();
        }
        result
    }

    /// Milliseconds of freshness left given the key's remaining TTL (`None` = no expiry).
    /// Negative or zero means stale.
    pub fn fresh_ms(&self, ttl_ms: Option<i64>) -> Option<i64> {
        ttl_ms.map(|ttl| ttl.saturating_sub(self.stale_ms()))
    }

    pub fn is_fresh(&self, ttl_ms: Option<i64>) -> bool {
        self.fresh_ms(ttl_ms).is_none_or(|f| f > 0)
    }

    /// Bytes the allocator holds for this entry (its allocation and its labels, which the
    /// index shares; the tenant and tag names themselves are the index's, counted there, and
    /// so are the labels an untagged entry shares with its tenant's others).
    pub fn memory_bytes(&self) -> usize {
        let labels = if self.tags().is_empty() { 0 } else { self.labels().footprint() };
        mem::sum([mem::allocation(std::mem::size_of_val(self)), labels])
    }

    /// What this entry costs under `key`, Redis's own per-key structures included.
    pub fn footprint(&self, key: &[u8]) -> usize {
        self.memory_bytes().saturating_add(mem::keyspace_overhead(key.len()))
    }
}

/// Sorts and deduplicates a tag list (as bytes or as names: both order by the bytes).
pub fn normalize_tags<T: Ord>(mut tags: Vec<T>) -> Vec<T> {
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// An entry's labels from its tenant and tags (sorted and deduplicated here).
pub fn labels(tenant: Name, tags: Vec<Name>) -> Labels {
    Labels::new(tenant, normalize_tags(tags))
}

/// A piece of a canonical CACHE.SET that is not taken from the entry or the client.
pub enum Piece {
    Keyword(&'static [u8]),
    Number(i64),
}

/// The canonical arguments (after the command name) of the CACHE.SET that recreates an entry:
/// `key value (PXAT ms | NOEXPIRE) STALE s [TAGS n tag…] [TENANT t]`. Generic over the argument
/// representation so AOF rewrite (bytes) and replication (the client's string objects) share it;
/// `make` turns keywords and numbers into that representation.
pub fn canonical_set<A>(
    key: A,
    value: A,
    fresh_until: Option<i64>,
    stale_ms: i64,
    tags: Vec<A>,
    tenant: Option<A>,
    mut make: impl FnMut(Piece) -> A,
) -> Vec<A> {
    let mut args = Vec::with_capacity(tags.len().saturating_add(10));
    args.push(key);
    args.push(value);
    match fresh_until {
        Some(at) => {
            args.push(make(Piece::Keyword(b"PXAT")));
            args.push(make(Piece::Number(at)));
        }
        None => args.push(make(Piece::Keyword(b"NOEXPIRE"))),
    }
    args.push(make(Piece::Keyword(b"STALE")));
    args.push(make(Piece::Number(stale_ms / 1000)));
    if !tags.is_empty() {
        args.push(make(Piece::Keyword(b"TAGS")));
        args.push(make(Piece::Number(i64::try_from(tags.len()).unwrap_or(i64::MAX))));
        args.extend(tags);
    }
    if let Some(t) = tenant {
        args.push(make(Piece::Keyword(b"TENANT")));
        args.push(t);
    }
    args
}

/// `canonical_set` as bytes, for an entry under `key` (NOEXPIRE when `fresh_until` is None).
pub fn set_command_args<'a>(key: &'a [u8], e: &'a Entry, fresh_until: Option<i64>) -> Vec<Cow<'a, [u8]>> {
    canonical_set(
        Cow::Borrowed(key),
        Cow::Borrowed(e.value()),
        fresh_until,
        e.stale_ms(),
        e.tags().iter().map(|t| Cow::Borrowed(&t[..])).collect(),
        e.tenant_explicit().then(|| tenant_argument_for(e.tenant())),
        |piece| match piece {
            Piece::Keyword(k) => Cow::Borrowed(k),
            Piece::Number(n) => Cow::Owned(n.to_string().into_bytes()),
        },
    )
}

/// The TENANT argument that stores `tenant` again: a TENANT written `{t}` means `t`, so a
/// tenant that itself looks like `{t}` is written with one more pair of braces.
pub fn tenant_argument_for(tenant: &[u8]) -> Cow<'_, [u8]> {
    if crate::policy::tenant_argument(tenant) == tenant {
        Cow::Borrowed(tenant)
    } else {
        let mut wrapped = Vec::with_capacity(tenant.len().saturating_add(2));
        wrapped.push(b'{');
        wrapped.extend_from_slice(tenant);
        wrapped.push(b'}');
        Cow::Owned(wrapped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &[u8], labels: Labels, tenant_explicit: bool, stale_ms: i64, fill_ms: u32) -> Box<Entry> {
        Entry::new(value, labels, tenant_explicit, stale_ms, fill_ms).expect("allocated")
    }

    #[test]
    fn an_entry_with_a_32_byte_value_is_one_64_byte_allocation() {
        // A field more or a wider one costs 16 B per entry.
        assert_eq!(std::mem::size_of::<EntryHead>(), 24);
        let e = entry(&[b'x'; 32], Labels::default(), false, 0, 0);
        assert_eq!(std::mem::size_of_val(&*e), 64);
        assert_eq!(e.memory_bytes(), 64);
    }

    #[test]
    fn packed_fields_keep_their_values() {
        let mut e = entry(b"v", Labels::default(), true, 5_000, 1234);
        assert_eq!((e.stale_ms(), e.fill_ms(), e.tenant_explicit(), e.fence()), (5_000, 1234, true, None));
        for fence in [Some(Action::Delete), Some(Action::MarkStale), None] {
            e.set_fence(fence);
            assert_eq!((e.fence(), e.fill_ms(), e.tenant_explicit()), (fence, 1234, true));
        }
        let long = entry(b"v", Labels::default(), false, 1_000_000_000_000, u32::MAX);
        assert_eq!((long.stale_ms(), long.fill_ms(), long.tenant_explicit()), (1_000_000_000_000, (1 << 29) - 1, false));
        assert_eq!(entry(b"v", Labels::default(), false, -5, 0).stale_ms(), 0);
        let copy = e.copied().expect("allocated");
        assert_eq!(*copy, *e);
    }

    #[test]
    fn the_tenant_follows_the_labels() {
        let n = |s: &str| Name::from(s.as_bytes());
        let mut e = entry(b"v", Labels::new(n("t"), vec![n("a")]), false, 0, 0);
        assert_eq!(&e.tenant()[..], b"t");
        e.set_tenant(n("u"));
        assert_eq!((&e.tenant()[..], &e.labels().tenant()[..]), (&b"u"[..], &b"u"[..]));
        let shared = Labels::new(n("w"), Vec::new());
        e.relabel(|l| *l = shared.clone());
        assert!(e.labels().same(&shared) && e.tenant().as_ptr() == shared.tenant().as_ptr());
    }

    #[test]
    fn freshness_follows_ttl_minus_stale_window() {
        let e = entry(b"", Labels::default(), false, 1000, 0);
        assert!(e.is_fresh(None));
        assert!(e.is_fresh(Some(1500)));
        assert!(!e.is_fresh(Some(1000)));
        assert_eq!(e.fresh_ms(Some(400)), Some(-600));
    }

    #[test]
    fn set_command_args_round_trip_shape() {
        let e = entry(b"v", labels(Name::from(&b"t"[..]), vec![Name::from(&b"a"[..])]), true, 60_000, 0);
        let args = set_command_args(b"k", &e, Some(123));
        let text: Vec<String> = args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        assert_eq!(text, ["k", "v", "PXAT", "123", "STALE", "60", "TAGS", "1", "a", "TENANT", "t"]);
        assert!(set_command_args(b"k", &entry(b"", Labels::default(), false, 0, 0), None).contains(&Cow::Borrowed(&b"NOEXPIRE"[..])));
    }

    #[test]
    fn a_tenant_in_braces_survives_a_rewrite() {
        for t in [&b"t"[..], b"{t}", b"{}", b"{{t}}", b""] {
            assert_eq!(crate::policy::tenant_argument(&tenant_argument_for(t)), t, "{}", String::from_utf8_lossy(t));
        }
    }

    #[test]
    fn tags_are_normalized() {
        let t = normalize_tags(vec![b"b".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(t, vec![b"a".to_vec(), b"b".to_vec()]);
    }
}
