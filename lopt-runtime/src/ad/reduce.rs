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

/// Eight sums at once: `Σ_i f(c, a_c[i], b_c[i])` for each `c`, each summed exactly as
/// [`sum_zip3`] sums (eight partial sums, then the tail), over the slices' common length.
/// One sum's eight partial sums form one vector whose every add waits for the previous
/// one; `C` of them in one sweep keep the adder busy (a 256-row column's sum takes a
/// quarter of the time when eight run together). `f` gets `c` so that one sweep can mix
/// kinds of sums (plain and products).
#[inline(always)]
pub(crate) fn sums_zip<S: Real>(
    a: [&[S]; 8],
    b: [&[S]; 8],
    f: impl Fn(usize, S, S) -> S,
) -> [S; 8] {
    let n = a.iter().chain(&b).map(|s| s.len()).min().unwrap_or(0);
    let full = n - n % 8;
    // Named accumulators, each one vector: an array of them indexed by a loop variable
    // is kept on the stack and summed element by element.
    let z = [S::zero(); 8];
    let (mut p0, mut p1, mut p2, mut p3, mut p4, mut p5, mut p6, mut p7) = (z, z, z, z, z, z, z, z);
    for i in (0..full).step_by(8) {
        macro_rules! step {
            ($p:ident, $c:expr) => {{
                let (x, y): (&[S; 8], &[S; 8]) = (
                    a[$c][i..i + 8].try_into().expect("8 entries"),
                    b[$c][i..i + 8].try_into().expect("8 entries"),
                );
                for l in 0..8 {
                    $p[l] += f($c, x[l], y[l]);
                }
            }};
        }
        step!(p0, 0);
        step!(p1, 1);
        step!(p2, 2);
        step!(p3, 3);
        step!(p4, 4);
        step!(p5, 5);
        step!(p6, 6);
        step!(p7, 7);
    }
    let mut acc = [p0, p1, p2, p3, p4, p5, p6, p7];
    if S::LANES == 1 {
        // As in `sum_zip3`: the fold below would otherwise shape the loop.
        acc = std::hint::black_box(acc);
    }
    std::array::from_fn(|c| {
        let tail = (full..n).fold(S::zero(), |t, i| t + f(c, a[c][i], b[c][i]));
        let p = &acc[c];
        ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7])) + tail
    })
}

/// `Σ_i f(a_ij, b_ij)` for every column `j` of two column-major matrices of `shape`
/// (`rows × cols`), each summed as [`sum_zip3`] sums it, eight columns a sweep
/// ([`sums_zip`]); zeros when they have no rows.
#[inline(always)]
pub(crate) fn column_sums_zip<S: Real>(
    a: &[S],
    b: &[S],
    (rows, cols): (usize, usize),
    f: impl Fn(S, S) -> S + Copy,
) -> Vec<S> {
    assert!(
        a.len() == rows * cols && b.len() == rows * cols,
        "column sums of {rows} x {cols} matrices given {} and {} entries",
        a.len(),
        b.len()
    );
    if rows == 0 {
        return vec![S::zero(); cols];
    }
    let mut out = Vec::with_capacity(cols);
    let (mut ga, mut gb) = (a.chunks_exact(8 * rows), b.chunks_exact(8 * rows));
    for (ga, gb) in ga.by_ref().zip(gb.by_ref()) {
        let (ca, cb): ([&[S]; 8], [&[S]; 8]) = (
            std::array::from_fn(|c| &ga[c * rows..(c + 1) * rows]),
            std::array::from_fn(|c| &gb[c * rows..(c + 1) * rows]),
        );
        out.extend(sums_zip(ca, cb, |_, x, y| f(x, y)));
    }
    let rest = ga
        .remainder()
        .chunks_exact(rows)
        .zip(gb.remainder().chunks_exact(rows));
    out.extend(rest.map(|(x, y)| sum_zip3(x, y, y, |x, y, _| f(x, y))));
    out
}

