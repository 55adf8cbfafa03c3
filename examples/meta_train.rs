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
//! `--family quadratic|image_mlp|conv` runs one family alone; `conv` is
//! `ParametricImageConv` (the JAX library's `tasks/parametric/image_conv.py`) on
//! Fashion-MNIST 8×8 with batch 32 (or the embedded digits): two 3×3 convolutions of 4 to
//! 15 channels, 0–2 of them with stride 2, one of eight activations, so tasks of several
//! shapes train together, one per `f32` group; 8 tasks, runs of 50–200 steps, 300 outer
//! steps, compared with Adam at three learning rates on held-out tasks.
//!
//! `--family lm` is `ParametricLmRnn` (the JAX library's `ParametricLMRNN`, LSTM cell) on
//! byte-level `fortunes` text with batch 16 and sequences of 16 bytes (or the embedded
//! text when `fortunes` is not installed): hidden and embedding sizes `log_int(8, 32)`,
//! init scale `U(0.5, 2)`, so the tasks of an estimate have different shapes and train one
//! per `f32` group; 8 tasks, runs of 50–200 steps, 300 outer steps, compared with Adam at
//! three learning rates on held-out tasks.
//!
//! A progress bar shows the meta-loss; everything the run's future depends on (θ, its
//! Adam state, the tasks in training, the PES accumulators, the data streams' positions)
//! is checkpointed atomically every 50 outer steps, and `--resume` continues a stopped
//! run to the same result bit for bit. At the end the learned optimizer, its untrained
//! initialization and Adam train held-out tasks; the example prints their losses and
//! plots the meta-losses and the training curves.
//!
//! Run with `cargo run --release --example meta_train`; `-- --help` lists the flags.
//! Writes `target/lopt-meta-train/{quadratic,image_mlp,conv,lm}.ckpt` and `meta_train.png`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use lopt::datasets::text::{lm_datasets_or_embedded, TextSource};
use lopt::datasets::ImageSource;
use lopt::datasets::{digits_datasets, fashion_mnist_datasets};
use lopt::eval_training::plot::{plot_png, Line, Panel};
use lopt::learned_optimizers::{LearnedOptimizer, MlpLOpt, MlpLOptTheta};
use lopt::outer_trainers::{
    Checkpoint, ConstantTruncationSchedule, GradientEstimator, GradientLearner, LOptTruncatedStep,
    LogUniformLengthSchedule, SingleMachineGradientLearner, TruncatedPes, NAN_LOSS,
};
use lopt::prelude::*;
use lopt::tasks::conv::ParametricImageConv;
use lopt::tasks::image_mlp::ImageMlpFamily;
use lopt::tasks::quadratics::FixedDimQuadraticFamily;
use lopt::tasks::rnn_lm::ParametricLmRnn;

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

/// Outer steps in a row with a non-finite meta-loss before the example warns.
const NAN_WARN_STREAK: usize = 10;

