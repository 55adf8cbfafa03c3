//! Inner training in truncations (`outer_trainers/lopt_truncated_step.py`): a set of task
//! instances, each trained by a learned optimizer, advanced one inner step at a time and
//! replaced by a fresh instance when its truncation schedule says so.

use std::any::Any;

use crate::datasets::{Datasets, Split};
use crate::error::{Error, Result};
use crate::key::{Key, KeyOps};
use crate::lane_groups::{get_lane, map_groups_mut, padded, same_lane_group, set_lane, LaneGroups};
use crate::learned_optimizers::LearnedOptimizer;
use crate::params::Params;
use crate::scalar::Real;
use crate::task::TaskFamily;

use super::checkpoint::Checkpoint;
use super::truncation_schedule::TruncationSchedule;

/// Task instances in training, one per lane of `S` (one for `f32`): their configurations,
/// the learned optimizer's state (holding the parameters), and per lane the inner step,
/// the length of the current run and whether it just ended.
pub struct TaskGroup<F: TaskFamily, L: LearnedOptimizer, S: Real = f32> {
    /// The configurations, packed.
    pub cfg: F::Cfg<S>,
    /// The inner optimizer's state, packed.
    pub opt_state: L::State<F::Params<S>>,
    /// Inner steps taken in each lane's current run.
    pub inner_step: Vec<usize>,
    /// Length of each lane's current run (from the schedule).
    pub length: Vec<usize>,
    /// Whether each lane's run ended at the last step (its next step restarts it).
    pub is_done: Vec<bool>,
    /// Per lane, the keys its current task's configuration was sampled from and its
    /// parameters initialised from: what a checkpoint rebuilds the task's shape from.
    pub task_keys: Vec<[Key; 2]>,
}

