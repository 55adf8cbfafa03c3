//! Parameter trees: the Rust form of a JAX pytree.
//!
//! A [`Params`] value is a fixed sequence of *leaves*, each a contiguous slice of scalars.
//! Every tree operation (zeros, map, zip, axpy, dot, flatten) is written once here in terms
//! of [`Params::leaf`] / [`Params::leaf_mut`]; `#[derive(Params)]` only has to enumerate the
//! fields of a struct. Optimizers and estimators walk several trees of the same shape side
//! by side by leaf index, with no allocation.

use nalgebra::{
    ArrayStorage, Const, Dim, Dyn, Matrix, RawStorage, RawStorageMut, Scalar, VecStorage,
};
use serde::{Deserialize, Serialize};

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
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a parameter tree (`lopt::Params`)",
    label = "not a Params leaf or tree",
    note = "Params leaves are f32/f64 scalars, Vec<S>, [S; N] and nalgebra matrices; \
            structs of them #[derive(Params)]; mark other fields #[params(skip)]"
)]
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

    /// Whether `other` has the same leaves with the same shapes ([`Params::leaf_shape`]).
    /// The bare leaves answer without allocating, which grouping many instances needs.
    fn same_shape(&self, other: &Self) -> bool {
        self.num_leaves() == other.num_leaves()
            && (0..self.num_leaves()).all(|i| self.leaf_shape(i) == other.leaf_shape(i))
    }

    /// Whether `other` can share a SIMD lane group with `self`: the same leaves of the
    /// same shapes and, for `#[derive(Params)]` structs, equal `#[params(skip)]` fields
    /// (packing into lanes copies leaves only, so lanes cannot differ in those). Defaults
    /// to [`same_shape`](Params::same_shape) for types without skipped fields.
    fn same_structure(&self, other: &Self) -> bool {
        self.same_shape(other)
    }

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

    /// A tree like `self` for code that is about to overwrite most of its leaves (a
    /// gradient assembled from per-field adjoints): dynamically sized leaves (`DMatrix`,
    /// `DVector`, `RowDVector`, `Vec`) are left *empty*, allocating nothing; other leaves
    /// are zeros; fields marked `#[params(skip)]` are cloned. Not a valid tree of
    /// `self`'s shape until [`Params::fill_hollow`] has run.
    ///
    /// The default is [`Params::zeros_like`] (nothing hollow); `#[derive(Params)]` asks
    /// each field.
    ///
    /// ```
    /// use lopt_runtime::params::Params;
    /// use nalgebra::{DMatrix, DVector};
    ///
    /// let (w, b) = (DMatrix::<f32>::from_element(2, 3, 1.0), DVector::<f32>::from_element(4, 1.0));
    /// let (mut gw, mut gb) = (w.hollow_like(), b.hollow_like());
    /// assert!(gw.is_empty() && gb.is_empty());
    /// gw = DMatrix::from_element(2, 3, 0.5); // overwritten: keeps its value
    /// gw.fill_hollow(&w);
    /// gb.fill_hollow(&b); // never written: zeros of the right shape
    /// assert_eq!(gw, DMatrix::from_element(2, 3, 0.5));
    /// assert_eq!(gb, DVector::zeros(4));
    /// ```
    fn hollow_like(&self) -> Self {
        self.zeros_like()
    }

    /// Replaces every leaf that [`Params::hollow_like`] left empty, and that was not
    /// overwritten since, by zeros shaped like the matching leaf of `like` (the tree the
    /// hollow one was made from). Leaves that hold values are untouched.
    ///
    /// The default does nothing (its `hollow_like` leaves nothing empty).
    fn fill_hollow(&mut self, like: &Self) {
        let _ = like;
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
                    what: if name.is_empty() {
                        format!("leaf {i} of the parameters")
                    } else {
                        format!("leaf `{name}`")
                    },
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

    /// A serializable snapshot of every leaf: names, shapes and values in `f64`.
    ///
    /// Only for plain `f32`/`f64` scalars: a packet of several lanes is an
    /// [`Error::InvalidArgument`] (unpack it per lane first) rather than a silent loss of
    /// all lanes but one.
    ///
    /// ```
    /// use lopt_runtime::params::Params;
    /// use nalgebra::DVector;
    ///
    /// let p = DVector::<f32>::from_vec(vec![1.0, 2.0]);
    /// let rec = p.to_record().unwrap();
    /// assert_eq!(rec.shapes, vec![vec![2]]);
    /// let mut q = DVector::<f32>::zeros(2);
    /// q.from_record(&rec).unwrap();
    /// assert_eq!(p, q);
    /// ```
    fn to_record(&self) -> Result<ParamsRecord> {
        check_plain_scalar::<Self::Scalar>("Params::to_record")?;
        let n = self.num_leaves();
        Ok(ParamsRecord {
            names: self.leaf_names(),
            shapes: (0..n).map(|i| self.leaf_shape(i)).collect(),
            values: (0..n)
                .map(|i| self.leaf(i).iter().map(|x| x.lane(0)).collect())
                .collect(),
        })
    }

    /// Overwrites every element from `record`, which must have exactly the leaf names
    /// and shapes of `self` (in order) and as many values per leaf as its shape holds.
    ///
    /// Everything is checked before anything is written, so on `Err` `self` is unchanged.
    /// Errors: [`Error::Data`] for a record whose own lists disagree in length,
    /// [`Error::ShapeMismatch`] for a different number of leaves, a different leaf
    /// shape or a wrong number of values, [`Error::LeafNameMismatch`] for a different
    /// leaf name, [`Error::InvalidArgument`] for a packet scalar (see
    /// [`Params::to_record`]).
    // In place (like `unflatten_from`) so the structure comes from `self`; the name pairs
    // with `to_record`, hence the allow.
    #[allow(clippy::wrong_self_convention)]
    fn from_record(&mut self, record: &ParamsRecord) -> Result<()> {
        check_plain_scalar::<Self::Scalar>("Params::from_record")?;
        record.check_consistent()?;
        let n = self.num_leaves();
        if record.names.len() != n {
            return Err(Error::ShapeMismatch {
                what: "number of leaves in ParamsRecord".into(),
                expected: vec![n],
                got: vec![record.names.len()],
            });
        }
        let mut name = String::new();
        for i in 0..n {
            name.clear();
            self.write_leaf_name(i, &mut name);
            if record.names[i] != name {
                return Err(Error::LeafNameMismatch {
                    index: i,
                    expected: name,
                    got: record.names[i].clone(),
                });
            }
            let shape = self.leaf_shape(i);
            if record.shapes[i] != shape {
                return Err(Error::ShapeMismatch {
                    what: format!("leaf `{name}` in ParamsRecord"),
                    expected: shape,
                    got: record.shapes[i].clone(),
                });
            }
            let len = self.leaf(i).len();
            if record.values[i].len() != len {
                return Err(Error::ShapeMismatch {
                    what: format!("number of values of leaf `{name}` in ParamsRecord"),
                    expected: vec![len],
                    got: vec![record.values[i].len()],
                });
            }
        }
        for (i, values) in record.values.iter().enumerate() {
            for (x, &v) in self.leaf_mut(i).iter_mut().zip(values) {
                *x = Self::Scalar::from_f64(v);
            }
        }
        Ok(())
    }
}

