//! `log_softmax`, `log_sum_exp` and `softmax_cross_entropy`, computed stably (the max is
//! subtracted before exponentiating, so logits of any magnitude stay finite), with the
//! vectorizable `exp` of `exp.rs`.
//!
//! A matrix holds one example per row. Rows are strided in column-major storage, so each
//! kernel sweeps whole columns and keeps one accumulator per row: contiguous, vectorized
//! (256 bits wide where the CPU has AVX2, chosen at run time).

use nalgebra::allocator::Allocator;
use nalgebra::{DMatrix, DVector, DefaultAllocator, Dim, OMatrix, U1};

use super::elementwise::build_like;
use super::exp::exp;
use super::gemm::has_avx2;
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
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide<S: Real>(x: &[S], rows: usize) -> Vec<S> {
            row_log_sum_exp_in(x, rows)
        }
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { wide(x, rows) };
    }
    row_log_sum_exp_in(x, rows)
}

/// The loops of [`row_log_sum_exp`], always inlined: compiled once for the baseline and
/// once for AVX2 (same operations and roundings, twice as wide).
#[inline(always)]
fn row_log_sum_exp_in<S: Real>(x: &[S], rows: usize) -> Vec<S> {
    // Row maxima, eight rows at a time held in registers across the columns (a
    // read-modify-write of `m` per column becomes a masked store with AVX: slow). The
    // order of the comparisons, hence NaN handling, is that of a column sweep.
    let mut m = x[..rows].to_vec();
    let mut chunks = m.chunks_exact_mut(8);
    for (i0, mc) in (0..).step_by(8).zip(&mut chunks) {
        let mut acc: [S; 8] = (&*mc).try_into().expect("chunks of 8");
        for col in x.chunks_exact(rows).skip(1) {
            let c: &[S; 8] = col[i0..i0 + 8].try_into().expect("8 rows");
            for (a, &v) in acc.iter_mut().zip(c) {
                *a = a.max(v);
            }
        }
        mc.copy_from_slice(&acc);
    }
    let done = rows - chunks.into_remainder().len();
    for col in x.chunks_exact(rows).skip(1) {
        for (m, &v) in m[done..].iter_mut().zip(&col[done..]) {
            *m = m.max(v);
        }
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
    let mut out = vec![S::zero(); a.len().min(b.len())];
    if rows > 0 {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide<S: Real>(
                a: &[S],
                b: &[S],
                rows: usize,
                row: &[S],
                f: &impl Fn(S, S, S) -> S,
                out: &mut [S],
            ) {
                per_row_in(a, b, rows, row, f, out)
            }
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { wide(a, b, rows, row, &f, &mut out) };
            return out;
        }
        per_row_in(a, b, rows, row, &f, &mut out);
    }
    out
}

/// The loops of [`per_row`], always inlined (as [`row_log_sum_exp_in`]).
#[inline(always)]
fn per_row_in<S: Real>(
    a: &[S],
    b: &[S],
    rows: usize,
    row: &[S],
    f: &impl Fn(S, S, S) -> S,
    out: &mut [S],
) {
    let cols = a.chunks_exact(rows).zip(b.chunks_exact(rows));
    for (co, (ca, cb)) in out.chunks_exact_mut(rows).zip(cols) {
        for (((o, &a), &b), &r) in co.iter_mut().zip(ca).zip(cb).zip(row) {
            *o = f(a, b, r);
        }
    }
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
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide<S: Real>(a: &[S], b: &[S], rows: usize, f: &impl Fn(S) -> S, s: &mut [S]) {
            row_dot_in(a, b, rows, f, s)
        }
        // SAFETY: the CPU has AVX2 and FMA.
        unsafe { wide(a, b, rows, &f, &mut s) };
        return s;
    }
    row_dot_in(a, b, rows, &f, &mut s);
    s
}

/// The loops of [`row_dot`], always inlined (as [`row_log_sum_exp_in`]).
#[inline(always)]
fn row_dot_in<S: Real>(a: &[S], b: &[S], rows: usize, f: &impl Fn(S) -> S, s: &mut [S]) {
    for (ca, cb) in a.chunks_exact(rows).zip(b.chunks_exact(rows)) {
        for ((s, &a), &b) in s.iter_mut().zip(ca).zip(cb) {
            *s += f(a) * b;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Row log-sum-exp and the cross-entropy gradient on shapes with full blocks of eight
    /// rows and a remainder, against per-row sums written out in f64.
    #[test]
    fn row_kernels_match_per_row_sums_on_tall_matrices() {
        // scale 30: logits up to ±120, beyond f32's exp range unless the row max is right
        for (rows, cols, scale) in [
            (19, 5, 1.0),
            (16, 10, 30.0),
            (8, 1, 1.0),
            (7, 3, 30.0),
            (33, 2, 30.0),
        ] {
            let x = DMatrix::<f64>::from_fn(rows, cols, |i, j| {
                (((i * 7 + j * 13) % 11) as f64 * 0.7 - 3.0) * scale
            });
            let labels: Vec<i32> = (0..rows).map(|i| (i % cols) as i32).collect();
            let lse = |i: usize| {
                let m = (0..cols).map(|j| x[(i, j)]).fold(f64::MIN, f64::max);
                m + (0..cols).map(|j| (x[(i, j)] - m).exp()).sum::<f64>().ln()
            };
            let got = row_log_sum_exp(x.as_slice(), rows);
            let x32 = x.map(|v| v as f32);
            let got32 = row_log_sum_exp(x32.as_slice(), rows);
            let sce = op::SoftmaxCrossEntropy(&labels);
            let out = Unary::eval(&x32, &sce);
            let g = DVector::from_fn(rows, |i, _| 1.0 + i as f32 * 0.1);
            let d = Unary::vjp(&x32, &sce, &out, &g);
            for i in 0..rows {
                let (l, scale) = (lse(i), lse(i).abs().max(1.0));
                assert!((got[i] - l).abs() < 1e-14 * scale, "{rows}x{cols} row {i}");
                assert!(
                    (got32[i] as f64 - l).abs() < 1e-6 * scale,
                    "{rows}x{cols} row {i}"
                );
                for j in 0..cols {
                    let p = (x[(i, j)] - lse(i)).exp()
                        - if j == labels[i] as usize { 1.0 } else { 0.0 };
                    let want = p * (1.0 + i as f64 * 0.1);
                    assert!(
                        (d[(i, j)] as f64 - want).abs() < 1e-5,
                        "{rows}x{cols} ({i}, {j})"
                    );
                }
            }
        }
    }
}
