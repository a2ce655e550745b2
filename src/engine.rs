//! Operations shared by several commands: storing an entry with its index and replication,
//! removing or soft-expiring entries, ACL checks. Command modules parse and reply; this does.

use crate::commands::args::{err, CmdError, Expiry, Source, WriteOptions};
use crate::config;
use crate::entry::Entry;
use crate::index::Name;
use crate::ffi;
use crate::ffi::notify::Class;
use crate::keyspace::{self, Key, Kind};
use crate::parking;
use crate::policy;
use crate::state::with_state;
use crate::stats::Event;
use redis_module::{Context, RedisError, RedisString};

/// When a write's entry stops being fresh, and how long it may then be served stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// Absolute ms; `None` = never stale, no expiry.
    pub fresh_until: Option<i64>,
    pub stale_ms: i64,
}

impl Deadline {
    /// The key's TTL from `now` (fresh time plus stale window); `None` = no expiry.
    pub fn key_ttl_ms(&self, now: i64) -> Option<i64> {
        self.fresh_until
            .map(|f| f.saturating_add(self.stale_ms).saturating_sub(now))
    }
}

pub fn resolve_deadline(key: &[u8], opts: &WriteOptions, now: i64) -> Deadline {
    let rules = config::TTL_RULES.get();
    let rule = policy::rule_for(&rules, key);
    let fresh_until = match opts.expiry {
        Expiry::Never => None,
        Expiry::In(ms) => Some(now.saturating_add(ms)),
        Expiry::At(at) => Some(at),
        Expiry::Default => {
            let ttl_s = rule.map_or_else(|| config::get(&config::DEFAULT_TTL), |r| r.ttl_s);
            (ttl_s > 0).then(|| now.saturating_add(ttl_s.saturating_mul(1000)))
        }
    };
    let stale_s = opts
        .stale_s
        .or_else(|| rule.and_then(|r| r.stale_s))
        .unwrap_or_else(|| config::get(&config::DEFAULT_STALE));
    Deadline {
        fresh_until,
        stale_ms: stale_s.saturating_mul(1000),
    }
}

/// In a cluster a tenant's entries must live on the shard that owns slot `{tenant}`, where
/// `CACHE.INVALIDATE tenant …` and `CACHE.KEYS tenant …` are routed: a client's explicit TENANT
/// must hash to its key's slot (replayed writes are never refused).
pub fn check_tenant_slot(ctx: &Context, key: &[u8], explicit: Option<&RedisString>, source: Source) -> Result<(), CmdError> {
    let Some(tenant) = explicit else {
        return Ok(());
    };
    let tenant = policy::tenant_argument(tenant.as_slice());
    if source == Source::Replayed || !keyspace::in_cluster(ctx) || policy::key_slot(key) == policy::key_slot(tenant) {
        return Ok(());
    }
    Err(CmdError::Err(format!(
        "in a cluster, TENANT {} must hash to the key's slot ({} is in slot {}, tenant {} in slot {}): name the key with the hash tag {{{}}} or leave TENANT out",
        crate::commands::args::shown(tenant),
        crate::commands::args::shown(key),
        policy::key_slot(key),
        crate::commands::args::shown(tenant),
        policy::key_slot(tenant),
        crate::commands::args::shown(tenant),
    )))
}

/// The tenant of a write: TENANT option (`{t}` names the same tenant as `t`, as everywhere a
/// tenant is given), else derived from the key name.
pub fn resolve_tenant(key: &[u8], explicit: Option<&RedisString>) -> (Vec<u8>, bool) {
    match explicit {
        Some(t) => (policy::tenant_argument(t.as_slice()).to_vec(), true),
        None => (derived_tenant(key), false),
    }
}

pub use config::derived_tenant;
pub use crate::accounting::{record, stats_tenant};

/// A keyspace notification the module emits for a key it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// `cache.set` (module class, `d`).
    Set,
    /// `cache.fill` (module class).
    Fill,
    /// `cache.invalidate` (module class).
    Invalidate,
    /// `del` (generic class, as native DEL).
    Del,
}

/// Emits a keyspace notification, skipping all work when its class is not enabled.
pub fn notify(ctx: &Context, notice: Notice, key: &RedisString) {
    let (class, event) = match notice {
        Notice::Set => (Class::Module, c"cache.set"),
        Notice::Fill => (Class::Module, c"cache.fill"),
        Notice::Invalidate => (Class::Module, c"cache.invalidate"),
        Notice::Del => (Class::Generic, c"del"),
    };
    ffi::notify::notify(ctx, class, event, key);
}


