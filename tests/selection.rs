//! Elementwise selection in the loss language: `select(mask, a, b)` with masks from
//! comparisons of differentiated values and of data (combined with `&&`, `||`, `!`),
//! `clip(x, lo, hi)`, `max`/`min` of a matrix with a scalar, and `logaddexp(a, b)`.
//! Each loss is checked against the same function written separately in plain `f64`
//! (value equal, gradient and JVP against its central finite differences, and
//! `⟨grad, t⟩ = jvp(t)`), and its `Lanes<8>` run equals eight separate `f32` runs bit
//! for bit (selections, comparisons, products and sums are the IEEE operations per lane;
//! `logaddexp` runs `exp` and `ln_1p` lane by lane).
//!
//! Mutations tried (each made the named test fail, then was reverted):
//! - `Where::vjp` giving the whole cotangent to both sides:
//!   `select_matches_where_and_differentiates` and
//!   `select_keeps_the_unchosen_side_out_of_the_gradient`;
//! - `Clip`'s derivative 1 at the bounds (`x.ge(lo).and(x.le(hi))` as `inside`):
//!   `clip_has_jax_gradient_at_the_bounds`;
//! - `logaddexp`'s `da` as `e^(b - y)`: `logaddexp_matches_definition_and_differentiates`
//!   and `logaddexp_is_stable`.

use lopt::gradcheck::{check_gradient, GradCheck, GradReport};
use lopt::prelude::*;

const W: usize = 8;

fn rand_mat(r: usize, c: usize, seed: u64, scale: f64) -> DMatrix<f64> {
    let mut v = vec![0.0f32; r * c];
    Key::new(seed).fill_normal(&mut v);
    DMatrix::from_iterator(r, c, v.into_iter().map(|x| f64::from(x) * scale))
}

#[derive(Params, Clone, Debug)]
struct Two<S: Real> {
    a: DMatrix<S>,
    b: DMatrix<S>,
    s: S,
}

fn params(seed: u64) -> Two<f64> {
    Two {
        a: rand_mat(4, 3, seed, 1.0),
        b: rand_mat(4, 3, seed + 1, 1.0),
        s: 0.3,
    }
}

/// Gradient-checks `$task` against `$reference` at `$p` (data `$w`), and its lanes
/// (instances scaled by `1 - 0.05 l`, tangents by `0.5 - 0.1 l`) against eight `f32`
/// runs, bit for bit.
macro_rules! check_task {
    ($task:ident, $reference:expr, $p:expr, $w:expr) => {{
        let (p, w): (Two<f64>, DMatrix<f64>) = ($p, $w);
        let reference = $reference;
        let got = $task(&p, &w);
        let want = reference(&p, &w);
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        let report: GradReport = check_gradient(
            &p,
            |p| reference(p, &w),
            |p| $task::value_and_grad(p, &w),
            |p, t| $task::value_and_jvp(p, t, &w),
            &GradCheck::default(),
        );
        assert!(report.passed(), "{report}");
        assert_eq!(report.comparisons.len(), 1 + p.num_elements() + 3 * 4);

        let scale = |l: usize| 1.0 - 0.05 * l as f32;
        let tscale = |l: usize| 0.5 - 0.1 * l as f32;
        let insts: Vec<Two<f32>> = (0..W)
            .map(|l| p.cast::<f32>().map(|x| x * scale(l)))
            .collect();
        let pack = |f: &dyn Fn(&Two<f32>) -> DMatrix<f32>| {
            let ms: Vec<DMatrix<f32>> = insts.iter().map(f).collect();
            DMatrix::from_fn(ms[0].nrows(), ms[0].ncols(), |i, j| {
                Lanes::<W>::from_lanes(|l| f64::from(ms[l][(i, j)]))
            })
        };
        let packed = Two {
            a: pack(&|q| q.a.clone()),
            b: pack(&|q| q.b.clone()),
            s: Lanes::from_lanes(|l| f64::from(insts[l].s)),
        };
        let tl = Lanes::<W>::from_lanes(|l| f64::from(tscale(l)));
        let tangent = packed.map(|x| x * tl);
        let (v, g) = $task::value_and_grad(&packed, &w);
        let (_, j) = $task::value_and_jvp(&packed, &tangent, &w);
        for (l, q) in insts.iter().enumerate() {
            let (vs, gs) = $task::value_and_grad(q, &w);
            let (_, js) = $task::value_and_jvp(q, &q.map(|x| x * tscale(l)), &w);
            assert_eq!(v.0[l].to_bits(), vs.to_bits(), "value, lane {l}");
            assert_eq!(j.0[l].to_bits(), js.to_bits(), "jvp, lane {l}");
            assert_eq!(g.a.map(|x| x.0[l]), gs.a, "grad a, lane {l}");
            assert_eq!(g.b.map(|x| x.0[l]), gs.b, "grad b, lane {l}");
            assert_eq!(g.s.0[l].to_bits(), gs.s.to_bits(), "grad s, lane {l}");
        }
    }};
}

