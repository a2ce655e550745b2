//! Borrowing the bytes of Redis strings.

use redis_module::raw;

/// The bytes of a Redis string (empty for null).
pub fn string_bytes<'a>(s: *const raw::RedisModuleString) -> &'a [u8] {
    if s.is_null() {
        return &[];
    }
    let mut len = 0usize;
    let ptr = raw::string_ptr_len(s, &mut len);
    if ptr.is_null() {
        return &[];
    }
    // SAFETY: Redis guarantees `len` readable bytes at `ptr` for the string's lifetime.
    unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
}
