//! The stampede decision for one GETORMARK: HIT, MISS (a new lease), STALE (with a refresh
//! lease, or without when someone refreshes), or BUSY; shared by the command and by parked
//! callers re-evaluated when their key is signalled.

use crate::accounting::stats_tenant;
use crate::entry::Entry;
use crate::fences::Action;
use crate::ffi;
use crate::keyspace::{now_ms, Key, Kind};
use crate::lease::Leases;
use crate::state::with_state;
use crate::stats::{Event, Tenant};
use redis_module::{Context, RedisString};

/// Longest BUSY retry suggestion, whatever is left on the lease.
const MAX_RETRY_MS: i64 = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct GetOptions {
    pub lease_ms: i64,
    /// XFetch beta, when EARLY was given.
    pub early_beta: Option<f64>,
    /// The TENANT option: whom a miss on a key without an entry is counted for (and the tenant
    /// recorded on a lease granted then).
    pub tenant: Option<Vec<u8>>,
}

/// What evaluating GETORMARK did.
pub enum Verdict {
    /// The answer (HIT, MISS, STALE) has been sent.
    Replied,
    /// No value and somebody else holds the lease: retry in this many ms.
    Busy(i64),
    WrongType,
}

fn reply_tagged(ctx: &Context, tag: &std::ffi::CStr, items: &[&[u8]]) {
    ffi::reply::tagged(ctx, tag, items);
}

pub fn reply_miss(ctx: &Context, token: &[u8]) {
    reply_tagged(ctx, c"MISS", &[token]);
}

pub fn reply_busy(ctx: &Context, retry_ms: i64) {
    ffi::reply::tagged_number(ctx, c"BUSY", retry_ms);
}

/// Suggested retry delay: time left on the current lease, capped.
pub fn retry_ms(leases: &Leases, db: i32, key: &[u8], now: i64) -> i64 {
    leases
        .current(db, key, now)
        .map_or(1, |l| l.deadline_ms.saturating_sub(now))
        .clamp(1, MAX_RETRY_MS)
}

/// What GETORMARK answers, decided from the entry found and the lease table alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A fresh value; `refresh` is a lease when XFetch chose this caller to refresh it early
    /// (answered as STALE with the token).
    Hit { refresh: Option<Vec<u8>> },
    /// A stale value; `refresh` is a lease unless another caller is refreshing it already.
    Stale { refresh: Option<Vec<u8>> },
    /// No value: this caller fills it under the lease.
    Miss { lease: Vec<u8> },
    /// No value and another caller's lease is live: retry in this many ms.
    Busy { retry_ms: i64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    pub decision: Decision,
    /// The tenant of a lease found past its deadline and dropped on the way.
    pub expired_lease_of: Option<Vec<u8>>,
}

impl Decided {
    /// The statistics events the answer counts (none for BUSY: the caller counts its miss
    /// only if it does not wait).
    pub fn events(&self) -> impl Iterator<Item = Event> {
        let (answer, granted) = match &self.decision {
            Decision::Hit { refresh } => (Some(Event::Hit), refresh.is_some()),
            Decision::Stale { refresh } => (Some(Event::StaleHit), refresh.is_some()),
            Decision::Miss { .. } => (Some(Event::Miss), true),
            Decision::Busy { .. } => (None, false),
        };
        answer.into_iter().chain(granted.then_some(Event::LeaseGranted))
    }
}

/// The entry a GETORMARK found at its key, and the key's remaining TTL.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub entry: &'a Entry,
    pub ttl_ms: Option<i64>,
}

impl Found<'_> {
    /// An entry a migration fence is about to delete is no value at all.
    fn usable(&self) -> bool {
        self.entry.fence() != Some(Action::Delete)
    }
}

/// The stampede decision, without Redis: `found` is what the key holds, `missing_tenant` whom
/// a lease on a key without a usable entry is recorded for, `now` the clock.
pub fn decide(found: Option<Found<'_>>, missing_tenant: &[u8], leases: &mut Leases, db: i32, key: &[u8], now: i64, opts: &GetOptions) -> Decided {
    let mut expired_lease_of = None;
    let mut grant = |leases: &mut Leases, tenant: &[u8]| {
        expired_lease_of = leases.expire(db, key, now);
        leases.grant(db, key, now, opts.lease_ms, tenant)
    };
    let decision = match found.filter(Found::usable) {
        Some(f) if f.entry.is_fresh(f.ttl_ms) && f.entry.fence().is_none() => {
            let chosen = early_refresh_chance(f, opts).is_some_and(|p| leases.current(db, key, now).is_none() && leases.next_unit() < p);
            Decision::Hit { refresh: if chosen { grant(leases, f.entry.tenant()) } else { None } }
        }
        Some(f) => Decision::Stale { refresh: grant(leases, f.entry.tenant()) },
        None => match grant(leases, missing_tenant) {
            Some(lease) => Decision::Miss { lease },
            None => Decision::Busy { retry_ms: retry_ms(leases, db, key, now) },
        },
    };
    Decided { decision, expired_lease_of }
}

