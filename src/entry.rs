//! The `tagcache0` native type: one cache entry per key.
//!
//! Freshness is derived from the key's own Redis TTL: the key expires at `fresh_until + stale
//! window`, so an entry is fresh while `PTTL > stale_ms`. Native EXPIRE/PERSIST therefore move
//! the fresh deadline too, and the TTL needs no copy in the entry (Redis persists and replicates it).

use crate::index::Name;
use crate::name::Labels;
use crate::mem;
use std::borrow::Cow;

/// Encoding version of the RDB layout (bump on layout changes, never the type name). 2: the
/// aux data after the keyspace also lists entries stale by a pending SOFT invalidation;
/// entries themselves are laid out as in 1.
pub const ENCODING_VERSION: i32 = 2;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// Boxed, not a `Vec`: no spare capacity, and the entry fits a 48-byte allocation.
    pub value: Box<[u8]>,
    /// The tenant and the tags (sorted, without duplicates), shared with the index: the
    /// allocation and every name in it.
    labels: Labels,
    /// `labels.tenant()`, kept here too: a hit counts its tenant's statistics without
    /// reading the labels (another cache miss per read).
    tenant: Name,
    /// True when the tenant was given with TENANT; otherwise it follows the key's name.
    pub tenant_explicit: bool,
    pub stale_ms: i64,
    /// How long the fill that produced this value took, in ms (0 when unknown; saturates at
    /// about 49 days).
    pub fill_ms: u32,
    /// Arrived by MIGRATE/RESTORE under an invalidation's fence and is about to be removed
    /// (reads treat it as missing) or marked stale (reads treat it as stale). Never persisted.
    pub fence: Option<crate::fences::Action>,
}

impl Entry {
    pub fn new(value: Box<[u8]>, labels: Labels, tenant_explicit: bool, stale_ms: i64, fill_ms: u32) -> Entry {
        let tenant = labels.tenant().clone();
        Entry { value, labels, tenant, tenant_explicit, stale_ms, fill_ms, fence: None }
    }

    pub fn tenant(&self) -> &Name {
        &self.tenant
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// Gives the entry another tenant (its labels follow).
    pub fn set_tenant(&mut self, tenant: Name) {
        self.relabel(|l| l.set_tenant(tenant));
    }

    /// Changes the labels through `change` (the tenant follows).
    pub fn relabel<R>(&mut self, change: impl FnOnce(&mut Labels) -> R) -> R {
        let result = change(&mut self.labels);
        if !self.labels.tenant().as_ptr().eq(&self.tenant.as_ptr()) {
            self.tenant = self.labels.tenant().clone();
        }
        result
    }

    pub fn tags(&self) -> &[Name] {
        self.labels.tags()
    }

    /// Milliseconds of freshness left given the key's remaining TTL (`None` = no expiry).
    /// Negative or zero means stale.
    pub fn fresh_ms(&self, ttl_ms: Option<i64>) -> Option<i64> {
        ttl_ms.map(|ttl| ttl.saturating_sub(self.stale_ms))
    }

    pub fn is_fresh(&self, ttl_ms: Option<i64>) -> bool {
        self.fresh_ms(ttl_ms).is_none_or(|f| f > 0)
    }

    /// Bytes the allocator holds for this entry (the boxed struct, its value and its labels,
    /// which the index shares; the tenant and tag names themselves are the index's, counted
    /// there, and so are the labels an untagged entry shares with its tenant's others).
    pub fn memory_bytes(&self) -> usize {
        let labels = if self.tags().is_empty() { 0 } else { self.labels.footprint() };
        mem::sum([mem::allocation(std::mem::size_of::<Entry>()), mem::allocation(self.value.len()), labels])
    }

    /// What this entry costs under `key`, Redis's own per-key structures included.
    pub fn footprint(&self, key: &[u8]) -> usize {
        self.memory_bytes().saturating_add(mem::keyspace_overhead(key.len()))
    }
}

/// Sorts and deduplicates a tag list.
pub fn normalize_tags(mut tags: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    tags.sort_unstable();
    tags.dedup();
    tags
}

/// An entry's labels from its tenant and tags (sorted and deduplicated here).
pub fn labels(tenant: Name, tags: Vec<Vec<u8>>) -> Labels {
    Labels::new(tenant, normalize_tags(tags).into_iter().map(Name::from).collect())
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
        Cow::Borrowed(&e.value[..]),
        fresh_until,
        e.stale_ms,
        e.tags().iter().map(|t| Cow::Borrowed(&t[..])).collect(),
        e.tenant_explicit.then(|| tenant_argument_for(e.tenant())),
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

    #[test]
    fn an_entry_fits_a_48_byte_allocation() {
        // One jemalloc size class per entry; a field more or a wider one costs 16 B per entry.
        assert!(std::mem::size_of::<Entry>() <= 48, "{}", std::mem::size_of::<Entry>());
    }

    #[test]
    fn the_tenant_follows_the_labels() {
        let n = |s: &str| Name::from(s.as_bytes());
        let mut e = Entry::new(Box::from(&b"v"[..]), Labels::new(n("t"), vec![n("a")]), false, 0, 0);
        assert_eq!(&e.tenant()[..], b"t");
        e.set_tenant(n("u"));
        assert_eq!((&e.tenant()[..], &e.labels().tenant()[..]), (&b"u"[..], &b"u"[..]));
        let shared = Labels::new(n("w"), Vec::new());
        e.relabel(|l| *l = shared.clone());
        assert!(e.labels().same(&shared) && e.tenant().as_ptr() == shared.tenant().as_ptr());
    }

    #[test]
    fn freshness_follows_ttl_minus_stale_window() {
        let e = Entry {
            stale_ms: 1000,
            ..Entry::default()
        };
        assert!(e.is_fresh(None));
        assert!(e.is_fresh(Some(1500)));
        assert!(!e.is_fresh(Some(1000)));
        assert_eq!(e.fresh_ms(Some(400)), Some(-600));
    }

    #[test]
    fn set_command_args_round_trip_shape() {
        let e = Entry::new(Box::from(&b"v"[..]), labels(Name::from(&b"t"[..]), vec![b"a".to_vec()]), true, 60_000, 0);
        let args = set_command_args(b"k", &e, Some(123));
        let text: Vec<String> = args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        assert_eq!(text, ["k", "v", "PXAT", "123", "STALE", "60", "TAGS", "1", "a", "TENANT", "t"]);
        assert!(set_command_args(b"k", &Entry::default(), None).contains(&Cow::Borrowed(&b"NOEXPIRE"[..])));
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
