//! `log_softmax`, `log_sum_exp` and `softmax_cross_entropy`, computed stably (the max is
//! subtracted before exponentiating, so logits of any magnitude stay finite), with the
//! vectorizable `exp` of `exp.rs`.
//!
//! A matrix holds one example per row. Rows are strided in column-major storage, so each
//! kernel sweeps whole columns and keeps one accumulator per row: contiguous, vectorized.

use nalgebra::allocator::Allocator;
use nalgebra::{DMatrix, DVector, DefaultAllocator, Dim, OMatrix, U1};

use super::elementwise::build_like;
use super::exp::exp;
use super::op;
use super::reduce::sum_by;
use super::Unary;
use crate::scalar::Real;

/// `ln Σ_j exp(x[i, j])` for every row `i` of the column-major `rows x (len / rows)` matrix
/// `x`.
pub(crate) fn row_log_sum_exp<S: Real>(x: &[S], rows: usize) -> Vec<S> {
    if rows == 0 {
        return Vec::new();
    }
    if x.is_empty() {
        return vec![S::c(f64::NEG_INFINITY); rows];
    }
    let mut m = x[..rows].to_vec();
    for col in x.chunks_exact(rows).skip(1) {
        m.iter_mut().zip(col).for_each(|(m, &v)| *m = m.max(v));
    }
    let mut s = vec![S::zero(); rows];
    for col in x.chunks_exact(rows) {
        s.iter_mut()
            .zip(col)
            .zip(&m)
            .for_each(|((s, &v), &m)| *s += exp(v - m));
    }
    m.iter_mut().zip(&s).for_each(|(m, &s)| *m += s.ln());
    m
}

/// The rows softmax runs over: a column vector is one set of logits; a matrix (or a row
/// vector) has one set per row.
#[inline]
fn rows_of<S: Real, R: Dim, C: Dim>(x: &OMatrix<S, R, C>) -> usize
where
    DefaultAllocator: Allocator<R, C>,
{
    if C::is::<U1>() {
        usize::from(!x.is_empty())
    } else {
        x.nrows()
    }
}

/// `f(a[i, j], b[i, j], row[i])` for every element, in column-major order.
#[inline]
fn per_row<S: Real>(a: &[S], b: &[S], rows: usize, row: &[S], f: impl Fn(S, S, S) -> S) -> Vec<S> {
    let mut out = Vec::with_capacity(a.len());
    if rows > 0 {
        for (ca, cb) in a.chunks_exact(rows).zip(b.chunks_exact(rows)) {
            out.extend(ca.iter().zip(cb).zip(row).map(|((&a, &b), &r)| f(a, b, r)));
        }
    }
    out
}

/// A matrix shaped like `like` holding `v` (column-major); reuses `v`'s buffer when
/// dynamic.
#[inline]
fn with_vec<S: Real, R: Dim, C: Dim>(like: &OMatrix<S, R, C>, v: Vec<S>) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    build_like(like, v.into_iter())
}

/// `Σ_j a[i, j] b[i, j]` for every row.
fn row_dot<S: Real>(a: &[S], b: &[S], rows: usize, f: impl Fn(S) -> S) -> Vec<S> {
    let mut s = vec![S::zero(); rows];
    if rows == 0 {
        return s;
    }
    for (ca, cb) in a.chunks_exact(rows).zip(b.chunks_exact(rows)) {
        s.iter_mut()
            .zip(ca)
            .zip(cb)
            .for_each(|((s, &a), &b)| *s += f(a) * b);
    }
    s
}

impl<S: Real, R: Dim, C: Dim> Unary<op::LogSoftmax> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = Self;
    fn eval(&self, _op: &op::LogSoftmax) -> Self {
        let rows = rows_of(self);
        let lse = row_log_sum_exp(self.as_slice(), rows);
        let x = self.as_slice();
        with_vec(self, per_row(x, x, rows, &lse, |v, _, l| v - l))
    }
    fn jvp(&self, _op: &op::LogSoftmax, out: &Self, dx: &Self) -> Self {
        // dy = dx - Σ_j softmax_j dx_j, softmax = exp(y)
        let rows = rows_of(self);
        let pdx = row_dot(out.as_slice(), dx.as_slice(), rows, exp);
        let dx = dx.as_slice();
        with_vec(self, per_row(dx, dx, rows, &pdx, |t, _, s| t - s))
    }
    fn vjp(&self, _op: &op::LogSoftmax, out: &Self, g: &Self) -> Self {
        // g - softmax Σ_j g_j
        let rows = rows_of(self);
        let gs = row_dot(g.as_slice(), g.as_slice(), rows, |_| S::one());
        let d = per_row(out.as_slice(), g.as_slice(), rows, &gs, |y, g, s| {
            g - exp(y) * s
        });
        with_vec(self, d)
    }
}

