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
use std::marker::PhantomData;
use std::ops::{Add, Mul};
use std::sync::OnceLock;

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

/// [`gemm_raw`] with the instruction set given (which the CPU must support).
unsafe fn gemm_with<S: Real>(
    isa: Isa,
    a: MatRef<'_, S>,
    b: MatRef<'_, S>,
    c: *mut S,
    accumulate: bool,
) {
    debug_assert_eq!(a.cols, b.rows);
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m * n {
                c.add(i).write(S::zero());
            }
        }
        return;
    }
    // The TypeId tests make the casts identities.
    if TypeId::of::<S>() == TypeId::of::<f32>() {
        let job = Job::new(a.cast::<f32>(), b.cast::<f32>(), c as *mut f32, accumulate);
        if !large(&job) || !mm_f32(&job) {
            run_f32(isa, &job);
        }
    } else if TypeId::of::<S>() == TypeId::of::<f64>() {
        let job = Job::new(a.cast::<f64>(), b.cast::<f64>(), c as *mut f64, accumulate);
        if !large(&job) || !mm_f64(&job) {
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
        // SAFETY: as this function's contract (`c` valid for m·n writes, initialized
        // when accumulating).
        super::gemm_packets::gemm_packets_raw(m, k, n, av, bv, c, accumulate);
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

// ---------------------------------------------------------------------------------------
// Instruction-set dispatch.

/// The kernel variants, widest last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// The target's baseline (SSE2 on x86-64), separate multiply and add unless the
    /// build enables FMA.
    Portable,
    /// AVX2 with FMA: 8 `f32` per register.
    Avx2,
    /// AVX-512 (F) with FMA: 16 `f32` per register.
    Avx512,
}

impl Isa {
    /// Whether this CPU can run the variant.
    pub(crate) fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx2.supported() && is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The widest variant this CPU supports, detected once.
pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|i| i.supported())
            .unwrap_or(Isa::Portable)
    })
}

/// Whether this CPU has AVX2 and FMA (detected once), for elementwise kernels elsewhere
/// that keep an AVX2-compiled copy of their loops.
#[inline]
pub(crate) fn has_avx2() -> bool {
    isa() != Isa::Portable
}

/// The operands of one product, as raw parts.
#[derive(Clone, Copy)]
struct Job<T> {
    m: usize,
    k: usize,
    n: usize,
    a: *const T,
    rsa: usize,
    csa: usize,
    b: *const T,
    rsb: usize,
    csb: usize,
    c: *mut T,
    acc: bool,
}

impl<T> Job<T> {
    fn new(a: MatRef<'_, T>, b: MatRef<'_, T>, c: *mut T, acc: bool) -> Self {
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
            acc,
        }
    }
}

fn large<T>(j: &Job<T>) -> bool {
    let limit = if j.rsb == 1 { LARGE } else { LARGE_STRIDED_B };
    j.m.min(j.k).min(j.n) >= LARGE_DIM && j.m.saturating_mul(j.k).saturating_mul(j.n) > limit
}

