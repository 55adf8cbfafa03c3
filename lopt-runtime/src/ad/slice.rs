//! Slices and assembly of differentiated matrices: `x.rows(i, n)`, `x.columns(j, n)` (the
//! gates of an LSTM as column blocks of one product), and concatenation along either axis
//! (`jnp.concatenate`). Each slice's reverse rule places the cotangent back in a zero
//! matrix of the input's shape; each concatenation's splits it.

use nalgebra::DMatrix;

use crate::scalar::Real;

use super::{Binary, Unary};

/// The op of `x.rows(start, len)`.
#[derive(Debug, Clone, Copy)]
pub struct Rows(pub usize, pub usize);

/// The op of `x.columns(start, len)`.
#[derive(Debug, Clone, Copy)]
pub struct Columns(pub usize, pub usize);

#[track_caller]
fn check(what: &str, start: usize, len: usize, n: usize) {
    if start.checked_add(len).is_none_or(|end| end > n) {
        panic!("{what}({start}, {len}) of a matrix with {n} of them");
    }
}

impl<S: Real> Unary<Rows> for DMatrix<S> {
    type Out = DMatrix<S>;
    fn eval(&self, op: &Rows) -> DMatrix<S> {
        check("rows", op.0, op.1, self.nrows());
        self.rows(op.0, op.1).into_owned()
    }
    fn jvp(&self, op: &Rows, _out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
        dx.rows(op.0, op.1).into_owned()
    }
    fn vjp(&self, op: &Rows, _out: &DMatrix<S>, g: DMatrix<S>) -> DMatrix<S> {
        let mut dx = DMatrix::<S>::zeros(self.nrows(), self.ncols());
        dx.rows_mut(op.0, op.1).copy_from(&g);
        dx
    }
}

impl<S: Real> Unary<Columns> for DMatrix<S> {
    type Out = DMatrix<S>;
    fn eval(&self, op: &Columns) -> DMatrix<S> {
        check("columns", op.0, op.1, self.ncols());
        self.columns(op.0, op.1).into_owned()
    }
    fn jvp(&self, op: &Columns, _out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
        dx.columns(op.0, op.1).into_owned()
    }
    fn vjp(&self, op: &Columns, _out: &DMatrix<S>, g: DMatrix<S>) -> DMatrix<S> {
        let mut dx = DMatrix::<S>::zeros(self.nrows(), self.ncols());
        dx.columns_mut(op.0, op.1).copy_from(&g);
        dx
    }
}

/// `[a b]`: the columns of `b` after those of `a` (same rows).
#[derive(Debug, Clone, Copy, Default)]
pub struct HConcat;

/// `[a; b]`: the rows of `b` below those of `a` (same columns).
#[derive(Debug, Clone, Copy, Default)]
pub struct VConcat;

fn hcat<S: Real>(a: &DMatrix<S>, b: &DMatrix<S>) -> DMatrix<S> {
    assert_eq!(
        a.nrows(),
        b.nrows(),
        "hconcat: {}x{} and {}x{}",
        a.nrows(),
        a.ncols(),
        b.nrows(),
        b.ncols()
    );
    let mut out = DMatrix::<S>::zeros(a.nrows(), a.ncols() + b.ncols());
    out.columns_mut(0, a.ncols()).copy_from(a);
    out.columns_mut(a.ncols(), b.ncols()).copy_from(b);
    out
}

fn vcat<S: Real>(a: &DMatrix<S>, b: &DMatrix<S>) -> DMatrix<S> {
    assert_eq!(
        a.ncols(),
        b.ncols(),
        "vconcat: {}x{} and {}x{}",
        a.nrows(),
        a.ncols(),
        b.nrows(),
        b.ncols()
    );
    let mut out = DMatrix::<S>::zeros(a.nrows() + b.nrows(), a.ncols());
    out.rows_mut(0, a.nrows()).copy_from(a);
    out.rows_mut(a.nrows(), b.nrows()).copy_from(b);
    out
}

