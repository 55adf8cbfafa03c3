//! The main job: meta-train a learned optimizer.
//!
//! `MlpLOpt` (the JAX library's MLPLOpt) is meta-trained with truncated PES on the seed's
//! quadratic family (`FixedDimQuadraticFamily(10)`): 16 task instances per estimate, 8 to a
//! SIMD lane group (one θ ± ε per lane), each
//! trained in truncations of 10 steps within runs of 50–200 steps (log-uniform), Adam on
//! θ. A progress bar shows the meta-loss; θ and its Adam state are checkpointed
//! atomically every 50 outer steps (`--resume` continues from the checkpoint). At the end
//! the learned optimizer, its untrained initialization and Adam train 32 held-out tasks,
//! and the example prints their losses and plots the meta-loss and the training curves.
//!
//! Run with `cargo run --release --example meta_train` (`-- --steps 5000` for a longer
//! run). Writes `target/lopt-plots/meta_train.png` and
//! `target/lopt-checkpoints/meta_train.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use lopt::eval_training::plot::{plot_png, Line, Panel};
use lopt::learned_optimizers::{LearnedOptimizer, MlpLOpt, MlpLOptTheta};
use lopt::optimizers::AdamState;
use lopt::outer_trainers::{
    GradientLearner, LOptTruncatedStep, LogUniformLengthSchedule, SingleMachineGradientLearner,
    TruncatedPes,
};
use lopt::params::ParamsRecord;
use lopt::prelude::*;
use lopt::tasks::quadratics::FixedDimQuadraticFamily;
use serde::{Deserialize, Serialize};

/// Inner steps of the held-out evaluation.
const EVAL_STEPS: usize = 200;
/// Held-out tasks.
const EVAL_TASKS: usize = 32;
/// Task instances per estimate.
const TASKS: usize = 16;
/// Outer steps between checkpoints.
const CHECKPOINT_EVERY: usize = 50;

/// What a checkpoint holds: θ, its Adam state and the meta-loss so far.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    outer_iteration: usize,
    theta: ParamsRecord,
    adam_mu: ParamsRecord,
    adam_nu: ParamsRecord,
    meta_losses: Vec<f32>,
}