fn check_plain_scalar<S: Real>(what: &str) -> Result<()> {
    if S::LANES == 1 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} handles plain f32/f64 params only, not packets of {} lanes",
            S::LANES
        )))
    }
}

/// A checkpoint of a [`Params`] tree: one entry per leaf, in leaf order.
///
/// Values are stored as `f64` whatever the scalar type, so an `f32` tree round-trips
/// exactly and can be loaded into its `f64` twin. Serializes with serde (e.g. to JSON);
/// note that JSON has no NaN or infinity, so check [`Params::all_finite`] before saving
/// there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamsRecord {
    /// Leaf names ([`Params::leaf_names`]).
    pub names: Vec<String>,
    /// Leaf shapes ([`Params::leaf_shape`]).
    pub shapes: Vec<Vec<usize>>,
    /// Leaf values, each in the leaf's own (column-major) order.
    pub values: Vec<Vec<f64>>,
}

impl ParamsRecord {
    /// `Ok` when the record has as many shapes and value lists as names.
    pub fn check_consistent(&self) -> Result<()> {
        let (n, s, v) = (self.names.len(), self.shapes.len(), self.values.len());
        if n == s && n == v {
            Ok(())
        } else {
            Err(Error::Data(format!(
                "ParamsRecord with {n} names, {s} shapes and {v} value lists"
            )))
        }
    }
}

