//! Elementwise primitives on vectors and matrices, with scalar and bias broadcasting.
//!
//! The scalar rules of `scalar.rs` applied element by element: matrix∘matrix (same
//! type), matrix∘scalar, scalar∘matrix, and a vector broadcast over the rows of a
//! `DMatrix` (numpy's last-axis rule: `x * w + b` with one example per row).
//!
//! Every loop runs over contiguous column-major slices, so it vectorizes.

use nalgebra::allocator::Allocator;
use nalgebra::{DMatrix, DVector, DefaultAllocator, Dim, OMatrix, RowDVector};

use super::op;
use super::reduce::sum_by;
use super::scalar::{Pointwise, Pointwise2};
use super::{Binary, Unary};
use crate::scalar::Real;

/// A new matrix shaped like `like`, filled from `it` in column-major order.
#[inline]
pub(crate) fn build_like<S: Real, R: Dim, C: Dim>(
    like: &OMatrix<S, R, C>,
    it: impl Iterator<Item = S>,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    let (r, c) = like.shape_generic();
    OMatrix::from_iterator_generic(r, c, it)
}

/// A zero matrix shaped like `like`.
#[inline]
pub(crate) fn zeros_like<S: Real, R: Dim, C: Dim>(like: &OMatrix<S, R, C>) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    let (r, c) = like.shape_generic();
    OMatrix::zeros_generic(r, c)
}

/// Panics for operands of incompatible shapes: a bug in the loss, which the macro cannot
/// see because it has no types.
#[cold]
#[track_caller]
pub(crate) fn shape_panic(what: &str, a: (usize, usize), b: (usize, usize), rule: &str) -> ! {
    panic!(
        "lopt: shape mismatch in `{what}`: left operand is {}x{}, right operand is {}x{} \
         ({rule})",
        a.0, a.1, b.0, b.1
    )
}

#[inline]
#[track_caller]
fn check_same<S: Real, R: Dim, C: Dim>(what: &str, a: &OMatrix<S, R, C>, b: &OMatrix<S, R, C>)
where
    DefaultAllocator: Allocator<R, C>,
{
    if a.shape() != b.shape() {
        shape_panic(
            what,
            a.shape(),
            b.shape(),
            "elementwise operands must have equal shapes",
        );
    }
}

/// Unary elementwise rules on any owned nalgebra matrix or vector.
macro_rules! matrix_unary {
    ($($op:ty),* $(,)?) => {$(
        impl<S: Real, R: Dim, C: Dim> Unary<$op> for OMatrix<S, R, C>
        where
            DefaultAllocator: Allocator<R, C>,
        {
            type Out = Self;
            #[inline]
            fn eval(&self, op: &$op) -> Self {
                build_like(self, self.as_slice().iter().map(|&x| op.f(x)))
            }
            #[inline]
            fn jvp(&self, op: &$op, out: &Self, dx: &Self) -> Self {
                let it = self.as_slice().iter().zip(out.as_slice()).zip(dx.as_slice());
                build_like(self, it.map(|((&x, &y), &t)| op.d(x, y, t)))
            }
            #[inline]
            fn vjp(&self, op: &$op, out: &Self, g: &Self) -> Self {
                let it = self.as_slice().iter().zip(out.as_slice()).zip(g.as_slice());
                build_like(self, it.map(|((&x, &y), &t)| op.d(x, y, t)))
            }
        }
    )*};
}
matrix_unary!(
    op::Neg,
    op::Exp,
    op::Ln,
    op::Sqrt,
    op::Tanh,
    op::Sin,
    op::Cos,
    op::Abs,
    op::Square,
    op::Powi,
    op::Relu,
    op::Sigmoid,
    op::Softplus,
    op::Gelu,
);

// ---- matrix ∘ matrix (same type) ----

#[inline]
#[track_caller]
fn mm_eval<S: Real, Op: Pointwise2<S>, R: Dim, C: Dim>(
    a: &OMatrix<S, R, C>,
    b: &OMatrix<S, R, C>,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    check_same(Op::NAME, a, b);
    build_like(
        a,
        a.as_slice()
            .iter()
            .zip(b.as_slice())
            .map(|(&a, &b)| Op::f(a, b)),
    )
}

