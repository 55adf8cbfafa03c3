//! Learned optimizers (the JAX library's `learned_optimizers`): an optimizer whose update
//! rule has meta-parameters θ that meta-training fits.
//!
//! A [`LearnedOptimizer`] makes θ ([`LearnedOptimizer::init`]) and turns a θ into an
//! ordinary [`Optimizer`] ([`LearnedOptimizer::opt_fn`]), so an inner training loop is the
//! same code whether its optimizer is hand-designed or learned. θ is a parameter tree
//! generic over the scalar like everything else: with `S = Lanes<N>` each lane holds its
//! own θ (an evolution-strategies population, one perturbation per lane) and trains its
//! own task instance.

mod adafac_mlp_lopt;
pub mod flax_msgpack;
mod learnable_adam;
mod learnable_sgd;
mod learnable_sgdm;
mod mlp_lopt;
mod nn_adam;
mod parts;
mod rnn_mlp_lopt;
mod velo;

pub use adafac_mlp_lopt::{AdafacMlpLOpt, AdafacMlpLOptState, AdafacMlpLOptTheta};
pub use learnable_adam::LearnableAdam;
pub use learnable_sgd::{LearnableSgd, LearnableSgdState};
pub use learnable_sgdm::{LearnableSgdm, LearnableSgdmState};
pub use mlp_lopt::{MlpLOpt, MlpLOptState, MlpLOptTheta};
pub use nn_adam::{NnAdam, NnAdamState, NnAdamTheta, NN_ADAM_FEATURES};
pub use rnn_mlp_lopt::{LossNormalizerState, RnnMlpLOpt, RnnMlpLOptState, RnnMlpLOptTheta};
pub use velo::{Linear, Velo, VeloState, VeloTheta};

use std::any::Any;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::optimizers::Optimizer;
use crate::params::Params;
use crate::scalar::Real;

/// An optimizer with meta-parameters θ (`learned_optimizers.base.LearnedOptimizer`).
///
/// Implementors give the state and the update as functions of θ; [`LearnedOptimizer::opt_fn`]
/// wraps a θ into an [`Optimizer`] for code that wants one (the JAX library's
/// `opt_fn(theta)`), while meta-training calls the methods directly, so that it can name
/// the state type.
pub trait LearnedOptimizer: Send + Sync + Sized {
    /// The meta-parameters in scalar `S`.
    type Theta<S: Real>: Params<Scalar = S>;
    /// The inner optimizer's state for parameters `P`. It is a parameter tree itself, so
    /// that one lane of a batched state can be replaced (a task that restarts).
    type State<P: Params>: Params<Scalar = P::Scalar>;

    /// Initial meta-parameters.
    fn init(&self, key: Key) -> Self::Theta<f32>;
    /// θ with every element converted (lane 0 of a packet; see [`Rebind`](crate::params::Rebind)).
    fn cast_theta<T: Real, S: Real>(&self, theta: &Self::Theta<T>) -> Self::Theta<S>;
    /// A fresh inner state at `params`.
    fn init_state<P: Params>(
        &self,
        theta: &Self::Theta<P::Scalar>,
        params: P,
        num_steps: Option<usize>,
    ) -> Self::State<P>;
    /// One inner step given the gradient and the loss at the current parameters.
    fn update<P: Params>(
        &self,
        theta: &Self::Theta<P::Scalar>,
        state: &mut Self::State<P>,
        grad: &P,
        loss: P::Scalar,
    );
    /// The current parameters of a state.
    fn params<'s, P: Params>(&self, state: &'s Self::State<P>) -> &'s P;
    /// Replaces the current parameters of a state.
    fn set_params<P: Params>(&self, state: &mut Self::State<P>, params: P);
    /// Updates applied so far.
    fn iteration<P: Params>(&self, state: &Self::State<P>) -> usize;
    /// A short name.
    fn name(&self) -> String;
    /// The name and every setting that changes what θ means (hidden sizes, feature
    /// choices, scales): a checkpoint refuses to resume into a different one. Defaults to
    /// [`name`](Self::name).
    fn config(&self) -> String {
        self.name()
    }
    /// Sets the count of updates applied (a resumed checkpoint's). The default accepts
    /// only the count the state already has: override it where the state carries the
    /// count outside its leaves, so such a state can be checkpointed.
    fn set_iteration<P: Params>(&self, state: &mut Self::State<P>, iteration: usize) -> Result<()> {
        if self.iteration(state) == iteration {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "{}: cannot restore an iteration count of {iteration} (implement \
                 LearnedOptimizer::set_iteration to checkpoint its state)",
                self.name()
            )))
        }
    }

    /// [`update`](Self::update) for a θ that stays the same in every call given `cache`
    /// (one cache per θ; [`opt_fn`](Self::opt_fn) and
    /// [`prefab::Pretrained`](crate::prefab::Pretrained) keep one): what depends on θ
    /// alone may be computed on the first call and kept there. Bit for bit the result of
    /// `update`, which the default calls.
    fn update_fixed<P: Params>(
        &self,
        theta: &Self::Theta<P::Scalar>,
        cache: &ThetaCache,
        state: &mut Self::State<P>,
        grad: &P,
        loss: P::Scalar,
    ) {
        let _ = cache;
        self.update(theta, state, grad, loss)
    }

    /// The optimizer θ defines (`opt_fn(theta)`).
    fn opt_fn<'a, S: Real>(&'a self, theta: &'a Self::Theta<S>) -> LOptOptimizer<'a, Self, S> {
        LOptOptimizer {
            lopt: self,
            theta,
            cache: ThetaCache::new(),
        }
    }
}

