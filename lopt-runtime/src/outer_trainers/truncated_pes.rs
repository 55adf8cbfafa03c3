//! Persistent evolution strategies over truncations (`outer_trainers/truncated_pes.py`,
//! Vicol et al. 2021): an unbiased estimate of the meta-gradient of a long inner training
//! run from short truncations, by accumulating each task's perturbations since its reset.

use std::marker::PhantomData;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::learned_optimizers::LearnedOptimizer;
use crate::params::Params;
use crate::scalar::Real;
use crate::task::TaskFamily;

use super::checkpoint::Checkpoint;
use super::lopt_truncated_step::{LOptTruncatedStep, TaskGroup};
use super::truncation_schedule::TruncationSchedule;
use super::{check_std, sign_delta, GradientEstimator, GradientEstimatorOut};

/// `TruncatedPES(truncated_step, trunc_length=10, std=0.01)`: each call unrolls every task
/// `trunc_length` steps twice, with θ + εᵢ and θ − εᵢ (same keys and data, so both sides
/// reset together), and estimates
///
/// `ĝ = meanᵢ (Aᵢ · (accᵢ + εᵢ) + Bᵢ · εᵢ) / (2σ²)`
///
/// where `Aᵢ` and `Bᵢ` are the masked means of `L⁺ − L⁻` before and after task `i`'s run
/// ended (the step that ends a run counts as after), and `accᵢ` is the sum of the
/// perturbations since the run began.
///
/// Tasks train in groups of `S::LANES`, one task per SIMD lane with its own θ ± ε
/// ([`TruncatedPes::batched`]; one task per group in `f32` by default), and groups run in
/// parallel on Rayon. A lane computes what its task computes alone. Tasks of one group
/// share each step's training batch, and their family must sample configurations of one
/// shape.
pub struct TruncatedPes<
    'a,
    F: TaskFamily,
    L: LearnedOptimizer,
    T: TruncationSchedule,
    S: Real = f32,
> {
    /// The inner training.
    pub step: LOptTruncatedStep<'a, F, L, T>,
    /// Inner steps per estimate.
    pub trunc_length: usize,
    /// Standard deviation σ of the perturbations.
    pub std: f32,
    /// With `Some(s)`, every step's loss difference of a task becomes `sign(mean Δ) · s`,
    /// the mean over its masked steps (`sign_delta_loss_scalar`; `None`: off).
    pub sign_delta_loss_scalar: Option<f32>,
    lanes: PhantomData<S>,
}

/// The persistent state of [`TruncatedPes`]: both sides of every task and the
/// accumulated perturbations.
pub struct PesState<F: TaskFamily, L: LearnedOptimizer, S: Real = f32> {
    /// Tasks trained with θ + ε, in groups of `S::LANES`.
    pub pos: Vec<TaskGroup<F, L, S>>,
    /// Tasks trained with θ − ε.
    pub neg: Vec<TaskGroup<F, L, S>>,
    /// Per task, the perturbations since its run began.
    pub accumulator: Vec<L::Theta<f32>>,
}

impl<'a, F: TaskFamily, L: LearnedOptimizer, T: TruncationSchedule> TruncatedPes<'a, F, L, T, f32> {
    /// PES over `step` with truncations of `trunc_length` steps and perturbations of
    /// standard deviation `std`.
    pub fn new(
        step: LOptTruncatedStep<'a, F, L, T>,
        trunc_length: usize,
        std: f32,
    ) -> Result<Self> {
        check_std("TruncatedPes", std)?;
        if trunc_length == 0 {
            return Err(Error::InvalidArgument(
                "TruncatedPes: trunc_length must be at least 1".into(),
            ));
        }
        Ok(TruncatedPes {
            step,
            trunc_length,
            std,
            sign_delta_loss_scalar: None,
            lanes: PhantomData,
        })
    }

    /// The same estimator with tasks in SIMD lanes of `S` (e.g. `Lanes<16>`), one task
    /// and one θ ± ε per lane.
    pub fn batched<S: Real>(self) -> TruncatedPes<'a, F, L, T, S> {
        TruncatedPes {
            step: self.step,
            trunc_length: self.trunc_length,
            std: self.std,
            sign_delta_loss_scalar: self.sign_delta_loss_scalar,
            lanes: PhantomData,
        }
    }
}

/// `n` perturbations `σ · N(0, I)` shaped like `theta` (`vector_sample_perturbations`):
/// task `i` from `split(key, n)[i]` by [`Key::normal_params`] (leaf `j` from that key
/// folded with `j`).
pub fn sample_perturbations<P: Params<Scalar = f32>>(
    theta: &P,
    key: Key,
    std: f32,
    n: usize,
) -> Vec<P> {
    key.split_n(n)
        .iter()
        .map(|k| k.normal_params(theta, std))
        .collect()
}

