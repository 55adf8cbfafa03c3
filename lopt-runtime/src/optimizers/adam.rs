//! Adam with bias correction and `eps_root`.

use serde::{Deserialize, Serialize};

use super::{assert_leaf_lengths, py_float, Optimizer};
use crate::params::Params;
use crate::scalar::Real;

/// Adam (the JAX library's `Adam`, i.e. `optax.adam` with `eps_root`). With `t` the
/// update count from 1 (`t = iteration + 1`), `m₀ = v₀ = 0`:
///
/// ```text
/// m ← β1·m + (1 − β1)·g
/// v ← β2·v + (1 − β2)·g²
/// p ← p − lr · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ) + eps_root) + eps)
/// ```
///
/// Note the library default `epsilon_root = 1e-8` (optax's own default is 0): it keeps the
/// square root differentiable at `v = 0`. The loss is ignored.
///
/// ```
/// use lopt_runtime::{Adam, Optimizer};
///
/// let opt = Adam::default();
/// let mut state = opt.init(vec![1.0f32, -1.0], None);
/// opt.update(&mut state, &vec![0.5, -2.0], 0.0);
/// // The first bias-corrected step has magnitude ≈ lr whatever the gradient's scale.
/// assert!((state.params[0] - 0.99).abs() < 1e-6);
/// assert!((state.params[1] + 0.99).abs() < 1e-6);
/// assert_eq!(opt.name(), "Adam_lr0.01_b10.9_b20.999_eps1e-08_epsroot1e-08");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    /// Learning rate `lr` (default 0.01).
    pub lr: f64,
    /// Decay of the first moment `β1` (default 0.9).
    pub beta1: f64,
    /// Decay of the second moment `β2` (default 0.999).
    pub beta2: f64,
    /// `eps`, added outside the square root (default 1e-8).
    pub epsilon: f64,
    /// `eps_root`, added inside the square root (default 1e-8).
    pub epsilon_root: f64,
}

impl Adam {
    /// Adam with learning rate `lr` and the other defaults.
    ///
    /// # Panics
    /// When `lr` is NaN, infinite or negative ([`Adam::try_new`] returns the error).
    #[track_caller]
    pub fn new(lr: f64) -> Self {
        super::or_panic(Self::try_new(lr))
    }

    /// [`Adam::new`], or [`Error::InvalidArgument`](crate::Error::InvalidArgument) when
    /// `lr` is NaN, infinite or negative.
    pub fn try_new(lr: f64) -> crate::error::Result<Self> {
        let lr = super::check_lr("Adam", lr)?;
        Ok(Adam {
            lr,
            ..Self::default()
        })
    }

    /// The JAX library's name for this configuration.
    pub fn name(&self) -> String {
        format!(
            "Adam_lr{}_b1{}_b2{}_eps{}_epsroot{}",
            py_float(self.lr),
            py_float(self.beta1),
            py_float(self.beta2),
            py_float(self.epsilon),
            py_float(self.epsilon_root)
        )
    }
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            epsilon_root: 1e-8,
        }
    }
}

/// State of [`Adam`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamState<P> {
    /// Current parameters.
    pub params: P,
    /// First moment `m` (not bias-corrected).
    pub mu: P,
    /// Second moment `v` (not bias-corrected).
    pub nu: P,
    /// Updates applied so far; the next update uses `t = iteration + 1`.
    pub iteration: usize,
}

/// The constants of one Adam step in the parameters' scalar (per lane when it is a packet,
/// as for a learned Adam whose hyperparameters differ per lane).
pub(crate) struct AdamStep<S> {
    pub b1: S,
    pub one_minus_b1: S,
    pub b2: S,
    pub one_minus_b2: S,
    /// `−lr / (1 − β1^t)`.
    pub step_scale: S,
    /// `1 / (1 − β2^t)`.
    pub inv_bc2: S,
    pub eps: S,
    pub eps_root: S,
}

