//! `cargo bench --bench image_mlp`: the computations of
//! `../shared/bench-anchors/bench_image_mlp.py`, side by side with its JAX figures.
//!
//! The task has the shape of ImageMLP_FashionMnist8_Relu32 (64 -> 32 relu -> 10, softmax
//! cross-entropy, batch 128, f32, 2410 parameters) on a pool of 256 fixed random batches
//! (images ~ U[0,1), labels ~ U{0..9}); Adam(1e-3).
//!
//! - `train_1000`: one instance, 1000 Adam steps; reported per step. Step `t` uses batch
//!   `t mod 256`.
//! - `vmap8.train_1000`, `vmap64.train_1000`: 8 and 64 instances (different inits)
//!   trained batched in SIMD lane groups (`Lanes<8>`, `Lanes<16>`), groups on the Rayon
//!   pool; reported per instance-step. A lane group shares its batch (JAX's vmapped tasks
//!   each index their own): group `g` of width `W` uses batch `(t + 31·g·W) mod 256`.
//! - extras: `vmap64_w8.train_1000` (64 instances in groups of 8) and
//!   `serial64.train_1000` (64 instances each in plain f32, spread over the pool).
//!
//! FLOP model (the script's): ≈ 1,342,536 FLOP per training step.

mod common;

use std::time::Duration;

use common::{keep, median, Case};
use lopt::batch::FamilyLanes;
use lopt::datasets::{Datasets, ExtraInfo, ImageBatch};
use lopt::lanes::LaneKeys;
use lopt::lanes::Lanes;
use lopt::prelude::*;
use lopt::tasks::image_mlp::{ImageMlpFamily, ImageMlpFamilyCfg, ImageMlpTask, Mlp1};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

const BATCH: usize = 128;
const POOL: usize = 256;
const STEPS: usize = 1000;
const FLOP_PER_STEP: f64 = (2 * BATCH * (64 * 32 + 32 * 10) * 2
    + 2 * BATCH * 32 * 10
    + 20 * (64 * 32 + 32 + 32 * 10 + 10)) as f64;
/// JAX medians from ../shared/bench-anchors/README.md (seconds per (instance-)step).
const JAX: [(&str, f64); 3] = [
    ("train_1000", 54e-6),
    ("vmap8.train_1000", 56e-6),
    ("vmap64.train_1000", 49e-6),
];
/// The machine's f32 peak (AVX-512 FMA), one core and two.
const PEAK_1: f64 = 174e9;
const PEAK_2: f64 = 340e9;

