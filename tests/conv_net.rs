//! A small convolutional network and an embedding model written as `#[task]` losses with
//! the data-carrying primitives (`im2col`, `avg_pool`, `max_pool`, `global_mean_pool`,
//! `embed`, `layer_norm`, `take_along`), each checked against the same model written a
//! second time as plain f64 loops (convolution from its definition with TensorFlow's
//! padding): the generated value equals it, and the generated gradient and JVP agree with
//! central differences of it. Mutation tried: `col2im` (im2col's reverse rule) returning
//! zeros fails the conv net's gradient check.

use lopt::ad::conv::{Conv2dGeometry, Padding};
use lopt::gradcheck::{check_gradient, GradCheck};
use lopt::prelude::*;

#[derive(Params, Clone, Debug)]
struct ConvNet<S: Real> {
    w1: DMatrix<S>,
    b1: DVector<S>,
    w2: DMatrix<S>,
    b2: DVector<S>,
    w3: DMatrix<S>,
    b3: DVector<S>,
}

/// conv 3×3 stride 2 SAME → relu → conv 3×3 stride 1 SAME → relu → global mean → linear →
/// mean softmax cross-entropy: the JAX library's conv task at a small size.
#[task]
fn conv_net<S: Real>(
    p: &ConvNet<S>,
    x: &DMatrix<S>,
    labels: &Vec<i32>,
    g1: &Conv2dGeometry,
    g2: &Conv2dGeometry,
) -> S {
    let h1 = relu(im2col(x, g1) * &p.w1 + &p.b1);
    let h2 = relu(im2col(&h1, g2) * &p.w2 + &p.b2);
    let pooled = global_mean_pool(&h2, 9usize);
    let logits = pooled * &p.w3 + &p.b3;
    mean(softmax_cross_entropy(logits, labels))
}

