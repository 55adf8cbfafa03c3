//! VeLO: the JAX library's `HyperV2` (`research/general_lopt/hyper_v2.py`), a per-tensor
//! LSTM that produces, as mixing weights over a bank of MLPs, the weights of the
//! per-parameter MLP that computes each step.

use super::adafac_mlp_lopt::{factored_step, factoring, FacField, FacOut};
use super::flax_msgpack::{arr, FlaxMsgpackError, FlaxTheta, FlaxValue};
use super::parts::{
    clip, ema_interleaved, feature_scales, keeps_features, normalized_mlp, params_then_vectors,
    rsqrt, strided_column, sum8, sum8_records, BlockMlp, LayerRef, MLP_BLOCK,
};
use super::LearnedOptimizer;
use super::ThetaCache;
use crate::error::{Error, Result};
use crate::kernels::alloc::ThreadBuffer;
use crate::kernels::helper::{self, Helper};
use crate::kernels::small_rows::{small_rows_product, small_rows_product_from};
use crate::key::Key;
use crate::params::Params;
use crate::scalar::Real;
use std::sync::Arc;

/// Timescales of `_fractional_tanh_embed`.
const FRACTIONS: [f64; 9] = [0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1];
/// Decays of the loss buffer.
const LOSS_DECAYS: usize = 10;
/// From this many LSTM input weights (`h·4h`: the released VeLO's 2^20, 4 MiB of `f32`)
/// an update with θ fixed shares its weight-bound products with a second core
/// ([`UpdateBlocks`]); below, the weights are read in less time than a worker takes to
/// wake.
const HELP_FROM: usize = 1 << 20;
/// Hidden units per block of the LSTM's gates: the released VeLO's 512 in 16 blocks of
/// 256 KiB of weights (about 9 µs of reading each), so that the two threads end within a
/// block of each other.
const GATE_UNITS: usize = 32;
/// Columns per block of the controls' product (with the step size's one column: the
/// released VeLO's 257 in four blocks).
const CONTROL_COLS: usize = 64;

/// The library's `HyperV2` with its default feature set (every `with_*` flag on,
/// `mix_layers`, `adafactor_accumulator`, `param_scale_mult`, no output
/// preconditioning, no validation feature, no param-scale clip).
///
/// Per step: the loss enters a buffer of ten EMAs whose normalized position between its
/// running minimum and the slower EMAs gives 9 loss features (with
/// `use_bugged_loss_features`, as in the released optimizer, the buffer's half-lives are
/// all 10 whatever the training length); gradients are clipped to ±1000; each tensor's 30
/// features (9 `tanh(10·(t/T − τ))` of the fraction of training done, the loss features,
/// log-magnitudes of the mean and variance of its momenta and second moments scaled by
/// the tensor's RMS, and a one-hot of its number of dimensions larger than 1) pass a
/// mixing layer (max over tensors) and haiku's LSTM, whose output gives `param_inits`
/// mixing weights `c` and a step multiplier `λ`. The per-parameter MLP's weights are
/// `100·mean_j(c_j·W_j)` over the bank `W_j` in θ; its inputs are 14 feature groups
/// (`g`, `clip(g, ±0.1)`, `p`, momenta, second moments, `m·rsqrt(v + 1e-6)`,
/// `rsqrt(v + 1e-6)`, the Adafactor-preconditioned gradient, `g·rsqrt(v + 1e-6)`, row
/// and column accumulators, their `rsqrt(· + 1e-8)`, the factored momentum), each
/// normalized by its RMS over the tensor, and its outputs `(d, s, ·)` give
/// `p ← p − λ·d·(rms(p)·exp(exp_mult·s))·step_mult`.
///
/// It needs the planned number of training steps (`num_steps` at init; see
/// [`Velo::try_init_state`]). Decays are fixed (not in θ). As in the library, with
/// `use_bugged_next_lstm_state` (the released optimizer's setting) the LSTM state never
/// advances.
#[derive(Debug, Clone, PartialEq)]
pub struct Velo {
    /// Width of the per-tensor LSTM (released: 512).
    pub lstm_hidden_size: usize,
    /// Width of the per-parameter MLP (4).
    pub ff_hidden_size: usize,
    /// Hidden layers of the per-parameter MLP (2).
    pub ff_hidden_layers: usize,
    /// Size of the bank of MLPs mixed per tensor (released: 256).
    pub param_inits: usize,
    /// Momentum decays (0.9, 0.99, 0.999).
    pub momentum_decays: Vec<f64>,
    /// Second-moment decays (0.999).
    pub rms_decays: Vec<f64>,
    /// Adafactor decays (0.9, 0.99, 0.999).
    pub adafactor_decays: Vec<f64>,
    /// Multiplier of the magnitude output inside the exponential (0.001).
    pub exp_mult: f64,
    /// Multiplier of the step (0.001).
    pub step_mult: f64,
    /// Keep the LSTM state fixed at its initial value (released: true).
    pub use_bugged_next_lstm_state: bool,
    /// Loss buffer sized for 10 steps whatever the training length (default and
    /// released: true).
    pub use_bugged_loss_features: bool,
    /// Decay of the LSTM state per step (0).
    pub rnn_state_decay: f64,
}

impl Default for Velo {
    /// The library's `HyperV2()` defaults (`lstm_hidden_size = 128`, `param_inits = 64`).
    fn default() -> Self {
        Velo {
            lstm_hidden_size: 128,
            ff_hidden_size: 4,
            ff_hidden_layers: 2,
            param_inits: 64,
            momentum_decays: vec![0.9, 0.99, 0.999],
            rms_decays: vec![0.999],
            adafactor_decays: vec![0.9, 0.99, 0.999],
            exp_mult: 0.001,
            step_mult: 0.001,
            use_bugged_next_lstm_state: false,
            use_bugged_loss_features: true,
            rnn_state_decay: 0.0,
        }
    }
}

impl Velo {
    /// The configuration of the released VeLO weights (`pretrained_optimizers.py`:
    /// `HyperV2(lstm_hidden_size=512, param_inits=256, use_bugged_next_lstm_state=True)`).
    pub fn released() -> Self {
        Velo {
            lstm_hidden_size: 512,
            param_inits: 256,
            use_bugged_next_lstm_state: true,
            ..Velo::default()
        }
    }

    /// `Ok` when sizes are positive, decays lie in `[0, 1)` with as many Adafactor as
    /// momentum decays and one second-moment decay or as many, and the multipliers are
    /// finite.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(Error::InvalidArgument(format!("Velo: {s}")));
        if [self.lstm_hidden_size, self.ff_hidden_size, self.param_inits].contains(&0) {
            return bad("sizes must be positive".into());
        }
        for l in [
            &self.momentum_decays,
            &self.rms_decays,
            &self.adafactor_decays,
        ] {
            if l.is_empty() || l.iter().any(|d| !(0.0..1.0).contains(d)) {
                return bad(format!("decays must be non-empty and in [0, 1): {l:?}"));
            }
        }
        let (km, kr, kf) = self.counts();
        if km != kf || !(kr == 1 || kr == km) {
            return bad("momentum, rms and adafactor decays do not broadcast".into());
        }
        if !(self.exp_mult.is_finite()
            && self.step_mult.is_finite()
            && (0.0..1.0).contains(&self.rnn_state_decay))
        {
            return bad("multipliers must be finite, rnn_state_decay in [0, 1)".into());
        }
        Ok(())
    }

    fn counts(&self) -> (usize, usize, usize) {
        (
            self.momentum_decays.len(),
            self.rms_decays.len(),
            self.adafactor_decays.len(),
        )
    }

    /// Per-tensor LSTM input size (30 with the default decays).
    pub fn rnn_features(&self) -> usize {
        let (km, kr, _) = self.counts();
        FRACTIONS.len() + (LOSS_DECAYS - 1) + kr + 5 + km + km.max(kr)
    }

    /// Widths of the 14 input groups of the per-parameter MLP.
    pub fn ff_input_widths(&self) -> Vec<usize> {
        let (km, kr, kf) = self.counts();
        vec![
            1,
            1,
            1,
            km,
            kr,
            km.max(kr),
            kr,
            kf,
            kr,
            kf,
            kf,
            kf,
            kf,
            km.max(kf),
        ]
    }

    fn ff_widths(&self) -> Vec<usize> {
        let mut w = vec![self.ff_hidden_size; self.ff_hidden_layers];
        w.push(3);
        w
    }

    /// [`LearnedOptimizer::init_state`], but `Err` without `num_steps` (VeLO's features
    /// use the fraction of training done; the library fails too). `init_state` panics then.
    pub fn try_init_state<P: Params>(
        &self,
        theta: &VeloTheta<P::Scalar>,
        params: P,
        num_steps: Option<usize>,
    ) -> Result<VeloState<P>> {
        match num_steps {
            Some(n) if n > 0 => Ok(self.init_state(theta, params, Some(n))),
            _ => Err(Error::InvalidArgument(
                "Velo needs the planned number of training steps (num_steps > 0)".into(),
            )),
        }
    }
}

