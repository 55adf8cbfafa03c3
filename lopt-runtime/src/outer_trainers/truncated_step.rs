//! Inner training in truncations (`outer_trainers/lopt_truncated_step.py`): a set of task
//! instances, each trained by a learned optimizer, advanced one inner step at a time and
//! replaced by a fresh instance when its truncation schedule says so.

use std::any::Any;

use crate::datasets::Datasets;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::learned_optimizers::LearnedOptimizer;
use crate::task::TaskFamily;

use super::truncation_schedule::TruncationSchedule;

/// One task instance in training: its configuration, the learned optimizer's state, the
/// inner step and the length of the current run.
pub struct TaskState<F: TaskFamily, L: LearnedOptimizer> {
    /// The sampled configuration.
    pub cfg: F::Cfg<f32>,
    /// The inner optimizer's state (holding the parameters).
    pub opt_state: L::State<F::Params<f32>>,
    /// Inner steps taken in the current run.
    pub inner_step: usize,
    /// Length of the current run (from the schedule).
    pub length: usize,
    /// Whether the run ended at the last step (the next step resets the task).
    pub is_done: bool,
}

impl<F: TaskFamily, L: LearnedOptimizer> Clone for TaskState<F, L> {
    fn clone(&self) -> Self {
        TaskState {
            cfg: self.cfg.clone(),
            opt_state: self.opt_state.clone(),
            inner_step: self.inner_step,
            length: self.length,
            is_done: self.is_done,
        }
    }
}

/// What one inner step reports (`TruncatedUnrollOut`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnrollOut {
    /// The normalized training loss before the update (0 on a reset step).
    pub loss: f32,
    /// Whether the run ended with this step.
    pub is_done: bool,
    /// False on a reset step, whose loss does not count.
    pub mask: bool,
    /// The inner step after this one.
    pub iteration: usize,
}

/// Trains `num_tasks` instances of a family with a learned optimizer, in truncations
/// (`VectorizedLOptTruncatedStep`). The meta-loss of a step is the normalized training
/// loss before the update (the JAX library's default, `meta_loss_split=None`).
pub struct LOptTruncatedStep<'a, F: TaskFamily, L: LearnedOptimizer, T: TruncationSchedule> {
    /// The task family.
    pub family: &'a F,
    /// The learned optimizer.
    pub lopt: &'a L,
    /// When runs end.
    pub schedule: T,
    /// Task instances trained side by side.
    pub num_tasks: usize,
    /// Starts each task's truncation counter at a random step in `[0, offset)` so that
    /// resets do not happen in lock step (0: off).
    pub random_initial_iteration_offset: usize,
    datasets: Option<Datasets<F::Batch>>,
}

/// `()` as a `B` when `B` is `()`: the batch of a family without data.
fn unit_batch<B: 'static>() -> Option<B> {
    let unit: Box<dyn Any> = Box::new(());
    unit.downcast::<B>().ok().map(|b| *b)
}

impl<'a, F: TaskFamily, L: LearnedOptimizer, T: TruncationSchedule> LOptTruncatedStep<'a, F, L, T> {
    /// `num_tasks` instances of `family` trained by `lopt`, runs cut by `schedule`. The
    /// family's training split feeds the inner steps; a family without datasets must have
    /// `Batch = ()`.
    pub fn new(family: &'a F, lopt: &'a L, schedule: T, num_tasks: usize) -> Result<Self> {
        if num_tasks == 0 {
            return Err(Error::InvalidArgument(
                "LOptTruncatedStep: num_tasks must be at least 1".into(),
            ));
        }
        let datasets = family.datasets();
        if datasets.is_none() && unit_batch::<F::Batch>().is_none() {
            return Err(Error::NoDatasets(format!(
                "{}: the family has no datasets and its Batch is not ()",
                family.name()
            )));
        }
        Ok(LOptTruncatedStep {
            family,
            lopt,
            schedule,
            num_tasks,
            random_initial_iteration_offset: 0,
            datasets,
        })
    }

    /// The next training batch (one per task and step).
    pub fn next_batch(&self) -> Result<F::Batch> {
        match &self.datasets {
            Some(ds) => ds.train(),
            None => Ok(unit_batch().expect("checked in new")),
        }
    }

    /// A fresh instance: configuration, parameters, run length and optimizer state from
    /// four keys split from `key`.
    pub fn init_task(
        &self,
        theta: &L::Theta<f32>,
        key: Key,
        outer_iteration: usize,
    ) -> TaskState<F, L> {
        let k = key.split_n(4);
        let cfg = self.family.sample(k[0]);
        let params = self.family.init(&cfg, k[1]);
        let length = self.schedule.init(k[2], outer_iteration);
        let steps = (length != usize::MAX).then_some(length);
        TaskState {
            opt_state: self.lopt.init_state(theta, params, steps),
            cfg,
            inner_step: 0,
            length,
            is_done: false,
        }
    }

    /// Every task's initial state (`init_step_state`): task `i` from `split(k1, N)[i]`,
    /// and the optional random truncation offsets from `k2`.
    pub fn init_step_state(
        &self,
        theta: &L::Theta<f32>,
        key: Key,
        outer_iteration: usize,
    ) -> Vec<TaskState<F, L>> {
        let (k1, k2) = key.split();
        let keys = k1.split_n(self.num_tasks);
        keys.iter()
            .enumerate()
            .map(|(i, &k)| {
                let mut s = self.init_task(theta, k, outer_iteration);
                if self.random_initial_iteration_offset > 0 {
                    s.inner_step = k2
                        .fold_in(i as u64)
                        .randint(0, self.random_initial_iteration_offset as i64)
                        as usize;
                }
                s
            })
            .collect()
    }

    /// One inner step of one task with meta-parameters `theta` (`unroll_step` for one
    /// row): train on `batch` if the run goes on, else replace the task with a fresh one.
    pub fn unroll_task_step(
        &self,
        theta: &L::Theta<f32>,
        state: &mut TaskState<F, L>,
        key: Key,
        batch: &F::Batch,
        outer_iteration: usize,
    ) -> UnrollOut {
        let (ka, kb) = key.split();
        let loss = if !state.is_done {
            let (kx, _) = ka.split();
            let (loss, grad) = self.family.value_and_grad::<f32>(
                self.lopt.params(&state.opt_state),
                &state.cfg,
                kx,
                batch,
            );
            self.lopt.update(theta, &mut state.opt_state, &grad, loss);
            state.inner_step += 1;
            loss
        } else {
            let k = ka.split_n(3);
            state.cfg = self.family.sample(k[0]);
            let params = self.family.init(&state.cfg, k[1]);
            let steps = (state.length != usize::MAX).then_some(state.length);
            state.opt_state = self.lopt.init_state(theta, params, steps);
            state.inner_step = 0;
            0.0
        };
        let (length, done) =
            self.schedule
                .next_state(state.length, state.inner_step, kb, outer_iteration);
        state.length = length;
        state.is_done = done;
        UnrollOut {
            loss: self.family.normalizer(loss),
            is_done: done,
            mask: state.inner_step != 0,
            iteration: state.inner_step,
        }
    }
}
