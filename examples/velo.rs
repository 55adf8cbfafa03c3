//! A pretrained learned optimizer, VeLO, used like Adam: it trains the image MLP
//! (`ImageMLP_FashionMnist8_Relu32`, or the embedded 8×8 digits when Fashion-MNIST is not
//! installed) beside Adam and NAdamW (`opt_list(0)`, the JAX library's first tuned
//! setting), from the same initialization on the same batches, and plots the training
//! loss against steps and against wall time.
//!
//! VeLO's weights: lopt downloads nothing. The released checkpoints are listed in the JAX
//! library's `research/general_lopt/pretrained_optimizers.py`; fetch one with your own
//! tools and pass its path with `--theta PATH` (or `LOPT_VELO_THETA=PATH`). Without one,
//! the example says so and uses a θ drawn by `Velo::released().init` (the released
//! configuration, untrained weights): the curves then show the machinery, not VeLO.
//!
//! Run with `cargo run --release --example velo [-- --steps N --theta PATH --out DIR]`.
//! Writes `target/lopt-velo/velo.png`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use lopt::eval_training::plot::{plot_png, Line, Panel};
use lopt::learned_optimizers::{LearnedOptimizer, Velo};
use lopt::optimizers::NAdamW;
use lopt::prefab::{self, Pretrained};
use lopt::prelude::*;
use lopt::tasks::image_mlp::{
    ImageMLP_Digits8_Relu32, ImageMLP_FashionMnist8_Relu32, ImageMlpTask,
};

struct Args {
    steps: usize,
    theta: Option<PathBuf>,
    out_dir: PathBuf,
}

const USAGE: &str = "usage: velo [--steps N] [--theta PATH] [--out DIR]
  --steps N      training steps per optimizer (default 1000)
  --theta PATH   a released VeLO θ file (flax msgpack; default: $LOPT_VELO_THETA)
  --out DIR      where the plot goes (default target/lopt-velo)";

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        steps: 1000,
        theta: std::env::var_os("LOPT_VELO_THETA").map(PathBuf::from),
        out_dir: PathBuf::from("target/lopt-velo"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--steps" => {
                a.steps = value()?.parse().map_err(|e| format!("--steps: {e}"))?;
                if a.steps == 0 {
                    return Err("--steps must be positive".into());
                }
            }
            "--theta" => a.theta = Some(PathBuf::from(value()?)),
            "--out" => a.out_dir = PathBuf::from(value()?),
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Some(a))
}

/// The training loss at each step (entry 0 at initialization), the test loss after the
/// last step and the wall time of the whole run (gradients and updates).
struct Run {
    name: String,
    losses: Vec<f64>,
    seconds: Vec<f64>,
    test_loss: f64,
}

fn train<O: Optimizer<<ImageMlpTask<1> as Task>::Params<f32>>>(
    name: &str,
    task: &ImageMlpTask<1>,
    opt: &O,
    batches: &[<ImageMlpTask<1> as Task>::Batch],
    test: &[<ImageMlpTask<1> as Task>::Batch],
) -> Run {
    let steps = batches.len() - 1;
    let mut state = opt.init(task.init::<f32>(Key::new(0)), Some(steps));
    let (mut losses, mut seconds) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    for (t, batch) in batches.iter().enumerate() {
        let (loss, grad) = task.value_and_grad(opt.get_params(&state), Key::new(t as u64), batch);
        losses.push(loss as f64);
        seconds.push(t0.elapsed().as_secs_f64());
        if t < steps {
            opt.update(&mut state, &grad, loss);
        }
    }
    let test_loss = test
        .iter()
        .map(|b| task.loss(opt.get_params(&state), Key::new(0), b) as f64)
        .sum::<f64>()
        / test.len() as f64;
    Run {
        name: name.into(),
        losses,
        seconds,
        test_loss,
    }
}

