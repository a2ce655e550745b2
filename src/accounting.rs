//! Which tenant and namespace each statistic of a key is counted under.

use crate::config::derived_tenant;
use crate::policy;
use crate::state::with_state;
use crate::stats::{Event, Tenant};

/// The tenant every statistic of a key is counted under, so that no key's counters are split:
/// the tenant of its entry when it has one, else the tenant recorded on its lease, else the
/// caller's `TENANT` hint, else the tenant derived from its name.
pub fn stats_tenant(db: i32, key: &[u8], hint: Option<&[u8]>) -> Vec<u8> {
    let known = with_state(|s| {
        s.index
            .db(db)
            .and_then(|ix| ix.tenant_of(key))
            .or_else(|| s.leases.tenant_of(db, key))
            .map(<[u8]>::to_vec)
    });
    known
        .or_else(|| hint.map(<[u8]>::to_vec))
        .unwrap_or_else(|| derived_tenant(key))
}

pub fn record<'a>(event: Event, tenant: impl Into<Tenant<'a>>, key: &[u8]) {
    let tenant = tenant.into();
    with_state(|s| s.stats.record(event, tenant, policy::namespace(key, &s.separator)));
}
