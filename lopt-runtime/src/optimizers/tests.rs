//! Every optimizer against a plain per-element f64 re-implementation of its formula, on a
//! nested tree (Vec + DMatrix + bare scalar) in f64 and f32.

use nalgebra::DMatrix;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::error::Error;
use crate::scalar::Real;

// ---------------------------------------------------------------- a nested test tree

/// Inner node: a matrix and a bare scalar.
#[derive(Debug, Clone, PartialEq)]
struct Layer<S: Real + nalgebra::Scalar> {
    w: DMatrix<S>,
    b: S,
}

/// Root: a vector, then a nested layer (3 leaves in all).
#[derive(Debug, Clone, PartialEq)]
struct Mix<S: Real + nalgebra::Scalar> {
    a: Vec<S>,
    layer: Layer<S>,
}

impl<S: Real + nalgebra::Scalar> Params for Layer<S> {
    type Scalar = S;
    fn num_leaves(&self) -> usize {
        2
    }
    fn leaf(&self, i: usize) -> &[S] {
        match i {
            0 => self.w.as_slice(),
            _ => std::slice::from_ref(&self.b),
        }
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [S] {
        match i {
            0 => self.w.as_mut_slice(),
            _ => std::slice::from_mut(&mut self.b),
        }
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        out.push_str(if i == 0 { "w" } else { "b" });
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        match i {
            0 => vec![self.w.nrows(), self.w.ncols()],
            _ => vec![],
        }
    }
}

impl<S: Real + nalgebra::Scalar> Params for Mix<S> {
    type Scalar = S;
    fn num_leaves(&self) -> usize {
        1 + self.layer.num_leaves()
    }
    fn leaf(&self, i: usize) -> &[S] {
        if i == 0 {
            &self.a
        } else {
            self.layer.leaf(i - 1)
        }
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [S] {
        if i == 0 {
            &mut self.a
        } else {
            self.layer.leaf_mut(i - 1)
        }
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        if i == 0 {
            out.push('a');
        } else {
            out.push_str("layer.");
            self.layer.write_leaf_name(i - 1, out);
        }
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        if i == 0 {
            vec![self.a.len()]
        } else {
            self.layer.leaf_shape(i - 1)
        }
    }
}

/// A tree whose values are exact in f32, so the f32 and f64 runs see the same inputs.
fn mix_from(mut f: impl FnMut() -> f32) -> Mix<f64> {
    let a = (0..4).map(|_| f() as f64).collect();
    let w = DMatrix::from_fn(2, 3, |_, _| f() as f64);
    let b = f() as f64;
    Mix {
        a,
        layer: Layer { w, b },
    }
}

fn to_f32(m: &Mix<f64>) -> Mix<f32> {
    Mix {
        a: m.a.iter().map(|&x| x as f32).collect(),
        layer: Layer {
            w: m.layer.w.map(|x| x as f32),
            b: m.layer.b as f32,
        },
    }
}

/// Initial params of magnitude 0.5..2 and `steps` gradients spanning 1e-3..30 in
/// magnitude, both signs, with some exact zeros.
fn problem(seed: u64, steps: usize) -> (Mix<f64>, Vec<Mix<f64>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let p0 = mix_from(|| {
        let s = if rng.gen::<bool>() { 1.0 } else { -1.0 };
        s * rng.gen_range(0.5f32..2.0)
    });
    let grads = (0..steps)
        .map(|_| {
            mix_from(|| {
                if rng.gen_bool(0.15) {
                    0.0
                } else {
                    rng.gen_range(-3.0f32..3.0) * 10f32.powf(rng.gen_range(-3.0f32..1.0))
                }
            })
        })
        .collect();
    (p0, grads)
}

fn flat<P: Params>(p: &P) -> Vec<f64> {
    p.flatten().iter().map(|x| x.lane(0)).collect()
}

// ------------------------------------------------------------ comparing with references

/// The trees of a state, params first, as flat f64 vectors.
trait Inspect {
    fn trees(&self) -> Vec<Vec<f64>>;
}
impl<P: Params> Inspect for SgdState<P> {
    fn trees(&self) -> Vec<Vec<f64>> {
        vec![flat(&self.params)]
    }
}
impl<P: Params> Inspect for SgdmState<P> {
    fn trees(&self) -> Vec<Vec<f64>> {
        vec![flat(&self.params), flat(&self.momentum)]
    }
}
impl<P: Params> Inspect for AdamState<P> {
    fn trees(&self) -> Vec<Vec<f64>> {
        vec![flat(&self.params), flat(&self.mu), flat(&self.nu)]
    }
}
impl<P: Params> Inspect for RmsPropState<P> {
    fn trees(&self) -> Vec<Vec<f64>> {
        vec![flat(&self.params), flat(&self.nu), flat(&self.trace)]
    }
}
impl<St: Inspect, P: Params> Inspect for GradientClipState<St, P> {
    fn trees(&self) -> Vec<Vec<f64>> {
        self.inner.trees()
    }
}

fn run<P: Params, O: Optimizer<P>>(opt: &O, p0: P, grads: &[P]) -> O::State {
    let mut state = opt.init(p0, Some(grads.len()));
    for g in grads {
        opt.update(&mut state, g, P::Scalar::from_f64(1.0));
    }
    state
}

/// Elementwise relative comparison; values far below the tree's largest are compared
/// relative to 1% of it (cancellation in a moment is not an optimizer error).
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs())) * 1e-2;
    for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(w.is_finite(), "{what}[{j}]: reference not finite");
        let err = (g - w).abs();
        let allowed = tol * w.abs().max(scale).max(1e-300);
        assert!(
            err <= allowed,
            "{what}[{j}]: got {g:e}, want {w:e} (err {err:e})"
        );
    }
}

