//! Gradient checks a user runs in their own tests: the generated gradient and JVP of a
//! loss against central finite differences, in `f64`.
//!
//! ```
//! use lopt_runtime::gradcheck::{check_gradient, GradCheck};
//! // f(x) = sum x_i^3, written by hand with its gradient and JVP.
//! let f = |x: &Vec<f64>| x.iter().map(|v| v * v * v).sum::<f64>();
//! let grad = |x: &Vec<f64>| (f(x), x.iter().map(|v| 3.0 * v * v).collect::<Vec<_>>());
//! let jvp = |x: &Vec<f64>, t: &Vec<f64>| {
//!     (f(x), x.iter().zip(t).map(|(v, d)| 3.0 * v * v * d).sum::<f64>())
//! };
//! let report = check_gradient(&vec![0.3, -1.2, 2.0], f, grad, jvp, &GradCheck::default());
//! assert!(report.passed(), "{report}");
//! ```

use std::fmt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::params::Params;

/// Settings of a gradient check.
#[derive(Debug, Clone)]
pub struct GradCheck {
    /// Finite-difference step (relative to `max(1, |x|)`).
    pub step: f64,
    /// Allowed error: `|a - b| <= atol + rtol * max(|a|, |b|)`.
    pub rtol: f64,
    /// Absolute part of the allowed error.
    pub atol: f64,
    /// Check at most this many elements by finite differences (chosen at random);
    /// the JVP is checked along `directions` random tangents in every case.
    pub max_elements: usize,
    /// Number of random tangents for the JVP and gradient-dot-tangent checks.
    pub directions: usize,
    /// Seed of the element choice and the tangents.
    pub seed: u64,
    /// Number of worst elements shown in the report.
    pub show_worst: usize,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            step: 1e-6,
            rtol: 1e-5,
            atol: 1e-7,
            max_elements: 256,
            directions: 4,
            seed: 0,
            show_worst: 5,
        }
    }
}

/// One compared quantity.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// What was compared (`grad[leaf.w1 #3]`, `jvp #0`, ...).
    pub what: String,
    /// The generated value.
    pub generated: f64,
    /// The finite-difference (or other-mode) reference.
    pub reference: f64,
    /// `|generated - reference| / (atol + rtol * scale)`: above 1 fails.
    pub ratio: f64,
}

/// The outcome of [`check_gradient`]: every comparison, worst first.
#[derive(Debug, Clone)]
pub struct GradReport {
    /// All comparisons, sorted worst first.
    pub comparisons: Vec<Mismatch>,
    /// How many to show when printed.
    pub show_worst: usize,
}

impl GradReport {
    /// True when every comparison is within tolerance and finite.
    pub fn passed(&self) -> bool {
        self.comparisons.iter().all(|m| m.ratio <= 1.0)
    }
    /// The worst comparison.
    pub fn worst(&self) -> Option<&Mismatch> {
        self.comparisons.first()
    }
}

impl fmt::Display for GradReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failed = self.comparisons.iter().filter(|m| m.ratio > 1.0).count();
        writeln!(
            f,
            "gradient check: {} comparisons, {} outside tolerance; worst:",
            self.comparisons.len(),
            failed
        )?;
        for m in self.comparisons.iter().take(self.show_worst) {
            writeln!(
                f,
                "  {:<28} generated {:>14.8e}  reference {:>14.8e}  error/tolerance {:.3}",
                m.what, m.generated, m.reference, m.ratio
            )?;
        }
        Ok(())
    }
}

fn compare(what: String, generated: f64, reference: f64, c: &GradCheck) -> Mismatch {
    let scale = generated.abs().max(reference.abs());
    let tol = c.atol + c.rtol * scale;
    let ratio = if generated.is_finite() && reference.is_finite() {
        (generated - reference).abs() / tol
    } else {
        f64::INFINITY
    };
    Mismatch {
        what,
        generated,
        reference,
        ratio,
    }
}

