//! `#[task]`, `#[differentiable]` and `#[task_family]`: every language construct of the DSL,
//! gradient-checked in f64 against central finite differences and between the two modes,
//! and batched (SIMD-lane) runs compared with serial ones.

use lopt::gradcheck::{check_gradient, GradCheck};
use lopt::prelude::*;
use rand::{Rng, SeedableRng};

fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn rand_mat(r: usize, c: usize, seed: u64, scale: f64) -> DMatrix<f64> {
    let mut g = rng(seed);
    DMatrix::from_fn(r, c, |_, _| g.gen_range(-1.0..1.0) * scale)
}

/// Checks a free-function task (generated `name`, `name::value_and_grad`,
/// `name::value_and_jvp`) at `x`.
macro_rules! check {
    ($name:ident, $x:expr, $($data:expr),*) => {{
        let x = $x;
        let report = check_gradient(
            &x,
            |p| $name(p, $($data),*),
            |p| $name::value_and_grad(p, $($data),*),
            |p, t| $name::value_and_jvp(p, t, $($data),*),
            &GradCheck::default(),
        );
        assert!(report.passed(), "{}", report);
        report
    }};
}

// ---------- loops carrying state ----------

#[derive(Params, Clone, Debug)]
struct Rnn<S: Real> {
    w: DMatrix<S>,
    u: DMatrix<S>,
    h0: DVector<S>,
    out: DVector<S>,
}

/// A 50-step recurrence h ← tanh(W h + U x_t), read out at the end.
#[task]
fn rnn_loss<S: Real>(p: &Rnn<S>, xs: &DMatrix<f64>, steps: &usize) -> S {
    let mut h = p.h0.clone();
    for t in 0..*steps {
        let x = xs.column(t).into_owned();
        h = tanh(p.w * h + p.u * x);
    }
    let y = dot(p.out, h);
    y * y
}

#[test]
fn fifty_step_recurrence() {
    let (n, m, steps) = (6, 3, 50);
    let p = Rnn {
        w: rand_mat(n, n, 1, 0.5),
        u: rand_mat(n, m, 2, 0.8),
        h0: rand_mat(n, 1, 3, 0.5).column(0).into_owned(),
        out: rand_mat(n, 1, 4, 1.0).column(0).into_owned(),
    };
    let xs = rand_mat(m, steps, 5, 1.0);
    let r = check!(rnn_loss, p.clone(), &xs, &steps);
    // Every element was compared, plus the JVP along random tangents.
    assert!(r.comparisons.len() > p.num_elements());
}

/// Nested loops with a scalar accumulator (`+=`, `*=`) and indexing.
#[task]
fn nested_loops<S: Real>(p: &DVector<S>, n: &usize) -> S {
    let mut acc = p[0] * 0.0;
    for i in 0..*n {
        let mut prod = p[i] + 1.0;
        for j in 0..i {
            prod *= sin(p[j]) + 2.0;
        }
        acc += prod / (1.0 + square(p[i]));
        acc -= 0.1 * p[i];
    }
    acc
}

#[test]
fn nested_loops_with_accumulators() {
    let p = rand_mat(7, 1, 6, 1.0).column(0).into_owned();
    check!(nested_loops, p, &7usize);
}

// ---------- if / else ----------

/// A piecewise function of the parameters (value conditions), `if` as a value, `else if`,
/// and a condition on data.
#[task]
fn piecewise<S: Real>(p: &DVector<S>, flip: &bool) -> S {
    let mut total = p[0] * 0.0;
    for i in 0..p.len() {
        let x = p[i];
        let y = if x > 0.5 {
            x * x
        } else if x < -0.5 {
            -x * 3.0
        } else {
            exp(x)
        };
        total += y;
        if x > 0.0 && *flip {
            total = total * 1.5;
        }
    }
    total
}

#[test]
fn piecewise_functions_away_from_kinks() {
    // Entries kept away from the kinks at -0.5, 0, 0.5.
    let p = DVector::from_vec(vec![0.9, -0.8, 0.2, -0.3, 1.4, 0.7, -1.2]);
    check!(piecewise, p.clone(), &true);
    check!(piecewise, p, &false);
}

// ---------- #[differentiable] helpers ----------

#[differentiable]
fn layer<S: Real>(x: &DMatrix<S>, w: &DMatrix<S>, b: &DVector<S>) -> DMatrix<S> {
    tanh(x * w + b)
}

#[differentiable]
fn penalty<S: Real>(w: &DMatrix<S>, scale: f64) -> S {
    let s = sum(square(w));
    s * scale
}

#[derive(Params, Clone, Debug)]
struct Two<S: Real> {
    w1: DMatrix<S>,
    b1: DVector<S>,
    w2: DMatrix<S>,
    b2: DVector<S>,
}

