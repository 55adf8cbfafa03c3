//! `MlpLOpt`: the JAX library's `MLPLOpt` ("LOLv2", arXiv 1810.10180), a small MLP shared
//! by every parameter that maps per-element features to a step.

use nalgebra::{DMatrix, DVector};

use crate::kernels::gemm::{gemm_raw, MatRef};
use crate::kernels::small_rows::element_layer;
use crate::key::Key;
use crate::params::{write_field_leaf_name, Params, Rebind};
use crate::scalar::Real;
use num_traits::Zero;

use super::parts::{par_worthy, sum_squares_by};
use super::LearnedOptimizer;

/// Momentum decays of the rolling features (`m_d ← d·m_d + (1 − d)·g`, no bias correction).
const DECAYS: [f64; 6] = [0.1, 0.5, 0.9, 0.99, 0.999, 0.9999];
/// Time scales of the features `tanh(t / s − 1)`.
const TIME_SCALES: [f64; 11] = [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5];
/// Per-element channels: gradient, parameter and the six momenta.
const CHANNELS: usize = 2 + DECAYS.len();
/// Network inputs: the normalized channels and the time features.
const INPUTS: usize = CHANNELS + TIME_SCALES.len();

/// A per-parameter MLP learned optimizer (`MLPLOpt`).
///
/// For every element of every parameter tensor it builds 19 inputs — the gradient, the
/// parameter and six momenta (decays 0.1 … 0.9999), each divided by its root mean square
/// over the tensor (`x / sqrt(1e-5 + mean(x²))`), and eleven features of the iteration
/// `tanh(t / s − 1)` — runs them through an MLP with ReLU between layers and two outputs
/// `(d, μ)`, and steps `p ← p − d · exp(exp_mult · μ) · step_mult`. One network serves every
/// parameter. Defaults as in the JAX library: `exp_mult = step_mult = 0.001`, two hidden
/// layers of 32, hence θ of 19·32 + 32 + 32·32 + 32 + 32·2 + 2 = 1762 scalars.
///
/// ```
/// use lopt_runtime::learned_optimizers::{LearnedOptimizer, MlpLOpt};
/// use lopt_runtime::{Key, Optimizer, Params};
///
/// let lopt = MlpLOpt::default();
/// let theta = lopt.init(Key::new(0));
/// assert_eq!(theta.num_elements(), 1762);
/// let opt = lopt.opt_fn(&theta);
/// let mut state = opt.init(vec![1.0f32, -2.0], None);
/// opt.update(&mut state, &vec![0.5, 0.25], 0.0);
/// assert_eq!(opt.iteration(&state), 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlpLOpt {
    /// Scale of μ inside the exponential.
    pub exp_mult: f64,
    /// Scale of the step.
    pub step_mult: f64,
    /// Width of each hidden layer.
    pub hidden_size: usize,
    /// Number of hidden layers.
    pub hidden_layers: usize,
}

impl Default for MlpLOpt {
    fn default() -> Self {
        MlpLOpt {
            exp_mult: 1e-3,
            step_mult: 1e-3,
            hidden_size: 32,
            hidden_layers: 2,
        }
    }
}

/// θ of [`MlpLOpt`]: the layers of the network, `y = x · w + b` (`w` is fan-in × fan-out).
#[derive(Debug, Clone, PartialEq)]
pub struct MlpLOptTheta<S: Real> {
    /// `(w, b)` of each layer, input first.
    pub layers: Vec<(DMatrix<S>, DVector<S>)>,
}

