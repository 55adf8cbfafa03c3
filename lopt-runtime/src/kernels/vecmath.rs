//! Branch-free `f32` `exp`, `ln`, `ln_1p`, `tanh`, `sin` and `cos`, so loops over them
//! vectorize.
//!
//! A libm call is scalar and opaque to the vectorizer: the softmax kernels (which spend
//! most of their time in `exp`) and the transcendental functions of SIMD packets
//! ([`Lanes`](crate::lanes::Lanes), one call per lane otherwise) use these instead. They
//! are Cephes' single-precision polynomials (`expf`, `logf`, `tanhf`, `sinf`, `cosf`), within a few ulp,
//! written with selects instead of branches; special values (0, infinities, NaN,
//! subnormals) follow IEEE as libm does.

use std::any::{Any, TypeId};

use crate::scalar::Real;

/// `fast(x)` when `S` is `f32` (a branch-free polynomial, which vectorizes), `other(x)`
/// otherwise.
#[inline(always)]
fn on_f32<S: Real>(x: S, fast: impl Fn(f32) -> f32, other: impl Fn(S) -> S) -> S {
    if TypeId::of::<S>() == TypeId::of::<f32>() {
        if let Some(&v) = (&x as &dyn Any).downcast_ref::<f32>() {
            return S::from_f32(fast(v));
        }
    }
    other(x)
}

/// `e^x`, vectorizable for `f32`, [`Real::exp`] otherwise.
#[inline(always)]
pub(crate) fn exp<S: Real>(x: S) -> S {
    on_f32(x, exp_f32, S::exp)
}

/// `tanh x`, vectorizable for `f32` ([`tanh_f32`], what the elementwise `tanh` rule and
/// packets use), [`Real::tanh`] otherwise.
#[inline(always)]
pub(crate) fn tanh<S: Real>(x: S) -> S {
    on_f32(x, tanh_f32, S::tanh)
}

/// `1 / (1 + e^-x)` with [`exp`]: vectorizable for `f32`.
#[inline(always)]
pub(crate) fn sigmoid<S: Real>(x: S) -> S {
    S::from_f64(1.0) / (S::from_f64(1.0) + exp(-x))
}

/// `ln x`, vectorizable for `f32`, [`Real::ln`] otherwise.
#[inline(always)]
pub(crate) fn ln<S: Real>(x: S) -> S {
    on_f32(x, ln_f32, S::ln)
}

