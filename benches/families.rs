//! `cargo bench --bench families`: batched Adam training of the seed's quadratic task
//! family, the same computations as scripts/jax/bench_quadratic.py
//! (targets ~ N(0, 1), params ~ N(0, 1), loss sum((target − params)²), Adam with the JAX
//! library's defaults, lr 0.01).
//!
//! - `seed.batched`: 32 tasks × dim 10 × 4 Adam steps, initialised from keys inside, one
//!   `vmap` call at 16 lanes (the seed's `jax.jit(jax.vmap(train_task))(cfgs, keys)`).
//! - `seed.serial`: the same 32 tasks one after another on the calling thread in plain
//!   `f32` (what `vmap` at `Width::Serial` computes for each instance, without spreading
//!   them over threads).
//! - `scaled.<N>x<D>x100.loop`: N tasks × dim D × 100 steps from given targets and
//!   parameters, packed into lane groups once outside the timed region; timed: Adam
//!   initialisation, 100 steps of loss + gradient + update, and the final loss, over all
//!   lane groups spread on Rayon (the anchor's `jit(vmap(train))(targets, params0)`).
//!
//! - `ref.*`: where the time goes. `ref.seed.vmap_overhead` is `vmap` with a function
//!   that does nothing (grouping, packing, keys). The `ref.1024x256x100.*` cases train
//!   like `scaled.1024x256x100.loop` (whose `sum(square(..))` the macro already lowers to
//!   one `norm_squared`) with a hand-written one-pass gradient, with the
//!   gradient and Adam fused into one pass (the ceiling of this Adam formula), and the
//!   same with the bias corrections as multiplications by reciprocals (one division and
//!   one square root per element instead of three and one).
//!
//! Each case is also printed against the machine: FLOPs use the anchor's model of 20
//! FLOP per parameter per step (loss 3, gradient 2, Adam 15, counting a division or a
//! square root as one), and bytes the optimizer state that one step must read and write
//! per parameter if it streamed from memory (read p, m, v, target; write p, m, v: 28 B).
//! Neither bounds these cases: Adam's divisions and square root (the divider is one unit,
//! far slower than the FMA pipes) and the passes of the generated gradient over L1/L2 do.
//!
//! Arguments: words filter the cases by id (`-- seed`); `--on-cpu` instead times every
//! case on one Rayon thread by the process's CPU time, steadier than wall time on a
//! shared machine (a case whose lane groups spread evenly takes about half on two cores).

mod common;

use std::time::Duration;

use common::{keep, process_cpu_seconds, Case};
use lopt::prelude::*;
use lopt::vmap::{vmap, FamilyLanes, VmapFn, Width};
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

// The seed's quadratic family, from the task library.
use lopt::tasks::quadratics::FixedDimQuadraticFamily;

/// The seed's `train_task(cfg, key)` (examples/quadratic_family.rs).
struct TrainTask;

impl VmapFn<FixedDimQuadraticFamily> for TrainTask {
    fn call<S: Real>(&self, family: &FixedDimQuadraticFamily, cfg: &DVector<S>, keys: S::Key) -> S {
        let (key1, key) = keys.split();
        let mut params = family.init_lanes(cfg, key1);
        let opt = Adam::default();
        let mut opt_state = opt.init(params.clone(), None);
        for _ in 0..4 {
            params = opt.get_params(&opt_state).clone();
            let (loss, grad) = family.value_and_grad(&params, cfg, key, &());
            opt.update(&mut opt_state, &grad, loss);
        }
        family.loss(&params, cfg, key, &())
    }
}

/// Does nothing: what `vmap` itself costs (grouping, packing, keys).
struct Nothing;

impl VmapFn<FixedDimQuadraticFamily> for Nothing {
    fn call<S: Real>(&self, _: &FixedDimQuadraticFamily, cfg: &DVector<S>, _: S::Key) -> S {
        cfg[0]
    }
}

/// One lane group of the scaled case: targets and initial parameters, packed.
struct Group<const N: usize = 16> {
    target: DVector<Lanes<N>>,
    params0: DVector<Lanes<N>>,
}

