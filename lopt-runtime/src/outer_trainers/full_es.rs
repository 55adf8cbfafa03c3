//! Antithetic evolution strategies over whole inner training runs
//! (`outer_trainers/full_es.py`).

use std::marker::PhantomData;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::lane_groups::{map_groups, LaneGroups};
use crate::learned_optimizers::LearnedOptimizer;
use crate::params::Params;
use crate::scalar::Real;
use crate::task::TaskFamily;

use super::checkpoint::Checkpoint;
use super::lopt_truncated_step::{LOptTruncatedStep, TaskGroup, UnrollOut};
use super::truncated_pes::sample_perturbations;
use super::truncation_schedule::TruncationSchedule;
use super::{check_std, sign_delta, GradientEstimator, GradientEstimatorOut};

/// How a run's step losses make its meta-loss (`loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EsLoss {
    /// The mean over the run (`"avg"`).
    #[default]
    Avg,
    /// The smallest step loss (`"min"`).
    Min,
    /// The last step's loss (`"last"`).
    Last,
    /// The normalized loss of the trained parameters, averaged over `samples` batches of
    /// the step's [`outer_data_split`](LOptTruncatedStep::outer_data_split), the same
    /// batches and keys on both sides (`"last_recompute"`, `recompute_samples`; the JAX
    /// library's default is 50). The tasks of a lane group share each sample's batch
    /// (the JAX library draws one per task).
    LastRecompute {
        /// Batches averaged.
        samples: usize,
    },
}

/// `FullES(truncated_step, truncation_schedule, std=0.01, loss_type="avg",
/// recompute_samples=..)`: every
/// estimate trains fresh tasks from the start for a whole run with θ + εᵢ and θ − εᵢ
/// (the same tasks, keys and data on both sides) and returns
///
/// `ĝ = meanᵢ Δᵢ · εᵢ / (2σ²)`, `Δᵢ = f(θ + εᵢ) − f(θ − εᵢ)`,
///
/// with non-finite Δ counted as 0 and, optionally, Δ clipped to `±clip_loss_diff`. The
/// step's own schedule must never end a run ([`NeverEndingTruncationSchedule`]); the run
/// length comes from `schedule`. Tasks train in groups of `S::LANES`
/// ([`FullEs::batched`]), groups in parallel.
///
/// [`NeverEndingTruncationSchedule`]: super::NeverEndingTruncationSchedule
pub struct FullEs<'a, F, L, T, U, S = f32>
where
    F: TaskFamily,
    L: LearnedOptimizer,
    T: TruncationSchedule,
    U: TruncationSchedule,
    S: Real,
{
    /// The inner training (its schedule must never end a run).
    pub step: LOptTruncatedStep<'a, F, L, T>,
    /// The length of each estimate's runs.
    pub schedule: U,
    /// Standard deviation σ of the perturbations.
    pub std: f32,
    /// How step losses make a run's meta-loss.
    pub loss: EsLoss,
    /// Clip each Δ to `±clip_loss_diff` (off when `None`).
    pub clip_loss_diff: Option<f32>,
    /// With `Some(s)`, each Δ becomes `sign(Δ) · s` after clipping
    /// (`sign_delta_loss_scalar`; `None`: off).
    pub sign_delta_loss_scalar: Option<f32>,
    lanes: PhantomData<S>,
}

impl<'a, F, L, T, U> FullEs<'a, F, L, T, U, f32>
where
    F: TaskFamily,
    L: LearnedOptimizer,
    T: TruncationSchedule,
    U: TruncationSchedule,
{
    /// Full-run ES over `step` with run lengths from `schedule` and perturbations of
    /// standard deviation `std` (mean loss over the run, no clipping).
    ///
    /// Errors when `std` is not finite and positive, or when the step's schedule ends runs.
    pub fn new(step: LOptTruncatedStep<'a, F, L, T>, schedule: U, std: f32) -> Result<Self> {
        check_std("FullEs", std)?;
        schedule.validate()?;
        if step.schedule.init(Key::new(0), 0) != usize::MAX {
            return Err(Error::InvalidArgument(
                "FullEs: the truncated step's schedule must never end a run \
                 (NeverEndingTruncationSchedule); FullEs's own schedule sets the length"
                    .into(),
            ));
        }
        Ok(FullEs {
            step,
            schedule,
            std,
            loss: EsLoss::Avg,
            clip_loss_diff: None,
            sign_delta_loss_scalar: None,
            lanes: PhantomData,
        })
    }

    /// The same estimator with tasks in SIMD lanes of `S`, one task and one θ ± ε per lane.
    pub fn batched<S: Real>(self) -> FullEs<'a, F, L, T, U, S> {
        FullEs {
            step: self.step,
            schedule: self.schedule,
            std: self.std,
            loss: self.loss,
            clip_loss_diff: self.clip_loss_diff,
            sign_delta_loss_scalar: self.sign_delta_loss_scalar,
            lanes: PhantomData,
        }
    }
}

/// A run's meta-loss from its step outputs (`LastRecompute` is computed apart).
fn run_loss(loss: EsLoss, out: impl Iterator<Item = UnrollOut>) -> f64 {
    let losses: Vec<f64> = out.map(|o| o.loss as f64).collect();
    match loss {
        EsLoss::Avg => losses.iter().sum::<f64>() / losses.len().max(1) as f64,
        EsLoss::Min => losses.iter().copied().fold(f64::INFINITY, f64::min),
        EsLoss::Last => losses.last().copied().unwrap_or(0.0),
        EsLoss::LastRecompute { .. } => unreachable!("computed from the trained tasks"),
    }
}

