//! Batched task families (`lopt::vmap`, `lopt::lane_groups`): lane groups compute what each instance computes
//! alone, at every lane width and thread count.
//!
//! The reference for every instance is the same instance run by itself in plain `f32`;
//! that reference is in turn checked against closed forms computed in `f64` (the
//! quadratic's gradient `2 (p − t)` and a hand-written Adam), so a bug shared by the
//! batched and serial paths would still fail.

use std::sync::atomic::{AtomicUsize, Ordering};

use lopt::lanes::LaneKeys;
use lopt::prelude::*;
use lopt::vmap::{lane_groups, vmap, FamilyLanes, VmapFn, Width};

const WIDTHS: [Width; 3] = [Width::Serial, Width::W8, Width::W16];

/// `|a − b| ≤ 1e-5 · max(|a|, |b|)`, or both below 1e-30 (exact zeros).
fn close(a: f32, b: f32) -> bool {
    let scale = a.abs().max(b.abs());
    (a - b).abs() <= 1e-5 * scale || scale < 1e-30
}

fn assert_close_slices(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(close(g, w), "{what}[{i}]: got {g}, want {w}");
    }
}

/// The same bits, element by element (the batched == serial promise for arithmetic,
/// reductions and the optimizers built from them).
fn assert_same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}[{i}]: got {g}, want {w}");
    }
}

fn pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

// ---------------------------------------------------------------------------------------
// The seed's quadratic family.

// The seed's quadratic family, from the task library.
use lopt::tasks::quadratics::FixedDimQuadraticFamily;

/// The seed's `train_task`, with the number of Adam steps as a field: the final loss.
struct TrainTask {
    steps: usize,
}

impl VmapFn<FixedDimQuadraticFamily> for TrainTask {
    fn call<S: Real>(&self, family: &FixedDimQuadraticFamily, cfg: &DVector<S>, keys: S::Key) -> S {
        let (key1, key) = keys.split();
        let params = family.init_lanes(cfg, key1);
        let opt = Adam::default();
        let mut state = opt.init(params, None);
        for _ in 0..self.steps {
            let (loss, grad) = family.value_and_grad(&state.params, cfg, key, &());
            opt.update(&mut state, &grad, loss);
        }
        family.loss(&state.params, cfg, key, &())
    }
}

const STEPS: usize = 20;

/// `n` instances: configurations sampled from keys, and the keys.
fn instances<F: TaskFamily>(family: &F, n: usize, seed: u64) -> (Vec<F::Cfg<f32>>, Vec<Key>) {
    let keys = Key::new(seed).split_n(n);
    let cfgs = keys.iter().map(|&k| family.sample(k.fold_in(7))).collect();
    (cfgs, keys)
}

/// Trains one instance alone in `f32` (as `TrainTask` does): the final parameters.
fn train_serial(
    family: &FixedDimQuadraticFamily,
    cfg: &DVector<f32>,
    key: Key,
    steps: usize,
) -> DVector<f32> {
    let (key1, key) = key.split();
    let opt = Adam::default();
    let mut state = opt.init(family.init(cfg, key1), None);
    for _ in 0..steps {
        let (loss, grad) = family.value_and_grad(&state.params, cfg, key, &());
        opt.update(&mut state, &grad, loss);
    }
    state.params
}

/// Trains up to `N` instances packed in one lane group: the final parameters of each.
fn train_packed<const N: usize>(
    family: &FixedDimQuadraticFamily,
    cfgs: &[DVector<f32>],
    keys: &[Key],
    steps: usize,
) -> Vec<DVector<f32>> {
    assert!(!cfgs.is_empty() && cfgs.len() <= N && cfgs.len() == keys.len());
    let refs: Vec<&DVector<f32>> = cfgs.iter().collect();
    let cfg = family.pack_cfg::<Lanes<N>>(&refs);
    let keys = LaneKeys::<N>::from_lane_keys(keys);
    let (key1, key) = keys.split();
    let opt = Adam::default();
    let mut state = opt.init(family.init_lanes(&cfg, key1), None);
    for _ in 0..steps {
        let (loss, grad) = family.value_and_grad(&state.params, &cfg, key, &());
        opt.update(&mut state, &grad, loss);
    }
    (0..cfgs.len())
        .map(|l| family.unpack_params(&state.params, l))
        .collect()
}

