//! Small dense matrix products `C = A·B` and `C += A·B` in `f32`/`f64`, tuned for
//! operands that fit in L1/L2 (dimensions up to a few hundred), as the AD rules and
//! small MLPs need them.
//!
//! `C` is column-major and contiguous; `A` and `B` are strided views ([`MatRef`]), so the
//! reverse-mode products `G·Bᵀ` and `Aᵀ·G` read their transposes in place: no transposed
//! matrix is ever built. The work is done by a register-blocked *broadcast* kernel: an
//! `MR x NR` block of `C` accumulates `A[i..i+MR, p] · B[p, j]` over `p`, the `MR` rows
//! in a few vector registers, `B[p, j]` broadcast, so the `NR` columns share each load
//! of `A`. It reads `A`'s columns in place when they are contiguous; when `A` is a
//! transpose (rows contiguous), each `MR`-row panel is first packed, by 8x8 tile
//! transposes, into an aligned stack buffer (a chunk of `k` at a time). `B` may have any
//! strides. Either way every element of `C` is one multiply-add chain in the order of
//! `k` (continuing from `C` for `+=`), so results do not depend on the operands'
//! layout, on alignment, or on the vector width. Products too narrow to pay for packing
//! (`Aᵀ·v`, a row times a matrix) take a *dot* kernel instead: blocks of dot products
//! vectorized along `k`, reduced by one transposing fold.
//!
//! The kernels are compiled three times, for AVX-512, for AVX2 + FMA (both with
//! `core::arch` vectors) and for the target's baseline (portable arrays); the widest the
//! CPU supports is chosen once at run time, so a default build uses the vector units the
//! machine has. The variants differ only in fused versus separate multiply-add (the
//! baseline has no FMA on x86-64) and, in the dot kernel, in the order of the `k`-sums.
//! Above [`LARGE`] multiply-adds `matrixmultiply` (cache-blocked, packed) takes over;
//! other scalar types (SIMD packets) use a plain loop.

use std::any::TypeId;

use crate::error::{Error, Result};
use crate::scalar::Real;

/// Above this many multiply-adds (`m·k·n`, every dimension at least [`LARGE_DIM`]) the
/// operands outgrow L1/L2 and `matrixmultiply`'s cache blocking wins (measured on an AVX2
/// machine: ahead of it up to 384³, behind at 512³).
pub const LARGE: usize = 1 << 26;
/// [`LARGE`] when `B` is a transpose (its broadcasts stride across rows): the crossover
/// comes earlier (between 128³ and 256³).
pub const LARGE_STRIDED_B: usize = 1 << 23;
/// The smallest dimension for which [`LARGE`] applies (a thin product stays in cache).
pub const LARGE_DIM: usize = 64;

/// Rows from which a product whose `B` is small ([`PACKED_B_MAX`]) stays on the broadcast
/// kernels however large: they pack such a `B` (`kernels::with_packed_b`) and then run
/// ahead of `matrixmultiply`. Measured on the AVX-512 Xeon (one core, `part.gemm.*` of the
/// primitives bench): `G·Wᵀ` 4096 × 512 × 128 at 0.65 of the FMA peak against 0.54, the
/// read-out 2048 × 128 × 256 at 0.75 against 0.63, 2048 × 256 × 128 (`Bᵀ`) 0.69 against
/// 0.58.
pub const PACKED_B_MIN_ROWS: usize = 256;
/// Rows up to which [`PACKED_B_MIN_ROWS`] applies (the language models' products have
/// 1,024–4,096 rows; the convolutions' larger ones keep `matrixmultiply`, measured there).
pub const PACKED_B_MAX_ROWS: usize = 4096;
/// Elements (`k·n`) of a `B` small enough for [`PACKED_B_MIN_ROWS`] (512 KB of `f32`: the
/// packed copy stays in L2).
pub const PACKED_B_MAX: usize = 1 << 17;

/// Rows up to which a product stays on the broadcast kernels however long its `k`, for
/// up to [`K_OUTER_MAX_N`] columns: they run its chunks of `k` outermost, each chunk of
/// `B` then read from L2 by every row block. Measured on the AVX-512 Xeon (one core):
/// `Aᵀ·B` 128 × 4096 × 512 at 0.645 of the FMA peak against matrixmultiply's 0.578.
pub const K_OUTER_ROWS: usize = 256;
/// Columns up to which [`K_OUTER_ROWS`] applies (a chunk of `B`, 128 × 2048 `f32`, is
/// 1 MB: half of L2).
pub const K_OUTER_MAX_N: usize = 2048;

/// Whether an `m × k` by `k × n` product (`B`'s row stride `rsb`) goes to
/// `matrixmultiply`: above [`LARGE`] (or [`LARGE_STRIDED_B`]) multiply-adds with every
/// dimension at least [`LARGE_DIM`], unless its `B` is small and its rows in
/// [`PACKED_B_MIN_ROWS`]`..=`[`PACKED_B_MAX_ROWS`].
pub(crate) fn takes_matrixmultiply(m: usize, k: usize, n: usize, rsb: usize) -> bool {
    let limit = if rsb == 1 { LARGE } else { LARGE_STRIDED_B };
    let packed =
        (PACKED_B_MIN_ROWS..=PACKED_B_MAX_ROWS).contains(&m) && k.saturating_mul(n) <= PACKED_B_MAX;
    let k_outer = m <= K_OUTER_ROWS && n <= K_OUTER_MAX_N;
    m.min(k).min(n) >= LARGE_DIM
        && m.saturating_mul(k).saturating_mul(n) > limit
        && !packed
        && !k_outer
}

