//! A one-layer pre-LN transformer language model (the JAX library's
//! `transformer.Transformer` at a small size) written as a `#[task]` loss with
//! `causal_self_attention`, checked against the same model written a second time as plain
//! f64 loops: the generated value equals it, and the generated gradient and JVP agree with
//! central differences of it.
//!
//! Mutation tried: the attention's reverse rule without the softmax Jacobian's
//! `− rowsum(P ∘ dP)` term fails the gradient check here.
//!
//! The layer norms' learned scale is written here as `component_mul(x, ones * scale)`
//! (`ones` a column of data, `scale` a `1 × D` parameter) and the MLP's GELU spelled out
//! with `tanh`: compositions of other rules, on purpose; the task library
//! (`tasks::transformer_lm`) uses the primitives `scale_columns` and `gelu_tanh`.

use lopt::ad::attention::AttentionGeometry;
use lopt::gradcheck::{check_gradient, GradCheck};
use lopt::prelude::*;

#[derive(Params, Clone, Debug)]
struct Lm<S: Real> {
    embed: DMatrix<S>,
    ln1_scale: DMatrix<S>,
    ln1_offset: DVector<S>,
    wqkv: DMatrix<S>,
    bqkv: DVector<S>,
    wo: DMatrix<S>,
    bo: DVector<S>,
    ln2_scale: DMatrix<S>,
    ln2_offset: DVector<S>,
    w1: DMatrix<S>,
    b1: DVector<S>,
    w2: DMatrix<S>,
    b2: DVector<S>,
    lnf_scale: DMatrix<S>,
    lnf_offset: DVector<S>,
    wout: DMatrix<S>,
    bout: DVector<S>,
}

/// embed → LN → `[q|k|v]` projection → causal self-attention → output projection, residual
/// → LN → tanh-GELU MLP, residual → final LN → logits → mean softmax cross-entropy.
#[task]
fn transformer_lm<S: Real>(
    p: &Lm<S>,
    ids: &Vec<u32>,
    targets: &Vec<i32>,
    ones: &DMatrix<S>,
    g: &AttentionGeometry,
) -> S {
    let h0 = embed(&p.embed, ids);
    let a_in = component_mul(layer_norm(&h0, 1e-5), ones * &p.ln1_scale) + &p.ln1_offset;
    let qkv = a_in * &p.wqkv + &p.bqkv;
    let att = causal_self_attention(&qkv, g);
    let h1 = h0 + (att * &p.wo + &p.bo);
    let m_in = component_mul(layer_norm(&h1, 1e-5), ones * &p.ln2_scale) + &p.ln2_offset;
    let u = m_in * &p.w1 + &p.b1;
    // jax.nn.gelu(approximate=True): 0.5 u (1 + tanh(sqrt(2/π) (u + 0.044715 u³))).
    let inner = (&u + powi(&u, 3) * 0.044715) * 0.7978845608028654;
    let act = component_mul(&u, tanh(inner) + 1.0) * 0.5;
    let h2 = h1 + (act * &p.w2 + &p.b2);
    let hf = component_mul(layer_norm(&h2, 1e-5), ones * &p.lnf_scale) + &p.lnf_offset;
    let logits = hf * &p.wout + &p.bout;
    mean(softmax_cross_entropy(logits, targets))
}

/// `rows × cols` row-major `v` as plain nested vectors.
type Rows = Vec<Vec<f64>>;

fn linear(x: &Rows, w: &DMatrix<f64>, b: &DVector<f64>) -> Rows {
    x.iter()
        .map(|r| {
            (0..w.ncols())
                .map(|o| b[o] + (0..w.nrows()).map(|i| r[i] * w[(i, o)]).sum::<f64>())
                .collect()
        })
        .collect()
}

/// hk.LayerNorm: `scale · (x − mean) / sqrt(var + 1e-5) + offset` per row.
fn layer_norm(x: &Rows, scale: &DMatrix<f64>, offset: &DVector<f64>) -> Rows {
    x.iter()
        .map(|r| {
            let n = r.len() as f64;
            let mean = r.iter().sum::<f64>() / n;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            r.iter()
                .enumerate()
                .map(|(j, v)| scale[(0, j)] * (v - mean) / (var + 1e-5).sqrt() + offset[j])
                .collect()
        })
        .collect()
}

fn add(a: &Rows, b: &Rows) -> Rows {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(u, v)| u + v).collect())
        .collect()
}

