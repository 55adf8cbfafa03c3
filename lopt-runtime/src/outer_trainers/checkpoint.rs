//! Stopping and resuming meta-training: the learner's state (θ, its Adam moments, the
//! outer iteration) and the meta-loss history as JSON, written atomically.
//!
//! The estimators' worker states (tasks in training) are not saved, as in the JAX
//! library: a resumed run starts fresh tasks with the saved θ.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::learned_optimizers::LearnedOptimizer;
use crate::optimizers::Adam;
use crate::params::{Params, ParamsRecord};

use super::{GradientLearner, GradientLearnerState};

/// A meta-training checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnerCheckpoint {
    /// Outer steps taken.
    pub outer_iteration: usize,
    /// θ and Adam's two moments (leaves `params.*`, `mu.*`, `nu.*`).
    pub theta_opt_state: ParamsRecord,
    /// The meta-loss of every outer step so far.
    pub meta_losses: Vec<f32>,
}

impl<L: LearnedOptimizer> GradientLearner<'_, L, Adam> {
    /// The checkpoint of `state` with the meta-loss history `meta_losses`.
    ///
    /// Errors when θ or a moment is not finite (JSON has no NaN).
    pub fn checkpoint(
        &self,
        state: &GradientLearnerState<<Adam as crate::Optimizer<L::Theta<f32>>>::State>,
        meta_losses: &[f32],
    ) -> Result<LearnerCheckpoint> {
        Ok(LearnerCheckpoint {
            outer_iteration: state.theta_opt_state.iteration,
            theta_opt_state: state.theta_opt_state.to_record()?,
            meta_losses: meta_losses.to_vec(),
        })
    }

    /// Puts a checkpoint's θ, moments and outer iteration into `state` (made by
    /// [`GradientLearner::init`] for the same learned optimizer).
    ///
    /// Errors when the checkpoint's leaves differ in names or shapes from `state`'s.
    pub fn restore(
        &self,
        state: &mut GradientLearnerState<<Adam as crate::Optimizer<L::Theta<f32>>>::State>,
        checkpoint: &LearnerCheckpoint,
    ) -> Result<()> {
        state
            .theta_opt_state
            .from_record(&checkpoint.theta_opt_state)?;
        state.theta_opt_state.iteration = checkpoint.outer_iteration;
        Ok(())
    }
}

/// Writes `checkpoint` to `path` as JSON, atomically: to a temporary file beside it, then
/// renamed over it, so a crash leaves the old checkpoint or the new one, never half.
pub fn save_checkpoint(path: &Path, checkpoint: &LearnerCheckpoint) -> Result<()> {
    let io = |e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let text = serde_json::to_string(checkpoint).map_err(|e| Error::Data(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads a checkpoint written by [`save_checkpoint`].
pub fn load_checkpoint(path: &Path) -> Result<LearnerCheckpoint> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let ck: LearnerCheckpoint =
        serde_json::from_str(&text).map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
    ck.theta_opt_state.check_consistent()?;
    Ok(ck)
}
