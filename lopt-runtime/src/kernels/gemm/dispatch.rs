//! Instruction-set dispatch: the kernels compiled once per [`Isa`] (detected in
//! `kernels/cpu.rs`), and `matrixmultiply` for large products.

use super::*;
use crate::kernels::cpu::Isa;

/// The operands of one product, as raw parts.
#[derive(Clone, Copy)]
pub(super) struct Job<T> {
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) a: *const T,
    pub(super) rsa: usize,
    pub(super) csa: usize,
    pub(super) b: *const T,
    pub(super) rsb: usize,
    pub(super) csb: usize,
    pub(super) c: *mut T,
    /// Elements between the starts of `C`'s columns (at least `m`).
    pub(super) ldc: usize,
    pub(super) acc: bool,
    /// `B` packed by `drive_bcast` (`pack_b`), or null: the kernels then read `b`.
    pub(super) bp: *const T,
    /// One value per column of `C` added to the product (`C = A·B + 1·biasᵀ`, never
    /// with `acc`), or null. Each element is the product's rounded sum plus the bias,
    /// rounded: what adding the bias to the finished product gives.
    pub(super) bias: *const T,
}

impl<T> Job<T> {
    #[cfg(test)]
    pub(super) fn new(a: MatRef<'_, T>, b: MatRef<'_, T>, c: *mut T, acc: bool) -> Self {
        let rows = a.rows;
        Self::with_ldc(a, b, c, rows, acc)
    }

    /// [`Job::new`] with `C`'s columns `ldc` apart.
    pub(super) fn with_ldc(
        a: MatRef<'_, T>,
        b: MatRef<'_, T>,
        c: *mut T,
        ldc: usize,
        acc: bool,
    ) -> Self {
        Job {
            m: a.rows,
            k: a.cols,
            n: b.cols,
            a: a.data.as_ptr(),
            rsa: a.rs,
            csa: a.cs,
            b: b.data.as_ptr(),
            rsb: b.rs,
            csb: b.cs,
            c,
            ldc,
            acc,
            bp: std::ptr::null(),
            bias: std::ptr::null(),
        }
    }
}

pub(super) fn large<T>(j: &Job<T>) -> bool {
    takes_matrixmultiply(j.m, j.k, j.n, j.rsb)
}

/// `k` above which a large product is computed in blocks of [`ROW_BLOCK`] rows
/// (matrixmultiply's own blocks of `k` are 256 long for `f32`).
const LONG_K: usize = 256;
/// Rows per block of a large product with a long `k`. A convolution's patches
/// (32768 × 576, column-major) times its kernel ran at 40% of the core's peak in one
/// call, and at 51–52% in blocks of 128 or 256 rows copied out first (measured side by
/// side, `part.c103.fwd` of `cargo bench --bench primitives`, under load).
const ROW_BLOCK: usize = 256;

macro_rules! matrixmultiply_entry {
    ($name:ident, $t:ty, $f:path) => {
        /// The product through `matrixmultiply` (always succeeds; returns true).
        ///
        /// # Safety
        /// As [`gemm_raw`]; the views' invariant keeps every read inside their data.
        pub(super) unsafe fn $name(j: &Job<$t>) -> bool {
            // With a long `k`, matrixmultiply sweeps `C` once per block of `k`: blocks
            // of rows keep each block's `C` in cache across those sweeps.
            let rows = if j.k > LONG_K {
                ROW_BLOCK.min(j.m)
            } else {
                j.m
            };
            // A block of an `A` with contiguous, far-apart columns is first copied
            // into contiguous columns (matrixmultiply's packing reads it better so).
            let copy = j.k > LONG_K && j.rsa == 1 && j.csa > rows;
            let mut buf: Vec<$t> = if copy {
                vec![0.0; rows * j.k]
            } else {
                Vec::new()
            };
            let mut i = 0;
            while i < j.m {
                let mc = rows.min(j.m - i);
                let (a, csa) = if copy {
                    for p in 0..j.k {
                        std::ptr::copy_nonoverlapping(
                            j.a.add(i + p * j.csa),
                            buf.as_mut_ptr().add(p * mc),
                            mc,
                        );
                    }
                    (buf.as_ptr(), mc)
                } else {
                    (j.a.add(i * j.rsa), j.csa)
                };
                $f(
                    mc,
                    j.k,
                    j.n,
                    1.0,
                    a,
                    j.rsa as isize,
                    csa as isize,
                    j.b,
                    j.rsb as isize,
                    j.csb as isize,
                    if j.acc { 1.0 } else { 0.0 },
                    j.c.add(i),
                    1,
                    j.ldc as isize,
                );
                i += mc;
            }
            true
        }
    };
}
matrixmultiply_entry!(mm_f32, f32, matrixmultiply::sgemm);
matrixmultiply_entry!(mm_f64, f64, matrixmultiply::dgemm);

