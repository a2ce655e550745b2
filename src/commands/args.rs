//! Argument parsing shared by the commands. Every error starts with `ERR` and is raised before
//! anything changes.

use crate::config;
use crate::entry::normalize_tags;
use crate::policy::MAX_SECONDS;
use redis_module::{RedisError, RedisString};

/// A command's error: each variant is one reply code. Every error is raised before anything
/// changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdError {
    /// `ERR <message>`: bad input.
    Err(String),
    /// `ERR wrong number of arguments for '<command>' command`.
    WrongArity(&'static str),
    /// `WRONGTYPE …`: the key holds a value of another type.
    WrongType,
    /// `LEASE lease is no longer valid`.
    Lease,
    /// `NOPERM <message>`.
    NoPerm(String),
}

impl From<CmdError> for RedisError {
    fn from(e: CmdError) -> RedisError {
        let text = match e {
            CmdError::Err(msg) => format!("ERR {msg}"),
            CmdError::WrongArity(command) => format!("ERR wrong number of arguments for '{command}' command"),
            CmdError::WrongType => "WRONGTYPE Operation against a key holding the wrong kind of value".to_string(),
            CmdError::Lease => "LEASE lease is no longer valid".to_string(),
            CmdError::NoPerm(msg) => format!("NOPERM {msg}"),
        };
        RedisError::String(ascii_only(&text))
    }
}

