//! Quadratic tasks and task families: the JAX library's `tasks/quadratics.py`.
//!
//! | JAX library | lopt | loss |
//! |---|---|---|
//! | `QuadraticTask(dim=10)` | [`QuadraticTask`] | `Σ p²` |
//! | `LogQuadraticTask` | [`LogQuadraticTask`] | `ln Σ p²` |
//! | `SumQuadraticTask` | [`SumQuadraticTask`] | `Σ (a + b)²` |
//! | `BatchQuadraticTask` | [`BatchQuadraticTask`] | `Σ p²` (its data is unused) |
//! | `NoisyMeanQuadraticTask(dim=2, noise_stdev=1)` | [`NoisyMeanQuadraticTask`] | `Σ (p − n)ᵀ H (p − n)` |
//! | `FixedDimQuadraticFamily(dim=10)` | [`FixedDimQuadraticFamily`] | `Σ (c − p)²` |
//! | `FixedDimQuadraticFamilyData(dim)` | [`FixedDimQuadraticFamilyData`] | `Σ (c − p)² + data` |
//! | `NoisyQuadraticFamily(dim, cov)` | [`NoisyQuadraticFamily`] | `Σ (s ⊙ (c − p))²`, noisy gradient |
//!
//! Every random draw is made in `f32` (as the JAX library does) and converted to the
//! scalar type asked for, so `init::<f64>` is exactly `init::<f32>` widened and an `f64`
//! gradient check checks the very function that trains in `f32`.
//!
//! The datasets (random noise) are built from explicit keys instead of numpy's global RNG
//! and are cached ([`cached_datasets`]), so every task of a kind shares one set of
//! streams, as the JAX library's class attributes and `dataset_lru_cache` do.
//!
//! ```
//! use lopt::prelude::*;
//! use lopt::tasks::quadratics::{FixedDimQuadraticFamily, QuadraticTask};
//!
//! let task = QuadraticTask::default();
//! let params = task.init::<f32>(Key::new(0));
//! let (loss, grad) = task.value_and_grad(&params, Key::new(1), &());
//! assert_eq!(grad.len(), 10);
//! assert!((loss - params.norm_squared()).abs() < 1e-4);
//!
//! let family = FixedDimQuadraticFamily::default();
//! let cfg = family.sample(Key::new(2));
//! let task = family.task_fn(&cfg);
//! let p = task.init::<f32>(Key::new(3));
//! assert!(task.loss(&p, Key::new(4), &()) >= 0.0);
//! ```

use crate::datasets::{cached_datasets, Datasets};
use crate::key::KeyOps;
use crate::{task, task_family, Key, Params, Real, Task, TaskFamily};
use nalgebra::{DMatrix, DVector, SMatrix};

/// `n` standard normals drawn in `f32` from `key`, as a vector of `S`.
fn normal_dvector<S: Real>(key: Key, n: usize) -> DVector<S> {
    DVector::from_iterator(n, key.normal_vec::<f32>(n).into_iter().map(S::from_f32))
}

/// `x` clipped to `[lo, hi]` with NaN kept (`jnp.clip`; `Real::max`/`min` may drop NaN).
fn clip<S: Real>(x: S, lo: f64, hi: f64) -> S {
    let (lo, hi) = (S::c(lo), S::c(hi));
    S::select(x.lt(lo), lo, S::select(x.gt(hi), hi, x))
}

// ----- QuadraticTask -----

/// `Σ p²` with `p ~ N(0, I)` of dimension `dim` (the JAX library's `QuadraticTask`,
/// default `dim = 10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuadraticTask {
    /// The number of parameters.
    pub dim: usize,
}

impl QuadraticTask {
    /// The task in dimension `dim`.
    pub fn new(dim: usize) -> Self {
        QuadraticTask { dim }
    }
}

impl Default for QuadraticTask {
    fn default() -> Self {
        QuadraticTask { dim: 10 }
    }
}

#[task]
impl Task for QuadraticTask {
    type Params<S: Real> = DVector<S>;
    type Batch = ();