#[inline]
fn mm_jvp<S: Real, Op: Pointwise2<S>, R: Dim, C: Dim>(
    a: &OMatrix<S, R, C>,
    b: &OMatrix<S, R, C>,
    y: &OMatrix<S, R, C>,
    da: Option<&OMatrix<S, R, C>>,
    db: Option<&OMatrix<S, R, C>>,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    let ab = a.as_slice().iter().zip(b.as_slice()).zip(y.as_slice());
    match (da, db) {
        (Some(da), Some(db)) => build_like(
            a,
            ab.zip(da.as_slice())
                .zip(db.as_slice())
                .map(|((((&a, &b), &y), &ta), &tb)| Op::da(a, b, y, ta) + Op::db(a, b, y, tb)),
        ),
        (Some(da), None) => build_like(
            a,
            ab.zip(da.as_slice())
                .map(|(((&a, &b), &y), &t)| Op::da(a, b, y, t)),
        ),
        (None, Some(db)) => build_like(
            a,
            ab.zip(db.as_slice())
                .map(|(((&a, &b), &y), &t)| Op::db(a, b, y, t)),
        ),
        (None, None) => zeros_like(a),
    }
}

type Pair<T> = (Option<T>, Option<T>);

#[inline]
fn mm_vjp<S: Real, Op: Pointwise2<S>, R: Dim, C: Dim>(
    a: &OMatrix<S, R, C>,
    b: &OMatrix<S, R, C>,
    y: &OMatrix<S, R, C>,
    g: &OMatrix<S, R, C>,
    need_a: bool,
    need_b: bool,
) -> Pair<OMatrix<S, R, C>>
where
    DefaultAllocator: Allocator<R, C>,
{
    let abyg = || {
        a.as_slice()
            .iter()
            .zip(b.as_slice())
            .zip(y.as_slice())
            .zip(g.as_slice())
    };
    (
        need_a.then(|| build_like(a, abyg().map(|(((&a, &b), &y), &g)| Op::da(a, b, y, g)))),
        need_b.then(|| build_like(a, abyg().map(|(((&a, &b), &y), &g)| Op::db(a, b, y, g)))),
    )
}

macro_rules! matrix_matrix {
    ($($op:ty),* $(,)?) => {$(
        impl<S: Real, R: Dim, C: Dim> Binary<$op, OMatrix<S, R, C>> for OMatrix<S, R, C>
        where
            DefaultAllocator: Allocator<R, C>,
        {
            type Out = Self;
            #[inline]
            #[track_caller]
            fn eval(&self, b: &Self) -> Self {
                mm_eval::<S, $op, R, C>(self, b)
            }
            #[inline]
            fn jvp(&self, b: &Self, out: &Self, da: Option<&Self>, db: Option<&Self>) -> Self {
                mm_jvp::<S, $op, R, C>(self, b, out, da, db)
            }
            #[inline]
            fn vjp(
                &self,
                b: &Self,
                out: &Self,
                g: &Self,
                need_a: bool,
                need_b: bool,
            ) -> (Option<Self>, Option<Self>) {
                mm_vjp::<S, $op, R, C>(self, b, out, g, need_a, need_b)
            }
        }
    )*};
}
matrix_matrix!(
    op::Add,
    op::Sub,
    op::ComponentMul,
    op::ComponentDiv,
    op::Max,
    op::Min
);

// ---- matrix ∘ scalar and scalar ∘ matrix ----
//
// `SWAP = false`: the matrix is the left operand, `f(m_i, s)`; `true`: `f(s, m_i)`.

/// `(left, right)` operands in the order the op sees them.
#[inline(always)]
fn ord<S, const SWAP: bool>(m: S, s: S) -> (S, S) {
    if SWAP {
        (s, m)
    } else {
        (m, s)
    }
}

/// The partial derivatives with respect to the matrix side and the scalar side.
#[inline(always)]
fn d_sides<S: Real, Op: Pointwise2<S>, const SWAP: bool>(m: S, s: S, y: S, tm: S, ts: S) -> (S, S) {
    let (a, b) = ord::<S, SWAP>(m, s);
    if SWAP {
        (Op::db(a, b, y, tm), Op::da(a, b, y, ts))
    } else {
        (Op::da(a, b, y, tm), Op::db(a, b, y, ts))
    }
}

