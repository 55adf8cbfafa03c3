//! `RnnMlpLOpt`: a per-tensor LSTM over summary statistics that conditions a per-parameter
//! MLP (the JAX library's `RNNMLPLOpt`, `learned_optimizers/rnn_mlp_lopt.py`).

use super::flax_msgpack::{arr, FlaxMsgpackError, FlaxTheta, FlaxValue};
use super::parts::{
    clip, ema_interleaved, fold_fixed_inputs, linear, normalized_mlp, params_then_vectors, rsqrt,
    sign, strided_column, sum8, BlockMlp, LayerRef,
};
use super::LearnedOptimizer;
use crate::error::{Error, Result};
use crate::kernels::alloc::ThreadBuffer;
use crate::kernels::small_rows::small_rows_product;
use crate::key::Key;
use crate::params::Params;
use crate::scalar::Real;

/// Per-tensor summary features besides the two conditioning vectors.
const TENSOR_FEATURES: usize = 18;
/// Per-parameter features besides the LSTM's projection (with five decays).
const FF_FEATURES_BASE: usize = 3 + 11 + 3;
const TIMESCALES: [f64; 11] = [
    1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0,
];

/// The library's `RNNMLPLOpt` (defaults: `step_multiplier = magnitude_rate = 0.001`,
/// `hidden_size = 32`, `hidden_layer = 2`, `from_mlp_size = 16`, `from_lstm_size = 18`,
/// `lstm_to_ff = 17`, `lstm_hidden_size = 64`, decays `(0.5, 0.9, 0.99, 0.999, 0.9999)`).
///
/// Per training step: gradients are clipped elementwise by a running estimate of their
/// scale (`_DynamicGradientClipper`: `±10·s/(1 − 0.99ᵗ)`, `s` an EMA of
/// `√(1e-8 + mean over tensors of mean g²)`); momenta and second moments at every decay
/// are updated; each tensor's 18 statistics (log-magnitudes, signs and variances of the
/// momenta, second moments and weights; weight and gradient norms; rank and log shape;
/// the loss normalized by its running mean and variance, and the (never updated here)
/// validation-loss feature), with the vector the per-parameter MLP sent last step and the
/// vector the LSTM sent to itself, feed haiku's LSTM; its output, projected, joins each
/// element's features (`g`, `p`, `ln(|p| + 1e-8)`, momenta, second moments,
/// `m·rsqrt(v + 1e-6)`, `rsqrt(v + 1e-6)`, normalized over the tensor; `sin(t/(τπ))` of
/// the step; log tensor count, log weight norm, log size) in the per-parameter MLP,
/// whose outputs `(d, s, msg…)` give `p ← p − step_multiplier·d·exp(magnitude_rate·s)` and
/// the message back to the LSTM (the mean of `msg` over the tensor).
///
/// The library's update also has an `is_valid` mode that only records a validation loss;
/// lopt's [`Optimizer`](crate::Optimizer) has no such flag, so the validation-loss
/// feature stays at its initial value, as in the library's training-only use. The loss
/// passed to `update` is required (the library raises without it).
#[derive(Debug, Clone, PartialEq)]
pub struct RnnMlpLOpt {
    /// Multiplier of the step.
    pub step_multiplier: f64,
    /// Multiplier of the magnitude output inside the exponential.
    pub magnitude_rate: f64,
    /// Width of the per-parameter MLP's hidden layers.
    pub hidden_size: usize,
    /// Number of those hidden layers.
    pub hidden_layer: usize,
    /// Size of the message from the MLP to the LSTM.
    pub from_mlp_size: usize,
    /// Size of the LSTM's message to its next step.
    pub from_lstm_size: usize,
    /// Size of the LSTM's projection into the MLP.
    pub lstm_to_ff: usize,
    /// Width of the LSTM.
    pub lstm_hidden_size: usize,
    /// Decays of the momentum and second-moment accumulators.
    pub decays: Vec<f64>,
}

impl Default for RnnMlpLOpt {
    fn default() -> Self {
        RnnMlpLOpt {
            step_multiplier: 0.001,
            magnitude_rate: 0.001,
            hidden_size: 32,
            hidden_layer: 2,
            from_mlp_size: 16,
            from_lstm_size: 18,
            lstm_to_ff: 17,
            lstm_hidden_size: 64,
            decays: vec![0.5, 0.9, 0.99, 0.999, 0.9999],
        }
    }
}

