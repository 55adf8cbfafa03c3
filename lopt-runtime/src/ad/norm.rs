//! Normalization over each row's features: `layer_norm` (`hk.LayerNorm(axis=-1)` without
//! its scale and offset, which are `scale_columns(x, scale)` and a broadcast bias) and
//! `rms_norm` (`hk.RMSNorm` likewise).
//!
//! Per row, with `r = 1 / sqrt(v + eps)`: layer norm is `x̂ = (x − mean x) · r` with the
//! two-pass variance `v = mean((x − mean x)²)` (as `jnp.var`), RMS norm is `x̂ = x · r` with
//! `v = mean(x²)`. Both Jacobians are symmetric, `r (I − 11ᵀ/n − x̂x̂ᵀ/n)` and
//! `r (I − x̂x̂ᵀ/n)`, so one formula serves the forward and the reverse mode.

use nalgebra::{DMatrix, DVector};

use crate::scalar::Real;

use super::reduce::{column_dots, column_sums};
use super::Unary;

/// The op of `layer_norm(x, eps)`: each row centred and scaled to unit variance.
#[derive(Debug, Clone, Copy)]
pub struct LayerNorm(pub f64);

/// The op of `rms_norm(x, eps)`: each row scaled to unit mean square.
#[derive(Debug, Clone, Copy)]
pub struct RmsNorm(pub f64);

impl LayerNorm {
    /// The op with `eps` (what `#[task]` builds for `layer_norm(x, eps)`).
    pub fn new(eps: &f64) -> Self {
        LayerNorm(*eps)
    }
}

impl RmsNorm {
    /// The op with `eps` (what `#[task]` builds for `rms_norm(x, eps)`).
    pub fn new(eps: &f64) -> Self {
        RmsNorm(*eps)
    }
}

/// `acc[i] = f(acc[i], aux[i], x_ij)` for every column `j` of a column-major `rows`-row
/// matrix in order (each row's fold runs over its columns in order). Four columns a
/// sweep: each accumulator is loaded and stored once per four columns, not once per
/// element, while the columns are still read contiguously.
#[inline(always)]
fn fold_rows<S: Real>(data: &[S], rows: usize, aux: &[S], acc: &mut [S], f: impl Fn(S, S, S) -> S) {
    let mut quads = data.chunks_exact(4 * rows);
    for q in quads.by_ref() {
        let (c0, rest) = q.split_at(rows);
        let (c1, rest) = rest.split_at(rows);
        let (c2, c3) = rest.split_at(rows);
        let cols = c0.iter().zip(c1).zip(c2).zip(c3);
        for ((a, &m), (((&x0, &x1), &x2), &x3)) in acc.iter_mut().zip(aux).zip(cols) {
            *a = f(f(f(f(*a, m, x0), m, x1), m, x2), m, x3);
        }
    }
    for col in quads.remainder().chunks_exact(rows) {
        for ((a, &m), &x) in acc.iter_mut().zip(aux).zip(col) {
            *a = f(*a, m, x);
        }
    }
}

/// Per row: the mean (zero when not `center`) and `r`, from two folds over `x`.
fn row_stats<S: Real>(x: &DMatrix<S>, eps: f64, center: bool) -> (Vec<S>, Vec<S>) {
    let (rows, n) = x.shape();
    assert!(n > 0, "normalizing rows of no features");
    let inv_n = S::from_f64(1.0 / n as f64);
    let xs = x.as_slice();
    let mut mean = vec![S::zero(); rows];
    if rows == 0 {
        return (mean, Vec::new());
    }
    if center {
        let zeros = vec![S::zero(); rows];
        fold_rows(xs, rows, &zeros, &mut mean, |a, _, x| a + x);
        mean.iter_mut().for_each(|m| *m *= inv_n);
    }
    let mut var = vec![S::zero(); rows];
    fold_rows(xs, rows, &mean, &mut var, |a, m, x| {
        let d = x - m;
        a + d * d
    });
    let eps = S::from_f64(eps);
    let rs: Vec<S> = var
        .iter()
        .map(|&v| S::one() / (v * inv_n + eps).sqrt())
        .collect();
    (mean, rs)
}

