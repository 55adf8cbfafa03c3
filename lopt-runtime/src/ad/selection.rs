//! Elementwise selection and the primitives built on comparisons: masks from comparing
//! values (`a > b`, elementwise, 1 where true and 0 where false), `select(mask, a, b)`
//! (`jnp.where`), `clip(x, lo, hi)` (`jnp.clip`) and `logaddexp(a, b)`
//! (`jnp.logaddexp`); and the check that an `if` condition compares scalars.
//!
//! A mask is a value of the loss's scalar type, a matrix or a scalar, with 1 where the
//! condition holds and 0 elsewhere (per lane for [`Lanes`](crate::lanes::Lanes)); any
//! non-zero element counts as true, so data masks of 0 and 1 work as they are. Masks are
//! never differentiated (the derivative of a comparison is 0 wherever it exists).

use nalgebra::allocator::Allocator;
use nalgebra::{DefaultAllocator, Dim, OMatrix};

use super::op;
use super::pointwise::{Pointwise, Pointwise2};
use super::shape::shape_panic;
use crate::scalar::{Mask as _, Real};

/// The op of `clip(x, lo, hi)` (`jnp.clip(x, lo, hi)`): `min(max(x, lo), hi)`, with the
/// bounds non-differentiated scalars.
///
/// Its derivative is 1 strictly inside `(lo, hi)`, 0 outside, and ½ at exactly `lo` or
/// `hi`: what JAX computes (`jax.grad(lambda x: jnp.clip(x, -1., 2.))(-1.)` is 0.5, from
/// `jnp.maximum`'s and `jnp.minimum`'s balanced ties; checked with JAX 0.10.2). NaN stays
/// NaN.
#[derive(Debug, Clone, Copy)]
pub struct Clip<S>(pub S, pub S);

impl<S> Clip<S> {
    /// The op with bounds `lo` and `hi`.
    pub fn new(lo: S, hi: S) -> Self {
        Clip(lo, hi)
    }
}

impl<S: Real> Pointwise<S> for Clip<S> {
    #[inline(always)]
    fn f(&self, x: S) -> S {
        let lo = <op::Max as Pointwise2<S>>::f(x, self.0);
        <op::Min as Pointwise2<S>>::f(lo, self.1)
    }
    #[inline(always)]
    fn d(&self, x: S, _y: S, t: S) -> S {
        let (lo, hi) = (self.0, self.1);
        let inside = x.gt(lo).and(x.lt(hi));
        let at_bound = x.ge(lo).and(x.le(hi));
        S::select(inside, t, S::select(at_bound, S::c(0.5) * t, S::zero()))
    }
}

impl<S: Real> super::Unary<Clip<S>> for S {
    type Out = S;
    #[inline]
    fn eval(&self, op: &Clip<S>) -> S {
        op.f(*self)
    }
    #[inline]
    fn jvp(&self, op: &Clip<S>, out: &S, dx: &S) -> S {
        op.d(*self, *out, *dx)
    }
    #[inline]
    fn vjp(&self, op: &Clip<S>, out: &S, g: S) -> S {
        op.d(*self, *out, g)
    }
}

impl<S: Real, R: Dim, C: Dim> super::Unary<Clip<S>> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = Self;
    #[inline]
    fn eval(&self, op: &Clip<S>) -> Self {
        super::lift::eval(self, op)
    }
    #[inline]
    fn jvp(&self, op: &Clip<S>, out: &Self, dx: &Self) -> Self {
        super::lift::jvp(self, op, out, dx)
    }
    #[inline]
    fn vjp(&self, op: &Clip<S>, out: &Self, g: Self) -> Self {
        super::lift::vjp(self, op, out, g)
    }
}

/// True where a mask element is non-zero.
#[inline(always)]
fn on<S: Real>(m: S) -> S::Mask {
    m.gt(S::zero()).or(m.lt(S::zero()))
}

/// `select(mask, a, b)` (`jnp.where(mask, a, b)`): per element, `a` where the mask is
/// non-zero and `b` elsewhere. The tangent is the selection of the tangents, and the
/// cotangent of each side is the output's where that side was chosen and 0 elsewhere (a
/// NaN or an infinity on the side not chosen does not reach the gradient).
///
/// Implemented on the mask: a scalar mask with scalars, a matrix mask with two matrices
/// of its shape or a matrix and a scalar in either order (the scalar is broadcast).
pub trait Where<A, B> {
    /// The output type.
    type Out;
    /// The value.
    fn eval(&self, a: &A, b: &B) -> Self::Out;
    /// The tangent given the operands' tangents (`None` = constant).
    fn jvp(&self, a: &A, b: &B, da: Option<&A>, db: Option<&B>) -> Self::Out;
    /// The cotangents of the operands asked for.
    fn vjp(&self, a: &A, b: &B, g: Self::Out, need_a: bool, need_b: bool)
        -> (Option<A>, Option<B>);
}

