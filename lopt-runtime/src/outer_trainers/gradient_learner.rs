//! The learner (`outer_trainers/gradient_learner.py`): averages meta-gradient estimates
//! and steps θ with an ordinary optimizer.

use crate::error::Result;
use crate::key::Key;
use crate::learned_optimizers::LearnedOptimizer;
use crate::optimizers::Optimizer;
use crate::params::Params;

use super::{GradientEstimator, GradientEstimatorOut};

/// A meta-loss that is NaN or infinite counts as this (`clip_nan_loss_to_value`).
const NAN_LOSS: f32 = 20.0;

/// Steps θ of `lopt` with `theta_opt` (`GradientLearner(meta_init, theta_opt)`).
pub struct GradientLearner<'a, L: LearnedOptimizer, O: Optimizer<L::Theta<f32>>> {
    /// The learned optimizer whose θ is trained.
    pub lopt: &'a L,
    /// The optimizer of θ (Adam in the JAX library's examples; no clipping unless it
    /// wraps one, e.g. [`crate::GradientClip`]).
    pub theta_opt: O,
}

/// The learner's state: θ's optimizer state (holding θ).
#[derive(Debug, Clone)]
pub struct GradientLearnerState<S> {
    /// The optimizer state of θ; its iteration is the outer iteration.
    pub theta_opt_state: S,
}

impl<'a, L: LearnedOptimizer, O: Optimizer<L::Theta<f32>>> GradientLearner<'a, L, O> {
    /// θ from `lopt.init(key)` and a fresh optimizer state for it.
    pub fn init(&self, key: Key) -> GradientLearnerState<O::State> {
        GradientLearnerState {
            theta_opt_state: self.theta_opt.init(self.lopt.init(key), None),
        }
    }

    /// The current θ.
    pub fn theta<'s>(&self, state: &'s GradientLearnerState<O::State>) -> &'s L::Theta<f32> {
        self.theta_opt.get_params(&state.theta_opt_state)
    }

    /// Outer steps taken.
    pub fn outer_iteration(&self, state: &GradientLearnerState<O::State>) -> usize {
        self.theta_opt.iteration(&state.theta_opt_state)
    }

    /// Averages the estimates (non-finite gradient elements count as 0, a non-finite
    /// loss as 20) and takes one step of θ. Returns the mean meta-loss.
    pub fn update(
        &self,
        state: &mut GradientLearnerState<O::State>,
        estimates: &[GradientEstimatorOut<L::Theta<f32>>],
    ) -> f32 {
        let n = estimates.len().max(1) as f32;
        let mut grad = self.theta(state).zeros_like();
        let mut loss = 0.0;
        for e in estimates {
            grad.zip_leaves_mut(&e.grad, |g, x| {
                g.iter_mut()
                    .zip(x)
                    .for_each(|(g, &x)| *g += if x.is_finite() { x / n } else { 0.0 })
            });
            loss += if e.mean_loss.is_finite() {
                e.mean_loss
            } else {
                NAN_LOSS
            } / n;
        }
        self.theta_opt
            .update(&mut state.theta_opt_state, &grad, loss);
        loss
    }
}

/// A learner and its estimators on one machine (`SingleMachineGradientLearner`).
pub struct SingleMachineGradientLearner<'a, L, O, E>
where
    L: LearnedOptimizer,
    O: Optimizer<L::Theta<f32>>,
    E: GradientEstimator<L>,
{
    /// The learner.
    pub learner: GradientLearner<'a, L, O>,
    /// The estimators, whose estimates are averaged with equal weight.
    pub estimators: Vec<E>,
}

/// Everything meta-training carries between outer steps.
pub struct MetaState<S, W> {
    /// The learner's state (θ and its optimizer).
    pub learner: GradientLearnerState<S>,
    /// Each estimator's state (tasks in training).
    pub workers: Vec<W>,
}

impl<'a, L, O, E> SingleMachineGradientLearner<'a, L, O, E>
where
    L: LearnedOptimizer,
    O: Optimizer<L::Theta<f32>>,
    E: GradientEstimator<L>,
{
    /// θ and the estimators' states: `k1, k = split(key)`; the learner from `k1`, the
    /// estimators from `split(k, n)`.
    pub fn init(&self, key: Key) -> Result<MetaState<O::State, E::WorkerState>> {
        let (k1, k) = key.split();
        let learner = self.learner.init(k1);
        let theta = self.learner.theta(&learner);
        let workers = self
            .estimators
            .iter()
            .zip(k.split_n(self.estimators.len()))
            .map(|(e, k)| e.init_worker_state(theta, k, 0))
            .collect::<Result<_>>()?;
        Ok(MetaState { learner, workers })
    }

    /// One outer step: every estimator's estimate at the current θ, then the learner's
    /// update. Returns the mean meta-loss.
    pub fn update(&self, state: &mut MetaState<O::State, E::WorkerState>, key: Key) -> Result<f32> {
        let (k1, _k2) = key.split();
        let outer = self.learner.outer_iteration(&state.learner);
        let theta = self.learner.theta(&state.learner).clone();
        let estimates = self
            .estimators
            .iter()
            .zip(state.workers.iter_mut())
            .zip(k1.split_n(self.estimators.len()))
            .map(|((e, w), k)| e.compute_gradient_estimate(&theta, w, k, outer))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.learner.update(&mut state.learner, &estimates))
    }
}
