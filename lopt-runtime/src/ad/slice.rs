//! Slices and assembly of differentiated matrices and vectors: `x.rows(i, n)` (rows of a
//! matrix, a segment of a column vector), `x.columns(j, n)` (the gates of an LSTM as
//! column blocks of one product), concatenation along either axis (`jnp.concatenate`),
//! and [`Reshape`] (`jnp.reshape`, row-major). Each slice's reverse rule places the
//! cotangent back in a zero matrix of the input's shape; each concatenation's splits it.

use nalgebra::allocator::Allocator;
use nalgebra::{DMatrix, DefaultAllocator, Dim, Dyn, OMatrix};

use crate::scalar::Real;

use super::{Binary, Unary};

/// The op of `x.rows(start, len)` (`x[start:start+len]`, `jax.lax.dynamic_slice` along
/// axis 0): rows of a matrix, a segment of a column vector.
#[derive(Debug, Clone, Copy)]
pub struct Rows(pub usize, pub usize);

/// The op of `x.columns(start, len)` (`x[:, start:start+len]`): columns of a matrix, a
/// segment of a row vector.
#[derive(Debug, Clone, Copy)]
pub struct Columns(pub usize, pub usize);

#[track_caller]
fn check(what: &str, start: usize, len: usize, n: usize, shape: (usize, usize)) {
    if start.checked_add(len).is_none_or(|end| end > n) {
        panic!(
            "{what}({start}, {len}) of a {}x{} matrix (it has {n} {what})",
            shape.0, shape.1
        );
    }
}

/// Rows `start..start + len` of `x` (column-major): one slice copy per column.
fn copy_rows<S: Real, C: Dim>(
    x: &OMatrix<S, Dyn, C>,
    start: usize,
    len: usize,
) -> OMatrix<S, Dyn, C>
where
    DefaultAllocator: Allocator<Dyn, C>,
{
    let nr = x.nrows();
    let mut v = Vec::with_capacity(len * x.ncols());
    if nr > 0 {
        for col in x.as_slice().chunks_exact(nr) {
            v.extend_from_slice(&col[start..start + len]);
        }
    }
    OMatrix::from_vec_generic(Dyn(len), x.shape_generic().1, v)
}

/// Columns `start..start + len` of `x`: one contiguous copy (column-major storage).
fn copy_columns<S: Real, R: Dim>(
    x: &OMatrix<S, R, Dyn>,
    start: usize,
    len: usize,
) -> OMatrix<S, R, Dyn>
where
    DefaultAllocator: Allocator<R, Dyn>,
{
    let nr = x.nrows();
    let v = x.as_slice()[start * nr..(start + len) * nr].to_vec();
    OMatrix::from_vec_generic(x.shape_generic().0, Dyn(len), v)
}

