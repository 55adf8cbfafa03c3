//! `AdafacMlpLOpt`: a per-parameter MLP learned optimizer over momentum, RMS and
//! Adafactor-style factored second-moment features (the JAX library's `AdafacMLPLOpt`,
//! `learned_optimizers/adafac_mlp_lopt.py`, with its default `concat_weights=True`).

use super::flax_msgpack::{arr, FlaxMsgpackError, FlaxTheta, FlaxValue};
use super::parts::{
    ema_interleaved, fold_fixed_inputs, normalized_mlp, params_then_vectors, rsqrt, strided_column,
    BlockMlp, LayerRef, MLP_BLOCK,
};
use super::LearnedOptimizer;
use crate::error::{Error, Result};
use crate::kernels::alloc::ThreadBuffer;
use crate::key::Key;
use crate::params::Params;
use crate::scalar::Real;

/// Timescales of the library's `tanh_embedding` of the step count.
const TIMESCALES: [f64; 11] = [
    1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0,
];

/// The library's `AdafacMLPLOpt` (defaults: `exp_mult = step_mult = 0.001`,
/// `hidden_size = 4`, `hidden_layers = 2`, momentum decays `(0.9, 0.99, 0.999)`, RMS decay
/// `(0.999,)`, Adafactor decays `(0.9, 0.99, 0.999)`).
///
/// Per step, with decays `d = 1 − exp(10·(ln(1 − d₀)/10 + θ_d))` from θ:
/// momenta `m_k ← d_k·m_k + (1 − d_k)·g`; second moments `v ← d·v + (1 − d)·g²` (decay
/// clipped to `[0, 1]`); and per Adafactor decay, for a matrix, row and column means of
/// `g² + 1e-30` (the library's `factored_dims`: the smaller dimension, or the first when
/// equal, indexes the "row" accumulator) and the preconditioned gradient
/// `g·rsqrt(v_row/mean(v_row) …)·rsqrt(v_col)`; for a vector or a scalar a diagonal
/// accumulator. Each element then gets 28 features (with the default decays: `g`, `p`,
/// `m`, `v`, `m·rsqrt(v + 1e-6)`, `rsqrt(v + 1e-6)`, the preconditioned gradients, the row
/// and column accumulators and their `rsqrt(· + 1e-8)`, and the factored momentum), each
/// normalized by its root mean square over the tensor (`x·rsqrt(1e-5 + mean x²)`), then
/// the 11 `tanh(step/τ − 1)` features, into an MLP (ReLU, `hidden_layers` of
/// `hidden_size`, 2 outputs `(d, s)`): `p ← p − step_mult·d·exp(exp_mult·s)`.
///
/// Tensors of rank up to 2 (lopt's leaves); matrices are read in lopt's column-major leaf
/// order with the shape [`Params::leaf_shape`] reports. The loss is ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct AdafacMlpLOpt {
    /// Multiplier of the magnitude output inside the exponential.
    pub exp_mult: f64,
    /// Multiplier of the step.
    pub step_mult: f64,
    /// Width of the hidden layers.
    pub hidden_size: usize,
    /// Number of hidden layers.
    pub hidden_layers: usize,
    /// Momentum decays θ starts from.
    pub initial_momentum_decays: Vec<f64>,
    /// RMS decays θ starts from.
    pub initial_rms_decays: Vec<f64>,
    /// Adafactor decays θ starts from.
    pub initial_adafactor_decays: Vec<f64>,
}

impl Default for AdafacMlpLOpt {
    fn default() -> Self {
        AdafacMlpLOpt {
            exp_mult: 0.001,
            step_mult: 0.001,
            hidden_size: 4,
            hidden_layers: 2,
            initial_momentum_decays: vec![0.9, 0.99, 0.999],
            initial_rms_decays: vec![0.999],
            initial_adafactor_decays: vec![0.9, 0.99, 0.999],
        }
    }
}

