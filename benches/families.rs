//! `cargo bench --bench families`: batched Adam training of the seed's quadratic task
//! family, the same computations as /work/shared/bench-anchors/bench_quadratic.py
//! (targets ~ N(0, 1), params ~ N(0, 1), loss sum((target − params)²), Adam with the JAX
//! library's defaults, lr 0.01).
//!
//! - `seed.batched`: 32 tasks × dim 10 × 4 Adam steps, initialised from keys inside, one
//!   `vmap` call at 16 lanes (the seed's `jax.jit(jax.vmap(train_task))(cfgs, keys)`).
//! - `seed.serial`: the same 32 tasks one at a time in plain `f32` (`Width::Serial`).
//! - `scaled.<N>x<D>x100.loop`: N tasks × dim D × 100 steps from given targets and
//!   parameters, packed into lane groups once outside the timed region; timed: Adam
//!   initialisation, 100 steps of loss + gradient + update, and the final loss, over all
//!   lane groups spread on Rayon (the anchor's `jit(vmap(train))(targets, params0)`).
//!
//! Each case is also printed against the machine: FLOPs use the anchor's model of 20
//! FLOP per parameter per step (loss 3, gradient 2, Adam 15, counting a division or a
//! square root as one), and bytes the optimizer state that one step must read and write
//! per parameter if it streamed from memory (read p, m, v, target; write p, m, v: 28 B).

mod common;

use std::time::Duration;

use common::{keep, median, Case};
use lopt::batch::{vmap, FamilyLanes, Keys, VmapFn, Width};
use lopt::prelude::*;
use rayon::prelude::*;

/// The JAX anchor's medians (seconds) on this machine.
const JAX_SEED: f64 = 59e-6;
const JAX_SCALED_1024: f64 = 29e-3;
const JAX_SCALED_16384: f64 = 123e-3;

const FLOP_PER_PARAM_STEP: f64 = 20.0;
const BYTES_PER_PARAM_STEP: f64 = 28.0;
/// Main memory bandwidth of the machine (measured by the lead), bytes per second.
const MEM_BW: f64 = 28e9;

type L = Lanes<16>;

struct FixedDimQuadraticFamily {
    dim: usize,
}

#[task_family]
impl TaskFamily for FixedDimQuadraticFamily {
    type Cfg<S: Real> = DVector<S>;
    type Params<S: Real> = DVector<S>;
    type Batch = ();

    fn sample(&self, key: Key) -> DVector<f32> {
        DVector::from_vec(key.normal_vec(self.dim))
    }

    fn init(&self, _cfg: &DVector<f32>, key: Key) -> DVector<f32> {
        DVector::from_vec(key.normal_vec(self.dim))
    }

    fn loss<S: Real>(&self, params: &DVector<S>, cfg: &DVector<S>, _key: Key, _batch: &()) -> S {
        sum(square(cfg - params))
    }
}

/// The seed's `train_task(cfg, key)` (examples/quadratic_family.rs).
struct TrainTask;

impl VmapFn<FixedDimQuadraticFamily> for TrainTask {
    fn call<S: Real>(
        &self,
        family: &FixedDimQuadraticFamily,
        cfg: &DVector<S>,
        keys: &Keys<S>,
    ) -> S {
        let (key1, key) = keys.split();
        let mut params = family.init_lanes(cfg, &key1);
        let opt = Adam::default();
        let mut opt_state = opt.init(params.clone(), None);
        for _ in 0..4 {
            params = opt.get_params(&opt_state).clone();
            let (loss, grad) = family.value_and_grad(&params, cfg, key.lane(0), &());
            opt.update(&mut opt_state, &grad, loss);
        }
        family.loss(&params, cfg, key.lane(0), &())
    }
}

/// One lane group of the scaled case: targets and initial parameters, packed.
struct Group {
    target: DVector<L>,
    params0: DVector<L>,
}

/// Packs `n` tasks of dimension `dim` (targets and initial parameters drawn from keys,
/// as the anchor does) into lane groups of 16.
fn pack_scaled(family: &FixedDimQuadraticFamily, n: usize) -> Vec<Group> {
    let (k1, k2) = Key::new(1).split();
    let (tkeys, pkeys) = (k1.split_n(n), k2.split_n(n));
    let targets: Vec<DVector<f32>> = tkeys.iter().map(|&k| family.sample(k)).collect();
    let params: Vec<DVector<f32>> = pkeys
        .iter()
        .zip(&targets)
        .map(|(&k, t)| family.init(t, k))
        .collect();
    targets
        .chunks(16)
        .zip(params.chunks(16))
        .map(|(t, p)| Group {
            target: family.pack_cfg::<L>(&t.iter().collect::<Vec<_>>()),
            params0: family.pack_params::<L>(&p.iter().collect::<Vec<_>>()),
        })
        .collect()
}