    fn init<S: Real>(&self, key: Key) -> DVector<S> {
        normal_dvector(key, self.dim)
    }

    fn loss<S: Real>(&self, params: &DVector<S>, _key: S::Key, _batch: &()) -> S {
        sum(square(params))
    }
}

// ----- LogQuadraticTask -----

/// `ln Σ p²` with `p ~ N(0, I₁₀)` (the JAX library's `LogQuadraticTask`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogQuadraticTask;

impl LogQuadraticTask {
    /// The number of parameters.
    pub const DIM: usize = 10;
}

#[task]
impl Task for LogQuadraticTask {
    type Params<S: Real> = DVector<S>;
    type Batch = ();

    fn init<S: Real>(&self, key: Key) -> DVector<S> {
        normal_dvector(key, Self::DIM)
    }

    fn loss<S: Real>(&self, params: &DVector<S>, _key: S::Key, _batch: &()) -> S {
        ln(sum(square(params)))
    }
}

// ----- SumQuadraticTask -----

/// The parameters of [`SumQuadraticTask`] (the JAX library's `{"a": ..., "b": ...}`).
#[derive(Params, Debug, Clone, PartialEq)]
pub struct SumQuadraticParams<S: Real> {
    /// The first vector.
    pub a: DVector<S>,
    /// The second vector.
    pub b: DVector<S>,
}

/// `Σ (a + b)²` with `a, b ~ N(0, I₁₀)` (the JAX library's `SumQuadraticTask`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SumQuadraticTask;

impl SumQuadraticTask {
    /// The length of `a` and of `b`.
    pub const DIM: usize = 10;
}

#[task]
impl Task for SumQuadraticTask {
    type Params<S: Real> = SumQuadraticParams<S>;
    type Batch = ();

    /// `a` from the first half of `key.split()`, `b` from the second.
    fn init<S: Real>(&self, key: Key) -> SumQuadraticParams<S> {
        let (k1, k2) = key.split();
        SumQuadraticParams {
            a: normal_dvector(k1, Self::DIM),
            b: normal_dvector(k2, Self::DIM),
        }
    }

    fn loss<S: Real>(&self, params: &SumQuadraticParams<S>, _key: S::Key, _batch: &()) -> S {
        sum(square(params.a + params.b))
    }
}

// ----- BatchQuadraticTask -----

/// One batch of [`BatchQuadraticTask`]: a 4x2 matrix of standard normals.
pub type NoiseBatch = SMatrix<f32, 4, 2>;

/// Four infinite streams of 4x2 standard-normal matrices (the JAX library's
/// `batch_datasets`), cached: every call returns the same streams.
///
/// Split `s` (train, inner_valid, outer_valid, test) draws batch `i` from
/// `Key::new(BATCH_DATASETS_SEED).split_n(4)[s].fold_in(i)`.
pub fn batch_datasets() -> Datasets<NoiseBatch> {
    cached_datasets("lopt::tasks::quadratics::batch_datasets", || {
        let stream = |key: Key| {
            (0u64..).map(move |i| {
                let mut m = NoiseBatch::zeros();
                key.fold_in(i).fill_normal(m.as_mut_slice());
                m
            })
        };
        let k = Key::new(BATCH_DATASETS_SEED).split_n(4);
        Datasets::new(stream(k[0]), stream(k[1]), stream(k[2]), stream(k[3]))
    })
}

/// The seed of [`batch_datasets`].
pub const BATCH_DATASETS_SEED: u64 = 0x5eed_ba7c;

/// `Σ p²` with `p ~ N(0, I₁₀)`, and datasets of 4x2 noise batches that the loss ignores
/// (the JAX library's `BatchQuadraticTask`): a task with data whose value does not depend
/// on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchQuadraticTask;

impl BatchQuadraticTask {
    /// The number of parameters.
    pub const DIM: usize = 10;
}

#[task]
impl Task for BatchQuadraticTask {
    type Params<S: Real> = DVector<S>;
    type Batch = NoiseBatch;

