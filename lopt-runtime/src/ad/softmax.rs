//! `log_softmax`, `log_sum_exp` and `softmax_cross_entropy`, computed stably (the max is
//! subtracted before exponentiating, so logits of any magnitude stay finite), with the
//! vectorizable `exp` of `kernels/vecmath.rs`.
//!
//! A matrix holds one example per row. Rows are strided in column-major storage, so each
//! kernel sweeps whole columns and keeps one accumulator per row: contiguous, vectorized
//! (256 bits wide where the CPU has AVX2, chosen at run time).

use nalgebra::allocator::Allocator;
use nalgebra::{DMatrix, DVector, DefaultAllocator, Dim, OMatrix, U1};

use super::elementwise::update;
use super::op;
use super::reduce::{dot, sum, sum_by};
use super::shape::build_like;
use super::Unary;
use crate::kernels::cpu::with_avx2_fma;
use crate::kernels::vecmath::{exp, ln};
use crate::scalar::Real;

/// `ln Σ_j exp(x[i, j])` for every row `i` of the column-major `rows x (len / rows)` matrix
/// `x`.
pub(crate) fn row_log_sum_exp<S: Real>(x: &[S], rows: usize) -> Vec<S> {
    row_lse(x, rows, false).0
}

/// [`row_log_sum_exp`], also returning, when `keep`, `e[i, j] = exp(x[i, j] - max_j
/// x[i, j])` and `inv_s[i] = 1 / Σ_j e[i, j]` (so the softmax is `e[i, j] * inv_s[i]`):
/// the exponentials the sums need anyway, kept for a derivative.
#[allow(clippy::type_complexity)]
fn row_lse<S: Real>(x: &[S], rows: usize, keep: bool) -> (Vec<S>, Option<(Vec<S>, Vec<S>)>) {
    if rows == 0 {
        return (Vec::new(), keep.then(|| (Vec::new(), Vec::new())));
    }
    if x.is_empty() {
        let kept = keep.then(|| (Vec::new(), vec![S::zero(); rows]));
        return (vec![S::c(f64::NEG_INFINITY); rows], kept);
    }
    with_avx2_fma(|| row_lse_in(x, rows, keep))
}

/// The loops of [`row_lse`], always inlined: compiled once for the baseline and once for
/// AVX2 (same operations and roundings, twice as wide). Sweeps over whole columns with
/// one entry per row in a buffer (as [`mean_ce_in`]): the reads and writes are
/// sequential. Blocks of 8 rows held in registers across the columns read a column's 32
/// bytes at a time, `rows` elements apart: with 1,024–4,096 rows every such read maps to
/// the same few L1 sets, so each sweep came from L2 (`softmax_cross_entropy` took 6% of
/// the LSTM LM's gradient). Each row's maximum and sum are taken in the same order as
/// there (along the columns), so the results are the same bit for bit.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn row_lse_in<S: Real>(x: &[S], rows: usize, keep: bool) -> (Vec<S>, Option<(Vec<S>, Vec<S>)>) {
    // Row maxima (through `update`: a max kept in place would become a masked store).
    let mut cols = x.chunks_exact(rows);
    let mut m = cols.next().expect("a column").to_vec();
    for col in cols {
        update(&mut m, col, col, col, |t, v, _, _| t.max(v));
    }
    let mut s = vec![S::zero(); rows];
    let kept = if keep {
        let mut e = Vec::with_capacity(x.len());
        let spare = &mut e.spare_capacity_mut()[..x.len()];
        for (col, ecol) in x.chunks_exact(rows).zip(spare.chunks_exact_mut(rows)) {
            for (((e, &v), &m), s) in ecol.iter_mut().zip(col).zip(&m).zip(s.iter_mut()) {
                let t = exp(v - m);
                e.write(t);
                *s += t;
            }
        }
        // SAFETY: the columns cover all `x.len()` elements (`x.len()` is a multiple of
        // `rows`: a column-major matrix), and each was written above.
        unsafe { e.set_len(x.len()) };
        let inv_s = s.iter().map(|&s| S::one() / s).collect();
        Some((e, inv_s))
    } else {
        for col in x.chunks_exact(rows) {
            for ((s, &v), &m) in s.iter_mut().zip(col).zip(&m) {
                *s += exp(v - m);
            }
        }
        None
    };
    for (m, &s) in m.iter_mut().zip(&s) {
        *m += s.ln();
    }
    (m, kept)
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