impl RnnMlpLOpt {
    /// `Ok` when the multipliers are finite, every size is positive and every decay lies
    /// in `[0, 1)`.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: &str| Err(Error::InvalidArgument(format!("RnnMlpLOpt: {s}")));
        if !(self.step_multiplier.is_finite() && self.magnitude_rate.is_finite()) {
            return bad("multipliers must be finite");
        }
        if [
            self.hidden_size,
            self.from_mlp_size,
            self.from_lstm_size,
            self.lstm_to_ff,
            self.lstm_hidden_size,
        ]
        .contains(&0)
        {
            return bad("sizes must be positive");
        }
        if self.decays.is_empty() || self.decays.iter().any(|d| !(0.0..1.0).contains(d)) {
            return bad("decays must be non-empty and lie in [0, 1)");
        }
        Ok(())
    }

    fn rnn_in(&self) -> usize {
        TENSOR_FEATURES + self.from_lstm_size + self.from_mlp_size
    }

    fn ff_in(&self) -> usize {
        FF_FEATURES_BASE + 4 * self.decays.len() + self.lstm_to_ff
    }

    fn mlp_widths(&self) -> Vec<usize> {
        let mut w = vec![self.ff_in()];
        w.extend(std::iter::repeat_n(self.hidden_size, self.hidden_layer));
        w.push(2 + self.from_mlp_size);
        w
    }
}

/// θ of [`RnnMlpLOpt`]; weights row-major `[in, out]` as haiku stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct RnnMlpLOptTheta<S> {
    /// `initial_from_lstm`.
    pub initial_from_lstm: Vec<S>,
    /// `initial_from_mlp`.
    pub initial_from_mlp: Vec<S>,
    /// `lstm_init_state.hidden`.
    pub init_hidden: Vec<S>,
    /// `lstm_init_state.cell`.
    pub init_cell: Vec<S>,
    /// `rnn_params["rnn/linear"]` `(w, b)`.
    pub lstm: (Vec<S>, Vec<S>),
    /// `rnn_to_ff_params["rnn_to_ff"]` `(w, b)`.
    pub rnn_to_ff: (Vec<S>, Vec<S>),
    /// `rnn_to_in_params["rnn_to_in"]` `(w, b)`.
    pub rnn_to_in: (Vec<S>, Vec<S>),
    /// `ffmod_params["mlp/~/linear_i"]` `(w, b)`.
    pub mlp: Vec<(Vec<S>, Vec<S>)>,
}

impl<S: Real> RnnMlpLOptTheta<S> {
    fn leaves(&self) -> Vec<&Vec<S>> {
        let mut v = vec![
            &self.initial_from_lstm,
            &self.initial_from_mlp,
            &self.init_hidden,
            &self.init_cell,
            &self.lstm.0,
            &self.lstm.1,
            &self.rnn_to_ff.0,
            &self.rnn_to_ff.1,
            &self.rnn_to_in.0,
            &self.rnn_to_in.1,
        ];
        for (w, b) in &self.mlp {
            v.push(w);
            v.push(b);
        }
        v
    }
    fn leaves_mut(&mut self) -> Vec<&mut Vec<S>> {
        let mut v = vec![
            &mut self.initial_from_lstm,
            &mut self.initial_from_mlp,
            &mut self.init_hidden,
            &mut self.init_cell,
            &mut self.lstm.0,
            &mut self.lstm.1,
            &mut self.rnn_to_ff.0,
            &mut self.rnn_to_ff.1,
            &mut self.rnn_to_in.0,
            &mut self.rnn_to_in.1,
        ];
        for (w, b) in &mut self.mlp {
            v.push(w);
            v.push(b);
        }
        v
    }
    fn cast<T: Real>(&self) -> RnnMlpLOptTheta<T> {
        let c = |v: &Vec<S>| v.iter().map(|x| T::from_f64(x.lane(0))).collect::<Vec<T>>();
        let p = |(w, b): &(Vec<S>, Vec<S>)| (c(w), c(b));
        RnnMlpLOptTheta {
            initial_from_lstm: c(&self.initial_from_lstm),
            initial_from_mlp: c(&self.initial_from_mlp),
            init_hidden: c(&self.init_hidden),
            init_cell: c(&self.init_cell),
            lstm: p(&self.lstm),
            rnn_to_ff: p(&self.rnn_to_ff),
            rnn_to_in: p(&self.rnn_to_in),
            mlp: self.mlp.iter().map(p).collect(),
        }
    }
}

