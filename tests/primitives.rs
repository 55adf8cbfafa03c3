//! The primitives declared in one entry each (`atan`, `log1p`, `expm1`, `erf`): each is
//! grad-checked in both modes against central finite differences of separately written
//! `f64` code (the standard library's functions, not lopt's), on scalars (`p[0]`, method
//! syntax) and vectors (call syntax), and its lanes (`Lanes<8>`) equal eight separate
//! `f32` runs bit for bit.

use lopt::gradcheck::{check_gradient, GradCheck};
use lopt::prelude::*;
use rand::{Rng, SeedableRng};

/// Points spread over `[lo, hi]`.
fn points(n: usize, lo: f64, hi: f64, seed: u64) -> DVector<f64> {
    let mut g = rand::rngs::StdRng::seed_from_u64(seed);
    DVector::from_fn(n, |_, _| g.gen_range(lo..hi))
}

/// Checks `$task` against `$reference` (plain `f64` code) at `$p` in both modes, and its
/// `Lanes<8>` run against eight `f32` runs.
macro_rules! check_primitive {
    ($task:ident, $reference:expr, $p:expr, $w:expr) => {{
        let (p, w): (DVector<f64>, DVector<f64>) = ($p, $w);
        let reference = $reference;
        let report = check_gradient(
            &p,
            |p| reference(p, &w),
            |p| $task::value_and_grad(p, &w),
            |p, t| $task::value_and_jvp(p, t, &w),
            &GradCheck::default(),
        );
        assert!(report.passed(), "{}", report);
        assert!(report.comparisons.len() > p.len(), "every element compared");

        const W: usize = 8;
        let n = p.len();
        let insts: Vec<DVector<f32>> = (0..W)
            .map(|l| DVector::from_fn(n, |i, _| (p[i] * (1.0 - 0.07 * l as f64)) as f32))
            .collect();
        let packed =
            DVector::<Lanes<W>>::from_fn(n, |i, _| Lanes::from_lanes(|l| insts[l][i] as f64));
        let tangent = DVector::<Lanes<W>>::from_fn(n, |i, _| {
            Lanes::from_lanes(|l| (i + l) as f64 * 0.1 - 0.3)
        });
        let (v, g) = $task::value_and_grad(&packed, &w);
        let (v2, j) = $task::value_and_jvp(&packed, &tangent, &w);
        for (l, x) in insts.iter().enumerate() {
            let (vs, gs) = $task::value_and_grad(x, &w);
            let t = DVector::from_fn(n, |i, _| tangent[i].0[l]);
            let (_, js) = $task::value_and_jvp(x, &t, &w);
            assert_eq!(v.0[l].to_bits(), vs.to_bits(), "value, lane {l}");
            assert_eq!(v2.0[l].to_bits(), vs.to_bits(), "forward value, lane {l}");
            assert_eq!(j.0[l].to_bits(), js.to_bits(), "jvp, lane {l}");
            for i in 0..n {
                assert_eq!(
                    g[i].0[l].to_bits(),
                    gs[i].to_bits(),
                    "grad lane {l} elem {i}"
                );
            }
        }
    }};
}

/// `Σ w_i atan(1.5 p_i) + atan(p_0)²`.
#[task]
fn atan_loss<S: Real>(p: &DVector<S>, w: &DVector<f64>) -> S {
    let a = p[0].atan();
    dot(atan(p * 1.5), w) + a * a
}

#[test]
fn atan_matches_finite_differences_and_lanes() {
    check_primitive!(
        atan_loss,
        |p: &DVector<f64>, w: &DVector<f64>| {
            let s: f64 = p
                .iter()
                .zip(w.iter())
                .map(|(x, w)| w * (1.5 * x).atan())
                .sum();
            s + p[0].atan().powi(2)
        },
        points(9, -3.0, 3.0, 1),
        points(9, -1.0, 1.0, 2)
    );
}

/// `Σ w_i log1p(p_i²) + log1p(p_0)`.
#[task]
fn log1p_loss<S: Real>(p: &DVector<S>, w: &DVector<f64>) -> S {
    dot(log1p(component_mul(p, p)), w) + p[0].log1p()
}

#[test]
fn log1p_matches_finite_differences_and_lanes() {
    check_primitive!(
        log1p_loss,
        |p: &DVector<f64>, w: &DVector<f64>| {
            let s: f64 = p
                .iter()
                .zip(w.iter())
                .map(|(x, w)| w * (x * x).ln_1p())
                .sum();
            s + p[0].ln_1p()
        },
        points(9, 0.01, 2.0, 3),
        points(9, -1.0, 1.0, 4)
    );
}

/// `Σ w_i expm1(p_i / 2) + expm1(p_0)`.
#[task]
fn expm1_loss<S: Real>(p: &DVector<S>, w: &DVector<f64>) -> S {
    dot(expm1(p * 0.5), w) + p[0].expm1()
}

#[test]
fn expm1_matches_finite_differences_and_lanes() {
    check_primitive!(
        expm1_loss,
        |p: &DVector<f64>, w: &DVector<f64>| {
            let s: f64 = p
                .iter()
                .zip(w.iter())
                .map(|(x, w)| w * (0.5 * x).exp_m1())
                .sum();
            s + p[0].exp_m1()
        },
        points(9, -2.0, 2.0, 5),
        points(9, -1.0, 1.0, 6)
    );
}