impl AdafacMlpLOpt {
    /// `Ok` when the multipliers are finite, every decay lies in `[0, 1)`, each list is
    /// non-empty, the Adafactor and momentum lists have one length, and the RMS list has
    /// one entry or that length (the library broadcasts them against each other), and
    /// `hidden_size > 0`.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(Error::InvalidArgument(format!("AdafacMlpLOpt: {s}")));
        if !(self.exp_mult.is_finite() && self.step_mult.is_finite()) {
            return bad("exp_mult and step_mult must be finite".into());
        }
        for (w, l) in [
            ("momentum", &self.initial_momentum_decays),
            ("rms", &self.initial_rms_decays),
            ("adafactor", &self.initial_adafactor_decays),
        ] {
            if l.is_empty() || l.iter().any(|d| !(0.0..1.0).contains(d)) {
                return bad(format!("{w} decays must be non-empty and in [0, 1): {l:?}"));
            }
        }
        let (km, kr, kf) = self.counts();
        if km != kf || !(kr == 1 || kr == km) {
            return bad(format!(
                "{km} momentum, {kr} rms and {kf} adafactor decays do not broadcast"
            ));
        }
        if self.hidden_size == 0 {
            return bad("hidden_size must be positive".into());
        }
        Ok(())
    }

    fn counts(&self) -> (usize, usize, usize) {
        (
            self.initial_momentum_decays.len(),
            self.initial_rms_decays.len(),
            self.initial_adafactor_decays.len(),
        )
    }

    /// Per-element features before the step-count features.
    pub fn num_features(&self) -> usize {
        let (km, kr, kf) = self.counts();
        2 + km + kr + km.max(kr) + kr + 6 * kf
    }

    fn widths(&self) -> Vec<usize> {
        let mut w = vec![self.num_features() + TIMESCALES.len()];
        w.extend(std::iter::repeat_n(self.hidden_size, self.hidden_layers));
        w.push(2);
        w
    }
}

/// θ of [`AdafacMlpLOpt`]. Weights are row-major `[in, out]` as haiku stores them.
#[derive(Debug, Clone, PartialEq)]
pub struct AdafacMlpLOptTheta<S> {
    /// `momentum_decays`: offsets of the momentum decays in `ln(1 − d)/10` units.
    pub momentum_decays: Vec<S>,
    /// `rms_decays`, likewise.
    pub rms_decays: Vec<S>,
    /// `adafactor_decays`, likewise.
    pub adafactor_decays: Vec<S>,
    /// `nn/~/w{i}` (row-major `[in, out]`) and `nn/~/b{i}`.
    pub layers: Vec<(Vec<S>, Vec<S>)>,
}

impl<S: Real> AdafacMlpLOptTheta<S> {
    fn cast<T: Real>(&self) -> AdafacMlpLOptTheta<T> {
        let c = |v: &Vec<S>| v.iter().map(|x| T::from_f64(x.lane(0))).collect::<Vec<T>>();
        AdafacMlpLOptTheta {
            momentum_decays: c(&self.momentum_decays),
            rms_decays: c(&self.rms_decays),
            adafactor_decays: c(&self.adafactor_decays),
            layers: self.layers.iter().map(|(w, b)| (c(w), c(b))).collect(),
        }
    }
}

