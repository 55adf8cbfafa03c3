//! Training curves of every fixed task of the library, with Adam: the JAX library's
//! `single_task_training_curves` (`lopt::eval_training`) on each task, one PNG per task,
//! and a table of step counts, wall times and losses.
//!
//! Tasks (each with `Adam(3e-3)`; steps chosen so that each family of tasks takes a few
//! minutes on a 2-core machine in release):
//!
//! - image MLPs and the autoencoder on Fashion-MNIST (`ImageMLP_FashionMnist8_Relu32`,
//!   `ImageMLP_FashionMnist_Relu128x128`, `ImageMLPAE_FashionMnist_128x32x128_bs128`);
//! - conv nets on Fashion-MNIST at 8, 16 and 28 pixels (`Conv_FashionMnist*`), and on
//!   CIFAR-10 when `--cifar-dir DIR` gives its `cifar-10-batches-bin` (`Conv_Cifar10_*`);
//! - the RNN LMs (`RNNLM_fortunesbytes_*`) and the transformer LMs
//!   (`TransformerLM_FortunesBytes_MultiRuntime_{2..8}`) on `fortunes` bytes.
//!
//! A task whose data is not installed is skipped with the reason. Evaluation: every
//! tenth of the run on 2 batches of each split (train, outer_valid, test), 5 at the end.
//!
//! Run with `cargo run --release --example task_curves -- [--out DIR] [--cifar-dir DIR]
//! [--steps-scale X] [FILTER ...]` (FILTER: substrings of task names; default out
//! `target/lopt-task-curves`). Writes `<task>.png` and `<task>.csv` per task and
//! `summary.md` (the table) to the output folder; `--replot` redraws the PNGs from the
//! CSVs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use lopt::eval_training::plot::{plot_png, Line, Panel};
use lopt::eval_training::{single_task_training_curves, CurvesConfig, TrainingCurves};
use lopt::prelude::*;
use lopt::tasks::{conv, image_mlp, image_mlp_ae, rnn_lm, transformer_lm};

/// The learning rate of every run.
const LR: f64 = 3e-3;

/// The command line.
struct Args {
    out: PathBuf,
    cifar: Option<PathBuf>,
    scale: f64,
    replot: bool,
    filters: Vec<String>,
}

const HELP: &str = "\
task_curves: training curves of every fixed task with Adam(3e-3), one PNG per task.

USAGE: cargo run --release --example task_curves -- [OPTIONS] [FILTER ...]

OPTIONS:
  --out DIR          output folder (default target/lopt-task-curves)
  --cifar-dir DIR    CIFAR-10's cifar-10-batches-bin (or its parent): adds Conv_Cifar10_*
  --steps-scale X    multiply every step count by X (default 1)
  --replot           only redraw the PNGs from the CSVs in the output folder
  -h, --help         this text
FILTER: run only the tasks whose name contains one of these substrings";

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        out: PathBuf::from("target/lopt-task-curves"),
        cifar: None,
        scale: 1.0,
        replot: false,
        filters: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--out" => a.out = PathBuf::from(value("--out")?),
            "--replot" => a.replot = true,
            "--cifar-dir" => a.cifar = Some(PathBuf::from(value("--cifar-dir")?)),
            "--steps-scale" => {
                a.scale = value("--steps-scale")?
                    .parse()
                    .map_err(|e| format!("--steps-scale: {e}"))?;
                if !(a.scale > 0.0 && a.scale.is_finite()) {
                    return Err("--steps-scale must be positive".into());
                }
            }
            f if f.starts_with("--") => return Err(format!("unknown option `{f}` (see --help)")),
            f => a.filters.push(f.to_string()),
        }
    }
    Ok(Some(a))
}

/// One task's row of the summary.
struct Row {
    name: String,
    params: usize,
    steps: usize,
    secs: f64,
    first: f64,
    last_train: f64,
    last_test: f64,
}