fn is_from_primary_or_loading(ctx: &Context) -> bool {
    keyspace::is_replayed(ctx)
}

/// Whether the running command comes from a client (held to local limits) or is replayed.
pub fn source(ctx: &Context) -> Source {
    if is_from_primary_or_loading(ctx) {
        Source::Replayed
    } else {
        Source::Client
    }
}

/// Stores `entry` at `key` with `deadline`, indexes it, voids any lease on the key and
/// replicates the write with an absolute deadline. A deadline already past deletes the key
/// instead (as SET with a past EXAT does), except when replaying the primary's stream.
pub fn store(
    ctx: &Context,
    key: &RedisString,
    value: &RedisString,
    opts: &WriteOptions,
    entry: Option<Box<Entry>>,
    deadline: Deadline,
    notice: Notice,
) -> Result<(), RedisError> {
    let Some(mut entry) = entry else {
        return Err(err("could not allocate the entry"));
    };
    let name = key.as_slice();
    let now = keyspace::now_ms();
    let ttl = deadline.key_ttl_ms(now);
    let db = keyspace::selected_db(ctx.ctx);
    if ttl.is_some_and(|t| t <= 0) && !is_from_primary_or_loading(ctx) {
        let handle = Key::write(ctx, key);
        if handle.kind() != Kind::Missing {
            handle.delete();
            drop(handle);
            ctx.replicate("DEL", &[name]);
        }
        with_state(|s| s.leases.void(db, name));
        parking::hand_over(ctx, db, name);
        return Ok(());
    }
    let mut handle = Key::write(ctx, key);
    // Overwriting one of our entries swaps the value under the key: no unlink2, the TTL kept,
    // and the index is only touched when the tenant or tags change.
    let unchanged = handle.entry().map(|old| (old.labels() == entry.labels()).then(|| old.labels().clone()));
    let reindex = match unchanged {
        Some(same) => {
            if let Some(shared) = &same {
                // Same names: keep the labels the entry shares with the index.
                entry.relabel(|l| *l = shared.clone());
            }
            if !handle.replace_entry(entry) {
                return Err(err("could not store the entry"));
            }
            same.is_none()
        }
        None => {
            if !handle.set_entry(entry) {
                return Err(err("could not store the entry"));
            }
            true
        }
    };
    // A relative TTL keeps within a ms of the absolute deadline the replica receives.
    match ttl {
        Some(t) => handle.set_ttl_ms(Some(t.max(1))),
        None if handle.ttl_ms().is_some() => handle.set_ttl_ms(None),
        None => true,
    };
    let expires_at = handle.expires_at();
    let Some(stored) = handle.entry() else {
        return Err(err("could not store the entry"));
    };
    // Writes replayed from the primary or the AOF are not this server's traffic.
    let count = !is_from_primary_or_loading(ctx);
    with_state(|s| {
        s.forget_loaded_dead(db, name);
        // While invalidations are pending the entry may have left its sets already: a full
        // reindex puts it back (and stamps it with the current epoch).
        if reindex || s.index.db(db).is_some_and(crate::index::DbIndex::has_pending) {
            s.index_insert(db, name, stored, expires_at);
        } else {
            s.index.db_mut(db).rewritten(name, stored.footprint(name), expires_at);
        }
        s.leases.void(db, name);
        // `sets` counts CACHE.SET calls; a FILL is counted as a fill by its command.
        if count && notice == Notice::Set {
            s.stats.record(Event::Set, stored.tenant(), policy::namespace(name, &s.separator));
        }
    });
    drop(handle);
    notify(ctx, notice, key);
    replicate_set(ctx, key, value, opts, deadline);
    parking::signal_ready(ctx, db, key);
    Ok(())
}

/// Replicates a write as its canonical CACHE.SET with an absolute deadline.
fn replicate_set(ctx: &Context, key: &RedisString, value: &RedisString, opts: &WriteOptions, deadline: Deadline) {
    ffi::replicate::canonical_set_command(ctx, key, value, deadline.fresh_until, deadline.stale_ms, opts.tags, opts.tenant);
}