/// Meta-trains `MlpLOpt` on `family` with `estimator` up to `outer_steps` outer steps in
/// all (Adam with `theta_lr` on θ), checkpointing to `checkpoint` (a resumed run
/// continues from it to the same total, exactly as the uninterrupted run); then compares
/// the learned optimizer with its initialization and Adam at `adam_lrs` on held-out tasks.
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
    let fresh = learner.init(Key::new(0))?;
    let theta0: MlpLOptTheta<f32> = learner.learner.theta(&fresh.learner).clone();
    let mut state = if resume && checkpoint.exists() {
        let state = learner.restore(&Checkpoint::load(checkpoint)?)?;
        println!(
            "  resumed from {} at outer step {}",
            checkpoint.display(),
            learner.learner.outer_iteration(&state.learner)
        );
        state
    } else {
        fresh
    };
    let first = learner.learner.outer_iteration(&state.learner);
    let bar = ProgressBar::new(outer_steps as u64).with_style(
        ProgressStyle::with_template(
            "  {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} outer steps (eta {eta})",
        )
        .expect("valid template"),
    );
    bar.set_position(first.min(outer_steps) as u64);
    let start = Instant::now();
    // Outer step i uses child i of one key, whatever the run's length: a resumed run
    // draws what the uninterrupted run drew.
    let keys = Key::new(1).split_n(outer_steps);
    for (i, &k) in keys.iter().enumerate().skip(first) {
        learner.update(&mut state, k)?;
        let recent = &state.meta_losses[state.meta_losses.len().saturating_sub(20)..];
        bar.set_message(format!(
            "meta-loss {:.4}",
            recent.iter().sum::<f32>() / recent.len() as f32
        ));
        bar.set_position(i as u64 + 1);
        if state.learner.non_finite_streak == NAN_WARN_STREAK {
            bar.println(format!(
                "  warning: the meta-loss has been NaN or infinite for {NAN_WARN_STREAK} outer \
                 steps in a row (each counted as {NAN_LOSS}); meta-training has likely diverged"
            ));
        }
        if (i + 1) % CHECKPOINT_EVERY == 0 || i + 1 == outer_steps {
            learner.checkpoint(&state)?.save(checkpoint)?;
        }
    }
    bar.finish();
    let done = outer_steps.saturating_sub(first);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "  {done} outer steps in {secs:.1} s ({:.1} ms each); checkpoint {}",
        1e3 * secs / done.max(1) as f64,
        absolute(checkpoint).display()
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
        meta_losses: state.meta_losses,
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

/// The command line.
struct Args {
    steps: usize,
    resume: bool,
    overwrite: bool,
    quadratic_only: bool,
    family: Option<String>,
    data_dir: Option<PathBuf>,
    out_dir: PathBuf,
}

const HELP: &str = "\
meta_train: meta-train MlpLOpt with truncated PES on the quadratic family, then on the
image-MLP family (Fashion-MNIST 8x8, or the embedded digits when it is not installed);
or on one family chosen with --family.

USAGE: cargo run --release --example meta_train -- [OPTIONS]

OPTIONS:
  --steps N          outer steps on the quadratic family, in all (default 2000)
  --resume           continue from the checkpoints in the output folder, up to the same
                     totals; the result equals the uninterrupted run's bit for bit
  --overwrite        start afresh even where a checkpoint exists (it is replaced)
  --quadratic-only   skip the image-MLP family (the same as --family quadratic)
  --family F         only the family F: quadratic, image_mlp, conv (ParametricImageConv
                     on Fashion-MNIST 8x8, or the embedded digits; 300 outer steps) or lm
                     (ParametricLmRnn, LSTMs of 8-31 units on fortunes bytes, or the
                     embedded text; 300 outer steps)
  --data-dir DIR     the folder holding Fashion-MNIST's four files, or its parent
                     (default: $LOPT_DATA_DIR, else /usr/share/datasets/fashion-mnist)
  --out DIR          where checkpoints and the plot go (default target/lopt-meta-train)
  -h, --help         this text";

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        steps: 2000,
        resume: false,
        overwrite: false,
        quadratic_only: false,
        family: None,
        data_dir: None,
        out_dir: PathBuf::from("target/lopt-meta-train"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--steps" => {
                a.steps = value("--steps")?
                    .parse()
                    .map_err(|e| format!("--steps: {e}"))?
            }
            "--resume" => a.resume = true,
            "--overwrite" => a.overwrite = true,
            "--quadratic-only" => a.quadratic_only = true,
            "--family" => {
                let f = value("--family")?;
                if !["quadratic", "image_mlp", "conv", "lm"].contains(&f.as_str()) {
                    return Err(format!(
                        "--family: `{f}` is not one of quadratic, image_mlp, conv, lm"
                    ));
                }
                a.family = Some(f);
            }
            "--data-dir" => a.data_dir = Some(PathBuf::from(value("--data-dir")?)),
            "--out" => a.out_dir = PathBuf::from(value("--out")?),
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    if a.resume && a.overwrite {
        return Err("--resume and --overwrite exclude each other".into());
    }
    if a.quadratic_only {
        match a.family.as_deref() {
            None | Some("quadratic") => a.family = Some("quadratic".into()),
            Some(f) => {
                return Err(format!(
                    "--quadratic-only and --family {f} exclude each other"
                ))
            }
        }
    }
    Ok(Some(a))
}

