//! Meta-training: the PES estimator against the meta-gradient computed independently by
//! finite differences in f64, its reset bookkeeping, determinism over thread counts, and
//! a learner that improves a learned optimizer.

use lopt::datasets::{Datasets, Split};
use lopt::learned_optimizers::{LearnableSgd, LearnedOptimizer, MlpLOpt};
use lopt::outer_trainers::{
    sample_perturbations, ConstantTruncationSchedule, GradientEstimator, GradientLearner,
    LOptTruncatedStep, MetaLossSplit, SingleMachineGradientLearner, TaskGroup, TruncatedPes,
};
use lopt::prelude::*;
use lopt::tasks::quadratics::FixedDimQuadraticFamily;

type Fam = FixedDimQuadraticFamily;

/// Task `s`'s meta-loss in f64: the mean over `t_len` steps of the training loss before
/// each LearnableSgd update with θ = `[log_lr]`, from its initial state (after each
/// update when `after`: `meta_loss_split = SameData`).
fn unrolled_loss_at(
    family: &Fam,
    s: &TaskGroup<Fam, LearnableSgd>,
    log_lr: f64,
    t_len: usize,
    after: bool,
) -> f64 {
    let cfg: DVector<f64> = family.cast_cfg::<f32, f64>(&s.cfg);
    let mut p: DVector<f64> = family.cast_params::<f32, f64>(&s.opt_state.params);
    let mut total = 0.0;
    for _ in 0..t_len {
        let (l, g) = family.value_and_grad::<f64>(&p, &cfg, Key::new(0), &());
        p -= g * log_lr.exp();
        total += if after {
            family.loss::<f64>(&p, &cfg, Key::new(0), &())
        } else {
            l
        };
    }
    total / t_len as f64
}

/// The derivative in `log_lr` of the tasks' mean meta-loss (before or `after` each
/// update): central differences in f64.
fn mean_slope_at(
    family: &Fam,
    tasks: &[TaskGroup<Fam, LearnableSgd>],
    log_lr: f64,
    t_len: usize,
    after: bool,
) -> f64 {
    mean_slope_of(tasks, log_lr, |s, x| {
        unrolled_loss_at(family, s, x, t_len, after)
    })
}

/// The derivative in `log_lr` of the mean over `tasks` of `f(task, log_lr)`: central
/// differences in f64.
fn mean_slope_of<F: TaskFamily>(
    tasks: &[TaskGroup<F, LearnableSgd>],
    log_lr: f64,
    f: impl Fn(&TaskGroup<F, LearnableSgd>, f64) -> f64,
) -> f64 {
    let h = 1e-4;
    let mean = |x: f64| tasks.iter().map(|s| f(s, x)).sum::<f64>() / tasks.len() as f64;
    (mean(log_lr + h) - mean(log_lr - h)) / (2.0 * h)
}

/// An ES estimate from 1,024 tasks against the true slope. ES averages f'(θ)·z² over N
/// standard normals z: relative sampling error about sqrt(2 / N) ≈ 4.4% when the tasks'
/// slopes are alike; 20% is over 4 standard errors.
fn assert_es_estimate(what: &str, estimate: f64, true_grad: f64) {
    assert!(
        true_grad.abs() > 1.0,
        "the test needs a clear slope: {true_grad}"
    );
    assert!(
        (estimate - true_grad).abs() < 0.2 * true_grad.abs(),
        "{what} {estimate} vs finite differences {true_grad}"
    );
}

