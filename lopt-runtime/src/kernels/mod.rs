//! Kernels: what runs fast, and is not differentiation.
//!
//! - [`gemm`]: dense `f32`/`f64` matrix products on strided views (API and views in
//!   `gemm/mod.rs`, instruction-set dispatch in `gemm/dispatch.rs`, the `Simd` vector
//!   abstraction with its portable and x86 forms in `gemm/simd.rs`, the broadcast, dot
//!   and packing kernels in `gemm/kernels.rs`);
//! - `gemm_threads`: products large enough to share, split into fixed chunks of columns
//!   on the thread pool (the same result on any number of threads);
//! - `gemm_packets`: products of matrices of SIMD-lane packets ([`Lanes`](crate::lanes::Lanes));
//! - `small_rows`: `b + x·W` for a few rows and a large weight matrix, read once;
//! - `helper`: a second core's share of a short computation, its worker woken at the start;
//! - `alloc`: large zeroed buffers, backed by huge pages where Linux offers them;
//! - `tile8`: the 8 × 8 in-register transpose and `f32` casts of the AVX2 tile paths;
//! - `vecmath`: branch-free `f32` transcendental functions that vectorize;
//! - `cpu`: the one place CPU features are detected, and the one way a loop is compiled
//!   for AVX2 (+FMA) beside the baseline.
//!
//! The derivative rules in [`crate::ad`] call these.

pub(crate) mod alloc;
pub(crate) mod cpu;
#[doc(hidden)]
pub mod gemm;
pub(crate) mod gemm_packets;
pub(crate) mod gemm_threads;
pub(crate) mod helper;
pub(crate) mod small_rows;
#[cfg(target_arch = "x86_64")]
pub(crate) mod tile8;
pub(crate) mod vecmath;

/// Whether work handed to the thread pool can run on another core: the pool has more
/// than one thread and the caller is not one of them. Inside the pool (a data-parallel
/// chunk, a lane group of a vmapped family) the other threads already have work of their
/// own, and splitting a product or a pass further only adds overhead. (A caller that
/// runs everything inside `pool.install` therefore gets no such splits.)
pub(crate) fn pool_is_free() -> bool {
    rayon::current_num_threads() > 1 && rayon::current_thread_index().is_none()
}

/// A pointer into one buffer, shared by the tasks of one parallel call, each of which
/// writes a part no other task touches.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: the tasks write disjoint parts, and the buffer's owner reads it only after they
// have all joined.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so that closures capture the whole `SharedMut`).
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}