/// Masks from comparisons of values (`a > b`, `a > s`), of data (`w > 0.2`), combined
/// (`&&`, `||`, `!`), a data mask as it is (non-zero = true), and a scalar side.
#[task]
fn select_loss<S: Real>(p: &Two<S>, w: &DMatrix<f64>) -> S {
    let leaky = select(p.a > 0.0, p.a * 1.5, p.a * 0.1);
    let m = (p.a > p.b) && !(w > 0.2);
    let pick = select(m, square(&p.a), &p.b * p.s);
    let either = select(p.b < p.s || w >= 0.5, p.s, &p.a);
    let data = select(w, p.b * 2.0, 0.25);
    sum(leaky) + sum(pick) + dot(either, w) + norm_squared(data)
}

fn select_f64(p: &Two<f64>, w: &DMatrix<f64>) -> f64 {
    let mut total = 0.0;
    for i in 0..p.a.len() {
        let (a, b, wi) = (p.a[i], p.b[i], w[i]);
        total += if a > 0.0 { 1.5 * a } else { 0.1 * a };
        total += if a > b && wi <= 0.2 { a * a } else { b * p.s };
        total += wi * if b < p.s || wi >= 0.5 { p.s } else { a };
        let d = if wi != 0.0 { 2.0 * b } else { 0.25 };
        total += d * d;
    }
    total
}

#[test]
fn select_matches_where_and_differentiates() {
    let p = params(1);
    // Away from the kinks (|a| and |a - b| not tiny) so the finite differences are
    // smooth; a few zeros in the data mask.
    let p = Two {
        a: p.a.map(|x| if x.abs() < 0.05 { 0.3 } else { x }),
        ..p
    };
    let mut w = rand_mat(4, 3, 7, 1.0);
    w[2] = 0.0;
    w[5] = 0.0;
    for i in 0..p.a.len() {
        assert!((p.a[i] - p.b[i]).abs() > 1e-3 && (p.b[i] - p.s).abs() > 1e-3);
    }
    check_task!(select_loss, select_f64, p, w);
}

/// `select(a > 0, ln(a), 0)`: where `a <= 0` the unchosen side is NaN, and neither the
/// value nor the gradient sees it (`jnp.where` semantics; the cotangent of `ln` there is
/// `0 / a`, finite).
#[task]
fn guarded_log<S: Real>(p: &Two<S>, w: &DMatrix<f64>) -> S {
    sum(select(p.a > 0.0, ln(&p.a), 0.0)) + p.s * sum(w)
}

#[test]
fn select_keeps_the_unchosen_side_out_of_the_gradient() {
    let p = params(3);
    let w = DMatrix::from_element(4, 3, 1.0);
    let (v, g) = guarded_log::value_and_grad(&p, &w);
    let want: f64 =
        p.a.iter()
            .filter(|&&a| a > 0.0)
            .map(|a| a.ln())
            .sum::<f64>()
            + 12.0 * p.s;
    assert!((v - want).abs() < 1e-12, "{v} vs {want}");
    for i in 0..p.a.len() {
        let want = if p.a[i] > 0.0 { 1.0 / p.a[i] } else { 0.0 };
        assert_eq!(g.a[i], want, "element {i} at a = {}", p.a[i]);
    }
    assert!(
        p.a.iter().any(|&a| a < 0.0),
        "some elements take the other side"
    );
    assert_eq!(g.b, DMatrix::zeros(4, 3));
}

/// `clip` on a matrix with literal bounds and with bounds from data, and `max`/`min` of a
/// matrix with a scalar (value or literal) on either side.
#[task]
fn clip_loss<S: Real>(p: &Two<S>, w: &DMatrix<f64>) -> S {
    let c = clip(&p.a, -0.5, 0.75);
    let lo = w[0] - 1.0;
    let d = clip(p.b * 2.0, lo, 1.0);
    let m = max(&p.a, p.s) + min(0.1, &p.b);
    dot(square(c), w) + sum(d) + dot(m, w)
}

fn clip_f64(p: &Two<f64>, w: &DMatrix<f64>) -> f64 {
    let lo = w[0] - 1.0;
    let mut t = 0.0;
    for i in 0..p.a.len() {
        let c = p.a[i].clamp(-0.5, 0.75);
        t += c * c * w[i] + (2.0 * p.b[i]).clamp(lo, 1.0);
        t += (p.a[i].max(p.s) + p.b[i].min(0.1)) * w[i];
    }
    t
}

