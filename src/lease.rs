//! Pure lease table for stampede protection: at most one lease per (db, key), opaque tokens not
//! bound to a connection, deadlines, parked-waiter counts, and the invalidation sequence that lets
//! a FILL be refused when an invalidation covering its key or tags came after the lease's grant.

use crate::mem::Shrink;
use std::collections::{HashMap, HashSet, VecDeque};

type LeaseKey = (i32, Vec<u8>);

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

#[derive(Debug, Default)]
pub struct Leases {
    leases: HashMap<LeaseKey, Lease>,
    /// Parked callers per key, in arrival order (ids chosen by the caller).
    waiters: HashMap<LeaseKey, VecDeque<u64>>,
    /// Leases granted to a parked caller that has not been answered yet: waiter id → token.
    handoffs: HashMap<u64, Vec<u8>>,
    /// Parked callers told to retry because their database was flushed, swapped or reloaded.
    released: HashSet<u64>,
    random: u64,
    seq: u64,
    tag_fences: HashMap<Vec<u8>, Vec<Fence>>,
    next_token: u64,
    salt: u64,
}

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
        self.leases.values().filter(|l| l.deadline_ms > now_ms).count()
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
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The current lease on a key, if any and not past its deadline.
    pub fn current(&self, db: i32, key: &[u8], now_ms: i64) -> Option<&Lease> {
        if self.leases.is_empty() {
            return None;
        }
        self.leases
            .get(&(db, key.to_vec()))
            .filter(|l| l.deadline_ms > now_ms)
    }

    /// Drops a lease found past its deadline; returns its tenant when one was dropped (an
    /// expiry to count).
    pub fn expire(&mut self, db: i32, key: &[u8], now_ms: i64) -> Option<Vec<u8>> {
        if self.leases.is_empty() {
            return None;
        }
        let k = (db, key.to_vec());
        if self.leases.get(&k).is_some_and(|l| l.deadline_ms <= now_ms) {
            return self.remove(&k).map(|l| l.tenant);
        }
        None
    }

    /// Removes a lease, forgetting fences no remaining lease can predate.
    fn remove(&mut self, k: &LeaseKey) -> Option<Lease> {
        let lease = self.leases.remove(k)?;
        self.leases.shrink_if_sparse();
        self.prune_fences();
        Some(lease)
    }

    /// Removes every lease past its deadline (whose holder never came back), returning the
    /// keys they were on and their tenants so their expiry can be counted.
    pub fn sweep_expired(&mut self, now_ms: i64) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
        let expired: Vec<LeaseKey> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        let mut swept = Vec::with_capacity(expired.len());
        for (db, key) in expired {
            if let Some(l) = self.leases.remove(&(db, key.clone())) {
                swept.push((db, key, l.tenant));
            }
        }
        if !swept.is_empty() {
            self.leases.shrink_if_sparse();
            self.prune_fences();
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
        self.leases.insert(
            (db, key.to_vec()),
            Lease {
                token: token.clone(),
                granted_at_ms: now_ms,
                deadline_ms: now_ms.saturating_add(length_ms),
                granted_seq: self.seq,
                tenant: tenant.to_vec(),
            },
        );
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
        let k = (db, key.to_vec());
        match self.leases.get(&k) {
            Some(l) if l.token == token && l.deadline_ms > now_ms => {}
            _ => return Err(Refusal::NotCurrent),
        }
        let lease = self.leases.remove(&k).ok_or(Refusal::NotCurrent)?;
        let fences: Vec<Fence> = tags
            .iter()
            .filter_map(|t| self.tag_fences.get(t))
            .flatten()
            .filter(|f| f.seq > lease.granted_seq)
            .cloned()
            .collect();
        self.leases.shrink_if_sparse();
        self.prune_fences();
        Ok((lease, fences))
    }

    /// Releases a lease held with `token`; returns its tenant, or None when it was not the
    /// current one.
    pub fn abandon(&mut self, db: i32, key: &[u8], token: &[u8], now_ms: i64) -> Option<Vec<u8>> {
        let k = (db, key.to_vec());
        if self
            .leases
            .get(&k)
            .is_some_and(|l| l.token == token && l.deadline_ms > now_ms)
        {
            return self.remove(&k).map(|l| l.tenant);
        }
        None
    }

    /// Voids the lease on one key (SET, DEL, invalidation); true when there was one.
    pub fn void(&mut self, db: i32, key: &[u8]) -> bool {
        if self.leases.is_empty() {
            return false;
        }
        self.remove(&(db, key.to_vec())).is_some()
    }

    /// The tenant recorded on the lease of a key (live or not).
    pub fn tenant_of(&self, db: i32, key: &[u8]) -> Option<&[u8]> {
        if self.leases.is_empty() {
            return None;
        }
        self.leases.get(&(db, key.to_vec())).map(|l| l.tenant.as_slice())
    }

    /// Keys (of `db`) that hold a lease, for pattern invalidations.
    pub fn keys_in_db(&self, db: i32) -> Vec<Vec<u8>> {
        self.leases
            .keys()
            .filter(|(d, _)| *d == db)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Records an invalidation of `tags` by `user` (None: applies to every key): later FILLs
    /// carrying one of them with an older lease are refused where the fence applies.
    pub fn invalidate_tags(&mut self, tags: &[Vec<u8>], user: Option<&[u8]>) {
        self.seq = self.seq.wrapping_add(1);
        if self.leases.is_empty() {
            // No lease can predate this call: nothing to remember.
            return;
        }
        let fence = Fence { seq: self.seq, user: user.map(<[u8]>::to_vec) };
        for t in tags {
            let fences = self.tag_fences.entry(t.clone()).or_default();
            // One fence per (tag, user): the newest covers every older lease the older one did.
            fences.retain(|f| f.user != fence.user);
            fences.push(fence.clone());
        }
    }

    /// Forgets fences no live lease can predate.
    fn prune_fences(&mut self) {
        if self.tag_fences.is_empty() {
            return;
        }
        match self.leases.values().map(|l| l.granted_seq).min() {
            None => {
                self.tag_fences.clear();
                self.tag_fences.shrink_if_sparse();
            }
            Some(oldest) if self.tag_fences.len() > 1024 => {
                self.tag_fences.retain(|_, fences| {
                    fences.retain(|f| f.seq > oldest);
                    !fences.is_empty()
                });
                self.tag_fences.shrink_if_sparse();
            }
            Some(_) => {}
        }
    }

    pub fn remembered_tags(&self) -> usize {
        self.tag_fences.len()
    }

    /// Parks waiter `id` on a key; returns how many wait on it now.
    pub fn add_waiter(&mut self, db: i32, key: &[u8], id: u64) -> usize {
        let queue = self.waiters.entry((db, key.to_vec())).or_default();
        queue.push_back(id);
        queue.len()
    }

    /// Removes a waiter (answered, timed out or gone); false when it was not queued.
    pub fn remove_waiter(&mut self, db: i32, key: &[u8], id: u64) -> bool {
        let k = (db, key.to_vec());
        let Some(queue) = self.waiters.get_mut(&k) else {
            return false;
        };
        let before = queue.len();
        queue.retain(|w| *w != id);
        let removed = queue.len() != before;
        if queue.is_empty() {
            self.waiters.remove(&k);
            self.waiters.shrink_if_sparse();
        }
        removed
    }

    pub fn waiters_on(&self, db: i32, key: &[u8]) -> usize {
        if self.waiters.is_empty() {
            return 0;
        }
        self.waiters.get(&(db, key.to_vec())).map_or(0, VecDeque::len)
    }

    pub fn total_waiters(&self) -> usize {
        self.waiters.values().map(VecDeque::len).sum()
    }

    /// When the key has waiters and no live lease: grants a lease to the longest-waiting one,
    /// takes it out of the queue and returns its id (its token is kept for `take_handoff`).
    /// `lease_of(id)` gives the lease length and tenant that waiter asked for.
    pub fn hand_over(&mut self, db: i32, key: &[u8], now_ms: i64, lease_of: impl Fn(u64) -> (i64, Vec<u8>)) -> Option<u64> {
        if self.current(db, key, now_ms).is_some() {
            return None;
        }
        let k = (db, key.to_vec());
        let id = self.waiters.get_mut(&k)?.pop_front()?;
        if self.waiters.get(&k).is_some_and(VecDeque::is_empty) {
            self.waiters.remove(&k);
        }
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
        self.leases.retain(|(d, _), _| !hit(d));
        self.leases.shrink_if_sparse();
        self.prune_fences();
        let mut ids = Vec::new();
        self.waiters.retain(|(d, _), queue| {
            if hit(d) {
                ids.extend(queue.drain(..));
                false
            } else {
                true
            }
        });
        self.waiters.shrink_if_sparse();
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
        l.invalidate_tags(&tags(&["a"]), None); // before any lease: forgotten
        let t = l.grant(0, b"k", 0, 1000, b"t").unwrap();
        let (lease, fences) = l.take_for_fill(0, b"k", &t, &tags(&["a"]), 1).unwrap();
        assert_eq!((lease.token, lease.granted_at_ms, fences.len()), (t, 0, 0));
        let t = l.grant(0, b"k", 2, 1000, b"t").unwrap();
        l.invalidate_tags(&tags(&["b"]), Some(b"alice"));
        l.invalidate_tags(&tags(&["b"]), Some(b"alice"));
        l.invalidate_tags(&tags(&["c"]), None);
        let (_, fences) = l.take_for_fill(0, b"k", &t, &tags(&["a", "b"]), 3).unwrap();
        assert_eq!(fences, vec![Fence { seq: 3, user: Some(b"alice".to_vec()) }], "one per (tag, user), newest");
        assert_eq!(l.remembered_tags(), 0, "no lease left: nothing remembered");
    }

    #[test]
    fn lease_granted_after_tag_invalidation_may_fill() {
        let mut l = Leases::default();
        let _other = l.grant(0, b"other", 0, 1000, b"t").unwrap();
        l.invalidate_tags(&tags(&["a"]), None);
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
        assert_eq!(l.keys_in_db(5), vec![b"k".to_vec()]);
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
    fn random_units_are_in_range() {
        let mut l = Leases::with_salt(12345);
        let xs: Vec<f64> = (0..1000).map(|_| l.next_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| *x < 0.1) && xs.iter().any(|x| *x > 0.9));
    }
}
