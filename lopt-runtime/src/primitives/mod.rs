//! The primitives of the loss language, each declared once.
//!
//! A primitive is what a `#[task]` or `#[differentiable]` body may call by name
//! (`exp(x)`, `x.tanh()`, `max(a, b)`, ...). [`declared`] (the file
//! `lopt-runtime/src/primitives/declared.rs`) holds every one of them:
//!
//! - an **elementwise unary** primitive is one entry of the `elementwise_unary` section of
//!   `declare_primitives!`: its name, its marker type, its value and its pointwise
//!   derivative `f'(x) t` (given `y = f(x)`), both over any [`Real`], so one entry is its
//!   rules for scalars, every nalgebra matrix and vector, and lanes of task instances
//!   ([`Lanes`](crate::lanes::Lanes)). Where the lanes must compute something else than
//!   the generic code (a function `Real` does not have), the value says so with
//!   [`Real::per_lane`]. Both derivative modes follow from the one derivative
//!   ([`Pointwise`]). The entry also makes the plain function in [`crate::ops`] and the
//!   marker in [`crate::ad::op`].
//! - an **elementwise binary** primitive (`max`, `logaddexp`, and the operators `+`, `-`,
//!   `*`, `/`, the comparisons) is one entry of the `elementwise_binary` section: its name
//!   (`_` for an operator), its marker, its value and both partial derivatives over any
//!   [`Real`], and the operand shapes it takes (`on: [scalars, matrices, matrix_scalar,
//!   scalar_matrix, bias]`); `ad/pointwise.rs` and `ad/elementwise.rs` lift it to each.
//! - other primitives (reductions, products, concatenation, primitives with a
//!   non-differentiated argument) are named in the same file with the rules they map to;
//!   their rules live in `ad/` (`reduce.rs`, `softmax.rs`, `matmul.rs`, `slice.rs`, ...).
//!
//! The `#[task]` macros hold no list of their own: the declarations also make the
//! runtime's `__with_primitives!`, which hands the macro crate every name and kind while
//! it expands an item, so adding an entry there is all it takes for a loss to call it;
//! its test goes in `tests/primitives.rs` (grad-checked against finite differences of
//! separately written `f64` code, and its lanes against separate `f32` runs). Two code
//! files; `tests/language_reference.rs` then asks for its row in the README's table and
//! in `lopt::language`.
//!
//! # Adding a primitive
//!
//! ```text
//! declare_primitives! {
//!     elementwise_unary {
//!         ...
//!         /// Arctangent, elementwise.
//!         atan => Atan(x, y, t) {
//!             value: x.per_lane(f32::atan, f64::atan),
//!             derivative: t / (S::one() + x * x),
//!         },
//!     }
//!     elementwise_binary {
//!         ...
//!         /// Elementwise minimum; at ties the derivative goes to `a`.
//!         Min(a, b, y, t) {
//!             function: min,
//!             written: "a.min(b)",
//!             on: [scalars, matrices, matrix_scalar, scalar_matrix],
//!             value: S::select(a.le(b), a, S::select(a.gt(b), b, a + b)),
//!             da: S::select(a.le(b), t, S::zero()),
//!             db: S::select(a.le(b), S::zero(), t),
//!         },
//!     }
//!     ...
//! }
//! ```
//!
//! # A primitive of your own
//!
//! [`elementwise_primitive!`](crate::elementwise_primitive) declares one outside lopt,
//! with the same parts (a value and a derivative, written by hand: the counterpart of
//! `jax.custom_jvp`), and makes a function the loss calls like a builtin:
//!
//! ```
//! use lopt_runtime::Real;
//!
//! lopt_runtime::elementwise_primitive! {
//!     /// `x / (1 + |x|)`.
//!     pub fn softsign => SoftSign(x, y, t) {
//!         value: x / (S::one() + x.abs()),
//!         derivative: {
//!             let d = S::one() + x.abs();
//!             t / (d * d)
//!         },
//!     }
//! }
//!
//! fn main() {
//!     assert_eq!(softsign(&1.0f64), 0.5);
//! }
//! ```
//!
//! It follows the convention of `#[differentiable]` functions (a function and a module
//! of the same name with `jvp` and `vjp`), so a primitive with any other rule can also be
//! written by hand: `fn f(args) -> R` for the value, `mod f { fn jvp(args, tangents:
//! Option<&A>...) -> (R, R); fn vjp(args, cotangent: &R) -> (Option<A>, ...) }` (the
//! counterpart of `jax.custom_vjp`); see `examples/custom_primitive.rs`.

pub mod declared;
pub mod functions;

use nalgebra::allocator::Allocator;
use nalgebra::{DefaultAllocator, Dim, OMatrix};

use crate::ad::Unary;
use crate::scalar::Real;

/// The rule of an elementwise unary primitive (defined with the other rule traits in
/// [`crate::ad`]).
pub use crate::ad::Pointwise;

/// The op of a user-declared elementwise primitive `P` (see
/// [`elementwise_primitive!`](crate::elementwise_primitive)): `Unary<Map<P>>` holds for
/// every [`Real`] and every owned nalgebra matrix or vector of one, with the same rules
/// the builtins are lifted with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Map<P>(pub P);