/// `dst[i] += src[i]`.
#[inline]
fn add_into<S: Real>(dst: &mut [S], src: &[S]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

impl<S: Real, C: Dim> Unary<Rows> for OMatrix<S, Dyn, C>
where
    DefaultAllocator: Allocator<Dyn, C>,
{
    type Out = Self;
    #[track_caller]
    fn eval(&self, op: &Rows) -> Self {
        check("rows", op.0, op.1, self.nrows(), self.shape());
        copy_rows(self, op.0, op.1)
    }
    fn jvp(&self, op: &Rows, _out: &Self, dx: &Self) -> Self {
        copy_rows(dx, op.0, op.1)
    }
    fn vjp(&self, op: &Rows, _out: &Self, g: Self) -> Self {
        let (r, c) = self.shape_generic();
        let mut dx = Self::zeros_generic(r, c);
        dx.rows_mut(op.0, op.1).copy_from(&g);
        dx
    }
    /// Adds `g` into rows `op.0..op.0 + op.1` of the slot (a zero matrix is made only
    /// for the first contribution): `O(rows read)`, not `O(input)`, per call.
    fn vjp_acc(&self, op: &Rows, _out: &Self, g: Self, slot: &mut Option<Self>) {
        let (r, c) = self.shape_generic();
        let dx = slot.get_or_insert_with(|| Self::zeros_generic(r, c));
        let (nr, n) = (dx.nrows(), op.1);
        if n == 0 || nr == 0 {
            return;
        }
        for (d, s) in dx
            .as_mut_slice()
            .chunks_exact_mut(nr)
            .zip(g.as_slice().chunks_exact(n))
        {
            add_into(&mut d[op.0..op.0 + n], s);
        }
    }
}

impl<S: Real, R: Dim> Unary<Columns> for OMatrix<S, R, Dyn>
where
    DefaultAllocator: Allocator<R, Dyn>,
{
    type Out = Self;
    #[track_caller]
    fn eval(&self, op: &Columns) -> Self {
        check("columns", op.0, op.1, self.ncols(), self.shape());
        copy_columns(self, op.0, op.1)
    }
    fn jvp(&self, op: &Columns, _out: &Self, dx: &Self) -> Self {
        copy_columns(dx, op.0, op.1)
    }
    fn vjp(&self, op: &Columns, _out: &Self, g: Self) -> Self {
        let (r, c) = self.shape_generic();
        let mut dx = Self::zeros_generic(r, c);
        dx.columns_mut(op.0, op.1).copy_from(&g);
        dx
    }
    /// Adds `g` into columns `op.0..op.0 + op.1` of the slot (one contiguous block; a
    /// zero matrix is made only for the first contribution).
    fn vjp_acc(&self, op: &Columns, _out: &Self, g: Self, slot: &mut Option<Self>) {
        let (r, c) = self.shape_generic();
        let dx = slot.get_or_insert_with(|| Self::zeros_generic(r, c));
        let nr = dx.nrows();
        add_into(
            &mut dx.as_mut_slice()[op.0 * nr..(op.0 + op.1) * nr],
            g.as_slice(),
        );
    }
}

/// `[a b]` (`jnp.concatenate([a, b], axis=1)`, `jnp.hstack`): the columns of `b` after
/// those of `a` (same rows); matrices, or row vectors.
#[derive(Debug, Clone, Copy, Default)]
pub struct HConcat;

/// `[a; b]` (`jnp.concatenate([a, b], axis=0)`, `jnp.vstack`): the rows of `b` below
/// those of `a` (same columns); matrices, or column vectors.
#[derive(Debug, Clone, Copy, Default)]
pub struct VConcat;

#[track_caller]
fn hcat<S: Real, R: Dim>(a: &OMatrix<S, R, Dyn>, b: &OMatrix<S, R, Dyn>) -> OMatrix<S, R, Dyn>
where
    DefaultAllocator: Allocator<R, Dyn>,
{
    assert_eq!(
        a.nrows(),
        b.nrows(),
        "hconcat: {}x{} and {}x{} (the row counts differ)",
        a.nrows(),
        a.ncols(),
        b.nrows(),
        b.ncols()
    );
    let mut out =
        OMatrix::<S, R, Dyn>::zeros_generic(a.shape_generic().0, Dyn(a.ncols() + b.ncols()));
    out.columns_mut(0, a.ncols()).copy_from(a);
    out.columns_mut(a.ncols(), b.ncols()).copy_from(b);
    out
}

#[track_caller]
fn vcat<S: Real, C: Dim>(a: &OMatrix<S, Dyn, C>, b: &OMatrix<S, Dyn, C>) -> OMatrix<S, Dyn, C>
where
    DefaultAllocator: Allocator<Dyn, C>,
{
    assert_eq!(
        a.ncols(),
        b.ncols(),
        "vconcat: {}x{} and {}x{} (the column counts differ)",
        a.nrows(),
        a.ncols(),
        b.nrows(),
        b.ncols()
    );
    let mut out =
        OMatrix::<S, Dyn, C>::zeros_generic(Dyn(a.nrows() + b.nrows()), a.shape_generic().1);
    out.rows_mut(0, a.nrows()).copy_from(a);
    out.rows_mut(a.nrows(), b.nrows()).copy_from(b);
    out
}

macro_rules! concat_rules {
    ($op:ident, $cat:ident, $part:ident, $len:ident, $fixed:ident, $R:ty, $C:ty) => {
        impl<S: Real, $fixed: Dim> Binary<$op, OMatrix<S, $R, $C>> for OMatrix<S, $R, $C>
        where
            DefaultAllocator: Allocator<$R, $C>,
        {
            type Out = Self;
            #[track_caller]
            fn eval(&self, r: &Self) -> Self {
                $cat(self, r)
            }
            fn jvp(&self, r: &Self, _out: &Self, da: Option<&Self>, db: Option<&Self>) -> Self {
                let zeros = |m: &Self| {
                    let (r, c) = m.shape_generic();
                    Self::zeros_generic(r, c)
                };
                match (da, db) {
                    (Some(da), Some(db)) => $cat(da, db),
                    (Some(da), None) => $cat(da, &zeros(r)),
                    (None, Some(db)) => $cat(&zeros(self), db),
                    (None, None) => $cat(&zeros(self), &zeros(r)),
                }
            }
            fn vjp(
                &self,
                _r: &Self,
                _out: &Self,
                g: Self,
                need_a: bool,
                need_b: bool,
            ) -> (Option<Self>, Option<Self>) {
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
concat_rules!(HConcat, hcat, columns, ncols, R, R, Dyn);
concat_rules!(VConcat, vcat, rows, nrows, C, Dyn, C);

/// The op of `reshape(x, rows, cols)` (`jnp.reshape(x, (rows, cols))`): the elements of
/// a matrix in row-major order (the order of JAX's arrays), laid out as `rows × cols`.
///
/// The storage is column-major, so this is a copy (one pass) unless one of the shapes is
/// a single row; `(B·T) × F` activations become `B × (T·F)` as in JAX.
#[derive(Debug, Clone, Copy)]
pub struct Reshape(pub usize, pub usize);

/// `x`'s elements in row-major order as an `r × c` matrix.
#[track_caller]
fn reshape_rows<S: Real>(x: &DMatrix<S>, r: usize, c: usize) -> DMatrix<S> {
    if r.checked_mul(c) != Some(x.len()) {
        panic!(
            "reshape of a {}x{} matrix ({} elements) to {r}x{c}",
            x.nrows(),
            x.ncols(),
            x.len()
        );
    }
    let xc = x.ncols();
    DMatrix::from_fn(r, c, |i, j| {
        let k = i * c + j;
        x[(k / xc, k % xc)]
    })
}

impl<S: Real> Unary<Reshape> for DMatrix<S> {
    type Out = DMatrix<S>;
    #[track_caller]
    fn eval(&self, op: &Reshape) -> DMatrix<S> {
        reshape_rows(self, op.0, op.1)
    }
    fn jvp(&self, op: &Reshape, _out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
        reshape_rows(dx, op.0, op.1)
    }
    fn vjp(&self, _op: &Reshape, _out: &DMatrix<S>, g: DMatrix<S>) -> DMatrix<S> {
        reshape_rows(&g, self.nrows(), self.ncols())
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

    /// The in-place reverse rules `#[task]` emits (`vjp_acc`) add exactly what `vjp`
    /// returns: into an empty slot (which becomes `vjp`'s matrix) and into a slot holding
    /// an earlier contribution (`slot + vjp`), for rows and columns at an offset.
    ///
    /// Catches: `vjp_acc` adding at offset 0 instead of at `start` (tried on `Columns`:
    /// `op.0 * nr` replaced by `0`, and on `Rows`: `d[op.0..]` by `d[0..]`; both fail
    /// here), or overwriting the earlier contribution instead of adding to it.
    #[test]
    fn in_place_reverse_rules_add_what_vjp_returns() {
        let x = m(5, 6, 0.5);
        let earlier = m(5, 6, -3.0);
        type Acc<'a> = &'a dyn Fn(&mut Option<DMatrix<f64>>);
        let cases: [(Acc, DMatrix<f64>); 2] = [
            (
                &|slot| {
                    let op = Columns(3, 2);
                    let g = m(5, 2, 2.0);
                    Unary::vjp_acc(&x, &op, &Unary::eval(&x, &op), g, slot)
                },
                Unary::vjp(
                    &x,
                    &Columns(3, 2),
                    &x.columns(3, 2).into_owned(),
                    m(5, 2, 2.0),
                ),
            ),
            (
                &|slot| {
                    let op = Rows(2, 3);
                    let g = m(3, 6, 2.0);
                    Unary::vjp_acc(&x, &op, &Unary::eval(&x, &op), g, slot)
                },
                Unary::vjp(&x, &Rows(2, 3), &x.rows(2, 3).into_owned(), m(3, 6, 2.0)),
            ),
        ];
        for (acc, want) in cases {
            let mut empty = None;
            acc(&mut empty);
            assert_eq!(empty.as_ref(), Some(&want));
            let mut held = Some(earlier.clone());
            acc(&mut held);
            assert_eq!(held, Some(&earlier + &want));
        }
    }

    #[test]
    #[should_panic(expected = "columns(5, 2) of a 2x6 matrix (it has 6 columns)")]
    fn slices_past_the_end_panic_with_the_sizes() {
        Unary::eval(&m(2, 6, 0.0), &Columns(5, 2));
    }
}
