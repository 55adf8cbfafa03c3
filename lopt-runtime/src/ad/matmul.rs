//! Matrix products `A * B` (nalgebra semantics: matrix·matrix, matrix·vector,
//! row·matrix, outer products) and their derivatives.
//!
//! `f32`/`f64` products of non-tiny matrices go to `matrixmultiply`'s `sgemm`/`dgemm`,
//! which take arbitrary strides: the reverse-mode products `dA = G·Bᵀ` and `dB = Aᵀ·G`
//! read the transposes in place instead of materializing them. Other scalars (SIMD
//! packets) use a plain loop ordered for column-major locality.

use std::any::TypeId;

use nalgebra::allocator::Allocator;
use nalgebra::{DefaultAllocator, Dim, OMatrix, UninitMatrix};

use super::elementwise::shape_panic;
use super::op;
use super::reduce::sum_by;
use super::Binary;
use crate::scalar::Real;

/// Below this size in any dimension the packing overhead of `gemm` outweighs its speed
/// (the threshold nalgebra uses too).
const SMALL_DIM: usize = 5;

/// A read-only strided view of a column-major matrix, possibly transposed: element
/// `(i, j)` is `data[i * rs + j * cs]`.
///
/// Views are only made from whole matrices (and their transposes), so every index in
/// `rows x cols` is in bounds of `data`; the `gemm` calls rely on it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View<'a, S> {
    data: &'a [S],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a, S: Real> View<'a, S> {
    /// The whole of `m`.
    pub(crate) fn of<R: Dim, C: Dim>(m: &'a OMatrix<S, R, C>) -> Self
    where
        DefaultAllocator: Allocator<R, C>,
    {
        View {
            data: m.as_slice(),
            rows: m.nrows(),
            cols: m.ncols(),
            rs: 1,
            cs: m.nrows(),
        }
    }

    /// The transpose, without copying.
    pub(crate) fn t(self) -> Self {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> S {
        self.data[i * self.rs + j * self.cs]
    }
}

/// `c = a·b` (or `c += a·b` when `accumulate`) through `sgemm`/`dgemm`, for `f32`/`f64`
/// and every dimension above [`SMALL_DIM`]; returns false (touching nothing) otherwise.
///
/// # Safety
/// `c` must be valid for writes of `a.rows * b.cols` elements in column-major order, and
/// initialized when `accumulate` (with `beta = 0`, `gemm` never reads `c`).
unsafe fn gemm_fast<S: Real>(a: View<'_, S>, b: View<'_, S>, c: *mut S, accumulate: bool) -> bool {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m <= SMALL_DIM || k <= SMALL_DIM || n <= SMALL_DIM {
        return false;
    }
    debug_assert_eq!(k, b.rows);
    let (rsa, csa, rsb, csb) = (a.rs as isize, a.cs as isize, b.rs as isize, b.cs as isize);
    let (rsc, csc) = (1, m as isize);
    // The TypeId test makes the pointer casts identities; the views' invariant keeps
    // every element gemm reads inside `a.data` / `b.data`.
    if TypeId::of::<S>() == TypeId::of::<f32>() {
        let beta = if accumulate { 1.0 } else { 0.0 };
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr() as *const f32,
            rsa,
            csa,
            b.data.as_ptr() as *const f32,
            rsb,
            csb,
            beta,
            c as *mut f32,
            rsc,
            csc,
        );
        true
    } else if TypeId::of::<S>() == TypeId::of::<f64>() {
        let beta = if accumulate { 1.0 } else { 0.0 };
        matrixmultiply::dgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr() as *const f64,
            rsa,
            csa,
            b.data.as_ptr() as *const f64,
            rsb,
            csb,
            beta,
            c as *mut f64,
            rsc,
            csc,
        );
        true
    } else {
        false
    }
}

