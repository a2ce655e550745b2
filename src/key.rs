//! A key's name as the index holds it, with the index's record of the key in the same
//! allocation: its write epoch, its expiry time and its entry's size. The key map, the tenant
//! order, the tag sets, the expiry buckets and the pending invalidations all hold this one
//! allocation, so a key costs the index one allocation and an 8-byte pointer per structure,
//! and a lookup that compares the name has the record in the same cache lines.
//!
//! The record is read and changed through the key map's copy only: a copy a pending
//! invalidation still holds after the key was written again is a stale name, nothing more.
//! Its fields are atomics so that the shared allocation can change in place; only Redis's
//! main thread touches the index, so relaxed ordering is all they need.

use crate::name::Named;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};

#[derive(Debug)]
pub struct KeyMeta {
    /// The write epoch (see `pending`): invalidations pending since then may cover the key.
    born: AtomicU64,
    /// When the key expires (unix ms, `expiry::NEVER` without a TTL), as Redis holds it.
    expires_at: AtomicI64,
    /// Memory of the entry (value, tags, Redis's per-key structures), for statistics;
    /// saturates at 4 GiB.
    entry_bytes: AtomicU32,
}

pub type Key = Named<KeyMeta>;

fn saturate(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl Named<KeyMeta> {
    pub fn new_key(name: &[u8], born: u64, expires_at: i64, entry_bytes: usize) -> Key {
        let meta = KeyMeta {
            born: AtomicU64::new(born),
            expires_at: AtomicI64::new(expires_at),
            entry_bytes: AtomicU32::new(saturate(entry_bytes)),
        };
        Named::with_header(meta, name)
    }

    pub fn born(&self) -> u64 {
        self.header().born.load(Relaxed)
    }

    pub fn set_born(&self, epoch: u64) {
        self.header().born.store(epoch, Relaxed);
    }

    pub fn expires_at(&self) -> i64 {
        self.header().expires_at.load(Relaxed)
    }

    /// Sets the expiry time; returns the one it replaces.
    pub fn set_expires_at(&self, at_ms: i64) -> i64 {
        self.header().expires_at.swap(at_ms, Relaxed)
    }

    pub fn entry_bytes(&self) -> usize {
        self.header().entry_bytes.load(Relaxed) as usize
    }

    /// Sets the entry's size; returns the one it replaces.
    pub fn set_entry_bytes(&self, bytes: usize) -> usize {
        self.header().entry_bytes.swap(saturate(bytes), Relaxed) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_pointer_and_its_record_changes_in_every_holder() {
        assert_eq!(std::mem::size_of::<Key>(), 8);
        let key = Key::new_key(b"c:1:{t1}:00000001", 3, 1_000, 400);
        let held = key.clone();
        assert_eq!((key.born(), key.expires_at(), key.entry_bytes()), (3, 1_000, 400));
        key.set_born(7);
        assert_eq!(key.set_expires_at(2_000), 1_000);
        assert_eq!(key.set_entry_bytes(usize::MAX), 400);
        assert_eq!((held.born(), held.expires_at(), held.entry_bytes()), (7, 2_000, u32::MAX as usize));
        assert_eq!(&*held, b"c:1:{t1}:00000001");
        // Reference count, record and length, then a 19-byte name: one 64-byte allocation.
        assert_eq!(key.footprint(), 64);
    }
}