/// XFetch: a fresh entry is handed out for refresh early with probability exp(−t / (β·Δ)),
/// t = fresh time left, Δ = how long its last fill took (never when that is unknown).
fn early_refresh_chance(found: Found<'_>, opts: &GetOptions) -> Option<f64> {
    let beta = opts.early_beta?;
    let left = found.entry.fresh_ms(found.ttl_ms)?;
    if found.entry.fill_ms() == 0 {
        return None;
    }
    Some((-(left as f64) / (beta * f64::from(found.entry.fill_ms()))).exp())
}

/// Evaluates GETORMARK for `key` now and answers unless the verdict is BUSY. Shared by the
/// command and by parked callers when their key is signalled.
pub fn evaluate(ctx: &Context, key: &RedisString, db: i32, opts: &GetOptions) -> Verdict {
    let name = key.as_slice();
    let now = now_ms();
    let mut handle = Key::read(ctx, key);
    if handle.kind() == Kind::Other {
        return Verdict::WrongType;
    }
    let ttl_ms = handle.ttl_ms();
    let found = handle.entry().map(|entry| Found { entry: &*entry, ttl_ms });
    let value: &[u8] = found.filter(Found::usable).map_or(&[], |f| f.entry.value());
    // Whom the statistics count: the entry's tenant, or for a key without one the tenant
    // worked out before the state is locked (it reads the index and the leases).
    let missing_tenant = match found.filter(Found::usable) {
        Some(_) => Vec::new(),
        None => stats_tenant(db, name, opts.tenant.as_deref()),
    };
    let tenant = found.filter(Found::usable).map_or(Tenant::Named(&missing_tenant), |f| Tenant::Shared(f.entry.tenant()));
    let decided = with_state(|s| {
        let decided = decide(found, &missing_tenant, &mut s.leases, db, name, now, opts);
        let ns = crate::policy::namespace(name, &s.separator);
        if let Some(old) = &decided.expired_lease_of {
            s.stats.record(Event::LeaseExpired, old, ns);
        }
        for event in decided.events() {
            s.stats.record(event, tenant, ns);
        }
        decided
    });
    match decided.decision {
        Decision::Hit { refresh: None } => reply_tagged(ctx, c"HIT", &[value]),
        Decision::Hit { refresh: Some(token) } | Decision::Stale { refresh: Some(token) } => {
            reply_tagged(ctx, c"STALE", &[value, &token])
        }
        Decision::Stale { refresh: None } => reply_tagged(ctx, c"STALE", &[value]),
        Decision::Miss { lease } => reply_miss(ctx, &lease),
        Decision::Busy { retry_ms } => return Verdict::Busy(retry_ms),
    }
    Verdict::Replied
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fences::Action;

    const DB: i32 = 0;
    const KEY: &[u8] = b"k";
    const T0: i64 = 1_000_000;

    fn opts(lease_ms: i64, early_beta: Option<f64>) -> GetOptions {
        GetOptions { lease_ms, early_beta, tenant: None }
    }

    fn entry(stale_ms: i64, fill_ms: u32) -> Box<Entry> {
        Entry::new(b"v", crate::name::Labels::new(b"t".as_slice().into(), Vec::new()), false, stale_ms, fill_ms).expect("allocated")
    }

    /// One GETORMARK at `now` against `found`, the key's entry and remaining TTL.
    fn ask(leases: &mut Leases, found: Option<(&Entry, Option<i64>)>, now: i64, o: &GetOptions) -> Decided {
        let found = found.map(|(entry, ttl_ms)| Found { entry, ttl_ms });
        decide(found, b"guest", leases, DB, KEY, now, o)
    }

    fn events(d: &Decided) -> Vec<Event> {
        d.events().collect()
    }

    #[test]
    fn a_fresh_entry_is_a_hit_and_takes_no_lease() {
        let mut leases = Leases::with_salt(1);
        let e = entry(0, 0);
        let d = ask(&mut leases, Some((&*e, Some(60_000))), T0, &opts(5_000, None));
        assert_eq!(d.decision, Decision::Hit { refresh: None });
        assert_eq!(events(&d), vec![Event::Hit]);
        assert!(leases.is_empty());
        let d = ask(&mut leases, Some((&*e, None)), T0, &opts(5_000, None));
        assert_eq!(d.decision, Decision::Hit { refresh: None }, "no TTL: fresh for ever");
    }

    #[test]
    fn a_missing_key_gives_one_lease_then_busy_until_its_deadline() {
        let mut leases = Leases::with_salt(2);
        let o = opts(300, None);
        let first = ask(&mut leases, None, T0, &o);
        let Decision::Miss { lease } = &first.decision else { panic!("{first:?}") };
        assert!(!lease.is_empty());
        assert_eq!(events(&first), vec![Event::Miss, Event::LeaseGranted]);
        assert_eq!(leases.tenant_of(DB, KEY), Some(&b"guest"[..]));
        let second = ask(&mut leases, None, T0 + 100, &o);
        assert_eq!(second.decision, Decision::Busy { retry_ms: 200 });
        assert_eq!(events(&second), vec![]);
        // Past the deadline the lease is dropped (counted for its tenant) and granted anew.
        let third = ask(&mut leases, None, T0 + 300, &o);
        assert!(matches!(&third.decision, Decision::Miss { lease: again } if again != lease), "{third:?}");
        assert_eq!(third.expired_lease_of.as_deref(), Some(&b"guest"[..]));
    }

    #[test]
    fn busy_retries_are_capped_and_never_zero() {
        let mut leases = Leases::with_salt(3);
        let o = opts(60_000, None);
        ask(&mut leases, None, T0, &o);
        assert_eq!(ask(&mut leases, None, T0, &o).decision, Decision::Busy { retry_ms: MAX_RETRY_MS });
        let short = opts(10, None);
        let mut leases = Leases::with_salt(4);
        ask(&mut leases, None, T0, &short);
        assert_eq!(ask(&mut leases, None, T0 + 9, &short).decision, Decision::Busy { retry_ms: 1 });
    }

    #[test]
    fn a_stale_entry_is_served_with_one_refresh_lease() {
        let mut leases = Leases::with_salt(5);
        let o = opts(1_000, None);
        // 10 s of TTL left, all of it stale window: stale now.
        let e = entry(10_000, 0);
        let first = ask(&mut leases, Some((&*e, Some(10_000))), T0, &o);
        assert!(matches!(first.decision, Decision::Stale { refresh: Some(_) }), "{first:?}");
        assert_eq!(events(&first), vec![Event::StaleHit, Event::LeaseGranted]);
        assert_eq!(leases.tenant_of(DB, KEY), Some(&b"t"[..]), "the entry's tenant, not the guess");
        let second = ask(&mut leases, Some((&*e, Some(9_500))), T0 + 500, &o);
        assert_eq!(second.decision, Decision::Stale { refresh: None });
        assert_eq!(events(&second), vec![Event::StaleHit]);
        let third = ask(&mut leases, Some((&*e, Some(8_900))), T0 + 1_100, &o);
        assert!(matches!(third.decision, Decision::Stale { refresh: Some(_) }), "the refresh lease ran out");
        assert_eq!(third.expired_lease_of.as_deref(), Some(&b"t"[..]));
    }

    #[test]
    fn fenced_entries_read_as_missing_or_stale() {
        let mut leases = Leases::with_salt(6);
        let o = opts(1_000, None);
        let mut deleted = entry(0, 0);
        deleted.set_fence(Some(Action::Delete));
        let d = ask(&mut leases, Some((&*deleted, Some(60_000))), T0, &o);
        assert!(matches!(d.decision, Decision::Miss { .. }), "{d:?}");
        assert_eq!(leases.tenant_of(DB, KEY), Some(&b"guest"[..]));
        let mut leases = Leases::with_salt(7);
        let mut staled = entry(0, 0);
        staled.set_fence(Some(Action::MarkStale));
        let d = ask(&mut leases, Some((&*staled, Some(60_000))), T0, &o);
        assert!(matches!(d.decision, Decision::Stale { refresh: Some(_) }), "{d:?}");
    }

    #[test]
    fn early_refresh_picks_one_caller_when_the_odds_are_certain_and_none_when_nil() {
        let e = entry(0, 1_000);
        let fresh = Some((&*e, Some(1_000)));
        // exp(-1000 / (1e12 · 1000)) ≈ 1: the first caller refreshes, the next do not (lease live).
        let mut leases = Leases::with_salt(8);
        let eager = opts(5_000, Some(1e12));
        let first = ask(&mut leases, fresh, T0, &eager);
        assert!(matches!(first.decision, Decision::Hit { refresh: Some(_) }), "{first:?}");
        assert_eq!(events(&first), vec![Event::Hit, Event::LeaseGranted]);
        assert_eq!(ask(&mut leases, fresh, T0 + 1, &eager).decision, Decision::Hit { refresh: None });
        // exp(-1000 / (1e-12 · 1000)) = 0: never.
        let mut leases = Leases::with_salt(9);
        let lazy = opts(5_000, Some(1e-12));
        for at in 0..100 {
            assert_eq!(ask(&mut leases, fresh, T0 + at, &lazy).decision, Decision::Hit { refresh: None });
        }
        // A fill time never measured gives no odds at all.
        let unmeasured = entry(0, 0);
        assert_eq!(ask(&mut leases, Some((&unmeasured, Some(1_000))), T0, &eager).decision, Decision::Hit { refresh: None });
    }
}