#[task]
fn two_layers<S: Real>(p: &Two<S>, x: &DMatrix<f64>) -> S {
    let h = layer(&data(x), &p.w1, &p.b1);
    let o = layer(&h, &p.w2, &p.b2);
    mean(square(o)) + penalty(&p.w1, 0.01) + penalty(&p.w2, 0.02)
}

#[test]
fn loss_calling_two_differentiable_helpers() {
    let p = Two {
        w1: rand_mat(4, 5, 7, 0.7),
        b1: rand_mat(5, 1, 8, 0.3).column(0).into_owned(),
        w2: rand_mat(5, 3, 9, 0.7),
        b2: rand_mat(3, 1, 10, 0.3).column(0).into_owned(),
    };
    let x = rand_mat(6, 4, 11, 1.0);
    check!(two_layers, p, &x);
}

// ---------- every primitive through the macro ----------

#[derive(Params, Clone, Debug)]
struct Mix<S: Real> {
    a: DMatrix<S>,
    v: DVector<S>,
    s: S,
}

#[task]
fn all_primitives<S: Real>(p: &Mix<S>, labels: &Vec<i32>, d: &DMatrix<f64>) -> S {
    let a = p.a;
    let v = p.v;
    let s = p.s;
    let e1 = sum(exp(a * 0.3)) + sum(ln(square(a) + 1.0)) + sum(sqrt(square(a) + 0.5));
    let e2 =
        sum(sin(a)) + sum(cos(a)) + sum(abs(a)) + sum(powi(a, 3)) + sum(powf(square(a) + 1.0, s));
    let e3 = sum(relu(a)) + sum(sigmoid(a)) + sum(softplus(a)) + sum(gelu(a)) + mean(tanh(a));
    let e4 = dot(v, v) + norm_squared(a) + sum(transpose(a) * 0.5) + max(s, 0.1) + min(s, 2.0);
    let e5 = sum(component_mul(a, d)) + sum(component_div(a, square(d) + 1.0)) + log_sum_exp(v);
    let e6 = sum(log_softmax(a)) + mean(softmax_cross_entropy(a, labels));
    let e7 = a[(1, 2)] * v[3] - s / (s * s + 1.0) + (-s);
    // Method forms of the same primitives.
    let e8 = a.exp().sum() * 0.01 + v.dot(&v) + s.powi(2) + a.transpose().mean() + s.max(0.2);
    e1 + e2 + e3 + e4 + e5 + e6 + e7 + e8
}

#[test]
fn every_primitive_in_one_loss() {
    let p = Mix {
        a: rand_mat(4, 5, 12, 1.0),
        v: rand_mat(5, 1, 13, 1.0).column(0).into_owned(),
        s: 0.7,
    };
    // Keep |a| away from 0 (relu, abs kinks).
    let p = Mix {
        a: p.a.map(|x| if x.abs() < 0.1 { x + 0.3 } else { x }),
        ..p
    };
    let labels = vec![0, 4, 2, 1];
    let d = rand_mat(4, 5, 14, 1.0);
    check!(all_primitives, p, &labels, &d);
}

// ---------- mean(softmax_cross_entropy(..)), fused into one rule ----------

#[derive(Params, Clone, Debug)]
struct Logits<S: Real> {
    z: DMatrix<S>,
}

#[task]
fn ce_fused<S: Real>(p: &Logits<S>, labels: &Vec<i32>) -> S {
    mean(softmax_cross_entropy(p.z * 2.0, labels))
}

#[task]
fn ce_method<S: Real>(p: &Logits<S>, labels: &Vec<i32>) -> S {
    (p.z * 2.0).softmax_cross_entropy(labels).mean()
}

/// The losses bound to a name first: not fused.
#[task]
fn ce_unfused<S: Real>(p: &Logits<S>, labels: &Vec<i32>) -> S {
    let losses = softmax_cross_entropy(p.z * 2.0, labels);
    mean(losses)
}