/// `last_recompute`: per task, the mean normalized loss of the trained parameters of
/// each side over `samples` outer batches (one per group and sample, shared by the two
/// sides, as are the keys: sample `s` of task `i` uses `split(fold_in(key, s), N)[i]`).
#[allow(clippy::type_complexity)]
fn recomputed_losses<F, L, T, S>(
    step: &LOptTruncatedStep<'_, F, L, T>,
    pos: &[TaskGroup<F, L, S>],
    neg: &[TaskGroup<F, L, S>],
    samples: usize,
    key: Key,
) -> Result<Vec<(f64, f64)>>
where
    F: TaskFamily,
    L: LearnedOptimizer,
    T: TruncationSchedule,
    S: Real,
{
    let (n, lanes) = (step.num_tasks, S::LANES);
    if samples == 0 {
        return Err(Error::InvalidArgument(
            "FullEs: LastRecompute needs at least one sample".into(),
        ));
    }
    let batches: Vec<Vec<F::Batch>> = (0..samples)
        .map(|_| pos.iter().map(|_| step.next_outer_batch()).collect())
        .collect::<Result<_>>()?;
    let keys: Vec<Vec<Key>> = (0..samples)
        .map(|s| key.fold_in(s as u64).split_n(n))
        .collect();
    let groups = LaneGroups::in_order(n, lanes);
    let per_group: Vec<Vec<(f64, f64)>> = map_groups(pos.len(), |g| {
        let (p, m) = (&pos[g], &neg[g]);
        let mut sum = vec![(0.0, 0.0); lanes];
        for (b, ks) in batches.iter().zip(&keys) {
            let ks: Vec<Key> = (0..lanes).map(|l| ks[groups.member(g, l)]).collect();
            let (lp, lm) = (
                step.meta_loss_batch(p, &ks, &b[g])?,
                step.meta_loss_batch(m, &ks, &b[g])?,
            );
            for (l, acc) in sum.iter_mut().enumerate() {
                acc.0 += lp.lane(l) / samples as f64;
                acc.1 += lm.lane(l) / samples as f64;
            }
        }
        Ok(sum)
    })
    .into_iter()
    .collect::<Result<_>>()?;
    Ok((0..n).map(|i| per_group[i / lanes][i % lanes]).collect())
}

impl<F, L, T, U, S> GradientEstimator<L> for FullEs<'_, F, L, T, U, S>
where
    F: TaskFamily,
    L: LearnedOptimizer,
    T: TruncationSchedule,
    U: TruncationSchedule,
    S: Real,
{
    /// Every estimate starts fresh tasks: nothing is carried.
    type WorkerState = ();

    fn init_worker_state(&self, _theta: &L::Theta<f32>, _key: Key, _outer: usize) -> Result<()> {
        Ok(())
    }

    fn config(&self) -> String {
        format!(
            "FullEs {{ schedule: {}, std: {}, loss: {:?}, clip_loss_diff: {:?}, sign_delta_loss_scalar: {:?}, lanes: {}, step: {} }}",
            self.schedule.config(),
            self.std,
            self.loss,
            self.clip_loss_diff,
            self.sign_delta_loss_scalar,
            S::LANES,
            self.step.config()
        )
    }

    /// Nothing is carried between estimates but the data streams' positions.
    fn save_worker_state(&self, _state: &(), prefix: &str, ck: &mut Checkpoint) -> Result<()> {
        self.step.save_data_positions(prefix, ck)
    }

    fn load_worker_state(
        &self,
        _theta: &L::Theta<f32>,
        prefix: &str,
        ck: &Checkpoint,
    ) -> Result<()> {
        self.step.load_data_positions(prefix, ck)
    }

    fn compute_gradient_estimate(
        &self,
        theta: &L::Theta<f32>,
        _state: &mut (),
        key: Key,
        outer_iteration: usize,
    ) -> Result<GradientEstimatorOut<L::Theta<f32>>> {
        let (n, lanes) = (self.step.num_tasks, S::LANES);
        let k = key.split_n(5);
        let eps = sample_perturbations(theta, k[0], self.std, n);
        let t_len = self.schedule.init(k[1], outer_iteration).max(1);
        // Both sides start from the same tasks (the same key).
        let mut pos = self
            .step
            .init_step_state::<S>(theta, k[2], outer_iteration)?;
        let mut neg = pos.clone();
        let outs = self.step.unroll_antithetic(
            theta,
            &eps,
            &mut pos,
            &mut neg,
            t_len,
            k[3],
            outer_iteration,
        )?;
        let recomputed = match self.loss {
            EsLoss::LastRecompute { samples } => {
                Some(recomputed_losses(&self.step, &pos, &neg, samples, k[4])?)
            }
            _ => None,
        };
        let two_var = 2.0 * self.std as f64 * self.std as f64;
        let mut grad = theta.zeros_like();
        let mut mean_loss = 0.0;
        for (i, e) in eps.iter().enumerate() {
            let (g, l) = (i / lanes, i % lanes);
            let (fp, fm) = match &recomputed {
                Some(r) => r[i],
                None => (
                    run_loss(self.loss, outs[g].iter().map(|s| s[l].0)),
                    run_loss(self.loss, outs[g].iter().map(|s| s[l].1)),
                ),
            };
            let mut delta = fp - fm;
            if !delta.is_finite() {
                delta = 0.0;
            }
            if let Some(c) = self.clip_loss_diff {
                delta = delta.clamp(-c as f64, c as f64);
            }
            if let Some(s) = self.sign_delta_loss_scalar {
                delta = sign_delta(delta, s);
            }
            grad.axpy((delta / two_var / n as f64) as f32, e);
            mean_loss += (fp + fm) / 2.0 / n as f64;
        }
        Ok(GradientEstimatorOut {
            mean_loss: mean_loss as f32,
            grad,
        })
    }
}