/// Leaves: the three decay vectors, then `w0, b0, w1, b1, …` (flat, row-major).
impl<S: Real> Params for AdafacMlpLOptTheta<S> {
    type Scalar = S;
    fn num_leaves(&self) -> usize {
        3 + 2 * self.layers.len()
    }
    fn leaf(&self, i: usize) -> &[S] {
        match i {
            0 => &self.momentum_decays,
            1 => &self.rms_decays,
            2 => &self.adafactor_decays,
            _ if (i - 3).is_multiple_of(2) => &self.layers[(i - 3) / 2].0,
            _ => &self.layers[(i - 3) / 2].1,
        }
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [S] {
        match i {
            0 => &mut self.momentum_decays,
            1 => &mut self.rms_decays,
            2 => &mut self.adafactor_decays,
            _ if (i - 3).is_multiple_of(2) => &mut self.layers[(i - 3) / 2].0,
            _ => &mut self.layers[(i - 3) / 2].1,
        }
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        match i {
            0 => out.push_str("momentum_decays"),
            1 => out.push_str("rms_decays"),
            2 => out.push_str("adafactor_decays"),
            _ => {
                let k = (i - 3) / 2;
                out.push_str(&format!(
                    "nn.{}{k}",
                    if (i - 3).is_multiple_of(2) { "w" } else { "b" }
                ));
            }
        }
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        vec![self.leaf(i).len()]
    }
}

/// State of [`AdafacMlpLOpt`]'s inner optimizer. The accumulators of all leaves are
/// concatenated, leaf by leaf, element-major with the decays innermost.
#[derive(Debug, Clone)]
pub struct AdafacMlpLOptState<P: Params> {
    /// Current parameters.
    pub params: P,
    /// Momenta, `Km` per element.
    pub m: Vec<P::Scalar>,
    /// Second moments, `Kr` per element.
    pub rms: Vec<P::Scalar>,
    /// Factored "row" accumulators of the matrices, `Kf` per entry.
    pub fac_row: Vec<P::Scalar>,
    /// Factored "column" accumulators of the matrices, `Kf` per entry.
    pub fac_col: Vec<P::Scalar>,
    /// Diagonal accumulators of vectors and scalars, `Kf` per element.
    pub fac_diag: Vec<P::Scalar>,
    /// Updates applied so far.
    pub iteration: usize,
    /// The updates applied in each lane, what the step-count features read (lanes of a
    /// group restart their tasks at different times); equal to `iteration` in `f32`.
    pub step: P::Scalar,
}

// Leaves: the parameters, then one each for the statistics, then the step count.
params_then_vectors!(AdafacMlpLOptState {
    m,
    rms,
    fac_row,
    fac_col,
    fac_diag
} scalars { step });

/// A leaf's factoring: `None` for rank < 2, else `(a_len, b_len, transposed)` where the
/// "row" accumulator is indexed by `a` (the library's `d1`: the smaller dimension, the
/// first when equal) and the "column" one by `b`; `transposed` when `a` is the columns.
pub(crate) fn factoring(shape: &[usize]) -> Option<(usize, usize, bool)> {
    match *shape {
        [r, c] => {
            if r <= c {
                Some((r, c, false))
            } else {
                Some((c, r, true))
            }
        }
        _ => None,
    }
}

/// `1 − exp(10·(ln(1 − d₀)/10 + θ))`.
fn decays<S: Real>(initial: &[f64], theta: &[S]) -> Vec<S> {
    let c = S::from_f64;
    initial
        .iter()
        .zip(theta)
        .map(|(&d0, &t)| {
            let base = (c(1.0) - c(d0)).ln() / c(10.0);
            c(1.0) - ((base + t) * c(10.0)).exp()
        })
        .collect()
}

fn clip01<S: Real>(x: S) -> S {
    x.max(S::from_f64(0.0)).min(S::from_f64(1.0))
}

impl LearnedOptimizer for AdafacMlpLOpt {
    type Theta<S: Real> = AdafacMlpLOptTheta<S>;
    type State<P: Params> = AdafacMlpLOptState<P>;

    /// Zero decay offsets, weights from haiku's truncated normal (σ = 1/√fan_in, cut at
    /// ±2σ), zero biases (lopt's random stream, not JAX's).
    fn init(&self, key: Key) -> AdafacMlpLOptTheta<f32> {
        let (km, kr, kf) = self.counts();
        let widths = self.widths();
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(k, io)| {
                let mut w = vec![0.0f32; io[0] * io[1]];
                key.fold_in(k as u64)
                    .fill_truncated_normal(&mut w, 1.0 / (io[0] as f32).sqrt());
                (w, vec![0.0f32; io[1]])
            })
            .collect();
        AdafacMlpLOptTheta {
            momentum_decays: vec![0.0; km],
            rms_decays: vec![0.0; kr],
            adafactor_decays: vec![0.0; kf],
            layers,
        }
    }

