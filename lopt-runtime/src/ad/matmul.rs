//! Matrix products `A * B` (nalgebra semantics: matrix·matrix, matrix·vector,
//! row·matrix, outer products) and their derivatives.
//!
//! Every product goes through [`crate::kernels::gemm`] (register-blocked `f32`/`f64` kernels with
//! run-time CPU dispatch; a plain loop for SIMD packets). Its views are strided, so the
//! reverse-mode products `dA = G·Bᵀ` and `dB = Aᵀ·G` read the transposes in place
//! instead of materializing them.

use nalgebra::allocator::Allocator;
use nalgebra::{DMatrix, DefaultAllocator, Dim, OMatrix, UninitMatrix};

use super::op;
use super::shape::shape_panic;
use super::Binary;
use crate::kernels::alloc::{is_large, scratch};
use crate::kernels::gemm::{gemm_raw, MatRef};
use crate::kernels::gemm_threads::{gemm_split, gemm_split_bias, Cols};
use crate::scalar::Real;

/// A strided view of a whole matrix or of its transpose.
pub(crate) type View<'a, S> = MatRef<'a, S>;

impl<'a, S: Real> MatRef<'a, S> {
    /// The whole of `m` (column-major).
    #[inline]
    pub(crate) fn of<R: Dim, C: Dim>(m: &'a OMatrix<S, R, C>) -> Self
    where
        DefaultAllocator: Allocator<R, C>,
    {
        // Cannot fail: the storage holds exactly nrows * ncols elements.
        MatRef::col_major(m.as_slice(), m.nrows(), m.ncols())
            .expect("a matrix's storage holds all its elements")
    }
}

/// `c += a·b` by plain loops, for any scalar (the reference for the kernels).
#[cfg(test)]
pub(crate) fn gemm_generic<S: Real>(a: View<'_, S>, b: View<'_, S>, c: &mut [S]) {
    crate::kernels::gemm::gemm_loop(a, b, c)
}

/// `a·b` as a new `r x c` matrix (`r = a.rows`, `c = b.cols`).
///
/// A large result (a convolution's patch cotangent `G·Wᵀ`, 75 MB for the largest layer
/// of the benchmark) is written into the buffer the last convolution's backward pass
/// recycled, or else into fresh pages advised as huge pages, faulted in 2 MB at a time
/// instead of 4 KB (the faults and unmaps of an ordinary allocation cost about a
/// quarter of that layer's gradient). See `kernels::alloc::scratch`. (The rules call
/// [`product_cols`], which may split the product over threads; the tests call this.)
#[cfg(test)]
#[inline]
pub(crate) fn product<S: Real, R: Dim, C: Dim>(
    a: View<'_, S>,
    b: View<'_, S>,
    r: R,
    c: C,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    assert_eq!((a.rows(), b.cols()), (r.value(), c.value()));
    assert_eq!(a.cols(), b.rows());
    let n = r.value() * c.value();
    if is_large::<S>(n) {
        let mut v = scratch::<S>(n);
        // SAFETY: the shapes agree (checked above) and `v` has room for `r * c`
        // elements; gemm writes every one of them (without accumulation it reads none),
        // so all `n` are initialized when the length is set.
        unsafe {
            gemm_raw(a, b, v.as_mut_ptr(), false);
            v.set_len(n);
        }
        return OMatrix::from_vec_generic(r, c, v);
    }
    let mut out = UninitMatrix::<S, R, C>::uninit(r, c);
    // SAFETY: the shapes agree (checked above) and `out` holds exactly `r * c` elements
    // in column-major order; without accumulation gemm writes every one without reading.
    unsafe {
        gemm_raw(a, b, out.as_mut_ptr() as *mut S, false);
        out.assume_init()
    }
}

/// The whole of `m` as a right operand that a threaded product can split by columns.
#[inline]
fn cols<S: Real, R: Dim, C: Dim>(m: &OMatrix<S, R, C>) -> Cols<'_, S>
where
    DefaultAllocator: Allocator<R, C>,
{
    Cols::col_major(m.as_slice(), m.nrows(), m.ncols())
}

/// `product` (test-only) with the right operand given as [`Cols`]: a product large enough is split
/// into fixed chunks of columns on the thread pool (`kernels::gemm_threads`; the same
/// result bit for bit on any number of threads). The matrix product rule's products.
#[inline]
fn product_cols<S: Real, R: Dim, C: Dim>(
    a: View<'_, S>,
    b: Cols<'_, S>,
    r: R,
    c: C,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    assert_eq!((a.rows(), b.cols), (r.value(), c.value()));
    assert_eq!(a.cols(), b.rows);
    let n = r.value() * c.value();
    if is_large::<S>(n) {
        let mut v = scratch::<S>(n);
        // SAFETY: the shapes agree (checked above) and `v` has room for `r * c`
        // elements; gemm writes every one of them (without accumulation it reads none),
        // so all `n` are initialized when the length is set.
        unsafe {
            gemm_split(a, b, v.as_mut_ptr(), false);
            v.set_len(n);
        }
        return OMatrix::from_vec_generic(r, c, v);
    }
    let mut out = UninitMatrix::<S, R, C>::uninit(r, c);
    // SAFETY: the shapes agree (checked above) and `out` holds exactly `r * c` elements
    // in column-major order; without accumulation gemm writes every one without reading.
    unsafe {
        gemm_split(a, b, out.as_mut_ptr() as *mut S, false);
        out.assume_init()
    }
}

/// `a·w + 1·biasᵀ` as a new matrix, the bias added by the GEMM to each block as it is
/// made (`kernels::gemm_threads::gemm_split_bias`; split over threads as
/// [`product_cols`]). The values of `Binary<Mul>` then `+ bias`.
pub(crate) fn product_bias<S: Real>(a: View<'_, S>, w: &DMatrix<S>, bias: &[S]) -> DMatrix<S> {
    let b = cols(w);
    assert_eq!(a.cols(), b.rows);
    let (r, c) = (a.rows(), b.cols);
    let n = r * c;
    let mut v = if is_large::<S>(n) {
        scratch::<S>(n)
    } else {
        Vec::with_capacity(n)
    };
    // SAFETY: the shapes agree (checked above), `bias` has one element per column (the
    // callee asserts it), and `v` has room for `r * c` elements; without accumulation the
    // GEMM writes every one of them and reads none, so all `n` are initialized when the
    // length is set.
    unsafe {
        gemm_split_bias(a, b, bias, v.as_mut_ptr());
        v.set_len(n);
    }
    DMatrix::from_vec(r, c, v)
}

/// The cotangents `(g·bᵀ, aᵀ·g)` of `a·b`, as `Binary<Mul>::vjp` makes them, from a
/// borrowed `g`.
pub(crate) fn product_vjp<S: Real>(
    a: &DMatrix<S>,
    b: &DMatrix<S>,
    g: &DMatrix<S>,
) -> (DMatrix<S>, DMatrix<S>) {
    let (r1, c1) = a.shape_generic();
    let c2 = b.shape_generic().1;
    (
        product_cols(View::of(g), cols(b).t(), r1, c1),
        product_cols(View::of(a).t(), cols(g), c1, c2),
    )
}

/// [`product_acc`] with the right operand given as [`Cols`] (split as [`product_cols`]).
#[inline]
fn product_acc_cols<S: Real>(a: View<'_, S>, b: Cols<'_, S>, c: &mut [S]) {
    assert_eq!(a.cols(), b.rows);
    assert_eq!(c.len(), a.rows() * b.cols);
    // SAFETY: the shapes agree and `c` is an initialized slice of `a.rows * b.cols`.
    unsafe { gemm_split(a, b, c.as_mut_ptr(), true) }
}

/// `c = a·b` into an existing matrix (written, not read: no zero-fill needed first).
#[inline]
pub(crate) fn product_into<S: Real>(a: View<'_, S>, b: View<'_, S>, c: &mut [S]) {
    assert_eq!(a.cols(), b.rows());
    assert_eq!(c.len(), a.rows() * b.cols());
    // SAFETY: the shapes agree and `c` is a slice of `a.rows * b.cols` elements; without
    // accumulation gemm writes every one.
    unsafe { gemm_raw(a, b, c.as_mut_ptr(), false) }
}

/// `c += a·b` into an existing matrix.
#[inline]
pub(crate) fn product_acc<S: Real>(a: View<'_, S>, b: View<'_, S>, c: &mut [S]) {
    assert_eq!(a.cols(), b.rows());
    assert_eq!(c.len(), a.rows() * b.cols());
    // SAFETY: the shapes agree and `c` is an initialized slice of `a.rows * b.cols`.
    unsafe { gemm_raw(a, b, c.as_mut_ptr(), true) }
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
        product_cols(
            View::of(self),
            cols(b),
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
                let mut t = product_cols(View::of(da), cols(b), r, c);
                product_acc_cols(View::of(self), cols(db), t.as_mut_slice());
                t
            }
            (Some(da), None) => product_cols(View::of(da), cols(b), r, c),
            (None, Some(db)) => product_cols(View::of(self), cols(db), r, c),
            (None, None) => OMatrix::zeros_generic(r, c),
        }
    }

    fn vjp(
        &self,
        b: &OMatrix<S, C1, C2>,
        _out: &Self::Out,
        g: Self::Out,
        need_a: bool,
        need_b: bool,
    ) -> (Option<Self>, Option<OMatrix<S, C1, C2>>) {
        let (r1, c1) = self.shape_generic();
        let c2 = b.shape_generic().1;
        (
            // dA = G·Bᵀ, dB = Aᵀ·G
            need_a.then(|| product_cols(View::of(&g), cols(b).t(), r1, c1)),
            need_b.then(|| product_cols(View::of(self).t(), cols(&g), c1, c2)),
        )
    }

    /// `dA += G·Bᵀ` and `dB += Aᵀ·G` accumulated inside the GEMM when the slots already
    /// hold a contribution (a weight used at every step of a loop), else written fresh:
    /// no product matrix allocated and added afterwards.
    fn vjp_acc(
        &self,
        b: &OMatrix<S, C1, C2>,
        _out: &Self::Out,
        g: Self::Out,
        slot_a: &mut Option<Self>,
        slot_b: &mut Option<OMatrix<S, C1, C2>>,
    ) {
        acc_b(self, &g, slot_b);
        acc_a(&g, b, self.shape_generic(), slot_a);
    }

    fn vjp_acc_a(
        &self,
        b: &OMatrix<S, C1, C2>,
        _out: &Self::Out,
        g: Self::Out,
        slot_a: &mut Option<Self>,
    ) {
        acc_a(&g, b, self.shape_generic(), slot_a);
    }

    fn vjp_acc_b(
        &self,
        _b: &OMatrix<S, C1, C2>,
        _out: &Self::Out,
        g: Self::Out,
        slot_b: &mut Option<OMatrix<S, C1, C2>>,
    ) {
        acc_b(self, &g, slot_b);
    }
}