/// `o[i, j] = f(o[i, j], b[i, j], r[i], s[i])` for every element of the column-major
/// `rows`-row matrices `o` and `b`, with per-row values `r` and `s`: in place, so callers
/// write into a buffer they own (a cotangent, a copy of the operand) instead of
/// allocating.
#[inline]
fn per_row_mut<S: Real>(
    o: &mut [S],
    b: &[S],
    rows: usize,
    r: &[S],
    s: &[S],
    f: impl Fn(S, S, S, S) -> S,
) {
    if rows == 0 {
        return;
    }
    with_avx2_fma(|| per_row_in(o, b, rows, r, s, &f));
}

/// The loops of [`per_row_mut`], always inlined (as [`row_lse_in`]).
#[inline(always)]
fn per_row_in<S: Real>(
    o: &mut [S],
    b: &[S],
    rows: usize,
    r: &[S],
    s: &[S],
    f: &impl Fn(S, S, S, S) -> S,
) {
    for (co, cb) in o.chunks_exact_mut(rows).zip(b.chunks_exact(rows)) {
        update(co, cb, r, s, f);
    }
}

/// `Σ_j a[i, j] b[i, j]` for every row.
fn row_dot<S: Real>(a: &[S], b: &[S], rows: usize, f: impl Fn(S) -> S) -> Vec<S> {
    let mut s = vec![S::zero(); rows];
    if rows == 0 {
        return s;
    }
    with_avx2_fma(|| row_dot_in(a, b, rows, &f, &mut s));
    s
}