/// Adam in `f64` on `sum((t − p)²)` with the gradient in closed form, from `p0`.
fn adam_f64_closed_form(target: &[f32], p0: &[f32], steps: usize) -> Vec<f64> {
    let (lr, b1, b2, eps, eps_root) = (0.01, 0.9, 0.999, 1e-8, 1e-8);
    let mut p: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
    let mut m = vec![0.0; p.len()];
    let mut v = vec![0.0; p.len()];
    for t in 1..=steps {
        for i in 0..p.len() {
            let g = 2.0 * (p[i] - target[i] as f64);
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            let mh = m[i] / (1.0 - b1.powi(t as i32));
            let vh = v[i] / (1.0 - b2.powi(t as i32));
            p[i] -= lr * mh / ((vh + eps_root).sqrt() + eps);
        }
    }
    p
}

#[test]
fn serial_reference_matches_closed_form_adam_in_f64() {
    let family = FixedDimQuadraticFamily { dim: 7 };
    let (cfgs, keys) = instances(&family, 5, 3);
    for (cfg, &key) in cfgs.iter().zip(&keys) {
        let p = train_serial(&family, cfg, key, STEPS);
        let p0 = family.init(cfg, key.split().0);
        let want = adam_f64_closed_form(cfg.as_slice(), p0.as_slice(), STEPS);
        for (&got, &w) in p.iter().zip(&want) {
            // f32 against f64 over 20 steps of size ≈ lr: far below the step size.
            assert!((got as f64 - w).abs() < 1e-5, "{got} vs {w}");
        }
        let loss: f64 = cfg
            .iter()
            .zip(&want)
            .map(|(&t, &p)| (t as f64 - p).powi(2))
            .sum();
        let got = TrainTask { steps: STEPS }.call::<f32>(&family, cfg, key);
        assert!((got as f64 - loss).abs() <= 1e-4 * loss, "{got} vs {loss}");
    }
}

#[test]
fn batched_losses_equal_serial_at_every_width_and_thread_count() {
    let family = FixedDimQuadraticFamily { dim: 7 };
    // 37 = 2·16 + 5 = 4·8 + 5: full groups and a partial one at both widths.
    let (cfgs, keys) = instances(&family, 37, 11);
    let f = TrainTask { steps: STEPS };
    let serial: Vec<f32> = cfgs
        .iter()
        .zip(&keys)
        .map(|(c, &k)| f.call::<f32>(&family, c, k))
        .collect();
    for threads in [1, 2] {
        for width in WIDTHS {
            let got = pool(threads, || vmap(&family, &f, &cfgs, &keys, width)).unwrap();
            assert_same_bits(&format!("{width:?} on {threads} threads"), &got, &serial);
        }
    }
}

fn check_packed_gradients<const N: usize>(family: &FixedDimQuadraticFamily, n: usize) {
    let (cfgs, keys) = instances(family, n, 5);
    let params: Vec<DVector<f32>> = cfgs
        .iter()
        .zip(&keys)
        .map(|(c, &k)| family.init(c, k))
        .collect();
    let key = Key::new(0);
    for (cs, ps) in cfgs.chunks(N).zip(params.chunks(N)) {
        let cfg = family.pack_cfg::<Lanes<N>>(&cs.iter().collect::<Vec<_>>());
        let p = family.pack_params::<Lanes<N>>(&ps.iter().collect::<Vec<_>>());
        let (loss, grad) = family.value_and_grad(&p, &cfg, LaneKeys::from_lane_keys(&[key]), &());
        for (l, (c, p1)) in cs.iter().zip(ps).enumerate() {
            let (loss1, grad1) = family.value_and_grad(p1, c, key, &());
            assert_eq!(
                loss.0[l].to_bits(),
                loss1.to_bits(),
                "lane {l}: {} vs {loss1}",
                loss.0[l]
            );
            let g = family.unpack_params(&grad, l);
            assert_same_bits(
                &format!("gradient lane {l}"),
                g.as_slice(),
                grad1.as_slice(),
            );
            // And both against the closed form 2 (p − t), in f64.
            for i in 0..p1.len() {
                let want = 2.0 * (p1[i] as f64 - c[i] as f64);
                assert!((grad1[i] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0));
            }
        }
    }
}

#[test]
fn packed_gradients_equal_per_instance_gradients() {
    let family = FixedDimQuadraticFamily { dim: 9 };
    check_packed_gradients::<8>(&family, 19);
    check_packed_gradients::<16>(&family, 19);
}

