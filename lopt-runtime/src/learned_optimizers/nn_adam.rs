//! `NnAdam`: Adam whose per-tensor hyperparameters an LSTM adjusts every step (the JAX
//! library's `NNAdam`, `learned_optimizers/nn_adam.py`).

use super::flax_msgpack::{arr, FlaxMsgpackError, FlaxTheta, FlaxValue};
use super::parts::{clip, par_worthy, sigmoid, sign};
use super::LearnedOptimizer;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::params::Params;
use crate::scalar::Real;

/// Number of per-tensor features the LSTM reads.
pub const NN_ADAM_FEATURES: usize = 19;

/// Adam with a learning rate, β1, β2 and ε per tensor, each changed after every step by
/// an LSTM that reads 19 summary features of the tensor, exactly as the library's
/// `NNAdam` (defaults: `output_scale = 0.01`, `initial_learning_rate = 1e-4`,
/// `initial_beta1 = 0.9`, `initial_beta2 = 0.999`, `initial_epsilon = 1e-8`,
/// `decay_strength = 0`, `lstm_hidden_size = 32`).
///
/// Hyperparameters are kept in scaled form `x`: `lr = clip(exp(10x), 1e-8, 1e3)`,
/// `ε = clip(exp(10x), 1e-11, 1e4)`, `β = 1 − exp(clip(10x, −10, 0))`. One step, per tensor,
/// with `g` clipped to ±1000:
///
/// ```text
/// m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²                (no bias correction)
/// p ← p − lr·(1 + ε) / (ε + √(v + 1e-10)) · m
/// (h, c) ← LSTM(features(p_old, g, m, v, x_lr, x_β1, x_β2, x_ε), (h, c))  (haiku's LSTM)
/// x ← fwd(inv(x + output_scale · (W·h + b)))   for x in (x_lr, x_β1, x_β2, x_ε)
/// ```
///
/// The features, in the library's (alphabetical) order: the four scaled hyperparameters
/// clipped to ±5 and times 0.2, whether the tensor is a vector / a scalar (±1), and
/// `½·clip(ln(1e-8 + |·|), ±5)` of the means of `g`, `|g|`, `m`, `p`, `v` and of the
/// variances of `g`, `m`, `p`, `v`, with the signs of the means of `g`, `m`, `p`, `v`.
/// θ holds the LSTM's weights and initial state, the output layer (zero at init, so a
/// fresh θ is plain Adam-like), and the initial scaled hyperparameters. The loss is
/// ignored. `init_state` accepts `num_steps = None` (the library requires it but does not
/// use it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NnAdam {
    /// Multiplier of the LSTM's output.
    pub output_scale: f64,
    /// Learning rate θ starts from.
    pub initial_learning_rate: f64,
    /// β1 θ starts from.
    pub initial_beta1: f64,
    /// β2 θ starts from.
    pub initial_beta2: f64,
    /// ε θ starts from.
    pub initial_epsilon: f64,
    /// Pull of the per-tensor hyperparameters back to θ's (0 = none).
    pub decay_strength: f64,
    /// Width of the LSTM.
    pub lstm_hidden_size: usize,
}

impl Default for NnAdam {
    fn default() -> Self {
        NnAdam {
            output_scale: 0.01,
            initial_learning_rate: 1e-4,
            initial_beta1: 0.9,
            initial_beta2: 0.999,
            initial_epsilon: 1e-8,
            decay_strength: 0.0,
            lstm_hidden_size: 32,
        }
    }
}

impl NnAdam {
    /// `Ok` when the initial learning rate and ε are finite and positive, the betas lie in
    /// `[0, 1)`, `output_scale` and `decay_strength` are finite and ≥ 0, and the LSTM has a
    /// positive width.
    pub fn validate(&self) -> Result<()> {
        let bad = |w: &str, x: f64| {
            Err(Error::InvalidArgument(format!(
                "NnAdam {w} out of range: {x}"
            )))
        };
        for (w, x) in [
            ("initial_learning_rate", self.initial_learning_rate),
            ("initial_epsilon", self.initial_epsilon),
        ] {
            if !(x.is_finite() && x > 0.0) {
                return bad(w, x);
            }
        }
        for (w, x) in [
            ("initial_beta1", self.initial_beta1),
            ("initial_beta2", self.initial_beta2),
        ] {
            if !(0.0..1.0).contains(&x) {
                return bad(w, x);
            }
        }
        for (w, x) in [
            ("output_scale", self.output_scale),
            ("decay_strength", self.decay_strength),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                return bad(w, x);
            }
        }
        if self.lstm_hidden_size == 0 {
            return bad("lstm_hidden_size", 0.0);
        }
        Ok(())
    }
}

