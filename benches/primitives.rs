//! `cargo bench --bench primitives`: the model-building primitives at the sizes of the JAX
//! library's tasks, each with the fraction of this core's measured f32 FMA peak it runs at.
//!
//! - `conv.<shape>.value`, `.grad`, `.hand`: one convolution layer of
//!   `Conv_Cifar10_32x64x64` (3×3, SAME, bias, ReLU; strides 2, 1, 1; 32, 64, 64 channels)
//!   on a batch of 128 32×32×3 (`c10.*`) or 28×28×1 (`fm.*`) images. The loss is
//!   `sum(relu(im2col(x)·w + b))`; `value` is the loss, `grad` its generated
//!   `value_and_grad` (with respect to `w`, `b`, and the input `x` for the second and
//!   third layers, whose input is a previous layer's output; `#[task]` makes the layer
//!   one rule, `ad::conv::im2col_mul_add_relu`), `hand` the same
//!   forward and backward written by hand with the same im2col, col2im and GEMM, no tape.
//! - `attn.b64t32h4d32.grad`: `causal_self_attention` of the JAX library's transformer
//!   (batch 64, T 32, 4 heads × 32) under `⟨attention(qkv), r⟩`, gradient in `qkv`; the
//!   rule runs its (sequence, head) pairs in fixed chunks on the thread pool.
//! - `embed.v256d128n2048.grad`: `embed` of 64×32 ids from a 256×128 table under
//!   `⟨embed(E, ids), r⟩`, gradient in `E` (a scatter-add); `#[task]` makes the loss one
//!   rule (`embed_dot`: the value `⟨E, scatter_add(r)⟩`, the looked-up rows never
//!   stored), as XLA fuses the gather into `jnp.vdot`.
//! - `embed.v256d128n2048.grad_apart`: the same with the lookup bound by `let`, so the
//!   lookup is materialised and its cotangent copied (the composition `embed` then `dot`).
//! - `lstm.b128t32e64h128.grad_steps`: an LSTM layer written step by step (as in
//!   `tests/recurrent.rs`: gates `[i f g o]` as column slices of `x_t Wx + h Wh + b`,
//!   `c = σ(f)∘c + σ(i)∘tanh(g)`, `h = σ(o)∘tanh(c)`) over 32 steps of a batch of 128, 64
//!   inputs, 128 hidden (the cell of the library's `RNNLM_lm1bbytes_Patch32_LSTM128_Embed64`),
//!   under `Σ_t ⟨h_t, r_t⟩`, gradient in `Wx`, `Wh`, `b` (the inputs are data); its products
//!   (above 2^20 multiply-adds) are split into fixed chunks of columns on the thread pool.
//!   `lstm.b128t32e64h128.grad`: the same layer (haiku's gate order `i, g, f, o` and forget
//!   bias `+1`, the same products) as one `lstm_projected(x, Wx, b, Wh, h0, c0)` rule (the
//!   input projection inside it, step by step), whose two chunks of 64 sequences run on the
//!   thread pool; `.grad_xw` the same as `x Wx + b` for all steps and one `lstm_sequence`
//!   rule. The JAX script's `lstm.b128t32e64h128.grad` is the comparison for all three.
//! - `part.rnn.readout_{fwd,dw,dx}`: the read-out products of the LSTM LM on one
//!   data-parallel chunk (2048 × 128 × 256), alone.
//!
//! - `part.lanes8.conv_{fwd,dw,dx}_40x288x32` (and `part.lanes16.*`): products of
//!   `Lanes<8>` (`Lanes<16>`) packet matrices, one block of 40 patch rows of the second
//!   layer of the vmapped conv family (`conv_family` in `benches/tasks.rs`): `P·W`,
//!   `dWᵀ += Gᵀ·P`, `G·Wᵀ` (FLOP counted over every lane).
//!
//! These three use both cores: compare them with JAX (which also does) in wall time on a
//! quiet machine, or in CPU time with `RAYON_NUM_THREADS=1 LOPT_BENCH_CLOCK=cpu` for one
//! core's efficiency (the fractions of `peak.fma` printed are then per core).
//!
//! FLOP counts are the matrix products' (`2·m·k·n` each; a layer's `grad` does the
//! forward product, `dW = Pᵀ·G` and, with the input differentiated, `dP = G·Wᵀ`); the
//! attention counts its four (forward) and six (gradient) per-head products over the full
//! `T × T` (the masked half included, as the GEMMs do it); the LSTM per step `x Wx` and
//! `h Wh` forward, `dWx`, `dWh` and `dh = G Whᵀ` backward (`2·B·4H·(2E + 3H)`). The peak is `peak.fma`, an FMA loop
//! (12 independent accumulators of the widest FMA vectors: AVX-512 where the CPU has it) timed as one of the interleaved cases, so that it
//! sees the machine's load as they do; everything here runs on one thread. The
//! `part.c103.*` cases time the pieces of the largest layer's gradient alone (im2col,
//! col2im, the forward product, `dW = Pᵀ·G`, `dP = G·Wᵀ`), and the fused rule's forward
//! and reverse (`fused_fwd`, `fused_vjp`: `ad::conv::im2col_mul`, blocks of patches,
//! on the thread pool). `LOPT_BENCH_CLOCK=cpu` times process CPU time instead of wall time
//! (with `RAYON_NUM_THREADS=1`, a case's single-core efficiency on a loaded machine).
//!
//! The JAX side: `scripts/jax/bench_primitives.py` (same ids, `jit(value_and_grad)`).