/// Runs `opt` on the f64 and f32 trees and checks every tree of the state against
/// `reference(p0, grads) -> [p, moments...]`, evaluated element by element in f64.
fn check_against<O>(opt: &O, seed: u64, reference: impl Fn(f64, &[f64]) -> Vec<f64>)
where
    O: Optimizer<Mix<f64>> + Optimizer<Mix<f32>>,
    <O as Optimizer<Mix<f64>>>::State: Inspect,
    <O as Optimizer<Mix<f32>>>::State: Inspect,
{
    let steps = 7;
    let (p0, grads) = problem(seed, steps);
    let (fp0, fgrads) = (flat(&p0), grads.iter().map(flat).collect::<Vec<_>>());
    let mut want: Vec<Vec<f64>> = Vec::new();
    for j in 0..fp0.len() {
        let gs: Vec<f64> = fgrads.iter().map(|g| g[j]).collect();
        let r = reference(fp0[j], &gs);
        want.resize(r.len(), vec![0.0; fp0.len()]);
        for (k, v) in r.into_iter().enumerate() {
            want[k][j] = v;
        }
    }
    let name = Optimizer::<Mix<f64>>::name(opt);

    let s64 = run(opt, p0.clone(), &grads);
    assert_eq!(Optimizer::<Mix<f64>>::iteration(opt, &s64), steps);
    let got = s64.trees();
    assert_eq!(got.len(), want.len(), "{name}: number of trees");
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_close(&format!("{name} f64 tree {k}"), g, w, 1e-12);
    }

    let grads32: Vec<Mix<f32>> = grads.iter().map(to_f32).collect();
    let s32 = run(opt, to_f32(&p0), &grads32);
    assert_eq!(Optimizer::<Mix<f32>>::iteration(opt, &s32), steps);
    for (k, (g, w)) in s32.trees().iter().zip(&want).enumerate() {
        assert_close(&format!("{name} f32 tree {k}"), g, w, 1e-5);
    }
}

// ------------------------------------------------- plain f64 references, one element each

fn sgd_ref(lr: f64) -> impl Fn(f64, &[f64]) -> Vec<f64> {
    move |mut p, gs| {
        for &g in gs {
            p -= lr * g;
        }
        vec![p]
    }
}

fn sgdm_ref(lr: f64, mu: f64) -> impl Fn(f64, &[f64]) -> Vec<f64> {
    move |mut p, gs| {
        let mut v = 0.0;
        for &g in gs {
            v = g + mu * v;
            p -= lr * v;
        }
        vec![p, v]
    }
}

fn adam_ref(o: Adam) -> impl Fn(f64, &[f64]) -> Vec<f64> {
    move |mut p, gs| {
        let (mut m, mut v) = (0.0, 0.0);
        for (k, &g) in gs.iter().enumerate() {
            let t = (k + 1) as i32;
            m = o.beta1 * m + (1.0 - o.beta1) * g;
            v = o.beta2 * v + (1.0 - o.beta2) * g * g;
            let m_hat = m / (1.0 - o.beta1.powi(t));
            let v_hat = v / (1.0 - o.beta2.powi(t));
            p -= o.lr * m_hat / ((v_hat + o.epsilon_root).sqrt() + o.epsilon);
        }
        vec![p, m, v]
    }
}

