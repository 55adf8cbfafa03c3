//! `cargo bench --bench meta`: meta-training throughput.
//!
//! One PES estimate of `MlpLOpt` on the seed's quadratic family (dim 10): 64 tasks,
//! truncations of 10 steps, both antithetic sides (1,280 inner steps of a learned
//! optimizer), with tasks
//!
//! - `meta.pes.serial`: one per `f32` group (groups on Rayon),
//! - `meta.pes.lanes8` / `meta.pes.lanes16`: eight or sixteen to a SIMD lane group, each
//!   lane with its own θ ± ε.
//!
//! Times are per inner task-step (an estimate's time / 1,280). The worker state carries
//! over between calls, as in meta-training (runs of 50–200 steps restart as they end).
//!
//! The anchor cases time one full outer step of meta-training, the configuration of the
//! "Meta-training with learned_optimization" section of
//! scripts/jax/README.md: `SingleMachineGradientLearner::update` (one
//! `TruncatedPes` estimate, then Adam(1e-3) on θ) of `MlpLOpt::default()` (1,762 θ), with
//! `LOptTruncatedStep` of 8 tasks and `random_initial_iteration_offset = 200`,
//! `ConstantTruncationSchedule` of 200 steps, `TruncatedPes` with truncations of 50 steps
//! and σ = 0.01. The meta-state (θ, its Adam state, the tasks in training, the PES
//! accumulators) carries over between calls. One outer step = 2 × 8 × 50 = 800 inner
//! instance-steps. The JAX estimator's `steps_per_jit=10` has no counterpart: nothing is
//! compiled, an unroll is one loop of 50 steps.
//!
//! - `pes.quad`: on `FixedDimQuadraticFamily(10)`, the 8 tasks in one `Lanes<8>` group
//!   (`.batched::<Lanes<8>>()`, one θ ± ε per lane); `pes.quad.lanes4`: two groups of 4
//!   (one per core); `pes.quad.serial`: eight `f32` groups on Rayon. The one `Lanes<8>`
//!   group is the fastest (its 10-parameter tasks are too small to gain from a second
//!   core). Before timing, the three must give the same meta-gradient estimate for the
//!   same key and state.
//! - `pes.mlp`: on the image MLP of ImageMLP_FashionMnist8_Relu32's shape (64 → 32 relu →
//!   10, softmax cross-entropy, batch 128, f32; `single_task_to_family`) with random data
//!   in all four splits (images ~ U[0,1), labels ~ U{0..9}; a pre-generated pool of
//!   batches per split, cycled), the 8 tasks in eight `f32` groups on Rayon, each task
//!   with its own batch per step as in JAX's vectorized step; `pes.mlp.lanes8`: the 8
//!   tasks in one `Lanes<8>` group, which shares each step's batch. The `f32` groups are
//!   the faster here: the one lane group runs on one core (two groups of `Lanes<4>` were
//!   slower still, 3x `pes.mlp`). Before timing, the two must give the same estimate on
//!   data that repeats one batch (so that sharing does not matter).
//!
//! - `pes.conv`: the same on the conv net of `Conv_Cifar10_8_16x32`'s shape (8×8×3
//!   images, 3×3 convolutions of 16 and 32 channels with strides 2 and 1, `SAME`, ReLU,
//!   mean pool, linear head; 5,418 parameters; batch 128; `single_task_to_family`) on
//!   random data in all four splits, the 8 tasks in eight `f32` groups on Rayon. Its JAX
//!   counterpart is `pes.conv` of `scripts/jax/bench_tasks.py`.
//!
//! After the bench lines: each anchor case against the JAX figure, and inner
//! instance-steps per second.

mod common;

use std::time::Duration;

use common::{keep, median, Case};
use lopt::datasets::{ExtraInfo, ImageBatch};
use lopt::learned_optimizers::{LearnedOptimizer, MlpLOpt, MlpLOptTheta};
use lopt::outer_trainers::{
    ConstantTruncationSchedule, GradientEstimator, GradientLearner, LOptTruncatedStep,
    LogUniformLengthSchedule, MetaState, SingleMachineGradientLearner, TruncatedPes,
};
use lopt::prelude::*;
use lopt::tasks::conv::ConvTask;
use lopt::tasks::image_mlp::ImageMlpTask;
use lopt::tasks::quadratics::FixedDimQuadraticFamily;

const TASKS: usize = 64;
const TRUNC: usize = 10;

