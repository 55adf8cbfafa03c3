//! The main job: meta-train a learned optimizer.
//!
//! `MlpLOpt` (the JAX library's MLPLOpt) is meta-trained with truncated PES on two task
//! families, one after the other:
//!
//! - the seed's quadratic family (`FixedDimQuadraticFamily(10)`): 16 task instances per
//!   estimate, 8 to a SIMD lane group (one θ ± ε per lane), truncations of 10 steps within
//!   runs of 50–200 steps (log-uniform), 2,000 outer steps;
//! - the image-MLP family on Fashion-MNIST 8×8 (or the embedded digits): hidden widths 16,
//!   32 or 64, so one task per group in `f32`, 8 tasks, runs of 100–400 steps, 400 outer
//!   steps.
//!
//! A progress bar shows the meta-loss; θ and its Adam state are checkpointed atomically
//! every 50 outer steps (`--resume` continues from the checkpoints). At the end the
//! learned optimizer, its untrained initialization and Adam train held-out tasks; the
//! example prints their losses and plots the meta-losses and the training curves.
//!
//! Run with `cargo run --release --example meta_train` (`-- --steps 5000` sets the
//! quadratic family's outer steps, `-- --quadratic-only` skips the image MLPs). Writes
//! `target/lopt-plots/meta_train.png` and `target/lopt-checkpoints/meta_train_*.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use lopt::eval_training::plot::{plot_png, Line, Panel};
use lopt::learned_optimizers::{LearnedOptimizer, MlpLOpt, MlpLOptTheta};
use lopt::outer_trainers::{
    load_checkpoint, save_checkpoint, ConstantTruncationSchedule, GradientEstimator,
    GradientLearner, LOptTruncatedStep, LogUniformLengthSchedule, SingleMachineGradientLearner,
    TruncatedPes,
};
use lopt::prelude::*;
use lopt::tasks::image_mlp::ImageMlpFamily;
use lopt::tasks::quadratics::FixedDimQuadraticFamily;

/// Held-out tasks of each evaluation.
const EVAL_TASKS: usize = 16;
/// Outer steps between checkpoints.
const CHECKPOINT_EVERY: usize = 50;

/// The training batches of an evaluation: one per step, the same for every optimizer.
fn eval_batches<F: TaskFamily>(family: &F, steps: usize) -> lopt::Result<Vec<F::Batch>> {
    // A one-task step only to draw the family's training batches (or `()`).
    let lopt = MlpLOpt::default();
    let data = LOptTruncatedStep::new(
        family,
        &lopt,
        ConstantTruncationSchedule { total_length: 1 },
        1,
    )?;
    (0..=steps).map(|_| data.next_batch()).collect()
}

/// The mean training loss, per step, of held-out tasks of `family` trained by `opt` on
/// `batches` (entry 0 is the loss at initialization).
fn eval_curve<F: TaskFamily, O: Optimizer<F::Params<f32>>>(
    family: &F,
    opt: &O,
    batches: &[F::Batch],
) -> Vec<f64> {
    let steps = batches.len() - 1;
    let mut curve = vec![0.0; steps + 1];
    for key in Key::new(2024).split_n(EVAL_TASKS) {
        let (k1, k2) = key.split();
        let cfg = family.sample(k1);
        let mut state = opt.init(family.init(&cfg, k2), Some(steps));
        for (t, (c, batch)) in curve.iter_mut().zip(batches).enumerate() {
            let (loss, grad) =
                family.value_and_grad::<f32>(opt.get_params(&state), &cfg, key, batch);
            *c += family.normalizer(loss) as f64 / EVAL_TASKS as f64;
            if t < steps {
                opt.update(&mut state, &grad, loss);
            }
        }
    }
    curve
}

/// One family's meta-training run and its evaluation.
struct Outcome {
    meta_losses: Vec<f32>,
    curves: Vec<(String, Vec<f64>)>,
}

