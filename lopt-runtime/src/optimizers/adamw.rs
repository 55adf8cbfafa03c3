//! AdamW as `optax.adamw`: Adam with decoupled weight decay and an optional schedule.

use serde::{Deserialize, Serialize};

use super::{assert_leaf_lengths, Optimizer, Schedule};
use crate::error::{Error, Result};
use crate::params::Params;
use crate::scalar::Real;

/// AdamW, exactly `optax.adamw(learning_rate, b1, b2, eps, eps_root, weight_decay)`
/// (no mask, no Nesterov): with `t` the update count from 1 and `lr` the schedule's value
/// at `t − 1`,
///
/// ```text
/// m ← β1·m + (1 − β1)·g
/// v ← β2·v + (1 − β2)·g²
/// u = (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ) + eps_root) + eps) + weight_decay·p
/// p ← p − lr·u
/// ```
///
/// Defaults are optax's: `β1 = 0.9, β2 = 0.999, eps = 1e-8, eps_root = 0,
/// weight_decay = 1e-4` (note optax's `eps_root = 0`, unlike the library's [`Adam`](super::Adam)).
/// The loss is ignored. Checked step by step against optax in
/// `tests/optimizers_reference.rs`.
///
/// ```
/// use lopt_runtime::optimizers::{AdamW, Schedule};
/// use lopt_runtime::Optimizer;
///
/// let opt = AdamW::try_new(Schedule::try_constant(0.01).unwrap()).unwrap();
/// let mut s = opt.init(vec![1.0f32], None);
/// opt.update(&mut s, &vec![0.5], 0.0);
/// // First step: lr·(sign(g) + wd·p) = 0.01·(1 + 1e-4).
/// assert!((s.params[0] - (1.0 - 0.01 * 1.0001)).abs() < 1e-6);
/// assert!(AdamW::try_new(Schedule::Constant(-1.0)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    /// Learning rate schedule.
    pub lr: Schedule,
    /// `β1` (default 0.9).
    pub b1: f64,
    /// `β2` (default 0.999).
    pub b2: f64,
    /// `eps`, outside the square root (default 1e-8).
    pub eps: f64,
    /// `eps_root`, inside the square root (default 0).
    pub eps_root: f64,
    /// Decoupled weight decay, multiplied by the learning rate (default 1e-4).
    pub weight_decay: f64,
}

impl AdamW {
    /// AdamW on schedule `lr` with optax's other defaults; `Err` on a schedule whose
    /// first value is not finite and non-negative (see also [`AdamW::validate`]).
    pub fn try_new(lr: Schedule) -> Result<Self> {
        let opt = AdamW {
            lr,
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            eps_root: 0.0,
            weight_decay: 1e-4,
        };
        opt.validate()?;
        Ok(opt)
    }

    /// `Ok` when `β1, β2 ∈ [0, 1)`, `eps, eps_root, weight_decay` are finite and ≥ 0, and the
    /// schedule's value at step 0 is finite and ≥ 0. Call it after setting fields directly.
    pub fn validate(&self) -> Result<()> {
        validate_betas_eps("AdamW", self.b1, self.b2, self.eps)?;
        nonneg("AdamW eps_root", self.eps_root)?;
        nonneg("AdamW weight_decay", self.weight_decay)?;
        nonneg("AdamW learning rate", self.lr.value(0, Some(1)))
    }
}

pub(crate) fn nonneg(what: &str, x: f64) -> Result<()> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} must be finite and non-negative, got {x}"
        )))
    }
}

pub(crate) fn validate_betas_eps(name: &str, b1: f64, b2: f64, eps: f64) -> Result<()> {
    for (w, b) in [("beta1", b1), ("beta2", b2)] {
        if !(0.0..1.0).contains(&b) {
            return Err(Error::InvalidArgument(format!(
                "{name} {w} must lie in [0, 1), got {b}"
            )));
        }
    }
    nonneg(&format!("{name} epsilon"), eps)
}

/// State of [`AdamW`] (and of [`NAdamW`](super::NAdamW)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWState<P> {
    /// Current parameters.
    pub params: P,
    /// First moment (not bias-corrected).
    pub mu: P,
    /// Second moment (not bias-corrected).
    pub nu: P,
    /// Updates applied so far.
    pub iteration: usize,
    /// Planned number of steps, given to `init` (used by step-dependent schedules).
    pub num_steps: Option<usize>,
}

// Parameters, then the two moments, as `AdamState`.
super::params_mu_nu!(AdamWState);

pub(crate) fn moments_init<P: Params>(params: P, num_steps: Option<usize>) -> AdamWState<P> {
    let mu = params.zeros_like();
    let nu = params.zeros_like();
    AdamWState {
        params,
        mu,
        nu,
        iteration: 0,
        num_steps,
    }
}

/// `β^t` in f64.
pub(crate) fn pow_t(beta: f64, t: usize) -> f64 {
    match i32::try_from(t) {
        Ok(t) => beta.powi(t),
        Err(_) => beta.powf(t as f64),
    }
}

impl<P: Params> Optimizer<P> for AdamW {
    type State = AdamWState<P>;

    fn init(&self, params: P, num_steps: Option<usize>) -> AdamWState<P> {
        moments_init(params, num_steps)
    }

    fn update(&self, state: &mut AdamWState<P>, grad: &P, _loss: P::Scalar) {
        assert_leaf_lengths("AdamW::update: gradient vs params", &state.params, grad);
        assert_leaf_lengths("AdamW::update: mu vs params", &state.params, &state.mu);
        assert_leaf_lengths("AdamW::update: nu vs params", &state.params, &state.nu);
        let c = P::Scalar::from_f64;
        let t = state.iteration + 1;
        let lr = self.lr.value(state.iteration, state.num_steps);
        let (b1, omb1, b2, omb2) = (c(self.b1), c(1.0 - self.b1), c(self.b2), c(1.0 - self.b2));
        let bc1 = c(1.0 - pow_t(self.b1, t));
        let bc2 = c(1.0 - pow_t(self.b2, t));
        let (eps, eps_root, wd, neg_lr) =
            (c(self.eps), c(self.eps_root), c(self.weight_decay), c(-lr));
        let AdamWState { params, mu, nu, .. } = state;
        for i in 0..grad.num_leaves() {
            let (p, m, v, g) = (
                params.leaf_mut(i),
                mu.leaf_mut(i),
                nu.leaf_mut(i),
                grad.leaf(i),
            );
            for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                *m = omb1 * g + b1 * *m;
                *v = omb2 * (g * g) + b2 * *v;
                let u = (*m / bc1) / ((*v / bc2 + eps_root).sqrt() + eps) + wd * *p;
                *p += neg_lr * u;
            }
        }
        state.iteration += 1;
    }

    fn get_params<'a>(&self, state: &'a AdamWState<P>) -> &'a P {
        &state.params
    }

    fn set_params(&self, state: &mut AdamWState<P>, params: P) {
        state.params = params;
    }

    fn iteration(&self, state: &AdamWState<P>) -> usize {
        state.iteration
    }

    fn name(&self) -> String {
        "AdamW".into()
    }
}
