//! Optimizers (the JAX library's `optimizers.base` and `optimizers.optax_opts`).
//!
//! Every optimizer is stateless configuration implementing [`Optimizer`] for any
//! [`Params`] tree; its state (parameters, moments, iteration) is a plain struct with
//! public fields. Hyperparameters are `f64` and converted to the tree's scalar once per
//! step, so the same optimizer runs on `f32`, `f64` and SIMD-packet trees. Updates walk
//! the trees leaf by leaf in place and allocate nothing.
//!
//! | JAX library | lopt | defaults |
//! |---|---|---|
//! | `SGD` | [`Sgd`] | `lr = 0.01` |
//! | `SGDM` | [`Sgdm`] | `lr = 0.01, momentum = 0.9` |
//! | `Adam` | [`Adam`] | `lr = 0.01, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8, epsilon_root = 1e-8` |
//! | `RMSProp` | [`RmsProp`] | `lr = 0.01, decay = 0.9, epsilon = 1e-8, momentum = 0, nesterov = false` |
//! | `GradientClipOptimizer` | [`GradientClip`] | `grad_clip = 3.0` |
//! | `optax.adamw` | [`AdamW`] | optax's: `b1 = 0.9, b2 = 0.999, eps = 1e-8, eps_root = 0, weight_decay = 1e-4` |
//! | `NAdamW`, `OptList(idx)` | [`NAdamW`], [`NAdamW::opt_list`] | `lr = 1e-4, beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8`, Nesterov |
//! | optax schedules, `CosineLearningRateSchedule` | [`Schedule`] | |
//! | `WeightDecayWrapper` | [`WeightDecay`] | `add_to_loss = true` |
//! | `GradientAccumulator`, `optax.MultiSteps` | [`GradientAccumulation`] | |

mod accumulate;
pub(crate) mod adam;
mod adamw;
mod gradient_clip;
mod nadamw;
mod rmsprop;
mod schedules;
mod sgd;
mod sgdm;
#[cfg(test)]
mod tests;
mod weight_decay;

pub use accumulate::{GradientAccumulation, GradientAccumulationState};
pub use adam::{Adam, AdamState};
pub use adamw::{AdamW, AdamWState};
pub use gradient_clip::{GradientClip, GradientClipState};
pub use nadamw::{NAdamW, OptListEntry, OPT_LIST_HEAD};
pub use rmsprop::{RmsProp, RmsPropState};
pub use schedules::Schedule;
pub use sgd::{Sgd, SgdState};
pub use sgdm::{Sgdm, SgdmState};
pub use weight_decay::WeightDecay;

use crate::error::{Error, Result};
use crate::params::Params;

