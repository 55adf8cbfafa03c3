// TEMPORARY scalar rules for macro development; replaced by the rules branch.
use super::op;
use super::{Binary, Data, Unary};
use crate::scalar::Real;
use std::borrow::Cow;

impl<S: Real> Binary<op::Add, S> for S {
    type Out = S;
    fn eval(&self, r: &S) -> S {
        *self + *r
    }
    fn jvp(&self, _r: &S, _o: &S, da: Option<&S>, db: Option<&S>) -> S {
        da.copied().unwrap_or(S::zero()) + db.copied().unwrap_or(S::zero())
    }
    fn vjp(&self, _r: &S, _o: &S, g: &S, na: bool, nb: bool) -> (Option<S>, Option<S>) {
        (na.then_some(*g), nb.then_some(*g))
    }
}
impl<S: Real> Binary<op::Sub, S> for S {
    type Out = S;
    fn eval(&self, r: &S) -> S {
        *self - *r
    }
    fn jvp(&self, _r: &S, _o: &S, da: Option<&S>, db: Option<&S>) -> S {
        da.copied().unwrap_or(S::zero()) - db.copied().unwrap_or(S::zero())
    }
    fn vjp(&self, _r: &S, _o: &S, g: &S, na: bool, nb: bool) -> (Option<S>, Option<S>) {
        (na.then_some(*g), nb.then_some(-*g))
    }
}
impl<S: Real> Binary<op::Mul, S> for S {
    type Out = S;
    fn eval(&self, r: &S) -> S {
        *self * *r
    }
    fn jvp(&self, r: &S, _o: &S, da: Option<&S>, db: Option<&S>) -> S {
        da.map(|d| *d * *r).unwrap_or(S::zero()) + db.map(|d| *self * *d).unwrap_or(S::zero())
    }
    fn vjp(&self, r: &S, _o: &S, g: &S, na: bool, nb: bool) -> (Option<S>, Option<S>) {
        (na.then(|| *g * *r), nb.then(|| *g * *self))
    }
}
impl<S: Real> Binary<op::Div, S> for S {
    type Out = S;
    fn eval(&self, r: &S) -> S {
        *self / *r
    }
    fn jvp(&self, r: &S, o: &S, da: Option<&S>, db: Option<&S>) -> S {
        da.map(|d| *d / *r).unwrap_or(S::zero()) - db.map(|d| *o * *d / *r).unwrap_or(S::zero())
    }
    fn vjp(&self, r: &S, o: &S, g: &S, na: bool, nb: bool) -> (Option<S>, Option<S>) {
        (na.then(|| *g / *r), nb.then(|| -*g * *o / *r))
    }
}
impl<S: Real> Unary<op::Sin> for S {
    type Out = S;
    fn eval(&self, _op: &op::Sin) -> S {
        self.sin()
    }
    fn jvp(&self, _op: &op::Sin, _o: &S, dx: &S) -> S {
        self.cos() * *dx
    }
    fn vjp(&self, _op: &op::Sin, _o: &S, g: &S) -> S {
        self.cos() * *g
    }
}
impl<S: Real> Unary<op::Exp> for S {
    type Out = S;
    fn eval(&self, _op: &op::Exp) -> S {
        self.exp()
    }
    fn jvp(&self, _op: &op::Exp, o: &S, dx: &S) -> S {
        *o * *dx
    }
    fn vjp(&self, _op: &op::Exp, o: &S, g: &S) -> S {
        *o * *g
    }
}
impl<S: Real> Unary<op::Neg> for S {
    type Out = S;
    fn eval(&self, _op: &op::Neg) -> S {
        -*self
    }
    fn jvp(&self, _op: &op::Neg, _o: &S, dx: &S) -> S {
        -*dx
    }
    fn vjp(&self, _op: &op::Neg, _o: &S, g: &S) -> S {
        -*g
    }
}
impl<S: Real> Unary<op::Powi> for S {
    type Out = S;
    fn eval(&self, op: &op::Powi) -> S {
        self.powi(op.0)
    }
    fn jvp(&self, op: &op::Powi, _o: &S, dx: &S) -> S {
        S::from_f64(op.0 as f64) * self.powi(op.0 - 1) * *dx
    }
    fn vjp(&self, op: &op::Powi, _o: &S, g: &S) -> S {
        S::from_f64(op.0 as f64) * self.powi(op.0 - 1) * *g
    }
}
impl<S: Real> Data<S> for f64 {
    type Out = S;
    fn data(&self) -> Cow<'_, S> {
        Cow::Owned(S::from_f64(*self))
    }
}
impl<S: Real> Data<S> for f32 {
    type Out = S;
    fn data(&self) -> Cow<'_, S> {
        Cow::Owned(S::from_f32(*self))
    }
}
