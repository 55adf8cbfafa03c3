//! One update of each learned optimizer, on the image MLP's 2,410 parameters
//! (`ImageMLP_Digits8_Relu32`'s tree: w1 [64, 32], b1 [32], w2 [32, 10], b2 [10]) and on a
//! 1,001,000-parameter tree (b [1000], w [1000, 1000]): cases `update.<name>.<size>`
//! (`2410`, `1m`), in `f32`, each θ from the optimizer's `init` in the JAX library's
//! default configuration (VeLO: the released configuration, `Velo::released()`), the
//! gradient `1e-3·params`, 1000 planned steps; the update of `opt_fn(θ)`, θ fixed as in
//! the JAX script (VeLO then keeps its LSTM gates' half from the initial state:
//! `LearnedOptimizer::update_fixed`). `scripts/jax/bench_lopt_update.py` runs the
//! JAX library's jitted update of the same configurations and trees (`--with-lopt`
//! alternates the two and prints ratios).
//!
//! After the lines, the fraction of one core's FMA peak each case reaches, with the peak
//! measured here (an FMA loop on independent accumulators) and a FLOP model that counts
//! the multiply-adds of the networks only: per element the per-parameter MLP as lopt
//! computes it (inputs that are constant over a tensor, such as the time features and
//! `RnnMlpLOpt`'s per-tensor inputs, are folded into a bias; `RnnMlpLOpt`'s 16 message
//! outputs are taken once per tensor from the last hidden layer's sum), per tensor the
//! LSTM (and `RnnMlpLOpt`'s message layer) and, for VeLO, the mixing layers, the
//! controls and the mixing of the MLP bank.
//!
//! `cargo bench --bench lopt_update [-- <substring>...]`

mod common;

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use common::{run, select, Case};
use lopt::learned_optimizers::{
    AdafacMlpLOpt, LearnableSgdm, LearnedOptimizer, MlpLOpt, NnAdam, RnnMlpLOpt, Velo,
};
use lopt::prelude::*;
use lopt::tasks::image_mlp::ImageMLP_Digits8_Relu32;

/// The 1M-parameter tree.
#[derive(Params, Clone, Debug)]
struct Big<S: Real> {
    b: DVector<S>,
    w: DMatrix<S>,
}

/// A case: one update of `opt_fn(θ)` (θ fixed, as the JAX script's `opt_fn(theta)`
/// closes over it) with `lopt`'s own θ on `params`, the state kept across calls.
fn case<'a, L: LearnedOptimizer, P: Params<Scalar = f32> + Rebind>(
    id: String,
    lopt: &'a L,
    params: &P,
) -> Case<'a>
where
    L::Theta<f32>: 'a,
{
    // The optimizer borrows θ for the whole run.
    let theta: &'a L::Theta<f32> = Box::leak(Box::new(lopt.init(Key::new(0))));
    let opt = lopt.opt_fn(theta);
    let grad = params.map(|x| 1e-3 * x);
    let state = RefCell::new(opt.init(params.clone(), Some(1000)));
    Case::new(id, move || {
        let mut s = state.borrow_mut();
        opt.update(&mut s, black_box(&grad), black_box(1.5));
    })
}

/// Multiply-add FLOP of one update on leaves of `sizes` (see the module docs).
fn flop_model(name: &str, sizes: &[usize]) -> f64 {
    let n: usize = sizes.iter().sum();
    let k = sizes.len() as f64;
    let mlp = |w: &[usize]| 2.0 * w.windows(2).map(|p| p[0] * p[1]).sum::<usize>() as f64;
    let lstm = |inp: usize, h: usize| 2.0 * ((inp + h) * 4 * h) as f64;
    match name {
        "mlp_lopt" => n as f64 * mlp(&[8, 32, 32, 2]),
        // 28 features per element (the 11 time features folded).
        "adafac_mlp_lopt" => n as f64 * mlp(&[28, 4, 4, 2]),
        // 23 features per element (5 decays); the message layer once per tensor.
        "rnn_mlp_lopt" => {
            n as f64 * mlp(&[23, 32, 32, 2]) + k * (lstm(18 + 16, 64) + mlp(&[32, 16]))
        }
        "nn_adam" => k * lstm(19, 32),
        "velo" => {
            let (h, pi, f) = (512, 256, 30);
            let bank = 39 * 4 + 4 + 4 * 4 + 4 + 4 * 3 + 3;
            n as f64 * mlp(&[39, 4, 4, 3])
                + k * (lstm(h, h)
                    + 2.0 * (2 * f * h + h * pi + h) as f64
                    + 2.0 * (pi * bank) as f64)
        }
        _ => 0.0,
    }
}

fn main() -> lopt::Result<()> {
    let small = ImageMLP_Digits8_Relu32()?.init::<f32>(Key::new(0));
    let mut big = Big {
        b: DVector::<f32>::zeros(1000),
        w: DMatrix::<f32>::zeros(1000, 1000),
    };
    Key::new(1).fill_normal(big.w.as_mut_slice());
    Key::new(2).fill_normal(big.b.as_mut_slice());
    big = big.map(|x| 0.1 * x);
    let sizes = |p: &dyn Fn(usize) -> usize, k: usize| (0..k).map(p).collect::<Vec<_>>();
    let small_sizes = sizes(&|i| small.leaf(i).len(), small.num_leaves());
    let big_sizes = sizes(&|i| big.leaf(i).len(), big.num_leaves());

    let mlp = MlpLOpt::default();
    let adafac = AdafacMlpLOpt::default();
    let rnn = RnnMlpLOpt::default();
    let nn_adam = NnAdam::default();
    let sgdm = LearnableSgdm::default();
    let velo = Velo::released();
    let mut cases = Vec::new();
    macro_rules! both {
        ($name:literal, $lopt:expr) => {
            cases.push(case(format!("update.{}.2410", $name), $lopt, &small));
            cases.push(case(format!("update.{}.1m", $name), $lopt, &big));
        };
    }
    both!("mlp_lopt", &mlp);
    both!("adafac_mlp_lopt", &adafac);
    both!("rnn_mlp_lopt", &rnn);
    both!("nn_adam", &nn_adam);
    both!("learnable_sgdm", &sgdm);
    both!("velo", &velo);
    select(&mut cases);
    let s = run(&mut cases, 9, Duration::from_millis(100));
    let peak = common::measured_peak();
    match peak {
        Some(p) => println!("one core's FMA peak (measured): {:.1} GFLOP/s f32", p / 1e9),
        None => println!("FMA peak: not measured (no AVX2+FMA)"),
    }
    for x in &s {
        let mut parts = x.id.split('.');
        let (name, size) = (parts.nth(1).unwrap_or(""), parts.next().unwrap_or(""));
        let flop = flop_model(
            name,
            if size == "1m" {
                &big_sizes
            } else {
                &small_sizes
            },
        );
        if flop > 0.0 {
            let gflops = flop / x.median / 1e9;
            let frac = peak.map_or(String::new(), |p| {
                format!(
                    ", {:.1}% of one core's FMA peak",
                    100.0 * flop / x.median / p
                )
            });
            println!(
                "  {}: {:.2} MFLOP (model), {gflops:.2} GFLOP/s{frac}",
                x.id,
                flop / 1e6
            );
        }
    }
    Ok(())
}
