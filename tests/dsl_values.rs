//! DSL losses against independent code: each loss below is written twice, once in the
//! DSL (`#[task]`, `#[differentiable]`) and once as a plain `f64` Rust closure. The
//! generated value must equal the closure's (to rounding), and the finite differences
//! that check the generated gradient and JVP are taken of the closure, not of the
//! generated primal. A lowering bug (`-=` lowered as `+=`, a misrouted `else if`, a
//! shadowed variable leaking out of a loop) changes the generated value and gradient
//! together, which `check_task`-style tests (the macro's primal against its own
//! derivatives) cannot see; these can.

use lopt::gradcheck::{check_gradient, GradCheck};
use lopt::prelude::*;
use rand::{Rng, SeedableRng};

fn rand_mat(r: usize, c: usize, seed: u64, scale: f64) -> DMatrix<f64> {
    let mut g = rand::rngs::StdRng::seed_from_u64(seed);
    DMatrix::from_fn(r, c, |_, _| g.gen_range(-1.0..1.0) * scale)
}

fn rand_vec(n: usize, seed: u64, scale: f64) -> DVector<f64> {
    rand_mat(n, 1, seed, scale).column(0).into_owned()
}

/// Checks the generated task `$name` at `$x` against the independent closure `$indep`:
/// the values agree to 1e-12 (relative), and the reverse-mode gradient and the JVP agree
/// with central differences of `$indep`.
macro_rules! check_against {
    ($name:ident, $x:expr, $indep:expr $(, $data:expr)*) => {{
        let x = $x;
        let indep = $indep;
        let (got, want) = ($name(&x $(, $data)*), indep(&x));
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{}: generated value {got} vs independent {want}",
            stringify!($name)
        );
        let report = check_gradient(
            &x,
            |p| indep(p),
            |p| $name::value_and_grad(p $(, $data)*),
            |p, t| $name::value_and_jvp(p, t $(, $data)*),
            &GradCheck::default(),
        );
        assert!(report.passed(), "{}: {}", stringify!($name), report);
    }};
}

// ---------- compound assignment, shadowing, nested loops ----------

/// `+=`, `-=`, `*=`, `/=` on scalars in nested loops, a variable shadowed inside the
/// loop body, and an outer variable shadowed in the loop (which must not leak out).
#[task]
fn compound<S: Real>(p: &DVector<S>, n: &usize) -> S {
    let mut acc = p[0] * 0.0;
    let y = p[0] * 1.0;
    for i in 0..*n {
        let x = p[i];
        let x = x * 2.0 - 0.5;
        let y = y + x;
        let mut prod = x + 3.0;
        for j in 0..i {
            prod *= cos(p[j]) + 2.0;
            prod /= 1.5 + square(p[j]);
        }
        acc += prod;
        acc -= 0.3 * y * y;
        acc /= 1.1;
    }
    acc + y * 10.0
}

fn compound_f64(p: &DVector<f64>, n: usize) -> f64 {
    let mut acc = 0.0;
    let y = p[0];
    for i in 0..n {
        let x = p[i] * 2.0 - 0.5;
        let yi = y + x;
        let mut prod = x + 3.0;
        for j in 0..i {
            prod *= p[j].cos() + 2.0;
            prod /= 1.5 + p[j] * p[j];
        }
        acc += prod;
        acc -= 0.3 * yi * yi;
        acc /= 1.1;
    }
    acc + y * 10.0
}

/// Catches: any compound operator lowered as another (`-=` as `+=`, `/=` as `*=`, ...,
/// in `compound_op` of `lopt-macros/src/ad/lower.rs`); a shadowing `let` in a loop body
/// that overwrites the outer binding; an inner loop's state carried wrongly.
#[test]
fn compound_assignment_and_shadowing_match_plain_rust() {
    let p = rand_vec(6, 1, 1.0);
    check_against!(compound, p, |p: &DVector<f64>| compound_f64(p, 6), &6usize);
}

// ---------- conditions: else-if chains, ||, &&, ! ----------

