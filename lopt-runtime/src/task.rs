//! Tasks and task families (the JAX library's `tasks.base`).

use crate::datasets::Datasets;
use crate::key::Key;
use crate::lane_groups::{get_lane, padded, set_lane};
use crate::params::Params;
use crate::scalar::Real;

/// A training problem: an initializer and a scalar loss (the JAX library's `Task`).
///
/// The loss is generic over the scalar type so the same task runs in `f32` for training,
/// in `f64` for gradient checks, and on SIMD packets when batched. `#[task]` writes
/// [`Task::value_and_grad`] and [`Task::value_and_jvp`] from [`Task::loss`] at compile time.
pub trait Task: Send + Sync {
    /// The parameters in scalar `S`.
    type Params<S: Real>: Params<Scalar = S>;
    /// One batch of data (`()` for tasks without data). Data is not differentiated.
    type Batch: Send + Sync + 'static;

    /// Initial parameters drawn with `key`.
    fn init<S: Real>(&self, key: Key) -> Self::Params<S>;

    /// The scalar loss of `params` on `batch`; `key` is for stochastic losses (dropout).
    fn loss<S: Real>(&self, params: &Self::Params<S>, key: S::Key, batch: &Self::Batch) -> S;

    /// The loss and its gradient with respect to `params` (reverse mode).
    fn value_and_grad<S: Real>(
        &self,
        params: &Self::Params<S>,
        key: S::Key,
        batch: &Self::Batch,
    ) -> (S, Self::Params<S>);

    /// The loss and its directional derivative along `tangent` (forward mode, a JVP).
    fn value_and_jvp<S: Real>(
        &self,
        params: &Self::Params<S>,
        tangent: &Self::Params<S>,
        key: S::Key,
        batch: &Self::Batch,
    ) -> (S, S);

    /// The parameters with every element converted (lane 0 of a packet). `#[task]`
    /// writes it as `Rebind::cast`.
    fn cast_params<T: Real, S: Real>(&self, params: &Self::Params<T>) -> Self::Params<S>;

    /// Maps a loss to a comparable scale across tasks (identity by default).
    fn normalizer<S: Real>(&self, loss: S) -> S {
        loss
    }

    /// The task's datasets, if it has data.
    fn datasets(&self) -> Option<Datasets<Self::Batch>> {
        None
    }

    /// A short name (the type name by default).
    fn name(&self) -> String {
        short_type_name::<Self>()
    }
}

/// A distribution over tasks (the JAX library's `TaskFamily`): `sample` draws a
/// configuration, `task_fn` builds the task it names.
///
/// Unlike the JAX library, the loss of every task of a family is one generic function of
/// the parameters *and* the configuration, so many instances run batched: the
/// configuration and the parameters of a lane group are packed into SIMD lanes
/// ([`Lanes`](crate::lanes::Lanes)) and the same generated code advances all of them (see
/// [`crate::vmap`] and [`crate::lane_groups`]). `#[task_family]` generates `value_and_grad`, `value_and_jvp` and the
/// casts from `loss`.
///
/// Configurations are parameter trees too, so they pack into lanes. A discrete choice that
/// changes shapes (a hidden width) is a `#[params(skip)]` field: instances that agree on
/// it share lane groups. A discrete choice that only changes code (an activation) is a
/// float leaf compared in an `if`: lanes that disagree each take their own branch.
pub trait TaskFamily: Send + Sync {
    /// A sampled configuration in scalar `S`.
    type Cfg<S: Real>: Params<Scalar = S>;
    /// The parameters of a task of the family.
    type Params<S: Real>: Params<Scalar = S>;
    /// One batch of data, shared by all tasks of the family (`()` without data).
    type Batch: Send + Sync + 'static;
    /// The task that [`TaskFamily::task_fn`] builds.
    type Task<'a>: Task
    where
        Self: 'a;

