//! Pretrained learned optimizers as ordinary [`Optimizer`]s (the JAX library's
//! `opt_from_checkpoint` and `prefab`): a θ file in, an optimizer for any [`Params`] tree
//! out, used exactly like [`Adam`](crate::optimizers::Adam).
//!
//! ```no_run
//! # use lopt_runtime::{Optimizer, Result};
//! # fn main() -> Result<()> {
//! # let (path, num_training_steps) = ("velo_theta.msgpack", 1000);
//! # let (params, grad, loss) = (vec![1.0f32; 10], vec![0.5f32; 10], 1.0f32);
//! let opt = lopt_runtime::prefab::velo(path, num_training_steps)?; // the released VeLO
//! let mut state = opt.init(params, None);
//! opt.update(&mut state, &grad, loss);
//! # Ok(())
//! # }
//! ```
//!
//! lopt downloads nothing: the released VeLO checkpoints are listed in the JAX library's
//! `research/general_lopt/pretrained_optimizers.py`; fetch one with your own tools and pass
//! its path. Any other learned optimizer whose θ converts from the library's state dict
//! ([`FlaxTheta`]) loads the same way with [`load`] (its configuration must be the one
//! the file was saved with), and a θ already in memory (meta-trained in lopt) with
//! [`Pretrained::new`].
//!
//! A file that cannot be read is [`Error::Io`]; one that is not flax msgpack, is
//! truncated, or does not hold the θ the configuration needs (a missing entry, a wrong
//! shape) is [`Error::ThetaFile`] with the path and the [`FlaxMsgpackError`].

use std::any::{Any, TypeId};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::learned_optimizers::flax_msgpack::{FlaxMsgpackError, FlaxTheta, FlaxValue};
use crate::learned_optimizers::{LearnedOptimizer, ThetaCache, Velo};
use crate::optimizers::Optimizer;
use crate::params::Params;
use crate::scalar::Real;

/// The released VeLO ([`Velo::released`]) with θ from a released checkpoint (or any
/// `HyperV2(lstm_hidden_size=512, param_inits=256)` θ saved by the JAX library), for
/// training runs of `num_training_steps` steps (VeLO's features use the fraction of
/// training done).
///
/// `Err`: [`Error::InvalidArgument`] when `num_training_steps` is 0, [`Error::Io`] when
/// the file cannot be read, [`Error::ThetaFile`] when it is not a VeLO θ of the released
/// configuration.
pub fn velo(path: impl AsRef<Path>, num_training_steps: usize) -> Result<Pretrained<Velo>> {
    velo_with(Velo::released(), path, num_training_steps)
}

/// [`velo`] with another VeLO configuration (e.g. `Velo::default()`, the library's
/// `HyperV2()`).
pub fn velo_with(
    config: Velo,
    path: impl AsRef<Path>,
    num_training_steps: usize,
) -> Result<Pretrained<Velo>> {
    config.validate()?;
    if num_training_steps == 0 {
        return Err(Error::InvalidArgument(
            "prefab::velo: num_training_steps must be positive".into(),
        ));
    }
    Ok(load_with(config, path)?.num_training_steps(num_training_steps))
}

/// The learned optimizer `L` in its default configuration with θ from a file the JAX
/// library saved (`prefab::load::<AdafacMlpLOpt>(path)`). Errors as [`load_with`].
pub fn load<L>(path: impl AsRef<Path>) -> Result<Pretrained<L>>
where
    L: LearnedOptimizer + Default,
    L::Theta<f32>: FlaxTheta<Config = L>,
{
    load_with(L::default(), path)
}

/// The learned optimizer `lopt` with θ from a file the JAX library saved (flax msgpack).
///
/// `Err`: [`Error::Io`] when the file cannot be read, [`Error::ThetaFile`] when it is not
/// flax msgpack, is truncated, or lacks an entry or has a shape `lopt`'s configuration
/// needs.
pub fn load_with<L>(lopt: L, path: impl AsRef<Path>) -> Result<Pretrained<L>>
where
    L: LearnedOptimizer,
    L::Theta<f32>: FlaxTheta<Config = L>,
{
    let path = path.as_ref();
    let value = FlaxValue::read_file(path)?;
    let theta = L::Theta::<f32>::from_flax(&lopt, &value).map_err(|error: FlaxMsgpackError| {
        Error::ThetaFile {
            path: path.display().to_string(),
            error,
        }
    })?;
    Ok(Pretrained::new(lopt, theta))
}