    fn cast_theta<T: Real, S: Real>(&self, theta: &AdafacMlpLOptTheta<T>) -> AdafacMlpLOptTheta<S> {
        theta.cast()
    }

    fn init_state<P: Params>(
        &self,
        _theta: &AdafacMlpLOptTheta<P::Scalar>,
        params: P,
        _num_steps: Option<usize>,
    ) -> AdafacMlpLOptState<P> {
        let (km, kr, kf) = self.counts();
        let zero = P::Scalar::from_f64(0.0);
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
        AdafacMlpLOptState {
            params,
            m: vec![zero; n * km],
            rms: vec![zero; n * kr],
            fac_row: vec![zero; rows * kf],
            fac_col: vec![zero; cols * kf],
            fac_diag: vec![zero; diag * kf],
            iteration: 0,
            step: zero,
        }
    }

    fn update<P: Params>(
        &self,
        theta: &AdafacMlpLOptTheta<P::Scalar>,
        state: &mut AdafacMlpLOptState<P>,
        grad: &P,
        _loss: P::Scalar,
    ) {
        crate::optimizers::assert_leaf_lengths(
            "AdafacMlpLOpt::update: gradient vs params",
            &state.params,
            grad,
        );
        let c = P::Scalar::from_f64;
        let (km, kr, kf) = self.counts();
        let widths = self.widths();
        assert!(
            theta.momentum_decays.len() == km
                && theta.rms_decays.len() == kr
                && theta.adafactor_decays.len() == kf
                && theta.layers.len() == widths.len() - 1
                && theta
                    .layers
                    .iter()
                    .zip(widths.windows(2))
                    .all(|((w, b), io)| w.len() == io[0] * io[1] && b.len() == io[1]),
            "AdafacMlpLOpt::update: θ's shapes do not match the configuration"
        );
        let mom_d = decays(&self.initial_momentum_decays, &theta.momentum_decays);
        let rms_d: Vec<_> = decays(&self.initial_rms_decays, &theta.rms_decays)
            .into_iter()
            .map(clip01)
            .collect();
        let fac_d: Vec<_> = decays(&self.initial_adafactor_decays, &theta.adafactor_decays)
            .into_iter()
            .map(clip01)
            .collect();
        // The step-count features from the iteration before this update.
        let t = state.step;
        let tsf: Vec<_> = TIMESCALES
            .iter()
            .map(|&s| (t / c(s) - c(1.0)).tanh())
            .collect();
        let nf = self.num_features();
        let kmr = km.max(kr);
        let (mut off_n, mut off_row, mut off_col, mut off_diag) = (0, 0, 0, 0);
        let mut layers: Vec<LayerRef<P::Scalar>> = theta
            .layers
            .iter()
            .map(|(w, b)| (w.as_slice(), b.as_slice()))
            .collect();
        // The time features are the same for every element: folded into the first
        // layer's bias.
        let mut first_bias = Vec::new();
        layers[0] = fold_fixed_inputs(layers[0], self.num_features(), &tsf, &mut first_bias);
        let mut mlp = BlockMlp::new();
        let (mut feats, mut steps) = (ThreadBuffer::<P::Scalar>::take(), Vec::new());
        for li in 0..grad.num_leaves() {
            let g = grad.leaf(li);
            let n = g.len();
            let shape = state.params.leaf_shape(li);
            let m = &mut state.m[off_n * km..(off_n + n) * km];
            let v = &mut state.rms[off_n * kr..(off_n + n) * kr];
            ema_interleaved(m, g, &mom_d, |x| x);
            ema_interleaved(v, g, &rms_d, |x| x * x);
            let fac = factored_step(
                g,
                &shape,
                &fac_d,
                (&mut state.fac_row, &mut state.fac_col, &mut state.fac_diag),
                (&mut off_row, &mut off_col, &mut off_diag),
                c(1e-6),
            );
            let (m, v) = (&*m, &*v);
            let p = state.params.leaf(li);
            // The features of elements `start..start + nb`, feature-major, in the
            // library's order.
            let (mut t1, mut t2) = (vec![c(0.0); MLP_BLOCK], vec![c(0.0); MLP_BLOCK]);
            let mut rq = vec![c(0.0); MLP_BLOCK * kr];
            let build = |start: usize, cols: &mut [P::Scalar]| {
                let nb = cols.len() / nf;
                let (gb, pb) = (&g[start..start + nb], &p[start..start + nb]);
                let (mb, vb) = (
                    &m[start * km..(start + nb) * km],
                    &v[start * kr..(start + nb) * kr],
                );
                let (t1, t2) = (&mut t1[..nb], &mut t2[..nb]);
                let col = |j: usize| j * nb..(j + 1) * nb;
                cols[col(0)].copy_from_slice(gb);
                cols[col(1)].copy_from_slice(pb);
                for k in 0..km {
                    strided_column(&mut cols[col(2 + k)], mb, km, k);
                }
                for k in 0..kr {
                    strided_column(&mut cols[col(2 + km + k)], vb, kr, k);
                }
                // `(v + 1e-6)^-½` at each decay, once (from the contiguous columns of `v`).
                let rq = &mut rq[..kr * nb];
                for q in 0..kr {
                    let vq = &cols[col(2 + km + q)];
                    for (o, &x) in rq[col(q)].iter_mut().zip(vq) {
                        *o = rsqrt(x + c(1e-6));
                    }
                }
                let base = 2 + km + kr;
                for k in 0..kmr {
                    let (km_k, kr_k) = (if km == 1 { 0 } else { k }, if kr == 1 { 0 } else { k });
                    let (head, tail) = cols.split_at_mut((base + k) * nb);
                    let mk = &head[col(2 + km_k)];
                    for ((o, &mi), &r) in tail[..nb].iter_mut().zip(mk).zip(&rq[col(kr_k)]) {
                        *o = mi * r;
                    }
                }
                for q in 0..kr {
                    cols[col(base + kmr + q)].copy_from_slice(&rq[col(q)]);
                }
                let mut j = base + kmr + kr;
                // Six groups of Kf: y, row, col, their rsqrt, the factored momentum.
                use FacField::*;
                for k in 0..kf {
                    fac.expand(start, k, Y1, t1);
                    fac.expand(start, k, Y2, t2);
                    let out = &mut cols[col(j)];
                    for ((o, &ge), (&a, &b)) in out.iter_mut().zip(gb).zip(t1.iter().zip(&*t2)) {
                        *o = ge * a * b;
                    }
                    j += 1;
                }
                for field in [Row, Col, RowRsqrt, ColRsqrt] {
                    for k in 0..kf {
                        fac.expand(start, k, field, &mut cols[col(j)]);
                        j += 1;
                    }
                }
                for k in 0..kf {
                    fac.expand(start, k, Mom1, t1);
                    fac.expand(start, k, Mom2, t2);
                    let (head, tail) = cols.split_at_mut(j * nb);
                    let mk = &head[col(2 + k)];
                    for ((o, &mi), (&a, &b)) in
                        tail[..nb].iter_mut().zip(mk).zip(t1.iter().zip(&*t2))
                    {
                        *o = mi * a * b;
                    }
                    j += 1;
                }
                debug_assert_eq!(j, nf);
            };
            let (step_mult, exp_mult) = (c(self.step_mult), c(self.exp_mult));
            steps.clear();
            normalized_mlp(n, nf, build, &mut mlp, &layers, &mut feats, |out, _, nb| {
                let (direction, magnitude) = out.split_at(nb);
                steps.extend(
                    direction
                        .iter()
                        .zip(magnitude)
                        .map(|(&d, &mg)| d * (mg * exp_mult).exp() * step_mult),
                );
            });
            for (p, &st) in state.params.leaf_mut(li).iter_mut().zip(&steps) {
                *p -= st;
            }
            off_n += n;
        }
        state.iteration += 1;
        state.step += c(1.0);
    }