/// The anchors' meta-training: tasks per estimate, truncation, run length, σ, θ's lr.
const ANCHOR_TASKS: usize = 8;
const ANCHOR_TRUNC: usize = 50;
const ANCHOR_LENGTH: usize = 200;
const ANCHOR_STD: f32 = 0.01;
const ANCHOR_THETA_LR: f64 = 1e-3;
/// Inner instance-steps per outer step (both antithetic sides).
const ANCHOR_INNER_STEPS: f64 = (2 * ANCHOR_TASKS * ANCHOR_TRUNC) as f64;
/// JAX figures per outer step from scripts/jax/README.md: case, median, range (s).
const JAX: [(&str, f64, (f64, f64)); 2] = [
    ("pes.quad", 12.6e-3, (8.5e-3, 18.0e-3)),
    ("pes.mlp", 338e-3, (252e-3, 401e-3)),
];
/// Image MLP: batch size and training batches in the pool (other splits: `POOL / 16`).
const BATCH: usize = 128;
const POOL: usize = 64;

type Pes<'a, F, S> = TruncatedPes<'a, F, MlpLOpt, ConstantTruncationSchedule, S>;
type Learner<'a, E> = SingleMachineGradientLearner<'a, MlpLOpt, Adam, E>;
type AdamState = <Adam as Optimizer<MlpLOptTheta<f32>>>::State;
/// What meta-training carries between outer steps with estimator `E`.
type State<E> = MetaState<AdamState, <E as GradientEstimator<MlpLOpt>>::WorkerState>;

/// The anchors' estimator on `family` (tasks one per `f32` group; `.batched` for lanes).
fn anchor_pes<'a, F: TaskFamily>(
    family: &'a F,
    lopt: &'a MlpLOpt,
) -> lopt::Result<Pes<'a, F, f32>> {
    let schedule = ConstantTruncationSchedule {
        total_length: ANCHOR_LENGTH,
    };
    let mut step = LOptTruncatedStep::new(family, lopt, schedule, ANCHOR_TASKS)?;
    step.random_initial_iteration_offset = ANCHOR_LENGTH;
    TruncatedPes::new(step, ANCHOR_TRUNC, ANCHOR_STD)
}

/// The anchors' learner: Adam(1e-3) on θ, one estimator.
fn learner<E: GradientEstimator<MlpLOpt>>(lopt: &MlpLOpt, estimator: E) -> Learner<'_, E> {
    SingleMachineGradientLearner {
        learner: GradientLearner {
            lopt,
            theta_opt: Adam::new(ANCHOR_THETA_LR),
        },
        estimators: vec![estimator],
    }
}

/// The learner's meta-state from `Key::new(1)` and its first estimate for `Key::new(2)`
/// (flattened; the state advances by it, as an outer step's estimate would).
fn first_estimate<E: GradientEstimator<MlpLOpt>>(
    l: &Learner<'_, E>,
) -> lopt::Result<(State<E>, Vec<f32>, f32)> {
    let mut state = l.init(Key::new(1))?;
    let theta = l.learner.theta(&state.learner).clone();
    let out =
        l.estimators[0].compute_gradient_estimate(&theta, &mut state.workers[0], Key::new(2), 0)?;
    Ok((state, out.grad.flatten(), out.mean_loss))
}

/// Panics unless `b` is `a` up to `rel` of `a`'s largest element, and `a` is finite and
/// not all zero; prints the largest difference relative to that element.
fn assert_same_estimate(what: &str, a: &[f32], b: &[f32], rel: f32) {
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        scale.is_finite() && scale > 0.0,
        "{what}: estimate scale {scale}"
    );
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        a.len() == b.len() && err <= rel * scale,
        "{what}: largest difference {err} for largest element {scale}"
    );
    println!(
        "check {what}: same meta-gradient estimate (largest difference {:.1e} of the \
         largest element)",
        err / scale
    );
}

/// A case timing one outer step (`learner.update`) from `state`, a new key per call.
fn outer_case<'a, E>(id: &str, l: &'a Learner<'a, E>, mut state: State<E>) -> Case<'a>
where
    E: GradientEstimator<MlpLOpt>,
    E::WorkerState: 'a,
{
    let mut i = 0u64;
    Case::new(id, move || {
        i += 1;
        keep(l.update(&mut state, Key::new(3).fold_in(i)).unwrap());
    })
}

/// `n` random batches of the image MLP (images ~ U[0,1), labels ~ U{0..9}).
fn random_batches(seed: u64, n: usize) -> Vec<ImageBatch> {
    common::random_image_batches(seed, n, BATCH)
}

