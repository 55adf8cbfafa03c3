//! Packets of `f32` lanes: the scalar type of batched task instances.
//!
//! `Lanes<N>` behaves like one `f32` whose every operation runs on `N` task instances at
//! once. Plain fixed-size loops over `[f32; N]` are what LLVM turns into SIMD
//! instructions (AVX2: 8 lanes, AVX-512: 16), so this stays stable Rust with no
//! intrinsics. Lane `i` of every value belongs to instance `i` of the lane group.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use num_traits::{One, Zero};

use crate::key::{Key, KeyOps};
use crate::scalar::{erf_f64, Mask, Real};

/// `N` lanes of `f32`, one per task instance.
#[derive(Clone, Copy, PartialEq)]
#[repr(C, align(64))]
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
    #[inline(always)]
    fn map(self, f: impl Fn(f32) -> f32) -> Self {
        let mut o = self.0;
        for v in o.iter_mut() {
            *v = f(*v);
        }
        Lanes(o)
    }
    #[inline(always)]
    fn zip(self, b: Self, f: impl Fn(f32, f32) -> f32) -> Self {
        let mut o = self.0;
        for (v, w) in o.iter_mut().zip(b.0) {
            *v = f(*v, w);
        }
        Lanes(o)
    }
    #[inline(always)]
    fn cmp(self, b: Self, f: impl Fn(f32, f32) -> bool) -> LaneMask<N> {
        let mut m = [false; N];
        for ((o, &x), &y) in m.iter_mut().zip(&self.0).zip(&b.0) {
            *o = f(x, y);
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
                self.zip(b, |x, y| x $op y)
            }
        }
        impl<const N: usize> $atr for Lanes<N> {
            #[inline(always)]
            fn $af(&mut self, b: Self) {
                for (v, w) in self.0.iter_mut().zip(b.0) {
                    *v = *v $op w;
                }
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
        self.map(|x| -x)
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
        self.map(f32::exp)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        self.map(f32::ln)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        self.map(f32::sqrt)
    }
    #[inline(always)]
    fn tanh(self) -> Self {
        self.map(f32::tanh)
    }
    #[inline(always)]
    fn sin(self) -> Self {
        self.map(f32::sin)
    }
    #[inline(always)]
    fn cos(self) -> Self {
        self.map(f32::cos)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        self.map(f32::abs)
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
        self.zip(o, |a, b| if a >= b { a } else { b })
    }
    #[inline(always)]
    fn min(self, o: Self) -> Self {
        self.zip(o, |a, b| if a <= b { a } else { b })
    }
    #[inline(always)]
    fn ln_1p(self) -> Self {
        self.map(f32::ln_1p)
    }
    #[inline]
    fn erf(self) -> Self {
        self.map(|x| erf_f64(x as f64) as f32)
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
        for ((o, &take), &x) in o.iter_mut().zip(&m.0).zip(&a.0) {
            if take {
                *o = x;
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
        let pairs = self.0.map(|k| k.split());
        (LaneKeys(pairs.map(|p| p.0)), LaneKeys(pairs.map(|p| p.1)))
    }
    fn fold_in(self, data: u64) -> Self {
        LaneKeys(self.0.map(|k| k.fold_in(data)))
    }
    fn fill_normal(self, out: &mut [Lanes<N>]) {
        let mut buf = vec![0.0f32; out.len()];
        for (l, k) in self.0.iter().enumerate() {
            k.fill_normal(&mut buf);
            for (o, &v) in out.iter_mut().zip(&buf) {
                o.0[l] = v;
            }
        }
    }
    fn fill_uniform(self, out: &mut [Lanes<N>]) {
        let mut buf = vec![0.0f32; out.len()];
        for (l, k) in self.0.iter().enumerate() {
            k.fill_uniform(&mut buf);
            for (o, &v) in out.iter_mut().zip(&buf) {
                o.0[l] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_match_scalar_ops() {
        let a = Lanes::<8>::from_lanes(|i| i as f64 * 0.37 - 1.1);
        let b = Lanes::<8>::from_lanes(|i| 2.0 - i as f64 * 0.21);
        type Pair = (fn(f32, f32) -> f32, fn(Lanes<8>, Lanes<8>) -> Lanes<8>);
        let ops: [Pair; 4] = [
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
        let e = a.exp();
        let m = a.lt(b);
        let sel = Lanes::select(m, a, b);
        for i in 0..8 {
            assert_eq!(e.0[i], a.0[i].exp());
            assert_eq!(m.0[i], a.0[i] < b.0[i]);
            assert_eq!(sel.0[i], if a.0[i] < b.0[i] { a.0[i] } else { b.0[i] });
        }
    }
}