/// The same model by its definition in f64 loops (haiku's attention: `einsum` logits over
/// sqrt(32)-style scaling by `sqrt(d)`, `−1e30` above the diagonal, softmax, weighted
/// values, heads concatenated).
fn transformer_f64(p: &Lm<f64>, ids: &[u32], targets: &[i32], g: &AttentionGeometry) -> f64 {
    let (tt, hh, d) = (g.time, g.heads, g.key_size);
    let w = hh * d;
    let h0: Rows = ids
        .iter()
        .map(|&i| {
            (0..p.embed.ncols())
                .map(|c| p.embed[(i as usize, c)])
                .collect()
        })
        .collect();
    let qkv = linear(
        &layer_norm(&h0, &p.ln1_scale, &p.ln1_offset),
        &p.wqkv,
        &p.bqkv,
    );
    let mut att = vec![vec![0.0; w]; g.batch * tt];
    for b in 0..g.batch {
        for h in 0..hh {
            for t in 0..tt {
                let q = &qkv[b * tt + t];
                let logits: Vec<f64> = (0..tt)
                    .map(|s| {
                        let k = &qkv[b * tt + s];
                        if s > t {
                            return -1e30;
                        }
                        (0..d).map(|j| q[h * d + j] * k[w + h * d + j]).sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..d {
                    att[b * tt + t][h * d + j] = (0..tt)
                        .map(|s| e[s] / z * qkv[b * tt + s][2 * w + h * d + j])
                        .sum();
                }
            }
        }
    }
    let h1 = add(&h0, &linear(&att, &p.wo, &p.bo));
    let u = linear(&layer_norm(&h1, &p.ln2_scale, &p.ln2_offset), &p.w1, &p.b1);
    let act: Rows = u
        .iter()
        .map(|r| {
            r.iter()
                .map(|&x| {
                    let c = (2.0 / std::f64::consts::PI).sqrt();
                    0.5 * x * (1.0 + (c * (x + 0.044715 * x.powi(3))).tanh())
                })
                .collect()
        })
        .collect();
    let h2 = add(&h1, &linear(&act, &p.w2, &p.b2));
    let logits = linear(
        &layer_norm(&h2, &p.lnf_scale, &p.lnf_offset),
        &p.wout,
        &p.bout,
    );
    let mut loss = 0.0;
    for (z, &y) in logits.iter().zip(targets) {
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        loss += lse - z[y as usize];
    }
    loss / targets.len() as f64
}

fn rand_mat(r: usize, c: usize, seed: u64, scale: f64, shift: f64) -> DMatrix<f64> {
    let mut v = vec![0.0f32; r * c];
    Key::new(seed).fill_normal(&mut v);
    DMatrix::from_iterator(r, c, v.into_iter().map(|x| f64::from(x) * scale + shift))
}

fn rand_vec(n: usize, seed: u64, scale: f64) -> DVector<f64> {
    rand_mat(n, 1, seed, scale, 0.0).column(0).into_owned()
}

#[test]
fn transformer_lm_matches_its_definition_and_differentiates() {
    // 2 sequences of 5 tokens, vocabulary 7, 2 heads × 4 features, MLP width 16.
    let g = AttentionGeometry::new(2, 5, 2, 4).unwrap();
    let (dm, f, v) = (8, 16, 7);
    let ids: Vec<u32> = vec![1, 4, 6, 0, 2, 3, 3, 5, 1, 6];
    let targets: Vec<i32> = vec![4, 6, 0, 2, 3, 3, 5, 1, 6, 2];
    let ones = DMatrix::from_element(g.rows(), 1, 1.0);
    let p = Lm {
        embed: rand_mat(v, dm, 1, 1.0, 0.0),
        ln1_scale: rand_mat(1, dm, 2, 0.2, 1.0),
        ln1_offset: rand_vec(dm, 3, 0.1),
        wqkv: rand_mat(dm, 3 * dm, 4, 0.5, 0.0),
        bqkv: rand_vec(3 * dm, 5, 0.1),
        wo: rand_mat(dm, dm, 6, 0.35, 0.0),
        bo: rand_vec(dm, 7, 0.1),
        ln2_scale: rand_mat(1, dm, 8, 0.2, 1.0),
        ln2_offset: rand_vec(dm, 9, 0.1),
        w1: rand_mat(dm, f, 10, 0.35, 0.0),
        b1: rand_vec(f, 11, 0.1),
        w2: rand_mat(f, dm, 12, 0.25, 0.0),
        b2: rand_vec(dm, 13, 0.1),
        lnf_scale: rand_mat(1, dm, 14, 0.2, 1.0),
        lnf_offset: rand_vec(dm, 15, 0.1),
        wout: rand_mat(dm, v, 16, 0.35, 0.0),
        bout: rand_vec(v, 17, 0.1),
    };
    let indep = |p: &Lm<f64>| transformer_f64(p, &ids, &targets, &g);
    let got = transformer_lm(&p, &ids, &targets, &ones, &g);
    assert!((got - indep(&p)).abs() < 1e-12, "{got} vs {}", indep(&p));
    let report = check_gradient(
        &p,
        indep,
        |p| transformer_lm::value_and_grad(p, &ids, &targets, &ones, &g),
        |p, t| transformer_lm::value_and_jvp(p, t, &ids, &targets, &ones, &g),
        &GradCheck {
            max_elements: 1000,
            ..GradCheck::default()
        },
    );
    assert!(report.passed(), "{report}");
}