    /// Draws a configuration.
    fn sample(&self, key: Key) -> Self::Cfg<f32>;
    /// Initial parameters of the task configured by `cfg`.
    fn init(&self, cfg: &Self::Cfg<f32>, key: Key) -> Self::Params<f32>;
    /// Initial parameters of every lane of a packed configuration: lane `i` is exactly
    /// `init(cfg lane i, key lane i)`, what the instance gets alone.
    ///
    /// By default `init` runs once per lane. When `init` is written generic over the
    /// scalar (`fn init<S: Real>(&self, cfg: &Self::Cfg<S>, key: S::Key) -> Self::Params<S>`),
    /// `#[task_family]` makes that function this method, so all lanes draw at once
    /// (the keys of a packet draw lane-parallel, see [`KeyOps`](crate::key::KeyOps)), and
    /// derives the plain `init` from it.
    fn init_lanes<S: Real>(&self, cfg: &Self::Cfg<S>, keys: S::Key) -> Self::Params<S> {
        use crate::key::KeyOps;
        // One plain configuration, refilled lane by lane; lane 0 is what the cast reads.
        let mut c = self.cast_cfg::<S, f32>(cfg);
        let mut out = self.cast_params::<f32, S>(&self.init(&c, keys.lane_key(0)));
        for lane in 1..S::LANES {
            get_lane(cfg, lane, &mut c);
            set_lane(&mut out, lane, &self.init(&c, keys.lane_key(lane)));
        }
        out
    }
    /// The loss of the task configured by `cfg`.
    fn loss<S: Real>(
        &self,
        params: &Self::Params<S>,
        cfg: &Self::Cfg<S>,
        key: S::Key,
        batch: &Self::Batch,
    ) -> S;
    /// The loss and its gradient with respect to `params` (reverse mode).
    fn value_and_grad<S: Real>(
        &self,
        params: &Self::Params<S>,
        cfg: &Self::Cfg<S>,
        key: S::Key,
        batch: &Self::Batch,
    ) -> (S, Self::Params<S>);
    /// The loss and its derivative along `tangent` (forward mode).
    fn value_and_jvp<S: Real>(
        &self,
        params: &Self::Params<S>,
        tangent: &Self::Params<S>,
        cfg: &Self::Cfg<S>,
        key: S::Key,
        batch: &Self::Batch,
    ) -> (S, S);
    /// The configuration with every element converted (lane 0 of a packet).
    fn cast_cfg<T: Real, S: Real>(&self, cfg: &Self::Cfg<T>) -> Self::Cfg<S>;
    /// The parameters with every element converted (lane 0 of a packet).
    fn cast_params<T: Real, S: Real>(&self, params: &Self::Params<T>) -> Self::Params<S>;

    /// Builds the task a configuration names.
    fn task_fn<'a>(&'a self, cfg: &Self::Cfg<f32>) -> Self::Task<'a>;

    /// Draws a configuration and builds its task.
    fn sample_task(&self, key: Key) -> Self::Task<'_> {
        let cfg = self.sample(key);
        self.task_fn(&cfg)
    }
    /// Maps a loss to a comparable scale across tasks (identity by default).
    fn normalizer<S: Real>(&self, loss: S) -> S {
        loss
    }
    /// The datasets shared by every task of the family, if any.
    fn datasets(&self) -> Option<Datasets<Self::Batch>> {
        None
    }
    /// A short name (the type name by default).
    fn name(&self) -> String {
        short_type_name::<Self>()
    }
}

/// Family operations on lane-packed values.
pub trait FamilyLanes: TaskFamily {
    /// Packs configurations (all of one shape, at most `S::LANES`) into one; unused lanes
    /// repeat the last instance.
    fn pack_cfg<S: Real>(&self, cfgs: &[&Self::Cfg<f32>]) -> Self::Cfg<S> {
        let mut out = self.cast_cfg::<f32, S>(cfgs[0]);
        for (lane, c) in padded(cfgs, S::LANES).into_iter().enumerate() {
            set_lane(&mut out, lane, c);
        }
        out
    }
    /// Packs parameters like [`FamilyLanes::pack_cfg`].
    fn pack_params<S: Real>(&self, ps: &[&Self::Params<f32>]) -> Self::Params<S> {
        let mut out = self.cast_params::<f32, S>(ps[0]);
        for (lane, p) in padded(ps, S::LANES).into_iter().enumerate() {
            set_lane(&mut out, lane, p);
        }
        out
    }
    /// The configuration of lane `lane`.
    fn unpack_cfg<S: Real>(&self, cfg: &Self::Cfg<S>, lane: usize) -> Self::Cfg<f32> {
        let mut out = self.cast_cfg::<S, f32>(cfg);
        get_lane(cfg, lane, &mut out);
        out
    }
    /// The parameters of lane `lane`.
    fn unpack_params<S: Real>(&self, p: &Self::Params<S>, lane: usize) -> Self::Params<f32> {
        let mut out = self.cast_params::<S, f32>(p);
        get_lane(p, lane, &mut out);
        out
    }
}