#[test]
fn packed_training_gives_each_instance_its_serial_parameters() {
    let family = FixedDimQuadraticFamily { dim: 6 };
    let (cfgs, keys) = instances(&family, 13, 17);
    let serial: Vec<DVector<f32>> = cfgs
        .iter()
        .zip(&keys)
        .map(|(c, &k)| train_serial(&family, c, k, STEPS))
        .collect();
    let mut w8 = Vec::new();
    for (c, k) in cfgs.chunks(8).zip(keys.chunks(8)) {
        w8.extend(train_packed::<8>(&family, c, k, STEPS));
    }
    let w16 = train_packed::<16>(&family, &cfgs, &keys, STEPS);
    for (i, want) in serial.iter().enumerate() {
        assert_same_bits(
            &format!("W8 instance {i}"),
            w8[i].as_slice(),
            want.as_slice(),
        );
        assert_same_bits(
            &format!("W16 instance {i}"),
            w16[i].as_slice(),
            want.as_slice(),
        );
        // Training moved the parameters: the comparison is not between initial values.
        let p0 = family.init(&cfgs[i], keys[i].split().0);
        assert!((want - p0).norm() > 0.05);
    }
}

#[test]
fn same_seed_same_bits_on_any_thread_count() {
    let family = FixedDimQuadraticFamily { dim: 5 };
    let (cfgs, keys) = instances(&family, 50, 23);
    let f = TrainTask { steps: 7 };
    for width in WIDTHS {
        let bits = |threads| {
            pool(threads, || vmap(&family, &f, &cfgs, &keys, width))
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<u32>>()
        };
        let one = bits(1);
        assert_eq!(one, bits(2), "{width:?}: 1 vs 2 threads");
        assert_eq!(one, bits(3), "{width:?}: 1 vs 3 threads");
        assert_eq!(one, bits(1), "{width:?}: two runs on 1 thread");
    }
}

// ---------------------------------------------------------------------------------------
// A family whose instances differ in shape: a one-hidden-layer regression network whose
// hidden width is sampled.

const HIDDEN: [usize; 3] = [4, 8, 12];

#[derive(Params, Clone, Debug)]
struct Cfg<S: Real> {
    #[params(skip)]
    hidden: usize,
    /// The scale of the initial weights. (Read by `init`: a loss cannot read a scalar
    /// configuration field of the generic type `S` yet, as `Data<S>` is implemented for
    /// `f32`, `f64` and `Lanes<N>` but not for `S` itself.)
    scale: S,
}

#[derive(Params, Clone, Debug)]
struct Mlp<S: Real> {
    w1: DMatrix<S>,
    b1: DVector<S>,
    w2: DMatrix<S>,
    b2: DVector<S>,
}

/// Fixed data: 6 examples of 3 features and one target each.
struct MlpFamily {
    x: DMatrix<f32>,
    y: DMatrix<f32>,
}

impl MlpFamily {
    fn new() -> Self {
        let k = Key::new(99);
        MlpFamily {
            x: k.fold_in(0).normal_matrix(6, 3),
            y: k.fold_in(1).normal_matrix(6, 1),
        }
    }
}

#[task_family]
impl TaskFamily for MlpFamily {
    type Cfg<S: Real> = Cfg<S>;
    type Params<S: Real> = Mlp<S>;
    type Batch = ();

    fn sample(&self, key: Key) -> Cfg<f32> {
        let (a, b) = key.split();
        Cfg {
            hidden: HIDDEN[a.randint(0, 3) as usize],
            scale: b.uniform_range(0.2, 0.8),
        }
    }

    fn init(&self, cfg: &Cfg<f32>, key: Key) -> Mlp<f32> {
        let k = key.split_n(2);
        Mlp {
            w1: k[0].normal_matrix(3, cfg.hidden) * cfg.scale,
            b1: DVector::from_element(cfg.hidden, 0.1),
            w2: k[1].normal_matrix(cfg.hidden, 1) * cfg.scale,
            b2: DVector::zeros(1),
        }
    }

    fn loss<S: Real>(&self, params: &Mlp<S>, _cfg: &Cfg<S>, _key: S::Key, _batch: &()) -> S {
        let h = tanh(self.x * params.w1 + params.b1);
        let out = h * params.w2 + params.b2;
        mean(square(out - self.y))
    }
}