/// Writes `ck` to `path` atomically: a temporary file in the same directory, then a rename.
fn save(path: &Path, ck: &Checkpoint) -> lopt::Result<()> {
    let io = |e: std::io::Error| lopt::Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(path.parent().expect("a file path")).map_err(io)?;
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string(ck).map_err(|e| lopt::Error::Data(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn load(path: &Path) -> lopt::Result<Checkpoint> {
    let text = std::fs::read_to_string(path).map_err(|e| lopt::Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| lopt::Error::Data(format!("{}: {e}", path.display())))
}

/// The mean loss, per step, of the held-out tasks trained by `opt` (step 0 is the loss
/// at initialization).
fn eval_curve<O: Optimizer<DVector<f32>>>(family: &FixedDimQuadraticFamily, opt: &O) -> Vec<f64> {
    let mut curve = vec![0.0; EVAL_STEPS + 1];
    for key in Key::new(2024).split_n(EVAL_TASKS) {
        let (k1, k2) = key.split();
        let cfg = family.sample(k1);
        let mut state = opt.init(family.init(&cfg, k2), Some(EVAL_STEPS));
        for (t, c) in curve.iter_mut().enumerate() {
            let (loss, grad) = family.value_and_grad::<f32>(opt.get_params(&state), &cfg, key, &());
            *c += loss as f64 / EVAL_TASKS as f64;
            if t < EVAL_STEPS {
                opt.update(&mut state, &grad, loss);
            }
        }
    }
    curve
}

fn main() -> lopt::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let outer_steps = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse::<usize>())
        .transpose()
        .map_err(|e| lopt::Error::InvalidArgument(format!("--steps: {e}")))?
        .unwrap_or(2000);
    let resume = args.iter().any(|a| a == "--resume");
    let checkpoint = PathBuf::from("target/lopt-checkpoints/meta_train.json");

    let family = FixedDimQuadraticFamily { dim: 10 };
    let lopt = MlpLOpt::default();
    let schedule = LogUniformLengthSchedule {
        min_length: 50,
        max_length: 200,
    };
    let mut step = LOptTruncatedStep::new(&family, &lopt, schedule, TASKS)?;
    step.random_initial_iteration_offset = 200;
    let learner = SingleMachineGradientLearner {
        learner: GradientLearner {
            lopt: &lopt,
            theta_opt: Adam::new(3e-3),
        },
        // Eight tasks per SIMD lane group, each lane with its own θ ± ε.
        estimators: vec![TruncatedPes::new(step, 10, 0.01)?.batched::<Lanes<8>>()],
    };
    let mut state = learner.init(Key::new(0))?;
    let theta0: MlpLOptTheta<f32> = learner.learner.theta(&state.learner).clone();
    let mut meta_losses = Vec::new();
    if resume && checkpoint.exists() {
        let ck = load(&checkpoint)?;
        let s: &mut AdamState<MlpLOptTheta<f32>> = &mut state.learner.theta_opt_state;
        s.params.from_record(&ck.theta)?;
        s.mu.from_record(&ck.adam_mu)?;
        s.nu.from_record(&ck.adam_nu)?;
        s.iteration = ck.outer_iteration;
        meta_losses = ck.meta_losses;
        println!(
            "resumed from {} at outer step {}",
            checkpoint.display(),
            ck.outer_iteration
        );
    }

    println!(
        "meta-training {} (θ: {} scalars) with TruncatedPes on {} tasks of {}, 8 per lane group",
        lopt.name(),
        theta0.num_elements(),
        TASKS,
        family.name()
    );
    let start_iteration = learner.learner.outer_iteration(&state.learner);
    let bar = ProgressBar::new(outer_steps as u64).with_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} outer steps (eta {eta})",
        )
        .expect("valid template"),
    );
    let start = Instant::now();
    let keys = Key::new(1).split_n(start_iteration + outer_steps);
    for (i, &k) in keys[start_iteration..].iter().enumerate() {
        let loss = learner.update(&mut state, k)?;
        meta_losses.push(loss);
        let recent = &meta_losses[meta_losses.len().saturating_sub(20)..];
        bar.set_message(format!(
            "meta-loss {:.4}",
            recent.iter().sum::<f32>() / recent.len() as f32
        ));
        bar.set_position(i as u64 + 1);
        if (i + 1) % CHECKPOINT_EVERY == 0 || i + 1 == outer_steps {
            let s = &state.learner.theta_opt_state;
            save(
                &checkpoint,
                &Checkpoint {
                    outer_iteration: s.iteration,
                    theta: s.params.to_record()?,
                    adam_mu: s.mu.to_record()?,
                    adam_nu: s.nu.to_record()?,
                    meta_losses: meta_losses.clone(),
                },
            )?;
        }
    }
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{outer_steps} outer steps in {secs:.1} s ({:.1} ms each); checkpoint {}",
        1e3 * secs / outer_steps.max(1) as f64,
        checkpoint.display()
    );

    let theta = learner.learner.theta(&state.learner).clone();
    let curves = [
        (
            "MlpLOpt, meta-trained",
            eval_curve(&family, &lopt.opt_fn(&theta)),
        ),
        (
            "MlpLOpt, untrained",
            eval_curve(&family, &lopt.opt_fn(&theta0)),
        ),
        ("Adam(1e-2)", eval_curve(&family, &Adam::new(1e-2))),
        ("Adam(1e-1)", eval_curve(&family, &Adam::new(1e-1))),
    ];
    println!("held-out tasks ({EVAL_TASKS}), mean loss at step 0 / 50 / {EVAL_STEPS}:");
    for (name, c) in &curves {
        println!(
            "  {name:<22} {:>9.4} {:>9.4} {:>9.4}",
            c[0], c[50], c[EVAL_STEPS]
        );
    }

    let n = meta_losses.len();
    let window = 20.min(n.max(1));
    let smoothed: Vec<f64> = (window..=n)
        .map(|e| {
            meta_losses[e - window..e]
                .iter()
                .map(|&x| x as f64)
                .sum::<f64>()
                / window as f64
        })
        .collect();
    let plot = PathBuf::from("target/lopt-plots/meta_train.png");
    let xs = |len: usize, first: usize| (first..first + len).map(|x| x as f64).collect::<Vec<_>>();
    plot_png(
        &plot,
        &[
            Panel::new(
                "meta-loss (mean of 20 outer steps)",
                "normalized inner loss",
                vec![Line::new(
                    "TruncatedPes",
                    xs(smoothed.len(), window),
                    smoothed.clone(),
                )],
            ),
            Panel::new(
                "held-out quadratic tasks",
                "ln mean training loss",
                curves
                    .iter()
                    .map(|(name, c)| {
                        Line::new(
                            *name,
                            xs(c.len(), 0),
                            c.iter().map(|&x| x.max(1e-12).ln()).collect(),
                        )
                    })
                    .collect(),
            ),
        ],
    )?;
    println!("plot: {} (right panel: ln loss)", plot.display());
    Ok(())
}