/// `erf` written independently: the Abramowitz–Stegun 7.1.26 rational form refined by
/// Newton steps would be approximate; the defining integral by Simpson's rule is exact
/// enough (1e-13) for finite differences.
fn erf_by_quadrature(x: f64) -> f64 {
    let n = 2000;
    let h = x / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(0.0) + f(x);
    for k in 1..n {
        s += f(k as f64 * h) * if k % 2 == 1 { 4.0 } else { 2.0 };
    }
    s * h / 3.0 * std::f64::consts::FRAC_2_SQRT_PI
}

/// `Σ w_i erf(p_i) + erf(p_0)`.
#[task]
fn erf_loss<S: Real>(p: &DVector<S>, w: &DVector<f64>) -> S {
    dot(erf(p), w) + p[0].erf()
}

#[test]
fn erf_matches_finite_differences_and_lanes() {
    check_primitive!(
        erf_loss,
        |p: &DVector<f64>, w: &DVector<f64>| {
            let s: f64 = p
                .iter()
                .zip(w.iter())
                .map(|(x, w)| w * erf_by_quadrature(*x))
                .sum();
            s + erf_by_quadrature(p[0])
        },
        points(9, -2.5, 2.5, 7),
        points(9, -1.0, 1.0, 8)
    );
}

/// The quadrature reference itself, at tabulated values (erf(0.5), erf(1), erf(2)).
#[test]
fn erf_reference_matches_tables() {
    for (x, e) in [
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
    ] {
        assert!((erf_by_quadrature(x) - e).abs() < 1e-12, "erf({x})");
        assert!((lopt::ops::erf(&x) - e).abs() < 1e-9, "ops::erf({x})");
    }
}

/// `Σ w_i gelu_tanh(1.5 p_i)`.
#[task]
fn gelu_tanh_loss<S: Real>(p: &DVector<S>, w: &DVector<f64>) -> S {
    dot(gelu_tanh(p * 1.5), w)
}

/// `jax.nn.gelu(x, approximate=True)` written out in f64.
fn gelu_tanh_f64(x: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3));
    0.5 * x * (1.0 + u.tanh())
}

/// Both modes against central differences of the f64 definition; lanes within 1e-6 of
/// separate `f32` runs (the packets' `exp` is a polynomial, so this primitive is in the
/// README's "transcendentals" class, not bit for bit).
#[test]
fn gelu_tanh_matches_finite_differences_and_lanes() {
    let (p, w) = (points(9, -3.0, 3.0, 5), points(9, -1.0, 1.0, 6));
    let reference = |p: &DVector<f64>| {
        p.iter()
            .zip(w.iter())
            .map(|(x, w)| w * gelu_tanh_f64(1.5 * x))
            .sum::<f64>()
    };
    let report = check_gradient(
        &p,
        reference,
        |p| gelu_tanh_loss::value_and_grad(p, &w),
        |p, t| gelu_tanh_loss::value_and_jvp(p, t, &w),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
    const W: usize = 8;
    let insts: Vec<DVector<f32>> = (0..W)
        .map(|l| p.map(|x| (x * (1.0 - 0.07 * l as f64)) as f32))
        .collect();
    let packed = DVector::<Lanes<W>>::from_fn(9, |i, _| Lanes::from_lanes(|l| insts[l][i] as f64));
    let (v, g) = gelu_tanh_loss::value_and_grad(&packed, &w);
    for (l, x) in insts.iter().enumerate() {
        let (vs, gs) = gelu_tanh_loss::value_and_grad(x, &w);
        assert!(
            (v.0[l] - vs).abs() <= 1e-6 * vs.abs().max(1.0),
            "value, lane {l}"
        );
        for i in 0..9 {
            let (a, b) = (g[i].0[l], gs[i]);
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "grad lane {l} elem {i}"
            );
        }
    }
}

/// Values and derivatives printed by JAX 0.10.2 (`jax.nn.gelu(x, approximate=True)` and
/// its `grad`, float64) at four points: they pin the constants, which the f64 reference
/// above shares with the rule. Mutation tried: 0.044715 written 0.04715 fails here.
#[test]
fn gelu_tanh_matches_jax() {
    let xs = [-3.0, -0.7, 0.4, 2.5];
    let values = [
        -0.003637392081773161,
        -0.1694298652948832,
        0.2621611694273562,
        2.4849157339100016,
    ];
    let slopes = [
        -0.011584166630970047,
        0.023642781343896017,
        0.8026588344205614,
        1.0379515762126654,
    ];
    for ((&x, &v), &d) in xs.iter().zip(&values).zip(&slopes) {
        assert!((gelu_tanh_f64(x) - v).abs() < 1e-15, "reference at {x}");
        let p = DVector::from_element(1, x / 1.5);
        let w = DVector::from_element(1, 1.0);
        let (got, g) = gelu_tanh_loss::value_and_grad(&p, &w);
        assert!((got - v).abs() < 1e-14, "value at {x}: {got} vs {v}");
        assert!(
            (g[0] / 1.5 - d).abs() < 1e-13,
            "slope at {x}: {} vs {d}",
            g[0] / 1.5
        );
    }
}