#[inline]
fn ms_eval<S: Real, Op: Pointwise2<S>, const SWAP: bool, R: Dim, C: Dim>(
    m: &OMatrix<S, R, C>,
    s: S,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    build_like(
        m,
        m.as_slice().iter().map(|&x| {
            let (a, b) = ord::<S, SWAP>(x, s);
            Op::f(a, b)
        }),
    )
}

#[inline]
fn ms_jvp<S: Real, Op: Pointwise2<S>, const SWAP: bool, R: Dim, C: Dim>(
    m: &OMatrix<S, R, C>,
    s: S,
    y: &OMatrix<S, R, C>,
    dm: Option<&OMatrix<S, R, C>>,
    ds: Option<&S>,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    let my = m.as_slice().iter().zip(y.as_slice());
    let z = S::zero();
    match (dm, ds) {
        (Some(dm), Some(&ds)) => build_like(
            m,
            my.zip(dm.as_slice()).map(|((&x, &y), &t)| {
                let (pm, ps) = d_sides::<S, Op, SWAP>(x, s, y, t, ds);
                pm + ps
            }),
        ),
        (Some(dm), None) => build_like(
            m,
            my.zip(dm.as_slice())
                .map(|((&x, &y), &t)| d_sides::<S, Op, SWAP>(x, s, y, t, z).0),
        ),
        (None, Some(&ds)) => build_like(
            m,
            my.map(|(&x, &y)| d_sides::<S, Op, SWAP>(x, s, y, z, ds).1),
        ),
        (None, None) => zeros_like(m),
    }
}

/// Cotangents of the matrix side and of the scalar side (a sum over elements).
#[inline]
fn ms_vjp<S: Real, Op: Pointwise2<S>, const SWAP: bool, R: Dim, C: Dim>(
    m: &OMatrix<S, R, C>,
    s: S,
    y: &OMatrix<S, R, C>,
    g: &OMatrix<S, R, C>,
    need_m: bool,
    need_s: bool,
) -> (Option<OMatrix<S, R, C>>, Option<S>)
where
    DefaultAllocator: Allocator<R, C>,
{
    let z = S::zero();
    let myg = || m.as_slice().iter().zip(y.as_slice()).zip(g.as_slice());
    (
        need_m.then(|| {
            build_like(
                m,
                myg().map(|((&x, &y), &g)| d_sides::<S, Op, SWAP>(x, s, y, g, z).0),
            )
        }),
        need_s.then(|| {
            let (x, y, g) = (m.as_slice(), y.as_slice(), g.as_slice());
            let n = x.len().min(y.len()).min(g.len());
            sum_by(n, |i| d_sides::<S, Op, SWAP>(x[i], s, y[i], z, g[i]).1)
        }),
    )
}

macro_rules! matrix_scalar {
    ($($op:ty),* $(,)?) => {$(
        impl<S: Real, R: Dim, C: Dim> Binary<$op, S> for OMatrix<S, R, C>
        where
            DefaultAllocator: Allocator<R, C>,
        {
            type Out = Self;
            #[inline]
            fn eval(&self, b: &S) -> Self {
                ms_eval::<S, $op, false, R, C>(self, *b)
            }
            #[inline]
            fn jvp(&self, b: &S, out: &Self, da: Option<&Self>, db: Option<&S>) -> Self {
                ms_jvp::<S, $op, false, R, C>(self, *b, out, da, db)
            }
            #[inline]
            fn vjp(
                &self,
                b: &S,
                out: &Self,
                g: &Self,
                need_a: bool,
                need_b: bool,
            ) -> (Option<Self>, Option<S>) {
                ms_vjp::<S, $op, false, R, C>(self, *b, out, g, need_a, need_b)
            }
        }
    )*};
}
matrix_scalar!(
    op::Add,
    op::Sub,
    op::Mul,
    op::Div,
    op::Max,
    op::Min,
    op::Powf
);

