//! Every rule against finite differences (f64), plus shape errors, stability at large
//! logits, the `gemm` fast path against the generic loop and f32 against f64.

use std::borrow::Cow;

use nalgebra::{DMatrix, DVector, RowDVector, SMatrix, SVector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::check::{check_derivatives, CheckOptions, Pair};
use super::matmul::{gemm_generic, product, View};
use super::{op, Binary, Data, Unary};
use crate::params::Params;

type P = dyn Fn(&mut StdRng) -> f64;

/// Uniform in (-2, 2).
fn any(r: &mut StdRng) -> f64 {
    r.gen_range(-2.0..2.0)
}
/// Uniform in (0.3, 2).
fn pos(r: &mut StdRng) -> f64 {
    r.gen_range(0.3..2.0)
}
/// Magnitude in (0.2, 2), either sign: away from the kinks at 0.
fn away(r: &mut StdRng) -> f64 {
    let m = r.gen_range(0.2..2.0);
    if r.gen_bool(0.5) {
        m
    } else {
        -m
    }
}

/// `template` with every element drawn from `dist`.
fn sample<X: Params<Scalar = f64>>(template: X, seed: u64, dist: &P) -> X {
    let mut rng = StdRng::seed_from_u64(seed);
    template.map(|_| dist(&mut rng))
}

/// `a` moved away from `b` by (0.2, 2) in a random direction, elementwise.
fn apart<X: Params<Scalar = f64>>(b: &X, seed: u64) -> X {
    let mut rng = StdRng::seed_from_u64(seed);
    b.map(|v| v + away(&mut rng))
}

fn opts() -> CheckOptions {
    CheckOptions::default()
}

#[track_caller]
fn check<X, Y>(
    what: &str,
    x: &X,
    f: impl Fn(&X) -> Y,
    jvp: impl Fn(&X, &X) -> Y,
    vjp: impl Fn(&X, &Y) -> X,
) where
    X: Params<Scalar = f64>,
    Y: Params<Scalar = f64>,
{
    let o = opts();
    let r = check_derivatives(x, f, jvp, vjp, &o);
    assert!(r.passed(&o), "{what} at {x:?}: {r}");
}

/// All three checks of a unary rule.
#[track_caller]
fn unary<Op, X>(what: &str, op: Op, x: X)
where
    X: Unary<Op> + Params<Scalar = f64>,
    X::Out: Params<Scalar = f64>,
{
    let what = format!("{what} on {}", std::any::type_name::<X>());
    check(
        &what,
        &x,
        |x| x.eval(&op),
        |x, dx| x.jvp(&op, &x.eval(&op), dx),
        |x, g| x.vjp(&op, &x.eval(&op), g),
    );
}

/// All three checks of a binary rule: both operands varying, then each alone (the other
/// constant: `None` tangent, not asked for in the vjp).
#[track_caller]
fn binary<Op, A, B>(what: &str, a: A, b: B)
where
    A: Binary<Op, B> + Params<Scalar = f64>,
    B: Params<Scalar = f64>,
    A::Out: Params<Scalar = f64>,
{
    let what = format!(
        "{what} on {} and {}",
        std::any::type_name::<A>(),
        std::any::type_name::<B>()
    );
    check(
        &format!("{what} (both)"),
        &Pair(a.clone(), b.clone()),
        |p| p.0.eval(&p.1),
        |p, d| p.0.jvp(&p.1, &p.0.eval(&p.1), Some(&d.0), Some(&d.1)),
        |p, g| {
            let (da, db) = p.0.vjp(&p.1, &p.0.eval(&p.1), g, true, true);
            Pair(da.expect("asked for a"), db.expect("asked for b"))
        },
    );
    check(
        &format!("{what} (left only)"),
        &a,
        |a| a.eval(&b),
        |a, d| a.jvp(&b, &a.eval(&b), Some(d), None),
        |a, g| {
            let (da, db) = a.vjp(&b, &a.eval(&b), g, true, false);
            assert!(db.is_none(), "{what}: cotangent of b not asked for");
            da.expect("asked for a")
        },
    );
    check(
        &format!("{what} (right only)"),
        &b,
        |b| a.eval(b),
        |b, d| a.jvp(b, &a.eval(b), None, Some(d)),
        |b, g| {
            let (da, db) = a.vjp(b, &a.eval(b), g, false, true);
            assert!(da.is_none(), "{what}: cotangent of a not asked for");
            db.expect("asked for b")
        },
    );
}

/// Runs `$body` with `$v` bound to a template of each value type (zeros): the scalar
/// (when `scalar` is given), then every matrix and vector kind.
macro_rules! each_value {
    (scalar, $v:ident => $body:expr) => {{
        {
            let $v = 0.0f64;
            $body;
        }
        each_value!($v => $body);
    }};
    ($v:ident => $body:expr) => {{
        {
            let $v = DMatrix::<f64>::zeros(3, 4);
            $body;
        }
        {
            let $v = DVector::<f64>::zeros(4);
            $body;
        }
        {
            let $v = RowDVector::<f64>::zeros(3);
            $body;
        }
        {
            let $v = SMatrix::<f64, 2, 3>::zeros();
            $body;
        }
        {
            let $v = SVector::<f64, 3>::zeros();
            $body;
        }
    }};
}

// ---- unary elementwise ----

macro_rules! pointwise_test {
    ($name:ident, $op:expr, $dist:expr) => {
        #[test]
        fn $name() {
            each_value!(scalar, t => unary(stringify!($name), $op, sample(t, 1, &$dist)));
        }
    };
}
pointwise_test!(neg, op::Neg, any);
pointwise_test!(exp, op::Exp, any);
pointwise_test!(ln, op::Ln, pos);
pointwise_test!(sqrt, op::Sqrt, pos);
pointwise_test!(tanh, op::Tanh, any);
pointwise_test!(sin, op::Sin, any);
pointwise_test!(cos, op::Cos, any);
pointwise_test!(abs, op::Abs, away);
pointwise_test!(square, op::Square, any);
pointwise_test!(powi_3, op::Powi(3), any);
pointwise_test!(powi_neg2, op::Powi(-2), away);
pointwise_test!(powi_0, op::Powi(0), any);
pointwise_test!(relu, op::Relu, away);
pointwise_test!(sigmoid, op::Sigmoid, any);
pointwise_test!(softplus, op::Softplus, any);
pointwise_test!(gelu, op::Gelu, any);

// ---- reductions, indexing, transpose ----

#[test]
fn sum() {
    each_value!(scalar, t => unary("sum", op::Sum, sample(t, 2, &any)));
}

#[test]
fn mean() {
    each_value!(scalar, t => unary("mean", op::Mean, sample(t, 3, &any)));
}

#[test]
fn norm_squared() {
    each_value!(scalar, t => unary("norm_squared", op::NormSquared, sample(t, 4, &any)));
}

#[test]
fn transpose() {
    each_value!(t => unary("transpose", op::Transpose, sample(t, 5, &any)));
}

#[test]
fn index() {
    each_value!(t => {
        let n = t.len();
        for i in [0, n / 2, n - 1] {
            unary("index", op::Index(i), sample(t.clone(), 6, &any));
        }
    });
}

#[test]
fn index2() {
    each_value!(t => {
        let (r, c) = t.shape();
        for (i, j) in [(0, 0), (r - 1, c - 1), (r / 2, c - 1)] {
            unary("index2", op::Index2(i, j), sample(t.clone(), 7, &any));
        }
    });
}

#[test]
fn index_values_are_column_major() {
    let m = DMatrix::from_row_slice(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(Unary::eval(&m, &op::Index(1)), 4.0);
    assert_eq!(Unary::eval(&m, &op::Index2(0, 2)), 3.0);
    assert_eq!(Unary::vjp(&m, &op::Index2(1, 0), &4.0, &2.0)[(1, 0)], 2.0);
}

// ---- softmax family ----

#[test]
fn log_softmax() {
    each_value!(t => unary("log_softmax", op::LogSoftmax, sample(t, 8, &any)));
}

#[test]
fn log_sum_exp() {
    each_value!(t => unary("log_sum_exp", op::LogSumExp, sample(t, 9, &any)));
}

#[test]
fn softmax_cross_entropy() {
    let x = sample(DMatrix::<f64>::zeros(4, 3), 10, &any);
    let labels = [2, 0, 1, 2];
    unary("softmax_cross_entropy", op::SoftmaxCrossEntropy(&labels), x);
}

#[test]
fn log_softmax_is_per_row_of_a_matrix_and_over_a_vector() {
    let m = DMatrix::from_row_slice(2, 2, &[0.0, 1.0, 3.0, 3.0]);
    let y = Unary::eval(&m, &op::LogSoftmax);
    let l = (1.0f64 + 1f64.exp()).ln();
    assert!((y[(0, 0)] + l).abs() < 1e-15 && (y[(0, 1)] - (1.0 - l)).abs() < 1e-15);
    assert!((y[(1, 0)] + 2f64.ln()).abs() < 1e-15);
    let v = DVector::from_vec(vec![0.0, 1.0, 3.0, 3.0]);
    let lse = (1.0 + 1f64.exp() + 2.0 * 3f64.exp()).ln();
    let yv = Unary::eval(&v, &op::LogSoftmax);
    assert!((yv[2] - (3.0 - lse)).abs() < 1e-14);
    assert!((Unary::eval(&v, &op::LogSumExp) - lse).abs() < 1e-14);
}

#[test]
fn softmax_cross_entropy_matches_closed_form() {
    let m = DMatrix::from_row_slice(2, 3, &[1.0, 2.0, 3.0, 0.5, -0.5, 0.0]);
    let labels = [0, 2];
    let l = Unary::eval(&m, &op::SoftmaxCrossEntropy(&labels));
    let lse0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    let lse1 = (0.5f64.exp() + (-0.5f64).exp() + 1.0).ln();
    assert!((l[0] - (lse0 - 1.0)).abs() < 1e-14);
    assert!((l[1] - lse1).abs() < 1e-14);
}

#[test]
fn softmax_family_is_finite_for_huge_logits() {
    for scale in [1e4f64, -1e4] {
        let m64 = DMatrix::from_row_slice(2, 3, &[1.0, 0.5, -1.0, -0.2, 0.9, 1.0]) * scale;
        let labels = [0, 1];
        // in f64 and in f32
        let m32 = m64.map(|x| x as f32);
        let l = Unary::eval(&m64, &op::SoftmaxCrossEntropy(&labels));
        let l32 = Unary::eval(&m32, &op::SoftmaxCrossEntropy(&labels));
        assert!(l.all_finite() && l32.all_finite());
        let g = Unary::vjp(
            &m64,
            &op::SoftmaxCrossEntropy(&labels),
            &l,
            &DVector::from_element(2, 1.0),
        );
        let g32 = Unary::vjp(
            &m32,
            &op::SoftmaxCrossEntropy(&labels),
            &l32,
            &DVector::from_element(2, 1.0),
        );
        assert!(g.all_finite() && g32.all_finite());
        let ls = Unary::eval(&m64, &op::LogSoftmax);
        let ls32 = Unary::eval(&m32, &op::LogSoftmax);
        assert!(ls.all_finite() && ls32.all_finite());
        let lse = Unary::eval(&m64, &op::LogSumExp);
        let lse32 = Unary::eval(&m32, &op::LogSumExp);
        assert!(lse.is_finite() && lse32.is_finite());
        // the k maxima dominate: lse = max + ln k, the rest contribute e^-1000 or less
        let max = m64.max();
        let k = m64.iter().filter(|&&x| x == max).count() as f64;
        assert!((lse - max - k.ln()).abs() <= 1e-12 * max.abs());
    }
}

#[test]
#[should_panic(expected = "label 3 of example 1 is out of range for 3 classes")]
fn softmax_cross_entropy_rejects_out_of_range_labels() {
    let m = DMatrix::<f64>::zeros(2, 3);
    Unary::eval(&m, &op::SoftmaxCrossEntropy(&[0, 3]));
}

#[test]
#[should_panic(expected = "label -1 of example 0 is out of range")]
fn softmax_cross_entropy_rejects_negative_labels() {
    let m = DMatrix::<f64>::zeros(2, 3);
    Unary::eval(&m, &op::SoftmaxCrossEntropy(&[-1, 0]));
}

#[test]
#[should_panic(expected = "got 1 labels for 2 examples")]
fn softmax_cross_entropy_rejects_wrong_label_count() {
    let m = DMatrix::<f64>::zeros(2, 3);
    Unary::eval(&m, &op::SoftmaxCrossEntropy(&[0]));
}

// ---- binary elementwise ----

/// One broadcasting case of a binary op: scalar∘scalar (`ss`), matrix∘matrix of the same
/// type (`mm`), matrix∘scalar (`ms`), scalar∘matrix (`sm`), over every value type.
macro_rules! binary_case {
    (ss, $op:ty, $n:expr) => {{
        let (a, b) = operands::<$op, _, _>(0.0, 0.0, 20);
        binary::<$op, f64, f64>($n, a, b);
    }};
    (mm, $op:ty, $n:expr) => {
        each_value!(t => {
            let (a, b) = operands::<$op, _, _>(t.clone(), t, 21);
            binary::<$op, _, _>($n, a, b);
        })
    };
    (ms, $op:ty, $n:expr) => {
        each_value!(t => {
            let (a, b) = operands::<$op, _, _>(t, 0.0, 22);
            binary::<$op, _, f64>($n, a, b);
        })
    };
    (sm, $op:ty, $n:expr) => {
        each_value!(t => {
            let (a, b) = operands::<$op, _, _>(0.0, t, 23);
            binary::<$op, f64, _>($n, a, b);
        })
    };
}

macro_rules! binary_test {
    ($name:ident, $op:ty, [$($case:ident),*]) => {
        #[test]
        fn $name() {
            $(binary_case!($case, $op, stringify!($name));)*
        }
    };
}

/// Operands in the domain of `Op`, both shaped from templates; scalars broadcast.
fn operands<Op: 'static, A: Params<Scalar = f64>, B: Params<Scalar = f64>>(
    a: A,
    b: B,
    seed: u64,
) -> (A, B) {
    use std::any::TypeId;
    let is = |t: TypeId| TypeId::of::<Op>() == t;
    let b = if is(TypeId::of::<op::Div>()) || is(TypeId::of::<op::ComponentDiv>()) {
        sample(b, seed, &away)
    } else {
        sample(b, seed, &any)
    };
    let a = if is(TypeId::of::<op::Powf>()) {
        sample(a, seed + 1, &pos)
    } else if is(TypeId::of::<op::Max>()) || is(TypeId::of::<op::Min>()) {
        // every element of a at least 0.2 from every element of b (b is a scalar or the
        // same shape): shift by b's values elementwise, or by the scalar
        let bs = b.flatten();
        let mut rng = StdRng::seed_from_u64(seed + 1);
        let mut k = 0;
        a.map(|_| {
            let base = if bs.len() == 1 { bs[0] } else { bs[k] };
            k += 1;
            base + away(&mut rng)
        })
    } else {
        sample(a, seed + 1, &any)
    };
    // scalar∘matrix max/min: a is the scalar, so keep every element of b apart from it
    let b = if (is(TypeId::of::<op::Max>()) || is(TypeId::of::<op::Min>())) && a.num_elements() == 1
    {
        let s = a.flatten()[0];
        apart(&b.map(|_| s), seed + 2)
    } else {
        b
    };
    (a, b)
}

binary_test!(add, op::Add, [ss, mm, ms, sm]);
binary_test!(sub, op::Sub, [ss, mm, ms, sm]);
binary_test!(mul_scaling, op::Mul, [ss, ms, sm]);
binary_test!(div, op::Div, [ss, ms, sm]);
binary_test!(max, op::Max, [ss, mm, ms, sm]);
binary_test!(min, op::Min, [ss, mm, ms, sm]);
binary_test!(powf, op::Powf, [ss, ms]);
binary_test!(component_mul, op::ComponentMul, [mm]);
binary_test!(component_div, op::ComponentDiv, [mm]);