/// Per row: the normalized row and its `r` (the normalized matrix written in one pass,
/// not copied and then updated).
fn normalize<S: Real>(x: &DMatrix<S>, eps: f64, center: bool) -> (DMatrix<S>, Vec<S>) {
    let (rows, n) = x.shape();
    let (mean, rs) = row_stats(x, eps, center);
    if rows == 0 {
        return (x.clone(), rs);
    }
    let mut out = Vec::with_capacity(rows * n);
    for col in x.as_slice().chunks_exact(rows) {
        out.extend(
            col.iter()
                .zip(&mean)
                .zip(&rs)
                .map(|((&x, &m), &r)| (x - m) * r),
        );
    }
    (DMatrix::from_vec(rows, n, out), rs)
}

/// `r (t − [mean t] − x̂ · mean(x̂ t))` per row: the (symmetric) Jacobian applied to `t`,
/// written over `t`.
fn apply_jacobian<S: Real>(
    xhat: &DMatrix<S>,
    rs: &[S],
    mut t: DMatrix<S>,
    center: bool,
) -> DMatrix<S> {
    let (rows, _) = xhat.shape();
    let inv_n = S::from_f64(1.0 / xhat.ncols() as f64);
    if rows == 0 {
        return t;
    }
    let ts = t.as_slice();
    let mut mean_t = vec![S::zero(); rows];
    if center {
        let zeros = vec![S::zero(); rows];
        fold_rows(ts, rows, &zeros, &mut mean_t, |a, _, x| a + x);
        mean_t.iter_mut().for_each(|m| *m *= inv_n);
    }
    let mut proj = vec![S::zero(); rows];
    for (xc, tc) in xhat
        .as_slice()
        .chunks_exact(rows)
        .zip(ts.chunks_exact(rows))
    {
        for ((p, &x), &t) in proj.iter_mut().zip(xc).zip(tc) {
            *p += x * t;
        }
    }
    proj.iter_mut().for_each(|p| *p *= inv_n);
    for (oc, xc) in t
        .as_mut_slice()
        .chunks_exact_mut(rows)
        .zip(xhat.as_slice().chunks_exact(rows))
    {
        for (i, (o, &x)) in oc.iter_mut().zip(xc).enumerate() {
            *o = rs[i] * (*o - mean_t[i] - x * proj[i]);
        }
    }
    t
}