/// θ of [`NnAdam`]; matrices are row-major `[in, out]` as haiku stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct NnAdamTheta<S> {
    /// `lstm_init_state.hidden`, `[H]`.
    pub init_hidden: Vec<S>,
    /// `lstm_init_state.cell`, `[H]`.
    pub init_cell: Vec<S>,
    /// `rnn_params["rnn/linear"].w`, `[19 + H, 4H]` (gates i, g, f, o).
    pub lstm_w: Vec<S>,
    /// `rnn_params["rnn/linear"].b`, `[4H]`.
    pub lstm_b: Vec<S>,
    /// `rnn_to_controls_params["rnn_to_controls"].w`, `[H, 4]`.
    pub out_w: Vec<S>,
    /// `rnn_to_controls_params["rnn_to_controls"].b`, `[4]`.
    pub out_b: Vec<S>,
    /// `[per_layer_lr, per_layer_beta1, per_layer_beta2, per_layer_epsilon]`: the scaled
    /// hyperparameters every tensor starts from.
    pub per_layer: Vec<S>,
}

const THETA_FIELDS: [&str; 7] = [
    "init_hidden",
    "init_cell",
    "lstm_w",
    "lstm_b",
    "out_w",
    "out_b",
    "per_layer",
];

impl<S: Real> NnAdamTheta<S> {
    fn hidden(&self) -> usize {
        self.init_hidden.len()
    }
    fn fields(&self) -> [&Vec<S>; 7] {
        [
            &self.init_hidden,
            &self.init_cell,
            &self.lstm_w,
            &self.lstm_b,
            &self.out_w,
            &self.out_b,
            &self.per_layer,
        ]
    }
    fn cast<T: Real>(&self) -> NnAdamTheta<T> {
        let c = |v: &Vec<S>| v.iter().map(|x| T::from_f64(x.lane(0))).collect();
        NnAdamTheta {
            init_hidden: c(&self.init_hidden),
            init_cell: c(&self.init_cell),
            lstm_w: c(&self.lstm_w),
            lstm_b: c(&self.lstm_b),
            out_w: c(&self.out_w),
            out_b: c(&self.out_b),
            per_layer: c(&self.per_layer),
        }
    }
}

