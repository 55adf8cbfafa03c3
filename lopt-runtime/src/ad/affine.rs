//! `linear(x, w, b) = x·w + b` (a bias per column, broadcast over the rows) as one rule:
//! an affine layer, what `x * w + b` computes, with the bias added to each block of the
//! product while the block is in registers instead of in a pass of its own over a second
//! matrix. The values are those of `x * w + b` bit for bit (each element is the
//! product's, rounded, plus the bias, rounded), and so are the tangent (the product's
//! and the bias's rules, composed) and the cotangents (`g·wᵀ`, `xᵀ·g`, and the column
//! sums of `g`).

use nalgebra::{DMatrix, DVector};

use super::matmul::{product_bias, product_vjp, View};
use super::reduce::column_sums;
use super::{op, Binary};
use crate::scalar::Real;

/// Panics with the shapes unless `x·w + b` is defined.
#[track_caller]
fn check<S: Real>(x: &DMatrix<S>, w: &DMatrix<S>, b: &DVector<S>) {
    assert!(
        x.ncols() == w.nrows() && b.len() == w.ncols(),
        "lopt: linear(x, w, b): x is {:?}, w {:?}, b has {} elements (need x's columns = w's \
         rows and one bias per column of w)",
        x.shape(),
        w.shape(),
        b.len()
    );
}

/// `x·w + b`, `b[j]` added to column `j` of the product: one rule for an affine layer
/// (see the [module](self)). The values are `x * w + b`'s.
///
/// # Panics
/// When the shapes do not fit (the message names them).
#[track_caller]
pub fn linear<S: Real>(x: &DMatrix<S>, w: &DMatrix<S>, b: &DVector<S>) -> DMatrix<S> {
    check(x, w, b);
    product_bias(View::of(x), w, b.as_slice())
}

/// The rules of [`linear()`] (the convention of `#[differentiable]` functions, which a
/// loss calls them by): `jvp(args, tangents) -> (value, tangent)` and
/// `vjp(args, cotangent) -> (cotangent of each argument)`.
pub mod linear {
    use super::*;

    /// The value and its tangent `dx·w + x·dw + db` (`None`: a constant argument), the
    /// product's tangent and then the bias's, as `x * w + b` composes them.
    #[track_caller]
    #[allow(clippy::type_complexity)]
    pub fn jvp<S: Real>(
        x: &DMatrix<S>,
        w: &DMatrix<S>,
        b: &DVector<S>,
        dx: Option<&DMatrix<S>>,
        dw: Option<&DMatrix<S>>,
        db: Option<&DVector<S>>,
    ) -> (DMatrix<S>, DMatrix<S>) {
        let y = super::linear(x, w, b);
        let (r, c) = y.shape();
        let mut t = match (dx, dw) {
            (None, None) => DMatrix::zeros(r, c),
            _ => Binary::<op::Mul, _>::jvp(x, w, &y, dx, dw),
        };
        if let Some(db) = db {
            assert_eq!(db.len(), c, "linear: the tangent of b has the wrong length");
            for (col, &d) in t.as_mut_slice().chunks_exact_mut(r.max(1)).zip(db.iter()) {
                col.iter_mut().for_each(|v| *v += d);
            }
        }
        (y, t)
    }