/// The sum of every column of a column-major matrix of `shape`, each as [`sum`] sums it.
pub(crate) fn column_sums<S: Real>(data: &[S], shape: (usize, usize)) -> Vec<S> {
    column_sums_zip(data, data, shape, |x, _| x)
}

/// `Σ_i a_ij b_ij` for every column `j` of matrices of `shape`, each as [`dot`] sums it.
pub(crate) fn column_dots<S: Real>(a: &[S], b: &[S], shape: (usize, usize)) -> Vec<S> {
    column_sums_zip(a, b, shape, |x, y| x * y)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lanes::Lanes;

    /// `Σ x_i` in the order [`sum_zip3`] promises, written out: eight partial sums over
    /// `i mod 8` up to the last full eight, the tail summed on its own from zero, then
    /// `((p0 + p4) + (p1 + p5)) + ((p2 + p6) + (p3 + p7)) + tail`.
    fn sum_in_order(x: &[f32]) -> f32 {
        let full = x.len() - x.len() % 8;
        let mut p = [0.0f32; 8];
        for (i, &v) in x[..full].iter().enumerate() {
            p[i % 8] += v;
        }
        let tail = x[full..].iter().fold(0.0f32, |t, &v| t + v);
        ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7])) + tail
    }

    fn data(len: usize, salt: u32) -> Vec<f32> {
        // Magnitudes spread over six decades, so a change of summation order shows.
        (0..len as u32)
            .map(|i| {
                let h = (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503)) % 1000;
                let sign = if h.is_multiple_of(3) { -1.0 } else { 1.0 };
                sign * 10f32.powi((h % 7) as i32 - 3) * (1.0 + h as f32 / 997.0)
            })
            .collect()
    }

    /// Column sums and dots, eight columns a sweep and the rest one by one, equal the
    /// written-out order of `sum` and `dot` bit for bit, for row counts with and without
    /// a tail and column counts around the group of eight; a lane of a packet sums as
    /// a lone `f32` does. Mutation tried: the final fold of the eight-column sweep as
    /// `((p0 + p1) + (p4 + p5)) + …` (fails here and in the layer norm's composition test).
    #[test]
    fn column_sums_follow_sums_order_bit_for_bit() {
        for rows in [1usize, 7, 8, 37, 256] {
            for cols in [1usize, 7, 8, 9, 17] {
                let (a, b) = (data(rows * cols, 1), data(rows * cols, 2));
                let sums = column_sums(&a, (rows, cols));
                let dots = column_dots(&a, &b, (rows, cols));
                for j in 0..cols {
                    let (ca, cb) = (&a[j * rows..(j + 1) * rows], &b[j * rows..(j + 1) * rows]);
                    let prod: Vec<f32> = ca.iter().zip(cb).map(|(x, y)| x * y).collect();
                    assert_eq!(
                        sums[j].to_bits(),
                        sum_in_order(ca).to_bits(),
                        "{rows}x{cols}"
                    );
                    assert_eq!(
                        dots[j].to_bits(),
                        sum_in_order(&prod).to_bits(),
                        "{rows}x{cols}"
                    );
                }
                let packed: Vec<Lanes<4>> = (0..rows * cols)
                    .map(|i| Lanes([a[i], b[i], -a[i], 0.5 * b[i]]))
                    .collect();
                for (j, s) in column_sums(&packed, (rows, cols)).iter().enumerate() {
                    let lane =
                        |l: usize| packed[j * rows..(j + 1) * rows].iter().map(move |p| p.0[l]);
                    for l in 0..4 {
                        let want = sum_in_order(&lane(l).collect::<Vec<_>>());
                        assert_eq!(s.0[l].to_bits(), want.to_bits(), "lane {l}");
                    }
                }
            }
        }
        assert_eq!(column_sums::<f32>(&[], (0, 3)), vec![0.0; 3]);
    }
}