/// The seven fields above, in order, each one leaf.
impl<S: Real> Params for NnAdamTheta<S> {
    type Scalar = S;
    fn num_leaves(&self) -> usize {
        7
    }
    fn leaf(&self, i: usize) -> &[S] {
        self.fields()[i]
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [S] {
        match i {
            0 => &mut self.init_hidden,
            1 => &mut self.init_cell,
            2 => &mut self.lstm_w,
            3 => &mut self.lstm_b,
            4 => &mut self.out_w,
            5 => &mut self.out_b,
            _ => &mut self.per_layer,
        }
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        out.push_str(THETA_FIELDS[i]);
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        let h = self.hidden();
        match i {
            2 => vec![NN_ADAM_FEATURES + h, 4 * h],
            4 => vec![h, 4],
            _ => vec![self.fields()[i].len()],
        }
    }
}

/// State of [`NnAdam`]'s inner optimizer.
#[derive(Debug, Clone)]
pub struct NnAdamState<P: Params> {
    /// Current parameters.
    pub params: P,
    /// First moment.
    pub m: P,
    /// Second moment.
    pub rms: P,
    /// Scaled `[lr, β1, β2, ε]` of each tensor, 4 per leaf.
    pub per_layer: Vec<P::Scalar>,
    /// LSTM hidden state, `H` per leaf.
    pub hidden: Vec<P::Scalar>,
    /// LSTM cell state, `H` per leaf.
    pub cell: Vec<P::Scalar>,
    /// Updates applied so far.
    pub iteration: usize,
}

/// Leaves: the parameters, `m`, `rms`, then `per_layer`, `hidden`, `cell` as one leaf each.
impl<P: Params> Params for NnAdamState<P> {
    type Scalar = P::Scalar;
    fn num_leaves(&self) -> usize {
        3 * self.params.num_leaves() + 3
    }
    fn leaf(&self, i: usize) -> &[P::Scalar] {
        let k = self.params.num_leaves();
        match i / k.max(1) {
            _ if i >= 3 * k => match i - 3 * k {
                0 => &self.per_layer,
                1 => &self.hidden,
                _ => &self.cell,
            },
            0 => self.params.leaf(i),
            1 => self.m.leaf(i - k),
            _ => self.rms.leaf(i - 2 * k),
        }
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [P::Scalar] {
        let k = self.params.num_leaves();
        match i / k.max(1) {
            _ if i >= 3 * k => match i - 3 * k {
                0 => &mut self.per_layer,
                1 => &mut self.hidden,
                _ => &mut self.cell,
            },
            0 => self.params.leaf_mut(i),
            1 => self.m.leaf_mut(i - k),
            _ => self.rms.leaf_mut(i - 2 * k),
        }
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        let k = self.params.num_leaves();
        if i >= 3 * k {
            out.push_str(["per_layer", "hidden", "cell"][i - 3 * k]);
        } else {
            crate::params::write_field_leaf_name(
                out,
                ["params", "m", "rms"][i / k],
                &self.params,
                i % k,
            );
        }
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        let k = self.params.num_leaves();
        if i >= 3 * k {
            vec![self.leaf(i).len()]
        } else {
            self.params.leaf_shape(i % k)
        }
    }
}

/// `½·clip(ln(1e-8 + |v|), −5, 5)`.
fn clip_log_abs<S: Real>(v: S) -> S {
    clip((S::from_f64(1e-8) + v.abs()).ln(), -5.0, 5.0) * S::from_f64(0.5)
}

fn lr_inv<S: Real>(x: S) -> S {
    clip((S::from_f64(10.0) * x).exp(), 1e-8, 1e3)
}
fn eps_inv<S: Real>(x: S) -> S {
    clip((S::from_f64(10.0) * x).exp(), 1e-11, 1e4)
}
fn beta_inv<S: Real>(x: S) -> S {
    S::from_f64(1.0) - clip(S::from_f64(10.0) * x, -10.0, 0.0).exp()
}
fn log_fwd<S: Real>(x: S) -> S {
    S::from_f64(0.1) * x.ln()
}
fn beta_fwd<S: Real>(x: S) -> S {
    S::from_f64(0.1) * (S::from_f64(1.0) - x).ln()
}

/// Partial sums a tensor's statistics keep (one per vector lane).
const LANES: usize = 8;

/// Elements of a tensor [`NnAdam`] sums in one block (4 arrays of them stay in L1).
const STAT_BLOCK: usize = 2048;

/// One block of the parameters, moments, second moments and gradient, as the zipped
/// chunks give them.
type BlockSlices<'a, S> = (((&'a mut [S], &'a mut [S]), &'a mut [S]), &'a [S]);

/// `Σ f(x_i)` with 8 partial sums (vector lanes) over chunks, the tail added last:
/// one accumulator is a serial chain that cannot vectorize, and indexing through a
/// closure (a bounds check per element) stops the loop from vectorizing.
#[inline(always)]
fn sum_by8<S: Real>(x: &[S], f: impl Fn(S) -> S) -> S {
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(S::zero(), |t, &a| t + f(a));
    let mut acc = [S::zero(); LANES];
    for ch in chunks {
        for (s, &a) in acc.iter_mut().zip(ch) {
            *s += f(a);
        }
    }
    if S::LANES == 1 {
        // Through memory: otherwise the vectorizer shapes the loop for the fold below
        // (half-width adds and shuffles) instead of one full-width add per chunk.
        acc = std::hint::black_box(acc);
    }
    total(&acc) + tail
}

/// The sum of partial sums, pairwise.
fn total<S: Real>(s: &[S; LANES]) -> S {
    ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]))
}

impl LearnedOptimizer for NnAdam {
    type Theta<S: Real> = NnAdamTheta<S>;
    type State<P: Params> = NnAdamState<P>;