impl<S: Real, R: Dim, C: Dim> Unary<op::LogSumExp> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = S;
    fn eval(&self, _op: &op::LogSumExp) -> S {
        row_log_sum_exp(self.as_slice(), 1)[0]
    }
    fn jvp(&self, _op: &op::LogSumExp, out: &S, dx: &Self) -> S {
        let (y, x, dx) = (*out, self.as_slice(), dx.as_slice());
        sum_by(x.len().min(dx.len()), |i| exp(x[i] - y) * dx[i])
    }
    fn vjp(&self, _op: &op::LogSumExp, out: &S, g: &S) -> Self {
        let (y, g) = (*out, *g);
        build_like(self, self.as_slice().iter().map(|&x| exp(x - y) * g))
    }
}

/// Validates the labels once, in `eval` (the rules' derivatives run after it).
#[track_caller]
fn check_labels(labels: &[i32], rows: usize, cols: usize) {
    if labels.len() != rows {
        panic!(
            "lopt: softmax_cross_entropy got {} labels for {rows} examples (rows of the logits)",
            labels.len()
        );
    }
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l < 0 || l as usize >= cols)
    {
        panic!(
            "lopt: softmax_cross_entropy: label {l} of example {i} is out of range for {cols} \
             classes (columns of the logits)"
        );
    }
}

/// `x[(i, labels[i])]` (labels already validated).
fn label_logit<S: Real>(x: &[S], rows: usize, labels: &[i32], i: usize) -> S {
    x[i + labels[i] as usize * rows]
}

impl<'a, S: Real> Unary<op::SoftmaxCrossEntropy<'a>> for DMatrix<S> {
    type Out = DVector<S>;
    #[track_caller]
    fn eval(&self, op: &op::SoftmaxCrossEntropy<'a>) -> DVector<S> {
        let (rows, cols) = self.shape();
        check_labels(op.0, rows, cols);
        let x = self.as_slice();
        let lse = row_log_sum_exp(x, rows);
        DVector::from_iterator(
            rows,
            lse.iter()
                .enumerate()
                .map(|(i, &l)| l - label_logit(x, rows, op.0, i)),
        )
    }
    fn jvp(&self, op: &op::SoftmaxCrossEntropy<'a>, out: &DVector<S>, dx: &Self) -> DVector<S> {
        // Σ_j softmax_ij dx_ij - dx[i, label_i]
        let (rows, x) = (self.nrows(), self.as_slice());
        let lse: Vec<S> = (0..rows)
            .map(|i| out[i] + label_logit(x, rows, op.0, i))
            .collect();
        let p = per_row(x, x, rows, &lse, |v, _, l| exp(v - l));
        let pdx = row_dot(&p, dx.as_slice(), rows, |p| p);
        DVector::from_iterator(
            rows,
            (0..rows).map(|i| pdx[i] - label_logit(dx.as_slice(), rows, op.0, i)),
        )
    }
    fn vjp(&self, op: &op::SoftmaxCrossEntropy<'a>, out: &DVector<S>, g: &DVector<S>) -> Self {
        // g_i (softmax_i - onehot(label_i))
        let (rows, x) = (self.nrows(), self.as_slice());
        let lse: Vec<S> = (0..rows)
            .map(|i| out[i] + label_logit(x, rows, op.0, i))
            .collect();
        let mut d = per_row(x, x, rows, &lse, |v, _, l| exp(v - l));
        let gs = g.as_slice();
        for col in d.chunks_exact_mut(rows.max(1)) {
            col.iter_mut().zip(gs).for_each(|(p, &g)| *p *= g);
        }
        for (i, &l) in op.0.iter().enumerate() {
            d[i + l as usize * rows] -= gs[i];
        }
        DMatrix::from_vec(rows, self.ncols(), d)
    }
}