impl<S: Real> Params for MlpLOptTheta<S> {
    type Scalar = S;
    fn num_leaves(&self) -> usize {
        2 * self.layers.len()
    }
    fn leaf(&self, i: usize) -> &[S] {
        let (w, b) = &self.layers[i / 2];
        if i.is_multiple_of(2) {
            w.as_slice()
        } else {
            b.as_slice()
        }
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [S] {
        let (w, b) = &mut self.layers[i / 2];
        if i.is_multiple_of(2) {
            w.as_mut_slice()
        } else {
            b.as_mut_slice()
        }
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        let part = if i.is_multiple_of(2) { "w" } else { "b" };
        out.push_str(&format!("linear_{}.{part}", i / 2));
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        let (w, b) = &self.layers[i / 2];
        if i.is_multiple_of(2) {
            vec![w.nrows(), w.ncols()]
        } else {
            vec![b.len()]
        }
    }
}

impl<S: Real> Rebind for MlpLOptTheta<S> {
    type With<T: Real> = MlpLOptTheta<T>;
    fn cast<T: Real>(&self) -> MlpLOptTheta<T> {
        MlpLOptTheta {
            layers: self
                .layers
                .iter()
                .map(|(w, b)| (Rebind::cast::<T>(w), Rebind::cast::<T>(b)))
                .collect(),
        }
    }
}

impl MlpLOpt {
    /// Layer widths: 19 inputs, the hidden layers, 2 outputs.
    fn widths(&self) -> Vec<usize> {
        let mut w = vec![INPUTS];
        w.extend(std::iter::repeat_n(self.hidden_size, self.hidden_layers));
        w.push(2);
        w
    }
}

impl LearnedOptimizer for MlpLOpt {
    type Theta<S: Real> = MlpLOptTheta<S>;
    type State<P: Params> = MlpLOptState<P>;

    /// Weights from a normal truncated to ±2σ, σ = 1/sqrt(fan_in), without variance
    /// correction (haiku's default initializer, as the JAX library uses); zero biases.
    fn init(&self, key: Key) -> MlpLOptTheta<f32> {
        let widths = self.widths();
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(k, io)| {
                let mut w = DMatrix::<f32>::zeros(io[0], io[1]);
                let std = 1.0 / (io[0] as f32).sqrt();
                key.fold_in(k as u64)
                    .fill_truncated_normal(w.as_mut_slice(), std);
                (w, DVector::zeros(io[1]))
            })
            .collect();
        MlpLOptTheta { layers }
    }

    fn cast_theta<T: Real, S: Real>(&self, theta: &MlpLOptTheta<T>) -> MlpLOptTheta<S> {
        Rebind::cast(theta)
    }

    fn init_state<P: Params>(
        &self,
        _theta: &MlpLOptTheta<P::Scalar>,
        params: P,
        _num_steps: Option<usize>,
    ) -> MlpLOptState<P> {
        let z = params.zeros_like();
        MlpLOptState {
            momenta: std::array::from_fn(|_| z.clone()),
            params,
            iteration: 0,
            step: P::Scalar::zero(),
        }
    }

    fn update<P: Params>(
        &self,
        theta: &MlpLOptTheta<P::Scalar>,
        state: &mut MlpLOptState<P>,
        grad: &P,
        _loss: P::Scalar,
    ) {
        mlp_lopt_update(self, theta, state, grad)
    }

    fn params<'s, P: Params>(&self, state: &'s MlpLOptState<P>) -> &'s P {
        &state.params
    }

    fn set_params<P: Params>(&self, state: &mut MlpLOptState<P>, params: P) {
        state.params = params;
    }

    fn iteration<P: Params>(&self, state: &MlpLOptState<P>) -> usize {
        state.iteration
    }
    fn set_iteration<P: Params>(
        &self,
        state: &mut MlpLOptState<P>,
        iteration: usize,
    ) -> crate::error::Result<()> {
        state.iteration = iteration;
        Ok(())
    }
    fn config(&self) -> String {
        format!("{self:?}")
    }

    fn name(&self) -> String {
        format!("MlpLOpt_hidden{}x{}", self.hidden_layers, self.hidden_size)
    }
}