impl<F: TaskFamily, L: LearnedOptimizer, S: Real> Clone for TaskGroup<F, L, S> {
    fn clone(&self) -> Self {
        TaskGroup {
            cfg: self.cfg.clone(),
            opt_state: self.opt_state.clone(),
            inner_step: self.inner_step.clone(),
            length: self.length.clone(),
            is_done: self.is_done.clone(),
            task_keys: self.task_keys.clone(),
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

/// What a step reports as its meta-loss when it is not the training loss before the
/// update (the JAX library's `meta_loss_split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaLossSplit {
    /// The loss of the updated parameters on the step's own training batch
    /// (`"same_data"`).
    SameData,
    /// The loss of the updated parameters on a batch of this split (`"outer_valid"`,
    /// ...): one batch per lane group and step, the same for θ + ε and θ − ε.
    Split(Split),
}

/// Trains `num_tasks` instances of a family with a learned optimizer, in truncations
/// (`VectorizedLOptTruncatedStep`). The meta-loss of a step is the normalized training
/// loss before the update (the JAX library's default, `meta_loss_split=None`), or with
/// [`meta_loss_split`](Self::meta_loss_split) the loss after it on other data.
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
    /// `None` (default): the meta-loss is the training loss before each update. `Some`:
    /// the loss after the update, on the data named (see [`MetaLossSplit`]), with a key
    /// of its own per task (the second half of the split of the task's training key;
    /// the JAX library splits another key, which changes no distribution). A family
    /// without datasets (`Batch = ()`) has the same `()` batch in every split.
    pub meta_loss_split: Option<MetaLossSplit>,
    /// The split of the batches [`meta_loss_batch`](Self::meta_loss_batch) is given by
    /// estimators that evaluate trained tasks (`outer_data_split`, default `Train`).
    pub outer_data_split: Split,
    datasets: Option<Datasets<F::Batch>>,
}

/// `theta + sign · eps`.
fn shifted<P: Params<Scalar = f32>>(theta: &P, eps: &P, sign: f32) -> P {
    let mut t = theta.clone();
    t.axpy(sign, eps);
    t
}

/// A new task in `f32`: its configuration, optimizer state, run length and the keys of
/// its configuration and parameters.
type FreshTask<F, L> = (
    <F as TaskFamily>::Cfg<f32>,
    <L as LearnedOptimizer>::State<<F as TaskFamily>::Params<f32>>,
    usize,
    [Key; 2],
);

/// `x` as a `B` when `A` and `B` are the same type, else `x` back.
fn as_same<A: 'static, B: 'static>(x: A) -> std::result::Result<B, A> {
    let boxed: Box<dyn Any> = Box::new(x);
    boxed
        .downcast::<B>()
        .map(|b| *b)
        .map_err(|x| *x.downcast::<A>().expect("it is an A"))
}

/// `()` as a `B` when `B` is `()`: the batch of a family without data.
fn unit_batch<B: 'static>() -> Option<B> {
    as_same::<(), B>(()).ok()
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
        schedule.validate()?;
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
            meta_loss_split: None,
            outer_data_split: Split::Train,
            datasets,
        })
    }

    /// The next training batch (one per task and step).
    pub fn next_batch(&self) -> Result<F::Batch> {
        self.next_from(Split::Train)
    }

    /// The next batch of `split` (`()` for a family without datasets).
    fn next_from(&self, split: Split) -> Result<F::Batch> {
        match &self.datasets {
            Some(ds) => ds.next(split),
            None => Ok(unit_batch().expect("checked in new")),
        }
    }

    /// The next batch of [`outer_data_split`](Self::outer_data_split) (`get_outer_batch`).
    pub fn next_outer_batch(&self) -> Result<F::Batch> {
        self.next_from(self.outer_data_split)
    }

    /// The normalized loss of a group's current parameters on `batch`, lane `l` with key
    /// `keys[l]` (missing lanes repeat the last key): `meta_loss_batch`.
    pub fn meta_loss_batch<S: Real>(
        &self,
        group: &TaskGroup<F, L, S>,
        keys: &[Key],
        batch: &F::Batch,
    ) -> Result<S> {
        if keys.is_empty() || keys.len() > S::LANES {
            return Err(Error::InvalidArgument(format!(
                "meta_loss_batch: {} keys for {} lanes",
                keys.len(),
                S::LANES
            )));
        }
        let keys = padded(keys, S::LANES);
        Ok(self
            .family
            .normalizer(self.current_loss(group, &keys, batch)))
    }

    /// The loss (not normalized) of a group's current parameters on `batch`, with one
    /// key per lane.
    fn current_loss<S: Real>(
        &self,
        group: &TaskGroup<F, L, S>,
        keys: &[Key],
        batch: &F::Batch,
    ) -> S {
        self.family.loss::<S>(
            self.lopt.params(&group.opt_state),
            &group.cfg,
            <S::Key as KeyOps<S>>::from_lane_keys(keys),
            batch,
        )
    }

    /// The next meta-loss batch when [`meta_loss_split`](Self::meta_loss_split) names a
    /// split; `None` otherwise (the meta-loss then needs no batch of its own).
    pub fn next_meta_batch(&self) -> Result<Option<F::Batch>> {
        match self.meta_loss_split {
            Some(MetaLossSplit::Split(split)) => self.next_from(split).map(Some),
            _ => Ok(None),
        }
    }

    /// A fresh instance in `f32` from four keys split from `key`: configuration,
    /// parameters, run length, optimizer state.
    fn fresh_task(
        &self,
        theta: &L::Theta<f32>,
        key: Key,
        outer_iteration: usize,
    ) -> FreshTask<F, L> {
        let k = key.split_n(4);
        let length = self.schedule.init(k[2], outer_iteration);
        let (cfg, state) = self.fresh(theta, k[0], k[1], length);
        (cfg, state, length, [k[0], k[1]])
    }

    /// A configuration sampled from `cfg_key`, its parameters initialised from
    /// `init_key`, and the optimizer state for a run of `length` steps.
    fn fresh(
        &self,
        theta: &L::Theta<f32>,
        cfg_key: Key,
        init_key: Key,
        length: usize,
    ) -> (F::Cfg<f32>, L::State<F::Params<f32>>) {
        let cfg = self.family.sample(cfg_key);
        let params = self.family.init(&cfg, init_key);
        let steps = (length != usize::MAX).then_some(length);
        (cfg, self.lopt.init_state(theta, params, steps))
    }

    /// Whether a task (`cfg`, optimizer `state`) can share a lane group with lane 0's: its
    /// configuration in the same lane group as `vmap` forms them (leaf shapes and skipped
    /// fields) and its parameters of the same shapes.
    fn fits_lanes(
        &self,
        cfg: &F::Cfg<f32>,
        state: &L::State<F::Params<f32>>,
        cfg0: &F::Cfg<f32>,
        params0: &F::Params<f32>,
    ) -> bool {
        same_lane_group(cfg, cfg0) && self.lopt.params(state).same_shape(params0)
    }

    /// The tasks of `keys` (one per lane; missing lanes repeat the last task) packed into
    /// a group whose lanes train with `thetas` (one θ per task, in `f32`).
    pub fn init_group<S: Real>(
        &self,
        thetas: &[&L::Theta<f32>],
        keys: &[Key],
        outer_iteration: usize,
    ) -> Result<TaskGroup<F, L, S>> {
        let lanes = S::LANES;
        if keys.is_empty() || keys.len() > lanes || thetas.len() != keys.len() {
            return Err(Error::InvalidArgument(format!(
                "init_group: {} keys and {} θ for {lanes} lanes",
                keys.len(),
                thetas.len()
            )));
        }
        let tasks: Vec<_> = keys
            .iter()
            .zip(thetas)
            .map(|(&k, t)| self.fresh_task(t, k, outer_iteration))
            .collect();
        self.pack_group(thetas[0], &tasks)
    }

    /// Tasks in `f32` (one per lane; missing lanes repeat the last) packed into a group
    /// at their run's start; `theta` gives the optimizer state its structure.
    fn pack_group<S: Real>(
        &self,
        theta: &L::Theta<f32>,
        tasks: &[FreshTask<F, L>],
    ) -> Result<TaskGroup<F, L, S>> {
        let lanes = S::LANES;
        let lane = |l: usize| &tasks[l.min(tasks.len() - 1)]; // padding repeats the last
        let first_cfg = &lane(0).0;
        let first_params = self.lopt.params(&lane(0).1);
        if let Some(l) = (0..tasks.len())
            .find(|&l| !self.fits_lanes(&lane(l).0, &lane(l).1, first_cfg, first_params))
        {
            return Err(shape_error(self.family, l));
        }
        let mut cfg = self.family.cast_cfg::<f32, S>(first_cfg);
        // Lane 0's planned length: the lanes' leaves are set below, but an optimizer that
        // needs the length at init (VeLO) must be given one.
        let steps = (lane(0).2 != usize::MAX).then_some(lane(0).2);
        let mut opt_state = self.lopt.init_state(
            &self.lopt.cast_theta::<f32, S>(theta),
            self.family
                .cast_params::<f32, S>(self.lopt.params(&lane(0).1)),
            steps,
        );
        for l in 0..lanes {
            set_lane(&mut cfg, l, &lane(l).0);
            set_lane(&mut opt_state, l, &lane(l).1);
        }
        Ok(TaskGroup {
            cfg,
            opt_state,
            inner_step: vec![0; lanes],
            length: (0..lanes).map(|l| lane(l).2).collect(),
            is_done: vec![false; lanes],
            task_keys: (0..lanes).map(|l| lane(l).3).collect(),
        })
    }

    /// Every task's initial state (`init_step_state`) in groups of `S::LANES`: task `i`
    /// from `split(k1, N)[i]`, and the optional random truncation offsets from `k2`.
    pub fn init_step_state<S: Real>(
        &self,
        theta: &L::Theta<f32>,
        key: Key,
        outer_iteration: usize,
    ) -> Result<Vec<TaskGroup<F, L, S>>> {
        let (k1, k2) = key.split();
        let keys = k1.split_n(self.num_tasks);
        let groups = LaneGroups::in_order(self.num_tasks, S::LANES);
        (0..groups.len())
            .map(|g| {
                let ks: Vec<Key> = groups.get(g).iter().map(|&i| keys[i]).collect();
                let mut group = self.init_group(&vec![theta; ks.len()], &ks, outer_iteration)?;
                if self.random_initial_iteration_offset > 0 {
                    for (l, s) in group.inner_step.iter_mut().enumerate() {
                        let i = groups.member(g, l);
                        let hi = self.random_initial_iteration_offset as i64;
                        *s = k2.fold_in(i as u64).randint(0, hi) as usize;
                    }
                }
                Ok(group)
            })
            .collect()
    }

    /// One inner step of a group with meta-parameters `theta` (one θ per lane): lanes
    /// whose run goes on train on `batch` with their key (`keys[lane]`), lanes whose run
    /// ended restart with a fresh task (`unroll_step`, the lanes of a batch as rows).
    /// `meta_batch` is the step's batch of the meta-loss split
    /// ([`next_meta_batch`](Self::next_meta_batch)), needed when
    /// [`meta_loss_split`](Self::meta_loss_split) names one.
    pub fn unroll_group_step<S: Real>(
        &self,
        theta: &L::Theta<S>,
        group: &mut TaskGroup<F, L, S>,
        keys: &[Key],
        batch: &F::Batch,
        meta_batch: Option<&F::Batch>,
        outer_iteration: usize,
    ) -> Result<Vec<UnrollOut>> {
        let lanes = S::LANES;
        if keys.is_empty() || keys.len() > lanes {
            return Err(Error::InvalidArgument(format!(
                "unroll_group_step: {} keys for {lanes} lanes",
                keys.len()
            )));
        }
        let meta_batch = match self.meta_loss_split {
            None => None,
            Some(MetaLossSplit::SameData) => Some(batch),
            Some(MetaLossSplit::Split(split)) => Some(meta_batch.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unroll_group_step: meta_loss_split is {split} but no meta batch was given"
                ))
            })?),
        };
        let split: Vec<(Key, Key)> = padded(keys, lanes).iter().map(|k| k.split()).collect();
        let mut loss = S::zero();
        if group.is_done.iter().any(|d| !d) {
            let train_keys: Vec<Key> = split.iter().map(|(ka, _)| ka.split().0).collect();
            let (l, grad) = self.family.value_and_grad::<S>(
                self.lopt.params(&group.opt_state),
                &group.cfg,
                <S::Key as KeyOps<S>>::from_lane_keys(&train_keys),
                batch,
            );
            self.lopt.update(theta, &mut group.opt_state, &grad, l);
            loss = match meta_batch {
                // The updated parameters on the meta data, with a key of their own.
                Some(mb) => {
                    let meta_keys: Vec<Key> = split.iter().map(|(ka, _)| ka.split().1).collect();
                    self.current_loss(group, &meta_keys, mb)
                }
                None => l,
            };
        }
        let mut restarted = vec![false; lanes];
        for l in 0..lanes {
            if !group.is_done[l] {
                group.inner_step[l] += 1;
                continue;
            }
            // A lane whose run ended gets a fresh task (its training step above is void).
            restarted[l] = true;
            let k = split[l].0.split_n(3);
            let mut theta_l: L::Theta<f32> = self.lopt.cast_theta::<S, f32>(theta);
            get_lane(theta, l, &mut theta_l);
            let (cfg, fresh) = self.fresh(&theta_l, k[0], k[1], group.length[l]);
            match (
                as_same::<_, F::Cfg<S>>(cfg),
                as_same::<_, L::State<F::Params<S>>>(fresh),
            ) {
                // One task per group (`S` is `f32`): the new task replaces the group, so
                // it may differ in shape (another hidden width).
                (Ok(cfg), Ok(fresh)) => {
                    group.cfg = cfg;
                    group.opt_state = fresh;
                }
                (Err(cfg), Err(fresh)) => {
                    let cfg0 = self.family.cast_cfg::<S, f32>(&group.cfg);
                    let params0 = self
                        .family
                        .cast_params::<S, f32>(self.lopt.params(&group.opt_state));
                    if !self.fits_lanes(&cfg, &fresh, &cfg0, &params0) {
                        return Err(shape_error(self.family, l));
                    }
                    set_lane(&mut group.cfg, l, &cfg);
                    set_lane(&mut group.opt_state, l, &fresh);
                }
                _ => unreachable!("both are f32 or neither"),
            }
            group.inner_step[l] = 0;
            group.task_keys[l] = [k[0], k[1]];
        }
        let loss =
            self.family.normalizer(S::from_lanes(
                |l| if restarted[l] { 0.0 } else { loss.lane(l) },
            ));
        Ok((0..lanes)
            .map(|l| {
                let (length, done) = self.schedule.next_state(
                    group.length[l],
                    group.inner_step[l],
                    split[l].1,
                    outer_iteration,
                );
                group.length[l] = length;
                group.is_done[l] = done;
                UnrollOut {
                    loss: loss.lane(l) as f32,
                    is_done: done,
                    mask: group.inner_step[l] != 0,
                    iteration: group.inner_step[l],
                }
            })
            .collect())
    }
}