/// The loops of [`row_dot`], always inlined (as [`row_lse_in`]).
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
        let mut y = self.clone();
        per_row_mut(
            y.as_mut_slice(),
            self.as_slice(),
            rows,
            &lse,
            &lse,
            |v, _, l, _| v - l,
        );
        y
    }
    fn jvp(&self, _op: &op::LogSoftmax, out: &Self, dx: &Self) -> Self {
        // dy = dx - Σ_j softmax_j dx_j, softmax = exp(y)
        let rows = rows_of(self);
        let pdx = row_dot(out.as_slice(), dx.as_slice(), rows, exp);
        let mut dy = dx.clone();
        per_row_mut(
            dy.as_mut_slice(),
            dx.as_slice(),
            rows,
            &pdx,
            &pdx,
            |t, _, s, _| t - s,
        );
        dy
    }
    fn vjp(&self, _op: &op::LogSoftmax, out: &Self, mut g: Self) -> Self {
        // g - softmax Σ_j g_j
        let rows = rows_of(self);
        let gs = row_dot(g.as_slice(), g.as_slice(), rows, |_| S::one());
        per_row_mut(
            g.as_mut_slice(),
            out.as_slice(),
            rows,
            &gs,
            &gs,
            |g, y, s, _| g - exp(y) * s,
        );
        g
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
    fn vjp(&self, _op: &op::LogSumExp, out: &S, g: S) -> Self {
        let y = *out;
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

/// What `softmax_cross_entropy`'s `eval` keeps for its derivative: the exponentials
/// `e` and the reciprocal row sums `inv_s` (the softmax is `e[i, j] * inv_s[i]`), and the
/// addresses of the logits and of the losses they came from (only compared).
struct Kept<S> {
    logits: usize,
    losses: usize,
    e: Vec<S>,
    inv_s: Vec<S>,
}

impl<'a> op::SoftmaxCrossEntropy<'a> {
    /// The softmax `eval` kept, if it was computed from `x` with output `out` (the first
    /// derivative takes it; a later one, or one for other logits, recomputes it).
    fn take_kept<S: Real>(&self, x: &DMatrix<S>, out: &DVector<S>) -> Option<Kept<S>> {
        let kept = self.1.take()?.downcast::<Kept<S>>().ok()?;
        let same = kept.logits == x.as_ptr() as usize
            && kept.losses == out.as_ptr() as usize
            && kept.e.len() == x.len()
            && kept.inv_s.len() == x.nrows();
        same.then_some(*kept)
    }
}

/// The softmax of `x` as `Kept` (exponentials and reciprocal row sums), recomputed from
/// the losses `out`: `ln Σ_j exp(x[i, j]) = out[i] + x[i, label_i]`.
fn recompute<S: Real>(x: &DMatrix<S>, labels: &[i32], out: &DVector<S>) -> Kept<S> {
    let (rows, xs) = (x.nrows(), x.as_slice());
    let lse: Vec<S> = (0..rows)
        .map(|i| out[i] + label_logit(xs, rows, labels, i))
        .collect();
    let mut e = xs.to_vec();
    per_row_mut(&mut e, xs, rows, &lse, &lse, |v, _, l, _| exp(v - l));
    Kept {
        logits: x.as_ptr() as usize,
        losses: out.as_ptr() as usize,
        e,
        inv_s: vec![S::one(); rows],
    }
}

impl<'a, S: Real> Unary<op::SoftmaxCrossEntropy<'a>> for DMatrix<S> {
    type Out = DVector<S>;
    /// The losses; the softmax they need is kept in `op` for the derivative that follows
    /// (saving it a pass of exponentials).
    #[track_caller]
    fn eval(&self, op: &op::SoftmaxCrossEntropy<'a>) -> DVector<S> {
        let (rows, cols) = self.shape();
        check_labels(&op.0, rows, cols);
        let x = self.as_slice();
        let (mut loss, kept) = row_lse(x, rows, true);
        let (e, inv_s) = kept.expect("kept exponentials");
        for (i, l) in loss.iter_mut().enumerate() {
            *l -= label_logit(x, rows, &op.0, i);
        }
        let loss = DVector::from_vec(loss);
        op.1.set(Some(Box::new(Kept {
            logits: self.as_ptr() as usize,
            losses: loss.as_ptr() as usize,
            e,
            inv_s,
        })));
        loss
    }
    fn jvp(&self, op: &op::SoftmaxCrossEntropy<'a>, out: &DVector<S>, dx: &Self) -> DVector<S> {
        // Σ_j softmax_ij dx_ij - dx[i, label_i]
        let rows = self.nrows();
        let k = op
            .take_kept(self, out)
            .unwrap_or_else(|| recompute(self, &op.0, out));
        let edx = row_dot(&k.e, dx.as_slice(), rows, |e| e);
        DVector::from_iterator(
            rows,
            (0..rows).map(|i| edx[i] * k.inv_s[i] - label_logit(dx.as_slice(), rows, &op.0, i)),
        )
    }
    fn vjp(&self, op: &op::SoftmaxCrossEntropy<'a>, out: &DVector<S>, g: DVector<S>) -> Self {
        // g_i (softmax_i - onehot(label_i)), written over the kept exponentials.
        let rows = self.nrows();
        let mut k = op
            .take_kept(self, out)
            .unwrap_or_else(|| recompute(self, &op.0, out));
        let gs = g.as_slice();
        let x = self.as_slice();
        per_row_mut(&mut k.e, x, rows, gs, &k.inv_s, |e, _, g, inv| {
            e * (g * inv)
        });
        for (i, &l) in op.0.iter().enumerate() {
            k.e[i + l as usize * rows] -= gs[i];
        }
        DMatrix::from_vec(rows, self.ncols(), k.e)
    }
}

/// The mean softmax cross-entropy of the column-major `rows x (x.len() / rows)` logits
/// `x` against `labels` (already validated), writing its gradient
/// `(softmax − onehot) / rows` over `g` (as long as `x`).
fn mean_ce<S: Real>(x: &[S], rows: usize, labels: &[i32], g: &mut [S]) -> S {
    with_avx2_fma(|| mean_ce_in(x, rows, labels, g))
}

/// The loops of [`mean_ce`], always inlined (as [`row_lse_in`]). Each is a sweep over
/// whole columns with one entry per row in a buffer (`m`, then `s`): long runs of
/// independent vector operations, where blocks of rows held in registers would leave
/// short chains waiting on each other.
#[inline(always)]
fn mean_ce_in<S: Real>(x: &[S], rows: usize, labels: &[i32], g: &mut [S]) -> S {
    if rows == 0 {
        // The mean of no losses, as `mean` of an empty vector gives.
        return S::zero() / S::zero();
    }
    let inv_b = S::one() / S::c(rows as f64);
    let mut buf = vec![S::zero(); 2 * rows];
    let (m, s) = buf.split_at_mut(rows);
    // Row maxima (through `update`: a max kept in place would become a masked store).
    let mut cols = x.chunks_exact(rows);
    m.copy_from_slice(cols.next().expect("validated labels imply a column"));
    for col in cols {
        update(m, col, col, col, |t, v, _, _| t.max(v));
    }
    // Exponentials into `g`, and their row sums.
    for (col, gcol) in x.chunks_exact(rows).zip(g.chunks_exact_mut(rows)) {
        for (((e, &v), &m), s) in gcol.iter_mut().zip(col).zip(&*m).zip(s.iter_mut()) {
            *e = exp(v - m);
            *s += *e;
        }
    }
    // Log-sum-exps (over `m`) and reciprocal row sums scaled by `1 / rows` (over `s`).
    for (m, s) in m.iter_mut().zip(s.iter_mut()) {
        *m += ln(*s);
        *s = inv_b / *s;
    }
    for gcol in g.chunks_exact_mut(rows) {
        for (v, &r) in gcol.iter_mut().zip(&*s) {
            *v *= r;
        }
    }
    // The label's logit out of each loss, and its one-hot out of the gradient.
    for (i, (m, &l)) in m.iter_mut().zip(labels).enumerate() {
        let y = i + l as usize * rows;
        *m -= x[y];
        g[y] -= inv_b;
    }
    sum(m) / S::c(rows as f64)
}

/// What `MeanSoftmaxCrossEntropy`'s `eval` keeps: the gradient, and the address and
/// length of the logits and the loss it came from (only compared).
struct KeptGrad<S> {
    logits: usize,
    len: usize,
    value: S,
    g: Vec<S>,
}

impl<'a> op::MeanSoftmaxCrossEntropy<'a> {
    /// The gradient `eval` kept, if it was computed from `x` with loss `out`; else
    /// computed again.
    fn grad<S: Real>(&self, x: &DMatrix<S>, out: &S) -> Vec<S> {
        let kept = self.1.take().and_then(|k| k.downcast::<KeptGrad<S>>().ok());
        match kept {
            Some(k) if k.logits == x.as_ptr() as usize && k.len == x.len() && k.value == *out => {
                k.g
            }
            _ => {
                let (rows, cols) = x.shape();
                check_labels(&self.0, rows, cols);
                let mut g = vec![S::zero(); x.len()];
                mean_ce(x.as_slice(), rows, &self.0, &mut g);
                g
            }
        }
    }
}

impl<'a, S: Real> Unary<op::MeanSoftmaxCrossEntropy<'a>> for DMatrix<S> {
    type Out = S;
    /// The mean loss; its gradient, made in the same sweep, is kept in `op` for the
    /// derivative that follows.
    #[track_caller]
    fn eval(&self, op: &op::MeanSoftmaxCrossEntropy<'a>) -> S {
        let (rows, cols) = self.shape();
        check_labels(&op.0, rows, cols);
        let mut g = vec![S::zero(); self.len()];
        let value = mean_ce(self.as_slice(), rows, &op.0, &mut g);
        op.1.set(Some(Box::new(KeptGrad {
            logits: self.as_ptr() as usize,
            len: self.len(),
            value,
            g,
        })));
        value
    }
    fn jvp(&self, op: &op::MeanSoftmaxCrossEntropy<'a>, out: &S, dx: &Self) -> S {
        if self.nrows() == 0 {
            // As `mean`'s tangent of no losses.
            return S::zero() / S::zero();
        }
        dot(&op.grad(self, out), dx.as_slice())
    }
    fn vjp(&self, op: &op::MeanSoftmaxCrossEntropy<'a>, out: &S, g: S) -> Self {
        let mut d = op.grad(self, out);
        for v in &mut d {
            *v *= g;
        }
        DMatrix::from_vec(self.nrows(), self.ncols(), d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `row_lse` is each row's sequential sweep bit for bit (maximum, then the sum of
    /// exponentials, both along the columns), with its exponentials and reciprocal sums,
    /// in `f32` and `f64`, on a tall matrix (rows no vector width divides) and a NaN.
    /// Mutations tried: the sums started from the second column; the maxima over all but
    /// the last column; each fails here.
    #[test]
    fn row_lse_is_each_rows_sequential_sweep_bit_for_bit() {
        fn check<S: Real>() {
            let (rows, cols) = (1030, 7);
            let mut x: Vec<S> = (0..rows * cols)
                .map(|q| S::c(((q * 37 % 101) as f64 - 50.0) * 0.37))
                .collect();
            x[5 + 3 * rows] = S::c(f64::NAN);
            let (lse, kept) = row_lse(&x, rows, true);
            let (e, inv_s) = kept.unwrap();
            let bits = |v: S| v.lane(0).to_bits();
            for i in 0..rows {
                let mut m = x[i];
                for j in 1..cols {
                    m = m.max(x[i + j * rows]);
                }
                let mut s = S::zero();
                for j in 0..cols {
                    let t = exp(x[i + j * rows] - m);
                    assert_eq!(bits(e[i + j * rows]), bits(t), "e[{i}, {j}]");
                    s += t;
                }
                assert_eq!(bits(lse[i]), bits(m + s.ln()), "lse[{i}]");
                assert_eq!(bits(inv_s[i]), bits(S::one() / s), "inv_s[{i}]");
            }
            let alone = row_lse(&x, rows, false).0;
            assert!(alone.iter().zip(&lse).all(|(&a, &b)| bits(a) == bits(b)));
        }
        check::<f32>();
        check::<f64>();
    }

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
            let sce = op::SoftmaxCrossEntropy::new(&labels);
            let out = Unary::eval(&x32, &sce);
            let g = DVector::from_fn(rows, |i, _| 1.0 + i as f32 * 0.1);
            let d = Unary::vjp(&x32, &sce, &out, g.clone());
            // Nothing kept (a fresh op; then the same op again, its softmax taken): the
            // softmax is recomputed, to the same values.
            let fresh = op::SoftmaxCrossEntropy::new(&labels);
            for d2 in [
                Unary::vjp(&x32, &fresh, &out, g.clone()),
                Unary::vjp(&x32, &sce, &out, g.clone()),
            ] {
                assert!((&d2 - &d).amax() < 1e-6, "{rows}x{cols}");
            }
            let dx = x32.map(|v| v.sin());
            let t = Unary::jvp(&x32, &sce, &out, &dx);
            let out2 = Unary::eval(&x32, &sce);
            assert_eq!(out2, out);
            let t_kept = Unary::jvp(&x32, &sce, &out2, &dx);
            assert!((&t - &t_kept).amax() < 1e-5, "{rows}x{cols}");
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