mod common;

use std::time::Duration;

use common::{keep, Case};
use lopt::ad::attention::AttentionGeometry;
use lopt::ad::conv::{im2col_mul, Conv2dGeometry, Padding};
use lopt::ad::norm::layer_norm_affine;
use lopt::kernels::gemm::{gemm, MatRef};
use lopt::ops::lstm_sequence;
use lopt::prelude::*;
use rand::{Rng, SeedableRng};

#[derive(Params, Clone, Debug)]
struct Layer<S: Real> {
    w: DMatrix<S>,
    b: DVector<S>,
}

#[derive(Params, Clone, Debug)]
struct HiddenLayer<S: Real> {
    x: DMatrix<S>,
    w: DMatrix<S>,
    b: DVector<S>,
}

/// The first layer: the images are data.
#[task]
fn conv_input<S: Real>(p: &Layer<S>, x: &DMatrix<S>, g: &Conv2dGeometry) -> S {
    sum(relu(im2col(x, g) * &p.w + &p.b))
}

/// A later layer: its input is differentiated too.
#[task]
fn conv_hidden<S: Real>(p: &HiddenLayer<S>, g: &Conv2dGeometry) -> S {
    sum(relu(im2col(&p.x, g) * &p.w + &p.b))
}

#[derive(Params, Clone, Debug)]
struct Qkv<S: Real> {
    qkv: DMatrix<S>,
}

#[task]
fn attention<S: Real>(p: &Qkv<S>, r: &DMatrix<S>, g: &AttentionGeometry) -> S {
    dot(causal_self_attention(&p.qkv, g), r)
}

#[derive(Params, Clone, Debug)]
struct Table<S: Real> {
    e: DMatrix<S>,
}

/// `⟨embed(table, ids), r⟩`, which `#[task]` makes one rule (`embed_dot`).
#[task]
fn embedding<S: Real>(p: &Table<S>, ids: &Vec<u32>, r: &DMatrix<S>) -> S {
    dot(embed(&p.e, ids), r)
}

/// The same with the lookup bound by `let`: the composition of `embed` and `dot`.
#[task]
fn embedding_apart<S: Real>(p: &Table<S>, ids: &Vec<u32>, r: &DMatrix<S>) -> S {
    let e = embed(&p.e, ids);
    dot(e, r)
}

#[derive(Params, Clone, Debug)]
struct LstmLayer<S: Real> {
    wx: DMatrix<S>,
    wh: DMatrix<S>,
    b: DVector<S>,
}

/// An LSTM layer over `xs.len()` steps under `Σ_t ⟨h_t, r_t⟩` (see the module docs).
#[task]
fn lstm_layer<S: Real>(p: &LstmLayer<S>, xs: &Vec<DMatrix<S>>, rs: &Vec<DMatrix<S>>) -> S {
    let hd = p.wh.nrows();
    let rows = xs[0].nrows();
    let mut h = DMatrix::<S>::zeros(rows, hd);
    let mut c = DMatrix::<S>::zeros(rows, hd);
    let mut loss = 0.0;
    for t in 0..xs.len() {
        let z = &xs[t] * &p.wx + &h * &p.wh + &p.b;
        let i = sigmoid(z.columns(0, hd));
        let f = sigmoid(z.columns(hd, hd));
        let g = tanh(z.columns(2 * hd, hd));
        let o = sigmoid(z.columns(3 * hd, hd));
        c = component_mul(&f, &c) + component_mul(&i, &g);
        h = component_mul(&o, &tanh(&c));
        loss += dot(&h, &rs[t]);
    }
    loss
}

/// The same layer as one `lstm_sequence` rule (haiku's gate order `i, g, f, o` and forget
/// bias `+1`; the same products): `x` holds every step's inputs time-major (row `t·B + b`),
/// `r` the weights of `Σ_t ⟨h_t, r_t⟩` in the same rows, `s0` the zero initial state (data).
#[task]
fn lstm_fused<S: Real>(p: &LstmLayer<S>, x: &DMatrix<S>, r: &DMatrix<S>, s0: &DMatrix<S>) -> S {
    let xw = x * &p.wx + &p.b;
    let hs = lstm_sequence(&xw, &p.wh, s0, s0);
    dot(&hs, r)
}

