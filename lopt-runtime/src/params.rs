//! Parameter trees: the Rust form of a JAX pytree.
//!
//! A [`Params`] value is a fixed sequence of *leaves*, each a contiguous slice of scalars.
//! Every tree operation (zeros, map, zip, axpy, dot, flatten) is written once here in terms
//! of [`Params::leaf`] / [`Params::leaf_mut`]; `#[derive(Params)]` only has to enumerate the
//! fields of a struct. Optimizers and estimators walk several trees of the same shape side
//! by side by leaf index, with no allocation.

use nalgebra::{Dim, Matrix, RawStorage, RawStorageMut, Scalar};

use crate::error::{Error, Result};
use crate::scalar::Real;
use num_traits::Zero;

/// A tree of scalar leaves with a fixed structure.
///
/// Implemented for the scalars themselves, `Vec<S>`, `[S; N]`, nalgebra matrices and
/// vectors (static and dynamic), and for structs through `#[derive(Params)]`.
///
/// ```
/// use lopt_runtime::params::Params;
/// use nalgebra::DMatrix;
///
/// let mut p = DMatrix::<f32>::from_element(2, 3, 1.0);
/// let g = DMatrix::<f32>::from_element(2, 3, 0.5);
/// p.axpy(-2.0, &g); // p -= 2 g
/// assert_eq!(p.num_elements(), 6);
/// assert!(p.flatten().iter().all(|&x| x == 0.0));
/// ```
pub trait Params: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// The scalar type of every leaf.
    type Scalar: Real;

    /// Number of leaves.
    fn num_leaves(&self) -> usize;
    /// Leaf `i` as a contiguous slice (`i < num_leaves()`).
    fn leaf(&self, i: usize) -> &[Self::Scalar];
    /// Leaf `i` as a mutable contiguous slice.
    fn leaf_mut(&mut self, i: usize) -> &mut [Self::Scalar];
    /// Appends the name of leaf `i` to `out` (field path, e.g. `layers.w1`; empty for a
    /// bare leaf).
    fn write_leaf_name(&self, i: usize, out: &mut String);
    /// The shape of leaf `i` (rows, columns; `[n]` for vectors, `[]` for a scalar).
    fn leaf_shape(&self, i: usize) -> Vec<usize>;

    /// Total number of scalars over all leaves.
    fn num_elements(&self) -> usize {
        (0..self.num_leaves()).map(|i| self.leaf(i).len()).sum()
    }

    /// The names of all leaves, in leaf order.
    fn leaf_names(&self) -> Vec<String> {
        (0..self.num_leaves())
            .map(|i| {
                let mut s = String::new();
                self.write_leaf_name(i, &mut s);
                s
            })
            .collect()
    }

    /// Calls `f` on every leaf in order.
    fn for_each_leaf(&self, mut f: impl FnMut(&[Self::Scalar])) {
        for i in 0..self.num_leaves() {
            f(self.leaf(i));
        }
    }

    /// Calls `f` on every leaf of `self` with the matching leaf of `other`.
    ///
    /// # Panics
    /// When the trees differ in structure (see [`Params::check_same_shape`] for a fallible test).
    fn zip_leaves_mut(
        &mut self,
        other: &Self,
        mut f: impl FnMut(&mut [Self::Scalar], &[Self::Scalar]),
    ) {
        assert_same_structure(self, other);
        for i in 0..self.num_leaves() {
            f(self.leaf_mut(i), other.leaf(i));
        }
    }

    /// A tree of the same structure filled with zeros.
    fn zeros_like(&self) -> Self {
        let mut z = self.clone();
        z.fill(Self::Scalar::zero());
        z
    }

    /// Sets every element to `v`.
    fn fill(&mut self, v: Self::Scalar) {
        for i in 0..self.num_leaves() {
            self.leaf_mut(i).iter_mut().for_each(|x| *x = v);
        }
    }

    /// Applies `f` to every element in place.
    fn map_inplace(&mut self, mut f: impl FnMut(Self::Scalar) -> Self::Scalar) {
        for i in 0..self.num_leaves() {
            self.leaf_mut(i).iter_mut().for_each(|x| *x = f(*x));
        }
    }

    /// A new tree with `f` applied to every element.
    fn map(&self, f: impl FnMut(Self::Scalar) -> Self::Scalar) -> Self {
        let mut out = self.clone();
        out.map_inplace(f);
        out
    }

    /// A new tree with `f(self_i, other_i)` for every element pair.
    fn zip_map(
        &self,
        other: &Self,
        mut f: impl FnMut(Self::Scalar, Self::Scalar) -> Self::Scalar,
    ) -> Self {
        let mut out = self.clone();
        out.zip_leaves_mut(other, |a, b| {
            a.iter_mut().zip(b).for_each(|(x, &y)| *x = f(*x, y))
        });
        out
    }

    /// `self += alpha * x`.
    fn axpy(&mut self, alpha: Self::Scalar, x: &Self) {
        self.zip_leaves_mut(x, |a, b| {
            a.iter_mut().zip(b).for_each(|(p, &q)| *p += alpha * q)
        });
    }

    /// `self *= alpha`.
    fn scale(&mut self, alpha: Self::Scalar) {
        self.map_inplace(|x| x * alpha);
    }

    /// Sum over all elements of `self_i * other_i`.
    fn dot(&self, other: &Self) -> Self::Scalar {
        assert_same_structure(self, other);
        let mut acc = Self::Scalar::zero();
        for i in 0..self.num_leaves() {
            for (a, b) in self.leaf(i).iter().zip(other.leaf(i)) {
                acc += *a * *b;
            }
        }
        acc
    }

    /// Euclidean norm over all elements.
    fn norm(&self) -> Self::Scalar {
        self.dot(self).sqrt()
    }

    /// Every element in leaf order, in one contiguous vector.
    fn flatten(&self) -> Vec<Self::Scalar> {
        let mut v = Vec::with_capacity(self.num_elements());
        self.for_each_leaf(|l| v.extend_from_slice(l));
        v
    }

    /// Overwrites every element from `flat` (leaf order), which must hold exactly
    /// [`Params::num_elements`] values.
    fn unflatten_from(&mut self, flat: &[Self::Scalar]) -> Result<()> {
        let n = self.num_elements();
        if flat.len() != n {
            return Err(Error::ShapeMismatch {
                what: "Params::unflatten_from".into(),
                expected: vec![n],
                got: vec![flat.len()],
            });
        }
        let mut off = 0;
        for i in 0..self.num_leaves() {
            let l = self.leaf_mut(i);
            let len = l.len();
            l.copy_from_slice(&flat[off..off + len]);
            off += len;
        }
        Ok(())
    }

    /// A copy of `self` (used as the structure template) with elements taken from `flat`.
    fn with_flat(&self, flat: &[Self::Scalar]) -> Result<Self> {
        let mut out = self.clone();
        out.unflatten_from(flat)?;
        Ok(out)
    }

    /// `Ok` when `other` has the same leaves with the same shapes.
    fn check_same_shape(&self, other: &Self) -> Result<()> {
        if self.num_leaves() != other.num_leaves() {
            return Err(Error::ShapeMismatch {
                what: "number of leaves".into(),
                expected: vec![self.num_leaves()],
                got: vec![other.num_leaves()],
            });
        }
        for i in 0..self.num_leaves() {
            let (a, b) = (self.leaf_shape(i), other.leaf_shape(i));
            if a != b {
                let mut name = String::new();
                self.write_leaf_name(i, &mut name);
                return Err(Error::ShapeMismatch {
                    what: format!("leaf `{name}`"),
                    expected: a,
                    got: b,
                });
            }
        }
        Ok(())
    }

    /// True when every element is finite (no NaN or infinity in any lane).
    fn all_finite(&self) -> bool {
        (0..self.num_leaves()).all(|i| self.leaf(i).iter().all(|x| x.is_finite()))
    }
}