impl<S: Real, P: Pointwise<S>> Unary<Map<P>> for S {
    type Out = S;
    #[inline]
    fn eval(&self, op: &Map<P>) -> S {
        op.0.f(*self)
    }
    #[inline]
    fn jvp(&self, op: &Map<P>, out: &S, dx: &S) -> S {
        op.0.d(*self, *out, *dx)
    }
    #[inline]
    fn vjp(&self, op: &Map<P>, out: &S, g: S) -> S {
        op.0.d(*self, *out, g)
    }
}

impl<S: Real, R: Dim, C: Dim, P: Pointwise<S> + 'static> Unary<Map<P>> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = Self;
    #[inline]
    fn eval(&self, op: &Map<P>) -> Self {
        crate::ad::lift::eval(self, &op.0)
    }
    #[inline]
    fn jvp(&self, op: &Map<P>, out: &Self, dx: &Self) -> Self {
        crate::ad::lift::jvp(self, &op.0, out, dx)
    }
    #[inline]
    fn vjp(&self, op: &Map<P>, out: &Self, g: Self) -> Self {
        crate::ad::lift::vjp(self, &op.0, out, g)
    }
}

/// The value, and the tangent (zero for a constant operand), of a user primitive: what
/// the `jvp` of its module returns.
#[doc(hidden)]
pub fn map_jvp<X, P>(x: &X, op: &Map<P>, dx: Option<&X>) -> (X::Out, X::Out)
where
    X: Unary<Map<P>>,
    X::Out: crate::Params,
{
    let y = x.eval(op);
    let t = match dx {
        Some(dx) => x.jvp(op, &y, dx),
        None => crate::Params::zeros_like(&y),
    };
    (y, t)
}

/// The cotangent of the operand of a user primitive: what the `vjp` of its module
/// returns.
#[doc(hidden)]
pub fn map_vjp<X, P>(x: &X, op: &Map<P>, g: &X::Out) -> (Option<X>,)
where
    X: Unary<Map<P>>,
    X::Out: Clone,
{
    let y = x.eval(op);
    (Some(x.vjp(op, &y, g.clone())),)
}

/// Declares an elementwise primitive outside lopt, usable in `#[task]` and
/// `#[differentiable]` bodies like a builtin (`name(&x)`), on scalars, matrices, vectors
/// and lanes.
///
/// ```text
/// elementwise_primitive! {
///     /// docs
///     pub fn NAME => Marker(x, y, t) {
///         value: EXPR,        // f(x), over a generic `S: Real`
///         derivative: EXPR,   // f'(x) * t, with y = f(x)
///     }
/// }
/// ```
///
/// It defines the unit struct `Marker` (a [`Pointwise`] rule), the function `NAME`
/// (generic over every type the rule lifts to; it takes its operand by reference) and
/// the module `NAME` with `jvp` and `vjp`, the convention `#[differentiable]` functions
/// follow, which is how a loss calls it. Invoke it at module level (not inside a function
/// body: the module refers to the marker through `super`). See
/// `examples/custom_primitive.rs`.
#[macro_export]
macro_rules! elementwise_primitive {
    ($(
        $(#[$m:meta])*
        $vis:vis fn $name:ident => $op:ident($x:ident, $y:ident, $t:ident) {
            value: $value:expr,
            derivative: $d:expr $(,)?
        }
    )*) => {$(
        #[doc = concat!("The rule of [`", stringify!($name), "`].")]
        #[derive(Debug, Clone, Copy, Default)]
        $vis struct $op;

        impl<S: $crate::Real> $crate::primitives::Pointwise<S> for $op {
            #[inline(always)]
            #[allow(unused_variables)]
            fn f(&self, $x: S) -> S {
                $value
            }
            #[inline(always)]
            #[allow(unused_variables)]
            fn d(&self, $x: S, $y: S, $t: S) -> S {
                $d
            }
        }

        $(#[$m])*
        #[inline]
        $vis fn $name<X: $crate::ad::Unary<$crate::primitives::Map<$op>>>(x: &X) -> X::Out {
            x.eval(&$crate::primitives::Map($op))
        }

        #[doc = concat!("The derivatives of [`", stringify!($name), "()`] for `#[task]` bodies.")]
        $vis mod $name {
            #[allow(unused_imports)]
            use super::*;
            /// Value and tangent (`None`: a constant operand).
            #[inline]
            pub fn jvp<X>(x: &X, dx: ::core::option::Option<&X>) -> (X::Out, X::Out)
            where
                X: $crate::ad::Unary<$crate::primitives::Map<super::$op>>,
                X::Out: $crate::Params,
            {
                $crate::primitives::map_jvp(x, &$crate::primitives::Map(super::$op), dx)
            }
            /// The operand's cotangent given the result's.
            #[inline]
            pub fn vjp<X>(x: &X, g: &X::Out) -> (::core::option::Option<X>,)
            where
                X: $crate::ad::Unary<$crate::primitives::Map<super::$op>>,
                X::Out: ::core::clone::Clone,
            {
                $crate::primitives::map_vjp(x, &$crate::primitives::Map(super::$op), g)
            }
        }
    )*};
}