    /// LSTM weights from haiku's default (a normal truncated to ±2σ, σ = 1/√(19 + H)),
    /// zero biases, zero initial LSTM state, zero output layer, and the scaled initial
    /// hyperparameters. (lopt's random stream differs from JAX's; a θ made by the library
    /// is read with [`FlaxTheta::from_flax`].)
    fn init(&self, key: Key) -> NnAdamTheta<f32> {
        let h = self.lstm_hidden_size;
        let fan_in = NN_ADAM_FEATURES + h;
        let mut lstm_w = vec![0.0f32; fan_in * 4 * h];
        key.fold_in(0)
            .fill_truncated_normal(&mut lstm_w, 1.0 / (fan_in as f32).sqrt());
        let f = |x: f64| x as f32;
        NnAdamTheta {
            init_hidden: vec![0.0; h],
            init_cell: vec![0.0; h],
            lstm_w,
            lstm_b: vec![0.0; 4 * h],
            out_w: vec![0.0; 4 * h],
            out_b: vec![0.0; 4],
            per_layer: vec![
                log_fwd(f(self.initial_learning_rate)),
                beta_fwd(f(self.initial_beta1)),
                beta_fwd(f(self.initial_beta2)),
                log_fwd(f(self.initial_epsilon)),
            ],
        }
    }

    fn cast_theta<T: Real, S: Real>(&self, theta: &NnAdamTheta<T>) -> NnAdamTheta<S> {
        theta.cast()
    }

    fn init_state<P: Params>(
        &self,
        theta: &NnAdamTheta<P::Scalar>,
        params: P,
        _num_steps: Option<usize>,
    ) -> NnAdamState<P> {
        let k = params.num_leaves();
        let m = params.zeros_like();
        let rms = params.zeros_like();
        NnAdamState {
            params,
            m,
            rms,
            per_layer: theta.per_layer.repeat(k),
            hidden: theta.init_hidden.repeat(k),
            cell: theta.init_cell.repeat(k),
            iteration: 0,
        }
    }

