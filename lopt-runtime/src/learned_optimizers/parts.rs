//! Pieces the learned optimizers of the JAX library share: an optimizer state made of the
//! parameter tree and flat vectors of per-element or per-tensor statistics, and the small
//! functions their features and networks are built from.

use crate::scalar::Real;

pub(crate) use crate::primitives::declared::{sigmoid, sign};

/// `x` clipped to `[lo, hi]`.
#[inline]
pub(crate) fn clip<S: Real>(x: S, lo: f64, hi: f64) -> S {
    x.max(S::from_f64(lo)).min(S::from_f64(hi))
}

/// `1 / sqrt(x)`.
#[inline]
pub(crate) fn rsqrt<S: Real>(x: S) -> S {
    S::from_f64(1.0) / x.sqrt()
}

/// `out = b + x·W` for row-major `W: [x.len(), out.len()]`.
pub(crate) fn linear<S: Real>(w: &[S], b: &[S], x: &[S], out: &mut [S]) {
    out.copy_from_slice(b);
    let n = out.len();
    for (i, &xi) in x.iter().enumerate() {
        for (o, &wv) in out.iter_mut().zip(&w[i * n..(i + 1) * n]) {
            *o += xi * wv;
        }
    }
}

/// `impl Params` for a state `$ty<P>` whose leaves are those of its field `params: P`,
/// then each named `Vec<P::Scalar>` field as one flat leaf named after it (non-leaf
/// fields, such as counters, are carried outside the leaves).
macro_rules! params_then_vectors {
    ($ty:ident { $($field:ident),+ $(,)? }) => {
        impl<P: $crate::params::Params> $crate::params::Params for $ty<P> {
            type Scalar = P::Scalar;
            fn num_leaves(&self) -> usize {
                self.params.num_leaves() + [$(stringify!($field)),+].len()
            }
            fn leaf(&self, i: usize) -> &[P::Scalar] {
                let k = self.params.num_leaves();
                if i < k {
                    return self.params.leaf(i);
                }
                let fields: &[&[P::Scalar]] = &[$(&self.$field),+];
                fields[i - k]
            }
            fn leaf_mut(&mut self, i: usize) -> &mut [P::Scalar] {
                let k = self.params.num_leaves();
                if i < k {
                    return self.params.leaf_mut(i);
                }
                let fields: [&mut [P::Scalar]; [$(stringify!($field)),+].len()] =
                    [$(&mut self.$field),+];
                fields.into_iter().nth(i - k).expect("leaf index in range")
            }
            fn write_leaf_name(&self, i: usize, out: &mut String) {
                let k = self.params.num_leaves();
                match i.checked_sub(k) {
                    None => $crate::params::write_field_leaf_name(out, "params", &self.params, i),
                    Some(j) => out.push_str([$(stringify!($field)),+][j]),
                }
            }
            fn leaf_shape(&self, i: usize) -> Vec<usize> {
                let k = self.params.num_leaves();
                if i < k {
                    self.params.leaf_shape(i)
                } else {
                    vec![self.leaf(i).len()]
                }
            }
        }
    };
}
pub(crate) use params_then_vectors;
