//! Module configuration (`tagcache.<name>`): loadmodule arguments, redis.conf lines, CONFIG SET.
//! String settings are parsed when set, so a bad value is refused with a message naming the
//! setting and the hot path reads an already-parsed value.

use crate::policy::{self, TtlRule};
use lazy_static::lazy_static;
use redis_module::configuration::{ConfigurationContext, ConfigurationValue};
use redis_module::{RedisError, RedisString};
use regex::bytes::Regex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A string setting kept both as text (for CONFIG GET) and parsed.
pub struct Parsed<T: Send + Sync + 'static> {
    name: &'static str,
    parse: fn(&str) -> Result<T, String>,
    text: Mutex<String>,
    value: Mutex<Arc<T>>,
}

impl<T: Send + Sync + 'static> Parsed<T> {
    fn new(name: &'static str, parse: fn(&str) -> Result<T, String>, default: T) -> Self {
        Parsed {
            name,
            parse,
            text: Mutex::new(String::new()),
            value: Mutex::new(Arc::new(default)),
        }
    }

    pub fn get(&self) -> Arc<T> {
        self.value.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl<T: Send + Sync + 'static> ConfigurationValue<RedisString> for Parsed<T> {
    fn get(&self, _ctx: &ConfigurationContext) -> RedisString {
        let text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        RedisString::create_from_slice(std::ptr::null_mut(), text.as_bytes())
    }

    fn set(&self, _ctx: &ConfigurationContext, val: RedisString) -> Result<(), RedisError> {
        let text = val
            .try_as_str()
            .map_err(|_| RedisError::String(format!("tagcache.{}: value must be UTF-8", self.name)))?;
        let parsed = (self.parse)(text)
            .map_err(|e| RedisError::String(format!("tagcache.{}: {e}", self.name)))?;
        *self.value.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(parsed);
        *self.text.lock().unwrap_or_else(PoisonError::into_inner) = text.to_string();
        Ok(())
    }
}

fn parse_separator(text: &str) -> Result<Vec<u8>, String> {
    if text.is_empty() {
        return Err("the separator must not be empty".into());
    }
    Ok(text.as_bytes().to_vec())
}

lazy_static! {
    pub static ref DEFAULT_TTL: AtomicI64 = AtomicI64::new(300);
    pub static ref DEFAULT_STALE: AtomicI64 = AtomicI64::new(0);
    pub static ref LEASE_MS: AtomicI64 = AtomicI64::new(5000);
    pub static ref MAX_WAIT_MS: AtomicI64 = AtomicI64::new(30_000);
    pub static ref MAX_WAITERS: AtomicI64 = AtomicI64::new(10_000);
    pub static ref MAX_TAGS: AtomicI64 = AtomicI64::new(64);
    pub static ref LOG_INVALIDATIONS_OVER: AtomicI64 = AtomicI64::new(1000);
    pub static ref RECLAIM_SLICE_US: AtomicI64 = AtomicI64::new(1000);
    pub static ref RECLAIM_SYNC_MAX: AtomicI64 = AtomicI64::new(1000);
    pub static ref MIGRATION_FENCE_MS: AtomicI64 = AtomicI64::new(600_000);
    pub static ref TTL_RULES: Parsed<Vec<TtlRule>> =
        Parsed::new("ttl-rules", policy::parse_ttl_rules, Vec::new());
    pub static ref TENANT_REGEX: Parsed<Option<Regex>> =
        Parsed::new("tenant-regex", policy::parse_tenant_regex, None);
    pub static ref NAMESPACE_SEPARATOR: Parsed<Vec<u8>> =
        Parsed::new("namespace-separator", parse_separator, b":".to_vec());
}

pub fn get(setting: &AtomicI64) -> i64 {
    setting.load(Ordering::Relaxed)
}

/// Upper bound of millisecond settings (one day).
pub const MAX_MS: i64 = 86_400_000;
/// Upper bound of `max-tags`.
pub const MAX_TAGS_LIMIT: i64 = 4096;

/// The tenant of a key named without an explicit TENANT, under the current `tenant-regex`.
pub fn derived_tenant(key: &[u8]) -> Vec<u8> {
    let re = TENANT_REGEX.get();
    policy::tenant_from_key(key, re.as_ref().as_ref()).to_vec()
}
