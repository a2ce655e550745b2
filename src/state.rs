//! The module's one global state. Only Redis's main thread touches it; the mutex is there to make
//! that safe to express, and is never held across a Redis API call (keyspace callbacks such as
//! `unlink2` re-enter it while a command runs).

use crate::entry::Entry;
use crate::fences::MigrationFences;
use crate::index::Index;
use crate::lease::Leases;
use crate::policy;
use crate::stats::Stats;
use lazy_static::lazy_static;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// A client parked by GETORMARK … WAIT.
#[derive(Debug, Clone)]
pub struct ParkedClient {
    /// The blocked client, valid until its `on_free` runs (which removes this record).
    pub handle: crate::ffi::blocking::Handle,
    /// The LEASE length the caller asked for, used if a lease is handed to it.
    pub lease_ms: i64,
    /// The tenant its events (and a lease handed to it) are counted under.
    pub tenant: Vec<u8>,
}

/// An invalidation whose answer is still being counted (see `pending::Count`).
#[derive(Debug)]
pub struct Waiting {
    /// The blocked caller; None when nobody waits for the number (a replicated command).
    pub waiter: Option<crate::ffi::blocking::Waiter>,
    /// What the log line of a large invalidation names.
    pub what: String,
    pub started: std::time::Instant,
}

/// Reclamation figures for CACHE.STATS / INFO (see `reclaim`).
#[derive(Debug, Default, Clone, Copy)]
pub struct ReclaimStats {
    pub slices: u64,
    pub longest_slice_us: u64,
    pub reclaimed: u64,
    /// A slice timer is armed.
    pub armed: bool,
}

#[derive(Debug, Default)]
pub struct State {
    pub index: Index,
    pub stats: Stats,
    pub leases: Leases,
    pub parked: HashMap<u64, ParkedClient>,
    pub next_waiter_id: u64,
    /// Keys (db, name) with a lease-deadline timer armed, and the deadline it fires at.
    pub timers: HashMap<(i32, Vec<u8>), i64>,
    /// When expired leases were last swept (ms).
    pub last_sweep_ms: i64,
    /// Recent invalidations, applied to entries arriving by MIGRATE/RESTORE (cluster mode).
    pub migration_fences: MigrationFences,
    /// `tagcache.namespace-separator`, kept here for the per-operation statistics.
    pub separator: Vec<u8>,
    /// The index matches the keyspace (false from a load's start until its rebuild).
    pub index_ready: bool,
    /// The load under way must be followed by a walk over the keyspace even if it reads no
    /// entry: the index held keys when it started (a load that keeps them, `DEBUG RELOAD
    /// NOFLUSH`, would otherwise leave them out).
    pub walk_after_load: bool,
    /// Reclamation of invalidated entries (see `reclaim`).
    pub reclaim: ReclaimStats,
    /// While a dataset loads: the entries it listed as invalidated, per database.
    pub loaded_dead: HashMap<i32, std::collections::HashSet<crate::index::Name>>,
    /// While a dataset loads: the entries it listed as stale by a SOFT invalidation, with
    /// since when, per database.
    pub loaded_stale: HashMap<i32, HashMap<crate::index::Name, i64>>,
    /// Invalidations still counting their answer, by ticket.
    pub waiting: HashMap<u64, Waiting>,
    pub next_ticket: u64,
}

impl State {
    /// A new ticket for an invalidation's answer.
    pub fn ticket(&mut self) -> u64 {
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.next_ticket
    }

    /// Indexes a key expiring at `expires_at` (replacing what was indexed for it) and keeps namespace key counts exact.
    /// The entry then shares the index's copies of its tenant and tag names.
    pub fn index_insert(&mut self, db: i32, key: &[u8], entry: &mut Entry, expires_at: i64) {
        let bytes = entry.footprint(key);
        let replaced = entry.relabel(|labels| self.index.db_mut(db).insert(key, labels, bytes, expires_at));
        if !replaced {
            self.stats.key_added(policy::namespace(key, &self.separator));
        }
    }

    /// A key written or removed while a dataset loads is no longer the entry its saved list of
    /// invalidated names meant.
    pub fn forget_loaded_dead(&mut self, db: i32, name: &[u8]) {
        if let Some(names) = self.loaded_dead.get_mut(&db) {
            names.remove(name);
        }
        if let Some(names) = self.loaded_stale.get_mut(&db) {
            names.remove(name);
        }
    }

    /// Forgets a key; true when it was indexed.
    pub fn index_remove(&mut self, db: i32, key: &[u8]) -> bool {
        self.forget_loaded_dead(db, key);
        let removed = self.index.remove(db, key);
        if removed {
            self.stats.key_removed(policy::namespace(key, &self.separator));
        }
        removed
    }
}

/// Set when an invalidation is left to reclaim; cleared by the reclaimer's slice that finds
/// nothing left. The command filter reads it on every command, so it is an atomic outside the
/// state's lock.
pub static RECLAIM_PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

lazy_static! {
    static ref STATE: Mutex<State> = Mutex::new(State::default());
}

/// Runs `f` on the global state. Never call Redis from inside `f`.
pub fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut guard = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut guard)
}

impl State {
    /// Recomputes namespace key counts from the index (after a flush drops whole databases).
    pub fn recount_namespaces(&mut self, sep: &[u8]) {
        self.stats.forget_keys();
        for (_, ix) in self.index.dbs() {
            for key in ix.keys() {
                self.stats.key_added(policy::namespace(key, sep));
            }
        }
    }
}