/// The first PES estimate for 1,024 quadratics of dimension 4 trained by LearnableSgd
/// (lr 0.05) in truncations of `t_len` steps, σ = 0.02, against the meta-gradient and the
/// mean meta-loss computed per task by finite differences in f64 (the loss before each
/// update, or `after` it with `meta_loss_split = SameData`). Returns the true slopes
/// before and after.
fn check_first_pes_estimate(t_len: usize, after: bool) -> (f64, f64) {
    let family = Fam { dim: 4 };
    let lopt = LearnableSgd { initial_lr: 0.05 };
    let (n, std) = (1024, 0.02f32);
    let mut step = LOptTruncatedStep::new(
        &family,
        &lopt,
        ConstantTruncationSchedule { total_length: 1000 },
        n,
    )
    .unwrap();
    if after {
        step.meta_loss_split = Some(MetaLossSplit::SameData);
    }
    let pes = TruncatedPes::new(step, t_len, std).unwrap();
    let theta = lopt.init(Key::new(0));
    let mut state = pes.init_worker_state(&theta, Key::new(1), 0).unwrap();
    let tasks = state.pos.clone();
    let est = pes
        .compute_gradient_estimate(&theta, &mut state, Key::new(2), 0)
        .unwrap();

    // The true gradient of the mean truncation loss: central differences in f64 per task.
    let th = theta[0] as f64;
    let slope = |after| mean_slope_at(&family, &tasks, th, t_len, after);
    let mean_loss = tasks
        .iter()
        .map(|s| unrolled_loss_at(&family, s, th, t_len, after))
        .sum::<f64>()
        / n as f64;
    assert_es_estimate("PES", est.grad[0] as f64, slope(after));
    // With σ = 0.02, the smoothed loss is the loss to within f''σ²/2.
    assert!(
        (est.mean_loss as f64 - mean_loss).abs() < 1e-2 * mean_loss,
        "{} vs {mean_loss}",
        est.mean_loss
    );
    (slope(false), slope(true))
}

#[test]
fn first_pes_estimate_is_the_es_gradient_of_the_truncation_loss() {
    check_first_pes_estimate(5, false);
}

/// With `meta_loss_split = SameData` the meta-loss is the loss after each update: PES
/// estimates that objective's slope, which over two steps is more than twice the
/// default's (so the test's 20% tolerance tells them apart), and reports its mean.
#[test]
fn pes_with_same_data_meta_loss_follows_the_post_update_loss() {
    let (before, after) = check_first_pes_estimate(2, true);
    assert!(
        (after - before).abs() > 0.5 * after.abs(),
        "{after} {before}"
    );
}

/// `Σ (p − c)²` scaled by the batch: the training split serves 1, outer_valid 3, 5, 7,
/// 3, 5, 7, ..., so a meta-loss read on the wrong split is off by a factor of 3 or more.
struct ScaledFamily {
    datasets: Datasets<f32>,
}

impl ScaledFamily {
    fn new() -> Self {
        ScaledFamily {
            datasets: Datasets::new(
                std::iter::repeat(1.0f32),
                std::iter::repeat(2.0f32),
                [3.0f32, 5.0, 7.0].into_iter().cycle(),
                std::iter::repeat(4.0f32),
            ),
        }
    }
}

#[task_family]
impl TaskFamily for ScaledFamily {
    type Cfg<S: Real> = DVector<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = f32;
    fn sample(&self, key: Key) -> DVector<f32> {
        DVector::from_vec(key.normal_vec(3))
    }
    fn init<S: Real>(&self, _cfg: &DVector<S>, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(3))
    }
    fn loss<S: Real>(&self, p: &DVector<S>, c: &DVector<S>, _key: S::Key, b: &f32) -> S {
        sum(square(p - c)) * b
    }
    fn datasets(&self) -> Option<Datasets<f32>> {
        Some(self.datasets.clone())
    }
}

