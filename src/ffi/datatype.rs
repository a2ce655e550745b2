//! The `tagcache0` native type's callbacks: RDB save/load (versioned), AOF rewrite, digest,
//! memory usage, copy, free and unlink. The entry itself is `crate::entry`.

use super::strings::string_bytes;
use crate::entry::{set_command_args, labels, Entry, ENCODING_VERSION};
use redis_module::native_types::RedisType;
use redis_module::raw;
use crate::name::{Name, NameCache};
use std::cell::RefCell;
use std::ffi::CString;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

const FLAG_TENANT_EXPLICIT: u64 = 1;

pub static TAGCACHE_TYPE: RedisType = RedisType::new(
    "tagcache0",
    ENCODING_VERSION,
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(rdb_load),
        rdb_save: Some(rdb_save),
        aof_rewrite: Some(aof_rewrite),
        mem_usage: Some(mem_usage),
        digest: Some(digest),
        free: Some(free),
        aux_load: Some(aux_load),
        aux_save: Some(aux_save),
        aux_save2: None,
        aux_save_triggers: raw::REDISMODULE_AUX_AFTER_RDB as c_int,
        free_effort: None,
        unlink: None,
        copy: Some(copy),
        defrag: None,
        copy2: None,
        free_effort2: None,
        mem_usage2: None,
        unlink2: Some(super::events::on_unlink),
    },
);

/// The registered type handle (null before the module is loaded).
/// What the type's persistence callbacks ask the module about invalidated entries that are not
/// reclaimed yet: they are saved (a dataset cannot skip a key) and listed after the keyspace,
/// so a load never brings them back.
/// Invalidated entry names per database.
pub type DeadNames = Vec<(i32, Vec<Vec<u8>>)>;
/// SOFT-invalidated entry names per database, each with the time it became stale (unix ms).
pub type StaleNames = Vec<(i32, Vec<(Vec<u8>, i64)>)>;

pub struct PersistHooks {
    /// Per database, the names of entries invalidated but still in the keyspace.
    pub dead_names: fn() -> DeadNames,
    /// A loaded dataset's list of such names.
    pub loaded_dead: fn(i32, Vec<Vec<u8>>),
    /// Per database, the entries a SOFT invalidation made stale whose TTL is not shortened yet.
    pub stale_names: fn() -> StaleNames,
    /// A loaded dataset's list of such entries.
    pub loaded_stale: fn(i32, Vec<(Vec<u8>, i64)>),
    /// Whether the entry `name` of database `db` is invalidated, hard or SOFT, and not
    /// reclaimed yet (an AOF rewrite leaves it out).
    pub left_out: fn(i32, &[u8]) -> bool,
}

static PERSIST: std::sync::OnceLock<PersistHooks> = std::sync::OnceLock::new();

/// Entries read from an RDB payload (a load, RESTORE, MIGRATE) since `forget_entries_loaded`:
/// the rebuild after a load sizes the index's tables to at most this many.
static ENTRIES_LOADED: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// While a dataset loads: the names its entries share (see `NameCache`).
    static LOAD_NAMES: RefCell<Option<NameCache>> = const { RefCell::new(None) };
}

/// Slots of the load's name cache: room for every tenant and common tag of most datasets.
const LOAD_NAME_SLOTS: usize = 4096;

pub fn entries_loaded() -> usize {
    ENTRIES_LOADED.load(Ordering::Relaxed)
}

/// A dataset starts loading: count its entries from zero and share their names.
pub fn load_started() {
    ENTRIES_LOADED.store(0, Ordering::Relaxed);
    LOAD_NAMES.with(|n| *n.borrow_mut() = Some(NameCache::new(LOAD_NAME_SLOTS)));
}

/// The load ended (or failed): the names it shared are the entries' own from now on.
pub fn load_ended() {
    LOAD_NAMES.with(|n| n.borrow_mut().take());
}

/// A name read from an RDB: shared with the load's others while a dataset loads.
fn loaded_name(bytes: &[u8]) -> Name {
    LOAD_NAMES.with(|n| match n.try_borrow_mut().as_deref_mut() {
        Ok(Some(cache)) => cache.name(bytes),
        _ => Name::new(bytes),
    })
}

pub fn install_persist_hooks(hooks: PersistHooks) {
    let _ = PERSIST.set(hooks);
}