const THETA_NAMES: [&str; 10] = [
    "initial_from_lstm",
    "initial_from_mlp",
    "init_hidden",
    "init_cell",
    "lstm.w",
    "lstm.b",
    "rnn_to_ff.w",
    "rnn_to_ff.b",
    "rnn_to_in.w",
    "rnn_to_in.b",
];

/// Leaves in the order of the fields (each flat), then `mlp.w{i}`, `mlp.b{i}`.
impl<S: Real> Params for RnnMlpLOptTheta<S> {
    type Scalar = S;
    fn num_leaves(&self) -> usize {
        10 + 2 * self.mlp.len()
    }
    fn leaf(&self, i: usize) -> &[S] {
        self.leaves()[i]
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [S] {
        self.leaves_mut().swap_remove(i)
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        if i < 10 {
            out.push_str(THETA_NAMES[i]);
        } else {
            let k = (i - 10) / 2;
            let wb = if (i - 10).is_multiple_of(2) { "w" } else { "b" };
            out.push_str(&format!("mlp.{wb}{k}"));
        }
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        vec![self.leaf(i).len()]
    }
}

/// Running mean and variance of a loss (the library's `_LossNormalizer`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossNormalizerState<S> {
    /// EMA of the loss.
    pub mean: S,
    /// EMA of the squared deviation from the running mean.
    pub var: S,
    /// Updates so far (a scalar: lanes count their own).
    pub updates: S,
}

/// State of [`RnnMlpLOpt`]'s inner optimizer. Accumulators are concatenated over the
/// leaves, element-major with the decays innermost.
#[derive(Debug, Clone)]
pub struct RnnMlpLOptState<P: Params> {
    /// Current parameters.
    pub params: P,
    /// Momenta, one per decay per element.
    pub m: Vec<P::Scalar>,
    /// Second moments, one per decay per element.
    pub rms: Vec<P::Scalar>,
    /// LSTM hidden state, `H` per tensor.
    pub hidden: Vec<P::Scalar>,
    /// LSTM cell state, `H` per tensor.
    pub cell: Vec<P::Scalar>,
    /// The MLP's message to the LSTM, `from_mlp_size` per tensor.
    pub from_mlp: Vec<P::Scalar>,
    /// The LSTM's message to its next step, `from_lstm_size`.
    pub from_lstm: Vec<P::Scalar>,
    /// `[train mean, train var, valid mean, valid var, clip scale]`.
    pub scalars: Vec<P::Scalar>,
    /// Updates applied so far.
    pub iteration: usize,
    /// The updates applied in each lane (lanes of a group restart their tasks at
    /// different times), which every count of the update derives from: the training-loss
    /// normalizer's updates and the dynamic clipper's step (both `step + 1` when used)
    /// and the step features (`step`). The validation normalizer's count is always 0
    /// (lopt has no validation mode). Equal to `iteration` in `f32`.
    pub step: P::Scalar,
}

// Leaves: the parameters, then one each for the statistics and the LSTM, then the step.
params_then_vectors!(RnnMlpLOptState {
    m,
    rms,
    hidden,
    cell,
    from_mlp,
    from_lstm,
    scalars
} scalars { step });

/// `clip(ln(1e-8 + |v|), −5, 5)` (no ½ here, unlike NNAdam's).
fn clip_log_abs<S: Real>(v: S) -> S {
    clip((S::from_f64(1e-8) + v.abs()).ln(), -5.0, 5.0)
}

/// The library's `_LossNormalizer.weight_loss`.
fn weight_loss<S: Real>(decay: f64, st: &LossNormalizerState<S>, loss: S) -> S {
    let c = S::from_f64;
    let corr = c(1.0) / (c(1.0) - c(decay).powf(st.updates) + c(1e-8));
    let (mean, var) = (st.mean * corr, st.var * corr);
    clip((loss - mean) * rsqrt(var + c(1e-8)), -5.0, 5.0)
}

/// `(mean, mean squared deviation, sum of squares)` of `xs`.
fn stats<S: Real>(xs: &[S]) -> (S, S, S) {
    let n = S::from_f64(xs.len() as f64);
    let mean = sum8(xs, |x| x) / n;
    let var = sum8(xs, |x| (x - mean) * (x - mean)) / n;
    (mean, var, sum8(xs, |x| x * x))
}

impl LearnedOptimizer for RnnMlpLOpt {
    type Theta<S: Real> = RnnMlpLOptTheta<S>;
    type State<P: Params> = RnnMlpLOptState<P>;

