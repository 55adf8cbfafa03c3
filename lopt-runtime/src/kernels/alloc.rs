//! Large zeroed buffers (im2col's patches, col2im's sums): from the allocator's zeroed
//! memory, so fresh pages arrive zeroed from the kernel with no pass over the buffer, and,
//! on Linux, advised as transparent huge pages (`madvise(MADV_HUGEPAGE)`), so a 75 MB
//! patches matrix is faulted in 2 MB at a time instead of 4 KB: measured on the
//! benchmark machine, the page faults of 4 KB pages made im2col of the largest conv
//! layer take 7× as long as col2im, which moves the same data.

use std::any::TypeId;
use std::cell::Cell;

use crate::scalar::Real;

/// Below this many bytes a buffer is left to the allocator as it is.
const HUGE: usize = 4 << 20;

/// Whether `n` elements of `S` make a buffer large enough for [`zeroed`]'s huge pages.
pub(crate) fn is_large<S>(n: usize) -> bool {
    n.saturating_mul(std::mem::size_of::<S>()) >= HUGE
}

thread_local! {
    /// The last large `f32` buffer handed to [`recycle`] on this thread.
    static SPARE_F32: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// The last large `f64` buffer handed to [`recycle`] on this thread.
    static SPARE_F64: Cell<Vec<f64>> = const { Cell::new(Vec::new()) };
}

/// Keeps a large `f32`/`f64` buffer that is no longer needed (a convolution's patch
/// cotangent once col2im has summed it) for the next [`scratch`] on this thread, in
/// place of any buffer kept before; other buffers are dropped.
pub(crate) fn recycle<S: Real>(v: Vec<S>) {
    if !is_large::<S>(v.capacity()) {
        return;
    }
    if TypeId::of::<S>() == TypeId::of::<f32>() {
        // SAFETY: `S` is `f32` (the TypeId test).
        SPARE_F32.with(|s| s.set(unsafe { cast(v) }));
    } else if TypeId::of::<S>() == TypeId::of::<f64>() {
        // SAFETY: `S` is `f64` (the TypeId test).
        SPARE_F64.with(|s| s.set(unsafe { cast(v) }));
    }
}

/// Room for `n` elements, none of them initialized (length 0, capacity at least `n`),
/// for a result written entirely before it is read (the caller then sets the length):
/// the buffer kept by [`recycle`] when its capacity is between `n` and `2n` (no fresh
/// pages to fault in and clear), else a fresh one advised as huge pages. Not zeroed:
/// once [`keep_freed_memory`] keeps freed memory in the heap, a fresh buffer comes from
/// there, and zeroed memory would cost a pass over it (8 MB, serial, for the LSTM
/// benchmark's input product).
pub(crate) fn scratch<S: Real>(n: usize) -> Vec<S> {
    let mut v = kept(n).unwrap_or_else(|| {
        let v = Vec::<S>::with_capacity(n);
        advise_huge(
            v.as_ptr() as usize,
            n.saturating_mul(std::mem::size_of::<S>()),
        );
        v
    });
    v.clear();
    v
}

/// The buffer kept by [`recycle`] when its capacity is between `n` and `2n`; else it stays
/// kept (a smaller result, the forward product, must not evict the patch-sized buffer).
fn kept<S: Real>(n: usize) -> Option<Vec<S>> {
    fn fit<T>(slot: &Cell<Vec<T>>, n: usize) -> Option<Vec<T>> {
        let v = slot.take();
        if v.capacity() < n || v.capacity() > n.saturating_mul(2) {
            slot.set(v);
            return None;
        }
        Some(v)
    }
    if TypeId::of::<S>() == TypeId::of::<f32>() {
        // SAFETY: `S` is `f32` (the TypeId test).
        SPARE_F32
            .with(|s| fit(s, n))
            .map(|v| unsafe { cast::<f32, S>(v) })
    } else if TypeId::of::<S>() == TypeId::of::<f64>() {
        // SAFETY: `S` is `f64` (the TypeId test).
        SPARE_F64
            .with(|s| fit(s, n))
            .map(|v| unsafe { cast::<f64, S>(v) })
    } else {
        None
    }
}

/// The same vector as another element type.
///
/// # Safety
/// `T` and `S` are the same type.
unsafe fn cast<T, S>(v: Vec<T>) -> Vec<S> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `T` = `S` (the contract): the same allocation, length and capacity.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut S, v.len(), v.capacity()) }
}

/// `n` zeros. For `f32` and `f64` the memory comes zeroed from the allocator and, when
/// it is large, is advised as huge pages before it is touched.
pub(crate) fn zeroed<S: Real>(n: usize) -> Vec<S> {
    let v = if TypeId::of::<S>() == TypeId::of::<f32>() {
        // SAFETY: `S` is `f32` (the TypeId test).
        unsafe { cast(vec![0f32; n]) }
    } else if TypeId::of::<S>() == TypeId::of::<f64>() {
        // SAFETY: `S` is `f64` (the TypeId test).
        unsafe { cast(vec![0f64; n]) }
    } else {
        return vec![S::zero(); n];
    };
    advise_huge(v.as_ptr() as usize, std::mem::size_of_val(&v[..]));
    v
}