macro_rules! norm_rules {
    ($op:ident, $center:expr) => {
        impl<S: Real> Unary<$op> for DMatrix<S> {
            type Out = DMatrix<S>;
            fn eval(&self, op: &$op) -> DMatrix<S> {
                normalize(self, op.0, $center).0
            }
            // `out` is `x̂` (the value, as `eval` made it): only each row's `r` is
            // computed again, not the normalized matrix.
            fn jvp(&self, op: &$op, out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
                let rs = row_stats(self, op.0, $center).1;
                apply_jacobian(out, &rs, dx.clone(), $center)
            }
            fn vjp(&self, op: &$op, out: &DMatrix<S>, g: DMatrix<S>) -> DMatrix<S> {
                let rs = row_stats(self, op.0, $center).1;
                apply_jacobian(out, &rs, g, $center)
            }
        }
    };
}
norm_rules!(LayerNorm, true);
norm_rules!(RmsNorm, false);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    fn normal_matrix(r: usize, c: usize, seed: u64) -> DMatrix<f64> {
        let mut v = vec![0.0f32; r * c];
        Key::new(seed).fill_normal(&mut v);
        DMatrix::from_iterator(r, c, v.into_iter().map(|x| 2.0 * f64::from(x) + 0.3))
    }

    /// hk.LayerNorm's forward pass written out (mean, two-pass variance, rsqrt), and
    /// RMSNorm's, independent of the rules.
    fn by_definition(x: &DMatrix<f64>, eps: f64, center: bool) -> DMatrix<f64> {
        let mut y = x.clone();
        for mut row in y.row_iter_mut() {
            let n = row.len() as f64;
            let mean = if center { row.sum() / n } else { 0.0 };
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            row.iter_mut()
                .for_each(|v| *v = (*v - mean) / (var + eps).sqrt());
        }
        y
    }

    /// Values against the definitions; both modes against f64 central differences of
    /// them (a mutation that drops the mean of the tangent fails for layer norm).
    #[test]
    fn norms_match_their_definitions_and_differentiate() {
        for center in [true, false] {
            let x = normal_matrix(3, 5, 1);
            let eps = 1e-5;
            let (y, t, u) = (
                if center {
                    x.eval(&LayerNorm(eps))
                } else {
                    x.eval(&RmsNorm(eps))
                },
                normal_matrix(3, 5, 2),
                normal_matrix(3, 5, 3),
            );
            let want = by_definition(&x, eps, center);
            assert!((&y - &want).abs().max() < 1e-12);
            let h = 1e-6;
            let fd = (by_definition(&(&x + &t * h), eps, center)
                - by_definition(&(&x - &t * h), eps, center))
                / (2.0 * h);
            let (jvp, vjp) = if center {
                (
                    x.jvp(&LayerNorm(eps), &y, &t),
                    x.vjp(&LayerNorm(eps), &y, u.clone()),
                )
            } else {
                (
                    x.jvp(&RmsNorm(eps), &y, &t),
                    x.vjp(&RmsNorm(eps), &y, u.clone()),
                )
            };
            assert!((&jvp - &fd).abs().max() < 1e-6, "center={center}");
            assert!((vjp.dot(&t) - u.dot(&jvp)).abs() < 1e-10);
        }
    }

    /// The `f32` rules, which write their results in one pass (over the cotangent, for
    /// the reverse rules) and take `x̂` from the value, equal the straightforward form bit
    /// for bit: per-row statistics, `x̂ = (x − m)·r` and `r (t − mean t − x̂ · mean(x̂ t))`,
    /// with every sum in the order of the columns, and `scale_columns` as `x_ij · s_j`.
    /// Catches a rewrite that changes a rounding (tried: `x·r − m·r` for `(x − m)·r` in
    /// `normalize`: the value assertion fails).
    #[test]
    fn f32_rules_equal_the_straightforward_form_bit_for_bit() {
        let x = normal_matrix(37, 19, 4).map(|v| v as f32);
        let g = normal_matrix(37, 19, 5).map(|v| v as f32);
        let s = DVector::from_iterator(19, (0..19).map(|j| 0.5 + j as f32 / 7.0));
        let bits = |m: &DMatrix<f32>| m.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for center in [true, false] {
            let (rows, n) = x.shape();
            let inv_n = 1.0 / n as f32;
            let (mut mean, mut var) = (vec![0.0f32; rows], vec![0.0f32; rows]);
            for i in 0..rows {
                if center {
                    mean[i] = (0..n).fold(0.0, |a, j| a + x[(i, j)]) * inv_n;
                }
                var[i] = (0..n).fold(0.0, |a, j| {
                    let d = x[(i, j)] - mean[i];
                    a + d * d
                });
            }
            let r: Vec<f32> = var
                .iter()
                .map(|v| 1.0 / (v * inv_n + 1e-5).sqrt())
                .collect();
            let xhat = DMatrix::from_fn(rows, n, |i, j| (x[(i, j)] - mean[i]) * r[i]);
            let jac = |t: &DMatrix<f32>| {
                DMatrix::from_fn(rows, n, |i, j| {
                    let mt = if center {
                        (0..n).fold(0.0, |a, q| a + t[(i, q)]) * inv_n
                    } else {
                        0.0
                    };
                    let proj = (0..n).fold(0.0, |a, q| a + xhat[(i, q)] * t[(i, q)]) * inv_n;
                    r[i] * (t[(i, j)] - mt - xhat[(i, j)] * proj)
                })
            };
            let (y, jvp, vjp) = if center {
                let y = x.eval(&LayerNorm(1e-5));
                let jvp = x.jvp(&LayerNorm(1e-5), &y, &g);
                (y.clone(), jvp, x.vjp(&LayerNorm(1e-5), &y, g.clone()))
            } else {
                let y = x.eval(&RmsNorm(1e-5));
                let jvp = x.jvp(&RmsNorm(1e-5), &y, &g);
                (y.clone(), jvp, x.vjp(&RmsNorm(1e-5), &y, g.clone()))
            };
            assert_eq!(bits(&y), bits(&xhat), "value, center={center}");
            assert_eq!(bits(&jvp), bits(&jac(&g)), "jvp, center={center}");
            assert_eq!(bits(&vjp), bits(&jac(&g)), "vjp, center={center}");
        }
        let scaled = DMatrix::from_fn(37, 19, |i, j| x[(i, j)] * s[j]);
        let y = crate::ad::Binary::<ScaleColumns, _>::eval(&x, &s);
        assert_eq!(bits(&y), bits(&scaled));
        let (dx, ds) = crate::ad::Binary::<ScaleColumns, _>::vjp(&x, &s, &y, g.clone(), true, true);
        let want_dx = DMatrix::from_fn(37, 19, |i, j| g[(i, j)] * s[j]);
        assert_eq!(bits(&dx.unwrap()), bits(&want_dx));
        // `Σ_i g_ij x_ij` in the order of the library's sums: eight partial sums over
        // `i mod 8` up to the last full eight, then `((p0 + p4) + (p1 + p5)) + ((p2 + p6)
        // + (p3 + p7))` plus the tail summed on its own.
        let dot8 = |j: usize| {
            let (full, mut p) = (37 - 37 % 8, [0.0f32; 8]);
            (0..full).for_each(|i| p[i % 8] += g[(i, j)] * x[(i, j)]);
            let tail = (full..37).fold(0.0f32, |t, i| t + g[(i, j)] * x[(i, j)]);
            ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7])) + tail
        };
        let want_ds: Vec<u32> = (0..19).map(|j| dot8(j).to_bits()).collect();
        let ds: Vec<u32> = ds.unwrap().iter().map(|v| v.to_bits()).collect();
        assert_eq!(ds, want_ds);
    }

    /// `layer_norm_affine` equals `scale_columns(layer_norm(x, eps), s) + o` and its
    /// rules the composition's, bit for bit, in f32 and f64 (the reverse rule recomputes
    /// `x̂` and fuses the sums; a changed rounding or sum order fails here); and its
    /// tangent and cotangents match f64 central differences. Mutations tried, each
    /// fails: `(x − m)·(r·s)` for `((x − m)·r)·s` in the value; the tangent's row mean
    /// left out of `dx`.
    #[test]
    fn layer_norm_affine_is_the_composition() {
        use crate::ad::derivative_check::{check_derivatives, CheckOptions, Pair};
        use crate::ad::{op, Binary};
        fn one<S: Real>(x: &DMatrix<S>, s: &DVector<S>, o: &DVector<S>, g: &DMatrix<S>) {
            let ln = LayerNorm(1e-5);
            let xhat = crate::ad::Unary::<LayerNorm>::eval(x, &ln);
            let scaled: DMatrix<S> = Binary::<ScaleColumns, _>::eval(&xhat, s);
            let y: DMatrix<S> = Binary::<op::Add, _>::eval(&scaled, o);
            assert!(layer_norm_affine(x, s, o, 1e-5) == y, "value");
            let (gs, go) = Binary::<op::Add, _>::vjp(&scaled, o, &y, g.clone(), true, true);
            let (gx, gsc) =
                Binary::<ScaleColumns, _>::vjp(&xhat, s, &scaled, gs.unwrap(), true, true);
            let gx = crate::ad::Unary::<LayerNorm>::vjp(x, &ln, &xhat, gx.unwrap());
            let (dx, ds, d_o, _) = layer_norm_affine::vjp(x, s, o, 1e-5, g);
            assert!(dx.unwrap() == gx, "dx");
            assert!(ds.unwrap() == gsc.unwrap(), "ds");
            assert!(d_o.unwrap() == go.unwrap(), "do");
        }
        let x = normal_matrix(37, 19, 6);
        let g = normal_matrix(37, 19, 7);
        let s = DVector::from_iterator(19, (0..19).map(|j| 0.5 + j as f64 / 7.0));
        let o = DVector::from_iterator(19, (0..19).map(|j| j as f64 / 3.0 - 1.0));
        one(&x, &s, &o, &g);
        let f = |m: &DMatrix<f64>| m.map(|v| v as f32);
        let fv = |v: &DVector<f64>| v.map(|v| v as f32);
        one(&f(&x), &fv(&s), &fv(&o), &f(&g));

        type X = Pair<Pair<DMatrix<f64>, DVector<f64>>, DVector<f64>>;
        let at = Pair(
            Pair(normal_matrix(4, 6, 8), s.rows(0, 6).into_owned()),
            o.rows(0, 6).into_owned(),
        );
        let val = |p: &X| layer_norm_affine(&p.0 .0, &p.0 .1, &p.1, 1e-5);
        let jvp = |p: &X, t: &X| {
            layer_norm_affine::jvp(
                &p.0 .0,
                &p.0 .1,
                &p.1,
                1e-5,
                Some(&t.0 .0),
                Some(&t.0 .1),
                Some(&t.1),
                None,
            )
            .1
        };
        let vjp = |p: &X, g: &DMatrix<f64>| {
            let (dx, ds, d_o, _) = layer_norm_affine::vjp(&p.0 .0, &p.0 .1, &p.1, 1e-5, g);
            Pair(Pair(dx.unwrap(), ds.unwrap()), d_o.unwrap())
        };
        let opts = CheckOptions::default();
        let r = check_derivatives(&at, val, jvp, vjp, &opts);
        assert!(r.passed(&opts), "{r}");
    }
}