    fn init<S: Real>(&self, key: Key) -> DVector<S> {
        normal_dvector(key, Self::DIM)
    }

    fn loss<S: Real>(&self, params: &DVector<S>, _key: S::Key, _batch: &NoiseBatch) -> S {
        sum(square(params))
    }

    fn datasets(&self) -> Option<Datasets<NoiseBatch>> {
        Some(batch_datasets())
    }
}

// ----- NoisyMeanQuadraticTask -----

/// A quadratic bowl whose center is noise redrawn at every evaluation (the JAX library's
/// `NoisyMeanQuadraticTask`, defaults `dim = 2`, `noise_stdev = 1`):
/// `L = Σ (p − n)ᵀ H (p − n)`.
///
/// - `H = A·Aᵀ` with `A ~ N(0, 1)` of shape `dim x dim`, drawn once from the fixed key
///   `Key::new(7)` (so every instance of the same dimension has the same `H`);
/// - `n = noise_stdev · N(0, I)`, drawn from `key.split().1` of the loss's key (a
///   stochastic loss: see [`NoisyMeanQuadraticTask::noise`]);
/// - `p ~ 10 · N(0, I)`, shape `(dim, 1)` (a column vector).
#[derive(Debug, Clone, PartialEq)]
pub struct NoisyMeanQuadraticTask {
    dim: usize,
    noise_stdev: f32,
    hessian: DMatrix<f32>,
}

impl NoisyMeanQuadraticTask {
    /// The seed of the key `A` is drawn from.
    pub const HESSIAN_SEED: u64 = 7;
    /// The standard deviation of the initial parameters.
    pub const INIT_SCALE: f32 = 10.0;

    /// The task in dimension `dim` with noise of standard deviation `noise_stdev`.
    pub fn new(dim: usize, noise_stdev: f32) -> Self {
        let a = Key::new(Self::HESSIAN_SEED).normal_matrix::<f32>(dim, dim);
        let hessian = &a * a.transpose();
        NoisyMeanQuadraticTask {
            dim,
            noise_stdev,
            hessian,
        }
    }
    /// The number of parameters.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The standard deviation of the noise.
    pub fn noise_stdev(&self) -> f32 {
        self.noise_stdev
    }
    /// `H = A·Aᵀ` (computed in `f32`).
    pub fn hessian(&self) -> &DMatrix<f32> {
        &self.hessian
    }
    /// The center `n` the loss uses under `key`: `noise_stdev · N(0, I)` drawn from
    /// `key.split().1`.
    pub fn noise<S: Real>(&self, key: S::Key) -> DVector<S> {
        let (_, k) = key.split();
        DVector::from_vec(k.normal_vec(self.dim)) * S::from_f32(self.noise_stdev)
    }
}

impl Default for NoisyMeanQuadraticTask {
    fn default() -> Self {
        NoisyMeanQuadraticTask::new(2, 1.0)
    }
}

#[task]
impl Task for NoisyMeanQuadraticTask {
    type Params<S: Real> = DVector<S>;
    type Batch = ();

    fn init<S: Real>(&self, key: Key) -> DVector<S> {
        let mut p = normal_dvector::<f32>(key, self.dim);
        p *= Self::INIT_SCALE;
        p.map(S::from_f32)
    }

    fn loss<S: Real>(&self, params: &DVector<S>, key: S::Key, _batch: &()) -> S {
        let noise = self.noise::<S>(key);
        let d = params - noise;
        sum(transpose(d) * self.hessian * d)
    }
}

// ----- FixedDimQuadraticFamily -----

/// Quadratics `Σ (c − p)²` with a sampled target `c ~ N(0, I)` and `p ~ N(0, I)`, no
/// data (the JAX library's `FixedDimQuadraticFamily`, default `dim = 10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedDimQuadraticFamily {
    /// The number of parameters.
    pub dim: usize,
}

impl FixedDimQuadraticFamily {
    /// The family in dimension `dim`.
    pub fn new(dim: usize) -> Self {
        FixedDimQuadraticFamily { dim }
    }
}