/// SAFETY: called by Redis with a valid IO context while saving, after the keyspace.
unsafe extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, when: c_int) {
    if when != raw::REDISMODULE_AUX_AFTER_RDB as c_int {
        return;
    }
    let dbs = PERSIST.get().map(|h| (h.dead_names)()).unwrap_or_default();
    raw::save_unsigned(rdb, dbs.len() as u64);
    for (db, names) in dbs {
        raw::save_signed(rdb, i64::from(db));
        raw::save_unsigned(rdb, names.len() as u64);
        for name in names {
            raw::save_slice(rdb, &name);
        }
    }
    // Since encoding version 2.
    let dbs = PERSIST.get().map(|h| (h.stale_names)()).unwrap_or_default();
    raw::save_unsigned(rdb, dbs.len() as u64);
    for (db, names) in dbs {
        raw::save_signed(rdb, i64::from(db));
        raw::save_unsigned(rdb, names.len() as u64);
        for (name, at_ms) in names {
            raw::save_slice(rdb, &name);
            raw::save_signed(rdb, at_ms);
        }
    }
}

/// SAFETY: called by Redis with a valid IO context while loading.
unsafe extern "C" fn aux_load(rdb: *mut raw::RedisModuleIO, encver: c_int, when: c_int) -> c_int {
    let ok = raw::REDISMODULE_OK as c_int;
    if when != raw::REDISMODULE_AUX_AFTER_RDB as c_int {
        return ok;
    }
    if encver > ENCODING_VERSION {
        return raw::REDISMODULE_ERR as c_int;
    }
    // Without hooks the lists are still read (the rest of the file follows them), then dropped.
    let (loaded_dead, loaded_stale) = PERSIST.get().map_or((drop_list as fn(i32, Vec<Vec<u8>>), drop_list as fn(i32, Vec<(Vec<u8>, i64)>)), |h| (h.loaded_dead, h.loaded_stale));
    let dead = load_db_lists(rdb, |rdb| Ok(raw::load_string_buffer(rdb)?.as_ref().to_vec()), loaded_dead);
    let stale_item = |rdb| {
        let name = raw::load_string_buffer(rdb)?.as_ref().to_vec();
        Ok((name, raw::load_signed(rdb)?))
    };
    let loaded = dead.and_then(|()| if encver >= 2 { load_db_lists(rdb, stale_item, loaded_stale) } else { Ok(()) });
    match loaded {
        Ok(()) => ok,
        Err(_) => raw::REDISMODULE_ERR as c_int,
    }
}

fn drop_list<T>(_: i32, _: Vec<T>) {}

/// Reads per-database lists (`dbs`, then per database its number, length and items) and
/// hands each to `deliver`.
fn load_db_lists<T>(
    rdb: *mut raw::RedisModuleIO,
    item: impl Fn(*mut raw::RedisModuleIO) -> Result<T, redis_module::error::Error>,
    deliver: fn(i32, Vec<T>),
) -> Result<(), redis_module::error::Error> {
    let dbs = raw::load_unsigned(rdb)?;
    for _ in 0..dbs {
        let db = i32::try_from(raw::load_signed(rdb)?).unwrap_or(-1);
        let count = raw::load_unsigned(rdb)?;
        let mut items = Vec::new();
        for _ in 0..count {
            items.push(item(rdb)?);
        }
        deliver(db, items);
    }
    Ok(())
}

pub fn raw_type() -> *mut raw::RedisModuleType {
    *TAGCACHE_TYPE.raw_type.borrow()
}

/// SAFETY: Redis passes a value this type created (an Entry given away by `Thin::into_raw`),
/// once, possibly on the lazy-free thread: no Redis API call here.
unsafe extern "C" fn free(value: *mut c_void) {
    drop(Entry::from_raw(value));
}

/// SAFETY: Redis passes a live value of this type.
unsafe extern "C" fn mem_usage(value: *const c_void) -> usize {
    Entry::borrow(value).map_or(0, Entry::memory_bytes)
}

/// SAFETY: Redis passes a live value of this type and the destination name.
unsafe extern "C" fn copy(
    _from: *mut raw::RedisModuleString,
    to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    let Some(mut copied) = Entry::borrow(value).and_then(Entry::copied) else {
        return std::ptr::null_mut();
    };
    copied.set_fence(None);
    if !copied.tenant_explicit() {
        copied.set_tenant(crate::config::derived_tenant(string_bytes(to)).into());
    }
    Entry::into_raw(copied)
}

