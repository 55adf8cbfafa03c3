//! The language-model tasks' speed: `rnnlm.lstm128.grad` / `.train_100` (the library's
//! `RNNLM_lm1bbytes_Patch32_LSTM128_Embed64` network: LSTM 128, embedding 64, 256 byte
//! classes, batch 128, length 32) and `tlm.d128l1.grad` / `.train_100` (its transformer
//! at `MultiRuntime_8`: 4 heads, D 128, 1 layer, batch 64, length 32, 256 byte classes),
//! on random bytes. `grad` is one `value_and_grad` call; `train_100` is 100 `Adam(1e-3)`
//! steps, reported per step. Each case also prints its FLOP rate as a fraction of this
//! core's measured f32 FMA peak (the matrix products' multiply-adds ×2, the backward pass
//! counted as twice the forward).
//!
//! The JAX side: `scripts/jax/bench_lm_tasks.py` (same ids; `jit(value_and_grad(loss))`
//! and 100 steps in one `lax.scan`).
//!
//! Measured on the 2-vCPU machine with other builds running (both sides slowed): `grad`
//! 0.40–0.56 s here against 0.17–0.22 s in JAX for both tasks; JAX's `train_100` 0.118 s
//! (LSTM) and 0.130 s (transformer) per step. A `train_100` run here takes about 9 × 100
//! gradient steps per case, minutes at these speeds.

mod common;

use std::time::Duration;

use common::{keep, run, select, Case};
use lopt::datasets::text::{lm_datasets, ByteVocab, LmBatch, LmOptions, TextCorpus, TextSource};
use lopt::prelude::*;
use lopt::tasks::rnn_lm::TeacherForcedRnnLm;
use lopt::tasks::transformer_lm::TransformerLm;
use rand::{Rng, SeedableRng};

/// Datasets of random documents (bytes 1..=255), 256 classes, batch `b`, length `t`.
fn random_datasets(b: usize, t: usize) -> lopt::datasets::Datasets<LmBatch> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let docs: Vec<Vec<u8>> = (0..20 * b)
        .map(|_| (0..t + 1).map(|_| rng.gen_range(1..=255u8)).collect())
        .collect();
    let corpus = TextCorpus::from_documents(TextSource::Memory, docs, Key::new(1)).unwrap();
    let opts = LmOptions {
        vocab: ByteVocab::Raw,
        ..LmOptions::default()
    };
    lm_datasets(&corpus, b, t, opts, Key::new(2)).unwrap()
}

/// `steps` Adam(1e-3) steps of `task` over `batches` (cycled).
fn train<T: Task<Batch = LmBatch>>(
    task: &T,
    p0: &T::Params<f32>,
    batches: &[LmBatch],
    steps: usize,
) -> f32 {
    let opt = Adam::new(1e-3);
    let mut state = opt.init(p0.clone(), None);
    let mut last = 0.0;
    for s in 0..steps {
        let (l, g) = task.value_and_grad(
            opt.get_params(&state),
            Key::new(s as u64),
            &batches[s % batches.len()],
        );
        opt.update(&mut state, &g, l);
        last = l;
    }
    last
}

fn main() {
    let peak = common::measured_peak();
    println!("peak f32 FMA one core: {:.1} GFLOP/s", peak / 1e9);
    let (b, t, e, h, v) = (128usize, 32usize, 64usize, 128usize, 256usize);
    let ds_r = random_datasets(b, t);
    let rnn = TeacherForcedRnnLm::lstm(h, e, ds_r.clone()).unwrap();
    let rb: Vec<LmBatch> = (0..4).map(|_| ds_r.train().unwrap()).collect();
    let rp = rnn.init::<f32>(Key::new(0));
    // Forward multiply-adds: input, recurrent and readout products for every token.
    let rnn_fwd = 2.0 * (b * t) as f64 * (e * 4 * h + h * 4 * h + h * v) as f64;

    let (tb, d, heads) = (64usize, 128usize, 4usize);
    let ds_t = random_datasets(tb, t);
    let tlm = TransformerLm::<1>::new(heads, d, ds_t.clone()).unwrap();
    let tbatches: Vec<LmBatch> = (0..4).map(|_| ds_t.train().unwrap()).collect();
    let tp = tlm.init::<f32>(Key::new(0));
    let a = 32 * heads;
    let tlm_fwd = 2.0 * (tb * t) as f64 * (d * 3 * a + a * d + 2 * d * 4 * d + d * v) as f64
        + 4.0 * (tb * heads * t * t * 32) as f64;

    let mut i = 0usize;
    let mut j = 0usize;
    let mut cases = vec![
        Case::new("rnnlm.lstm128.grad", || {
            i += 1;
            keep(rnn.value_and_grad(&rp, Key::new(0), &rb[i % rb.len()]));
        }),
        Case::new("rnnlm.lstm128.train_100", || {
            keep(train(&rnn, &rp, &rb, 100));
        })
        .per(100.0),
        Case::new("tlm.d128l1.grad", || {
            j += 1;
            keep(tlm.value_and_grad(&tp, Key::new(0), &tbatches[j % tbatches.len()]));
        }),
        Case::new("tlm.d128l1.train_100", || {
            keep(train(&tlm, &tp, &tbatches, 100));
        })
        .per(100.0),
    ];
    select(&mut cases);
    let summary = run(&mut cases, 7, Duration::from_millis(300));
    for s in &summary {
        let f = if s.id.starts_with("rnnlm") {
            rnn_fwd
        } else {
            tlm_fwd
        } * 3.0;
        println!(
            "flops {} gflop={:.3} gflops={:.1} peak_fraction={:.3}",
            s.id,
            f / 1e9,
            f / s.median / 1e9,
            f / s.median / peak
        );
    }
}
