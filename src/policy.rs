//! Pure policy: which TTL a key gets, which tenant it belongs to, which namespace it counts in.

use crate::glob::Glob;
use regex::bytes::Regex;

/// The TTL and stale window applied to keys matching `pattern`.
#[derive(Debug, Clone)]
pub struct TtlRule {
    pub pattern: Glob,
    /// Seconds; 0 means no expiry.
    pub ttl_s: i64,
    /// Seconds of stale window; `None` falls back to `tagcache.default-stale`.
    pub stale_s: Option<i64>,
}

/// Upper bound for any TTL or stale window in seconds (about 31 years), so that conversions to
/// milliseconds and additions of absolute times can never overflow.
pub const MAX_SECONDS: i64 = 1_000_000_000;

/// Parses `tagcache.ttl-rules`: space-separated `pattern=ttl[/stale]`, seconds.
pub fn parse_ttl_rules(text: &str) -> Result<Vec<TtlRule>, String> {
    text.split_whitespace()
        .map(|rule| {
            let (pattern, spec) = rule
                .rsplit_once('=')
                .ok_or_else(|| format!("rule '{rule}' is not pattern=ttl[/stale]"))?;
            if pattern.is_empty() {
                return Err(format!("rule '{rule}' has an empty pattern"));
            }
            let (ttl, stale) = match spec.split_once('/') {
                Some((ttl, stale)) => (ttl, Some(stale)),
                None => (spec, None),
            };
            let ttl_s = parse_seconds(ttl).ok_or_else(|| {
                format!("rule '{rule}': ttl must be an integer from 0 to {MAX_SECONDS} seconds")
            })?;
            let stale_s = match stale {
                Some(s) => Some(parse_seconds(s).ok_or_else(|| {
                    format!("rule '{rule}': stale must be an integer from 0 to {MAX_SECONDS} seconds")
                })?),
                None => None,
            };
            Ok(TtlRule {
                pattern: Glob::new(pattern.as_bytes()),
                ttl_s,
                stale_s,
            })
        })
        .collect()
}

fn parse_seconds(s: &str) -> Option<i64> {
    let v: i64 = s.parse().ok()?;
    (0..=MAX_SECONDS).contains(&v).then_some(v)
}

/// First rule whose pattern matches the key.
pub fn rule_for<'a>(rules: &'a [TtlRule], key: &[u8]) -> Option<&'a TtlRule> {
    rules.iter().find(|r| r.pattern.matches(key))
}

/// Compiles `tagcache.tenant-regex`; empty disables it. The regex must have a capture group.
pub fn parse_tenant_regex(text: &str) -> Result<Option<Regex>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let re = Regex::new(text).map_err(|e| format!("invalid regex: {e}"))?;
    if re.captures_len() < 2 {
        return Err("the regex needs a capture group: the tenant is its first group".into());
    }
    Ok(Some(re))
}

/// Redis Cluster's hash tag: the bytes between the first `{` and the next `}`, when non-empty.
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = key.get(open.saturating_add(1)..)?;
    let close = rest.iter().position(|&b| b == b'}')?;
    let tag = rest.get(..close)?;
    (!tag.is_empty()).then_some(tag)
}

/// The tenant of a key named without an explicit TENANT: hash tag, else regex capture, else empty.
pub fn tenant_from_key<'k>(key: &'k [u8], tenant_regex: Option<&Regex>) -> &'k [u8] {
    if let Some(tag) = hash_tag(key) {
        return tag;
    }
    tenant_regex
        .and_then(|re| re.captures(key))
        .and_then(|caps| caps.get(1))
        .map(|m| m.as_bytes())
        .unwrap_or(b"")
}

/// Redis Cluster's hash slot of a key (CRC16/XMODEM of the hash tag, or of the whole key, mod 16384).
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => {
            let rest = key.get(open.saturating_add(1)..).unwrap_or_default();
            match rest.iter().position(|&b| b == b'}') {
                Some(close) if close > 0 => rest.get(..close).unwrap_or(key),
                _ => key,
            }
        }
        None => key,
    };
    crc16(hashed) & 0x3fff
}

fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &b| {
        let mut crc = crc ^ (u16::from(b) << 8);
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
        crc
    })
}