fn element_names<P: Params>(p: &P) -> Vec<String> {
    let mut names = Vec::with_capacity(p.num_elements());
    for i in 0..p.num_leaves() {
        let mut leaf = String::new();
        p.write_leaf_name(i, &mut leaf);
        if leaf.is_empty() {
            leaf = format!("leaf{i}");
        }
        for j in 0..p.leaf(i).len() {
            names.push(format!("{leaf}[{j}]"));
        }
    }
    names
}

/// Checks a gradient and a JVP of `f` at `x` against central finite differences of `f`,
/// and the two modes against each other (`⟨grad, t⟩ == jvp(t)`).
///
/// `grad(x)` returns `(f(x), ∇f(x))`; `jvp(x, t)` returns `(f(x), ∇f(x)·t)`. The values
/// are compared too. Use it with a `#[task]`'s generated functions at `f64`.
pub fn check_gradient<P, F, G, J>(x: &P, f: F, grad: G, jvp: J, c: &GradCheck) -> GradReport
where
    P: Params<Scalar = f64>,
    F: Fn(&P) -> f64,
    G: Fn(&P) -> (f64, P),
    J: Fn(&P, &P) -> (f64, f64),
{
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(c.seed);
    let f0 = f(x);
    let (gv, g) = grad(x);
    out.push(compare("value (reverse mode)".into(), gv, f0, c));
    let flat = x.flatten();
    let gflat = g.flatten();
    let names = element_names(x);
    let n = flat.len();
    let mut idx: Vec<usize> = (0..n).collect();
    if n > c.max_elements {
        for i in 0..c.max_elements {
            let j = rng.gen_range(i..n);
            idx.swap(i, j);
        }
        idx.truncate(c.max_elements);
    }
    let mut xp = x.clone();
    for &i in &idx {
        let h = c.step * flat[i].abs().max(1.0);
        let mut e = flat.clone();
        e[i] = flat[i] + h;
        xp.unflatten_from(&e).expect("same shape");
        let fp = f(&xp);
        e[i] = flat[i] - h;
        xp.unflatten_from(&e).expect("same shape");
        let fm = f(&xp);
        let fd = (fp - fm) / (2.0 * h);
        out.push(compare(format!("grad {}", names[i]), gflat[i], fd, c));
    }
    for d in 0..c.directions {
        let t: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let tp = x.with_flat(&t).expect("same shape");
        let (jv, jt) = jvp(x, &tp);
        let h = c.step * flat.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let shifted = |s: f64| {
            let e: Vec<f64> = flat.iter().zip(&t).map(|(a, b)| a + s * b).collect();
            f(&x.with_flat(&e).expect("same shape"))
        };
        let fd = (shifted(h) - shifted(-h)) / (2.0 * h);
        let gt: f64 = gflat.iter().zip(&t).map(|(a, b)| a * b).sum();
        out.push(compare(format!("jvp #{d} vs finite diff"), jt, fd, c));
        out.push(compare(format!("jvp #{d} vs grad.tangent"), jt, gt, c));
        out.push(compare(format!("value (forward mode) #{d}"), jv, f0, c));
    }
    out.sort_by(|a, b| {
        b.ratio
            .partial_cmp(&a.ratio)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    GradReport {
        comparisons: out,
        show_worst: c.show_worst,
    }
}

/// Checks a [`Task`](crate::Task)'s generated `value_and_grad` and `value_and_jvp` at
/// `params` (in `f64`) on one batch.
pub fn check_task<T: crate::Task>(
    task: &T,
    params: &T::Params<f64>,
    key: crate::Key,
    batch: &T::Batch,
    c: &GradCheck,
) -> GradReport {
    check_gradient(
        params,
        |p| task.loss(p, key, batch),
        |p| task.value_and_grad(p, key, batch),
        |p, t| task.value_and_jvp(p, t, key, batch),
        c,
    )
}