/// Deletes entries (never keys of other types); returns the names removed, each with its
/// entry's tenant. Replicated as one DEL of the removed keys.
pub fn delete_entries<'k>(ctx: &Context, keys: &'k [Vec<u8>], notice: Notice) -> Vec<(&'k [u8], Name)> {
    let mut removed: Vec<(&[u8], Name)> = Vec::new();
    for name in keys {
        let key = keyspace::string(ctx, name);
        let mut handle = Key::write(ctx, &key);
        // The tenant is read from the entry about to go: no index lookup per key.
        let Some(tenant) = handle.entry().map(|e| e.tenant().clone()) else {
            continue;
        };
        if handle.delete() {
            removed.push((name, tenant));
            notify(ctx, notice, &key);
        }
    }
    for chunk in removed.chunks(1024) {
        let names: Vec<&[u8]> = chunk.iter().map(|(name, _)| *name).collect();
        ctx.replicate("DEL", names.as_slice());
    }
    removed
}

/// Marks entries stale now: their TTL becomes their stale window (never longer than it was).
/// Entries without a stale window are deleted. Returns the names of the entries changed,
/// replicated as `PEXPIREAT k abs-ms` and one DEL of those deleted. Each name comes with its
/// entry's tenant.
pub fn soft_expire_entries<'k>(ctx: &Context, keys: &'k [Vec<u8>]) -> Vec<(&'k [u8], Name)> {
    let mut deleted: Vec<&[u8]> = Vec::new();
    let mut changed: Vec<(&[u8], Name)> = Vec::new();
    let now = keyspace::now_ms();
    for name in keys {
        let key = keyspace::string(ctx, name);
        let tenant = match make_stale(ctx, &key, now, now) {
            Staled::NotEntry => continue,
            Staled::Deleted(tenant) => {
                deleted.push(name);
                tenant
            }
            Staled::Expires(tenant, ttl) => {
                let at = now.saturating_add(ttl).to_string();
                ctx.replicate("PEXPIREAT", &[name.as_slice(), at.as_bytes()]);
                tenant
            }
        };
        notify(ctx, Notice::Invalidate, &key);
        changed.push((name, tenant));
    }
    for chunk in deleted.chunks(1024) {
        ctx.replicate("DEL", chunk);
    }
    changed
}

/// What `make_stale` did to a key.
enum Staled {
    NotEntry,
    /// Deleted (no stale window, or it had already ended); the entry's tenant.
    Deleted(Name),
    /// Expires in this many ms now.
    Expires(Name, i64),
}

/// Makes the entry at `key` stale as of `at_ms`: it expires at the latest when its stale
/// window, counted from `at_ms`, ends (never later than it did); an entry without a stale
/// window, or whose window has ended by `now`, is deleted.
/// Whether a SOFT invalidation made at `at_ms` deletes (rather than keeps stale) an entry
/// with this stale window, applied at `now`: it has none, or it has run out.
fn soft_deletes(at_ms: i64, stale_ms: i64, now: i64) -> bool {
    stale_ms <= 0 || at_ms.saturating_add(stale_ms) <= now
}

/// Whether `name` of the context's database is an entry a pending SOFT invalidation has not
/// reached yet and will delete (see `soft_deletes`): gone for readers that list entries.
pub fn soft_deleted_pending(ctx: &Context, name: &[u8]) -> bool {
    let db = keyspace::selected_db(ctx.ctx);
    let Some(at_ms) = with_state(|s| s.index.stale_since(db, name)) else {
        return false;
    };
    let key = keyspace::string(ctx, name);
    let mut handle = Key::read(ctx, &key);
    handle.entry().is_some_and(|e| soft_deletes(at_ms, e.stale_ms(), keyspace::now_ms()))
}

fn make_stale(ctx: &Context, key: &RedisString, at_ms: i64, now: i64) -> Staled {
    let mut handle = Key::write(ctx, key);
    let Some((tenant, stale_ms)) = handle.entry().map(|e| (e.tenant().clone(), e.stale_ms())) else {
        return Staled::NotEntry;
    };
    if soft_deletes(at_ms, stale_ms, now) {
        return if handle.delete() { Staled::Deleted(tenant) } else { Staled::NotEntry };
    }
    let ttl = at_ms.saturating_add(stale_ms).saturating_sub(now);
    let ttl = handle.ttl_ms().map_or(ttl, |t| t.min(ttl)).max(1);
    if handle.set_ttl_ms(Some(ttl)) {
        let (db, at) = (keyspace::selected_db(ctx.ctx), handle.expires_at());
        with_state(|s| s.index.db_mut(db).set_expiry(key.as_slice(), at));
        Staled::Expires(tenant, ttl)
    } else {
        Staled::NotEntry
    }
}