fn assert_same_structure<P: Params>(a: &P, b: &P) {
    if let Err(e) = a.check_same_shape(b) {
        panic!("Params trees of different structure: {e}");
    }
}

macro_rules! scalar_leaf {
    ($t:ty) => {
        impl Params for $t {
            type Scalar = $t;
            fn num_leaves(&self) -> usize {
                1
            }
            fn leaf(&self, _i: usize) -> &[$t] {
                std::slice::from_ref(self)
            }
            fn leaf_mut(&mut self, _i: usize) -> &mut [$t] {
                std::slice::from_mut(self)
            }
            fn write_leaf_name(&self, _i: usize, _out: &mut String) {}
            fn leaf_shape(&self, _i: usize) -> Vec<usize> {
                Vec::new()
            }
        }
    };
}
scalar_leaf!(f32);
scalar_leaf!(f64);

impl<S: Real> Params for Vec<S> {
    type Scalar = S;
    fn num_leaves(&self) -> usize {
        1
    }
    fn leaf(&self, _i: usize) -> &[S] {
        self
    }
    fn leaf_mut(&mut self, _i: usize) -> &mut [S] {
        self
    }
    fn write_leaf_name(&self, _i: usize, _out: &mut String) {}
    fn leaf_shape(&self, _i: usize) -> Vec<usize> {
        vec![self.len()]
    }
}

impl<S: Real, const N: usize> Params for [S; N] {
    type Scalar = S;
    fn num_leaves(&self) -> usize {
        1
    }
    fn leaf(&self, _i: usize) -> &[S] {
        self
    }
    fn leaf_mut(&mut self, _i: usize) -> &mut [S] {
        self
    }
    fn write_leaf_name(&self, _i: usize, _out: &mut String) {}
    fn leaf_shape(&self, _i: usize) -> Vec<usize> {
        vec![N]
    }
}

/// Any nalgebra matrix with contiguous storage (`DMatrix`, `DVector`, `RowDVector`,
/// `SMatrix`, `SVector`, ...) is one leaf, in nalgebra's column-major order.
impl<S, R, C, St> Params for Matrix<S, R, C, St>
where
    S: Real + Scalar,
    R: Dim,
    C: Dim,
    St: RawStorageMut<S, R, C> + nalgebra::IsContiguous + Clone + Send + Sync + std::fmt::Debug + 'static,
    Matrix<S, R, C, St>: Clone,
{
    type Scalar = S;
    fn num_leaves(&self) -> usize {
        1
    }
    fn leaf(&self, _i: usize) -> &[S] {
        self.as_slice()
    }
    fn leaf_mut(&mut self, _i: usize) -> &mut [S] {
        self.as_mut_slice()
    }
    fn write_leaf_name(&self, _i: usize, _out: &mut String) {}
    fn leaf_shape(&self, _i: usize) -> Vec<usize> {
        let (r, c) = self.shape();
        if C::is::<nalgebra::U1>() {
            vec![r]
        } else {
            vec![r, c]
        }
    }
}

#[allow(unused)]
fn _storage_is_raw<S: Scalar, R: Dim, C: Dim, St: RawStorage<S, R, C>>() {}

/// Locates leaf `i` of a struct among its fields: used by `#[derive(Params)]`.
///
/// Given the leaf counts of the fields in order, returns `(field, index within field)`.
#[doc(hidden)]
#[inline]
pub fn locate_leaf(counts: &[usize], mut i: usize) -> (usize, usize) {
    for (f, &n) in counts.iter().enumerate() {
        if i < n {
            return (f, i);
        }
        i -= n;
    }
    panic!("leaf index out of range");
}
