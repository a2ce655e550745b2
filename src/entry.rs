//! The `tagcache0` native type: one cache entry per key.
//!
//! Freshness is derived from the key's own Redis TTL: the key expires at `fresh_until + stale
//! window`, so an entry is fresh while `PTTL > stale_ms`. Native EXPIRE/PERSIST therefore move
//! the fresh deadline too, and the TTL needs no copy in the entry (Redis persists and replicates it).

use crate::events;
use crate::mem;
use redis_module::native_types::RedisType;
use redis_module::raw;
use std::borrow::Cow;
use std::ffi::CString;
use std::os::raw::{c_int, c_void};

/// Encoding version of the RDB layout (bump on layout changes, never the type name).
pub const ENCODING_VERSION: i32 = 1;

const FLAG_TENANT_EXPLICIT: u64 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub tenant: Vec<u8>,
    /// True when the tenant was given with TENANT; otherwise it follows the key's name.
    pub tenant_explicit: bool,
    /// Sorted and without duplicates.
    pub tags: Vec<Vec<u8>>,
    pub stale_ms: i64,
    /// How long the fill that produced this value took, in ms (0 when unknown).
    pub fill_ms: i64,
}

impl Entry {
    /// Milliseconds of freshness left given the key's remaining TTL (`None` = no expiry).
    /// Negative or zero means stale.
    pub fn fresh_ms(&self, ttl_ms: Option<i64>) -> Option<i64> {
        ttl_ms.map(|ttl| ttl.saturating_sub(self.stale_ms))
    }

    pub fn is_fresh(&self, ttl_ms: Option<i64>) -> bool {
        self.fresh_ms(ttl_ms).is_none_or(|f| f > 0)
    }

    /// Bytes the allocator holds for this entry (the boxed struct and its buffers).
    pub fn memory_bytes(&self) -> usize {
        mem::sum([
            mem::allocation(std::mem::size_of::<Entry>()),
            mem::allocation(self.value.capacity()),
            mem::allocation(self.tenant.capacity()),
            mem::allocation(mem::times(self.tags.capacity(), std::mem::size_of::<Vec<u8>>())),
            mem::sum(self.tags.iter().map(|t| mem::allocation(t.capacity()))),
        ])
    }

    /// What this entry costs under `key`, Redis's own per-key structures included.
    pub fn footprint(&self, key: &[u8]) -> usize {
        self.memory_bytes().saturating_add(mem::keyspace_overhead(key.len()))
    }
}

/// Sorts and deduplicates a tag list.
pub fn normalize_tags(mut tags: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    tags.sort_unstable();
    tags.dedup();
    tags
}

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
        aux_load: None,
        aux_save: None,
        aux_save2: None,
        aux_save_triggers: 0,
        free_effort: None,
        unlink: None,
        copy: Some(copy),
        defrag: None,
        copy2: None,
        free_effort2: None,
        mem_usage2: None,
        unlink2: Some(events::on_unlink),
    },
);

/// The registered type handle (null before the module is loaded).
pub fn raw_type() -> *mut raw::RedisModuleType {
    *TAGCACHE_TYPE.raw_type.borrow()
}

unsafe extern "C" fn free(value: *mut c_void) {
    if !value.is_null() {
        drop(Box::from_raw(value.cast::<Entry>()));
    }
}

unsafe extern "C" fn mem_usage(value: *const c_void) -> usize {
    value
        .cast::<Entry>()
        .as_ref()
        .map_or(0, Entry::memory_bytes)
}

unsafe extern "C" fn copy(
    _from: *mut raw::RedisModuleString,
    to: *mut raw::RedisModuleString,
    value: *const c_void,
) -> *mut c_void {
    let Some(entry) = value.cast::<Entry>().as_ref() else {
        return std::ptr::null_mut();
    };
    let mut copied = entry.clone();
    if !copied.tenant_explicit {
        copied.tenant = crate::engine::derived_tenant(string_bytes(to));
    }
    Box::into_raw(Box::new(copied)).cast()
}

unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    let Some(e) = value.cast::<Entry>().as_ref() else {
        return;
    };
    raw::save_unsigned(rdb, if e.tenant_explicit { FLAG_TENANT_EXPLICIT } else { 0 });
    raw::save_slice(rdb, &e.value);
    raw::save_slice(rdb, &e.tenant);
    raw::save_unsigned(rdb, e.tags.len() as u64);
    for tag in &e.tags {
        raw::save_slice(rdb, tag);
    }
    raw::save_signed(rdb, e.stale_ms);
    raw::save_signed(rdb, e.fill_ms);
}

unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    if encver > ENCODING_VERSION {
        return std::ptr::null_mut();
    }
    match load_entry(rdb) {
        Ok(entry) => Box::into_raw(Box::new(entry)).cast(),
        Err(_) => std::ptr::null_mut(),
    }
}

fn load_entry(rdb: *mut raw::RedisModuleIO) -> Result<Entry, redis_module::error::Error> {
    let flags = raw::load_unsigned(rdb)?;
    let value = raw::load_string_buffer(rdb)?.as_ref().to_vec();
    let tenant = raw::load_string_buffer(rdb)?.as_ref().to_vec();
    let count = raw::load_unsigned(rdb)?;
    let mut tags = Vec::new();
    for _ in 0..count {
        tags.push(raw::load_string_buffer(rdb)?.as_ref().to_vec());
    }
    Ok(Entry {
        value,
        tenant,
        tenant_explicit: flags & FLAG_TENANT_EXPLICIT != 0,
        tags: normalize_tags(tags),
        stale_ms: raw::load_signed(rdb)?,
        fill_ms: raw::load_signed(rdb)?,
    })
}