/// Each meta-loss choice reports the loss of the right parameters on the right split,
/// computed here in f64 from the group's state before and after the step, in one lane
/// and in a group of eight.
#[test]
fn meta_loss_split_reads_the_named_split_after_the_update() {
    fn check<S: Real>(choice: Option<MetaLossSplit>) {
        let family = ScaledFamily::new();
        let lopt = LearnableSgd { initial_lr: 0.1 };
        let mut step = LOptTruncatedStep::new(
            &family,
            &lopt,
            ConstantTruncationSchedule { total_length: 100 },
            S::LANES,
        )
        .unwrap();
        step.meta_loss_split = choice;
        let theta = lopt.init(Key::new(0));
        let mut groups = step.init_step_state::<S>(&theta, Key::new(1), 0).unwrap();
        let group = &mut groups[0];
        let lane_f64 = |g: &TaskGroup<ScaledFamily, LearnableSgd, S>, l: usize| {
            let c = g.cfg.map(|x| x.lane(l));
            let p = g.opt_state.params.map(|x| x.lane(l));
            (c, p)
        };
        let before: Vec<_> = (0..S::LANES).map(|l| lane_f64(group, l)).collect();
        let keys = Key::new(2).split_n(S::LANES);
        let theta_s = lopt.cast_theta::<f32, S>(&theta);
        let meta = step.next_meta_batch().unwrap();
        let out = step
            .unroll_group_step(&theta_s, group, &keys, &1.0, meta.as_ref(), 0)
            .unwrap();
        for (l, o) in out.iter().enumerate() {
            let (c, p0) = &before[l];
            let (_, p1) = lane_f64(group, l);
            let sq = |p: &DVector<f64>| (p - c).norm_squared();
            let want = match choice {
                None => sq(p0),
                Some(MetaLossSplit::SameData) => sq(&p1),
                Some(MetaLossSplit::Split(Split::OuterValid)) => 3.0 * sq(&p1),
                Some(MetaLossSplit::Split(_)) => unreachable!("not tested"),
            };
            // The update itself: p1 = p0 − lr · 2 (p0 − c).
            let p1_want = p0 - (p0 - c) * (2.0 * 0.1);
            assert!((&p1 - p1_want).norm() < 1e-5, "lane {l}: the update");
            assert!(
                (o.loss as f64 - want).abs() < 1e-5 * want.max(1.0),
                "{choice:?} lane {l}: {} vs {want}",
                o.loss
            );
        }
    }
    for choice in [
        None,
        Some(MetaLossSplit::SameData),
        Some(MetaLossSplit::Split(Split::OuterValid)),
    ] {
        check::<f32>(choice);
        check::<Lanes<8>>(choice);
    }
}

/// Task `s` of [`ScaledFamily`] after `t_len` LearnableSgd steps on the training split
/// (scale 1) with θ = `[log_lr]`: `Σ (p − c)²` in f64.
fn scaled_trained_loss(
    s: &TaskGroup<ScaledFamily, LearnableSgd>,
    log_lr: f64,
    t_len: usize,
) -> f64 {
    let c = s.cfg.map(|x| x as f64);
    let mut p = s.opt_state.params.map(|x| x as f64);
    for _ in 0..t_len {
        p -= (&p - &c) * (2.0 * log_lr.exp());
    }
    (p - c).norm_squared()
}

/// A split meta-loss reaches PES through its unroll: one task, one step, the same
/// θ ± ε, keys and training data; only the meta batch differs (3 against the training
/// batch's 1), so the estimate's mean loss is exactly three times `SameData`'s.
#[test]
fn pes_reads_the_meta_loss_split_through_its_unroll() {
    let mean_loss = |split: MetaLossSplit| {
        let family = ScaledFamily::new();
        let lopt = LearnableSgd { initial_lr: 0.1 };
        let sched = ConstantTruncationSchedule { total_length: 100 };
        let mut step = LOptTruncatedStep::new(&family, &lopt, sched, 1).unwrap();
        step.meta_loss_split = Some(split);
        let pes = TruncatedPes::new(step, 1, 0.01).unwrap();
        let theta = lopt.init(Key::new(0));
        let mut state = pes.init_worker_state(&theta, Key::new(1), 0).unwrap();
        let est = pes
            .compute_gradient_estimate(&theta, &mut state, Key::new(2), 0)
            .unwrap();
        est.mean_loss as f64
    };
    let (same, outer) = (
        mean_loss(MetaLossSplit::SameData),
        mean_loss(MetaLossSplit::Split(Split::OuterValid)),
    );
    assert!(same > 0.1, "{same}");
    assert!(
        (outer - 3.0 * same).abs() <= 1e-5 * outer,
        "{outer} vs 3 × {same}"
    );
}

