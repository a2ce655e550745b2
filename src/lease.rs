//! Pure lease table for stampede protection: at most one lease per (db, key), opaque tokens not
//! bound to a connection, deadlines, parked-waiter queues, and the tag fences that let a FILL be
//! refused when an invalidation of one of its tags came after the lease's grant.
//!
//! Every operation is O(log n) in the number of outstanding leases or waiters: leases are kept
//! per database in name order (an invalidation walks only its pattern's literal-prefix range),
//! deadlines in a queue (the sweep pops only what expired), grant sequence numbers in a
//! multiset (the oldest live grant, which bounds the fences worth keeping, is its first key).

use crate::mem::Shrink;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: Vec<u8>,
    pub granted_at_ms: i64,
    pub deadline_ms: i64,
    /// Invalidation sequence number when the lease was granted.
    pub granted_seq: u64,
    /// The tenant this key's events are counted under while it has no entry.
    pub tenant: Vec<u8>,
}

/// A tag invalidation that later FILLs of older leases must respect: set by `user` (an ACL user
/// name), or by nobody in particular (`None`: a replayed or internal invalidation) which fences
/// every key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub seq: u64,
    pub user: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No lease, another token, expired, abandoned, superseded by a SET or voided by an invalidation.
    NotCurrent,
}

type Name = Box<[u8]>;

#[derive(Debug, Default)]
pub struct Leases {
    /// Per database, leases by key name (ordered for prefix walks).
    leases: HashMap<i32, BTreeMap<Name, Lease>>,
    count: usize,
    /// (deadline, db, key) of every lease.
    deadlines: BTreeSet<(i64, i32, Name)>,
    /// How many live leases were granted at each invalidation sequence number.
    granted_seqs: BTreeMap<u64, usize>,
    /// Parked callers per database and key, by id (ids grow: first = longest waiting).
    waiters: HashMap<i32, HashMap<Name, BTreeSet<u64>>>,
    waiter_count: usize,
    /// Leases granted to a parked caller that has not been answered yet: waiter id → token.
    handoffs: HashMap<u64, Vec<u8>>,
    /// Parked callers told to retry because their database was flushed, swapped or reloaded.
    released: HashSet<u64>,
    random: u64,
    seq: u64,
    /// Per (database, tag): INVALIDATETAGS acts on the selected database only.
    tag_fences: HashMap<(i32, Vec<u8>), Vec<Fence>>,
    /// Prune the fences once there are more than this many tags fenced (doubles after a prune
    /// that kept many, so pruning stays amortized O(1) per fence).
    prune_fences_over: usize,
    next_token: u64,
    salt: u64,
}

/// Fenced tags remembered before the first prune.
const FENCES_KEPT: usize = 1024;

impl Leases {
    pub fn with_salt(salt: u64) -> Leases {
        Leases {
            salt,
            random: salt | 1,
            ..Leases::default()
        }
    }

    /// Leases not past their deadline.
    pub fn active(&self, now_ms: i64) -> usize {
        let expired = self
            .deadlines
            .range(..(now_ms.saturating_add(1), i32::MIN, Name::default()))
            .count();
        self.count.saturating_sub(expired)
    }