/// State of [`MlpLOpt`]'s inner optimizer: the parameters, the six momenta and the
/// iteration.
#[derive(Debug, Clone)]
pub struct MlpLOptState<P: Params> {
    /// Current parameters.
    pub params: P,
    /// `m_d` for each decay `d` of 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999.
    pub momenta: [P; 6],
    /// Updates applied so far.
    pub iteration: usize,
    /// The iteration of each lane, what the time features read (lanes of a batch can
    /// restart at different times); every lane equals `iteration` unless set per lane.
    pub step: P::Scalar,
}

/// Leaves: those of the parameters, of each momentum in turn, then `step`.
impl<P: Params> Params for MlpLOptState<P> {
    type Scalar = P::Scalar;
    fn num_leaves(&self) -> usize {
        7 * self.params.num_leaves() + 1
    }
    fn leaf(&self, i: usize) -> &[P::Scalar] {
        let k = self.params.num_leaves();
        match (i / k.max(1), i % k.max(1)) {
            _ if i == 7 * k => std::slice::from_ref(&self.step),
            (0, j) => self.params.leaf(j),
            (m, j) => self.momenta[m - 1].leaf(j),
        }
    }
    fn leaf_mut(&mut self, i: usize) -> &mut [P::Scalar] {
        let k = self.params.num_leaves();
        match (i / k.max(1), i % k.max(1)) {
            _ if i == 7 * k => std::slice::from_mut(&mut self.step),
            (0, j) => self.params.leaf_mut(j),
            (m, j) => self.momenta[m - 1].leaf_mut(j),
        }
    }
    fn write_leaf_name(&self, i: usize, out: &mut String) {
        let k = self.params.num_leaves();
        if i == 7 * k {
            return out.push_str("step");
        }
        let (m, j) = (i / k, i % k);
        let field = match m {
            0 => "params".to_string(),
            _ => format!("momenta.{}", m - 1),
        };
        write_field_leaf_name(out, &field, &self.params, j);
    }
    fn leaf_shape(&self, i: usize) -> Vec<usize> {
        let k = self.params.num_leaves();
        if i == 7 * k {
            Vec::new()
        } else {
            self.params.leaf_shape(i % k)
        }
    }
}