    /// Linear and MLP weights from haiku's truncated normal (σ = 1/√fan_in, cut at ±2σ),
    /// zero biases, zero initial LSTM state, and the two initial messages from a unit
    /// truncated normal (haiku's `VarianceScaling()` of a vector) — lopt's random
    /// stream, not JAX's.
    fn init(&self, key: Key) -> RnnMlpLOptTheta<f32> {
        let h = self.lstm_hidden_size;
        let lin = |k: u64, din: usize, dout: usize| {
            let mut w = vec![0.0f32; din * dout];
            key.fold_in(k)
                .fill_truncated_normal(&mut w, 1.0 / (din as f32).sqrt());
            (w, vec![0.0f32; dout])
        };
        let vec = |k: u64, n: usize| {
            let mut v = vec![0.0f32; n];
            key.fold_in(k).fill_truncated_normal(&mut v, 1.0);
            v
        };
        let widths = self.mlp_widths();
        RnnMlpLOptTheta {
            initial_from_lstm: vec(0, self.from_lstm_size),
            initial_from_mlp: vec(1, self.from_mlp_size),
            init_hidden: vec![0.0; h],
            init_cell: vec![0.0; h],
            lstm: lin(2, self.rnn_in() + h, 4 * h),
            rnn_to_ff: lin(3, h, self.lstm_to_ff),
            rnn_to_in: lin(4, h, self.from_lstm_size),
            mlp: widths
                .windows(2)
                .enumerate()
                .map(|(i, io)| lin(10 + i as u64, io[0], io[1]))
                .collect(),
        }
    }

    fn cast_theta<T: Real, S: Real>(&self, theta: &RnnMlpLOptTheta<T>) -> RnnMlpLOptTheta<S> {
        theta.cast()
    }

    fn init_state<P: Params>(
        &self,
        theta: &RnnMlpLOptTheta<P::Scalar>,
        params: P,
        _num_steps: Option<usize>,
    ) -> RnnMlpLOptState<P> {
        let c = P::Scalar::from_f64;
        let k = params.num_leaves();
        let n = params.num_elements();
        let nd = self.decays.len();
        RnnMlpLOptState {
            params,
            m: vec![c(0.0); n * nd],
            rms: vec![c(0.0); n * nd],
            hidden: theta.init_hidden.repeat(k),
            cell: theta.init_cell.repeat(k),
            from_mlp: theta.initial_from_mlp.repeat(k),
            from_lstm: theta.initial_from_lstm.clone(),
            // The clipper starts at 1·(1 − 0.99).
            scalars: vec![c(0.0), c(0.0), c(0.0), c(0.0), c(1.0) * c(1.0 - 0.99)],
            iteration: 0,
            step: c(0.0),
        }
    }