    /// The cotangents of `x`, `w` and `b` given the output's `g`: `g·wᵀ`, `xᵀ·g` and
    /// the column sums of `g`.
    #[track_caller]
    #[allow(clippy::type_complexity)]
    pub fn vjp<S: Real>(
        x: &DMatrix<S>,
        w: &DMatrix<S>,
        b: &DVector<S>,
        g: &DMatrix<S>,
    ) -> (Option<DMatrix<S>>, Option<DMatrix<S>>, Option<DVector<S>>) {
        check(x, w, b);
        assert_eq!(
            g.shape(),
            (x.nrows(), w.ncols()),
            "linear: the cotangent has the wrong shape"
        );
        let db = DVector::from_vec(column_sums(g.as_slice(), g.shape()));
        let (dx, dw) = product_vjp(x, w, g);
        (Some(dx), Some(dw), Some(db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ad::derivative_check::{check_derivatives, CheckOptions, Pair};
    use crate::key::Key;
    use crate::lanes::Lanes;

    fn normal<S: Real>(r: usize, c: usize, seed: u64) -> DMatrix<S> {
        let v = Key::new(seed).normal_vec::<f32>(r * c);
        DMatrix::from_iterator(r, c, v.into_iter().map(|x| S::from_f64(f64::from(x))))
    }

    fn unfused<S: Real>(x: &DMatrix<S>, w: &DMatrix<S>, b: &DVector<S>) -> DMatrix<S> {
        let p: DMatrix<S> = Binary::<op::Mul, _>::eval(x, w);
        Binary::<op::Add, _>::eval(&p, b)
    }

    /// The shapes that take each of the GEMM's routes: the broadcast kernels with `B`
    /// packed and split over threads (the transformer's 256 × 128 × 384), rows that end in
    /// an overlapping block (37) and a `k` in several chunks (600: the bias must wait for
    /// the last), a single row (dot kernel), an empty `k`, and `matrixmultiply` (512³).
    const SHAPES: [(usize, usize, usize); 6] = [
        (256, 128, 384),
        (37, 600, 29),
        (1, 9, 7),
        (5, 0, 3),
        (70, 13, 130),
        (512, 512, 512),
    ];

    /// `linear(x, w, b)` is `x * w + b` bit for bit (f32, f64, lanes) on every route,
    /// on one thread and three. Guards against the bias added on every chunk of `k`
    /// rather than the last (37 × 600 × 29; tried: fails), no bias on the non-broadcast
    /// routes (1 × 9 × 7 and 512³), a column's bias taken from another column.
    #[test]
    fn linear_is_the_product_plus_the_bias() {
        fn one<S: Real>(m: usize, k: usize, n: usize) {
            let (x, w) = (normal::<S>(m, k, 1), normal::<S>(k, n, 2));
            let b = DVector::from_iterator(n, normal::<S>(n, 1, 3).iter().copied());
            let want = unfused(&x, &w, &b);
            for threads in [1, 3] {
                let got = crate::on_threads(threads, || linear(&x, &w, &b));
                assert!(
                    got == want,
                    "{m}x{k}x{n} on {threads} threads: linear differs from x * w + b"
                );
            }
        }
        for (m, k, n) in SHAPES {
            one::<f32>(m, k, n);
            if m * k * n < 1 << 24 {
                one::<f64>(m, k, n);
                one::<Lanes<4>>(m, k, n);
            }
        }
    }

    /// Value, tangent and cotangents against f64 central differences (all three
    /// arguments at once), and the tangent and cotangents equal to the composition's
    /// rules. Guards against the bias's tangent left out of `jvp`, the column sums taken
    /// over rows or from the wrong column.
    #[test]
    fn linear_differentiates() {
        let (m, k, n) = (6, 4, 5);
        let x = normal::<f64>(m, k, 4);
        let w = normal::<f64>(k, n, 5);
        let b = DVector::from_iterator(n, normal::<f64>(n, 1, 6).iter().copied());
        type X = Pair<Pair<DMatrix<f64>, DMatrix<f64>>, DVector<f64>>;
        let at = Pair(Pair(x, w), b);
        let f = |p: &X| linear(&p.0 .0, &p.0 .1, &p.1);
        let jvp = |p: &X, t: &X| {
            linear::jvp(
                &p.0 .0,
                &p.0 .1,
                &p.1,
                Some(&t.0 .0),
                Some(&t.0 .1),
                Some(&t.1),
            )
            .1
        };
        let vjp = |p: &X, g: &DMatrix<f64>| {
            let (dx, dw, db) = linear::vjp(&p.0 .0, &p.0 .1, &p.1, g);
            Pair(Pair(dx.unwrap(), dw.unwrap()), db.unwrap())
        };
        let o = CheckOptions::default();
        let r = check_derivatives(&at, f, jvp, vjp, &o);
        assert!(r.passed(&o), "{r}");
        // The composition's rules give the same numbers.
        let (x, w, b) = (&at.0 .0, &at.0 .1, &at.1);
        let (dx, dw, db) = (normal::<f64>(m, k, 7), normal::<f64>(k, n, 8), b * 0.5);
        let y = unfused(x, w, b);
        let p: DMatrix<f64> = Binary::<op::Mul, _>::eval(x, w);
        let tp = Binary::<op::Mul, _>::jvp(x, w, &p, Some(&dx), Some(&dw));
        let want_t = Binary::<op::Add, _>::jvp(&p, b, &y, Some(&tp), Some(&db));
        let (got_y, got_t) = linear::jvp(x, w, b, Some(&dx), Some(&dw), Some(&db));
        assert_eq!((got_y, got_t), (y.clone(), want_t));
        let g = normal::<f64>(m, n, 9);
        let (gp, gb) = Binary::<op::Add, _>::vjp(&p, b, &y, g.clone(), true, true);
        let (gx, gw) = Binary::<op::Mul, _>::vjp(x, w, &p, gp.unwrap(), true, true);
        assert_eq!(linear::vjp(x, w, b, &g), (gx, gw, gb));
        // Only the bias moving: its tangent broadcast.
        let (_, t) = linear::jvp(x, w, b, None, None, Some(&db));
        assert!(t.row_iter().all(|r| r.transpose() == db));
    }
}
