//! A key's name as the index holds it, with the index's record of the key in the same
//! allocation: its write epoch, its expiry time, its entry's size and its labels. The key
//! map, the tenant order, the tag sets, the expiry buckets and the pending invalidations all
//! hold this one allocation, so a key costs the index one allocation and an 8-byte pointer
//! per structure, and a lookup that compares the name has the record in the same cache lines.
//!
//! The record is read and changed through the key map's copy only: a copy a pending
//! invalidation still holds after the key was written again is a stale name, nothing more.
//! Its changing fields are atomics so that the shared allocation can change in place; only
//! Redis's main thread touches the index, so relaxed ordering is all they need.
//!
//! The expiry time and the entry's size share one word (see `Packed`), so that the record
//! with its labels is 24 bytes and a key name of up to 24 bytes still fits a 64-byte
//! allocation.

use crate::ttl;
use crate::name::{Labels, Named};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug)]
pub struct KeyMeta {
    /// The write epoch (see `pending`): invalidations pending since then may cover the key.
    born: AtomicU64,
    /// The expiry time and the entry's size (see `Packed`).
    packed: AtomicU64,
    /// The entry's tenant and tags, shared with the entry.
    labels: Labels,
}

pub type Key = Named<KeyMeta>;

/// An expiry time in the high 48 bits (unix ms as `ttl::held` gives it; all ones for
/// `ttl::NEVER`) and the entry's size in the low 16 (see `size_code`).
struct Packed;

impl Packed {
    const SIZE_BITS: u32 = 16;
    const NEVER: u64 = (1 << 48) - 1;

    fn pack(expires_at: i64, size: u16) -> u64 {
        let at = match ttl::held(expires_at) {
            ttl::NEVER => Packed::NEVER,
            at => u64::try_from(at).unwrap_or(0),
        };
        (at << Packed::SIZE_BITS) | u64::from(size)
    }

    fn expires_at(word: u64) -> i64 {
        match word >> Packed::SIZE_BITS {
            Packed::NEVER => ttl::NEVER,
            at => i64::try_from(at).unwrap_or(ttl::NEVER),
        }
    }

    fn size(word: u64) -> u16 {
        (word & 0xffff) as u16
    }
}

/// An entry's size in 16 bits: an 11-bit mantissa and a 5-bit shift. Exact below 2 KiB,
/// rounded down by less than 0.1 % above, saturating at about 4 TiB. Statistics only: the
/// index adds and takes back the size as decoded, so its running total stays exact.
mod size_code {
    const MANTISSA_BITS: u32 = 11;
    const MAX_SHIFT: u32 = 31;

    pub fn encode(bytes: usize) -> u16 {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        let bits = bytes.checked_ilog2().map_or(0, |log| log.saturating_add(1));
        let shift = bits.saturating_sub(MANTISSA_BITS);
        if shift > MAX_SHIFT {
            return u16::MAX;
        }
        let mantissa = bytes >> shift;
        u16::try_from((u64::from(shift) << MANTISSA_BITS) | mantissa).unwrap_or(u16::MAX)
    }

    pub fn decode(code: u16) -> usize {
        let shift = u32::from(code >> MANTISSA_BITS);
        let mantissa = u64::from(code & ((1 << MANTISSA_BITS) - 1));
        usize::try_from(mantissa << shift).unwrap_or(usize::MAX)
    }
}

impl Named<KeyMeta> {
    pub fn new_key(name: &[u8], born: u64, expires_at: i64, entry_bytes: usize, labels: Labels) -> Key {
        let meta = KeyMeta {
            born: AtomicU64::new(born),
            packed: AtomicU64::new(Packed::pack(expires_at, size_code::encode(entry_bytes))),
            labels,
        };
        Named::with_header(meta, name)
    }

    pub fn born(&self) -> u64 {
        self.header().born.load(Relaxed)
    }

    pub fn set_born(&self, epoch: u64) {
        self.header().born.store(epoch, Relaxed);
    }