    fn params<'s, P: Params>(&self, state: &'s AdafacMlpLOptState<P>) -> &'s P {
        &state.params
    }
    fn set_params<P: Params>(&self, state: &mut AdafacMlpLOptState<P>, params: P) {
        state.params = params;
    }
    fn iteration<P: Params>(&self, state: &AdafacMlpLOptState<P>) -> usize {
        state.iteration
    }
    fn set_iteration<P: Params>(
        &self,
        state: &mut AdafacMlpLOptState<P>,
        iteration: usize,
    ) -> crate::error::Result<()> {
        // The per-lane `step` is a leaf: a checkpoint restores it with the others.
        state.iteration = iteration;
        Ok(())
    }
    fn name(&self) -> String {
        "AdafacMlpLOpt".into()
    }
}

/// What [`factored_step`] gives for one tensor: the updated accumulators and the
/// factors, per row and column (or per element for rank < 2), stored decay-major (one
/// contiguous array per decay) and spread over a block of elements with
/// [`FacOut::expand`].
pub(crate) struct FacOut<S> {
    kind: FacKind<S>,
}

enum FacKind<S> {
    /// A matrix: `vr`, `rf`, `vr_rsqrt` per row index `a` (`[Kf, la]`), `vc`, `cf`,
    /// `vc_rsqrt` per column index `b` (`[Kf, lb]`); element `e` is at
    /// `(e % rows, e / rows)`, swapped when `transposed`.
    Factored {
        rows: usize,
        transposed: bool,
        la: usize,
        lb: usize,
        vr: Vec<S>,
        vc: Vec<S>,
        rf: Vec<S>,
        cf: Vec<S>,
        /// `(vr + 1e-8)^-½` and `(vc + 1e-8)^-½`, once per row and column rather than
        /// per element.
        vr_rsqrt: Vec<S>,
        vc_rsqrt: Vec<S>,
    },
    /// Rank < 2: per decay and element `[Kf, n]`, the diagonal accumulator, the factor
    /// of `y`, `(v + 1e-8)^-½` and the factored momentum's `(v + ε)^-½`.
    Diag {
        n: usize,
        vd: Vec<S>,
        y_factor: Vec<S>,
        vd_rsqrt: Vec<S>,
        mult: Vec<S>,
    },
}

