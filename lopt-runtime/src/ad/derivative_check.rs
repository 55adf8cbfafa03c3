//! Derivative checks against central finite differences, in `f64`.
//!
//! [`check_derivatives`] takes a function `f: X -> Y` of [`Params`] values with its
//! forward (`jvp`) and reverse (`vjp`) derivatives and tests all three against each other
//! and against finite differences:
//! 1. `jvp(x, dx)` against `(f(x + h dx) - f(x - h dx)) / 2h` for a random `dx`;
//! 2. `vjp(x, g)` against the finite-difference gradient of `⟨g, f(x)⟩`, one coordinate
//!    at a time, for a random `g`;
//! 3. the adjoint identity `⟨g, jvp(dx)⟩ == ⟨vjp(g), dx⟩`.
//!
//! Every derivative rule is tested with it, and the user-facing gradient checks of tasks
//! build on it.
//!
//! ```
//! use lopt_runtime::ad::derivative_check::{check_derivatives, CheckOptions};
//! use nalgebra::DVector;
//!
//! // f(x) = x ⊙ x, f'(x) dx = 2 x ⊙ dx
//! let x = DVector::from_vec(vec![0.5, -1.0, 2.0]);
//! let opts = CheckOptions::default();
//! let report = check_derivatives(
//!     &x,
//!     |x| x.component_mul(x),
//!     |x, dx| 2.0 * x.component_mul(dx),
//!     |x, g| 2.0 * x.component_mul(g),
//!     &opts,
//! );
//! assert!(report.passed(&opts), "{report}");
//! ```

use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::params::Params;

/// Step, tolerances and seed of [`check_derivatives`].
#[derive(Debug, Clone, PartialEq)]
pub struct CheckOptions {
    /// Finite-difference step (applied along a direction with entries in [-1, 1]).
    pub h: f64,
    /// Relative tolerance of the finite-difference comparisons (checks 1 and 2).
    pub rtol: f64,
    /// Relative tolerance of the adjoint identity (check 3), which has no truncation
    /// error: only rounding.
    pub adjoint_rtol: f64,
    /// Seed of the random direction `dx` and cotangent `g`.
    pub seed: u64,
}

impl Default for CheckOptions {
    /// `h = 1e-6`, `rtol = 1e-6`, `adjoint_rtol = 1e-10`, `seed = 0`.
    fn default() -> Self {
        CheckOptions {
            h: 1e-6,
            rtol: 1e-6,
            adjoint_rtol: 1e-10,
            seed: 0,
        }
    }
}

/// The errors [`check_derivatives`] found; compare with [`CheckReport::passed`].
///
/// The finite-difference errors are `max_i |exact_i - fd_i| / (scale + floor)`, where
/// `scale` is the larger max-norm of the two and `floor = 100 ε |f| / (h rtol)` is the
/// level finite differences cannot resolve (rounding in `f` divided by `h`): a
/// derivative that is zero up to that noise is not reported as wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// Relative error of the JVP against finite differences.
    pub jvp_error: f64,
    /// The output element where it is largest (flattened, leaf order).
    pub jvp_worst: usize,
    /// Relative error of the VJP against the finite-difference gradient of `⟨g, f⟩`.
    pub vjp_error: f64,
    /// The input element where it is largest (flattened, leaf order).
    pub vjp_worst: usize,
    /// `|⟨g, jvp(dx)⟩ - ⟨vjp(g), dx⟩|` relative to the sum of the magnitudes of the terms.
    pub adjoint_error: f64,
}

impl CheckReport {
    /// True when every error is within the tolerances of `opts`.
    pub fn passed(&self, opts: &CheckOptions) -> bool {
        self.jvp_error <= opts.rtol
            && self.vjp_error <= opts.rtol
            && self.adjoint_error <= opts.adjoint_rtol
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "jvp error {:.3e} (worst output element {}), vjp error {:.3e} (worst input element \
             {}), adjoint error {:.3e}",
            self.jvp_error, self.jvp_worst, self.vjp_error, self.vjp_worst, self.adjoint_error
        )
    }
}