/// Four splits cycling pools of random batches, declaring 10 classes.
fn random_datasets() -> Datasets<ImageBatch> {
    let split = |seed: u64, n: usize| random_batches(seed, n).into_iter().cycle();
    Datasets::new(
        split(10, POOL),
        split(11, POOL / 16),
        split(12, POOL / 16),
        split(13, POOL / 16),
    )
    .with_extra_info(ExtraInfo::with_num_classes(10))
}

/// Four splits cycling pools of random 8×8×3 batches (the conv anchor), 10 classes.
fn random_conv_datasets() -> Datasets<ImageBatch> {
    let split = |seed: u64, n: usize| {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<ImageBatch> = (0..n)
            .map(|_| ImageBatch {
                image: DMatrix::from_fn(BATCH, 192, |_, _| rng.gen::<f32>()),
                label: (0..BATCH).map(|_| rng.gen_range(0..10)).collect(),
                height: 8,
                width: 8,
                channels: 3,
            })
            .collect();
        v.into_iter().cycle()
    };
    Datasets::new(
        split(30, POOL),
        split(31, POOL / 16),
        split(32, POOL / 16),
        split(33, POOL / 16),
    )
    .with_extra_info(ExtraInfo::with_num_classes(10))
}

/// Four splits repeating one batch.
fn one_batch_datasets() -> Datasets<ImageBatch> {
    let b = random_batches(20, 1).remove(0);
    let r = || std::iter::repeat(b.clone());
    Datasets::new(r(), r(), r(), r()).with_extra_info(ExtraInfo::with_num_classes(10))
}