/// A read-only strided view of a matrix: element `(i, j)` is `data[i * rs + j * cs]`.
///
/// Construction checks that every element lies inside `data`, which the kernels rely on.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, S> {
    data: &'a [S],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, S: Copy> MatRef<'a, S> {
    /// A `rows x cols` view with row stride `rs` and column stride `cs`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when some element would lie outside `data`.
    pub fn new(data: &'a [S], rows: usize, cols: usize, rs: usize, cs: usize) -> Result<Self> {
        let last = if rows == 0 || cols == 0 {
            Some(0)
        } else {
            (rows - 1)
                .checked_mul(rs)
                .and_then(|x| (cols - 1).checked_mul(cs).and_then(|y| x.checked_add(y)))
                .and_then(|x| x.checked_add(1))
        };
        match last {
            Some(len) if len <= data.len() => Ok(MatRef {
                data,
                rows,
                cols,
                rs,
                cs,
            }),
            _ => Err(Error::InvalidArgument(format!(
                "gemm: a {rows}x{cols} view with strides ({rs}, {cs}) does not fit in {} \
                 elements",
                data.len()
            ))),
        }
    }

    /// A column-major `rows x cols` view of `data` (column stride `rows`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `data` holds fewer than `rows * cols` elements.
    pub fn col_major(data: &'a [S], rows: usize, cols: usize) -> Result<Self> {
        Self::new(data, rows, cols, 1, rows)
    }

    /// The transpose, without copying.
    #[inline]
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// The number of rows.
    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The number of columns.
    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Element `(i, j)`.
    #[inline(always)]
    #[cfg(test)]
    pub(crate) fn at(&self, i: usize, j: usize) -> S {
        self.data[i * self.rs + j * self.cs]
    }

    /// The same view of the same memory as another element type of the same layout.
    ///
    /// # Safety
    /// `T` and `S` must be the same type.
    unsafe fn cast<T>(self) -> MatRef<'a, T> {
        MatRef {
            data: std::slice::from_raw_parts(self.data.as_ptr() as *const T, self.data.len()),
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }
}

/// `c = a·b`, or `c += a·b` when `accumulate`; `c` is column-major, `a.rows() x
/// b.cols()`.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `a.cols() != b.rows()` or `c` has the wrong length.
pub fn gemm<S: Real>(
    a: MatRef<'_, S>,
    b: MatRef<'_, S>,
    c: &mut [S],
    accumulate: bool,
) -> Result<()> {
    if a.cols != b.rows {
        return Err(Error::ShapeMismatch {
            what: "gemm: columns of a vs rows of b".into(),
            expected: vec![a.cols],
            got: vec![b.rows],
        });
    }
    if c.len() != a.rows * b.cols {
        return Err(Error::ShapeMismatch {
            what: "gemm: c (rows of a x columns of b)".into(),
            expected: vec![a.rows, b.cols],
            got: vec![c.len()],
        });
    }
    // SAFETY: the shapes agree and `c` is an initialized slice of `a.rows * b.cols`.
    unsafe { gemm_raw(a, b, c.as_mut_ptr(), accumulate) };
    Ok(())
}

/// [`gemm`] into raw memory.
///
/// # Safety
/// `a.cols == b.rows`; `c` is valid for writes of `a.rows * b.cols` elements (column-major)
/// and, when `accumulate`, initialized. Without `accumulate` every element is written and
/// none is read, so `c` may be uninitialized.
pub(crate) unsafe fn gemm_raw<S: Real>(
    a: MatRef<'_, S>,
    b: MatRef<'_, S>,
    c: *mut S,
    accumulate: bool,
) {
    gemm_with(isa(), a, b, c, accumulate)
}

/// `c = a·b + 1·biasᵀ` (`bias[j]` added to every element of column `j`): each element
/// is the product's (as [`gemm_raw`] makes it) plus the bias, rounded once more, the
/// values of adding the bias to the finished product. The broadcast kernels add it to
/// each block while it is in registers (no pass over `c` for it).
///
/// # Safety
/// As [`gemm_raw`] without accumulation; `bias` holds `b.cols` elements.
pub(crate) unsafe fn gemm_bias_raw<S: Real>(
    a: MatRef<'_, S>,
    b: MatRef<'_, S>,
    bias: &[S],
    c: *mut S,
) {
    debug_assert_eq!(bias.len(), b.cols);
    gemm_ldc_bias_with(isa(), a, b, c, a.rows, false, bias.as_ptr())
}