macro_rules! scalar_matrix {
    ($($op:ty),* $(,)?) => {$(
        impl<S: Real, R: Dim, C: Dim> Binary<$op, OMatrix<S, R, C>> for S
        where
            DefaultAllocator: Allocator<R, C>,
        {
            type Out = OMatrix<S, R, C>;
            #[inline]
            fn eval(&self, b: &OMatrix<S, R, C>) -> Self::Out {
                ms_eval::<S, $op, true, R, C>(b, *self)
            }
            #[inline]
            fn jvp(
                &self,
                b: &OMatrix<S, R, C>,
                out: &Self::Out,
                da: Option<&S>,
                db: Option<&OMatrix<S, R, C>>,
            ) -> Self::Out {
                ms_jvp::<S, $op, true, R, C>(b, *self, out, db, da)
            }
            #[inline]
            fn vjp(
                &self,
                b: &OMatrix<S, R, C>,
                out: &Self::Out,
                g: &Self::Out,
                need_a: bool,
                need_b: bool,
            ) -> (Option<S>, Option<OMatrix<S, R, C>>) {
                let (dm, ds) = ms_vjp::<S, $op, true, R, C>(b, *self, out, g, need_b, need_a);
                (ds, dm)
            }
        }
    )*};
}
scalar_matrix!(op::Add, op::Sub, op::Mul, op::Div, op::Max, op::Min);

// ---- a vector broadcast over the rows of a DMatrix ----
//
// `m[(i, j)] ∘ v[j]` for every row i; the vector's length must equal the matrix's number
// of columns. `SWAP = true` when the vector is the left operand.

#[inline]
#[track_caller]
fn bias_check<S: Real>(what: &str, m: &DMatrix<S>, v: (usize, usize), swap: bool) {
    if v.0 * v.1 != m.ncols() {
        let (a, b) = if swap { (v, m.shape()) } else { (m.shape(), v) };
        shape_panic(
            what,
            a,
            b,
            "a vector broadcast over the rows of a matrix must have one entry per column",
        );
    }
}

#[inline]
fn bias_eval<S: Real, Op: Pointwise2<S>, const SWAP: bool>(m: &DMatrix<S>, v: &[S]) -> DMatrix<S> {
    let r = m.nrows();
    let mut out = Vec::with_capacity(m.len());
    for (col, &vj) in m.as_slice().chunks_exact(r.max(1)).zip(v) {
        out.extend(col.iter().map(|&x| {
            let (a, b) = ord::<S, SWAP>(x, vj);
            Op::f(a, b)
        }));
    }
    DMatrix::from_vec(r, m.ncols(), out)
}

#[inline]
fn bias_jvp<S: Real, Op: Pointwise2<S>, const SWAP: bool>(
    m: &DMatrix<S>,
    v: &[S],
    y: &DMatrix<S>,
    dm: Option<&DMatrix<S>>,
    dv: Option<&[S]>,
) -> DMatrix<S> {
    let r = m.nrows().max(1);
    let z = S::zero();
    let mut out = Vec::with_capacity(m.len());
    for (j, (col, ycol)) in m
        .as_slice()
        .chunks_exact(r)
        .zip(y.as_slice().chunks_exact(r))
        .enumerate()
    {
        let (vj, tv) = (v[j], dv.map_or(z, |d| d[j]));
        let cy = col.iter().zip(ycol);
        match dm {
            Some(dm) => out.extend(cy.zip(&dm.as_slice()[j * r..(j + 1) * r]).map(
                |((&x, &y), &t)| {
                    let (pm, pv) = d_sides::<S, Op, SWAP>(x, vj, y, t, tv);
                    pm + pv
                },
            )),
            None => out.extend(cy.map(|(&x, &y)| d_sides::<S, Op, SWAP>(x, vj, y, z, tv).1)),
        }
    }
    DMatrix::from_vec(m.nrows(), m.ncols(), out)
}

