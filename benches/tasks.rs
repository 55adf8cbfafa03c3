//! `cargo bench --bench tasks`: the conv-net tasks of `tasks::conv`, side by side with
//! `scripts/jax/bench_tasks.py` (the JAX library's own task code on the same shapes).
//!
//! - `conv32x64x64.c10_32x32x3`: the network of `Conv_Cifar10_32x64x64` (3×3
//!   convolutions of 32, 64, 64 channels, strides 2, 1, 1, `SAME`, ReLU, mean pool,
//!   linear head, 56,970 parameters) on random 32×32×3 batches of 128 (images ~ U[0,1),
//!   labels ~ U{0..9}); `conv32x64x64.fmnist_28x28x1`: the same network on
//!   Fashion-MNIST-shaped 28×28×1 batches of 128 (56,394 parameters).
//!   - `.grad`: one `value_and_grad` call;
//!   - `.train_100`: 100 Adam(1e-3) steps from the same start, reported per step (step
//!     `t` uses batch `t mod 8` of a pool of 8).
//! - `conv_family.8x8x3.vmap8.train_100`: 8 instances of `ParametricImageConv` (two
//!   convolutions of 32 channels, strides 2 and 1, ReLU, init scales 0.5..2) on random
//!   8×8×3 batches of 128, trained batched in one `Lanes<8>` group (one instance per
//!   lane, one shared batch per step); reported per instance-step.
//! - `rnnlm.lstm128`: the library's `RNNLM_lm1bbytes_Patch32_LSTM128_Embed64` network
//!   (LSTM 128, embedding 64, 256 byte classes, batch 128, length 32) and `tlm.d128l1`:
//!   its transformer at `MultiRuntime_8` (4 heads, D 128, 1 layer, batch 64, length 32,
//!   256 byte classes), on random bytes, with `.grad` and `.train_100` as above (steps
//!   cycle a pool of 4 batches); their JAX side is `scripts/jax/bench_lm_tasks.py`.
//!   Both run as the named fixed tasks do, data-parallel
//!   ([`DataParallel`](lopt::data_parallel::DataParallel): the LSTM's batch as two chunks
//!   of 64 sequences, the transformer's as eight of 8, on the Rayon pool, so measure them
//!   in wall time); `rnnlm.lstm128.whole.*` and `tlm.d128l1.whole.*` are the same tasks
//!   on the whole batch on one thread (the form before the split).
//!
//! Each line is followed by its FLOP rate and fraction of the machine's f32 FMA peak
//! (2 FMA pipes × SIMD lanes × 2 FLOP × clock, one core and all cores). FLOP model: the
//! convolutions' and the head's forward products, the same again for the weight
//! gradients, and the input gradients of every layer but the first; 2 FLOP per
//! multiply-add; Adam and the elementwise work are not counted. For the language models:
//! the input, recurrent (or attention and MLP) and readout products of every token, and
//! the attention's two per-head products, the backward pass counted as twice the forward.

mod common;

use std::time::Duration;

use common::{keep, Case};
use lopt::datasets::text::{lm_datasets, ByteVocab, LmBatch, LmOptions, TextCorpus, TextSource};
use lopt::datasets::{Datasets, ExtraInfo, ImageBatch};
use lopt::lanes::Lanes;
use lopt::prelude::*;
use lopt::tasks::conv::{Conv2, ConvTask, ParametricImageConv, ParametricImageConvCfg};
use lopt::tasks::rnn_lm::TeacherForcedRnnLm;
use lopt::tasks::transformer_lm::TransformerLm;
use lopt::vmap::FamilyLanes;
use rand::{Rng, SeedableRng};

const BATCH: usize = 128;
const POOL: usize = 8;
const STEPS: usize = 100;

/// `n` random batches of `batch` images of `(h, w, c)`: pixels ~ U[0,1), labels ~ U{0..9}.
fn random_batches(
    seed: u64,
    n: usize,
    batch: usize,
    (h, w, c): (usize, usize, usize),
) -> Vec<ImageBatch> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| ImageBatch {
            image: DMatrix::from_fn(batch, h * w * c, |_, _| rng.gen::<f32>()),
            label: (0..batch).map(|_| rng.gen_range(0..10)).collect(),
            height: h,
            width: w,
            channels: c,
        })
        .collect()
}

/// Datasets that are never read (batches come from the pool), declaring 10 classes.
fn no_data() -> Datasets<ImageBatch> {
    Datasets::new(
        std::iter::empty(),
        std::iter::empty(),
        std::iter::empty(),
        std::iter::empty(),
    )
    .with_extra_info(ExtraInfo::with_num_classes(10))
}