    fn update<P: Params>(
        &self,
        theta: &RnnMlpLOptTheta<P::Scalar>,
        state: &mut RnnMlpLOptState<P>,
        grad: &P,
        loss: P::Scalar,
    ) {
        crate::optimizers::assert_leaf_lengths(
            "RnnMlpLOpt::update: gradient vs params",
            &state.params,
            grad,
        );
        let c = P::Scalar::from_f64;
        let h = self.lstm_hidden_size;
        let (fm, fl, nd) = (self.from_mlp_size, self.from_lstm_size, self.decays.len());
        let widths = self.mlp_widths();
        let rnn_in = self.rnn_in();
        assert!(
            theta.lstm.0.len() == (rnn_in + h) * 4 * h
                && theta.lstm.1.len() == 4 * h
                && theta.rnn_to_ff.0.len() == h * self.lstm_to_ff
                && theta.rnn_to_in.0.len() == h * fl
                && theta.mlp.len() == widths.len() - 1
                && theta
                    .mlp
                    .iter()
                    .zip(widths.windows(2))
                    .all(|((w, b), io)| w.len() == io[0] * io[1] && b.len() == io[1]),
            "RnnMlpLOpt::update: θ's shapes do not match the configuration"
        );
        let k = grad.num_leaves();
        // Loss features (train normalizer decay 0.9, validation 0.95).
        let (tm, tv) = (state.scalars[0], state.scalars[1]);
        let new_mean = c(0.9) * tm + c(1.0 - 0.9) * loss;
        let d = new_mean - loss;
        let new_var = c(0.9) * tv + c(1.0 - 0.9) * (d * d);
        // The normalizer's count after this update, and the clipper's step (from 1).
        let updates = state.step + c(1.0);
        state.scalars[0] = new_mean;
        state.scalars[1] = new_var;
        let train = LossNormalizerState {
            mean: new_mean,
            var: new_var,
            updates,
        };
        let train_loss_feat = weight_loss(0.9, &train, loss);
        let vcorr = c(1.0) / (c(1.0) - c(0.95).powf(c(0.0)) + c(1e-8));
        let valid_loss = state.scalars[2] * vcorr;
        let valid_loss_feat = weight_loss(0.9, &train, valid_loss);
        // Dynamic gradient clipping.
        let snd = state.scalars[4];
        let alpha = 0.99;
        let clip_amount = (snd / (c(1.0) - c(alpha).powf(updates))) * c(10.0);
        let mut g_all: Vec<Vec<P::Scalar>> = Vec::with_capacity(k);
        // Each clipped gradient's sum of squares (8 partial sums: a single chain is a
        // serial add per element), also its `g_norm` feature below.
        let mut ss_gs = Vec::with_capacity(k);
        let mut avg_sq = c(0.0);
        for li in 0..k {
            let g: Vec<_> = grad
                .leaf(li)
                .iter()
                .map(|&x| x.max(-clip_amount).min(clip_amount))
                .collect();
            let s = sum8(&g, |x| x * x);
            avg_sq += s / c(g.len() as f64);
            ss_gs.push(s);
            g_all.push(g);
        }
        let avg_sq = avg_sq / c(k as f64);
        let new_snd = (c(1e-8) + avg_sq).sqrt();
        state.scalars[4] = snd * c(alpha) + new_snd * c(1.0 - alpha);
        // Accumulators.
        let decays: Vec<_> = self.decays.iter().map(|&d| c(d)).collect();
        let rms_decays: Vec<_> = decays.iter().map(|&d| clip(d, 0.0, 1.0)).collect();
        let mut off = 0;
        for g in &g_all {
            let span = off * nd..(off + g.len()) * nd;
            ema_interleaved(&mut state.m[span.clone()], g, &decays, |x| x);
            ema_interleaved(&mut state.rms[span], g, &rms_decays, |x| x * x);
            off += g.len();
        }
        // Per-tensor LSTM inputs, then the LSTM.
        // Every tensor's LSTM input (its features, then its hidden state) as a row.
        let mut x_and_h = vec![c(0.0); k * (rnn_in + h)];
        let mut off = 0;
        let mut lstm_out = vec![c(0.0); k * h];
        let mut ss_vs = Vec::with_capacity(k);
        for (li, g) in g_all.iter().enumerate() {
            let n = g.len();
            let ms = &state.m[off * nd..(off + n) * nd];
            let rs = &state.rms[off * nd..(off + n) * nd];
            let v = state.params.leaf(li);
            let shape = state.params.leaf_shape(li);
            let (mean_ms, var_ms, _) = stats(ms);
            let (mean_rms, var_rms, _) = stats(rs);
            let (mean_v, var_v, ss_v) = stats(v);
            ss_vs.push(ss_v);
            let ss_g = ss_gs[li];
            let mut dims = [c(1.0); 4];
            for (dj, &s) in dims.iter_mut().zip(&shape) {
                *dj = c(s as f64);
            }
            let shape_feat: Vec<_> = dims.iter().map(|&x| x.ln() - c(1.0)).collect();
            // Sorted names: from_lstm, from_mlp, g_norm, is_scalar, mean_ms_mag,
            // mean_ms_sign, mean_rms, mean_sign, mean_v_mag, mean_v_sign, norm_weight,
            // shape_0..3, train_loss_feat, valid_loss_feat, var_ms, var_rms, var_v.
            let mut feats: Vec<P::Scalar> = Vec::with_capacity(rnn_in);
            feats.extend_from_slice(&state.from_lstm);
            feats.extend_from_slice(&state.from_mlp[li * fm..(li + 1) * fm]);
            feats.push(clip_log_abs(ss_g.sqrt()));
            feats.push(if shape.is_empty() { c(1.0) } else { c(-1.0) });
            feats.push(clip_log_abs(mean_ms));
            feats.push(sign(mean_ms));
            feats.push(clip_log_abs(mean_rms));
            feats.push(sign(mean_rms));
            feats.push(clip_log_abs(mean_v));
            feats.push(sign(mean_v));
            feats.push(clip_log_abs(ss_v.sqrt()));
            feats.extend_from_slice(&shape_feat);
            feats.push(train_loss_feat);
            feats.push(valid_loss_feat);
            feats.push(clip_log_abs(var_ms));
            feats.push(clip_log_abs(var_rms));
            feats.push(clip_log_abs(var_v));
            debug_assert_eq!(feats.len(), rnn_in);
            let row = &mut x_and_h[li * (rnn_in + h)..(li + 1) * (rnn_in + h)];
            row[..rnn_in].copy_from_slice(&feats);
            row[rnn_in..].copy_from_slice(&state.hidden[li * h..(li + 1) * h]);
            off += n;
        }
        // The LSTM of every tensor: one product (the weights read once), then the gates
        // with the branch-free `exp` and `tanh` (for `f32`; the lanes' own otherwise).
        let mut gates = vec![c(0.0); k * 4 * h];
        let (lw, lb) = &theta.lstm;
        small_rows_product(&x_and_h, k, rnn_in + h, lw, lb, &mut gates);
        {
            use crate::kernels::vecmath::{sigmoid, tanh};
            for li in 0..k {
                let gate = &gates[li * 4 * h..(li + 1) * 4 * h];
                let (hs, cs) = (
                    &mut state.hidden[li * h..(li + 1) * h],
                    &mut state.cell[li * h..(li + 1) * h],
                );
                for j in 0..h {
                    let (i, gg, f, o) = (gate[j], gate[h + j], gate[2 * h + j], gate[3 * h + j]);
                    let f = sigmoid(f + c(1.0));
                    let cj = f * cs[j] + sigmoid(i) * tanh(gg);
                    cs[j] = cj;
                    hs[j] = sigmoid(o) * tanh(cj);
                }
                lstm_out[li * h..(li + 1) * h].copy_from_slice(hs);
            }
        }
        // The LSTM's message to itself: the mean over tensors of its projection.
        let mut proj = vec![c(0.0); fl];
        let mut new_from_lstm = vec![c(0.0); fl];
        for li in 0..k {
            linear(
                &theta.rnn_to_in.0,
                &theta.rnn_to_in.1,
                &lstm_out[li * h..(li + 1) * h],
                &mut proj,
            );
            for (a, &p) in new_from_lstm.iter_mut().zip(&proj) {
                *a += p;
            }
        }
        new_from_lstm.iter_mut().for_each(|x| *x /= c(k as f64));
        // Per-parameter MLP.
        let t = state.step;
        let step_feat: Vec<_> = TIMESCALES
            .iter()
            .map(|&s| (t / (c(s) * c(std::f64::consts::PI))).sin())
            .collect();
        let log_num_tensors = c(k as f64).ln() - c(1.0);
        let nf = 3 + 4 * nd;
        let ff_in = self.ff_in();
        let net: Vec<LayerRef<P::Scalar>> = theta
            .mlp
            .iter()
            .map(|(w, b)| (w.as_slice(), b.as_slice()))
            .collect();
        let mut mlp = BlockMlp::new();
        let (mut block, mut steps) = (ThreadBuffer::<P::Scalar>::take(), Vec::new());
        let (mut fixed, mut first_bias, mut last_w) = (Vec::new(), Vec::new(), Vec::new());
        let mut ff = vec![c(0.0); self.lstm_to_ff];
        let (step_mult, mag_rate) = (c(self.step_multiplier), c(self.magnitude_rate));
        let mut off = 0;
        for (li, g) in g_all.iter().enumerate() {
            let n = g.len();
            linear(
                &theta.rnn_to_ff.0,
                &theta.rnn_to_ff.1,
                &lstm_out[li * h..(li + 1) * h],
                &mut ff,
            );
            let ms = &state.m[off * nd..(off + n) * nd];
            let rs = &state.rms[off * nd..(off + n) * nd];
            let v = state.params.leaf(li);
            // Sorted: flat_g, flat_v, log_abs_v, m, rms, rms_scaled_g, rsqrt; the
            // features of elements `start..start + nb`, feature-major.
            let build = |start: usize, cols: &mut [P::Scalar]| {
                let nb = cols.len() / nf;
                let (gb, vb) = (&g[start..start + nb], &v[start..start + nb]);
                let (mb, rb) = (
                    &ms[start * nd..(start + nb) * nd],
                    &rs[start * nd..(start + nb) * nd],
                );
                let col = |j: usize| j * nb..(j + 1) * nb;
                cols[col(0)].copy_from_slice(gb);
                cols[col(1)].copy_from_slice(vb);
                // The branch-free `ln` (for `f32`, as the lanes use): the loop vectorizes.
                for (o, &x) in cols[col(2)].iter_mut().zip(vb) {
                    *o = crate::kernels::vecmath::ln(x.abs() + c(1e-8));
                }
                // Each decay's columns of `m` and `rms` copied out first, so the loops
                // over them read contiguous columns.
                for j in 0..nd {
                    strided_column(&mut cols[col(3 + j)], mb, nd, j);
                    strided_column(&mut cols[col(3 + nd + j)], rb, nd, j);
                    let (head, tail) = cols.split_at_mut((3 + 3 * nd + j) * nb);
                    let rsq = &mut tail[..nb];
                    for (o, &r) in rsq.iter_mut().zip(&head[col(3 + nd + j)]) {
                        *o = rsqrt(r + c(1e-6));
                    }
                    let (head, scaled) = head.split_at_mut((3 + 2 * nd + j) * nb);
                    let scaled = &mut scaled[..nb];
                    for ((o, &m), &r) in scaled.iter_mut().zip(&head[col(3 + j)]).zip(&*rsq) {
                        *o = m * r;
                    }
                }
            };
            let nn = c(n as f64);
            let log_norm = (ss_vs[li].sqrt() + c(1e-8)).ln();
            let log_n = nn.ln();
            let mut msg = vec![c(0.0); fm];
            // The inputs after the per-element features are the tensor's: folded into
            // the first layer's bias.
            fixed.clear();
            fixed.extend_from_slice(&step_feat);
            fixed.extend([log_num_tensors, log_norm, log_n]);
            fixed.extend_from_slice(&ff);
            debug_assert_eq!(nf + fixed.len(), ff_in);
            let mut layers = net.clone();
            layers[0] = fold_fixed_inputs(net[0], nf, &fixed, &mut first_bias);
            // The message outputs are needed only as their mean over the tensor, and they
            // are affine in the last hidden layer: the per-element MLP computes the two
            // step outputs, and the message is the hidden layer's sum times the last
            // weights (plus n times the bias) once per tensor. (Without hidden layers
            // every output comes from the per-element MLP.)
            let (w_last, b_last) = *layers.last().expect("layers");
            let (h_last, d_last) = (w_last.len() / b_last.len(), b_last.len());
            let shortcut = layers.len() > 1;
            if shortcut {
                last_w.clear();
                for row in w_last.chunks_exact(d_last) {
                    last_w.extend_from_slice(&row[..2]);
                }
                let last = layers.len() - 1;
                layers[last] = (&last_w, &b_last[..2]);
            }
            let mut hsum = vec![c(0.0); h_last];
            steps.clear();
            normalized_mlp(
                n,
                nf,
                build,
                &mut mlp,
                &layers,
                &mut block,
                |out, hidden, nb| {
                    let (direction, magnitude) = (&out[..nb], &out[nb..2 * nb]);
                    // The branch-free `exp` (for `f32`, as the lanes use): vectorizes.
                    steps.extend(direction.iter().zip(magnitude).map(|(&d, &mg)| {
                        d * crate::kernels::vecmath::exp(mg * mag_rate) * step_mult
                    }));
                    if shortcut {
                        for (col, a) in hidden.chunks_exact(nb).zip(hsum.iter_mut()) {
                            *a += sum8(col, |x| x);
                        }
                    } else {
                        for (col, a) in out[2 * nb..].chunks_exact(nb).zip(msg.iter_mut()) {
                            *a += sum8(col, |x| x);
                        }
                    }
                },
            );
            if shortcut {
                for (j, a) in msg.iter_mut().enumerate() {
                    let mut s = nn * b_last[2 + j];
                    for (q, &hq) in hsum.iter().enumerate() {
                        s += hq * w_last[q * d_last + 2 + j];
                    }
                    *a = s;
                }
            }
            for (p, &st) in state.params.leaf_mut(li).iter_mut().zip(&steps) {
                *p -= st;
            }
            for (dst, &s) in state.from_mlp[li * fm..(li + 1) * fm].iter_mut().zip(&msg) {
                *dst = s / nn;
            }
            off += n;
        }
        state.from_lstm = new_from_lstm;
        state.iteration += 1;
        state.step += c(1.0);
    }