/// Mean over a trailing window of `w` steps (the batch losses are noisy).
fn smooth(xs: &[f64], w: usize) -> Vec<f64> {
    (0..xs.len())
        .map(|i| {
            let s = &xs[i.saturating_sub(w - 1)..=i];
            s.iter().sum::<f64>() / s.len() as f64
        })
        .collect()
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(Some(args)) => lopt::exit_code(run(&args)),
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> lopt::Result<()> {
    let task = match ImageMLP_FashionMnist8_Relu32() {
        Ok(t) => t,
        Err(Error::DatasetMissing { .. }) => {
            println!(
                "Fashion-MNIST is not installed (scripts/install_data.sh); using the \
                 embedded 8x8 digits"
            );
            ImageMLP_Digits8_Relu32()?
        }
        Err(e) => return Err(e),
    };
    let steps = args.steps;
    let velo: Pretrained<Velo> = match &args.theta {
        Some(path) => {
            let opt = prefab::velo(path, steps)?;
            println!("VeLO: released θ from {}", path.display());
            opt
        }
        None => {
            println!(
                "VeLO: no θ file given (--theta PATH or LOPT_VELO_THETA). The released \
                 checkpoints are listed in the JAX library's \
                 research/general_lopt/pretrained_optimizers.py; lopt downloads nothing. \
                 Falling back to a θ drawn by Velo::released().init (untrained weights): \
                 the VeLO curve below is NOT the released VeLO."
            );
            let lopt = Velo::released();
            let theta = lopt.init(Key::new(0));
            Pretrained::new(lopt, theta).num_training_steps(steps)
        }
    };
    let ds = task
        .datasets()
        .ok_or_else(|| Error::NoDatasets(task.name()))?;
    let batches = ds.batches(lopt::datasets::Split::Train, steps + 1)?;
    let test = ds.batches(lopt::datasets::Split::Test, 20)?;
    let adam = Adam::new(1e-2);
    let nadamw = NAdamW::opt_list(0)?;
    println!("{}: {steps} steps of each optimizer", task.name());
    let runs = vec![
        train("VeLO", &task, &velo, &batches, &test),
        train("Adam(1e-2)", &task, &adam, &batches, &test),
        train("NAdamW opt_list(0)", &task, &nadamw, &batches, &test),
    ];
    for r in &runs {
        let last = &r.losses[r.losses.len().saturating_sub(50)..];
        println!(
            "  {:<20} train loss (last 50 steps) {:.4}, test loss {:.4}, {:.3} s ({:.1} µs a step)",
            r.name,
            last.iter().sum::<f64>() / last.len() as f64,
            r.test_loss,
            r.seconds.last().copied().unwrap_or(0.0),
            1e6 * r.seconds.last().copied().unwrap_or(0.0) / steps as f64,
        );
    }
    let w = (steps / 50).max(1);
    let label = |r: &Run| {
        format!(
            "{} ({:.2} s)",
            r.name,
            r.seconds.last().copied().unwrap_or(0.0)
        )
    };
    let by_step = runs
        .iter()
        .map(|r| {
            let xs = (0..r.losses.len()).map(|t| t as f64).collect();
            Line::new(label(r), xs, smooth(&r.losses, w))
        })
        .collect();
    let by_time = runs
        .iter()
        .map(|r| {
            let xs = r.seconds.iter().map(|s| 1e3 * s).collect();
            Line::new(label(r), xs, smooth(&r.losses, w))
        })
        .collect();
    let which = if args.theta.is_some() {
        "released VeLO"
    } else {
        "VeLO with an untrained θ"
    };
    let plot = args.out_dir.join("velo.png");
    plot_png(
        &plot,
        &[
            Panel::new(
                format!("{}: {which}, Adam, NAdamW", task.name()),
                format!("training loss (mean of {w} steps)"),
                by_step,
            ),
            Panel::new(
                "the same runs against wall time (x: milliseconds)",
                "training loss",
                by_time,
            ),
        ],
    )?;
    println!("plot: {}", absolute(&plot).display());
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    std::env::current_dir().map_or(p.to_path_buf(), |d| d.join(p))
}
