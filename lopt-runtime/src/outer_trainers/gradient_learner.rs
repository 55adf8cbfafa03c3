//! The learner (`outer_trainers/gradient_learner.py`): averages meta-gradient estimates
//! and steps θ with an ordinary optimizer.

use crate::error::{Error, Result};
use crate::key::Key;
use crate::learned_optimizers::LearnedOptimizer;
use crate::optimizers::{Adam, AdamState, Optimizer};
use crate::params::Params;

use super::checkpoint::Setup;
use super::{Checkpoint, GradientEstimator, GradientEstimatorOut};

/// A meta-loss that is NaN or infinite counts as this (`clip_nan_loss_to_value`).
pub const NAN_LOSS: f32 = 20.0;

/// Steps θ of `lopt` with `theta_opt` (`GradientLearner(meta_init, theta_opt)`).
pub struct GradientLearner<'a, L: LearnedOptimizer, O: Optimizer<L::Theta<f32>>> {
    /// The learned optimizer whose θ is trained.
    pub lopt: &'a L,
    /// The optimizer of θ (Adam in the JAX library's examples; no clipping unless it
    /// wraps one, e.g. [`crate::GradientClip`]).
    pub theta_opt: O,
}

/// The learner's state: θ's optimizer state (holding θ) and how many outer steps in a row
/// had a non-finite meta-loss.
#[derive(Debug, Clone)]
pub struct GradientLearnerState<S> {
    /// The optimizer state of θ; its iteration is the outer iteration.
    pub theta_opt_state: S,
    /// Consecutive outer steps, up to the last, whose every estimate's meta-loss was NaN
    /// or infinite (each counted as [`NAN_LOSS`]): meta-training that has diverged
    /// rather than met one bad task. 0 after a step with a finite estimate.
    pub non_finite_streak: usize,
}