/// Columns a sweep of the layer norm's reverse rule: the scale's sums of the group run
/// together ([`column_dots`]), and its `x̂` stays in L1.
const GROUP: usize = 8;

/// Column `j` of a column-major `rows`-row matrix.
fn column<S>(m: &[S], rows: usize, j: usize) -> &[S] {
    &m[j * rows..(j + 1) * rows]
}

/// The op of `scale_columns(x, s)`: column `j` of the matrix `x` times `s[j]` (the
/// learned scale of `hk.LayerNorm` / `hk.RMSNorm`, `x * scale` with the `[features]`
/// vector broadcast over the rows, as `jnp` broadcasts it).
#[derive(Debug, Clone, Copy, Default)]
pub struct ScaleColumns;

impl<S: Real> super::Binary<ScaleColumns, DVector<S>> for DMatrix<S> {
    type Out = DMatrix<S>;
    #[track_caller]
    fn eval(&self, s: &DVector<S>) -> DMatrix<S> {
        if s.len() != self.ncols() {
            super::shape::shape_panic(
                "scale_columns(x, s)",
                self.shape(),
                s.shape(),
                "s needs one entry per column of x",
            );
        }
        scaled(self, s)
    }
    fn jvp(
        &self,
        s: &DVector<S>,
        _out: &DMatrix<S>,
        dx: Option<&DMatrix<S>>,
        ds: Option<&DVector<S>>,
    ) -> DMatrix<S> {
        let mut t = match dx {
            Some(dx) => super::Binary::<ScaleColumns, _>::eval(dx, s),
            None => DMatrix::zeros(self.nrows(), self.ncols()),
        };
        if let Some(ds) = ds {
            for ((mut tc, xc), &dsj) in t.column_iter_mut().zip(self.column_iter()).zip(ds.iter()) {
                tc.axpy(dsj, &xc, S::one());
            }
        }
        t
    }
    fn vjp(
        &self,
        s: &DVector<S>,
        _out: &DMatrix<S>,
        g: DMatrix<S>,
        need_x: bool,
        need_s: bool,
    ) -> (Option<DMatrix<S>>, Option<DVector<S>>) {
        // ds_j = Σ_i g_ij x_ij, before g is reused for dx.
        let ds = need_s
            .then(|| DVector::from_vec(column_dots(g.as_slice(), self.as_slice(), g.shape())));
        // dx = g with its columns scaled, written over g.
        let dx = need_x.then(|| {
            let mut g = g;
            for (mut col, &sj) in g.column_iter_mut().zip(s.iter()) {
                col *= sj;
            }
            g
        });
        (dx, ds)
    }
}

