//! The JAX library's `WeightDecayWrapper` (`optimizers/optimizer_wrappers.py`).

use serde::{Deserialize, Serialize};

use super::adamw::nonneg;
use super::Optimizer;
use crate::error::Result;
use crate::params::Params;
use crate::scalar::Real;

/// Adds an L2 penalty to the gradient (and the loss) before the inner optimizer:
/// `g ← g + weight_decay·p` and, when `add_to_loss`, `loss ← loss + weight_decay·Σp²`
/// (the library's `WeightDecayWrapper(opt, weight_decay, add_to_loss=True)`; note the
/// gradient term is `wd·p`, not `2·wd·p`, as there). The state is the inner optimizer's.
///
/// ```
/// use lopt_runtime::optimizers::WeightDecay;
/// use lopt_runtime::{Optimizer, Sgd};
///
/// let opt = WeightDecay::try_new(Sgd::new(0.1), 0.5).unwrap();
/// let mut s = opt.init(vec![2.0f64], None);
/// opt.update(&mut s, &vec![0.0], 0.0);
/// assert!((s.params[0] - (2.0 - 0.1 * 0.5 * 2.0)).abs() < 1e-12);
/// assert!(WeightDecay::try_new(Sgd::new(0.1), -1.0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WeightDecay<O> {
    /// The wrapped optimizer.
    pub inner: O,
    /// The penalty's coefficient.
    pub weight_decay: f64,
    /// Whether the loss passed on includes `weight_decay·Σp²` (default true).
    pub add_to_loss: bool,
}

impl<O> WeightDecay<O> {
    /// Wraps `inner`; `Err` unless `weight_decay` is finite and ≥ 0.
    pub fn try_new(inner: O, weight_decay: f64) -> Result<Self> {
        nonneg("weight_decay", weight_decay)?;
        Ok(WeightDecay {
            inner,
            weight_decay,
            add_to_loss: true,
        })
    }
}

impl<P: Params, O: Optimizer<P>> Optimizer<P> for WeightDecay<O> {
    type State = O::State;

    fn init(&self, params: P, num_steps: Option<usize>) -> O::State {
        self.inner.init(params, num_steps)
    }

    fn update(&self, state: &mut O::State, grad: &P, loss: P::Scalar) {
        let wd = P::Scalar::from_f64(self.weight_decay);
        let p = self.inner.get_params(state);
        let loss = if self.add_to_loss {
            loss + wd * p.dot(p)
        } else {
            loss
        };
        let mut g = grad.clone();
        g.axpy(wd, p);
        self.inner.update(state, &g, loss);
    }

    fn get_params<'a>(&self, state: &'a O::State) -> &'a P {
        self.inner.get_params(state)
    }

    fn set_params(&self, state: &mut O::State, params: P) {
        self.inner.set_params(state, params);
    }

    fn iteration(&self, state: &O::State) -> usize {
        self.inner.iteration(state)
    }

    fn name(&self) -> String {
        format!("WeightDecay_{}", self.inner.name())
    }
}
