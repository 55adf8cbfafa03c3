//! The primitives of the loss language as plain functions, for hand-written code.
//!
//! They are declared, with their rules, in [`crate::primitives`]; this module gathers
//! their functions. Its path is [`crate::ops`] (`lopt::ops`), re-exported from here.
//!
//! Each function evaluates the same rule the `#[task]` macro calls for its value path,
//! so a hand-written loss that uses them computes exactly what the generated code does.
//! They accept every type the rules do: scalars (`f32`, `f64`, any [`Real`]), nalgebra
//! matrices and vectors (dynamic and static).
//!
//! ```
//! use lopt_runtime::ops;
//! use nalgebra::{DMatrix, DVector};
//!
//! let logits = DMatrix::from_row_slice(2, 3, &[1.0, 2.0, 3.0, 0.0, 0.0, 0.0]);
//! let losses: DVector<f64> = ops::softmax_cross_entropy(&logits, &[2, 0]);
//! assert!((losses[1] - 3f64.ln()).abs() < 1e-12);
//! assert_eq!(ops::relu(&-2.0f32), 0.0);
//! let h = ops::tanh(&(&logits * 0.5));
//! assert_eq!(h.shape(), (2, 3));
//! ```
//!
//! [`Real`]: crate::Real

use crate::ad::{op, Unary};

pub use crate::primitives::declared::binary_functions::*;
pub use crate::primitives::declared::elementwise_binary_functions::*;
pub use crate::primitives::declared::functions::*;
pub use crate::primitives::declared::unary_functions::*;

/// An affine layer `x·w + b` as one rule (the bias added inside the product); see
/// [`crate::ad::affine`].
pub use crate::ad::affine::linear;
/// The LSTM over a whole sequence as one rule (`hk.dynamic_unroll(hk.LSTM)`); see
/// [`crate::ad::lstm`].
pub use crate::ad::lstm::lstm_sequence;
/// `hk.LayerNorm` with its scale and offset as one rule; see
/// [`crate::ad::norm::layer_norm_affine()`].
pub use crate::ad::norm::layer_norm_affine;

/// `x^n`, elementwise, for an integer `n`.
#[inline]
pub fn powi<X: Unary<op::Powi>>(x: &X, n: i32) -> X::Out {
    x.eval(&op::Powi(n))
}

/// Per-example softmax cross-entropy: `logits` has one example per row, `labels[i]` is
/// the class of row `i`; returns the vector of losses `-log_softmax(logits)[i, labels[i]]`.
///
/// # Panics
/// When `labels` does not have one entry per row or a label is not a column index.
#[inline]
#[track_caller]
pub fn softmax_cross_entropy<'a, X: Unary<op::SoftmaxCrossEntropy<'a>>>(
    logits: &X,
    labels: &'a [i32],
) -> X::Out {
    logits.eval(&op::SoftmaxCrossEntropy::new(labels))
}

/// Rows `start..start + len` of a matrix, or a segment of a column vector
/// (`x[start:start+len]`); what `x.rows(start, len)` lowers to in a loss.
///
/// # Panics
/// When the rows are not all inside `x`.
#[inline]
#[track_caller]
pub fn rows<X: Unary<op::Rows>>(x: &X, start: usize, len: usize) -> X::Out {
    x.eval(&op::Rows(start, len))
}

/// Columns `start..start + len` of a matrix, or a segment of a row vector
/// (`x[:, start:start+len]`); what `x.columns(start, len)` lowers to in a loss.
///
/// # Panics
/// When the columns are not all inside `x`.
#[inline]
#[track_caller]
pub fn columns<X: Unary<op::Columns>>(x: &X, start: usize, len: usize) -> X::Out {
    x.eval(&op::Columns(start, len))
}

/// The elements of a matrix in row-major order laid out as `rows × cols`
/// (`jnp.reshape(x, (rows, cols))`).
///
/// # Panics
/// When `rows * cols` is not the number of elements.
#[inline]
#[track_caller]
pub fn reshape<X: Unary<op::Reshape>>(x: &X, rows: usize, cols: usize) -> X::Out {
    x.eval(&op::Reshape(rows, cols))
}

/// `select(mask, a, b)` (`jnp.where(mask, a, b)`): per element, `a` where the mask is
/// non-zero, else `b`. A scalar `a` or `b` is broadcast over a matrix mask.
///
/// # Panics
/// When a matrix operand does not have the mask's shape.
#[inline]
#[track_caller]
pub fn select<M: crate::ad::Where<A, B>, A, B>(mask: &M, a: &A, b: &B) -> M::Out {
    mask.eval(a, b)
}

/// `x` clipped to `[lo, hi]`, elementwise (`jnp.clip(x, lo, hi)`).
#[inline]
pub fn clip<S, X: Unary<op::Clip<S>>>(x: &X, lo: S, hi: S) -> X::Out {
    x.eval(&op::Clip(lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{DMatrix, DVector, SVector};

    #[test]
    fn functions_match_closed_forms() {
        let v = DVector::from_vec(vec![-1.5f64, 0.25, 2.0]);
        assert_eq!(exp(&v), v.map(f64::exp));
        assert_eq!(sum(&v), 0.75);
        assert_eq!(mean(&v), 0.25);
        assert_eq!(norm_squared(&v), 2.25 + 0.0625 + 4.0);
        assert_eq!(dot(&v, &v), norm_squared(&v));
        assert_eq!(powi(&v, 2), v.map(|x| x * x));
        assert_eq!(relu(&v), DVector::from_vec(vec![0.0, 0.25, 2.0]));
        assert_eq!(max(&v, &0.0), relu(&v));
        assert_eq!(min(&1.0, &2.0), 1.0);
        assert_eq!(powf(&4.0f64, &0.5), 2.0);
        assert_eq!(transpose(&v).shape(), (1, 3));
        assert_eq!(component_mul(&v, &v), v.map(|x| x * x));
        assert_eq!(component_div(&v, &v), DVector::from_element(3, 1.0));
        // Φ(1) = 0.841344746068543 (tables)
        assert!((gelu(&1.0f64) - 0.841_344_746_068_543).abs() < 1e-9);
        assert!((sigmoid(&0.0f32) - 0.5).abs() < 1e-7);
        assert_eq!(softplus(&1000.0f64), 1000.0);
        assert!(softplus(&-1000.0f64) >= 0.0 && softplus(&-1000.0f64) < 1e-300);
        assert_eq!(sigmoid(&-1000.0f64), 0.0);
        assert_eq!(sigmoid(&1000.0f32), 1.0);
        assert!((softplus(&0.0f64) - 2f64.ln()).abs() < 1e-15);
        let s = SVector::<f32, 2>::new(0.0, 0.0);
        assert!((log_sum_exp(&s) - 2f32.ln()).abs() < 1e-6);
        let m = DMatrix::from_row_slice(1, 2, &[0.0, 0.0]);
        assert!((log_softmax(&m)[(0, 1)] + 2f64.ln()).abs() < 1e-15);
        assert_eq!(softmax_cross_entropy(&m, &[1])[0], 2f64.ln());
        assert_eq!(abs(&-3.0f64), 3.0);
        assert_eq!(square(&-3.0f64), 9.0);
        assert_eq!(sqrt(&9.0f64), 3.0);
        assert_eq!(ln(&1.0f64), 0.0);
        assert_eq!(tanh(&0.0f64), 0.0);
        assert_eq!(sin(&0.0f64), 0.0);
        assert_eq!(cos(&0.0f64), 1.0);
    }
}