/// `p` made absolute (as printed for the user).
fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    lopt::exit_code(run(&args))
}

fn run(args: &Args) -> lopt::Result<()> {
    let ck_quad = args.out_dir.join("quadratic.ckpt");
    let ck_mlp = args.out_dir.join("image_mlp.ckpt");
    let ck_conv = args.out_dir.join("conv.ckpt");
    let ck_lm = args.out_dir.join("lm.ckpt");
    let plot = args.out_dir.join("meta_train.png");
    // Without --family: the quadratic family, then the image MLPs.
    let runs = |f: &str| match args.family.as_deref() {
        None => f != "conv" && f != "lm",
        Some(chosen) => chosen == f,
    };
    for (ck, f) in [
        (&ck_quad, "quadratic"),
        (&ck_mlp, "image_mlp"),
        (&ck_conv, "conv"),
        (&ck_lm, "lm"),
    ] {
        if !runs(f) {
            continue;
        }
        if ck.exists() && !args.resume && !args.overwrite {
            return Err(lopt::Error::InvalidArgument(format!(
                "{} exists: pass --resume to continue it or --overwrite to start afresh",
                absolute(ck).display()
            )));
        }
    }
    // The data is opened and checked before any training.
    let image = if !runs("image_mlp") {
        None
    } else {
        let (family, source) =
            ImageMlpFamily::fashion_mnist8_or_digits_in(args.data_dir.as_deref())?;
        Some((family, source))
    };
    let conv = if runs("conv") {
        Some(conv_family(args.data_dir.as_deref())?)
    } else {
        None
    };
    let lm = if runs("lm") { Some(lm_family()?) } else { None };
    let lopt = MlpLOpt::default();
    println!(
        "{} (θ: {} scalars), meta-trained with TruncatedPes",
        lopt.name(),
        lopt.init(Key::new(0)).num_elements()
    );

    let mut all = Vec::new();
    if runs("quadratic") {
        all.extend(run_quadratic(args, &lopt, &ck_quad)?);
    }
    if let Some((mlp, source)) = &image {
        match source {
            ImageSource::Digits => println!(
                "{}: Fashion-MNIST was not found ({}), so this trains on the embedded 8x8 \
                 digits. To use Fashion-MNIST: `apt-get install dataset-fashion-mnist`, or \
                 put its four files in a folder and pass --data-dir FOLDER.",
                mlp.name(),
                ImageMlpFamily::fashion_mnist_missing_reason(args.data_dir.as_deref())
            ),
            _ => println!("{} on {source}", mlp.name()),
        }
        println!("  8 tasks of hidden width 16, 32 or 64, one per f32 group");
        all.extend(run_family(
            mlp,
            &lopt,
            "image MLP",
            (100, 400),
            400,
            300,
            &[1e-3, 1e-2],
            &ck_mlp,
            args.resume,
        )?);
    }
    if let Some(conv) = &conv {
        println!("{}", conv.name());
        println!(
            "  8 tasks: 3x3 convolutions of 4 to 15 channels, 0-2 with stride 2, 8 \
             activations; one per f32 group"
        );
        all.extend(run_family(
            conv,
            &lopt,
            "conv",
            (50, 200),
            300,
            200,
            &[1e-3, 1e-2, 1e-1],
            &ck_conv,
            args.resume,
        )?);
    }
    if let Some(lm) = &lm {
        println!("{}", lm.name());
        println!(
            "  8 tasks: LSTMs of 8 to 31 hidden units, embeddings of 8 to 31; one per f32 group"
        );
        all.extend(run_family(
            lm,
            &lopt,
            "LM",
            (50, 200),
            300,
            200,
            &[1e-3, 1e-2, 1e-1],
            &ck_lm,
            args.resume,
        )?);
    }
    plot_png(&plot, &all)?;
    println!("plot: {}", absolute(&plot).display());
    Ok(())
}