    fn update<P: Params>(
        &self,
        theta: &NnAdamTheta<P::Scalar>,
        state: &mut NnAdamState<P>,
        grad: &P,
        _loss: P::Scalar,
    ) {
        crate::optimizers::assert_leaf_lengths(
            "NnAdam::update: gradient vs params",
            &state.params,
            grad,
        );
        let h = theta.hidden();
        assert!(
            theta.lstm_w.len() == (NN_ADAM_FEATURES + h) * 4 * h
                && theta.lstm_b.len() == 4 * h
                && theta.out_w.len() == 4 * h
                && theta.out_b.len() == 4
                && theta.per_layer.len() == 4,
            "NnAdam::update: θ's shapes do not match its hidden size {h}"
        );
        let c = P::Scalar::from_f64;
        let one = c(1.0);
        let mut x_and_h = vec![c(0.0); NN_ADAM_FEATURES + h];
        let mut gates = vec![c(0.0); 4 * h];
        let mut blocks = Vec::new();
        let mut gc = Vec::with_capacity(STAT_BLOCK);
        for li in 0..grad.num_leaves() {
            let pl = &mut state.per_layer[4 * li..4 * li + 4];
            let (x_lr, x_b1, x_b2, x_eps) = (pl[0], pl[1], pl[2], pl[3]);
            let (lr, beta1, b2, eps) =
                (lr_inv(x_lr), beta_inv(x_b1), beta_inv(x_b2), eps_inv(x_eps));
            let rank = state.params.leaf_shape(li).len();
            let g_raw = grad.leaf(li);
            let n = g_raw.len();
            // One pass over the tensor from memory, in blocks of `STAT_BLOCK` elements
            // that stay in L1: per block, the moments' update with the sums of m, v, p,
            // g and |g| (8 partial sums, vector lanes), then over the same block the
            // squared deviations from the block's means and the Adam-like step (the
            // features read the parameters before it). The variances combine the
            // blocks' exactly as the two-pass formula does
            // (Σ(x − x̄)² = Σ_b [Σ_b(x − x̄_b)² + n_b·(x̄_b − x̄)²], Chan et al.); a tensor
            // of one block gets the two-pass result bit for bit.
            let scale = lr * (one + eps);
            let (m, v) = (state.m.leaf_mut(li), state.rms.leaf_mut(li));
            let p = state.params.leaf_mut(li);
            // A block's moments and step, and its five sums and four sums of squared
            // deviations from its means. Blocks are independent: the same on any thread.
            let block = |gc: &mut Vec<P::Scalar>, (((p, m), v), g): BlockSlices<P::Scalar>| {
                let nb = g.len();
                // Simple loops over the block (in L1 after the first), each of which
                // vectorizes: the clipped gradient and the moments, the five sums, the
                // four sums of squared deviations, the Adam-like step.
                gc.clear();
                gc.extend(g.iter().map(|&x| clip(x, -1000.0, 1000.0)));
                for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(&gc[..]) {
                    *m = beta1 * *m + (one - beta1) * g;
                    *v = b2 * *v + (one - b2) * (g * g);
                }
                let (m, v) = (&*m, &*v);
                let st = [
                    sum_by8(m, |x| x),
                    sum_by8(v, |x| x),
                    sum_by8(p, |x| x),
                    sum_by8(gc, |x| x),
                    sum_by8(gc, |x| x.abs()),
                ];
                let nbs = c(nb as f64);
                let [bm, bv, bp, bg, _] = st.map(|x| x / nbs);
                let sq = |x: P::Scalar| x * x;
                let dev = [
                    sum_by8(m, |x| sq(x - bm)),
                    sum_by8(v, |x| sq(x - bv)),
                    sum_by8(p, |x| sq(x - bp)),
                    sum_by8(gc, |x| sq(x - bg)),
                ];
                // The Adam-like step.
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    *p -= scale * one / (eps + (v + c(1e-10)).sqrt()) * m;
                }
                (st, dev, nbs)
            };
            blocks.clear();
            if par_worthy::<P::Scalar>(n) {
                // A large tensor's blocks on the pool (memory-bound on one core), their
                // sums combined below in block order as on one thread.
                use rayon::prelude::*;
                p.par_chunks_mut(STAT_BLOCK)
                    .zip(m.par_chunks_mut(STAT_BLOCK))
                    .zip(v.par_chunks_mut(STAT_BLOCK))
                    .zip(g_raw.par_chunks(STAT_BLOCK))
                    .map_init(|| Vec::with_capacity(STAT_BLOCK), block)
                    .collect_into_vec(&mut blocks);
            } else {
                let chunks = p
                    .chunks_mut(STAT_BLOCK)
                    .zip(m.chunks_mut(STAT_BLOCK))
                    .zip(v.chunks_mut(STAT_BLOCK))
                    .zip(g_raw.chunks(STAT_BLOCK));
                blocks.extend(chunks.map(|b| block(&mut gc, b)));
            }
            let mut sums = [c(0.0); 5];
            let mut m2 = [c(0.0); 4];
            for (st, dev, _) in &blocks {
                for (a, &b) in sums.iter_mut().zip(st) {
                    *a += b;
                }
                for (a, &d) in m2.iter_mut().zip(dev) {
                    *a += d;
                }
            }
            let nn = c(n as f64);
            let [mean_m, mean_v, mean_p, mean_g, mean_gabs] = sums.map(|s| s / nn);
            if blocks.len() > 1 {
                let means = [mean_m, mean_v, mean_p, mean_g];
                for (st, _, nbs) in &blocks {
                    for q in 0..4 {
                        let d = st[q] / *nbs - means[q];
                        m2[q] += *nbs * d * d;
                    }
                }
            }
            let [var_m, var_v, var_p, var_g] = m2.map(|s| s / nn);
            let pm = |b: bool| if b { one } else { -one };
            let fifth = c(0.2);
            let features = [
                clip(x_b1, -5.0, 5.0) * fifth,
                clip(x_b2, -5.0, 5.0) * fifth,
                clip(x_eps, -5.0, 5.0) * fifth,
                pm(rank == 1),
                pm(rank == 0),
                clip(x_lr, -5.0, 5.0) * fifth,
                clip_log_abs(mean_g),
                sign(mean_g),
                clip_log_abs(mean_gabs),
                clip_log_abs(mean_m),
                sign(mean_m),
                clip_log_abs(mean_p),
                sign(mean_p),
                clip_log_abs(mean_v),
                sign(mean_v),
                clip_log_abs(var_g),
                clip_log_abs(var_m),
                clip_log_abs(var_p),
                clip_log_abs(var_v),
            ];
            // haiku's LSTM on [features, h].
            let (hs, cs) = (
                &mut state.hidden[li * h..(li + 1) * h],
                &mut state.cell[li * h..(li + 1) * h],
            );
            x_and_h[..NN_ADAM_FEATURES].copy_from_slice(&features);
            x_and_h[NN_ADAM_FEATURES..].copy_from_slice(hs);
            gates.copy_from_slice(&theta.lstm_b);
            for (r, &x) in x_and_h.iter().enumerate() {
                let row = &theta.lstm_w[r * 4 * h..(r + 1) * 4 * h];
                for (gt, &w) in gates.iter_mut().zip(row) {
                    *gt += x * w;
                }
            }
            for j in 0..h {
                let (i, g, f, o) = (gates[j], gates[h + j], gates[2 * h + j], gates[3 * h + j]);
                let f = sigmoid(f + one);
                let cj = f * cs[j] + sigmoid(i) * g.tanh();
                cs[j] = cj;
                hs[j] = sigmoid(o) * cj.tanh();
            }
            // Controls: x ← fwd(inv(x + output_scale·(W·h + b))).
            let mut deltas = [
                theta.out_b[0],
                theta.out_b[1],
                theta.out_b[2],
                theta.out_b[3],
            ];
            for (j, &hj) in hs.iter().enumerate() {
                for (d, &w) in deltas.iter_mut().zip(&theta.out_w[4 * j..4 * j + 4]) {
                    *d += hj * w;
                }
            }
            let scale = c(self.output_scale);
            let decay = c(self.decay_strength);
            for (q, d) in deltas.iter().enumerate() {
                let mut x = pl[q] + *d * scale;
                if self.decay_strength > 0.0 {
                    x -= (x - theta.per_layer[q]) * decay;
                }
                pl[q] = match q {
                    0 => log_fwd(lr_inv(x)),
                    3 => log_fwd(eps_inv(x)),
                    _ => beta_fwd(beta_inv(x)),
                };
            }
        }
        state.iteration += 1;
    }

    fn params<'s, P: Params>(&self, state: &'s NnAdamState<P>) -> &'s P {
        &state.params
    }
    fn set_params<P: Params>(&self, state: &mut NnAdamState<P>, params: P) {
        state.params = params;
    }
    fn iteration<P: Params>(&self, state: &NnAdamState<P>) -> usize {
        state.iteration
    }
    fn name(&self) -> String {
        "NnAdam".into()
    }
}

