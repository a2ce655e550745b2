//! What the module does when keys and databases change under it, so the index stays exact
//! however a key appears, disappears or moves. Only module memory is touched here (7.0 forbids
//! keyspace writes from these callbacks); `ffi::events` calls in.

use crate::config;
use crate::config::derived_tenant;
use crate::fences::{strongest, Action};
use crate::ffi::blocking::start_timer;
use crate::ffi::events::{for_each_entry, Hooks, Loading};
use crate::keyspace::{self, Key};
use crate::state::with_state;
use redis_module::{Context, NotifyEvent, RedisString};

/// The hooks `ffi::events` calls.
pub fn hooks() -> Hooks {
    Hooks { key_unlinked, flushed, swapped, loading, cron: sweep_leases }
}

/// A key left the keyspace (DEL, UNLINK, expiry, eviction, overwrite, RENAME's old name,
/// MOVE's source). The lease stays: it is on the key, not on the value, so expiry and eviction
/// of a stale value must not void a refresher's lease. Deliberate removals void it
/// (`on_keyspace_event`).
fn key_unlinked(db: i32, name: &[u8]) {
    with_state(|s| s.index_remove(db, name));
}

/// Generic keyspace events: a key deleted by DEL/UNLINK loses its lease; a key that arrives
/// under a new name or in a new database is (re)indexed from the entry itself, and the value
/// that arrived voids any lease on that name (as a SET would).
pub fn on_keyspace_event(ctx: &Context, _kind: NotifyEvent, event: &str, key: &[u8]) {
    let arrived = matches!(event, "rename_to" | "move_to" | "copy_to" | "restore");
    if arrived || event == "del" {
        let db = keyspace::selected_db(ctx.ctx);
        let had_lease = with_state(|s| s.leases.void(db, key));
        if had_lease {
            crate::parking::hand_over(ctx, db, key);
        }
    }
    if arrived {
        let name = keyspace::string(ctx, key);
        reindex_key(ctx, &name);
        if event == "restore" {
            fence_arrival(ctx, &name);
        }
    }
    if matches!(event, "expire" | "persist") {
        expiry_changed(ctx, key);
    }
}

/// EXPIRE, PEXPIREAT (a primary's, replayed), PERSIST… moved an entry's TTL: the index follows,
/// so invalidation counts leave out exactly the entries expired by then.
fn expiry_changed(ctx: &Context, key: &[u8]) {
    let db = keyspace::selected_db(ctx.ctx);
    if !with_state(|s| s.index.db(db).is_some_and(|ix| ix.contains(key))) {
        return;
    }
    let at = Key::peek(ctx, &keyspace::string(ctx, key)).expires_at();
    with_state(|s| s.index.db_mut(db).set_expiry(key, at));
}

/// An entry that arrived by MIGRATE/RESTORE under a recent invalidation's fence (the other
/// side of a slot migration, where that invalidation never ran) is invalidated now: reads treat
/// it as missing (or stale) at once, and a timer removes it (no keyspace writes from this
/// callback). Only a primary does this; its replicas receive the DEL/PEXPIREAT.
fn fence_arrival(ctx: &Context, name: &RedisString) {
    if !keyspace::is_primary(ctx) {
        return;
    }
    let db = keyspace::selected_db(ctx.ctx);
    let now = keyspace::now_ms();
    let mut key = Key::peek(ctx, name);
    let Some(entry) = key.entry() else {
        return;
    };
    let covers = with_state(|s| {
        if s.migration_fences.is_empty() {
            return Vec::new();
        }
        s.migration_fences.prune(now);
        s.migration_fences.covering(db, name.as_slice(), entry.tenant(), entry.tags(), now)
    });
    // A fence applies only to keys the user who set it may write.
    let applying = covers
        .into_iter()
        .filter(|c| crate::engine::fence_applies(ctx, c.user.as_deref(), name.as_slice()))
        .map(|c| c.action);
    let Some(action) = strongest(applying) else {
        return;
    };
    entry.set_fence(Some(action));
    drop(key);
    start_timer(ctx, 0, (db, name.as_slice().to_vec(), action), invalidate_fenced);
}

/// Removes (or marks stale) an entry fenced on arrival — if it is still that entry: a write in
/// between replaced it and clears the mark.
fn invalidate_fenced(ctx: &Context, (db, key, action): (i32, Vec<u8>, Action)) {
    if !keyspace::is_primary(ctx) || !keyspace::select_db(ctx, db) {
        return;
    }
    let name = keyspace::string(ctx, &key);
    let tenant = {
        let mut handle = Key::peek(ctx, &name);
        match handle.entry() {
            Some(e) if e.fence() == Some(action) => {
                e.set_fence(None);
                e.tenant().clone()
            }
            _ => return,
        }
    };
    let keys = [key];
    let changed = match action {
        Action::Delete => crate::engine::delete_entries(ctx, &keys, crate::engine::Notice::Invalidate).len(),
        Action::MarkStale => crate::engine::soft_expire_entries(ctx, &keys).len(),
    };
    if changed > 0 {
        crate::accounting::record(crate::stats::Event::KeyInvalidated, &tenant, &keys[0]);
    }
}