impl<S: Real> Where<S, S> for S {
    type Out = S;
    #[inline]
    fn eval(&self, a: &S, b: &S) -> S {
        S::select(on(*self), *a, *b)
    }
    #[inline]
    fn jvp(&self, _a: &S, _b: &S, da: Option<&S>, db: Option<&S>) -> S {
        let z = S::zero();
        S::select(
            on(*self),
            da.copied().unwrap_or(z),
            db.copied().unwrap_or(z),
        )
    }
    #[inline]
    fn vjp(&self, _a: &S, _b: &S, g: S, need_a: bool, need_b: bool) -> (Option<S>, Option<S>) {
        let (m, z) = (on(*self), S::zero());
        (
            need_a.then(|| S::select(m, g, z)),
            need_b.then(|| S::select(m, z, g)),
        )
    }
}

#[track_caller]
fn check_mask<S: Real, R: Dim, C: Dim>(m: &OMatrix<S, R, C>, x: &OMatrix<S, R, C>)
where
    DefaultAllocator: Allocator<R, C>,
{
    if m.shape() != x.shape() {
        shape_panic(
            "select(mask, a, b)",
            m.shape(),
            x.shape(),
            "the mask and the values must have equal shapes",
        );
    }
}

/// `f(mask_i, a_i, b_i)` for every element (`a` and `b` read through closures, so a
/// scalar side is broadcast).
#[inline]
fn per_element<S: Real, R: Dim, C: Dim>(
    m: &OMatrix<S, R, C>,
    a: impl Fn(usize) -> S,
    b: impl Fn(usize) -> S,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    let mut out = m.clone();
    for (i, o) in out.as_mut_slice().iter_mut().enumerate() {
        *o = S::select(on(*o), a(i), b(i));
    }
    out
}

/// The part of `g` where the mask is on (`keep = true`) or off, the rest 0, in `g`'s
/// buffer.
#[inline]
fn part<S: Real, R: Dim, C: Dim>(
    m: &OMatrix<S, R, C>,
    mut g: OMatrix<S, R, C>,
    keep: bool,
) -> OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    let z = S::zero();
    for (x, &mi) in g.as_mut_slice().iter_mut().zip(m.as_slice()) {
        *x = if keep {
            S::select(on(mi), *x, z)
        } else {
            S::select(on(mi), z, *x)
        };
    }
    g
}

/// The sum of the part of `g` where the mask is on (`keep`) or off: the cotangent of a
/// broadcast scalar side.
#[inline]
fn part_sum<S: Real, R: Dim, C: Dim>(m: &OMatrix<S, R, C>, g: &OMatrix<S, R, C>, keep: bool) -> S
where
    DefaultAllocator: Allocator<R, C>,
{
    let z = S::zero();
    let s = m.as_slice();
    let v: Vec<S> = g
        .as_slice()
        .iter()
        .zip(s)
        .map(|(&x, &mi)| {
            if keep {
                S::select(on(mi), x, z)
            } else {
                S::select(on(mi), z, x)
            }
        })
        .collect();
    super::reduce::sum(&v)
}

impl<S: Real, R: Dim, C: Dim> Where<OMatrix<S, R, C>, OMatrix<S, R, C>> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = OMatrix<S, R, C>;
    #[track_caller]
    fn eval(&self, a: &Self, b: &Self) -> Self {
        check_mask(self, a);
        check_mask(self, b);
        let (a, b) = (a.as_slice(), b.as_slice());
        per_element(self, |i| a[i], |i| b[i])
    }
    fn jvp(&self, _a: &Self, _b: &Self, da: Option<&Self>, db: Option<&Self>) -> Self {
        let z = S::zero();
        let (da, db) = (da.map(|d| d.as_slice()), db.map(|d| d.as_slice()));
        per_element(self, |i| da.map_or(z, |d| d[i]), |i| db.map_or(z, |d| d[i]))
    }
    fn vjp(
        &self,
        _a: &Self,
        _b: &Self,
        g: Self,
        need_a: bool,
        need_b: bool,
    ) -> (Option<Self>, Option<Self>) {
        match (need_a, need_b) {
            (true, true) => {
                let gb = part(self, g.clone(), false);
                (Some(part(self, g, true)), Some(gb))
            }
            (true, false) => (Some(part(self, g, true)), None),
            (false, true) => (None, Some(part(self, g, false))),
            (false, false) => (None, None),
        }
    }
}

impl<S: Real, R: Dim, C: Dim> Where<OMatrix<S, R, C>, S> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = OMatrix<S, R, C>;
    #[track_caller]
    fn eval(&self, a: &Self, b: &S) -> Self {
        check_mask(self, a);
        let a = a.as_slice();
        per_element(self, |i| a[i], |_| *b)
    }
    fn jvp(&self, _a: &Self, _b: &S, da: Option<&Self>, db: Option<&S>) -> Self {
        let z = S::zero();
        let (da, db) = (da.map(|d| d.as_slice()), db.copied().unwrap_or(z));
        per_element(self, |i| da.map_or(z, |d| d[i]), |_| db)
    }
    fn vjp(
        &self,
        _a: &Self,
        _b: &S,
        g: Self,
        need_a: bool,
        need_b: bool,
    ) -> (Option<Self>, Option<S>) {
        let gb = need_b.then(|| part_sum(self, &g, false));
        (need_a.then(|| part(self, g, true)), gb)
    }
}