/// A dense layer, row-major `w: [in, out]`, `b: [out]`.
pub type Linear<S> = (Vec<S>, Vec<S>);

/// θ of [`Velo`], in the library's layout (row-major `[in, out]` weights; the MLP bank
/// with the bank index first).
#[derive(Debug, Clone, PartialEq)]
pub struct VeloTheta<S> {
    /// `lstm_init_state.hidden`, `[H]`.
    pub init_hidden: Vec<S>,
    /// `lstm_init_state.cell`, `[H]`.
    pub init_cell: Vec<S>,
    /// `rnn_params.linear`, `linear_1`, `linear_2` (the mixing layers; the first is
    /// computed by the library and unused, kept for the layout).
    pub mix: [Linear<S>; 3],
    /// `rnn_params["rnn/linear"]`, `[2H, 4H]`.
    pub lstm: Linear<S>,
    /// `rnn_params.rnn_to_controls`, `[H, param_inits]`.
    pub to_controls: Linear<S>,
    /// `rnn_params.step_size`, `[H, 1]`.
    pub step_size: Linear<S>,
    /// `ff_mod_stack["~"]["w0__i"]`, one per input group, `[param_inits, width_i, hidden]`.
    pub ff_w0: Vec<Vec<S>>,
    /// The other bank arrays: `b0`, then `(w1, b1)`, … as `[param_inits, …]`.
    pub ff_b0: Vec<S>,
    /// `(w_l, b_l)` for `l ≥ 1`.
    pub ff_layers: Vec<Linear<S>>,
}

impl<S: Real> VeloTheta<S> {
    fn leaves(&self) -> Vec<&Vec<S>> {
        let mut v = vec![&self.init_hidden, &self.init_cell];
        for (w, b) in self
            .mix
            .iter()
            .chain([&self.lstm, &self.to_controls, &self.step_size])
        {
            v.push(w);
            v.push(b);
        }
        v.extend(self.ff_w0.iter());
        v.push(&self.ff_b0);
        for (w, b) in &self.ff_layers {
            v.push(w);
            v.push(b);
        }
        v
    }
    fn leaves_mut(&mut self) -> Vec<&mut Vec<S>> {
        let mut v = vec![&mut self.init_hidden, &mut self.init_cell];
        for (w, b) in
            self.mix
                .iter_mut()
                .chain([&mut self.lstm, &mut self.to_controls, &mut self.step_size])
        {
            v.push(w);
            v.push(b);
        }
        v.extend(self.ff_w0.iter_mut());
        v.push(&mut self.ff_b0);
        for (w, b) in &mut self.ff_layers {
            v.push(w);
            v.push(b);
        }
        v
    }
    fn cast<T: Real>(&self) -> VeloTheta<T> {
        let c = |v: &Vec<S>| v.iter().map(|x| T::from_f64(x.lane(0))).collect::<Vec<T>>();
        let l = |(w, b): &Linear<S>| (c(w), c(b));
        VeloTheta {
            init_hidden: c(&self.init_hidden),
            init_cell: c(&self.init_cell),
            mix: [l(&self.mix[0]), l(&self.mix[1]), l(&self.mix[2])],
            lstm: l(&self.lstm),
            to_controls: l(&self.to_controls),
            step_size: l(&self.step_size),
            ff_w0: self.ff_w0.iter().map(c).collect(),
            ff_b0: c(&self.ff_b0),
            ff_layers: self.ff_layers.iter().map(l).collect(),
        }
    }
}

/// Leaves in field order, each flat.
impl<S: Real> Params for VeloTheta<S> {
    type Scalar = S;
    fn num_leaves(&self) -> usize {
        2 + 12 + self.ff_w0.len() + 1 + 2 * self.ff_layers.len()
    }
    fn leaf(&self, i: usize) -> &[S] {
        self.leaves()[i]
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [S] {
        self.leaves_mut().swap_remove(i)
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        const HEAD: [&str; 14] = [
            "init_hidden",
            "init_cell",
            "mix0.w",
            "mix0.b",
            "mix1.w",
            "mix1.b",
            "mix2.w",
            "mix2.b",
            "lstm.w",
            "lstm.b",
            "to_controls.w",
            "to_controls.b",
            "step_size.w",
            "step_size.b",
        ];
        let k = self.ff_w0.len();
        if i < 14 {
            out.push_str(HEAD[i]);
        } else if i < 14 + k {
            out.push_str(&format!("ff.w0__{}", i - 14));
        } else if i == 14 + k {
            out.push_str("ff.b0");
        } else {
            let j = i - 15 - k;
            let wb = if j.is_multiple_of(2) { "w" } else { "b" };
            out.push_str(&format!("ff.{wb}{}", j / 2 + 1));
        }
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        vec![self.leaf(i).len()]
    }
}

/// State of [`Velo`]'s inner optimizer; accumulators concatenated over leaves,
/// element-major, decays innermost.
#[derive(Debug, Clone)]
pub struct VeloState<P: Params> {
    /// Current parameters.
    pub params: P,
    /// Momenta.
    pub m: Vec<P::Scalar>,
    /// Second moments.
    pub rms: Vec<P::Scalar>,
    /// Factored row accumulators.
    pub fac_row: Vec<P::Scalar>,
    /// Factored column accumulators.
    pub fac_col: Vec<P::Scalar>,
    /// Diagonal accumulators (rank < 2).
    pub fac_diag: Vec<P::Scalar>,
    /// LSTM hidden state, `H` per tensor.
    pub hidden: Vec<P::Scalar>,
    /// LSTM cell state, `H` per tensor.
    pub cell: Vec<P::Scalar>,
    /// Loss buffer: 10 EMAs, then 10 running minima.
    pub loss_buffer: Vec<P::Scalar>,
    /// Updates applied so far.
    pub iteration: usize,
    /// The updates applied in each lane (lanes of a group restart their tasks at
    /// different times): what the loss buffer's corrections and the training-fraction
    /// features read. Equal to `iteration` in `f32`.
    pub step: P::Scalar,
    /// The planned number of steps, per lane.
    pub num_steps: P::Scalar,
}

// Leaves: the parameters, then one each for the statistics, the LSTM and the losses.
params_then_vectors!(VeloState {
    m,
    rms,
    fac_row,
    fac_col,
    fac_diag,
    hidden,
    cell,
    loss_buffer
} scalars { step, num_steps });

/// `½·clip(ln(1e-8 + |10·v|), −5, 5)`.
fn clip_log_abs10<S: Real>(v: S) -> S {
    clip(
        (S::from_f64(1e-8) + (v * S::from_f64(10.0)).abs()).ln(),
        -5.0,
        5.0,
    ) * S::from_f64(0.5)
}

/// The loss buffer's decays: `exp(−1/h)`, `h = logspace(1, log10(n), 10)`, in the
/// scalar's precision as the library computes them in `f32`.
fn loss_decays<S: Real>(n: S) -> Vec<S> {
    let c = S::from_f64;
    let top = n.ln() / c(std::f64::consts::LN_10);
    (0..LOSS_DECAYS)
        .map(|i| {
            let e = c(1.0) + (top - c(1.0)) * c(i as f64) / c((LOSS_DECAYS - 1) as f64);
            let h = c(10.0).powf(e);
            (c(-1.0) / h).exp()
        })
        .collect()
}

/// The MLP bank's arrays in θ's order: the first layer's input groups, its bias, then
/// each later layer's weights and bias (each `[P, len]`, the bank index first).
fn bank_arrays<S>(theta: &VeloTheta<S>) -> Vec<&[S]> {
    let mut v: Vec<&[S]> = theta.ff_w0.iter().map(|w| w.as_slice()).collect();
    v.push(&theta.ff_b0);
    for (w, b) in &theta.ff_layers {
        v.push(w);
        v.push(b);
    }
    v
}

/// The bank as one row-major `[P, Σ len]` matrix, member `j`'s arrays one after another
/// in row `j` ([`bank_arrays`]' order): mixed by one product instead of one per array
/// (19 products of 4 to 156 columns were mostly overhead).
fn concat_bank<S: Real>(theta: &VeloTheta<S>, p: usize) -> Vec<S> {
    let arrays = bank_arrays(theta);
    let total: usize = arrays.iter().map(|a| a.len() / p).sum();
    let mut out = Vec::with_capacity(p * total);
    for j in 0..p {
        for a in &arrays {
            let len = a.len() / p;
            out.extend_from_slice(&a[j * len..(j + 1) * len]);
        }
    }
    out
}

/// `100·mean_j(c_j·bank_j)` for each of the `k` rows of `c` (`[k, P]`, one per tensor):
/// `[k, Σ len]`, each row the mixed arrays in [`bank_arrays`]' order. From the
/// concatenated bank (`cat`, [`concat_bank`]) in one product, or array by array: the
/// same chains (from 0, in the order of `j`), the same bits.
fn mix_banks<S: Real>(
    theta: &VeloTheta<S>,
    cat: Option<&[S]>,
    c: &[S],
    k: usize,
    out: &mut Vec<S>,
) {
    let p = c.len() / k.max(1);
    let arrays = bank_arrays(theta);
    let total: usize = arrays.iter().map(|a| a.len() / p).sum();
    out.clear();
    out.resize(k * total, S::from_f64(0.0));
    let zeros = vec![S::from_f64(0.0); total];
    match cat {
        Some(cat) => small_rows_product(c, k, p, cat, &zeros, out),
        None => {
            let (mut off, mut tmp) = (0, Vec::new());
            for a in arrays {
                let len = a.len() / p;
                tmp.resize(k * len, S::from_f64(0.0));
                small_rows_product(c, k, p, a, &zeros[..len], &mut tmp);
                for (o, t) in out.chunks_exact_mut(total).zip(tmp.chunks_exact(len)) {
                    o[off..off + len].copy_from_slice(t);
                }
                off += len;
            }
        }
    }
    let scale = S::from_f64(p as f64);
    out.iter_mut()
        .for_each(|x| *x = S::from_f64(100.0) * (*x / scale));
}

/// What [`LearnedOptimizer::update_fixed`] keeps for a fixed θ: the bank concatenated
/// ([`concat_bank`]) and, when every step's LSTM reads θ's initial state, the gates'
/// hidden half from it.
#[derive(Debug)]
struct FixedTheta<S> {
    /// [`concat_bank`].
    bank: Vec<S>,
    /// The gates' hidden half, when the state never advances.
    gates: Option<GatesFromInit<S>>,
    /// With `gates`, from [`HELP_FROM`] weights: the products after the mixing layers
    /// by blocks of columns (a copy of their weights: 4.5 MiB for the released VeLO).
    blocks: Option<Arc<UpdateBlocks<S>>>,
}

/// Columns of a weight matrix `[din, dout]` in blocks, each block's `[din, width]`
/// weights one contiguous run (a block's product reads them sequentially, as the
/// whole matrix's product reads its rows), with the chains' starts.
#[derive(Debug)]
struct ColumnBlocks<S> {
    din: usize,
    /// Per block: the weights `[din, width]` row-major and the `width` starts.
    blocks: Vec<(Vec<S>, Vec<S>)>,
}

impl<S: Real> ColumnBlocks<S> {
    /// Blocks of the columns `cols[c]` (in that order) of the matrix whose weight at row
    /// `i`, column `j` is `w(i, j)` and whose chain `j` starts from `b(j)`.
    fn new(
        din: usize,
        cols: &[Vec<usize>],
        w: impl Fn(usize, usize) -> S,
        b: impl Fn(usize) -> S,
    ) -> Self {
        let blocks = cols
            .iter()
            .map(|cs| {
                let wb = (0..din)
                    .flat_map(|i| cs.iter().map(move |&j| (i, j)))
                    .map(|(i, j)| w(i, j))
                    .collect();
                (wb, cs.iter().map(|&j| b(j)).collect())
            })
            .collect();
        ColumnBlocks { din, blocks }
    }