/// θ cast to one scalar type and what the updates compute once for it
/// ([`ThetaCache`]), shared by every state of that type.
type CastCache = Mutex<Vec<(TypeId, Arc<dyn Any + Send + Sync>)>>;

/// One entry of a [`CastCache`].
type Fixed<T> = (Arc<T>, Arc<ThetaCache>);

/// A learned optimizer with a fixed θ: an ordinary [`Optimizer`] for every [`Params`]
/// tree (any scalar: θ is converted once per scalar type and shared by the states).
pub struct Pretrained<L: LearnedOptimizer> {
    lopt: L,
    theta: Arc<L::Theta<f32>>,
    num_steps: Option<usize>,
    cast: CastCache,
}

impl<L: LearnedOptimizer> Pretrained<L> {
    /// `lopt` with θ `theta` (e.g. meta-trained in lopt).
    pub fn new(lopt: L, theta: L::Theta<f32>) -> Self {
        let theta = Arc::new(theta);
        let any: Arc<dyn Any + Send + Sync> =
            Arc::new((theta.clone(), Arc::new(ThetaCache::new())));
        Pretrained {
            lopt,
            theta,
            num_steps: None,
            cast: Mutex::new(vec![(TypeId::of::<f32>(), any)]),
        }
    }

    /// Uses `n` as the planned length of training when [`Optimizer::init`] is given
    /// `None` (a `Some` there wins).
    pub fn num_training_steps(mut self, n: usize) -> Self {
        self.num_steps = Some(n);
        self
    }

    /// The learned optimizer.
    pub fn lopt(&self) -> &L {
        &self.lopt
    }

    /// θ (e.g. to fine-tune it by meta-training: see `outer_trainers`).
    pub fn theta(&self) -> &L::Theta<f32> {
        &self.theta
    }

    /// θ in scalar `S`, converted on first use, and its cache.
    fn theta_in<S: Real>(&self) -> Fixed<L::Theta<S>> {
        let mut cache = self.cast.lock().unwrap_or_else(|e| e.into_inner());
        let id = TypeId::of::<S>();
        if let Some((_, a)) = cache.iter().find(|(t, _)| *t == id) {
            if let Some(t) = a.downcast_ref::<Fixed<L::Theta<S>>>() {
                return t.clone();
            }
        }
        let t: Arc<L::Theta<S>> = Arc::new(self.lopt.cast_theta(&*self.theta));
        let fixed = (t, Arc::new(ThetaCache::new()));
        cache.push((id, Arc::new(fixed.clone())));
        fixed
    }
}

/// The state of a [`Pretrained`] optimizer: the learned optimizer's state and the θ it
/// steps with.
pub struct PretrainedState<L: LearnedOptimizer, P: Params> {
    /// The learned optimizer's state (parameters, accumulators, iteration).
    pub inner: L::State<P>,
    theta: Arc<L::Theta<P::Scalar>>,
    cache: Arc<ThetaCache>,
}

impl<L: LearnedOptimizer, P: Params> Clone for PretrainedState<L, P> {
    fn clone(&self) -> Self {
        PretrainedState {
            inner: self.inner.clone(),
            theta: self.theta.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<L: LearnedOptimizer, P: Params> std::fmt::Debug for PretrainedState<L, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PretrainedState")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<L: LearnedOptimizer, P: Params> Optimizer<P> for Pretrained<L> {
    type State = PretrainedState<L, P>;

    /// # Panics
    /// For [`Velo`], when neither `num_steps` nor [`Pretrained::num_training_steps`] gives
    /// the planned length of training ([`velo`] always sets it).
    fn init(&self, params: P, num_steps: Option<usize>) -> Self::State {
        let (theta, cache) = self.theta_in::<P::Scalar>();
        let inner = self
            .lopt
            .init_state(&theta, params, num_steps.or(self.num_steps));
        PretrainedState {
            inner,
            theta,
            cache,
        }
    }
    fn update(&self, state: &mut Self::State, grad: &P, loss: P::Scalar) {
        let (theta, cache) = (&state.theta, &state.cache);
        self.lopt
            .update_fixed(theta, cache, &mut state.inner, grad, loss)
    }
    fn get_params<'a>(&self, state: &'a Self::State) -> &'a P {
        self.lopt.params(&state.inner)
    }
    fn set_params(&self, state: &mut Self::State, params: P) {
        self.lopt.set_params(&mut state.inner, params)
    }
    fn iteration(&self, state: &Self::State) -> usize {
        self.lopt.iteration(&state.inner)
    }
    fn name(&self) -> String {
        self.lopt.name()
    }
}