/// Runs the curves of `task` for `steps` steps (scaled), writes its PNG and CSV, and
/// returns its row; `None` when filtered out.
fn curves<T: Task>(args: &Args, task: &T, steps: usize) -> lopt::Result<Option<Row>>
where
    Adam: Optimizer<T::Params<f32>>,
{
    let name = task.name();
    if !args.filters.is_empty() && !args.filters.iter().any(|f| name.contains(f.as_str())) {
        return Ok(None);
    }
    let steps = ((steps as f64 * args.scale).round() as usize).max(10);
    let params = task.init::<f32>(Key::new(0)).num_elements();
    let config = CurvesConfig {
        eval_every: steps / 10,
        eval_batches: 2,
        last_eval_batches: 5,
    };
    print!("{name} ({params} parameters), {steps} steps of Adam({LR:e}) ... ");
    use std::io::Write as _;
    std::io::stdout().flush().ok();
    let start = Instant::now();
    let c = single_task_training_curves(task, &Adam::new(LR), steps, Key::new(0), &config)?;
    let secs = start.elapsed().as_secs_f64();
    let test = &c.eval["test"].loss;
    // The training loss is noisy per batch: the first and last tenth's means.
    let tenth = (c.train_loss.len() / 10).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let row = Row {
        name: name.clone(),
        params,
        steps,
        secs,
        first: c.train_loss[0],
        last_train: mean(&c.train_loss[c.train_loss.len() - tenth..]),
        last_test: *test.last().expect("an evaluation at the last step"),
    };
    println!(
        "{secs:.1} s; train loss {:.4} -> {:.4} (last tenth), test loss {:.4} -> {:.4}",
        row.first, row.last_train, test[0], row.last_test
    );
    draw(&c, &args.out.join(format!("{name}.png")))?;
    c.write_csv(args.out.join(format!("{name}.csv")))?;
    Ok(Some(row))
}

/// Draws `c` (the training loss of every step and the evaluation losses of each split)
/// into a PNG at `path`, titled by the task and the run.
fn draw(c: &TrainingCurves, path: &Path) -> lopt::Result<()> {
    let f = |v: &[usize]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let mut lines = vec![Line::new(
        "train/loss (each step)",
        f(&c.train_xs),
        c.train_loss.clone(),
    )];
    for (split, sc) in &c.eval {
        lines.push(Line::new(
            format!("eval/{split}/loss"),
            f(&c.eval_xs),
            sc.loss.clone(),
        ));
    }
    let steps = c.train_xs.last().copied().unwrap_or(0);
    let title = format!("{}: Adam(3e-3), {steps} steps", c.task);
    plot_png(path, &[Panel::new(title, "loss", lines)])
}

/// Redraws every `*.csv` of `dir` (curves written by an earlier run) as its PNG.
fn replot(dir: &Path) -> lopt::Result<()> {
    let io = |e: std::io::Error| lopt::Error::Io {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "csv") {
            draw(
                &TrainingCurves::read_csv(&path)?,
                &path.with_extension("png"),
            )?;
            println!("{}", path.with_extension("png").display());
        }
    }
    Ok(())
}