/// A per-element statistic of [`FacOut`] at one decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FacField {
    /// The row accumulator (the diagonal one for rank < 2).
    Row,
    /// The column accumulator (the diagonal one for rank < 2).
    Col,
    /// `(row + 1e-8)^-½`.
    RowRsqrt,
    /// `(col + 1e-8)^-½`.
    ColRsqrt,
    /// The preconditioned gradient (the library's `fac_g`) is `g·y1·y2`: the row and
    /// column factors, or the diagonal factor and 1 for rank < 2.
    Y1,
    /// See [`FacField::Y1`].
    Y2,
    /// The factored momentum is `m·mom1·mom2`: the row and column factors, or
    /// `(v + diag_eps)^-½` and 1 for rank < 2.
    Mom1,
    /// See [`FacField::Mom1`].
    Mom2,
}

impl<S: Real> FacOut<S> {
    /// Writes `field` at decay `k` of elements `start..start + out.len()` into `out`:
    /// copies of row or column runs, no per-element index arithmetic.
    pub(crate) fn expand(&self, start: usize, k: usize, field: FacField, out: &mut [S]) {
        use FacField::*;
        let nb = out.len();
        match &self.kind {
            FacKind::Factored {
                rows,
                transposed,
                la,
                lb,
                vr,
                vc,
                rf,
                cf,
                vr_rsqrt,
                vc_rsqrt,
            } => {
                let (row_side, arr) = match field {
                    Row => (true, vr),
                    Col => (false, vc),
                    RowRsqrt => (true, vr_rsqrt),
                    ColRsqrt => (false, vc_rsqrt),
                    Y1 | Mom1 => (true, rf),
                    Y2 | Mom2 => (false, cf),
                };
                let len = if row_side { *la } else { *lb };
                let arr = &arr[k * len..(k + 1) * len];
                // Along a column of the leaf the row index `r` varies: it indexes the
                // "row" accumulator unless transposed.
                let varying = row_side != *transposed;
                let (mut e, end) = (start, start + nb);
                while e < end {
                    let (r0, c) = (e % rows, e / rows);
                    let run = (rows - r0).min(end - e);
                    let o = &mut out[e - start..e - start + run];
                    if varying {
                        o.copy_from_slice(&arr[r0..r0 + run]);
                    } else {
                        o.fill(arr[c]);
                    }
                    e += run;
                }
            }
            FacKind::Diag {
                n,
                vd,
                y_factor,
                vd_rsqrt,
                mult,
            } => {
                let arr = match field {
                    Row | Col => vd,
                    RowRsqrt | ColRsqrt => vd_rsqrt,
                    Y1 => y_factor,
                    Mom1 => mult,
                    Y2 | Mom2 => {
                        out.fill(S::from_f64(1.0));
                        return;
                    }
                };
                out.copy_from_slice(&arr[k * n + start..k * n + start + nb]);
            }
        }
    }
}