/// A five-arm `else if` chain whose conditions combine comparisons of differentiated
/// values with `||`, `&&` and `!` (lane masks) and a data `bool` (`!*flip`), and an `if`
/// statement without `else` updating with `-=`.
#[task]
fn branches<S: Real>(p: &DVector<S>, flip: &bool) -> S {
    let mut total = p[0] * 0.0;
    for i in 0..p.len() {
        let x = p[i];
        let y = if x < -1.0 || x > 1.0 {
            x * x
        } else if !(x > 0.0) && *flip {
            -x * 3.0
        } else if x > 0.5 {
            exp(x)
        } else if !*flip {
            sin(x) + 2.0
        } else {
            x * 0.25 - 1.0
        };
        total += y;
        if !(x < 0.2) || *flip {
            total -= x * 0.5;
        }
    }
    total
}

fn branches_f64(p: &DVector<f64>, flip: bool) -> f64 {
    let mut total = 0.0;
    for &x in p.iter() {
        let y = if !(-1.0..=1.0).contains(&x) {
            x * x
        } else if x <= 0.0 && flip {
            -x * 3.0
        } else if x > 0.5 {
            x.exp()
        } else if !flip {
            x.sin() + 2.0
        } else {
            x * 0.25 - 1.0
        };
        total += y;
        if x >= 0.2 || flip {
            total -= x * 0.5;
        }
    }
    total
}