/// `c += a·b` for any scalar; `c` is `a.rows x b.cols`, column-major, contiguous.
pub(crate) fn gemm_generic<S: Real>(a: View<'_, S>, b: View<'_, S>, c: &mut [S]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows);
    assert_eq!(c.len(), m * n);
    if m == 0 {
        return;
    }
    for (j, cj) in c.chunks_exact_mut(m).enumerate() {
        if a.rs == 1 {
            // Columns of `a` are contiguous: c[:, j] += a[:, p] * b[p, j].
            for p in 0..k {
                let bpj = b.at(p, j);
                let ap = &a.data[p * a.cs..p * a.cs + m];
                cj.iter_mut().zip(ap).for_each(|(c, &x)| *c += x * bpj);
            }
        } else {
            // Rows of `a` are contiguous (a transpose): c[i, j] += a[i, :] · b[:, j].
            for (i, c) in cj.iter_mut().enumerate() {
                *c += sum_by(k, |p| a.at(i, p) * b.at(p, j));
            }
        }
    }
}

/// `a·b` as a new `r x c` matrix (`r = a.rows`, `c = b.cols`).
pub(crate) fn product<S: Real, R: Dim, C: Dim>(
    a: View<'_, S>,
    b: View<'_, S>,
    r: R,
    c: C,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    debug_assert_eq!((a.rows, b.cols), (r.value(), c.value()));
    let mut out = UninitMatrix::<S, R, C>::uninit(r, c);
    // SAFETY: `out` holds exactly `r * c` elements in column-major order; with
    // `accumulate = false` gemm writes every one of them without reading.
    if unsafe { gemm_fast(a, b, out.as_mut_ptr() as *mut S, false) } {
        // SAFETY: gemm initialized every element.
        return unsafe { out.assume_init() };
    }
    let mut out = OMatrix::<S, R, C>::zeros_generic(r, c);
    gemm_generic(a, b, out.as_mut_slice());
    out
}

/// `c += a·b` into an existing matrix.
pub(crate) fn product_acc<S: Real>(a: View<'_, S>, b: View<'_, S>, c: &mut [S]) {
    assert_eq!(c.len(), a.rows * b.cols);
    // SAFETY: `c` is an initialized slice of exactly `a.rows * b.cols` elements.
    if !unsafe { gemm_fast(a, b, c.as_mut_ptr(), true) } {
        gemm_generic(a, b, c);
    }
}

impl<S: Real, R1: Dim, C1: Dim, C2: Dim> Binary<op::Mul, OMatrix<S, C1, C2>> for OMatrix<S, R1, C1>
where
    DefaultAllocator: Allocator<R1, C1> + Allocator<C1, C2> + Allocator<R1, C2>,
{
    type Out = OMatrix<S, R1, C2>;

    #[inline]
    #[track_caller]
    fn eval(&self, b: &OMatrix<S, C1, C2>) -> Self::Out {
        if self.ncols() != b.nrows() {
            shape_panic(
                "a * b",
                self.shape(),
                b.shape(),
                "a matrix product needs as many columns on the left as rows on the right",
            );
        }
        product(
            View::of(self),
            View::of(b),
            self.shape_generic().0,
            b.shape_generic().1,
        )
    }

    fn jvp(
        &self,
        b: &OMatrix<S, C1, C2>,
        out: &Self::Out,
        da: Option<&Self>,
        db: Option<&OMatrix<S, C1, C2>>,
    ) -> Self::Out {
        let (r, c) = out.shape_generic();
        match (da, db) {
            (Some(da), Some(db)) => {
                let mut t = product(View::of(da), View::of(b), r, c);
                product_acc(View::of(self), View::of(db), t.as_mut_slice());
                t
            }
            (Some(da), None) => product(View::of(da), View::of(b), r, c),
            (None, Some(db)) => product(View::of(self), View::of(db), r, c),
            (None, None) => OMatrix::zeros_generic(r, c),
        }
    }

    fn vjp(
        &self,
        b: &OMatrix<S, C1, C2>,
        _out: &Self::Out,
        g: &Self::Out,
        need_a: bool,
        need_b: bool,
    ) -> (Option<Self>, Option<OMatrix<S, C1, C2>>) {
        let (r1, c1) = self.shape_generic();
        let c2 = b.shape_generic().1;
        (
            // dA = G·Bᵀ, dB = Aᵀ·G
            need_a.then(|| product(View::of(g), View::of(b).t(), r1, c1)),
            need_b.then(|| product(View::of(self).t(), View::of(g), c1, c2)),
        )
    }
}