macro_rules! concat_rules {
    ($op:ident, $cat:ident, $part:ident, $len:ident) => {
        impl<S: Real> Binary<$op, DMatrix<S>> for DMatrix<S> {
            type Out = DMatrix<S>;
            fn eval(&self, r: &DMatrix<S>) -> DMatrix<S> {
                $cat(self, r)
            }
            fn jvp(
                &self,
                r: &DMatrix<S>,
                _out: &DMatrix<S>,
                da: Option<&DMatrix<S>>,
                db: Option<&DMatrix<S>>,
            ) -> DMatrix<S> {
                let za;
                let zb;
                let da = match da {
                    Some(d) => d,
                    None => {
                        za = self.zeros_like_shape();
                        &za
                    }
                };
                let db = match db {
                    Some(d) => d,
                    None => {
                        zb = r.zeros_like_shape();
                        &zb
                    }
                };
                $cat(da, db)
            }
            fn vjp(
                &self,
                _r: &DMatrix<S>,
                _out: &DMatrix<S>,
                g: DMatrix<S>,
                need_a: bool,
                need_b: bool,
            ) -> (Option<DMatrix<S>>, Option<DMatrix<S>>) {
                let n = self.$len();
                let rest = g.$len() - n;
                (
                    need_a.then(|| g.$part(0, n).into_owned()),
                    need_b.then(|| g.$part(n, rest).into_owned()),
                )
            }
        }
    };
}
concat_rules!(HConcat, hcat, columns, ncols);
concat_rules!(VConcat, vcat, rows, nrows);

/// A zero matrix of the same shape (a missing tangent).
trait ZerosLikeShape {
    fn zeros_like_shape(&self) -> Self;
}

impl<S: Real> ZerosLikeShape for DMatrix<S> {
    fn zeros_like_shape(&self) -> Self {
        DMatrix::zeros(self.nrows(), self.ncols())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(r: usize, c: usize, base: f64) -> DMatrix<f64> {
        DMatrix::from_fn(r, c, |i, j| base + (i * 10 + j) as f64)
    }

    /// Slices read what nalgebra's views read; the reverse rules are the adjoints of the
    /// forward ones (a mutation that places the cotangent at offset 0 fails).
    #[test]
    fn slices_and_concatenations_are_adjoint_pairs() {
        let x = m(4, 6, 0.5);
        let (t, u) = (m(4, 6, -1.0), m(4, 2, 3.0));
        let op = Columns(3, 2);
        let y = Unary::eval(&x, &op);
        assert_eq!(y, x.columns(3, 2).into_owned());
        assert_eq!(
            Unary::vjp(&x, &op, &y, u.clone()).dot(&t),
            u.dot(&Unary::jvp(&x, &op, &y, &t))
        );
        let op = Rows(1, 2);
        let u = m(2, 6, 2.0);
        let y = Unary::eval(&x, &op);
        assert_eq!(
            Unary::vjp(&x, &op, &y, u.clone()).dot(&t),
            u.dot(&Unary::jvp(&x, &op, &y, &t))
        );

        let (a, b) = (m(3, 2, 0.0), m(3, 4, 100.0));
        let c = <DMatrix<f64> as Binary<HConcat, _>>::eval(&a, &b);
        assert_eq!(
            (c.columns(0, 2), c.columns(2, 4)),
            (a.columns(0, 2), b.columns(0, 4))
        );
        let g = m(3, 6, 7.0);
        let (ga, gb) = <DMatrix<f64> as Binary<HConcat, _>>::vjp(&a, &b, &c, g.clone(), true, true);
        assert_eq!(ga.unwrap().dot(&a) + gb.unwrap().dot(&b), g.dot(&c));
        let (a, b) = (m(2, 3, 0.0), m(5, 3, 1.0));
        let c = <DMatrix<f64> as Binary<VConcat, _>>::eval(&a, &b);
        assert_eq!((c.nrows(), c.rows(2, 5).into_owned()), (7, b.clone()));
        let jv = <DMatrix<f64> as Binary<VConcat, _>>::jvp(&a, &b, &c, None, Some(&b));
        assert_eq!(jv.rows(0, 2).sum(), 0.0);
    }

    #[test]
    #[should_panic(expected = "columns(5, 2) of a matrix with 6 of them")]
    fn slices_past_the_end_panic_with_the_sizes() {
        Unary::eval(&m(2, 6, 0.0), &Columns(5, 2));
    }
}