impl<S: Real> AdamStep<S> {
    /// `m ← β1·m + (1−β1)·g`, `v ← β2·v + (1−β2)·g²`,
    /// `p ← p − lr·m̂ / (sqrt(v̂ + eps_root) + eps)` on every leaf; the iteration is the
    /// caller's.
    pub(crate) fn apply<P: Params<Scalar = S>>(&self, state: &mut AdamState<P>, grad: &P) {
        let AdamStep {
            b1,
            one_minus_b1,
            b2,
            one_minus_b2,
            step_scale,
            inv_bc2,
            eps,
            eps_root,
        } = *self;
        let AdamState { params, mu, nu, .. } = state;
        for i in 0..grad.num_leaves() {
            let (p, m, v, g) = (
                params.leaf_mut(i),
                mu.leaf_mut(i),
                nu.leaf_mut(i),
                grad.leaf(i),
            );
            // Indexing slices cut to one length (no bounds checks) compiles to a tighter
            // loop than a four-way `zip`, whose per-element end tests LLVM keeps.
            let n = p.len();
            let (m, v, g) = (&mut m[..n], &mut v[..n], &g[..n]);
            for i in 0..n {
                let (mi, vi, gi) = (m[i], v[i], g[i]);
                let mi = one_minus_b1 * gi + b1 * mi;
                let vi = one_minus_b2 * (gi * gi) + b2 * vi;
                m[i] = mi;
                v[i] = vi;
                p[i] += (step_scale * mi) / ((vi * inv_bc2 + eps_root).sqrt() + eps);
            }
        }
    }
}

// The leaves of the parameters, then of the two moments (so a state can be checkpointed,
// or packed lane by lane, like any tree); the iteration is not a leaf.
super::params_mu_nu!(AdamState);

/// `beta^t` for the bias corrections: `powi` (a few multiplications, within a few f64
/// ulps) rather than `powf`, whose libm call cost as much as a small task's whole update.
fn step_power(beta: f64, t: usize) -> f64 {
    match i32::try_from(t) {
        Ok(t) => beta.powi(t),
        Err(_) => beta.powf(t as f64),
    }
}

impl<P: Params> Optimizer<P> for Adam {
    type State = AdamState<P>;

    fn init(&self, params: P, _num_steps: Option<usize>) -> AdamState<P> {
        let mu = params.zeros_like();
        let nu = params.zeros_like();
        AdamState {
            params,
            mu,
            nu,
            iteration: 0,
        }
    }

    fn update(&self, state: &mut AdamState<P>, grad: &P, _loss: P::Scalar) {
        assert_leaf_lengths("Adam::update: gradient vs params", &state.params, grad);
        assert_leaf_lengths("Adam::update: mu vs params", &state.params, &state.mu);
        assert_leaf_lengths("Adam::update: nu vs params", &state.params, &state.nu);
        let s = P::Scalar::from_f64;
        let t = state.iteration + 1;
        // Per-step constants in f64, converted once: 1 − 0.999 in f32 would be off by 1e-5.
        let (b1, one_minus_b1) = (s(self.beta1), s(1.0 - self.beta1));
        let (b2, one_minus_b2) = (s(self.beta2), s(1.0 - self.beta2));
        // Divisions are the slow part of the step: the bias corrections become per-step
        // reciprocals, and lr folds into the first one (one division, one sqrt per element;
        // the last bit can differ from dividing as optax does).
        let step_scale = s(-self.lr / (1.0 - step_power(self.beta1, t)));
        let inv_bc2 = s(1.0 / (1.0 - step_power(self.beta2, t)));
        let (eps, eps_root) = (s(self.epsilon), s(self.epsilon_root));
        let step = AdamStep {
            b1,
            one_minus_b1,
            b2,
            one_minus_b2,
            step_scale,
            inv_bc2,
            eps,
            eps_root,
        };
        step.apply(state, grad);
        state.iteration += 1;
    }

    fn get_params<'a>(&self, state: &'a AdamState<P>) -> &'a P {
        &state.params
    }

    fn set_params(&self, state: &mut AdamState<P>, params: P) {
        state.params = params;
    }

    fn iteration(&self, state: &AdamState<P>) -> usize {
        state.iteration
    }

    fn name(&self) -> String {
        Adam::name(self)
    }
}