impl Default for FixedDimQuadraticFamily {
    fn default() -> Self {
        FixedDimQuadraticFamily { dim: 10 }
    }
}

#[task_family]
impl TaskFamily for FixedDimQuadraticFamily {
    type Cfg<S: Real> = DVector<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = ();

    /// The target `c ~ N(0, I)`.
    fn sample(&self, key: Key) -> DVector<f32> {
        normal_dvector(key, self.dim)
    }

    fn init<S: Real>(&self, _cfg: &DVector<S>, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(self.dim))
    }

    fn loss<S: Real>(&self, params: &DVector<S>, cfg: &DVector<S>, _key: S::Key, _batch: &()) -> S {
        sum(square(cfg - params))
    }
}

// ----- FixedDimQuadraticFamilyData -----

/// Four infinite streams of `f32` standard normals, one scalar per batch (the JAX
/// library's `noise_datasets`), cached: every call returns the same streams.
///
/// Split `s` draws batch `i` from
/// `Key::new(NOISE_DATASETS_SEED).split_n(4)[s].fold_in(i)`.
pub fn noise_datasets() -> Datasets<f32> {
    cached_datasets("lopt::tasks::quadratics::noise_datasets", || {
        let stream = |key: Key| (0u64..).map(move |i| key.fold_in(i).normal::<f32>());
        let k = Key::new(NOISE_DATASETS_SEED).split_n(4);
        Datasets::new(stream(k[0]), stream(k[1]), stream(k[2]), stream(k[3]))
    })
}

/// The seed of [`noise_datasets`].
pub const NOISE_DATASETS_SEED: u64 = 0x5eed_0015;

/// The auxiliary metrics of [`FixedDimQuadraticFamilyData`] (the JAX library's
/// `loss_and_aux` dictionary `{"l2", "l1"}`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuadraticAux<S> {
    /// `mean(p²)`.
    pub l2: S,
    /// `mean(|p|)`.
    pub l1: S,
}

/// Quadratics with a sampled target and a scalar of data added to the loss (the JAX
/// library's `FixedDimQuadraticFamilyData`): `L = Σ (c − p)² + x` where `x ~ N(0, 1)` is
/// the batch, drawn from the shared [`noise_datasets`]; `c, p ~ N(0, I)`.
///
/// Its normalizer clips the loss to `[0, 1000]` (NaN stays NaN, like `jnp.clip`), and
/// [`FixedDimQuadraticFamilyData::aux`] gives the metrics `l2 = mean(p²)`,
/// `l1 = mean(|p|)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedDimQuadraticFamilyData {
    /// The number of parameters.
    pub dim: usize,
}

impl FixedDimQuadraticFamilyData {
    /// The family in dimension `dim`.
    pub fn new(dim: usize) -> Self {
        FixedDimQuadraticFamilyData { dim }
    }

    /// The auxiliary metrics of `params` (NaN for zero parameters, as `jnp.mean` of an
    /// empty array).
    pub fn aux<S: Real>(&self, params: &DVector<S>) -> QuadraticAux<S> {
        let n = S::c(params.len() as f64);
        let (mut l2, mut l1) = (S::c(0.0), S::c(0.0));
        for &x in params.iter() {
            l2 += x * x;
            l1 += x.abs();
        }
        QuadraticAux {
            l2: l2 / n,
            l1: l1 / n,
        }
    }

    /// The loss and the auxiliary metrics (the JAX library's `loss_and_aux`).
    pub fn loss_and_aux<S: Real>(
        &self,
        params: &DVector<S>,
        cfg: &DVector<S>,
        key: S::Key,
        batch: &f32,
    ) -> (S, QuadraticAux<S>) {
        (self.loss(params, cfg, key, batch), self.aux(params))
    }
}

#[task_family]
impl TaskFamily for FixedDimQuadraticFamilyData {
    type Cfg<S: Real> = DVector<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = f32;

    /// The target `c ~ N(0, I)`.
    fn sample(&self, key: Key) -> DVector<f32> {
        normal_dvector(key, self.dim)
    }