/// `LastRecompute` scores a run by its trained parameters' loss on batches of
/// `outer_data_split`, averaged: outer_valid serves 3, 5 and 7 in turn, so with 3
/// samples every task's score is 5× its trained loss (the last step's training loss,
/// what `Last` reads, is not even the same parameters'), in f32 groups and in lanes;
/// FullEs estimates that score's slope, checked by finite differences in f64.
#[test]
fn full_es_last_recompute_reads_and_averages_the_outer_split() {
    use lopt::outer_trainers::{EsLoss, FullEs, NeverEndingTruncationSchedule};
    let family = ScaledFamily::new();
    let lopt = LearnableSgd { initial_lr: 0.05 };
    let (n, t_len) = (1024, 2);
    let es = || {
        let mut step =
            LOptTruncatedStep::new(&family, &lopt, NeverEndingTruncationSchedule, n).unwrap();
        step.outer_data_split = Split::OuterValid;
        let sched = ConstantTruncationSchedule {
            total_length: t_len,
        };
        let mut es = FullEs::new(step, sched, 0.02).unwrap();
        es.loss = EsLoss::LastRecompute { samples: 3 };
        es
    };
    let theta = lopt.init(Key::new(0));
    let key = Key::new(7);
    let tasks: Vec<TaskGroup<ScaledFamily, LearnableSgd>> = es()
        .step
        .init_step_state(&theta, key.split_n(4)[2], 0)
        .unwrap();
    let th = theta[0] as f64;
    let score =
        |s: &TaskGroup<ScaledFamily, LearnableSgd>, x: f64| 5.0 * scaled_trained_loss(s, x, t_len);
    let want_loss = tasks.iter().map(|s| score(s, th)).sum::<f64>() / n as f64;
    let want_grad = mean_slope_of(&tasks, th, score);
    let serial = es()
        .compute_gradient_estimate(&theta, &mut (), key, 0)
        .unwrap();
    let lanes = es()
        .batched::<Lanes<8>>()
        .compute_gradient_estimate(&theta, &mut (), key, 0)
        .unwrap();
    for (what, est) in [("f32 groups", &serial), ("lanes", &lanes)] {
        assert!(
            (est.mean_loss as f64 - want_loss).abs() < 1e-2 * want_loss,
            "{what}: {} vs {want_loss}",
            est.mean_loss
        );
        assert_es_estimate(what, est.grad[0] as f64, want_grad);
    }
    // No samples is an error, not a division by zero.
    let mut none = es();
    none.loss = EsLoss::LastRecompute { samples: 0 };
    assert!(matches!(
        none.compute_gradient_estimate(&theta, &mut (), key, 0),
        Err(Error::InvalidArgument(_))
    ));
}

/// A split meta-loss without its batch is a typed error.
#[test]
fn meta_loss_split_without_its_batch_is_an_error() {
    let family = ScaledFamily::new();
    let lopt = LearnableSgd::default();
    let mut step = LOptTruncatedStep::new(
        &family,
        &lopt,
        ConstantTruncationSchedule { total_length: 5 },
        1,
    )
    .unwrap();
    step.meta_loss_split = Some(MetaLossSplit::Split(Split::OuterValid));
    let theta = lopt.init(Key::new(0));
    let mut groups = step.init_step_state::<f32>(&theta, Key::new(1), 0).unwrap();
    assert!(matches!(
        step.unroll_group_step(&theta, &mut groups[0], &[Key::new(2)], &1.0, None, 0),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
#[allow(clippy::needless_range_loop)] // task i across four parallel vectors
fn accumulator_restarts_at_a_reset_and_grows_otherwise() {
    let family = Fam { dim: 3 };
    let lopt = LearnableSgd::default();
    let n = 4;
    let theta = lopt.init(Key::new(0));
    let run = |total_length: usize| {
        let step = LOptTruncatedStep::new(
            &family,
            &lopt,
            ConstantTruncationSchedule { total_length },
            n,
        )
        .unwrap();
        let pes = TruncatedPes::new(step, 3, 0.01).unwrap();
        let mut state = pes.init_worker_state(&theta, Key::new(1), 0).unwrap();
        let keys = [Key::new(2), Key::new(3)];
        for &k in &keys {
            pes.compute_gradient_estimate(&theta, &mut state, k, 0)
                .unwrap();
        }
        let eps: Vec<Vec<[f32; 1]>> = keys
            .iter()
            .map(|k| sample_perturbations(&theta, k.split().0, 0.01, n))
            .collect();
        (state, eps)
    };
    // Runs of 100 steps: no reset in 6 steps, so each accumulator is ε₁ + ε₂.
    let (state, eps) = run(100);
    for i in 0..n {
        let want = eps[0][i][0] + eps[1][i][0];
        assert!((state.accumulator[i][0] - want).abs() < 1e-7, "task {i}");
        assert_eq!(state.pos[i].inner_step, [6]);
    }
    // Runs of 2 steps: every truncation of 3 ends one, so the accumulator is the last ε.
    let (state, eps) = run(2);
    for i in 0..n {
        assert_eq!(state.accumulator[i][0], eps[1][i][0], "task {i}");
        // Both sides reset together.
        assert_eq!(state.pos[i].inner_step, state.neg[i].inner_step);
        assert_eq!(state.pos[i].cfg, state.neg[i].cfg);
    }
}

#[test]
fn same_key_same_estimate_on_one_and_two_threads() {
    let family = Fam { dim: 5 };
    let lopt = MlpLOpt::default();
    let theta = lopt.init(Key::new(0));
    let estimate = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let step = LOptTruncatedStep::new(
                &family,
                &lopt,
                ConstantTruncationSchedule { total_length: 7 },
                6,
            )
            .unwrap();
            let pes = TruncatedPes::new(step, 4, 0.01).unwrap();
            let mut state = pes.init_worker_state(&theta, Key::new(1), 0).unwrap();
            let a = pes
                .compute_gradient_estimate(&theta, &mut state, Key::new(2), 0)
                .unwrap();
            let b = pes
                .compute_gradient_estimate(&theta, &mut state, Key::new(3), 1)
                .unwrap();
            (a.mean_loss, a.grad.flatten(), b.mean_loss, b.grad.flatten())
        })
    };
    let one = estimate(1);
    assert_eq!(one, estimate(2));
    assert!(one.1.iter().any(|&x| x != 0.0) && one.3.iter().all(|x| x.is_finite()));
}

