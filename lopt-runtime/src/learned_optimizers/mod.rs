//! Learned optimizers (the JAX library's `learned_optimizers`): an optimizer whose update
//! rule has meta-parameters θ that meta-training fits.
//!
//! A [`LearnedOptimizer`] makes θ ([`LearnedOptimizer::init`]) and turns a θ into an
//! ordinary [`Optimizer`](crate::Optimizer) ([`LearnedOptimizer::opt_fn`]), so an inner training loop is the
//! same code whether its optimizer is hand-designed or learned. θ is a parameter tree
//! generic over the scalar like everything else: with `S = Lanes<N>` each lane holds its
//! own θ (an evolution-strategies population, one perturbation per lane) and trains its
//! own task instance.

mod mlp_lopt;

pub use mlp_lopt::{MlpLOpt, MlpLOptOptimizer, MlpLOptState, MlpLOptTheta};

use crate::key::Key;
use crate::params::{Params, Rebind};
use crate::scalar::Real;

/// An optimizer with meta-parameters θ (`learned_optimizers.base.LearnedOptimizer`).
///
/// The optimizer of a θ implements [`crate::Optimizer`].
pub trait LearnedOptimizer: Send + Sync {
    /// The meta-parameters in scalar `S`.
    type Theta<S: Real>: Params<Scalar = S> + Rebind;
    /// The optimizer a θ defines (it borrows θ).
    type Opt<'a, S: Real>
    where
        Self: 'a;

    /// Initial meta-parameters.
    fn init(&self, key: Key) -> Self::Theta<f32>;
    /// The optimizer θ defines (`opt_fn(theta)`); it implements [`Optimizer`] for every
    /// parameter tree of scalar `S` ([`crate::Optimizer`]).
    fn opt_fn<'a, S: Real>(&'a self, theta: &'a Self::Theta<S>) -> Self::Opt<'a, S>;
    /// A short name.
    fn name(&self) -> String;
}