#[test]
fn fused_mean_cross_entropy_matches_the_unfused_loss() {
    // 21 examples: two blocks of eight and a remainder; 4 classes.
    let p = Logits {
        z: rand_mat(21, 4, 31, 2.0),
    };
    let labels: Vec<i32> = (0..21).map(|i| i * 3 % 4).collect();
    check!(ce_fused, p.clone(), &labels);
    check!(ce_method, p.clone(), &labels);
    check!(ce_unfused, p.clone(), &labels);
    let t = Logits {
        z: rand_mat(21, 4, 32, 1.0),
    };
    let (v, g) = ce_unfused::value_and_grad(&p, &labels);
    let (_, d) = ce_unfused::value_and_jvp(&p, &t, &labels);
    for (vf, gf, df) in [
        (
            ce_fused::value_and_grad(&p, &labels),
            ce_fused::value_and_jvp(&p, &t, &labels).1,
        ),
        (
            ce_method::value_and_grad(&p, &labels),
            ce_method::value_and_jvp(&p, &t, &labels).1,
        ),
    ]
    .map(|((v, g), d)| (v, g, d))
    {
        assert!(
            (vf - v).abs() < 1e-13 && (df - d).abs() < 1e-13,
            "{vf} {v} {df} {d}"
        );
        assert!((&gf.z - &g.z).amax() < 1e-13);
    }
    // In f32, as the benchmark and the image-MLP tasks run it.
    let p32 = Logits {
        z: p.z.map(|x| x as f32),
    };
    let (v32, g32) = ce_fused::value_and_grad(&p32, &labels);
    assert!((v32 as f64 - v).abs() < 1e-5);
    assert!(g32
        .z
        .iter()
        .zip(g.z.iter())
        .all(|(&a, &b)| (a as f64 - b).abs() < 1e-6));
}

// ---------- impl Task and the generated trait methods ----------

struct Quad {
    target: DVector<f32>,
}

#[task]
impl Task for Quad {
    type Params<S: Real> = DVector<S>;
    type Batch = f32;
    fn init<S: Real>(&self, key: Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(self.target.len()))
    }
    fn loss<S: Real>(&self, params: &DVector<S>, _key: S::Key, batch: &f32) -> S {
        sum(square(params - self.target)) * batch
    }
}

#[test]
fn impl_task_generates_gradient_jvp_and_cast() {
    let task = Quad {
        target: DVector::from_vec(vec![0.5, -1.0, 2.0]),
    };
    let p32 = task.init::<f32>(Key::new(3));
    let p64: DVector<f64> = task.cast_params::<f32, f64>(&p32);
    let r = lopt::gradcheck::check_task(&task, &p64, Key::new(0), &1.5, &GradCheck::default());
    assert!(r.passed(), "{r}");
    // The closed form: 2 * 1.5 * (p - t).
    let (_, g) = task.value_and_grad(&p64, Key::new(0), &1.5);
    for i in 0..3 {
        let expect = 3.0 * (p64[i] - task.target[i] as f64);
        assert!((g[i] - expect).abs() < 1e-12);
    }
}

// ---------- lanes: batched runs of the same code ----------

/// A loss whose branch depends on the parameters: lanes disagree.
#[task]
fn branchy<S: Real>(p: &DVector<S>, c: &DVector<f32>) -> S {
    let mut total = p[0] * 0.0;
    for i in 0..p.len() {
        let x = p[i] - c[i];
        let y = if x > 0.0 {
            x * x * 2.0
        } else {
            sin(x) + 0.5 * x
        };
        total += y;
        if c[i] > 0.0 {
            total += x * 0.25;
        }
    }
    total
}

#[test]
fn lanes_that_disagree_each_get_their_branch() {
    const W: usize = 8;
    let n = 5;
    let mut g = rng(20);
    let c = DVector::from_fn(n, |_, _| g.gen_range(-1.0f32..1.0));
    let insts: Vec<DVector<f32>> = (0..W)
        .map(|_| DVector::from_fn(n, |_, _| g.gen_range(-1.5f32..1.5)))
        .collect();
    // Pack lane by lane.
    let packed = DVector::<Lanes<W>>::from_fn(n, |i, _| Lanes::from_lanes(|l| insts[l][i] as f64));
    let tangent =
        DVector::<Lanes<W>>::from_fn(n, |i, _| Lanes::from_lanes(|l| (i + l) as f64 * 0.1 - 0.3));
    let (v, gr) = branchy::value_and_grad(&packed, &c);
    let (v2, jv) = branchy::value_and_jvp(&packed, &tangent, &c);
    let mut mixed = false;
    for (l, p) in insts.iter().enumerate() {
        let (vs, gs) = branchy::value_and_grad(p, &c);
        let t = DVector::from_fn(n, |i, _| tangent[i].0[l]);
        let (_, js) = branchy::value_and_jvp(p, &t, &c);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0);
        assert!(close(v.0[l], vs) && close(v2.0[l], vs), "value lane {l}");
        assert!(close(jv.0[l], js), "jvp lane {l}: {} vs {}", jv.0[l], js);
        for i in 0..n {
            assert!(close(gr[i].0[l], gs[i]), "grad lane {l} elem {i}");
        }
        mixed |= (p[0] - c[0] > 0.0) != (insts[0][0] - c[0] > 0.0);
    }
    assert!(mixed, "the test data must make lanes disagree");
}

// ---------- stop_gradient ----------

/// f(x) = x² + (3x − stop_gradient(3x)): value x², gradient 2x + 3.
#[task]
fn with_stop_gradient<S: Real>(x: &S, _data: &()) -> S {
    let y = x * 3.0;
    x * x + (y - stop_gradient(y))
}