/// `x` with column `j` times `s[j]`, written in one pass (not copied, then scaled).
fn scaled<S: Real>(x: &DMatrix<S>, s: &DVector<S>) -> DMatrix<S> {
    let rows = x.nrows();
    if rows == 0 {
        return x.clone();
    }
    let mut out = Vec::with_capacity(x.len());
    for (col, &sj) in x.as_slice().chunks_exact(rows).zip(s.iter()) {
        out.extend(col.iter().map(|&v| v * sj));
    }
    DMatrix::from_vec(rows, x.ncols(), out)
}

/// `scale_columns(layer_norm(x, eps), s) + o` in one rule: `hk.LayerNorm(axis=-1)` with
/// its scale and offset, what a pre-LN transformer applies before each block. The
/// forward pass writes `((x − mean)·r)·s_j + o_j` in one sweep (the composition writes
/// `x̂`, then the scaled matrix, then the offset one, and keeps all three); the reverse
/// rule recomputes `x̂` from `x` and the row statistics as it goes, taking the offset's
/// and the scale's sums and the Jacobian's row sums in one sweep over the cotangent and
/// writing `dx` in a second. Values, tangents and cotangents are the composition's bit
/// for bit (the same operations on each element, the same sums in the same order).
///
/// # Panics
/// When `s` or `o` does not have one entry per column of `x`.
#[track_caller]
pub fn layer_norm_affine<S: Real>(
    x: &DMatrix<S>,
    s: &DVector<S>,
    o: &DVector<S>,
    eps: f64,
) -> DMatrix<S> {
    check_affine(x, s, o);
    let (rows, n) = x.shape();
    if rows == 0 {
        return x.clone();
    }
    let (mean, rs) = row_stats(x, eps, true);
    let mut out = Vec::with_capacity(rows * n);
    for ((col, &sj), &oj) in x.as_slice().chunks_exact(rows).zip(s.iter()).zip(o.iter()) {
        out.extend(
            col.iter()
                .zip(&mean)
                .zip(&rs)
                .map(|((&x, &m), &r)| (x - m) * r * sj + oj),
        );
    }
    DMatrix::from_vec(rows, n, out)
}