/// Checks `jvp` and `vjp` of `f` at `x` against finite differences and each other.
///
/// - `f(x)` is the value;
/// - `jvp(x, dx)` is the tangent of `f(x)` along `dx` (same type as `f(x)`);
/// - `vjp(x, g)` is the cotangent of `x` given the cotangent `g` of `f(x)`.
///
/// `x` should be away from kinks (`relu` at 0, `max` at ties) by more than `h`.
/// Costs `2 + 2 n` evaluations of `f` for `n` elements in `x`.
pub fn check_derivatives<X, Y>(
    x: &X,
    f: impl Fn(&X) -> Y,
    jvp: impl Fn(&X, &X) -> Y,
    vjp: impl Fn(&X, &Y) -> X,
    opts: &CheckOptions,
) -> CheckReport
where
    X: Params<Scalar = f64>,
    Y: Params<Scalar = f64>,
{
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let h = opts.h;
    let y = f(x);
    let dx = x.map(|_| rng.gen_range(-1.0..1.0));
    let g = y.map(|_| rng.gen_range(-1.0..1.0));
    // Rounding noise of a central difference, relative to |f|: 100 ulps over h.
    let noise = 100.0 * f64::EPSILON / h;

    // 1. jvp against (f(x + h dx) - f(x - h dx)) / 2h
    let step = |s: f64| {
        let mut xs = x.clone();
        xs.axpy(s, &dx);
        f(&xs)
    };
    let (yp, ym) = (step(h), step(-h));
    let fd: Vec<f64> = yp
        .flatten()
        .iter()
        .zip(ym.flatten())
        .map(|(p, m)| (p - m) / (2.0 * h))
        .collect();
    let t = jvp(x, &dx);
    let y_scale = max_abs(&y.flatten());
    let (jvp_error, jvp_worst) = rel_err(&t.flatten(), &fd, noise * y_scale / opts.rtol);

    // 2. vjp against the gradient of <g, f(x)> by coordinates
    let flat = x.flatten();
    let mut xs = x.clone();
    let mut grad_fd = Vec::with_capacity(flat.len());
    for i in 0..flat.len() {
        let mut at = |v: f64| {
            let mut p = flat.clone();
            p[i] = v;
            xs.unflatten_from(&p).expect("same length");
            g.dot(&f(&xs))
        };
        grad_fd.push((at(flat[i] + h) - at(flat[i] - h)) / (2.0 * h));
    }
    let gy_scale: f64 = g
        .flatten()
        .iter()
        .zip(y.flatten())
        .map(|(g, y)| (g * y).abs())
        .sum();
    let v = vjp(x, &g);
    let (vjp_error, vjp_worst) = rel_err(&v.flatten(), &grad_fd, noise * gy_scale / opts.rtol);

    // 3. <g, jvp(dx)> == <vjp(g), dx>
    let terms = |a: &[f64], b: &[f64]| -> (f64, f64) {
        a.iter()
            .zip(b)
            .fold((0.0, 0.0), |(s, m), (a, b)| (s + a * b, m + (a * b).abs()))
    };
    let (lhs, lm) = terms(&g.flatten(), &t.flatten());
    let (rhs, rm) = terms(&v.flatten(), &dx.flatten());
    let diff = (lhs - rhs).abs();
    let adjoint_error = if diff == 0.0 { 0.0 } else { diff / (lm + rm) };

    CheckReport {
        jvp_error,
        jvp_worst,
        vjp_error,
        vjp_worst,
        adjoint_error,
    }
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// `(max_i |a_i - b_i| / (max(|a|∞, |b|∞) + floor), argmax)`; NaN counts as infinite.
fn rel_err(a: &[f64], b: &[f64], floor: f64) -> (f64, usize) {
    assert_eq!(
        a.len(),
        b.len(),
        "derivative and finite differences differ in size"
    );
    let scale = max_abs(a).max(max_abs(b)) + floor;
    let mut worst = (0.0, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        let e = if d == 0.0 {
            0.0
        } else if d.is_nan() || scale == 0.0 {
            f64::INFINITY
        } else {
            d / scale
        };
        if e > worst.0 {
            worst = (e, i);
        }
    }
    worst
}

/// Two [`Params`] values as one: the leaves of `.0`, then those of `.1`.
///
/// Lets [`check_derivatives`] test a function of two arguments (both operands of a
/// binary rule) at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair<A, B>(pub A, pub B);

impl<A: Params, B: Params<Scalar = A::Scalar>> Params for Pair<A, B> {
    type Scalar = A::Scalar;
    fn num_leaves(&self) -> usize {
        self.0.num_leaves() + self.1.num_leaves()
    }
    fn leaf(&self, i: usize) -> &[A::Scalar] {
        let n = self.0.num_leaves();
        if i < n {
            self.0.leaf(i)
        } else {
            self.1.leaf(i - n)
        }
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [A::Scalar] {
        let n = self.0.num_leaves();
        if i < n {
            self.0.leaf_mut(i)
        } else {
            self.1.leaf_mut(i - n)
        }
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        let n = self.0.num_leaves();
        let mut inner = String::new();
        if i < n {
            out.push('0');
            self.0.write_leaf_name(i, &mut inner);
        } else {
            out.push('1');
            self.1.write_leaf_name(i - n, &mut inner);
        }
        if !inner.is_empty() {
            out.push('.');
            out.push_str(&inner);
        }
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        let n = self.0.num_leaves();
        if i < n {
            self.0.leaf_shape(i)
        } else {
            self.1.leaf_shape(i - n)
        }
    }
}