/// Runs `curves` on the task `make` builds, or reports why it is skipped (data not
/// installed).
fn run_one<T: Task>(
    args: &Args,
    rows: &mut Vec<Row>,
    label: &str,
    make: impl FnOnce() -> lopt::Result<T>,
    steps: usize,
) -> lopt::Result<()>
where
    Adam: Optimizer<T::Params<f32>>,
{
    if !args.filters.is_empty() && !args.filters.iter().any(|f| label.contains(f.as_str())) {
        return Ok(());
    }
    match make() {
        Ok(task) => rows.extend(curves(args, &task, steps)?),
        Err(e @ lopt::Error::DatasetMissing { .. }) => println!("{label}: skipped ({e})"),
        Err(e) => return Err(e),
    }
    Ok(())
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
    if args.replot {
        return replot(&args.out);
    }
    let mut rows = Vec::new();
    let r = &mut rows;
    let a = args;
    // Image MLPs and the autoencoder.
    run_one(
        a,
        r,
        "ImageMLP_FashionMnist8_Relu32",
        image_mlp::ImageMLP_FashionMnist8_Relu32,
        3000,
    )?;
    run_one(
        a,
        r,
        "ImageMLP_FashionMnist_Relu128x128",
        image_mlp::ImageMLP_FashionMnist_Relu128x128,
        2000,
    )?;
    run_one(
        a,
        r,
        "ImageMLPAE_FashionMnist_128x32x128_bs128",
        image_mlp_ae::ImageMLPAE_FashionMnist_128x32x128_bs128,
        2000,
    )?;
    // Conv nets.
    run_one(
        a,
        r,
        "Conv_FashionMnist8_16x32",
        conv::Conv_FashionMnist8_16x32,
        2000,
    )?;
    run_one(
        a,
        r,
        "Conv_FashionMnist16_32x64x64",
        conv::Conv_FashionMnist16_32x64x64,
        200,
    )?;
    run_one(
        a,
        r,
        "Conv_FashionMnist28_32x64x64",
        conv::Conv_FashionMnist28_32x64x64,
        100,
    )?;
    match &args.cifar {
        Some(dir) => {
            let d = Some(dir.as_path());
            run_one(
                a,
                r,
                "Conv_Cifar10_8_16x32",
                || conv::Conv_Cifar10_8_16x32(d),
                500,
            )?;
            run_one(
                a,
                r,
                "Conv_Cifar10_16_32x64x64",
                || conv::Conv_Cifar10_16_32x64x64(d),
                200,
            )?;
            run_one(
                a,
                r,
                "Conv_Cifar10_32x64x64",
                || conv::Conv_Cifar10_32x64x64(d),
                100,
            )?;
        }
        None => println!("Conv_Cifar10_*: skipped (no --cifar-dir)"),
    }
    // RNN language models.
    run_one(
        a,
        r,
        "RNNLM_fortunesbytes_Patch32_LSTM128_Embed64",
        rnn_lm::RNNLM_fortunesbytes_Patch32_LSTM128_Embed64,
        150,
    )?;
    run_one(
        a,
        r,
        "RNNLM_fortunesbytes_Patch32_GRU128_Embed64",
        rnn_lm::RNNLM_fortunesbytes_Patch32_GRU128_Embed64,
        150,
    )?;
    run_one(
        a,
        r,
        "RNNLM_fortunesbytes_Patch32_VanillaRNN128_Embed64",
        rnn_lm::RNNLM_fortunesbytes_Patch32_VanillaRNN128_Embed64,
        500,
    )?;
    run_one(
        a,
        r,
        "RNNLM_fortunesbytes_Patch32_IRNN128_Embed64",
        rnn_lm::RNNLM_fortunesbytes_Patch32_IRNN128_Embed64,
        500,
    )?;
    run_one(
        a,
        r,
        "RNNLM_fortunesbytes_Patch128_LSTM128_Embed64",
        rnn_lm::RNNLM_fortunesbytes_Patch128_LSTM128_Embed64,
        50,
    )?;
    run_one(
        a,
        r,
        "RNNLM_fortunesbytes_Patch32_LSTM256_Embed128",
        rnn_lm::RNNLM_fortunesbytes_Patch32_LSTM256_Embed128,
        60,
    )?;
    run_one(
        a,
        r,
        "RNNLM_fortunesbytes_Patch32_GRU256_Embed128",
        rnn_lm::RNNLM_fortunesbytes_Patch32_GRU256_Embed128,
        60,
    )?;
    // Transformer language models.
    run_one(
        a,
        r,
        "TransformerLM_FortunesBytes_MultiRuntime_2",
        transformer_lm::TransformerLM_FortunesBytes_MultiRuntime_2,
        1000,
    )?;
    run_one(
        a,
        r,
        "TransformerLM_FortunesBytes_MultiRuntime_3",
        transformer_lm::TransformerLM_FortunesBytes_MultiRuntime_3,
        1000,
    )?;
    run_one(
        a,
        r,
        "TransformerLM_FortunesBytes_MultiRuntime_4",
        transformer_lm::TransformerLM_FortunesBytes_MultiRuntime_4,
        1000,
    )?;
    run_one(
        a,
        r,
        "TransformerLM_FortunesBytes_MultiRuntime_5",
        transformer_lm::TransformerLM_FortunesBytes_MultiRuntime_5,
        1000,
    )?;
    run_one(
        a,
        r,
        "TransformerLM_FortunesBytes_MultiRuntime_6",
        transformer_lm::TransformerLM_FortunesBytes_MultiRuntime_6,
        1000,
    )?;
    run_one(
        a,
        r,
        "TransformerLM_FortunesBytes_MultiRuntime_7",
        transformer_lm::TransformerLM_FortunesBytes_MultiRuntime_7,
        150,
    )?;
    run_one(
        a,
        r,
        "TransformerLM_FortunesBytes_MultiRuntime_8",
        transformer_lm::TransformerLM_FortunesBytes_MultiRuntime_8,
        150,
    )?;
    write_summary(&args.out, &rows)
}

/// Writes the table of `rows` to `out/summary.md` and prints it.
fn write_summary(out: &Path, rows: &[Row]) -> lopt::Result<()> {
    let mut s = String::from(
        "| task | parameters | Adam(3e-3) steps | wall time | train loss, step 0 | train loss, last tenth | test loss, end |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        writeln!(
            s,
            "| [`{}`]({}.png) | {} | {} | {:.1} s | {:.3} | {:.3} | {:.3} |",
            r.name, r.name, r.params, r.steps, r.secs, r.first, r.last_train, r.last_test
        )
        .expect("writing to a String");
    }
    std::fs::create_dir_all(out).map_err(|e| lopt::Error::Io {
        path: out.display().to_string(),
        message: e.to_string(),
    })?;
    let path = out.join("summary.md");
    std::fs::write(&path, &s).map_err(|e| lopt::Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    println!("\n{s}");
    println!(
        "plots and table: {}",
        std::path::absolute(out)
            .unwrap_or_else(|_| out.to_path_buf())
            .display()
    );
    Ok(())
}
