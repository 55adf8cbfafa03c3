//! Packets of `f32` lanes: the scalar type of batched task instances.
//!
//! `Lanes<N>` behaves like one `f32` whose every operation runs on `N` task instances at
//! once. Lane `i` of every value belongs to instance `i` of the lane group.
//!
//! The arithmetic (`+ − × ÷`, square root, negation, absolute value, min/max) runs on
//! explicit SIMD registers, `W` lanes at a time: 8 with AVX (`-C target-cpu=native` on a
//! recent x86-64), 4 with the SSE2 baseline, 1 (plain `f32`) elsewhere. Plain loops over
//! `[f32; N]` would be simpler, but inside a loop over many packets (an optimizer update,
//! an elementwise derivative rule) LLVM's loop vectorizer vectorizes *across* the packets
//! with strided gathers instead of along the lanes, which measured 3.5x slower on an
//! Adam update. Each lane gets exactly the IEEE operation plain `f32` does, so a lane
//! computes bit for bit what its instance computes alone. `exp`, `ln`, `ln_1p` and `tanh`
//! use branch-free polynomials (within 3 ulp of the exact value; see `kernels::vecmath`) so
//! they vectorize too, and may differ from the platform's `f32` functions in the last
//! bits; `sin`, `cos`, `powf` and `erf` call the `f32` ones lane by lane.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use num_traits::{One, Zero};

use crate::key::{self, Key, KeyOps};
use crate::scalar::{erf_f64, Mask, Real};