    /// Block `c`'s columns of `start + x·W` for the `rows` rows of `x`: `[rows, width]`,
    /// each output the chain [`small_rows_product`] computes for that column of the
    /// whole matrix (the same bits).
    fn product(&self, c: usize, x: &[S], rows: usize) -> Vec<S> {
        let (w, b) = &self.blocks[c];
        let mut out = vec![S::from_f64(0.0); rows * b.len()];
        small_rows_product(x, rows, self.din, w, b, &mut out);
        out
    }
}

/// The released VeLO's weight-bound products with θ fixed, in [`ColumnBlocks`] that two
/// threads claim ([`helper::tasks`]): the LSTM's input half (with its start, the hidden
/// half from θ's initial state: [`GatesFromInit`]) by blocks of [`GATE_UNITS`] hidden
/// units, each block the four gates' columns of its units (so that a block also gives its
/// units' outputs), then the controls and the step size by [`CONTROL_COLS`] columns.
#[derive(Debug)]
struct UpdateBlocks<S> {
    /// Hidden units per gate block.
    units: usize,
    gates: ColumnBlocks<S>,
    /// Columns of `[to_controls | step_size]`.
    controls: ColumnBlocks<S>,
}

impl<S: Real> UpdateBlocks<S> {
    fn new(cfg: &Velo, theta: &VeloTheta<S>, start: &[S]) -> Self {
        let (h, pi) = (cfg.lstm_hidden_size, cfg.param_inits);
        let units = GATE_UNITS.min(h);
        let gate_cols: Vec<Vec<usize>> = (0..h.div_ceil(units))
            .map(|c| {
                let us = c * units..((c + 1) * units).min(h);
                (0..4)
                    .flat_map(|g| us.clone().map(move |u| g * h + u))
                    .collect()
            })
            .collect();
        let w_x = &theta.lstm.0[..h * 4 * h];
        let gates = ColumnBlocks::new(h, &gate_cols, |i, j| w_x[i * 4 * h + j], |j| start[j]);
        let ctl_cols: Vec<Vec<usize>> = (0..(pi + 1).div_ceil(CONTROL_COLS))
            .map(|c| (c * CONTROL_COLS..((c + 1) * CONTROL_COLS).min(pi + 1)).collect())
            .collect();
        let ((cw, cb), (sw, sb)) = (&theta.to_controls, &theta.step_size);
        let controls = ColumnBlocks::new(
            h,
            &ctl_cols,
            |i, j| if j < pi { cw[i * pi + j] } else { sw[i] },
            |j| if j < pi { cb[j] } else { sb[0] },
        );
        UpdateBlocks {
            units,
            gates,
            controls,
        }
    }