/// A hand-designed or learned optimizer over parameter trees of type `P`.
///
/// Like the JAX library's optimizers, an optimizer is stateless configuration; its state
/// (parameters, moments, iteration) lives in [`Optimizer::State`]. Updates are in place.
///
/// # Defining a custom optimizer
///
/// The momentum optimizer of the JAX library's Part 1 tutorial. The state keeps the
/// parameters, the momentum (an exponential moving average of the gradients) and the
/// iteration; the update walks the three trees leaf by leaf.
///
/// ```
/// use lopt_runtime::{Optimizer, Params, Real};
///
/// /// `m ← μ·m + (1 − μ)·g`, `p ← p − lr·m`.
/// struct MomentumOptimizer {
///     lr: f64,
///     momentum: f64,
/// }
///
/// #[derive(Debug, Clone)]
/// struct MomentumOptState<P> {
///     params: P,
///     momentum: P,
///     iteration: usize,
/// }
///
/// impl<P: Params> Optimizer<P> for MomentumOptimizer {
///     type State = MomentumOptState<P>;
///
///     fn init(&self, params: P, _num_steps: Option<usize>) -> Self::State {
///         let momentum = params.zeros_like();
///         MomentumOptState { params, momentum, iteration: 0 }
///     }
///
///     fn update(&self, state: &mut Self::State, grad: &P, _loss: P::Scalar) {
///         let mu = P::Scalar::from_f64(self.momentum);
///         let one_minus_mu = P::Scalar::from_f64(1.0 - self.momentum);
///         let lr = P::Scalar::from_f64(self.lr);
///         for i in 0..grad.num_leaves() {
///             let (p, m) = (state.params.leaf_mut(i), state.momentum.leaf_mut(i));
///             let g = grad.leaf(i);
///             for ((p, m), &g) in p.iter_mut().zip(m.iter_mut()).zip(g) {
///                 *m = *m * mu + g * one_minus_mu; // the momentum goes in `momentum`...
///                 *p -= lr * *m; // ...and the parameters in `params`
///             }
///         }
///         state.iteration += 1;
///     }
///
///     fn get_params<'a>(&self, state: &'a Self::State) -> &'a P {
///         &state.params
///     }
///     fn set_params(&self, state: &mut Self::State, params: P) {
///         state.params = params;
///     }
///     fn iteration(&self, state: &Self::State) -> usize {
///         state.iteration
///     }
/// }
///
/// // Minimise f(p) = ½ Σ pᵢ², whose gradient is p itself.
/// let opt = MomentumOptimizer { lr: 0.1, momentum: 0.9 };
/// let mut state = opt.init(vec![1.0f64, -2.0, 3.0], None);
/// let loss = |p: &Vec<f64>| 0.5 * p.iter().map(|x| x * x).sum::<f64>();
/// let mut prev = loss(opt.get_params(&state));
/// for _ in 0..5 {
///     let grad = opt.get_params(&state).clone();
///     opt.update(&mut state, &grad, prev);
///     let now = loss(opt.get_params(&state));
///     assert!(now < prev);
///     prev = now;
/// }
/// assert_eq!(opt.iteration(&state), 5);
/// // After one step the momentum is (1 − μ)·g, not the parameters (JAX issue #296).
/// let mut fresh = opt.init(vec![1.0f64], None);
/// opt.update(&mut fresh, &vec![2.0], 0.0);
/// assert!((fresh.momentum[0] - 0.2).abs() < 1e-15);
/// assert!((fresh.params[0] - 0.98).abs() < 1e-15);
/// ```
pub trait Optimizer<P: Params>: Send + Sync {
    /// The optimizer state, holding the current parameters.
    type State: Clone + Send + Sync + std::fmt::Debug;

    /// A fresh state at `params`. `num_steps` is the planned length of training (most
    /// optimizers ignore it).
    fn init(&self, params: P, num_steps: Option<usize>) -> Self::State;

    /// One step given the gradient at the current parameters and the loss there.
    ///
    /// # Panics
    /// The built-in optimizers panic when `grad` does not have the leaves of the current
    /// parameters with the same shapes (a transposed leaf too);
    /// [`Optimizer::try_update`] reports that as an [`Error`] instead. The check costs
    /// about 0.1 µs on the image MLP's tree (`cargo bench --bench optimizers`).
    fn update(&self, state: &mut Self::State, grad: &P, loss: P::Scalar);

    /// [`Optimizer::update`] after checking that `grad` has the structure and shapes of
    /// the current parameters.
    fn try_update(&self, state: &mut Self::State, grad: &P, loss: P::Scalar) -> Result<()> {
        if !self.get_params(state).same_shape(grad) {
            self.get_params(state).check_same_shape(grad)?;
        }
        self.update(state, grad, loss);
        Ok(())
    }

    /// The current parameters.
    fn get_params<'a>(&self, state: &'a Self::State) -> &'a P;

    /// Replaces the current parameters (moments and iteration are kept).
    fn set_params(&self, state: &mut Self::State, params: P);

    /// The number of updates applied so far.
    fn iteration(&self, state: &Self::State) -> usize;

    /// A short name. The built-in optimizers follow the JAX library, e.g.
    /// `Adam_lr0.01_b10.9_b20.999_eps1e-08_epsroot1e-08`.
    fn name(&self) -> String {
        crate::task::short_type_name::<Self>()
    }
}