/// Removes the invalidated entry `name` of the context's database, with the notification and
/// (on a primary) the statistics an invalidation gives it.
pub fn remove_invalidated(ctx: &Context, name: &[u8], primary: bool) -> bool {
    let key = keyspace::string(ctx, name);
    let handle = Key::write(ctx, &key);
    let mut handle = handle;
    let Some(tenant) = handle.entry().map(|e| e.tenant().clone()) else {
        return false;
    };
    if !handle.delete() {
        return false;
    }
    drop(handle);
    notify(ctx, Notice::Invalidate, &key);
    if primary {
        record(Event::KeyInvalidated, &tenant, name);
    }
    true
}

/// Marks the entry `name` of the context's database stale as of `at_ms` (a SOFT invalidation
/// reaching it, see `make_stale`), with the notification and (on a primary) the statistics an
/// invalidation gives it. Not replicated: each server applies its own copy of the invalidation.
pub fn mark_stale(ctx: &Context, name: &[u8], at_ms: i64, primary: bool) -> bool {
    let key = keyspace::string(ctx, name);
    let tenant = match make_stale(ctx, &key, at_ms, keyspace::now_ms()) {
        Staled::NotEntry => return false,
        Staled::Deleted(tenant) | Staled::Expires(tenant, _) => tenant,
    };
    let db = keyspace::selected_db(ctx.ctx);
    with_state(|s| s.index.restamp(db, name));
    notify(ctx, Notice::Invalidate, &key);
    if primary {
        record(Event::KeyInvalidated, &tenant, name);
    }
    true
}

/// Applies a pending invalidation to `name` of the context's database if one covers it and
/// has not reached it yet: a dead entry is removed, a stale one gets its shortened TTL. True
/// when it did something.
pub fn settle_key(ctx: &Context, name: &[u8]) -> bool {
    let db = keyspace::selected_db(ctx.ctx);
    let (dead, stale) = with_state(|s| (s.index.is_dead(db, name), s.index.stale_since(db, name)));
    let primary = keyspace::is_primary(ctx);
    if dead {
        remove_invalidated(ctx, name, primary)
    } else if let Some(at_ms) = stale {
        mark_stale(ctx, name, at_ms, primary)
    } else {
        false
    }
}

/// A command about to use `name` in the context's database (our own commands inside MULTI or
/// a script, which the filter saw at queue time): apply a pending invalidation to it first.
pub fn purge_key(ctx: &Context, name: &[u8]) {
    if crate::state::RECLAIM_PENDING.load(std::sync::atomic::Ordering::Relaxed) {
        settle_key(ctx, name);
    }
}

/// The calling client's ACL user name; None for commands replayed from the primary or the AOF
/// (they act for nobody in particular and are never refused).
pub fn current_user(ctx: &Context) -> Option<Vec<u8>> {
    if is_from_primary_or_loading(ctx) {
        return None;
    }
    ffi::acl::current_user_name(ctx)
}

/// Whether a fence (a tag or migration fence) set by `user` applies to `key`: a fence set by
/// nobody in particular (replayed) or by a user who no longer exists applies to every key; a
/// user's fence applies to the keys that user may write.
pub fn fence_applies(ctx: &Context, user: Option<&[u8]>, key: &[u8]) -> bool {
    match user {
        None => true,
        Some(user) => ffi::acl::may_write(ctx, user, key).unwrap_or(true),
    }
}

/// `check_write_permission` for an invalidation of any size: a user who may write every key is
/// not checked key by key (and `keys` is never built for it).
pub fn check_write_permission_bulk(ctx: &Context, keys: impl FnOnce() -> Vec<Vec<u8>>) -> Result<(), RedisError> {
    let Some(user) = current_user(ctx) else {
        return Ok(());
    };
    if ffi::acl::may_write_every_key(ctx, &user) {
        return Ok(());
    }
    check_write_permission(ctx, &keys())
}

/// Checks that the calling user may delete/overwrite every key; `NOPERM` names the first that
/// it may not. Commands replayed from the primary or the AOF are not checked.
pub fn check_write_permission(ctx: &Context, keys: &[Vec<u8>]) -> Result<(), RedisError> {
    if keys.is_empty() {
        return Ok(());
    }
    let Some(user) = current_user(ctx) else {
        return Ok(());
    };
    match ffi::acl::first_unwritable(ctx, &user, keys) {
        None => Ok(()),
        Some(denied) => Err(CmdError::NoPerm(format!(
            "this user has no permissions to access the '{}' key",
            crate::commands::args::shown(denied)
        ))
        .into()),
    }
}