impl<F: TaskFamily, L: LearnedOptimizer, T: TruncationSchedule> LOptTruncatedStep<'_, F, L, T> {
    /// `t_len` steps of every task twice, the groups of `pos` with θ + εᵢ and those of
    /// `neg` with θ − εᵢ (task `i` in lane `i mod S::LANES` of group `i / S::LANES`), with
    /// the same keys and batches on both sides (`maybe_stacked_es_unroll`); groups run in
    /// parallel. Step `t` of task `i` uses key `split(split(key, T)[t].k1, N)[i]`, as the
    /// JAX library's `unroll_step` does. Returns `out[group][step][lane]` = (θ+ε, θ−ε).
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub fn unroll_antithetic<S: Real>(
        &self,
        theta: &L::Theta<f32>,
        eps: &[L::Theta<f32>],
        pos: &mut [TaskGroup<F, L, S>],
        neg: &mut [TaskGroup<F, L, S>],
        t_len: usize,
        key: Key,
        outer_iteration: usize,
    ) -> Result<Vec<Vec<Vec<(UnrollOut, UnrollOut)>>>> {
        let (n, lanes) = (self.num_tasks, S::LANES);
        let groups = n.div_ceil(lanes);
        if eps.len() != n || pos.len() != groups || neg.len() != groups {
            return Err(Error::ShapeMismatch {
                what: "unroll_antithetic: perturbations, θ+ε groups, θ−ε groups".into(),
                expected: vec![n, groups, groups],
                got: vec![eps.len(), pos.len(), neg.len()],
            });
        }
        let task_keys: Vec<Vec<Key>> = key
            .split_n(t_len)
            .iter()
            .map(|k| k.split().0.split_n(n))
            .collect();
        // One batch per group and step (the lanes of a group share it), and the
        // meta-loss split's batch when there is one.
        type StepData<B> = (B, Option<B>);
        let batches: Vec<Vec<StepData<F::Batch>>> = (0..t_len)
            .map(|_| {
                (0..pos.len())
                    .map(|_| Ok((self.next_batch()?, self.next_meta_batch()?)))
                    .collect::<Result<_>>()
            })
            .collect::<Result<_>>()?;
        let lane_groups = LaneGroups::in_order(n, lanes);
        let task = |g: usize, l: usize| lane_groups.member(g, l);
        let mut pairs: Vec<_> = pos.iter_mut().zip(neg.iter_mut()).collect();
        map_groups_mut(&mut pairs, |g, (pos, neg)| {
            // θ ± ε of each lane's task, packed.
            let pack = |sign: f32| {
                let mut t = self.lopt.cast_theta::<f32, S>(theta);
                for l in 0..lanes {
                    set_lane(&mut t, l, &shifted(theta, &eps[task(g, l)], sign));
                }
                t
            };
            let (tp, tn) = (pack(1.0), pack(-1.0));
            let mut per_step = Vec::with_capacity(t_len);
            for (t, keys) in task_keys.iter().enumerate() {
                let keys: Vec<Key> = (0..lanes).map(|l| keys[task(g, l)]).collect();
                let (b, mb) = &batches[t][g];
                let (mb, it) = (mb.as_ref(), outer_iteration);
                let op = self.unroll_group_step(&tp, pos, &keys, b, mb, it)?;
                let on = self.unroll_group_step(&tn, neg, &keys, b, mb, it)?;
                per_step.push(op.into_iter().zip(on).collect::<Vec<_>>());
            }
            Ok(per_step)
        })
        .into_iter()
        .collect()
    }
}

