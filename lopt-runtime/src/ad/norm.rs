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

/// `acc[i] = f(acc[i], i, column)` for every column of a column-major `rows`-row matrix
/// in order: a per-row fold over the features that sweeps memory contiguously (each row's
/// sum still runs over its columns in order, as a row-by-row fold would).
#[inline(always)]
fn fold_rows<S: Real>(data: &[S], rows: usize, acc: &mut [S], f: impl Fn(S, usize, S) -> S) {
    for col in data.chunks_exact(rows) {
        for (i, (a, &x)) in acc.iter_mut().zip(col).enumerate() {
            *a = f(*a, i, x);
        }
    }
}

/// Per row: the normalized row and its `r`.
fn normalize<S: Real>(x: &DMatrix<S>, eps: f64, center: bool) -> (DMatrix<S>, Vec<S>) {
    let (rows, n) = x.shape();
    assert!(n > 0, "normalizing rows of no features");
    let inv_n = S::from_f64(1.0 / n as f64);
    let mut out = x.clone();
    if rows == 0 {
        return (out, Vec::new());
    }
    let xs = x.as_slice();
    let mut mean = vec![S::zero(); rows];
    if center {
        fold_rows(xs, rows, &mut mean, |a, _, x| a + x);
        mean.iter_mut().for_each(|m| *m *= inv_n);
    }
    let mut var = vec![S::zero(); rows];
    fold_rows(xs, rows, &mut var, |a, i, x| {
        let d = x - mean[i];
        a + d * d
    });
    let eps = S::from_f64(eps);
    let rs: Vec<S> = var
        .iter()
        .map(|&v| S::one() / (v * inv_n + eps).sqrt())
        .collect();
    for col in out.as_mut_slice().chunks_exact_mut(rows) {
        for ((o, &m), &r) in col.iter_mut().zip(&mean).zip(&rs) {
            *o = (*o - m) * r;
        }
    }
    (out, rs)
}

/// `r (t − [mean t] − x̂ · mean(x̂ t))` per row: the (symmetric) Jacobian applied to `t`.
fn apply_jacobian<S: Real>(
    xhat: &DMatrix<S>,
    rs: &[S],
    t: &DMatrix<S>,
    center: bool,
) -> DMatrix<S> {
    let (rows, _) = xhat.shape();
    let inv_n = S::from_f64(1.0 / xhat.ncols() as f64);
    let mut out = t.clone();
    if rows == 0 {
        return out;
    }
    let ts = t.as_slice();
    let mut mean_t = vec![S::zero(); rows];
    if center {
        fold_rows(ts, rows, &mut mean_t, |a, _, x| a + x);
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
    for (oc, xc) in out
        .as_mut_slice()
        .chunks_exact_mut(rows)
        .zip(xhat.as_slice().chunks_exact(rows))
    {
        for (i, (o, &x)) in oc.iter_mut().zip(xc).enumerate() {
            *o = rs[i] * (*o - mean_t[i] - x * proj[i]);
        }
    }
    out
}

macro_rules! norm_rules {
    ($op:ident, $center:expr) => {
        impl<S: Real> Unary<$op> for DMatrix<S> {
            type Out = DMatrix<S>;
            fn eval(&self, op: &$op) -> DMatrix<S> {
                normalize(self, op.0, $center).0
            }
            fn jvp(&self, op: &$op, _out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
                let (xhat, rs) = normalize(self, op.0, $center);
                apply_jacobian(&xhat, &rs, dx, $center)
            }
            fn vjp(&self, op: &$op, _out: &DMatrix<S>, g: DMatrix<S>) -> DMatrix<S> {
                let (xhat, rs) = normalize(self, op.0, $center);
                apply_jacobian(&xhat, &rs, &g, $center)
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
        let mut y = self.clone();
        for (mut col, &sj) in y.column_iter_mut().zip(s.iter()) {
            col *= sj;
        }
        y
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
        let ds = need_s.then(|| {
            DVector::from_iterator(
                s.len(),
                g.column_iter()
                    .zip(self.column_iter())
                    .map(|(gc, xc)| gc.dot(&xc)),
            )
        });
        let dx = need_x.then(|| super::Binary::<ScaleColumns, _>::eval(&g, s));
        (dx, ds)
    }
}