fn assert_same_structure<P: Params>(a: &P, b: &P) {
    if let Err(e) = a.check_same_shape(b) {
        panic!("Params trees of different structure: {e}");
    }
}

/// Every scalar (`f32`, `f64`, and later SIMD packets) is a tree of one leaf of one
/// element. A blanket impl rather than one per float so that [`Rebind::With`] can be `T`
/// itself for any `T: Real`.
impl<S: Real> Params for S {
    type Scalar = S;
    fn num_leaves(&self) -> usize {
        1
    }
    fn leaf(&self, _i: usize) -> &[S] {
        std::slice::from_ref(self)
    }
    fn leaf_mut(&mut self, _i: usize) -> &mut [S] {
        std::slice::from_mut(self)
    }
    fn write_leaf_name(&self, _i: usize, _out: &mut String) {}
    fn leaf_shape(&self, _i: usize) -> Vec<usize> {
        Vec::new()
    }
    fn same_shape(&self, _other: &Self) -> bool {
        true
    }
}

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
    fn same_shape(&self, other: &Self) -> bool {
        self.len() == other.len()
    }
    fn hollow_like(&self) -> Self {
        Vec::new()
    }
    fn fill_hollow(&mut self, like: &Self) {
        if self.is_empty() && !like.is_empty() {
            *self = vec![S::zero(); like.len()];
        }
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
    fn same_shape(&self, _other: &Self) -> bool {
        true
    }
}

/// Any nalgebra matrix with contiguous storage (`DMatrix`, `DVector`, `RowDVector`,
/// `SMatrix`, `SVector`, ...) is one leaf, in nalgebra's column-major order.
impl<S, R, C, St> Params for Matrix<S, R, C, St>
where
    S: Real + Scalar,
    R: Dim,
    C: Dim,
    St: RawStorageMut<S, R, C>
        + nalgebra::IsContiguous
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
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
    fn same_shape(&self, other: &Self) -> bool {
        self.shape() == other.shape()
    }
    /// Empty (no allocation) for `DMatrix`, `DVector` and `RowDVector`; zeros otherwise.
    fn hollow_like(&self) -> Self {
        hollow_matrix::<Self, S>(self).unwrap_or_else(|| self.zeros_like())
    }
    fn fill_hollow(&mut self, like: &Self) {
        if self.is_empty() && self.shape() != like.shape() {
            *self = like.zeros_like();
        }
    }
}

/// An empty `m` (`0 x 0`, `0`-long), when `M` is one of the dynamically sized nalgebra
/// types whose storage can be built without knowing it: `DMatrix`, `DVector`,
/// `RowDVector` (found by type id, which the compiler resolves statically).
fn hollow_matrix<M: 'static, S: Real + Scalar>(_m: &M) -> Option<M> {
    use std::any::Any;
    let mut out: Option<M> = None;
    let slot: &mut dyn Any = &mut out;
    if let Some(o) = slot.downcast_mut::<Option<nalgebra::DMatrix<S>>>() {
        *o = Some(nalgebra::DMatrix::zeros(0, 0));
    } else if let Some(o) = slot.downcast_mut::<Option<nalgebra::DVector<S>>>() {
        *o = Some(nalgebra::DVector::zeros(0));
    } else if let Some(o) = slot.downcast_mut::<Option<nalgebra::RowDVector<S>>>() {
        *o = Some(nalgebra::RowDVector::zeros(0));
    }
    out
}

#[allow(unused)]
fn _storage_is_raw<S: Scalar, R: Dim, C: Dim, St: RawStorage<S, R, C>>() {}