    /// Gate block `c`'s units' LSTM outputs `[rows, units]` for inputs `x` (`[rows, h]`)
    /// and cells `cell` (`[rows, h]`).
    fn outputs(&self, c: usize, x: &[S], cell: &[S], rows: usize) -> Vec<S> {
        let g = self.gates.product(c, x, rows);
        let (h, w) = (self.gates.din, g.len() / rows.max(1));
        let u = w / 4;
        let mut out = vec![S::from_f64(0.0); rows * u];
        let mut cnew = vec![S::from_f64(0.0); u];
        for r in 0..rows {
            let cold = &cell[r * h + c * self.units..][..u];
            lstm_cell(
                &g[r * w..(r + 1) * w],
                cold,
                &mut out[r * u..(r + 1) * u],
                &mut cnew,
            );
        }
        out
    }
}

/// The LSTM gates' hidden half from θ's initial state, `b + h₀·W_h`: the start of every
/// tensor's gates while its state is `h₀` (always, with `use_bugged_next_lstm_state` and
/// no state decay).
#[derive(Debug)]
struct GatesFromInit<S> {
    /// `h₀` (`lstm_init_state.hidden`).
    hidden: Vec<S>,
    /// `b + h₀·W_h`, `[4H]`.
    start: Vec<S>,
}

impl<S: Real> GatesFromInit<S> {
    fn new(cfg: &Velo, theta: &VeloTheta<S>) -> Self {
        let h = cfg.lstm_hidden_size;
        let hidden = theta.init_hidden.clone();
        let mut start = vec![S::from_f64(0.0); 4 * h];
        let w_h = &theta.lstm.0[h * 4 * h..];
        small_rows_product(&hidden, 1, h, w_h, &theta.lstm.1, &mut start);
        GatesFromInit { hidden, start }
    }
}

/// The per-parameter MLP's inputs of a tensor's elements `start..start + nb` into `cols`
/// (`[total_in, nb]`, feature-major, group by group): its clipped gradient `g`, params
/// `p`, momenta `m` and second moments `v` (interleaved, `km` and `kr` a record) and the
/// factored accumulators' outputs `fac` (`kf` decays).
fn input_builder<'a, S: Real>(
    g: &'a [S],
    p: &'a [S],
    m: &'a [S],
    v: &'a [S],
    (km, kr, kf): (usize, usize, usize),
    fac: &'a FacOut<S>,
    total_in: usize,
) -> impl FnMut(usize, &mut [S]) + 'a {
    let c = S::from_f64;
    let kmr = km.max(kr);
    // The inputs of elements `start..start + nb`, feature-major, group by group.
    let (mut t1, mut t2) = (vec![c(0.0); MLP_BLOCK], vec![c(0.0); MLP_BLOCK]);
    let mut rq = vec![c(0.0); MLP_BLOCK * kr];
    move |start: usize, cols: &mut [S]| {
        let nb = cols.len() / total_in;
        let (gb, pb) = (&g[start..start + nb], &p[start..start + nb]);
        let (mb, vb) = (
            &m[start * km..(start + nb) * km],
            &v[start * kr..(start + nb) * kr],
        );
        let (t1, t2) = (&mut t1[..nb], &mut t2[..nb]);
        let mut cols = cols.chunks_exact_mut(nb);
        let mut next = || cols.next().expect("total_in columns");
        next().copy_from_slice(gb);
        for (o, &x) in next().iter_mut().zip(gb) {
            *o = clip(x, -0.1, 0.1);
        }
        next().copy_from_slice(pb);
        for k in 0..km {
            strided_column(next(), mb, km, k);
        }
        for k in 0..kr {
            strided_column(next(), vb, kr, k);
        }
        // `(v + 1e-6)^-½` at each decay, once a block (`rq[k·nb + i]`).
        let rq = &mut rq[..kr * nb];
        for (k, out) in rq.chunks_exact_mut(nb).enumerate() {
            for (o, vi) in out.iter_mut().zip(vb.chunks_exact(kr)) {
                *o = rsqrt(vi[k] + c(1e-6));
            }
        }
        let rs = |k: usize| &rq[k * nb..(k + 1) * nb];
        for q in 0..kmr {
            let (qm, qr) = (if km == 1 { 0 } else { q }, if kr == 1 { 0 } else { q });
            for ((o, mi), &r) in next().iter_mut().zip(mb.chunks_exact(km)).zip(rs(qr)) {
                *o = mi[qm] * r;
            }
        }
        for q in 0..kr {
            next().copy_from_slice(rs(q));
        }
        // y (Kf), g·rsqrt(v) (Kr), row, col, their rsqrt (Kf each), then the
        // factored momentum.
        use FacField::*;
        for k in 0..kf {
            fac.expand(start, k, Y1, t1);
            fac.expand(start, k, Y2, t2);
            for ((o, &ge), (&a, &b)) in next().iter_mut().zip(gb).zip(t1.iter().zip(&*t2)) {
                *o = ge * a * b;
            }
        }
        for q in 0..kr {
            for ((o, &ge), &r) in next().iter_mut().zip(gb).zip(rs(q)) {
                *o = ge * r;
            }
        }
        for field in [Row, Col, RowRsqrt, ColRsqrt] {
            for k in 0..kf {
                fac.expand(start, k, field, next());
            }
        }
        for q in 0..km.max(kf) {
            let (qm, qf) = (if km == 1 { 0 } else { q }, if kf == 1 { 0 } else { q });
            fac.expand(start, qf, Mom1, t1);
            fac.expand(start, qf, Mom2, t2);
            let mom = next().iter_mut().zip(mb.chunks_exact(km));
            for ((o, mi), (&a, &b)) in mom.zip(t1.iter().zip(&*t2)) {
                *o = mi[qm] * a * b;
            }
        }
    }
}

/// A tensor's MLP from its row of the mixed bank ([`mix_banks`]): the first layer's
/// groups, stacked, are one `[total_in, ffw[0]]` matrix; then its bias and the later
/// layers (widths `ffw`).
fn tensor_net<'a, S>(row: &'a [S], total_in: usize, ffw: &[usize]) -> Vec<LayerRef<'a, S>> {
    let mut rest = row;
    let mut take = |len: usize| {
        let (head, tail) = rest.split_at(len);
        rest = tail;
        head
    };
    let w0 = take(total_in * ffw[0]);
    let b0 = take(ffw[0]);
    let mut net: Vec<LayerRef<S>> = vec![(w0, b0)];
    for io in ffw.windows(2) {
        let w = take(io[0] * io[1]);
        net.push((w, take(io[1])));
    }
    net
}

/// The steps `λ·(d·(rms(p)·exp(exp_mult·s))·step_mult)` of the MLP's outputs `d`, `s`,
/// with `(λ, rms(p), exp_mult, step_mult)` = `mults`.
fn steps_of<'a, S: Real>(
    direction: &'a [S],
    magnitude: &'a [S],
    (lr, param_scale, exp_mult, step_mult): (S, S, S, S),
) -> impl Iterator<Item = S> + 'a {
    direction.iter().zip(magnitude).map(move |(&d, &mg)| {
        // The branch-free `exp` (for `f32`): the loop vectorizes.
        let mag = crate::kernels::vecmath::exp(mg * exp_mult);
        lr * (d * (param_scale * mag) * step_mult)
    })
}

/// The per-parameter MLP's second pass ([`normalized_mlp`]'s) on kept inputs, as tasks of
/// one block of [`MLP_BLOCK`] elements of one tensor each ([`helper::tasks`]): the same
/// operations on the same values as `normalized_mlp`, block by block.
struct SecondPass<S> {
    /// Per tensor: its inputs as the first pass built them (`[n, total_in]` by blocks),
    /// their scales and `rms(p)`.
    inputs: Vec<(Vec<S>, Vec<S>, S)>,
    /// [`mix_banks`]' rows.
    mixed: Vec<S>,
    total_in: usize,
    ffw: Vec<usize>,
    /// Per tensor `λ`, then `exp_mult` and `step_mult`.
    lr: Vec<S>,
    exp_mult: S,
    step_mult: S,
    /// The tasks: (tensor, first element).
    jobs: Vec<(usize, usize)>,
}

impl<S: Real> SecondPass<S> {
    /// Task `i`'s steps.
    fn steps(&self, i: usize) -> Vec<S> {
        let (li, start) = self.jobs[i];
        let (inputs, scale, param_scale) = &self.inputs[li];
        let nf = self.total_in;
        let nb = MLP_BLOCK.min(inputs.len() / nf - start);
        let mut x = vec![S::from_f64(0.0); nb * nf];
        let cols = inputs[start * nf..(start + nb) * nf].chunks_exact(nb);
        for ((dst, col), &sc) in x.chunks_exact_mut(nb).zip(cols).zip(scale) {
            for (d, &v) in dst.iter_mut().zip(col) {
                *d = v * sc;
            }
        }
        let k = self.lr.len();
        let row = self.mixed.len() / k;
        let net = tensor_net(&self.mixed[li * row..(li + 1) * row], nf, &self.ffw);
        let mut mlp = BlockMlp::new();
        let (out, _) = mlp.forward(&net, &x, nb);
        let mults = (self.lr[li], *param_scale, self.exp_mult, self.step_mult);
        steps_of(&out[..nb], &out[nb..2 * nb], mults).collect()
    }
}

/// haiku's LSTM cell on one row's gates `[i, g, f, o]` (each `h_out.len()` wide, the
/// forget gate's bias 1 added here): the outputs and the new cells.
fn lstm_cell<S: Real>(gate: &[S], cold: &[S], h_out: &mut [S], c_out: &mut [S]) {
    let one = S::from_f64(1.0);
    let h = h_out.len();
    let (gi, rest) = gate.split_at(h);
    let (gg, rest) = rest.split_at(h);
    let (gf, go) = rest.split_at(h);
    // Branch-free exp and tanh (for `f32`; the lanes' own otherwise): the loop
    // vectorizes.
    use crate::kernels::vecmath::{sigmoid as vsigmoid, tanh as vtanh};
    // (Zipped slices: indexed, the bounds checks kept it scalar.)
    let gates_in = gi.iter().zip(gg).zip(gf.iter().zip(go)).zip(cold.iter());
    let outs = h_out.iter_mut().zip(c_out.iter_mut());
    for ((((&i, &gv), (&fv, &o)), &cold), (hj, cj)) in gates_in.zip(outs) {
        let fg = vsigmoid(fv + one);
        let cv = fg * cold + vsigmoid(i) * vtanh(gv);
        *hj = vsigmoid(o) * vtanh(cv);
        *cj = cv;
    }
}

/// Equal bits in every lane (`-0.0` is not `0.0`, a NaN only its own bits).
fn same_bits<S: Real>(a: &[S], b: &[S]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (0..S::LANES).all(|l| x.lane(l).to_bits() == y.lane(l).to_bits()))
}

