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
}
