//! Memory accounting that cannot overflow, sized the way Redis's allocator (jemalloc) rounds
//! requests, so the figures track `used_memory` rather than the bytes asked for.

/// Sum of byte counts, saturating instead of overflowing.
pub fn sum(parts: impl IntoIterator<Item = usize>) -> usize {
    parts.into_iter().fold(0usize, usize::saturating_add)
}

/// `count` items of `size` bytes each, saturating.
pub fn times(count: usize, size: usize) -> usize {
    count.saturating_mul(size)
}

/// The bytes jemalloc hands out for a request of `n` bytes: 8, then multiples of 16 up to 128,
/// then four size classes per doubling.
pub fn allocation(n: usize) -> usize {
    match n {
        0 => 0,
        1..=8 => 8,
        9..=128 => n.div_ceil(16).saturating_mul(16),
        _ => {
            let top = usize::BITS.saturating_sub(n.saturating_sub(1).leading_zeros());
            let spacing = 1usize.checked_shl(top.saturating_sub(3)).unwrap_or(usize::MAX);
            n.div_ceil(spacing).saturating_mul(spacing)
        }
    }
}

/// The bytes jemalloc hands out for an `Arc` of `n` bytes (two reference counts first).
pub fn arc_allocation(n: usize) -> usize {
    allocation(n.saturating_add(std::mem::size_of::<[usize; 2]>()))
}

/// What Redis itself spends per key of the keyspace besides the value: the key's sds string,
/// the main and expires dict entries, the object header and module-value wrapper, and about two
/// dict bucket pointers (tables are sized to the next power of two).
pub fn keyspace_overhead(key_len: usize) -> usize {
    const DICT_ENTRY: usize = 24;
    const ROBJ: usize = 16;
    const MODULE_VALUE: usize = 16;
    const BUCKETS: usize = 2 * 8;
    sum([
        allocation(key_len.saturating_add(4)),
        allocation(DICT_ENTRY),
        allocation(DICT_ENTRY),
        allocation(ROBJ),
        allocation(MODULE_VALUE),
        BUCKETS,
    ])
}

/// A table that can give memory back once most of it is empty.
pub trait Shrink {
    fn len_and_capacity(&self) -> (usize, usize);
    fn shrink_to_len(&mut self, min: usize);

    /// Shrinks to twice the live size once three quarters are empty (amortized O(1): a table
    /// must lose half its elements again before the next shrink), and to nothing when empty.
    fn shrink_if_sparse(&mut self) {
        let (len, capacity) = self.len_and_capacity();
        if capacity > 16 && len.saturating_mul(4) < capacity {
            self.shrink_to_len(len.saturating_mul(2));
        }
    }
}

impl<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher> Shrink for std::collections::HashMap<K, V, S> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to_len(&mut self, min: usize) {
        self.shrink_to(min);
    }
}

impl<K: Eq + std::hash::Hash, S: std::hash::BuildHasher> Shrink for std::collections::HashSet<K, S> {
    fn len_and_capacity(&self) -> (usize, usize) {
        (self.len(), self.capacity())
    }
    fn shrink_to_len(&mut self, min: usize) {
        self.shrink_to(min);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_size_classes() {
        let cases = [(0, 0), (1, 8), (8, 8), (9, 16), (17, 32), (33, 48), (100, 112), (128, 128), (129, 160), (200, 224), (257, 320), (1000, 1024), (1025, 1280), (5000, 5120)];
        for (n, class) in cases {
            assert_eq!(allocation(n), class, "{n}");
        }
        assert_eq!(sum([usize::MAX, 1]), usize::MAX);
        assert_eq!(times(usize::MAX, 2), usize::MAX);
        assert!(keyspace_overhead(10) > 100);
    }

    #[test]
    fn sparse_tables_shrink() {
        let mut m: std::collections::HashMap<u32, u32> = (0..10_000).map(|i| (i, i)).collect();
        let full = m.capacity();
        m.retain(|k, _| *k < 100);
        m.shrink_if_sparse();
        assert!(m.capacity() < full / 10, "{} of {full}", m.capacity());
        m.clear();
        m.shrink_if_sparse();
        assert_eq!(m.capacity(), 0);
    }
}