/// FLOP of one training step (see the module docs) of 3×3 `SAME` convolutions with
/// `hidden` channels and `strides` on `batch` images of `(h, w, c)`, and a 10-way head.
fn step_flops(
    batch: usize,
    (h, w, c): (usize, usize, usize),
    hidden: &[usize],
    strides: &[usize],
) -> f64 {
    let (mut h, mut w, mut c) = (h, w, c);
    let (mut fwd, mut input_grads) = (0.0, 0.0);
    for (i, (&co, &s)) in hidden.iter().zip(strides).enumerate() {
        (h, w) = (h.div_ceil(s), w.div_ceil(s));
        let macs = (h * w * 9 * c * co) as f64;
        fwd += macs;
        if i > 0 {
            input_grads += macs;
        }
        c = co;
    }
    fwd += (c * 10) as f64;
    input_grads += (c * 10) as f64;
    2.0 * batch as f64 * (2.0 * fwd + input_grads)
}

/// One fixed conv task's `.grad` and `.train_100` cases.
fn task_cases<'a, const D: usize>(
    id: &str,
    task: &'a ConvTask<D>,
    pool: &'a [ImageBatch],
) -> Vec<Case<'a>>
where
    ConvTask<D>: Task<Batch = ImageBatch>,
{
    let p0 = task.init::<f32>(Key::new(0));
    let p1 = p0.clone();
    vec![
        Case::new(format!("{id}.grad"), move || {
            keep(task.value_and_grad(&p0, Key::new(0), &pool[0]));
        }),
        Case::new(format!("{id}.train_100"), move || {
            let opt = Adam::new(1e-3);
            let mut state = opt.init(p1.clone(), None);
            for t in 0..STEPS {
                let (l, g) =
                    task.value_and_grad(opt.get_params(&state), Key::new(0), &pool[t % POOL]);
                opt.update(&mut state, &g, l);
            }
            keep(state);
        })
        .per(STEPS as f64),
    ]
}

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
fn train_lm<T: Task<Batch = LmBatch>>(
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

fn main() -> lopt::Result<()> {
    let (peak1, cores, how) = common::core_peak();
    println!(
        "machine: f32 FMA peak {:.0} GFLOP/s per core ({how})",
        peak1 / 1e9
    );
    let c10 = ConvTask::<3>::new(no_data(), (32, 32, 3), vec![32, 64, 64])?;
    let fm = ConvTask::<3>::new(no_data(), (28, 28, 1), vec![32, 64, 64])?;
    let c10_pool = random_batches(1, POOL, BATCH, (32, 32, 3));
    let fm_pool = random_batches(2, POOL, BATCH, (28, 28, 1));

    // The family: 8 instances of one shape in one lane group.
    let fam_pool = random_batches(3, POOL, BATCH, (8, 8, 3));
    let family = ParametricImageConv::new(no_data(), (8, 8, 3), (4, 64))?;
    let cfgs: Vec<ParametricImageConvCfg<f32>> = (0..8)
        .map(|i| family.cfg(32, 1, 0, 0.5 + 1.5 * i as f32 / 7.0))
        .collect();
    let inits: Vec<Conv2<f32>> = cfgs
        .iter()
        .enumerate()
        .map(|(i, c)| family.init(c, Key::new(10 + i as u64)))
        .collect();
    let packed_cfg: ParametricImageConvCfg<Lanes<8>> =
        family.pack_cfg(&cfgs.iter().collect::<Vec<_>>());
    let packed: Conv2<Lanes<8>> = family.pack_params(&inits.iter().collect::<Vec<_>>());

    // The language models (FLOP: forward products ×3 for value and gradient).
    let (b, t, e, h, v) = (128usize, 32usize, 64usize, 128usize, 256usize);
    let ds_r = random_datasets(b, t);
    let rnn_whole = TeacherForcedRnnLm::lstm(h, e, ds_r.clone())?;
    let rnn = rnn_whole.clone().data_parallel();
    let rb: Vec<LmBatch> = (0..4).map(|_| ds_r.train()).collect::<lopt::Result<_>>()?;
    let rp = rnn.init::<f32>(Key::new(0));
    let rnn_flop = 3.0 * 2.0 * (b * t) as f64 * (e * 4 * h + h * 4 * h + h * v) as f64;
    let (tb, d, heads) = (64usize, 128usize, 4usize);
    let ds_t = random_datasets(tb, t);
    let tlm_whole = TransformerLm::<1>::new(heads, d, ds_t.clone())?;
    let tlm = tlm_whole.clone().data_parallel();
    let tbatches: Vec<LmBatch> = (0..4).map(|_| ds_t.train()).collect::<lopt::Result<_>>()?;
    let tp = tlm.init::<f32>(Key::new(0));
    let a = 32 * heads;
    let tlm_flop = 3.0
        * (2.0 * (tb * t) as f64 * (d * 3 * a + a * d + 2 * d * 4 * d + d * v) as f64
            + 4.0 * (tb * heads * t * t * 32) as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let (mut iw, mut jw) = (0usize, 0usize);

    let mut cases = task_cases("conv32x64x64.c10_32x32x3", &c10, &c10_pool);
    cases.extend(task_cases("conv32x64x64.fmnist_28x28x1", &fm, &fm_pool));
    cases.push(
        Case::new("conv_family.8x8x3.vmap8.train_100", || {
            let opt = Adam::new(1e-3);
            let mut state = opt.init(packed.clone(), None);
            for t in 0..STEPS {
                let (l, g) = family.value_and_grad(
                    opt.get_params(&state),
                    &packed_cfg,
                    <Lanes<8> as Real>::Key::from_lane_keys(&[Key::new(0)]),
                    &fam_pool[t % POOL],
                );
                opt.update(&mut state, &g, l);
            }
            keep(state);
        })
        .per((STEPS * 8) as f64),
    );

    cases.push(Case::new("rnnlm.lstm128.grad", || {
        i += 1;
        keep(rnn.value_and_grad(&rp, Key::new(0), &rb[i % rb.len()]));
    }));
    cases.push(
        Case::new("rnnlm.lstm128.train_100", || {
            keep(train_lm(&rnn, &rp, &rb, STEPS));
        })
        .per(STEPS as f64),
    );
    cases.push(Case::new("rnnlm.lstm128.whole.grad", || {
        iw += 1;
        keep(rnn_whole.value_and_grad(&rp, Key::new(0), &rb[iw % rb.len()]));
    }));
    cases.push(
        Case::new("rnnlm.lstm128.whole.train_100", || {
            keep(train_lm(&rnn_whole, &rp, &rb, STEPS));
        })
        .per(STEPS as f64),
    );
    cases.push(Case::new("tlm.d128l1.whole.grad", || {
        jw += 1;
        keep(tlm_whole.value_and_grad(&tp, Key::new(0), &tbatches[jw % tbatches.len()]));
    }));
    cases.push(
        Case::new("tlm.d128l1.whole.train_100", || {
            keep(train_lm(&tlm_whole, &tp, &tbatches, STEPS));
        })
        .per(STEPS as f64),
    );
    cases.push(Case::new("tlm.d128l1.grad", || {
        j += 1;
        keep(tlm.value_and_grad(&tp, Key::new(0), &tbatches[j % tbatches.len()]));
    }));
    cases.push(
        Case::new("tlm.d128l1.train_100", || {
            keep(train_lm(&tlm, &tp, &tbatches, STEPS));
        })
        .per(STEPS as f64),
    );
    common::select(&mut cases);
    let s = common::run(&mut cases, 7, Duration::from_millis(300));
    let flops = |id: &str| {
        if id.starts_with("conv32x64x64.c10") {
            step_flops(BATCH, (32, 32, 3), &[32, 64, 64], &[2, 1, 1])
        } else if id.starts_with("rnnlm") {
            rnn_flop
        } else if id.starts_with("tlm") {
            tlm_flop
        } else if id.starts_with("conv32x64x64.fmnist") {
            step_flops(BATCH, (28, 28, 1), &[32, 64, 64], &[2, 1, 1])
        } else {
            step_flops(BATCH, (8, 8, 3), &[32, 32], &[2, 1])
        }
    };
    for sm in &s {
        // A value_and_grad call is the whole step's FLOP (the update is not counted).
        let rate = flops(&sm.id) / sm.median;
        println!(
            "flops {}: {:.2} GFLOP/step, {:.1} GFLOP/s = {:.1}% of one core's FMA peak, \
             {:.1}% of {cores} cores'",
            sm.id,
            flops(&sm.id) / 1e9,
            rate / 1e9,
            100.0 * rate / peak1,
            100.0 * rate / (peak1 * cores),
        );
    }
    Ok(())
}
