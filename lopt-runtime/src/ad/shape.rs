//! Matrices shaped like others, and the panic for operands of incompatible shapes: what
//! the elementwise, reduction and product rules share.

use nalgebra::allocator::Allocator;
use nalgebra::{DefaultAllocator, Dim, OMatrix};

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
