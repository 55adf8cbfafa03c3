//! Gradient accumulation: the JAX library's `GradientAccumulator` and `optax.MultiSteps`.

use serde::{Deserialize, Serialize};

use super::{assert_leaf_lengths, Optimizer};
use crate::error::{Error, Result};
use crate::params::Params;
use crate::scalar::Real;

/// Averages the gradients (and losses) of `every` consecutive calls and hands the mean to
/// the inner optimizer on every `every`-th call; the other calls leave the parameters
/// unchanged. The inner optimizer sees `num_steps / every` planned steps and counts only
/// its own updates. This is the JAX library's `GradientAccumulator(opt, num_average)`,
/// and `optax.MultiSteps(opt, every)` with its default `use_grad_mean=True` (both checked
/// in `tests/optimizers_reference.rs`).
///
/// ```
/// use lopt_runtime::optimizers::GradientAccumulation;
/// use lopt_runtime::{Optimizer, Sgd};
///
/// let opt = GradientAccumulation::try_new(Sgd::new(1.0), 2).unwrap();
/// let mut s = opt.init(vec![0.0f64], None);
/// opt.update(&mut s, &vec![1.0], 0.0);
/// assert_eq!(s.inner.params[0], 0.0); // accumulated only
/// opt.update(&mut s, &vec![3.0], 0.0);
/// assert_eq!(s.inner.params[0], -2.0); // the mean of 1 and 3
/// assert!(GradientAccumulation::try_new(Sgd::new(1.0), 0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradientAccumulation<O> {
    /// The wrapped optimizer.
    pub inner: O,
    /// Calls per inner update (≥ 1).
    pub every: usize,
}

impl<O> GradientAccumulation<O> {
    /// Wraps `inner`; `Err` when `every` is 0.
    pub fn try_new(inner: O, every: usize) -> Result<Self> {
        if every == 0 {
            return Err(Error::InvalidArgument(
                "gradient accumulation needs every >= 1".into(),
            ));
        }
        Ok(GradientAccumulation { inner, every })
    }
}

/// State of [`GradientAccumulation`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradientAccumulationState<P: Params, S> {
    /// The inner optimizer's state.
    pub inner: S,
    /// Sum of the gradients since the last inner update.
    pub grad_accum: P,
    /// Sum of the losses since the last inner update.
    pub loss_accum: P::Scalar,
    /// Calls so far (inner updates are `iteration / every`).
    pub iteration: usize,
}

impl<P: Params, O: Optimizer<P>> Optimizer<P> for GradientAccumulation<O> {
    type State = GradientAccumulationState<P, O::State>;

    fn init(&self, params: P, num_steps: Option<usize>) -> Self::State {
        let grad_accum = params.zeros_like();
        let every = self.every.max(1);
        GradientAccumulationState {
            inner: self.inner.init(params, num_steps.map(|n| n / every)),
            grad_accum,
            loss_accum: P::Scalar::from_f64(0.0),
            iteration: 0,
        }
    }

    fn update(&self, state: &mut Self::State, grad: &P, loss: P::Scalar) {
        assert_leaf_lengths(
            "GradientAccumulation::update: gradient vs accumulator",
            &state.grad_accum,
            grad,
        );
        state.grad_accum.axpy(P::Scalar::from_f64(1.0), grad);
        state.loss_accum += loss;
        state.iteration += 1;
        let every = self.every.max(1);
        if state.iteration % every == 0 {
            let k = P::Scalar::from_f64(every as f64);
            state.grad_accum.map_inplace(|g| g / k);
            let mean_loss = state.loss_accum / k;
            self.inner
                .update(&mut state.inner, &state.grad_accum, mean_loss);
            state.grad_accum.fill(P::Scalar::from_f64(0.0));
            state.loss_accum = P::Scalar::from_f64(0.0);
        }
    }

    fn get_params<'a>(&self, state: &'a Self::State) -> &'a P {
        self.inner.get_params(&state.inner)
    }

    fn set_params(&self, state: &mut Self::State, params: P) {
        self.inner.set_params(&mut state.inner, params);
    }

    fn iteration(&self, state: &Self::State) -> usize {
        state.iteration
    }

    fn name(&self) -> String {
        format!("GradientAccumulation{}_{}", self.every, self.inner.name())
    }
}
