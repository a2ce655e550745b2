//! A thin, safe wrapper over raw module keys and strings. The crate's key types cannot read a key's TTL and
//! refuse to replace a value of another type, and `RedisModule_GetExpire` on a NULL key crashes
//! 7.0: this wrapper checks every pointer before use.
use std::ffi::c_void;
use super::datatype::raw_type;
use crate::entry::Entry;
use redis_module::{raw, Context, RedisString};
use std::os::raw::c_int;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Entry,
    Other,
}

pub struct Key {
    ptr: *mut raw::RedisModuleKey,
    /// What the key holds, asked of Redis once per open (reads check it several times).
    kind: std::cell::Cell<Option<Kind>>,
}

impl Key {
    pub fn read(ctx: &Context, name: &RedisString) -> Key {
        Self::open(ctx.ctx, name.inner, raw::REDISMODULE_READ)
    }

    pub fn write(ctx: &Context, name: &RedisString) -> Key {
        Self::open(ctx.ctx, name.inner, raw::REDISMODULE_READ | raw::REDISMODULE_WRITE)
    }

    /// Opens for reading without touching the LRU/LFU clock (for checks and scans).
    pub fn peek(ctx: &Context, name: &RedisString) -> Key {
        Self::open(ctx.ctx, name.inner, raw::REDISMODULE_READ | raw::REDISMODULE_OPEN_KEY_NOTOUCH)
    }

    fn open(ctx: *mut raw::RedisModuleCtx, name: *mut raw::RedisModuleString, mode: u32) -> Key {
        let ptr = match api!(RedisModule_OpenKey) {
            // SAFETY: ctx and name come from Redis for the duration of this call.
            Some(open) if !ctx.is_null() && !name.is_null() => unsafe {
                open(ctx, name, mode as c_int).cast::<raw::RedisModuleKey>()
            },
            _ => std::ptr::null_mut(),
        };
        Key { ptr, kind: std::cell::Cell::new(None) }
    }

    pub fn kind(&self) -> Kind {
        if let Some(kind) = self.kind.get() {
            return kind;
        }
        let kind = self.ask_kind();
        self.kind.set(Some(kind));
        kind
    }

    fn ask_kind(&self) -> Kind {
        if self.ptr.is_null() {
            return Kind::Missing;
        }
        let (Some(key_type), Some(get_type)) =
            (api!(RedisModule_KeyType), api!(RedisModule_ModuleTypeGetType))
        else {
            return Kind::Other;
        };
        // SAFETY: ptr is a live key handle.
        let t = unsafe { key_type(self.ptr) };
        if t == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
            Kind::Missing
        } else if t == raw::REDISMODULE_KEYTYPE_MODULE as c_int
            // SAFETY: ptr is a live key handle holding a module value.
            && unsafe { get_type(self.ptr) } == raw_type()
        {
            Kind::Entry
        } else {
            Kind::Other
        }
    }

    /// The entry stored at this key, when it is one of ours.
    pub fn entry(&mut self) -> Option<&mut Entry> {
        if self.kind() != Kind::Entry {
            return None;
        }
        let get = api!(RedisModule_ModuleTypeGetValue)?;
        // SAFETY: kind() proved the value is a tagcache0 entry, given away by `Thin::into_raw`;
        // it lives as long as the key handle this borrow is tied to.
        unsafe { Entry::borrow_mut(get(self.ptr)) }
    }

    /// Remaining TTL in ms; `None` when the key has no expiry or does not exist.
    pub fn ttl_ms(&self) -> Option<i64> {
        if self.ptr.is_null() {
            return None;
        }
        let get = api!(RedisModule_GetExpire)?;
        // SAFETY: non-null key handle.
        let ttl = unsafe { get(self.ptr) };
        (ttl >= 0).then_some(ttl)
    }

    /// When the key expires (unix ms); `expiry::NEVER` without a TTL or a key.
    pub fn expires_at(&self) -> i64 {
        abs_expire(self.ptr)
    }

    /// Stores an entry, replacing any value of any type. False when Redis refused.
    pub fn set_entry(&self, entry: Box<Entry>) -> bool {
        let Some(set) = api!(RedisModule_ModuleTypeSetValue) else {
            return false;
        };
        if self.ptr.is_null() {
            return false;
        }
        self.kind.set(None);
        let value = Entry::into_raw(entry);
        // SAFETY: writable key; on success Redis owns the entry and frees it through our type.
        let status = unsafe { set(self.ptr, raw_type(), value) };
        if status != raw::REDISMODULE_OK as c_int {
            // SAFETY: Redis did not take ownership.
            drop(unsafe { Entry::from_raw(value) });
            return false;
        }
        true
    }

    /// Puts `entry` in place of the entry stored here (which is freed), keeping the key and its
    /// TTL: no deletion, so no unlink callback. False when Redis refused (nothing changed).
    pub fn replace_entry(&self, entry: Box<Entry>) -> bool {
        let Some(replace) = api!(RedisModule_ModuleTypeReplaceValue) else {
            return false;
        };
        if self.ptr.is_null() {
            return false;
        }
        let value = Entry::into_raw(entry);
        let mut old: *mut c_void = std::ptr::null_mut();
        // SAFETY: a writable key handle; Redis checks the key holds a value of our type.
        let status = unsafe { replace(self.ptr, raw_type(), value, &mut old) };
        if status != raw::REDISMODULE_OK as c_int {
            // SAFETY: Redis did not take ownership.
            drop(unsafe { Entry::from_raw(value) });
            return false;
        }
        // SAFETY: Redis handed the old value back: it is ours to free.
        drop(unsafe { Entry::from_raw(old) });
        true
    }

    /// Sets the TTL in ms from now, or removes it for `None`.
    pub fn set_ttl_ms(&self, ttl: Option<i64>) -> bool {
        let Some(set) = api!(RedisModule_SetExpire) else {
            return false;
        };
        if self.ptr.is_null() {
            return false;
        }
        let ms = ttl.unwrap_or(raw::REDISMODULE_NO_EXPIRE as i64);
        // SAFETY: non-null writable key handle.
        unsafe { set(self.ptr, ms) == raw::REDISMODULE_OK as c_int }
    }

    pub fn delete(&self) -> bool {
        self.kind.set(None);
        match api!(RedisModule_DeleteKey) {
            // SAFETY: non-null writable key handle.
            Some(del) if !self.ptr.is_null() => unsafe { del(self.ptr) == raw::REDISMODULE_OK as c_int },
            _ => false,
        }
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        if let (false, Some(close)) = (self.ptr.is_null(), api!(RedisModule_CloseKey)) {
            // SAFETY: handle opened by us, closed once.
            unsafe { close(self.ptr) };
        }
    }
}