#[test]
fn meta_training_raises_a_too_small_learning_rate() {
    let family = Fam { dim: 10 };
    let lopt = LearnableSgd { initial_lr: 1e-3 };
    let sched = ConstantTruncationSchedule { total_length: 40 };
    let step = LOptTruncatedStep::new(&family, &lopt, sched, 16).unwrap();
    let learner = SingleMachineGradientLearner {
        learner: GradientLearner {
            lopt: &lopt,
            theta_opt: Adam {
                lr: 0.05,
                ..Adam::default()
            },
        },
        estimators: vec![TruncatedPes::new(step, 10, 0.01).unwrap()],
    };
    let mut state = learner.init(Key::new(0)).unwrap();
    let theta0 = learner.learner.theta(&state.learner)[0];
    let mut losses = Vec::new();
    for k in Key::new(1).split_n(60) {
        losses.push(learner.update(&mut state, k).unwrap());
    }
    let theta1 = learner.learner.theta(&state.learner)[0];
    assert_eq!(learner.learner.outer_iteration(&state.learner), 60);
    // On a quadratic with curvature 2, SGD converges fastest near lr 0.5; from lr 1e-3
    // the meta-gradient must push log lr up, and the meta-loss must fall.
    assert!(theta1 > theta0 + 1.0, "log lr {theta0} -> {theta1}");
    let first = losses[..10].iter().sum::<f32>() / 10.0;
    let last = losses[50..].iter().sum::<f32>() / 10.0;
    assert!(last < 0.8 * first, "meta-loss {first} -> {last}");
}

/// Tasks in SIMD lanes (here 8 per group, 12 tasks: one full and one partial group) give
/// the estimate the same tasks give one per group in f32, across resets.
#[test]
fn lane_batched_pes_matches_serial_pes() {
    let family = Fam { dim: 6 };
    let lopt = MlpLOpt::default();
    let theta = lopt.init(Key::new(0));
    let make = || {
        let step = LOptTruncatedStep::new(
            &family,
            &lopt,
            ConstantTruncationSchedule { total_length: 5 },
            12,
        )
        .unwrap();
        TruncatedPes::new(step, 4, 0.01).unwrap()
    };
    let (serial, batched) = (make(), make().batched::<Lanes<8>>());
    let mut s1 = serial.init_worker_state(&theta, Key::new(1), 0).unwrap();
    let mut s8 = batched.init_worker_state(&theta, Key::new(1), 0).unwrap();
    assert_eq!((s1.pos.len(), s8.pos.len()), (12, 2));
    for k in [Key::new(2), Key::new(3), Key::new(4)] {
        let a = serial
            .compute_gradient_estimate(&theta, &mut s1, k, 0)
            .unwrap();
        let b = batched
            .compute_gradient_estimate(&theta, &mut s8, k, 0)
            .unwrap();
        assert!((a.mean_loss - b.mean_loss).abs() <= 1e-5 * a.mean_loss.abs().max(1.0));
        let (ga, gb) = (a.grad.flatten(), b.grad.flatten());
        let scale = ga.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0);
        for (x, y) in ga.iter().zip(&gb) {
            assert!((x - y).abs() <= 1e-4 * scale, "{x} vs {y} (scale {scale})");
        }
    }
    // Every task restarted at least once in 12 steps of runs of 5.
    for (i, acc) in s1.accumulator.iter().enumerate() {
        assert_eq!(acc.flatten(), s8.accumulator[i].flatten());
    }
}