/// The same layer as one `lstm_projected` rule: `x·Wx + b` made inside it, step by step.
#[task]
fn lstm_projected_layer<S: Real>(
    p: &LstmLayer<S>,
    x: &DMatrix<S>,
    r: &DMatrix<S>,
    s0: &DMatrix<S>,
) -> S {
    let hs = lstm_projected(x, &p.wx, &p.b, &p.wh, s0, s0);
    dot(&hs, r)
}

/// The hand-written layer: buffers kept across calls, the same im2col/col2im and GEMM.
struct Hand {
    g: Conv2dGeometry,
    with_dx: bool,
    x: DMatrix<f32>,
    w: DMatrix<f32>,
    b: Vec<f32>,
    y: Vec<f32>,
    dw: Vec<f32>,
    db: Vec<f32>,
    dp: Vec<f32>,
}

impl Hand {
    fn value_and_grad(&mut self) -> f32 {
        let g = &self.g;
        let (m, k, n) = (g.out_rows(), g.patch_len(), self.w.ncols());
        let patches = g.im2col(&self.x);
        let pv = MatRef::col_major(patches.as_slice(), m, k).unwrap();
        let wv = MatRef::col_major(self.w.as_slice(), k, n).unwrap();
        gemm(pv, wv, &mut self.y, false).unwrap();
        // Bias, ReLU, the loss, and the cotangent (the ReLU mask) in place.
        let mut loss = 0.0f32;
        for (j, col) in self.y.chunks_exact_mut(m).enumerate() {
            let (bj, mut s, mut cnt) = (self.b[j], 0.0f32, 0.0f32);
            for v in col.iter_mut() {
                let z = *v + bj;
                let on = z > 0.0;
                s += if on { z } else { 0.0 };
                *v = if on { 1.0 } else { 0.0 };
                cnt += *v;
            }
            loss += s;
            self.db[j] = cnt;
        }
        let gv = MatRef::col_major(&self.y, m, n).unwrap();
        gemm(pv.t(), gv, &mut self.dw, false).unwrap();
        if self.with_dx {
            gemm(gv, wv.t(), &mut self.dp, false).unwrap();
            let dpm = DMatrix::from_column_slice(m, k, &self.dp);
            keep(g.col2im(&dpm));
        }
        loss
    }
}

/// FLOP of one peak case.
const PEAK_ITERS: usize = 1_000_000;

/// A whole column-major matrix as a GEMM view.
fn mref(m: &DMatrix<f32>) -> MatRef<'_, f32> {
    MatRef::col_major(m.as_slice(), m.nrows(), m.ncols()).unwrap()
}