/// Packs `n` tasks of dimension `dim` (targets and initial parameters drawn from keys,
/// as the anchor does) into lane groups of 16.
fn pack_scaled<const N: usize>(family: &FixedDimQuadraticFamily, n: usize) -> Vec<Group<N>> {
    let (k1, k2) = Key::new(1).split();
    let (tkeys, pkeys) = (k1.split_n(n), k2.split_n(n));
    let targets: Vec<DVector<f32>> = tkeys.iter().map(|&k| family.sample(k)).collect();
    let params: Vec<DVector<f32>> = pkeys
        .iter()
        .zip(&targets)
        .map(|(&k, t)| family.init(t, k))
        .collect();
    targets
        .chunks(N)
        .zip(params.chunks(N))
        .map(|(t, p)| Group {
            target: family.pack_cfg::<Lanes<N>>(&t.iter().collect::<Vec<_>>()),
            params0: family.pack_params::<Lanes<N>>(&p.iter().collect::<Vec<_>>()),
        })
        .collect()
}

/// `steps` Adam steps on every group (groups spread over Rayon) with the loss and
/// gradient `vg(params, target)`; the final loss of each.
fn train_scaled<const N: usize, VG>(groups: &[Group<N>], steps: usize, vg: VG) -> Vec<Lanes<N>>
where
    VG: Fn(&DVector<Lanes<N>>, &DVector<Lanes<N>>) -> (Lanes<N>, DVector<Lanes<N>>) + Sync,
{
    groups
        .par_iter()
        .map(|g| {
            let opt = Adam::default();
            let mut state = opt.init(g.params0.clone(), None);
            for _ in 0..steps {
                let (loss, grad) = vg(&state.params, &g.target);
                opt.update(&mut state, &grad, loss);
            }
            vg(&state.params, &g.target).0
        })
        .collect()
}

/// The quadratic's loss and gradient by hand: one pass, one allocation (the gradient).
fn hand_value_and_grad(p: &DVector<L>, t: &DVector<L>) -> (L, DVector<L>) {
    let mut loss = L::splat(0.0);
    let g = DVector::from_iterator(
        p.len(),
        p.iter().zip(t.iter()).map(|(&p, &t)| {
            let d = p - t;
            loss += d * d;
            d + d
        }),
    );
    (loss, g)
}

/// Gradient and Adam in one pass over the state, no allocation: the ceiling of this
/// Adam formula. With `reciprocal`, the bias corrections multiply by precomputed
/// reciprocals (one division and one square root per element instead of three and one).
fn train_fused(groups: &[Group], steps: usize, reciprocal: bool) -> Vec<L> {
    let adam = Adam::default();
    groups
        .par_iter()
        .map(|g| {
            let mut p = g.params0.clone();
            let mut m = DVector::<L>::zeros(p.len());
            let mut v = DVector::<L>::zeros(p.len());
            let c = |x: f64| L::from_f64(x);
            let (b1, omb1) = (c(adam.beta1), c(1.0 - adam.beta1));
            let (b2, omb2) = (c(adam.beta2), c(1.0 - adam.beta2));
            let (eps, eps_root, neg_lr) = (c(adam.epsilon), c(adam.epsilon_root), c(-adam.lr));
            for t in 1..=steps {
                let bc1 = 1.0 - adam.beta1.powi(t as i32);
                let bc2 = 1.0 - adam.beta2.powi(t as i32);
                let (bc1, bc2, rc1, rc2) = (c(bc1), c(bc2), c(1.0 / bc1), c(1.0 / bc2));
                for (((p, m), v), &t) in p
                    .iter_mut()
                    .zip(m.iter_mut())
                    .zip(v.iter_mut())
                    .zip(&g.target)
                {
                    let d = *p - t;
                    let gr = d + d;
                    *m = omb1 * gr + b1 * *m;
                    *v = omb2 * (gr * gr) + b2 * *v;
                    let (m_hat, v_hat) = if reciprocal {
                        (*m * rc1, *v * rc2)
                    } else {
                        (*m / bc1, *v / bc2)
                    };
                    *p += neg_lr * (m_hat / ((v_hat + eps_root).sqrt() + eps));
                }
            }
            hand_value_and_grad(&p, &g.target).0
        })
        .collect()
}