/// `[len, kf]` (decay innermost) as `[kf, len]`.
fn decay_major<S: Real>(x: &[S], kf: usize) -> Vec<S> {
    let len = x.len() / kf.max(1);
    let mut out = Vec::with_capacity(x.len());
    for k in 0..kf {
        out.extend((0..len).map(|a| x[a * kf + k]));
    }
    out
}

/// The library's `common.factored_rolling` update of one tensor at every Adafactor decay
/// (`fac_d`, already clipped to `[0, 1]`), on the accumulators at the given offsets, which
/// it advances.
pub(crate) fn factored_step<S: Real>(
    g: &[S],
    shape: &[usize],
    fac_d: &[S],
    (fac_row, fac_col, fac_diag): (&mut [S], &mut [S], &mut [S]),
    (off_row, off_col, off_diag): (&mut usize, &mut usize, &mut usize),
    diag_eps: S,
) -> FacOut<S> {
    let c = S::from_f64;
    let n = g.len();
    let kf = fac_d.len();
    let gsq = |x: S| x * x + c(1e-30);
    let kind = match factoring(shape) {
        Some((la, lb, transposed)) => {
            let rows_n = shape[0];
            let vr = &mut fac_row[*off_row * kf..(*off_row + la) * kf];
            let vc = &mut fac_col[*off_col * kf..(*off_col + lb) * kf];
            // Sums over the leaf's rows `r` (for each column) and columns `c` (for
            // each row), in element order.
            let mut sum_r = vec![c(0.0); shape[1]];
            let mut sum_c = vec![c(0.0); rows_n];
            for (col, sr) in g.chunks_exact(rows_n).zip(sum_r.iter_mut()) {
                for (&x, sc) in col.iter().zip(sum_c.iter_mut()) {
                    let q = gsq(x);
                    *sr += q;
                    *sc += q;
                }
            }
            // mean over b for each a, mean over a for each b
            let (mut mean_b, mut mean_a) = if transposed {
                (sum_r, sum_c)
            } else {
                (sum_c, sum_r)
            };
            mean_b.iter_mut().for_each(|x| *x /= c(lb as f64));
            mean_a.iter_mut().for_each(|x| *x /= c(la as f64));
            let mut rf = vec![c(0.0); la * kf];
            let mut cf = vec![c(0.0); lb * kf];
            for k in 0..kf {
                let (d, mix) = (fac_d[k], c(1.0) - fac_d[k]);
                for a in 0..la {
                    vr[a * kf + k] = d * vr[a * kf + k] + mix * mean_b[a];
                }
                for b in 0..lb {
                    vc[b * kf + k] = d * vc[b * kf + k] + mix * mean_a[b];
                }
                let mut rcm = c(0.0);
                for a in 0..la {
                    rcm += vr[a * kf + k];
                }
                let rcm = rcm / c(la as f64);
                for a in 0..la {
                    rf[k * la + a] = rsqrt((vr[a * kf + k] / (rcm + c(1e-9))).max(c(1e-9)));
                }
                for b in 0..lb {
                    cf[k * lb + b] = rsqrt(vc[b * kf + k].max(c(1e-9)));
                }
            }
            *off_row += la;
            *off_col += lb;
            let (vr, vc) = (decay_major(vr, kf), decay_major(vc, kf));
            let rsqrt_eps = |v: &[S]| v.iter().map(|&x| rsqrt(x + c(1e-8))).collect();
            FacKind::Factored {
                rows: rows_n,
                transposed,
                la,
                lb,
                vr_rsqrt: rsqrt_eps(&vr),
                vc_rsqrt: rsqrt_eps(&vc),
                vr,
                vc,
                rf,
                cf,
            }
        }
        None => {
            let vd = &mut fac_diag[*off_diag * kf..(*off_diag + n) * kf];
            for e in 0..n {
                for k in 0..kf {
                    let (d, mix) = (fac_d[k], c(1.0) - fac_d[k]);
                    vd[e * kf + k] = d * vd[e * kf + k] + mix * gsq(g[e]);
                }
            }
            *off_diag += n;
            let vd = decay_major(vd, kf);
            FacKind::Diag {
                n,
                y_factor: vd
                    .iter()
                    .map(|&x| rsqrt((x + c(1e-9)).max(c(1e-9))))
                    .collect(),
                vd_rsqrt: vd.iter().map(|&x| rsqrt(x + c(1e-8))).collect(),
                mult: vd.iter().map(|&x| (x + diag_eps).powf(c(-0.5))).collect(),
                vd,
            }
        }
    };
    FacOut { kind }
}