fn main() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut normal = |r: usize, c: usize, s: f32| {
        DMatrix::<f32>::from_fn(r, c, |_, _| (rng.gen::<f32>() - 0.5) * 3.46 * s)
    };
    // (id, input geometry, output channels, the input is differentiated)
    let mut layers = Vec::new();
    for (tag, hw, c) in [("c10", 32usize, 3usize), ("fm", 28, 1)] {
        let o = hw / 2;
        let specs = [
            (
                format!("{tag}1.n128h{hw}w{hw}c{c}o32s2"),
                (hw, c, 2),
                32,
                false,
            ),
            (format!("{tag}2.n128h{o}w{o}c32o64s1"), (o, 32, 1), 64, true),
            (format!("{tag}3.n128h{o}w{o}c64o64s1"), (o, 64, 1), 64, true),
        ];
        for (id, (h, ci, s), co, dx) in specs {
            let g = Conv2dGeometry::new((128, h, h, ci), (3, 3), (s, s), Padding::Same).unwrap();
            layers.push((id, g, co, dx));
        }
    }
    let mut cases: Vec<Case<'_>> = Vec::new();
    let mut flops: Vec<(String, f64)> = Vec::new();
    // Only the layers some selected case needs are set up (and checked).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |id: &str| {
        filters.is_empty()
            || filters
                .iter()
                .any(|f| id.contains(f.trim_end_matches('$')) || f.contains(id))
    };
    for (id, g, co, dx) in &layers {
        let (g, co, dx) = (*g, *co, *dx);
        if !wanted(&format!("conv.{id}.")) {
            continue;
        }
        let x = normal(g.in_rows(), g.channels, 1.0);
        let w = normal(g.patch_len(), co, 1.0 / (g.patch_len() as f32).sqrt());
        let b = DVector::from_element(co, 0.01f32);
        let mm = 2.0 * (g.out_rows() * g.patch_len() * co) as f64;
        let mut hand = Hand {
            g,
            with_dx: dx,
            x: x.clone(),
            w: w.clone(),
            b: b.as_slice().to_vec(),
            y: vec![0.0; g.out_rows() * co],
            dw: vec![0.0; g.patch_len() * co],
            db: vec![0.0; co],
            dp: vec![0.0; g.out_rows() * g.patch_len()],
        };
        flops.push((format!("conv.{id}.value"), mm));
        flops.push((format!("conv.{id}.grad"), mm * if dx { 3.0 } else { 2.0 }));
        flops.push((format!("conv.{id}.hand"), mm * if dx { 3.0 } else { 2.0 }));
        if dx {
            let p = HiddenLayer { x, w, b };
            // The generated and the hand-written gradients agree before they are timed:
            // in norm, since the two sum the products in different orders and a few
            // outputs within rounding of 0 can take the other side of the ReLU (each
            // moves one patch row of dW).
            let (v, gr) = conv_hidden::value_and_grad(&p, &g);
            let vh = hand.value_and_grad();
            assert!((v - vh).abs() <= 1e-3 * v.abs(), "{id}: {v} vs {vh}");
            let err = (&gr.w - DMatrix::from_column_slice(g.patch_len(), co, &hand.dw)).norm();
            assert!(err <= 1e-2 * gr.w.norm(), "{id}: dw differs by {err}");
            let p2 = p.clone();
            cases.push(Case::new(format!("conv.{id}.value"), move || {
                keep(conv_hidden(&p2, &g));
            }));
            cases.push(Case::new(format!("conv.{id}.grad"), move || {
                keep(conv_hidden::value_and_grad(&p, &g));
            }));
        } else {
            let p = Layer { w, b };
            let (v, gr) = conv_input::value_and_grad(&p, &x, &g);
            let vh = hand.value_and_grad();
            assert!((v - vh).abs() <= 1e-3 * v.abs(), "{id}: {v} vs {vh}");
            let err = (&gr.w - DMatrix::from_column_slice(g.patch_len(), co, &hand.dw)).norm();
            assert!(err <= 1e-2 * gr.w.norm(), "{id}: dw differs by {err}");
            let (p2, x2) = (p.clone(), x.clone());
            cases.push(Case::new(format!("conv.{id}.value"), move || {
                keep(conv_input(&p2, &x2, &g));
            }));
            cases.push(Case::new(format!("conv.{id}.grad"), move || {
                keep(conv_input::value_and_grad(&p, &x, &g));
            }));
        }
        cases.push(Case::new(format!("conv.{id}.hand"), move || {
            keep(hand.value_and_grad());
        }));
    }

    // The convolution rule of the thin first layers alone (forward; kernel gradient of a
    // random cotangent), without the bias, ReLU and sum around it in `conv.*`.
    for (id, g, co, _) in layers.iter().filter(|l| l.1.patch_len() <= 32) {
        let (g, co) = (*g, *co);
        if !wanted(&format!(
            "part.{}.",
            &id[..id.find('.').unwrap_or(id.len())]
        )) {
            continue;
        }
        let tag = &id[..id.find('.').unwrap_or(id.len())];
        let x = normal(g.in_rows(), g.channels, 1.0);
        let w = normal(g.patch_len(), co, 0.2);
        let gy = normal(g.out_rows(), co, 1.0);
        let mm = 2.0 * (g.out_rows() * g.patch_len() * co) as f64;
        flops.push((format!("part.{tag}.rule_fwd"), mm));
        flops.push((format!("part.{tag}.rule_dw"), mm));
        let (x2, w2) = (x.clone(), w.clone());
        cases.push(Case::new(format!("part.{tag}.rule_fwd"), move || {
            keep(im2col_mul(&x2, &w2, &g, &[false, true]));
        }));
        cases.push(Case::new(format!("part.{tag}.rule_dw"), move || {
            keep(im2col_mul::vjp(&x, &w, &g, &[false, true], &gy));
        }));
    }

    // The parts of the largest layer's gradient, alone: the patches, their transpose
    // (col2im), and the three products.
    {
        let (_, g, co, _) = layers[2].clone();
        let (m, k) = (g.out_rows(), g.patch_len());
        let x = normal(g.in_rows(), g.channels, 1.0);
        let w = normal(k, co, 0.05);
        let p = g.im2col(&x);
        let gy = normal(m, co, 1.0);
        let mut y = vec![0.0f32; m * co];
        let mut dw = vec![0.0f32; k * co];
        let mut dp = vec![0.0f32; m * k];
        let mm = 2.0 * (m * k * co) as f64;
        for (part, f) in [
            ("fused_fwd", mm),
            ("fused_vjp", 2.0 * mm),
            ("fused_vjp_dw", mm),
            ("fused_vjp_dx", mm),
            ("fwd", mm),
            ("dw", mm),
            ("dp", mm),
            ("im2col", 0.0),
            ("col2im", 0.0),
        ] {
            flops.push((format!("part.c103.{part}"), f));
        }
        let (x2, p2, p3, p4, gy2, gy3, w2, w3) = (
            x.clone(),
            p.clone(),
            p.clone(),
            p.clone(),
            gy.clone(),
            gy.clone(),
            w.clone(),
            w.clone(),
        );
        let (x3, x4, w4, w5, gy4) = (x.clone(), x.clone(), w.clone(), w.clone(), gy.clone());
        cases.push(Case::new("part.c103.fused_fwd", move || {
            keep(im2col_mul(&x3, &w4, &g, &[true, true]));
        }));
        cases.push(Case::new("part.c103.fused_vjp", move || {
            keep(im2col_mul::vjp(&x4, &w5, &g, &[true, true], &gy4));
        }));
        for (name, needs) in [
            ("fused_vjp_dw", [false, true]),
            ("fused_vjp_dx", [true, false]),
        ] {
            let (x, w, gy) = (x.clone(), w.clone(), gy.clone());
            cases.push(Case::new(format!("part.c103.{name}"), move || {
                keep(im2col_mul::vjp(&x, &w, &g, &needs, &gy));
            }));
        }
        cases.push(Case::new("part.c103.im2col", move || {
            keep(g.im2col(&x2));
        }));
        cases.push(Case::new("part.c103.col2im", move || {
            keep(g.col2im(&p2));
        }));
        cases.push(Case::new("part.c103.fwd", move || {
            let (a, b) = (mref(&p3), mref(&w2));
            gemm(a, b, &mut y, false).unwrap();
        }));
        cases.push(Case::new("part.c103.dw", move || {
            let (a, b) = (mref(&p4), mref(&gy2));
            gemm(a.t(), b, &mut dw, false).unwrap();
        }));
        cases.push(Case::new("part.c103.dp", move || {
            let (a, b) = (mref(&gy3), mref(&w3));
            gemm(a, b.t(), &mut dp, false).unwrap();
        }));
        // The three products on one block of the fused rule (80 patch rows: five output
        // lines of 16 at 576 patch columns fill its 192 KiB block), alone.
        let rows = 80;
        let pb = normal(rows, k, 1.0);
        let gb = normal(rows, co, 1.0);
        let wb = normal(k, co, 0.05);
        let bm = 2.0 * (rows * k * co) as f64;
        for part in ["blk_fwd", "blk_dw", "blk_dx"] {
            flops.push((format!("part.c103.{part}"), bm));
        }
        let (pb2, gb2, wb2) = (pb.clone(), gb.clone(), wb.clone());
        let mut yb = vec![0.0f32; rows * co];
        cases.push(Case::new("part.c103.blk_fwd", move || {
            gemm(mref(&pb), mref(&wb), &mut yb, false).unwrap();
        }));
        let mut dwb = vec![0.0f32; k * co];
        cases.push(Case::new("part.c103.blk_dw", move || {
            gemm(mref(&pb2).t(), mref(&gb), &mut dwb, true).unwrap();
        }));
        let mut dpb = vec![0.0f32; rows * k];
        cases.push(Case::new("part.c103.blk_dx", move || {
            gemm(mref(&gb2), mref(&wb2).t(), &mut dpb, false).unwrap();
        }));
    }
    // This core's FMA loop, interleaved with the cases so that it sees the same load.
    flops.push(("peak.fma".into(), common::fma_loop_flop(PEAK_ITERS)));
    cases.push(Case::new("peak.fma", || {
        keep(common::fma_loop(PEAK_ITERS));
    }));

    // The transformer's attention: batch 64, T 32, 4 heads of 32.
    let ag = AttentionGeometry::new(64, 32, 4, 32).unwrap();
    let qkv = Qkv {
        qkv: normal(ag.rows(), 3 * ag.width(), 1.0),
    };
    let r = normal(ag.rows(), ag.width(), 1.0);
    flops.push(("attn.b64t32h4d32.grad".into(), ag.forward_flops() * 3.0));
    cases.push(Case::new("attn.b64t32h4d32.grad", move || {
        keep(attention::value_and_grad(&qkv, &r, &ag));
    }));

    // The transformer's embedding: 64×32 ids of a 256×128 table.
    let table = Table {
        e: normal(256, 128, 1.0),
    };
    let ids: Vec<u32> = (0..64 * 32).map(|i| ((i * 37 + 11) % 256) as u32).collect();
    let re = normal(ids.len(), 128, 1.0);
    // One add per gathered and per scattered element, and the dot's multiply-add.
    flops.push(("embed.v256d128n2048.grad".into(), 4.0 * (2048 * 128) as f64));
    let (table2, ids2, re2) = (table.clone(), ids.clone(), re.clone());
    cases.push(Case::new("embed.v256d128n2048.grad", move || {
        keep(embedding::value_and_grad(&table, &ids, &re));
    }));
    flops.push((
        "embed.v256d128n2048.grad_apart".into(),
        4.0 * (2048 * 128) as f64,
    ));
    cases.push(Case::new("embed.v256d128n2048.grad_apart", move || {
        keep(embedding_apart::value_and_grad(&table2, &ids2, &re2));
    }));

    // An LSTM layer of the RNN LM task: batch 128, 32 steps, 64 inputs, 128 hidden.
    let (lb, lt, le, lh) = (128usize, 32usize, 64usize, 128usize);
    let lstm = LstmLayer {
        wx: normal(le, 4 * lh, 1.0 / (le as f32).sqrt()),
        wh: normal(lh, 4 * lh, 1.0 / (lh as f32).sqrt()),
        b: DVector::zeros(4 * lh),
    };
    let xs: Vec<DMatrix<f32>> = (0..lt).map(|_| normal(lb, le, 1.0)).collect();
    let rs: Vec<DMatrix<f32>> = (0..lt).map(|_| normal(lb, lh, 1.0)).collect();
    let stacked = |ms: &[DMatrix<f32>]| {
        let (r, c) = ms[0].shape();
        DMatrix::from_fn(ms.len() * r, c, |i, j| ms[i / r][(i % r, j)])
    };
    let (x_all, r_all) = (stacked(&xs), stacked(&rs));
    let s0 = DMatrix::<f32>::zeros(lb, lh);
    let lstm_flop = 2.0 * (lt * lb * 4 * lh * (2 * le + 3 * lh)) as f64;
    let lstm_id = format!("lstm.b{lb}t{lt}e{le}h{lh}.grad");
    let steps_id = format!("lstm.b{lb}t{lt}e{le}h{lh}.grad_steps");
    let xw_id = format!("lstm.b{lb}t{lt}e{le}h{lh}.grad_xw");
    flops.push((lstm_id.clone(), lstm_flop));
    flops.push((steps_id.clone(), lstm_flop));
    flops.push((xw_id.clone(), lstm_flop));
    let (fused, projected) = (lstm.clone(), lstm.clone());
    let (x2, r2, s02) = (x_all.clone(), r_all.clone(), s0.clone());
    cases.push(Case::new(lstm_id, move || {
        keep(lstm_projected_layer::value_and_grad(
            &projected, &x2, &r2, &s02,
        ));
    }));
    cases.push(Case::new(xw_id, move || {
        keep(lstm_fused::value_and_grad(&fused, &x_all, &r_all, &s0));
    }));
    cases.push(Case::new(steps_id, move || {
        keep(lstm_layer::value_and_grad(&lstm, &xs, &rs));
    }));

    // The read-out products of the LSTM LM on one data-parallel chunk (64 sequences of
    // 32): `H·W_o`, `dW_o = Hᵀ·G`, `dH = G·W_oᵀ` (each 2048 × 128 × 256).
    {
        let (m, k, n) = (2048usize, 128usize, 256usize);
        let (hm, wo, gm) = (normal(m, k, 1.0), normal(k, n, 0.1), normal(m, n, 1.0));
        for part in ["fwd", "dw", "dx"] {
            flops.push((format!("part.rnn.readout_{part}"), 2.0 * (m * k * n) as f64));
            let (hm, wo, gm) = (hm.clone(), wo.clone(), gm.clone());
            cases.push(Case::new(format!("part.rnn.readout_{part}"), move || {
                let out = match part {
                    "fwd" => {
                        let mut c = vec![0.0f32; m * n];
                        gemm(mref(&hm), mref(&wo), &mut c, false).unwrap();
                        c
                    }
                    "dw" => {
                        let mut c = vec![0.0f32; k * n];
                        gemm(mref(&hm).t(), mref(&gm), &mut c, false).unwrap();
                        c
                    }
                    _ => {
                        let mut c = vec![0.0f32; m * k];
                        gemm(mref(&gm), mref(&wo).t(), &mut c, false).unwrap();
                        c
                    }
                };
                keep(out);
            }));
        }
    }

    // The LSTM layer's input products (4096 × 64 × 512): whole (`matrixmultiply`, above
    // the GEMM's LARGE) and as two column halves (the broadcast kernels).
    {
        let (m, k, n) = (4096usize, 64usize, 512usize);
        let (xm, wx, gm) = (normal(m, k, 1.0), normal(k, n, 0.1), normal(m, n, 1.0));
        for part in ["xw", "xw_halves", "dwx", "dwx_halves"] {
            flops.push((format!("part.lstm.{part}"), 2.0 * (m * k * n) as f64));
            let (xm, wx, gm) = (xm.clone(), wx.clone(), gm.clone());
            cases.push(Case::new(format!("part.lstm.{part}"), move || {
                let halves = part.ends_with("halves");
                let (a, b, rows) = if part.starts_with("xw") {
                    (mref(&xm), mref(&wx), m)
                } else {
                    (mref(&xm).t(), mref(&gm), k)
                };
                let mut c = vec![0.0f32; rows * n];
                if halves {
                    let bs = if part.starts_with("xw") {
                        wx.as_slice()
                    } else {
                        gm.as_slice()
                    };
                    let kk = b.rows();
                    for h in 0..2 {
                        let bh = MatRef::col_major(&bs[h * kk * n / 2..], kk, n / 2).unwrap();
                        gemm(
                            a,
                            bh,
                            &mut c[h * rows * n / 2..(h + 1) * rows * n / 2],
                            false,
                        )
                        .unwrap();
                    }
                } else {
                    gemm(a, b, &mut c, false).unwrap();
                }
                keep(c);
            }));
        }
    }

    // Single products of the LM's, the convolutions' and square shapes, through the
    // library (`.lopt`: its kernels, or matrixmultiply above its crossover) and through
    // matrixmultiply directly (`.mm`), to place the crossover per machine. `nn`: both
    // operands column-major; `ta`: `Aᵀ·B`; `tb`: `A·Bᵀ` (the transposes read in place).
    for (name, m, k, n, lay) in [
        ("lm_dx_4096x512x128_tb", 4096usize, 512usize, 128usize, "tb"),
        ("lm_dw_128x4096x512_ta", 128, 4096, 512, "ta"),
        ("readout_2048x128x256_nn", 2048, 128, 256, "nn"),
        ("readout_2048x256x128_tb", 2048, 256, 128, "tb"),
        ("conv1_25088x27x32_nn", 25088, 27, 32, "nn"),
        ("conv2_6272x288x64_nn", 6272, 288, 64, "nn"),
        ("lstm_step_128x128x512_nn", 128, 128, 512, "nn"),
        ("sq256_nn", 256, 256, 256, "nn"),
        ("sq384_nn", 384, 384, 384, "nn"),
        ("sq512_nn", 512, 512, 512, "nn"),
        ("sq256_tb", 256, 256, 256, "tb"),
        ("sq512_tb", 512, 512, 512, "tb"),
    ] {
        // Stored shapes: A is m x k (k x m for `ta`), B is k x n (n x k for `tb`).
        let a = if lay == "ta" {
            normal(k, m, 1.0)
        } else {
            normal(m, k, 1.0)
        };
        let b = if lay == "tb" {
            normal(n, k, 0.1)
        } else {
            normal(k, n, 0.1)
        };
        for path in ["lopt", "mm"] {
            let id = format!("part.gemm.{name}.{path}");
            flops.push((id.clone(), 2.0 * (m * k * n) as f64));
            let (a, b) = (a.clone(), b.clone());
            let mut c = vec![0.0f32; m * n];
            cases.push(Case::new(id, move || {
                let av = if lay == "ta" { mref(&a).t() } else { mref(&a) };
                let bv = if lay == "tb" { mref(&b).t() } else { mref(&b) };
                if path == "lopt" {
                    gemm(av, bv, &mut c, false).unwrap();
                } else {
                    // Strides of the views, as the library passes them.
                    let (rsa, csa) = if lay == "ta" { (k, 1) } else { (1, m) };
                    let (rsb, csb) = if lay == "tb" { (n, 1) } else { (1, k) };
                    // SAFETY: the strides describe the matrices allocated above, and `c`
                    // holds m·n elements (column-major).
                    unsafe {
                        matrixmultiply::sgemm(
                            m,
                            k,
                            n,
                            1.0,
                            a.as_ptr(),
                            rsa as isize,
                            csa as isize,
                            b.as_ptr(),
                            rsb as isize,
                            csb as isize,
                            0.0,
                            c.as_mut_ptr(),
                            1,
                            m as isize,
                        );
                    }
                }
                keep(&c);
            }));
        }
    }

    // The transformer LM's products on one data-parallel chunk (8 sequences of 32 tokens:
    // 256 rows; D 128, attention width 128, MLP 512, 256 classes): the forward product
    // `X·W`, `dX = G·Wᵀ` and `dW = Xᵀ·G` of each of its five weights.
    for (name, kk, nn) in [
        ("qkv", 128usize, 384usize),
        ("o", 128, 128),
        ("w1", 128, 512),
        ("w2", 512, 128),
        ("out", 128, 256),
    ] {
        let mm = 256usize;
        let (x, w, g) = (
            normal(mm, kk, 1.0),
            normal(kk, nn, 0.1),
            normal(mm, nn, 1.0),
        );
        for part in ["fwd", "dx", "dw"] {
            let id = format!("part.tlm.{name}_{part}");
            flops.push((id.clone(), 2.0 * (mm * kk * nn) as f64));
            let (x, w, g) = (x.clone(), w.clone(), g.clone());
            let mut c = vec![0.0f32; mm.max(kk) * nn.max(kk)];
            cases.push(Case::new(id, move || {
                match part {
                    "fwd" => gemm(mref(&x), mref(&w), &mut c[..mm * nn], false),
                    "dx" => gemm(mref(&g), mref(&w).t(), &mut c[..mm * kk], false),
                    _ => gemm(mref(&x).t(), mref(&g), &mut c[..kk * nn], false),
                }
                .unwrap();
                keep(&c);
            }));
        }
    }

    // The transformer LM's layer norm on one data-parallel chunk (256 rows of 128): the
    // forward rule and the reverse one (which recomputes the row statistics).
    {
        let (x, g) = (normal(256, 128, 1.0), normal(256, 128, 1.0));
        let s = DVector::from_fn(128, |j, _| 0.5 + j as f32 / 128.0);
        let o = DVector::from_fn(128, |j, _| j as f32 / 256.0 - 0.25);
        let (x2, s2, o2) = (x.clone(), s.clone(), o.clone());
        cases.push(Case::new("part.tlm.ln_fwd", move || {
            keep(layer_norm_affine(&x2, &s2, &o2, 1e-5));
        }));
        cases.push(Case::new("part.tlm.ln_vjp", move || {
            keep(layer_norm_affine::vjp(&x, &s, &o, 1e-5, &g));
        }));
    }

    // Products of SIMD-lane packets (`Lanes<8>`: one instance per lane, as a vmapped
    // task family runs them) of the conv family's second layer on one block of 40 patch
    // rows (3×3×32 patches, 32 channels): the forward `P·W`, the kernel gradient
    // `dWᵀ += Gᵀ·P` and the patches' `G·Wᵀ`, then the same on `Lanes<16>`. FLOP counts
    // every lane.
    fn packets<const N: usize>(
        cases: &mut Vec<Case<'_>>,
        flops: &mut Vec<(String, f64)>,
        wanted: &dyn Fn(&str) -> bool,
    ) {
        let (m, k, n) = (40usize, 288usize, 32usize);
        let fill = |len: usize, salt: usize| -> Vec<Lanes<N>> {
            (0..len)
                .map(|x| {
                    let mut v = Lanes::<N>::splat(0.0);
                    for (l, e) in v.0.iter_mut().enumerate() {
                        *e = ((x * 31 + l * 7 + salt) % 17) as f32 / 17.0 - 0.5;
                    }
                    v
                })
                .collect()
        };
        let (p, w, g) = (fill(m * k, 1), fill(k * n, 2), fill(m * n, 3));
        for part in ["fwd", "dw", "dx"] {
            let id = format!("part.lanes{N}.conv_{part}_40x288x32");
            if !wanted(&id) {
                continue;
            }
            flops.push((id.clone(), 2.0 * (m * k * n * N) as f64));
            let (p, w, g) = (p.clone(), w.clone(), g.clone());
            let mut c = vec![Lanes::<N>::splat(0.0); m * k];
            cases.push(Case::new(id, move || {
                let (pv, wv) = (
                    MatRef::col_major(&p, m, k).unwrap(),
                    MatRef::col_major(&w, k, n).unwrap(),
                );
                let gv = MatRef::col_major(&g, m, n).unwrap();
                match part {
                    "fwd" => gemm(pv, wv, &mut c[..m * n], false),
                    "dw" => gemm(gv.t(), pv, &mut c[..n * k], true),
                    _ => gemm(gv, wv.t(), &mut c[..m * k], false),
                }
                .unwrap();
                keep(&c);
            }));
        }
    }
    packets::<8>(&mut cases, &mut flops, &wanted);
    packets::<16>(&mut cases, &mut flops, &wanted);

    common::select(&mut cases);
    let summary = common::run(&mut cases, 7, Duration::from_millis(300));
    let peak = common::fma_loop_flop(PEAK_ITERS) / common::median(&summary, "peak.fma");
    println!(
        "peak f32 FMA one core, interleaved: {:.1} GFLOP/s",
        peak / 1e9
    );
    for s in &summary {
        if let Some((_, f)) = flops.iter().find(|(id, _)| *id == s.id) {
            println!(
                "flops {} gflop={:.3} gflops={:.1} peak_fraction={:.3}",
                s.id,
                f / 1e9,
                f / s.median / 1e9,
                f / s.median / peak
            );
        }
    }
    for s in summary
        .iter()
        .filter(|s| s.id.ends_with(".grad") && s.id.starts_with("conv"))
    {
        let hand = s.id.replace(".grad", ".hand");
        if let Some(h) = summary.iter().find(|x| x.id == hand) {
            println!("ratio {} grad/hand={:.3}", s.id, s.median / h.median);
        }
    }
}
