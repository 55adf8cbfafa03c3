//! The math of every binary elementwise primitive, on one scalar, and the rules of the
//! non-elementwise primitives for `S` itself.
//!
//! Each binary elementwise primitive is written once here as a [`Pointwise2`] rule;
//! `elementwise.rs` lifts the same rules to matrices and vectors, so scalar and matrix
//! derivatives cannot drift apart. The unary elementwise primitives are declared, rules
//! and all, in `crate::primitives`.

use super::op;
use super::{Binary, Unary};
use crate::scalar::Real;

/// A unary elementwise function and its derivative: one declaration gives both
/// derivative modes on scalars, matrices, vectors and lanes.
pub trait Pointwise<S: Real> {
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

impl<S: Real> Pointwise2<S> for op::Add {
    const NAME: &'static str = "a + b";
    const DA_IS_T: bool = true;
    const DB_IS_T: bool = true;
    #[inline(always)]
    fn f(a: S, b: S) -> S {
        a + b
    }
    #[inline(always)]
    fn da(_a: S, _b: S, _y: S, t: S) -> S {
        t
    }
    #[inline(always)]
    fn db(_a: S, _b: S, _y: S, t: S) -> S {
        t
    }
}

impl<S: Real> Pointwise2<S> for op::AddRelu {
    const NAME: &'static str = "relu(a + b)";
    const DB_IS_DA: bool = true;
    #[inline(always)]
    fn f(a: S, b: S) -> S {
        op::Relu.f(a + b)
    }
    /// `relu'(a + b) t`, with `a + b > 0` read as `y > 0`: the same for every input,
    /// NaN included (`relu` passes NaN through and NaN fails both tests).
    #[inline(always)]
    fn da(_a: S, _b: S, y: S, t: S) -> S {
        S::select(y.gt(S::zero()), t, S::zero())
    }
    #[inline(always)]
    fn db(a: S, b: S, y: S, t: S) -> S {
        Self::da(a, b, y, t)
    }
}

impl<S: Real> Pointwise2<S> for op::Sub {
    const NAME: &'static str = "a - b";
    const DA_IS_T: bool = true;
    #[inline(always)]
    fn f(a: S, b: S) -> S {
        a - b
    }
    #[inline(always)]
    fn da(_a: S, _b: S, _y: S, t: S) -> S {
        t
    }
    #[inline(always)]
    fn db(_a: S, _b: S, _y: S, t: S) -> S {
        -t
    }
}

/// Scaling (`Mul` with a scalar operand) and elementwise products share one rule.
macro_rules! product_rule {
    ($op:ty, $name:literal) => {
        impl<S: Real> Pointwise2<S> for $op {
            const NAME: &'static str = $name;
            #[inline(always)]
            fn f(a: S, b: S) -> S {
                a * b
            }
            #[inline(always)]
            fn da(_a: S, b: S, _y: S, t: S) -> S {
                b * t
            }
            #[inline(always)]
            fn db(a: S, _b: S, _y: S, t: S) -> S {
                a * t
            }
        }
    };
}
product_rule!(op::Mul, "a * b");
product_rule!(op::ComponentMul, "a.component_mul(b)");

macro_rules! quotient_rule {
    ($op:ty, $name:literal) => {
        impl<S: Real> Pointwise2<S> for $op {
            const NAME: &'static str = $name;
            #[inline(always)]
            fn f(a: S, b: S) -> S {
                a / b
            }
            #[inline(always)]
            fn da(_a: S, b: S, _y: S, t: S) -> S {
                t / b
            }
            #[inline(always)]
            fn db(_a: S, b: S, y: S, t: S) -> S {
                -(y * t) / b
            }
        }
    };
}
quotient_rule!(op::Div, "a / b");
quotient_rule!(op::ComponentDiv, "a.component_div(b)");

impl<S: Real> Pointwise2<S> for op::Max {
    const NAME: &'static str = "a.max(b)";
    #[inline(always)]
    fn f(a: S, b: S) -> S {
        // Both comparisons fail only for a NaN operand, which `a + b` then propagates.
        S::select(a.ge(b), a, S::select(a.lt(b), b, a + b))
    }
    // Ties route the gradient to the first argument.
    #[inline(always)]
    fn da(a: S, b: S, _y: S, t: S) -> S {
        S::select(a.ge(b), t, S::zero())
    }
    #[inline(always)]
    fn db(a: S, b: S, _y: S, t: S) -> S {
        S::select(a.ge(b), S::zero(), t)
    }
}

impl<S: Real> Pointwise2<S> for op::Min {
    const NAME: &'static str = "a.min(b)";
    #[inline(always)]
    fn f(a: S, b: S) -> S {
        S::select(a.le(b), a, S::select(a.gt(b), b, a + b))
    }
    #[inline(always)]
    fn da(a: S, b: S, _y: S, t: S) -> S {
        S::select(a.le(b), t, S::zero())
    }
    #[inline(always)]
    fn db(a: S, b: S, _y: S, t: S) -> S {
        S::select(a.le(b), S::zero(), t)
    }
}

impl<S: Real> Pointwise2<S> for op::Powf {
    const NAME: &'static str = "a.powf(b)";
    #[inline(always)]
    fn f(a: S, b: S) -> S {
        a.powf(b)
    }
    #[inline(always)]
    fn da(a: S, b: S, _y: S, t: S) -> S {
        // b a^(b-1) rather than b y / a, which is 0/0 at a = 0.
        b * a.powf(b - S::one()) * t
    }
    #[inline(always)]
    fn db(a: S, _b: S, y: S, t: S) -> S {
        // a^b ln a; its limit at a = 0 (b > 0) is 0, where the formula is 0 * -inf.
        S::select(a.gt(S::zero()), y * a.ln() * t, S::zero())
    }
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
scalar_binary!(
    op::Add,
    op::AddRelu,
    op::Sub,
    op::Mul,
    op::Div,
    op::Max,
    op::Min,
    op::Powf,
    op::Gt,
    op::Ge,
    op::Lt,
    op::Le,
    op::LogAddExp,
);

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