/// The library's θ: `lstm_init_state/{cell,hidden}` `[1, H]`,
/// `rnn_params/"rnn/linear"/{b,w}`, `rnn_to_controls_params/rnn_to_controls/{b,w}` and the
/// four `per_layer_*` scalars.
impl<S: Real> FlaxTheta for NnAdamTheta<S> {
    type Config = NnAdam;
    fn to_flax(&self) -> FlaxValue {
        let h = self.hidden();
        FlaxValue::map([
            (
                "lstm_init_state",
                FlaxValue::map([
                    ("cell", arr(vec![1, h], &self.init_cell)),
                    ("hidden", arr(vec![1, h], &self.init_hidden)),
                ]),
            ),
            ("per_layer_beta1", arr(vec![], &self.per_layer[1..2])),
            ("per_layer_beta2", arr(vec![], &self.per_layer[2..3])),
            ("per_layer_epsilon", arr(vec![], &self.per_layer[3..4])),
            ("per_layer_lr", arr(vec![], &self.per_layer[0..1])),
            (
                "rnn_params",
                FlaxValue::map([(
                    "rnn/linear",
                    FlaxValue::map([
                        ("b", arr(vec![4 * h], &self.lstm_b)),
                        ("w", arr(vec![NN_ADAM_FEATURES + h, 4 * h], &self.lstm_w)),
                    ]),
                )]),
            ),
            (
                "rnn_to_controls_params",
                FlaxValue::map([(
                    "rnn_to_controls",
                    FlaxValue::map([
                        ("b", arr(vec![4], &self.out_b)),
                        ("w", arr(vec![h, 4], &self.out_w)),
                    ]),
                )]),
            ),
        ])
    }