/// Asks Linux to back the whole 2 MB pages inside the `bytes` of an allocation at `addr`
/// with transparent huge pages (a hint: nothing changes when the kernel declines or the
/// buffer is small).
fn advise_huge(addr: usize, bytes: usize) {
    #[cfg(target_os = "linux")]
    {
        if bytes < HUGE {
            return;
        }
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_HUGEPAGE: i32 = 14;
        const PAGE: usize = 2 << 20;
        let start = addr.next_multiple_of(PAGE);
        let end = (addr + bytes) / PAGE * PAGE;
        if end > start {
            // SAFETY: the range lies inside the allocation, which this function does not
            // read or write; the advice only changes how its pages are backed (the
            // result is ignored: a refusal leaves ordinary pages).
            unsafe {
                madvise(start as *mut std::ffi::c_void, end - start, MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (addr, bytes, HUGE);
}

/// Asks the C allocator, once per process, to keep the memory a reverse sweep frees for
/// the next one instead of returning it to the kernel (glibc on Linux; nothing elsewhere).
///
/// A `value_and_grad` call keeps every step's intermediates on its tape (about 30 MB for
/// the LSTM language model of `benches/tasks.rs`) and frees them all at the end. glibc's
/// defaults return the top of the heap above 2× the last large free to the kernel, and
/// serve blocks above its adaptive mmap threshold with fresh mappings: the next call then
/// faults in and clears every page again (measured: a fifth of that LSTM gradient's time
/// in the kernel's page-fault and page-clearing paths). With a trim threshold of 1 GiB
/// and an mmap threshold of 32 MiB (glibc's largest), the freed pages stay mapped and are
/// reused: the process's resident memory stays at its peak (what an arena would hold).
/// Set `LOPT_KEEP_FREED_MEMORY=0` to leave the allocator's settings alone.
pub fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            if std::env::var_os("LOPT_KEEP_FREED_MEMORY").is_some_and(|v| v == "0") {
                return;
            }
            extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            // glibc's malloc.h.
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: mallopt only changes the allocator's tuning parameters; it is
            // thread-safe and its result (0 on refusal) needs no handling.
            unsafe {
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
            }
        }
    });
}

/// A buffer of `S` kept by the thread between calls (a per-call `Vec` of a few hundred
/// kilobytes was zeroed, and past the allocator's mmap threshold page-faulted, on every
/// learned-optimizer update and attention chunk): taken from the thread's pool, given back when dropped, with the length and
/// contents it was left with. A thread keeps one buffer per scalar type in use.
pub(crate) struct ThreadBuffer<S: Real>(Vec<S>);

thread_local! {
    static THREAD_BUFFERS: std::cell::RefCell<Vec<Box<dyn std::any::Any>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl<S: Real> ThreadBuffer<S> {
    /// The thread's buffer of `S` (empty the first time, or while another is taken).
    pub(crate) fn take() -> Self {
        let kept = THREAD_BUFFERS.with(|p| {
            let mut p = p.borrow_mut();
            let i = p.iter().position(|b| b.is::<Vec<S>>())?;
            p.swap_remove(i).downcast::<Vec<S>>().ok()
        });
        ThreadBuffer(kept.map_or_else(Vec::new, |b| *b))
    }
}

impl<S: Real> Drop for ThreadBuffer<S> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        // During thread teardown the pool may be gone: the buffer is then freed.
        let _ = THREAD_BUFFERS.try_with(|p| p.borrow_mut().push(Box::new(v)));
    }
}

impl<S: Real> std::ops::Deref for ThreadBuffer<S> {
    type Target = Vec<S>;
    fn deref(&self) -> &Vec<S> {
        &self.0
    }
}

impl<S: Real> std::ops::DerefMut for ThreadBuffer<S> {
    fn deref_mut(&mut self) -> &mut Vec<S> {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`ThreadBuffer`] hands the thread's buffer back on drop, contents kept; a second one
    /// taken while the first is out is another, empty buffer; each scalar type has its
    /// own. Catches: a buffer not given back on drop (the second take is empty), a
    /// buffer left in the pool when taken (the second one out would not be empty).
    #[test]
    fn scratch_is_kept_per_thread_and_never_shared() {
        std::thread::spawn(|| {
            ThreadBuffer::<f32>::take().extend([1.0, 2.0]);
            let a = ThreadBuffer::<f32>::take();
            assert_eq!(&a[..], &[1.0, 2.0]);
            let b = ThreadBuffer::<f32>::take();
            assert!(b.is_empty());
            assert!(ThreadBuffer::<f64>::take().is_empty());
        })
        .join()
        .unwrap();
    }
}