/// A family whose tasks differ in shape (hidden widths 16, 32, 64): in f32, one task per
/// group, a task restarting with another width replaces its group; in lanes, the mixed
/// shapes are a clear error, not a panic.
#[test]
fn tasks_of_several_shapes_train_one_per_group_and_refuse_lanes() {
    let family = lopt::tasks::image_mlp::ImageMlpFamily::digits8(16).unwrap();
    let lopt = MlpLOpt::default();
    let theta = lopt.init(Key::new(0));
    let make = || {
        let step = LOptTruncatedStep::new(
            &family,
            &lopt,
            ConstantTruncationSchedule { total_length: 2 },
            6,
        )
        .unwrap();
        TruncatedPes::new(step, 3, 0.01).unwrap()
    };
    let pes = make();
    let mut state = pes.init_worker_state(&theta, Key::new(1), 0).unwrap();
    type Mlp = lopt::tasks::image_mlp::ImageMlpFamily;
    let widths = |s: &lopt::outer_trainers::PesState<Mlp, MlpLOpt>| -> Vec<usize> {
        s.pos.iter().map(|g| g.cfg.hidden).collect()
    };
    let before = widths(&state);
    for k in [Key::new(2), Key::new(3)] {
        let est = pes
            .compute_gradient_estimate(&theta, &mut state, k, 0)
            .unwrap();
        assert!(est.mean_loss.is_finite() && est.grad.flatten().iter().all(|x| x.is_finite()));
    }
    // Every task restarted (runs of 2 in 6 steps), and some with another width.
    assert_ne!(before, widths(&state));
    for g in &state.pos {
        assert_eq!(g.opt_state.params.w1.ncols(), g.cfg.hidden);
    }
    let batched = make().batched::<Lanes<8>>();
    match batched.init_worker_state(&theta, Key::new(1), 0) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("one shape"), "{msg}"),
        other => panic!("expected a shape error, got {:?}", other.map(|_| ())),
    }
}

/// FullES estimates the gradient of the mean loss of a whole run from fresh tasks.
#[test]
fn full_es_estimates_the_gradient_of_the_run_loss() {
    use lopt::outer_trainers::{FullEs, NeverEndingTruncationSchedule};
    let family = Fam { dim: 4 };
    let lopt = LearnableSgd { initial_lr: 0.05 };
    let (n, t_len, std) = (1024, 5, 0.02f32);
    let step = LOptTruncatedStep::new(&family, &lopt, NeverEndingTruncationSchedule, n).unwrap();
    let es = FullEs::new(
        step,
        ConstantTruncationSchedule {
            total_length: t_len,
        },
        std,
    )
    .unwrap()
    .batched::<Lanes<8>>();
    let theta = lopt.init(Key::new(0));
    let key = Key::new(7);
    let est = es
        .compute_gradient_estimate(&theta, &mut (), key, 0)
        .unwrap();
    // The same tasks, one per f32 group, from the key FullEs starts them with.
    let tasks: Vec<TaskGroup<Fam, LearnableSgd>> = es
        .step
        .init_step_state(&theta, key.split_n(4)[2], 0)
        .unwrap();
    let th = theta[0] as f64;
    let true_grad = mean_slope_at(&family, &tasks, th, t_len, false);
    assert_es_estimate("FullEs", est.grad[0] as f64, true_grad);
    // A step whose runs end is refused.
    let ending = LOptTruncatedStep::new(
        &family,
        &lopt,
        ConstantTruncationSchedule { total_length: 3 },
        2,
    )
    .unwrap();
    assert!(matches!(
        FullEs::new(ending, ConstantTruncationSchedule { total_length: 3 }, 0.01),
        Err(Error::InvalidArgument(_))
    ));
}

