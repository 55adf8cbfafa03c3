//! `cargo bench --bench image_mlp`: the computations of
//! `scripts/jax/bench_image_mlp.py`, side by side with its JAX figures.
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

use common::{keep, median, process_cpu_seconds, Case};
use lopt::datasets::{Datasets, ExtraInfo, ImageBatch};
use lopt::kernels::gemm::{gemm, MatRef};
use lopt::lanes::LaneKeys;
use lopt::lanes::Lanes;
use lopt::prelude::*;
use lopt::tasks::image_mlp::{ImageMlpFamily, ImageMlpFamilyCfg, ImageMlpTask, Mlp1};
use lopt::vmap::FamilyLanes;
use rayon::prelude::*;

const BATCH: usize = 128;
const POOL: usize = 256;
const STEPS: usize = 1000;
const FLOP_PER_STEP: f64 = (2 * BATCH * (64 * 32 + 32 * 10) * 2
    + 2 * BATCH * 32 * 10
    + 20 * (64 * 32 + 32 + 32 * 10 + 10)) as f64;
/// JAX medians from scripts/jax/README.md (seconds per (instance-)step).
const JAX: [(&str, f64); 3] = [
    ("train_1000", 54e-6),
    ("vmap8.train_1000", 56e-6),
    ("vmap64.train_1000", 49e-6),
];
/// The machine's f32 peak (AVX2 FMA, Zen 3), one core and two (shared hypervisor).
const PEAK_1: f64 = 97e9;
const PEAK_2: f64 = 157e9;
/// The five products of one step, `(m, k, n)` and whether `a`/`b` are read transposed:
/// `X·W1`, `H·W2`, `dW2 = Hᵀ·G2`, `dH = G2·W2ᵀ`, `dW1 = Xᵀ·G1`.
const STEP_PRODUCTS: [(usize, usize, usize, bool, bool); 5] = [
    (BATCH, 64, 32, false, false),
    (BATCH, 32, 10, false, false),
    (32, BATCH, 10, true, false),
    (BATCH, 10, 32, false, true),
    (64, BATCH, 32, true, false),
];

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

/// Operands and outputs of [`STEP_PRODUCTS`] in `S`.
type Products<S> = Vec<(Vec<S>, Vec<S>, Vec<S>)>;

fn step_operands<S: Real>() -> Products<S> {
    STEP_PRODUCTS
        .iter()
        .map(|&(m, k, n, _, _)| {
            let f = |x: usize| S::from_lanes(|l| ((x * 7 + l * 13) % 17) as f64 / 17.0 - 0.5);
            (
                (0..m * k).map(f).collect(),
                (0..k * n).map(f).collect(),
                vec![S::zero(); m * n],
            )
        })
        .collect()
}

/// `rows x cols` column-major in `d`, or its transpose when `t` (`d` holding the
/// `cols x rows` matrix).
fn view<S: Real>(d: &[S], rows: usize, cols: usize, t: bool) -> MatRef<'_, S> {
    if t {
        MatRef::col_major(d, cols, rows).map(MatRef::t)
    } else {
        MatRef::col_major(d, rows, cols)
    }
    .expect("sizes match")
}

/// The five products of one training step of one lane group (what `value_and_grad`
/// multiplies, without the rest of the step).
fn step_products<S: Real>(ops: &mut Products<S>, only: Option<usize>) {
    for (q, (&(m, k, n, ta, tb), (a, b, c))) in STEP_PRODUCTS.iter().zip(ops.iter_mut()).enumerate()
    {
        if only.is_some_and(|o| o != q) {
            continue;
        }
        gemm(view(a, m, k, ta), view(b, k, n, tb), c, false).expect("shapes agree");
    }
    keep(&ops[0].2[0]);
}