/// One entry per (instruction set, element type): the kernel bodies inlined under the
/// instruction set's target features, with the vector type, the broadcast blocks (`NV`
/// vectors x `NR` columns) and the dot blocks (`MI x NJ`).
macro_rules! entry {
    ($name:ident, $t:ty, $feat:literal, $simd:ty, $nv:literal, $nr:literal, $mi:literal, $nj:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        unsafe fn $name(j: &Job<$t>) {
            drive::<$simd, Arr<$t, Fused, 1>, $nv, $nr, $mi, $nj>(j)
        }
    };
}
// AVX-512, f32: 4 x 6 broadcast blocks (24 of the 32 registers accumulate; 10 loads per
// 24 multiply-adds, against 14 for 2 x 12). Measured on the 2-vCPU Sapphire Rapids Xeon
// (one core, CPU time, `part.tlm.*` and `part.gemm.*` of the primitives bench, with
// 32 KB panels of `A`, `PACK_BYTES`): the transformer's products at 0.73-0.82 of the
// FMA peak against 0.69-0.79 with 2 x 12 (its 256-row forward and `dX` products +2-10%,
// `dW` within -3..+4%), the LSTM step 128 x 128 x 512 0.80 against 0.78, 256² 0.79
// against 0.72; a kernel alone on L1-resident panels 0.91 against 0.86. f64 keeps
// 2 x 12 (unmeasured since).
entry!(f32_avx512, f32, "avx512f,avx2,fma", x86::F32x16, 4, 6, 4, 4);
entry!(f64_avx512, f64, "avx512f,avx2,fma", x86::F64x8, 2, 12, 4, 4);
entry!(f32_avx2, f32, "avx2,fma", x86::F32x8, 2, 6, 4, 2);
entry!(f64_avx2, f64, "avx2,fma", x86::F64x4, 2, 6, 4, 2);

/// Fused multiply-add in the portable variant only where the baseline has it (a library
/// call otherwise).
#[cfg(any(target_feature = "fma", target_arch = "aarch64"))]
pub(super) type PortableMadd = Fused;
#[cfg(not(any(target_feature = "fma", target_arch = "aarch64")))]
pub(super) type PortableMadd = Unfused;

pub(super) unsafe fn f32_portable(j: &Job<f32>) {
    drive::<Arr<f32, PortableMadd, 4>, Arr<f32, PortableMadd, 1>, 2, 4, 4, 2>(j)
}
pub(super) unsafe fn f64_portable(j: &Job<f64>) {
    drive::<Arr<f64, PortableMadd, 2>, Arr<f64, PortableMadd, 1>, 2, 4, 2, 2>(j)
}

macro_rules! run {
    ($name:ident, $t:ty, $avx512:ident, $avx2:ident, $portable:ident) => {
        /// Runs the product with the variant `isa`.
        ///
        /// # Safety
        /// As [`gemm_raw`], and the CPU supports `isa`.
        pub(super) unsafe fn $name(isa: Isa, j: &Job<$t>) {
            match isa {
                // SAFETY (both x86 arms): `isa` was checked against the CPU's features
                // (`Isa::supported`), so the target-feature functions run on hardware
                // that has every instruction they were compiled with.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => $avx512(j),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => $avx2(j),
                _ => $portable(j),
            }
        }
    };
}
run!(run_f32, f32, f32_avx512, f32_avx2, f32_portable);
run!(run_f64, f64, f64_avx512, f64_avx2, f64_portable);