/// An `ERR …` error reply.
pub fn err(msg: impl Into<String>) -> RedisError {
    CmdError::Err(msg.into()).into()
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

pub fn wrong_arity(command: &'static str) -> RedisError {
    CmdError::WrongArity(command).into()
}

pub fn wrongtype() -> RedisError {
    CmdError::WrongType.into()
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
pub fn int_in(arg: &[u8], what: &str, min: i64, max: i64) -> Result<i64, CmdError> {
    match parse_i64(arg) {
        Some(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(CmdError::Err(format!("{what} must be an integer from {min} to {max}"))),
    }
}

pub fn is(arg: &[u8], name: &str) -> bool {
    arg.eq_ignore_ascii_case(name.as_bytes())
}

/// The one argument reader every command parses with: positional arguments, then named
/// options (each at most once, case-insensitive), each consuming its own values.
pub struct Cursor<'a> {
    args: &'a [RedisString],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Reads `args` from position `from` (after the command name and positional arguments).
    pub fn new(args: &'a [RedisString], from: usize) -> Cursor<'a> {
        Cursor { args, pos: from }
    }

    pub fn is_done(&self) -> bool {
        self.pos >= self.args.len()
    }

    /// The next argument, consumed.
    pub fn next_arg(&mut self) -> Option<&'a RedisString> {
        let arg = self.args.get(self.pos)?;
        self.pos = self.pos.saturating_add(1);
        Some(arg)
    }

    /// The value of option `name`, consumed.
    pub fn value_of(&mut self, name: &str) -> Result<&'a RedisString, CmdError> {
        self.next_arg().ok_or_else(|| CmdError::Err(format!("{name} needs a value")))
    }

    /// The integer value of option `name`, in `min..=max`.
    pub fn int_of(&mut self, name: &str, min: i64, max: i64) -> Result<i64, CmdError> {
        int_in(self.value_of(name)?.as_slice(), name, min, max)
    }

    /// The next `n` arguments, consumed, or an error saying `what` is larger than what is left.
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [RedisString], CmdError> {
        let end = self.pos.saturating_add(n);
        let taken = self
            .args
            .get(self.pos..end)
            .ok_or_else(|| CmdError::Err(format!("{what} is larger than the number of arguments given")))?;
        self.pos = end;
        Ok(taken)
    }

    /// Reads named options until the end: `names` lists them; `apply(index in names, cursor)`
    /// consumes each one's values. An unknown option or one given twice is an error.
    pub fn options(
        &mut self,
        names: &[&str],
        mut apply: impl FnMut(usize, &mut Cursor<'a>) -> Result<(), CmdError>,
    ) -> Result<(), CmdError> {
        // Options seen so far, one bit each (commands have at most a handful).
        let mut seen = 0u64;
        while let Some(arg) = self.next_arg() {
            let name = arg.as_slice();
            let Some(slot) = names.iter().position(|n| is(name, n)) else {
                return Err(CmdError::Err(format!("unknown option '{}'", shown(name))));
            };
            let bit = 1u64.checked_shl(u32::try_from(slot).unwrap_or(u32::MAX)).unwrap_or(0);
            if seen & bit != 0 {
                return Err(CmdError::Err(format!("option {} given twice", names.get(slot).unwrap_or(&""))));
            }
            seen |= bit;
            apply(slot, self)?;
        }
        Ok(())
    }
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

/// Who sent a write: a client is held to this server's limits (`tagcache.max-tags`, reserved
/// names); a write replayed from the primary or the AOF/RDB already happened and is never refused
/// by a local limit (valkey-bloom's `must_obey_client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Replayed,
}

const ONE_EXPIRY: &str = "only one of EX, PX, EXAT, PXAT and NOEXPIRE may be given";

const WRITE_OPTIONS: [&str; 8] = ["EX", "PX", "EXAT", "PXAT", "NOEXPIRE", "STALE", "TAGS", "TENANT"];

/// Parses `[EX s | PX ms | EXAT s | PXAT ms | NOEXPIRE] [STALE s] [TAGS n tag…] [TENANT t]`.
pub fn parse_write_options(mut cursor: Cursor<'_>, source: Source) -> Result<WriteOptions<'_>, CmdError> {
    let mut opts = WriteOptions {
        expiry: Expiry::Default,
        stale_s: None,
        tags: &[],
        tenant: None,
    };
    cursor.options(&WRITE_OPTIONS, |slot, c| {
        let unit = WRITE_OPTIONS.get(slot).copied().unwrap_or_default();
        match slot {
            0..=4 if opts.expiry != Expiry::Default => return Err(CmdError::Err(ONE_EXPIRY.into())),
            0..=3 => {
                let bad = || CmdError::Err(format!("invalid expire time for {unit}: must be a positive integer in range"));
                let v = parse_i64(c.value_of(unit)?.as_slice()).filter(|v| *v > 0).ok_or_else(bad)?;
                opts.expiry = match unit {
                    "EX" if v <= MAX_SECONDS => Expiry::In(v.saturating_mul(1000)),
                    "PX" if v <= MAX_SECONDS.saturating_mul(1000) => Expiry::In(v),
                    "EXAT" if v <= MAX_UNIX_MS / 1000 => Expiry::At(v.saturating_mul(1000)),
                    "PXAT" if v <= MAX_UNIX_MS => Expiry::At(v),
                    _ => return Err(bad()),
                };
            }
            4 => opts.expiry = Expiry::Never,
            5 => opts.stale_s = Some(c.int_of("STALE", 0, MAX_SECONDS)?),
            6 => {
                let max = config::get(&config::MAX_TAGS);
                let n = parse_i64(c.value_of("TAGS")?.as_slice())
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| CmdError::Err("TAGS count must be a non-negative integer".into()))?;
                if n > max && source == Source::Client {
                    return Err(CmdError::Err(format!("too many tags: {n} > tagcache.max-tags ({max})")));
                }
                let n = usize::try_from(n).map_err(|_| CmdError::Err("TAGS count out of range".into()))?;
                opts.tags = c.take(n, "TAGS count")?;
            }
            _ => {
                let tenant = c.value_of("TENANT")?;
                if tenant.as_slice() == b"*" && source == Source::Client {
                    return Err(CmdError::Err("TENANT * is reserved: in CACHE.INVALIDATE and CACHE.KEYS it means every tenant".into()));
                }
                opts.tenant = Some(tenant);
            }
        }
        Ok(())
    })?;
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
        let RedisError::String(text) = RedisError::from(CmdError::Lease) else { panic!() };
        assert_eq!(text, "LEASE lease is no longer valid");
        assert_eq!(shown(b"a\xff\r\n"), "a\\xff\\r\\n");
        assert!(shown(&[b'x'; 100]).ends_with("..."));
        assert_eq!(parse_i64(b"+5"), None);
        assert_eq!(parse_i64(b"-5"), Some(-5));
        assert_eq!(parse_i64(b"99999999999999999999"), None);
    }
}
