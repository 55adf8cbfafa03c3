//! `cargo bench --bench meta`: meta-training throughput. One PES estimate of `MlpLOpt`
//! on the seed's quadratic family (dim 10): 64 tasks, truncations of 10 steps, both
//! antithetic sides (1,280 inner steps of a learned optimizer), with tasks
//!
//! - `meta.pes.serial`: one per `f32` group (groups on Rayon),
//! - `meta.pes.lanes8` / `meta.pes.lanes16`: eight or sixteen to a SIMD lane group, each
//!   lane with its own θ ± ε.
//!
//! Times are per inner task-step (an estimate's time / 1,280). The worker state carries
//! over between calls, as in meta-training (runs of 50–200 steps restart as they end).

mod common;

use std::time::Duration;

use common::{keep, median, Case};
use lopt::learned_optimizers::{LearnedOptimizer, MlpLOpt};
use lopt::outer_trainers::{
    GradientEstimator, LOptTruncatedStep, LogUniformLengthSchedule, TruncatedPes,
};
use lopt::prelude::*;
use lopt::tasks::quadratics::FixedDimQuadraticFamily;

const TASKS: usize = 64;
const TRUNC: usize = 10;

fn main() -> lopt::Result<()> {
    let family = FixedDimQuadraticFamily { dim: 10 };
    let lopt = MlpLOpt::default();
    let theta = lopt.init(Key::new(0));
    let pes = || -> lopt::Result<_> {
        let schedule = LogUniformLengthSchedule {
            min_length: 50,
            max_length: 200,
        };
        TruncatedPes::new(
            LOptTruncatedStep::new(&family, &lopt, schedule, TASKS)?,
            TRUNC,
            0.01,
        )
    };
    let (serial, lanes8, lanes16) = (
        pes()?,
        pes()?.batched::<Lanes<8>>(),
        pes()?.batched::<Lanes<16>>(),
    );
    let (mut s1, mut s8, mut s16) = (
        serial.init_worker_state(&theta, Key::new(1), 0)?,
        lanes8.init_worker_state(&theta, Key::new(1), 0)?,
        lanes16.init_worker_state(&theta, Key::new(1), 0)?,
    );
    // The three give the same estimate (checked before timing).
    let k = Key::new(2);
    let a = serial
        .compute_gradient_estimate(&theta, &mut s1, k, 0)?
        .grad
        .flatten();
    let b = lanes8
        .compute_gradient_estimate(&theta, &mut s8, k, 0)?
        .grad
        .flatten();
    let c = lanes16
        .compute_gradient_estimate(&theta, &mut s16, k, 0)?
        .grad
        .flatten();
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (x, (y, z)) in a.iter().zip(b.iter().zip(&c)) {
        assert!((x - y).abs() <= 1e-4 * scale && (x - z).abs() <= 1e-4 * scale);
    }

    let units = (2 * TASKS * TRUNC) as f64;
    let keys = Key::new(3).split_n(1 << 16);
    let (mut i1, mut i8, mut i16) = (0usize, 0usize, 0usize);
    let mut cases = vec![
        Case::new("meta.pes.serial", || {
            i1 += 1;
            keep(
                serial
                    .compute_gradient_estimate(&theta, &mut s1, keys[i1 % keys.len()], 0)
                    .unwrap(),
            );
        })
        .per(units),
        Case::new("meta.pes.lanes8", || {
            i8 += 1;
            keep(
                lanes8
                    .compute_gradient_estimate(&theta, &mut s8, keys[i8 % keys.len()], 0)
                    .unwrap(),
            );
        })
        .per(units),
        Case::new("meta.pes.lanes16", || {
            i16 += 1;
            keep(
                lanes16
                    .compute_gradient_estimate(&theta, &mut s16, keys[i16 % keys.len()], 0)
                    .unwrap(),
            );
        })
        .per(units),
    ];
    let s = common::run(&mut cases, 9, Duration::from_millis(100));
    let serial = median(&s, "meta.pes.serial");
    println!(
        "per inner task-step (MlpLOpt on a 10-parameter quadratic): serial {:.2} us",
        serial * 1e6
    );
    for id in ["meta.pes.lanes8", "meta.pes.lanes16"] {
        println!(
            "ratio {id}: {:.2}x faster than serial",
            serial / median(&s, id)
        );
    }
    Ok(())
}
