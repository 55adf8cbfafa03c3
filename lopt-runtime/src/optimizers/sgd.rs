//! Plain stochastic gradient descent.

use serde::{Deserialize, Serialize};

use super::{assert_leaf_lengths, py_float, Optimizer};
use crate::params::Params;
use crate::scalar::Real;

/// Stochastic gradient descent (the JAX library's `SGD`, i.e. `optax.sgd(lr)`):
///
/// `p ← p − lr·g`.
///
/// The loss is ignored.
///
/// ```
/// use lopt_runtime::{Optimizer, Sgd};
///
/// let opt = Sgd::new(0.1);
/// let mut state = opt.init(vec![1.0f64, 2.0], None);
/// opt.update(&mut state, &vec![1.0, -1.0], 0.0);
/// assert_eq!(state.params, vec![0.9, 2.1]);
/// assert_eq!(opt.name(), "SGD_lr0.1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    /// Learning rate `lr` (default 0.01).
    pub lr: f64,
}

impl Sgd {
    /// SGD with learning rate `lr`.
    ///
    /// # Panics
    /// When `lr` is NaN, infinite or negative ([`Sgd::try_new`] returns the error).
    #[track_caller]
    pub fn new(lr: f64) -> Self {
        super::or_panic(Self::try_new(lr))
    }

    /// [`Sgd::new`], or [`Error::InvalidArgument`](crate::Error::InvalidArgument) when
    /// `lr` is NaN, infinite or negative.
    pub fn try_new(lr: f64) -> crate::error::Result<Self> {
        let lr = super::check_lr("Sgd", lr)?;
        Ok(Sgd { lr })
    }

    /// The JAX library's name for this configuration.
    pub fn name(&self) -> String {
        format!("SGD_lr{}", py_float(self.lr))
    }
}

impl Default for Sgd {
    fn default() -> Self {
        Sgd { lr: 0.01 }
    }
}

/// State of [`Sgd`]: the parameters and the number of updates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SgdState<P> {
    /// Current parameters.
    pub params: P,
    /// Updates applied so far.
    pub iteration: usize,
}

impl<P: Params> Optimizer<P> for Sgd {
    type State = SgdState<P>;

    fn init(&self, params: P, _num_steps: Option<usize>) -> SgdState<P> {
        SgdState {
            params,
            iteration: 0,
        }
    }

    fn update(&self, state: &mut SgdState<P>, grad: &P, _loss: P::Scalar) {
        assert_leaf_lengths("Sgd::update: gradient vs params", &state.params, grad);
        let neg_lr = P::Scalar::from_f64(-self.lr);
        for i in 0..grad.num_leaves() {
            for (p, &g) in state.params.leaf_mut(i).iter_mut().zip(grad.leaf(i)) {
                *p += neg_lr * g;
            }
        }
        state.iteration += 1;
    }

    fn get_params<'a>(&self, state: &'a SgdState<P>) -> &'a P {
        &state.params
    }

    fn set_params(&self, state: &mut SgdState<P>, params: P) {
        state.params = params;
    }

    fn iteration(&self, state: &SgdState<P>) -> usize {
        state.iteration
    }

    fn name(&self) -> String {
        Sgd::name(self)
    }
}