impl Velo {
    /// [`LearnedOptimizer::update_fixed`] with the products by blocks from `help_from`
    /// LSTM input weights (when the cache is filled); with `leave_all` the helper, if
    /// any, computes every block (tests: its side runs whatever the timing).
    #[allow(clippy::too_many_arguments)]
    fn update_fixed_with<P: Params>(
        &self,
        help_from: usize,
        leave_all: bool,
        theta: &VeloTheta<P::Scalar>,
        cache: &ThetaCache,
        state: &mut VeloState<P>,
        grad: &P,
        loss: P::Scalar,
    ) {
        let h = self.lstm_hidden_size;
        let fixed = cache.get_or_init(|| {
            let gates = (self.use_bugged_next_lstm_state && self.rnn_state_decay == 0.0)
                .then(|| GatesFromInit::new(self, theta));
            let blocks = gates
                .as_ref()
                .filter(|_| h * 4 * h >= help_from)
                .map(|g| Arc::new(UpdateBlocks::new(self, theta, &g.start)));
            FixedTheta {
                bank: concat_bank(theta, self.param_inits),
                gates,
                blocks,
            }
        });
        self.step(theta, fixed, leave_all, state, grad, loss)
    }

    /// One update; with `fixed`, the bank mixed from its concatenation and the gates'
    /// hidden half from it where every tensor's LSTM state is θ's initial one (bit for
    /// bit what the products give).
    // Index loops walk several parallel arrays (decays, moments, buffers) at once.
    #[allow(clippy::needless_range_loop)]
    fn step<P: Params>(
        &self,
        theta: &VeloTheta<P::Scalar>,
        fixed: Option<&FixedTheta<P::Scalar>>,
        leave_all: bool,
        state: &mut VeloState<P>,
        grad: &P,
        loss: P::Scalar,
    ) {
        crate::optimizers::assert_leaf_lengths(
            "Velo::update: gradient vs params",
            &state.params,
            grad,
        );
        let h = self.lstm_hidden_size;
        // Every tensor's LSTM state is θ's initial one: the gates start from the kept
        // hidden half, and the products after the mixing layers may go by blocks, the
        // helper woken now so that it is awake when they start.
        let from_init = fixed.and_then(|fx| fx.gates.as_ref()).filter(|fx| {
            state
                .hidden
                .chunks_exact(h)
                .all(|row| same_bits(row, &fx.hidden))
        });
        let blocks = fixed
            .and_then(|fx| fx.blocks.as_ref())
            .filter(|_| from_init.is_some());
        let helper = blocks.and_then(|_| Helper::wake(3, leave_all));
        let c = P::Scalar::from_f64;
        let one = c(1.0);
        let pi = self.param_inits;
        let f = self.rnn_features();
        let (km, kr, kf) = self.counts();
        let in_w = self.ff_input_widths();
        let ffw = self.ff_widths();
        assert!(
            theta
                .mix
                .iter()
                .all(|(w, b)| w.len() == f * h && b.len() == h)
                && theta.lstm.0.len() == 2 * h * 4 * h
                && theta.to_controls.0.len() == h * pi
                && theta.step_size.0.len() == h
                && theta.ff_w0.len() == in_w.len()
                && theta
                    .ff_w0
                    .iter()
                    .zip(&in_w)
                    .all(|(w, &d)| w.len() == pi * d * ffw[0])
                && theta.ff_b0.len() == pi * ffw[0]
                && theta.ff_layers.len() == ffw.len() - 1,
            "Velo::update: θ's shapes do not match the configuration"
        );
        // Loss buffer: update, then features.
        let buf_n = if self.use_bugged_loss_features {
            c(10.0)
        } else {
            state.num_steps
        };
        let decays: Vec<P::Scalar> = loss_decays(buf_n);
        let it = state.step;
        {
            let (means, mins) = state.loss_buffer.split_at_mut(LOSS_DECAYS);
            // `decay^t` as XLA's `pow` (exp·log, one rounding), not `powi`'s repeated
            // multiplication: the features divide small differences of these corrections.
            let cor =
                |means: &[P::Scalar], j: usize, t: P::Scalar| means[j] / (one - decays[j].powf(t));
            let mut approx_max = cor(means, 0, it + one);
            for j in 1..LOSS_DECAYS {
                approx_max = approx_max.max(cor(means, j, it + one));
            }
            // The first update (per lane) has no running maximum yet.
            approx_max = P::Scalar::select(it.lt(c(0.5)), loss, approx_max);
            let l = (approx_max.abs() * c(2.0)).min(loss);
            for j in 0..LOSS_DECAYS {
                means[j] = means[j] * decays[j] + l * (one - decays[j]);
            }
            for j in 0..LOSS_DECAYS {
                mins[j] = mins[j].min(cor(means, j, it + one));
            }
        }
        let it = it + one;
        let loss_feats: Vec<_> = {
            let (means, mins) = state.loss_buffer.split_at(LOSS_DECAYS);
            let cor: Vec<_> = (0..LOSS_DECAYS)
                .map(|j| means[j] / (one - decays[j].powf(it)))
                .collect();
            (0..LOSS_DECAYS - 1)
                .map(|j| {
                    let den = (cor[j + 1] - mins[j]).max(c(1e-8));
                    let f1 = clip((cor[j] - mins[j]) / den - one, -1.0, 1.0);
                    P::Scalar::select(it.le(c(2.0)), f1 * c(0.0), f1)
                })
                .collect()
        };
        let k = grad.num_leaves();
        let g_all: Vec<Vec<P::Scalar>> = (0..k)
            .map(|i| {
                grad.leaf(i)
                    .iter()
                    .map(|&x| clip(x, -1000.0, 1000.0))
                    .collect()
            })
            .collect();
        let frac = state.step / state.num_steps;
        let frac_feats: Vec<_> = FRACTIONS
            .iter()
            .map(|&t| ((frac - c(t)) * c(10.0)).tanh())
            .collect();
        // Per-tensor features from the accumulators before this step.
        let mut feats = vec![c(0.0); k * f];
        let mut off = 0;
        for (li, g) in g_all.iter().enumerate() {
            let n = g.len();
            let nn = c(n as f64);
            let p = state.params.leaf(li);
            let ss = sum8(p, |x| x * x);
            let norm_mult = rsqrt((ss / nn).max(c(1e-9)));
            let m = &state.m[off * km..(off + n) * km];
            let v = &state.rms[off * kr..(off + n) * kr];
            // One pass over the interleaved records per statistic (the sums of
            // `sum8_by` over each decay's strided column, the same bits).
            let zeros = vec![c(0.0); km.max(kr)];
            let scaled = |x: P::Scalar, _| x * norm_mult;
            let sq_dev = |x: P::Scalar, mu: P::Scalar| {
                let d = x * norm_mult - mu;
                d * d
            };
            let mut mean_m = vec![c(0.0); km];
            sum8_records(m, km, &zeros[..km], scaled, &mut mean_m);
            mean_m.iter_mut().for_each(|x| *x /= nn);
            let mut var_m = vec![c(0.0); km];
            sum8_records(m, km, &mean_m, sq_dev, &mut var_m);
            var_m.iter_mut().for_each(|x| *x /= nn);
            let mut mean_rms = vec![c(0.0); kr];
            sum8_records(v, kr, &zeros[..kr], scaled, &mut mean_rms);
            mean_rms.iter_mut().for_each(|x| *x /= nn);
            // As in the library: the second moments' spread around the momenta's mean
            // (`kr` is 1 or `km`).
            let mean_of = |j: usize| mean_m[if km == 1 { 0 } else { j }];
            let mut var_rms = vec![c(0.0); km.max(kr)];
            if kr == 1 {
                for (j, o) in var_rms.iter_mut().enumerate() {
                    sum8_records(v, 1, &[mean_of(j)], sq_dev, std::slice::from_mut(o));
                }
            } else {
                let pat: Vec<_> = (0..kr).map(mean_of).collect();
                sum8_records(v, kr, &pat, sq_dev, &mut var_rms);
            }
            var_rms.iter_mut().for_each(|x| *x /= nn);
            let n_rank = state
                .params
                .leaf_shape(li)
                .iter()
                .filter(|&&d| d > 1)
                .count();
            let row = &mut feats[li * f..(li + 1) * f];
            let mut j = 0;
            let mut push = |x| {
                row[j] = x;
                j += 1;
            };
            // Sorted: fraction_left, loss_features, mean_rms, rank, var_m, var_rms.
            frac_feats.iter().for_each(|&x| push(x));
            loss_feats.iter().for_each(|&x| push(x));
            mean_rms.iter().for_each(|&x| push(clip_log_abs10(x)));
            for r in 0..5 {
                push(if r == n_rank { one } else { c(0.0) });
            }
            var_m.iter().for_each(|&x| push(clip_log_abs10(x)));
            var_rms.iter().for_each(|&x| push(clip_log_abs10(x)));
            off += n;
        }
        // Accumulators (fixed decays), and the factored ones' outputs per tensor: they do
        // not depend on the LSTM, so the helper (if any) starts on its blocks meanwhile.
        let mom_d: Vec<_> = self.momentum_decays.iter().map(|&d| c(d)).collect();
        let rms_d: Vec<_> = self
            .rms_decays
            .iter()
            .map(|&d| clip(c(d), 0.0, 1.0))
            .collect();
        let fac_d: Vec<_> = self
            .adafactor_decays
            .iter()
            .map(|&d| clip(c(d), 0.0, 1.0))
            .collect();
        let mut off = 0;
        for g in &g_all {
            let n = g.len();
            ema_interleaved(&mut state.m[off * km..(off + n) * km], g, &mom_d, |x| x);
            ema_interleaved(&mut state.rms[off * kr..(off + n) * kr], g, &rms_d, |x| {
                x * x
            });
            off += n;
        }
        let (mut off_row, mut off_col, mut off_diag) = (0, 0, 0);
        let facs: Vec<FacOut<P::Scalar>> = g_all
            .iter()
            .enumerate()
            .map(|(li, g)| {
                factored_step(
                    g,
                    &state.params.leaf_shape(li),
                    &fac_d,
                    (&mut state.fac_row, &mut state.fac_col, &mut state.fac_diag),
                    (&mut off_row, &mut off_col, &mut off_diag),
                    c(0.0),
                )
            })
            .collect();
        // Mixing layers, LSTM, controls: each one product for every tensor at once (the
        // released LSTM's weights are 8 MB, read once instead of once a tensor).
        let mut tmp = vec![c(0.0); k * h];
        small_rows_product(&feats, k, f, &theta.mix[1].0, &theta.mix[1].1, &mut tmp);
        let mut vmax = vec![c(f64::NEG_INFINITY); h];
        for row in tmp.chunks_exact(h) {
            for (m, &t) in vmax.iter_mut().zip(row) {
                *m = m.max(t.max(c(0.0)));
            }
        }
        small_rows_product(&feats, k, f, &theta.mix[2].0, &theta.mix[2].1, &mut tmp);
        for row in tmp.chunks_exact_mut(h) {
            for (o, &m) in row.iter_mut().zip(&vmax) {
                *o += m;
            }
        }
        // haiku's gates `b + [x, h]·W` with the hidden half first: `b + h·W_h`, then
        // `x·W_x` continuing each output's chain (so that the hidden half can be kept
        // for a fixed θ and state: `GatesFromInit`).
        let (w_x, w_h) = theta.lstm.0.split_at(h * 4 * h);
        let total_in: usize = in_w.iter().sum();
        let mut first_pass = None;
        let mut hn = vec![c(0.0); k * h];
        let mut controls = vec![c(0.0); k * pi];
        let mut lr_mult = vec![c(0.0); k];
        if let Some(bl) = blocks {
            // Block by block, shared with the helper when there is one: each block's
            // products are the whole matrices' chains for its columns (the same bits).
            let (x, cell) = (Arc::new(tmp), Arc::new(state.cell.clone()));
            let b = bl.clone();
            let lstm = helper::offer(helper.as_ref(), 0, bl.gates.blocks.len(), move |i| {
                b.outputs(i, &x, &cell, k)
            });
            // Meanwhile (the helper's worker waking) the first pass of the per-parameter
            // MLP, whose inputs do not depend on the LSTM, when every tensor's are kept.
            if g_all.iter().all(|g| keeps_features(g.len(), total_in)) {
                let mut off = 0;
                let firsts = g_all.iter().enumerate().map(|(li, g)| {
                    let n = g.len();
                    let m = &state.m[off * km..(off + n) * km];
                    let v = &state.rms[off * kr..(off + n) * kr];
                    let p = state.params.leaf(li);
                    off += n;
                    let build = input_builder(g, p, m, v, (km, kr, kf), &facs[li], total_in);
                    let mut inputs = vec![c(0.0); n * total_in];
                    let scale = feature_scales(n, total_in, build, true, &mut inputs);
                    let param_scale = (sum8(p, |x| x * x) / c(n as f64) + c(1e-9)).sqrt();
                    (inputs, scale, param_scale)
                });
                first_pass = Some(firsts.collect::<Vec<_>>());
            }
            let parts = lstm.collect();
            for (i, part) in parts.iter().enumerate() {
                let u = part.len() / k;
                for (row, p) in hn.chunks_exact_mut(h).zip(part.chunks_exact(u)) {
                    row[i * bl.units..i * bl.units + u].copy_from_slice(p);
                }
            }
            let (x, b) = (Arc::new(hn), bl.clone());
            let parts = helper::tasks(helper.as_ref(), 1, bl.controls.blocks.len(), move |i| {
                b.controls.product(i, &x, k)
            });
            let mut col = 0;
            for part in &parts {
                let w = part.len() / k;
                for (r, p) in part.chunks_exact(w).enumerate() {
                    for (j, &v) in p.iter().enumerate() {
                        match col + j {
                            q if q < pi => controls[r * pi + q] = v,
                            _ => lr_mult[r] = v,
                        }
                    }
                }
                col += w;
            }
        } else {
            let mut gates = vec![c(0.0); k * 4 * h];
            match from_init {
                Some(fx) => small_rows_product(&tmp, k, h, w_x, &fx.start, &mut gates),
                None => {
                    let mut start = vec![c(0.0); k * 4 * h];
                    small_rows_product(&state.hidden, k, h, w_h, &theta.lstm.1, &mut start);
                    small_rows_product_from(&tmp, k, h, w_x, &start, &mut gates);
                }
            }
            let mut cnew = vec![c(0.0); h];
            for li in 0..k {
                let cell = &mut state.cell[li * h..(li + 1) * h];
                let hrow = &mut hn[li * h..(li + 1) * h];
                lstm_cell(&gates[li * 4 * h..(li + 1) * 4 * h], cell, hrow, &mut cnew);
                if !self.use_bugged_next_lstm_state {
                    cell.copy_from_slice(&cnew);
                }
            }
            if !self.use_bugged_next_lstm_state {
                state.hidden.copy_from_slice(&hn);
            }
            let (cw, cb) = &theta.to_controls;
            small_rows_product(&hn, k, h, cw, cb, &mut controls);
            small_rows_product(
                &hn,
                k,
                h,
                &theta.step_size.0,
                &theta.step_size.1,
                &mut lr_mult,
            );
        }
        if self.rnn_state_decay > 0.0 {
            let d = c(1.0 - self.rnn_state_decay);
            state
                .hidden
                .iter_mut()
                .chain(state.cell.iter_mut())
                .for_each(|x| *x *= d);
        }
        // Per tensor: the mixed MLP and the step.
        let mut off = 0;
        // The bank mixed for every tensor at once: `[k, Σ len]`.
        let mut mixed = Vec::new();
        mix_banks(
            theta,
            fixed.map(|fx| &fx.bank[..]),
            &controls,
            k,
            &mut mixed,
        );
        let (exp_mult, step_mult) = (c(self.exp_mult), c(self.step_mult));
        if let Some(inputs) = first_pass {
            // The second pass by blocks, shared with the helper.
            let jobs: Vec<(usize, usize)> = g_all
                .iter()
                .enumerate()
                .flat_map(|(li, g)| (0..g.len()).step_by(MLP_BLOCK).map(move |s| (li, s)))
                .collect();
            let second = Arc::new(SecondPass {
                inputs,
                mixed,
                total_in,
                ffw: ffw.clone(),
                lr: lr_mult,
                exp_mult,
                step_mult,
                jobs: jobs.clone(),
            });
            let steps = helper::tasks(helper.as_ref(), 2, jobs.len(), move |i| second.steps(i));
            for (&(li, start), st) in jobs.iter().zip(&steps) {
                for (p, &s) in state.params.leaf_mut(li)[start..].iter_mut().zip(st) {
                    *p -= s;
                }
            }
            state.iteration += 1;
            state.step += one;
            return;
        }
        drop(helper);
        let total_mixed = mixed.len() / k.max(1);
        let mut mlp = BlockMlp::new();
        let (mut feats, mut steps) = (ThreadBuffer::<P::Scalar>::take(), Vec::new());
        for (li, g) in g_all.iter().enumerate() {
            let n = g.len();
            let nn = c(n as f64);
            let net = tensor_net(
                &mixed[li * total_mixed..(li + 1) * total_mixed],
                total_in,
                &ffw,
            );
            let m = &state.m[off * km..(off + n) * km];
            let v = &state.rms[off * kr..(off + n) * kr];
            let p = state.params.leaf(li);
            let build = input_builder(g, p, m, v, (km, kr, kf), &facs[li], total_in);
            let sq = sum8(p, |x| x * x);
            let param_scale = (sq / nn + c(1e-9)).sqrt();
            steps.clear();
            normalized_mlp(
                n,
                total_in,
                build,
                &mut mlp,
                &net,
                &mut feats,
                |out, _, nb| {
                    let (direction, magnitude) = (&out[..nb], &out[nb..2 * nb]);
                    let mults = (lr_mult[li], param_scale, exp_mult, step_mult);
                    steps.extend(steps_of(direction, magnitude, mults));
                },
            );
            for (p, &st) in state.params.leaf_mut(li).iter_mut().zip(&steps) {
                *p -= st;
            }
            off += n;
        }
        state.iteration += 1;
        state.step += one;
    }
}

