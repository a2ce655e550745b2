//! Pure hit/miss and activity counters: global, per tenant, per namespace.
//!
//! Tenant and namespace maps are capped at `MAX_TRACKED` names each; events of further names are
//! counted under `OVERFLOW` so the maps cannot grow without bound.

use crate::hash::FastMap;
use crate::name::Name;
use serde_json::{json, Map, Value};

pub const MAX_TRACKED: usize = 1024;
pub const OVERFLOW: &[u8] = b"_other";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub hits: u64,
    pub misses: u64,
    pub stale_hits: u64,
    pub sets: u64,
    pub fills: u64,
    pub fills_rejected: u64,
    pub leases_granted: u64,
    pub leases_expired: u64,
    pub leases_abandoned: u64,
    pub waits: u64,
    pub waits_served: u64,
    pub wait_timeouts: u64,
    pub invalidations: u64,
    pub keys_invalidated: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Hit,
    StaleHit,
    Miss,
    Set,
    Fill,
    FillRejected,
    LeaseGranted,
    LeaseExpired,
    LeaseAbandoned,
    Wait,
    WaitServed,
    WaitTimeout,
    KeyInvalidated,
}

impl Counters {
    fn apply(&mut self, event: Event) {
        let field = match event {
            Event::Hit => &mut self.hits,
            Event::StaleHit => {
                self.stale_hits = self.stale_hits.saturating_add(1);
                &mut self.hits
            }
            Event::Miss => &mut self.misses,
            Event::Set => &mut self.sets,
            Event::Fill => &mut self.fills,
            Event::FillRejected => &mut self.fills_rejected,
            Event::LeaseGranted => &mut self.leases_granted,
            Event::LeaseExpired => &mut self.leases_expired,
            Event::LeaseAbandoned => &mut self.leases_abandoned,
            Event::Wait => &mut self.waits,
            Event::WaitServed => &mut self.waits_served,
            Event::WaitTimeout => &mut self.wait_timeouts,
            Event::KeyInvalidated => &mut self.keys_invalidated,
        };
        *field = field.saturating_add(1);
    }

    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits.saturating_add(self.misses);
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }

    /// The counter fields in document order.
    pub fn fields(&self) -> [(&'static str, u64); 14] {
        [
            ("hits", self.hits),
            ("misses", self.misses),
            ("stale_hits", self.stale_hits),
            ("sets", self.sets),
            ("fills", self.fills),
            ("fills_rejected", self.fills_rejected),
            ("leases_granted", self.leases_granted),
            ("leases_expired", self.leases_expired),
            ("leases_abandoned", self.leases_abandoned),
            ("waits", self.waits),
            ("waits_served", self.waits_served),
            ("wait_timeouts", self.wait_timeouts),
            ("invalidations", self.invalidations),
            ("keys_invalidated", self.keys_invalidated),
        ]
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceCounters {
    pub hits: u64,
    pub misses: u64,
    /// Live entries in this namespace.
    pub keys: u64,
}

/// Whom an event is counted for.
#[derive(Debug, Clone, Copy)]
pub enum Tenant<'a> {
    /// A tenant name shared with the index (an entry's): after its first event it is found by
    /// the address of its allocation, without hashing or comparing its bytes.
    Shared(&'a Name),
    Named(&'a [u8]),
}

impl<'a> From<&'a Name> for Tenant<'a> {
    fn from(name: &'a Name) -> Self {
        Tenant::Shared(name)
    }
}

impl<'a> From<&'a [u8]> for Tenant<'a> {
    fn from(name: &'a [u8]) -> Self {
        Tenant::Named(name)
    }
}

impl<'a> From<&'a Vec<u8>> for Tenant<'a> {
    fn from(name: &'a Vec<u8>) -> Self {
        Tenant::Named(name)
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Tenant<'a> {
    fn from(name: &'a [u8; N]) -> Self {
        Tenant::Named(name)
    }
}

/// Shared tenant names remembered by address, at most this many (then forgotten at once).
const MAX_ADDRESSES: usize = 4 * MAX_TRACKED;

#[derive(Debug, Default)]
pub struct Stats {
    pub global: Counters,
    /// Tenant name → its slot in `counters`.
    tenants: FastMap<Vec<u8>, usize>,
    counters: Vec<Counters>,
    /// Address of a shared tenant name → the name and its slot. The name is held, so its
    /// allocation cannot be freed and its address reused by another name while it is here:
    /// an address found here always means that name. With a thousand tenants a lookup by name
    /// on every hit was a measurable share of CACHE.GET (hashing the name, then comparing it
    /// with the stored one, each a likely cache miss).
    by_address: FastMap<usize, (Name, usize)>,
    namespaces: FastMap<Vec<u8>, NamespaceCounters>,
}

/// Applies `f` to the counters of `name`, or of `OVERFLOW` once the map is full. Looks up
/// before inserting so the hot path allocates nothing.
fn update<V: Default>(map: &mut FastMap<Vec<u8>, V>, name: &[u8], f: impl FnOnce(&mut V)) {
    if let Some(v) = map.get_mut(name) {
        f(v);
        return;
    }
    let name = if map.len() < MAX_TRACKED { name } else { OVERFLOW };
    f(map.entry(name.to_vec()).or_default());
}

impl Stats {
    /// The slot of `tenant`'s counters, or of `OVERFLOW`'s once `MAX_TRACKED` tenants have one.
    fn slot_named(&mut self, tenant: &[u8]) -> usize {
        if let Some(&slot) = self.tenants.get(tenant) {
            return slot;
        }
        let name = if self.tenants.len() < MAX_TRACKED {
            tenant
        } else if let Some(&slot) = self.tenants.get(OVERFLOW) {
            return slot;
        } else {
            OVERFLOW
        };
        let slot = self.counters.len();
        self.counters.push(Counters::default());
        self.tenants.insert(name.to_vec(), slot);
        slot
    }

    fn slot_of(&mut self, tenant: Tenant<'_>) -> usize {
        let name = match tenant {
            Tenant::Named(name) => return self.slot_named(name),
            Tenant::Shared(name) => name,
        };
        let address = name.as_ptr() as usize;
        if let Some((_, slot)) = self.by_address.get(&address) {
            return *slot;
        }
        let slot = self.slot_named(name);
        if self.by_address.len() >= MAX_ADDRESSES {
            self.by_address.clear();
        }
        self.by_address.insert(address, (name.clone(), slot));
        slot
    }

    fn tenant_counters(&mut self, tenant: Tenant<'_>) -> Option<&mut Counters> {
        let slot = self.slot_of(tenant);
        self.counters.get_mut(slot)
    }

    /// Counts an event of a key of `tenant` in namespace `ns`.
    pub fn record<'a>(&mut self, event: Event, tenant: impl Into<Tenant<'a>>, ns: &[u8]) {
        self.global.apply(event);
        if let Some(c) = self.tenant_counters(tenant.into()) {
            c.apply(event);
        }
        if matches!(event, Event::Hit | Event::StaleHit | Event::Miss) {
            update(&mut self.namespaces, ns, |n| {
                if event == Event::Miss {
                    n.misses = n.misses.saturating_add(1);
                } else {
                    n.hits = n.hits.saturating_add(1);
                }
            });
        }
    }

    /// Counts one invalidation call (its keys are counted by `KeyInvalidated` events).
    pub fn record_invalidation(&mut self, tenant: Option<&[u8]>) {
        self.global.invalidations = self.global.invalidations.saturating_add(1);
        if let Some(c) = tenant.and_then(|t| self.tenant_counters(Tenant::Named(t))) {
            c.invalidations = c.invalidations.saturating_add(1);
        }
    }

    pub fn key_added(&mut self, ns: &[u8]) {
        update(&mut self.namespaces, ns, |n| n.keys = n.keys.saturating_add(1));
    }

    pub fn key_removed(&mut self, ns: &[u8]) {
        let name = if self.namespaces.contains_key(ns) { ns } else { OVERFLOW };
        if let Some(n) = self.namespaces.get_mut(name) {
            n.keys = n.keys.saturating_sub(1);
        }
    }

    pub fn forget_keys(&mut self) {
        for n in self.namespaces.values_mut() {
            n.keys = 0;
        }
    }

    pub fn tenant(&self, tenant: &[u8]) -> Counters {
        self.tenants.get(tenant).and_then(|&slot| self.counters.get(slot)).copied().unwrap_or_default()
    }

    pub fn namespaces(&self) -> impl Iterator<Item = (&[u8], &NamespaceCounters)> {
        self.namespaces.iter().map(|(k, v)| (k.as_slice(), v))
    }

    /// Zeroes one tenant's counters (the tenant keeps its slot).
    pub fn reset_tenant(&mut self, tenant: &[u8]) {
        if let Some(c) = self.tenants.get(tenant).and_then(|&slot| self.counters.get_mut(slot)) {
            *c = Counters::default();
        }
    }

    /// Zeroes every counter; key counts stay (they describe data, not traffic).
    pub fn reset(&mut self) {
        self.global = Counters::default();
        self.tenants.clear();
        self.counters.clear();
        self.by_address.clear();
        for n in self.namespaces.values_mut() {
            n.hits = 0;
            n.misses = 0;
        }
        self.namespaces.retain(|_, n| n.keys > 0);
    }
}