/// The absolute expiry (unix ms) of an open key handle; `expiry::NEVER` without a TTL.
pub fn abs_expire(key: *mut raw::RedisModuleKey) -> i64 {
    let Some(get) = api!(RedisModule_GetAbsExpire) else {
        return crate::expiry::NEVER;
    };
    if key.is_null() {
        return crate::expiry::NEVER;
    }
    // SAFETY: non-null key handle (GetAbsExpire on NULL crashes, as GetExpire does).
    let at = unsafe { get(key) };
    if at < 0 {
        crate::expiry::NEVER
    } else {
        at
    }
}

/// A Redis string holding `bytes` (binary-safe: the crate's `create_string` goes through a
/// CString and panics on a NUL byte).
pub fn string(ctx: &Context, bytes: &[u8]) -> RedisString {
    RedisString::create_from_slice(ctx.ctx, bytes)
}

/// Milliseconds since the epoch, from Redis's clock (cached per command, as Redis itself uses).
pub fn now_ms() -> i64 {
    // SAFETY: a plain clock getter.
    api!(RedisModule_Milliseconds).map_or(0, |f| unsafe { f() })
}

/// Selects database `db` in a context (timers start in db 0); false when it does not exist.
pub fn select_db(ctx: &Context, db: i32) -> bool {
    match api!(RedisModule_SelectDb) {
        // SAFETY: ctx is a live context; SelectDb fails cleanly past the last database.
        Some(select) => (unsafe { select(ctx.ctx, db) }) == raw::REDISMODULE_OK as c_int,
        None => false,
    }
}

/// How many keys the database selected in `ctx` holds (of any type).
pub fn db_size(ctx: &Context) -> usize {
    match api!(RedisModule_DbSize) {
        // SAFETY: ctx is a live context.
        Some(size) => usize::try_from(unsafe { size(ctx.ctx) }).unwrap_or(usize::MAX),
        None => 0,
    }
}

/// The database selected in a context.
pub fn selected_db(ctx: *mut raw::RedisModuleCtx) -> i32 {
    match api!(RedisModule_GetSelectedDb) {
        // SAFETY: ctx provided by Redis.
        Some(f) if !ctx.is_null() => unsafe { f(ctx) },
        _ => 0,
    }
}

/// True for commands replayed from the primary (replication) or the AOF/RDB while loading.
pub fn is_replayed(ctx: &Context) -> bool {
    context_flags(ctx.ctx) & (raw::REDISMODULE_CTX_FLAGS_REPLICATED | raw::REDISMODULE_CTX_FLAGS_LOADING) != 0
}

/// True while the server loads its dataset (RDB or AOF replay).
pub fn is_loading(ctx: &Context) -> bool {
    context_flags(ctx.ctx) & raw::REDISMODULE_CTX_FLAGS_LOADING != 0
}

/// True on a primary (not a replica).
pub fn is_primary(ctx: &Context) -> bool {
    context_flags(ctx.ctx) & raw::REDISMODULE_CTX_FLAGS_MASTER != 0
}

/// True when the server runs in cluster mode.
pub fn in_cluster(ctx: &Context) -> bool {
    context_flags(ctx.ctx) & raw::REDISMODULE_CTX_FLAGS_CLUSTER != 0
}

/// False inside MULTI/EXEC, scripts and other contexts that must not block a client.
pub fn may_block(ctx: &Context) -> bool {
    let deny = raw::REDISMODULE_CTX_FLAGS_MULTI | raw::REDISMODULE_CTX_FLAGS_LUA | raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING;
    context_flags(ctx.ctx) & deny == 0
}

/// Raw context flags (REDISMODULE_CTX_FLAGS_*).
pub fn context_flags(ctx: *mut raw::RedisModuleCtx) -> u32 {
    match api!(RedisModule_GetContextFlags) {
        // SAFETY: ctx provided by Redis.
        Some(f) if !ctx.is_null() => unsafe { f(ctx) as u32 },
        _ => 0,
    }
}

pub use super::strings::string_bytes;
