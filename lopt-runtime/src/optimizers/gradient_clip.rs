//! Elementwise gradient clipping in front of another optimizer.

use serde::{Deserialize, Serialize};

use super::{check_leaf_lengths, py_float, Optimizer};
use crate::params::Params;
use crate::scalar::Real;

/// Clips every gradient element to `[−grad_clip, grad_clip]` and hands the clipped
/// gradient to `inner` (the JAX library's `GradientClipOptimizer`):
///
/// `g ← clip(g, −c, c)`, then `inner.update(state, g, loss)`.
///
/// NaN gradients stay NaN so the caller's non-finite checks still see them. The loss is
/// passed through unchanged.
///
/// ```
/// use lopt_runtime::{GradientClip, Optimizer, Sgd};
///
/// let opt = GradientClip::new(Sgd::new(1.0));
/// let mut state = opt.init(vec![0.0f64, 0.0, 0.0], None);
/// opt.update(&mut state, &vec![10.0, -0.5, -7.0], 0.0);
/// assert_eq!(opt.get_params(&state), &vec![-3.0, 0.5, 3.0]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradientClip<O> {
    /// The optimizer that receives the clipped gradient.
    pub inner: O,
    /// Clip bound `c` (default 3.0).
    pub grad_clip: f64,
}

impl<O> GradientClip<O> {
    /// Clips gradients to the default bound 3.0 before `inner`.
    pub fn new(inner: O) -> Self {
        GradientClip {
            inner,
            grad_clip: 3.0,
        }
    }

    /// Clips gradients to `[−grad_clip, grad_clip]` before `inner`.
    ///
    /// # Panics
    /// When `grad_clip` is NaN or not positive ([`GradientClip::try_with_clip`] returns
    /// the error).
    #[track_caller]
    pub fn with_clip(inner: O, grad_clip: f64) -> Self {
        super::or_panic(Self::try_with_clip(inner, grad_clip))
    }

    /// [`GradientClip::with_clip`], or [`Error::InvalidArgument`](crate::Error::InvalidArgument)
    /// when `grad_clip` is NaN or not positive (an infinite bound clips nothing).
    pub fn try_with_clip(inner: O, grad_clip: f64) -> crate::error::Result<Self> {
        if grad_clip.is_nan() || grad_clip <= 0.0 {
            return Err(crate::error::Error::InvalidArgument(format!(
                "GradientClip: the bound must be > 0 (got {grad_clip})"
            )));
        }
        Ok(GradientClip { inner, grad_clip })
    }
}

/// The library default: the bound 3.0 in front of the inner optimizer's defaults.
impl<O: Default> Default for GradientClip<O> {
    fn default() -> Self {
        GradientClip::new(O::default())
    }
}

/// State of [`GradientClip`]: the inner optimizer's state and a buffer for the clipped
/// gradient, so a step allocates nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradientClipState<St, P> {
    /// The inner optimizer's state (holds the parameters and iteration).
    pub inner: St,
    /// The last clipped gradient.
    pub clipped_grad: P,
}

impl<P: Params, O: Optimizer<P>> Optimizer<P> for GradientClip<O> {
    type State = GradientClipState<O::State, P>;

    fn init(&self, params: P, num_steps: Option<usize>) -> Self::State {
        let clipped_grad = params.zeros_like();
        GradientClipState {
            inner: self.inner.init(params, num_steps),
            clipped_grad,
        }
    }

    fn update(&self, state: &mut Self::State, grad: &P, loss: P::Scalar) {
        if check_leaf_lengths("", &state.clipped_grad, grad).is_err() {
            // Params were replaced by a tree of another shape; the inner update checks `grad`.
            state.clipped_grad = grad.zeros_like();
        }
        let (hi, lo) = (
            P::Scalar::from_f64(self.grad_clip),
            P::Scalar::from_f64(-self.grad_clip),
        );
        for i in 0..grad.num_leaves() {
            for (c, &g) in state.clipped_grad.leaf_mut(i).iter_mut().zip(grad.leaf(i)) {
                // Comparisons with NaN are false, so NaN passes through.
                *c = P::Scalar::select(g.gt(hi), hi, P::Scalar::select(g.lt(lo), lo, g));
            }
        }
        self.inner
            .update(&mut state.inner, &state.clipped_grad, loss);
    }

    fn get_params<'a>(&self, state: &'a Self::State) -> &'a P {
        self.inner.get_params(&state.inner)
    }

    fn set_params(&self, state: &mut Self::State, params: P) {
        self.inner.set_params(&mut state.inner, params);
    }

    fn iteration(&self, state: &Self::State) -> usize {
        self.inner.iteration(&state.inner)
    }

    /// `GradientClip{c}_{inner name}` (the JAX library leaves this one unnamed).
    fn name(&self) -> String {
        format!(
            "GradientClip{}_{}",
            py_float(self.grad_clip),
            self.inner.name()
        )
    }
}