macro_rules! matrixmultiply_entry {
    ($name:ident, $t:ty, $f:path) => {
        /// The product through `matrixmultiply` (always succeeds; returns true).
        ///
        /// # Safety
        /// As [`gemm_raw`]; the views' invariant keeps every read inside their data.
        unsafe fn $name(j: &Job<$t>) -> bool {
            $f(
                j.m,
                j.k,
                j.n,
                1.0,
                j.a,
                j.rsa as isize,
                j.csa as isize,
                j.b,
                j.rsb as isize,
                j.csb as isize,
                if j.acc { 1.0 } else { 0.0 },
                j.c,
                1,
                j.m as isize,
            );
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
entry!(f32_avx512, f32, "avx512f,avx2,fma", x86::F32x16, 2, 8, 4, 4);
entry!(f64_avx512, f64, "avx512f,avx2,fma", x86::F64x8, 2, 8, 4, 4);
entry!(f32_avx2, f32, "avx2,fma", x86::F32x8, 2, 6, 4, 2);
entry!(f64_avx2, f64, "avx2,fma", x86::F64x4, 2, 6, 4, 2);

/// Fused multiply-add in the portable variant only where the baseline has it (a library
/// call otherwise).
#[cfg(any(target_feature = "fma", target_arch = "aarch64"))]
type PortableMadd = Fused;
#[cfg(not(any(target_feature = "fma", target_arch = "aarch64")))]
type PortableMadd = Unfused;

unsafe fn f32_portable(j: &Job<f32>) {
    drive::<Arr<f32, PortableMadd, 4>, Arr<f32, PortableMadd, 1>, 2, 4, 4, 2>(j)
}
unsafe fn f64_portable(j: &Job<f64>) {
    drive::<Arr<f64, PortableMadd, 2>, Arr<f64, PortableMadd, 1>, 2, 4, 2, 2>(j)
}

macro_rules! run {
    ($name:ident, $t:ty, $avx512:ident, $avx2:ident, $portable:ident) => {
        /// Runs the product with the variant `isa`.
        ///
        /// # Safety
        /// As [`gemm_raw`], and the CPU supports `isa`.
        unsafe fn $name(isa: Isa, j: &Job<$t>) {
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

// ---------------------------------------------------------------------------------------
// Vectors.

/// `[f(0), .., f(N - 1)]` by a plain loop (which, unlike `std::array::from_fn`, always
/// inlines: an array of registers must not be spilled through a call).
#[inline(always)]
fn build<T: Copy, const N: usize>(fill: T, mut f: impl FnMut(usize) -> T) -> [T; N] {
    let mut a = [fill; N];
    for (i, x) in a.iter_mut().enumerate() {
        *x = f(i);
    }
    a
}

/// The element types with kernels.
trait Elem: Copy + Add<Output = Self> + Mul<Output = Self> + 'static {
    const ZERO: Self;
    /// `self * b + c` rounded once.
    fn fused(self, b: Self, c: Self) -> Self;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn fused(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn fused(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }
}

/// How a portable vector multiplies and adds.
trait Madd {
    fn madd<T: Elem>(a: T, b: T, c: T) -> T;
}

/// One fused multiply-add instruction.
struct Fused;
impl Madd for Fused {
    #[inline(always)]
    fn madd<T: Elem>(a: T, b: T, c: T) -> T {
        a.fused(b, c)
    }
}

/// A multiply, then an add.
#[allow(dead_code)] // unused where the baseline has FMA
struct Unfused;
impl Madd for Unfused {
    #[inline(always)]
    fn madd<T: Elem>(a: T, b: T, c: T) -> T {
        a * b + c
    }
}

/// A vector register of `LANES` elements.
///
/// Every method is `unsafe`: the x86 implementations use instructions the CPU must have,
/// so they are only called from inside the matching target-feature entry points; all of
/// them read or write through raw pointers that must be valid for `LANES` elements.
trait Simd: Copy {
    type E: Elem;
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const Self::E) -> Self;
    unsafe fn store(self, p: *mut Self::E);
    /// Every lane `*p`.
    unsafe fn splat(p: *const Self::E) -> Self;
    /// `a * b + c` (fused where the variant has FMA).
    unsafe fn madd(a: Self, b: Self, c: Self) -> Self;
    /// The sum of the lanes.
    unsafe fn hsum(self) -> Self::E;
    /// `LANES` vectors to the vector of their lane sums: lane `l` is `x[l].hsum()`
    /// (up to summation order).
    unsafe fn fold(x: &[Self]) -> Self;
    /// The side of the square tiles [`Simd::transpose_tile`] moves (divides `LANES`).
    const TILE: usize;
    /// Writes the transpose of a `TILE x TILE` tile: element `t` of source row `r`
    /// (`src[r * lds + t]`) goes to `dst[t * ldd + r]`.
    unsafe fn transpose_tile(src: *const Self::E, lds: usize, dst: *mut Self::E, ldd: usize);
}

/// A portable vector: `N` elements that LLVM maps to the baseline's registers.
struct Arr<T, F, const N: usize>([T; N], PhantomData<F>);

impl<T: Copy, F, const N: usize> Clone for Arr<T, F, N> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: Copy, F, const N: usize> Copy for Arr<T, F, N> {}

impl<T: Elem, F: Madd, const N: usize> Simd for Arr<T, F, N> {
    type E = T;
    const LANES: usize = N;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Arr([T::ZERO; N], PhantomData)
    }
    #[inline(always)]
    unsafe fn load(p: *const T) -> Self {
        Arr((p as *const [T; N]).read_unaligned(), PhantomData)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut T) {
        (p as *mut [T; N]).write_unaligned(self.0)
    }
    #[inline(always)]
    unsafe fn splat(p: *const T) -> Self {
        Arr([*p; N], PhantomData)
    }
    #[inline(always)]
    unsafe fn madd(a: Self, b: Self, c: Self) -> Self {
        Arr(
            build(T::ZERO, |l| F::madd(a.0[l], b.0[l], c.0[l])),
            PhantomData,
        )
    }
    #[inline(always)]
    unsafe fn hsum(self) -> T {
        // Pairwise halving: log2(N) vector adds.
        let mut x = self.0;
        let mut w = N;
        while w > 1 {
            w /= 2;
            for l in 0..w {
                x[l] = x[l] + x[l + w];
            }
        }
        x[0]
    }
    #[inline(always)]
    unsafe fn fold(x: &[Self]) -> Self {
        debug_assert_eq!(x.len(), N);
        Arr(build(T::ZERO, |l| x[l].hsum()), PhantomData)
    }
    const TILE: usize = N;
    #[inline(always)]
    unsafe fn transpose_tile(src: *const T, lds: usize, dst: *mut T, ldd: usize) {
        for r in 0..N {
            for t in 0..N {
                *dst.add(t * ldd + r) = *src.add(r * lds + t);
            }
        }
    }
}

/// AVX2 and AVX-512 vectors (the methods' instructions exist only where the entry
/// points' target features say so; see [`Simd`]).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{build, Simd};
    use std::arch::x86_64::*;

    /// 8 `f32` in a YMM register.
    #[derive(Clone, Copy)]
    pub(super) struct F32x8(__m256);
    /// 4 `f64` in a YMM register.
    #[derive(Clone, Copy)]
    pub(super) struct F64x4(__m256d);
    /// 16 `f32` in a ZMM register.
    #[derive(Clone, Copy)]
    pub(super) struct F32x16(__m512);
    /// 8 `f64` in a ZMM register.
    #[derive(Clone, Copy)]
    pub(super) struct F64x8(__m512d);

    /// Eight vectors of 8 to their 8 lane sums: three rounds of pairwise horizontal adds
    /// (per 128-bit half) and one exchange of halves.
    #[inline(always)]
    unsafe fn fold8(x: [__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(x[0], x[1]);
        let t1 = _mm256_hadd_ps(x[2], x[3]);
        let t2 = _mm256_hadd_ps(x[4], x[5]);
        let t3 = _mm256_hadd_ps(x[6], x[7]);
        // u0 = [x0..x3 low-half sums | x0..x3 high-half sums], u1 likewise for x4..x7
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(u0, u1),
            _mm256_permute2f128_ps::<0x31>(u0, u1),
        )
    }

    /// The 8x8 `f32` tile transpose (unpack pairs, shuffle quads, exchange halves).
    #[inline(always)]
    pub(super) unsafe fn transpose8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        let r: [__m256; 8] = build(_mm256_setzero_ps(), |i| _mm256_loadu_ps(src.add(i * lds)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        // s_q: columns q and q + 4 of rows 0..4 (low halves) or 4..8
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let lo = [s0, s1, s2, s3];
        let hi = [s4, s5, s6, s7];
        for q in 0..4 {
            _mm256_storeu_ps(
                dst.add(q * ldd),
                _mm256_permute2f128_ps::<0x20>(lo[q], hi[q]),
            );
            _mm256_storeu_ps(
                dst.add((q + 4) * ldd),
                _mm256_permute2f128_ps::<0x31>(lo[q], hi[q]),
            );
        }
    }

    /// The 4x4 `f64` tile transpose.
    #[inline(always)]
    pub(super) unsafe fn transpose4d(src: *const f64, lds: usize, dst: *mut f64, ldd: usize) {
        let r: [__m256d; 4] = build(_mm256_setzero_pd(), |i| _mm256_loadu_pd(src.add(i * lds)));
        let t0 = _mm256_unpacklo_pd(r[0], r[1]);
        let t1 = _mm256_unpackhi_pd(r[0], r[1]);
        let t2 = _mm256_unpacklo_pd(r[2], r[3]);
        let t3 = _mm256_unpackhi_pd(r[2], r[3]);
        _mm256_storeu_pd(dst, _mm256_permute2f128_pd::<0x20>(t0, t2));
        _mm256_storeu_pd(dst.add(ldd), _mm256_permute2f128_pd::<0x20>(t1, t3));
        _mm256_storeu_pd(dst.add(2 * ldd), _mm256_permute2f128_pd::<0x31>(t0, t2));
        _mm256_storeu_pd(dst.add(3 * ldd), _mm256_permute2f128_pd::<0x31>(t1, t3));
    }

    /// Four vectors of 4 `f64` to their 4 lane sums.
    #[inline(always)]
    unsafe fn fold4d(x: [__m256d; 4]) -> __m256d {
        // t0 = [x0 01, x1 01 | x0 23, x1 23], t1 likewise for x2, x3
        let t0 = _mm256_hadd_pd(x[0], x[1]);
        let t1 = _mm256_hadd_pd(x[2], x[3]);
        _mm256_add_pd(
            _mm256_permute2f128_pd::<0x20>(t0, t1),
            _mm256_permute2f128_pd::<0x31>(t0, t1),
        )
    }

    impl Simd for F32x8 {
        type E = f32;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            F32x8(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            F32x8(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            F32x8(_mm256_broadcast_ss(&*p))
        }
        #[inline(always)]
        unsafe fn madd(a: Self, b: Self, c: Self) -> Self {
            F32x8(_mm256_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn hsum(self) -> f32 {
            let x = _mm_add_ps(
                _mm256_castps256_ps128(self.0),
                _mm256_extractf128_ps::<1>(self.0),
            );
            let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
            _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
        }
        #[inline(always)]
        unsafe fn fold(x: &[Self]) -> Self {
            debug_assert_eq!(x.len(), 8);
            F32x8(fold8([
                x[0].0, x[1].0, x[2].0, x[3].0, x[4].0, x[5].0, x[6].0, x[7].0,
            ]))
        }
        const TILE: usize = 8;
        #[inline(always)]
        unsafe fn transpose_tile(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
            transpose8(src, lds, dst, ldd)
        }
    }

    impl Simd for F64x4 {
        type E = f64;
        const LANES: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> Self {
            F64x4(_mm256_setzero_pd())
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            F64x4(_mm256_loadu_pd(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            _mm256_storeu_pd(p, self.0)
        }
        #[inline(always)]
        unsafe fn splat(p: *const f64) -> Self {
            F64x4(_mm256_broadcast_sd(&*p))
        }
        #[inline(always)]
        unsafe fn madd(a: Self, b: Self, c: Self) -> Self {
            F64x4(_mm256_fmadd_pd(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn hsum(self) -> f64 {
            let x = _mm_add_pd(
                _mm256_castpd256_pd128(self.0),
                _mm256_extractf128_pd::<1>(self.0),
            );
            _mm_cvtsd_f64(_mm_add_sd(x, _mm_unpackhi_pd(x, x)))
        }
        #[inline(always)]
        unsafe fn fold(x: &[Self]) -> Self {
            debug_assert_eq!(x.len(), 4);
            F64x4(fold4d([x[0].0, x[1].0, x[2].0, x[3].0]))
        }
        const TILE: usize = 4;
        #[inline(always)]
        unsafe fn transpose_tile(src: *const f64, lds: usize, dst: *mut f64, ldd: usize) {
            transpose4d(src, lds, dst, ldd)
        }
    }

    /// The sum of the two 256-bit halves of a ZMM register.
    #[inline(always)]
    unsafe fn halves_ps(x: __m512) -> __m256 {
        let d = _mm512_castps_pd(x);
        _mm256_add_ps(
            _mm256_castpd_ps(_mm512_castpd512_pd256(d)),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(d)),
        )
    }

    /// Two YMM registers as the low and high halves of a ZMM register.
    #[inline(always)]
    unsafe fn join_ps(lo: __m256, hi: __m256) -> __m512 {
        let lo = _mm512_castpd256_pd512(_mm256_castps_pd(lo));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, _mm256_castps_pd(hi)))
    }

    impl Simd for F32x16 {
        type E = f32;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            F32x16(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            F32x16(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn splat(p: *const f32) -> Self {
            F32x16(_mm512_set1_ps(*p))
        }
        #[inline(always)]
        unsafe fn madd(a: Self, b: Self, c: Self) -> Self {
            F32x16(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn hsum(self) -> f32 {
            F32x8(halves_ps(self.0)).hsum()
        }
        #[inline(always)]
        unsafe fn fold(x: &[Self]) -> Self {
            debug_assert_eq!(x.len(), 16);
            // Each vector to 8 lanes, then two 8-way folds of the 256-bit code.
            let lo = fold8(build(_mm256_setzero_ps(), |l| halves_ps(x[l].0)));
            let hi = fold8(build(_mm256_setzero_ps(), |l| halves_ps(x[8 + l].0)));
            F32x16(join_ps(lo, hi))
        }
        const TILE: usize = 8;
        #[inline(always)]
        unsafe fn transpose_tile(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
            transpose8(src, lds, dst, ldd)
        }
    }

    impl Simd for F64x8 {
        type E = f64;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            F64x8(_mm512_setzero_pd())
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> Self {
            F64x8(_mm512_loadu_pd(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            _mm512_storeu_pd(p, self.0)
        }
        #[inline(always)]
        unsafe fn splat(p: *const f64) -> Self {
            F64x8(_mm512_set1_pd(*p))
        }
        #[inline(always)]
        unsafe fn madd(a: Self, b: Self, c: Self) -> Self {
            F64x8(_mm512_fmadd_pd(a.0, b.0, c.0))
        }
        #[inline(always)]
        unsafe fn hsum(self) -> f64 {
            let h = _mm256_add_pd(
                _mm512_castpd512_pd256(self.0),
                _mm512_extractf64x4_pd::<1>(self.0),
            );
            F64x4(h).hsum()
        }
        #[inline(always)]
        unsafe fn fold(x: &[Self]) -> Self {
            debug_assert_eq!(x.len(), 8);
            let half = |v: __m512d| {
                _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd::<1>(v))
            };
            let lo = fold4d(build(_mm256_setzero_pd(), |l| half(x[l].0)));
            let hi = fold4d(build(_mm256_setzero_pd(), |l| half(x[4 + l].0)));
            F64x8(_mm512_insertf64x4::<1>(_mm512_castpd256_pd512(lo), hi))
        }
        const TILE: usize = 4;
        #[inline(always)]
        unsafe fn transpose_tile(src: *const f64, lds: usize, dst: *mut f64, ldd: usize) {
            transpose4d(src, lds, dst, ldd)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Kernels. `S` is the vector type, `S1` the one-lane type with the same arithmetic.

/// The largest vector block of `C` a kernel keeps (elements), for partial stores.
const MAX_BLOCK: usize = 64;
/// The most lanes of any vector type.
const MAX_LANES: usize = 16;

/// Stores the `NV` vectors `s` into the column of `C` at `c`, skipping its first `skip`
/// elements (already written by an earlier, overlapping block).
#[inline(always)]
unsafe fn store_col<S: Simd, const NV: usize>(c: *mut S::E, s: [S; NV], skip: usize) {
    if skip == 0 {
        for (v, &x) in s.iter().enumerate() {
            x.store(c.add(v * S::LANES));
        }
    } else {
        let mut tmp = [<S::E as Elem>::ZERO; MAX_BLOCK];
        for (v, &x) in s.iter().enumerate() {
            x.store(tmp.as_mut_ptr().add(v * S::LANES));
        }
        for (r, &v) in tmp.iter().enumerate().take(NV * S::LANES).skip(skip) {
            c.add(r).write(v);
        }
    }
}

/// Broadcast kernel: `C[0..NV·LANES, 0..NR] = C0 + A[0..NV·LANES, :] · B[:, 0..NR]`, each
/// element one multiply-add chain in order of `k`, starting from `C`'s value when
/// `from_c` (else from zero). `A` has contiguous columns `lda` apart, `C` columns are
/// `ldc` apart.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn bcast<S: Simd, const NV: usize, const NR: usize>(
    k: usize,
    a: *const S::E,
    lda: usize,
    b: *const S::E,
    rsb: usize,
    csb: usize,
    c: *mut S::E,
    ldc: usize,
    from_c: bool,
    skip: usize,
) {
    let mut s = [[S::zero(); NV]; NR];
    if from_c {
        for (j, sj) in s.iter_mut().enumerate() {
            for (v, x) in sj.iter_mut().enumerate() {
                // Rows below `skip` belong to an earlier block, which wrote them.
                *x = S::load(c.add(j * ldc + v * S::LANES));
            }
        }
    }
    for p in 0..k {
        let ap = a.add(p * lda);
        let av: [S; NV] = build(S::zero(), |v| S::load(ap.add(v * S::LANES)));
        let bp = b.add(p * rsb);
        for (j, sj) in s.iter_mut().enumerate() {
            let bj = S::splat(bp.add(j * csb));
            for v in 0..NV {
                sj[v] = S::madd(av[v], bj, sj[v]);
            }
        }
    }
    for (j, &sj) in s.iter().enumerate() {
        store_col::<S, NV>(c.add(j * ldc), sj, skip);
    }
}

/// Where a row block of `A` is read: `a` with columns `lda` apart.
#[derive(Clone, Copy)]
struct Panel<E> {
    a: *const E,
    lda: usize,
}

/// The broadcast kernel over all column blocks for rows `i..i+NV·LANES` of `C` and the
/// `k` range `p0..p0+kc` (`A` rows already at `panel`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn bcast_row_block<S: Simd, const NV: usize, const NR: usize>(
    j: &Job<S::E>,
    panel: Panel<S::E>,
    p0: usize,
    kc: usize,
    i: usize,
    from_c: bool,
    skip: usize,
) {
    let Panel { a, lda } = panel;
    let c = j.c.add(i);
    let b0 = j.b.add(p0 * j.rsb);
    let (rsb, csb, ldc) = (j.rsb, j.csb, j.m);
    let mut col = 0;
    while col + NR <= j.n {
        let (b, c) = (b0.add(col * csb), c.add(col * ldc));
        bcast::<S, NV, NR>(kc, a, lda, b, rsb, csb, c, ldc, from_c, skip);
        col += NR;
    }
    let nr = j.n - col;
    if nr == 0 {
        return;
    }
    let (b, c) = (b0.add(col * csb), c.add(col * ldc));
    // `NR > x` is known at compile time: arms wider than this variant's block vanish.
    macro_rules! edge {
        ($($w:literal)*) => {
            match nr {
                $($w if NR > $w => bcast::<S, NV, $w>(kc, a, lda, b, rsb, csb, c, ldc, from_c, skip),)*
                _ => unreachable!(),
            }
        };
    }
    edge!(1 2 3 4 5 6 7)
}

/// Below this many columns of `C`, a product with a transposed `A` takes dot products
/// rather than packing `A`.
const PACK_MIN_N: usize = 4;

/// Bytes of the stack buffer a transposed panel of `A` is packed into.
const PACK_BYTES: usize = 16 * 1024;

/// A 64-byte aligned buffer (aligned loads of the packed panel never split a line).
#[repr(C, align(64))]
struct PackBuf([u8; PACK_BYTES]);

/// Copies rows `i..i+rows` of the row-contiguous `A` (rows `j.rsa` apart), columns
/// `p0..p0+kc`, into `dst` as a column-major `rows x kc` panel, by transposed tiles.
#[inline(always)]
unsafe fn pack_rows<S: Simd>(
    j: &Job<S::E>,
    i: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    dst: *mut S::E,
) {
    let t = S::TILE;
    let src = j.a.add(i * j.rsa + p0);
    let full = kc - kc % t;
    for r0 in (0..rows).step_by(t) {
        let (s, d) = (src.add(r0 * j.rsa), dst.add(r0));
        let mut q = 0;
        while q < full {
            S::transpose_tile(s.add(q), j.rsa, d.add(q * rows), rows);
            q += t;
        }
        for q in full..kc {
            for r in 0..t {
                *d.add(q * rows + r) = *s.add(r * j.rsa + q);
            }
        }
    }
}

/// One row block of `C` (`NV` vectors tall, at row `i`): read in place when `A` has
/// contiguous columns, else packed (transposed) chunk by chunk of `k`; a chunk after the
/// first continues each chain from the `C` the previous one stored, so chunking does not
/// change a single rounding.
#[inline(always)]
unsafe fn row_block<S: Simd, const NV: usize, const NR: usize>(
    j: &Job<S::E>,
    buf: *mut S::E,
    i: usize,
    skip: usize,
) {
    if j.rsa == 1 {
        let panel = Panel {
            a: j.a.add(i),
            lda: j.csa,
        };
        bcast_row_block::<S, NV, NR>(j, panel, 0, j.k, i, j.acc, skip);
        return;
    }
    let rows = NV * S::LANES;
    let kc_max = (PACK_BYTES / std::mem::size_of::<S::E>() / rows).max(1);
    let mut p0 = 0;
    while p0 < j.k {
        let kc = kc_max.min(j.k - p0);
        pack_rows::<S>(j, i, rows, p0, kc, buf);
        let panel = Panel { a: buf, lda: rows };
        bcast_row_block::<S, NV, NR>(j, panel, p0, kc, i, j.acc || p0 > 0, skip);
        p0 += kc;
    }
}

/// `C (=|+=) A·B` by broadcast kernels, `A` column-contiguous (read in place) or
/// row-contiguous with at least `LANES` rows (packed): row blocks of `NV` vectors, then of
/// one, then one last vector block shifted back to end at row `m` (single rows when
/// `m < LANES`, only for column-contiguous `A`).
#[inline(always)]
unsafe fn drive_bcast<S: Simd, S1: Simd<E = S::E>, const NV: usize, const NR: usize>(
    j: &Job<S::E>,
) {
    let mut buf = std::mem::MaybeUninit::<PackBuf>::uninit();
    let buf = buf.as_mut_ptr() as *mut S::E;
    let (m, w) = (j.m, S::LANES);
    let mut i = 0;
    while i + NV * w <= m {
        row_block::<S, NV, NR>(j, buf, i, 0);
        i += NV * w;
    }
    while i + w <= m {
        row_block::<S, 1, NR>(j, buf, i, 0);
        i += w;
    }
    if i < m {
        if m >= w {
            row_block::<S, 1, NR>(j, buf, m - w, i - (m - w));
        } else {
            debug_assert_eq!(j.rsa, 1);
            for r in i..m {
                let panel = Panel {
                    a: j.a.add(r),
                    lda: j.csa,
                };
                bcast_row_block::<S1, 1, NR>(j, panel, 0, j.k, r, j.acc, 0);
            }
        }
    }
}

/// Dot kernel: the `MI x NJ` dot products of rows `a[i]` and columns `b[j]` (both
/// contiguous, length `k`).
#[inline(always)]
unsafe fn dot<S: Simd, S1: Simd<E = S::E>, const MI: usize, const NJ: usize>(
    k: usize,
    a: [*const S::E; MI],
    b: [*const S::E; NJ],
) -> [[S::E; NJ]; MI] {
    let w = S::LANES;
    let mut s = [[S::zero(); NJ]; MI];
    let kv = k - k % w;
    let mut p = 0;
    while p < kv {
        let bv: [S; NJ] = build(S::zero(), |q| S::load(b[q].add(p)));
        for (si, ai) in s.iter_mut().zip(&a) {
            let av = S::load(ai.add(p));
            for (sij, &bj) in si.iter_mut().zip(&bv) {
                *sij = S::madd(av, bj, *sij);
            }
        }
        p += w;
    }
    let mut out = [[<S::E as Elem>::ZERO; NJ]; MI];
    if w <= MAX_LANES && MI * NJ >= w / 2 {
        // LANES accumulators at a time (column-major order within the block; the last
        // group padded with zeros) folded into one vector of their sums: a transposing
        // reduction, far cheaper than one horizontal sum each.
        let mut tmp = [<S::E as Elem>::ZERO; MAX_LANES];
        for g in 0..(MI * NJ).div_ceil(w) {
            let x: [S; MAX_LANES] = build(S::zero(), |l| {
                let q = g * w + l;
                if l < w && q < MI * NJ {
                    s[q % MI][q / MI]
                } else {
                    S::zero()
                }
            });
            S::fold(&x[..w]).store(tmp.as_mut_ptr());
            for (l, &v) in tmp.iter().enumerate().take(w) {
                let q = g * w + l;
                if q < MI * NJ {
                    out[q % MI][q / MI] = v;
                }
            }
        }
    } else {
        for (o, si) in out.iter_mut().zip(&s) {
            for (o, sij) in o.iter_mut().zip(si) {
                *o = sij.hsum();
            }
        }
    }
    if kv < k {
        for (o, ai) in out.iter_mut().zip(&a) {
            for (o, bj) in o.iter_mut().zip(&b) {
                let mut t = S1::splat(o);
                for q in kv..k {
                    t = S1::madd(S1::load(ai.add(q)), S1::load(bj.add(q)), t);
                }
                t.store(o);
            }
        }
    }
    out
}

/// The dot kernel for rows `i..i+mi` and columns `col..col+NJ` of `C` (`mi <= MI`; the
/// row pointers beyond `mi` repeat the last row), `B` columns `ldb` apart.
#[inline(always)]
unsafe fn dot_block<S: Simd, S1: Simd<E = S::E>, const MI: usize, const NJ: usize>(
    j: &Job<S::E>,
    a_rows: [*const S::E; MI],
    mi: usize,
    i: usize,
    col: usize,
    ldb: usize,
) {
    let b_cols: [*const S::E; NJ] = build(j.b, |q| j.b.add((col + q) * ldb));
    let out = dot::<S, S1, MI, NJ>(j.k, a_rows, b_cols);
    for jj in 0..NJ {
        let c = j.c.add(i + (col + jj) * j.m);
        for (q, oq) in out.iter().take(mi).enumerate() {
            let p = c.add(q);
            p.write(if j.acc { *p + oq[jj] } else { oq[jj] });
        }
    }
}

/// `C (+)= A·B` with `A` row-contiguous (rows `lda` apart) and `B` column-contiguous
/// (columns `ldb` apart), in `MI x NJ` blocks; the last row block repeats its last row
/// (stored once), the last column block is narrower.
#[inline(always)]
unsafe fn drive_dot<S: Simd, S1: Simd<E = S::E>, const MI: usize, const NJ: usize>(
    j: &Job<S::E>,
    lda: usize,
    ldb: usize,
) {
    let (m, n) = (j.m, j.n);
    let mut i = 0;
    while i < m {
        let mi = MI.min(m - i);
        let a_rows: [*const S::E; MI] = build(j.a, |q| j.a.add((i + q.min(mi - 1)) * lda));
        let mut col = 0;
        while col + NJ <= n {
            dot_block::<S, S1, MI, NJ>(j, a_rows, mi, i, col, ldb);
            col += NJ;
        }
        if col < n {
            macro_rules! edge {
                ($($w:literal)*) => {
                    match n - col {
                        $($w if NJ > $w => dot_block::<S, S1, MI, $w>(j, a_rows, mi, i, col, ldb),)*
                        _ => unreachable!(),
                    }
                };
            }
            edge!(1 2 3 4 5 6 7)
        }
        i += MI;
    }
}

/// Routes a product to a kernel by the operands' layout.
#[inline(always)]
unsafe fn drive<
    S: Simd,
    S1: Simd<E = S::E>,
    const NV: usize,
    const NR: usize,
    const MI: usize,
    const NJ: usize,
>(
    j: &Job<S::E>,
) {
    // A single row against column-contiguous B, or a transpose too narrow to pay for
    // packing: dot products along k. Otherwise broadcast kernels, with A read in place
    // or packed.
    let dot_ok = j.csa == 1 && (j.rsb == 1 || j.k == 1);
    let pack_ok = j.rsa != 1 && j.csa == 1 && j.m >= S::LANES && j.n >= PACK_MIN_N;
    if dot_ok && ((j.rsa != 1 && !pack_ok) || j.m == 1) {
        drive_dot::<S, S1, MI, NJ>(j, j.rsa, j.csb);
    } else if j.rsa == 1 || pack_ok {
        drive_bcast::<S, S1, NV, NR>(j);
    } else if j.csa == 1 {
        // Aᵀ·Bᵀ: copy B to column-major once, then dot products.
        let b: Vec<S::E> = (0..j.n)
            .flat_map(|c| (0..j.k).map(move |p| (c, p)))
            .map(|(c, p)| *j.b.add(p * j.rsb + c * j.csb))
            .collect();
        let jb = Job {
            b: b.as_ptr(),
            rsb: 1,
            csb: j.k,
            ..*j
        };
        drive_dot::<S, S1, MI, NJ>(&jb, j.rsa, j.k);
    } else {
        // Neither layout (general strides): one dot product at a time.
        for q in 0..j.n {
            for r in 0..j.m {
                let c = j.c.add(r + q * j.m);
                let mut s = if j.acc { S1::splat(c) } else { S1::zero() };
                for p in 0..j.k {
                    let (x, y) = (
                        j.a.add(r * j.rsa + p * j.csa),
                        j.b.add(p * j.rsb + q * j.csb),
                    );
                    s = S1::madd(S1::splat(x), S1::splat(y), s);
                }
                s.store(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: [usize; 8] = [1, 5, 7, 17, 33, 64, 128, 129];

    /// Deterministic values in [-1, 1) (a 64-bit LCG's high bits).
    fn values(len: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// A logical `rows x cols` matrix stored column-major, or stored as its transpose
    /// (row-major) and viewed through `t()`.
    struct Stored {
        data: Vec<f64>,
        rows: usize,
        cols: usize,
        transposed: bool,
    }

    impl Stored {
        fn new(rows: usize, cols: usize, transposed: bool, seed: u64) -> Self {
            Stored {
                data: values(rows * cols, seed),
                rows,
                cols,
                transposed,
            }
        }
        /// Logical element `(i, j)`.
        fn get(&self, i: usize, j: usize) -> f64 {
            if self.transposed {
                self.data[j + i * self.cols]
            } else {
                self.data[i + j * self.rows]
            }
        }
        fn view<'a, S: Copy>(&self, data: &'a [S]) -> MatRef<'a, S> {
            if self.transposed {
                MatRef::col_major(data, self.cols, self.rows).unwrap().t()
            } else {
                MatRef::col_major(data, self.rows, self.cols).unwrap()
            }
        }
        fn f32s(&self) -> Vec<f32> {
            self.data.iter().map(|&x| x as f32).collect()
        }
    }

    /// The f64 reference `c0 + a·b` by a plain triple loop, and the error scale
    /// `|c0| + Σ_p |a_ip b_pj|` of each element.
    fn reference(a: &Stored, b: &Stored, c0: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        let mut want = vec![0.0; m * n];
        let mut scale = vec![0.0; m * n];
        for j in 0..n {
            for i in 0..m {
                let (mut s, mut t) = c0.map_or((0.0, 0.0), |c| (c[i + j * m], c[i + j * m].abs()));
                for p in 0..k {
                    s += a.get(i, p) * b.get(p, j);
                    t += (a.get(i, p) * b.get(p, j)).abs();
                }
                want[i + j * m] = s;
                scale[i + j * m] = t;
            }
        }
        (want, scale)
    }

    /// Every element within the classic bound `(k + 2) u Σ|a b|` of a k-term dot product
    /// in precision `u` (plus the reference's own, much smaller, f64 error).
    #[track_caller]
    fn check(got: &[f64], want: &[f64], scale: &[f64], k: usize, u: f64, what: &str) {
        assert_eq!(got.len(), want.len());
        for (idx, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
            let tol = (k as f64 + 2.0) * u * s + 1e-300;
            assert!(
                (g - w).abs() <= tol,
                "{what}: element {idx}: got {g}, want {w}, |error| {:e} > {tol:e}",
                (g - w).abs()
            );
        }
    }

    /// Shapes: every combination of the sizes up to 2^14 multiply-adds, and every size in
    /// each dimension with the other two at 7 and 33.
    fn shapes() -> Vec<(usize, usize, usize)> {
        let mut v = Vec::new();
        for &m in &SIZES {
            for &k in &SIZES {
                for &n in &SIZES {
                    let others = [(m, k), (k, n), (m, n)].contains(&(7, 33));
                    if m * k * n <= 1 << 14 || others {
                        v.push((m, k, n));
                    }
                }
            }
        }
        // k beyond one packed chunk (256 or 512 elements)
        v.extend([(17, 600, 5), (40, 1100, 4)]);
        v.extend([
            (128, 64, 32),
            (64, 128, 32),
            (128, 32, 10),
            (32, 128, 10),
            (128, 10, 32),
        ]);
        v
    }

    fn run<S: Real>(isa: Isa, a: MatRef<'_, S>, b: MatRef<'_, S>, c: &mut [S], acc: bool) {
        assert!(isa.supported());
        assert_eq!((a.cols(), c.len()), (b.rows(), a.rows() * b.cols()));
        // SAFETY: shapes checked above, `c` initialized, `isa` supported.
        unsafe { gemm_with(isa, a, b, c.as_mut_ptr(), acc) }
    }

    /// All four transposition variants, `=` and `+=`, f32 and f64, against the f64 loop.
    fn check_variant(isa: Isa) {
        for (m, k, n) in shapes() {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let seed = (m * 1_000_000 + k * 1000 + n) as u64 * 4 + (ta as u64) * 2 + tb as u64;
                let a = Stored::new(m, k, ta, seed);
                let b = Stored::new(k, n, tb, seed + 7);
                let c0 = values(m * n, seed + 11);
                let what = format!("{isa:?} {m}x{k}x{n} ta={ta} tb={tb}");
                // f64; the output starts as NaN so any element read before written shows.
                let (want, scale) = reference(&a, &b, None);
                let mut c = vec![f64::NAN; m * n];
                run(isa, a.view(&a.data), b.view(&b.data), &mut c, false);
                check(&c, &want, &scale, k, f64::EPSILON, &what);
                let (want_acc, scale_acc) = reference(&a, &b, Some(&c0));
                let mut c = c0.clone();
                run(isa, a.view(&a.data), b.view(&b.data), &mut c, true);
                check(&c, &want_acc, &scale_acc, k + 1, f64::EPSILON, &what);
                // f32 (the inputs are rounded to f32 first, so the reference is exact
                // for the f32 operands up to f64 rounding)
                let (a32, b32) = (a.f32s(), b.f32s());
                let a_r = Stored {
                    data: a32.iter().map(|&x| x as f64).collect(),
                    ..a
                };
                let b_r = Stored {
                    data: b32.iter().map(|&x| x as f64).collect(),
                    ..b
                };
                let (want, scale) = reference(&a_r, &b_r, None);
                let mut c = vec![f32::NAN; m * n];
                run(isa, a_r.view(&a32), b_r.view(&b32), &mut c, false);
                let c: Vec<f64> = c.iter().map(|&x| x as f64).collect();
                check(&c, &want, &scale, k, f32::EPSILON as f64, &what);
            }
        }
    }

    #[test]
    fn portable_kernels_match_f64_loop_for_all_transpositions_and_odd_shapes() {
        check_variant(Isa::Portable);
    }

    #[test]
    fn dispatched_kernels_match_f64_loop_and_portable() {
        for isa in [Isa::Avx2, Isa::Avx512] {
            if !isa.supported() {
                eprintln!("{isa:?} not supported by this CPU: skipped");
                continue;
            }
            check_variant(isa);
            // and against the portable variant directly
            for (m, k, n) in [(128, 64, 32), (128, 32, 10), (33, 129, 17), (1, 64, 10)] {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    let a = Stored::new(m, k, ta, 3);
                    let b = Stored::new(k, n, tb, 4);
                    let (want, scale) = reference(&a, &b, None);
                    let (a32, b32) = (a.f32s(), b.f32s());
                    let mut x = vec![0f32; m * n];
                    let mut y = vec![0f32; m * n];
                    run(isa, a.view(&a32), b.view(&b32), &mut x, false);
                    run(Isa::Portable, a.view(&a32), b.view(&b32), &mut y, false);
                    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                    let y: Vec<f64> = y.iter().map(|&v| v as f64).collect();
                    // two f32 results, each within (k+2)u Σ|ab| of the exact f32-operand
                    // product, are within twice that of each other; the f32 inputs
                    // differ from `a` by 2^-24 relative, covered by one more u
                    check(
                        &x,
                        &y,
                        &scale,
                        2 * k + 6,
                        f32::EPSILON as f64,
                        "vs portable",
                    );
                    let _ = want;
                }
            }
        }
    }

    /// Broadcast-kernel products (at least one vector of rows and `PACK_MIN_N` columns)
    /// compute every element as one multiply-add chain in order of `k`: bit for bit the
    /// scalar chain, whatever the layout of the operands.
    #[test]
    fn broadcast_products_are_the_sequential_chain_bit_for_bit() {
        fn chain<M: Madd>(
            a: &Stored,
            b: &Stored,
            a32: &[f32],
            b32: &[f32],
            acc: &[f32],
        ) -> Vec<f32> {
            let (m, k, n) = (a.rows, a.cols, b.cols);
            let (va, vb) = (a.view(a32), b.view(b32));
            let mut c = acc.to_vec();
            for j in 0..n {
                for i in 0..m {
                    let mut s = c[i + j * m];
                    for p in 0..k {
                        s = M::madd(va.at(i, p), vb.at(p, j), s);
                    }
                    c[i + j * m] = s;
                }
            }
            c
        }
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            if !isa.supported() {
                continue;
            }
            for (m, k, n) in [
                (128, 64, 32),
                (33, 129, 7),
                (8, 300, 4),
                (20, 600, 5),
                (17, 5, 17),
            ] {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    let a = Stored::new(m, k, ta, 5);
                    let b = Stored::new(k, n, tb, 6);
                    let (a32, b32) = (a.f32s(), b.f32s());
                    let c0: Vec<f32> = values(m * n, 7).iter().map(|&x| x as f32).collect();
                    for acc in [false, true] {
                        let start = if acc { c0.clone() } else { vec![0.0; m * n] };
                        let want = if isa == Isa::Portable {
                            chain::<PortableMadd>(&a, &b, &a32, &b32, &start)
                        } else {
                            chain::<Fused>(&a, &b, &a32, &b32, &start)
                        };
                        let mut c = if acc {
                            c0.clone()
                        } else {
                            vec![f32::NAN; m * n]
                        };
                        run(isa, a.view(&a32), b.view(&b32), &mut c, acc);
                        let same = c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{isa:?} {m}x{k}x{n} ta={ta} tb={tb} acc={acc}");
                    }
                }
            }
        }
    }

    /// The AVX-512 blocking (16-lane vectors, 32 x 8 broadcast blocks, 4 x 4 dot blocks),
    /// run with portable vectors of the same width, so the driver logic those entry
    /// points use is checked on any CPU.
    #[test]
    fn wide_vector_blocking_matches_f64_loop() {
        unsafe fn go(a: MatRef<'_, f32>, b: MatRef<'_, f32>, c: &mut [f32], acc: bool) {
            let j = Job::new(a, b, c.as_mut_ptr(), acc);
            drive::<Arr<f32, Fused, 16>, Arr<f32, Fused, 1>, 2, 8, 4, 4>(&j)
        }
        unsafe fn go64(a: MatRef<'_, f64>, b: MatRef<'_, f64>, c: &mut [f64], acc: bool) {
            let j = Job::new(a, b, c.as_mut_ptr(), acc);
            drive::<Arr<f64, Fused, 8>, Arr<f64, Fused, 1>, 2, 8, 4, 4>(&j)
        }
        let shapes = [
            (1, 33, 17),
            (15, 7, 9),
            (17, 129, 3),
            (33, 64, 10),
            (47, 300, 9),
            (64, 600, 33),
        ];
        for (m, k, n) in shapes {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = Stored::new(m, k, ta, 8);
                let b = Stored::new(k, n, tb, 9);
                let what = format!("wide {m}x{k}x{n} ta={ta} tb={tb}");
                let (want, scale) = reference(&a, &b, None);
                let mut c = vec![f64::NAN; m * n];
                // SAFETY: shapes agree, `c` holds m * n elements; portable vectors only.
                unsafe { go64(a.view(&a.data), b.view(&b.data), &mut c, false) };
                check(&c, &want, &scale, k, f64::EPSILON, &what);
                let (a32, b32) = (a.f32s(), b.f32s());
                let a_r = Stored {
                    data: a32.iter().map(|&x| x as f64).collect(),
                    ..a
                };
                let b_r = Stored {
                    data: b32.iter().map(|&x| x as f64).collect(),
                    ..b
                };
                // `+=` onto f32 start values (exactly representable in the reference)
                let mut c: Vec<f32> = values(m * n, 10).iter().map(|&x| x as f32).collect();
                let c0: Vec<f64> = c.iter().map(|&x| x as f64).collect();
                let (want, scale) = reference(&a_r, &b_r, Some(&c0));
                // SAFETY: as above.
                unsafe { go(a_r.view(&a32), b_r.view(&b32), &mut c, true) };
                let c: Vec<f64> = c.iter().map(|&x| x as f64).collect();
                check(&c, &want, &scale, k + 1, f32::EPSILON as f64, &what);
            }
        }
    }

    #[test]
    fn large_products_go_through_matrixmultiply_correctly() {
        // above the threshold for a transposed B (an untransposed one needs 2^26, too
        // slow for the f64 reference in a debug build)
        let (m, k, n) = (256, 130, 256);
        assert!(m * k * n > LARGE_STRIDED_B && m * k * n < LARGE);
        for (ta, tb) in [(false, true), (true, true)] {
            let a = Stored::new(m, k, ta, 1);
            let b = Stored::new(k, n, tb, 2);
            let (want, scale) = reference(&a, &b, None);
            let mut c = vec![f64::NAN; m * n];
            let job = Job::new(a.view(&a.data), b.view(&b.data), c.as_mut_ptr(), false);
            assert!(large(&job));
            gemm(a.view(&a.data), b.view(&b.data), &mut c, false).unwrap();
            check(&c, &want, &scale, k, f64::EPSILON, "large");
        }
    }

    #[test]
    fn bad_views_and_shapes_are_errors() {
        let d = [0.0f32; 6];
        assert!(MatRef::col_major(&d, 2, 3).is_ok());
        assert!(matches!(
            MatRef::col_major(&d, 3, 3),
            Err(Error::InvalidArgument(_))
        ));
        assert!(MatRef::new(&d, 2, 2, 1, 5).is_err());
        assert!(MatRef::new(&d, 2, 2, usize::MAX, 1).is_err());
        assert!(MatRef::new(&d[..0], 0, 5, 1, 0).is_ok());
        let a = MatRef::col_major(&d, 2, 3).unwrap();
        let mut c = [0.0f32; 4];
        assert!(matches!(
            gemm(a, a, &mut c, false),
            Err(Error::ShapeMismatch { .. })
        ));
        let mut c = [0.0f32; 3];
        assert!(matches!(
            gemm(a, a.t(), &mut c, false),
            Err(Error::ShapeMismatch { .. })
        ));
        let mut c = [7.0f32; 4];
        gemm(a, a.t(), &mut c, false).unwrap();
        assert_eq!(c, [0.0; 4]);
    }

    #[test]
    fn empty_inner_dimension_gives_zeros_or_leaves_c() {
        let e: [f64; 0] = [];
        let a = MatRef::col_major(&e, 3, 0).unwrap();
        let b = MatRef::col_major(&e, 0, 2).unwrap();
        let mut c = [5.0; 6];
        gemm(a, b, &mut c, true).unwrap();
        assert_eq!(c, [5.0; 6]);
        gemm(a, b, &mut c, false).unwrap();
        assert_eq!(c, [0.0; 6]);
    }
}