fn rmsprop_ref(o: RmsProp) -> impl Fn(f64, &[f64]) -> Vec<f64> {
    move |mut p, gs| {
        let (mut nu, mut trace) = (0.0, 0.0);
        for &g in gs {
            nu = o.decay * nu + (1.0 - o.decay) * g * g;
            let u = -o.lr * g / (nu + o.epsilon).sqrt();
            trace = u + o.momentum * trace;
            p += if o.nesterov {
                u + o.momentum * trace
            } else {
                trace
            };
        }
        vec![p, nu, trace]
    }
}

fn clip(g: f64, c: f64) -> f64 {
    g.clamp(-c, c)
}

// ----------------------------------------------------------------------------- the tests

#[test]
fn defaults_are_the_jax_library_defaults() {
    assert_eq!(Sgd::default(), Sgd { lr: 0.01 });
    assert_eq!(
        Sgdm::default(),
        Sgdm {
            lr: 0.01,
            momentum: 0.9
        }
    );
    assert_eq!(
        Adam::default(),
        Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            epsilon_root: 1e-8
        }
    );
    assert_eq!(
        RmsProp::default(),
        RmsProp {
            lr: 0.01,
            decay: 0.9,
            epsilon: 1e-8,
            momentum: 0.0,
            nesterov: false
        }
    );
    let c = GradientClip::<Adam>::default();
    assert_eq!(c.grad_clip, 3.0);
    assert_eq!(c.inner, Adam::default());
    // `new(lr)` changes the learning rate only.
    assert_eq!(Sgd::new(0.3), Sgd { lr: 0.3 });
    assert_eq!(Sgdm::new(0.3).momentum, 0.9);
    assert_eq!(
        Adam::new(0.3),
        Adam {
            lr: 0.3,
            ..Adam::default()
        }
    );
    assert_eq!(
        RmsProp::new(0.3),
        RmsProp {
            lr: 0.3,
            ..RmsProp::default()
        }
    );
    assert_eq!(GradientClip::new(Sgd::new(0.3)).grad_clip, 3.0);
}

#[test]
fn names_follow_the_jax_library() {
    assert_eq!(Optimizer::<f64>::name(&Sgd::default()), "SGD_lr0.01");
    assert_eq!(Optimizer::<f64>::name(&Sgdm::default()), "SGDM_lr0.01_m0.9");
    assert_eq!(
        Optimizer::<f32>::name(&Adam::new(3e-4)),
        "Adam_lr0.0003_b10.9_b20.999_eps1e-08_epsroot1e-08"
    );
    assert_eq!(
        Optimizer::<f32>::name(&RmsProp::default()),
        "RMSProp_lr0.01_d0.9_eps1e-08_m0.0_nesterovFalse"
    );
    assert_eq!(
        Optimizer::<f32>::name(&GradientClip::new(Sgd::default())),
        "GradientClip3.0_SGD_lr0.01"
    );
}