impl<F, L, T, S> GradientEstimator<L> for TruncatedPes<'_, F, L, T, S>
where
    F: TaskFamily,
    L: LearnedOptimizer,
    T: TruncationSchedule,
    S: Real,
{
    type WorkerState = PesState<F, L, S>;

    fn init_worker_state(
        &self,
        theta: &L::Theta<f32>,
        key: Key,
        outer_iteration: usize,
    ) -> Result<PesState<F, L, S>> {
        let pos = self
            .step
            .init_step_state::<S>(theta, key, outer_iteration)?;
        Ok(PesState {
            neg: pos.clone(),
            pos,
            accumulator: vec![theta.zeros_like(); self.step.num_tasks],
        })
    }

    fn config(&self) -> String {
        format!(
            "TruncatedPes {{ trunc_length: {}, std: {}, sign_delta_loss_scalar: {:?}, lanes: {}, step: {} }}",
            self.trunc_length,
            self.std,
            self.sign_delta_loss_scalar,
            S::LANES,
            self.step.config()
        )
    }

    fn save_worker_state(
        &self,
        state: &PesState<F, L, S>,
        prefix: &str,
        ck: &mut Checkpoint,
    ) -> Result<()> {
        self.step
            .save_groups(&state.pos, &format!("{prefix}.pos"), ck)?;
        self.step
            .save_groups(&state.neg, &format!("{prefix}.neg"), ck)?;
        let acc: Vec<f32> = state.accumulator.iter().flat_map(|a| a.flatten()).collect();
        ck.put_f32(&format!("{prefix}.accumulator"), acc)?;
        self.step.save_data_positions(prefix, ck)
    }

    fn load_worker_state(
        &self,
        theta: &L::Theta<f32>,
        prefix: &str,
        ck: &Checkpoint,
    ) -> Result<PesState<F, L, S>> {
        let pos = self.step.load_groups(theta, &format!("{prefix}.pos"), ck)?;
        let neg = self.step.load_groups(theta, &format!("{prefix}.neg"), ck)?;
        let per = theta.num_elements();
        let flat = ck.f32s(&format!("{prefix}.accumulator"), per * self.step.num_tasks)?;
        let accumulator = flat
            .chunks_exact(per.max(1))
            .take(self.step.num_tasks)
            .map(|c| theta.with_flat(c))
            .collect::<Result<Vec<_>>>()?;
        self.step.load_data_positions(prefix, ck)?;
        Ok(PesState {
            pos,
            neg,
            accumulator,
        })
    }

    fn compute_gradient_estimate(
        &self,
        theta: &L::Theta<f32>,
        state: &mut PesState<F, L, S>,
        key: Key,
        outer_iteration: usize,
    ) -> Result<GradientEstimatorOut<L::Theta<f32>>> {
        let (n, lanes, t_len) = (self.step.num_tasks, S::LANES, self.trunc_length);
        let (k_eps, k_unroll) = key.split();
        let eps = sample_perturbations(theta, k_eps, self.std, n);
        let outs = self.step.unroll_antithetic(
            theta,
            &eps,
            &mut state.pos,
            &mut state.neg,
            t_len,
            k_unroll,
            outer_iteration,
        )?;
        let two_var = 2.0 * self.std as f64 * self.std as f64;
        let mut grad = theta.zeros_like();
        let mut mean_loss = 0.0f64;
        for (i, (e, acc)) in eps.iter().zip(state.accumulator.iter_mut()).enumerate() {
            let (g, l) = (i / lanes, i % lanes);
            let out = outs[g].iter().map(|step| step[l]);
            let den = out.clone().filter(|(p, _)| p.mask).count();
            // Sign mode: one Δ for every step, from the mean over the masked ones.
            let sign = self.sign_delta_loss_scalar.map(|s| {
                let total: f64 = out
                    .clone()
                    .filter(|(p, _)| p.mask)
                    .map(|(p, m)| p.loss as f64 - m.loss as f64)
                    .sum();
                sign_delta(total / den.max(1) as f64, s)
            });
            let (mut a, mut b, mut finished) = (0.0f64, 0.0f64, false);
            let (mut lp, mut ln) = (0.0f64, 0.0f64);
            for (p, m) in out {
                finished |= p.is_done;
                if p.mask {
                    let delta = sign.unwrap_or(p.loss as f64 - m.loss as f64);
                    if finished {
                        b += delta;
                    } else {
                        a += delta;
                    }
                    lp += p.loss as f64;
                    ln += m.loss as f64;
                }
            }
            let den = den.max(1) as f64;
            let (a, b) = (a / den, b / den);
            acc.axpy(1.0, e);
            // ĝ += (A · acc' + B · ε) / (2σ²) / N
            grad.axpy((a / two_var / n as f64) as f32, acc);
            grad.axpy((b / two_var / n as f64) as f32, e);
            if finished {
                *acc = e.clone();
            }
            mean_loss += (lp / den + ln / den) / 2.0 / n as f64;
        }
        Ok(GradientEstimatorOut {
            mean_loss: mean_loss as f32,
            grad,
        })
    }
}