    fn from_flax(config: &NnAdam, v: &FlaxValue) -> Result<Self, FlaxMsgpackError> {
        let h = config.lstm_hidden_size;
        let scalar = |k: &str| v.real_array::<S>(&[k], &[]).map(|a| a[0]);
        Ok(NnAdamTheta {
            init_hidden: v.real_array(&["lstm_init_state", "hidden"], &[1, h])?,
            init_cell: v.real_array(&["lstm_init_state", "cell"], &[1, h])?,
            lstm_w: v.real_array(
                &["rnn_params", "rnn/linear", "w"],
                &[NN_ADAM_FEATURES + h, 4 * h],
            )?,
            lstm_b: v.real_array(&["rnn_params", "rnn/linear", "b"], &[4 * h])?,
            out_w: v.real_array(&["rnn_to_controls_params", "rnn_to_controls", "w"], &[h, 4])?,
            out_b: v.real_array(&["rnn_to_controls_params", "rnn_to_controls", "b"], &[4])?,
            per_layer: vec![
                scalar("per_layer_lr")?,
                scalar("per_layer_beta1")?,
                scalar("per_layer_beta2")?,
                scalar("per_layer_epsilon")?,
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The LSTM's hidden state after one update of a tensor of 3 statistics blocks and a
    /// tail (`2·STAT_BLOCK + 1003` elements, mean far from 0 so a variance combined from
    /// the blocks' without the `n_b·(x̄_b − x̄)²` terms is wrong) against the features and
    /// LSTM step written here in `f64`, two-pass. Catches: the block means' correction
    /// left out (tried: `hidden[0]` 0.0239 instead of −0.0176).
    #[test]
    fn multi_block_statistics_match_two_pass_f64() {
        let opt = NnAdam::default();
        let theta = opt.init(Key::new(3));
        let n = 2 * STAT_BLOCK + 1003;
        let mut p = vec![0.0f32; n];
        let mut g = vec![0.0f32; n];
        Key::new(4).fill_normal(&mut p);
        Key::new(5).fill_normal(&mut g);
        // Means that drift along the tensor: the blocks' means differ.
        for (i, (p, g)) in p.iter_mut().zip(&mut g).enumerate() {
            let t = i as f32 / n as f32;
            *p = 0.1 * *p + 2.0 * t;
            *g = 0.01 * *g + 0.05 * t;
        }
        let mut state = opt.init_state(&theta, p.clone(), None);
        opt.update(&theta, &mut state, &g, 0.0);

        // f64, as the library writes it.
        let f = |x: f32| x as f64;
        let x: Vec<f64> = theta.per_layer.iter().map(|&v| f(v)).collect();
        let b1 = 1.0 - (10.0 * x[1]).clamp(-10.0, 0.0).exp();
        let b2 = 1.0 - (10.0 * x[2]).clamp(-10.0, 0.0).exp();
        let g: Vec<f64> = g.iter().map(|&v| f(v).clamp(-1000.0, 1000.0)).collect();
        let m: Vec<f64> = g.iter().map(|&g| (1.0 - b1) * g).collect();
        let v: Vec<f64> = g.iter().map(|&g| (1.0 - b2) * g * g).collect();
        let p: Vec<f64> = p.iter().map(|&v| f(v)).collect();
        let mean = |a: &[f64]| a.iter().sum::<f64>() / n as f64;
        let var = |a: &[f64]| {
            let mu = mean(a);
            a.iter().map(|x| (x - mu) * (x - mu)).sum::<f64>() / n as f64
        };
        let cla = |v: f64| 0.5 * (1e-8 + v.abs()).ln().clamp(-5.0, 5.0);
        let gabs: Vec<f64> = g.iter().map(|x| x.abs()).collect();
        let s = |v: f64| v.signum();
        let c5 = |v: f64| v.clamp(-5.0, 5.0) * 0.2;
        let feats = [
            c5(x[1]),
            c5(x[2]),
            c5(x[3]),
            1.0,
            -1.0,
            c5(x[0]),
            cla(mean(&g)),
            s(mean(&g)),
            cla(mean(&gabs)),
            cla(mean(&m)),
            s(mean(&m)),
            cla(mean(&p)),
            s(mean(&p)),
            cla(mean(&v)),
            s(mean(&v)),
            cla(var(&g)),
            cla(var(&m)),
            cla(var(&p)),
            cla(var(&v)),
        ];
        let h = opt.lstm_hidden_size;
        let mut gates: Vec<f64> = theta.lstm_b.iter().map(|&v| f(v)).collect();
        // Initial hidden state is zero: only the feature rows contribute.
        for (r, &xr) in feats.iter().enumerate() {
            for (j, gt) in gates.iter_mut().enumerate() {
                *gt += xr * f(theta.lstm_w[r * 4 * h + j]);
            }
        }
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        for j in 0..h {
            let cj = sig(gates[j]) * gates[h + j].tanh();
            let hj = sig(gates[3 * h + j]) * cj.tanh();
            let got = f(state.hidden[j]);
            assert!(
                (got - hj).abs() <= 1e-5 * (1.0 + hj.abs()),
                "hidden[{j}]: {got} vs {hj}"
            );
        }
    }
}
