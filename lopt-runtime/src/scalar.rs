//! The scalar type every generic piece of lopt is written over.
//!
//! Losses, derivative rules and optimizers are generic over [`Real`], so the same source
//! runs on `f32` (training), `f64` (gradient checks against finite differences) and, for
//! batched task families, on SIMD packets whose lanes are task instances.

use std::borrow::Cow;
use std::fmt::Debug;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

use num_traits::{One, Zero};

/// The result of a lane-wise comparison, reduced to a branch decision.
pub trait Mask: Copy + Send + Sync + Debug {
    /// True when every lane is set.
    fn all(self) -> bool;
    /// True when some lane is set.
    fn any(self) -> bool;
    /// Every lane set to `b`.
    fn splat(b: bool) -> Self;
    /// Lane-wise and.
    fn and(self, o: Self) -> Self;
    /// Lane-wise or.
    fn or(self, o: Self) -> Self;
    /// Lane-wise not.
    fn not(self) -> Self;
}

impl Mask for bool {
    #[inline(always)]
    fn splat(b: bool) -> Self {
        b
    }
    #[inline(always)]
    fn and(self, o: Self) -> Self {
        self && o
    }
    #[inline(always)]
    fn or(self, o: Self) -> Self {
        self || o
    }
    #[inline(always)]
    fn not(self) -> Self {
        !self
    }
    #[inline(always)]
    fn all(self) -> bool {
        self
    }
    #[inline(always)]
    fn any(self) -> bool {
        self
    }
}

/// Non-differentiable data (batch and config fields) converted to the loss's scalar type.
///
/// `f32` data read by an `f32` loss is borrowed, not copied.
pub trait Data<S> {
    /// The value type in scalar `S`.
    type Out: Clone;
    /// The data as an `S` value.
    fn data(&self) -> Cow<'_, Self::Out>;
}