fn pool() -> Vec<ImageBatch> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    (0..POOL)
        .map(|_| ImageBatch {
            image: DMatrix::from_fn(BATCH, 64, |_, _| rng.gen::<f32>()),
            label: (0..BATCH).map(|_| rng.gen_range(0..10)).collect(),
            height: 8,
            width: 8,
            channels: 1,
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

/// 1000 Adam steps of one lane group from `p0`; group `g` picks its batches.
fn train_group<S: Real>(
    family: &ImageMlpFamily,
    cfg: &ImageMlpFamilyCfg<S>,
    p0: &Mlp1<S>,
    g: usize,
    pool: &[ImageBatch],
) {
    let opt = Adam::new(1e-3);
    let mut state = opt.init(p0.clone(), None);
    for t in 0..STEPS {
        let batch = &pool[(t + 31 * g * S::LANES) % POOL];
        let (l, grad) = family.value_and_grad(
            opt.get_params(&state),
            cfg,
            S::Key::from_lane_keys(&[Key::new(0)]),
            batch,
        );
        opt.update(&mut state, &grad, l);
    }
    keep(state);
}

/// Lane groups of `S` packing `inits` in order, with the packed configuration.
fn pack<S: Real>(
    family: &ImageMlpFamily,
    cfg: &ImageMlpFamilyCfg<f32>,
    inits: &[Mlp1<f32>],
) -> (ImageMlpFamilyCfg<S>, Vec<Mlp1<S>>) {
    let groups = inits
        .chunks(S::LANES)
        .map(|c| family.pack_params::<S>(&c.iter().collect::<Vec<_>>()))
        .collect();
    (family.pack_cfg::<S>(&[cfg]), groups)
}

fn main() {
    let pool = pool();
    let task = ImageMlpTask::<1>::new(no_data(), 64, vec![32]).expect("valid task");
    let family = ImageMlpFamily::new(no_data(), 64, vec![32], (1.0, 1.0)).expect("valid family");
    let cfg = family.cfg(32, 1.0);
    let single: Mlp1<f32> = task.init(Key::new(0));
    let inits: Vec<Mlp1<f32>> = (0..64)
        .map(|i| family.init(&cfg, Key::new(1).fold_in(i)))
        .collect();
    let (cfg8, groups8) = pack::<Lanes<8>>(&family, &cfg, &inits[..8]);
    let (_, groups64_w8) = pack::<Lanes<8>>(&family, &cfg, &inits);
    let (cfg16, groups64) = pack::<Lanes<16>>(&family, &cfg, &inits);

    // Lanes compute what the instances compute alone before their speed is compared.
    let (l8, g8) = family.value_and_grad(
        &groups8[0],
        &cfg8,
        LaneKeys::from_lane_keys(&[Key::new(0)]),
        &pool[0],
    );
    for (lane, p) in inits[..8].iter().enumerate() {
        let (l, g) = task.value_and_grad(p, Key::new(0), &pool[0]);
        let gl = family.unpack_params(&g8, lane);
        let err = g
            .flatten()
            .iter()
            .zip(gl.flatten())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            (f64::from(l) - l8.lane(lane)).abs() < 1e-5 && err < 1e-5,
            "lane {lane}: loss {l} vs {}, gradient error {err}",
            l8.lane(lane)
        );
    }

    println!(
        "image MLP 64->32->10, batch {BATCH}, Adam, {STEPS} steps per call; {} threads; \
         {FLOP_PER_STEP} FLOP per step",
        rayon::current_num_threads()
    );
    let mut cases = vec![
        Case::new("train_1000", || {
            let opt = Adam::new(1e-3);
            let mut state = opt.init(single.clone(), None);
            for t in 0..STEPS {
                let batch = &pool[t % POOL];
                let (l, g) = task.value_and_grad(opt.get_params(&state), Key::new(0), batch);
                opt.update(&mut state, &g, l);
            }
            keep(state);
        })
        .per(STEPS as f64),
        Case::new("vmap8.train_1000", || {
            train_group(&family, &cfg8, &groups8[0], 0, &pool);
        })
        .per((8 * STEPS) as f64),
        Case::new("vmap64.train_1000", || {
            groups64.par_iter().enumerate().for_each(|(g, p0)| {
                train_group(&family, &cfg16, p0, g, &pool);
            });
        })
        .per((64 * STEPS) as f64),
        Case::new("vmap64_w8.train_1000", || {
            groups64_w8.par_iter().enumerate().for_each(|(g, p0)| {
                train_group(&family, &cfg8, p0, g, &pool);
            });
        })
        .per((64 * STEPS) as f64),
        Case::new("serial64.train_1000", || {
            inits.par_iter().enumerate().for_each(|(i, p0)| {
                train_group(&family, &cfg, p0, i, &pool);
            });
        })
        .per((64 * STEPS) as f64),
    ];
    // Few rounds: a 64-instance call trains 64,000 instance-steps (seconds each).
    let s = common::run(&mut cases, 3, Duration::from_millis(200));

    println!("per (instance-)step; JAX figures from bench-anchors (same machine type):");
    for (id, jax) in JAX {
        let ours = median(&s, id);
        println!(
            "ratio {id}: JAX {:.1} us / lopt {:.2} us = {:.2}x",
            jax * 1e6,
            ours * 1e6,
            jax / ours
        );
    }
    for sm in &s {
        let gflops = FLOP_PER_STEP / sm.median / 1e9;
        let peak = if sm.id == "train_1000" || sm.id == "vmap8.train_1000" {
            PEAK_1
        } else {
            PEAK_2
        };
        println!(
            "flops {}: {:.1} GFLOP/s = {:.1}% of the machine's {:.0} GFLOP/s ({:.1}% of {:.0} on the cores it uses)",
            sm.id,
            gflops,
            100.0 * gflops * 1e9 / PEAK_2,
            PEAK_2 / 1e9,
            100.0 * gflops * 1e9 / peak,
            peak / 1e9,
        );
    }
}