#[track_caller]
fn check_affine<S: Real>(x: &DMatrix<S>, s: &DVector<S>, o: &DVector<S>) {
    assert!(
        s.len() == x.ncols() && o.len() == x.ncols(),
        "lopt: layer_norm_affine(x, s, o, eps): x is {:?}, s has {} entries and o {} (need \
         one per column of x)",
        x.shape(),
        s.len(),
        o.len()
    );
}

/// The rules of [`layer_norm_affine()`] (the convention of `#[differentiable]`
/// functions: `jvp(args, tangents) -> (value, tangent)`, `vjp(args, cotangent) ->
/// (cotangent of each argument)`; `eps` is data).
pub mod layer_norm_affine {
    use super::*;
    use crate::ad::{op, Binary, Unary};

    /// The value and its tangent: the composition's rules in turn (`layer_norm`'s,
    /// `scale_columns`' and the offset's).
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn jvp<S: Real>(
        x: &DMatrix<S>,
        s: &DVector<S>,
        o: &DVector<S>,
        eps: f64,
        dx: Option<&DMatrix<S>>,
        ds: Option<&DVector<S>>,
        d_o: Option<&DVector<S>>,
        _deps: Option<&f64>,
    ) -> (DMatrix<S>, DMatrix<S>) {
        check_affine(x, s, o);
        let ln = LayerNorm(eps);
        let xhat = Unary::<LayerNorm>::eval(x, &ln);
        let t1 = dx.map(|dx| Unary::<LayerNorm>::jvp(x, &ln, &xhat, dx));
        let scaled: DMatrix<S> = Binary::<ScaleColumns, _>::eval(&xhat, s);
        let y: DMatrix<S> = Binary::<op::Add, _>::eval(&scaled, o);
        let t2 = (t1.is_some() || ds.is_some())
            .then(|| Binary::<ScaleColumns, _>::jvp(&xhat, s, &scaled, t1.as_ref(), ds));
        let t = match (t2, d_o) {
            (None, None) => DMatrix::zeros(x.nrows(), x.ncols()),
            (t2, d_o) => Binary::<op::Add, _>::jvp(&scaled, o, &y, t2.as_ref(), d_o),
        };
        (y, t)
    }