/// Adam on the network: the final loss.
struct TrainMlp;

impl VmapFn<MlpFamily> for TrainMlp {
    fn call<S: Real>(&self, family: &MlpFamily, cfg: &Cfg<S>, keys: S::Key) -> S {
        let (key1, key) = keys.split();
        let opt = Adam::new(0.05);
        let mut state = opt.init(family.init_lanes(cfg, key1), None);
        for _ in 0..15 {
            let (loss, grad) = family.value_and_grad(&state.params, cfg, key, &());
            opt.update(&mut state, &grad, loss);
        }
        family.loss(&state.params, cfg, key, &())
    }
}

/// Each lane returns the hidden width of its group (and counts the groups).
struct GroupWidth {
    calls: AtomicUsize,
}

impl VmapFn<MlpFamily> for GroupWidth {
    fn call<S: Real>(&self, _family: &MlpFamily, cfg: &Cfg<S>, _keys: S::Key) -> S {
        self.calls.fetch_add(1, Ordering::Relaxed);
        S::from_f64(cfg.hidden as f64)
    }
}

#[test]
fn instances_of_different_shapes_train_in_one_call() {
    let family = MlpFamily::new();
    let (cfgs, keys) = instances(&family, 29, 31);
    for h in HIDDEN {
        assert!(
            cfgs.iter().filter(|c| c.hidden == h).count() >= 2,
            "the sample should contain every width"
        );
    }
    let serial: Vec<f32> = cfgs
        .iter()
        .zip(&keys)
        .map(|(c, &k)| TrainMlp.call::<f32>(&family, c, k))
        .collect();
    // Training did something: the final losses are below the initial ones.
    for (c, &k) in cfgs.iter().zip(&keys) {
        let p0 = family.init(c, k.split().0);
        let l0 = family.loss(&p0, c, k, &());
        let l = TrainMlp.call::<f32>(&family, c, k);
        assert!(l < l0, "{l} !< {l0}");
    }
    for threads in [1, 2] {
        for width in WIDTHS {
            let got = pool(threads, || vmap(&family, &TrainMlp, &cfgs, &keys, width)).unwrap();
            assert_close_slices(&format!("{width:?} on {threads} threads"), &got, &serial);
        }
    }
}

#[test]
fn lane_groups_hold_one_shape_each() {
    let family = MlpFamily::new();
    let (cfgs, keys) = instances(&family, 29, 31);
    for (width, lanes) in [(Width::Serial, 1), (Width::W8, 8), (Width::W16, 16)] {
        let groups = lane_groups(&cfgs, width);
        // Every instance in exactly one group; groups of one width, at most `lanes` long.
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..cfgs.len()).collect::<Vec<_>>());
        for g in &groups {
            assert!(!g.is_empty() && g.len() <= lanes);
            assert!(g.iter().all(|&i| cfgs[i].hidden == cfgs[g[0]].hidden));
        }
        // As few groups as possible: ⌈count / lanes⌉ per width.
        let expected: usize = HIDDEN
            .iter()
            .map(|&h| {
                cfgs.iter()
                    .filter(|c| c.hidden == h)
                    .count()
                    .div_ceil(lanes)
            })
            .sum();
        assert_eq!(groups.len(), expected, "{width:?}");

        // vmap runs exactly those groups, each lane seeing its own instance's width.
        let f = GroupWidth {
            calls: AtomicUsize::new(0),
        };
        let got = vmap(&family, &f, &cfgs, &keys, width).unwrap();
        assert_eq!(f.calls.load(Ordering::Relaxed), expected, "{width:?}");
        for (c, &h) in cfgs.iter().zip(&got) {
            assert_eq!(h, c.hidden as f32);
        }
    }
}

#[test]
fn bare_leaf_configurations_group_by_shape() {
    // Matrices of equal size but transposed shapes must not share a group.
    let shapes = [(2, 3), (3, 2), (2, 3), (1, 6), (3, 2), (2, 3)];
    let cfgs: Vec<DMatrix<f32>> = shapes
        .iter()
        .map(|&(r, c)| DMatrix::from_element(r, c, 1.0))
        .collect();
    assert_eq!(
        lane_groups(&cfgs, Width::W8),
        vec![vec![0, 2, 5], vec![1, 4], vec![3]]
    );
    // Vectors: runs and returns to an earlier length; chunks of at most the width.
    let lens = [3, 3, 5, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 3];
    let cfgs: Vec<DVector<f32>> = lens.iter().map(|&n| DVector::zeros(n)).collect();
    assert_eq!(
        lane_groups(&cfgs, Width::W8),
        vec![
            vec![0, 1, 3, 13],
            vec![2, 4, 5, 6, 7, 8, 9, 10],
            vec![11, 12]
        ]
    );
    assert_eq!(lane_groups(&cfgs, Width::Serial).len(), lens.len());
}

