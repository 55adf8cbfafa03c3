//! Every primitive of the loss language, each declared once.
//!
//! The `#[task]` macro's build script reads the names and kinds below (one
//! `name => Marker` line, indented four spaces, inside each `declare_*!` block); keep that
//! shape. An elementwise unary primitive is one entry of `declare_elementwise!` with its
//! rules: nothing else needs to change for a loss to call it (see [`crate::primitives`]).

use crate::ad::op;
use crate::primitives::Pointwise;
use crate::scalar::Real;

/// Declares elementwise unary primitives: for each, its marker (re-exported in
/// [`crate::ad::op`]), its [`Pointwise`] rule, its rules on scalars, matrices and vectors,
/// and its function (re-exported in [`crate::ops`]).
macro_rules! declare_elementwise {
    ($(
        $(#[$m:meta])*
        $name:ident => $op:ident($x:ident, $y:ident, $t:ident) {
            value: $value:expr,
            derivative: $d:expr $(,)?
        },
    )*) => {
        /// The marker types of the elementwise unary primitives.
        pub mod markers {
            $(
                #[doc = concat!("The op of [`", stringify!($name), "`](crate::ops::", stringify!($name), ").")]
                #[derive(Debug, Clone, Copy, Default)]
                pub struct $op;
            )*
        }
        $(
            impl<S: Real> Pointwise<S> for markers::$op {
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
            lift_unary!(markers::$op);
        )*
        /// The elementwise unary primitives as plain functions.
        pub mod functions {
            use crate::ad::Unary;
            $(
                $(#[$m])*
                #[inline]
                pub fn $name<X: Unary<super::markers::$op>>(x: &X) -> X::Out {
                    x.eval(&super::markers::$op)
                }
            )*
        }
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

/// Declares primitives whose rules are written in `ad/` (`Unary<Marker>` or
/// `Binary<Marker, _>` impls): the marker is in [`crate::ad::op`], this makes the
/// function in [`crate::ops`].
macro_rules! declare_ruled {
    (unary: $($(#[$m:meta])* $name:ident => $op:ident,)*) => {
        /// The primitives with rules in `ad/` taking one operand, as plain functions.
        pub mod unary_functions {
            use crate::ad::{op, Unary};
            $(
                $(#[$m])*
                #[inline]
                pub fn $name<X: Unary<op::$op>>(x: &X) -> X::Out {
                    x.eval(&op::$op)
                }
            )*
        }
    };
    (binary: $($(#[$m:meta])* $name:ident => $op:ident,)*) => {
        /// The primitives with rules in `ad/` taking two operands, as plain functions.
        pub mod binary_functions {
            use crate::ad::{op, Binary};
            $(
                $(#[$m])*
                #[inline]
                pub fn $name<A: Binary<op::$op, B>, B>(a: &A, b: &B) -> A::Out {
                    a.eval(b)
                }
            )*
        }
    };
}

/// Names primitives the `#[task]` macro lowers in a form of its own (non-differentiated
/// arguments); their functions are written in [`crate::ops`]. The forms:
/// `integer_exponent` (`op::X(n as i32)`), `labels` (`op::X::new(labels)`), `data`
/// (`op::X::new(&data)`), `two_sizes` (`op::X(a as usize, b as usize)`: `x.rows(i, n)`),
/// `scalar_bounds` (`op::X::new(lo, hi)` with `lo`, `hi` scalars: `clip(x, lo, hi)`).
macro_rules! declare_special {
    ($($name:ident => $op:ident: $form:ident,)*) => {
        // Each marker exists (generic and lifetime-carrying ones too).
        $(#[allow(unused_imports)] use crate::ad::op::$op as _;)*
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

/// `(½(1 + tanh u), tanh u)` with `u = √(2/π)(x + 0.044715 x³)`, as `jax.nn.gelu` writes it.
#[inline]
fn gelu_tanh_cdf<S: Real>(x: S) -> (S, S) {
    let th = (S::c(GELU_TANH_K) * (x + S::c(GELU_TANH_A) * (x * x * x))).tanh();
    (S::c(0.5) * (S::one() + th), th)
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

declare_elementwise! {
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
        value: x * gelu_tanh_cdf(x).0,
        derivative: {
            let (cdf, th) = gelu_tanh_cdf(x);
            let du = S::c(GELU_TANH_K) * (S::one() + S::c(3.0 * GELU_TANH_A) * x * x);
            (cdf + S::c(0.5) * x * (S::one() - th * th) * du) * t
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

declare_ruled! {
    unary:
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

declare_ruled! {
    binary:
    /// Elementwise maximum (scalars, equal-shaped matrices, or a matrix and a scalar); at
    /// ties the derivative goes to `a`.
    max => Max,
    /// Elementwise minimum; at ties the derivative goes to `a`.
    min => Min,
    /// `a^b`: scalars, or a matrix raised elementwise to a scalar power.
    powf => Powf,
    /// Inner product of two equal-shaped vectors or matrices: the sum of elementwise
    /// products.
    dot => Dot,
    /// Elementwise product of two equal-shaped matrices or vectors.
    component_mul => ComponentMul,
    /// Elementwise quotient of two equal-shaped matrices or vectors.
    component_div => ComponentDiv,
    /// Column `j` of a matrix times entry `j` of a vector (`x * scale` with a
    /// `[features]` scale broadcast over the rows, as `hk.LayerNorm`'s learned scale).
    scale_columns => ScaleColumns,
    /// `[a b]`: the columns of `b` after those of `a` (`jnp.concatenate([a, b], axis=1)`);
    /// matrices with equal row counts, or row vectors.
    hconcat => HConcat,
    /// `[a; b]`: the rows of `b` below those of `a` (`jnp.concatenate([a, b], axis=0)`);
    /// matrices with equal column counts, or column vectors.
    vconcat => VConcat,
    /// `ln(e^a + e^b)`, elementwise and stable (`jnp.logaddexp`); the derivative is
    /// `e^(a - y)` and `e^(b - y)`, ½ each at `a = b`.
    logaddexp => LogAddExp,
}

declare_special! {
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