impl<S: Real, R: Dim, C: Dim> Where<S, OMatrix<S, R, C>> for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Out = OMatrix<S, R, C>;
    #[track_caller]
    fn eval(&self, a: &S, b: &Self) -> Self {
        check_mask(self, b);
        let b = b.as_slice();
        per_element(self, |_| *a, |i| b[i])
    }
    fn jvp(&self, _a: &S, _b: &Self, da: Option<&S>, db: Option<&Self>) -> Self {
        let z = S::zero();
        let (da, db) = (da.copied().unwrap_or(z), db.map(|d| d.as_slice()));
        per_element(self, |_| da, |i| db.map_or(z, |d| d[i]))
    }
    fn vjp(
        &self,
        _a: &S,
        _b: &Self,
        g: Self,
        need_a: bool,
        need_b: bool,
    ) -> (Option<S>, Option<Self>) {
        let ga = need_a.then(|| part_sum(self, &g, true));
        (ga, need_b.then(|| part(self, g, false)))
    }
}

/// One side of an `if` condition's comparison, as [`IfCompare`] sees it: a scalar
/// ([`ScalarSide`]) or a matrix or vector ([`NotAScalar`]).
pub trait IfSide {
    /// [`ScalarSide`] or [`NotAScalar`].
    type Side;
    /// The side.
    fn side(&self) -> Self::Side;
}

/// A scalar side of an `if` condition.
#[derive(Debug, Clone, Copy)]
pub struct ScalarSide<S>(pub S);

/// A matrix or vector side of an `if` condition (an error, with [`IfCompare`]'s message).
#[derive(Debug, Clone, Copy)]
pub struct NotAScalar;

impl<S: Real> IfSide for S {
    type Side = ScalarSide<S>;
    #[inline(always)]
    fn side(&self) -> ScalarSide<S> {
        ScalarSide(*self)
    }
}

impl<S: Real, R: Dim, C: Dim> IfSide for OMatrix<S, R, C>
where
    DefaultAllocator: Allocator<R, C>,
{
    type Side = NotAScalar;
    fn side(&self) -> NotAScalar {
        NotAScalar
    }
}

/// What an `if` condition compares: two scalars (`f32`, `f64`, lanes). A `#[task]`
/// condition goes through this trait, so that comparing matrices or vectors is one error
/// at the condition that says what to write instead (the sides are reduced to short
/// types first, so the three generated functions report the same error, once).
#[diagnostic::on_unimplemented(
    message = "an `if` condition compares two scalars, not a matrix or vector",
    label = "a condition on a matrix or vector",
    note = "to choose element by element, write `select(mask, a, b)` with a mask such as \
            `select(x > 0.0, x, 0.1 * x)` (jnp.where): `if`/`else` takes one branch for \
            the whole value"
)]
pub trait IfCompare {
    /// The lane mask of a comparison.
    type Mask: Copy;
    /// `a < b`, `a <= b`, `a > b` or `a >= b` (`k` = 0, 1, 2, 3), lane-wise.
    fn compare(self, k: u8) -> Self::Mask;
}

#[diagnostic::do_not_recommend]
impl<S: Real> IfCompare for (ScalarSide<S>, ScalarSide<S>) {
    type Mask = S::Mask;
    #[inline(always)]
    fn compare(self, k: u8) -> S::Mask {
        let (a, b) = (self.0 .0, self.1 .0);
        match k {
            0 => a.lt(b),
            1 => a.le(b),
            2 => a.gt(b),
            _ => a.ge(b),
        }
    }
}

/// A second implementation, for no value that exists: with one implementation only,
/// rustc would infer a matrix side to be a [`ScalarSide`] and report that mismatch
/// before the message of [`IfCompare`].
#[derive(Debug, Clone, Copy)]
pub enum NoSide {}

#[diagnostic::do_not_recommend]
impl IfCompare for (NoSide, NoSide) {
    type Mask = bool;
    fn compare(self, _k: u8) -> bool {
        match self.0 {}
    }
}

macro_rules! if_compare {
    ($($name:ident => $k:literal $f:literal),*) => {$(
        #[doc = concat!("`a ", $f, " b` of an `if` condition, in generated code.")]
        #[inline(always)]
        pub fn $name<A: IfSide, B: IfSide>(a: &A, b: &B) -> <(A::Side, B::Side) as IfCompare>::Mask
        where
            (A::Side, B::Side): IfCompare,
        {
            (a.side(), b.side()).compare($k)
        }
    )*};
}
if_compare!(if_lt => 0 "<", if_le => 1 "<=", if_gt => 2 ">", if_ge => 3 ">=");
