//! Stochastic gradient descent with heavy-ball momentum.

use serde::{Deserialize, Serialize};

use super::{assert_leaf_lengths, py_float, Optimizer};
use crate::params::Params;
use crate::scalar::Real;

/// SGD with momentum (the JAX library's `SGDM`, i.e. `optax.sgd(lr, momentum)`):
///
/// `v ← g + μ·v` (v₀ = 0, no dampening, not Nesterov), then `p ← p − lr·v`.
///
/// The loss is ignored.
///
/// ```
/// use lopt_runtime::{Optimizer, Sgdm};
///
/// let opt = Sgdm::new(0.5);
/// let mut state = opt.init(0.0f64, None);
/// opt.update(&mut state, &1.0, 0.0); // v = 1
/// opt.update(&mut state, &1.0, 0.0); // v = 1 + 0.9
/// assert!((state.params - (-0.5 - 0.5 * 1.9)).abs() < 1e-15);
/// assert_eq!(opt.name(), "SGDM_lr0.5_m0.9");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sgdm {
    /// Learning rate `lr` (default 0.01).
    pub lr: f64,
    /// Momentum `μ` (default 0.9).
    pub momentum: f64,
}

impl Sgdm {
    /// SGDM with learning rate `lr` and the default momentum 0.9.
    ///
    /// # Panics
    /// When `lr` is NaN, infinite or negative ([`Sgdm::try_new`] returns the error).
    #[track_caller]
    pub fn new(lr: f64) -> Self {
        super::or_panic(Self::try_new(lr))
    }

    /// [`Sgdm::new`], or [`Error::InvalidArgument`](crate::Error::InvalidArgument) when
    /// `lr` is NaN, infinite or negative.
    pub fn try_new(lr: f64) -> crate::error::Result<Self> {
        let lr = super::check_lr("Sgdm", lr)?;
        Ok(Sgdm {
            lr,
            ..Self::default()
        })
    }

    /// The JAX library's name for this configuration.
    pub fn name(&self) -> String {
        format!("SGDM_lr{}_m{}", py_float(self.lr), py_float(self.momentum))
    }
}

impl Default for Sgdm {
    fn default() -> Self {
        Sgdm {
            lr: 0.01,
            momentum: 0.9,
        }
    }
}

/// State of [`Sgdm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SgdmState<P> {
    /// Current parameters.
    pub params: P,
    /// The momentum trace `v`.
    pub momentum: P,
    /// Updates applied so far.
    pub iteration: usize,
}

impl<P: Params> Optimizer<P> for Sgdm {
    type State = SgdmState<P>;

    fn init(&self, params: P, _num_steps: Option<usize>) -> SgdmState<P> {
        let momentum = params.zeros_like();
        SgdmState {
            params,
            momentum,
            iteration: 0,
        }
    }

    fn update(&self, state: &mut SgdmState<P>, grad: &P, _loss: P::Scalar) {
        assert_leaf_lengths("Sgdm::update: gradient vs params", &state.params, grad);
        assert_leaf_lengths(
            "Sgdm::update: momentum vs params",
            &state.params,
            &state.momentum,
        );
        let mu = P::Scalar::from_f64(self.momentum);
        let neg_lr = P::Scalar::from_f64(-self.lr);
        let SgdmState {
            params, momentum, ..
        } = state;
        for i in 0..grad.num_leaves() {
            let (p, v, g) = (params.leaf_mut(i), momentum.leaf_mut(i), grad.leaf(i));
            for ((p, v), &g) in p.iter_mut().zip(v.iter_mut()).zip(g) {
                *v = g + mu * *v;
                *p += neg_lr * *v;
            }
        }
        state.iteration += 1;
    }

    fn get_params<'a>(&self, state: &'a SgdmState<P>) -> &'a P {
        &state.params
    }

    fn set_params(&self, state: &mut SgdmState<P>, params: P) {
        state.params = params;
    }

    fn iteration(&self, state: &SgdmState<P>) -> usize {
        state.iteration
    }

    fn name(&self) -> String {
        Sgdm::name(self)
    }
}