/// What a learned optimizer computes once for a fixed θ
/// ([`LearnedOptimizer::update_fixed`]; VeLO: the LSTM's gates from its initial state,
/// which the released configuration never advances): empty until the first update.
#[derive(Default)]
pub struct ThetaCache(OnceLock<Box<dyn Any + Send + Sync>>);

impl ThetaCache {
    /// An empty cache.
    pub fn new() -> Self {
        ThetaCache(OnceLock::new())
    }

    /// The value kept, made by `make` on the first call; `None` when the cache holds a
    /// value of another type (it was used with another scalar).
    pub fn get_or_init<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Option<&T> {
        self.0.get_or_init(|| Box::new(make())).downcast_ref()
    }
}

impl std::fmt::Debug for ThetaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ThetaCache")
            .field(&if self.0.get().is_some() {
                "filled"
            } else {
                "empty"
            })
            .finish()
    }
}

/// A learned optimizer with its θ: an ordinary [`Optimizer`] ([`LearnedOptimizer::opt_fn`]).
pub struct LOptOptimizer<'a, L: LearnedOptimizer, S: Real> {
    lopt: &'a L,
    theta: &'a L::Theta<S>,
    cache: ThetaCache,
}

impl<L: LearnedOptimizer, S: Real, P: Params<Scalar = S>> Optimizer<P> for LOptOptimizer<'_, L, S> {
    type State = L::State<P>;
    fn init(&self, params: P, num_steps: Option<usize>) -> L::State<P> {
        self.lopt.init_state(self.theta, params, num_steps)
    }
    fn update(&self, state: &mut L::State<P>, grad: &P, loss: S) {
        self.lopt
            .update_fixed(self.theta, &self.cache, state, grad, loss)
    }
    fn get_params<'s>(&self, state: &'s L::State<P>) -> &'s P {
        self.lopt.params(state)
    }
    fn set_params(&self, state: &mut L::State<P>, params: P) {
        self.lopt.set_params(state, params)
    }
    fn iteration(&self, state: &L::State<P>) -> usize {
        self.lopt.iteration(state)
    }
    fn name(&self) -> String {
        self.lopt.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::DMatrix;

    /// Three updates of MlpLOpt on a 300 × 250 matrix (75,000 elements, past
    /// `parts::par_worthy`: its network's blocks run on the pool) on `threads` threads;
    /// the parameters' bits.
    fn three_updates(threads: usize) -> Vec<u32> {
        let lopt = MlpLOpt::default();
        crate::on_threads(threads, || {
            let theta = lopt.init(Key::new(1));
            let p = DMatrix::<f32>::from_fn(300, 250, |i, j| ((i * 250 + j) as f32 * 0.37).sin());
            let mut state = lopt.init_state(&theta, p.clone(), Some(100));
            for t in 0..3 {
                let g = p.map(|x| x * (0.1 + t as f32) + 0.01 * (x * 7.0).cos());
                lopt.update(&theta, &mut state, &g, 1.5 - 0.1 * t as f32);
            }
            lopt.params(&state).iter().map(|x| x.to_bits()).collect()
        })
    }

    /// MlpLOpt spreads a large tensor's blocks over the pool: the same bits on one thread
    /// (all blocks in order) and on three. Catches (tried): a block reading its inputs
    /// from the wrong rows (`start = b`: 74,915 of 75,000 elements differ).
    #[test]
    fn mlp_lopt_is_the_same_on_one_and_three_threads() {
        let (one, three) = (three_updates(1), three_updates(3));
        let moved = one.iter().zip(&three).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 0, "{moved} of {} elements differ", one.len());
    }

    /// Three updates of NnAdam on a 300 × 250 matrix (75,000 elements: its blocks run
    /// on the pool) on `threads` threads; the bits of the parameters, the moments and
    /// the LSTM state (which reads the tensor's statistics).
    fn nn_adam_updates(threads: usize) -> Vec<u32> {
        let lopt = NnAdam::default();
        crate::on_threads(threads, || {
            let mut theta = lopt.init(Key::new(1));
            // A non-zero read-out, so that the statistics move the hyperparameters.
            theta.out_w = Key::new(2).normal_vec(theta.out_w.len());
            let p = DMatrix::<f32>::from_fn(300, 250, |i, j| ((i * 250 + j) as f32 * 0.37).sin());
            let mut state = lopt.init_state(&theta, p.clone(), None);
            for t in 0..3 {
                let g = p.map(|x| x * (0.1 + t as f32) + 0.01 * (x * 7.0).cos());
                lopt.update(&theta, &mut state, &g, 1.5);
            }
            let s = &state;
            s.params
                .iter()
                .chain(s.m.iter())
                .chain(s.rms.iter())
                .chain(&s.hidden)
                .chain(&s.per_layer)
                .map(|x| x.to_bits())
                .collect()
        })
    }

    /// NnAdam spreads a large tensor's blocks over the pool and sums their statistics in
    /// block order: the same bits on one thread and on three. Catches (tried): the
    /// pool's blocks summed in reverse order (`blocks.reverse()` after the parallel
    /// collect: the LSTM state and hyperparameters differ), the pool's blocks of the
    /// gradient paired with the next block of the parameters (`.skip(1)`: fails).
    #[test]
    fn nn_adam_is_the_same_on_one_and_three_threads() {
        let (one, three) = (nn_adam_updates(1), nn_adam_updates(3));
        let moved = one.iter().zip(&three).filter(|(a, b)| a != b).count();
        assert_eq!(moved, 0, "{moved} of {} values differ", one.len());
    }
}