/// Per lane in a checkpoint: inner step, run length, done flag and the two task keys.
const LANE_INTS: usize = 5;

impl<F: TaskFamily, L: LearnedOptimizer, T: TruncationSchedule> LOptTruncatedStep<'_, F, L, T> {
    /// What this step is, for a checkpoint's header: the family, the learned optimizer,
    /// the number of tasks, the schedule and the meta-loss settings.
    pub fn config(&self) -> String {
        format!(
            "LOptTruncatedStep {{ family: {}, learned optimizer: {}, num_tasks: {}, schedule: {}, \
             random_initial_iteration_offset: {}, meta_loss_split: {:?}, outer_data_split: {} }}",
            self.family.name(),
            self.lopt.config(),
            self.num_tasks,
            self.schedule.config(),
            self.random_initial_iteration_offset,
            self.meta_loss_split,
            self.outer_data_split
        )
    }

    /// Records the positions of the family's data streams under `prefix` (nothing for a
    /// family without datasets).
    pub fn save_data_positions(&self, prefix: &str, ck: &mut Checkpoint) -> Result<()> {
        if let Some(ds) = &self.datasets {
            ck.put_u64(
                &format!("{prefix}.data_positions"),
                ds.positions()?.to_vec(),
            )?;
        }
        Ok(())
    }

    /// Moves the family's data streams to the positions recorded by
    /// [`save_data_positions`](Self::save_data_positions).
    pub fn load_data_positions(&self, prefix: &str, ck: &Checkpoint) -> Result<()> {
        if let Some(ds) = &self.datasets {
            let p = ck.u64s(&format!("{prefix}.data_positions"), 4)?;
            ds.advance_to([p[0], p[1], p[2], p[3]])?;
        }
        Ok(())
    }

    /// Writes task groups into `ck` under `prefix`: per lane its counters and task keys,
    /// its optimizer state (parameters and moments) and its configuration, each in `f32`
    /// as the lane holds it, and per group the optimizer's iteration count.
    pub fn save_groups<S: Real>(
        &self,
        groups: &[TaskGroup<F, L, S>],
        prefix: &str,
        ck: &mut Checkpoint,
    ) -> Result<()> {
        ck.put_u64(&format!("{prefix}.groups"), vec![groups.len() as u64])?;
        for (g, group) in groups.iter().enumerate() {
            let p = format!("{prefix}.{g}");
            let mut ints = Vec::with_capacity(LANE_INTS * S::LANES);
            for l in 0..S::LANES {
                ints.extend([
                    group.inner_step[l] as u64,
                    group.length[l] as u64,
                    group.is_done[l] as u64,
                    group.task_keys[l][0].to_bits(),
                    group.task_keys[l][1].to_bits(),
                ]);
            }
            ck.put_u64(&format!("{p}.lanes"), ints)?;
            let iteration = self.lopt.iteration(&group.opt_state) as u64;
            ck.put_u64(&format!("{p}.iteration"), vec![iteration])?;
            ck.put_f32(&format!("{p}.state"), lanes_flat(&group.opt_state))?;
            ck.put_f32(&format!("{p}.cfg"), lanes_flat(&group.cfg))?;
        }
        Ok(())
    }

    /// The task groups saved by [`save_groups`](Self::save_groups), for the same family,
    /// learned optimizer, number of tasks and lane width. Each lane's task is rebuilt
    /// from its keys (which fixes its shape, e.g. a sampled hidden width), then its state
    /// is overwritten with the saved values; a configuration that differs from the saved
    /// one means another family and is an [`Error::CheckpointMismatch`].
    pub fn load_groups<S: Real>(
        &self,
        theta: &L::Theta<f32>,
        prefix: &str,
        ck: &Checkpoint,
    ) -> Result<Vec<TaskGroup<F, L, S>>> {
        let lanes = S::LANES;
        let groups = self.num_tasks.div_ceil(lanes);
        let saved = ck.count(&format!("{prefix}.groups"), 1 << 32)?;
        if saved != groups {
            return Err(Error::CheckpointMismatch {
                what: format!("number of task groups ({prefix})"),
                saved: saved.to_string(),
                current: groups.to_string(),
            });
        }
        (0..groups)
            .map(|g| {
                let p = format!("{prefix}.{g}");
                let ints = ck.u64s(&format!("{p}.lanes"), LANE_INTS * lanes)?;
                let lane_ints = |l: usize| &ints[LANE_INTS * l..LANE_INTS * (l + 1)];
                let tasks: Vec<FreshTask<F, L>> = (0..lanes)
                    .map(|l| {
                        let v = lane_ints(l);
                        let keys = [Key::from_bits(v[3]), Key::from_bits(v[4])];
                        let length = usize::try_from(v[1]).unwrap_or(usize::MAX);
                        let (cfg, state) = self.fresh(theta, keys[0], keys[1], length);
                        (cfg, state, length, keys)
                    })
                    .collect();
                let mut group = self.pack_group::<S>(theta, &tasks)?;
                for l in 0..lanes {
                    let v = lane_ints(l);
                    let bad = |what: &str| Error::Checkpoint {
                        path: format!("{p}.lanes"),
                        message: format!("lane {l}: {what}"),
                    };
                    if v[2] > 1 || v[1] == 0 {
                        return Err(bad("a run length of 0 or a done flag other than 0 or 1"));
                    }
                    group.inner_step[l] = v[0] as usize;
                    group.is_done[l] = v[2] == 1;
                }
                let cfg = ck.f32s(&format!("{p}.cfg"), lanes * group.cfg.num_elements())?;
                let now = lanes_flat(&group.cfg);
                if let Some(i) = (0..now.len()).find(|&i| now[i].to_bits() != cfg[i].to_bits()) {
                    return Err(Error::CheckpointMismatch {
                        what: format!("task configuration (group {g}, value {i})"),
                        saved: cfg[i].to_string(),
                        current: now[i].to_string(),
                    });
                }
                let state = ck.f32s(
                    &format!("{p}.state"),
                    lanes * group.opt_state.num_elements(),
                )?;
                set_lanes_flat(&mut group.opt_state, state);
                let iteration = ck.count(&format!("{p}.iteration"), 1 << 48)?;
                self.lopt.set_iteration(&mut group.opt_state, iteration)?;
                Ok(group)
            })
            .collect()
    }
}