    fn init<S: Real>(&self, _cfg: &DVector<S>, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(self.dim))
    }

    fn loss<S: Real>(&self, params: &DVector<S>, cfg: &DVector<S>, _key: S::Key, batch: &f32) -> S {
        sum(square(cfg - params)) + batch
    }

    /// `clip(loss, 0, 1000)`, NaN kept.
    fn normalizer<S: Real>(&self, loss: S) -> S {
        clip(loss, 0.0, 1000.0)
    }

    fn datasets(&self) -> Option<Datasets<f32>> {
        Some(noise_datasets())
    }
}

// ----- NoisyQuadraticFamily -----

/// A sampled configuration of [`NoisyQuadraticFamily`] (the JAX library's
/// `(center, scale)` tuple).
#[derive(Params, Debug, Clone, PartialEq)]
pub struct NoisyQuadraticCfg<S: Real> {
    /// The minimum of the quadratic, `~ N(0, I)`.
    pub center: DVector<S>,
    /// The per-coordinate scale, `~ 25 · U[0, 1)`.
    pub scale: DVector<S>,
}

/// Quadratics with a random center and scale whose gradients are noisy (the JAX
/// library's `NoisyQuadraticFamily`):
/// `L = Σ [(scale ⊙ (center − p))² + (w ⊙ p − stop_gradient(w ⊙ p))]` with
/// `w = cov · z`, `z ~ N(0, I)` drawn from the loss's key.
///
/// The second term is zero but its gradient is `w`: the loss value is the plain scaled
/// quadratic and the gradient carries Gaussian noise of standard deviation `|cov|`.
/// Sampling: `k, sub = key.split()`, `center ~ N(0, I)` from `k`,
/// `scale = 25 · U[0, 1)` from `sub`; `p ~ N(0, I)`.
///
/// The noise `z` is drawn in `f32` from the single key the loss receives, so in a
/// batched run all instances of a lane group given the same key see the same noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoisyQuadraticFamily {
    /// The number of parameters.
    pub dim: usize,
    /// The standard deviation of the gradient noise.
    pub cov: f32,
}

impl NoisyQuadraticFamily {
    /// The upper end of the sampled scales (`scale_constant` in the JAX library).
    pub const SCALE_CONSTANT: f32 = 25.0;

    /// The family in dimension `dim` with gradient noise `cov`.
    pub fn new(dim: usize, cov: f32) -> Self {
        NoisyQuadraticFamily { dim, cov }
    }

    /// The gradient noise `w = cov · z`, `z ~ N(0, I)` from `key`: the loss's gradient
    /// under `key` is the noiseless gradient plus `w`.
    pub fn gradient_noise<S: Real>(&self, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(self.dim)) * S::from_f32(self.cov)
    }
}

#[task_family]
impl TaskFamily for NoisyQuadraticFamily {
    type Cfg<S: Real> = NoisyQuadraticCfg<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = ();

    fn sample(&self, key: Key) -> NoisyQuadraticCfg<f32> {
        let (k, sub) = key.split();
        let mut scale = DVector::<f32>::zeros(self.dim);
        sub.fill_uniform(scale.as_mut_slice());
        scale *= Self::SCALE_CONSTANT;
        NoisyQuadraticCfg {
            center: normal_dvector(k, self.dim),
            scale,
        }
    }

    fn init<S: Real>(&self, _cfg: &NoisyQuadraticCfg<S>, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(self.dim))
    }

    fn loss<S: Real>(
        &self,
        params: &DVector<S>,
        cfg: &NoisyQuadraticCfg<S>,
        key: S::Key,
        _batch: &(),
    ) -> S {
        let w = self.gradient_noise::<S>(key);
        let noise = component_mul(w, params);
        // Adds noise to the gradient only: the value of this term is exactly zero.
        let grad_noise = noise - stop_gradient(noise);
        sum(square(component_mul(cfg.scale, cfg.center - params)) + grad_noise)
    }
}
