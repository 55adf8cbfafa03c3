//! Integer labels for the cross-entropy rules: a `Vec`, slice or array of `u8`, `u16`,
//! `u32`, `u64`, `usize`, `i32` or `i64` ([`Id`]), read as the `i32` class indices the
//! rules index with (borrowed when they already are `i32`).

use std::borrow::Cow;

use super::gather::Id;

/// Integer labels, one per example: what `softmax_cross_entropy(logits, labels)` takes.
#[diagnostic::on_unimplemented(
    message = "labels are integers, one per example: a `Vec`, slice or array of u8, u16, u32, \
               i32, i64 or usize, not `{Self}`",
    label = "not integer labels"
)]
pub trait Labels {
    /// The labels as `i32` class indices (a label that does not fit becomes `i32::MAX`,
    /// which the rules reject as out of range).
    fn labels(&self) -> Cow<'_, [i32]>;
}

/// The label as an `i32` (out of range: `i32::MAX`; negative: -1, also rejected).
fn to_i32<I: Id>(l: I) -> i32 {
    match l.index() {
        Some(i) => i32::try_from(i).unwrap_or(i32::MAX),
        None => -1,
    }
}

impl<I: Id> Labels for [I] {
    fn labels(&self) -> Cow<'_, [i32]> {
        if std::any::TypeId::of::<I>() == std::any::TypeId::of::<i32>() {
            // SAFETY: `I` is `i32` (same type id), so the slice is a `[i32]` of the same
            // length and lifetime. `i32` labels are borrowed as they are.
            let s = unsafe { std::slice::from_raw_parts(self.as_ptr().cast::<i32>(), self.len()) };
            return Cow::Borrowed(s);
        }
        Cow::Owned(self.iter().map(|&l| to_i32(l)).collect())
    }
}

impl<I: Id> Labels for Vec<I> {
    fn labels(&self) -> Cow<'_, [i32]> {
        self.as_slice().labels()
    }
}

impl<I: Id, const N: usize> Labels for [I; N] {
    fn labels(&self) -> Cow<'_, [i32]> {
        self.as_slice().labels()
    }
}

impl<L: Labels + ?Sized> Labels for &L {
    fn labels(&self) -> Cow<'_, [i32]> {
        (**self).labels()
    }
}

/// The labels of `l` borrowed where they can be (what `#[task]` passes for a label
/// argument that is a place: a variable, a field, an element).
#[inline]
pub fn labels_of<L: Labels + ?Sized>(l: &L) -> Cow<'_, [i32]> {
    l.labels()
}

/// The labels of `l` copied (what `#[task]` passes for a label argument that is a
/// temporary, such as `&labels_from(batch)`, so the op outlives it).
#[inline]
pub fn owned_labels<L: Labels + ?Sized>(l: &L) -> Cow<'static, [i32]> {
    Cow::Owned(l.labels().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every integer type reads as the same `i32` labels; `i32` ones are borrowed; a
    /// negative or too large label becomes one the rules reject.
    #[test]
    fn every_integer_type_gives_the_same_labels() {
        let want: Vec<i32> = vec![0, 3, 1];
        assert_eq!(&*vec![0u8, 3, 1].labels(), &want[..]);
        assert_eq!(&*[0u16, 3, 1].labels(), &want[..]);
        assert_eq!(&*vec![0u32, 3, 1].labels(), &want[..]);
        assert_eq!(&*vec![0i64, 3, 1].labels(), &want[..]);
        assert_eq!(&*vec![0usize, 3, 1].labels(), &want[..]);
        assert!(matches!(want.labels(), Cow::Borrowed(_)));
        assert_eq!(&*vec![-2i64, 1 << 40].labels(), &[-1, i32::MAX][..]);
    }
}