/// A tenant argument as written by a client: `{t42}` names the same tenant as `t42`.
pub fn tenant_argument(arg: &[u8]) -> &[u8] {
    match arg {
        [b'{', inner @ .., b'}'] if !inner.is_empty() => inner,
        _ => arg,
    }
}

/// The namespace of a key: its prefix up to the first separator, or the whole key.
pub fn namespace<'k>(key: &'k [u8], separator: &[u8]) -> &'k [u8] {
    let Some((&first, rest)) = separator.split_first() else {
        return key;
    };
    // On every read: look for the separator's first byte, compare the rest only there.
    let mut from = 0usize;
    while let Some(offset) = key.get(from..).and_then(|tail| tail.iter().position(|&b| b == first)) {
        let at = from.saturating_add(offset);
        let after = at.saturating_add(1);
        if key.get(after..).is_some_and(|tail| tail.starts_with(rest)) {
            return key.get(..at).unwrap_or(key);
        }
        from = after;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rules_parse_and_first_match_wins() {
        let rules =
            parse_ttl_rules("session:*=3600 user:*=1800  fmpa:*=300/60 stats:*=900 *=5").unwrap();
        assert_eq!(rules.len(), 5);
        let r = rule_for(&rules, b"fmpa:list:x").unwrap();
        assert_eq!((r.ttl_s, r.stale_s), (300, Some(60)));
        assert_eq!(rule_for(&rules, b"session:1").unwrap().ttl_s, 3600);
        assert_eq!(rule_for(&rules, b"other").unwrap().ttl_s, 5);
        assert!(parse_ttl_rules("").unwrap().is_empty());
        assert_eq!(parse_ttl_rules("a=b=7").unwrap()[0].ttl_s, 7);
    }

    #[test]
    fn ttl_rules_reject_garbage() {
        for bad in ["x", "=5", "a=", "a=-1", "a=1/-2", "a=1/x", "a=99999999999", "a=1/"] {
            assert!(parse_ttl_rules(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_resolution() {
        let re = parse_tenant_regex("^t:([^:]+):").unwrap();
        assert_eq!(tenant_from_key(b"fmpa:list:{t42}:x", re.as_ref()), b"t42");
        assert_eq!(tenant_from_key(b"t:acme:x", re.as_ref()), b"acme");
        assert_eq!(tenant_from_key(b"t:acme:{}x", re.as_ref()), b"acme");
        assert_eq!(tenant_from_key(b"plain", re.as_ref()), b"");
        assert_eq!(tenant_from_key(b"a{{x}}", None), b"{x");
        assert_eq!(tenant_from_key(b"a{b}{c}", None), b"b");
        assert_eq!(tenant_from_key(b"a{b", None), b"");
        assert!(parse_tenant_regex("(").is_err());
        assert!(parse_tenant_regex("abc").is_err());
        assert!(parse_tenant_regex("").unwrap().is_none());
    }

    #[test]
    fn tenant_argument_strips_braces() {
        assert_eq!(tenant_argument(b"{t1}"), b"t1");
        assert_eq!(tenant_argument(b"t1"), b"t1");
        assert_eq!(tenant_argument(b"{}"), b"{}");
        assert_eq!(tenant_argument(b"*"), b"*");
    }

    #[test]
    fn cluster_slots_match_redis() {
        // Values from CLUSTER KEYSLOT on Redis 7.0.
        for (key, slot) in [
            (&b"foo"[..], 12182),
            (b"bar", 5061),
            (b"t42", 7048),
            (b"{t42}:x", 7048),
            (b"a{t42}", 7048),
            (b"user1000", 3443),
            (b"{}x", 10595),
            (b"{x", 11068),
        ] {
            assert_eq!(key_slot(key), slot, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn namespaces() {
        assert_eq!(namespace(b"fmpa:list:x", b":"), b"fmpa");
        assert_eq!(namespace(b"plain", b":"), b"plain");
        assert_eq!(namespace(b"a::b", b"::"), b"a");
        assert_eq!(namespace(b"a:b", b""), b"a:b");
        assert_eq!(namespace(b"a:x::b", b"::"), b"a:x");
        assert_eq!(namespace(b"a:", b"::"), b"a:");
        assert_eq!(namespace(b":lead", b":"), b"");
    }
}