/// One SIMD register of `W` lanes and the operations `Lanes` needs on it.
#[allow(unused_unsafe)] // the intrinsics are safe to call on newer compilers
mod simd {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx"))]
    mod imp {
        use core::arch::x86_64::*;
        pub type V = __m256;
        pub const W: usize = 8;
        /// # Safety
        /// `p` is valid for reading `W` floats.
        #[inline(always)]
        pub unsafe fn load(p: *const f32) -> V {
            _mm256_loadu_ps(p)
        }
        /// # Safety
        /// `p` is valid for writing `W` floats.
        #[inline(always)]
        pub unsafe fn store(p: *mut f32, v: V) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        pub fn add(a: V, b: V) -> V {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        pub fn sub(a: V, b: V) -> V {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        pub fn mul(a: V, b: V) -> V {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        pub fn div(a: V, b: V) -> V {
            unsafe { _mm256_div_ps(a, b) }
        }
        #[inline(always)]
        pub fn sqrt(a: V) -> V {
            unsafe { _mm256_sqrt_ps(a) }
        }
        #[inline(always)]
        pub fn neg(a: V) -> V {
            unsafe { _mm256_xor_ps(a, _mm256_set1_ps(-0.0)) }
        }
        #[inline(always)]
        pub fn abs(a: V) -> V {
            unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
        }
        /// `a >= b ? a : b` per lane (so NaN in either gives `b`).
        #[inline(always)]
        pub fn max(a: V, b: V) -> V {
            unsafe { _mm256_blendv_ps(b, a, _mm256_cmp_ps::<_CMP_GE_OQ>(a, b)) }
        }
        /// `a <= b ? a : b` per lane.
        #[inline(always)]
        pub fn min(a: V, b: V) -> V {
            unsafe { _mm256_blendv_ps(b, a, _mm256_cmp_ps::<_CMP_LE_OQ>(a, b)) }
        }
    }

    #[cfg(all(target_arch = "x86_64", not(target_feature = "avx")))]
    mod imp {
        use core::arch::x86_64::*;
        pub type V = __m128;
        pub const W: usize = 4;
        /// # Safety
        /// `p` is valid for reading `W` floats.
        #[inline(always)]
        pub unsafe fn load(p: *const f32) -> V {
            _mm_loadu_ps(p)
        }
        /// # Safety
        /// `p` is valid for writing `W` floats.
        #[inline(always)]
        pub unsafe fn store(p: *mut f32, v: V) {
            _mm_storeu_ps(p, v)
        }
        #[inline(always)]
        pub fn add(a: V, b: V) -> V {
            unsafe { _mm_add_ps(a, b) }
        }
        #[inline(always)]
        pub fn sub(a: V, b: V) -> V {
            unsafe { _mm_sub_ps(a, b) }
        }
        #[inline(always)]
        pub fn mul(a: V, b: V) -> V {
            unsafe { _mm_mul_ps(a, b) }
        }
        #[inline(always)]
        pub fn div(a: V, b: V) -> V {
            unsafe { _mm_div_ps(a, b) }
        }
        #[inline(always)]
        pub fn sqrt(a: V) -> V {
            unsafe { _mm_sqrt_ps(a) }
        }
        #[inline(always)]
        pub fn neg(a: V) -> V {
            unsafe { _mm_xor_ps(a, _mm_set1_ps(-0.0)) }
        }
        #[inline(always)]
        pub fn abs(a: V) -> V {
            unsafe { _mm_andnot_ps(_mm_set1_ps(-0.0), a) }
        }
        #[inline(always)]
        fn blend(m: V, a: V, b: V) -> V {
            unsafe { _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b)) }
        }
        /// `a >= b ? a : b` per lane (so NaN in either gives `b`).
        #[inline(always)]
        pub fn max(a: V, b: V) -> V {
            blend(unsafe { _mm_cmpge_ps(a, b) }, a, b)
        }
        /// `a <= b ? a : b` per lane.
        #[inline(always)]
        pub fn min(a: V, b: V) -> V {
            blend(unsafe { _mm_cmple_ps(a, b) }, a, b)
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    mod imp {
        pub type V = f32;
        pub const W: usize = 1;
        /// # Safety
        /// `p` is valid for reading one float.
        #[inline(always)]
        pub unsafe fn load(p: *const f32) -> V {
            *p
        }
        /// # Safety
        /// `p` is valid for writing one float.
        #[inline(always)]
        pub unsafe fn store(p: *mut f32, v: V) {
            *p = v
        }
        #[inline(always)]
        pub fn add(a: V, b: V) -> V {
            a + b
        }
        #[inline(always)]
        pub fn sub(a: V, b: V) -> V {
            a - b
        }
        #[inline(always)]
        pub fn mul(a: V, b: V) -> V {
            a * b
        }
        #[inline(always)]
        pub fn div(a: V, b: V) -> V {
            a / b
        }
        #[inline(always)]
        pub fn sqrt(a: V) -> V {
            a.sqrt()
        }
        #[inline(always)]
        pub fn neg(a: V) -> V {
            -a
        }
        #[inline(always)]
        pub fn abs(a: V) -> V {
            a.abs()
        }
        #[inline(always)]
        pub fn max(a: V, b: V) -> V {
            if a >= b {
                a
            } else {
                b
            }
        }
        #[inline(always)]
        pub fn min(a: V, b: V) -> V {
            if a <= b {
                a
            } else {
                b
            }
        }
    }

    pub use imp::*;
}

/// `N` lanes of `f32`, one per task instance.
#[derive(Clone, Copy, PartialEq)]
#[repr(transparent)]
pub struct Lanes<const N: usize>(pub [f32; N]);

/// A lane-wise comparison result.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LaneMask<const N: usize>(pub [bool; N]);

impl<const N: usize> Mask for LaneMask<N> {
    #[inline(always)]
    fn splat(b: bool) -> Self {
        LaneMask([b; N])
    }
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        let mut m = self.0;
        for (a, b) in m.iter_mut().zip(o.0) {
            *a = *a && b;
        }
        LaneMask(m)
    }
    #[inline(always)]
    fn or(self, o: Self) -> Self {
        let mut m = self.0;
        for (a, b) in m.iter_mut().zip(o.0) {
            *a = *a || b;
        }
        LaneMask(m)
    }
    #[inline(always)]
    fn not(self) -> Self {
        let mut m = self.0;
        for a in m.iter_mut() {
            *a = !*a;
        }
        LaneMask(m)
    }
    #[inline(always)]
    fn all(self) -> bool {
        self.0.iter().all(|&b| b)
    }
    #[inline(always)]
    fn any(self) -> bool {
        self.0.iter().any(|&b| b)
    }
}

impl<const N: usize> fmt::Debug for Lanes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl<const N: usize> Default for Lanes<N> {
    #[inline(always)]
    fn default() -> Self {
        Lanes([0.0; N])
    }
}

impl<const N: usize> Lanes<N> {
    /// Every lane set to `x`.
    #[inline(always)]
    pub fn splat(x: f32) -> Self {
        Lanes([x; N])
    }
    /// `f` on every lane (scalar code: for the transcendental functions).
    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> Self {
        let mut o = self.0;
        for v in o.iter_mut() {
            *v = f(*v);
        }
        Lanes(o)
    }
    /// `poly` (the branch-free sine or cosine) on every lane, then `libm` on the lanes
    /// outside its range (NaN and infinities included), so a lane's value never depends
    /// on its neighbours.
    #[inline(always)]
    fn sin_cos_with(self, poly: impl Fn(f32) -> f32, libm: impl Fn(f32) -> f32) -> Self {
        let limit = crate::kernels::vecmath::SIN_COS_LIMIT;
        let inside = |x: f32| x.abs() <= limit;
        // Out-of-range lanes go through the polynomial as 0 (their value is replaced).
        let mut out = self.map(|x| poly(if inside(x) { x } else { 0.0 }));
        if !self.0.iter().fold(true, |ok, &x| ok & inside(x)) {
            for (o, &x) in out.0.iter_mut().zip(&self.0) {
                if !inside(x) {
                    *o = libm(x);
                }
            }
        }
        out
    }
    /// `f` on every lane pair (scalar code).
    #[inline(always)]
    fn zip(self, b: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        let mut o = self.0;
        for (v, w) in o.iter_mut().zip(b.0) {
            *v = f(*v, w);
        }
        Lanes(o)
    }
    /// `fv` on every register; `fs` lane by lane when `N` is not a multiple of the
    /// register width (both compute the same).
    #[inline(always)]
    fn map_v(self, fv: impl Fn(simd::V) -> simd::V, fs: impl Fn(f32) -> f32) -> Self {
        if !N.is_multiple_of(simd::W) {
            return self.map(fs);
        }
        let mut o = self.0;
        for c in 0..N / simd::W {
            let i = c * simd::W;
            // SAFETY: i + W <= N, so both pointers cover W floats inside the arrays.
            unsafe {
                let x = simd::load(self.0.as_ptr().add(i));
                simd::store(o.as_mut_ptr().add(i), fv(x));
            }
        }
        Lanes(o)
    }
    /// `fv` on every register pair; `fs` lane by lane when `N` is not a multiple of the
    /// register width.
    #[inline(always)]
    fn zip_v(
        self,
        b: Self,
        fv: impl Fn(simd::V, simd::V) -> simd::V,
        fs: impl Fn(f32, f32) -> f32,
    ) -> Self {
        if !N.is_multiple_of(simd::W) {
            return self.zip(b, fs);
        }
        let mut o = self.0;
        for c in 0..N / simd::W {
            let i = c * simd::W;
            // SAFETY: i + W <= N, so every pointer covers W floats inside its array.
            unsafe {
                let x = simd::load(self.0.as_ptr().add(i));
                let y = simd::load(b.0.as_ptr().add(i));
                simd::store(o.as_mut_ptr().add(i), fv(x, y));
            }
        }
        Lanes(o)
    }
    #[inline(always)]
    fn cmp(self, b: Self, f: impl Fn(f32, f32) -> bool) -> LaneMask<N> {
        let mut m = [false; N];
        for ((m, &x), &y) in m.iter_mut().zip(&self.0).zip(&b.0) {
            *m = f(x, y);
        }
        LaneMask(m)
    }
}

macro_rules! binop {
    ($tr:ident, $f:ident, $atr:ident, $af:ident, $op:tt) => {
        impl<const N: usize> $tr for Lanes<N> {
            type Output = Self;
            #[inline(always)]
            fn $f(self, b: Self) -> Self {
                self.zip_v(b, simd::$f, |x, y| x $op y)
            }
        }
        impl<const N: usize> $atr for Lanes<N> {
            #[inline(always)]
            fn $af(&mut self, b: Self) {
                *self = self.zip_v(b, simd::$f, |x, y| x $op y);
            }
        }
    };
}
binop!(Add, add, AddAssign, add_assign, +);
binop!(Sub, sub, SubAssign, sub_assign, -);
binop!(Mul, mul, MulAssign, mul_assign, *);
binop!(Div, div, DivAssign, div_assign, /);

impl<const N: usize> Neg for Lanes<N> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        self.map_v(simd::neg, |x| -x)
    }
}