/// One MLPLOpt step.
fn mlp_lopt_update<S: Real, P: Params<Scalar = S>>(
    lopt: &MlpLOpt,
    theta: &MlpLOptTheta<S>,
    state: &mut MlpLOptState<P>,
    grad: &P,
) {
    crate::optimizers::assert_leaf_lengths(
        "MlpLOpt::update: gradient vs params",
        &state.params,
        grad,
    );
    // The network reads 19 input rows and writes (direction, magnitude): a θ of another
    // shape would read the wrong columns rather than fail.
    let layers = &theta.layers;
    assert!(
        layers.first().is_some_and(|(w, _)| w.nrows() == INPUTS)
            && layers.last().is_some_and(|(w, _)| w.ncols() == 2),
        "MlpLOpt::update: θ must map {INPUTS} inputs to 2 outputs (a θ of MlpLOpt::init)"
    );
    for (m, d) in state.momenta.iter_mut().zip(DECAYS) {
        let (d, one_minus_d) = (S::from_f64(d), S::from_f64(1.0 - d));
        for i in 0..grad.num_leaves() {
            for (m, &g) in m.leaf_mut(i).iter_mut().zip(grad.leaf(i)) {
                *m = d * *m + one_minus_d * g;
            }
        }
    }
    // The time features are the same for every element: fold them and the first bias
    // into one per-update bias of the first layer.
    let (w0, b0) = &theta.layers[0];
    let time: Vec<S> = TIME_SCALES
        .iter()
        .map(|&s| (state.step / S::from_f64(s) - S::one()).tanh())
        .collect();
    let first_bias: Vec<S> = (0..w0.ncols())
        .map(|j| {
            let col = &w0.column(j);
            time.iter()
                .enumerate()
                .fold(b0[j], |acc, (k, &tf)| acc + tf * col[CHANNELS + k])
        })
        .collect();
    let (exp_mult, step_mult) = (S::from_f64(lopt.exp_mult), S::from_f64(lopt.step_mult));
    let MlpLOptState {
        params, momenta, ..
    } = state;
    let widest = theta
        .layers
        .iter()
        .map(|(w, _)| w.ncols())
        .max()
        .unwrap_or(0);
    let mut net = Net::new(widest);
    for i in 0..grad.num_leaves() {
        let g = grad.leaf(i);
        let n = g.len();
        if n == 0 {
            continue;
        }
        // Each channel is divided by its root mean square over the whole tensor: one
        // running sum of squares per channel in element order, the eight chains side by
        // side.
        let mut ss = [S::zero(); CHANNELS];
        let (pr, mo): (&P, &[P; 6]) = (params, momenta);
        sum_squares_by(n, &mut ss, move |c| channel(c, g, pr.leaf(i), mo, i));
        let scale: [S; CHANNELS] = std::array::from_fn(|c| {
            let ms = ss[c] / S::from_f64(n as f64);
            S::one() / (S::from_f64(1e-5) + ms).sqrt()
        });
        let momenta = &*momenta;
        // The block of parameters `p` starting at element `start`: its inputs, the
        // network, its step. Blocks are independent: the same result in any order.
        let block = |net: &mut Net<S>, start: usize, p: &mut [S]| {
            let rows = start..start + p.len();
            net.x.clear();
            for (c, &sc) in scale.iter().enumerate() {
                let col = match c {
                    1 => &*p,
                    _ => &channel(c, g, &[], momenta, i)[rows.clone()],
                };
                net.x.extend(col.iter().map(|&v| v * sc));
            }
            let out = net.forward(theta, &first_bias, rows.len());
            let (d, mu) = out.split_at(rows.len());
            for ((p, &d), &mu) in p.iter_mut().zip(d).zip(mu) {
                *p -= d * crate::kernels::vecmath::exp(exp_mult * mu) * step_mult;
            }
        };
        let p = params.leaf_mut(i);
        if par_worthy::<S>(n) {
            use rayon::prelude::*;
            p.par_chunks_mut(BLOCK)
                .enumerate()
                .for_each_init(|| Net::new(widest), |net, (b, p)| block(net, b * BLOCK, p));
        } else {
            for (b, p) in p.chunks_mut(BLOCK).enumerate() {
                block(&mut net, b * BLOCK, p);
            }
        }
    }
    state.iteration += 1;
    state.step += S::one();
}

/// Elements the network takes at once: its activations (`BLOCK x 32` per layer) stay in
/// L1/L2, and no buffer is large enough for the allocator to map fresh pages each call
/// (whole-tensor buffers made page faults most of the update's time).
const BLOCK: usize = 128;

/// Input channel `c` of leaf `i`: the gradient, the parameters, then the momenta.
fn channel<'a, S: Real, P: Params<Scalar = S>>(
    c: usize,
    g: &'a [S],
    p: &'a [S],
    momenta: &'a [P; 6],
    i: usize,
) -> &'a [S] {
    match c {
        0 => g,
        1 => p,
        _ => momenta[c - 2].leaf(i),
    }
}

/// The network's buffers, reused across blocks: the inputs and two activation buffers.
struct Net<S> {
    x: Vec<S>,
    a: Vec<S>,
    b: Vec<S>,
}

impl<S: Real> Net<S> {
    /// Buffers for blocks of a network at most `widest` wide.
    fn new(widest: usize) -> Self {
        Net {
            x: Vec::with_capacity(BLOCK * CHANNELS),
            a: Vec::with_capacity(BLOCK * widest),
            b: Vec::with_capacity(BLOCK * widest),
        }
    }