#[test]
fn stop_gradient_has_the_value_and_no_derivative() {
    let (v, g) = with_stop_gradient::value_and_grad(&2.0f64, &());
    assert_eq!((v, g), (4.0, 7.0));
    let (_, d) = with_stop_gradient::value_and_jvp(&2.0f64, &1.0, &());
    assert_eq!(d, 7.0);
}

// ---------- the whole parameters and a field of them in one loss ----------

#[differentiable]
fn first_layer_energy<S: Real>(p: &Two<S>) -> S {
    sum(square(p.w1)) + sum(p.b2)
}

#[task]
fn whole_and_field<S: Real>(p: &Two<S>, x: &DMatrix<f64>) -> S {
    let h = layer(&data(x), &p.w1, &p.b1);
    mean(h) + first_layer_energy(p) * 0.5
}

#[test]
fn gradients_of_overlapping_reads_add_up() {
    let p = Two {
        w1: rand_mat(4, 5, 30, 0.7),
        b1: rand_mat(5, 1, 31, 0.3).column(0).into_owned(),
        w2: rand_mat(5, 3, 32, 0.7),
        b2: rand_mat(3, 1, 33, 0.3).column(0).into_owned(),
    };
    let x = rand_mat(6, 4, 34, 1.0);
    check!(whole_and_field, p, &x);
}

// ---------- fields the loss never reads, or reads without a gradient ----------

#[derive(Params, Clone, Debug)]
struct Partly<S: Real> {
    inner: Two<S>,
    used: DVector<S>,
    unread: DMatrix<S>,
    frozen: DVector<S>,
    #[params(skip)]
    tag: String,
}

/// Reads `used`, one nested field (`inner.w2`) and `frozen` through `stop_gradient` only.
#[task]
fn partly<S: Real>(p: &Partly<S>, _data: &()) -> S {
    sum(square(p.used)) + sum(p.inner.w2) * sum(stop_gradient(p.frozen))
}

#[test]
fn unread_and_gradient_free_fields_get_zeros_of_their_shape() {
    let p = Partly {
        inner: Two {
            w1: rand_mat(4, 5, 40, 0.7),
            b1: rand_mat(5, 1, 41, 0.3).column(0).into_owned(),
            w2: rand_mat(5, 3, 42, 0.7),
            b2: rand_mat(3, 1, 43, 0.3).column(0).into_owned(),
        },
        used: rand_mat(3, 1, 44, 1.0).column(0).into_owned(),
        unread: rand_mat(2, 6, 45, 1.0),
        frozen: rand_mat(4, 1, 46, 1.0).column(0).into_owned(),
        tag: "kept".into(),
    };
    // (No finite differences: they would see through `stop_gradient`.)
    let (v, g) = partly::value_and_grad(&p, &());
    assert_eq!(v, partly(&p, &()));
    // d/d used = 2 used; d/d w2 = Σ frozen everywhere; the rest zeros of the right shape.
    assert_eq!(g.used, &p.used * 2.0);
    let sf: f64 = p.frozen.sum();
    assert_eq!(g.inner.w2, DMatrix::from_element(5, 3, sf));
    assert_eq!(g.inner.w1, DMatrix::zeros(4, 5));
    assert_eq!(g.inner.b1, DVector::zeros(5));
    assert_eq!(g.inner.b2, DVector::zeros(3));
    assert_eq!(g.unread, DMatrix::zeros(2, 6));
    assert_eq!(g.frozen, DVector::zeros(4));
    assert_eq!(g.tag, "kept");
    assert!(g.same_shape(&p));
}

// ---------- relu(a + b): one fused rule ----------

/// `relu(x w + b)` (fused), `(s + t).relu()` on scalars and `relu(a + b)` of two
/// matrices, in both the free-function and the method form.
#[task]
fn fused_relu<S: Real>(p: &Two<S>, x: &DMatrix<f64>) -> S {
    let h = relu(x * p.w1 + p.b1);
    let o = (h * p.w2 + p.b2).relu();
    let s = (sum(o) * 0.1 + 0.3).relu() + relu(sum(p.b2) - 10.0);
    let m = relu(p.w1 + p.w1 * 0.5);
    s + mean(m)
}

#[test]
fn relu_of_a_sum_matches_finite_differences() {
    let p = Two {
        w1: rand_mat(4, 5, 50, 0.7),
        b1: rand_mat(5, 1, 51, 0.3).column(0).into_owned(),
        w2: rand_mat(5, 3, 52, 0.7),
        b2: rand_mat(3, 1, 53, 0.3).column(0).into_owned(),
    };
    let x = rand_mat(6, 4, 54, 1.0);
    check!(fused_relu, p, &x);
}