/// A reported figure: a count or a ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Figure {
    Count(u64),
    Ratio(f64),
}

/// Every figure of a report, in DESIGN.md order: the counters, the hit ratio and the gauges
/// (keys, tenants, memory, leases in flight…) placed where the document lists them. Both
/// CACHE.STATS and INFO are built from this one list.
pub fn report(counters: &Counters, gauges: &[(&'static str, u64)]) -> Vec<(&'static str, Figure)> {
    const ORDER: [&str; 27] = [
        "hits", "misses", "stale_hits", "hit_ratio", "keys", "tenants", "tags", "memory_bytes",
        "index_bytes", "sets", "fills", "fills_rejected", "leases_granted", "leases_active",
        "leases_expired", "leases_abandoned", "waits", "waits_served", "wait_timeouts", "waiters",
        "invalidations", "keys_invalidated", "reclaim_pending_entries", "reclaim_pending_bytes",
        "reclaim_slices", "reclaim_longest_slice_us", "reclaimed",
    ];
    let fields = counters.fields();
    ORDER
        .iter()
        .filter_map(|name| {
            if *name == "hit_ratio" {
                return Some((*name, Figure::Ratio(counters.hit_ratio())));
            }
            fields
                .iter()
                .chain(gauges.iter())
                .find(|(n, _)| n == name)
                .map(|(n, v)| (*n, Figure::Count(*v)))
        })
        .collect()
}

/// The JSON document of CACHE.STATS.
pub fn to_json(figures: &[(&'static str, Figure)], namespaces: Option<Value>) -> Value {
    let mut doc = Map::new();
    for (name, figure) in figures {
        let v = match figure {
            Figure::Count(c) => json!(c),
            Figure::Ratio(r) => json!(r),
        };
        doc.insert((*name).into(), v);
    }
    if let Some(ns) = namespaces {
        doc.insert("namespaces".into(), ns);
    }
    Value::Object(doc)
}

pub fn namespaces_json<'a>(items: impl Iterator<Item = (&'a [u8], &'a NamespaceCounters)>) -> Value {
    let mut out = Map::new();
    for (name, n) in items {
        let total = n.hits.saturating_add(n.misses);
        let ratio = if total == 0 { 0.0 } else { n.hits as f64 / total as f64 };
        out.insert(
            String::from_utf8_lossy(name).into_owned(),
            json!({"hits": n.hits, "misses": n.misses, "hit_ratio": ratio, "keys": n.keys}),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hits_misses_and_ratio() {
        let mut s = Stats::default();
        assert_eq!(s.global.hit_ratio(), 0.0);
        for _ in 0..3 {
            s.record(Event::Hit, b"t1", b"ns");
        }
        s.record(Event::StaleHit, b"t2", b"ns");
        s.record(Event::Miss, b"t1", b"other");
        assert_eq!((s.global.hits, s.global.stale_hits, s.global.misses), (4, 1, 1));
        assert!((s.global.hit_ratio() - 0.8).abs() < 1e-9);
        assert_eq!(s.tenant(b"t1").hits, 3);
        assert_eq!(s.tenant(b"t1").misses, 1);
        assert_eq!(s.tenant(b"nobody"), Counters::default());
        let ns: std::collections::HashMap<_, _> = s.namespaces().map(|(k, v)| (k.to_vec(), *v)).collect();
        assert_eq!(ns[&b"ns".to_vec()].hits, 4);
    }

    #[test]
    fn maps_are_capped_and_reset_keeps_keys() {
        let mut s = Stats::default();
        for i in 0..(MAX_TRACKED + 10) {
            s.record(Event::Miss, format!("t{i}").as_bytes(), format!("n{i}").as_bytes());
        }
        assert_eq!(s.tenants.len(), MAX_TRACKED + 1);
        assert_eq!(s.tenant(OVERFLOW).misses, 10);
        s.key_added(b"n1");
        s.reset();
        assert_eq!(s.global, Counters::default());
        let kept: Vec<_> = s.namespaces().map(|(k, v)| (k.to_vec(), v.keys)).collect();
        assert_eq!(kept, vec![(b"n1".to_vec(), 1)]);
        s.key_removed(b"n1");
        s.key_removed(b"never");
    }

    #[test]
    fn shared_names_count_with_their_bytes_and_never_by_a_reused_address() {
        let mut s = Stats::default();
        let (a, a_again, b) = (Name::new(b"t1"), Name::new(b"t1"), Name::new(b"t2"));
        s.record(Event::Hit, &a, b"ns");
        s.record(Event::Hit, &a, b"ns");
        s.record(Event::Miss, &a_again, b"ns");
        s.record(Event::Set, b"t1", b"ns");
        let t1 = s.tenant(b"t1");
        assert_eq!((t1.hits, t1.misses, t1.sets), (2, 1, 1));
        // A name counted by address stays allocated while remembered, so a name made after
        // the first is dropped cannot take its address.
        drop(a);
        drop(a_again);
        for _ in 0..100 {
            let fresh = Name::new(b"t2");
            s.record(Event::Hit, &fresh, b"ns");
        }
        s.record(Event::Hit, &b, b"ns");
        assert_eq!(s.tenant(b"t1").hits, 2);
        assert_eq!(s.tenant(b"t2").hits, 101);
        s.reset_tenant(b"t2");
        s.record(Event::Hit, &b, b"ns");
        assert_eq!(s.tenant(b"t2").hits, 1);
        s.reset();
        s.record(Event::Miss, &b, b"ns");
        assert_eq!((s.tenant(b"t1"), s.tenant(b"t2").misses), (Counters::default(), 1));
    }

    #[test]
    fn forgetting_remembered_addresses_loses_no_count() {
        let mut s = Stats::default();
        let copies: Vec<Name> = (0..(MAX_ADDRESSES + 10)).map(|_| Name::new(b"t")).collect();
        for n in &copies {
            s.record(Event::Hit, n, b"ns");
        }
        assert!(s.by_address.len() <= MAX_ADDRESSES);
        assert_eq!(s.tenant(b"t").hits, MAX_ADDRESSES as u64 + 10);
    }

    #[test]
    fn shared_names_beyond_the_cap_count_as_overflow() {
        let mut s = Stats::default();
        let names: Vec<Name> = (0..(MAX_TRACKED + 10)).map(|i| Name::new(format!("t{i}").as_bytes())).collect();
        for _ in 0..2 {
            for n in &names {
                s.record(Event::Hit, n, b"ns");
            }
        }
        assert_eq!(s.tenants.len(), MAX_TRACKED + 1);
        assert_eq!(s.tenant(b"t0").hits, 2);
        assert_eq!(s.tenant(OVERFLOW).hits, 20);
        assert_eq!(s.global.hits, 2 * (MAX_TRACKED as u64 + 10));
    }

    #[test]
    fn report_orders_counters_ratio_and_gauges() {
        let c = Counters { hits: 3, misses: 1, ..Counters::default() };
        let figures = report(&c, &[("keys", 7), ("waiters", 2)]);
        let names: Vec<&str> = figures.iter().map(|(n, _)| *n).collect();
        assert_eq!(&names[..5], ["hits", "misses", "stale_hits", "hit_ratio", "keys"]);
        assert!(figures.contains(&("hit_ratio", Figure::Ratio(0.75))));
        assert!(figures.contains(&("waiters", Figure::Count(2))));
        assert!(!names.contains(&"tenants"), "gauges not given are left out");
        let v = to_json(&figures, Some(namespaces_json(std::iter::empty())));
        for f in ["hits", "misses", "hit_ratio", "keys", "namespaces", "keys_invalidated"] {
            assert!(v.get(f).is_some(), "{f}");
        }
    }
}