/// `a·b + c`: one fused multiply-add where the build targets FMA (`-C target-cpu=native`
/// on x86-64 with FMA, as `.cargo/config.toml` sets), which halves the latency of the
/// polynomial chains (the softmax's exponentials wait on it); a multiply and an add
/// otherwise (a fused one would be a library call).
#[inline(always)]
fn madd(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(any(target_feature = "fma", target_arch = "aarch64")) {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// The constants of [`exp_f32`], shared with its vector forms (which must round as it
/// does, lane by lane).
pub(crate) mod exp_coeffs {
    /// `ln(f32::MAX)`: above it, infinity.
    pub(crate) const HI: f32 = 88.722_83;
    /// Below it, zero (keeps `2^(n-1)` a normal float).
    pub(crate) const LO: f32 = -86.5;
    /// `ln 2` split in two so that `n · C1` is exact.
    pub(crate) const C1: f32 = 0.693_359_4;
    /// The rest of `ln 2`.
    pub(crate) const C2: f32 = -2.121_944_4e-4;
    /// `1.5 · 2^23`: adding it rounds to an integer held in the low mantissa bits.
    pub(crate) const MAGIC: f32 = 12_582_912.0;
    /// The polynomial in `r`, Horner's order from the highest power (Cephes' last,
    /// 5.0000001201e-1, rounds to 0.5).
    pub(crate) const POLY: [f32; 6] = [
        1.987_569_2e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
}

/// Cephes `expf`: `e^x = 2^n e^r`, `n = round(x / ln 2)`, `|r| <= ln 2 / 2`.
///
/// The polynomial runs on [`madd`], so its last bit depends on whether the build targets
/// FMA (`RUSTFLAGS`), as a compiler's contraction would.
///
/// Returns 0 below -86.5 (where `e^x < 3e-38`: the subnormal range is given up, no
/// softmax weight there matters) and infinity above `ln(f32::MAX)`; NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    use exp_coeffs::*;
    // Selects, not branches, so loops over this vectorize; both tests are false for NaN.
    let xc = if x > HI { HI } else { x };
    let xc = if xc < LO { LO } else { xc };
    let t = madd(xc, std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32) - (MAGIC.to_bits() as i32);
    let r = madd(n, -C2, madd(n, -C1, xc));
    let mut p = POLY[0];
    for c in &POLY[1..] {
        p = madd(p, r, *c);
    }
    let er = madd(p * r, r, r) + 1.0;
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

/// `ln x` for a positive, normal, finite `x` (Cephes `logf`): `x = m · 2^e` with `m` in
/// `[sqrt(1/2), sqrt(2))`, then a degree-9 polynomial in `m − 1`. The random key's
/// Box-Muller transform uses it too, so its draws do not depend on the platform's libm.
#[inline(always)]
pub(crate) fn ln_normal_f32(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 126) as f32;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000); // [0.5, 1)
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    e -= if small { 1.0 } else { 0.0 };
    let x = if small { m + m - 1.0 } else { m - 1.0 };
    let z = x * x;
    let mut y = 7.037_683_6e-2;
    y = y * x - 1.151_461e-1;
    y = y * x + 1.167_699_84e-1;
    y = y * x - 1.242_014_1e-1;
    y = y * x + 1.424_932_3e-1;
    y = y * x - 1.666_805_7e-1;
    y = y * x + 2.000_071_4e-1;
    y = y * x - 2.499_999_4e-1;
    y = y * x + 3.333_333e-1;
    y = y * x * z;
    // ln 2 split in two parts so e * ln2 adds without rounding error.
    y += e * -2.121_944_4e-4;
    y -= 0.5 * z;
    x + y + e * 0.693_359_4
}

/// `ln x` for every `f32`: subnormals scaled into the normal range first; 0 gives −∞,
/// +∞ gives +∞, a negative or NaN argument NaN.
#[inline(always)]
pub(crate) fn ln_f32(x: f32) -> f32 {
    const TWO_POW_24: f32 = 16_777_216.0;
    let sub = x < f32::MIN_POSITIVE;
    let xs = if sub { x * TWO_POW_24 } else { x };
    let y = ln_normal_f32(xs)
        - if sub {
            24.0 * std::f32::consts::LN_2
        } else {
            0.0
        };
    let y = if x == f32::INFINITY { f32::INFINITY } else { y };
    let y = if x == 0.0 { f32::NEG_INFINITY } else { y };
    // Negative or NaN: no ordering against 0 holds for NaN, so test `x >= 0` positively.
    if x >= 0.0 {
        y
    } else {
        f32::NAN
    }
}

/// `ln(1 + x)`, accurate for small `x`: `ln(u) · x / (u − 1)` with `u = 1 + x` corrects
/// the rounding of `u` (Goldberg's method); `x` itself where `u` rounds to 1.
#[inline(always)]
pub(crate) fn ln_1p_f32(x: f32) -> f32 {
    let u = 1.0 + x;
    let d = u - 1.0;
    let y = ln_f32(u) * (x / d);
    // Where u is infinite the ratio is ∞/∞: ln u itself is the answer.
    let y = if u == f32::INFINITY { ln_f32(u) } else { y };
    if d == 0.0 {
        x
    } else {
        y
    }
}

/// `tanh x` (Cephes `tanhf`): an odd polynomial below `|x| = 0.625`, `1 − 2/(e^{2|x|} + 1)`
/// above, with the sign of `x`; ±1 beyond where `e^{2|x|}` overflows; NaN stays NaN.
#[inline(always)]
pub(crate) fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small = (((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1)
        * z
        - 3.333_328e-1;
    let small = small * z * x + x;
    let large = 1.0 - 2.0 / (exp_f32(a + a) + 1.0);
    let large = if x < 0.0 { -large } else { large };
    if a < 0.625 {
        small
    } else {
        large
    }
}

/// [`exp_f32`] and [`tanh_f32`] on the 16 lanes of an AVX-512 register: their operations in
/// their order (the fused multiply-adds where [`madd`] fuses, the clamps as `min`/`max`
/// whose operand order keeps a NaN, the selects as masked moves), so every lane has the
/// scalar function's bits. LLVM vectorizes the scalar forms 8 lanes wide only (the
/// build's 256-bit preference), so loops that are mostly these polynomials gain by
/// calling them here.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// [`madd`](super::madd) on 16 lanes: fused where the build targets FMA, else a
    /// multiply and an add, as the scalar form compiles.
    ///
    /// # Safety
    /// AVX-512F (the caller's target features).
    #[inline(always)]
    pub(crate) unsafe fn madd16(a: __m512, b: __m512, c: __m512) -> __m512 {
        if cfg!(target_feature = "fma") {
            _mm512_fmadd_ps(a, b, c)
        } else {
            _mm512_add_ps(_mm512_mul_ps(a, b), c)
        }
    }

    /// [`exp_f32`](super::exp_f32) on 16 lanes, lane for lane its bits.
    ///
    /// # Safety
    /// AVX-512F (the caller's target features).
    #[inline(always)]
    pub(crate) unsafe fn exp16(x: __m512) -> __m512 {
        use super::exp_coeffs::*;
        let s = _mm512_set1_ps;
        // `_mm512_min_ps(a, b)` is `a < b ? a : b`: `x > HI ? HI : x`, NaN kept; and
        // `max(LO, ·)` is `xc < LO ? LO : xc`.
        let xc = _mm512_max_ps(s(LO), _mm512_min_ps(s(HI), x));
        let t = madd16(xc, s(std::f32::consts::LOG2_E), s(MAGIC));
        let n = _mm512_sub_ps(t, s(MAGIC));
        let ni = _mm512_sub_epi32(
            _mm512_castps_si512(t),
            _mm512_set1_epi32(MAGIC.to_bits() as i32),
        );
        let r = madd16(n, s(-C2), madd16(n, s(-C1), xc));
        let mut p = s(POLY[0]);
        for c in &POLY[1..] {
            p = madd16(p, r, s(*c));
        }
        let er = _mm512_add_ps(madd16(_mm512_mul_ps(p, r), r, r), s(1.0));
        let half_scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            ni,
            _mm512_set1_epi32(126),
        )));
        let y = _mm512_mul_ps(_mm512_mul_ps(er, half_scale), s(2.0));
        let y = _mm512_mask_mov_ps(
            y,
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, s(HI)),
            s(f32::INFINITY),
        );
        _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, s(LO)), s(0.0))
    }
}