fn main() -> lopt::Result<()> {
    let family = FixedDimQuadraticFamily { dim: 10 };
    let lopt = MlpLOpt::default();
    let theta = lopt.init(Key::new(0));
    let pes = || -> lopt::Result<_> {
        let schedule = LogUniformLengthSchedule {
            min_length: 50,
            max_length: 200,
        };
        TruncatedPes::new(
            LOptTruncatedStep::new(&family, &lopt, schedule, TASKS)?,
            TRUNC,
            0.01,
        )
    };
    let (serial, lanes8, lanes16) = (
        pes()?,
        pes()?.batched::<Lanes<8>>(),
        pes()?.batched::<Lanes<16>>(),
    );
    let (mut s1, mut s8, mut s16) = (
        serial.init_worker_state(&theta, Key::new(1), 0)?,
        lanes8.init_worker_state(&theta, Key::new(1), 0)?,
        lanes16.init_worker_state(&theta, Key::new(1), 0)?,
    );
    // The three give the same estimate (checked before timing).
    let k = Key::new(2);
    let a = serial
        .compute_gradient_estimate(&theta, &mut s1, k, 0)?
        .grad
        .flatten();
    let b = lanes8
        .compute_gradient_estimate(&theta, &mut s8, k, 0)?
        .grad
        .flatten();
    let c = lanes16
        .compute_gradient_estimate(&theta, &mut s16, k, 0)?
        .grad
        .flatten();
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (x, (y, z)) in a.iter().zip(b.iter().zip(&c)) {
        assert!((x - y).abs() <= 1e-4 * scale && (x - z).abs() <= 1e-4 * scale);
    }

    // The anchors' quadratic learners; the same estimate whatever the grouping.
    let quad_lanes8 = learner(&lopt, anchor_pes(&family, &lopt)?.batched::<Lanes<8>>());
    let quad_lanes4 = learner(&lopt, anchor_pes(&family, &lopt)?.batched::<Lanes<4>>());
    let quad_serial = learner(&lopt, anchor_pes(&family, &lopt)?);
    let (q8, g8, _) = first_estimate(&quad_lanes8)?;
    let (q4, g4, _) = first_estimate(&quad_lanes4)?;
    let (q1, g1, _) = first_estimate(&quad_serial)?;
    assert_same_estimate("pes.quad: serial vs lanes8", &g1, &g8, 1e-4);
    assert_same_estimate("pes.quad: serial vs lanes4", &g1, &g4, 1e-4);

    // The anchors' image MLP learners. On data repeating one batch, lanes (which share
    // a batch) and f32 groups (one batch each) compute the same estimate.
    let mlp_task = |ds| -> lopt::Result<_> {
        Ok(single_task_to_family(
            ImageMlpTask::<1>::new(ds, 64, vec![32])?.with_name("ImageMLP_Random8_Relu32"),
        ))
    };
    {
        let same = mlp_task(one_batch_datasets())?;
        let (_, a, loss) = first_estimate(&learner(&lopt, anchor_pes(&same, &lopt)?))?;
        let (_, b, _) = first_estimate(&learner(
            &lopt,
            anchor_pes(&same, &lopt)?.batched::<Lanes<8>>(),
        ))?;
        // Random labels: the normalized loss of a barely trained MLP is about ln 10.
        assert!((1.5..3.0).contains(&loss), "image MLP meta-loss {loss}");
        assert_same_estimate("pes.mlp: serial vs lanes8", &a, &b, 1e-3);
    }
    let mlp = mlp_task(random_datasets())?;
    let mlp_serial = learner(&lopt, anchor_pes(&mlp, &lopt)?);
    let mlp_lanes8 = learner(&lopt, anchor_pes(&mlp, &lopt)?.batched::<Lanes<8>>());
    let (m1, _, _) = first_estimate(&mlp_serial)?;
    let conv = single_task_to_family(
        ConvTask::<2>::new(random_conv_datasets(), (8, 8, 3), vec![16, 32])?
            .with_name("Conv_Random8x8x3_16x32"),
    );
    let conv_serial = learner(&lopt, anchor_pes(&conv, &lopt)?);
    let (c1, _, conv_loss) = first_estimate(&conv_serial)?;
    // Random labels: the normalized loss of a barely trained net is about ln 10.
    assert!(
        (1.5..3.0).contains(&conv_loss),
        "conv meta-loss {conv_loss}"
    );
    let (m8, _, _) = first_estimate(&mlp_lanes8)?;

    let units = (2 * TASKS * TRUNC) as f64;
    let keys = Key::new(3).split_n(1 << 16);
    let (mut i1, mut i8, mut i16) = (0usize, 0usize, 0usize);
    let mut cases = vec![
        Case::new("meta.pes.serial", || {
            i1 += 1;
            keep(
                serial
                    .compute_gradient_estimate(&theta, &mut s1, keys[i1 % keys.len()], 0)
                    .unwrap(),
            );
        })
        .per(units),
        Case::new("meta.pes.lanes8", || {
            i8 += 1;
            keep(
                lanes8
                    .compute_gradient_estimate(&theta, &mut s8, keys[i8 % keys.len()], 0)
                    .unwrap(),
            );
        })
        .per(units),
        Case::new("meta.pes.lanes16", || {
            i16 += 1;
            keep(
                lanes16
                    .compute_gradient_estimate(&theta, &mut s16, keys[i16 % keys.len()], 0)
                    .unwrap(),
            );
        })
        .per(units),
        outer_case("pes.quad", &quad_lanes8, q8),
        outer_case("pes.quad.lanes4", &quad_lanes4, q4),
        outer_case("pes.quad.serial", &quad_serial, q1),
        outer_case("pes.mlp", &mlp_serial, m1),
        outer_case("pes.mlp.lanes8", &mlp_lanes8, m8),
        outer_case("pes.conv", &conv_serial, c1),
    ];
    // `cargo bench --bench meta -- pes.mlp` runs the cases whose id contains `pes.mlp`.
    common::select(&mut cases);
    let s = common::run(&mut cases, 9, Duration::from_millis(100));
    let serial = median(&s, "meta.pes.serial");
    println!(
        "per inner task-step (MlpLOpt on a 10-parameter quadratic): serial {:.2} us",
        serial * 1e6
    );
    for id in ["meta.pes.lanes8", "meta.pes.lanes16"] {
        println!(
            "ratio {id}: {:.2}x faster than serial",
            serial / median(&s, id)
        );
    }
    println!(
        "per outer step ({ANCHOR_INNER_STEPS} inner instance-steps); JAX figures from \
         scripts/jax/README.md (an AVX-512 Xeon, not this machine):"
    );
    for (id, jax, (lo, hi)) in JAX {
        for sm in s.iter().filter(|sm| sm.id.starts_with(id)) {
            let ours = sm.median;
            let (ratio, word) = if ours <= jax {
                (jax / ours, "faster")
            } else {
                (ours / jax, "slower")
            };
            println!(
                "anchor {}: lopt {:.2} ms, JAX {:.1} ms ({:.1}–{:.1}): {ratio:.1}x {word} than \
                 the JAX anchor; {:.1} k inner instance-steps/s (JAX {:.1} k)",
                sm.id,
                ours * 1e3,
                jax * 1e3,
                lo * 1e3,
                hi * 1e3,
                ANCHOR_INNER_STEPS / ours / 1e3,
                ANCHOR_INNER_STEPS / jax / 1e3,
            );
        }
    }
    Ok(())
}
