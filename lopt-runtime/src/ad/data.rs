//! [`Data`] impls: batch and config fields read by a loss, converted to its scalar type.
//!
//! When the field's scalar already is the loss's scalar (`f32` data in an `f32` loss),
//! the value is borrowed, not copied.

use std::any::Any;
use std::borrow::Cow;

use nalgebra::allocator::Allocator;
use nalgebra::{DVector, DefaultAllocator, Dim, OMatrix};

use super::Data;
use crate::scalar::Real;

/// `Some(v)` when `V` and `T` are the same type.
#[inline(always)]
fn same<V: 'static, T: 'static>(v: &V) -> Option<&T> {
    (v as &dyn Any).downcast_ref::<T>()
}

macro_rules! float_data {
    ($t:ty, $from:ident) => {
        impl<S: Real> Data<S> for $t {
            type Out = S;
            #[inline]
            fn data(&self) -> Cow<'_, S> {
                match same::<$t, S>(self) {
                    Some(s) => Cow::Borrowed(s),
                    None => Cow::Owned(S::$from(*self)),
                }
            }
        }

        /// Any owned nalgebra matrix or vector (`DMatrix`, `DVector`, `RowDVector`,
        /// `SMatrix`, `SVector`), same shape in `S`.
        impl<S: Real, R: Dim, C: Dim> Data<S> for OMatrix<$t, R, C>
        where
            DefaultAllocator: Allocator<R, C>,
        {
            type Out = OMatrix<S, R, C>;
            #[inline]
            fn data(&self) -> Cow<'_, OMatrix<S, R, C>> {
                match same::<Self, OMatrix<S, R, C>>(self) {
                    Some(m) => Cow::Borrowed(m),
                    None => Cow::Owned(self.map(S::$from)),
                }
            }
        }

        /// A `Vec` reads as a column vector.
        impl<S: Real> Data<S> for Vec<$t> {
            type Out = DVector<S>;
            #[inline]
            fn data(&self) -> Cow<'_, DVector<S>> {
                Cow::Owned(DVector::from_iterator(
                    self.len(),
                    self.iter().map(|&x| S::$from(x)),
                ))
            }
        }
    };
}
float_data!(f32, from_f32);
float_data!(f64, from_f64);
