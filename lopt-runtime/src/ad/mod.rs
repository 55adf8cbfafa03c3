//! Derivative rules: the runtime half of `#[task]`.
//!
//! The macro lowers a loss to single-assignment form and, for each primitive, emits calls
//! to the rules here, resolved by the argument types. The macro knows the chain rule;
//! these traits know each primitive's derivative; rustc checks the types.
//!
//! Conventions the generated code relies on:
//! - every differentiable value (scalar, vector, matrix, params struct) is a
//!   [`Params`]; its adjoint and its tangent have the same type;
//! - `jvp` returns the tangent of the output; an operand whose tangent is `None` is
//!   constant (data, literals);
//! - `vjp` returns the cotangents of the operands that were asked for (`need_*`); it
//!   takes the output cotangent by value because the generated code owns it and never
//!   reads it again, so elementwise rules write the operand's cotangent into its buffer
//!   instead of allocating one;
//! - rules receive the primal output `out` so they need not recompute it
//!   (`exp`, `tanh`, `log_softmax` reuse it).
//!
//! # Rules provided
//!
//! `S` is any [`Real`] (`f32`, `f64`, SIMD packets); `M` is any owned nalgebra matrix or
//! vector `OMatrix<S, R, C>`: `DMatrix<S>`, `DVector<S>`, `RowDVector<S>`,
//! `SMatrix<S, R, C>`, `SVector<S, N>`.
//!
//! | op | operands | result |
//! |---|---|---|
//! | `Add`, `Sub` | `S∘S`, `M∘M`, `M∘S`, `S∘M` | `S` or `M` |
//! | `Add`, `Sub` (bias) | `DMatrix∘DVector`, `DMatrix∘RowDVector` and the reverse orders: the vector (length = columns) is applied to every row | `DMatrix` |
//! | `AddRelu` (`relu(a + b)`, fused by `#[task]`) | as `Add`, bias included | as `Add` |
//! | `Mul` | `S·S`, `M·S`, `S·M` (scaling); `OMatrix<R1, C1> · OMatrix<C1, C2>` (product) | `S`, `M`, `OMatrix<R1, C2>` |
//! | `Div` | `S/S`, `M/S`, `S/M` (elementwise) | `S` or `M` |
//! | `Max`, `Min` | `S∘S`, `M∘M`, `M∘S`, `S∘M`; ties route the gradient to the left | `S` or `M` |
//! | `Powf` | `S^S`, `M^S` | `S` or `M` |
//! | `ComponentMul`, `ComponentDiv` | `M∘M` | `M` |
//! | `Dot` | `M·M` | `S` |
//! | every elementwise unary primitive of [`crate::primitives`] (`Neg`, `Exp`, `Tanh`, `Atan`, ..., and `Powi`) | `S`, `M` (elementwise) | same |
//! | `Sum`, `Mean`, `NormSquared` | `S`, `M` | `S` |
//! | `Transpose` | `OMatrix<R, C>` | `OMatrix<C, R>` |
//! | `LogSoftmax` | `M`: a column vector as one set of logits, otherwise per row | `M` |
//! | `LogSumExp` | `M` (all elements) | `S` |
//! | `Index(i)` | `M` (column-major), `Vec<S>`, `[S; N]` | `S` |
//! | `Index2(i, j)` | `M` | `S` |
//! | `SoftmaxCrossEntropy(labels)` | `DMatrix` of logits, one example per row | `DVector` of losses |
//! | `MeanSoftmaxCrossEntropy(labels)` (`mean(softmax_cross_entropy(..))`, fused by `#[task]` and `#[differentiable]`) | as `SoftmaxCrossEntropy` | `S`, the mean loss |
//!
//! Operands of incompatible shapes (only possible with dynamic sizes), out-of-range
//! indices and labels are bugs in the loss: the rule panics with a message naming the
//! operation and the shapes. [`Data`] converts batch fields to `S` (borrowing `f32` data
//! in an `f32` loss); [`crate::ops`] has every primitive as a plain function. The
//! elementwise unary primitives are declared, rules included, in [`crate::primitives`];
//! the fast loops the rules call (GEMM, vector math) are in [`crate::kernels`].

