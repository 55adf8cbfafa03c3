//! The pointwise rule traits ([`Pointwise`], [`Pointwise2`]), the binary elementwise rules
//! on two scalars, and the rules of the non-elementwise primitives for `S` itself.
//!
//! Every elementwise primitive, unary and binary, is declared once, value and
//! derivatives, in `crate::primitives::declared`; this file lifts each binary one declared
//! `on: [scalars, ..]` to two scalars, and `elementwise.rs` lifts the same rule to
//! matrices and vectors, so scalar and matrix derivatives cannot drift apart.

use super::op;
use super::{Binary, Unary};
use crate::scalar::Real;

/// A unary elementwise function and its derivative: one declaration gives both
/// derivative modes on scalars, matrices, vectors and lanes. `Sync`: large matrices are
/// passed over by several threads at once.
pub trait Pointwise<S: Real>: Sync {
    /// `f(x)`.
    fn f(&self, x: S) -> S;
    /// `f'(x) * t`, given `y = f(x)` (rules such as `exp` reuse it).
    fn d(&self, x: S, y: S, t: S) -> S;
}

/// A binary elementwise function and its partial derivatives.
pub(crate) trait Pointwise2<S: Real> {
    /// How the op is written, for panic messages.
    const NAME: &'static str;
    /// `f(a, b)`.
    fn f(a: S, b: S) -> S;
    /// `∂f/∂a * t`, given `y = f(a, b)`.
    fn da(a: S, b: S, y: S, t: S) -> S;
    /// `∂f/∂b * t`, given `y = f(a, b)`.
    fn db(a: S, b: S, y: S, t: S) -> S;
    /// `da(a, b, y, t) == t` always: a cotangent written over `t` is `t` itself, so the
    /// in-place rules skip the pass.
    const DA_IS_T: bool = false;
    /// `db(a, b, y, t) == t` always (as [`Self::DA_IS_T`]).
    const DB_IS_T: bool = false;
    /// `db(a, b, y, t) == da(a, b, y, t)` always: a broadcast operand's cotangent is a
    /// sum of the other operand's, so the rules compute that one first and sum it.
    const DB_IS_DA: bool = false;
}

/// Binary rules on two scalars.
macro_rules! scalar_binary {
    ($($op:ty),* $(,)?) => {$(
        impl<S: Real> Binary<$op, S> for S {
            type Out = S;
            #[inline]
            fn eval(&self, b: &S) -> S {
                <$op as Pointwise2<S>>::f(*self, *b)
            }
            #[inline]
            fn jvp(&self, b: &S, out: &S, da: Option<&S>, db: Option<&S>) -> S {
                let mut t = S::zero();
                if let Some(da) = da {
                    t += <$op as Pointwise2<S>>::da(*self, *b, *out, *da);
                }
                if let Some(db) = db {
                    t += <$op as Pointwise2<S>>::db(*self, *b, *out, *db);
                }
                t
            }
            #[inline]
            fn vjp(
                &self,
                b: &S,
                out: &S,
                g: S,
                need_a: bool,
                need_b: bool,
            ) -> (Option<S>, Option<S>) {
                (
                    need_a.then(|| <$op as Pointwise2<S>>::da(*self, *b, *out, g)),
                    need_b.then(|| <$op as Pointwise2<S>>::db(*self, *b, *out, g)),
                )
            }
        }
    )*};
}
/// `scalar_binary!` for each elementwise binary primitive declared `on` scalars.
macro_rules! scalar_binary_declared {
    ($op:ty: [$($form:ident),*]) => { $( scalar_binary_declared!(@$form $op); )* };
    (@scalars $op:ty) => { scalar_binary!($op); };
    (@$other:ident $op:ty) => {};
}
crate::primitives::declared::for_each_elementwise_binary!(scalar_binary_declared);

/// Reductions of a scalar: `sum` and `mean` are the identity, `norm_squared` is `x²`.
macro_rules! scalar_identity {
    ($($op:ty),*) => {$(
        impl<S: Real> Unary<$op> for S {
            type Out = S;
            #[inline]
            fn eval(&self, _op: &$op) -> S {
                *self
            }
            #[inline]
            fn jvp(&self, _op: &$op, _out: &S, dx: &S) -> S {
                *dx
            }
            #[inline]
            fn vjp(&self, _op: &$op, _out: &S, g: S) -> S {
                g
            }
        }
    )*};
}
scalar_identity!(op::Sum, op::Mean);

impl<S: Real> Unary<op::NormSquared> for S {
    type Out = S;
    #[inline]
    fn eval(&self, _op: &op::NormSquared) -> S {
        *self * *self
    }
    #[inline]
    fn jvp(&self, _op: &op::NormSquared, _out: &S, dx: &S) -> S {
        S::c(2.0) * *self * *dx
    }
    #[inline]
    fn vjp(&self, _op: &op::NormSquared, _out: &S, g: S) -> S {
        S::c(2.0) * *self * g
    }
}