    fn params<'s, P: Params>(&self, state: &'s RnnMlpLOptState<P>) -> &'s P {
        &state.params
    }
    fn set_params<P: Params>(&self, state: &mut RnnMlpLOptState<P>, params: P) {
        state.params = params;
    }
    fn iteration<P: Params>(&self, state: &RnnMlpLOptState<P>) -> usize {
        state.iteration
    }
    fn set_iteration<P: Params>(
        &self,
        state: &mut RnnMlpLOptState<P>,
        iteration: usize,
    ) -> crate::error::Result<()> {
        // The per-lane `step` is a leaf: a checkpoint restores it with the others.
        state.iteration = iteration;
        Ok(())
    }
    fn name(&self) -> String {
        "RnnMlpLOpt".into()
    }
}

fn linear_flax<S: Real>(name: &str, (w, b): &(Vec<S>, Vec<S>)) -> (String, FlaxValue) {
    let dout = b.len();
    let din = w.len() / dout.max(1);
    (
        name.to_string(),
        FlaxValue::map([("b", arr(vec![dout], b)), ("w", arr(vec![din, dout], w))]),
    )
}

fn linear_from<S: Real>(
    v: &FlaxValue,
    path: &[&str],
    din: usize,
    dout: usize,
) -> Result<(Vec<S>, Vec<S>), FlaxMsgpackError> {
    let mut pw = path.to_vec();
    pw.push("w");
    let mut pb = path.to_vec();
    pb.push("b");
    Ok((
        v.real_array(&pw, &[din, dout])?,
        v.real_array(&pb, &[dout])?,
    ))
}