/// Parameter-steps of a case and the JAX median of the same computation.
fn work(id: &str) -> Option<(f64, f64)> {
    if id.starts_with("seed.") {
        Some((32.0 * 10.0 * 4.0, JAX_SEED))
    } else if id.contains("1024x256x100") {
        Some((1024.0 * 256.0 * 100.0, JAX_SCALED_1024))
    } else if id.contains("16384x64x100") {
        Some((16384.0 * 64.0 * 100.0, JAX_SCALED_16384))
    } else {
        None
    }
}

fn report(id: &str, secs: f64, params_steps: f64, jax: f64, peak: f64) {
    let flops = FLOP_PER_PARAM_STEP * params_steps;
    let bytes = BYTES_PER_PARAM_STEP * params_steps;
    let gflops = flops / secs / 1e9;
    let gbs = bytes / secs / 1e9;
    println!(
        "  {id}: {:.2} us, {gflops:.2} GFLOP/s ({:.1}% of peak {:.0}), {gbs:.2} GB/s of state \
         traffic ({:.0}% of main memory's {:.0} GB/s; above 100% it stays in cache), \
         JAX {:.1} us: {:.2}x faster",
        secs * 1e6,
        100.0 * flops / secs / peak,
        peak / 1e9,
        100.0 * bytes / secs / MEM_BW,
        MEM_BW / 1e9,
        jax * 1e6,
        jax / secs,
    );
}

