//! A branch-free `exp` for the softmax kernels, so their loops vectorize.
//!
//! `log_softmax`, `log_sum_exp` and `softmax_cross_entropy` spend most of their time in
//! `exp`; the libm call is scalar and opaque to the vectorizer. For `f32` this module
//! uses Cephes' `expf` (range reduction by ln 2, degree-6 polynomial, exponent bits set
//! directly), about 1 ulp, written with selects instead of branches. Other scalars use
//! [`Real::exp`].

use std::any::{Any, TypeId};

use crate::scalar::Real;

/// `e^x`, vectorizable for `f32`, [`Real::exp`] otherwise.
#[inline(always)]
pub(crate) fn exp<S: Real>(x: S) -> S {
    if TypeId::of::<S>() == TypeId::of::<f32>() {
        if let Some(&v) = (&x as &dyn Any).downcast_ref::<f32>() {
            return S::from_f32(exp_f32(v));
        }
    }
    x.exp()
}

/// Cephes `expf`: `e^x = 2^n e^r`, `n = round(x / ln 2)`, `|r| <= ln 2 / 2`.
///
/// Returns 0 below -86.5 (where `e^x < 3e-38`: the subnormal range is given up, no
/// softmax weight there matters) and infinity above `ln(f32::MAX)`; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const HI: f32 = 88.722_83; // ln(f32::MAX)
    const LO: f32 = -86.5; // keeps 2^(n-1) a normal float
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n * C1 is exact
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
    const MAGIC: f32 = 12_582_912.0;

    // Selects, not branches, so loops over this vectorize; both tests are false for NaN.
    let xc = if x > HI { HI } else { x };
    let xc = if xc < LO { LO } else { xc };
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32) - (MAGIC.to_bits() as i32);
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5
    let er = p * r * r + r + 1.0;
    // 2^(n-1) * 2: n reaches 128 at the top, where 2^n alone is not a float
    let half_scale = f32::from_bits(((ni + 126) as u32) << 23);
    let y = er * half_scale * 2.0;
    let y = if x > HI { f32::INFINITY } else { y };
    if x < LO {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulp_of_f64_exp() {
        let mut worst = 0.0f64;
        let mut x = -86.5f32;
        while x < 88.7 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            let ulp = (want as f32).abs() * f32::EPSILON;
            worst = worst.max((got - want).abs() / ulp as f64);
            x += 0.0137;
        }
        assert!(worst <= 2.0, "max error {worst} ulp");
        for x in [0.0f32, 1.0, -1.0, 1e-8, -1e-8, 0.5, 20.0, -20.0] {
            let want = (x as f64).exp();
            assert!((exp_f32(x) as f64 - want).abs() <= 2.0 * want * f32::EPSILON as f64);
        }
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn exp_f32_special_values() {
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(88.5).is_finite());
    }

    #[test]
    fn generic_exp_dispatches() {
        assert_eq!(exp(1.5f64), 1.5f64.exp());
        assert_eq!(exp(0.0f32), 1.0);
        assert!((exp(1.0f32) - std::f32::consts::E).abs() <= f32::EPSILON * 3.0);
    }
}
