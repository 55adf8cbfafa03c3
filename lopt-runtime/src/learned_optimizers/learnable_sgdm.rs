//! `LearnableSgdm`: SGD with momentum whose learning rate and momentum are meta-learned
//! (the JAX library's `LearnableSGDM`, `learned_optimizers/base.py`).

use super::flax_msgpack::{FlaxArray, FlaxMsgpackError, FlaxTheta, FlaxValue};
use super::LearnedOptimizer;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::params::Params;
use crate::scalar::Real;

/// SGDM with θ = `[log_lr, one_minus_momentum]` (the library's names), `lr = exp(log_lr)`,
/// `μ = 1 − exp(one_minus_momentum)`, and the library's `SGDM` step
/// (`optax.sgd(lr, momentum)`): `v ← g + μ·v`, `p ← p − lr·v`. θ starts at
/// `[ln(initial_lr), ln(1 − initial_momentum)]` (defaults 0.01, 0.9). The loss is ignored.
///
/// ```
/// use lopt_runtime::learned_optimizers::{LearnableSgdm, LearnedOptimizer};
/// use lopt_runtime::{Key, Optimizer};
///
/// let lopt = LearnableSgdm::default();
/// let theta = lopt.init(Key::new(0));
/// let opt = lopt.opt_fn(&theta);
/// let mut s = opt.init(vec![1.0f32], None);
/// opt.update(&mut s, &vec![1.0], 0.0);
/// opt.update(&mut s, &vec![1.0], 0.0);
/// // v = 1, then 1 + 0.9; p = 1 − 0.01·(1 + 1.9).
/// assert!((s.params[0] - 0.971).abs() < 1e-6);
/// assert!(LearnableSgdm::try_new(0.01, 1.0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnableSgdm {
    /// The learning rate θ starts from.
    pub initial_lr: f64,
    /// The momentum θ starts from.
    pub initial_momentum: f64,
}

impl Default for LearnableSgdm {
    fn default() -> Self {
        LearnableSgdm {
            initial_lr: 0.01,
            initial_momentum: 0.9,
        }
    }
}

impl LearnableSgdm {
    /// `Err` unless `initial_lr > 0` and `initial_momentum ∈ [0, 1)` are finite (θ holds
    /// their logarithms).
    pub fn try_new(initial_lr: f64, initial_momentum: f64) -> Result<Self> {
        if !(initial_lr.is_finite() && initial_lr > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "LearnableSgdm initial_lr must be finite and positive, got {initial_lr}"
            )));
        }
        if !(0.0..1.0).contains(&initial_momentum) {
            return Err(Error::InvalidArgument(format!(
                "LearnableSgdm initial_momentum must lie in [0, 1), got {initial_momentum}"
            )));
        }
        Ok(LearnableSgdm {
            initial_lr,
            initial_momentum,
        })
    }
}

/// State of [`LearnableSgdm`]'s inner optimizer.
#[derive(Debug, Clone)]
pub struct LearnableSgdmState<P: Params> {
    /// Current parameters.
    pub params: P,
    /// The momentum trace `v`.
    pub momentum: P,
    /// Updates applied so far.
    pub iteration: usize,
}

/// The leaves of the parameters, then of the momentum.
impl<P: Params> Params for LearnableSgdmState<P> {
    type Scalar = P::Scalar;
    fn num_leaves(&self) -> usize {
        2 * self.params.num_leaves()
    }
    fn leaf(&self, i: usize) -> &[P::Scalar] {
        let k = self.params.num_leaves();
        if i < k {
            self.params.leaf(i)
        } else {
            self.momentum.leaf(i - k)
        }
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [P::Scalar] {
        let k = self.params.num_leaves();
        if i < k {
            self.params.leaf_mut(i)
        } else {
            self.momentum.leaf_mut(i - k)
        }
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        let k = self.params.num_leaves();
        let field = if i < k { "params" } else { "momentum" };
        crate::params::write_field_leaf_name(out, field, &self.params, i % k);
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        self.params.leaf_shape(i % self.params.num_leaves())
    }
}

impl LearnedOptimizer for LearnableSgdm {
    type Theta<S: Real> = [S; 2];
    type State<P: Params> = LearnableSgdmState<P>;

    fn init(&self, _key: Key) -> [f32; 2] {
        [
            self.initial_lr.ln() as f32,
            (1.0 - self.initial_momentum).ln() as f32,
        ]
    }
    fn cast_theta<T: Real, S: Real>(&self, theta: &[T; 2]) -> [S; 2] {
        [S::from_f64(theta[0].lane(0)), S::from_f64(theta[1].lane(0))]
    }
    fn init_state<P: Params>(
        &self,
        _theta: &[P::Scalar; 2],
        params: P,
        _n: Option<usize>,
    ) -> LearnableSgdmState<P> {
        let momentum = params.zeros_like();
        LearnableSgdmState {
            params,
            momentum,
            iteration: 0,
        }
    }
    fn update<P: Params>(
        &self,
        theta: &[P::Scalar; 2],
        state: &mut LearnableSgdmState<P>,
        grad: &P,
        _loss: P::Scalar,
    ) {
        crate::optimizers::assert_leaf_lengths(
            "LearnableSgdm::update: gradient vs params",
            &state.params,
            grad,
        );
        let lr = theta[0].exp();
        let mu = P::Scalar::from_f64(1.0) - theta[1].exp();
        for i in 0..grad.num_leaves() {
            let (p, v, g) = (
                state.params.leaf_mut(i),
                state.momentum.leaf_mut(i),
                grad.leaf(i),
            );
            for ((p, v), &g) in p.iter_mut().zip(v.iter_mut()).zip(g) {
                *v = g + mu * *v;
                *p -= lr * *v;
            }
        }
        state.iteration += 1;
    }
    fn params<'s, P: Params>(&self, state: &'s LearnableSgdmState<P>) -> &'s P {
        &state.params
    }
    fn set_params<P: Params>(&self, state: &mut LearnableSgdmState<P>, params: P) {
        state.params = params;
    }
    fn iteration<P: Params>(&self, state: &LearnableSgdmState<P>) -> usize {
        state.iteration
    }
    fn name(&self) -> String {
        "LearnableSgdm".into()
    }
}

/// `{"log_lr": f32[], "one_minus_momentum": f32[]}`, as the library's `init` makes it.
impl<S: Real> FlaxTheta for [S; 2] {
    type Config = LearnableSgdm;
    fn to_flax(&self) -> FlaxValue {
        FlaxValue::map([
            (
                "log_lr",
                FlaxValue::Array(FlaxArray::scalar_f32(self[0].lane(0) as f32)),
            ),
            (
                "one_minus_momentum",
                FlaxValue::Array(FlaxArray::scalar_f32(self[1].lane(0) as f32)),
            ),
        ])
    }
    fn from_flax(_config: &LearnableSgdm, v: &FlaxValue) -> Result<Self, FlaxMsgpackError> {
        let a = v.real_array::<S>(&["log_lr"], &[])?;
        let b = v.real_array::<S>(&["one_minus_momentum"], &[])?;
        Ok([a[0], b[0]])
    }
}