impl LearnedOptimizer for Velo {
    type Theta<S: Real> = VeloTheta<S>;
    type State<P: Params> = VeloState<P>;

    /// Weights from haiku's truncated normal (σ = 1/√fan_in, ±2σ; the MLP bank with the
    /// fan-in of all its inputs, as the library), zero biases, zero LSTM state — lopt's
    /// random stream, not JAX's. Load the released weights with [`FlaxTheta::from_flax`].
    fn init(&self, key: Key) -> VeloTheta<f32> {
        let h = self.lstm_hidden_size;
        let f = self.rnn_features();
        let lin = |k: u64, din: usize, dout: usize| {
            let mut w = vec![0.0f32; din * dout];
            key.fold_in(k)
                .fill_truncated_normal(&mut w, 1.0 / (din as f32).sqrt());
            (w, vec![0.0f32; dout])
        };
        let pi = self.param_inits;
        let widths = self.ff_input_widths();
        let total: usize = widths.iter().sum();
        let ffw = self.ff_widths();
        let ff_w0 = widths
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let mut w = vec![0.0f32; pi * d * ffw[0]];
                key.fold_in(100 + i as u64)
                    .fill_truncated_normal(&mut w, 1.0 / (total as f32).sqrt());
                w
            })
            .collect();
        let ff_layers = ffw
            .windows(2)
            .enumerate()
            .map(|(l, io)| {
                let mut w = vec![0.0f32; pi * io[0] * io[1]];
                key.fold_in(200 + l as u64)
                    .fill_truncated_normal(&mut w, 1.0 / (io[0] as f32).sqrt());
                (w, vec![0.0f32; pi * io[1]])
            })
            .collect();
        VeloTheta {
            init_hidden: vec![0.0; h],
            init_cell: vec![0.0; h],
            mix: [lin(0, f, h), lin(1, f, h), lin(2, f, h)],
            lstm: lin(3, 2 * h, 4 * h),
            to_controls: lin(4, h, pi),
            step_size: lin(5, h, 1),
            ff_w0,
            ff_b0: vec![0.0; pi * ffw[0]],
            ff_layers,
        }
    }

    fn cast_theta<T: Real, S: Real>(&self, theta: &VeloTheta<T>) -> VeloTheta<S> {
        theta.cast()
    }

    /// # Panics
    /// Without `num_steps` ([`Velo::try_init_state`] returns an error instead).
    fn init_state<P: Params>(
        &self,
        theta: &VeloTheta<P::Scalar>,
        params: P,
        num_steps: Option<usize>,
    ) -> VeloState<P> {
        let num_steps = num_steps
            .filter(|&n| n > 0)
            .expect("Velo needs num_steps at init (Velo::try_init_state reports this)");
        let c = P::Scalar::from_f64;
        let (km, kr, kf) = self.counts();
        let (mut n, mut rows, mut cols, mut diag) = (0, 0, 0, 0);
        for i in 0..params.num_leaves() {
            let len = params.leaf(i).len();
            n += len;
            match factoring(&params.leaf_shape(i)) {
                Some((a, b, _)) => {
                    rows += a;
                    cols += b;
                }
                None => diag += len,
            }
        }
        let k = params.num_leaves();
        let mut loss_buffer = vec![c(0.0); LOSS_DECAYS];
        loss_buffer.extend(std::iter::repeat_n(c(999999999999.0), LOSS_DECAYS));
        VeloState {
            params,
            m: vec![c(0.0); n * km],
            rms: vec![c(0.0); n * kr],
            fac_row: vec![c(0.0); rows * kf],
            fac_col: vec![c(0.0); cols * kf],
            fac_diag: vec![c(0.0); diag * kf],
            hidden: theta.init_hidden.repeat(k),
            cell: theta.init_cell.repeat(k),
            loss_buffer,
            iteration: 0,
            step: c(0.0),
            num_steps: c(num_steps as f64),
        }
    }

    fn update<P: Params>(
        &self,
        theta: &VeloTheta<P::Scalar>,
        state: &mut VeloState<P>,
        grad: &P,
        loss: P::Scalar,
    ) {
        self.step(theta, None, false, state, grad, loss)
    }

    /// With θ fixed, computed once: the MLP bank concatenated (mixed in one product), and
    /// the gates' hidden half from θ's initial LSTM state: with
    /// `use_bugged_next_lstm_state` (the released VeLO) and no state decay every step's
    /// LSTM reads that state, so each step reads half of the LSTM's weights; from the
    /// released VeLO's size (2^20 LSTM input weights) the update's products and
    /// per-parameter MLP go by blocks shared with a second core, the same bits.
    fn update_fixed<P: Params>(
        &self,
        theta: &VeloTheta<P::Scalar>,
        cache: &ThetaCache,
        state: &mut VeloState<P>,
        grad: &P,
        loss: P::Scalar,
    ) {
        self.update_fixed_with(HELP_FROM, false, theta, cache, state, grad, loss)
    }

    fn params<'s, P: Params>(&self, state: &'s VeloState<P>) -> &'s P {
        &state.params
    }

    fn set_params<P: Params>(&self, state: &mut VeloState<P>, params: P) {
        state.params = params;
    }
    fn iteration<P: Params>(&self, state: &VeloState<P>) -> usize {
        state.iteration
    }
    fn set_iteration<P: Params>(
        &self,
        state: &mut VeloState<P>,
        iteration: usize,
    ) -> crate::error::Result<()> {
        // The per-lane counts are leaves: a checkpoint restores them with the others.
        state.iteration = iteration;
        Ok(())
    }
    fn name(&self) -> String {
        "Velo".into()
    }
}

