//! The optimizer interface (the JAX library's `optimizers.base.Optimizer`).

use crate::params::Params;

/// A hand-designed or learned optimizer over parameter trees of type `P`.
///
/// Like the JAX library's optimizers, an optimizer is stateless configuration; its state
/// (parameters, moments, iteration) lives in [`Optimizer::State`]. Updates are in place.
pub trait Optimizer<P: Params>: Send + Sync {
    /// The optimizer state, holding the current parameters.
    type State: Clone + Send + Sync + std::fmt::Debug;

    /// A fresh state at `params`. `num_steps` is the planned length of training (most
    /// optimizers ignore it).
    fn init(&self, params: P, num_steps: Option<usize>) -> Self::State;

    /// One step given the gradient at the current parameters and the loss there.
    fn update(&self, state: &mut Self::State, grad: &P, loss: P::Scalar);

    /// The current parameters.
    fn get_params<'a>(&self, state: &'a Self::State) -> &'a P;

    /// Replaces the current parameters.
    fn set_params(&self, state: &mut Self::State, params: P);

    /// The number of updates applied so far.
    fn iteration(&self, state: &Self::State) -> usize;

    /// A short name.
    fn name(&self) -> String {
        crate::task::short_type_name::<Self>()
    }
}
