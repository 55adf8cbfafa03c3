//! Meta-training (the JAX library's `outer_trainers`): gradient estimators of a learned
//! optimizer's meta-loss, truncation schedules and the learner that steps θ.
//!
//! A [`GradientEstimator`] ([`TruncatedPes`], [`FullEs`]) trains task instances with perturbed θ and
//! returns an estimate of the meta-gradient; a [`GradientLearner`] averages the estimates
//! of its estimators and applies an ordinary optimizer (Adam) to θ.

mod checkpoint;
mod full_es;
mod gradient_learner;
mod lopt_truncated_step;
mod truncated_pes;
mod truncation_schedule;

pub use checkpoint::{Checkpoint, Setup, FORMAT_VERSION};
pub use full_es::{EsLoss, FullEs};
pub use gradient_learner::{
    GradientLearner, GradientLearnerState, MetaState, SingleMachineGradientLearner, NAN_LOSS,
};
pub use lopt_truncated_step::{LOptTruncatedStep, MetaLossSplit, TaskGroup, UnrollOut};
pub use truncated_pes::{sample_perturbations, PesState, TruncatedPes};
pub use truncation_schedule::{
    ConstantTruncationSchedule, LogUniformLengthSchedule, NeverEndingTruncationSchedule,
    TruncationSchedule,
};

use crate::error::{Error, Result};
use crate::key::Key;
use crate::learned_optimizers::LearnedOptimizer;

/// An estimate of the meta-gradient and the meta-loss it was measured at
/// (`GradientEstimatorOut`).
#[derive(Debug, Clone)]
pub struct GradientEstimatorOut<T> {
    /// Mean meta-loss over the estimate's tasks.
    pub mean_loss: f32,
    /// The meta-gradient estimate, shaped like θ.
    pub grad: T,
}

/// Estimates the gradient of a learned optimizer's meta-loss with respect to θ.
pub trait GradientEstimator<L: LearnedOptimizer>: Send + Sync {
    /// What the estimator carries from one estimate to the next (tasks in training).
    type WorkerState: Send;
    /// The state before the first estimate.
    fn init_worker_state(
        &self,
        theta: &L::Theta<f32>,
        key: Key,
        outer_iteration: usize,
    ) -> Result<Self::WorkerState>;
    /// One estimate at `theta`, advancing `state`.
    fn compute_gradient_estimate(
        &self,
        theta: &L::Theta<f32>,
        state: &mut Self::WorkerState,
        key: Key,
        outer_iteration: usize,
    ) -> Result<GradientEstimatorOut<L::Theta<f32>>>;
    /// The estimator and every setting of it, for a checkpoint's header (resuming into
    /// another configuration is refused). Default: the type's name.
    fn config(&self) -> String {
        std::any::type_name::<Self>().to_string()
    }
    /// Writes everything `state` holds, and the positions of the data streams the
    /// estimator reads, into `ck` under `prefix`, so that
    /// [`load_worker_state`](Self::load_worker_state) continues bit for bit. Default: an
    /// error saying this estimator cannot be checkpointed.
    fn save_worker_state(
        &self,
        state: &Self::WorkerState,
        prefix: &str,
        ck: &mut Checkpoint,
    ) -> Result<()> {
        let _ = (state, prefix, ck);
        Err(Error::InvalidArgument(format!(
            "{} does not implement save_worker_state: its state cannot be checkpointed",
            self.config()
        )))
    }
    /// The state written by [`save_worker_state`](Self::save_worker_state) (with `theta`
    /// the checkpoint's θ), and the data streams moved to where they were.
    fn load_worker_state(
        &self,
        theta: &L::Theta<f32>,
        prefix: &str,
        ck: &Checkpoint,
    ) -> Result<Self::WorkerState> {
        let _ = (theta, prefix, ck);
        Err(Error::InvalidArgument(format!(
            "{} does not implement load_worker_state: its state cannot be checkpointed",
            self.config()
        )))
    }
}

/// `sign(delta) · scalar` (`sign_delta_loss_scalar`), with `jnp.sign`'s 0 for 0 (and
/// NaN for NaN).
pub(crate) fn sign_delta(delta: f64, scalar: f32) -> f64 {
    if delta == 0.0 {
        0.0
    } else {
        delta.signum() * scalar as f64
    }
}

/// `Ok` when a perturbation's standard deviation is finite and positive.
pub(crate) fn check_std(estimator: &str, std: f32) -> Result<()> {
    if std.is_finite() && std > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{estimator}: std must be finite and > 0 (got {std})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::sign_delta;

    #[test]
    fn sign_delta_is_jnp_sign_times_the_scalar() {
        assert_eq!(sign_delta(0.0, 2.0), 0.0);
        assert_eq!(sign_delta(-0.0, 2.0), 0.0);
        assert_eq!(sign_delta(-3.5, 2.0), -2.0);
        assert_eq!(sign_delta(1e-30, 2.0), 2.0);
        assert!(sign_delta(f64::NAN, 2.0).is_nan());
    }
}