/// Cephes' `sinf` and `cosf` polynomials: `(sin r, cos r)` for `r` in `[-π/4, π/4]`.
#[inline(always)]
pub(crate) fn sin_cos_poly(r: f32) -> (f32, f32) {
    let z = r * r;
    let s = ((-1.951_529_6e-4 * z + 8.332_161e-3) * z - 1.666_665_5e-1) * z * r + r;
    let c = ((2.443_315_7e-5 * z - 1.388_731_6e-3) * z + 4.166_664_6e-2) * z * z - 0.5 * z + 1.0;
    (s, c)
}

/// The largest `|x|` [`sin_cos_f32`] serves (Cephes' bound for `sinf`): beyond it the
/// three-part reduction by π/2 loses bits, and callers take libm.
pub(crate) const SIN_COS_LIMIT: f32 = 8192.0;

/// `(sin x, cos x)` for `|x| <= SIN_COS_LIMIT` (Cephes `sinf`/`cosf` without branches;
/// outside that range the result is meaningless, and callers take libm there):
/// `|x|` less the nearest even multiple `j` of π/4 (in three parts, so the first
/// product is exact), the polynomials on the remainder, then swapped and signed by
/// `j mod 8`. Odd in `x` for the sine, signed zeros included.
#[inline(always)]
pub(crate) fn sin_cos_f32(x: f32) -> (f32, f32) {
    const FOPI: f32 = 1.273_239_5; // 4/π
    const DP1: f32 = 0.785_156_25;
    const DP2: f32 = 2.418_756_5e-4;
    const DP3: f32 = 3.774_895e-8;
    let a = x.abs();
    let mut j = (a * FOPI) as i32;
    j = j.wrapping_add(j & 1);
    let y = j as f32;
    let (ps, pc) = sin_cos_poly(((a - y * DP1) - y * DP2) - y * DP3);
    // sin(r + q·π/4) and cos(r + q·π/4) for q = j mod 8 in {0, 2, 4, 6}.
    let q = j & 7;
    let (s, c) = if q & 2 != 0 { (pc, ps) } else { (ps, pc) };
    let s = if (q & 4 != 0) != x.is_sign_negative() {
        -s
    } else {
        s
    };
    let c = if q == 2 || q == 4 { -c } else { c };
    (s, c)
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

    /// Largest error in units of the f32 spacing at the true value.
    fn worst_ulp(
        f: impl Fn(f32) -> f32,
        g: impl Fn(f64) -> f64,
        xs: impl Iterator<Item = f32>,
    ) -> f64 {
        xs.map(|x| {
            let want = g(x as f64);
            let ulp = ((want as f32).abs() * f32::EPSILON).max(f32::MIN_POSITIVE) as f64;
            (f(x) as f64 - want).abs() / ulp
        })
        .fold(0.0, f64::max)
    }

    /// Points spread log-uniformly over `[lo, hi)` (positive).
    fn log_sweep(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
        (0..n).map(move |i| (a + (b - a) * i as f64 / n as f64).exp() as f32)
    }

    #[test]
    fn ln_is_within_two_ulp_of_f64_ln_with_libm_special_values() {
        let worst = worst_ulp(ln_f32, f64::ln, log_sweep(1e-44, 3e38, 200_000));
        assert!(worst <= 2.0, "ln: {worst} ulp");
        assert_eq!(ln_f32(1.0), 0.0);
        assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(-0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(f32::INFINITY), f32::INFINITY);
        assert!(
            ln_f32(-1.0).is_nan()
                && ln_f32(f32::NAN).is_nan()
                && ln_f32(f32::NEG_INFINITY).is_nan()
        );
        // Subnormals are scaled, not flushed.
        let tiny = f32::from_bits(1);
        assert!((ln_f32(tiny) as f64 - (tiny as f64).ln()).abs() < 1e-5);
    }

    #[test]
    fn ln_1p_keeps_small_arguments_accurate() {
        let xs = log_sweep(1e-30, 1e30, 100_000).flat_map(|x| [x, -x.min(0.999)]);
        let worst = worst_ulp(ln_1p_f32, f64::ln_1p, xs);
        assert!(worst <= 3.0, "ln_1p: {worst} ulp");
        assert_eq!(ln_1p_f32(0.0), 0.0);
        assert_eq!(ln_1p_f32(-1.0), f32::NEG_INFINITY);
        assert_eq!(ln_1p_f32(f32::INFINITY), f32::INFINITY);
        assert!(ln_1p_f32(-2.0).is_nan() && ln_1p_f32(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_is_within_three_ulp_of_f64_tanh() {
        let xs = log_sweep(1e-30, 20.0, 100_000).flat_map(|x| [x, -x]);
        let worst = worst_ulp(tanh_f32, f64::tanh, xs);
        assert!(worst <= 3.0, "tanh: {worst} ulp");
        assert_eq!(tanh_f32(0.0), 0.0);
        assert_eq!(tanh_f32(100.0), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    #[test]
    fn sin_cos_match_f64_on_the_served_range() {
        // Near π/4 and below: within 1 ulp of the value (0.6 measured).
        let small = || log_sweep(1e-30, std::f32::consts::FRAC_PI_4, 50_000).flat_map(|x| [x, -x]);
        let ws = worst_ulp(|x| sin_cos_f32(x).0, f64::sin, small());
        let wc = worst_ulp(|x| sin_cos_f32(x).1, f64::cos, small());
        assert!(ws <= 1.0 && wc <= 1.0, "sin {ws} cos {wc} ulp");
        // Over the whole range: the absolute error stays within one f32 epsilon (0.65
        // measured; near zeros of the function the reduction's rounding dominates, as in libm's
        // single-precision algorithms).
        let mut worst = 0.0f64;
        let mut x = -SIN_COS_LIMIT;
        while x <= SIN_COS_LIMIT {
            let (s, c) = sin_cos_f32(x);
            let (ws, wc) = ((x as f64).sin(), (x as f64).cos());
            worst = worst.max((s as f64 - ws).abs()).max((c as f64 - wc).abs());
            x += 0.001_37;
        }
        assert!(
            worst <= f32::EPSILON as f64,
            "{} epsilons",
            worst / f32::EPSILON as f64
        );
        // Quadrant boundaries and signed zeros.
        for k in -16..=16 {
            let x = k as f32 * std::f32::consts::FRAC_PI_4;
            let (s, c) = sin_cos_f32(x);
            assert!((s as f64 - (x as f64).sin()).abs() < 3e-7, "sin {x}");
            assert!((c as f64 - (x as f64).cos()).abs() < 3e-7, "cos {x}");
        }
        assert_eq!(sin_cos_f32(0.0), (0.0, 1.0));
        assert!(sin_cos_f32(-0.0).0.is_sign_negative());
    }

    /// [`avx512::exp16`] gives [`exp_f32`]'s bits in every lane, NaNs included: over
    /// every 2003rd bit pattern (all exponents, subnormals, NaNs, infinities) and
    /// [−100, 100] by 2⁻¹⁰ (the clamps), with ±0.
    ///
    /// Catches: an operation rounded twice where the scalar form fuses it (tried:
    /// `exp16`'s reduction `r` with a separate multiply and add, whose last bits the
    /// `gelu_tanh` test does not see).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_exp_is_the_scalar_function_bit_for_bit() {
        use std::arch::x86_64::*;
        if !crate::kernels::cpu::Isa::Avx512.supported() {
            eprintln!("no AVX-512 on this CPU: nothing to compare");
            return;
        }
        let mut xs: Vec<f32> = (0..=u32::MAX).step_by(2003).map(f32::from_bits).collect();
        xs.extend((-(100 << 10)..=(100 << 10)).map(|i| i as f32 / 1024.0));
        xs.extend([0.0, -0.0]);
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn exp_on16(xs: &[f32; 16]) -> [f32; 16] {
            let mut out = [0.0f32; 16];
            _mm512_storeu_ps(
                out.as_mut_ptr(),
                avx512::exp16(_mm512_loadu_ps(xs.as_ptr())),
            );
            out
        }
        for chunk in xs.chunks(16) {
            let mut block = [0.0f32; 16];
            block[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: the CPU has AVX-512F (and AVX2 and FMA).
            let got = unsafe { exp_on16(&block) };
            for (&x, &g) in block.iter().zip(&got) {
                let want = exp_f32(x);
                assert_eq!(g.to_bits(), want.to_bits(), "exp({x:e}): {g:e} vs {want:e}");
            }
        }
    }

    #[test]
    fn generic_exp_dispatches() {
        assert_eq!(exp(1.5f64), 1.5f64.exp());
        assert_eq!(exp(0.0f32), 1.0);
        assert!((exp(1.0f32) - std::f32::consts::E).abs() <= f32::EPSILON * 3.0);
    }
}