/// Every element of `p`, lane by lane (all of lane 0, then lane 1, ...), in `f32`.
fn lanes_flat<P: Params>(p: &P) -> Vec<f32> {
    let lanes = P::Scalar::LANES;
    let mut out = Vec::with_capacity(lanes * p.num_elements());
    for l in 0..lanes {
        p.for_each_leaf(|leaf| out.extend(leaf.iter().map(|x| x.lane(l) as f32)));
    }
    out
}

/// The inverse of [`lanes_flat`] (`v` holds exactly `LANES · num_elements` values).
fn set_lanes_flat<P: Params>(p: &mut P, v: &[f32]) {
    let n = p.num_elements();
    for (l, lane) in v.chunks_exact(n).enumerate() {
        let mut at = 0;
        for i in 0..p.num_leaves() {
            for x in p.leaf_mut(i) {
                x.set_lane(l, f64::from(lane[at]));
                at += 1;
            }
        }
    }
}

/// The error of a lane-batched step whose family sampled configurations of two shapes.
fn shape_error<F: TaskFamily>(family: &F, lane: usize) -> Error {
    Error::InvalidArgument(format!(
        "{}: lane {lane} sampled a configuration of another shape than lane 0 (or another \
         skipped field); lane-batched meta-training needs configurations of one shape \
         (train in f32, one task per group)",
        family.name()
    ))
}
