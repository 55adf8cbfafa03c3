//! Every primitive of the loss language, each declared once.
//!
//! One `declare_primitives!` block below lists them all, in five sections:
//!
//! - `elementwise_unary`: name, marker, value and pointwise derivative (its rules on
//!   scalars, matrices, vectors and lanes follow; see [`crate::primitives`]);
//! - `elementwise_binary`: name (`_` for an operator such as `+`), marker, how it is
//!   written (for shape errors), the operand shapes it takes (`on`: `scalars`,
//!   `matrices` (equal shapes), `matrix_scalar`, `scalar_matrix`, `bias` (a vector
//!   broadcast over a matrix's rows)), which partial derivatives pass the cotangent
//!   through (`same`), the value and both partial derivatives. `ad/pointwise.rs` and
//!   `ad/elementwise.rs` lift each to the shapes it names;
//! - `unary`, `binary`: primitives whose rules are written in `ad/` (reductions, products,
//!   concatenation), by name and marker;
//! - `special`: primitives with non-differentiated arguments, by name, marker and the form
//!   the `#[task]` macro lowers them in.
//!
//! The block also makes `__with_primitives!`, through which the `#[task]`,
//! `#[task_family]` and `#[differentiable]` macros learn the names and kinds (the macro
//! crate holds no list of its own): adding an entry here is all it takes for a loss to
//! call it.

use crate::ad::op;
use crate::ad::Pointwise2;
use crate::primitives::Pointwise;
use crate::scalar::Real;