/// Every arm is taken by some entry (for each `flip`), entries away from the kinks.
///
/// Catches: an `else if` arm routed to another arm's value; `||` lowered as `&&`; `!`
/// dropped or applied twice; the statement `if` without `else` applied unconditionally.
#[test]
fn else_if_chains_and_boolean_operators_match_plain_rust() {
    let p = DVector::from_vec(vec![-1.4, -0.6, -0.3, 0.1, 0.35, 0.7, 1.3, 0.9, -0.8, 0.15]);
    for flip in [true, false] {
        check_against!(
            branches,
            p.clone(),
            move |p: &DVector<f64>| branches_f64(p, flip),
            &flip
        );
    }
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

fn two(seed: u64) -> Two<f64> {
    Two {
        w1: rand_mat(4, 5, seed, 0.7),
        b1: rand_vec(5, seed + 1, 0.3),
        w2: rand_mat(5, 3, seed + 2, 0.7),
        b2: rand_vec(3, seed + 3, 0.3),
    }
}

#[task]
fn two_layers<S: Real>(p: &Two<S>, x: &DMatrix<f64>) -> S {
    let h = layer(&data(x), &p.w1, &p.b1);
    let o = layer(&h, &p.w2, &p.b2);
    mean(square(o)) + penalty(&p.w1, 0.01) + penalty(&p.w2, 0.02)
}

/// `x · w + b` with `b[j]` added to column `j` of every row, in plain f64.
fn affine(x: &DMatrix<f64>, w: &DMatrix<f64>, b: &DVector<f64>) -> DMatrix<f64> {
    let mut y = x * w;
    for mut row in y.row_iter_mut() {
        for (j, v) in row.iter_mut().enumerate() {
            *v += b[j];
        }
    }
    y
}

fn two_layers_f64(p: &Two<f64>, x: &DMatrix<f64>) -> f64 {
    let h = affine(x, &p.w1, &p.b1).map(f64::tanh);
    let o = affine(&h, &p.w2, &p.b2).map(f64::tanh);
    let sq = |m: &DMatrix<f64>| m.iter().map(|v| v * v).sum::<f64>();
    sq(&o) / o.len() as f64 + 0.01 * sq(&p.w1) + 0.02 * sq(&p.w2)
}

/// Catches: a helper's arguments bound in the wrong order; a helper's scalar argument
/// (`scale`) dropped or swapped between calls; the bias broadcast along the wrong axis.
#[test]
fn differentiable_helpers_match_plain_rust() {
    let x = rand_mat(6, 4, 11, 1.0);
    check_against!(two_layers, two(7), |p: &Two<f64>| two_layers_f64(p, &x), &x);
}

// ---------- fused compositions and method forms ----------

/// Per-row `logsumexp(z_r) − z_{r, label_r}`, in plain f64.
fn cross_entropy_f64(z: &DMatrix<f64>, labels: &[i32]) -> Vec<f64> {
    (0..z.nrows())
        .map(|r| {
            let m = z.row(r).max();
            let lse = m + z.row(r).iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            lse - z[(r, labels[r] as usize)]
        })
        .collect()
}

/// `relu(x w + b)` (fused), `mean(softmax_cross_entropy(..))` in the free and the
/// method form, `sum(square(a − b))`, `relu(a + b)` of two matrices and of scalars.
#[task]
fn fused<S: Real>(p: &Two<S>, x: &DMatrix<f64>, labels: &Vec<i32>) -> S {
    let h = relu(x * p.w1 + p.b1);
    let z = h * p.w2 + p.b2;
    let ce = mean(softmax_cross_entropy(z * 2.0, labels));
    let ce2 = (z * 0.5).softmax_cross_entropy(labels).mean();
    let r = sum(square(p.w1 - component_mul(p.w1, p.w1)));
    let m = mean(relu(p.w1 + p.w1 * -0.3 - 0.1));
    let s = (sum(p.b2) * 0.7 + 0.1).relu() + relu(sum(p.b1) - 10.0);
    ce + ce2 * 0.5 + r * 0.1 + m + s
}

fn fused_f64(p: &Two<f64>, x: &DMatrix<f64>, labels: &[i32]) -> f64 {
    let relu = |v: f64| v.max(0.0);
    let h = affine(x, &p.w1, &p.b1).map(relu);
    let z = affine(&h, &p.w2, &p.b2);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let ce = mean(&cross_entropy_f64(&(&z * 2.0), labels));
    let ce2 = mean(&cross_entropy_f64(&(&z * 0.5), labels));
    let r: f64 = p.w1.iter().map(|w| (w - w * w) * (w - w * w)).sum();
    let m = p.w1.iter().map(|&w| relu(0.7 * w - 0.1)).sum::<f64>() / p.w1.len() as f64;
    let s = relu(p.b2.sum() * 0.7 + 0.1) + relu(p.b1.sum() - 10.0);
    ce + ce2 * 0.5 + r * 0.1 + m + s
}

/// 11 examples (a block of eight and a remainder), 3 classes.
///
/// Catches: a fused rule whose value differs from the composition it replaces (a wrong
/// label column, the mean over classes instead of examples, `a − b` fused as `a + b`,
/// the relu of the wrong operand); the method form lowered to another primitive.
#[test]
fn fused_compositions_and_method_forms_match_plain_rust() {
    let x = rand_mat(11, 4, 21, 1.0);
    let labels: Vec<i32> = (0..11).map(|i| i * 2 % 3).collect();
    check_against!(
        fused,
        two(22),
        |p: &Two<f64>| fused_f64(p, &x, &labels),
        &x,
        &labels
    );
}

// ---------- every primitive, free and method forms ----------

#[derive(Params, Clone, Debug)]
struct Mix<S: Real> {
    a: DMatrix<S>,
    v: DVector<S>,
    s: S,
}

#[task]
fn primitives<S: Real>(p: &Mix<S>, d: &DMatrix<f64>) -> S {
    let a = p.a;
    let v = p.v;
    let s = p.s;
    let e1 = sum(exp(a * 0.3)) + sum(ln(square(a) + 1.0)) + sum(sqrt(square(a) + 0.5));
    let e2 =
        sum(sin(a)) + sum(cos(a)) + sum(abs(a)) + sum(powi(a, 3)) + sum(powf(square(a) + 1.0, s));
    let e3 = sum(relu(a)) + sum(sigmoid(a)) + sum(softplus(a)) + mean(tanh(a));
    let e4 = dot(v, v) + norm_squared(a) + sum(transpose(a) * 0.5) + max(s, 0.1) + min(s, 2.0);
    let e5 = sum(component_mul(a, d)) + sum(component_div(a, square(d) + 1.0)) + log_sum_exp(v);
    let e6 = a[(1, 2)] * v[3] - s / (s * s + 1.0) + (-s);
    let e7 = a.exp().sum() * 0.01 + v.dot(&v) + s.powi(2) + a.transpose().mean() + s.max(0.2);
    let e8 = (a * 0.5).tanh().sum() + (square(a) + 1.0).ln().mean() + a.abs().sum() * 0.1;
    e1 + e2 + e3 + e4 + e5 + e6 + e7 + e8
}

fn primitives_f64(p: &Mix<f64>, d: &DMatrix<f64>) -> f64 {
    let (a, v, s) = (&p.a, &p.v, p.s);
    let sum = |f: &dyn Fn(f64) -> f64| a.iter().map(|&x| f(x)).sum::<f64>();
    let n = a.len() as f64;
    let e1 =
        sum(&|x| (0.3 * x).exp()) + sum(&|x| (x * x + 1.0).ln()) + sum(&|x| (x * x + 0.5).sqrt());
    let e2 = sum(&f64::sin)
        + sum(&f64::cos)
        + sum(&f64::abs)
        + sum(&|x| x * x * x)
        + sum(&|x| (x * x + 1.0).powf(s));
    let e3 = sum(&|x| x.max(0.0))
        + sum(&|x| 1.0 / (1.0 + (-x).exp()))
        + sum(&|x| (1.0 + x.exp()).ln())
        + sum(&f64::tanh) / n;
    let vv: f64 = v.iter().map(|x| x * x).sum();
    let e4 = vv + sum(&|x| x * x) + 0.5 * a.sum() + s.max(0.1) + s.min(2.0);
    let e5 = a.iter().zip(d.iter()).map(|(x, y)| x * y).sum::<f64>()
        + a.iter()
            .zip(d.iter())
            .map(|(x, y)| x / (y * y + 1.0))
            .sum::<f64>()
        + v.iter().map(|x| x.exp()).sum::<f64>().ln();
    let e6 = a[(1, 2)] * v[3] - s / (s * s + 1.0) - s;
    let e7 = sum(&f64::exp) * 0.01 + vv + s * s + a.sum() / n + s.max(0.2);
    let e8 = sum(&|x| (0.5 * x).tanh()) + sum(&|x| (x * x + 1.0).ln()) / n + 0.1 * sum(&f64::abs);
    e1 + e2 + e3 + e4 + e5 + e6 + e7 + e8
}

/// Catches: a primitive (or its method form) lowered to another or with a wrong constant
/// (e.g. `sigmoid` as `tanh`, `softplus` without the `1 +`, `powf`'s operands swapped,
/// `transpose().mean()` as a sum, `min` as `max`).
#[test]
fn every_primitive_and_method_form_matches_plain_rust() {
    let a = rand_mat(4, 5, 12, 1.0).map(|x| if x.abs() < 0.1 { x + 0.3 } else { x });
    let p = Mix {
        a,
        v: rand_vec(5, 13, 1.0),
        s: 0.7,
    };
    let d = rand_mat(4, 5, 14, 1.0);
    check_against!(primitives, p, |p: &Mix<f64>| primitives_f64(p, &d), &d);
}

// ---------- a recurrence ----------

#[derive(Params, Clone, Debug)]
struct Rnn<S: Real> {
    w: DMatrix<S>,
    u: DMatrix<S>,
    h0: DVector<S>,
    out: DVector<S>,
}

/// `h ← tanh(W h + U x_t)` for 20 steps, read out as `(out · h)²`.
#[task]
fn rnn_loss<S: Real>(p: &Rnn<S>, xs: &DMatrix<f64>) -> S {
    let mut h = p.h0.clone();
    for t in 0..xs.ncols() {
        let x = xs.column(t).into_owned();
        h = tanh(p.w * h + p.u * x);
    }
    let y = dot(p.out, h);
    y * y
}

/// Catches: the loop state not carried (each step from `h0`), the operands of a product
/// swapped, the readout taken before the last step.
#[test]
fn recurrence_matches_plain_rust() {
    let (n, m, steps) = (5, 3, 20);
    let p = Rnn {
        w: rand_mat(n, n, 1, 0.5),
        u: rand_mat(n, m, 2, 0.8),
        h0: rand_vec(n, 3, 0.5),
        out: rand_vec(n, 4, 1.0),
    };
    let xs = rand_mat(m, steps, 5, 1.0);
    let indep = |p: &Rnn<f64>| {
        let mut h = p.h0.clone();
        for t in 0..steps {
            h = (&p.w * &h + &p.u * xs.column(t)).map(f64::tanh);
        }
        let y = p.out.dot(&h);
        y * y
    };
    check_against!(rnn_loss, p, indep, &xs);
}

// ---------- values moved out of branches and slots ----------

/// The value of an `if` chain of matrices (each branch's value moved into it, and out of
/// it as the result), a branch whose value is read twice (`s`, copied), a `let mut`
/// matrix read inside a loop and reassigned there, a value defined before the loop and
/// read once inside it (`base`: copied each time), a `let mut` read once, inside the
/// loop (`gain`: copied each time), a value read by `stop_gradient` after it was stored
/// (`t`: copied), and the final read of the loop's slot (moved).
#[differentiable]
fn pick<S: Real>(z: &DMatrix<S>, which: usize, n: usize) -> DMatrix<S> {
    let y = if which == 0 {
        tanh(z)
    } else if which == 1 {
        let s = sigmoid(z);
        component_mul(s, s) + s
    } else {
        relu(z) + z * 0.5
    };
    let base = z * 0.5;
    let mut gain = sigmoid(z);
    let mut acc = y;
    for k in 0..n {
        let t = component_mul(acc, z) * 0.5;
        acc = t;
        let held = stop_gradient(t) * 0.25 + component_mul(y, gain);
        if k == 1 {
            acc = base;
        }
        acc = acc + held;
    }
    acc
}

#[task]
fn picked<S: Real>(z: &DMatrix<S>, which: &usize) -> S {
    let a = pick(z, *which, 3);
    let b = pick(&a, (*which + 1) % 3, 1);
    sum(square(b)) * 0.5
}

/// `pick`'s value in plain f64, with `stop_gradient(t)` replaced by `sg(t)` (the test
/// holds it at its value at the point checked, the surrogate the gradient follows).
fn pick_f64(
    z: &DMatrix<f64>,
    which: usize,
    n: usize,
    sg: &mut dyn FnMut(&DMatrix<f64>) -> DMatrix<f64>,
) -> DMatrix<f64> {
    let y = match which {
        0 => z.map(f64::tanh),
        1 => z.map(|x| {
            let s = 1.0 / (1.0 + (-x).exp());
            s * s + s
        }),
        _ => z.map(|x| x.max(0.0) + 0.5 * x),
    };
    let gain = z.map(|x| 1.0 / (1.0 + (-x).exp()));
    let mut acc = y.clone();
    for k in 0..n {
        let t = acc.component_mul(z) * 0.5;
        let held = sg(&t) * 0.25 + y.component_mul(&gain);
        acc = if k == 1 { z * 0.5 } else { t };
        acc += held;
    }
    acc
}

/// Catches a value moved where it was still needed or copied from the wrong variable:
/// the branch values of a matrix `if`, a slot read in a loop, a slot's final read, a
/// value also read by `stop_gradient`. Mutations tried, each makes the generated code
/// fail to build (a value used after its move), which fails this test: moving into a
/// slot a value defined outside the block (the block check dropped); moving a slot's
/// one read wherever the slot is declared; not counting `stop_gradient`'s copy as a read.
#[test]
fn values_moved_out_of_branches_and_slots_match_plain_rust() {
    for which in 0..3 {
        let z0 = rand_mat(3, 4, 40 + which as u64, 0.9);
        // stop_gradient(t) is a constant for the derivatives: fix each call's value at z0.
        let mut frozen = Vec::new();
        let mut record = |t: &DMatrix<f64>| {
            frozen.push(t.clone());
            t.clone()
        };
        let a0 = pick_f64(&z0, which, 3, &mut record);
        let _ = pick_f64(&a0, (which + 1) % 3, 1, &mut record);
        let indep = |z: &DMatrix<f64>| {
            let mut k = 0;
            let mut held = |_: &DMatrix<f64>| {
                k += 1;
                frozen[k - 1].clone()
            };
            let a = pick_f64(z, which, 3, &mut held);
            let b = pick_f64(&a, (which + 1) % 3, 1, &mut held);
            0.5 * b.iter().map(|v| v * v).sum::<f64>()
        };
        check_against!(picked, z0.clone(), indep, &which);
    }
}

// ---------- #[task_family]: configuration fields, data and the batch ----------

/// A configuration read by the loss: a target, a scale and a flag.
#[derive(Params, Clone, Debug)]
struct FamCfg<S: Real> {
    target: DVector<S>,
    scale: S,
    #[params(skip)]
    squared: bool,
}

/// `scale · Σ (p − target)² · batch` (or with `|·|` for `squared = false`), plus a
/// penalty on the data-dependent part `x · p`, through `#[task_family]`.
struct Fam {
    x: DMatrix<f32>,
}

#[task_family]
impl TaskFamily for Fam {
    type Cfg<S: Real> = FamCfg<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = f32;
    fn sample(&self, key: Key) -> FamCfg<f32> {
        FamCfg {
            target: DVector::from_vec(key.normal_vec(4)),
            scale: 0.5,
            squared: true,
        }
    }
    fn init<S: Real>(&self, _cfg: &FamCfg<S>, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(4))
    }
    fn loss<S: Real>(&self, p: &DVector<S>, cfg: &FamCfg<S>, _key: S::Key, b: &f32) -> S {
        let d = p - cfg.target;
        let core = if cfg.squared {
            sum(square(d))
        } else {
            sum(abs(d))
        };
        let y = self.x * p;
        let mut pen = mean(square(y));
        pen -= 0.1 * sum(y);
        cfg.scale * core * b + pen
    }
}

