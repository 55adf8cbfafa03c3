//! An MLP family on 8x8 images, batched over instances: 64 sampled MLPs (hidden width
//! 16, 32 or 64, init scale 0.5..2) trained side by side with Adam on Fashion-MNIST 8x8
//! (or the embedded digits when Fashion-MNIST is not installed). Instances of equal
//! width share SIMD lane groups; groups run on all cores.
//!
//! Prints the final test loss and accuracy per width and writes the training curves to
//! `target/lopt-plots/image_mlp_family.png`.
//!
//! Run with `cargo run --release --example image_mlp_family [steps]` (default 1000).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use lopt::datasets::Split;
use lopt::eval_training::plot::{plot_png, Line, Panel};
use lopt::eval_training::{multi_task_training_curves, sample_instances, MultiTaskConfig};
use lopt::prelude::*;
use lopt::tasks::image_mlp::{Accuracy, ImageMlpFamily};
use lopt::vmap::Width;

const INSTANCES: usize = 64;

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    s / n.max(1) as f64
}

/// Errors print as their message (`Display`), not in `Debug` form.
fn main() -> std::process::ExitCode {
    lopt::exit_code(run())
}

fn run() -> lopt::Result<()> {
    let steps: usize = match std::env::args().nth(1) {
        Some(s) => s
            .parse()
            .map_err(|_| Error::InvalidArgument(format!("steps: `{s}` is not a count")))?,
        None => 1000,
    };
    let (family, source) = ImageMlpFamily::fashion_mnist8_or_digits()?;
    println!("data: {source} (8x8, batch 128); family {}", family.name());

    let (cfgs, keys) = sample_instances(&family, INSTANCES, Key::new(0));
    let mut by_width: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, c) in cfgs.iter().enumerate() {
        by_width.entry(c.hidden).or_default().push(i);
    }
    for (w, idx) in &by_width {
        println!("  width {w:>2}: {:>2} instances", idx.len());
    }

    let config = MultiTaskConfig {
        num_steps: steps,
        eval_every: (steps / 10).max(1),
        eval_batches: 2,
        last_eval_batches: 20,
        splits: vec![Split::Test],
        width: Width::W16,
    };
    let opt = Adam::new(1e-2);
    let bar = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} steps ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    bar.set_message(format!("training {INSTANCES} instances"));
    let start = Instant::now();
    let out =
        multi_task_training_curves(&family, &opt, &cfgs, &keys, &config, &Accuracy, &mut |s| {
            bar.set_position(s as u64)
        })?;
    bar.finish();
    let took = start.elapsed().as_secs_f64();
    println!(
        "{INSTANCES} instances x {steps} Adam steps in {took:.1} s ({:.1} us per instance-step, {} threads)",
        took * 1e6 / (INSTANCES * steps) as f64,
        rayon::current_num_threads()
    );

    let loss = out.final_eval("test", "loss").expect("test was evaluated");
    let acc = out
        .final_eval("test", "accuracy")
        .expect("accuracy was evaluated");
    println!("final test metrics (20 batches of 128), mean over the instances of each width:");
    println!("  width  instances  test loss  test accuracy  (min..max accuracy)");
    for (w, idx) in &by_width {
        let a: Vec<f64> = idx.iter().map(|&i| acc[i]).collect();
        let lo = a.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "  {w:>5}  {:>9}  {:>9.4}  {:>13.4}  ({lo:.4}..{hi:.4})",
            idx.len(),
            mean(idx.iter().map(|&i| loss[i])),
            mean(a.iter().copied()),
        );
    }
    let diverged = out.non_finite_at.iter().filter(|s| s.is_some()).count();
    if diverged > 0 {
        println!("{diverged} instances had a non-finite training loss");
    }

    // Curves per width: the mean training loss (averaged over 20-step windows), and the
    // mean test loss and accuracy at every evaluation.
    let window = 20.min(steps).max(1);
    let eval_xs: Vec<f64> = out.eval_xs.iter().map(|&x| x as f64).collect();
    let (mut train, mut test_loss, mut test_acc) = (Vec::new(), Vec::new(), Vec::new());
    for (w, idx) in &by_width {
        let per_step: Vec<f64> = (0..steps)
            .map(|t| mean(idx.iter().map(|&i| f64::from(out.train_loss[i][t]))))
            .collect();
        let (xs, ys): (Vec<f64>, Vec<f64>) = per_step
            .chunks(window)
            .enumerate()
            .map(|(c, v)| {
                (
                    (c * window) as f64 + (v.len() as f64 - 1.0) / 2.0,
                    mean(v.iter().copied()),
                )
            })
            .unzip();
        train.push(Line::new(format!("width {w}"), xs, ys));
        let at = |series: &Vec<Vec<f64>>, e: usize| mean(idx.iter().map(|&i| series[i][e]));
        let sc = &out.eval["test"];
        test_loss.push(Line::new(
            format!("width {w}"),
            eval_xs.clone(),
            (0..eval_xs.len()).map(|e| at(&sc.loss, e)).collect(),
        ));
        test_acc.push(Line::new(
            format!("width {w}"),
            eval_xs.clone(),
            (0..eval_xs.len())
                .map(|e| at(&sc.aux["accuracy"], e))
                .collect(),
        ));
    }
    let path = PathBuf::from("target/lopt-plots/image_mlp_family.png");
    plot_png(
        &path,
        &[
            Panel::new(
                format!("{INSTANCES} MLPs on {source}, Adam(1e-2)"),
                "mean train loss (20-step windows)",
                train,
            ),
            Panel::new("test loss", "mean test loss", test_loss),
            Panel::new("test accuracy", "mean test accuracy", test_acc),
        ],
    )?;
    let shown = std::fs::canonicalize(&path).unwrap_or(path);
    println!("training curves: {}", shown.display());
    Ok(())
}
