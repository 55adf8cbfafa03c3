//! Reductions to a scalar (`sum`, `mean`, `norm_squared`, `dot`), element access
//! (`x[i]`, `x[(i, j)]`) and `transpose`: the primitives that change a value's shape.

use nalgebra::allocator::Allocator;
use nalgebra::{DefaultAllocator, Dim, OMatrix};

use super::op;
use super::shape::{build_like, shape_panic, zeros_like};
use super::{Binary, Unary};
use crate::scalar::Real;

/// `Σ f(i)` over `0..n` with eight independent accumulators: a single float accumulator
/// is a serial dependency chain the compiler may not reorder, so it cannot vectorize.
#[inline(always)]
pub(crate) fn sum_by<S: Real>(n: usize, f: impl Fn(usize) -> S) -> S {
    let mut acc = [S::zero(); 8];
    let full = n - n % 8;
    let mut i = 0;
    while i < full {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
        i += 8;
    }
    let mut tail = S::zero();
    for j in full..n {
        tail += f(j);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `Σ f(a_i, b_i, c_i)` over the common length, summed in the order of [`sum_by`] (eight
/// partial sums, then the tail) for every scalar type, so a lane of a SIMD packet sums
/// exactly as a lone `f32` does. Over chunks rather than indexing through a closure: a
/// bounds check per element stops the loop from vectorizing.
#[inline(always)]
pub(crate) fn sum_zip3<S: Real>(a: &[S], b: &[S], c: &[S], f: impl Fn(S, S, S) -> S) -> S {
    let n = a.len().min(b.len()).min(c.len());
    let (ca, cb, cc) = (
        a[..n].chunks_exact(8),
        b[..n].chunks_exact(8),
        c[..n].chunks_exact(8),
    );
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder())
        .fold(S::zero(), |t, ((&a, &b), &c)| t + f(a, b, c));
    let mut acc = [S::zero(); 8];
    for ((ca, cb), cc) in ca.zip(cb).zip(cc) {
        for (l, s) in acc.iter_mut().enumerate() {
            *s += f(ca[l], cb[l], cc[l]);
        }
    }
    if S::LANES == 1 {
        // Through memory: otherwise the vectorizer shapes the loop for the fold below
        // (half-width adds and shuffles) instead of one full-width add per chunk.
        acc = std::hint::black_box(acc);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `Σ x_i`, summed as [`sum_zip3`].
#[inline]
pub(crate) fn sum<S: Real>(x: &[S]) -> S {
    sum_zip3(x, x, x, |a, _, _| a)
}

/// `Σ a_i b_i` over the common length.
#[inline]
pub(crate) fn dot<S: Real>(a: &[S], b: &[S]) -> S {
    sum_zip3(a, b, b, |a, b, _| a * b)
}

impl<S: Real, R: Dim, C: Dim> Unary<op::Sum> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = S;
    #[inline]
    fn eval(&self, _op: &op::Sum) -> S {
        sum(self.as_slice())
    }
    #[inline]
    fn jvp(&self, _op: &op::Sum, _out: &S, dx: &Self) -> S {
        sum(dx.as_slice())
    }
    #[inline]
    fn vjp(&self, _op: &op::Sum, _out: &S, g: S) -> Self {
        let (r, c) = self.shape_generic();
        OMatrix::from_element_generic(r, c, g)
    }
}

impl<S: Real, R: Dim, C: Dim> Unary<op::Mean> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = S;
    #[inline]
    fn eval(&self, _op: &op::Mean) -> S {
        sum(self.as_slice()) / S::c(self.len() as f64)
    }
    #[inline]
    fn jvp(&self, _op: &op::Mean, _out: &S, dx: &Self) -> S {
        sum(dx.as_slice()) / S::c(self.len() as f64)
    }
    #[inline]
    fn vjp(&self, _op: &op::Mean, _out: &S, g: S) -> Self {
        let (r, c) = self.shape_generic();
        OMatrix::from_element_generic(r, c, g / S::c(self.len() as f64))
    }
}

impl<S: Real, R: Dim, C: Dim> Unary<op::NormSquared> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = S;
    #[inline]
    fn eval(&self, _op: &op::NormSquared) -> S {
        dot(self.as_slice(), self.as_slice())
    }
    #[inline]
    fn jvp(&self, _op: &op::NormSquared, _out: &S, dx: &Self) -> S {
        S::c(2.0) * dot(self.as_slice(), dx.as_slice())
    }
    #[inline]
    fn vjp(&self, _op: &op::NormSquared, _out: &S, g: S) -> Self {
        let g2 = S::c(2.0) * g;
        build_like(self, self.as_slice().iter().map(|&x| g2 * x))
    }
}

impl<S: Real, R: Dim, C: Dim> Binary<op::Dot, OMatrix<S, R, C>> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = S;
    #[inline]
    #[track_caller]
    fn eval(&self, b: &Self) -> S {
        if self.shape() != b.shape() {
            shape_panic(
                "a.dot(b)",
                self.shape(),
                b.shape(),
                "dot needs equal shapes",
            );
        }
        dot(self.as_slice(), b.as_slice())
    }
    #[inline]
    fn jvp(&self, b: &Self, _out: &S, da: Option<&Self>, db: Option<&Self>) -> S {
        let mut t = S::zero();
        if let Some(da) = da {
            t += dot(da.as_slice(), b.as_slice());
        }
        if let Some(db) = db {
            t += dot(self.as_slice(), db.as_slice());
        }
        t
    }
    #[inline]
    fn vjp(
        &self,
        b: &Self,
        _out: &S,
        g: S,
        need_a: bool,
        need_b: bool,
    ) -> (Option<Self>, Option<Self>) {
        (
            need_a.then(|| build_like(b, b.as_slice().iter().map(|&x| g * x))),
            need_b.then(|| build_like(self, self.as_slice().iter().map(|&x| g * x))),
        )
    }
}