/// Emits `CACHE.SET key value NOEXPIRE STALE s TAGS n … [TENANT t]`; Redis appends the key's
/// PEXPIREAT itself, which restores the TTL (and with it the fresh deadline).
unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    let Some(e) = value.cast::<Entry>().as_ref() else {
        return;
    };
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

/// A piece of a canonical CACHE.SET that is not taken from the entry or the client.
pub enum Piece {
    Keyword(&'static [u8]),
    Number(i64),
}

/// The canonical arguments (after the command name) of the CACHE.SET that recreates an entry:
/// `key value (PXAT ms | NOEXPIRE) STALE s [TAGS n tag…] [TENANT t]`. Generic over the argument
/// representation so AOF rewrite (bytes) and replication (the client's string objects) share it;
/// `make` turns keywords and numbers into that representation.
pub fn canonical_set<A>(
    key: A,
    value: A,
    fresh_until: Option<i64>,
    stale_ms: i64,
    tags: Vec<A>,
    tenant: Option<A>,
    mut make: impl FnMut(Piece) -> A,
) -> Vec<A> {
    let mut args = Vec::with_capacity(tags.len().saturating_add(10));
    args.push(key);
    args.push(value);
    match fresh_until {
        Some(at) => {
            args.push(make(Piece::Keyword(b"PXAT")));
            args.push(make(Piece::Number(at)));
        }
        None => args.push(make(Piece::Keyword(b"NOEXPIRE"))),
    }
    args.push(make(Piece::Keyword(b"STALE")));
    args.push(make(Piece::Number(stale_ms / 1000)));
    if !tags.is_empty() {
        args.push(make(Piece::Keyword(b"TAGS")));
        args.push(make(Piece::Number(i64::try_from(tags.len()).unwrap_or(i64::MAX))));
        args.extend(tags);
    }
    if let Some(t) = tenant {
        args.push(make(Piece::Keyword(b"TENANT")));
        args.push(t);
    }
    args
}

/// `canonical_set` as bytes, for an entry under `key` (NOEXPIRE when `fresh_until` is None).
pub fn set_command_args<'a>(key: &'a [u8], e: &'a Entry, fresh_until: Option<i64>) -> Vec<Cow<'a, [u8]>> {
    canonical_set(
        Cow::Borrowed(key),
        Cow::Borrowed(e.value.as_slice()),
        fresh_until,
        e.stale_ms,
        e.tags.iter().map(|t| Cow::Borrowed(t.as_slice())).collect(),
        e.tenant_explicit.then_some(Cow::Borrowed(e.tenant.as_slice())),
        |piece| match piece {
            Piece::Keyword(k) => Cow::Borrowed(k),
            Piece::Number(n) => Cow::Owned(n.to_string().into_bytes()),
        },
    )
}

unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    let Some(e) = value.cast::<Entry>().as_ref() else {
        return;
    };
    let (Some(add), Some(add_ll), Some(end)) = (
        api!(RedisModule_DigestAddStringBuffer),
        api!(RedisModule_DigestAddLongLong),
        api!(RedisModule_DigestEndSequence),
    ) else {
        return;
    };
    add(md, e.value.as_ptr().cast(), e.value.len());
    add(md, e.tenant.as_ptr().cast(), e.tenant.len());
    add_ll(md, i64::from(e.tenant_explicit));
    for tag in &e.tags {
        add(md, tag.as_ptr().cast(), tag.len());
    }
    add_ll(md, e.stale_ms);
    end(md);
}

/// The bytes of a Redis string (empty for null).
pub fn string_bytes<'a>(s: *const raw::RedisModuleString) -> &'a [u8] {
    if s.is_null() {
        return &[];
    }
    let mut len = 0usize;
    let ptr = raw::string_ptr_len(s, &mut len);
    if ptr.is_null() {
        return &[];
    }
    // SAFETY: Redis guarantees `len` readable bytes at `ptr` for the string's lifetime.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_ttl_minus_stale_window() {
        let e = Entry {
            stale_ms: 1000,
            ..Entry::default()
        };
        assert!(e.is_fresh(None));
        assert!(e.is_fresh(Some(1500)));
        assert!(!e.is_fresh(Some(1000)));
        assert_eq!(e.fresh_ms(Some(400)), Some(-600));
    }

    #[test]
    fn set_command_args_round_trip_shape() {
        let e = Entry {
            value: b"v".to_vec(),
            tenant: b"t".to_vec(),
            tenant_explicit: true,
            tags: vec![b"a".to_vec()],
            stale_ms: 60_000,
            fill_ms: 0,
        };
        let args = set_command_args(b"k", &e, Some(123));
        let text: Vec<String> = args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        assert_eq!(text, ["k", "v", "PXAT", "123", "STALE", "60", "TAGS", "1", "a", "TENANT", "t"]);
        assert!(set_command_args(b"k", &Entry::default(), None).contains(&Cow::Borrowed(&b"NOEXPIRE"[..])));
    }

    #[test]
    fn tags_are_normalized() {
        let t = normalize_tags(vec![b"b".to_vec(), b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(t, vec![b"a".to_vec(), b"b".to_vec()]);
    }
}