pub mod affine;
pub mod attention;
pub mod conv;
mod data;
pub mod derivative_check;
mod elementwise;
pub mod gather;
mod labels;
pub mod lstm;
mod matmul;
pub mod norm;
pub mod op;
mod pointwise;
mod reduce;
pub mod selection;
mod shape;
pub mod slice;
mod softmax;
#[cfg(test)]
mod tests;

/// Called by every `value_and_grad` that `#[task]` generates, before its forward sweep.
pub use crate::kernels::alloc::keep_freed_memory;
pub(crate) use elementwise::lift;
pub use labels::{labels_of, owned_labels, Labels};
pub use pointwise::Pointwise;
pub(crate) use pointwise::Pointwise2;
pub use selection::{if_ge, if_gt, if_le, if_lt, IfCompare, IfSide, Where};

use std::borrow::Cow;

use crate::params::Params;
use crate::scalar::Real;

/// A binary primitive `Op` applied to `self` and `R`.
pub trait Binary<Op, R>: Sized {
    /// The output type.
    type Out;
    /// The value.
    fn eval(&self, r: &R) -> Self::Out;
    /// The tangent of the output given operand tangents (`None` = constant operand).
    fn jvp(&self, r: &R, out: &Self::Out, da: Option<&Self>, db: Option<&R>) -> Self::Out;
    /// Cotangents of the operands given the output cotangent `g` (consumed: a rule may
    /// return its buffer as a cotangent).
    fn vjp(
        &self,
        r: &R,
        out: &Self::Out,
        g: Self::Out,
        need_a: bool,
        need_b: bool,
    ) -> (Option<Self>, Option<R>);

    /// [`Binary::vjp`] for both operands (distinct variables), each cotangent added into
    /// its adjoint slot as [`acc`] does. What `#[task]` emits; a rule overrides it when it
    /// can add in place (a matrix product accumulates `Aᵀ·G` into the slot inside the
    /// GEMM instead of allocating the product and adding it).
    #[inline]
    fn vjp_acc(
        &self,
        r: &R,
        out: &Self::Out,
        g: Self::Out,
        slot_a: &mut Option<Self>,
        slot_b: &mut Option<R>,
    ) where
        Self: Params,
        R: Params,
    {
        let (ga, gb) = self.vjp(r, out, g, true, true);
        acc_opt(slot_a, ga);
        acc_opt(slot_b, gb);
    }

    /// [`Binary::vjp_acc`] when only the left operand is differentiated.
    #[inline]
    fn vjp_acc_a(&self, r: &R, out: &Self::Out, g: Self::Out, slot_a: &mut Option<Self>)
    where
        Self: Params,
    {
        acc_opt(slot_a, self.vjp(r, out, g, true, false).0);
    }

    /// [`Binary::vjp_acc`] when only the right operand is differentiated.
    #[inline]
    fn vjp_acc_b(&self, r: &R, out: &Self::Out, g: Self::Out, slot_b: &mut Option<R>)
    where
        R: Params,
    {
        acc_opt(slot_b, self.vjp(r, out, g, false, true).1);
    }
}

/// A unary primitive `Op` (which may carry non-differentiable arguments such as an
/// exponent, an index or integer labels) applied to `self`.
pub trait Unary<Op>: Sized {
    /// The output type.
    type Out;
    /// The value.
    fn eval(&self, op: &Op) -> Self::Out;
    /// The tangent of the output given the tangent `dx` of `self`.
    fn jvp(&self, op: &Op, out: &Self::Out, dx: &Self) -> Self::Out;
    /// The cotangent of `self` given the output cotangent `g` (consumed: a rule may
    /// return its buffer as the cotangent).
    fn vjp(&self, op: &Op, out: &Self::Out, g: Self::Out) -> Self;

