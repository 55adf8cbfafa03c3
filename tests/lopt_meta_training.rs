//! Meta-training the JAX library's learned optimizers with `TruncatedPes`, as `MlpLOpt`
//! is: `AdafacMlpLOpt` and `RnnMlpLOpt` from their init, and VeLO fine-tuned from a θ
//! file. Each must lower the loss of held-out tasks (keys never used in meta-training)
//! trained by the learned optimizer with its θ, against the θ it started from.
//!
//! The meta-training runs train one task per group in `f32`; the last test checks that
//! tasks in SIMD lanes give the same estimates (each lane keeps its own step count).

use lopt::learned_optimizers::flax_msgpack::{FlaxTheta, FlaxValue};
use lopt::learned_optimizers::{
    AdafacMlpLOpt, LearnableSgdm, LearnedOptimizer, NnAdam, RnnMlpLOpt, Velo, VeloTheta,
};
use lopt::outer_trainers::{
    ConstantTruncationSchedule, GradientEstimator, GradientLearner, LOptTruncatedStep,
    SingleMachineGradientLearner, TruncatedPes,
};
use lopt::prefab;
use lopt::prelude::*;
use lopt::tasks::quadratics::FixedDimQuadraticFamily;

/// Inner steps of a held-out run (and of a meta-training run).
const RUN: usize = 30;

/// The mean over 16 held-out tasks of the mean training loss over a run of [`RUN`]
/// steps of `lopt` with θ `theta` (the meta-objective, on tasks meta-training never saw).
fn held_out_loss<L: LearnedOptimizer>(
    family: &FixedDimQuadraticFamily,
    lopt: &L,
    theta: &L::Theta<f32>,
) -> f64 {
    let opt = lopt.opt_fn(theta);
    let mut total = 0.0;
    let keys = Key::new(987_654).split_n(16);
    for key in &keys {
        let (k1, k2) = key.split();
        let cfg = family.sample(k1);
        let mut state = opt.init(family.init(&cfg, k2), Some(RUN));
        for _ in 0..RUN {
            let (l, g) = family.value_and_grad::<f32>(opt.get_params(&state), &cfg, *key, &());
            total += l as f64;
            opt.update(&mut state, &g, l);
        }
    }
    total / (RUN * keys.len()) as f64
}

/// Meta-trains `theta0` for `outer` steps (8 tasks, truncations of 10 in runs of
/// [`RUN`], σ = 0.01, Adam at `lr` on θ) and returns the held-out loss before and after.
fn meta_train<L: LearnedOptimizer>(
    lopt: &L,
    theta0: L::Theta<f32>,
    outer: usize,
    lr: f64,
) -> (f64, f64) {
    let family = FixedDimQuadraticFamily { dim: 10 };
    let before = held_out_loss(&family, lopt, &theta0);
    let sched = ConstantTruncationSchedule { total_length: RUN };
    let step = LOptTruncatedStep::new(&family, lopt, sched, 8).unwrap();
    let learner = SingleMachineGradientLearner {
        learner: GradientLearner {
            lopt,
            theta_opt: Adam::new(lr),
        },
        estimators: vec![TruncatedPes::new(step, 10, 0.01).unwrap()],
    };
    let start = theta0.flatten();
    let mut state = learner.init_from_theta(theta0, Key::new(1)).unwrap();
    assert_eq!(learner.learner.theta(&state.learner).flatten(), start);
    for k in Key::new(2).split_n(outer) {
        let l = learner.update(&mut state, k).unwrap();
        assert!(l.is_finite(), "meta-loss {l}");
    }
    let after = held_out_loss(&family, lopt, learner.learner.theta(&state.learner));
    (before, after)
}

/// `AdafacMlpLOpt` meta-trains: from its init (steps of about `step_mult = 1e-3`, far
/// too small for these quadratics) the held-out loss must fall by a fifth. Catches a PES
/// estimate of the wrong sign or of zero (θ not reaching the update through the lanes'
/// perturbations), which leave the held-out loss where it was or raise it.
#[test]
fn adafac_mlp_lopt_meta_trains_with_pes() {
    let lopt = AdafacMlpLOpt::default();
    // At 0.1 a rounding-level change to the update (the time features folded into the
    // first layer's bias) sent θ, after 67 outer steps, where every inner run diverges:
    // the estimate is zero from there on. At 0.05 the held-out loss fell to 5.7 and, with
    // the outer keys 3, 4 and 5, to 11.7, 13.0 and 11.6 (the bound is 15.7).
    let (before, after) = meta_train(&lopt, lopt.init(Key::new(0)), 100, 0.05);
    eprintln!("AdafacMlpLOpt held-out loss {before:.4} -> {after:.4}");
    assert!(after < 0.8 * before, "{before} -> {after}");
}