/// Declares every primitive (the sections are described in the module docs) and makes
/// `__with_primitives!`, the list the `#[task]` macros read.
macro_rules! declare_primitives {
    (@with ($d:tt)
        elementwise_unary {$(
            $(#[$um:meta])*
            $uname:ident => $uop:ident($ux:ident, $uy:ident, $ut:ident) {
                value: $uvalue:expr,
                derivative: $ud:expr $(,)?
            },
        )*}
        elementwise_binary {$(
            $(#[$bm:meta])*
            $bop:ident($ba:ident, $bb:ident, $by:ident, $bt:ident) {
                function: $bname:tt,
                written: $bw:literal,
                on: [$($bform:ident),* $(,)?],
                $(same: [$($bsame:ident),* $(,)?],)?
                value: $bvalue:expr,
                da: $bda:expr,
                db: $bdb:expr $(,)?
            },
        )*}
        unary {$(
            $(#[$rum:meta])*
            $runame:ident => $ruop:ident,
        )*}
        binary {$(
            $(#[$rbm:meta])*
            $rbname:ident => $rbop:ident,
        )*}
        special {$(
            $sname:ident => $sop:ident: $sform:ident,
        )*}
    ) => {
        /// The marker types of the elementwise primitives (re-exported in
        /// [`crate::ad::op`]).
        pub mod markers {
            $(
                #[doc = concat!("The op of [`", stringify!($uname), "`](crate::ops::", stringify!($uname), ").")]
                #[derive(Debug, Clone, Copy, Default)]
                pub struct $uop;
            )*
            $(
                $(#[$bm])*
                #[derive(Debug, Clone, Copy, Default)]
                pub struct $bop;
            )*
        }

        $(
            impl<S: Real> Pointwise<S> for markers::$uop {
                #[inline(always)]
                #[allow(unused_variables)]
                fn f(&self, $ux: S) -> S {
                    $uvalue
                }
                #[inline(always)]
                #[allow(unused_variables)]
                fn d(&self, $ux: S, $uy: S, $ut: S) -> S {
                    $ud
                }
            }
            lift_unary!(markers::$uop);
        )*

        $(
            impl<S: Real> Pointwise2<S> for markers::$bop {
                const NAME: &'static str = $bw;
                $($(const $bsame: bool = true;)*)?
                #[inline(always)]
                #[allow(unused_variables)]
                fn f($ba: S, $bb: S) -> S {
                    $bvalue
                }
                #[inline(always)]
                #[allow(unused_variables)]
                fn da($ba: S, $bb: S, $by: S, $bt: S) -> S {
                    $bda
                }
                #[inline(always)]
                #[allow(unused_variables)]
                fn db($ba: S, $bb: S, $by: S, $bt: S) -> S {
                    $bdb
                }
            }
        )*

        /// Calls `$cb!(marker: [shapes])` for every elementwise binary primitive:
        /// `ad/pointwise.rs` and `ad/elementwise.rs` lift each to the shapes it names.
        macro_rules! for_each_elementwise_binary {
            ($d cb:ident) => {
                $( $d cb!(crate::ad::op::$bop: [$($bform),*]); )*
            };
        }
        pub(crate) use for_each_elementwise_binary;

        /// The elementwise unary primitives as plain functions.
        pub mod functions {
            use crate::ad::Unary;
            $(
                $(#[$um])*
                #[inline]
                pub fn $uname<X: Unary<super::markers::$uop>>(x: &X) -> X::Out {
                    x.eval(&super::markers::$uop)
                }
            )*
        }

        /// The named elementwise binary primitives as plain functions.
        pub mod elementwise_binary_functions {
            $( declare_primitives!(@binary_function $bname $bop [$(#[$bm])*]); )*
        }

        /// The primitives with rules in `ad/` taking one operand, as plain functions.
        pub mod unary_functions {
            use crate::ad::{op, Unary};
            $(
                $(#[$rum])*
                #[inline]
                pub fn $runame<X: Unary<op::$ruop>>(x: &X) -> X::Out {
                    x.eval(&op::$ruop)
                }
            )*
        }

        /// The primitives with rules in `ad/` taking two operands, as plain functions.
        pub mod binary_functions {
            use crate::ad::{op, Binary};
            $(
                $(#[$rbm])*
                #[inline]
                pub fn $rbname<A: Binary<op::$rbop, B>, B>(a: &A, b: &B) -> A::Out {
                    a.eval(b)
                }
            )*
        }

        // Each special marker exists (generic and lifetime-carrying ones too); their
        // functions are written in `functions.rs`.
        $(#[allow(unused_imports)] use crate::ad::op::$sop as _;)*

        /// Calls `$cb! { [name Marker kind, ...] rest }`: every primitive a loss may call
        /// by name, with how the `#[task]` macros lower it (`unary`, `binary`, or a
        /// special form: `integer_exponent` (`op::X(n as i32)`), `labels`
        /// (`op::X::from_labels(..)`), `data` (`op::X::new(&data)`), `two_sizes`
        /// (`op::X(a as usize, b as usize)`), `scalar_bounds` (`op::X::new(lo, hi)`)).
        /// A binary operator without a name is listed as `_`.
        #[doc(hidden)]
        #[macro_export]
        macro_rules! __with_primitives {
            (($d($d cb:tt)*) $d($d rest:tt)*) => {
                $d($d cb)* ! {
                    [
                        $( $uname $uop unary, )*
                        $( $bname $bop binary, )*
                        $( $runame $ruop unary, )*
                        $( $rbname $rbop binary, )*
                        $( $sname $sop $sform, )*
                    ]
                    $d($d rest)*
                }
            };
        }
    };
    (@binary_function _ $op:ident [$($m:tt)*]) => {};
    (@binary_function $name:ident $op:ident [$(#[$m:meta])*]) => {
        $(#[$m])*
        #[inline]
        pub fn $name<A: crate::ad::Binary<super::markers::$op, B>, B>(a: &A, b: &B) -> A::Out {
            a.eval(b)
        }
    };
    (elementwise_unary $($all:tt)*) => {
        declare_primitives! { @with ($) elementwise_unary $($all)* }
    };
}

/// The rules of a unary elementwise op (a [`Pointwise`]) for every `S: Real` and every
/// owned nalgebra matrix or vector: `y = f(x)`, tangent and cotangent both `f'(x) t`.
macro_rules! lift_unary {
    ($op:ty) => {
        impl<S: Real> crate::ad::Unary<$op> for S {
            type Out = S;
            #[inline]
            fn eval(&self, op: &$op) -> S {
                op.f(*self)
            }
            #[inline]
            fn jvp(&self, op: &$op, out: &S, dx: &S) -> S {
                op.d(*self, *out, *dx)
            }
            #[inline]
            fn vjp(&self, op: &$op, out: &S, g: S) -> S {
                op.d(*self, *out, g)
            }
        }

        impl<S: Real, R: nalgebra::Dim, C: nalgebra::Dim> crate::ad::Unary<$op>
            for nalgebra::OMatrix<S, R, C>
        where
            nalgebra::DefaultAllocator: nalgebra::allocator::Allocator<R, C>,
        {
            type Out = Self;
            #[inline]
            fn eval(&self, op: &$op) -> Self {
                crate::ad::lift::eval(self, op)
            }
            #[inline]
            fn jvp(&self, op: &$op, out: &Self, dx: &Self) -> Self {
                crate::ad::lift::jvp(self, op, out, dx)
            }
            #[inline]
            fn vjp(&self, op: &$op, out: &Self, g: Self) -> Self {
                crate::ad::lift::vjp(self, op, out, g)
            }
        }
    };
}

/// `Φ(x)`, the standard normal CDF.
#[inline]
fn normal_cdf<S: Real>(x: S) -> S {
    S::c(0.5) * (S::one() + (x * S::c(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

/// √(2/π) and the cubic coefficient of the tanh form of GELU.
const GELU_TANH_K: f64 = 0.797_884_560_802_865_4;
const GELU_TANH_A: f64 = 0.044_715;

/// `½(1 + tanh u)` with `u = √(2/π)(x + 0.044715 x³)` (`jax.nn.gelu`'s form), computed as
/// the equal `σ(2u)`: one `exp` and one division (a `tanh` is an `exp`, a division and a
/// polynomial for small arguments), and no cancellation in `1 + tanh u` for `u ≪ 0`.
#[inline]
fn gelu_tanh_cdf<S: Real>(x: S) -> S {
    let u = S::c(GELU_TANH_K) * (x + S::c(GELU_TANH_A) * (x * x * x));
    sigmoid(u + u)
}

/// `σ(x) = 1 / (1 + e^-x)`; saturates to exactly 0 or 1 without NaN.
#[inline]
pub(crate) fn sigmoid<S: Real>(x: S) -> S {
    S::one() / (S::one() + (-x).exp())
}

/// 1 where `x > 0`, -1 where `x < 0`, 0 at 0.
#[inline]
pub(crate) fn sign<S: Real>(x: S) -> S {
    let z = S::zero();
    S::select(x.gt(z), S::one(), S::select(x.lt(z), -S::one(), z))
}

declare_primitives! {
    elementwise_unary {
        /// `-x`, elementwise (what unary `-` lowers to).
        neg => Neg(x, y, t) {
            value: -x,
            derivative: -t,
        },
        /// `e^x`, elementwise.
        exp => Exp(x, y, t) {
            value: x.exp(),
            derivative: y * t,
        },
        /// Natural logarithm, elementwise.
        ln => Ln(x, y, t) {
            value: x.ln(),
            derivative: t / x,
        },
        /// Square root, elementwise.
        sqrt => Sqrt(x, y, t) {
            value: x.sqrt(),
            derivative: S::c(0.5) * t / y,
        },
        /// Hyperbolic tangent, elementwise.
        tanh => Tanh(x, y, t) {
            value: x.tanh(),
            derivative: (S::one() - y * y) * t,
        },
        /// Sine, elementwise.
        sin => Sin(x, y, t) {
            value: x.sin(),
            derivative: x.cos() * t,
        },
        /// Cosine, elementwise.
        cos => Cos(x, y, t) {
            value: x.cos(),
            derivative: -x.sin() * t,
        },
        /// Absolute value, elementwise (its derivative is 0 at 0).
        abs => Abs(x, y, t) {
            value: x.abs(),
            derivative: sign(x) * t,
        },
        /// `x * x`, elementwise.
        square => Square(x, y, t) {
            value: x * x,
            derivative: S::c(2.0) * x * t,
        },
        /// `max(x, 0)`, elementwise (its derivative is 0 at 0).
        relu => Relu(x, y, t) {
            // NaN fails `x <= 0` and passes through: a diverged activation is not hidden.
            value: S::select(x.le(S::zero()), S::zero(), x),
            derivative: S::select(x.gt(S::zero()), t, S::zero()),
        },
        /// `1 / (1 + e^-x)`, elementwise.
        sigmoid => Sigmoid(x, y, t) {
            value: sigmoid(x),
            derivative: y * (S::one() - y) * t,
        },
        /// `ln(1 + e^x)`, elementwise, computed as `max(x, 0) + ln(1 + e^-|x|)` (no overflow).
        softplus => Softplus(x, y, t) {
            // max(x, 0) + ln(1 + e^-|x|): never overflows.
            value: x.max(S::zero()) + (-x.abs()).exp().ln_1p(),
            derivative: sigmoid(x) * t,
        },
        /// Exact GELU `x Φ(x)`, elementwise, with `Φ` the standard normal CDF.
        gelu => Gelu(x, y, t) {
            value: x * normal_cdf(x),
            derivative: {
                // Φ(x) + x φ(x), φ(x) = e^(-x²/2) / sqrt(2π)
                let phi = (S::c(-0.5) * x * x).exp() * S::c(0.398_942_280_401_432_7);
                (normal_cdf(x) + x * phi) * t
            },
        },
        /// The tanh approximation of GELU, `x · ½(1 + tanh(√(2/π)(x + 0.044715 x³)))`,
        /// elementwise: `jax.nn.gelu(x, approximate=True)`, as the JAX library's transformer
        /// uses it.
        gelu_tanh => GeluTanh(x, y, t) {
            value: x * gelu_tanh_cdf(x),
            derivative: {
                // cdf + x · ½(1 − tanh² u) · u', with ½(1 − tanh² u) = 2σ(1 − σ).
                let cdf = gelu_tanh_cdf(x);
                let du = S::c(GELU_TANH_K) * (S::one() + S::c(3.0 * GELU_TANH_A) * x * x);
                (cdf + x * (S::c(2.0) * cdf * (S::one() - cdf)) * du) * t
            },
        },
        /// Arctangent, elementwise.
        atan => Atan(x, y, t) {
            value: x.per_lane(f32::atan, f64::atan),
            derivative: t / (S::one() + x * x),
        },
        /// `ln(1 + x)`, elementwise, accurate for small `x`.
        log1p => Log1p(x, y, t) {
            value: x.per_lane(f32::ln_1p, f64::ln_1p),
            derivative: t / (S::one() + x),
        },
        /// `e^x - 1`, elementwise, accurate for small `x`.
        expm1 => Expm1(x, y, t) {
            value: x.per_lane(f32::exp_m1, f64::exp_m1),
            derivative: (y + S::one()) * t,
        },
        /// The error function, elementwise (about 1e-10 absolute; see [`crate::scalar::erf_f64`]).
        erf => Erf(x, y, t) {
            value: x.erf(),
            // 2/√π e^(-x²), with libm's exp on lanes too (the packet `exp` is a polynomial
            // within about 1 ulp), so lanes equal separate instances.
            derivative: S::c(std::f64::consts::FRAC_2_SQRT_PI)
                * (-(x * x)).per_lane(f32::exp, f64::exp)
                * t,
        },
    }
    elementwise_binary {
        /// `a + b` (also a vector broadcast over the rows of a matrix).
        Add(a, b, y, t) {
            function: _,
            written: "a + b",
            on: [scalars, matrices, matrix_scalar, scalar_matrix, bias],
            same: [DA_IS_T, DB_IS_T],
            value: a + b,
            da: t,
            db: t,
        },
        /// `relu(a + b)` in one pass (what `#[task]` lowers `relu(a + b)` to: no `a + b`
        /// intermediate, and the derivative's mask is read off the output).
        AddRelu(a, b, y, t) {
            function: _,
            written: "relu(a + b)",
            on: [scalars, matrices, matrix_scalar, scalar_matrix, bias],
            same: [DB_IS_DA],
            value: op::Relu.f(a + b),
            // `relu'(a + b) t`, with `a + b > 0` read as `y > 0`: the same for every
            // input, NaN included (`relu` passes NaN through and NaN fails both tests).
            da: S::select(y.gt(S::zero()), t, S::zero()),
            db: S::select(y.gt(S::zero()), t, S::zero()),
        },
        /// `a - b`.
        Sub(a, b, y, t) {
            function: _,
            written: "a - b",
            on: [scalars, matrices, matrix_scalar, scalar_matrix, bias],
            same: [DA_IS_T],
            value: a - b,
            da: t,
            db: -t,
        },
        /// `a * b` with nalgebra semantics: scaling here; matrix-vector and matrix-matrix
        /// products are `ad/matmul.rs`.
        Mul(a, b, y, t) {
            function: _,
            written: "a * b",
            on: [scalars, matrix_scalar, scalar_matrix],
            value: a * b,
            da: b * t,
            db: a * t,
        },
        /// Elementwise product of two equal-shaped matrices or vectors.
        ComponentMul(a, b, y, t) {
            function: component_mul,
            written: "a.component_mul(b)",
            on: [matrices],
            value: a * b,
            da: b * t,
            db: a * t,
        },
        /// `a / b` (matrix divided by a scalar, or scalars).
        Div(a, b, y, t) {
            function: _,
            written: "a / b",
            on: [scalars, matrix_scalar, scalar_matrix],
            value: a / b,
            da: t / b,
            db: -(y * t) / b,
        },
        /// Elementwise quotient of two equal-shaped matrices or vectors.
        ComponentDiv(a, b, y, t) {
            function: component_div,
            written: "a.component_div(b)",
            on: [matrices],
            value: a / b,
            da: t / b,
            db: -(y * t) / b,
        },
        /// Elementwise maximum (scalars, equal-shaped matrices, or a matrix and a scalar); at
        /// ties the derivative goes to `a`.
        Max(a, b, y, t) {
            function: max,
            written: "a.max(b)",
            on: [scalars, matrices, matrix_scalar, scalar_matrix],
            // Both comparisons fail only for a NaN operand, which `a + b` then propagates.
            value: S::select(a.ge(b), a, S::select(a.lt(b), b, a + b)),
            da: S::select(a.ge(b), t, S::zero()),
            db: S::select(a.ge(b), S::zero(), t),
        },
        /// Elementwise minimum; at ties the derivative goes to `a`.
        Min(a, b, y, t) {
            function: min,
            written: "a.min(b)",
            on: [scalars, matrices, matrix_scalar, scalar_matrix],
            value: S::select(a.le(b), a, S::select(a.gt(b), b, a + b)),
            da: S::select(a.le(b), t, S::zero()),
            db: S::select(a.le(b), S::zero(), t),
        },
        /// `a^b`: scalars, or a matrix raised elementwise to a scalar power.
        Powf(a, b, y, t) {
            function: powf,
            written: "a.powf(b)",
            on: [scalars, matrix_scalar],
            value: a.powf(b),
            // b a^(b-1) rather than b y / a, which is 0/0 at a = 0.
            da: b * a.powf(b - S::one()) * t,
            // a^b ln a; its limit at a = 0 (b > 0) is 0, where the formula is 0 * -inf.
            db: S::select(a.gt(S::zero()), y * a.ln() * t, S::zero()),
        },
        /// `a > b` elementwise: 1 where true, 0 where false (a mask for `select`).
        Gt(a, b, y, t) {
            function: _,
            written: "a > b",
            on: [scalars, matrices, matrix_scalar, scalar_matrix],
            value: S::select(a.gt(b), S::one(), S::zero()),
            da: S::zero(),
            db: S::zero(),
        },
        /// `a >= b` elementwise, as a mask.
        Ge(a, b, y, t) {
            function: _,
            written: "a >= b",
            on: [scalars, matrices, matrix_scalar, scalar_matrix],
            value: S::select(a.ge(b), S::one(), S::zero()),
            da: S::zero(),
            db: S::zero(),
        },
        /// `a < b` elementwise, as a mask.
        Lt(a, b, y, t) {
            function: _,
            written: "a < b",
            on: [scalars, matrices, matrix_scalar, scalar_matrix],
            value: S::select(a.lt(b), S::one(), S::zero()),
            da: S::zero(),
            db: S::zero(),
        },
        /// `a <= b` elementwise, as a mask.
        Le(a, b, y, t) {
            function: _,
            written: "a <= b",
            on: [scalars, matrices, matrix_scalar, scalar_matrix],
            value: S::select(a.le(b), S::one(), S::zero()),
            da: S::zero(),
            db: S::zero(),
        },
        /// `ln(e^a + e^b)`, elementwise and stable (`jnp.logaddexp`); the derivative is
        /// `e^(a - y)` and `e^(b - y)`, ½ each at `a = b`.
        ///
        /// Computed as `max(a, b) + ln(1 + e^-|a - b|)`: no overflow, `-∞` for two `-∞`,
        /// `+∞` for two `+∞`, NaN for a NaN operand. The partial derivatives (each in
        /// `[0, 1]`, summing to 1) are `jnp.logaddexp`'s rule; like it, they are NaN at
        /// `a = b = -∞`. `exp` and `ln_1p` run lane by lane on packets (`f32`'s
        /// functions), so lanes equal separate `f32` runs.
        LogAddExp(a, b, y, t) {
            function: logaddexp,
            written: "logaddexp(a, b)",
            on: [scalars, matrices, matrix_scalar, scalar_matrix],
            value: {
                let m = <markers::Max as Pointwise2<S>>::f(a, b);
                let d = -(a - b).abs();
                // `d` is NaN for equal infinities: the sum is then the maximum itself.
                let tail = (d.per_lane(f32::exp, f64::exp)).per_lane(f32::ln_1p, f64::ln_1p);
                m + S::select(d.le(S::zero()), tail, S::zero())
            },
            da: (a - y).per_lane(f32::exp, f64::exp) * t,
            db: (b - y).per_lane(f32::exp, f64::exp) * t,
        },
    }
    unary {
        /// Sum of all elements (a scalar's sum is itself).
        sum => Sum,
        /// Mean of all elements.
        mean => Mean,
        /// Sum of the squares of all elements.
        norm_squared => NormSquared,
        /// The transpose (a column vector becomes a row vector and back).
        transpose => Transpose,
        /// Log-softmax: over all elements of a column vector; per row of a matrix (one
        /// example per row). Stable for logits of any magnitude.
        log_softmax => LogSoftmax,
        /// `ln Σ e^x` over all elements, stable for logits of any magnitude.
        log_sum_exp => LogSumExp,
    }
    binary {
        /// Inner product of two equal-shaped vectors or matrices: the sum of elementwise
        /// products.
        dot => Dot,
        /// Column `j` of a matrix times entry `j` of a vector (`x * scale` with a
        /// `[features]` scale broadcast over the rows, as `hk.LayerNorm`'s learned scale).
        scale_columns => ScaleColumns,
        /// `[a b]`: the columns of `b` after those of `a` (`jnp.concatenate([a, b], axis=1)`);
        /// matrices with equal row counts, or row vectors.
        hconcat => HConcat,
        /// `[a; b]`: the rows of `b` below those of `a` (`jnp.concatenate([a, b], axis=0)`);
        /// matrices with equal column counts, or column vectors.
        vconcat => VConcat,
    }
    special {
        powi => Powi: integer_exponent,
        softmax_cross_entropy => SoftmaxCrossEntropy: labels,
        im2col => Im2col: data,
        avg_pool => AvgPool2d: data,
        max_pool => MaxPool2d: data,
        global_mean_pool => GlobalMeanPool: data,
        embed => Embed: data,
        take_along => TakeAlong: data,
        layer_norm => LayerNorm: data,
        rms_norm => RmsNorm: data,
        rows => Rows: two_sizes,
        columns => Columns: two_sizes,
        reshape => Reshape: two_sizes,
        causal_self_attention => CausalSelfAttention: data,
        clip => Clip: scalar_bounds,
    }
}

/// `x^n` for an integer `n` (the op carries `n`), elementwise.
impl<S: Real> Pointwise<S> for op::Powi {
    #[inline(always)]
    fn f(&self, x: S) -> S {
        x.powi(self.0)
    }
    #[inline(always)]
    fn d(&self, x: S, _y: S, t: S) -> S {
        // n = 0 is constant; x^(n-1) would be 0 * inf at x = 0.
        if self.0 == 0 {
            S::zero()
        } else {
            S::c(self.0 as f64) * x.powi(self.0 - 1) * t
        }
    }
}
lift_unary!(op::Powi);

#[cfg(test)]
mod tests {
    /// `(name, marker, kind)` of every entry `__with_primitives!` passes on.
    macro_rules! as_table {
        ([$($name:tt $op:ident $kind:ident,)*]) => {
            const TABLE: &[(&str, &str, &str)] =
                &[$((stringify!($name), stringify!($op), stringify!($kind))),*];
        };
    }
    __with_primitives!((as_table));

    fn find(name: &str) -> Option<(&'static str, &'static str)> {
        TABLE.iter().find(|e| e.0 == name).map(|e| (e.1, e.2))
    }

    /// The list the `#[task]` macros read names every section with its kind: elementwise
    /// unary and binary, the ruled ones, each special form, operators as `_`. Catches a
    /// section or a kind dropped from `__with_primitives!` (its names would then lower as
    /// calls to `#[differentiable]` functions that do not exist, or wrongly).
    #[test]
    fn the_list_names_every_primitive_with_its_kind() {
        assert_eq!(find("exp"), Some(("Exp", "unary")));
        assert_eq!(find("atan"), Some(("Atan", "unary")));
        assert_eq!(find("sum"), Some(("Sum", "unary")));
        assert_eq!(find("max"), Some(("Max", "binary")));
        assert_eq!(find("component_div"), Some(("ComponentDiv", "binary")));
        assert_eq!(find("logaddexp"), Some(("LogAddExp", "binary")));
        assert_eq!(find("hconcat"), Some(("HConcat", "binary")));
        assert_eq!(find("powi"), Some(("Powi", "integer_exponent")));
        assert_eq!(
            find("softmax_cross_entropy"),
            Some(("SoftmaxCrossEntropy", "labels"))
        );
        assert_eq!(find("embed"), Some(("Embed", "data")));
        assert_eq!(find("columns"), Some(("Columns", "two_sizes")));
        assert_eq!(find("clip"), Some(("Clip", "scalar_bounds")));
        assert_eq!(find("floor"), None);
        let operators: Vec<&str> = TABLE.iter().filter(|e| e.0 == "_").map(|e| e.1).collect();
        assert_eq!(
            operators,
            ["Add", "AddRelu", "Sub", "Mul", "Div", "Gt", "Ge", "Lt", "Le"]
        );
        // Every name once, and at least today's 18 elementwise unary, 6 elementwise
        // binary, 6 reductions, 4 other binary and 15 special (a bound, so adding a
        // primitive does not touch this test).
        let mut names: Vec<&str> = TABLE.iter().map(|e| e.0).filter(|n| *n != "_").collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a name declared twice");
        assert!(n >= 49, "{n} names");
    }
}