/// `steps` Adam steps on every group (groups spread over Rayon); the final loss of each.
fn train_scaled(family: &FixedDimQuadraticFamily, groups: &[Group], steps: usize) -> Vec<L> {
    let key = Key::new(0);
    groups
        .par_iter()
        .map(|g| {
            let opt = Adam::default();
            let mut state = opt.init(g.params0.clone(), None);
            for _ in 0..steps {
                let (loss, grad) = family.value_and_grad(&state.params, &g.target, key, &());
                opt.update(&mut state, &grad, loss);
            }
            family.loss(&state.params, &g.target, key, &())
        })
        .collect()
}

/// Peak f32 FLOP/s of the cores Rayon uses: 2 FMA pipes × lanes × 2 FLOP × clock.
fn peak_flops() -> (f64, String) {
    let lanes = if std::arch::is_x86_feature_detected!("avx512f") {
        16.0
    } else if std::arch::is_x86_feature_detected!("avx2") {
        8.0
    } else {
        4.0
    };
    let ghz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("cpu MHz"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|mhz| mhz / 1e3)
        .unwrap_or(2.5);
    let cores = rayon::current_num_threads() as f64;
    let peak = cores * 2.0 * lanes * 2.0 * ghz * 1e9;
    (
        peak,
        format!("{cores} cores x 2 FMA x {lanes} f32 lanes x 2 FLOP x {ghz:.2} GHz"),
    )
}

fn report(id: &str, secs: f64, params_steps: f64, jax: Option<f64>, peak: f64) {
    let flops = FLOP_PER_PARAM_STEP * params_steps;
    let bytes = BYTES_PER_PARAM_STEP * params_steps;
    let gflops = flops / secs / 1e9;
    let gbs = bytes / secs / 1e9;
    let vs = jax
        .map(|j| format!(" vs_jax={:.1}x", j / secs))
        .unwrap_or_default();
    println!(
        "  {id}: {:.2} us, {gflops:.2} GFLOP/s ({:.1}% of peak {:.0}), {gbs:.2} GB/s of state \
         traffic ({:.1}% of {:.0} GB/s){vs}",
        secs * 1e6,
        100.0 * flops / secs / peak,
        peak / 1e9,
        100.0 * bytes / secs / MEM_BW,
        MEM_BW / 1e9,
    );
}

fn main() -> lopt::Result<()> {
    let seed_family = FixedDimQuadraticFamily { dim: 10 };
    let key = Key::new(0);
    let keys = key.split_n(32);
    let cfgs: Vec<DVector<f32>> = keys.iter().map(|&k| seed_family.sample(k)).collect();

    // Batched and serial must agree before their speeds are compared.
    let batched = vmap(&seed_family, &TrainTask, &cfgs, &keys, Width::W16)?;
    let serial = vmap(&seed_family, &TrainTask, &cfgs, &keys, Width::Serial)?;
    for (b, s) in batched.iter().zip(&serial) {
        assert!((b - s).abs() <= 1e-5 * s.abs().max(1.0), "{b} vs {s}");
    }

    let fam256 = FixedDimQuadraticFamily { dim: 256 };
    let fam64 = FixedDimQuadraticFamily { dim: 64 };
    let g1024 = pack_scaled(&fam256, 1024);
    let g16384 = pack_scaled(&fam64, 16384);

    let mut cases = vec![
        Case::new("seed.batched", || {
            keep(vmap(&seed_family, &TrainTask, keep(&cfgs), &keys, Width::W16).unwrap());
        }),
        Case::new("seed.serial", || {
            keep(vmap(&seed_family, &TrainTask, keep(&cfgs), &keys, Width::Serial).unwrap());
        }),
        Case::new("scaled.1024x256x100.loop", || {
            keep(train_scaled(&fam256, keep(&g1024), 100));
        }),
        Case::new("scaled.16384x64x100.loop", || {
            keep(train_scaled(&fam64, keep(&g16384), 100));
        }),
    ];
    let s = common::run(&mut cases, 9, Duration::from_millis(60));

    let (peak, how) = peak_flops();
    println!("machine: peak {:.0} GFLOP/s f32 ({how})", peak / 1e9);
    println!(
        "model: {FLOP_PER_PARAM_STEP} FLOP and {BYTES_PER_PARAM_STEP} B per parameter-step \
         (the anchor's FLOP model)"
    );
    let seed_ps = 32.0 * 10.0 * 4.0;
    report(
        "seed.batched",
        median(&s, "seed.batched"),
        seed_ps,
        Some(JAX_SEED),
        peak,
    );
    report(
        "seed.serial",
        median(&s, "seed.serial"),
        seed_ps,
        Some(JAX_SEED),
        peak,
    );
    report(
        "scaled.1024x256x100.loop",
        median(&s, "scaled.1024x256x100.loop"),
        1024.0 * 256.0 * 100.0,
        Some(JAX_SCALED_1024),
        peak,
    );
    report(
        "scaled.16384x64x100.loop",
        median(&s, "scaled.16384x64x100.loop"),
        16384.0 * 64.0 * 100.0,
        Some(JAX_SCALED_16384),
        peak,
    );
    Ok(())
}