/// Params whose scalar type can be swapped: the same tree in `f32`, `f64` or another
/// [`Real`] (e.g. to check an `f32` gradient against finite differences in `f64`).
///
/// Implemented for every scalar, `Vec<S>`, `[S; N]`, the owned nalgebra matrices
/// (`DMatrix`, `DVector`, `RowDVector`, `SMatrix`, `SVector` and any owned matrix with
/// at least one dynamic dimension), and by `#[derive(Params)]` for a struct whose one type
/// parameter is bounded by `Real` only.
///
/// [`Rebind::cast`] converts each element through `f64` from **lane 0** of the source
/// scalar, so casting a packet of several lanes keeps only its first lane (packets will
/// get a proper pack/unpack of lanes).
///
/// ```
/// use lopt_runtime::params::{Params, Rebind};
/// use nalgebra::DMatrix;
///
/// let p = DMatrix::<f32>::from_fn(2, 2, |i, j| (i + 2 * j) as f32 / 3.0);
/// // On a bare nalgebra matrix, `p.cast()` is nalgebra's own inherent `cast`: name ours.
/// let q: DMatrix<f64> = Rebind::cast::<f64>(&p);
/// assert_eq!(q[(1, 1)], (3.0f32 / 3.0) as f64);
/// assert_eq!(Rebind::cast::<f32>(&q), p); // f32 -> f64 -> f32 is exact
/// ```
pub trait Rebind: Params {
    /// The same tree with scalar `T`.
    type With<T: Real>: Params<Scalar = T>;
    /// The same tree with every element converted to `T` (from lane 0, see above).
    fn cast<T: Real>(&self) -> Self::With<T>;
}

#[inline]
fn cast_scalar<S: Real, T: Real>(x: S) -> T {
    T::from_f64(x.lane(0))
}

impl<S: Real> Rebind for S {
    type With<T: Real> = T;
    fn cast<T: Real>(&self) -> T {
        cast_scalar(*self)
    }
}

impl<S: Real> Rebind for Vec<S> {
    type With<T: Real> = Vec<T>;
    fn cast<T: Real>(&self) -> Vec<T> {
        self.iter().map(|&x| cast_scalar(x)).collect()
    }
}

impl<S: Real, const N: usize> Rebind for [S; N] {
    type With<T: Real> = [T; N];
    fn cast<T: Real>(&self) -> [T; N] {
        std::array::from_fn(|i| cast_scalar(self[i]))
    }
}

// One impl per owned storage type rather than one over `OMatrix<S, R, C>` with
// `DefaultAllocator: Allocator<R, C>` bounds: the allocator's buffer is not known to be
// `Send + Sync + 'static` for every `T`, which `With<T>: Params` needs.

/// Dynamic number of rows: `DMatrix`, `DVector`, `OMatrix<S, Dyn, Const<C>>`.
impl<S: Real, C: Dim> Rebind for Matrix<S, Dyn, C, VecStorage<S, Dyn, C>> {
    type With<T: Real> = Matrix<T, Dyn, C, VecStorage<T, Dyn, C>>;
    fn cast<T: Real>(&self) -> Self::With<T> {
        let (r, c) = self.shape_generic();
        Matrix::from_iterator_generic(r, c, self.iter().map(|&x| cast_scalar(x)))
    }
}

/// Static rows, dynamic columns: `RowDVector`, `OMatrix<S, Const<R>, Dyn>`.
impl<S: Real, const R: usize> Rebind for Matrix<S, Const<R>, Dyn, VecStorage<S, Const<R>, Dyn>> {
    type With<T: Real> = Matrix<T, Const<R>, Dyn, VecStorage<T, Const<R>, Dyn>>;
    fn cast<T: Real>(&self) -> Self::With<T> {
        let (r, c) = self.shape_generic();
        Matrix::from_iterator_generic(r, c, self.iter().map(|&x| cast_scalar(x)))
    }
}

/// Fully static: `SMatrix`, `SVector`, `RowSVector`.
impl<S: Real, const R: usize, const C: usize> Rebind
    for Matrix<S, Const<R>, Const<C>, ArrayStorage<S, R, C>>
{
    type With<T: Real> = Matrix<T, Const<R>, Const<C>, ArrayStorage<T, R, C>>;
    fn cast<T: Real>(&self) -> Self::With<T> {
        let (r, c) = self.shape_generic();
        Matrix::from_iterator_generic(r, c, self.iter().map(|&x| cast_scalar(x)))
    }
}

/// Writes the name of leaf `i` of field `field` (holding `p`): `field`, then `.` and the
/// field's own leaf name when it has one. Used by `#[derive(Params)]`.
#[doc(hidden)]
pub fn write_field_leaf_name<P: Params>(out: &mut String, field: &str, p: &P, i: usize) {
    out.push_str(field);
    let mark = out.len();
    out.push('.');
    p.write_leaf_name(i, out);
    if out.len() == mark + 1 {
        out.truncate(mark);
    }
}

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