    /// The cotangents of `x`, `s` and `o` (and none of `eps`) given the output's `g`.
    #[track_caller]
    #[allow(clippy::type_complexity)]
    pub fn vjp<S: Real>(
        x: &DMatrix<S>,
        s: &DVector<S>,
        o: &DVector<S>,
        eps: f64,
        g: &DMatrix<S>,
    ) -> (
        Option<DMatrix<S>>,
        Option<DVector<S>>,
        Option<DVector<S>>,
        Option<f64>,
    ) {
        check_affine(x, s, o);
        assert_eq!(
            g.shape(),
            x.shape(),
            "layer_norm_affine: the cotangent has the wrong shape"
        );
        let (rows, n) = x.shape();
        if rows == 0 {
            return (
                Some(x.clone()),
                Some(DVector::zeros(n)),
                Some(DVector::zeros(n)),
                None,
            );
        }
        let (mean, rs) = row_stats(x, eps, true);
        let inv_n = S::from_f64(1.0 / n as f64);
        let (xs, gs) = (x.as_slice(), g.as_slice());
        // The offset's column sums; the scale's are taken group by group below.
        let (d_o, mut ds) = (column_sums(gs, (rows, n)), Vec::with_capacity(n));
        let (mut mean_t, mut proj) = (vec![S::zero(); rows], vec![S::zero(); rows]);
        // `t = g·s_j` (scale_columns' cotangent), written where `dx` will be.
        let mut t = Vec::with_capacity(rows * n);
        // `x̂` of a group of columns, as the forward pass (and `normalize`) rounds it.
        let mut xhat = vec![S::zero(); GROUP * rows];
        for j0 in (0..n).step_by(GROUP) {
            let cols = GROUP.min(n - j0);
            for (c, xh) in xhat.chunks_exact_mut(rows).take(cols).enumerate() {
                let xc = column(xs, rows, j0 + c);
                for (((h, &x), &m), &r) in xh.iter_mut().zip(xc).zip(&mean).zip(&rs) {
                    *h = (x - m) * r;
                }
                t.extend(column(gs, rows, j0 + c).iter().map(|&v| v * s[j0 + c]));
            }
            // The scale's column sums over the group.
            let group = &gs[j0 * rows..(j0 + cols) * rows];
            ds.extend(column_dots(group, &xhat[..cols * rows], (rows, cols)));
            // Each row's `Σ_j t` and `Σ_j x̂·t`, in the order of the columns.
            let tg = &t[j0 * rows..];
            for c in 0..cols {
                let (tc, hc) = (column(tg, rows, c), column(&xhat, rows, c));
                for (((mt, p), &tv), &h) in mean_t.iter_mut().zip(&mut proj).zip(tc).zip(hc) {
                    *mt += tv;
                    *p += h * tv;
                }
            }
        }
        mean_t.iter_mut().for_each(|m| *m *= inv_n);
        proj.iter_mut().for_each(|p| *p *= inv_n);
        for (tc, xc) in t.chunks_exact_mut(rows).zip(xs.chunks_exact(rows)) {
            let stats = mean.iter().zip(&rs).zip(&mean_t).zip(&proj);
            for ((tv, &x), (((&m, &r), &mt), &p)) in tc.iter_mut().zip(xc).zip(stats) {
                *tv = r * (*tv - mt - (x - m) * r * p);
            }
        }
        (
            Some(DMatrix::from_vec(rows, n, t)),
            Some(DVector::from_vec(ds)),
            Some(DVector::from_vec(d_o)),
            None,
        )
    }
}