/// `Σ_i f(x_i, y_i, g_i)` over equal-length slices, summed in the order of
/// [`sum_by`](super::reduce::sum_by) (eight partial sums), but over chunks of the slices:
/// no bounds checks, so the loop vectorizes.
#[inline]
fn sum_zip3<S: Real>(x: &[S], y: &[S], g: &[S], f: impl Fn(S, S, S) -> S) -> S {
    let mut acc = [S::zero(); 8];
    let (xc, yc, gc) = (x.chunks_exact(8), y.chunks_exact(8), g.chunks_exact(8));
    let mut tail = S::zero();
    for ((&a, &b), &c) in xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .zip(gc.remainder())
    {
        tail += f(a, b, c);
    }
    for ((a, b), c) in xc.zip(yc).zip(gc) {
        for l in 0..8 {
            acc[l] += f(a[l], b[l], c[l]);
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Cotangents of the matrix and of the vector (column sums).
#[inline]
fn bias_vjp<S: Real, Op: Pointwise2<S>, const SWAP: bool>(
    m: &DMatrix<S>,
    v: &[S],
    y: &DMatrix<S>,
    g: &DMatrix<S>,
    need_m: bool,
    need_v: bool,
) -> (Option<DMatrix<S>>, Option<Vec<S>>) {
    let r = m.nrows().max(1);
    let z = S::zero();
    let cols = || {
        m.as_slice()
            .chunks_exact(r)
            .zip(y.as_slice().chunks_exact(r))
            .zip(g.as_slice().chunks_exact(r))
            .zip(v)
    };
    let dm = need_m.then(|| {
        let mut out = Vec::with_capacity(m.len());
        for (((col, ycol), gcol), &vj) in cols() {
            out.extend(
                col.iter()
                    .zip(ycol)
                    .zip(gcol)
                    .map(|((&x, &y), &g)| d_sides::<S, Op, SWAP>(x, vj, y, g, z).0),
            );
        }
        DMatrix::from_vec(m.nrows(), m.ncols(), out)
    });
    let dv = need_v.then(|| {
        if m.nrows() == 0 {
            return vec![z; v.len()];
        }
        cols()
            .map(|(((x, y), g), &vj)| {
                sum_zip3(x, y, g, |x, y, g| d_sides::<S, Op, SWAP>(x, vj, y, z, g).1)
            })
            .collect()
    });
    (dm, dv)
}

macro_rules! bias {
    ($op:ty, $V:ident) => {
        impl<S: Real> Binary<$op, $V<S>> for DMatrix<S> {
            type Out = DMatrix<S>;
            #[inline]
            #[track_caller]
            fn eval(&self, b: &$V<S>) -> DMatrix<S> {
                bias_check(<$op as Pointwise2<S>>::NAME, self, b.shape(), false);
                bias_eval::<S, $op, false>(self, b.as_slice())
            }
            #[inline]
            fn jvp(
                &self,
                b: &$V<S>,
                out: &DMatrix<S>,
                da: Option<&Self>,
                db: Option<&$V<S>>,
            ) -> DMatrix<S> {
                bias_jvp::<S, $op, false>(self, b.as_slice(), out, da, db.map(|d| d.as_slice()))
            }
            #[inline]
            fn vjp(
                &self,
                b: &$V<S>,
                out: &DMatrix<S>,
                g: &DMatrix<S>,
                need_a: bool,
                need_b: bool,
            ) -> (Option<Self>, Option<$V<S>>) {
                let (dm, dv) =
                    bias_vjp::<S, $op, false>(self, b.as_slice(), out, g, need_a, need_b);
                (dm, dv.map($V::from_vec))
            }
        }

        impl<S: Real> Binary<$op, DMatrix<S>> for $V<S> {
            type Out = DMatrix<S>;
            #[inline]
            #[track_caller]
            fn eval(&self, b: &DMatrix<S>) -> DMatrix<S> {
                bias_check(<$op as Pointwise2<S>>::NAME, b, self.shape(), true);
                bias_eval::<S, $op, true>(b, self.as_slice())
            }
            #[inline]
            fn jvp(
                &self,
                b: &DMatrix<S>,
                out: &DMatrix<S>,
                da: Option<&Self>,
                db: Option<&DMatrix<S>>,
            ) -> DMatrix<S> {
                bias_jvp::<S, $op, true>(b, self.as_slice(), out, db, da.map(|d| d.as_slice()))
            }
            #[inline]
            fn vjp(
                &self,
                b: &DMatrix<S>,
                out: &DMatrix<S>,
                g: &DMatrix<S>,
                need_a: bool,
                need_b: bool,
            ) -> (Option<Self>, Option<DMatrix<S>>) {
                let (dm, dv) = bias_vjp::<S, $op, true>(b, self.as_slice(), out, g, need_b, need_a);
                (dv.map($V::from_vec), dm)
            }
        }
    };
}
bias!(op::Add, DVector);
bias!(op::Sub, DVector);
bias!(op::Add, RowDVector);
bias!(op::Sub, RowDVector);