impl<const N: usize> Zero for Lanes<N> {
    #[inline(always)]
    fn zero() -> Self {
        Lanes([0.0; N])
    }
    #[inline(always)]
    fn is_zero(&self) -> bool {
        self.0.iter().all(|&x| x == 0.0)
    }
}

impl<const N: usize> One for Lanes<N> {
    #[inline(always)]
    fn one() -> Self {
        Lanes([1.0; N])
    }
}

impl<const N: usize> Sum for Lanes<N> {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::zero(), |a, b| a + b)
    }
}

impl<const N: usize> Real for Lanes<N> {
    type Mask = LaneMask<N>;
    type Key = LaneKeys<N>;
    const LANES: usize = N;

    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        Lanes([x as f32; N])
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        Lanes([x; N])
    }
    #[inline(always)]
    fn lane(self, i: usize) -> f64 {
        self.0[i] as f64
    }
    #[inline(always)]
    fn from_lanes(mut f: impl FnMut(usize) -> f64) -> Self {
        let mut o = [0.0; N];
        for (i, v) in o.iter_mut().enumerate() {
            *v = f(i) as f32;
        }
        Lanes(o)
    }
    #[inline(always)]
    fn set_lane(&mut self, i: usize, v: f64) {
        self.0[i] = v as f32;
    }
    #[inline(always)]
    fn exp(self) -> Self {
        // The branch-free polynomial exp (about 1 ulp; 0 below -86.5) so the lane loop
        // vectorizes; libm's expf would be one scalar call per lane.
        self.map(crate::kernels::vecmath::exp_f32)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        self.map(crate::kernels::vecmath::ln_f32)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        self.map_v(simd::sqrt, f32::sqrt)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        self.map(crate::kernels::vecmath::tanh_f32)
    }
    #[inline(always)]
    fn sin(self) -> Self {
        self.sin_cos_with(|x| crate::kernels::vecmath::sin_cos_f32(x).0, f32::sin)
    }
    #[inline(always)]
    fn cos(self) -> Self {
        self.sin_cos_with(|x| crate::kernels::vecmath::sin_cos_f32(x).1, f32::cos)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        self.map_v(simd::abs, f32::abs)
    }
    #[inline(always)]
    fn powi(self, n: i32) -> Self {
        self.map(|x| x.powi(n))
    }
    #[inline(always)]
    fn powf(self, e: Self) -> Self {
        self.zip(e, f32::powf)
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        // Same tie rule as the scalar impl: the first argument wins when equal.
        self.zip_v(o, simd::max, |a, b| if a >= b { a } else { b })
    }
    #[inline(always)]
    fn min(self, o: Self) -> Self {
        self.zip_v(o, simd::min, |a, b| if a <= b { a } else { b })
    }
    #[inline(always)]
    fn ln_1p(self) -> Self {
        self.map(crate::kernels::vecmath::ln_1p_f32)
    }
    #[inline]
    fn erf(self) -> Self {
        self.map(|x| erf_f64(x as f64) as f32)
    }
    #[inline(always)]
    fn per_lane(self, f32_fn: impl Fn(f32) -> f32, _f64_fn: impl Fn(f64) -> f64) -> Self {
        self.map(f32_fn)
    }
    #[inline(always)]
    fn lt(self, o: Self) -> LaneMask<N> {
        self.cmp(o, |a, b| a < b)
    }
    #[inline(always)]
    fn le(self, o: Self) -> LaneMask<N> {
        self.cmp(o, |a, b| a <= b)
    }
    #[inline(always)]
    fn select(m: LaneMask<N>, a: Self, b: Self) -> Self {
        let mut o = b.0;
        for ((o, &m), &a) in o.iter_mut().zip(&m.0).zip(&a.0) {
            if m {
                *o = a;
            }
        }
        Lanes(o)
    }
    #[inline(always)]
    fn all(m: LaneMask<N>) -> bool {
        m.all()
    }
    #[inline(always)]
    fn any(m: LaneMask<N>) -> bool {
        m.any()
    }
    #[inline(always)]
    fn is_finite(self) -> bool {
        self.0.iter().all(|x| x.is_finite())
    }
}