    /// The network on the `n` elements whose normalized channels are in `self.x` (`n x
    /// 8` column-major); `first_bias` is the first layer's bias with the time features
    /// folded in. One matrix product a layer (the first reads only the channel rows of
    /// its weights) into `b`, then bias and ReLU into `a`. Returns the `n x 2` outputs `(d, μ)`,
    /// column-major.
    fn forward(&mut self, theta: &MlpLOptTheta<S>, first_bias: &[S], n: usize) -> &[S] {
        let last = theta.layers.len() - 1;
        let mut width = CHANNELS;
        for (k, (w, b)) in theta.layers.iter().enumerate() {
            let cols = w.ncols();
            let input: &[S] = if k == 0 { &self.x } else { &self.a };
            let bias: &[S] = if k == 0 { first_bias } else { b.as_slice() };
            // `f32` with AVX2: product, bias and ReLU in one pass (`w` column-major: rows 1
            // apart, columns `nrows`), into `b`, swapped into `a` for the next layer.
            // Never shrunk: the last layer's 2 columns would make the next block zero the
            // first layer's 32 again.
            if self.b.len() < n * cols {
                self.b.resize(n * cols, S::zero());
            }
            let ws = (1, w.nrows());
            let out = &mut self.b[..n * cols];
            if element_layer(
                &input[..n * width],
                n,
                width,
                w.as_slice(),
                ws,
                bias,
                k < last,
                out,
            ) {
                if k < last {
                    std::mem::swap(&mut self.a, &mut self.b);
                }
                width = cols;
                continue;
            }
            let a = MatRef::col_major(&input[..n * width], n, width).expect("n x width inputs");
            // The rows of `w` this layer reads (all but the time-feature rows for the first).
            let wv = MatRef::new(w.as_slice(), width, cols, 1, w.nrows()).expect("rows of w");
            self.b.clear();
            self.b.reserve(n * cols);
            // SAFETY: `b` has room for the `n x cols` product, which `gemm_raw` writes
            // whole without reading when not accumulating (no zeroing pass first).
            unsafe {
                gemm_raw(a, wv, self.b.as_mut_ptr(), false);
                self.b.set_len(n * cols);
            }
            if k < last {
                // Bias and ReLU into the other buffer, the next layer's input.
                self.a.clear();
                for (col, &bj) in self.b.chunks_exact(n).zip(bias) {
                    // `0.max(z)` keeps a NaN (`z.max(0)` would turn it into 0), as JAX's
                    // relu does: a NaN gradient must not vanish into a bias-only step.
                    self.a.extend(col.iter().map(|&v| S::zero().max(v + bj)));
                }
            } else {
                for (col, &bj) in self.b.chunks_exact_mut(n).zip(bias) {
                    col.iter_mut().for_each(|v| *v += bj);
                }
            }
            width = cols;
        }
        // The last layer always writes `b` (the swap follows hidden layers only).
        &self.b[..n * width]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lane_groups::{get_lane, set_lane};
    use crate::lanes::Lanes;
    use crate::optimizers::Optimizer;

    /// A θ with weights ~ N(0, 0.5²) and biases ~ N(0, 0.1²): large enough that every
    /// unit and both outputs matter (the real init makes steps of about 1e-3).
    fn random_theta(lopt: &MlpLOpt, key: Key) -> MlpLOptTheta<f64> {
        let mut t: MlpLOptTheta<f64> = Rebind::cast(&lopt.init(key));
        for i in 0..t.num_leaves() {
            let std = if i.is_multiple_of(2) { 0.5 } else { 0.1 };
            key.fold_in(100 + i as u64).fill_normal(t.leaf_mut(i));
            t.leaf_mut(i).iter_mut().for_each(|x| *x *= std);
        }
        t
    }

    /// MLPLOpt's update written out directly in f64: the 19 inputs per element with the
    /// time features as inputs, the full network, the step.
    fn reference_update(
        lopt: &MlpLOpt,
        theta: &MlpLOptTheta<f64>,
        params: &mut [Vec<f64>],
        momenta: &mut [Vec<Vec<f64>>; 6],
        grads: &[Vec<f64>],
        t: usize,
    ) {
        for (m, d) in momenta.iter_mut().zip(DECAYS) {
            for (ml, gl) in m.iter_mut().zip(grads) {
                for (m, g) in ml.iter_mut().zip(gl) {
                    *m = d * *m + (1.0 - d) * g;
                }
            }
        }
        let time: Vec<f64> = TIME_SCALES
            .iter()
            .map(|s| (t as f64 / s - 1.0).tanh())
            .collect();
        for l in 0..params.len() {
            let n = params[l].len();
            let mut chans = vec![grads[l].clone(), params[l].clone()];
            chans.extend(momenta.iter().map(|m| m[l].clone()));
            for c in chans.iter_mut() {
                let ms = c.iter().map(|x| x * x).sum::<f64>() / n as f64;
                c.iter_mut().for_each(|x| *x /= (1e-5 + ms).sqrt());
            }
            for e in 0..n {
                let mut x: Vec<f64> = chans.iter().map(|c| c[e]).collect();
                x.extend(&time);
                let last = theta.layers.len() - 1;
                for (k, (w, b)) in theta.layers.iter().enumerate() {
                    let y = w.transpose() * DVector::from_vec(x.clone()) + b;
                    x = y
                        .iter()
                        .map(|&v| if k < last { v.max(0.0) } else { v })
                        .collect();
                }
                let step = x[0] * (lopt.exp_mult * x[1]).exp() * lopt.step_mult;
                params[l][e] -= step;
            }
        }
    }

    /// Parameters with four leaves of different sizes: one of 300 elements (more than two
    /// of the network's blocks of [`BLOCK`], with a remainder) and one of 1.
    fn tree(key: Key) -> MlpLOptTheta<f64> {
        let shape = MlpLOpt {
            hidden_size: 3,
            hidden_layers: 1,
            ..MlpLOpt::default()
        };
        let mut t: MlpLOptTheta<f64> = Rebind::cast(&shape.init(key));
        t.layers.truncate(2);
        t.layers[0].0 = DMatrix::zeros(20, 15);
        const { assert!(300 > 2 * BLOCK && 300 % BLOCK != 0) };
        t.layers[1].0 = DMatrix::zeros(1, 1);
        t.layers[1].1 = DVector::zeros(1);
        for i in 0..t.num_leaves() {
            key.fold_in(7 + i as u64).fill_normal(t.leaf_mut(i));
        }
        t
    }

    /// A NaN in the gradient reaches the parameters (as in the JAX library), instead of
    /// vanishing in the network's ReLUs into a finite step.
    #[test]
    fn a_nan_gradient_is_not_hidden() {
        let lopt = MlpLOpt::default();
        let theta = lopt.init(Key::new(0));
        let opt = lopt.opt_fn(&theta);
        let mut state = opt.init(DVector::from_element(5, 0.5f32), None);
        let mut g = DVector::from_element(5, 0.1f32);
        g[2] = f32::NAN;
        opt.update(&mut state, &g, 0.0);
        assert!(state.params.iter().all(|p| p.is_nan()), "{}", state.params);
    }

    #[test]
    fn update_matches_the_formula_written_out() {
        let lopt = MlpLOpt {
            exp_mult: 0.3,
            step_mult: 0.05,
            ..MlpLOpt::default()
        };
        let theta = random_theta(&lopt, Key::new(1));
        let opt = lopt.opt_fn(&theta);
        let p0 = tree(Key::new(2));
        let mut state = opt.init(p0.clone(), None);
        let mut params: Vec<Vec<f64>> = (0..p0.num_leaves()).map(|i| p0.leaf(i).to_vec()).collect();
        let zeros: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        let mut momenta: [Vec<Vec<f64>>; 6] = std::array::from_fn(|_| zeros.clone());
        for t in 0..4 {
            let g = tree(Key::new(10 + t as u64));
            let grads: Vec<Vec<f64>> = (0..g.num_leaves()).map(|i| g.leaf(i).to_vec()).collect();
            opt.update(&mut state, &g, 0.0);
            reference_update(&lopt, &theta, &mut params, &mut momenta, &grads, t);
            let mut moved = 0.0f64;
            for (i, want) in params.iter().enumerate() {
                for (e, (&got, &w)) in state.params.leaf(i).iter().zip(want).enumerate() {
                    assert!(
                        (got - w).abs() <= 1e-12 * w.abs().max(1.0),
                        "t {t} leaf {i}[{e}]: {got} vs {w}"
                    );
                    moved = moved.max((w - p0.leaf(i)[e]).abs());
                }
            }
            assert!(
                moved > 1e-3,
                "the steps must be large enough to test something"
            );
        }
        assert_eq!(opt.iteration(&state), 4);
    }

    #[test]
    fn init_shapes_and_statistics() {
        let lopt = MlpLOpt::default();
        let theta = lopt.init(Key::new(3));
        assert_eq!(theta.num_elements(), 1762);
        let shapes: Vec<Vec<usize>> = (0..6).map(|i| theta.leaf_shape(i)).collect();
        assert_eq!(
            shapes,
            [
                vec![19, 32],
                vec![32],
                vec![32, 32],
                vec![32],
                vec![32, 2],
                vec![2]
            ]
        );
        for (w, b) in &theta.layers {
            let sigma = 1.0 / (w.nrows() as f64).sqrt();
            assert!(b.iter().all(|&x| x == 0.0));
            assert!(w.iter().all(|&x| (x as f64).abs() <= 2.0 * sigma + 1e-6));
        }
        // Truncation at ±2σ without variance correction leaves 0.8796σ.
        let w = &theta.layers[1].0;
        let var = w.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / w.len() as f64;
        let ratio = var.sqrt() * (32f64).sqrt();
        assert!((ratio - 0.8796).abs() < 0.05, "std / sigma = {ratio}");
        assert_eq!(Rebind::cast::<f32>(&Rebind::cast::<f64>(&theta)), theta);
    }

    /// Lanes with their own θ and their own parameters each compute what they compute alone.
    #[test]
    fn lanes_match_serial_runs() {
        const N: usize = 8;
        let lopt = MlpLOpt::default();
        let thetas: Vec<MlpLOptTheta<f32>> = (0..N)
            .map(|l| Rebind::cast(&random_theta(&lopt, Key::new(20 + l as u64))))
            .collect();
        let params: Vec<Vec<f32>> = (0..N)
            .map(|l| Key::new(40 + l as u64).normal_vec(5))
            .collect();
        let grads: Vec<Vec<Vec<f32>>> = (0..3)
            .map(|t| {
                (0..N)
                    .map(|l| Key::new(60 + 10 * t + l as u64).normal_vec(5))
                    .collect()
            })
            .collect();
        let pack = |v: &[Vec<f32>]| {
            let mut out = vec![Lanes::<N>::default(); 5];
            for (l, x) in v.iter().enumerate() {
                set_lane(&mut out, l, x);
            }
            out
        };
        let mut theta_l: MlpLOptTheta<Lanes<N>> = Rebind::cast(&thetas[0]);
        for (l, t) in thetas.iter().enumerate() {
            set_lane(&mut theta_l, l, t);
        }
        let opt = lopt.opt_fn(&theta_l);
        let mut state = opt.init(pack(&params), None);
        for g in &grads {
            opt.update(&mut state, &pack(g), Lanes::default());
        }
        for l in 0..N {
            let opt1 = lopt.opt_fn(&thetas[l]);
            let mut s1 = opt1.init(params[l].clone(), None);
            for g in &grads {
                opt1.update(&mut s1, &g[l], 0.0);
            }
            let mut got = vec![0f32; 5];
            get_lane(&state.params, l, &mut got);
            for (a, b) in got.iter().zip(&s1.params) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "lane {l}: {a} vs {b}"
                );
            }
            assert_ne!(s1.params, params[l]);
        }
    }
}
