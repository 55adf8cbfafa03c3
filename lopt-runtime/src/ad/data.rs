//! [`Data`] impls: batch and config fields read by a loss, converted to its scalar type.
//!
//! When the field's scalar already is the loss's scalar (`f32` data in an `f32` loss),
//! the value is borrowed, not copied.

use std::any::Any;
use std::borrow::Cow;

use nalgebra::allocator::Allocator;
use nalgebra::{DVector, DefaultAllocator, Dim, OMatrix};

use super::Data;
use crate::lanes::Lanes;
use crate::scalar::Real;

/// `Some(v)` when `V` and `T` are the same type.
#[inline(always)]
fn same<V: 'static, T: 'static>(v: &V) -> Option<&T> {
    (v as &dyn Any).downcast_ref::<T>()
}

macro_rules! scalar_data {
    ($($t:ty $(, const $n:ident)?);*) => {$(
        /// A scalar: borrowed when it already is `S`, converted otherwise (plain floats
        /// exactly through `f64`; a packet from lane 0, which only happens for data that
        /// every lane shares).
        impl<S: Real $(, const $n: usize)?> Data<S> for $t {
            type Out = S;
            #[inline]
            fn data(&self) -> Cow<'_, S> {
                match same::<$t, S>(self) {
                    Some(s) => Cow::Borrowed(s),
                    None => Cow::Owned(S::from_f64(self.lane(0))),
                }
            }
        }
    )*};
}
scalar_data!(f32; f64; Lanes<N>, const N);

/// Any owned nalgebra matrix or vector (`DMatrix`, `DVector`, `RowDVector`, `SMatrix`,
/// `SVector`), same shape in `S`: borrowed when its scalar already is `S` (f32 data in an
/// f32 loss, a lane-packed configuration in a batched loss).
impl<S: Real, T: Real, R: Dim, C: Dim> Data<S> for OMatrix<T, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = OMatrix<S, R, C>;
    #[inline]
    fn data(&self) -> Cow<'_, OMatrix<S, R, C>> {
        match same::<Self, OMatrix<S, R, C>>(self) {
            Some(m) => Cow::Borrowed(m),
            None => Cow::Owned(self.map(|x| S::from_f64(x.lane(0)))),
        }
    }
}

/// A `Vec` reads as a column vector.
impl<S: Real, T: Real> Data<S> for Vec<T> {
    type Out = DVector<S>;
    #[inline]
    fn data(&self) -> Cow<'_, DVector<S>> {
        Cow::Owned(DVector::from_iterator(
            self.len(),
            self.iter().map(|&x| S::from_f64(x.lane(0))),
        ))
    }
}
