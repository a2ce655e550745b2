//! Argument parsing shared by the commands. Every error starts with `ERR` and is raised before
//! anything changes.

use crate::config;
use crate::entry::normalize_tags;
use crate::policy::MAX_SECONDS;
use redis_module::{RedisError, RedisString};

/// An `ERR …` error reply.
pub fn err(msg: impl Into<String>) -> RedisError {
    coded("ERR", &msg.into())
}

/// An error reply with its own code (`WRONGTYPE`, `NOPERM`, `LEASE`).
pub fn coded(code: &str, msg: &str) -> RedisError {
    RedisError::String(ascii_only(&format!("{code} {msg}")))
}

/// The crate sends error text byte by byte (each char cut to a u8), so anything beyond ASCII
/// would reach the client as invalid UTF-8: escape it.
fn ascii_only(msg: &str) -> String {
    if msg.is_ascii() {
        return msg.to_string();
    }
    msg.chars()
        .map(|c| if c.is_ascii() { c.to_string() } else { c.escape_unicode().to_string() })
        .collect()
}

/// A client argument as shown inside an error message: `\xNN` escapes, at most 64 bytes.
pub fn shown(arg: &[u8]) -> String {
    let head = arg.get(..64).unwrap_or(arg);
    let more = if head.len() < arg.len() { "..." } else { "" };
    format!("{}{more}", head.escape_ascii())
}

pub fn wrong_arity(command: &str) -> RedisError {
    err(format!("wrong number of arguments for '{command}' command"))
}

pub fn wrongtype() -> RedisError {
    coded("WRONGTYPE", "Operation against a key holding the wrong kind of value")
}

/// Parses a base-10 i64 exactly (no spaces, no '+', no overflow).
pub fn parse_i64(arg: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.starts_with('+') || text.is_empty() {
        return None;
    }
    text.parse().ok()
}

/// An integer in `min..=max`, or an error naming the option.
pub fn int_in(arg: &[u8], what: &str, min: i64, max: i64) -> Result<i64, RedisError> {
    match parse_i64(arg) {
        Some(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(err(format!("{what} must be an integer from {min} to {max}"))),
    }
}

pub fn is(arg: &[u8], name: &str) -> bool {
    arg.eq_ignore_ascii_case(name.as_bytes())
}

/// How a write sets the entry's fresh deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// From ttl-rules or default-ttl.
    Default,
    /// Never expires.
    Never,
    /// Relative, in ms.
    In(i64),
    /// Absolute unix time in ms.
    At(i64),
}

/// The options shared by CACHE.SET and CACHE.FILL; tags and tenant borrow the client's
/// arguments (replication re-sends those very string objects).
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions<'a> {
    pub expiry: Expiry,
    pub stale_s: Option<i64>,
    pub tags: &'a [RedisString],
    pub tenant: Option<&'a RedisString>,
}

impl WriteOptions<'_> {
    /// The tags as sorted, de-duplicated byte strings.
    pub fn normalized_tags(&self) -> Vec<Vec<u8>> {
        normalize_tags(self.tags.iter().map(|t| t.as_slice().to_vec()).collect())
    }
}

/// Largest absolute deadline accepted (year ~2286 in ms), so later additions cannot overflow.
const MAX_UNIX_MS: i64 = 9_999_999_999_999;

const ONE_EXPIRY: &str = "only one of EX, PX, EXAT, PXAT and NOEXPIRE may be given";

/// Who sent a write: a client is held to this server's limits (`tagcache.max-tags`, reserved
/// names); a write replayed from the primary or the AOF/RDB already happened and is never refused
/// by a local limit (valkey-bloom's `must_obey_client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Replayed,
}