/// The same network by its definition, in f64 loops (NHWC rows, HWIO kernels).
fn conv_net_f64(
    p: &ConvNet<f64>,
    x: &DMatrix<f64>,
    labels: &[i32],
    gs: [&Conv2dGeometry; 2],
) -> f64 {
    fn conv(
        x: &DMatrix<f64>,
        w: &DMatrix<f64>,
        b: &DVector<f64>,
        g: &Conv2dGeometry,
    ) -> DMatrix<f64> {
        let (ho, wo) = g.out_hw();
        // TensorFlow SAME: the smaller half of the padding before.
        let pad = |input: usize, k: usize, s: usize| {
            let out = input.div_ceil(s);
            (((out - 1) * s + k).max(input) - input) / 2
        };
        let (pt, pl) = (
            pad(g.height, g.kh, g.stride.0),
            pad(g.width, g.kw, g.stride.1),
        );
        let cout = w.ncols();
        DMatrix::from_fn(g.batch * ho * wo, cout, |row, o| {
            let (n, oh, ow) = (row / (ho * wo), (row / wo) % ho, row % wo);
            let mut s = b[o];
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let h = (oh * g.stride.0 + i) as isize - pt as isize;
                    let ww = (ow * g.stride.1 + j) as isize - pl as isize;
                    if h < 0 || ww < 0 || h >= g.height as isize || ww >= g.width as isize {
                        continue;
                    }
                    for c in 0..g.channels {
                        let xr = (n * g.height + h as usize) * g.width + ww as usize;
                        s += x[(xr, c)] * w[((i * g.kw + j) * g.channels + c, o)];
                    }
                }
            }
            s.max(0.0)
        })
    }
    let h1 = conv(x, &p.w1, &p.b1, gs[0]);
    let h2 = conv(&h1, &p.w2, &p.b2, gs[1]);
    let n = gs[0].batch;
    let mut loss = 0.0;
    for (k, &label) in labels.iter().enumerate() {
        let logits: Vec<f64> = (0..p.w3.ncols())
            .map(|o| {
                let mut s = p.b3[o];
                for c in 0..h2.ncols() {
                    let mean = (0..9).map(|r| h2[(k * 9 + r, c)]).sum::<f64>() / 9.0;
                    s += mean * p.w3[(c, o)];
                }
                s
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + logits.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
        loss += lse - logits[label as usize];
    }
    loss / n as f64
}

fn rand_mat(r: usize, c: usize, seed: u64, scale: f64) -> DMatrix<f64> {
    let mut v = vec![0.0f32; r * c];
    Key::new(seed).fill_normal(&mut v);
    DMatrix::from_iterator(r, c, v.into_iter().map(|x| f64::from(x) * scale))
}

#[test]
fn conv_net_matches_its_definition_and_differentiates() {
    // Two 6×6 images of 2 channels: 6×6 → 3×3 (stride 2, pads 0 and 1) → 3×3.
    let g1 = Conv2dGeometry::new((2, 6, 6, 2), (3, 3), (2, 2), Padding::Same).unwrap();
    let g2 = Conv2dGeometry::new((2, 3, 3, 3), (3, 3), (1, 1), Padding::Same).unwrap();
    let x = rand_mat(g1.in_rows(), 2, 1, 1.0);
    let labels = vec![2, 0];
    let p = ConvNet {
        w1: rand_mat(g1.patch_len(), 3, 2, 0.5),
        b1: rand_mat(3, 1, 3, 0.1).column(0).into_owned(),
        w2: rand_mat(g2.patch_len(), 4, 4, 0.4),
        b2: rand_mat(4, 1, 5, 0.1).column(0).into_owned(),
        w3: rand_mat(4, 3, 6, 0.7),
        b3: rand_mat(3, 1, 7, 0.1).column(0).into_owned(),
    };
    let indep = |p: &ConvNet<f64>| conv_net_f64(p, &x, &labels, [&g1, &g2]);
    let got = conv_net(&p, &x, &labels, &g1, &g2);
    assert!((got - indep(&p)).abs() < 1e-12, "{got} vs {}", indep(&p));
    let report = check_gradient(
        &p,
        indep,
        |p| conv_net::value_and_grad(p, &x, &labels, &g1, &g2),
        |p, t| conv_net::value_and_jvp(p, t, &x, &labels, &g1, &g2),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
}

#[derive(Params, Clone, Debug)]
struct TinyLm<S: Real> {
    embed: DMatrix<S>,
    scale: DVector<S>,
    w: DMatrix<S>,
}

/// Embedding lookup → layer norm → max pool over pairs of positions → linear → the log-
/// probability of each target (take_along of log_softmax), averaged: an embedding model's
/// pieces in one loss.
#[task]
fn tiny_lm<S: Real>(
    p: &TinyLm<S>,
    ids: &Vec<u32>,
    targets: &Vec<usize>,
    pool: &Conv2dGeometry,
) -> S {
    let e = embed(&p.embed, ids);
    let h = layer_norm(&e, 1e-5) + &p.scale;
    let pooled = max_pool(&h, pool);
    let logp = log_softmax(pooled * &p.w);
    -mean(take_along(&logp, targets))
}

fn tiny_lm_f64(p: &TinyLm<f64>, ids: &[u32], targets: &[usize]) -> f64 {
    let d = p.embed.ncols();
    // Rows by id, each normalized (two-pass variance, eps 1e-5) and shifted.
    let h: Vec<Vec<f64>> = ids
        .iter()
        .map(|&i| {
            let row: Vec<f64> = (0..d).map(|c| p.embed[(i as usize, c)]).collect();
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            (0..d)
                .map(|c| (row[c] - mean) / (var + 1e-5).sqrt() + p.scale[c])
                .collect()
        })
        .collect();
    // Max over consecutive pairs of positions (a 2×1 window, stride 2, VALID).
    let pooled: Vec<Vec<f64>> = h
        .chunks(2)
        .map(|pair| (0..d).map(|c| pair[0][c].max(pair[1][c])).collect())
        .collect();
    let mut total = 0.0;
    for (r, row) in pooled.iter().enumerate() {
        let z: Vec<f64> = (0..p.w.ncols())
            .map(|o| (0..d).map(|c| row[c] * p.w[(c, o)]).sum())
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += z[targets[r]] - lse;
    }
    -total / pooled.len() as f64
}

#[test]
fn embedding_model_matches_its_definition_and_differentiates() {
    // 6 tokens of a vocabulary of 5, features 4; pooled in pairs: 3 rows, 3 classes.
    let ids: Vec<u32> = vec![4, 1, 1, 3, 0, 4];
    let targets: Vec<usize> = vec![2, 0, 1];
    let pool = Conv2dGeometry::new((1, 6, 1, 4), (2, 1), (2, 1), Padding::Valid).unwrap();
    let p = TinyLm {
        embed: rand_mat(5, 4, 11, 1.0),
        scale: rand_mat(4, 1, 12, 0.3).column(0).into_owned(),
        w: rand_mat(4, 3, 13, 0.8),
    };
    let indep = |p: &TinyLm<f64>| tiny_lm_f64(p, &ids, &targets);
    let got = tiny_lm(&p, &ids, &targets, &pool);
    assert!((got - indep(&p)).abs() < 1e-12, "{got} vs {}", indep(&p));
    let report = check_gradient(
        &p,
        indep,
        |p| tiny_lm::value_and_grad(p, &ids, &targets, &pool),
        |p, t| tiny_lm::value_and_jvp(p, t, &ids, &targets, &pool),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
}

#[derive(Params, Clone, Debug)]
struct Probe<S: Real> {
    e: DMatrix<S>,
    w: DMatrix<S>,
}

/// `dot(embed(..), r)` in the forms `#[task]` fuses into one rule (`embed_dot`): a data
/// `r`, and a differentiated `r` in the method form with the operands swapped; both
/// under a scale (cotangents `g ≠ 1`).
#[task]
fn embed_probe<S: Real>(p: &Probe<S>, ids: &Vec<u16>, r: &DMatrix<S>, c: &DMatrix<S>) -> S {
    3.0 * dot(embed(&p.e, ids), r) - 0.5 * (c * &p.w).dot(&p.e.embed(ids))
}

/// The same loss with the lookups bound by `let`: the composition of `embed` and `dot`,
/// not fused.
#[task]
fn embed_probe_apart<S: Real>(p: &Probe<S>, ids: &Vec<u16>, r: &DMatrix<S>, c: &DMatrix<S>) -> S {
    let a = embed(&p.e, ids);
    let b = embed(&p.e, ids);
    3.0 * dot(a, r) - 0.5 * (c * &p.w).dot(&b)
}

/// The fused `dot(embed(t, ids), r)` against f64 loops written from the definition
/// (value, and the gradient and JVP by central differences), with repeated ids and one
/// table row never looked up; and its gradient equals the composition's bit for bit.
/// Mutations tried: the table's cotangent scattered from `r` without the factor `g` (the
/// `g = 1` shortcut taken always); `r`'s cotangent without `g`; the JVP's `dr` term
/// dropped; each fails here.
#[test]
fn fused_embedding_probe_matches_its_definition_and_the_composition() {
    let ids: Vec<u16> = vec![4, 1, 1, 3, 0, 4, 4];
    let (n, d, k) = (6, 5, 3);
    let r = rand_mat(ids.len(), d, 31, 1.0);
    let c = rand_mat(ids.len(), k, 32, 1.0);
    let p = Probe {
        e: rand_mat(n, d, 33, 1.0),
        w: rand_mat(k, d, 34, 0.7),
    };
    let indep = |p: &Probe<f64>| {
        let mut total = 0.0;
        for (row, &i) in ids.iter().enumerate() {
            for j in 0..d {
                let cw: f64 = (0..k).map(|q| c[(row, q)] * p.w[(q, j)]).sum();
                total += p.e[(i as usize, j)] * (3.0 * r[(row, j)] - 0.5 * cw);
            }
        }
        total
    };
    let got = embed_probe(&p, &ids, &r, &c);
    assert!((got - indep(&p)).abs() < 1e-12, "{got} vs {}", indep(&p));
    let report = check_gradient(
        &p,
        indep,
        |p| embed_probe::value_and_grad(p, &ids, &r, &c),
        |p, t| embed_probe::value_and_jvp(p, t, &ids, &r, &c),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
    let (fused, apart) = (
        embed_probe::value_and_grad(&p, &ids, &r, &c).1,
        embed_probe_apart::value_and_grad(&p, &ids, &r, &c).1,
    );
    assert_eq!(fused.e, apart.e);
    assert_eq!(fused.w, apart.w);
}

#[derive(Params, Clone, Debug)]
struct ScaledNorm<S: Real> {
    w: DMatrix<S>,
    scale: DVector<S>,
    offset: DVector<S>,
}

/// `hk.LayerNorm` with its learned scale and offset: `scale_columns(layer_norm(x·w), s) +
/// offset`, then a sum of squares weighted by data, so every column's scale matters.
#[task]
fn scaled_norm<S: Real>(p: &ScaledNorm<S>, x: &DMatrix<f64>, c: &DMatrix<f64>) -> S {
    let h = scale_columns(layer_norm(x * &p.w, 1e-5), &p.scale) + &p.offset;
    sum(component_mul(h.component_mul(&h), c))
}

/// The learned scale of a layer norm (`scale_columns`) against its definition. Mutation
/// tried: the scale's cotangent taken over rows instead of columns (`g.row_iter()`) fails
/// the gradient check.
#[test]
fn layer_norm_scale_and_offset_match_their_definition() {
    let x = rand_mat(5, 3, 21, 1.0);
    let c = rand_mat(5, 4, 22, 1.0);
    let p = ScaledNorm {
        w: rand_mat(3, 4, 23, 0.8),
        scale: rand_mat(4, 1, 24, 1.0).column(0).into_owned(),
        offset: rand_mat(4, 1, 25, 0.3).column(0).into_owned(),
    };
    let indep = |p: &ScaledNorm<f64>| {
        let z = &x * &p.w;
        let mut total = 0.0;
        for i in 0..z.nrows() {
            let row: Vec<f64> = z.row(i).iter().copied().collect();
            let mean = row.iter().sum::<f64>() / 4.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
            for j in 0..4 {
                let h = p.scale[j] * (row[j] - mean) / (var + 1e-5).sqrt() + p.offset[j];
                total += h * h * c[(i, j)];
            }
        }
        total
    };
    let got = scaled_norm(&p, &x, &c);
    assert!((got - indep(&p)).abs() < 1e-10, "{got} vs {}", indep(&p));
    let report = check_gradient(
        &p,
        indep,
        |p| scaled_norm::value_and_grad(p, &x, &c),
        |p, t| scaled_norm::value_and_jvp(p, t, &x, &c),
        &GradCheck::default(),
    );
    assert!(report.passed(), "{report}");
}