    /// [`Unary::vjp`] added into the adjoint slot of `self` as [`acc`] does: what
    /// `#[task]` emits. A rule overrides it when it can add in place: a slice adds its
    /// cotangent into the rows or columns it read, instead of building a zero matrix of
    /// the whole input and adding all of it (which, for `xw.rows(t·B, B)` in a loop over
    /// `t`, is quadratic in the number of steps).
    #[inline]
    fn vjp_acc(&self, op: &Op, out: &Self::Out, g: Self::Out, slot: &mut Option<Self>)
    where
        Self: Params,
    {
        acc(slot, self.vjp(op, out, g));
    }
}

/// Non-differentiable data converted to the loss's scalar type (defined beside [`Real`],
/// which every scalar implements it through).
pub use crate::scalar::Data;

/// Adds `v` into an adjoint slot (the first contribution moves in).
#[inline]
pub fn acc<V: Params>(slot: &mut Option<V>, v: V) {
    match slot {
        Some(s) => s.axpy(V::Scalar::one(), &v),
        None => *slot = Some(v),
    }
}

/// Adds an optional contribution into an adjoint slot.
#[inline]
pub fn acc_opt<V: Params>(slot: &mut Option<V>, v: Option<V>) {
    if let Some(v) = v {
        acc(slot, v)
    }
}

/// Adds an optional adjoint into a gradient leaf.
#[inline]
pub fn acc_into<V: Params>(dst: &mut V, v: Option<V>) {
    if let Some(v) = v {
        dst.axpy(V::Scalar::one(), &v);
    }
}

/// An empty adjoint slot typed like `v`.
#[inline(always)]
pub fn none_like<V>(_v: &V) -> Option<V> {
    None
}

/// A literal in scalar `S`.
#[inline(always)]
pub fn lit<S: Real>(x: f64) -> S {
    S::from_f64(x)
}

/// The zero tangent/adjoint of `v` (used when a slot was never written).
#[inline]
pub fn zero_like<V: Params>(v: &V) -> V {
    v.zeros_like()
}

use num_traits::One;

/// Per lane, `a` where the mask is set, else `b` (blending the branches of an `if` whose
/// lanes disagree).
pub fn select<V: Params>(m: <V::Scalar as Real>::Mask, a: &V, b: &V) -> V {
    let mut out = b.clone();
    out.zip_leaves_mut(a, |o, a| {
        for (x, &y) in o.iter_mut().zip(a) {
            *x = V::Scalar::select(m, y, *x);
        }
    });
    out
}

/// [`select`] on optional tangents (`None` is zero).
pub fn select_opt<V: Params>(
    m: <V::Scalar as Real>::Mask,
    a: Option<V>,
    b: Option<V>,
) -> Option<V> {
    match (a, b) {
        (None, None) => None,
        (Some(a), Some(b)) => Some(select(m, &a, &b)),
        (Some(a), None) => {
            let z = a.zeros_like();
            Some(select(m, &a, &z))
        }
        (None, Some(b)) => {
            let z = b.zeros_like();
            Some(select(m, &z, &b))
        }
    }
}

/// Splits an adjoint between the two branches of a mixed-lane `if`: the lanes that took
/// the `then` branch, and the others.
pub fn split_adjoint<V: Params>(
    m: <V::Scalar as Real>::Mask,
    g: Option<V>,
) -> (Option<V>, Option<V>) {
    match g {
        None => (None, None),
        Some(g) => {
            let z = g.zeros_like();
            (Some(select(m, &g, &z)), Some(select(m, &z, &g)))
        }
    }
}

/// The truth of a comparison used as an `if` condition.
///
/// For plain floats this is the comparison itself. For packets of lanes every lane must
/// agree; a batched run whose lanes disagree is split by the batched runner.
#[inline(always)]
pub fn cond<M: crate::scalar::Mask>(m: M) -> bool {
    m.all()
}

impl<S: Real, T: Data<S> + ?Sized> Data<S> for &T {
    type Out = T::Out;
    #[inline(always)]
    fn data(&self) -> Cow<'_, T::Out> {
        (**self).data()
    }
}
