//! Primitives of your own, used in a `#[task]` loss like the builtins, without touching
//! lopt: the counterparts of `jax.custom_jvp` and `jax.custom_vjp`.
//!
//! - `softsign` is elementwise: `lopt::elementwise_primitive!` takes its value and its
//!   derivative `f'(x) t` (given `y = f(x)`), both generic over `S: Real`, and makes it
//!   work on scalars, vectors, matrices and SIMD lanes of task instances, in both modes.
//! - `norm` has a rule written by hand: a function for the value and a module of the same
//!   name with `jvp` and `vjp` (the convention `#[differentiable]` functions follow), here
//!   to give `‖x‖` the derivative 0 at `x = 0` instead of 0/0.
//!
//! The example checks the gradient against finite differences, then fits a one-layer
//! softsign model by gradient descent.
//!
//! Run with `cargo run --release --example custom_primitive`.

use lopt::gradcheck::{check_gradient, GradCheck};
use lopt::prelude::*;

lopt::elementwise_primitive! {
    /// `x / (1 + |x|)`, elementwise: a tanh-like squashing without exponentials.
    pub fn softsign => SoftSign(x, y, t) {
        value: x / (S::one() + x.abs()),
        derivative: {
            let d = S::one() + x.abs();
            t / (d * d)
        },
    }
}

/// `‖x‖`, with its rules below.
pub fn norm<S: Real>(x: &DVector<S>) -> S {
    x.iter().map(|&v| v * v).sum::<S>().sqrt()
}

/// The rules of [`norm()`]: `jvp(args, tangents) -> (value, tangent)` and
/// `vjp(args, cotangent) -> (cotangent of each argument,)`.
pub mod norm {
    use super::*;

    /// `x / ‖x‖`, and 0 at `x = 0`.
    fn direction<S: Real>(x: &DVector<S>, n: S) -> DVector<S> {
        let safe = S::select(n.gt(S::zero()), n, S::one());
        x.map(|v| v / safe)
    }

    /// The value and its tangent `⟨x, dx⟩ / ‖x‖` (`None`: `x` is a constant).
    pub fn jvp<S: Real>(x: &DVector<S>, dx: Option<&DVector<S>>) -> (S, S) {
        let n = super::norm(x);
        (n, dx.map_or(S::zero(), |dx| direction(x, n).dot(dx)))
    }

    /// The cotangent of `x`: `g x / ‖x‖`.
    pub fn vjp<S: Real>(x: &DVector<S>, g: &S) -> (Option<DVector<S>>,) {
        (Some(direction(x, super::norm(x)) * *g),)
    }
}

/// Mean squared error of `softsign(X w)` against `y`, plus a small `‖w‖` penalty.
#[task]
fn fit<S: Real>(w: &DVector<S>, x: &DMatrix<f64>, y: &DVector<f64>) -> S {
    let pred = softsign(&(x * w));
    let r = pred - y;
    dot(r, r) / 50.0 + norm(&w) * 0.01
}

fn main() {
    let key = Key::new(7);
    let mut xs = DMatrix::<f64>::zeros(50, 3);
    key.fill_normal(xs.as_mut_slice());
    let truth = DVector::from_vec(vec![1.5, -0.7, 0.3]);
    let y = (&xs * &truth).map(|v| v / (1.0 + v.abs()));

    // Both modes against central finite differences of the loss itself.
    let w0 = DVector::from_vec(vec![0.1, 0.2, -0.1]);
    let report = check_gradient(
        &w0,
        |w| fit(w, &xs, &y),
        |w| fit::value_and_grad(w, &xs, &y),
        |w, t| fit::value_and_jvp(w, t, &xs, &y),
        &GradCheck::default(),
    );
    println!(
        "gradient check: {}",
        if report.passed() { "passed" } else { "FAILED" }
    );
    assert!(report.passed(), "{report}");

    // At w = 0 the hand-written rule of `norm` keeps the gradient finite.
    let (_, g0) = fit::value_and_grad(&DVector::<f64>::zeros(3), &xs, &y);
    println!("gradient at w = 0: {:.4?}", g0.as_slice());

    let mut w = DVector::<f32>::zeros(3);
    for step in 0..=300 {
        let (loss, g) = fit::value_and_grad(&w, &xs, &y);
        if step % 100 == 0 {
            println!("step {step:3}: loss {loss:.5}, w = {:.3?}", w.as_slice());
        }
        w -= g * 0.5;
    }
    println!("true weights: {:.3?}", truth.as_slice());
}