/// SAFETY: Redis passes a live IO handle and a value of this type.
unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    let Some(e) = Entry::borrow(value) else {
        return;
    };
    raw::save_unsigned(rdb, if e.tenant_explicit() { FLAG_TENANT_EXPLICIT } else { 0 });
    raw::save_slice(rdb, e.value());
    raw::save_slice(rdb, &e.tenant()[..]);
    raw::save_unsigned(rdb, e.tags().len() as u64);
    for tag in e.tags().iter() {
        raw::save_slice(rdb, tag);
    }
    raw::save_signed(rdb, e.stale_ms());
    raw::save_signed(rdb, i64::from(e.fill_ms()));
}

/// SAFETY: Redis passes a live IO handle; an unreadable entry returns NULL (Redis fails the load).
unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    if encver > ENCODING_VERSION {
        return std::ptr::null_mut();
    }
    match load_entry(rdb) {
        Ok(Some(entry)) => {
            ENTRIES_LOADED.fetch_add(1, Ordering::Relaxed);
            Entry::into_raw(entry)
        }
        _ => std::ptr::null_mut(),
    }
}

/// An entry read back (None when the allocator fails).
fn load_entry(rdb: *mut raw::RedisModuleIO) -> Result<Option<Box<Entry>>, redis_module::error::Error> {
    let flags = raw::load_unsigned(rdb)?;
    let value = raw::load_string_buffer(rdb)?;
    let tenant = loaded_name(raw::load_string_buffer(rdb)?.as_ref());
    let count = raw::load_unsigned(rdb)?;
    let mut tags = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(64));
    for _ in 0..count {
        tags.push(loaded_name(raw::load_string_buffer(rdb)?.as_ref()));
    }
    let stale_ms = raw::load_signed(rdb)?;
    let fill_ms = u32::try_from(raw::load_signed(rdb)?.max(0)).unwrap_or(u32::MAX);
    Ok(Entry::new(value.as_ref(), labels(tenant, tags), flags & FLAG_TENANT_EXPLICIT != 0, stale_ms, fill_ms))
}

/// Emits `CACHE.SET key value NOEXPIRE STALE s TAGS n … [TENANT t]`; Redis appends the key's
/// PEXPIREAT itself, which restores the TTL (and with it the fresh deadline).
/// SAFETY: Redis passes a live AOF IO handle, the key name and a value of this type.
unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    let Some(e) = Entry::borrow(value) else {
        return;
    };
    let db = api!(RedisModule_GetDbIdFromIO).map_or(0, |f| f(aof));
    if PERSIST.get().is_some_and(|h| (h.left_out)(db, string_bytes(key))) {
        return;
    }
    let args = set_command_args(string_bytes(key), e, None);
    let ctx = api!(RedisModule_GetContextFromIO).map_or(std::ptr::null_mut(), |f| f(aof));
    let strings: Vec<*mut raw::RedisModuleString> = args
        .iter()
        .map(|a| api!(RedisModule_CreateString).map_or(std::ptr::null_mut(), |f| {
            f(ctx, a.as_ptr().cast(), a.len())
        }))
        .collect();
    if strings.iter().any(|s| s.is_null()) {
        return;
    }
    if let (Some(emit), Ok(cmd), Ok(fmt)) = (
        api!(RedisModule_EmitAOF),
        CString::new("CACHE.SET"),
        CString::new("v"),
    ) {
        emit(aof, cmd.as_ptr(), fmt.as_ptr(), strings.as_ptr(), strings.len());
    }
    if let Some(free) = api!(RedisModule_FreeString) {
        for s in strings {
            free(ctx, s);
        }
    }
}

/// SAFETY: Redis passes a live digest and a value of this type.
unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    let Some(e) = Entry::borrow(value) else {
        return;
    };
    let (Some(add), Some(add_ll), Some(end)) = (
        api!(RedisModule_DigestAddStringBuffer),
        api!(RedisModule_DigestAddLongLong),
        api!(RedisModule_DigestEndSequence),
    ) else {
        return;
    };
    add(md, e.value().as_ptr().cast(), e.value().len());
    add(md, e.tenant().as_ptr().cast(), e.tenant().len());
    add_ll(md, i64::from(e.tenant_explicit()));
    for tag in e.tags().iter() {
        add(md, tag.as_ptr().cast(), tag.len());
    }
    add_ll(md, e.stale_ms());
    end(md);
}

