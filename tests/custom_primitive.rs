//! Primitives declared outside lopt and called from `#[task]` losses like builtins: one
//! elementwise with `elementwise_primitive!` (value and derivative by hand, the
//! counterpart of `jax.custom_jvp`), one written as a function and a module with `jvp`
//! and `vjp` by hand (`jax.custom_vjp`). Each is grad-checked in both modes against
//! central finite differences of separately written `f64` code, and its `Lanes<8>` run
//! equals eight separate `f32` runs bit for bit.

use lopt::gradcheck::{check_gradient, GradCheck};
use lopt::prelude::*;
use rand::{Rng, SeedableRng};

lopt::elementwise_primitive! {
    /// `x / (1 + |x|)`, elementwise.
    pub fn softsign => SoftSign(x, y, t) {
        value: x / (S::one() + x.abs()),
        derivative: {
            let d = S::one() + x.abs();
            t / (d * d)
        },
    }
}

/// `‖x‖ = sqrt(Σ x²)` with a rule written by hand whose derivative at `x = 0` is 0 (the
/// generic rules would give 0/0 there).
pub fn norm<S: Real>(x: &DVector<S>) -> S {
    x.iter().map(|&v| v * v).sum::<S>().sqrt()
}

/// The rules of [`norm()`].
pub mod norm {
    use super::*;

    /// `x / ‖x‖`, or 0 at `x = 0`.
    fn direction<S: Real>(x: &DVector<S>, n: S) -> DVector<S> {
        let safe = S::select(n.gt(S::zero()), n, S::one());
        x.map(|v| v / safe)
    }

    /// Value and tangent `⟨x, dx⟩ / ‖x‖`.
    pub fn jvp<S: Real>(x: &DVector<S>, dx: Option<&DVector<S>>) -> (S, S) {
        let n = super::norm(x);
        let t = match dx {
            Some(dx) => direction(x, n).dot(dx),
            None => S::zero(),
        };
        (n, t)
    }

    /// Cotangent `g x / ‖x‖`.
    pub fn vjp<S: Real>(x: &DVector<S>, g: &S) -> (Option<DVector<S>>,) {
        let n = super::norm(x);
        (Some(direction(x, n) * *g),)
    }
}

/// `Σ w_i softsign(2 p_i) + softsign(p_0) + ‖p‖²·0.3 + ‖p‖`.
#[task]
fn custom_loss<S: Real>(p: &DVector<S>, w: &DVector<f64>) -> S {
    let h = p * 2.0;
    let s = dot(softsign(&h), w);
    let a = softsign(&p[0]);
    let n = norm(&p);
    s + a + n * n * 0.3 + n
}

fn reference(p: &DVector<f64>, w: &DVector<f64>) -> f64 {
    let ss = |x: f64| x / (1.0 + x.abs());
    let s: f64 = p.iter().zip(w.iter()).map(|(x, w)| w * ss(2.0 * x)).sum();
    let n = p.iter().map(|x| x * x).sum::<f64>().sqrt();
    s + ss(p[0]) + 0.3 * n * n + n
}

fn points(n: usize, seed: u64) -> DVector<f64> {
    let mut g = rand::rngs::StdRng::seed_from_u64(seed);
    DVector::from_fn(n, |_, _| g.gen_range(-2.0..2.0))
}

#[test]
fn user_primitives_match_finite_differences_in_both_modes() {
    let (p, w) = (points(7, 1), points(7, 2));
    let report = check_gradient(
        &p,
        |p| reference(p, &w),
        |p| custom_loss::value_and_grad(p, &w),
        |p, t| custom_loss::value_and_jvp(p, t, &w),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{}", report);
    assert!(report.comparisons.len() > p.len());
}

/// At `p = 0` the loss calls the hand-written rule (the generic one would give 0/0 there):
/// the gradient is the closed form `2 w + e_0` (softsign'(0) = 1, ‖p‖ contributes 0),
/// in both modes. Catches a loss that does not go through `norm::vjp` / `norm::jvp`.
#[test]
fn hand_written_rule_is_used_at_zero() {
    let w = points(4, 5);
    let p = DVector::<f64>::zeros(4);
    let (v, g) = custom_loss::value_and_grad(&p, &w);
    assert_eq!(v, 0.0);
    let mut expected = &w * 2.0;
    expected[0] += 1.0;
    assert_eq!(g, expected);
    let e1 = DVector::from_fn(4, |i, _| if i == 1 { 1.0 } else { 0.0 });
    let (_, d) = custom_loss::value_and_jvp(&p, &e1, &w);
    assert_eq!(d, expected[1]);
}

#[test]
fn user_primitives_on_lanes_equal_separate_instances() {
    const W: usize = 8;
    let (p, w) = (points(7, 3), points(7, 4));
    let n = p.len();
    let insts: Vec<DVector<f32>> = (0..W)
        .map(|l| DVector::from_fn(n, |i, _| (p[i] * (1.0 - 0.1 * l as f64)) as f32))
        .collect();
    let packed = DVector::<Lanes<W>>::from_fn(n, |i, _| Lanes::from_lanes(|l| insts[l][i] as f64));
    let tangent =
        DVector::<Lanes<W>>::from_fn(n, |i, _| Lanes::from_lanes(|l| (i + l) as f64 * 0.1 - 0.3));
    let (v, g) = custom_loss::value_and_grad(&packed, &w);
    let (v2, j) = custom_loss::value_and_jvp(&packed, &tangent, &w);
    for (l, x) in insts.iter().enumerate() {
        let (vs, gs) = custom_loss::value_and_grad(x, &w);
        let t = DVector::from_fn(n, |i, _| tangent[i].0[l]);
        let (_, js) = custom_loss::value_and_jvp(x, &t, &w);
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
}