/// Meta-trains `MlpLOpt` on `family` with `estimator` for `outer_steps` outer steps (Adam
/// with `theta_lr` on θ), checkpointing to `checkpoint`; then compares the learned
/// optimizer with its initialization and Adam at `adam_lrs` on held-out tasks.
#[allow(clippy::too_many_arguments)]
fn meta_train<F: TaskFamily, E: GradientEstimator<MlpLOpt>>(
    family: &F,
    lopt: &MlpLOpt,
    estimator: E,
    theta_lr: f64,
    outer_steps: usize,
    eval_steps: usize,
    adam_lrs: &[f64],
    checkpoint: &Path,
    resume: bool,
) -> lopt::Result<Outcome> {
    let learner = SingleMachineGradientLearner {
        learner: GradientLearner {
            lopt,
            theta_opt: Adam::new(theta_lr),
        },
        estimators: vec![estimator],
    };
    let mut state = learner.init(Key::new(0))?;
    let theta0: MlpLOptTheta<f32> = learner.learner.theta(&state.learner).clone();
    let mut meta_losses = Vec::new();
    if resume && checkpoint.exists() {
        let ck = load_checkpoint(checkpoint)?;
        learner.learner.restore(&mut state.learner, &ck)?;
        meta_losses = ck.meta_losses;
        println!(
            "  resumed from {} at outer step {}",
            checkpoint.display(),
            ck.outer_iteration
        );
    }
    let first = learner.learner.outer_iteration(&state.learner);
    let bar = ProgressBar::new(outer_steps as u64).with_style(
        ProgressStyle::with_template(
            "  {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} outer steps (eta {eta})",
        )
        .expect("valid template"),
    );
    let start = Instant::now();
    for (i, &k) in Key::new(1).split_n(first + outer_steps)[first..]
        .iter()
        .enumerate()
    {
        meta_losses.push(learner.update(&mut state, k)?);
        let recent = &meta_losses[meta_losses.len().saturating_sub(20)..];
        bar.set_message(format!(
            "meta-loss {:.4}",
            recent.iter().sum::<f32>() / recent.len() as f32
        ));
        bar.set_position(i as u64 + 1);
        if (i + 1) % CHECKPOINT_EVERY == 0 || i + 1 == outer_steps {
            save_checkpoint(
                checkpoint,
                &learner.learner.checkpoint(&state.learner, &meta_losses)?,
            )?;
        }
    }
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "  {outer_steps} outer steps in {secs:.1} s ({:.1} ms each); checkpoint {}",
        1e3 * secs / outer_steps.max(1) as f64,
        checkpoint.display()
    );
    let theta = learner.learner.theta(&state.learner).clone();
    let batches = eval_batches(family, eval_steps)?;
    let mut curves = vec![
        (
            "MlpLOpt, meta-trained".to_string(),
            eval_curve(family, &lopt.opt_fn(&theta), &batches),
        ),
        (
            "MlpLOpt, untrained".to_string(),
            eval_curve(family, &lopt.opt_fn(&theta0), &batches),
        ),
    ];
    for &lr in adam_lrs {
        curves.push((
            format!("Adam({lr:e})"),
            eval_curve(family, &Adam::new(lr), &batches),
        ));
    }
    let mid = eval_steps / 4;
    println!("  held-out tasks ({EVAL_TASKS}), mean normalized training loss at step 0 / {mid} / {eval_steps}:");
    for (name, c) in &curves {
        println!(
            "    {name:<22} {:>9.4} {:>9.4} {:>9.4}",
            c[0], c[mid], c[eval_steps]
        );
    }
    Ok(Outcome {
        meta_losses,
        curves,
    })
}

/// The meta-loss and held-out panels of one family.
fn panels(title: &str, o: &Outcome, log: bool) -> [Panel; 2] {
    let n = o.meta_losses.len();
    let window = 20.min(n.max(1));
    let smoothed: Vec<f64> = (window..=n)
        .map(|e| {
            o.meta_losses[e - window..e]
                .iter()
                .map(|&x| x as f64)
                .sum::<f64>()
                / window as f64
        })
        .collect();
    let xs = |len: usize, first: usize| (first..first + len).map(|x| x as f64).collect::<Vec<_>>();
    let y = |x: f64| if log { x.max(1e-12).ln() } else { x };
    [
        Panel::new(
            format!("{title}: meta-loss (mean of 20 outer steps)"),
            "normalized inner loss",
            vec![Line::new(
                "TruncatedPes",
                xs(smoothed.len(), window),
                smoothed,
            )],
        ),
        Panel::new(
            format!("{title}: held-out tasks"),
            if log {
                "ln mean training loss"
            } else {
                "mean normalized training loss"
            },
            o.curves
                .iter()
                .map(|(name, c)| {
                    Line::new(
                        name.clone(),
                        xs(c.len(), 0),
                        c.iter().map(|&x| y(x)).collect(),
                    )
                })
                .collect(),
        ),
    ]
}

fn main() -> lopt::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quad_steps = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse::<usize>())
        .transpose()
        .map_err(|e| lopt::Error::InvalidArgument(format!("--steps: {e}")))?
        .unwrap_or(2000);
    let resume = args.iter().any(|a| a == "--resume");
    let quadratic_only = args.iter().any(|a| a == "--quadratic-only");
    let lopt = MlpLOpt::default();
    println!(
        "{} (θ: {} scalars), meta-trained with TruncatedPes",
        lopt.name(),
        lopt.init(Key::new(0)).num_elements()
    );

    let quad = FixedDimQuadraticFamily { dim: 10 };
    println!("{}: 16 tasks, 8 per SIMD lane group", quad.name());
    let schedule = LogUniformLengthSchedule {
        min_length: 50,
        max_length: 200,
    };
    let mut step = LOptTruncatedStep::new(&quad, &lopt, schedule, 16)?;
    step.random_initial_iteration_offset = 200;
    let pes = TruncatedPes::new(step, 10, 0.01)?.batched::<Lanes<8>>();
    let ck = PathBuf::from("target/lopt-checkpoints/meta_train_quadratic.json");
    let quad_out = meta_train(
        &quad,
        &lopt,
        pes,
        3e-3,
        quad_steps,
        200,
        &[1e-2, 1e-1],
        &ck,
        resume,
    )?;
    let mut all = panels("quadratic", &quad_out, true).to_vec();

    if !quadratic_only {
        let (mlp, source) = ImageMlpFamily::fashion_mnist8_or_digits()?;
        println!(
            "{} on {source}: 8 tasks of hidden width 16, 32 or 64, one per f32 group",
            mlp.name()
        );
        let schedule = LogUniformLengthSchedule {
            min_length: 100,
            max_length: 400,
        };
        let mut step = LOptTruncatedStep::new(&mlp, &lopt, schedule, 8)?;
        step.random_initial_iteration_offset = 400;
        let pes = TruncatedPes::new(step, 10, 0.01)?;
        let ck = PathBuf::from("target/lopt-checkpoints/meta_train_image_mlp.json");
        let out = meta_train(&mlp, &lopt, pes, 3e-3, 400, 300, &[1e-3, 1e-2], &ck, resume)?;
        all.extend(panels("image MLP", &out, false));
    }
    let plot = PathBuf::from("target/lopt-plots/meta_train.png");
    plot_png(&plot, &all)?;
    println!("plot: {}", plot.display());
    Ok(())
}