/// Catches: a configuration field or the batch read wrongly by the generated family
/// (the scale applied twice, the batch ignored, the data product transposed), the skipped
/// `bool` field's branch misrouted, `-=` on a data-dependent value lowered wrongly.
#[test]
fn task_family_loss_matches_plain_rust() {
    let x = rand_mat(5, 4, 60, 1.0).map(|v| v as f32);
    let family = Fam { x: x.clone() };
    let target = rand_vec(4, 61, 1.0);
    for squared in [true, false] {
        let cfg = FamCfg {
            target: target.clone(),
            scale: 0.7,
            squared,
        };
        let p = target.map(|t| t + 0.5) + rand_vec(4, 62, 0.3);
        let xf = x.map(|v| v as f64);
        let indep = |p: &DVector<f64>| {
            let core: f64 = p
                .iter()
                .zip(target.iter())
                .map(|(a, t)| {
                    if squared {
                        (a - t) * (a - t)
                    } else {
                        (a - t).abs()
                    }
                })
                .sum();
            let y = &xf * p;
            let pen = y.iter().map(|v| v * v).sum::<f64>() / y.len() as f64 - 0.1 * y.sum();
            0.7 * core * 1.5 + pen
        };
        let key = Key::new(0);
        let got = family.loss::<f64>(&p, &cfg, key, &1.5);
        let want = indep(&p);
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        let report = check_gradient(
            &p,
            indep,
            |p| family.value_and_grad::<f64>(p, &cfg, key, &1.5),
            |p, t| family.value_and_jvp::<f64>(p, t, &cfg, key, &1.5),
            &GradCheck::default(),
        );
        assert!(report.passed(), "squared = {squared}: {report}");
    }
}
