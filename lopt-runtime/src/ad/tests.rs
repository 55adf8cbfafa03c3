//! Every rule against finite differences (f64), plus shape errors, stability at large
//! logits, the `gemm` fast path against the generic loop and f32 against f64.

// The value-type macros instantiate one body for Copy (static) and non-Copy matrices.
#![allow(clippy::clone_on_copy)]

use std::borrow::Cow;

use nalgebra::{DMatrix, DVector, RowDVector, SMatrix, SVector};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::derivative_check::{check_derivatives, CheckOptions, Pair};
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
        |x, g| x.vjp(&op, &x.eval(&op), g.clone()),
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
            let (da, db) = p.0.vjp(&p.1, &p.0.eval(&p.1), g.clone(), true, true);
            Pair(da.expect("asked for a"), db.expect("asked for b"))
        },
    );
    check(
        &format!("{what} (left only)"),
        &a,
        |a| a.eval(&b),
        |a, d| a.jvp(&b, &a.eval(&b), Some(d), None),
        |a, g| {
            let (da, db) = a.vjp(&b, &a.eval(&b), g.clone(), true, false);
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
            let (da, db) = a.vjp(b, &a.eval(b), g.clone(), false, true);
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
    assert_eq!(Unary::vjp(&m, &op::Index2(1, 0), &4.0, 2.0)[(1, 0)], 2.0);
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
    unary(
        "softmax_cross_entropy",
        op::SoftmaxCrossEntropy::new(&labels),
        x,
    );
}

#[test]
fn mean_softmax_cross_entropy() {
    // Rows below, at and past a multiple of eight, and one class.
    for (rows, cols, seed) in [(4, 3, 11), (8, 1, 12), (19, 5, 13)] {
        let x = sample(DMatrix::<f64>::zeros(rows, cols), seed, &any);
        let labels: Vec<i32> = (0..rows).map(|i| ((i * 7) % cols) as i32).collect();
        unary(
            "mean_softmax_cross_entropy",
            op::MeanSoftmaxCrossEntropy::new(&labels),
            x,
        );
    }
}

/// The fused rule gives what `mean` of the per-example losses gives, value and gradient,
/// in f64 and f32, whether its derivative takes the kept gradient or recomputes it.
#[test]
fn mean_softmax_cross_entropy_is_the_mean_of_the_losses() {
    fn case<S: crate::scalar::Real>(rows: usize, cols: usize, scale: f64, tol: f64) {
        let x = DMatrix::<S>::from_fn(rows, cols, |i, j| {
            S::c((((i * 7 + j * 13) % 11) as f64 * 0.7 - 3.0) * scale)
        });
        let labels: Vec<i32> = (0..rows).map(|i| ((i * 5 + 1) % cols) as i32).collect();
        let sce = op::SoftmaxCrossEntropy::new(&labels);
        let losses = Unary::eval(&x, &sce);
        let mean = Unary::eval(&losses, &op::Mean);
        let g = Unary::vjp(
            &x,
            &sce,
            &losses,
            Unary::vjp(&losses, &op::Mean, &mean, S::c(2.5)),
        );
        let dx = x.map(|v| S::c((v.lane(0) * 3.0).sin()));
        let t = Unary::jvp(
            &losses,
            &op::Mean,
            &mean,
            &Unary::jvp(&x, &sce, &losses, &dx),
        );

        let fused = op::MeanSoftmaxCrossEntropy::new(&labels);
        let v = Unary::eval(&x, &fused);
        let close = |a: S, b: S| (a.lane(0) - b.lane(0)).abs() <= tol * b.lane(0).abs().max(1.0);
        assert!(
            close(v, mean),
            "{rows}x{cols}: {} vs {}",
            v.lane(0),
            mean.lane(0)
        );
        // kept, then recomputed (taken already), then on a fresh op
        let gk = Unary::vjp(&x, &fused, &v, S::c(2.5));
        let gr = Unary::vjp(&x, &fused, &v, S::c(2.5));
        let gf = Unary::vjp(
            &x,
            &op::MeanSoftmaxCrossEntropy::new(&labels),
            &v,
            S::c(2.5),
        );
        for d in [&gk, &gr, &gf] {
            assert!(
                d.iter().zip(g.iter()).all(|(&a, &b)| close(a, b)),
                "{rows}x{cols}"
            );
        }
        assert!(
            gk == gr && gr == gf,
            "{rows}x{cols}: the kept gradient is the recomputed one"
        );
        let _ = Unary::eval(&x, &fused);
        for tf in [
            Unary::jvp(&x, &fused, &v, &dx),
            Unary::jvp(&x, &fused, &v, &dx),
        ] {
            assert!(
                close(tf, t),
                "{rows}x{cols}: {} vs {}",
                tf.lane(0),
                t.lane(0)
            );
        }
    }
    // scale 30: logits up to ±120, past f32's exp range unless the row max is subtracted
    for (rows, cols, scale) in [(19, 5, 1.0), (16, 10, 30.0), (7, 3, 30.0), (128, 10, 1.0)] {
        case::<f64>(rows, cols, scale, 1e-13);
        case::<f32>(rows, cols, scale, 2e-5);
    }
}

#[test]
fn mean_softmax_cross_entropy_of_no_examples_is_nan() {
    let m = DMatrix::<f64>::zeros(0, 3);
    let op = op::MeanSoftmaxCrossEntropy::new(&[]);
    assert!(Unary::eval(&m, &op).is_nan());
    assert!(Unary::jvp(&m, &op, &f64::NAN, &m).is_nan());
    assert_eq!(Unary::vjp(&m, &op, &f64::NAN, 1.0).shape(), (0, 3));
}

/// A gradient kept for one matrix of logits is not used for another: the op evaluated at
/// `x1`, then differentiated at `x2` with `x1`'s loss value (so only the logits tell them
/// apart), gives `x2`'s gradient.
#[test]
fn mean_softmax_cross_entropy_keeps_its_gradient_for_its_own_logits_only() {
    let labels = [1, 0, 2];
    let x1 = DMatrix::<f64>::from_row_slice(3, 3, &[0.1, 0.5, -0.3, 1.0, 0.2, 0.0, -1.0, 0.4, 0.8]);
    let x2 = x1.map(|v| v * 1.5 - 0.2);
    let op = op::MeanSoftmaxCrossEntropy::new(&labels);
    let v1 = Unary::eval(&x1, &op);
    let stale = Unary::vjp(&x2, &op, &v1, 1.0);
    let fresh = Unary::vjp(&x2, &op::MeanSoftmaxCrossEntropy::new(&labels), &v1, 1.0);
    assert_eq!(stale, fresh);
    let g1 = Unary::vjp(&x1, &op::MeanSoftmaxCrossEntropy::new(&labels), &v1, 1.0);
    assert!((&stale - &g1).amax() > 0.01);
    // and the tangent
    let _ = Unary::eval(&x1, &op);
    let t = Unary::jvp(&x2, &op, &v1, &x1);
    let t_fresh = Unary::jvp(&x2, &op::MeanSoftmaxCrossEntropy::new(&labels), &v1, &x1);
    assert_eq!(t, t_fresh);
}

/// A NaN logit makes its example's loss, hence the mean, and that example's gradient row
/// NaN (the row's max is taken first; NaN must not be skipped by it); other rows stay
/// finite.
#[test]
fn mean_softmax_cross_entropy_propagates_nan() {
    for j in 0..3 {
        let mut x = DMatrix::<f32>::from_fn(9, 3, |i, k| (i + 2 * k) as f32 * 0.1);
        x[(4, j)] = f32::NAN;
        let labels: Vec<i32> = (0..9).map(|i| i % 3).collect();
        let op = op::MeanSoftmaxCrossEntropy::new(&labels);
        let v = Unary::eval(&x, &op);
        assert!(v.is_nan(), "column {j}");
        let g = Unary::vjp(&x, &op, &v, 1.0);
        for i in 0..9 {
            let row_nan = (0..3).all(|k| g[(i, k)].is_nan());
            let row_finite = (0..3).all(|k| g[(i, k)].is_finite());
            assert!(
                if i == 4 { row_nan } else { row_finite },
                "column {j}, row {i}"
            );
        }
    }
}

#[test]
#[should_panic(expected = "label 3 of example 1 is out of range for 3 classes")]
fn mean_softmax_cross_entropy_rejects_out_of_range_labels() {
    let m = DMatrix::<f64>::zeros(2, 3);
    Unary::eval(&m, &op::MeanSoftmaxCrossEntropy::new(&[0, 3]));
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
    let l = Unary::eval(&m, &op::SoftmaxCrossEntropy::new(&labels));
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
        let l = Unary::eval(&m64, &op::SoftmaxCrossEntropy::new(&labels));
        let l32 = Unary::eval(&m32, &op::SoftmaxCrossEntropy::new(&labels));
        assert!(l.all_finite() && l32.all_finite());
        let g = Unary::vjp(
            &m64,
            &op::SoftmaxCrossEntropy::new(&labels),
            &l,
            DVector::from_element(2, 1.0),
        );
        let g32 = Unary::vjp(
            &m32,
            &op::SoftmaxCrossEntropy::new(&labels),
            &l32,
            DVector::from_element(2, 1.0),
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
    Unary::eval(&m, &op::SoftmaxCrossEntropy::new(&[0, 3]));
}

#[test]
#[should_panic(expected = "label -1 of example 0 is out of range")]
fn softmax_cross_entropy_rejects_negative_labels() {
    let m = DMatrix::<f64>::zeros(2, 3);
    Unary::eval(&m, &op::SoftmaxCrossEntropy::new(&[-1, 0]));
}

#[test]
#[should_panic(expected = "got 1 labels for 2 examples")]
fn softmax_cross_entropy_rejects_wrong_label_count() {
    let m = DMatrix::<f64>::zeros(2, 3);
    Unary::eval(&m, &op::SoftmaxCrossEntropy::new(&[0]));
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
    } else if is(TypeId::of::<op::AddRelu>()) {
        // every a + b at least 0.2 from the kink at 0 (as for max/min above)
        let bs = b.flatten();
        let mut rng = StdRng::seed_from_u64(seed + 1);
        let mut k = 0;
        a.map(|_| {
            let base = if bs.len() == 1 { bs[0] } else { bs[k] };
            k += 1;
            away(&mut rng) - base
        })
    } else {
        sample(a, seed + 1, &any)
    };
    let b = if is(TypeId::of::<op::AddRelu>()) && a.num_elements() == 1 {
        let s = a.flatten()[0];
        apart(&b.map(|_| -s), seed + 2)
    } else {
        b
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
binary_test!(add_relu, op::AddRelu, [ss, mm, ms, sm]);
binary_test!(sub, op::Sub, [ss, mm, ms, sm]);
binary_test!(mul_scaling, op::Mul, [ss, ms, sm]);
binary_test!(div, op::Div, [ss, ms, sm]);
binary_test!(max, op::Max, [ss, mm, ms, sm]);
binary_test!(min, op::Min, [ss, mm, ms, sm]);
binary_test!(powf, op::Powf, [ss, ms]);
binary_test!(component_mul, op::ComponentMul, [mm]);
binary_test!(component_div, op::ComponentDiv, [mm]);

// ---- bias broadcasting ----

#[test]
fn bias_broadcast() {
    let m = sample(DMatrix::<f64>::zeros(3, 4), 30, &any);
    let v = sample(DVector::<f64>::zeros(4), 31, &any);
    let rv = sample(RowDVector::<f64>::zeros(4), 32, &any);
    binary::<op::Add, _, _>("matrix + column bias", m.clone(), v.clone());
    binary::<op::Sub, _, _>("matrix - column bias", m.clone(), v.clone());
    binary::<op::Add, _, _>("matrix + row bias", m.clone(), rv.clone());
    binary::<op::Sub, _, _>("matrix - row bias", m.clone(), rv.clone());
    binary::<op::Add, _, _>("column bias + matrix", v.clone(), m.clone());
    binary::<op::Sub, _, _>("column bias - matrix", v, m.clone());
    binary::<op::Add, _, _>("row bias + matrix", rv.clone(), m.clone());
    binary::<op::Sub, _, _>("row bias - matrix", rv, m);
}

/// A bias pass of at least 2^20 elements runs in chunks of columns on the pool: on 1 and
/// on 3 threads the sum, the difference (vector on the left), and their cotangents (the
/// vector's is column sums) are the same bit for bit and equal the elementwise
/// definition and a plain sum per column (2048 × 515: the chunks do not divide the
/// columns). Mutations caught: the last (shorter) chunk of columns left unwritten; each
/// chunk's column sums all taken of its first column; each tried.
#[test]
fn large_bias_passes_on_the_pool_equal_one_thread() {
    let (r, c) = (2048, 515);
    let m = DMatrix::<f32>::from_fn(r, c, |i, j| ((i * 7 + j * 13) % 17) as f32 * 0.1 - 0.8);
    let v = DVector::<f32>::from_fn(c, |j, _| j as f32 * 0.01 - 1.0);
    let g = DMatrix::<f32>::from_fn(r, c, |i, j| ((i * 5 + j * 3) % 11) as f32 * 0.3 - 1.5);
    let run = |threads: usize| {
        crate::on_threads(threads, || {
            let y = Binary::<op::Add, _>::eval(&m, &v);
            let (dm, dv) = Binary::<op::Add, _>::vjp(&m, &v, &y, g.clone(), true, true);
            let z = Binary::<op::Sub, _>::eval(&v, &m);
            let (dv2, dm2) = Binary::<op::Sub, _>::vjp(&v, &m, &z, g.clone(), true, true);
            (y, dm, dv, z, dv2, dm2)
        })
    };
    let (one, three) = (run(1), run(3));
    assert_eq!(one, three);
    let (y, _, dv, z, dv2, _) = one;
    let (dv, dv2) = (dv.unwrap(), dv2.unwrap());
    for j in 0..c {
        let col_sum = (0..r).fold(0.0f64, |s, i| s + f64::from(g[(i, j)]));
        assert!((f64::from(dv[j]) - col_sum).abs() < 1e-3, "column {j}");
        assert_eq!(dv2[j], dv[j]);
        for i in 0..r {
            assert_eq!(y[(i, j)], m[(i, j)] + v[j]);
            assert_eq!(z[(i, j)], v[j] - m[(i, j)]);
        }
    }
}

/// `relu(m + bias)` with every sum at least 0.2 from the kink, both orders and both
/// vector kinds (the fused reverse sweep runs when both cotangents are asked for).
#[test]
fn add_relu_bias_broadcast() {
    let v = sample(DVector::<f64>::zeros(4), 33, &any);
    let mut rng = StdRng::seed_from_u64(34);
    let m = DMatrix::<f64>::from_fn(5, 4, |_, j| away(&mut rng) - v[j]);
    let rv = v.transpose();
    binary::<op::AddRelu, _, _>("relu(matrix + column bias)", m.clone(), v.clone());
    binary::<op::AddRelu, _, _>("relu(matrix + row bias)", m.clone(), rv.clone());
    binary::<op::AddRelu, _, _>("relu(column bias + matrix)", v, m.clone());
    binary::<op::AddRelu, _, _>("relu(row bias + matrix)", rv, m);
}

/// The fused rule is exactly `relu` after `+`, values and every cotangent, in `f32`
/// and in SIMD packets, at the kink (`0`, `-0`), on both sides of it and for NaN.
#[test]
fn add_relu_is_relu_of_add_exactly() {
    use crate::lanes::Lanes;
    fn same<S: crate::scalar::Real + nalgebra::Scalar>(
        m: DMatrix<S>,
        v: DVector<S>,
        g: DMatrix<S>,
    ) {
        let bits = |a: &DMatrix<S>, b: &DMatrix<S>| {
            a.shape() == b.shape()
                && a.iter()
                    .zip(b.iter())
                    .all(|(x, y)| format!("{x:?}") == format!("{y:?}"))
        };
        let sum = Binary::<op::Add, _>::eval(&m, &v);
        let y0 = Unary::eval(&sum, &op::Relu);
        let y = Binary::<op::AddRelu, _>::eval(&m, &v);
        assert!(bits(&y, &y0), "value");
        let gs = Unary::vjp(&sum, &op::Relu, &y0, g.clone());
        let (gm0, gv0) = Binary::<op::Add, _>::vjp(&m, &v, &sum, gs, true, true);
        for (need_m, need_v) in [(true, true), (true, false), (false, true)] {
            let (gm, gv) = Binary::<op::AddRelu, _>::vjp(&m, &v, &y, g.clone(), need_m, need_v);
            assert_eq!(gm.is_some(), need_m);
            assert_eq!(gv.is_some(), need_v);
            if let Some(gm) = gm {
                assert!(bits(&gm, gm0.as_ref().unwrap()), "matrix cotangent");
            }
            if let Some(gv) = gv {
                let gv0 = DMatrix::from_column_slice(
                    gv0.as_ref().unwrap().len(),
                    1,
                    gv0.as_ref().unwrap().as_slice(),
                );
                let gv = DMatrix::from_column_slice(gv.len(), 1, gv.as_slice());
                assert!(bits(&gv, &gv0), "bias cotangent");
            }
        }
        let (dm, dv) = (g.map(|t| t * S::c(0.5)), v.map(|t| t + S::one()));
        let t0 = Unary::jvp(
            &sum,
            &op::Relu,
            &y0,
            &Binary::<op::Add, _>::jvp(&m, &v, &sum, Some(&dm), Some(&dv)),
        );
        let t = Binary::<op::AddRelu, _>::jvp(&m, &v, &y, Some(&dm), Some(&dv));
        assert!(bits(&t, &t0), "tangent");
    }
    // 17 rows: two blocks of eight and a remainder.
    let special = [0.0f32, -0.0, 1.5, -1.5, f32::NAN, 2.0, -3.0];
    let m = DMatrix::<f32>::from_fn(17, 3, |i, j| special[(i + 2 * j) % special.len()]);
    let v = DVector::from_vec(vec![0.0f32, -0.0, 0.25]);
    let g = DMatrix::<f32>::from_fn(17, 3, |i, j| (i as f32 - 8.0) * 0.5 + j as f32);
    same(m.clone(), v.clone(), g.clone());
    let lanes = |x: f32| Lanes::<4>(std::array::from_fn(|l| x * (1.0 - l as f32 * 0.75)));
    same(m.map(lanes), v.map(lanes), g.map(lanes));
}

#[test]
fn bias_adds_the_vector_to_every_row() {
    let m = DMatrix::from_row_slice(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let v = DVector::from_vec(vec![10.0, 20.0, 30.0]);
    let y = Binary::<op::Add, _>::eval(&m, &v);
    assert_eq!(
        y,
        DMatrix::from_row_slice(2, 3, &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0])
    );
    let y = Binary::<op::Sub, _>::eval(&v.transpose(), &m);
    assert_eq!(
        y,
        DMatrix::from_row_slice(2, 3, &[9.0, 18.0, 27.0, 6.0, 15.0, 24.0])
    );
    // the bias's cotangent sums g over the rows
    let g = DMatrix::from_row_slice(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let (_, db) = Binary::<op::Add, _>::vjp(&m, &v, &y, g, false, true);
    assert_eq!(db.unwrap(), DVector::from_vec(vec![5.0, 7.0, 9.0]));
}

#[test]
#[should_panic(expected = "shape mismatch in `a + b`: left operand is 2x3, right operand is 2x1")]
fn bias_of_wrong_length_panics() {
    let m = DMatrix::<f64>::zeros(2, 3);
    let v = DVector::<f64>::zeros(2);
    Binary::<op::Add, _>::eval(&m, &v);
}

#[test]
#[should_panic(expected = "shape mismatch in `a - b`: left operand is 2x3, right operand is 3x2")]
fn elementwise_shape_mismatch_panics() {
    let a = DMatrix::<f64>::zeros(2, 3);
    let b = DMatrix::<f64>::zeros(3, 2);
    Binary::<op::Sub, _>::eval(&a, &b);
}

#[test]
#[should_panic(expected = "shape mismatch in `a.dot(b)`")]
fn dot_shape_mismatch_panics() {
    let a = DVector::<f64>::zeros(2);
    let b = DVector::<f64>::zeros(3);
    Binary::<op::Dot, _>::eval(&a, &b);
}

#[test]
#[should_panic(expected = "index [6] out of range for a 2x3 value")]
fn index_out_of_range_panics() {
    Unary::eval(&DMatrix::<f64>::zeros(2, 3), &op::Index(6));
}

#[test]
#[should_panic(expected = "index [(0, 3)] out of range for a 2x3 value")]
fn index2_out_of_range_panics() {
    Unary::eval(&DMatrix::<f64>::zeros(2, 3), &op::Index2(0, 3));
}

#[test]
fn dot() {
    each_value!(t => {
        let (a, b) = (sample(t.clone(), 33, &any), sample(t, 34, &any));
        binary::<op::Dot, _, _>("dot", a, b);
    });
}

// ---- matrix products ----

#[test]
fn matmul_every_shape_combination() {
    fn m(r: usize, c: usize, seed: u64) -> DMatrix<f64> {
        sample(DMatrix::zeros(r, c), seed, &any)
    }
    binary::<op::Mul, _, _>("matrix * matrix", m(3, 4, 40), m(4, 2, 41));
    let v = sample(DVector::<f64>::zeros(4), 42, &any);
    let rv = sample(RowDVector::<f64>::zeros(3), 43, &any);
    binary::<op::Mul, _, _>("matrix * vector", m(3, 4, 44), v.clone());
    binary::<op::Mul, _, _>("row * matrix", rv.clone(), m(3, 4, 45));
    binary::<op::Mul, _, _>("outer product", v.clone(), rv.clone());
    binary::<op::Mul, _, _>(
        "row * column",
        sample(RowDVector::<f64>::zeros(4), 46, &any),
        v,
    );
    let s23 = sample(SMatrix::<f64, 2, 3>::zeros(), 47, &any);
    let s34 = sample(SMatrix::<f64, 3, 4>::zeros(), 48, &any);
    binary::<op::Mul, _, _>("static matrix * matrix", s23, s34);
    binary::<op::Mul, _, _>(
        "static matrix * vector",
        s23,
        sample(SVector::<f64, 3>::zeros(), 49, &any),
    );
    // large enough for dgemm, non-square, so the vjp's transposed strides are exercised
    binary::<op::Mul, _, _>("dgemm matrix * matrix", m(7, 9, 50), m(9, 8, 51));
}

#[test]
#[should_panic(
    expected = "shape mismatch in `a * b`: left operand is 2x3, right operand is 2x3 (a matrix product"
)]
fn matmul_shape_mismatch_panics() {
    let a = DMatrix::<f64>::zeros(2, 3);
    Binary::<op::Mul, _>::eval(&a, &a);
}

/// `Σ_p a[i, p] b[p, j]` written out: the reference for the kernels.
fn naive_product(a: &DMatrix<f64>, b: &DMatrix<f64>) -> DMatrix<f64> {
    DMatrix::from_fn(a.nrows(), b.ncols(), |i, j| {
        (0..a.ncols()).map(|p| a[(i, p)] * b[(p, j)]).sum()
    })
}

#[track_caller]
fn assert_close(a: &DMatrix<f64>, b: &DMatrix<f64>, rtol: f64) {
    assert_eq!(a.shape(), b.shape());
    let scale = a.amax().max(b.amax()).max(1e-300);
    let err = (a - b).amax() / scale;
    assert!(err <= rtol, "relative error {err:e} > {rtol:e}");
}

#[test]
fn gemm_fast_path_generic_loop_and_naive_agree_with_transposes() {
    let (m, k, n) = (13, 8, 11);
    let a = sample(DMatrix::<f64>::zeros(m, k), 60, &any);
    let b = sample(DMatrix::<f64>::zeros(k, n), 61, &any);
    let g = sample(DMatrix::<f64>::zeros(m, n), 62, &any);
    let (ma, mb, mg) = (View::of(&a), View::of(&b), View::of(&g));
    let dyn_ = nalgebra::Dyn;
    // each product through dgemm (all dimensions > 5) and through the generic loop
    let cases = [
        (ma, mb, naive_product(&a, &b)),
        (mg, mb.t(), naive_product(&g, &b.transpose())),
        (ma.t(), mg, naive_product(&a.transpose(), &g)),
    ];
    for (x, y, want) in cases {
        let fast = product(x, y, dyn_(want.nrows()), dyn_(want.ncols()));
        let mut slow = DMatrix::<f64>::zeros(want.nrows(), want.ncols());
        gemm_generic(x, y, slow.as_mut_slice());
        assert_close(&fast, &want, 1e-14);
        assert_close(&slow, &want, 1e-14);
    }
}

#[test]
fn matmul_f32_sgemm_matches_f64() {
    // non-square, above the gemm threshold, and one below it (generic loop in f32)
    for (m, k, n) in [(13, 8, 11), (128, 64, 32), (4, 3, 5)] {
        let a = sample(DMatrix::<f64>::zeros(m, k), 70, &any);
        let b = sample(DMatrix::<f64>::zeros(k, n), 71, &any);
        let g = sample(DMatrix::<f64>::zeros(m, n), 72, &any);
        let (a32, b32, g32) = (
            a.map(|x| x as f32),
            b.map(|x| x as f32),
            g.map(|x| x as f32),
        );
        let to64 = |x: DMatrix<f32>| x.map(|v| v as f64);
        let y = Binary::<op::Mul, _>::eval(&a, &b);
        let y32 = Binary::<op::Mul, _>::eval(&a32, &b32);
        let (da, db) = Binary::<op::Mul, _>::vjp(&a, &b, &y, g.clone(), true, true);
        let (da32, db32) = Binary::<op::Mul, _>::vjp(&a32, &b32, &y32, g32.clone(), true, true);
        let t =
            Binary::<op::Mul, _>::jvp(&a, &b, &y, Some(&g.transpose().resize(m, k, 0.0)), Some(&b));
        let t32 = Binary::<op::Mul, _>::jvp(
            &a32,
            &b32,
            &y32,
            Some(&g32.transpose().resize(m, k, 0.0)),
            Some(&b32),
        );
        // f32 rounding over k-term sums of O(1) products
        let tol = 1e-5;
        assert_close(&to64(y32), &y, tol);
        assert_close(&to64(da32.unwrap()), da.as_ref().unwrap(), tol);
        assert_close(&to64(db32.unwrap()), db.as_ref().unwrap(), tol);
        assert_close(&to64(t32), &t, tol);
        // and the f64 results against the written-out sums
        assert_close(&y, &naive_product(&a, &b), 1e-13);
        assert_close(&da.unwrap(), &naive_product(&g, &b.transpose()), 1e-13);
        assert_close(&db.unwrap(), &naive_product(&a.transpose(), &g), 1e-13);
    }
}

// ---- Data ----

#[test]
fn data_borrows_same_scalar_and_converts_others() {
    let m32 = DMatrix::<f32>::from_row_slice(2, 2, &[1.0, 2.0, 3.0, 4.5]);
    let d: Cow<'_, DMatrix<f32>> = Data::<f32>::data(&m32);
    assert!(matches!(d, Cow::Borrowed(_)));
    let d64: Cow<'_, DMatrix<f64>> = Data::<f64>::data(&m32);
    assert!(matches!(d64, Cow::Owned(_)));
    assert_eq!(d64.into_owned(), m32.map(|x| x as f64));

    let s = SMatrix::<f64, 2, 3>::from_element(0.25);
    assert!(matches!(Data::<f64>::data(&s), Cow::Borrowed(_)));
    assert_eq!(
        *Data::<f32>::data(&s),
        SMatrix::<f32, 2, 3>::from_element(0.25)
    );

    let r = RowDVector::<f32>::from_vec(vec![1.0, 2.0]);
    assert!(matches!(Data::<f32>::data(&r), Cow::Borrowed(_)));
    assert_eq!(
        *Data::<f64>::data(&DVector::from_vec(vec![3.0f32])),
        DVector::from_vec(vec![3.0])
    );

    assert!(matches!(Data::<f32>::data(&2.5f32), Cow::Borrowed(&2.5)));
    assert_eq!(*Data::<f32>::data(&2.5f64), 2.5f32);
    assert!(matches!(Data::<f64>::data(&2.5f64), Cow::Borrowed(&2.5)));

    let (v32, v64) = (vec![1.0f32, -2.0], vec![1.0f64, -2.0]);
    let v: Cow<'_, DVector<f64>> = Data::<f64>::data(&v32);
    assert_eq!(*v, DVector::from_vec(v64.clone()));
    let v: Cow<'_, DVector<f32>> = Data::<f32>::data(&v64);
    assert_eq!(*v, DVector::from_vec(v32));
}

// ---- the checker catches wrong rules ----

#[test]
fn checker_rejects_wrong_derivatives() {
    let x = sample(DVector::<f64>::zeros(4), 80, &any);
    let o = opts();
    let f = |x: &DVector<f64>| x.map(f64::exp);
    let right = |x: &DVector<f64>, t: &DVector<f64>| x.map(f64::exp).component_mul(t);
    let wrong = |x: &DVector<f64>, t: &DVector<f64>| x.map(f64::exp).component_mul(t) * 1.001;
    assert!(check_derivatives(&x, f, right, right, &o).passed(&o));
    // wrong jvp: flagged by the finite differences and by the adjoint identity
    let r = check_derivatives(&x, f, wrong, right, &o);
    assert!(
        r.jvp_error > o.rtol && r.adjoint_error > o.adjoint_rtol,
        "{r}"
    );
    assert!(r.vjp_error <= o.rtol);
    // wrong vjp
    let r = check_derivatives(&x, f, right, wrong, &o);
    assert!(
        r.vjp_error > o.rtol && r.adjoint_error > o.adjoint_rtol,
        "{r}"
    );
    assert!(r.jvp_error <= o.rtol);
    // a vjp that is right except for one element
    let off = |x: &DVector<f64>, g: &DVector<f64>| {
        let mut d = x.map(f64::exp).component_mul(g);
        d[2] = 0.0;
        d
    };
    let r = check_derivatives(&x, f, right, off, &o);
    assert!(!r.passed(&o) && r.vjp_worst == 2, "{r}");
}

#[test]
fn checker_tolerates_fd_noise_on_zero_derivatives() {
    // f = relu on negative inputs: the exact derivative is 0, finite differences are 0 too
    // (up to rounding); constant offsets larger than the derivative do not trip it.
    let x = DVector::from_vec(vec![-1.0, -0.5, 1e3]);
    let o = opts();
    let r = check_derivatives(
        &x,
        |x| x.map(|v| v.max(0.0) + 1e3),
        |x, t| x.zip_map(t, |v, t| if v > 0.0 { t } else { 0.0 }),
        |x, g| x.zip_map(g, |v, g| if v > 0.0 { g } else { 0.0 }),
        &o,
    );
    assert!(r.passed(&o), "{r}");
}

// ---- composition, as the macro emits it ----

type Mlp<S> = Pair<Pair<DMatrix<S>, DVector<S>>, Pair<DMatrix<S>, DVector<S>>>;

/// Mean softmax cross-entropy of a one-hidden-layer relu MLP, written the way `#[task]`
/// lowers it: one rule call per primitive, resolved by types in a context generic over
/// the scalar. Returns the loss, its tangent along `dp`, and its gradient.
fn mlp<S: crate::Real>(p: &Mlp<S>, dp: &Mlp<S>, x: &DMatrix<S>, labels: &[i32]) -> (S, S, Mlp<S>) {
    let (Pair(w1, b1), Pair(w2, b2)) = (&p.0, &p.1);
    let (Pair(dw1, db1), Pair(dw2, db2)) = (&dp.0, &dp.1);
    let sce = op::SoftmaxCrossEntropy::new(labels);
    // value
    let h1 = <DMatrix<S> as Binary<op::Mul, DMatrix<S>>>::eval(x, w1);
    let z1 = <DMatrix<S> as Binary<op::Add, DVector<S>>>::eval(&h1, b1);
    let a1 = <DMatrix<S> as Unary<op::Relu>>::eval(&z1, &op::Relu);
    let h2 = <DMatrix<S> as Binary<op::Mul, DMatrix<S>>>::eval(&a1, w2);
    let z2 = <DMatrix<S> as Binary<op::Add, DVector<S>>>::eval(&h2, b2);
    let l = <DMatrix<S> as Unary<op::SoftmaxCrossEntropy>>::eval(&z2, &sce);
    let loss = <DVector<S> as Unary<op::Mean>>::eval(&l, &op::Mean);
    // forward mode
    let t_h1 = Binary::<op::Mul, _>::jvp(x, w1, &h1, None, Some(dw1));
    let t_z1 = Binary::<op::Add, _>::jvp(&h1, b1, &z1, Some(&t_h1), Some(db1));
    let t_a1 = Unary::jvp(&z1, &op::Relu, &a1, &t_z1);
    let t_h2 = Binary::<op::Mul, _>::jvp(&a1, w2, &h2, Some(&t_a1), Some(dw2));
    let t_z2 = Binary::<op::Add, _>::jvp(&h2, b2, &z2, Some(&t_h2), Some(db2));
    let t_l = Unary::jvp(&z2, &sce, &l, &t_z2);
    let t_loss = Unary::jvp(&l, &op::Mean, &loss, &t_l);
    // reverse mode
    let g_l = Unary::vjp(&l, &op::Mean, &loss, S::one());
    let g_z2 = Unary::vjp(&z2, &sce, &l, g_l);
    let (g_h2, g_b2) = Binary::<op::Add, _>::vjp(&h2, b2, &z2, g_z2, true, true);
    let (g_a1, g_w2) = Binary::<op::Mul, _>::vjp(&a1, w2, &h2, g_h2.unwrap(), true, true);
    let g_z1 = Unary::vjp(&z1, &op::Relu, &a1, g_a1.unwrap());
    let (g_h1, g_b1) = Binary::<op::Add, _>::vjp(&h1, b1, &z1, g_z1, true, true);
    let (g_x, g_w1) = Binary::<op::Mul, _>::vjp(x, w1, &h1, g_h1.unwrap(), false, true);
    assert!(g_x.is_none());
    let grad = Pair(
        Pair(g_w1.unwrap(), g_b1.unwrap()),
        Pair(g_w2.unwrap(), g_b2.unwrap()),
    );
    (loss, t_loss, grad)
}

#[test]
fn mlp_composition_matches_finite_differences() {
    use num_traits::One;
    // sizes above the gemm threshold, so dgemm and its transposed strides are on the path
    let (n, d, h, k) = (9, 7, 8, 6);
    let x = sample(DMatrix::<f64>::zeros(n, d), 90, &any);
    let labels: Vec<i32> = (0..n as i32).map(|i| (i * 5) % k as i32).collect();
    let p = Pair(
        Pair(
            sample(DMatrix::zeros(d, h), 91, &any),
            sample(DVector::zeros(h), 92, &any),
        ),
        Pair(
            sample(DMatrix::zeros(h, k), 93, &any),
            sample(DVector::zeros(k), 94, &any),
        ),
    );
    let zero = p.zeros_like();
    check(
        "mlp",
        &p,
        |p| mlp(p, &zero, &x, &labels).0,
        |p, dp| mlp(p, dp, &x, &labels).1,
        |p, g| {
            let mut d = mlp(p, &zero, &x, &labels).2;
            d.scale(*g);
            d
        },
    );
    // the same generic code in f32 agrees with f64
    let to32 = |m: &DMatrix<f64>| m.map(|v| v as f32);
    let tv32 = |v: &DVector<f64>| v.map(|v| v as f32);
    let p32 = Pair(
        Pair(to32(&p.0 .0), tv32(&p.0 .1)),
        Pair(to32(&p.1 .0), tv32(&p.1 .1)),
    );
    let (l64, _, g64) = mlp(&p, &zero, &x, &labels);
    let (l32, _, g32) = mlp(&p32, &p32.zeros_like(), &to32(&x), &labels);
    assert!((l32 as f64 - l64).abs() < 1e-5 * l64.abs().max(f64::one()));
    assert_close(&g32.0 .0.map(|v| v as f64), &g64.0 .0, 1e-4);
}

#[test]
fn index_plain_sequences() {
    let v: Vec<f64> = sample(vec![0.0; 4], 100, &any);
    let a: [f64; 3] = sample([0.0; 3], 101, &any);
    for i in 0..3 {
        unary("index", op::Index(i), v.clone());
        unary("index", op::Index(i), a);
    }
    assert_eq!(Unary::eval(&v, &op::Index(3)), v[3]);
}

#[test]
#[should_panic(expected = "index [4] out of range for a sequence of length 4")]
fn index_vec_out_of_range_panics() {
    Unary::eval(&vec![0.0f64; 4], &op::Index(4));
}

#[test]
fn nan_propagates_through_relu_max_min() {
    let nan = f64::NAN;
    assert!(Unary::eval(&nan, &op::Relu).is_nan());
    assert!(Binary::<op::Max, _>::eval(&nan, &0.0).is_nan());
    assert!(Binary::<op::Max, _>::eval(&0.0, &nan).is_nan());
    assert!(Binary::<op::Min, _>::eval(&nan, &0.0).is_nan());
    assert!(Binary::<op::Min, _>::eval(&0.0, &nan).is_nan());
    let m = DVector::from_vec(vec![1.0, nan]);
    assert!(Unary::eval(&m, &op::Relu)[1].is_nan());
    assert!(Binary::<op::Max, _>::eval(&m, &0.0)[1].is_nan());
    // derivatives at the kinks: relu' and abs' are 0 at 0
    assert_eq!(Unary::vjp(&0.0, &op::Relu, &0.0, 1.0), 0.0);
    assert_eq!(Unary::vjp(&0.0, &op::Abs, &0.0, 1.0), 0.0);
    assert_eq!(Unary::vjp(&-0.5, &op::Abs, &0.5, 1.0), -1.0);
    // ties go to the first argument, and values are right
    assert_eq!(Binary::<op::Max, _>::eval(&2.0, &-1.0), 2.0);
    assert_eq!(Binary::<op::Min, _>::eval(&2.0, &-1.0), -1.0);
    assert_eq!(
        Binary::<op::Max, _>::vjp(&1.0, &1.0, &1.0, 1.0, true, true),
        (Some(1.0), Some(0.0))
    );
    assert_eq!(
        Binary::<op::Min, _>::vjp(&1.0, &1.0, &1.0, 1.0, true, true),
        (Some(1.0), Some(0.0))
    );
}

/// A lane of a SIMD packet sums exactly as a lone `f32` does (the batched-equals-serial
/// contract of `vmap`), for lengths below, at and past the reductions' blocks.
#[test]
fn sums_of_packets_are_their_lanes_sums_bit_for_bit() {
    use super::reduce::{dot, sum};
    use crate::lanes::Lanes;
    use crate::scalar::Real;
    for n in [0, 5, 8, 31, 32, 33, 100, 257] {
        let draw = |seed: usize| -> Vec<Lanes<8>> {
            (0..n)
                .map(|i| Lanes::from_lanes(|l| ((i * 7 + l * 13 + seed) % 17) as f64 * 0.37 - 2.9))
                .collect()
        };
        let (x, y) = (draw(0), draw(5));
        let (s, d) = (sum(&x), dot(&x, &y));
        for l in 0..8 {
            let lane =
                |v: &[Lanes<8>]| -> Vec<f32> { v.iter().map(|p| p.lane(l) as f32).collect() };
            let (xl, yl) = (lane(&x), lane(&y));
            assert_eq!(
                sum(&xl).to_bits(),
                (s.lane(l) as f32).to_bits(),
                "sum, n = {n}"
            );
            assert_eq!(
                dot(&xl, &yl).to_bits(),
                (d.lane(l) as f32).to_bits(),
                "dot, n = {n}"
            );
        }
    }
}

// ---- thin spots: asymptotic ranges, kinks and ties, powf at 0 ----

/// `erfc(x)` for `x ≥ 2` by its continued fraction
/// `e^{−x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …))))`, evaluated backwards from 200
/// terms (independent of `erf_f64`'s series and asymptotic expansion).
fn erfc_cf(x: f64) -> f64 {
    let mut k = x;
    for n in (1..=200).rev() {
        k = x + (n as f64 / 2.0) / k;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / k
}

/// `erf(x)` for `|x| < 2` by its Maclaurin series (well conditioned there).
fn erf_series(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..80 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * std::f64::consts::FRAC_2_SQRT_PI
}

/// `erf_f64` keeps its documented accuracy (1e-10 absolute) over [−7, 7], against the
/// series below 2 and the continued fraction of erfc above (46e-12 measured, near |x| = 4
/// where its series cancels most), and is odd, 0 at 0, ±1 far out.
///
/// Catches: a wrong switch point or sign in `erf_f64`; a truncated series or expansion
/// (errors of 1e-6 and more in the asymptotic range).
#[test]
fn erf_matches_independent_references_into_the_asymptotic_range() {
    use crate::scalar::erf_f64;
    let mut worst = 0.0f64;
    for i in -7000..=7000 {
        let x = i as f64 * 1e-3;
        let want = if x.abs() < 2.0 {
            erf_series(x)
        } else {
            x.signum() * (1.0 - erfc_cf(x.abs()))
        };
        worst = worst.max((erf_f64(x) - want).abs());
        assert_eq!(erf_f64(-x), -erf_f64(x), "odd at {x}");
    }
    assert!(worst <= 1e-10, "erf: {worst:e} absolute");
    assert_eq!(erf_f64(0.0), 0.0);
    assert_eq!((erf_f64(30.0), erf_f64(-30.0)), (1.0, -1.0));
}

/// GELU `x Φ(x)` and its derivative `Φ(x) + x φ(x)` in the asymptotic range |x| ∈ [2, 12]
/// against `Φ` from the continued fraction of erfc (independent code): within 1e-9
/// absolute in f64 (the error of `erf_f64` times |x|), in f32 within 2e-6 relative to
/// max(|x|, 1); finite with the right limits far out (gelu(x) = x and gelu' = 1 for large
/// x, 0 for very negative x), in f32 and on packets lane for lane as in f32.
///
/// Catches: the derivative's `x φ(x)` term dropped or with the wrong sign (wrong by up
/// to 0.3 at |x| = 2); a φ constant wrong; NaN from `0 · ∞` far out.
#[test]
fn gelu_value_and_derivative_in_the_asymptotic_range() {
    use crate::lanes::Lanes;
    let phi_cdf = |x: f64| {
        if x >= 0.0 {
            1.0 - 0.5 * erfc_cf(x / std::f64::consts::SQRT_2)
        } else {
            0.5 * erfc_cf(-x / std::f64::consts::SQRT_2)
        }
    };
    let pdf = |x: f64| (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    for i in 0..=1000 {
        let m = 2.0 + 10.0 * i as f64 / 1000.0;
        for x in [m, -m] {
            let (want, dwant) = (x * phi_cdf(x), phi_cdf(x) + x * pdf(x));
            let y = <f64 as Unary<op::Gelu>>::eval(&x, &op::Gelu);
            let d = Unary::jvp(&x, &op::Gelu, &y, &1.0);
            assert!((y - want).abs() <= 1e-9, "gelu({x}) = {y}, want {want}");
            assert!((d - dwant).abs() <= 1e-9, "gelu'({x}) = {d}, want {dwant}");
            let x32 = x as f32;
            let y32 = <f32 as Unary<op::Gelu>>::eval(&x32, &op::Gelu);
            let d32 = Unary::jvp(&x32, &op::Gelu, &y32, &1.0);
            let tol = 2e-6 * x.abs().max(1.0);
            assert!((y32 as f64 - want).abs() <= tol, "f32 gelu({x}) = {y32}");
            assert!((d32 as f64 - dwant).abs() <= tol, "f32 gelu'({x}) = {d32}");
        }
    }
    for x in [40.0f32, 1e3, 1e30, -40.0, -1e3, -1e30] {
        let y = <f32 as Unary<op::Gelu>>::eval(&x, &op::Gelu);
        let d = Unary::jvp(&x, &op::Gelu, &y, &1.0);
        let (wy, wd) = if x > 0.0 { (x, 1.0) } else { (0.0, 0.0) };
        assert!(y == wy && d == wd, "gelu({x}) = {y}, gelu' = {d}");
    }
    let x = Lanes::<8>([-40.0, -6.5, -3.0, -0.0, 2.5, 7.0, 40.0, 1e30]);
    let y = <Lanes<8> as Unary<op::Gelu>>::eval(&x, &op::Gelu);
    let d = Unary::jvp(&x, &op::Gelu, &y, &Lanes::<8>::splat(1.0));
    for l in 0..8 {
        let x1 = x.0[l];
        let y1 = <f32 as Unary<op::Gelu>>::eval(&x1, &op::Gelu);
        let d1 = Unary::jvp(&x1, &op::Gelu, &y1, &1.0);
        assert!(
            y.0[l].to_bits() == y1.to_bits(),
            "lane {l}: {} vs {y1}",
            y.0[l]
        );
        assert!((d.0[l] - d1).abs() <= 1e-6 * d1.abs().max(1.0), "lane {l}");
    }
}

/// `sigmoid` and `softplus` derivatives over |x| ∈ [2, 60] (the rule tests sample only
/// (−2, 2)) against closed forms written stably here (`e^{−|x|}/(1 + e^{−|x|})²` and
/// `σ(x)` from `e^{−|x|}`): within 1e-13 relative in f64 (on the positive side σ' =
/// σ(1 − σ) where 1 − σ rounds at 1e-16 absolute, so that much more), 2e-6 relative in
/// f32 (1e-7 absolute where σ rounds to 1); beyond, in f32, finite, not negative, with
/// the 0/1 limits; on packets lane for lane as in f32.
///
/// Catches: softplus' computed as `1 − σ(−x)` (cancels: relative error 1e-3 at x = −30
/// in f64, 1 in f32); sigmoid' as `σ(x) · σ(−x)` evaluated through `1 − σ` of a large
/// argument; NaN from `∞/∞` far out.
#[test]
fn sigmoid_and_softplus_derivatives_beyond_two() {
    use crate::lanes::Lanes;
    let dsig = |x: f64| {
        let e = (-x.abs()).exp();
        e / ((1.0 + e) * (1.0 + e))
    };
    let sig = |x: f64| {
        let e = (-x.abs()).exp();
        if x >= 0.0 {
            1.0 / (1.0 + e)
        } else {
            e / (1.0 + e)
        }
    };
    let rel = |got: f64, want: f64| (got - want).abs() / want.abs();
    for i in 0..=2000 {
        let m = 2.0 + 58.0 * i as f64 / 2000.0;
        for x in [m, -m] {
            let y = <f64 as Unary<op::Sigmoid>>::eval(&x, &op::Sigmoid);
            let d = Unary::jvp(&x, &op::Sigmoid, &y, &1.0);
            let ys = <f64 as Unary<op::Softplus>>::eval(&x, &op::Softplus);
            let ds = Unary::jvp(&x, &op::Softplus, &ys, &1.0);
            // In f64 only the negative side keeps σ' relative: for x > 0, 1 − σ(x)
            // rounds at 1e-16 absolute.
            if x < 0.0 || m < 30.0 {
                let tol = if x < 0.0 {
                    1e-13
                } else {
                    5e-16 / dsig(x) + 1e-13
                };
                assert!(rel(d, dsig(x)) <= tol, "sigmoid'({x}) = {d:e}");
            }
            assert!(rel(ds, sig(x)) <= 1e-13, "softplus'({x}) = {ds:e}");
            let x32 = x as f32;
            let y32 = <f32 as Unary<op::Sigmoid>>::eval(&x32, &op::Sigmoid);
            let d32 = Unary::jvp(&x32, &op::Sigmoid, &y32, &1.0);
            let s32 = <f32 as Unary<op::Softplus>>::eval(&x32, &op::Softplus);
            let ds32 = Unary::jvp(&x32, &op::Softplus, &s32, &1.0);
            if x < 0.0 {
                assert!(
                    rel(d32 as f64, dsig(x32 as f64)) <= 2e-6,
                    "f32 sigmoid'({x}) = {d32:e}"
                );
            } else {
                // σ rounds to 1 in f32 from x ≈ 17: σ' is 0 there, within 1e-7 absolute.
                assert!(
                    (d32 as f64 - dsig(x32 as f64)).abs() <= 1e-7,
                    "f32 sigmoid'({x})"
                );
            }
            assert!(
                rel(ds32 as f64, sig(x32 as f64)) <= 2e-6,
                "f32 softplus'({x}) = {ds32:e}"
            );
        }
    }
    for x in [100.0f32, 1e30, f32::MAX, -100.0, -1e30, -f32::MAX] {
        let y = <f32 as Unary<op::Sigmoid>>::eval(&x, &op::Sigmoid);
        let d = Unary::jvp(&x, &op::Sigmoid, &y, &1.0);
        let s = <f32 as Unary<op::Softplus>>::eval(&x, &op::Softplus);
        let ds = Unary::jvp(&x, &op::Softplus, &s, &1.0);
        assert!(
            d.is_finite() && (0.0..1e-30).contains(&d),
            "sigmoid'({x}) = {d}"
        );
        assert_eq!(ds, if x > 0.0 { 1.0 } else { 0.0 }, "softplus'({x})");
        assert!(s.is_finite() && s >= 0.0, "softplus({x}) = {s}");
    }
    let x = Lanes::<8>([-60.0, -25.0, -9.0, -2.5, 2.5, 9.0, 25.0, 60.0]);
    let one = Lanes::<8>::splat(1.0);
    let y = <Lanes<8> as Unary<op::Sigmoid>>::eval(&x, &op::Sigmoid);
    let d = Unary::jvp(&x, &op::Sigmoid, &y, &one);
    let s = <Lanes<8> as Unary<op::Softplus>>::eval(&x, &op::Softplus);
    let ds = Unary::jvp(&x, &op::Softplus, &s, &one);
    for l in 0..8 {
        let x1 = x.0[l];
        let y1 = <f32 as Unary<op::Sigmoid>>::eval(&x1, &op::Sigmoid);
        let d1 = Unary::jvp(&x1, &op::Sigmoid, &y1, &1.0);
        let s1 = <f32 as Unary<op::Softplus>>::eval(&x1, &op::Softplus);
        let ds1 = Unary::jvp(&x1, &op::Softplus, &s1, &1.0);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b.abs() + 1e-38;
        assert!(close(d.0[l], d1) && close(ds.0[l], ds1), "lane {l} at {x1}");
        assert!(close(y.0[l], y1) && close(s.0[l], s1), "lane {l} at {x1}");
    }
}

/// `powf(a, b)` at `a = 0`: the value 0 (b > 0), ∂/∂b = 0 (the limit of `a^b ln a`, not
/// `0 · −∞`), ∂/∂a = `b · 0^(b−1)`: 0 for b > 1, 1 for b = 1; in f64, f32 and on packets
/// with a zero lane among ordinary ones (whose derivatives stay those of f32).
///
/// Catches: the `a > 0` guard of ∂/∂b removed (NaN at 0, and on packets the NaN would
/// stay in that lane only if the select is per lane); ∂/∂a computed as `b · y / a`
/// (0/0 at a = 0).
#[test]
fn powf_at_a_zero_base() {
    use crate::lanes::Lanes;
    fn at<S: crate::scalar::Real + std::fmt::Debug>(a: S, b: S) -> (S, S, S) {
        let y = <S as Binary<op::Powf, S>>::eval(&a, &b);
        let da = Binary::<op::Powf, S>::jvp(&a, &b, &y, Some(&S::one()), None);
        let db = Binary::<op::Powf, S>::jvp(&a, &b, &y, None, Some(&S::one()));
        (y, da, db)
    }
    for (b, want_da) in [(1.0, 1.0), (2.0, 0.0), (2.5, 0.0), (3.0, 0.0)] {
        assert_eq!(at(0.0f64, b), (0.0, want_da, 0.0), "f64 b = {b}");
        assert_eq!(
            at(0.0f32, b as f32),
            (0.0, want_da as f32, 0.0),
            "f32 b = {b}"
        );
        // The gradient (vjp) agrees with the tangent.
        let y = <f64 as Binary<op::Powf, f64>>::eval(&0.0, &b);
        let (ga, gb) = Binary::<op::Powf, f64>::vjp(&0.0, &b, &y, 1.0, true, true);
        assert_eq!((ga, gb), (Some(want_da), Some(0.0)), "vjp b = {b}");
        // One-sided differences in a from 0⁺ and central ones in b agree.
        let h = 1e-6f64;
        let fd_a = h.powf(b) / h;
        assert!((fd_a - want_da).abs() < 1e-5, "fd ∂a {fd_a} b = {b}");
    }
    let a = Lanes::<8>([0.0, 0.5, 2.0, 0.0, 1.5, 3.0, 0.0, 0.25]);
    let b = Lanes::<8>([2.5, 1.5, 0.5, 1.0, 3.0, 2.0, 3.0, 2.5]);
    let (y, da, db) = at(a, b);
    for l in 0..8 {
        let (y1, da1, db1) = at(a.0[l], b.0[l]);
        assert!(da.0[l].is_finite() && db.0[l].is_finite(), "lane {l}");
        let close = |p: f32, q: f32| (p - q).abs() <= 1e-6 * q.abs().max(1.0);
        assert!(
            close(y.0[l], y1) && close(da.0[l], da1) && close(db.0[l], db1),
            "lane {l}"
        );
    }
}

/// Ties of `max`/`min` and the kinks of `abs`/`relu` at 0 (and −0) on packets: every
/// lane gives what f32 gives, value and both derivatives, and the documented
/// conventions hold: at a tie the derivative goes to `a`; `abs'(0) = relu'(0) = 0`;
/// `relu(−0) = abs(−0) = +0`.
///
/// Catches: a tie routed to `b` (or split) on packets only; a packet `relu`/`abs` whose
/// select treats −0 or 0 differently from the scalar rule (a nonzero derivative at 0).
#[test]
fn ties_and_kinks_on_packets_are_as_in_f32() {
    use crate::lanes::Lanes;
    type L8 = Lanes<8>;
    let a = Lanes::<8>([0.0, -0.0, 1.5, -2.0, 3.0, 0.0, -1.0, 2.0]);
    let b = Lanes::<8>([0.0, 0.0, 1.5, -2.0, 1.0, -0.0, 4.0, 2.0]);
    let one = L8::splat(1.0);
    fn both<Op>(a: L8, b: L8, one: L8) -> (L8, L8, L8)
    where
        L8: Binary<Op, L8, Out = L8>,
    {
        let y = <L8 as Binary<Op, L8>>::eval(&a, &b);
        let da = Binary::<Op, L8>::jvp(&a, &b, &y, Some(&one), None);
        let db = Binary::<Op, L8>::jvp(&a, &b, &y, None, Some(&one));
        (y, da, db)
    }
    fn both1<Op>(a: f32, b: f32) -> (f32, f32, f32)
    where
        f32: Binary<Op, f32, Out = f32>,
    {
        let y = <f32 as Binary<Op, f32>>::eval(&a, &b);
        let da = Binary::<Op, f32>::jvp(&a, &b, &y, Some(&1.0), None);
        let db = Binary::<Op, f32>::jvp(&a, &b, &y, None, Some(&1.0));
        (y, da, db)
    }
    let bits = |t: (f32, f32, f32)| (t.0.to_bits(), t.1.to_bits(), t.2.to_bits());
    let (ymax, damax, dbmax) = both::<op::Max>(a, b, one);
    let (ymin, damin, dbmin) = both::<op::Min>(a, b, one);
    for l in 0..8 {
        let (x, z) = (a.0[l], b.0[l]);
        let want_max = both1::<op::Max>(x, z);
        let want_min = both1::<op::Min>(x, z);
        assert_eq!(
            bits((ymax.0[l], damax.0[l], dbmax.0[l])),
            bits(want_max),
            "max lane {l}"
        );
        assert_eq!(
            bits((ymin.0[l], damin.0[l], dbmin.0[l])),
            bits(want_min),
            "min lane {l}"
        );
        if x == z {
            assert_eq!((want_max.1, want_max.2), (1.0, 0.0), "max tie at {x}");
            assert_eq!((want_min.1, want_min.2), (1.0, 0.0), "min tie at {x}");
        }
    }
    let x = Lanes::<8>([0.0, -0.0, 1e-45, -1e-45, 2.0, -2.0, 0.0, -0.0]);
    for (name, f, f1) in [
        (
            "relu",
            (|x: L8| {
                let y = <L8 as Unary<op::Relu>>::eval(&x, &op::Relu);
                (y, Unary::jvp(&x, &op::Relu, &y, &L8::splat(1.0)))
            }) as fn(L8) -> (L8, L8),
            (|x: f32| {
                let y = <f32 as Unary<op::Relu>>::eval(&x, &op::Relu);
                (y, Unary::jvp(&x, &op::Relu, &y, &1.0))
            }) as fn(f32) -> (f32, f32),
        ),
        (
            "abs",
            |x: L8| {
                let y = <L8 as Unary<op::Abs>>::eval(&x, &op::Abs);
                (y, Unary::jvp(&x, &op::Abs, &y, &L8::splat(1.0)))
            },
            |x: f32| {
                let y = <f32 as Unary<op::Abs>>::eval(&x, &op::Abs);
                (y, Unary::jvp(&x, &op::Abs, &y, &1.0))
            },
        ),
    ] {
        let (y, d) = f(x);
        for l in 0..8 {
            let (y1, d1) = f1(x.0[l]);
            assert_eq!(
                (y.0[l].to_bits(), d.0[l].to_bits()),
                (y1.to_bits(), d1.to_bits())
            );
            if x.0[l] == 0.0 {
                assert_eq!(
                    (y1.to_bits(), d1),
                    (0f32.to_bits(), 0.0),
                    "{name} at {}",
                    x.0[l]
                );
            }
        }
    }
}

/// The unfused softmax cross-entropy's tangent and gradient (per-example losses; in f32
/// its rows go through the 8-row block kernel where the CPU has AVX2) against
/// `d_r = Σ_c (p_rc − [c = label_r]) t_rc` written here in f64, for row counts below, at
/// and past multiples of eight and 1 to 17 classes: within 2e-6 of the sum of the
/// terms' magnitudes.
///
/// Catches: a block row reading another row's logits, label or tangent; the block
/// remainder skipped or done twice; a softmax normalized over the wrong axis.
#[test]
fn unfused_softmax_cross_entropy_blocks_match_independent_f64() {
    for (rows, cols) in [(21, 5), (16, 10), (8, 3), (9, 17), (7, 1), (24, 8)] {
        let mut rng = StdRng::seed_from_u64((rows * 31 + cols) as u64);
        let z = DMatrix::<f32>::from_fn(rows, cols, |_, _| rng.gen_range(-4.0f32..4.0));
        let t = DMatrix::<f32>::from_fn(rows, cols, |_, _| rng.gen_range(-1.0f32..1.0));
        let g = DVector::<f32>::from_fn(rows, |_, _| rng.gen_range(-1.0f32..1.0));
        let labels: Vec<i32> = (0..rows).map(|i| ((i * 7 + 3) % cols) as i32).collect();
        let sce = op::SoftmaxCrossEntropy::new(&labels);
        let losses = Unary::eval(&z, &sce);
        let dz = Unary::jvp(&z, &sce, &losses, &t);
        let gz = Unary::vjp(&z, &sce, &losses, g.clone());
        for r in 0..rows {
            let m = (0..cols).map(|c| z[(r, c)] as f64).fold(f64::MIN, f64::max);
            let e: Vec<f64> = (0..cols).map(|c| (z[(r, c)] as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            let p = |c: usize| e[c] / s - if c == labels[r] as usize { 1.0 } else { 0.0 };
            let loss = m + s.ln() - z[(r, labels[r] as usize)] as f64;
            assert!((losses[r] as f64 - loss).abs() <= 2e-6 * loss.abs().max(1.0));
            let want: f64 = (0..cols).map(|c| p(c) * t[(r, c)] as f64).sum();
            let scale: f64 = (0..cols).map(|c| (p(c) * t[(r, c)] as f64).abs()).sum();
            assert!(
                (dz[r] as f64 - want).abs() <= 2e-6 * scale.max(1e-30),
                "{rows}x{cols} row {r}: tangent {} vs {want}",
                dz[r]
            );
            for c in 0..cols {
                let want = p(c) * g[r] as f64;
                assert!(
                    (gz[(r, c)] as f64 - want).abs() <= 2e-6 * g[r].abs() as f64,
                    "{rows}x{cols} ({r}, {c}): gradient {} vs {want}",
                    gz[(r, c)]
                );
            }
        }
    }
}

// ---- slices and assembly ----

/// Rows and columns of matrices, segments of column and row vectors, the two
/// concatenations (matrices and vectors) and the row-major reshape: each against finite
/// differences and the adjoint identity. Mutation tried: `Rows`'s reverse rule writing
/// the cotangent at row 0 instead of at `start` fails the `rows` checks (at start 1).
#[test]
fn slices_concatenations_and_reshape() {
    let m = sample(DMatrix::zeros(5, 4), 40, &any);
    for (i, n) in [(0, 5), (1, 3), (4, 1), (2, 0)] {
        unary("rows", op::Rows(i, n), m.clone());
        unary("segment", op::Rows(i, n), m.column(0).into_owned());
    }
    for (j, n) in [(0, 4), (1, 2), (3, 1)] {
        unary("columns", op::Columns(j, n), m.clone());
        unary("row segment", op::Columns(j, n), m.row(0).into_owned());
    }
    let b = sample(DMatrix::zeros(5, 2), 41, &any);
    binary::<op::HConcat, _, _>("hconcat", m.clone(), b.clone());
    binary::<op::VConcat, _, _>("vconcat", m.clone(), b.transpose() * m.clone());
    binary::<op::VConcat, _, _>(
        "vconcat of vectors",
        m.column(1).into_owned(),
        b.column(0).into_owned(),
    );
    binary::<op::HConcat, _, _>(
        "hconcat of row vectors",
        m.row(1).into_owned(),
        b.row(0).into_owned(),
    );
    for (r, c) in [(2, 10), (10, 2), (1, 20), (20, 1), (5, 4)] {
        unary("reshape", op::Reshape(r, c), m.clone());
    }
}

/// `reshape` reads row-major (`jnp.reshape`), not nalgebra's column-major order.
#[test]
fn reshape_is_row_major() {
    let m = DMatrix::from_row_slice(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let r: DMatrix<f64> = Unary::eval(&m, &op::Reshape(3, 2));
    assert_eq!(
        r,
        DMatrix::from_row_slice(3, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    );
}

#[test]
#[should_panic(expected = "reshape of a 2x3 matrix (6 elements) to 4x2")]
fn reshape_to_another_size_panics() {
    let _: DMatrix<f64> = Unary::eval(&DMatrix::<f64>::zeros(2, 3), &op::Reshape(4, 2));
}

#[test]
#[should_panic(expected = "hconcat: 2x3 and 3x1 (the row counts differ)")]
fn hconcat_of_different_heights_panics() {
    let _: DMatrix<f64> =
        Binary::<op::HConcat, _>::eval(&DMatrix::<f64>::zeros(2, 3), &DMatrix::<f64>::zeros(3, 1));
}

// ---- selection ----

binary_test!(logaddexp, op::LogAddExp, [ss, mm, ms, sm]);
binary_test!(greater, op::Gt, [ss, mm, ms, sm]);
binary_test!(less_equal, op::Le, [ss, mm, ms, sm]);

#[test]
fn clip() {
    // Values in (-2, 2) against bounds (-0.5, 0.7): both sides of both kinks.
    each_value!(scalar, t => unary("clip", op::Clip(-0.5, 0.7), sample(t, 50, &any)));
}

/// `select(mask, a, b)` on every operand form (matrix∘matrix, matrix∘scalar,
/// scalar∘matrix, scalars), both operands varying: finite differences and the adjoint
/// identity. Mutation tried: the reverse rule giving the whole cotangent to both sides
/// fails every form.
#[test]
fn select_where() {
    use super::Where;
    fn check_where<M, A, B>(what: &str, m: M, a: A, b: B)
    where
        M: Where<A, B>,
        M::Out: Params<Scalar = f64>,
        A: Params<Scalar = f64>,
        B: Params<Scalar = f64>,
    {
        check(
            what,
            &Pair(a, b),
            |p| m.eval(&p.0, &p.1),
            |p, d| m.jvp(&p.0, &p.1, Some(&d.0), Some(&d.1)),
            |p, g| {
                let (da, db) = m.vjp(&p.0, &p.1, g.clone(), true, true);
                Pair(da.expect("a"), db.expect("b"))
            },
        );
    }
    let mask = DMatrix::from_fn(3, 4, |i, j| ((i + 2 * j) % 3 == 0) as u8 as f64);
    let a = sample(DMatrix::<f64>::zeros(3, 4), 51, &any);
    let b = sample(DMatrix::<f64>::zeros(3, 4), 52, &any);
    check_where("select mm", mask.clone(), a.clone(), b.clone());
    check_where("select ms", mask.clone(), a.clone(), 0.7);
    check_where("select sm", mask.clone(), -0.3, b.clone());
    check_where("select ss on", 1.0, 0.25, -2.0);
    check_where("select ss off", 0.0, 0.25, -2.0);
    let y: DMatrix<f64> = Where::eval(&mask, &a, &b);
    for i in 0..12 {
        assert_eq!(y[i], if mask[i] != 0.0 { a[i] } else { b[i] });
    }
}

/// A product whose result is large enough (≥ 4 MB) to be written into huge-page zeroed
/// memory equals the naive product, in `f32` and `f64`, plain and with a transposed
/// operand. Catches that path skipping the product or its rows and columns swapped
/// (tried: leaving out the `gemm_raw` call fails with every entry 0).
#[test]
fn large_product_results_match_the_naive_product() {
    let (m, k, n) = (2048, 3, 600);
    let a = sample(DMatrix::<f64>::zeros(m, k), 80, &any);
    let b = sample(DMatrix::<f64>::zeros(k, n), 81, &any);
    let dyn_ = nalgebra::Dyn;
    let want = naive_product(&a, &b);
    let bt = b.transpose();
    for fast in [
        product(View::of(&a), View::of(&b), dyn_(m), dyn_(n)),
        product(View::of(&a), View::of(&bt).t(), dyn_(m), dyn_(n)),
    ] {
        assert_close(&fast, &want, 1e-14);
    }
    let (a32, b32) = (a.map(|x| x as f32), b.map(|x| x as f32));
    let fast32 = product(View::of(&a32), View::of(&b32), dyn_(m), dyn_(n));
    let want32 = naive_product(&a32.map(|x| x as f64), &b32.map(|x| x as f64));
    assert_close(&fast32.map(|x| x as f64), &want32, 1e-6);
}

/// A large product written into a recycled buffer full of NaN equals the naive product:
/// the recycled contents are overwritten, never read. Catches the large path
/// accumulating into its buffer (tried: `gemm_raw(.., true)` there fails, every entry
/// NaN) and a buffer of the wrong length being used.
#[test]
fn large_product_into_a_recycled_buffer_ignores_its_contents() {
    let (m, k, n) = (2048, 3, 600);
    let a = sample(DMatrix::<f64>::zeros(m, k), 82, &any);
    let b = sample(DMatrix::<f64>::zeros(k, n), 83, &any);
    let dyn_ = nalgebra::Dyn;
    let want = naive_product(&a, &b);
    // Longer than the result (within 2×): it is taken and cut to length.
    crate::kernels::alloc::recycle(vec![f64::NAN; m * n + 1000]);
    let fast = product(View::of(&a), View::of(&b), dyn_(m), dyn_(n));
    assert_eq!(fast.shape(), (m, n));
    assert_close(&fast, &want, 1e-14);
}

/// `exp`, `tanh`, `sigmoid` and `gelu_tanh` on `f32` matrices (their vectorized fast
/// path) and every lane of a `Lanes<8>` packet give the same bits over a dense sweep of
/// [−90, 90] (the README's "bit for bit" promise for these), for the values and for
/// `gelu_tanh`'s derivative; the `f32` values of the first three are within 4 ulp of the
/// exact value in `f64` (`exp` and `tanh` 2–3 ulp as their polynomials, `sigmoid` one
/// division and one addition more). Where `exp` leaves the normal range (below −86.5 it
/// gives 0) only the bits are compared.
///
/// Catches: the matrix fast path computing another function than the packets (tried:
/// `sigmoid` as `1 / (1 + exp(x))`, which fails here), libm's `tanhf` on `f32` matrices
/// (rounds the other way for a few per cent of arguments), and a broken polynomial.
#[test]
fn f32_matrix_exp_tanh_sigmoid_gelu_are_the_packets_functions() {
    use crate::lanes::Lanes;
    use crate::scalar::Real;
    let n = 36_000usize;
    let xs: Vec<f32> = (0..n)
        .map(|i| -90.0 + 180.0 * i as f32 / n as f32)
        .collect();
    let m = DMatrix::from_column_slice(n / 8, 8, &xs);
    fn ulps(got: f32, exact: f64) -> f64 {
        let e = exact as f32;
        if e == 0.0 || !e.is_normal() {
            return 0.0;
        }
        let ulp = f32::from_bits(e.abs().to_bits() + 1) - e.abs();
        (got as f64 - exact).abs() / ulp as f64
    }
    type Packet = fn(Lanes<8>) -> Lanes<8>;
    type Case = (&'static str, DMatrix<f32>, Packet, Option<fn(f64) -> f64>);
    let ones = DMatrix::from_element(n / 8, 8, 1.0f32);
    let gm = Unary::eval(&m, &op::GeluTanh);
    let cases: [Case; 5] = [
        (
            "exp",
            Unary::eval(&m, &op::Exp),
            |x| Unary::eval(&x, &op::Exp),
            Some(f64::exp),
        ),
        (
            "tanh",
            Unary::eval(&m, &op::Tanh),
            |x| Unary::eval(&x, &op::Tanh),
            Some(f64::tanh),
        ),
        (
            "sigmoid",
            Unary::eval(&m, &op::Sigmoid),
            |x| Unary::eval(&x, &op::Sigmoid),
            Some(|x| 1.0 / (1.0 + (-x).exp())),
        ),
        (
            "gelu_tanh",
            gm.clone(),
            |x| Unary::eval(&x, &op::GeluTanh),
            None,
        ),
        (
            "gelu_tanh'",
            Unary::vjp(&m, &op::GeluTanh, &gm, ones),
            |x| {
                let y = Unary::eval(&x, &op::GeluTanh);
                Unary::vjp(&x, &op::GeluTanh, &y, Lanes::<8>::from_f64(1.0))
            },
            None,
        ),
    ];
    for (name, mat, packet, exact) in cases {
        let mut worst = 0.0f64;
        for (k, chunk) in xs.chunks_exact(8).enumerate() {
            let lanes = packet(Lanes::<8>::from_lanes(|l| chunk[l] as f64));
            for (l, &x) in chunk.iter().enumerate() {
                let v = mat.as_slice()[k * 8 + l];
                assert_eq!(
                    lanes.lane(l) as f32,
                    v,
                    "{name}({x}): lane {l} vs f32 matrix"
                );
                if let Some(exact) = exact {
                    if !(name == "exp" && x < -86.5) {
                        worst = worst.max(ulps(v, exact(x as f64)));
                    }
                }
            }
        }
        assert!(worst <= 4.0, "{name}: {worst} ulp from the exact value");
    }
}

/// The matrix product's in-place reverse rules (`vjp_acc`, `vjp_acc_a`, `vjp_acc_b`, what
/// `#[task]` emits) equal `vjp`'s cotangents added into the slots: into empty slots they
/// are `G·Bᵀ` and `Aᵀ·G`; into slots holding earlier contributions, the GEMM accumulates
/// onto them (compared with `earlier + vjp` within 1e-12, the sums' order differs).
///
/// Catches: an accumulating product that overwrites the slot (tried: `acc_b`'s
/// `product_acc` replaced by a fresh product, which fails here), or the two cotangents
/// swapped between the slots.
#[test]
fn product_in_place_reverse_rules_add_what_vjp_returns() {
    let a = DMatrix::from_fn(4, 3, |i, j| (i * 3 + j) as f64 * 0.25 - 1.0);
    let b = DMatrix::from_fn(3, 5, |i, j| (i * 5 + j) as f64 * 0.125 + 0.5);
    let out = Binary::<op::Mul, _>::eval(&a, &b);
    let g = DMatrix::from_fn(4, 5, |i, j| ((i + 2 * j) % 7) as f64 - 3.0);
    let (ga, gb) = Binary::<op::Mul, _>::vjp(&a, &b, &out, g.clone(), true, true);
    let (ga, gb) = (ga.unwrap(), gb.unwrap());
    let (ea, eb) = (a.map(|v| v * 3.0 + 1.0), b.map(|v| 2.0 - v));
    let close = |x: &DMatrix<f64>, y: &DMatrix<f64>| (x - y).amax() <= 1e-12;
    for held in [false, true] {
        let mut sa = held.then(|| ea.clone());
        let mut sb = held.then(|| eb.clone());
        Binary::<op::Mul, _>::vjp_acc(&a, &b, &out, g.clone(), &mut sa, &mut sb);
        let (wa, wb) = if held {
            (&ea + &ga, &eb + &gb)
        } else {
            (ga.clone(), gb.clone())
        };
        assert!(close(sa.as_ref().unwrap(), &wa) && close(sb.as_ref().unwrap(), &wb));
        let mut sa = held.then(|| ea.clone());
        Binary::<op::Mul, _>::vjp_acc_a(&a, &b, &out, g.clone(), &mut sa);
        assert!(close(sa.as_ref().unwrap(), &wa));
        let mut sb = held.then(|| eb.clone());
        Binary::<op::Mul, _>::vjp_acc_b(&a, &b, &out, g.clone(), &mut sb);
        assert!(close(sb.as_ref().unwrap(), &wb));
    }
}

/// `GeluTanhKeep` (what `#[task]` makes of `gelu_tanh(linear(..))`) is `GeluTanh` bit for
/// bit: the value, the tangent, and the cotangent whether it takes the kept derivative
/// (the first `vjp` after `eval`, same input and output) or computes it again (a second
/// `vjp`; another input of the same shape; no `eval` before), on `f32` (over the dense
/// sweep of [−90, 90] and NaN, ±∞, ±0), `f64` and lanes.
///
/// Catches: the kept derivative computed otherwise than `GeluTanh`'s (tried: `1 + cdf`
/// for `1 − cdf` in the `f32` scalar loop), and the kept derivative used for an input it was not computed from
/// (tried: no address check; fails on `other`).
#[test]
fn gelu_tanh_keep_is_gelu_tanh_bit_for_bit() {
    use crate::lanes::Lanes;
    use crate::scalar::Real;
    fn same<S: Real>(a: &DMatrix<S>, b: &DMatrix<S>) -> bool {
        a.shape() == b.shape()
            && a.iter()
                .zip(b.iter())
                .all(|(x, y)| (0..S::LANES).all(|i| x.lane(i).to_bits() == y.lane(i).to_bits()))
    }
    fn check<S: Real>(x: DMatrix<S>, other: DMatrix<S>, g: DMatrix<S>, g2: DMatrix<S>) {
        let keep = op::GeluTanhKeep::new();
        let y = Unary::eval(&x, &keep);
        let want = Unary::eval(&x, &op::GeluTanh);
        assert!(same(&y, &want), "value");
        let t = Unary::jvp(&x, &keep, &y, &g);
        assert!(
            same(&t, &Unary::jvp(&x, &op::GeluTanh, &want, &g)),
            "tangent"
        );
        // Another input of the same shape first: not the kept derivative's.
        let yo = Unary::eval(&other, &op::GeluTanh);
        let dg = Unary::vjp(&other, &keep, &yo, g.clone());
        let want_o = Unary::vjp(&other, &op::GeluTanh, &yo, g.clone());
        assert!(same(&dg, &want_o), "cotangent of another input");
        // Kept again, then taken by the first cotangent; the second computes it again.
        let y = Unary::eval(&x, &keep);
        for c in [g, g2] {
            let got = Unary::vjp(&x, &keep, &y, c.clone());
            assert!(
                same(&got, &Unary::vjp(&x, &op::GeluTanh, &y, c)),
                "cotangent"
            );
        }
        // No eval before.
        let fresh = op::GeluTanhKeep::new();
        let c = DMatrix::from_element(x.nrows(), x.ncols(), S::from_f64(0.5));
        let got = Unary::vjp(&x, &fresh, &y, c.clone());
        assert!(same(&got, &Unary::vjp(&x, &op::GeluTanh, &y, c)), "no eval");
    }
    let n = 36_000usize;
    let mut xs: Vec<f64> = (0..n)
        .map(|i| -90.0 + 180.0 * i as f64 / n as f64)
        .collect();
    xs.extend([
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        0.3,
    ]);
    let len = xs.len();
    let mat = |f: &dyn Fn(usize) -> f64| DMatrix::from_fn(len / 8, 8, |i, j| f(i + j * (len / 8)));
    let x = mat(&|i| xs[i]);
    let other = mat(&|i| xs[(i * 7 + 3) % len] * 0.5);
    let g = mat(&|i| ((i * 37) % 101) as f64 / 50.0 - 1.0);
    let g2 = mat(&|i| ((i * 13) % 17) as f64 - 8.0);
    let f32s = |m: &DMatrix<f64>| m.map(|v| v as f32);
    check::<f32>(f32s(&x), f32s(&other), f32s(&g), f32s(&g2));
    let small = |m: &DMatrix<f64>| m.rows(0, 64).into_owned();
    check::<f64>(small(&x), small(&other), small(&g), small(&g2));
    let lanes = |m: &DMatrix<f64>, s: f64| {
        small(m).map(|v| Lanes::<4>::from_lanes(|l| v * (1.0 + s * l as f64)))
    };
    check::<Lanes<4>>(
        lanes(&x, 0.1),
        lanes(&other, 0.2),
        lanes(&g, 0.0),
        lanes(&g2, 0.3),
    );
}
