//! `LearnableSgd`: SGD whose one meta-parameter is the log learning rate (the JAX
//! library's `LearnableSGD`), the smallest learned optimizer.

use crate::key::Key;
use crate::params::Params;
use crate::scalar::Real;

use super::LearnedOptimizer;

/// SGD with θ = `[log_lr]`: `p ← p − exp(log_lr) · g`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnableSgd {
    /// The learning rate θ starts from.
    pub initial_lr: f64,
}

impl Default for LearnableSgd {
    fn default() -> Self {
        LearnableSgd { initial_lr: 0.01 }
    }
}

/// State of [`LearnableSgd`]'s inner optimizer.
#[derive(Debug, Clone)]
pub struct LearnableSgdState<P: Params> {
    /// Current parameters.
    pub params: P,
    /// Updates applied so far.
    pub iteration: usize,
}

/// The leaves of the parameters.
impl<P: Params> Params for LearnableSgdState<P> {
    type Scalar = P::Scalar;
    fn num_leaves(&self) -> usize {
        self.params.num_leaves()
    }
    fn leaf(&self, i: usize) -> &[P::Scalar] {
        self.params.leaf(i)
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [P::Scalar] {
        self.params.leaf_mut(i)
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        self.params.write_leaf_name(i, out)
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        self.params.leaf_shape(i)
    }
}

impl LearnedOptimizer for LearnableSgd {
    type Theta<S: Real> = [S; 1];
    type State<P: Params> = LearnableSgdState<P>;

    fn init(&self, _key: Key) -> [f32; 1] {
        [self.initial_lr.ln() as f32]
    }
    fn cast_theta<T: Real, S: Real>(&self, theta: &[T; 1]) -> [S; 1] {
        [S::from_f64(theta[0].lane(0))]
    }
    fn init_state<P: Params>(
        &self,
        _theta: &[P::Scalar; 1],
        params: P,
        _n: Option<usize>,
    ) -> LearnableSgdState<P> {
        LearnableSgdState {
            params,
            iteration: 0,
        }
    }
    fn update<P: Params>(
        &self,
        theta: &[P::Scalar; 1],
        state: &mut LearnableSgdState<P>,
        grad: &P,
        _loss: P::Scalar,
    ) {
        crate::optimizers::assert_leaf_lengths(
            "LearnableSgd::update: gradient vs params",
            &state.params,
            grad,
        );
        state.params.axpy(-theta[0].exp(), grad);
        state.iteration += 1;
    }
    fn params<'s, P: Params>(&self, state: &'s LearnableSgdState<P>) -> &'s P {
        &state.params
    }
    fn set_params<P: Params>(&self, state: &mut LearnableSgdState<P>, params: P) {
        state.params = params;
    }
    fn iteration<P: Params>(&self, state: &LearnableSgdState<P>) -> usize {
        state.iteration
    }
    fn set_iteration<P: Params>(
        &self,
        state: &mut LearnableSgdState<P>,
        iteration: usize,
    ) -> crate::error::Result<()> {
        state.iteration = iteration;
        Ok(())
    }
    fn name(&self) -> String {
        "LearnableSgd".into()
    }
}
