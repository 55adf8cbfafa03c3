//! Marker types naming each primitive; some carry non-differentiable arguments.
#![allow(missing_docs)]

use std::any::Any;
use std::borrow::Cow;
use std::cell::Cell;

macro_rules! markers {
    ($($(#[$m:meta])* $name:ident),* $(,)?) => {
        $( $(#[$m])* #[derive(Debug, Clone, Copy, Default)] pub struct $name; )*
    };
}

/// The markers of the elementwise primitives (`Exp`, `Tanh`, ..., `Add`, `Max`, ...),
/// declared with their rules in `crate::primitives::declared`.
// Re-exported (a second path, not an import: scripts/import_cycles.py): generated code
// names every op `ad::op::X`, wherever it is declared with its rules.
pub use crate::primitives::declared::markers::*;

// Ops that carry data (geometry, ids, an epsilon), built by generated code as
// `op::X::new(&data)`; their rules live beside them.
pub use super::attention::CausalSelfAttention;
pub use super::conv::{AvgPool2d, GlobalMeanPool, Im2col, MaxPool2d};
pub use super::gather::{Embed, TakeAlong};
pub use super::norm::{LayerNorm, RmsNorm, ScaleColumns};
pub use super::selection::Clip;
pub use super::slice::{Columns, HConcat, Reshape, Rows, VConcat};

markers!(
    /// Inner product of two vectors or matrices (sum of elementwise products).
    Dot,
    /// Sum of all elements.
    Sum,
    /// Mean of all elements.
    Mean,
    /// Sum of squares.
    NormSquared,
    Transpose,
    /// Row-wise log-softmax of a matrix (each row a set of logits), or of a vector.
    LogSoftmax,
    /// `ln(sum(exp(x)))` over all elements, with the max subtracted.
    LogSumExp,
);

/// `x.powi(n)`.
#[derive(Debug, Clone, Copy)]
pub struct Powi(pub i32);

/// `x[i]` on a vector (or a matrix in column-major order).
#[derive(Debug, Clone, Copy)]
pub struct Index(pub usize);

/// `x[(i, j)]` on a matrix.
#[derive(Debug, Clone, Copy)]
pub struct Index2(pub usize, pub usize);

/// `gelu_tanh` of a matrix that keeps its derivative: what `#[task]` makes of
/// `gelu_tanh(linear(x, w, b))` (the MLP's activation). On `f32`, `eval` computes
/// `gelu_tanh'(x)` in the pass that computes the value (the same `exp`) and keeps it in
/// the op; the first `vjp` for the same input and output multiplies by it instead of
/// computing the `exp` again. Every other call, scalar type or input is
/// [`GeluTanh`]'s rule; the numbers are `GeluTanh`'s bit for bit either way. A clone has
/// nothing kept.
#[derive(Default)]
pub struct GeluTanhKeep(pub(crate) Cell<Option<Box<dyn Any + Send>>>);

impl GeluTanhKeep {
    /// The op with nothing kept yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Clone for GeluTanhKeep {
    /// Nothing kept.
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for GeluTanhKeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GeluTanhKeep")
    }
}

/// A cross-entropy op: the labels (one class index per example), and a slot (the second
/// field) where `eval` keeps what the derivative that follows needs. A clone has the same
/// labels and nothing kept.
macro_rules! cross_entropy_op {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name<'a>(pub Cow<'a, [i32]>, pub(crate) Cell<Option<Box<dyn Any + Send>>>);

        impl<'a> $name<'a> {
            /// The op for `labels` (one class index per example), with nothing kept yet.
            pub fn new(labels: &'a [i32]) -> Self {
                $name(Cow::Borrowed(labels), Cell::new(None))
            }
            /// The op for labels borrowed or owned (what `#[task]` builds from any
            /// [`Labels`](crate::ad::Labels)).
            pub fn from_labels(labels: Cow<'a, [i32]>) -> Self {
                $name(labels, Cell::new(None))
            }
        }

        impl Clone for $name<'_> {
            /// The same labels, with nothing kept.
            fn clone(&self) -> Self {
                Self::from_labels(self.0.clone())
            }
        }

        impl std::fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.0).finish()
            }
        }
    };
}

cross_entropy_op!(
    /// Per-row softmax cross-entropy of a logits matrix (rows = examples) against integer
    /// labels; the output is the vector of per-example losses.
    ///
    /// `eval` keeps the softmax it computes in the op, and the first `jvp` or `vjp` for the
    /// same logits and losses takes it instead of exponentiating again; any other call
    /// recomputes it.
    SoftmaxCrossEntropy
);

cross_entropy_op!(
    /// `mean(softmax_cross_entropy(logits, labels))` in one rule (fused by `#[task]`): the
    /// mean loss over the examples (rows), a scalar.
    ///
    /// `eval` computes the gradient `(softmax − onehot) / rows` in the sweeps that compute
    /// the loss and keeps it in the op; the first `jvp` or `vjp` for the same logits and
    /// loss takes it, any other call recomputes it.
    MeanSoftmaxCrossEntropy
);