#[test]
fn py_float_matches_python_repr() {
    // Expected strings are Python 3's repr() of the same floats.
    for (x, s) in [
        (0.01, "0.01"),
        (1e-8, "1e-08"),
        (3.0, "3.0"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (0.999, "0.999"),
        (1e-4, "0.0001"),
        (1.5e-5, "1.5e-05"),
        (123456.0, "123456.0"),
        (1e16, "1e+16"),
        (1.25e17, "1.25e+17"),
        (-2.5, "-2.5"),
        (0.1 + 0.2, "0.30000000000000004"),
        (f64::INFINITY, "inf"),
    ] {
        assert_eq!(py_float(x), s, "{x:e}");
    }
}

#[test]
fn sgd_matches_closed_form() {
    check_against(&Sgd::default(), 1, sgd_ref(0.01));
    check_against(&Sgd::new(0.37), 2, sgd_ref(0.37));
}

#[test]
fn sgdm_matches_closed_form() {
    check_against(&Sgdm::default(), 3, sgdm_ref(0.01, 0.9));
    let o = Sgdm {
        lr: 0.05,
        momentum: 0.6,
    };
    check_against(&o, 4, sgdm_ref(0.05, 0.6));
}

#[test]
fn adam_matches_closed_form() {
    check_against(&Adam::default(), 5, adam_ref(Adam::default()));
    // Distinct values everywhere, so swapped fields would show.
    let o = Adam {
        lr: 0.03,
        beta1: 0.8,
        beta2: 0.95,
        epsilon: 1e-3,
        epsilon_root: 1e-2,
    };
    check_against(&o, 6, adam_ref(o));
}

#[test]
fn rmsprop_matches_closed_form() {
    check_against(&RmsProp::default(), 7, rmsprop_ref(RmsProp::default()));
    let mut o = RmsProp {
        lr: 0.02,
        decay: 0.7,
        epsilon: 1e-3,
        momentum: 0.5,
        nesterov: false,
    };
    check_against(&o, 8, rmsprop_ref(o));
    o.nesterov = true;
    check_against(&o, 9, rmsprop_ref(o));
}

#[test]
fn gradient_clip_matches_closed_form() {
    let c = 0.5;
    let inner = Adam::new(0.1);
    let reference = adam_ref(inner);
    check_against(&GradientClip::with_clip(inner, c), 10, move |p, gs| {
        let clipped: Vec<f64> = gs.iter().map(|&g| clip(g, c)).collect();
        reference(p, &clipped)
    });
    let reference = sgdm_ref(0.01, 0.9);
    check_against(&GradientClip::<Sgdm>::default(), 11, move |p, gs| {
        let clipped: Vec<f64> = gs.iter().map(|&g| clip(g, 3.0)).collect();
        reference(p, &clipped)
    });
}

#[test]
fn gradient_clip_clips_each_element() {
    let opt = GradientClip::new(Sgd::new(1.0));
    let mut s = opt.init(vec![0.0f64; 5], None);
    opt.update(&mut s, &vec![10.0, -10.0, 2.5, -3.0, 3.5], 0.0);
    assert_eq!(s.inner.params, vec![-3.0, 3.0, -2.5, 3.0, -3.0]);
    assert_eq!(s.clipped_grad, vec![3.0, -3.0, 2.5, -3.0, 3.0]);
    // A NaN gradient is not hidden by the clip.
    opt.update(&mut s, &vec![f64::NAN, 0.0, 0.0, 0.0, 0.0], 0.0);
    assert!(s.inner.params[0].is_nan());
    assert_eq!(opt.iteration(&s), 2);
}

#[test]
fn rmsprop_eps_is_inside_the_square_root() {
    // With |g| = 1e-6, ν = 1e-13 is far below eps = 1e-8, so the placement of eps decides
    // the step: inside, −lr·g/√(ν + eps) ≈ −lr·1e-2; outside it would be ≈ −lr·3.1.
    let opt = RmsProp::default();
    let g = 1e-6;
    let mut s = opt.init(vec![0.0f64], None);
    opt.update(&mut s, &vec![g], 0.0);
    let nu = 0.1 * g * g;
    let inside = -0.01 * g / (nu + 1e-8).sqrt();
    let outside = -0.01 * g / (nu.sqrt() + 1e-8);
    assert!((s.params[0] - inside).abs() <= 1e-12 * inside.abs());
    assert!((outside / inside) > 100.0);
    // In f32 too.
    let mut s = opt.init(vec![0.0f32], None);
    opt.update(&mut s, &vec![g as f32], 0.0);
    assert!((s.params[0] as f64 - inside).abs() <= 1e-5 * inside.abs());
}

#[test]
fn adam_eps_root_matters_for_zero_and_tiny_gradients() {
    let opt = Adam::default();
    let mut s = opt.init(vec![1.0f64, -1.0], None);
    // An exactly zero gradient: no NaN, no move, moments stay zero.
    opt.update(&mut s, &vec![0.0, 0.0], 0.0);
    assert_eq!(s.params, vec![1.0, -1.0]);
    assert_eq!((s.mu.clone(), s.nu.clone()), (vec![0.0; 2], vec![0.0; 2]));
    // Then |g| = 1e-4 at t = 2, where v̂ = 1e-8 = eps_root: the step is lr/√2, not lr.
    opt.update(&mut s, &vec![1e-4, -1e-4], 0.0);
    let m_hat = (0.1 * 1e-4) / (1.0 - 0.9f64.powi(2));
    let v_hat = (0.001 * 1e-8) / (1.0 - 0.999f64.powi(2));
    let with_root = 0.01 * m_hat / ((v_hat + 1e-8).sqrt() + 1e-8);
    let without_root = 0.01 * m_hat / (v_hat.sqrt() + 1e-8);
    assert!((s.params[0] - (1.0 - with_root)).abs() <= 1e-12);
    assert!((s.params[1] - (-1.0 + with_root)).abs() <= 1e-12);
    assert!(
        (without_root - with_root) > 1e-3,
        "eps_root must change this step"
    );
    // A zero gradient after non-zero ones still moves (momentum) and stays finite.
    let before = s.params.clone();
    opt.update(&mut s, &vec![0.0, 0.0], 0.0);
    assert!(s.params[0] < before[0] && s.params.iter().all(|x| x.is_finite()));
    assert_eq!(opt.iteration(&s), 3);
}

/// `set_params` replaces the parameters and keeps moments and iteration.
fn check_set_params<O>(opt: &O)
where
    O: Optimizer<Vec<f64>>,
    O::State: Inspect,
{
    let gs = [vec![0.5, -1.0], vec![2.0, 0.25], vec![-1.0, 1.0]];
    let mut s = opt.init(vec![1.0, 2.0], None);
    opt.update(&mut s, &gs[0], 0.0);
    let moments: Vec<Vec<f64>> = s.trees()[1..].to_vec();
    opt.set_params(&mut s, vec![-4.0, 8.0]);
    assert_eq!(opt.get_params(&s), &vec![-4.0, 8.0]);
    assert_eq!(opt.iteration(&s), 1);
    assert_eq!(s.trees()[1..].to_vec(), moments);
    // Continuing equals a run whose params jumped by the same amount: the displacement
    // of the later steps depends only on moments and gradients.
    let mut t = opt.init(vec![1.0, 2.0], None);
    opt.update(&mut t, &gs[0], 0.0);
    let jump: Vec<f64> = opt.get_params(&t).iter().map(|x| -x).collect();
    for g in &gs[1..] {
        opt.update(&mut s, g, 0.0);
        opt.update(&mut t, g, 0.0);
    }
    let (ps, pt) = (opt.get_params(&s), opt.get_params(&t));
    for j in 0..2 {
        let disp_s = ps[j] - [-4.0, 8.0][j];
        let disp_t = pt[j] + jump[j];
        assert!((disp_s - disp_t).abs() < 1e-12, "{}", opt.name());
    }
    assert_eq!(opt.iteration(&s), 3);
}

#[test]
fn set_params_keeps_moments_and_iteration() {
    check_set_params(&Sgd::default());
    check_set_params(&Sgdm::default());
    check_set_params(&Adam::default());
    check_set_params(&RmsProp {
        momentum: 0.9,
        ..RmsProp::default()
    });
    check_set_params(&GradientClip::new(Adam::new(0.1)));
}

#[test]
fn iteration_counts_updates() {
    fn count<O: Optimizer<f64>>(opt: O) {
        let mut s = opt.init(1.0, None);
        assert_eq!(opt.iteration(&s), 0);
        for k in 1..=6 {
            opt.update(&mut s, &0.5, 0.0);
            assert_eq!(opt.iteration(&s), k);
        }
    }
    count(Sgd::default());
    count(Sgdm::default());
    count(Adam::default());
    count(RmsProp::default());
    count(GradientClip::new(RmsProp::default()));
}

#[test]
fn bare_scalar_params() {
    // A bare f64 is a one-leaf tree: Adam on f(p) = p² from p = 1 goes down.
    let opt = Adam::new(0.1);
    let mut s = opt.init(1.0f64, None);
    for _ in 0..5 {
        let (loss, g) = (s.params * s.params, 2.0 * s.params);
        opt.update(&mut s, &g, loss);
    }
    let want = adam_ref(opt);
    let mut p = 1.0;
    let mut gs = Vec::new();
    for _ in 0..5 {
        gs.push(2.0 * p);
        p = want(1.0, &gs)[0];
    }
    assert!((s.params - p).abs() < 1e-12 && p < 0.6);
}

#[test]
fn try_update_reports_shape_mismatch() {
    let opt = Adam::default();
    let mut s = opt.init(vec![1.0f64, 2.0], None);
    let err = opt.try_update(&mut s, &vec![1.0], 0.0).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    assert_eq!(opt.iteration(&s), 0, "a rejected update changes nothing");
    opt.try_update(&mut s, &vec![1.0, 1.0], 0.0).unwrap();
    assert_eq!(opt.iteration(&s), 1);
}

#[test]
#[should_panic(expected = "try_update")]
fn update_panics_on_shape_mismatch() {
    let opt = Sgdm::default();
    let mut s = opt.init(vec![1.0f64, 2.0], None);
    opt.update(&mut s, &vec![1.0, 2.0, 3.0], 0.0);
}

#[test]
fn states_serialize() {
    let opt = Adam::default();
    let mut s = opt.init(vec![1.0f64, 2.0], None);
    opt.update(&mut s, &vec![0.5, -0.5], 0.0);
    let json = serde_json::to_string(&s).unwrap();
    let back: AdamState<Vec<f64>> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}
