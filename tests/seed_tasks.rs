//! The seed tutorial's tasks (as written in examples/custom_task.rs and
//! examples/quadratic_family.rs), gradient-checked in f64 at many random points, and the
//! seed's batched training compared with serial training.

use lopt::gradcheck::{check_task, GradCheck};
use lopt::prelude::*;
use lopt::vmap::{vmap, VmapFn, Width};

type Target = SMatrix<f32, 4, 2>;

struct MyTask;

#[task]
impl Task for MyTask {
    type Params<S: Real> = SMatrix<S, 4, 2>;
    type Batch = Target;
    fn init<S: Real>(&self, key: Key) -> SMatrix<S, 4, 2> {
        let mut p = SMatrix::<S, 4, 2>::zeros();
        key.fill_normal(p.as_mut_slice());
        p
    }
    fn loss<S: Real>(&self, params: &SMatrix<S, 4, 2>, _key: S::Key, data: &Target) -> S {
        sum(square(params - data))
    }
}

struct FixedDimQuadraticFamily {
    dim: usize,
}

#[task_family]
impl TaskFamily for FixedDimQuadraticFamily {
    type Cfg<S: Real> = DVector<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = ();
    fn sample(&self, key: Key) -> DVector<f32> {
        DVector::from_vec(key.normal_vec(self.dim))
    }
    fn init<S: Real>(&self, _cfg: &DVector<S>, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(self.dim))
    }
    fn loss<S: Real>(&self, params: &DVector<S>, cfg: &DVector<S>, _key: S::Key, _batch: &()) -> S {
        sum(square(cfg - params))
    }
}

#[test]
fn my_task_gradients_at_random_points() {
    for seed in 0..20u64 {
        let key = Key::new(seed);
        let (k1, k2) = key.split();
        let p = MyTask.init::<f64>(k1);
        let mut data = Target::zeros();
        k2.fill_normal(data.as_mut_slice());
        let r = check_task(&MyTask, &p, key, &data, &GradCheck::default());
        assert!(r.passed(), "seed {seed}: {r}");
        // Closed form: 2 (p - d).
        let (_, g) = MyTask.value_and_grad(&p, key, &data);
        for i in 0..8 {
            let expect = 2.0 * (p.as_slice()[i] - data.as_slice()[i] as f64);
            assert!((g.as_slice()[i] - expect).abs() < 1e-12);
        }
    }
}

#[test]
fn quadratic_family_gradients_at_random_points() {
    let family = FixedDimQuadraticFamily { dim: 10 };
    for seed in 0..20u64 {
        let (kc, kp) = Key::new(seed).split();
        let cfg = family.sample(kc);
        let task = family.task_fn(&cfg);
        let p = task.init::<f64>(kp);
        let r = check_task(&task, &p, kp, &(), &GradCheck::default());
        assert!(r.passed(), "seed {seed}: {r}");
    }
}

#[test]
fn single_task_to_family_returns_the_task() {
    let family = single_task_to_family(MyTask);
    let cfg = family.sample(Key::new(0));
    assert_eq!(cfg, 0.0);
    let task = family.task_fn(&cfg);
    assert!(std::ptr::eq(task, family.task()));
    let p = family.init(&cfg, Key::new(1));
    assert_eq!(p, MyTask.init::<f32>(Key::new(1)));
}

struct TrainTask;

impl VmapFn<FixedDimQuadraticFamily> for TrainTask {
    fn call<S: Real>(&self, family: &FixedDimQuadraticFamily, cfg: &DVector<S>, keys: S::Key) -> S {
        let (key1, key) = keys.split();
        let mut params = family.init_lanes(cfg, key1);
        let opt = Adam::default();
        let mut state = opt.init(params.clone(), None);
        for _ in 0..4 {
            params = opt.get_params(&state).clone();
            let (loss, grad) = family.value_and_grad(&params, cfg, key, &());
            opt.update(&mut state, &grad, loss);
        }
        family.loss(&params, cfg, key, &())
    }
}

#[test]
fn seed_vmap_matches_serial_at_every_width() {
    let family = FixedDimQuadraticFamily { dim: 10 };
    let keys = Key::new(0).split().1.split_n(32);
    let cfgs: Vec<_> = keys.iter().map(|&k| family.sample(k)).collect();
    let serial: Vec<f32> = cfgs
        .iter()
        .zip(&keys)
        .map(|(c, &k)| TrainTask.call::<f32>(&family, c, k))
        .collect();
    for w in [Width::Serial, Width::W8, Width::W16] {
        let batched = vmap(&family, &TrainTask, &cfgs, &keys, w).unwrap();
        for (a, b) in batched.iter().zip(&serial) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{w:?}: {a} vs {b}"
            );
        }
    }
}