/// Indexes the entry at `name` in the context's selected db (a derived tenant follows the name).
pub fn reindex_key(ctx: &Context, name: &RedisString) {
    let mut key = Key::peek(ctx, name);
    let expires_at = key.expires_at();
    let Some(entry) = key.entry() else {
        return;
    };
    let bytes = name.as_slice();
    if !entry.tenant_explicit() {
        entry.set_tenant(derived_tenant(bytes).into());
    }
    let db = keyspace::selected_db(ctx.ctx);
    with_state(|s| s.index_insert(db, bytes, entry, expires_at));
}

/// Rebuilds the whole index from the keyspace (after RDB/AOF load or a replica's full sync),
/// in one pass over the scan's own key handles.
pub fn rebuild_index(ctx: &Context) {
    let regex = config::TENANT_REGEX.get();
    with_state(|s| {
        s.index.clear();
        s.stats.forget_keys();
        s.index.begin_bulk();
    });
    let mut presized = None;
    for_each_entry(ctx, |db, name, entry, expires_at| {
        if presized != Some(db) {
            presized = Some(db);
            // Room for this database's keys, but never for more entries than the load read
            // (a database may hold many keys of other types).
            let keys = keyspace::db_size(ctx).min(crate::ffi::datatype::entries_loaded());
            with_state(|s| s.index.presize(db, keys));
        }
        if !entry.tenant_explicit() {
            // Derived when written: derived again only under another tenant regex.
            let tenant = crate::policy::tenant_from_key(name, regex.as_ref().as_ref());
            if entry.tenant().as_bytes() != tenant {
                entry.set_tenant(tenant.into());
            }
        }
        with_state(|s| s.index_insert(db, name, entry, expires_at));
    });
    with_state(|s| {
        s.index.end_bulk();
        s.index_ready = true;
    });
}

/// The load ended: the entries it read from an RDB (a snapshot, a full sync, an AOF's
/// preamble, RESTORE) are indexed by one pass over the keyspace. A load that read none (a plain
/// AOF, a dataset without entries) skips that pass: the replayed writes indexed themselves, and
/// a dataset of other types must not pay for a walk over all its keys. A failed load, or one
/// that started while entries were indexed, always walks.
fn index_loaded(ctx: &Context, failed: bool) {
    let entries = crate::ffi::datatype::entries_loaded();
    if entries == 0 && !failed && !with_state(|s| s.walk_after_load) {
        with_state(|s| s.index_ready = true);
        return;
    }
    let started = std::time::Instant::now();
    rebuild_index(ctx);
    redis_module::logging::log_notice(format!(
        "tagcache: index rebuilt after the load ({entries} entries read) in {} ms",
        started.elapsed().as_millis()
    ));
}

/// FLUSHDB (`Some(db)`) or FLUSHALL: forget the index, release parked callers and leases.
fn flushed(db: Option<i32>) {
    let sep = config::NAMESPACE_SEPARATOR.get();
    with_state(|s| {
        match db {
            Some(db) => s.index.clear_db(db),
            None => s.index.clear(),
        }
        s.recount_namespaces(&sep);
    });
    crate::reclaim::answer_counted();
    crate::parking::release_dbs(db.as_ref().map(std::slice::from_ref));
}

/// SWAPDB: the index follows the data; connections, their leases and parked callers stay with
/// the database number, so the leases of both are voided and their callers retry.
fn swapped(a: i32, b: i32) {
    with_state(|s| s.index.swap(a, b));
    crate::parking::release_dbs(Some(&[a, b]));
}

fn loading(ctx: &Context, phase: Loading) {
    match phase {
        Loading::Ended | Loading::Failed => {
            crate::ffi::datatype::load_ended();
            index_loaded(ctx, matches!(phase, Loading::Failed));
            crate::reclaim::after_load(ctx);
        }
        Loading::Started => {
            // The data set is being replaced: nothing indexed or leased survives.
            crate::ffi::datatype::load_started();
            with_state(|s| {
                s.walk_after_load = s.index.total_keys() > 0;
                s.index.clear();
                s.stats.forget_keys();
                s.loaded_dead.clear();
                s.loaded_stale.clear();
                s.index_ready = false;
            });
            crate::reclaim::answer_counted();
            crate::parking::release_dbs(None);
        }
    }
}

/// Once a second: drop leases whose holder never filled, abandoned or came back (keys that
/// nobody asks for again would otherwise keep them forever). Parked callers of such a key are
/// still served by its deadline timer, which hands a new lease on.
fn sweep_leases(_ctx: &Context) {
    let now = keyspace::now_ms();
    let swept = with_state(|s| {
        if now.saturating_sub(s.last_sweep_ms) < 1000 || s.leases.is_empty() {
            return Vec::new();
        }
        s.last_sweep_ms = now;
        s.leases.sweep_expired(now)
    });
    for (_, key, tenant) in swept {
        crate::accounting::record(crate::stats::Event::LeaseExpired, &tenant, &key);
    }
}