/// The `--on-cpu` mode: every case on one Rayon thread, timed by on-CPU time (median of
/// 7 samples of about 50 ms). On a busy shared machine this is the steadier figure; a
/// case whose lane groups spread evenly takes about half of it on two cores.
fn run_on_cpu(cases: &mut [Case<'_>]) -> Vec<(String, f64)> {
    if process_cpu_seconds().is_none() {
        println!("(--on-cpu needs Linux)");
        return Vec::new();
    }
    // Whole nanoseconds, as the sample arithmetic below counts them.
    let cpu = || (process_cpu_seconds().expect("checked above") * 1e9) as u64;
    let mut out = Vec::new();
    for c in cases.iter_mut() {
        (c.run)();
        let t = cpu();
        (c.run)();
        let one = (cpu() - t).max(1);
        let reps = (50_000_000 / one).max(1);
        let mut samples: Vec<f64> = (0..7)
            .map(|_| {
                let t = cpu();
                for _ in 0..reps {
                    (c.run)();
                }
                (cpu() - t) as f64 / reps as f64 / 1e9
            })
            .collect();
        samples.sort_by(|a, b| a.total_cmp(b));
        println!(
            "on-cpu {} one_thread_s={:.9} min_s={:.9} max_s={:.9}",
            c.id, samples[3], samples[0], samples[6]
        );
        out.push((c.id.clone(), samples[3]));
    }
    out
}

fn main() -> lopt::Result<()> {
    let on_cpu = std::env::args().any(|a| a == "--on-cpu");
    if on_cpu {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build_global()
            .expect("the global pool is not built yet");
    }
    let seed_family = FixedDimQuadraticFamily { dim: 10 };
    let key = Key::new(0);
    let keys = key.split_n(32);
    let cfgs: Vec<DVector<f32>> = keys.iter().map(|&k| seed_family.sample(k)).collect();

    // Batched and serial must agree before their speeds are compared.
    let batched = vmap(&seed_family, &TrainTask, &cfgs, &keys, Width::W16)?;
    let serial: Vec<f32> = cfgs
        .iter()
        .zip(&keys)
        .map(|(c, &k)| TrainTask.call::<f32>(&seed_family, c, k))
        .collect();
    for (b, s) in batched.iter().zip(&serial) {
        assert!((b - s).abs() <= 1e-5 * s.abs().max(1.0), "{b} vs {s}");
    }

    let fam256 = FixedDimQuadraticFamily { dim: 256 };
    let fam64 = FixedDimQuadraticFamily { dim: 64 };
    let g1024 = pack_scaled::<16>(&fam256, 1024);
    let g16384 = pack_scaled::<16>(&fam64, 16384);
    let key = lopt::lanes::LaneKeys::<16>::from_lane_keys(&[Key::new(0)]);
    let generated256 = |p: &DVector<L>, t: &DVector<L>| fam256.value_and_grad(p, t, key, &());
    let generated64 = |p: &DVector<L>, t: &DVector<L>| fam64.value_and_grad(p, t, key, &());

    // Every variant trains to the same losses.
    let want = train_scaled(&g1024[..2], 100, generated256);
    for got in [
        train_scaled(&g1024[..2], 100, hand_value_and_grad),
        train_fused(&g1024[..2], 100, false),
        train_fused(&g1024[..2], 100, true),
    ] {
        for (a, b) in got.iter().zip(&want) {
            for l in 0..16 {
                assert!((a.0[l] - b.0[l]).abs() <= 1e-4 * b.0[l].abs().max(1.0));
            }
        }
    }

    let mut cases = vec![
        Case::new("seed.batched", || {
            keep(vmap(&seed_family, &TrainTask, keep(&cfgs), &keys, Width::W16).unwrap());
        }),
        Case::new("seed.serial", || {
            let losses: Vec<f32> = keep(&cfgs)
                .iter()
                .zip(&keys)
                .map(|(c, &k)| TrainTask.call::<f32>(&seed_family, c, k))
                .collect();
            keep(losses);
        }),
        Case::new("ref.seed.vmap_overhead", || {
            keep(vmap(&seed_family, &Nothing, keep(&cfgs), &keys, Width::W16).unwrap());
        }),
        Case::new("ref.seed.keys", || {
            // The random draws of seed.batched alone: per lane group of 16, one split and
            // the 10 initial parameters.
            for g in keep(&keys).chunks(16) {
                let k = lopt::lanes::LaneKeys::<16>::from_lane_keys(g);
                let (k1, _) = k.split();
                keep(k1.normal_vec(10));
            }
        }),
        Case::new("scaled.1024x256x100.loop", || {
            keep(train_scaled(keep(&g1024), 100, generated256));
        }),
        Case::new("scaled.16384x64x100.loop", || {
            keep(train_scaled(keep(&g16384), 100, generated64));
        }),
        // References: where the time of scaled.1024x256x100.loop goes.
        Case::new("ref.1024x256x100.hand_gradient", || {
            keep(train_scaled(keep(&g1024), 100, hand_value_and_grad));
        }),
        Case::new("ref.1024x256x100.fused_gradient_adam", || {
            keep(train_fused(keep(&g1024), 100, false));
        }),
        Case::new("ref.1024x256x100.fused_reciprocal_adam", || {
            keep(train_fused(keep(&g1024), 100, true));
        }),
    ];
    // `cargo bench --bench families -- seed` runs the cases whose id contains `seed`.
    common::select(&mut cases);
    let (one, cores, how) = common::core_peak();
    let peak = one * cores;
    println!("machine: peak {:.0} GFLOP/s f32 ({how})", peak / 1e9);
    println!(
        "this build: {}",
        if cfg!(target_feature = "avx") {
            "AVX, 8-lane registers, FMA not used (no mul_add in the code)"
        } else {
            "x86-64 baseline, SSE2 4-lane registers (build with -C target-cpu=native for AVX)"
        }
    );
    println!(
        "model: {FLOP_PER_PARAM_STEP} FLOP and {BYTES_PER_PARAM_STEP} B per parameter-step \
         (the anchor's FLOP model)"
    );
    if on_cpu {
        let s = run_on_cpu(&mut cases);
        println!(
            "estimates: the scaled cases (many lane groups) at half the one-thread on-CPU \
             time for two cores; the seed cases (run on one thread) at the full time"
        );
        for (id, secs) in &s {
            if let Some((ps, jax)) = work(id) {
                let spread = if id.starts_with("seed.") { 1.0 } else { 2.0 };
                report(id, secs / spread, ps, jax, peak);
            }
        }
        return Ok(());
    }
    let s = common::run(&mut cases, 9, Duration::from_millis(60));

    for x in &s {
        if let Some((ps, jax)) = work(&x.id) {
            report(&x.id, x.median, ps, jax, peak);
        }
    }
    Ok(())
}