/// One family's run for `--family image_mlp|conv|lm`: `MlpLOpt` meta-trained with
/// `TruncatedPes` (8 tasks, one per `f32` group, truncations of 10 steps in runs whose
/// lengths are log-uniform in `lengths`, meta learning rate 3e-3) for `outer_steps`, then
/// compared on a held-out task over `eval_steps` against Adam at `adam_lrs`; its panels.
#[allow(clippy::too_many_arguments)]
fn run_family<F: TaskFamily>(
    family: &F,
    lopt: &MlpLOpt,
    title: &str,
    (min_length, max_length): (usize, usize),
    outer_steps: usize,
    eval_steps: usize,
    adam_lrs: &[f64],
    checkpoint: &Path,
    resume: bool,
) -> lopt::Result<[Panel; 2]> {
    let schedule = LogUniformLengthSchedule {
        min_length,
        max_length,
    };
    let mut step = LOptTruncatedStep::new(family, lopt, schedule, 8)?;
    step.random_initial_iteration_offset = max_length;
    let pes = TruncatedPes::new(step, 10, 0.01)?;
    let out = meta_train(
        family,
        lopt,
        pes,
        3e-3,
        outer_steps,
        eval_steps,
        adam_lrs,
        checkpoint,
        resume,
    )?;
    Ok(panels(title, &out, false))
}

/// The quadratic family's run and its panels.
fn run_quadratic(args: &Args, lopt: &MlpLOpt, ck_quad: &Path) -> lopt::Result<[Panel; 2]> {
    let quad = FixedDimQuadraticFamily { dim: 10 };
    println!("{}: 16 tasks, 8 per SIMD lane group", quad.name());
    let schedule = LogUniformLengthSchedule {
        min_length: 50,
        max_length: 200,
    };
    let mut step = LOptTruncatedStep::new(&quad, lopt, schedule, 16)?;
    step.random_initial_iteration_offset = 200;
    let pes = TruncatedPes::new(step, 10, 0.01)?.batched::<Lanes<8>>();
    let quad_out = meta_train(
        &quad,
        lopt,
        pes,
        3e-3,
        args.steps,
        200,
        &[1e-2, 1e-1],
        ck_quad,
        args.resume,
    )?;
    Ok(panels("quadratic", &quad_out, true))
}

/// The conv family of `--family conv`: `ParametricImageConv` with channels in 4..16 on
/// Fashion-MNIST 8×8 with batch 32, or on the embedded 8×8 digits when Fashion-MNIST is
/// not found (said on the console).
fn conv_family(dir: Option<&Path>) -> lopt::Result<ParametricImageConv> {
    let (ds, data) = match fashion_mnist_datasets(32, (8, 8), dir) {
        Ok(ds) => (ds, "FashionMnist8"),
        Err(lopt::Error::DatasetMissing { path, .. }) => {
            println!("Fashion-MNIST was not found (no file {path}): the conv family trains on the embedded 8x8 digits");
            (digits_datasets(32)?, "Digits8")
        }
        Err(e) => return Err(e),
    };
    Ok(ParametricImageConv::new(ds, (8, 8, 1), (4, 16))?
        .with_name(format!("ParametricImageConv_{data}_bs32_4to16")))
}

/// The LM family of `--family lm`: `ParametricLmRnn` (LSTM) with hidden and embedding
/// sizes in `log_int(8, 32)` on `fortunes` bytes with batch 16 and sequences of 16, or on
/// the embedded text when `fortunes` is not installed (said on the console).
fn lm_family() -> lopt::Result<ParametricLmRnn> {
    let (ds, source) = lm_datasets_or_embedded(16, 16, None)?;
    let data = match source {
        TextSource::Embedded => {
            println!(
                "fortunes was not found (`apt-get install fortunes`): the LM family trains on \
                 the embedded text"
            );
            "Embedded"
        }
        _ => "FortunesBytes",
    };
    Ok(ParametricLmRnn::new(ds, (8, 32))?
        .with_name(format!("ParametricLMRNN_LSTM_{data}_bs16_T16_8to32")))
}
