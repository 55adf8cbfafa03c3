//! Tasks and task families (the JAX library's `tasks.base`).

use crate::datasets::Datasets;
use crate::key::Key;
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
    fn loss<S: Real>(&self, params: &Self::Params<S>, key: Key, batch: &Self::Batch) -> S;

    /// The loss and its gradient with respect to `params` (reverse mode).
    fn value_and_grad<S: Real>(
        &self,
        params: &Self::Params<S>,
        key: Key,
        batch: &Self::Batch,
    ) -> (S, Self::Params<S>);

    /// The loss and its directional derivative along `tangent` (forward mode, a JVP).
    fn value_and_jvp<S: Real>(
        &self,
        params: &Self::Params<S>,
        tangent: &Self::Params<S>,
        key: Key,
        batch: &Self::Batch,
    ) -> (S, S);

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
pub trait TaskFamily: Send + Sync {
    /// A sampled configuration.
    type Cfg: Clone + Send + Sync + std::fmt::Debug + 'static;
    /// The task type built from a configuration.
    type Task: Task;

    /// Draws a configuration.
    fn sample(&self, key: Key) -> Self::Cfg;
    /// Builds the task a configuration names.
    fn task_fn(&self, cfg: &Self::Cfg) -> Self::Task;
    /// Draws a configuration and builds its task.
    fn sample_task(&self, key: Key) -> Self::Task {
        self.task_fn(&self.sample(key))
    }
    /// The datasets shared by every task of the family, if any.
    fn datasets(&self) -> Option<Datasets<<Self::Task as Task>::Batch>> {
        None
    }
    /// A short name (the type name by default).
    fn name(&self) -> String {
        short_type_name::<Self>()
    }
}

/// The family of exactly one task (the JAX library's `single_task_to_family`): `sample`
/// returns the dummy config `0` and `task_fn` returns the same task.
#[derive(Debug, Clone)]
pub struct SingleTaskFamily<T> {
    task: T,
    name: Option<String>,
}

/// Wraps one task as a family whose configuration is the dummy value `0`.
pub fn single_task_to_family<T: Task + Clone>(task: T) -> SingleTaskFamily<T> {
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

impl<T: Task + Clone> TaskFamily for SingleTaskFamily<T> {
    type Cfg = u32;
    type Task = T;
    fn sample(&self, _key: Key) -> u32 {
        0
    }
    fn task_fn(&self, _cfg: &u32) -> T {
        self.task.clone()
    }
    fn datasets(&self) -> Option<Datasets<T::Batch>> {
        self.task.datasets()
    }
    fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| format!("single_task_{}", self.task.name()))
    }
}

/// The last path segment of a type's name, generics stripped.
pub fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}