/// The library's θ: `adafactor_decays`, `momentum_decays`, `rms_decays` and
/// `nn/~/{w0, b0, w1, b1, …}`.
impl<S: Real> FlaxTheta for AdafacMlpLOptTheta<S> {
    type Config = AdafacMlpLOpt;
    fn to_flax(&self) -> FlaxValue {
        let mut nn = Vec::new();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            let (din, dout) = (w.len() / b.len().max(1), b.len());
            nn.push((format!("b{i}"), arr(vec![dout], b)));
            nn.push((format!("w{i}"), arr(vec![din, dout], w)));
        }
        FlaxValue::map([
            (
                "adafactor_decays",
                arr(vec![self.adafactor_decays.len()], &self.adafactor_decays),
            ),
            (
                "momentum_decays",
                arr(vec![self.momentum_decays.len()], &self.momentum_decays),
            ),
            ("nn", FlaxValue::map([("~", FlaxValue::Map(nn))])),
            (
                "rms_decays",
                arr(vec![self.rms_decays.len()], &self.rms_decays),
            ),
        ])
    }

    fn from_flax(config: &AdafacMlpLOpt, v: &FlaxValue) -> Result<Self, FlaxMsgpackError> {
        let (km, kr, kf) = config.counts();
        let widths = config.widths();
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, io)| {
                let w = v.real_array(&["nn", "~", &format!("w{i}")], &[io[0], io[1]])?;
                let b = v.real_array(&["nn", "~", &format!("b{i}")], &[io[1]])?;
                Ok((w, b))
            })
            .collect::<Result<_, FlaxMsgpackError>>()?;
        Ok(AdafacMlpLOptTheta {
            momentum_decays: v.real_array(&["momentum_decays"], &[km])?,
            rms_decays: v.real_array(&["rms_decays"], &[kr])?,
            adafactor_decays: v.real_array(&["adafactor_decays"], &[kf])?,
            layers,
        })
    }
}