fn lin_flax<S: Real>((w, b): &Linear<S>, din: usize) -> FlaxValue {
    let dout = b.len();
    FlaxValue::map([("b", arr(vec![dout], b)), ("w", arr(vec![din, dout], w))])
}

fn lin_from<S: Real>(
    v: &FlaxValue,
    path: &[&str],
    din: usize,
    dout: usize,
) -> Result<Linear<S>, FlaxMsgpackError> {
    let with = |last: &'static str| {
        let mut p = path.to_vec();
        p.push(last);
        p
    };
    Ok((
        v.real_array(&with("w"), &[din, dout])?,
        v.real_array(&with("b"), &[dout])?,
    ))
}

/// The library's θ: `lstm_init_state/{cell, hidden}`, `rnn_params/{linear, linear_1,
/// linear_2, "rnn/linear", rnn_to_controls, step_size}`, `ff_mod_stack/"~"/{w0__i, b0, w1,
/// b1, …}`. [`FlaxTheta::from_flax`] also accepts the released checkpoints' wrapping of θ
/// as the first element of a tuple (`{"0": θ, …}`).
impl<S: Real> FlaxTheta for VeloTheta<S> {
    type Config = Velo;
    fn to_flax(&self) -> FlaxValue {
        let h = self.init_hidden.len();
        let pi = self.to_controls.1.len();
        let f = self.mix[0].0.len() / h.max(1);
        let hid0 = self.ff_b0.len() / pi.max(1);
        let mut ff = Vec::new();
        ff.push(("b0".to_string(), arr(vec![pi, hid0], &self.ff_b0)));
        let mut din = hid0;
        for (l, (w, b)) in self.ff_layers.iter().enumerate() {
            let dout = b.len() / pi.max(1);
            ff.push((format!("b{}", l + 1), arr(vec![pi, dout], b)));
            ff.push((format!("w{}", l + 1), arr(vec![pi, din, dout], w)));
            din = dout;
        }
        for (i, w) in self.ff_w0.iter().enumerate() {
            let d = w.len() / (pi * hid0).max(1);
            ff.push((format!("w0__{i}"), arr(vec![pi, d, hid0], w)));
        }
        FlaxValue::map([
            ("ff_mod_stack", FlaxValue::map([("~", FlaxValue::Map(ff))])),
            (
                "lstm_init_state",
                FlaxValue::map([
                    ("cell", arr(vec![1, h], &self.init_cell)),
                    ("hidden", arr(vec![1, h], &self.init_hidden)),
                ]),
            ),
            (
                "rnn_params",
                FlaxValue::map([
                    ("linear", lin_flax(&self.mix[0], f)),
                    ("linear_1", lin_flax(&self.mix[1], f)),
                    ("linear_2", lin_flax(&self.mix[2], f)),
                    ("rnn/linear", lin_flax(&self.lstm, 2 * h)),
                    ("rnn_to_controls", lin_flax(&self.to_controls, h)),
                    ("step_size", lin_flax(&self.step_size, h)),
                ]),
            ),
        ])
    }