fn main() {
    let pool = common::random_image_batches(0, POOL, BATCH);
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
        Case::new("ref.products16", {
            let mut ops = step_operands::<Lanes<16>>();
            move || step_products(&mut ops, None)
        })
        .per(16.0),
        Case::new("ref.products8", {
            let mut ops = step_operands::<Lanes<8>>();
            move || step_products(&mut ops, None)
        })
        .per(8.0),
        Case::new("ref.products_f32", {
            let mut ops = step_operands::<f32>();
            move || step_products(&mut ops, None)
        }),
    ];
    // Each product of the step alone (16 lanes), for the per-product rates.
    for q in 0..STEP_PRODUCTS.len() {
        cases.push(
            Case::new(format!("ref.product16.{q}"), {
                let mut ops = step_operands::<Lanes<16>>();
                move || step_products(&mut ops, Some(q))
            })
            .per(16.0),
        );
    }
    // `cargo bench --bench image_mlp -- <substring>...` runs only the matching cases.
    common::select(&mut cases);
    // Seven rounds, the fewest whose median we report (a 64-instance call trains 64,000
    // instance-steps, about 2 s). The `ref.*` cases alone are short: more rounds.
    let rounds = if cases.iter().all(|c| c.id.starts_with("ref.")) {
        15
    } else {
        7
    };
    let s = common::run(&mut cases, rounds, Duration::from_millis(200));
    // CPU time (all threads of the process) per unit: unlike wall time it does not count
    // the time other processes take the cores from the case, so it is the steadier
    // figure on a shared machine.
    let units = |id: &str| match id {
        "train_1000" => STEPS as f64,
        "vmap8.train_1000" => (8 * STEPS) as f64,
        id if id.contains("64") => (64 * STEPS) as f64,
        id if id.starts_with("ref.products8") => 8.0,
        id if id.starts_with("ref.products_f32") => 1.0,
        _ => 16.0,
    };
    let cpu: Vec<(String, f64)> = cases
        .iter_mut()
        .map(|c| {
            let cpu = || process_cpu_seconds().unwrap_or(0.0);
            let (t, c0) = (std::time::Instant::now(), cpu());
            let mut calls = 0;
            while calls == 0 || t.elapsed() < Duration::from_secs(1) {
                (c.run)();
                calls += 1;
            }
            let per = (cpu() - c0) / (calls as f64 * units(&c.id));
            println!("cpu {} {:.3} us per unit ({calls} calls)", c.id, per * 1e6);
            (c.id.clone(), per)
        })
        .collect();

    println!("per (instance-)step; JAX figures from scripts/jax/README.md (another machine):");
    for (id, jax) in JAX {
        if !s.iter().any(|sm| sm.id == id) {
            continue;
        }
        let ours = median(&s, id);
        println!(
            "ratio {id}: JAX {:.1} us / lopt {:.2} us = {:.2}x",
            jax * 1e6,
            ours * 1e6,
            jax / ours
        );
    }
    let product_flop: f64 = STEP_PRODUCTS
        .iter()
        .map(|&(m, k, n, _, _)| (2 * m * k * n) as f64)
        .sum();
    for sm in &s {
        let flop = if sm.id.starts_with("ref.products") {
            product_flop
        } else if let Some(q) = sm.id.strip_prefix("ref.product16.") {
            let (m, k, n, _, _) = STEP_PRODUCTS[q.parse::<usize>().expect("product index")];
            (2 * m * k * n) as f64
        } else {
            FLOP_PER_STEP
        };
        let gflops = flop / sm.median / 1e9;
        let peak = if !sm.id.contains("64") {
            PEAK_1
        } else {
            PEAK_2
        };
        println!(
            "flops {}: {:.1} GFLOP/s = {:.1}% of the machine's {:.0} GFLOP/s ({:.1}% of {:.0} on the cores it uses; best sample {:.1} GFLOP/s)",
            sm.id,
            gflops,
            100.0 * gflops * 1e9 / PEAK_2,
            PEAK_2 / 1e9,
            100.0 * gflops * 1e9 / peak,
            peak / 1e9,
            flop / sm.min / 1e9,
        );
        if let Some((_, per)) = cpu.iter().find(|(id, _)| *id == sm.id) {
            println!(
                "cpu-flops {}: {:.1} GFLOP/s per busy core = {:.1}% of {:.0}",
                sm.id,
                flop / per / 1e9,
                100.0 * flop / per / PEAK_1,
                PEAK_1 / 1e9
            );
        }
    }
}