/// Parses `[EX s | PX ms | EXAT s | PXAT ms | NOEXPIRE] [STALE s] [TAGS n tag…] [TENANT t]`.
pub fn parse_write_options(args: &[RedisString], source: Source) -> Result<WriteOptions<'_>, RedisError> {
    let mut opts = WriteOptions {
        expiry: Expiry::Default,
        stale_s: None,
        tags: &[],
        tenant: None,
    };
    let mut seen_tags = false;
    let mut i = 0usize;
    let value_of = |i: usize, name: &str| -> Result<&RedisString, RedisError> {
        args.get(i.saturating_add(1))
            .ok_or_else(|| err(format!("{name} needs a value")))
    };
    while let Some(arg) = args.get(i) {
        let name = arg.as_slice();
        let ttl_unit = ["EX", "PX", "EXAT", "PXAT"].into_iter().find(|n| is(name, n));
        if let Some(unit) = ttl_unit {
            if opts.expiry != Expiry::Default {
                return Err(err(ONE_EXPIRY));
            }
            let bad = || err(format!("invalid expire time for {unit}: must be a positive integer in range"));
            let v = parse_i64(value_of(i, unit)?.as_slice()).filter(|v| *v > 0).ok_or_else(bad)?;
            opts.expiry = match unit {
                "EX" if v <= MAX_SECONDS => Expiry::In(v.saturating_mul(1000)),
                "PX" if v <= MAX_SECONDS.saturating_mul(1000) => Expiry::In(v),
                "EXAT" if v <= MAX_UNIX_MS / 1000 => Expiry::At(v.saturating_mul(1000)),
                "PXAT" if v <= MAX_UNIX_MS => Expiry::At(v),
                _ => return Err(bad()),
            };
            i = i.saturating_add(2);
        } else if is(name, "NOEXPIRE") {
            if opts.expiry != Expiry::Default {
                return Err(err(ONE_EXPIRY));
            }
            opts.expiry = Expiry::Never;
            i = i.saturating_add(1);
        } else if is(name, "STALE") {
            if opts.stale_s.is_some() {
                return Err(err("option STALE given twice"));
            }
            opts.stale_s = Some(int_in(value_of(i, "STALE")?.as_slice(), "STALE", 0, MAX_SECONDS)?);
            i = i.saturating_add(2);
        } else if is(name, "TAGS") {
            if seen_tags {
                return Err(err("option TAGS given twice"));
            }
            seen_tags = true;
            let max = config::get(&config::MAX_TAGS);
            let n = parse_i64(value_of(i, "TAGS")?.as_slice())
                .filter(|n| *n >= 0)
                .ok_or_else(|| err("TAGS count must be a non-negative integer"))?;
            if n > max && source == Source::Client {
                return Err(err(format!("too many tags: {n} > tagcache.max-tags ({max})")));
            }
            let n = usize::try_from(n).map_err(|_| err("TAGS count out of range"))?;
            let start = i.saturating_add(2);
            let end = start.saturating_add(n);
            opts.tags = args
                .get(start..end)
                .ok_or_else(|| err("TAGS count is larger than the number of tags given"))?;
            i = end;
        } else if is(name, "TENANT") {
            if opts.tenant.is_some() {
                return Err(err("option TENANT given twice"));
            }
            let tenant = value_of(i, "TENANT")?;
            if tenant.as_slice() == b"*" && source == Source::Client {
                return Err(err("TENANT * is reserved: in CACHE.INVALIDATE and CACHE.KEYS it means every tenant"));
            }
            opts.tenant = Some(tenant);
            i = i.saturating_add(2);
        } else {
            return Err(err(format!("unknown option '{}'", shown(name))));
        }
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_always_ascii() {
        for msg in ["plain", "caf\u{e9} \u{fffd}", "LEASE needs a value"] {
            let RedisError::String(text) = err(msg) else { panic!() };
            assert!(text.is_ascii() && text.starts_with("ERR "), "{text}");
        }
        let RedisError::String(text) = coded("LEASE", "lease is no longer valid") else { panic!() };
        assert_eq!(text, "LEASE lease is no longer valid");
        assert_eq!(shown(b"a\xff\r\n"), "a\\xff\\r\\n");
        assert!(shown(&[b'x'; 100]).ends_with("..."));
        assert_eq!(parse_i64(b"+5"), None);
        assert_eq!(parse_i64(b"-5"), Some(-5));
        assert_eq!(parse_i64(b"99999999999999999999"), None);
    }
}