/// `Ok` when `b` has as many leaves as `a`, each of the same length. Allocates only to
/// build the error.
fn check_leaf_lengths<P: Params>(what: &str, a: &P, b: &P) -> Result<()> {
    if a.num_leaves() != b.num_leaves() {
        return Err(Error::ShapeMismatch {
            what: format!("{what}: number of leaves"),
            expected: vec![a.num_leaves()],
            got: vec![b.num_leaves()],
        });
    }
    for i in 0..a.num_leaves() {
        let (x, y) = (a.leaf(i).len(), b.leaf(i).len());
        if x != y {
            let mut name = String::new();
            a.write_leaf_name(i, &mut name);
            return Err(Error::ShapeMismatch {
                what: format!("{what}: leaf {i} `{name}`"),
                expected: vec![x],
                got: vec![y],
            });
        }
    }
    Ok(())
}

/// `impl Params` for an Adam-like state `$ty<P>` with trees `params`, `mu` and `nu`:
/// their leaves in that order, named `params.*`, `mu.*`, `nu.*`, with the parameters'
/// shapes; counters are not leaves.
macro_rules! params_mu_nu {
    ($ty:ident) => {
        impl<P: $crate::params::Params> $crate::params::Params for $ty<P> {
            type Scalar = P::Scalar;
            fn num_leaves(&self) -> usize {
                3 * self.params.num_leaves()
            }
            fn leaf(&self, i: usize) -> &[P::Scalar] {
                let k = self.params.num_leaves();
                match i / k {
                    0 => self.params.leaf(i),
                    1 => self.mu.leaf(i - k),
                    _ => self.nu.leaf(i - 2 * k),
                }
            }
            fn leaf_mut(&mut self, i: usize) -> &mut [P::Scalar] {
                let k = self.params.num_leaves();
                match i / k {
                    0 => self.params.leaf_mut(i),
                    1 => self.mu.leaf_mut(i - k),
                    _ => self.nu.leaf_mut(i - 2 * k),
                }
            }
            fn write_leaf_name(&self, i: usize, out: &mut String) {
                let k = self.params.num_leaves();
                $crate::params::write_field_leaf_name(
                    out,
                    ["params", "mu", "nu"][i / k],
                    &self.params,
                    i % k,
                );
            }
            fn leaf_shape(&self, i: usize) -> Vec<usize> {
                self.params.leaf_shape(i % self.params.num_leaves())
            }
        }
    };
}
pub(crate) use params_mu_nu;

/// `Ok(lr)` when a learning rate is finite and not negative; the error names the
/// optimizer.
pub(crate) fn check_lr(optimizer: &str, lr: f64) -> Result<f64> {
    if lr.is_finite() && lr >= 0.0 {
        Ok(lr)
    } else {
        Err(Error::InvalidArgument(format!(
            "{optimizer}: the learning rate must be finite and >= 0 (got {lr})"
        )))
    }
}

/// Unwraps a constructor's check, panicking with its message at the caller's line.
#[track_caller]
pub(crate) fn or_panic<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Panics with a clear message when `b` cannot be walked side by side with `a`.
#[inline]
#[track_caller]
pub(crate) fn assert_leaf_lengths<P: Params>(what: &str, a: &P, b: &P) {
    if let Err(e) = check_leaf_lengths(what, a, b) {
        panic!("{e} (Optimizer::try_update reports this as an Err)");
    }
    // Same lengths but other shapes (a 2×3 gradient for 3×2 parameters). `same_shape`
    // allocates nothing for the built-in leaves and derived trees; the error is built
    // only on a mismatch.
    if !a.same_shape(b) {
        let e = a
            .check_same_shape(b)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        panic!("{what}: {e} (Optimizer::try_update reports this as an Err)");
    }
}

/// `x` as Python's `repr(float)` prints it (`0.01`, `1e-08`, `3.0`), so optimizer names
/// match the JAX library's.
pub(crate) fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // `{:e}` gives the shortest round-trip digits, as Python's repr does.
    let s = format!("{x:e}");
    let (mant, exp) = s.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    if (-4..16).contains(&exp) {
        let digits: String = mant.chars().filter(|&c| c != '.').collect();
        let n = digits.len() as i32;
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point >= n {
            format!("{digits}{}.0", "0".repeat((point - n) as usize))
        } else {
            let (a, b) = digits.split_at(point as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}
