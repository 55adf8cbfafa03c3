//! RMSProp with optax's optional momentum trace.

use serde::{Deserialize, Serialize};

use super::{assert_leaf_lengths, py_float, Optimizer};
use crate::params::Params;
use crate::scalar::Real;

/// RMSProp (the JAX library's `RMSProp`, i.e. `optax.rmsprop` with a momentum trace):
///
/// ```text
/// ν ← d·ν + (1 − d)·g²                  (ν₀ = 0, no bias correction)
/// u = −lr · g / √(ν + eps)              (eps inside the square root)
/// trace ← u + μ·trace                   (trace₀ = 0)
/// p ← p + trace                         (not Nesterov)
/// p ← p + u + μ·trace                   (Nesterov, with the new trace)
/// ```
///
/// With the default `momentum = 0` the trace is just `u`. The loss is ignored.
///
/// ```
/// use lopt_runtime::{Optimizer, RmsProp};
///
/// let opt = RmsProp::new(0.1);
/// let mut state = opt.init(vec![0.0f64], None);
/// opt.update(&mut state, &vec![2.0], 0.0);
/// // ν = 0.1·4, so the step is −0.1·2/√(0.4 + eps).
/// assert!((state.params[0] + 0.2 / (0.4f64 + 1e-8).sqrt()).abs() < 1e-15);
/// assert_eq!(opt.name(), "RMSProp_lr0.1_d0.9_eps1e-08_m0.0_nesterovFalse");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RmsProp {
    /// Learning rate `lr` (default 0.01).
    pub lr: f64,
    /// Decay `d` of the squared-gradient average (default 0.9).
    pub decay: f64,
    /// `eps`, added inside the square root (default 1e-8).
    pub epsilon: f64,
    /// Momentum `μ` of the trace over updates (default 0).
    pub momentum: f64,
    /// Nesterov momentum (default false).
    pub nesterov: bool,
}

impl RmsProp {
    /// RMSProp with learning rate `lr` and the other defaults.
    ///
    /// # Panics
    /// When `lr` is NaN, infinite or negative ([`RmsProp::try_new`] returns the error).
    #[track_caller]
    pub fn new(lr: f64) -> Self {
        super::or_panic(Self::try_new(lr))
    }

    /// [`RmsProp::new`], or [`Error::InvalidArgument`](crate::Error::InvalidArgument) when
    /// `lr` is NaN, infinite or negative.
    pub fn try_new(lr: f64) -> crate::error::Result<Self> {
        let lr = super::check_lr("RmsProp", lr)?;
        Ok(RmsProp {
            lr,
            ..Self::default()
        })
    }

    /// The JAX library's name for this configuration.
    pub fn name(&self) -> String {
        format!(
            "RMSProp_lr{}_d{}_eps{}_m{}_nesterov{}",
            py_float(self.lr),
            py_float(self.decay),
            py_float(self.epsilon),
            py_float(self.momentum),
            if self.nesterov { "True" } else { "False" }
        )
    }
}

impl Default for RmsProp {
    fn default() -> Self {
        RmsProp {
            lr: 0.01,
            decay: 0.9,
            epsilon: 1e-8,
            momentum: 0.0,
            nesterov: false,
        }
    }
}

/// State of [`RmsProp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RmsPropState<P> {
    /// Current parameters.
    pub params: P,
    /// Running average of squared gradients `ν`.
    pub nu: P,
    /// Momentum trace of the updates (equal to the last update when `momentum = 0`).
    pub trace: P,
    /// Updates applied so far.
    pub iteration: usize,
}

impl<P: Params> Optimizer<P> for RmsProp {
    type State = RmsPropState<P>;

    fn init(&self, params: P, _num_steps: Option<usize>) -> RmsPropState<P> {
        let nu = params.zeros_like();
        let trace = params.zeros_like();
        RmsPropState {
            params,
            nu,
            trace,
            iteration: 0,
        }
    }

    fn update(&self, state: &mut RmsPropState<P>, grad: &P, _loss: P::Scalar) {
        assert_leaf_lengths("RmsProp::update: gradient vs params", &state.params, grad);
        assert_leaf_lengths("RmsProp::update: nu vs params", &state.params, &state.nu);
        assert_leaf_lengths(
            "RmsProp::update: trace vs params",
            &state.params,
            &state.trace,
        );
        let s = P::Scalar::from_f64;
        let (d, one_minus_d) = (s(self.decay), s(1.0 - self.decay));
        let (eps, neg_lr, mu) = (s(self.epsilon), s(-self.lr), s(self.momentum));
        let nesterov = self.nesterov;
        let RmsPropState {
            params, nu, trace, ..
        } = state;
        for i in 0..grad.num_leaves() {
            let (p, n, tr, g) = (
                params.leaf_mut(i),
                nu.leaf_mut(i),
                trace.leaf_mut(i),
                grad.leaf(i),
            );
            for (((p, n), tr), &g) in p.iter_mut().zip(n.iter_mut()).zip(tr.iter_mut()).zip(g) {
                *n = one_minus_d * (g * g) + d * *n;
                let u = neg_lr * (g / (*n + eps).sqrt());
                // Always traced, as optax does for momentum = 0.0 (which is not None).
                *tr = u + mu * *tr;
                *p += if nesterov { u + mu * *tr } else { *tr };
            }
        }
        state.iteration += 1;
    }

    fn get_params<'a>(&self, state: &'a RmsPropState<P>) -> &'a P {
        &state.params
    }

    fn set_params(&self, state: &mut RmsPropState<P>, params: P) {
        state.params = params;
    }

    fn iteration(&self, state: &RmsPropState<P>) -> usize {
        state.iteration
    }

    fn name(&self) -> String {
        RmsProp::name(self)
    }
}