/// `sign_delta_loss_scalar = s` replaces each task's Δ by `sign(Δ) · s`. Here every
/// task's loss falls as the learning rate grows, so `sign(Δᵢ) = −sign(εᵢ)` and both PES
/// and FullEs must give `meanᵢ −s·|εᵢ| / (2σ²)`, about `−s·sqrt(2/π) / (2σ)` (the mean of
/// 1,024 half-normals is within 10% of its expectation by far), whatever the slope's size
/// (the plain estimate here is about −2; this is about −10).
#[test]
fn sign_delta_estimates_follow_the_closed_form() {
    use lopt::outer_trainers::{FullEs, NeverEndingTruncationSchedule};
    let family = Fam { dim: 4 };
    let lopt = LearnableSgd { initial_lr: 0.05 };
    let (n, t_len, std, scalar) = (1024, 3, 0.02f32, 0.5f32);
    let want = -(scalar as f64) * (2.0 / std::f64::consts::PI).sqrt() / (2.0 * std as f64);
    let theta = lopt.init(Key::new(0));
    let sched = ConstantTruncationSchedule { total_length: 1000 };
    let mut pes = TruncatedPes::new(
        LOptTruncatedStep::new(&family, &lopt, sched, n).unwrap(),
        t_len,
        std,
    )
    .unwrap();
    pes.sign_delta_loss_scalar = Some(scalar);
    let mut state = pes.init_worker_state(&theta, Key::new(1), 0).unwrap();
    let pes_est = pes
        .compute_gradient_estimate(&theta, &mut state, Key::new(2), 0)
        .unwrap();
    let step = LOptTruncatedStep::new(&family, &lopt, NeverEndingTruncationSchedule, n).unwrap();
    let sched = ConstantTruncationSchedule {
        total_length: t_len,
    };
    let mut es = FullEs::new(step, sched, std).unwrap().batched::<Lanes<8>>();
    es.sign_delta_loss_scalar = Some(scalar);
    let es_est = es
        .compute_gradient_estimate(&theta, &mut (), Key::new(3), 0)
        .unwrap();
    for (what, g) in [("PES", pes_est.grad[0]), ("FullEs", es_est.grad[0])] {
        assert!(
            (g as f64 - want).abs() < 0.1 * want.abs(),
            "{what}: {g} vs {want}"
        );
    }
}

/// Inner training that diverges to infinity and NaN does not stop meta-training: the
/// learner counts non-finite gradient elements as 0 and a non-finite meta-loss as 20.
#[test]
fn meta_training_survives_diverging_tasks() {
    let family = Fam { dim: 10 };
    let lopt = LearnableSgd { initial_lr: 1e3 }; // curvature 2: any lr above 1 diverges
    let step = LOptTruncatedStep::new(
        &family,
        &lopt,
        ConstantTruncationSchedule { total_length: 200 },
        4,
    )
    .unwrap();
    let learner = SingleMachineGradientLearner {
        learner: GradientLearner {
            lopt: &lopt,
            theta_opt: Adam::new(1e-2),
        },
        estimators: vec![TruncatedPes::new(step, 50, 0.01).unwrap()],
    };
    let mut state = learner.init(Key::new(0)).unwrap();
    let mut saw_clipped = false;
    for k in Key::new(1).split_n(4) {
        let loss = learner.update(&mut state, k).unwrap();
        assert!(loss.is_finite());
        saw_clipped |= loss == 20.0;
    }
    assert!(
        saw_clipped,
        "the inner runs must have diverged for this test to mean anything"
    );
    assert!(learner.learner.theta(&state.learner)[0].is_finite());
}

