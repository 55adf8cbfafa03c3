//! The vector abstraction the kernels are written over ([`Simd`]): portable arrays
//! (`Arr`, any width, fused or separate multiply-add) and the AVX2 / AVX-512 registers.

use std::marker::PhantomData;
use std::ops::{Add, Mul};

/// `[f(0), .., f(N - 1)]` by a plain loop (which, unlike `std::array::from_fn`, always
/// inlines: an array of registers must not be spilled through a call).
#[inline(always)]
pub(super) fn build<T: Copy, const N: usize>(fill: T, mut f: impl FnMut(usize) -> T) -> [T; N] {
    let mut a = [fill; N];
    for (i, x) in a.iter_mut().enumerate() {
        *x = f(i);
    }
    a
}

/// The element types with kernels.
pub(super) trait Elem: Copy + Add<Output = Self> + Mul<Output = Self> + 'static {
    const ZERO: Self;
    const ONE: Self;
    /// `self * b + c` rounded once.
    fn fused(self, b: Self, c: Self) -> Self;
}

impl Elem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn fused(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }
}

impl Elem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    #[inline(always)]
    fn fused(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }
}

/// How a portable vector multiplies and adds.
pub(super) trait Madd {
    fn madd<T: Elem>(a: T, b: T, c: T) -> T;
}

/// One fused multiply-add instruction.
pub(super) struct Fused;
impl Madd for Fused {
    #[inline(always)]
    fn madd<T: Elem>(a: T, b: T, c: T) -> T {
        a.fused(b, c)
    }
}

/// A multiply, then an add.
#[allow(dead_code)] // unused where the baseline has FMA
pub(super) struct Unfused;
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
pub(super) trait Simd: Copy {
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
pub(super) struct Arr<T, F, const N: usize>([T; N], PhantomData<F>);

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
pub(super) mod x86 {
    use super::{build, Simd};
    use std::arch::x86_64::*;

    /// 8 `f32` in a YMM register.
    #[derive(Clone, Copy)]
    pub(in crate::kernels::gemm) struct F32x8(__m256);
    /// 4 `f64` in a YMM register.
    #[derive(Clone, Copy)]
    pub(in crate::kernels::gemm) struct F64x4(__m256d);
    /// 16 `f32` in a ZMM register.
    #[derive(Clone, Copy)]
    pub(in crate::kernels::gemm) struct F32x16(__m512);
    /// 8 `f64` in a ZMM register.
    #[derive(Clone, Copy)]
    pub(in crate::kernels::gemm) struct F64x8(__m512d);

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

    /// The 8x8 `f32` tile transpose ([`tr8`](crate::kernels::tile8::tr8) between loads
    /// and stores).
    #[inline(always)]
    pub(in crate::kernels::gemm) unsafe fn transpose8(
        src: *const f32,
        lds: usize,
        dst: *mut f32,
        ldd: usize,
    ) {
        let mut r: [__m256; 8] = build(_mm256_setzero_ps(), |i| _mm256_loadu_ps(src.add(i * lds)));
        crate::kernels::tile8::tr8(&mut r);
        for (i, v) in r.iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * ldd), *v);
        }
    }

    /// The 4x4 `f64` tile transpose.
    #[inline(always)]
    pub(in crate::kernels::gemm) unsafe fn transpose4d(
        src: *const f64,
        lds: usize,
        dst: *mut f64,
        ldd: usize,
    ) {
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