impl<'a, L: LearnedOptimizer, O: Optimizer<L::Theta<f32>>> GradientLearner<'a, L, O> {
    /// θ from `lopt.init(key)` and a fresh optimizer state for it.
    pub fn init(&self, key: Key) -> GradientLearnerState<O::State> {
        GradientLearnerState {
            theta_opt_state: self.theta_opt.init(self.lopt.init(key), None),
            non_finite_streak: 0,
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
        if !estimates.is_empty() && estimates.iter().all(|e| !e.mean_loss.is_finite()) {
            state.non_finite_streak += 1;
        } else {
            state.non_finite_streak = 0;
        }
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
    /// The meta-loss of every outer step so far (what [`update`] returned).
    ///
    /// [`update`]: SingleMachineGradientLearner::update
    pub meta_losses: Vec<f32>,
}

impl<'a, L, O, E> SingleMachineGradientLearner<'a, L, O, E>
where
    L: LearnedOptimizer,
    O: Optimizer<L::Theta<f32>>,
    E: GradientEstimator<L>,
{
    /// θ and the estimators' states: `k1, k = split(key)`; the learner from `k1`, the
    /// estimators from `split(k, n)`.
    ///
    /// Errors: [`Error::InvalidArgument`] when there are no estimators.
    pub fn init(&self, key: Key) -> Result<MetaState<O::State, E::WorkerState>> {
        let (k1, _) = key.split();
        self.init_from_theta(self.learner.lopt.init(k1), key)
    }

    /// [`init`](Self::init) from a given θ instead of `lopt.init` (fine-tuning a θ loaded
    /// from a file, e.g. with [`crate::prefab::load`]): the estimators from the same keys.
    ///
    /// Errors: [`Error::InvalidArgument`] when there are no estimators.
    pub fn init_from_theta(
        &self,
        theta: L::Theta<f32>,
        key: Key,
    ) -> Result<MetaState<O::State, E::WorkerState>> {
        self.check_estimators()?;
        let (_, k) = key.split();
        let learner = GradientLearnerState {
            theta_opt_state: self.learner.theta_opt.init(theta, None),
            non_finite_streak: 0,
        };
        let theta = self.learner.theta(&learner);
        let workers = self
            .estimators
            .iter()
            .zip(k.split_n(self.estimators.len()))
            .map(|(e, k)| e.init_worker_state(theta, k, 0))
            .collect::<Result<_>>()?;
        Ok(MetaState {
            learner,
            workers,
            meta_losses: Vec::new(),
        })
    }

    /// One outer step: every estimator's estimate at the current θ, then the learner's
    /// update. Returns the mean meta-loss.
    pub fn update(&self, state: &mut MetaState<O::State, E::WorkerState>, key: Key) -> Result<f32> {
        self.check_estimators()?;
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
        let loss = self.learner.update(&mut state.learner, &estimates);
        state.meta_losses.push(loss);
        Ok(loss)
    }

    fn check_estimators(&self) -> Result<()> {
        if self.estimators.is_empty() {
            return Err(Error::InvalidArgument(
                "SingleMachineGradientLearner: no estimators (there is nothing to average)".into(),
            ));
        }
        Ok(())
    }
}

/// The meta-training state of a learner that steps θ with Adam.
type AdamMetaState<L, W> = MetaState<AdamState<<L as LearnedOptimizer>::Theta<f32>>, W>;

/// Outer steps no run reaches: a larger count in a checkpoint means a corrupt file.
const MAX_OUTER_ITERATION: u64 = 1 << 40;

impl<'a, L, E> SingleMachineGradientLearner<'a, L, Adam, E>
where
    L: LearnedOptimizer,
    E: GradientEstimator<L>,
{
    /// What this meta-training is, as a checkpoint's header records it: lopt's version,
    /// the learned optimizer and θ's leaves, θ's optimizer, each estimator's
    /// configuration (family, schedule, tasks, lanes, σ, ...).
    pub fn setup(&self) -> Setup {
        let theta = self.learner.lopt.init(Key::new(0));
        let leaves: Vec<String> = (0..theta.num_leaves())
            .map(|i| format!("{}{:?}", theta.leaf_names()[i], theta.leaf_shape(i)))
            .collect();
        let mut setup: Setup = vec![
            ("lopt version".into(), env!("CARGO_PKG_VERSION").into()),
            ("learned optimizer".into(), self.learner.lopt.config()),
            ("theta leaves".into(), leaves.join(", ")),
            (
                "theta optimizer".into(),
                format!("{:?}", self.learner.theta_opt),
            ),
            ("estimators".into(), self.estimators.len().to_string()),
        ];
        for (i, e) in self.estimators.iter().enumerate() {
            setup.push((format!("estimator {i}"), e.config()));
        }
        setup
    }

    /// Everything the run's future depends on, in a [`Checkpoint`]: θ and its Adam
    /// moments and step count, the non-finite streak, the meta-loss history, and every
    /// estimator's state (tasks in training with their optimizer states, keys and
    /// truncation counters, PES accumulators, data-stream positions). The outer step's
    /// key is the caller's: derive it from the outer iteration (e.g. child `i` of one
    /// key, `Key::split_n(n)[i]`) and a resumed run draws what the uninterrupted run
    /// drew.
    ///
    /// Errors: [`Error::InvalidArgument`] naming the leaf and index of a non-finite value.
    pub fn checkpoint(&self, state: &AdamMetaState<L, E::WorkerState>) -> Result<Checkpoint> {
        let mut ck = Checkpoint::new();
        for (k, v) in self.setup() {
            ck.set_setup(&k, v);
        }
        let opt = &state.learner.theta_opt_state;
        ck.put_u64("outer_iteration", vec![opt.iteration as u64])?;
        ck.put_u64(
            "non_finite_streak",
            vec![state.learner.non_finite_streak as u64],
        )?;
        ck.put_params("theta", &opt.params)?;
        ck.put_params("theta_adam_mu", &opt.mu)?;
        ck.put_params("theta_adam_nu", &opt.nu)?;
        ck.put_f32("meta_losses", state.meta_losses.clone())?;
        for (i, (e, w)) in self.estimators.iter().zip(&state.workers).enumerate() {
            e.save_worker_state(w, &format!("estimator{i}"), &mut ck)?;
        }
        Ok(ck)
    }

    /// The state saved by [`checkpoint`](Self::checkpoint), after checking that it was
    /// written by this setup ([`Error::CheckpointMismatch`] names what differs) and that
    /// its counters are plausible ([`Error::Checkpoint`]).
    pub fn restore(&self, ck: &Checkpoint) -> Result<AdamMetaState<L, E::WorkerState>> {
        self.check_estimators()?;
        ck.check_setup(&self.setup())?;
        let outer = ck.count("outer_iteration", MAX_OUTER_ITERATION)?;
        let mut learner = self.learner.init(Key::new(0));
        let opt = &mut learner.theta_opt_state;
        ck.read_params("theta", &mut opt.params)?;
        ck.read_params("theta_adam_mu", &mut opt.mu)?;
        ck.read_params("theta_adam_nu", &mut opt.nu)?;
        opt.iteration = outer;
        learner.non_finite_streak = ck.count("non_finite_streak", outer as u64)?;
        let meta_losses = ck.f32s_any("meta_losses")?.to_vec();
        if meta_losses.len() > outer {
            return Err(Error::Checkpoint {
                path: "meta_losses".into(),
                message: format!("{} meta-losses for {outer} outer steps", meta_losses.len()),
            });
        }
        let theta = learner.theta_opt_state.params.clone();
        let workers = self
            .estimators
            .iter()
            .enumerate()
            .map(|(i, e)| e.load_worker_state(&theta, &format!("estimator{i}"), ck))
            .collect::<Result<_>>()?;
        Ok(MetaState {
            learner,
            workers,
            meta_losses,
        })
    }
}