    /// When the key expires, as the index holds it (`ttl::held`).
    pub fn expires_at(&self) -> i64 {
        Packed::expires_at(self.header().packed.load(Relaxed))
    }

    /// Sets the expiry time; returns the one it replaces and the one now held.
    pub fn set_expires_at(&self, at_ms: i64) -> (i64, i64) {
        let packed = &self.header().packed;
        let word = packed.load(Relaxed);
        let new = Packed::pack(at_ms, Packed::size(word));
        packed.store(new, Relaxed);
        (Packed::expires_at(word), Packed::expires_at(new))
    }

    /// The entry's size as the record holds it (see `size_code`).
    pub fn entry_bytes(&self) -> usize {
        size_code::decode(Packed::size(self.header().packed.load(Relaxed)))
    }

    /// Sets the entry's size; returns the one it replaces (both as the record holds them).
    pub fn set_entry_bytes(&self, bytes: usize) -> usize {
        let packed = &self.header().packed;
        let word = packed.load(Relaxed);
        packed.store(Packed::pack(Packed::expires_at(word), size_code::encode(bytes)), Relaxed);
        size_code::decode(Packed::size(word))
    }

    pub fn labels(&self) -> &Labels {
        &self.header().labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::Name;

    #[test]
    fn a_key_is_one_pointer_and_its_record_changes_in_every_holder() {
        assert_eq!(std::mem::size_of::<Key>(), 8);
        let labels = Labels::new(Name::new(b"t"), vec![Name::new(b"a")]);
        let key = Key::new_key(b"c:1:{t1}:00000001", 3, 1_000, 400, labels.clone());
        let held = key.clone();
        assert_eq!((key.born(), key.expires_at(), key.entry_bytes()), (3, 1_000, 400));
        assert!(key.labels().same(&labels));
        key.set_born(7);
        assert_eq!(key.set_expires_at(2_000), (1_000, 2_000));
        assert_eq!(key.set_entry_bytes(usize::MAX), 400);
        assert_eq!((held.born(), held.expires_at()), (7, 2_000));
        assert_eq!(held.entry_bytes(), 2047 << 31, "saturated");
        assert_eq!(key.set_expires_at(ttl::NEVER), (2_000, ttl::NEVER));
        assert_eq!((held.expires_at(), held.entry_bytes()), (ttl::NEVER, 2047 << 31), "each field kept the other");
        assert_eq!(&*held, b"c:1:{t1}:00000001");
        // Reference count, record and length, then a 19-byte name: one 64-byte allocation.
        assert_eq!(std::mem::size_of::<KeyMeta>(), 24);
        assert_eq!(key.footprint(), 64);
    }

    #[test]
    fn expiry_times_are_held_within_48_bits() {
        let key = |at| Key::new_key(b"k", 0, at, 0, Labels::default()).expires_at();
        for at in [0, 1, 1_800_000_000_000, (1 << 48) - 2, ttl::NEVER] {
            assert_eq!(key(at), at);
        }
        assert_eq!(key(-5), 0, "a time before 1970 is as expired as 1970");
        assert_eq!(key(1 << 48), (1 << 48) - 2, "after the year 10889, that year");
        assert_eq!(key(i64::MAX - 1), (1 << 48) - 2);
        assert_eq!(key(1 << 50), ttl::held(1 << 50), "as ttl::held says");
    }

    #[test]
    fn sizes_are_exact_below_2_kib_and_within_a_thousandth_above() {
        for bytes in [0usize, 1, 64, 473, 2047] {
            assert_eq!(size_code::decode(size_code::encode(bytes)), bytes);
        }
        let mut bytes = 2048usize;
        while bytes < (1 << 40) {
            for b in [bytes, bytes + 1, bytes * 3 / 2 + 7] {
                let back = size_code::decode(size_code::encode(b));
                assert!(back <= b && (b - back) * 1024 <= b, "{b} came back as {back}");
            }
            bytes *= 2;
        }
        assert_eq!(size_code::decode(size_code::encode(usize::MAX)), 2047 << 31);
        assert_eq!(size_code::decode(u16::MAX), 2047 << 31);
    }
}