// ---------------------------------------------------------------------------------------
// Bad input.

#[test]
fn mismatched_lengths_are_an_error_and_empty_input_is_empty() {
    let family = FixedDimQuadraticFamily { dim: 3 };
    let (cfgs, keys) = instances(&family, 4, 1);
    let f = TrainTask { steps: 1 };
    for width in WIDTHS {
        match vmap(&family, &f, &cfgs, &keys[..3], width) {
            Err(Error::ShapeMismatch { expected, got, .. }) => {
                assert_eq!((expected, got), (vec![4], vec![3]));
            }
            other => panic!("expected ShapeMismatch, got {other:?}"),
        }
        assert!(matches!(
            vmap(&family, &f, &cfgs[..0], &keys, width),
            Err(Error::ShapeMismatch { .. })
        ));
        assert_eq!(vmap(&family, &f, &cfgs[..0], &keys[..0], width), Ok(vec![]));
    }
}

// ---------------------------------------------------------------------------------------
// Batched == serial, bit for bit where promised: values and gradients before any
// optimizer, lane by lane, at widths 1, 4, 8 and 16 and on 1 to 3 threads.

/// The distance in units in the last place between two `f32` (0: the same bits; +0 and
/// −0 are 0 apart; a NaN is `u64::MAX` from anything).
fn ulps(a: f32, b: f32) -> u64 {
    if a.is_nan() || b.is_nan() {
        return u64::MAX;
    }
    let key = |x: f32| {
        let i = x.to_bits() as i32;
        if i < 0 {
            -((i & 0x7fff_ffff) as i64)
        } else {
            i as i64
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

/// Arithmetic, square root, absolute value, min/max and reductions only (every op is
/// the IEEE one per lane, and sums run in one order for floats and packets): the
/// operations batched == serial promises bit for bit.
struct ArithFamily {
    dim: usize,
}

#[task_family]
impl TaskFamily for ArithFamily {
    type Cfg<S: Real> = DVector<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = ();
    fn sample(&self, key: Key) -> DVector<f32> {
        DVector::from_vec(key.normal_vec(self.dim))
    }
    fn init<S: Real>(&self, _cfg: &DVector<S>, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(self.dim))
    }
    fn loss<S: Real>(&self, p: &DVector<S>, c: &DVector<S>, _key: S::Key, _b: &()) -> S {
        let d = p - c;
        let a = sum(square(d)) + mean(abs(p)) * 0.5 + sum(sqrt(square(p) + 1.0));
        let b = dot(p, c) / (norm_squared(c) + 1.0) + max(sum(d), 0.25) + min(mean(p), -0.1);
        a + b * b
    }
}

/// Matrix products (the packet kernels against the `f32` GEMM), a bias and relu, no
/// transcendental function.
struct MatFamily {
    x: DMatrix<f32>,
    y: DMatrix<f32>,
}

#[task_family]
impl TaskFamily for MatFamily {
    type Cfg<S: Real> = DVector<S>;
    type Params<S: Real> = Mlp<S>;
    type Batch = ();
    fn sample(&self, key: Key) -> DVector<f32> {
        DVector::from_vec(key.normal_vec(1))
    }
    fn init(&self, _cfg: &DVector<f32>, key: Key) -> Mlp<f32> {
        let k = key.split_n(4);
        Mlp {
            w1: k[0].normal_matrix(5, 12) * 0.5,
            b1: DVector::from_vec(k[1].normal_vec(12)) * 0.1,
            w2: k[2].normal_matrix(12, 3) * 0.5,
            b2: DVector::from_vec(k[3].normal_vec(3)) * 0.1,
        }
    }
    fn loss<S: Real>(&self, p: &Mlp<S>, _cfg: &DVector<S>, _key: S::Key, _b: &()) -> S {
        let h = relu(self.x * p.w1 + p.b1);
        let out = h * p.w2 + p.b2;
        mean(square(out - self.y))
    }
}

impl MatFamily {
    fn new() -> Self {
        let k = Key::new(98);
        MatFamily {
            x: k.fold_in(0).normal_matrix(9, 5),
            y: k.fold_in(1).normal_matrix(9, 3),
        }
    }
}

/// The [`MlpFamily`] network (`tanh`) and a softmax cross-entropy on the same outputs:
/// `tanh`, `exp` and `ln` run as polynomials on packets and as the platform's functions
/// on `f32`.
struct TransFamily {
    inner: MatFamily,
    labels: Vec<i32>,
}

#[task_family]
impl TaskFamily for TransFamily {
    type Cfg<S: Real> = DVector<S>;
    type Params<S: Real> = Mlp<S>;
    type Batch = ();
    fn sample(&self, key: Key) -> DVector<f32> {
        self.inner.sample(key)
    }
    fn init(&self, cfg: &DVector<f32>, key: Key) -> Mlp<f32> {
        self.inner.init(cfg, key)
    }
    fn loss<S: Real>(&self, p: &Mlp<S>, _cfg: &DVector<S>, _key: S::Key, _b: &()) -> S {
        let h = tanh(self.inner.x * p.w1 + p.b1);
        let out = h * p.w2 + p.b2;
        mean(softmax_cross_entropy(out, &self.labels)) + mean(exp(out * 0.3))
    }
}

/// The largest distance in ulps between each lane's value and gradient, packed `N`
/// instances at a time, and the same instance's value and gradient in plain `f32`, over
/// `n` instances (`n` not a multiple of `N`: the last group is partial).
fn packed_vs_serial_ulps<F: TaskFamily<Batch = ()>, const N: usize>(family: &F, n: usize) -> Gap {
    let (cfgs, keys) = instances(family, n, 23);
    let params: Vec<F::Params<f32>> = cfgs
        .iter()
        .zip(&keys)
        .map(|(c, &k)| family.init(c, k))
        .collect();
    let key = Key::new(0);
    let mut gap = Gap::default();
    for (cs, ps) in cfgs.chunks(N).zip(params.chunks(N)) {
        let cfg = family.pack_cfg::<Lanes<N>>(&cs.iter().collect::<Vec<_>>());
        let p = family.pack_params::<Lanes<N>>(&ps.iter().collect::<Vec<_>>());
        let (loss, grad) = family.value_and_grad(&p, &cfg, LaneKeys::from_lane_keys(&[key]), &());
        for (l, (c, p1)) in cs.iter().zip(ps).enumerate() {
            let (loss1, grad1) = family.value_and_grad(p1, c, key, &());
            assert!(loss1.is_finite());
            gap.value_ulps = gap.value_ulps.max(ulps(loss.0[l], loss1));
            let (g, g1) = (family.unpack_params(&grad, l).flatten(), grad1.flatten());
            let scale = g1.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            for (&a, &b) in g.iter().zip(&g1) {
                gap.grad_ulps = gap.grad_ulps.max(ulps(a, b));
                gap.grad_rel = gap.grad_rel.max((a as f64 - b as f64).abs() / scale);
            }
            let v = loss1.abs() as f64;
            gap.value_rel = gap
                .value_rel
                .max((loss.0[l] as f64 - loss1 as f64).abs() / v);
        }
    }
    gap
}

/// How far packed lanes are from their serial runs: the value's and the gradient's
/// worst distance in ulps, and relative to the value and to the largest gradient
/// element.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Gap {
    value_ulps: u64,
    grad_ulps: u64,
    value_rel: f64,
    grad_rel: f64,
}

/// Values and gradients at widths 1, 4, 8, 16 for `family`: the worst ulp distance per
/// width.
fn ulps_at_every_width<F: TaskFamily<Batch = ()>>(family: &F) -> [Gap; 4] {
    [
        packed_vs_serial_ulps::<F, 1>(family, 5),
        packed_vs_serial_ulps::<F, 4>(family, 11),
        packed_vs_serial_ulps::<F, 8>(family, 19),
        packed_vs_serial_ulps::<F, 16>(family, 21),
    ]
}

/// A packed value or one gradient element after `init_lanes`, for [`vmap`]: what a lane
/// group computes before any optimizer.
struct Probe {
    /// `None`: the loss; `Some(i)`: element `i` of the gradient.
    elem: Option<usize>,
}

impl VmapFn<ArithFamily> for Probe {
    fn call<S: Real>(&self, family: &ArithFamily, cfg: &DVector<S>, keys: S::Key) -> S {
        let (k1, k2) = keys.split();
        let p = family.init_lanes(cfg, k1);
        let (loss, grad) = family.value_and_grad(&p, cfg, k2, &());
        match self.elem {
            None => loss,
            Some(i) => grad[i],
        }
    }
}

/// Arithmetic, `sqrt`, `abs`, `min`/`max` and the reductions (`sum`, `mean`, `dot`,
/// `norm_squared`), and the quadratic family: every lane's value and gradient has the
/// bits of the same instance computed alone in `f32`, at widths 1, 4, 8 and 16 (partial
/// last groups included). This is the README's bit-for-bit promise.
///
/// Catches: a packet operation that is not the IEEE one per lane (a reciprocal
/// approximation for `/` or `sqrt`); a reduction that sums packets in another order than
/// floats (e.g. the eight partial sums of `reduce` combined in another order, or the tail
/// added first); a lane reading its neighbour's data.
#[test]
fn elementwise_and_reductions_are_bit_for_bit_at_widths_1_4_8_16() {
    for (name, gaps) in [
        ("arith", ulps_at_every_width(&ArithFamily { dim: 37 })),
        (
            "quadratic",
            ulps_at_every_width(&FixedDimQuadraticFamily { dim: 19 }),
        ),
    ] {
        for (gap, width) in gaps.iter().zip([1, 4, 8, 16]) {
            assert_eq!(*gap, Gap::default(), "{name} at width {width}");
        }
    }
}

/// Through [`vmap`] on 1, 2 and 3 threads, at widths 8 and 16: each instance's loss and
/// every gradient element, computed in its lane group, equals its serial `f32` run bit
/// for bit.
///
/// Catches: groups formed or scattered back in the wrong order under Rayon (an instance
/// gets another's result); thread-dependent reduction order; the bit-for-bit breaks above.
#[test]
fn vmap_values_and_gradients_are_bit_for_bit_on_1_to_3_threads() {
    let family = ArithFamily { dim: 13 };
    let (cfgs, keys) = instances(&family, 37, 29);
    for elem in std::iter::once(None).chain((0..13).map(Some)) {
        let f = Probe { elem };
        let serial: Vec<u32> = vmap(&family, &f, &cfgs, &keys, Width::Serial)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        for threads in 1..=3 {
            for width in [Width::W8, Width::W16] {
                let got: Vec<u32> = pool(threads, || vmap(&family, &f, &cfgs, &keys, width))
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect();
                assert_eq!(got, serial, "{elem:?} at {width:?} on {threads} threads");
            }
        }
    }
}

/// Matrix products and `tanh`/`exp`/`ln` (softmax cross-entropy) are not promised bit
/// for bit: the packet GEMM rounds differently from the `f32` one (separate multiply
/// and add at widths not a multiple of 8, or another summation order in the reverse
/// products), and the packet transcendental functions are polynomials within 3 ulp of
/// the exact value where `f32` calls the platform's. The README's tolerance: each lane's
/// value within 1e-6 of the serial value (relative), each gradient element within 1e-6
/// of the serial gradient's largest element, at widths 1, 4, 8 and 16 (measured on the
/// AVX2 + FMA machine: at most 2.3e-7).
///
/// Catches: a lane of a matrix product or a transcendental packet function computing
/// another lane's or a wrong value (errors far above rounding); a tolerance silently
/// loosened (the bound is stated here and in the README).
#[test]
fn products_and_transcendentals_are_within_the_stated_tolerance() {
    let mat = MatFamily::new();
    let trans = TransFamily {
        inner: MatFamily::new(),
        labels: vec![0, 1, 2, 1, 0, 2, 2, 1, 0],
    };
    for (name, gaps) in [
        ("products", ulps_at_every_width(&mat)),
        ("transcendentals", ulps_at_every_width(&trans)),
    ] {
        for (gap, width) in gaps.iter().zip([1, 4, 8, 16]) {
            assert!(
                gap.value_rel <= 1e-6 && gap.grad_rel <= 1e-6,
                "{name} at width {width}: {gap:?}"
            );
        }
    }
}