/// A real scalar: `f32`, `f64`, or a packet of lanes that behaves like one.
///
/// Every operation is elementwise (lane-wise for packets). Comparisons return a
/// [`Real::Mask`] (`bool` for plain floats) so piecewise functions can pick per lane.
pub trait Real:
    Copy
    + Send
    + Sync
    + Debug
    + Default
    + PartialEq
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Zero
    + One
    + Sum
    + Data<Self, Out = Self>
{
    /// Result of a lane-wise comparison.
    type Mask: Mask;
    /// The key a loss receives: a [`Key`](crate::Key) for plain floats, one key per lane
    /// for packets, so batched instances draw what they would draw alone.
    // The one import circle kept: a scalar names its key (one per lane) and the key's
    // operations are generic over the scalar, one concept over two files.
    type Key: crate::key::KeyOps<Self>;
    /// Number of lanes (1 for `f32` and `f64`).
    const LANES: usize;

    /// Converts from `f64` (rounding to the nearest representable value).
    fn from_f64(x: f64) -> Self;
    /// Converts from `f32`.
    fn from_f32(x: f32) -> Self;
    /// The value of lane `i` as `f64` (lane 0 for plain floats).
    fn lane(self, i: usize) -> f64;
    /// A packet whose lane `i` is `f(i)`.
    fn from_lanes(f: impl FnMut(usize) -> f64) -> Self;
    /// Sets lane `i` to `v` (the value itself for plain floats).
    fn set_lane(&mut self, i: usize, v: f64);

    /// `e^x`.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// Sine.
    fn sin(self) -> Self;
    /// Cosine.
    fn cos(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// Integer power.
    fn powi(self, n: i32) -> Self;
    /// Real power.
    fn powf(self, e: Self) -> Self;
    /// Lane-wise maximum (NaN-propagating is not guaranteed).
    fn max(self, o: Self) -> Self;
    /// Lane-wise minimum.
    fn min(self, o: Self) -> Self;
    /// `ln(1 + x)` computed accurately for small `x`.
    fn ln_1p(self) -> Self;
    /// Error function (used by the exact GELU).
    fn erf(self) -> Self;
    /// `f32_fn` on an `f32` and on every lane of a packet, `f64_fn` on an `f64`: the lane
    /// form of a function `Real` has no method for, which makes a packet's lanes equal to
    /// the same function on each instance alone.
    fn per_lane(self, f32_fn: impl Fn(f32) -> f32, f64_fn: impl Fn(f64) -> f64) -> Self;

    /// Lane-wise `self < o`.
    fn lt(self, o: Self) -> Self::Mask;
    /// Lane-wise `self <= o`.
    fn le(self, o: Self) -> Self::Mask;
    /// Lane-wise `self > o`.
    fn gt(self, o: Self) -> Self::Mask {
        o.lt(self)
    }
    /// Lane-wise `self >= o`.
    fn ge(self, o: Self) -> Self::Mask {
        o.le(self)
    }
    /// Per lane, `a` where the mask is set, else `b`.
    fn select(m: Self::Mask, a: Self, b: Self) -> Self;
    /// True when every lane of the mask is set.
    fn all(m: Self::Mask) -> bool;
    /// True when any lane of the mask is set.
    fn any(m: Self::Mask) -> bool;
    /// True when every lane is finite.
    fn is_finite(self) -> bool;

    /// Shorthand for `Self::from_f64(x)`.
    #[inline(always)]
    fn c(x: f64) -> Self {
        Self::from_f64(x)
    }
}

macro_rules! impl_real_float {
    ($t:ty, $pick:ident) => {
        impl Real for $t {
            type Mask = bool;
            type Key = crate::key::Key;
            const LANES: usize = 1;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn from_f32(x: f32) -> Self {
                x as $t
            }
            #[inline(always)]
            fn lane(self, _i: usize) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_lanes(mut f: impl FnMut(usize) -> f64) -> Self {
                f(0) as $t
            }
            #[inline(always)]
            fn set_lane(&mut self, _i: usize, v: f64) {
                *self = v as $t;
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn powi(self, n: i32) -> Self {
                <$t>::powi(self, n)
            }
            #[inline(always)]
            fn powf(self, e: Self) -> Self {
                <$t>::powf(self, e)
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                if self >= o {
                    self
                } else {
                    o
                }
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                if self <= o {
                    self
                } else {
                    o
                }
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline]
            fn erf(self) -> Self {
                erf_f64(self as f64) as $t
            }
            #[inline(always)]
            fn per_lane(self, f32_fn: impl Fn(f32) -> f32, f64_fn: impl Fn(f64) -> f64) -> Self {
                $pick(self, f32_fn, f64_fn)
            }
            #[inline(always)]
            fn lt(self, o: Self) -> bool {
                self < o
            }
            #[inline(always)]
            fn le(self, o: Self) -> bool {
                self <= o
            }
            #[inline(always)]
            fn select(m: bool, a: Self, b: Self) -> Self {
                if m {
                    a
                } else {
                    b
                }
            }
            #[inline(always)]
            fn all(m: bool) -> bool {
                m
            }
            #[inline(always)]
            fn any(m: bool) -> bool {
                m
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
        }
    };
}

/// [`Real::per_lane`] on an `f32`: the `f32` function.
#[inline(always)]
fn first(x: f32, f: impl Fn(f32) -> f32, _g: impl Fn(f64) -> f64) -> f32 {
    f(x)
}

/// [`Real::per_lane`] on an `f64`: the `f64` function.
#[inline(always)]
fn second(x: f64, _f: impl Fn(f32) -> f32, g: impl Fn(f64) -> f64) -> f64 {
    g(x)
}

impl_real_float!(f32, first);
impl_real_float!(f64, second);

/// Error function in `f64`, accurate to about 1e-10 absolute: the Maclaurin series
/// below |x| = 4 and the asymptotic expansion of erfc above (where erfc < 2e-8).
pub fn erf_f64(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 4.0 {
        // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
        let x2 = ax * ax;
        let (mut term, mut sum, mut n) = (ax, ax, 0.0);
        loop {
            n += 1.0;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(x) ~ e^(-x^2) / (x sqrt(pi)) * sum_n (-1)^n (2n-1)!! / (2x^2)^n
        let inv = 1.0 / (2.0 * ax * ax);
        let (mut term, mut sum) = (1.0, 1.0);
        for n in 1..12 {
            term *= -((2 * n - 1) as f64) * inv;
            sum += term;
        }
        1.0 - (-ax * ax).exp() / (ax * std::f64::consts::PI.sqrt()) * sum
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}
