//! One mutable buffer that parallel tasks share, each writing its own
//! disjoint part: the one raw-pointer type of the CPU kernels.
//!
//! Prefer rayon's `par_chunks_mut` where every task owns one contiguous
//! chunk; this type is for the layouts where a task's part is not one chunk
//! (a column block of every row, several buffers per task, lane-major
//! groups), which safe slices cannot split.

/// A mutable buffer handed to parallel tasks that write disjoint ranges.
///
/// It holds the buffer's address and length, not a borrow: whoever creates
/// it keeps the buffer alive, unmoved and otherwise unused until the tasks
/// are done (every use so far creates it right before a parallel loop over
/// a local vector and drops it after).
#[derive(Debug, Clone, Copy)]
pub struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: a `SharedMut` only hands out `&mut [T]` to ranges that the caller
// of `slice` promises no other task touches, so sharing it between threads
// is sharing disjoint `&mut [T]`, which is sound when `T: Send`.
unsafe impl<T: Send> Sync for SharedMut<T> {}
// SAFETY: as above; moving it to another thread moves access to `T`s.
unsafe impl<T: Send> Send for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// Shares `buf`; see the type's documentation for how long it may be used.
    pub fn new(buf: &mut [T]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        }
    }

    /// Elements `start..start + len` of the buffer (panics if they are not
    /// inside it).
    ///
    /// # Safety
    /// The buffer is still alive and no other live slice (from this task or
    /// another) overlaps the range.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(
            start <= self.len && len <= self.len - start,
            "SharedMut: range {start}..{start}+{len} outside a buffer of {}",
            self.len
        );
        // SAFETY: the range is inside the buffer (checked above), which the
        // caller guarantees is alive and not aliased on that range.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}
