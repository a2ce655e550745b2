//! An entry's expiry time as the index holds it: unix milliseconds, or `NEVER`. Pure data.

/// An entry without a TTL.
pub const NEVER: i64 = i64::MAX;

/// The latest expiry time the index holds (about the year 10889): a key's record keeps its
/// time in 48 bits (see `key::Packed`).
const LATEST: i64 = (1 << 48) - 2;

/// An expiry time as the index holds it: `NEVER` as is, a time before 1970 as 0 (expired all
/// the same), one past `LATEST` as `LATEST`.
pub fn held(at_ms: i64) -> i64 {
    if at_ms == NEVER {
        NEVER
    } else {
        at_ms.clamp(0, LATEST)
    }
}

/// Whether an entry expiring at `at_ms` has expired at `now_ms` (Redis: a key is expired once
/// the clock is past its expiry time).
pub fn has_expired(at_ms: i64, now_ms: i64) -> bool {
    at_ms != NEVER && at_ms < now_ms
}