/// The library's θ: `ffmod_params/"mlp/~/linear_i"`, `initial_from_lstm`,
/// `initial_from_mlp`, `lstm_init_state/{cell, hidden}`, `rnn_params/"rnn/linear"`,
/// `rnn_to_ff_params/rnn_to_ff`, `rnn_to_in_params/rnn_to_in`.
impl<S: Real> FlaxTheta for RnnMlpLOptTheta<S> {
    type Config = RnnMlpLOpt;
    fn to_flax(&self) -> FlaxValue {
        let h = self.init_hidden.len();
        let mlp = self
            .mlp
            .iter()
            .enumerate()
            .map(|(i, l)| linear_flax(&format!("mlp/~/linear_{i}"), l))
            .collect();
        FlaxValue::map([
            ("ffmod_params", FlaxValue::Map(mlp)),
            (
                "initial_from_lstm",
                arr(vec![self.initial_from_lstm.len()], &self.initial_from_lstm),
            ),
            (
                "initial_from_mlp",
                arr(vec![self.initial_from_mlp.len()], &self.initial_from_mlp),
            ),
            (
                "lstm_init_state",
                FlaxValue::map([
                    ("cell", arr(vec![1, h], &self.init_cell)),
                    ("hidden", arr(vec![1, h], &self.init_hidden)),
                ]),
            ),
            (
                "rnn_params",
                FlaxValue::Map(vec![linear_flax("rnn/linear", &self.lstm)]),
            ),
            (
                "rnn_to_ff_params",
                FlaxValue::Map(vec![linear_flax("rnn_to_ff", &self.rnn_to_ff)]),
            ),
            (
                "rnn_to_in_params",
                FlaxValue::Map(vec![linear_flax("rnn_to_in", &self.rnn_to_in)]),
            ),
        ])
    }