/// [`gemm_raw`] into a column-major block of a larger matrix: `c` points at its first
/// element, its columns `ldc` apart (`ldc >= a.rows`). Only the block's elements are
/// read (when `accumulate`) or written; the results are those of [`gemm_raw`].
///
/// # Safety
/// As [`gemm_raw`], with `c` valid for the `a.rows` elements at `c + j·ldc` of every
/// column `j < b.cols`.
pub(crate) unsafe fn gemm_raw_ldc<S: Real>(
    a: MatRef<'_, S>,
    b: MatRef<'_, S>,
    c: *mut S,
    ldc: usize,
    accumulate: bool,
) {
    debug_assert!(ldc >= a.rows);
    gemm_ldc_with(isa(), a, b, c, ldc, accumulate)
}

/// [`gemm_raw`] with the instruction set given (which the CPU must support).
unsafe fn gemm_with<S: Real>(
    isa: Isa,
    a: MatRef<'_, S>,
    b: MatRef<'_, S>,
    c: *mut S,
    accumulate: bool,
) {
    gemm_ldc_with(isa, a, b, c, a.rows, accumulate)
}

/// [`gemm_with`] with `C`'s columns `ldc` apart.
unsafe fn gemm_ldc_with<S: Real>(
    isa: Isa,
    a: MatRef<'_, S>,
    b: MatRef<'_, S>,
    c: *mut S,
    ldc: usize,
    accumulate: bool,
) {
    gemm_ldc_bias_with(isa, a, b, c, ldc, accumulate, std::ptr::null())
}

/// [`gemm_ldc_with`] plus a bias per column of `C` (`bias` null for none; never with
/// `accumulate`).
unsafe fn gemm_ldc_bias_with<S: Real>(
    isa: Isa,
    a: MatRef<'_, S>,
    b: MatRef<'_, S>,
    c: *mut S,
    ldc: usize,
    accumulate: bool,
    bias: *const S,
) {
    debug_assert_eq!(a.cols, b.rows);
    debug_assert!(bias.is_null() || !accumulate);
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for j in 0..n {
                // The empty sum is +0 (what the bias is then added to).
                let b = if bias.is_null() {
                    S::zero()
                } else {
                    S::zero() + *bias.add(j)
                };
                for i in 0..m {
                    c.add(i + j * ldc).write(b);
                }
            }
        }
        return;
    }
    // The TypeId tests make the casts identities.
    if TypeId::of::<S>() == TypeId::of::<f32>() {
        let job = Job {
            bias: bias as *const f32,
            ..Job::with_ldc(
                a.cast::<f32>(),
                b.cast::<f32>(),
                c as *mut f32,
                ldc,
                accumulate,
            )
        };
        if large(&job) && mm_f32(&job) {
            add_bias(job.c, ldc, m, n, job.bias);
        } else {
            run_f32(isa, &job);
        }
    } else if TypeId::of::<S>() == TypeId::of::<f64>() {
        let job = Job {
            bias: bias as *const f64,
            ..Job::with_ldc(
                a.cast::<f64>(),
                b.cast::<f64>(),
                c as *mut f64,
                ldc,
                accumulate,
            )
        };
        if large(&job) && mm_f64(&job) {
            add_bias(job.c, ldc, m, n, job.bias);
        } else {
            run_f64(isa, &job);
        }
    } else {
        let (av, bv) = (
            super::gemm_packets::Strided {
                data: a.data,
                rs: a.rs,
                cs: a.cs,
            },
            super::gemm_packets::Strided {
                data: b.data,
                rs: b.rs,
                cs: b.cs,
            },
        );
        // SAFETY: as this function's contract (`c` valid for the m elements of each of
        // n columns ldc apart, initialized when accumulating).
        super::gemm_packets::gemm_packets_raw(m, k, n, av, bv, c, ldc, accumulate);
        add_bias(c, ldc, m, n, bias);
    }
}

/// `c += a·b` for any scalar, by plain loops ordered for column-major locality (the
/// reference the kernels are tested against).
#[cfg(test)]
pub(crate) fn gemm_loop<S: Real>(a: MatRef<'_, S>, b: MatRef<'_, S>, c: &mut [S]) {
    let (m, k) = (a.rows, a.cols);
    assert_eq!(k, b.rows);
    assert_eq!(c.len(), m * b.cols);
    if m == 0 {
        return;
    }
    for (j, cj) in c.chunks_exact_mut(m).enumerate() {
        if a.rs == 1 {
            // Columns of `a` are contiguous: c[:, j] += a[:, p] * b[p, j].
            for p in 0..k {
                let bpj = b.at(p, j);
                let ap = &a.data[p * a.cs..p * a.cs + m];
                cj.iter_mut().zip(ap).for_each(|(c, &x)| *c += x * bpj);
            }
        } else {
            for (i, c) in cj.iter_mut().enumerate() {
                let mut s = S::zero();
                for p in 0..k {
                    s += a.at(i, p) * b.at(p, j);
                }
                *c += s;
            }
        }
    }
}

mod dispatch;
mod kernels;
mod simd;
#[cfg(test)]
mod tests;

use crate::kernels::cpu::{isa, Isa};
use dispatch::*;
// The packet products walk their column blocks the same way.
pub(crate) use kernels::block_width;
use kernels::*;
use simd::*;