impl<F: TaskFamily + ?Sized> FamilyLanes for F {}

/// One task of a family: the family and a configuration (what `#[task_family]` makes
/// `task_fn` return).
#[derive(Debug)]
pub struct FamilyTask<'a, F: TaskFamily + ?Sized> {
    family: &'a F,
    cfg: F::Cfg<f32>,
}

impl<'a, F: TaskFamily + ?Sized> FamilyTask<'a, F> {
    /// The task of `family` configured by `cfg`.
    pub fn new(family: &'a F, cfg: F::Cfg<f32>) -> Self {
        FamilyTask { family, cfg }
    }
    /// The configuration.
    pub fn cfg(&self) -> &F::Cfg<f32> {
        &self.cfg
    }
    /// The family.
    pub fn family(&self) -> &'a F {
        self.family
    }
}

impl<F: TaskFamily + ?Sized> Clone for FamilyTask<'_, F> {
    fn clone(&self) -> Self {
        FamilyTask {
            family: self.family,
            cfg: self.cfg.clone(),
        }
    }
}

impl<F: TaskFamily + ?Sized> Task for FamilyTask<'_, F> {
    type Params<S: Real> = F::Params<S>;
    type Batch = F::Batch;

    fn init<S: Real>(&self, key: Key) -> F::Params<S> {
        self.family.cast_params(&self.family.init(&self.cfg, key))
    }
    fn loss<S: Real>(&self, params: &F::Params<S>, key: S::Key, batch: &F::Batch) -> S {
        self.family
            .loss(params, &self.family.cast_cfg(&self.cfg), key, batch)
    }
    fn value_and_grad<S: Real>(
        &self,
        params: &F::Params<S>,
        key: S::Key,
        batch: &F::Batch,
    ) -> (S, F::Params<S>) {
        self.family
            .value_and_grad(params, &self.family.cast_cfg(&self.cfg), key, batch)
    }
    fn value_and_jvp<S: Real>(
        &self,
        params: &F::Params<S>,
        tangent: &F::Params<S>,
        key: S::Key,
        batch: &F::Batch,
    ) -> (S, S) {
        let cfg = self.family.cast_cfg(&self.cfg);
        self.family.value_and_jvp(params, tangent, &cfg, key, batch)
    }
    fn cast_params<T: Real, S: Real>(&self, params: &F::Params<T>) -> F::Params<S> {
        self.family.cast_params(params)
    }
    fn normalizer<S: Real>(&self, loss: S) -> S {
        self.family.normalizer(loss)
    }
    fn datasets(&self) -> Option<Datasets<F::Batch>> {
        self.family.datasets()
    }
    fn name(&self) -> String {
        format!("{}_task", self.family.name())
    }
}

/// The family of exactly one task (the JAX library's `single_task_to_family`): `sample`
/// returns the dummy configuration `0` and `task_fn` returns the task itself.
#[derive(Debug, Clone)]
pub struct SingleTaskFamily<T> {
    task: T,
    name: Option<String>,
}

/// Wraps one task as a family whose configuration is the dummy value `0`.
///
/// ```
/// use lopt_runtime::{single_task_to_family, Key, TaskFamily};
/// # use lopt_runtime::{Real, Task};
/// # #[derive(Debug)] struct Quad;
/// # impl Task for Quad {
/// #     type Params<S: Real> = S; type Batch = ();
/// #     fn init<S: Real>(&self, key: Key) -> S { key.normal() }
/// #     fn loss<S: Real>(&self, p: &S, _: S::Key, _: &()) -> S { *p * *p }
/// #     fn value_and_grad<S: Real>(&self, p: &S, _: S::Key, _: &()) -> (S, S) { (*p * *p, *p + *p) }
/// #     fn value_and_jvp<S: Real>(&self, p: &S, t: &S, _: S::Key, _: &()) -> (S, S) { (*p * *p, (*p + *p) * *t) }
/// #     fn cast_params<T: Real, S: Real>(&self, p: &T) -> S { S::from_f64(p.lane(0)) }
/// # }
/// let single_task = Quad;
/// let family = single_task_to_family(single_task);
/// let cfg = family.sample(Key::new(0));
/// assert_eq!(cfg, 0.0); // "config only contains a dummy value: 0"
/// let task = family.task_fn(&cfg);
/// assert!(std::ptr::eq(task, family.task())); // the same task
/// ```
pub fn single_task_to_family<T: Task>(task: T) -> SingleTaskFamily<T> {
    SingleTaskFamily { task, name: None }
}

