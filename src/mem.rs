//! Memory accounting helpers that cannot overflow.

/// Sum of byte counts, saturating instead of overflowing.
pub fn sum(parts: impl IntoIterator<Item = usize>) -> usize {
    parts.into_iter().fold(0usize, usize::saturating_add)
}

/// `count` items of `size` bytes each, saturating.
pub fn times(count: usize, size: usize) -> usize {
    count.saturating_mul(size)
}