/// `slot += G·Bᵀ` (the left operand's cotangent of `A·B`), or `G·Bᵀ` into an empty slot.
fn acc_a<S: Real, R1: Dim, C1: Dim, C2: Dim>(
    g: &OMatrix<S, R1, C2>,
    b: &OMatrix<S, C1, C2>,
    (r1, c1): (R1, C1),
    slot: &mut Option<OMatrix<S, R1, C1>>,
) where
    DefaultAllocator: Allocator<R1, C1> + Allocator<C1, C2> + Allocator<R1, C2>,
{
    match slot {
        Some(da) => product_acc_cols(View::of(g), cols(b).t(), da.as_mut_slice()),
        None => *slot = Some(product_cols(View::of(g), cols(b).t(), r1, c1)),
    }
}

/// `slot += Aᵀ·G` (the right operand's cotangent of `A·B`), or `Aᵀ·G` into an empty slot.
fn acc_b<S: Real, R1: Dim, C1: Dim, C2: Dim>(
    a: &OMatrix<S, R1, C1>,
    g: &OMatrix<S, R1, C2>,
    slot: &mut Option<OMatrix<S, C1, C2>>,
) where
    DefaultAllocator: Allocator<R1, C1> + Allocator<C1, C2> + Allocator<R1, C2>,
{
    match slot {
        Some(db) => product_acc_cols(View::of(a).t(), cols(g), db.as_mut_slice()),
        None => {
            let (c1, c2) = (a.shape_generic().1, g.shape_generic().1);
            *slot = Some(product_cols(View::of(a).t(), cols(g), c1, c2))
        }
    }
}
