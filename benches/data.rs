//! `cargo bench --bench data`: does data ever stall training? Fashion-MNIST 8×8 batches of
//! 128 (the embedded digits when it is not installed), produced ahead of need on a
//! background thread per split.
//!
//! - `data.produce`: batches pulled as fast as possible from a fresh stream (the producer's
//!   own cost per batch: shuffle, gather, copy);
//! - `data.pull_in_training`: the time a training loop (ImageMLP_FashionMnist8_Relu32,
//!   Adam) spends waiting inside `ds.train()`, per step;
//! - `data.train_step`: the rest of that training step (value, gradient, Adam).

use std::time::{Duration, Instant};

use lopt::datasets::image_datasets_or_digits;
use lopt::prelude::*;
use lopt::tasks::image_mlp::ImageMLP_FashionMnist8_Relu32_or_digits;

fn line(id: &str, mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = xs.len();
    println!(
        "bench {id} median_s={:.9} min_s={:.9} max_s={:.9} n={n}",
        xs[n / 2],
        xs[0],
        xs[n - 1]
    );
    xs[n / 2]
}

fn main() -> lopt::Result<()> {
    const BATCHES: usize = 400;
    let mut produce = Vec::new();
    for rep in 0..7u64 {
        // A fresh, uncached stream each repeat: different batch size keys a new cache entry.
        lopt::datasets::clear_dataset_cache();
        let (ds, source) = image_datasets_or_digits(128, (8, 8), None)?;
        if rep == 0 {
            println!("data: {source:?}");
        }
        ds.train()?; // the producer thread has started
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        for _ in 0..BATCHES {
            std::hint::black_box(ds.train()?);
        }
        produce.push(t.elapsed().as_secs_f64() / BATCHES as f64);
    }
    let produce = line("data.produce", produce);

    let (task, _) = ImageMLP_FashionMnist8_Relu32_or_digits()?;
    let ds = task.datasets().expect("image task has data");
    let opt = Adam::new(1e-2);
    let mut state = opt.init(task.init::<f32>(Key::new(0)), None);
    let (mut waits, mut steps) = (Vec::new(), Vec::new());
    // Eight repeats, the first a warm-up: seven samples.
    for rep in 0..8 {
        let (mut wait, mut step) = (0.0, 0.0);
        for _ in 0..200 {
            let t = Instant::now();
            let batch = ds.train()?;
            let t1 = Instant::now();
            let (l, g) = task.value_and_grad(opt.get_params(&state), Key::new(1), &batch);
            opt.update(&mut state, &g, l);
            wait += (t1 - t).as_secs_f64();
            step += t1.elapsed().as_secs_f64();
        }
        if rep > 0 {
            waits.push(wait / 200.0);
            steps.push(step / 200.0);
        }
    }
    let wait = line("data.pull_in_training", waits);
    let step = line("data.train_step", steps);
    println!("ratio pull_in_training / train_step = {:.4}", wait / step);
    println!(
        "ratio produce / train_step = {:.3} (below 1: one producer thread keeps up)",
        produce / step
    );
    Ok(())
}