impl<S: Real, R: Dim, C: Dim> Unary<op::Transpose> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C> + Allocator<C, R>,
{
    type Out = OMatrix<S, C, R>;
    #[inline]
    fn eval(&self, _op: &op::Transpose) -> Self::Out {
        self.transpose()
    }
    #[inline]
    fn jvp(&self, _op: &op::Transpose, _out: &Self::Out, dx: &Self) -> Self::Out {
        dx.transpose()
    }
    #[inline]
    fn vjp(&self, _op: &op::Transpose, _out: &Self::Out, g: Self::Out) -> Self {
        g.transpose()
    }
}

/// The column-major position of `(i, j)`, or a panic naming the access.
#[inline]
#[track_caller]
fn position<S: Real, R: Dim, C: Dim>(x: &OMatrix<S, R, C>, i: usize, j: usize) -> usize
where
    DefaultAllocator: Allocator<R, C>,
{
    let (r, c) = x.shape();
    if i >= r || j >= c {
        panic!("lopt: index [({i}, {j})] out of range for a {r}x{c} value");
    }
    i + j * r
}

impl<S: Real, R: Dim, C: Dim> Unary<op::Index> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = S;
    #[inline]
    #[track_caller]
    fn eval(&self, op: &op::Index) -> S {
        match self.as_slice().get(op.0) {
            Some(&x) => x,
            None => panic!(
                "lopt: index [{}] out of range for a {}x{} value ({} elements, column-major)",
                op.0,
                self.nrows(),
                self.ncols(),
                self.len()
            ),
        }
    }
    #[inline]
    fn jvp(&self, op: &op::Index, _out: &S, dx: &Self) -> S {
        dx.as_slice()[op.0]
    }
    #[inline]
    fn vjp(&self, op: &op::Index, _out: &S, g: S) -> Self {
        let mut d = zeros_like(self);
        d.as_mut_slice()[op.0] = g;
        d
    }
}

impl<S: Real, R: Dim, C: Dim> Unary<op::Index2> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = S;
    #[inline]
    #[track_caller]
    fn eval(&self, op: &op::Index2) -> S {
        self.as_slice()[position(self, op.0, op.1)]
    }
    #[inline]
    fn jvp(&self, op: &op::Index2, _out: &S, dx: &Self) -> S {
        dx.as_slice()[op.0 + op.1 * self.nrows()]
    }
    #[inline]
    fn vjp(&self, op: &op::Index2, _out: &S, g: S) -> Self {
        let mut d = zeros_like(self);
        d.as_mut_slice()[op.0 + op.1 * self.nrows()] = g;
        d
    }
}

/// `x[i]` on the plain sequences a params struct may hold (`Vec<S>`, `[S; N]`).
macro_rules! index_seq {
    ($([$($g:tt)*] $t:ty, $zeros:expr;)*) => {$(
        impl<S: Real, $($g)*> Unary<op::Index> for $t {
            type Out = S;
            #[inline]
            #[track_caller]
            fn eval(&self, op: &op::Index) -> S {
                match self.get(op.0) {
                    Some(&x) => x,
                    None => panic!(
                        "lopt: index [{}] out of range for a sequence of length {}",
                        op.0,
                        self.len()
                    ),
                }
            }
            #[inline]
            fn jvp(&self, op: &op::Index, _out: &S, dx: &Self) -> S {
                dx[op.0]
            }
            #[inline]
            fn vjp(&self, op: &op::Index, _out: &S, g: S) -> Self {
                let zeros: fn(&Self) -> Self = $zeros;
                let mut d = zeros(self);
                d[op.0] = g;
                d
            }
        }
    )*};
}
index_seq!(
    [] Vec<S>, |x| vec![S::zero(); x.len()];
    [const N: usize] [S; N], |_| [S::zero(); N];
);