/// `RnnMlpLOpt` meta-trains (as above). Catches the same.
#[test]
fn rnn_mlp_lopt_meta_trains_with_pes() {
    // Narrower than the default (MLP 32, LSTM 64) to keep the test short.
    let lopt = RnnMlpLOpt {
        hidden_size: 16,
        lstm_hidden_size: 16,
        ..RnnMlpLOpt::default()
    };
    let (before, after) = meta_train(&lopt, lopt.init(Key::new(0)), 100, 3e-2);
    eprintln!("RnnMlpLOpt held-out loss {before:.4} -> {after:.4}");
    assert!(after < 0.8 * before, "{before} -> {after}");
}

/// VeLO fine-tuned from a θ file: the library-drawn θ of `tests/reference` (LSTM 8, bank
/// of 4) loaded with `prefab::velo_with`, meta-trained further with PES; the held-out
/// loss must fall, and the fine-tuned θ written as flax msgpack must read back equal.
/// Catches: the loaded θ not being the one trained (`init_from_theta` ignoring its θ),
/// and the same failures as above.
#[test]
fn velo_fine_tunes_from_a_theta_file() {
    let path = format!(
        "{}/tests/reference/velo_theta.msgpack",
        env!("CARGO_MANIFEST_DIR")
    );
    let config = Velo {
        lstm_hidden_size: 8,
        param_inits: 4,
        ..Velo::default()
    };
    let pre = prefab::velo_with(config.clone(), &path, RUN).unwrap();
    let theta0 = pre.theta().clone();
    let (before, after) = meta_train(&config, theta0.clone(), 30, 1e-2);
    eprintln!("VeLO (from file) held-out loss {before:.4} -> {after:.4}");
    assert!(after < 0.8 * before, "{before} -> {after}");
    let bytes = theta0.to_flax().to_bytes();
    let again = VeloTheta::<f32>::from_flax(&config, &FlaxValue::from_bytes(&bytes).unwrap());
    assert_eq!(again.unwrap(), theta0);
}

/// Twelve tasks trained by `lopt` in PES, one per group in `f32` and eight per group in
/// SIMD lanes, with truncation counters started at random steps so that lanes restart
/// their tasks at different times: the two must give the same estimates, mean losses and
/// accumulators (to `f32` rounding) over four consecutive estimates.
fn lanes_match_one_task_per_group<L: LearnedOptimizer>(lopt: &L, theta: &L::Theta<f32>) {
    let family = FixedDimQuadraticFamily { dim: 6 };
    let make = || {
        let mut step = LOptTruncatedStep::new(
            &family,
            lopt,
            ConstantTruncationSchedule { total_length: 7 },
            12,
        )
        .unwrap();
        step.random_initial_iteration_offset = 7;
        TruncatedPes::new(step, 3, 0.01).unwrap()
    };
    let (serial, batched) = (make(), make().batched::<Lanes<8>>());
    let mut s1 = serial.init_worker_state(theta, Key::new(1), 0).unwrap();
    let mut s8 = batched.init_worker_state(theta, Key::new(1), 0).unwrap();
    for k in Key::new(2).split_n(4) {
        let a = serial
            .compute_gradient_estimate(theta, &mut s1, k, 0)
            .unwrap();
        let b = batched
            .compute_gradient_estimate(theta, &mut s8, k, 0)
            .unwrap();
        let tol = 1e-5 * a.mean_loss.abs().max(1.0);
        let name = lopt.name();
        assert!(
            (a.mean_loss - b.mean_loss).abs() <= tol,
            "{name}: mean loss {} vs {}",
            a.mean_loss,
            b.mean_loss
        );
        let (ga, gb) = (a.grad.flatten(), b.grad.flatten());
        let scale = ga.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(scale > 0.0);
        for (x, y) in ga.iter().zip(&gb) {
            assert!(
                (x - y).abs() <= 1e-4 * scale,
                "{name}: estimate {x} vs {y} (scale {scale})"
            );
        }
    }
}

/// The zoo in lanes: see [`lanes_match_one_task_per_group`]. Catches a step count kept
/// for the whole lane group, which a lane that restarts its task inherits (tried: with
/// group counts AdafacMlpLOpt's mean loss, RnnMlpLOpt's estimate and, with VeLO's
/// training fraction read from the group count, VeLO's mean loss differ).
#[test]
fn zoo_in_lanes_matches_one_task_per_group() {
    let adafac = AdafacMlpLOpt::default();
    lanes_match_one_task_per_group(&adafac, &adafac.init(Key::new(0)));
    let rnn = RnnMlpLOpt {
        hidden_size: 8,
        lstm_hidden_size: 8,
        ..RnnMlpLOpt::default()
    };
    lanes_match_one_task_per_group(&rnn, &rnn.init(Key::new(0)));
    let velo = Velo {
        lstm_hidden_size: 8,
        param_inits: 4,
        ..Velo::default()
    };
    lanes_match_one_task_per_group(&velo, &velo.init(Key::new(0)));
    let nn_adam = NnAdam::default();
    lanes_match_one_task_per_group(&nn_adam, &nn_adam.init(Key::new(0)));
    let sgdm = LearnableSgdm::default();
    lanes_match_one_task_per_group(&sgdm, &sgdm.init(Key::new(0)));
}