/// Misused pieces are typed errors, not panics: no keys for a group, a worker state from
/// an estimator with another number of tasks.
#[test]
fn mismatched_inputs_are_errors() {
    let family = Fam { dim: 3 };
    let lopt = LearnableSgd::default();
    let theta = lopt.init(Key::new(0));
    let make = |n: usize| {
        let step = LOptTruncatedStep::new(
            &family,
            &lopt,
            ConstantTruncationSchedule { total_length: 5 },
            n,
        )
        .unwrap();
        TruncatedPes::new(step, 2, 0.01).unwrap()
    };
    let (four, six) = (make(4), make(6));
    let mut state = four.init_worker_state(&theta, Key::new(1), 0).unwrap();
    assert!(matches!(
        six.compute_gradient_estimate(&theta, &mut state, Key::new(2), 0),
        Err(Error::ShapeMismatch { .. })
    ));
    let group = &mut state.pos[0];
    assert!(matches!(
        four.step
            .unroll_group_step(&theta, group, &[], &(), None, 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(LOptTruncatedStep::new(
        &family,
        &lopt,
        ConstantTruncationSchedule { total_length: 5 },
        0
    )
    .is_err());
    assert!(TruncatedPes::new(make(2).step, 0, 0.01).is_err());
    assert!(TruncatedPes::new(make(2).step, 3, f32::NAN).is_err());
}

/// A single task meta-trains through `single_task_to_family`, in lanes too.
#[test]
fn a_single_task_meta_trains_as_a_family() {
    let family = single_task_to_family(lopt::tasks::quadratics::QuadraticTask::default());
    let lopt = LearnableSgd { initial_lr: 1e-3 };
    let step = LOptTruncatedStep::new(
        &family,
        &lopt,
        ConstantTruncationSchedule { total_length: 30 },
        8,
    )
    .unwrap();
    let learner = SingleMachineGradientLearner {
        learner: GradientLearner {
            lopt: &lopt,
            theta_opt: Adam::new(0.05),
        },
        estimators: vec![TruncatedPes::new(step, 10, 0.01)
            .unwrap()
            .batched::<Lanes<8>>()],
    };
    let mut state = learner.init(Key::new(0)).unwrap();
    let before = learner.learner.theta(&state.learner)[0];
    for k in Key::new(1).split_n(20) {
        assert!(learner.update(&mut state, k).unwrap().is_finite());
    }
    assert!(learner.learner.theta(&state.learner)[0] > before);
}

/// A configuration whose skipped field changes the loss but no shape.
#[derive(Params, Clone, Debug)]
struct SignCfg<S: Real> {
    scale: S,
    #[params(skip)]
    negate: bool,
}

/// Quadratics `scale · Σ p²`, twice that when `negate`; fixed dimension 3.
struct SignFamily;

#[task_family]
impl TaskFamily for SignFamily {
    type Cfg<S: Real> = SignCfg<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = ();
    fn sample(&self, key: Key) -> SignCfg<f32> {
        SignCfg {
            scale: 1.0,
            negate: key.uniform::<f32>() < 0.5,
        }
    }
    fn init<S: Real>(&self, _cfg: &SignCfg<S>, key: S::Key) -> DVector<S> {
        DVector::from_vec(key.normal_vec(3))
    }
    fn loss<S: Real>(&self, p: &DVector<S>, cfg: &SignCfg<S>, _key: S::Key, _b: &()) -> S {
        if cfg.negate {
            cfg.scale * sum(square(p)) * 2.0
        } else {
            cfg.scale * sum(square(p))
        }
    }
}

/// Lanes cannot differ in a skipped configuration field (packing copies leaves only): a
/// lane-batched estimator refuses such tasks, as `vmap` puts them in separate groups.
#[test]
fn lanes_refuse_tasks_that_differ_in_a_skipped_field() {
    let family = SignFamily;
    let lopt = LearnableSgd::default();
    let theta = lopt.init(Key::new(0));
    let step = LOptTruncatedStep::new(
        &family,
        &lopt,
        ConstantTruncationSchedule { total_length: 5 },
        8,
    )
    .unwrap();
    let cfgs: Vec<bool> = Key::new(1)
        .split()
        .0
        .split_n(8)
        .iter()
        .map(|&k| family.sample(k.split_n(4)[0]).negate)
        .collect();
    assert!(
        cfgs.contains(&true) && cfgs.contains(&false),
        "the test needs both kinds: {cfgs:?}"
    );
    let pes = TruncatedPes::new(step, 2, 0.01)
        .unwrap()
        .batched::<Lanes<8>>();
    match pes.init_worker_state(&theta, Key::new(1), 0) {
        Err(Error::InvalidArgument(msg)) => assert!(msg.contains("skipped field"), "{msg}"),
        other => panic!("expected a lane-group error, got {:?}", other.map(|_| ())),
    }
}