    /// A uniform number in [0, 1) (xorshift; for probabilistic early refresh).
    pub fn next_unit(&mut self) -> f64 {
        let mut x = self.random.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn get(&self, db: i32, key: &[u8]) -> Option<&Lease> {
        if self.count == 0 {
            return None;
        }
        self.leases.get(&db)?.get(key)
    }

    /// The current lease on a key, if any and not past its deadline.
    pub fn current(&self, db: i32, key: &[u8], now_ms: i64) -> Option<&Lease> {
        self.get(db, key).filter(|l| l.deadline_ms > now_ms)
    }

    fn insert(&mut self, db: i32, key: &[u8], lease: Lease) {
        self.remove(db, key);
        self.deadlines.insert((lease.deadline_ms, db, key.into()));
        let n = self.granted_seqs.entry(lease.granted_seq).or_default();
        *n = n.saturating_add(1);
        self.leases.entry(db).or_default().insert(key.into(), lease);
        self.count = self.count.saturating_add(1);
    }

    /// Removes a lease, forgetting fences no remaining lease can predate.
    fn remove(&mut self, db: i32, key: &[u8]) -> Option<Lease> {
        let map = self.leases.get_mut(&db)?;
        let lease = map.remove(key)?;
        if map.is_empty() {
            self.leases.remove(&db);
            self.leases.shrink_if_sparse();
        }
        self.count = self.count.saturating_sub(1);
        self.deadlines.remove(&(lease.deadline_ms, db, key.into()));
        if let Some(n) = self.granted_seqs.get_mut(&lease.granted_seq) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.granted_seqs.remove(&lease.granted_seq);
            }
        }
        self.prune_fences();
        Some(lease)
    }

    /// Drops a lease found past its deadline; returns its tenant when one was dropped (an
    /// expiry to count).
    pub fn expire(&mut self, db: i32, key: &[u8], now_ms: i64) -> Option<Vec<u8>> {
        if self.get(db, key)?.deadline_ms > now_ms {
            return None;
        }
        self.remove(db, key).map(|l| l.tenant)
    }

    /// Removes every lease past its deadline (whose holder never came back), returning the
    /// keys they were on and their tenants so their expiry can be counted.
    pub fn sweep_expired(&mut self, now_ms: i64) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
        let mut swept = Vec::new();
        while let Some((deadline, db, key)) = self.deadlines.first().cloned() {
            if deadline > now_ms {
                break;
            }
            match self.remove(db, &key) {
                Some(l) => swept.push((db, key.into_vec(), l.tenant)),
                // Never left behind: a deadline without its lease is dropped.
                None => {
                    self.deadlines.pop_first();
                }
            }
        }
        swept
    }

    /// Grants a lease unless a live one exists. Returns the new token.
    pub fn grant(&mut self, db: i32, key: &[u8], now_ms: i64, length_ms: i64, tenant: &[u8]) -> Option<Vec<u8>> {
        if self.current(db, key, now_ms).is_some() {
            return None;
        }
        self.next_token = self.next_token.wrapping_add(1);
        let token = format!("{:x}-{:x}", self.salt, self.next_token).into_bytes();
        let lease = Lease {
            token: token.clone(),
            granted_at_ms: now_ms,
            deadline_ms: now_ms.saturating_add(length_ms),
            granted_seq: self.seq,
            tenant: tenant.to_vec(),
        };
        self.insert(db, key, lease);
        Some(token)
    }

    /// Consumes the lease for a FILL carrying `tags`; the lease is gone whatever the outcome
    /// unless the token is simply not the current one. Returns it with the fences set on those
    /// tags since its grant: the caller refuses the FILL when one of them applies to the key
    /// (`user` None, or a user who may write the key: an ACL question this pure table leaves
    /// to the glue).
    pub fn take_for_fill(
        &mut self,
        db: i32,
        key: &[u8],
        token: &[u8],
        tags: &[Vec<u8>],
        now_ms: i64,
    ) -> Result<(Lease, Vec<Fence>), Refusal> {
        let granted_seq = match self.get(db, key) {
            Some(l) if l.token == token && l.deadline_ms > now_ms => l.granted_seq,
            _ => return Err(Refusal::NotCurrent),
        };
        // Read the fences before the removal, which may prune them.
        let fences: Vec<Fence> = tags
            .iter()
            .filter_map(|t| self.tag_fences.get(&(db, t.clone())))
            .flatten()
            .filter(|f| f.seq > granted_seq)
            .cloned()
            .collect();
        let lease = self.remove(db, key).ok_or(Refusal::NotCurrent)?;
        Ok((lease, fences))
    }

    /// Releases a lease held with `token`; returns its tenant, or None when it was not the
    /// current one.
    pub fn abandon(&mut self, db: i32, key: &[u8], token: &[u8], now_ms: i64) -> Option<Vec<u8>> {
        if self.current(db, key, now_ms)?.token != token {
            return None;
        }
        self.remove(db, key).map(|l| l.tenant)
    }

    /// Voids the lease on one key (SET, DEL, invalidation); true when there was one.
    pub fn void(&mut self, db: i32, key: &[u8]) -> bool {
        if self.count == 0 {
            return false;
        }
        self.remove(db, key).is_some()
    }

    /// The tenant recorded on the lease of a key (live or not).
    pub fn tenant_of(&self, db: i32, key: &[u8]) -> Option<&[u8]> {
        self.get(db, key).map(|l| l.tenant.as_slice())
    }

    /// Keys of `db` holding a lease whose names start with `prefix`, in name order (for
    /// pattern invalidations: only the pattern's literal-prefix range is walked).
    pub fn leased_with_prefix(&self, db: i32, prefix: &[u8]) -> Vec<Vec<u8>> {
        let Some(map) = self.leases.get(&db) else {
            return Vec::new();
        };
        map.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.to_vec())
            .collect()
    }

    /// Records an invalidation of `tags` in `db` by `user` (None: applies to every key): later
    /// FILLs in `db` carrying one of them with an older lease are refused where the fence applies.
    pub fn invalidate_tags(&mut self, db: i32, tags: &[Vec<u8>], user: Option<&[u8]>) {
        self.seq = self.seq.wrapping_add(1);
        if self.count == 0 {
            // No lease can predate this call: nothing to remember.
            return;
        }
        let fence = Fence { seq: self.seq, user: user.map(<[u8]>::to_vec) };
        for t in tags {
            let fences = self.tag_fences.entry((db, t.clone())).or_default();
            // One fence per (tag, user): the newest covers every older lease the older one did.
            fences.retain(|f| f.user != fence.user);
            fences.push(fence.clone());
        }
        self.prune_fences();
    }

    /// Forgets fences no live lease can predate: all of them once no lease is left, else (when
    /// many tags are fenced) those older than the oldest live grant.
    fn prune_fences(&mut self) {
        if self.tag_fences.is_empty() {
            return;
        }
        match self.granted_seqs.first_key_value().map(|(seq, _)| *seq) {
            None => {
                self.tag_fences.clear();
                self.tag_fences.shrink_if_sparse();
                self.prune_fences_over = FENCES_KEPT;
            }
            Some(oldest) if self.tag_fences.len() > self.prune_fences_over.max(FENCES_KEPT) => {
                self.tag_fences.retain(|_, fences| {
                    fences.retain(|f| f.seq > oldest);
                    !fences.is_empty()
                });
                self.tag_fences.shrink_if_sparse();
                self.prune_fences_over = self.tag_fences.len().saturating_mul(2);
            }
            Some(_) => {}
        }
    }

    pub fn remembered_tags(&self) -> usize {
        self.tag_fences.len()
    }

    /// Parks waiter `id` (ids grow with time) on a key; returns how many wait on it now.
    pub fn add_waiter(&mut self, db: i32, key: &[u8], id: u64) -> usize {
        let queue = self.waiters.entry(db).or_default().entry(key.into()).or_default();
        if queue.insert(id) {
            self.waiter_count = self.waiter_count.saturating_add(1);
        }
        queue.len()
    }

    /// Removes a waiter (answered, timed out or gone); false when it was not queued.
    pub fn remove_waiter(&mut self, db: i32, key: &[u8], id: u64) -> bool {
        let Some(keys) = self.waiters.get_mut(&db) else {
            return false;
        };
        let Some(queue) = keys.get_mut(key) else {
            return false;
        };
        let removed = queue.remove(&id);
        if queue.is_empty() {
            keys.remove(key);
            keys.shrink_if_sparse();
            if keys.is_empty() {
                self.waiters.remove(&db);
            }
        }
        if removed {
            self.waiter_count = self.waiter_count.saturating_sub(1);
        }
        removed
    }

    pub fn waiters_on(&self, db: i32, key: &[u8]) -> usize {
        if self.waiter_count == 0 {
            return 0;
        }
        self.waiters.get(&db).and_then(|keys| keys.get(key)).map_or(0, BTreeSet::len)
    }

    pub fn total_waiters(&self) -> usize {
        self.waiter_count
    }

    /// When the key has waiters and no live lease: grants a lease to the longest-waiting one,
    /// takes it out of the queue and returns its id (its token is kept for `take_handoff`).
    /// `lease_of(id)` gives the lease length and tenant that waiter asked for.
    pub fn hand_over(&mut self, db: i32, key: &[u8], now_ms: i64, lease_of: impl Fn(u64) -> (i64, Vec<u8>)) -> Option<u64> {
        if self.current(db, key, now_ms).is_some() {
            return None;
        }
        let id = *self.waiters.get(&db)?.get(key)?.first()?;
        self.remove_waiter(db, key, id);
        let (length, tenant) = lease_of(id);
        let token = self.grant(db, key, now_ms, length, &tenant)?;
        self.handoffs.insert(id, token);
        Some(id)
    }

    /// The token handed to waiter `id`, once.
    pub fn take_handoff(&mut self, id: u64) -> Option<Vec<u8>> {
        if self.handoffs.is_empty() {
            return None;
        }
        let token = self.handoffs.remove(&id);
        self.handoffs.shrink_if_sparse();
        token
    }

    /// Drops every lease of the databases `dbs` selects (all for `None`) and takes their parked
    /// callers out of the queues: they are to be told to retry (FLUSHDB, FLUSHALL, SWAPDB, a
    /// dataset reload). Returns those callers' ids, which stay marked until `take_released`.
    pub fn release_dbs(&mut self, dbs: Option<&[i32]>) -> Vec<u64> {
        let hit = |d: &i32| dbs.is_none_or(|list| list.contains(d));
        let doomed: Vec<(i32, Name)> = self
            .leases
            .iter()
            .filter(|(d, _)| hit(d))
            .flat_map(|(d, map)| map.keys().map(move |k| (*d, k.clone())))
            .collect();
        for (db, key) in doomed {
            self.remove(db, &key);
        }
        let mut ids = Vec::new();
        self.waiters.retain(|d, keys| {
            if hit(d) {
                ids.extend(keys.drain().flat_map(|(_, queue)| queue));
                false
            } else {
                true
            }
        });
        self.waiters.shrink_if_sparse();
        self.waiter_count = self.waiter_count.saturating_sub(ids.len());
        for id in &ids {
            self.handoffs.remove(id);
            self.released.insert(*id);
        }
        self.handoffs.shrink_if_sparse();
        ids
    }

    /// True (once) when waiter `id` was released by `release_dbs`.
    pub fn take_released(&mut self, id: u64) -> bool {
        if self.released.is_empty() {
            return false;
        }
        let was = self.released.remove(&id);
        self.released.shrink_if_sparse();
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<Vec<u8>> {
        t.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn one_lease_per_key_until_deadline() {
        let mut l = Leases::with_salt(7);
        let t1 = l.grant(0, b"k", 1000, 500, b"t").unwrap();
        assert!(l.grant(0, b"k", 1200, 500, b"t").is_none());
        assert!(l.grant(1, b"k", 1200, 500, b"t").is_some(), "other db, other lease");
        assert!(l.expire(0, b"k", 1499).is_none());
        let t2 = l.grant(0, b"k", 1500, 500, b"t").unwrap();
        assert_ne!(t1, t2);
        assert_eq!(l.take_for_fill(0, b"k", &t1, &[], 1600), Err(Refusal::NotCurrent));
        assert!(l.take_for_fill(0, b"k", &t2, &[], 1600).is_ok());
        assert_eq!(l.take_for_fill(0, b"k", &t2, &[], 1600), Err(Refusal::NotCurrent));
    }

    #[test]
    fn expired_lease_cannot_fill_or_abandon() {
        let mut l = Leases::default();
        let t = l.grant(0, b"k", 0, 100, b"t").unwrap();
        assert!(l.abandon(0, b"k", &t, 100).is_none());
        assert_eq!(l.take_for_fill(0, b"k", &t, &[], 100), Err(Refusal::NotCurrent));
        assert_eq!(l.expire(0, b"k", 100), Some(b"t".to_vec()));
    }

    #[test]
    fn sweep_removes_only_expired_leases() {
        let mut l = Leases::default();
        l.grant(0, b"old", 0, 10, b"t").unwrap();
        l.grant(1, b"live", 0, 1000, b"t").unwrap();
        assert_eq!(l.sweep_expired(10), vec![(0, b"old".to_vec(), b"t".to_vec())]);
        assert_eq!(l.len(), 1);
        assert!(l.sweep_expired(20).is_empty());
    }

    #[test]
    fn abandon_and_void_release_the_key() {
        let mut l = Leases::default();
        let t = l.grant(0, b"k", 0, 100, b"t").unwrap();
        assert!(l.abandon(0, b"k", b"wrong", 1).is_none());
        assert!(l.abandon(0, b"k", &t, 1).is_some());
        let t = l.grant(0, b"k", 2, 100, b"t").unwrap();
        assert!(l.void(0, b"k"));
        assert_eq!(l.take_for_fill(0, b"k", &t, &[], 3), Err(Refusal::NotCurrent));
    }

    #[test]
    fn tag_fences_set_after_the_grant_are_returned_with_their_user() {
        let mut l = Leases::default();
        l.invalidate_tags(0, &tags(&["a"]), None); // before any lease: forgotten
        let t = l.grant(0, b"k", 0, 1000, b"t").unwrap();
        let (lease, fences) = l.take_for_fill(0, b"k", &t, &tags(&["a"]), 1).unwrap();
        assert_eq!((lease.token, lease.granted_at_ms, fences.len()), (t, 0, 0));
        let t = l.grant(0, b"k", 2, 1000, b"t").unwrap();
        l.invalidate_tags(0, &tags(&["b"]), Some(b"alice"));
        l.invalidate_tags(0, &tags(&["b"]), Some(b"alice"));
        l.invalidate_tags(0, &tags(&["c"]), None);
        let (_, fences) = l.take_for_fill(0, b"k", &t, &tags(&["a", "b"]), 3).unwrap();
        assert_eq!(fences, vec![Fence { seq: 3, user: Some(b"alice".to_vec()) }], "one per (tag, user), newest");
        assert_eq!(l.remembered_tags(), 0, "no lease left: nothing remembered");
    }

    #[test]
    fn lease_granted_after_tag_invalidation_may_fill() {
        let mut l = Leases::default();
        let _other = l.grant(0, b"other", 0, 1000, b"t").unwrap();
        l.invalidate_tags(0, &tags(&["a"]), None);
        let t = l.grant(0, b"k", 1, 1000, b"t").unwrap();
        assert!(l.take_for_fill(0, b"k", &t, &tags(&["a"]), 2).unwrap().1.is_empty());
    }

    #[test]
    fn waiters_and_released_databases() {
        let mut l = Leases::default();
        assert_eq!(l.add_waiter(0, b"k", 1), 1);
        assert_eq!(l.add_waiter(0, b"k", 2), 2);
        assert!(l.remove_waiter(0, b"k", 1));
        assert!(!l.remove_waiter(0, b"k", 1));
        assert!(l.remove_waiter(0, b"k", 2));
        assert_eq!(l.total_waiters(), 0);
        l.grant(0, b"k", 0, 100, b"t").unwrap();
        l.grant(5, b"k", 0, 100, b"t").unwrap();
        l.add_waiter(0, b"k", 3);
        l.add_waiter(5, b"k", 4);
        assert_eq!(l.leased_with_prefix(5, b""), vec![b"k".to_vec()]);
        assert!(l.leased_with_prefix(5, b"x").is_empty());
        assert_eq!(l.release_dbs(Some(&[5, 7])), vec![4]);
        assert!(l.current(5, b"k", 1).is_none() && l.current(0, b"k", 1).is_some());
        assert!(l.take_released(4) && !l.take_released(4) && !l.take_released(3));
        assert_eq!(l.release_dbs(None), vec![3]);
        assert!(l.is_empty() && l.total_waiters() == 0);
    }

    #[test]
    fn hand_over_goes_to_exactly_one_waiter_in_arrival_order() {
        let mut l = Leases::default();
        let t = l.grant(0, b"k", 0, 100, b"t").unwrap();
        for id in [7, 8, 9] {
            l.add_waiter(0, b"k", id);
        }
        assert_eq!(l.hand_over(0, b"k", 50, |_| (100, Vec::new())), None, "lease still live");
        assert!(l.abandon(0, b"k", &t, 60).is_some());
        assert_eq!(l.hand_over(0, b"k", 60, |id| (id as i64 * 10 + 30, Vec::new())), Some(7));
        assert_eq!(l.current(0, b"k", 60).unwrap().deadline_ms, 160, "the waiter's own length");
        assert_eq!(l.hand_over(0, b"k", 61, |_| (100, Vec::new())), None, "the new lease is live");
        let token = l.take_handoff(7).unwrap();
        assert_eq!(l.current(0, b"k", 61).unwrap().token, token);
        assert_eq!(l.take_handoff(7), None);
        assert_eq!(l.waiters_on(0, b"k"), 2);
        // At the new lease's deadline the next waiter takes over.
        assert_eq!(l.hand_over(0, b"k", 160, |_| (100, Vec::new())), Some(8));
    }

    #[test]
    fn deadlines_and_counts_stay_consistent_at_scale() {
        let mut l = Leases::default();
        for i in 0..10_000i64 {
            l.grant(i32::from(i % 3 == 0), format!("k{i}").as_bytes(), 0, 1 + i % 100, b"t").unwrap();
        }
        assert_eq!((l.len(), l.active(0)), (10_000, 10_000));
        assert_eq!(l.active(50), 10_000 - 5000, "deadlines 1..=50 have passed");
        let swept = l.sweep_expired(50);
        assert_eq!((swept.len(), l.len(), l.active(50)), (5000, 5000, 5000));
        assert!(swept.iter().all(|(_, k, t)| k.starts_with(b"k") && t == b"t"));
        let expected = (0..10_000).filter(|i| i % 3 == 0 && 1 + i % 100 > 50 && format!("k{i}").starts_with("k99")).count();
        assert_eq!(l.leased_with_prefix(1, b"k99").len(), expected, "db 1, live, prefix k99");
        // Fences stay bounded while old leases live, and vanish with the last lease.
        let _old = l.grant(0, b"old", 0, 1_000_000, b"t").unwrap();
        for i in 0..5000 {
            l.invalidate_tags(0, &[format!("tag{i}").into_bytes()], None);
        }
        assert!(l.remembered_tags() <= 5000);
        l.release_dbs(None);
        assert_eq!((l.len(), l.remembered_tags(), l.active(0)), (0, 0, 0));
    }

    #[test]
    fn random_units_are_in_range() {
        let mut l = Leases::with_salt(12345);
        let xs: Vec<f64> = (0..1000).map(|_| l.next_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| *x < 0.1) && xs.iter().any(|x| *x > 0.9));
    }
}
