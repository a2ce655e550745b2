//! A header and a byte string in one allocation, owned through a `Box` and handed to Redis as
//! one thin pointer (a module value is a `void *`). A cache entry is such a value: its
//! metadata and its bytes are read together (one allocation, one cache line for small
//! values), and the allocator rounds one size up instead of two.
//!
//! `Thin<H>` is unsized, so a `&mut Thin<H>` cannot be assigned or swapped: code holding one
//! borrowed from Redis can change the header and nothing else, and the allocation Redis points
//! to stays the one it owns.

use std::alloc::{alloc, Layout};
use std::ffi::c_void;
use std::fmt;
use std::ptr;

#[repr(C)]
pub struct Thin<H> {
    head: H,
    len: usize,
    bytes: [u8],
}

/// `Thin<H>` without its bytes: the same `repr(C)` prefix, so the same offsets.
#[repr(C)]
struct Prefix<H> {
    head: H,
    len: usize,
}

/// Where the bytes start, and the layout of a value holding `len` of them (what
/// `Layout::for_value` gives for the `Box` that frees it). None past `isize::MAX`.
fn layout<H>(len: usize) -> Option<(Layout, usize)> {
    let offset = std::mem::offset_of!(Prefix<H>, len).checked_add(std::mem::size_of::<usize>())?;
    let size = offset.checked_add(len)?;
    let layout = Layout::from_size_align(size, std::mem::align_of::<Prefix<H>>()).ok()?;
    Some((layout.pad_to_align(), offset))
}

impl<H> Thin<H> {
    /// A new value; None when the allocator fails.
    pub fn alloc(head: H, bytes: &[u8]) -> Option<Box<Thin<H>>> {
        let (layout, offset) = layout::<H>(bytes.len())?;
        // SAFETY: the layout is never zero-sized (the prefix alone is not).
        let raw = unsafe { alloc(layout) };
        if raw.is_null() {
            return None;
        }
        // SAFETY: `raw` is a fresh allocation of `layout`: the prefix fits at its start and
        // `bytes.len()` bytes at `offset`, where `Thin<H>` keeps them (same repr(C) prefix).
        // The fat pointer carries that length, as `Box::from_raw` and its drop expect:
        // `Layout::for_value` of it is `layout`.
        unsafe {
            ptr::write(raw.cast::<Prefix<H>>(), Prefix { head, len: bytes.len() });
            ptr::copy_nonoverlapping(bytes.as_ptr(), raw.add(offset), bytes.len());
            Some(Box::from_raw(ptr::slice_from_raw_parts_mut(raw, bytes.len()) as *mut Thin<H>))
        }
    }

    pub fn head(&self) -> &H {
        &self.head
    }

    pub fn head_mut(&mut self) -> &mut H {
        &mut self.head
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The thin pointer Redis keeps; `from_raw` takes ownership back.
    pub fn into_raw(value: Box<Thin<H>>) -> *mut c_void {
        Box::into_raw(value).cast::<c_void>()
    }

    /// The fat pointer for a thin one, its length read from the value itself.
    ///
    /// SAFETY (caller): `raw` comes from `into_raw` and the value is alive.
    unsafe fn fat(raw: *const c_void) -> *mut Thin<H> {
        // SAFETY: per the caller, `raw` points at a live value, which starts with its prefix.
        let len = unsafe { (*raw.cast::<Prefix<H>>()).len };
        ptr::slice_from_raw_parts_mut(raw.cast_mut().cast::<u8>(), len) as *mut Thin<H>
    }

    /// Takes back a value given away by `into_raw` (None for NULL).
    ///
    /// # Safety
    /// `raw` is NULL or comes from `into_raw`, and nothing else will free it.
    pub unsafe fn from_raw(raw: *mut c_void) -> Option<Box<Thin<H>>> {
        // SAFETY: per the caller, a value of ours, owned by nobody else from now on.
        (!raw.is_null()).then(|| unsafe { Box::from_raw(Self::fat(raw)) })
    }

    /// Borrows a value given away by `into_raw` (None for NULL).
    ///
    /// # Safety
    /// `raw` is NULL or comes from `into_raw`, and the value outlives `'a` without being
    /// changed meanwhile except through this borrow.
    pub unsafe fn borrow<'a>(raw: *const c_void) -> Option<&'a Thin<H>> {
        // SAFETY: per the caller.
        unsafe { (!raw.is_null()).then(|| &*Self::fat(raw)) }
    }

    /// Borrows a value given away by `into_raw` mutably (None for NULL).
    ///
    /// # Safety
    /// As `borrow`, and no other borrow of it is alive during `'a`.
    pub unsafe fn borrow_mut<'a>(raw: *mut c_void) -> Option<&'a mut Thin<H>> {
        // SAFETY: per the caller.
        unsafe { (!raw.is_null()).then(|| &mut *Self::fat(raw)) }
    }
}

impl<H: PartialEq> PartialEq for Thin<H> {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && self.bytes == other.bytes
    }
}

impl<H: Eq> Eq for Thin<H> {}

impl<H: fmt::Debug> fmt::Debug for Thin<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thin").field("head", &self.head).field("bytes", &self.bytes.escape_ascii().to_string()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn one_allocation_round_trips_through_a_thin_pointer_and_drops_its_header() {
        let counted = Arc::new(());
        let value = Thin::alloc((Arc::clone(&counted), 7u32), b"hello").expect("allocated");
        assert_eq!((value.bytes(), value.head().1), (&b"hello"[..], 7));
        // Header and bytes, rounded to the alignment: 8 + 4 (+ 4) + 8 + 5, to 32.
        assert_eq!(std::mem::size_of_val(&*value), 32);
        let raw = Thin::into_raw(value);
        // SAFETY: `raw` came from into_raw just above and is alive.
        let borrowed = unsafe { Thin::<(Arc<()>, u32)>::borrow_mut(raw) }.expect("allocated");
        borrowed.head_mut().1 = 8;
        assert_eq!(Arc::strong_count(&counted), 2);
        // SAFETY: as above; nothing else frees it.
        let back = unsafe { Thin::<(Arc<()>, u32)>::from_raw(raw) }.expect("allocated");
        assert_eq!((back.bytes(), back.head().1), (&b"hello"[..], 8));
        drop(back);
        assert_eq!(Arc::strong_count(&counted), 1, "the header was dropped with the value");
        // SAFETY: NULL is accepted.
        assert!(unsafe { Thin::<u8>::from_raw(ptr::null_mut()) }.is_none());
        let empty = Thin::alloc(0u64, b"").expect("allocated");
        assert_eq!((empty.bytes().len(), std::mem::size_of_val(&*empty)), (0, 16));
        assert_eq!(*empty, *Thin::alloc(0u64, b"").expect("allocated"));
    }
}
