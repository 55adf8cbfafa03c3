//! Reductions to a scalar (`sum`, `mean`, `norm_squared`, `dot`), element access
//! (`x[i]`, `x[(i, j)]`) and `transpose`: the primitives that change a value's shape.

use nalgebra::allocator::Allocator;
use nalgebra::{DefaultAllocator, Dim, OMatrix};

use super::elementwise::{build_like, shape_panic, zeros_like};
use super::op;
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

/// `Σ f(a_i, b_i)` over the common length, over chunks (indexing through a closure keeps a
/// bounds check per element, which stops the loop from vectorizing).
///
/// A plain float sums into four blocks of eight partial sums, so four vector chains
/// overlap; a SIMD packet is several vector chains already, and sums into one block of
/// eight (as [`sum_by`]), which keeps a small sum of packets small.
#[inline(always)]
fn sum_zip<S: Real>(a: &[S], b: &[S], f: impl Fn(S, S) -> S) -> S {
    if S::LANES == 1 {
        sum_blocks::<S, 4>(a, b, f)
    } else {
        sum_blocks::<S, 1>(a, b, f)
    }
}

/// [`sum_zip`] with `NB` blocks of eight partial sums: chunks of `8 NB`, then chunks of
/// eight into the first block, then the tail; the blocks are added elementwise, then
/// folded pairwise.
#[inline(always)]
fn sum_blocks<S: Real, const NB: usize>(a: &[S], b: &[S], f: impl Fn(S, S) -> S) -> S {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (wa, wb) = (a.chunks_exact(8 * NB), b.chunks_exact(8 * NB));
    let (ra, rb) = (wa.remainder(), wb.remainder());
    let mut acc = [[S::zero(); 8]; NB];
    for (ca, cb) in wa.zip(wb) {
        for (q, aq) in acc.iter_mut().enumerate() {
            for (l, a) in aq.iter_mut().enumerate() {
                *a += f(ca[8 * q + l], cb[8 * q + l]);
            }
        }
    }
    let (ea, eb) = (ra.chunks_exact(8), rb.chunks_exact(8));
    let tail = ea
        .remainder()
        .iter()
        .zip(eb.remainder())
        .fold(S::zero(), |t, (&a, &b)| t + f(a, b));
    for (ca, cb) in ea.zip(eb) {
        for (l, a) in acc[0].iter_mut().enumerate() {
            *a += f(ca[l], cb[l]);
        }
    }
    if NB > 1 {
        // Through memory: otherwise the vectorizer shapes the loops for the folds below
        // (half-width adds and shuffles) instead of one full-width add per chunk.
        acc = std::hint::black_box(acc);
    }
    let s: [S; 8] = std::array::from_fn(|l| acc[1..].iter().fold(acc[0][l], |v, aq| v + aq[l]));
    ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])) + tail
}

/// `Σ x_i`, summed as [`sum_zip`].
#[inline]
pub(crate) fn sum<S: Real>(x: &[S]) -> S {
    sum_zip(x, x, |a, _| a)
}

/// `Σ a_i b_i` over the common length.
#[inline]
pub(crate) fn dot<S: Real>(a: &[S], b: &[S]) -> S {
    sum_zip(a, b, |a, b| a * b)
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