#[test]
fn clip_and_scalar_max_min_match_and_differentiate() {
    let p = params(5);
    let w = rand_mat(4, 3, 9, 1.0);
    // Not within finite-difference reach of a kink.
    let lo = w[0] - 1.0;
    for i in 0..p.a.len() {
        for (x, k) in [
            (p.a[i], -0.5),
            (p.a[i], 0.75),
            (2.0 * p.b[i], lo),
            (2.0 * p.b[i], 1.0),
            (p.a[i], p.s),
            (p.b[i], 0.1),
        ] {
            assert!((x - k).abs() > 1e-3, "element {i} near a kink");
        }
    }
    check_task!(clip_loss, clip_f64, p, w);
}

/// At exactly `lo` or `hi` the derivative of `clip` is ½, as JAX's
/// (`jax.grad(lambda x: jnp.clip(x, -1., 2.))` is 0.5 at -1 and at 2, 1 inside and 0
/// outside; JAX 0.10.2), in both modes.
#[task]
fn clip_only<S: Real>(p: &Two<S>, w: &DMatrix<f64>) -> S {
    dot(clip(&p.a, -1.0, 2.0), w)
}

#[test]
fn clip_has_jax_gradient_at_the_bounds() {
    let a = DMatrix::from_row_slice(1, 5, &[-1.5, -1.0, 0.3, 2.0, 2.5]);
    let p = Two {
        b: a.clone(),
        a,
        s: 0.0,
    };
    let w = DMatrix::from_row_slice(1, 5, &[1.0, 2.0, 3.0, 4.0, 5.0]);
    let (_, g) = clip_only::value_and_grad(&p, &w);
    let want = [0.0, 0.5 * 2.0, 3.0, 0.5 * 4.0, 0.0];
    assert_eq!(g.a.as_slice(), &want);
    let t = Two {
        a: DMatrix::from_element(1, 5, 1.0),
        b: DMatrix::zeros(1, 5),
        s: 0.0,
    };
    let (_, j) = clip_only::value_and_jvp(&p, &t, &w);
    assert_eq!(j, want.iter().sum::<f64>());
}

/// `logaddexp` of two matrices, of a matrix and a scalar, and of scalars.
#[task]
fn logaddexp_loss<S: Real>(p: &Two<S>, w: &DMatrix<f64>) -> S {
    let m = logaddexp(&p.a, &p.b);
    let n = logaddexp(p.s, p.a * 3.0);
    dot(m, w) + sum(n) + logaddexp(p.s, p.a[0])
}

fn lae(a: f64, b: f64) -> f64 {
    (a.exp() + b.exp()).ln()
}

fn logaddexp_f64(p: &Two<f64>, w: &DMatrix<f64>) -> f64 {
    let mut t = lae(p.s, p.a[0]);
    for i in 0..p.a.len() {
        t += lae(p.a[i], p.b[i]) * w[i] + lae(p.s, 3.0 * p.a[i]);
    }
    t
}

#[test]
fn logaddexp_matches_definition_and_differentiates() {
    check_task!(
        logaddexp_loss,
        logaddexp_f64,
        params(11),
        rand_mat(4, 3, 12, 1.0)
    );
}

/// Stable where `ln(e^a + e^b)` overflows, `-∞` for two `-∞`, and the derivative
/// `(σ(a - b), σ(b - a))`: `(1, 0)` at `(1000, -1000)` and `(½, ½)` at ties, as
/// `jax.grad(jnp.logaddexp, (0, 1))`.
#[test]
fn logaddexp_is_stable() {
    let f = |a: f64, b: f64| lopt::ops::logaddexp(&a, &b);
    assert_eq!(f(1000.0, 1000.0), 1000.0 + 2f64.ln());
    assert_eq!(f(1000.0, -1000.0), 1000.0);
    assert_eq!(f(f64::NEG_INFINITY, f64::NEG_INFINITY), f64::NEG_INFINITY);
    assert_eq!(f(f64::INFINITY, f64::INFINITY), f64::INFINITY);
    assert!(f(f64::NAN, 0.0).is_nan() && f(0.0, f64::NAN).is_nan());
    let p = Two {
        a: DMatrix::from_row_slice(1, 2, &[1000.0, 0.25]),
        b: DMatrix::from_row_slice(1, 2, &[-1000.0, 0.25]),
        s: 0.0,
    };
    let (_, g) = logaddexp_only::value_and_grad(&p, &DMatrix::zeros(1, 2));
    assert_eq!(
        (g.a.as_slice(), g.b.as_slice()),
        (&[1.0, 0.5][..], &[0.0, 0.5][..])
    );
}

#[task]
fn logaddexp_only<S: Real>(p: &Two<S>, w: &DMatrix<f64>) -> S {
    sum(logaddexp(&p.a, &p.b)) + dot(&p.a, w)
}