    fn from_flax(cfg: &RnnMlpLOpt, v: &FlaxValue) -> Result<Self, FlaxMsgpackError> {
        let h = cfg.lstm_hidden_size;
        let widths = cfg.mlp_widths();
        let mlp = widths
            .windows(2)
            .enumerate()
            .map(|(i, io)| {
                let name = format!("mlp/~/linear_{i}");
                linear_from(v, &["ffmod_params", &name], io[0], io[1])
            })
            .collect::<Result<_, _>>()?;
        Ok(RnnMlpLOptTheta {
            initial_from_lstm: v.real_array(&["initial_from_lstm"], &[cfg.from_lstm_size])?,
            initial_from_mlp: v.real_array(&["initial_from_mlp"], &[cfg.from_mlp_size])?,
            init_hidden: v.real_array(&["lstm_init_state", "hidden"], &[1, h])?,
            init_cell: v.real_array(&["lstm_init_state", "cell"], &[1, h])?,
            lstm: linear_from(v, &["rnn_params", "rnn/linear"], cfg.rnn_in() + h, 4 * h)?,
            rnn_to_ff: linear_from(v, &["rnn_to_ff_params", "rnn_to_ff"], h, cfg.lstm_to_ff)?,
            rnn_to_in: linear_from(v, &["rnn_to_in_params", "rnn_to_in"], h, cfg.from_lstm_size)?,
            mlp,
        })
    }
}
