//! Pure lease table for stampede protection: at most one lease per (db, key), opaque tokens not
//! bound to a connection, deadlines, parked-waiter counts, and the invalidation sequence that lets
//! a FILL be refused when an invalidation covering its key or tags came after the lease's grant.

use std::collections::{HashMap, VecDeque};

type LeaseKey = (i32, Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: Vec<u8>,
    pub granted_at_ms: i64,
    pub deadline_ms: i64,
    /// Invalidation sequence number when the lease was granted.
    pub granted_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No lease, another token, expired, abandoned, superseded by a SET or voided by an invalidation.
    NotCurrent,
    /// One of the FILL's tags was invalidated after the grant.
    TagInvalidated,
}

#[derive(Debug, Default)]
pub struct Leases {
    leases: HashMap<LeaseKey, Lease>,
    /// Parked callers per key, in arrival order (ids chosen by the caller).
    waiters: HashMap<LeaseKey, VecDeque<u64>>,
    /// Leases granted to a parked caller that has not been answered yet: waiter id → token.
    handoffs: HashMap<u64, Vec<u8>>,
    random: u64,
    seq: u64,
    tag_invalidated_at: HashMap<Vec<u8>, u64>,
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

    /// Drops a lease found past its deadline; true when one was dropped (an expiry to count).
    pub fn expire(&mut self, db: i32, key: &[u8], now_ms: i64) -> bool {
        if self.leases.is_empty() {
            return false;
        }
        let k = (db, key.to_vec());
        if self.leases.get(&k).is_some_and(|l| l.deadline_ms <= now_ms) {
            self.leases.remove(&k);
            return true;
        }
        false
    }