/// One key per lane: the key type of a batched loss (`<Lanes<N> as Real>::Key`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LaneKeys<const N: usize>(pub [Key; N]);

impl<const N: usize> KeyOps<Lanes<N>> for LaneKeys<N> {
    fn from_lane_keys(keys: &[Key]) -> Self {
        LaneKeys(std::array::from_fn(|i| keys[i.min(keys.len() - 1)]))
    }
    fn lane_key(&self, i: usize) -> Key {
        self.0[i]
    }
    fn split(self) -> (Self, Self) {
        let (a, b) = key::split_lanes(&self.0);
        (LaneKeys(a), LaneKeys(b))
    }
    fn fold_in(self, data: u64) -> Self {
        LaneKeys(key::fold_in_lanes(&self.0, data))
    }
    fn fill_normal(self, out: &mut [Lanes<N>]) {
        key::fill_lanes_f32(&self.0, lanes_as_arrays(out), true);
    }
    fn fill_uniform(self, out: &mut [Lanes<N>]) {
        key::fill_lanes_f32(&self.0, lanes_as_arrays(out), false);
    }
}

/// The packets as plain lane arrays (the same memory: `Lanes` is `repr(transparent)`).
fn lanes_as_arrays<const N: usize>(x: &mut [Lanes<N>]) -> &mut [[f32; N]] {
    // SAFETY: `Lanes<N>` is `repr(transparent)` over `[f32; N]`: same size, alignment
    // and validity, so the slice reinterprets element for element.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<[f32; N]>(), x.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::vecmath;

    /// A plain `f32` operation and the same on packets.
    type Op<const N: usize> = (fn(f32, f32) -> f32, fn(Lanes<N>, Lanes<N>) -> Lanes<N>);

    /// Every lane of a key operation on `LaneKeys` is what that lane's key gives alone,
    /// bit for bit, for fill lengths around the 4-value block size; at 4 lanes (the
    /// portable Philox loops) and at 8 and 16 (AVX2 vectors where the target has them).
    #[test]
    fn lane_keys_match_each_key_alone() {
        lane_keys_match_each_key_alone_at::<4>();
        lane_keys_match_each_key_alone_at::<8>();
        lane_keys_match_each_key_alone_at::<16>();
    }

    fn lane_keys_match_each_key_alone_at<const N: usize>() {
        let keys: Vec<Key> = Key::new(42).split_n(N);
        let lk = LaneKeys::<N>::from_lane_keys(&keys);
        let (a, b) = KeyOps::<Lanes<N>>::split(lk);
        let f = KeyOps::<Lanes<N>>::fold_in(lk, 12345);
        for (l, k) in keys.iter().enumerate() {
            assert_eq!((a.0[l], b.0[l]), k.split());
            assert_eq!(f.0[l], k.fold_in(12345));
        }
        for n in [0, 1, 3, 4, 5, 10, 33] {
            let mut z = vec![Lanes::<N>::default(); n];
            let mut u = vec![Lanes::<N>::default(); n];
            lk.fill_normal(&mut z);
            lk.fill_uniform(&mut u);
            for (l, k) in keys.iter().enumerate() {
                let (zk, uk) = (k.normal_vec::<f32>(n), {
                    let mut v = vec![0f32; n];
                    k.fill_uniform(&mut v);
                    v
                });
                for i in 0..n {
                    assert_eq!(z[i].0[l].to_bits(), zk[i].to_bits(), "normal {i} lane {l}");
                    assert_eq!(u[i].0[l].to_bits(), uk[i].to_bits(), "uniform {i} lane {l}");
                }
            }
        }
    }

    /// Packets take the polynomial sine and cosine on the lanes in its range and libm's on
    /// the others (so NaN and huge arguments stay exact), whatever the other lanes hold.
    #[test]
    fn sin_cos_take_the_polynomial_in_range_and_libm_outside() {
        use crate::kernels::vecmath::sin_cos_f32;
        let x = Lanes::<8>::from_lanes(|i| (i as f64 - 3.5) * 1.7);
        for odd in [None, Some(1e5f32), Some(f32::NAN), Some(f32::INFINITY)] {
            let mut y = x;
            if let Some(v) = odd {
                y.0[3] = v;
            }
            let (s, c) = (Real::sin(y), Real::cos(y));
            for l in 0..8 {
                let (ws, wc) = match odd {
                    Some(v) if l == 3 => (v.sin(), v.cos()),
                    _ => sin_cos_f32(y.0[l]),
                };
                assert_eq!(s.0[l].to_bits(), ws.to_bits(), "sin lane {l} with {odd:?}");
                assert_eq!(c.0[l].to_bits(), wc.to_bits(), "cos lane {l} with {odd:?}");
            }
        }
    }

    #[test]
    fn lanes_match_scalar_ops() {
        let a = Lanes::<8>::from_lanes(|i| i as f64 * 0.37 - 1.1);
        let b = Lanes::<8>::from_lanes(|i| 2.0 - i as f64 * 0.21);
        let ops: [Op<8>; 4] = [
            (|x, y| x + y, |x, y| x + y),
            (|x, y| x - y, |x, y| x - y),
            (|x, y| x * y, |x, y| x * y),
            (|x, y| x / y, |x, y| x / y),
        ];
        for (s, l) in ops {
            let r = l(a, b);
            for i in 0..8 {
                assert_eq!(r.0[i], s(a.0[i], b.0[i]));
            }
        }
        let m = a.lt(b);
        let sel = Lanes::select(m, a, b);
        for i in 0..8 {
            assert_eq!(m.0[i], a.0[i] < b.0[i]);
            assert_eq!(sel.0[i], if a.0[i] < b.0[i] { a.0[i] } else { b.0[i] });
        }
    }

    /// The packet transcendental functions: every lane computes what the scalar
    /// polynomial (`kernels::vecmath`) computes for it alone, bit for bit, over a dense sweep
    /// (at a width that fills registers and one that does not), and the packet results
    /// are within the documented accuracy of the exact value (f64): `exp` 2 ulp on
    /// [−86.5, 88.7], `ln` 2 ulp on (0, 3e38), `ln_1p` 3 ulp, `tanh` 3 ulp. They are not
    /// compared with the platform's `expf` etc.: those may round the other way (about 9%
    /// of `exp` arguments on [−3, 3]), which the module allows.
    ///
    /// Catches: a lane that takes another path than the scalar polynomial (e.g. libm on
    /// some lanes, or a lane read from its neighbour); a polynomial coefficient or range
    /// reduction broken (errors of many ulp somewhere in the sweep).
    #[test]
    fn packet_transcendentals_are_the_scalar_polynomials_within_their_accuracy() {
        fn check<const N: usize>() {
            /// A packet function, its scalar polynomial, the exact function, the
            /// accuracy bound in ulp and the range swept.
            struct Case<const N: usize> {
                name: &'static str,
                packet: fn(Lanes<N>) -> Lanes<N>,
                scalar: fn(f32) -> f32,
                exact: fn(f64) -> f64,
                ulps: f64,
                lo: f32,
                hi: f32,
            }
            let case = |name, packet, scalar, exact, ulps, lo, hi| Case::<N> {
                name,
                packet,
                scalar,
                exact,
                ulps,
                lo,
                hi,
            };
            let cases = [
                case(
                    "exp",
                    Real::exp,
                    vecmath::exp_f32,
                    f64::exp,
                    2.0,
                    -86.5,
                    88.7,
                ),
                case("ln", Real::ln, vecmath::ln_f32, f64::ln, 2.0, 1e-30, 3e38),
                case(
                    "ln_1p",
                    Real::ln_1p,
                    vecmath::ln_1p_f32,
                    f64::ln_1p,
                    3.0,
                    -0.999,
                    1e30,
                ),
                case(
                    "tanh",
                    Real::tanh,
                    vecmath::tanh_f32,
                    f64::tanh,
                    3.0,
                    -20.0,
                    20.0,
                ),
            ];
            for c in cases {
                let Case {
                    name,
                    packet,
                    scalar,
                    exact,
                    ulps,
                    lo,
                    hi,
                } = c;
                // Uniform on [lo, hi], or log-uniform where the range spans decades.
                let n = 40_000;
                let at = |i: usize| -> f32 {
                    let t = i as f64 / n as f64;
                    if lo > 0.0 || hi > 1e3 {
                        let (a, b) = ((lo.abs().max(1e-30) as f64).ln(), (hi as f64).ln());
                        let m = (a + (b - a) * t).exp() as f32;
                        if lo < 0.0 && i % 2 == 1 {
                            (-m).max(lo)
                        } else {
                            m
                        }
                    } else {
                        (lo as f64 + (hi - lo) as f64 * t) as f32
                    }
                };
                let mut worst = 0.0f64;
                for start in (0..n).step_by(N) {
                    let x = Lanes::<N>::from_lanes(|l| at(start + l) as f64);
                    let y = packet(x);
                    for l in 0..N {
                        let (xl, yl) = (x.0[l], y.0[l]);
                        assert_eq!(yl.to_bits(), scalar(xl).to_bits(), "{name}({xl}) lane {l}");
                        let want = exact(xl as f64);
                        let ulp = ((want as f32).abs() * f32::EPSILON).max(f32::MIN_POSITIVE);
                        worst = worst.max((yl as f64 - want).abs() / ulp as f64);
                    }
                }
                assert!(worst <= ulps, "{name} on {N} lanes: {worst} ulp");
            }
        }
        check::<8>();
        check::<16>();
        check::<3>();
    }

    /// Awkward values: signed zeros, subnormals, infinities, NaN, ordinary numbers.
    const SPECIAL: [f32; 12] = [
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.5,
        -2.25,
        3.0e38,
        7.0,
        -0.1,
    ];

    /// Every register-wide operation against the plain `f32` one, bit for bit, on every
    /// pair of awkward values, at a width that fills registers and one that does not.
    fn check_bitwise<const N: usize>() {
        let n = SPECIAL.len();
        let bits = |x: f32| if x.is_nan() { u32::MAX } else { x.to_bits() };
        for shift in 0..n {
            let a = Lanes::<N>::from_lanes(|i| SPECIAL[i % n] as f64);
            let b = Lanes::<N>::from_lanes(|i| SPECIAL[(i + shift) % n] as f64);
            let ops: [Op<N>; 10] = [
                (|x, y| x + y, |x, y| x + y),
                (|x, y| x - y, |x, y| x - y),
                (|x, y| x * y, |x, y| x * y),
                (|x, y| x / y, |x, y| x / y),
                (|x, y| Real::max(x, y), |x, y| x.max(y)),
                (|x, y| Real::min(x, y), |x, y| x.min(y)),
                (|x, _| -x, |x, _| -x),
                (|x, _| x.sqrt(), |x, _| x.sqrt()),
                (|x, _| x.abs(), |x, _| x.abs()),
                (
                    |x, y| {
                        let mut z = x;
                        z += y;
                        z *= y;
                        z -= x;
                        z /= y;
                        z
                    },
                    |x, y| {
                        let mut z = x;
                        z += y;
                        z *= y;
                        z -= x;
                        z /= y;
                        z
                    },
                ),
            ];
            for (k, (s, l)) in ops.iter().enumerate() {
                let r = l(a, b);
                for i in 0..N {
                    let want = s(a.0[i], b.0[i]);
                    assert_eq!(
                        bits(r.0[i]),
                        bits(want),
                        "op {k}, lane {i}: {} {} -> {} (want {want})",
                        a.0[i],
                        b.0[i],
                        r.0[i]
                    );
                }
            }
        }
    }

    #[test]
    fn register_ops_match_scalar_bitwise() {
        check_bitwise::<8>();
        check_bitwise::<16>();
        check_bitwise::<3>();
    }
}