    fn from_flax(cfg: &Velo, v: &FlaxValue) -> Result<Self, FlaxMsgpackError> {
        let v = match (v.get(&["rnn_params"]), v.get(&["0"])) {
            (Err(_), Ok(inner)) => inner,
            _ => v,
        };
        let h = cfg.lstm_hidden_size;
        let f = cfg.rnn_features();
        let pi = cfg.param_inits;
        let ffw = cfg.ff_widths();
        let ff_w0 = cfg
            .ff_input_widths()
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                v.real_array(
                    &["ff_mod_stack", "~", &format!("w0__{i}")],
                    &[pi, d, ffw[0]],
                )
            })
            .collect::<Result<_, _>>()?;
        let ff_layers = ffw
            .windows(2)
            .enumerate()
            .map(|(l, io)| {
                let (wn, bn) = (format!("w{}", l + 1), format!("b{}", l + 1));
                Ok((
                    v.real_array(&["ff_mod_stack", "~", &wn], &[pi, io[0], io[1]])?,
                    v.real_array(&["ff_mod_stack", "~", &bn], &[pi, io[1]])?,
                ))
            })
            .collect::<Result<_, FlaxMsgpackError>>()?;
        Ok(VeloTheta {
            init_hidden: v.real_array(&["lstm_init_state", "hidden"], &[1, h])?,
            init_cell: v.real_array(&["lstm_init_state", "cell"], &[1, h])?,
            mix: [
                lin_from(v, &["rnn_params", "linear"], f, h)?,
                lin_from(v, &["rnn_params", "linear_1"], f, h)?,
                lin_from(v, &["rnn_params", "linear_2"], f, h)?,
            ],
            lstm: lin_from(v, &["rnn_params", "rnn/linear"], 2 * h, 4 * h)?,
            to_controls: lin_from(v, &["rnn_params", "rnn_to_controls"], h, pi)?,
            step_size: lin_from(v, &["rnn_params", "step_size"], h, 1)?,
            ff_w0,
            ff_b0: v.real_array(&["ff_mod_stack", "~", "b0"], &[pi, ffw[0]])?,
            ff_layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizers::Optimizer;

    /// Two tensors: `w` `[6, len / 6]` (factored accumulators; `[6, 5]` unless a test
    /// says) and `b` `[len]` (5).
    #[derive(Clone, Debug)]
    struct Tree {
        w: Vec<f32>,
        b: Vec<f32>,
    }

    impl Params for Tree {
        type Scalar = f32;
        fn num_leaves(&self) -> usize {
            2
        }
        fn leaf(&self, i: usize) -> &[f32] {
            [&self.w, &self.b][i]
        }
        fn leaf_mut(&mut self, i: usize) -> &mut [f32] {
            if i == 0 {
                &mut self.w
            } else {
                &mut self.b
            }
        }
        fn write_leaf_name(&self, i: usize, out: &mut String) {
            out.push_str(["w", "b"][i]);
        }
        fn leaf_shape(&self, i: usize) -> Vec<usize> {
            [vec![6, self.w.len() / 6], vec![self.b.len()]][i].clone()
        }
    }

    /// θ of `cfg` with a non-zero initial LSTM state and gate bias (so that the gates'
    /// hidden half matters).
    fn theta(cfg: &Velo) -> VeloTheta<f32> {
        let mut t = cfg.init(Key::new(3));
        let h = cfg.lstm_hidden_size;
        t.init_hidden = Key::new(4).normal_vec(h);
        t.init_cell = Key::new(5).normal_vec(h);
        t.lstm.1 = Key::new(6).normal_vec(4 * h);
        t
    }

    /// Three updates of `opt_fn(θ)` (θ fixed: with the bugged LSTM state the gates'
    /// hidden half is kept from the first update) and of `update`: the same bits, with the
    /// state advancing or not, and for a state whose second tensor's LSTM state is not
    /// θ's (the kept half must not serve it). Catches (tried): the kept half used
    /// without comparing the states (the moved state differs from the first step).
    #[test]
    fn updates_with_theta_fixed_are_the_updates() {
        let small = Velo {
            lstm_hidden_size: 16,
            param_inits: 8,
            use_bugged_next_lstm_state: true,
            ..Velo::default()
        };
        let advancing = Velo {
            use_bugged_next_lstm_state: false,
            ..small.clone()
        };
        for cfg in [small, advancing] {
            for moved in [false, true] {
                let th = theta(&cfg);
                let p = Tree {
                    w: Key::new(7).normal_vec(30),
                    b: Key::new(8).normal_vec(5),
                };
                let mut direct = cfg.init_state(&th, p, Some(50));
                if moved {
                    direct.hidden[cfg.lstm_hidden_size + 3] += 0.5;
                }
                let mut fixed = direct.clone();
                let opt = cfg.opt_fn(&th);
                for t in 0..3 {
                    let g = Tree {
                        w: Key::new(10 + t).normal_vec(30),
                        b: Key::new(20 + t).normal_vec(5),
                    };
                    let loss = 2.0 - 0.3 * t as f32;
                    cfg.update(&th, &mut direct, &g, loss);
                    opt.update(&mut fixed, &g, loss);
                    let bits = |s: &VeloState<Tree>| {
                        let (p, q) = (&s.params, &s.hidden);
                        p.w.iter()
                            .chain(&p.b)
                            .chain(q)
                            .map(|x| x.to_bits())
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        bits(&direct),
                        bits(&fixed),
                        "bugged {} moved {moved} step {t}",
                        cfg.use_bugged_next_lstm_state
                    );
                }
            }
        }
    }

    /// The products by blocks ([`UpdateBlocks`], forced at a small size: LSTM 40 wide,
    /// so one block of 32 units and a short one of 8; 70 controls and the step size, one
    /// block of 64 columns and one of 7) give `update`'s bits on one thread, on two with
    /// the caller and the helper sharing the blocks, and with every block left to the
    /// helper, for three updates; the per-parameter MLP's second pass by blocks of
    /// elements (`w` `[6, 100]`: blocks of 256, 256 and 88; `b` one of 5). Catches (each
    /// tried): a short gate block's cells read at the block's own width instead of the
    /// full blocks' offset; its outputs written there; the step size's column not
    /// written; a block's steps applied from the tensor's first element.
    #[test]
    fn updates_by_blocks_are_the_updates_on_any_thread() {
        let cfg = Velo {
            lstm_hidden_size: 40,
            param_inits: 70,
            use_bugged_next_lstm_state: true,
            ..Velo::default()
        };
        let th = theta(&cfg);
        let p = Tree {
            w: Key::new(7).normal_vec(600),
            b: Key::new(8).normal_vec(5),
        };
        let grads: Vec<Tree> = (0..3)
            .map(|t| Tree {
                w: Key::new(10 + t).normal_vec(600),
                b: Key::new(20 + t).normal_vec(5),
            })
            .collect();
        let bits = |s: &VeloState<Tree>| {
            let p = &s.params;
            p.w.iter()
                .chain(&p.b)
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        let mut direct = cfg.init_state(&th, p, Some(50));
        let mut runs: Vec<(usize, bool, VeloState<Tree>, ThetaCache)> = [1, 2, 3]
            .iter()
            .flat_map(|&n| [(n, false), (n, true)])
            .map(|(n, leave)| (n, leave, direct.clone(), ThetaCache::new()))
            .collect();
        for (t, g) in grads.iter().enumerate() {
            let loss = 2.0 - 0.3 * t as f32;
            cfg.update(&th, &mut direct, g, loss);
            for (threads, leave_all, state, cache) in &mut runs {
                crate::on_threads(*threads, || {
                    cfg.update_fixed_with(0, *leave_all, &th, cache, state, g, loss)
                });
                assert!(
                    cache
                        .get_or_init(|| -> FixedTheta<f32> { unreachable!() })
                        .is_some_and(|fx| fx.blocks.is_some()),
                    "the blocks were not built"
                );
                assert_eq!(
                    bits(&direct),
                    bits(state),
                    "threads {threads} leave_all {leave_all} step {t}"
                );
            }
        }
    }
}