    /// Removes every lease past its deadline (whose holder never came back), returning the
    /// keys they were on so their expiry can be counted.
    pub fn sweep_expired(&mut self, now_ms: i64) -> Vec<(i32, Vec<u8>)> {
        let expired: Vec<LeaseKey> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.leases.remove(k);
        }
        if !expired.is_empty() {
            self.prune_tags();
        }
        expired
    }

    /// Grants a lease unless a live one exists. Returns the new token.
    pub fn grant(&mut self, db: i32, key: &[u8], now_ms: i64, length_ms: i64) -> Option<Vec<u8>> {
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
            },
        );
        Some(token)
    }

    /// Consumes the lease for a FILL carrying `tags`; the lease is gone whatever the outcome
    /// unless the token is simply not the current one.
    pub fn take_for_fill(
        &mut self,
        db: i32,
        key: &[u8],
        token: &[u8],
        tags: &[Vec<u8>],
        now_ms: i64,
    ) -> Result<Lease, Refusal> {
        let k = (db, key.to_vec());
        match self.leases.get(&k) {
            Some(l) if l.token == token && l.deadline_ms > now_ms => {}
            _ => return Err(Refusal::NotCurrent),
        }
        let lease = self.leases.remove(&k).ok_or(Refusal::NotCurrent)?;
        let invalidated = tags.iter().any(|t| {
            self.tag_invalidated_at
                .get(t)
                .is_some_and(|&seq| seq > lease.granted_seq)
        });
        self.prune_tags();
        if invalidated {
            return Err(Refusal::TagInvalidated);
        }
        Ok(lease)
    }

    /// Releases a lease held with `token`; false when it was not the current one.
    pub fn abandon(&mut self, db: i32, key: &[u8], token: &[u8], now_ms: i64) -> bool {
        let k = (db, key.to_vec());
        if self
            .leases
            .get(&k)
            .is_some_and(|l| l.token == token && l.deadline_ms > now_ms)
        {
            self.leases.remove(&k);
            self.prune_tags();
            return true;
        }
        false
    }

    /// Voids the lease on one key (SET, DEL, invalidation); true when there was one.
    pub fn void(&mut self, db: i32, key: &[u8]) -> bool {
        if self.leases.is_empty() {
            return false;
        }
        let voided = self.leases.remove(&(db, key.to_vec())).is_some();
        if voided {
            self.prune_tags();
        }
        voided
    }

    /// Keys (of `db`) that hold a lease, for pattern invalidations.
    pub fn keys_in_db(&self, db: i32) -> Vec<Vec<u8>> {
        self.leases
            .keys()
            .filter(|(d, _)| *d == db)
            .map(|(_, k)| k.clone())
            .collect()
    }

    /// Records an invalidation of `tags`: later FILLs carrying one of them with an older lease
    /// are refused.
    pub fn invalidate_tags(&mut self, tags: &[Vec<u8>]) {
        self.seq = self.seq.wrapping_add(1);
        if self.leases.is_empty() {
            // No lease can predate this call: nothing to remember.
            return;
        }
        for t in tags {
            self.tag_invalidated_at.insert(t.clone(), self.seq);
        }
    }

    /// Forgets tag invalidations no live lease can predate.
    fn prune_tags(&mut self) {
        match self.leases.values().map(|l| l.granted_seq).min() {
            None => self.tag_invalidated_at.clear(),
            Some(oldest) if self.tag_invalidated_at.len() > 1024 => {
                self.tag_invalidated_at.retain(|_, seq| *seq > oldest)
            }
            Some(_) => {}
        }
    }

    pub fn remembered_tags(&self) -> usize {
        self.tag_invalidated_at.len()
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
    pub fn hand_over(&mut self, db: i32, key: &[u8], now_ms: i64, length_of: impl Fn(u64) -> i64) -> Option<u64> {
        if self.current(db, key, now_ms).is_some() {
            return None;
        }
        let k = (db, key.to_vec());
        let id = self.waiters.get_mut(&k)?.pop_front()?;
        if self.waiters.get(&k).is_some_and(VecDeque::is_empty) {
            self.waiters.remove(&k);
        }
        let token = self.grant(db, key, now_ms, length_of(id))?;
        self.handoffs.insert(id, token);
        Some(id)
    }

    /// The token handed to waiter `id`, once.
    pub fn take_handoff(&mut self, id: u64) -> Option<Vec<u8>> {
        self.handoffs.remove(&id)
    }

    pub fn clear_db(&mut self, db: i32) {
        self.leases.retain(|(d, _), _| *d != db);
        self.prune_tags();
    }

    pub fn clear(&mut self) {
        self.leases.clear();
        self.tag_invalidated_at.clear();
    }

    /// Leases and parked callers follow their database through SWAPDB.
    pub fn swap(&mut self, a: i32, b: i32) {
        let swap = |d: i32| if d == a { b } else if d == b { a } else { d };
        self.leases = self.leases.drain().map(|((d, k), l)| ((swap(d), k), l)).collect();
        self.waiters = self.waiters.drain().map(|((d, k), w)| ((swap(d), k), w)).collect();
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
        let t1 = l.grant(0, b"k", 1000, 500).unwrap();
        assert!(l.grant(0, b"k", 1200, 500).is_none());
        assert!(l.grant(1, b"k", 1200, 500).is_some(), "other db, other lease");
        assert!(!l.expire(0, b"k", 1499));
        let t2 = l.grant(0, b"k", 1500, 500).unwrap();
        assert_ne!(t1, t2);
        assert_eq!(l.take_for_fill(0, b"k", &t1, &[], 1600), Err(Refusal::NotCurrent));
        assert!(l.take_for_fill(0, b"k", &t2, &[], 1600).is_ok());
        assert_eq!(l.take_for_fill(0, b"k", &t2, &[], 1600), Err(Refusal::NotCurrent));
    }

    #[test]
    fn expired_lease_cannot_fill_or_abandon() {
        let mut l = Leases::default();
        let t = l.grant(0, b"k", 0, 100).unwrap();
        assert!(!l.abandon(0, b"k", &t, 100));
        assert_eq!(l.take_for_fill(0, b"k", &t, &[], 100), Err(Refusal::NotCurrent));
        assert!(l.expire(0, b"k", 100));
    }

    #[test]
    fn sweep_removes_only_expired_leases() {
        let mut l = Leases::default();
        l.grant(0, b"old", 0, 10).unwrap();
        l.grant(1, b"live", 0, 1000).unwrap();
        assert_eq!(l.sweep_expired(10), vec![(0, b"old".to_vec())]);
        assert_eq!(l.len(), 1);
        assert!(l.sweep_expired(20).is_empty());
    }

    #[test]
    fn abandon_and_void_release_the_key() {
        let mut l = Leases::default();
        let t = l.grant(0, b"k", 0, 100).unwrap();
        assert!(!l.abandon(0, b"k", b"wrong", 1));
        assert!(l.abandon(0, b"k", &t, 1));
        let t = l.grant(0, b"k", 2, 100).unwrap();
        assert!(l.void(0, b"k"));
        assert_eq!(l.take_for_fill(0, b"k", &t, &[], 3), Err(Refusal::NotCurrent));
    }

    #[test]
    fn tag_invalidation_after_grant_refuses_fill() {
        let mut l = Leases::default();
        l.invalidate_tags(&tags(&["a"])); // before any lease: forgotten
        let t = l.grant(0, b"k", 0, 1000).unwrap();
        let lease = l.take_for_fill(0, b"k", &t, &tags(&["a"]), 1).unwrap();
        assert_eq!((lease.token, lease.granted_at_ms), (t, 0));
        let t = l.grant(0, b"k", 2, 1000).unwrap();
        l.invalidate_tags(&tags(&["b"]));
        assert_eq!(l.take_for_fill(0, b"k", &t, &tags(&["a", "b"]), 3), Err(Refusal::TagInvalidated));
        assert_eq!(l.remembered_tags(), 0, "no lease left: nothing remembered");
    }

    #[test]
    fn lease_granted_after_tag_invalidation_may_fill() {
        let mut l = Leases::default();
        let _other = l.grant(0, b"other", 0, 1000).unwrap();
        l.invalidate_tags(&tags(&["a"]));
        let t = l.grant(0, b"k", 1, 1000).unwrap();
        assert!(l.take_for_fill(0, b"k", &t, &tags(&["a"]), 2).is_ok());
    }

    #[test]
    fn waiters_and_db_moves() {
        let mut l = Leases::default();
        assert_eq!(l.add_waiter(0, b"k", 1), 1);
        assert_eq!(l.add_waiter(0, b"k", 2), 2);
        assert!(l.remove_waiter(0, b"k", 1));
        assert!(!l.remove_waiter(0, b"k", 1));
        assert!(l.remove_waiter(0, b"k", 2));
        assert_eq!(l.total_waiters(), 0);
        l.grant(0, b"k", 0, 100).unwrap();
        l.swap(0, 5);
        assert!(l.current(5, b"k", 1).is_some());
        assert_eq!(l.keys_in_db(5), vec![b"k".to_vec()]);
        l.clear_db(5);
        assert!(l.is_empty());
    }

    #[test]
    fn hand_over_goes_to_exactly_one_waiter_in_arrival_order() {
        let mut l = Leases::default();
        let t = l.grant(0, b"k", 0, 100).unwrap();
        for id in [7, 8, 9] {
            l.add_waiter(0, b"k", id);
        }
        assert_eq!(l.hand_over(0, b"k", 50, |_| 100), None, "lease still live");
        assert!(l.abandon(0, b"k", &t, 60));
        assert_eq!(l.hand_over(0, b"k", 60, |id| id as i64 * 10 + 30), Some(7));
        assert_eq!(l.current(0, b"k", 60).unwrap().deadline_ms, 160, "the waiter's own length");
        assert_eq!(l.hand_over(0, b"k", 61, |_| 100), None, "the new lease is live");
        let token = l.take_handoff(7).unwrap();
        assert_eq!(l.current(0, b"k", 61).unwrap().token, token);
        assert_eq!(l.take_handoff(7), None);
        assert_eq!(l.waiters_on(0, b"k"), 2);
        // At the new lease's deadline the next waiter takes over.
        assert_eq!(l.hand_over(0, b"k", 160, |_| 100), Some(8));
    }

    #[test]
    fn random_units_are_in_range() {
        let mut l = Leases::with_salt(12345);
        let xs: Vec<f64> = (0..1000).map(|_| l.next_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| *x < 0.1) && xs.iter().any(|x| *x > 0.9));
    }
}