impl<T> SingleTaskFamily<T> {
    /// Sets the family's name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// The wrapped task.
    pub fn task(&self) -> &T {
        &self.task
    }
}

impl<T: Task> TaskFamily for SingleTaskFamily<T> {
    type Cfg<S: Real> = S;
    type Params<S: Real> = T::Params<S>;
    type Batch = T::Batch;
    type Task<'a>
        = &'a T
    where
        T: 'a;

    fn sample(&self, _key: Key) -> f32 {
        0.0
    }
    fn init(&self, _cfg: &f32, key: Key) -> T::Params<f32> {
        self.task.init(key)
    }
    fn loss<S: Real>(&self, params: &T::Params<S>, _cfg: &S, key: S::Key, batch: &T::Batch) -> S {
        self.task.loss(params, key, batch)
    }
    fn value_and_grad<S: Real>(
        &self,
        params: &T::Params<S>,
        _cfg: &S,
        key: S::Key,
        batch: &T::Batch,
    ) -> (S, T::Params<S>) {
        self.task.value_and_grad(params, key, batch)
    }
    fn value_and_jvp<S: Real>(
        &self,
        params: &T::Params<S>,
        tangent: &T::Params<S>,
        _cfg: &S,
        key: S::Key,
        batch: &T::Batch,
    ) -> (S, S) {
        self.task.value_and_jvp(params, tangent, key, batch)
    }
    fn cast_cfg<U: Real, S: Real>(&self, cfg: &U) -> S {
        S::from_f64(cfg.lane(0))
    }
    fn cast_params<U: Real, S: Real>(&self, params: &T::Params<U>) -> T::Params<S> {
        self.task.cast_params(params)
    }
    fn task_fn<'a>(&'a self, _cfg: &f32) -> &'a T {
        &self.task
    }
    fn normalizer<S: Real>(&self, loss: S) -> S {
        self.task.normalizer(loss)
    }
    fn datasets(&self) -> Option<Datasets<T::Batch>> {
        self.task.datasets()
    }
    fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("single_task_{}", self.task.name()))
    }
}

/// A reference to a task is the same task.
impl<T: Task + ?Sized> Task for &T {
    type Params<S: Real> = T::Params<S>;
    type Batch = T::Batch;
    fn init<S: Real>(&self, key: Key) -> T::Params<S> {
        (**self).init(key)
    }
    fn loss<S: Real>(&self, params: &T::Params<S>, key: S::Key, batch: &T::Batch) -> S {
        (**self).loss(params, key, batch)
    }
    fn value_and_grad<S: Real>(
        &self,
        params: &T::Params<S>,
        key: S::Key,
        batch: &T::Batch,
    ) -> (S, T::Params<S>) {
        (**self).value_and_grad(params, key, batch)
    }
    fn value_and_jvp<S: Real>(
        &self,
        params: &T::Params<S>,
        tangent: &T::Params<S>,
        key: S::Key,
        batch: &T::Batch,
    ) -> (S, S) {
        (**self).value_and_jvp(params, tangent, key, batch)
    }
    fn cast_params<U: Real, S: Real>(&self, params: &T::Params<U>) -> T::Params<S> {
        (**self).cast_params(params)
    }
    fn normalizer<S: Real>(&self, loss: S) -> S {
        (**self).normalizer(loss)
    }
    fn datasets(&self) -> Option<Datasets<T::Batch>> {
        (**self).datasets()
    }
    fn name(&self) -> String {
        (**self).name()
    }
}

/// The last path segment of a type's name, generics stripped.
pub fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}
