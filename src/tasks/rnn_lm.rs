//! Teacher-forced recurrent language models (the JAX library's `tasks/fixed/rnn_lm.py`,
//! `TeacherForcedRNNLM`) on byte-level text ([`LmBatch`]).
//!
//! The model is the library's `_forward`: `hk.Embed(V, E)` of the observed ids, a learned
//! initial state (each state leaf a `[1, H]` parameter starting at zeros, tiled over the
//! batch), the cell unrolled over the `T` steps, `hk.Linear(V)` on every output, and the
//! loss `sum(ce · mask) / sum(mask)` with `mask = obs != 0` (the mask is taken from `obs`,
//! not from `target`, as the library does; a batch of only padding gives `0/0 = NaN`, as
//! in JAX). No normalizer (the library's `base.Task` default, the identity).
//!
//! Cells, with `x_t` the embedded input (`B × E`) and `h` the previous output (`B × H`):
//!
//! * [`Cell::Lstm`] (`hk.LSTM`): `z = [x_t | h] W + b` with `W` of shape `[E + H, 4H]`
//!   (rows `0..E` read `x`), gates split **i, g, f, o**;
//!   `c = σ(f + 1)∘c + σ(i)∘tanh(g)` (the forget bias `+1` is added in the forward pass,
//!   not stored), `h = σ(o)∘tanh(c)`. Init `W` ~ truncated normal σ = 1/√(E+H), `b = 0`.
//!   Initial state parameters `h0`, `c0` (`LSTMState(hidden, cell)`).
//! * [`Cell::Gru`] (`hk.GRU`): `w_i [E, 3H]`, `w_h [H, 3H]`, `b [3H]`;
//!   `[z r] = σ(x w_i[:, :2H] + h w_h[:, :2H] + b[:2H])`,
//!   `a = tanh(x w_i[:, 2H:] + (r∘h) w_h[:, 2H:] + b[2H:])`, `h = (1 − z)∘h + z∘a`.
//!   Init `VarianceScaling(1.0)` (truncated normal, σ = √(1/fan_in) / 0.8796) for `w_i`
//!   (fan_in `E`) and `w_h` (fan_in `H`), `b = 0`.
//! * [`Cell::VanillaRnn`] (`hk.VanillaRNN`, `double_bias=True`):
//!   `h = relu(x w_i + b_i + h w_h + b_h)`, both linears haiku's default init.
//! * [`Cell::Irnn`] (the library's `rnn.IRNN`): the vanilla cell with `w_h` initialized to
//!   the identity (gain 1).
//!
//! Every other weight is haiku's default: `hk.Embed` truncated normal σ = 1, `hk.Linear`
//! truncated normal σ = 1/√fan_in without variance correction, biases zero.
//!
//! The computation is time-major: all `T·B` ids are embedded at once (row `t·B + b`, which
//! is `obs.as_slice()`'s order since [`LmBatch`] is column-major), the input projection of
//! all steps is one matrix product, and step `t` reads rows `t·B .. (t+1)·B`.
//!
//! | constructor | cell | H | E | batch | T | params (V = 259) | params (V = 256) |
//! |---|---|---|---|---|---|---|---|
//! | [`RNNLM_fortunesbytes_Patch32_LSTM128_Embed64`] | LSTM | 128 | 64 | 128 | 32 | 149,059 | 148,480 |
//! | [`RNNLM_fortunesbytes_Patch32_GRU128_Embed64`] | GRU | 128 | 64 | 128 | 32 | 124,227 | 123,648 |
//! | [`RNNLM_fortunesbytes_Patch32_VanillaRNN128_Embed64`] | vanilla | 128 | 64 | 128 | 32 | 74,947 | 74,368 |
//! | [`RNNLM_fortunesbytes_Patch32_IRNN128_Embed64`] | IRNN | 128 | 64 | 128 | 32 | 74,947 | 74,368 |
//! | [`RNNLM_fortunesbytes_Patch128_LSTM128_Embed64`] | LSTM | 128 | 64 | 128 | 128 | 149,059 | 148,480 |
//! | [`RNNLM_fortunesbytes_Patch32_LSTM256_Embed128`] | LSTM | 256 | 128 | 128 | 32 | 494,467 | 493,312 |
//! | [`RNNLM_fortunesbytes_Patch32_GRU256_Embed128`] | GRU | 256 | 128 | 128 | 32 | 395,651 | 394,496 |
//!
//! The names follow the library's scheme `RNNLM_{dataset}_Patch{T}_{cell}{H}_Embed{E}`
//! with its `lm1b_bytes` replaced by `fortunes_bytes` (Debian's `fortunes`, seqio's
//! 259-id byte vocabulary, as the library's byte datasets); the counts are the library's
//! for the same configuration (checked with haiku, see `tests/lm_tasks.rs`).
//!
//! The named constructors return the task wrapped in
//! [`DataParallel`]
//! ([`TeacherForcedRnnLm::data_parallel`]): the loss and gradient of a batch of 128 are
//! computed as two chunks of 64 sequences on the Rayon pool and combined by their mask
//! sums, the same loss up to `f32` rounding. [`TeacherForcedRnnLm::lstm`] and the other
//! plain constructors give the whole-batch task.

use std::marker::PhantomData;

use nalgebra::{DMatrix, DVector};

use crate::data_parallel::DataParallel;
use crate::datasets::text::{fortunes_lm_datasets, lm_vocab_size, LmBatch};
use crate::datasets::Datasets;
use crate::params::Rebind;
use crate::prelude::{task, task_family, Params};
use crate::{Error, Key, Real, Result, Task, TaskFamily};

/// The recurrent cells of the library's RNN LM tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cell {
    /// `hk.LSTM`.
    Lstm,
    /// `hk.GRU`.
    Gru,
    /// `hk.VanillaRNN`.
    VanillaRnn,
    /// The library's `rnn.IRNN`: a vanilla RNN with identity-initialized recurrence.
    Irnn,
}

impl Cell {
    /// The name the library's task names use (`LSTM`, `GRU`, `VanillaRNN`, `IRNN`).
    pub fn jax_name(self) -> &'static str {
        match self {
            Cell::Lstm => "LSTM",
            Cell::Gru => "GRU",
            Cell::VanillaRnn => "VanillaRNN",
            Cell::Irnn => "IRNN",
        }
    }

    /// Parameters of the cell itself (without embedding, initial state and readout) for
    /// `e` inputs and `h` hidden units.
    pub fn cell_params(self, e: usize, h: usize) -> usize {
        match self {
            Cell::Lstm => (e + h) * 4 * h + 4 * h,
            Cell::Gru => (e + h) * 3 * h + 3 * h,
            Cell::VanillaRnn | Cell::Irnn => e * h + h + h * h + h,
        }
    }

    /// Number of `[1, H]` initial-state leaves (2 for the LSTM's `(h, c)`).
    pub fn state_leaves(self) -> usize {
        if self == Cell::Lstm {
            2
        } else {
            1
        }
    }
}

/// The number of parameters of an RNN LM with vocabulary `v`, embedding `e`, `h` hidden
/// units: embedding `v·e`, the cell, the initial state, the readout `h·v + v`.
pub fn rnn_lm_num_params(cell: Cell, v: usize, e: usize, h: usize) -> usize {
    v * e + cell.cell_params(e, h) + cell.state_leaves() * h + h * v + v
}

/// Parameters of the LSTM language model.
#[derive(Params, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LstmLm<S: Real> {
    /// Embedding table, `[V, E]`.
    pub embed: DMatrix<S>,
    /// Gate weights `[E + H, 4H]` (rows `0..E` for the input), gates `i, g, f, o`.
    pub w: DMatrix<S>,
    /// Gate biases, `[4H]`.
    pub b: DVector<S>,
    /// Learned initial hidden state, `[1, H]`.
    pub h0: DMatrix<S>,
    /// Learned initial cell state, `[1, H]`.
    pub c0: DMatrix<S>,
    /// Readout weights, `[H, V]`.
    pub wo: DMatrix<S>,
    /// Readout bias, `[V]`.
    pub bo: DVector<S>,
}

/// Parameters of the GRU language model.
#[derive(Params, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GruLm<S: Real> {
    /// Embedding table, `[V, E]`.
    pub embed: DMatrix<S>,
    /// Input weights `[E, 3H]`, gates `z, r, a`.
    pub w_i: DMatrix<S>,
    /// Recurrent weights `[H, 3H]`.
    pub w_h: DMatrix<S>,
    /// Biases `[3H]`.
    pub b: DVector<S>,
    /// Learned initial state, `[1, H]`.
    pub h0: DMatrix<S>,
    /// Readout weights, `[H, V]`.
    pub wo: DMatrix<S>,
    /// Readout bias, `[V]`.
    pub bo: DVector<S>,
}

/// Parameters of the vanilla RNN (and IRNN) language model.
#[derive(Params, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VanillaRnnLm<S: Real> {
    /// Embedding table, `[V, E]`.
    pub embed: DMatrix<S>,
    /// Input-to-hidden weights, `[E, H]`.
    pub w_i: DMatrix<S>,
    /// Input-to-hidden bias, `[H]`.
    pub b_i: DVector<S>,
    /// Hidden-to-hidden weights, `[H, H]`.
    pub w_h: DMatrix<S>,
    /// Hidden-to-hidden bias, `[H]`.
    pub b_h: DVector<S>,
    /// Learned initial state, `[1, H]`.
    pub h0: DMatrix<S>,
    /// Readout weights, `[H, V]`.
    pub wo: DMatrix<S>,
    /// Readout bias, `[V]`.
    pub bo: DVector<S>,
}

/// Marker of the LSTM task type ([`TeacherForcedRnnLm<LstmCell>`]).
#[derive(Debug, Clone, Copy)]
pub struct LstmCell;
/// Marker of the GRU task type.
#[derive(Debug, Clone, Copy)]
pub struct GruCell;
/// Marker of the vanilla-RNN task type (also the IRNN, which differs only by its init).
#[derive(Debug, Clone, Copy)]
pub struct VanillaCell;

/// `std` times truncated normals on ±2 (haiku's `TruncatedNormal`, no correction).
pub(crate) fn trunc_normal(key: Key, rows: usize, cols: usize, std: f32) -> DMatrix<f32> {
    let mut w = DMatrix::<f32>::zeros(rows, cols);
    key.fill_truncated_normal(w.as_mut_slice(), std);
    w
}

/// haiku's `Linear` default init: σ = 1/√fan_in, fan_in = `rows`.
pub(crate) fn linear_init(key: Key, rows: usize, cols: usize) -> DMatrix<f32> {
    trunc_normal(key, rows, cols, 1.0 / (rows as f32).sqrt())
}

/// haiku's `VarianceScaling(scale)` (fan_in, truncated normal): σ = √(scale/fan_in) /
/// 0.87962566103423978, fan_in = `rows`.
pub(crate) fn variance_scaling(key: Key, rows: usize, cols: usize, scale: f32) -> DMatrix<f32> {
    let std = (scale / rows as f32).sqrt() / 0.879_625_7;
    trunc_normal(key, rows, cols, std)
}

/// The vocabulary size of LM datasets (`extra_info.other["vocab_size"]`).
pub(crate) fn vocab_of(datasets: &Datasets<LmBatch>) -> Result<usize> {
    match lm_vocab_size(datasets.extra_info()) {
        Some(v) if v >= 2 => Ok(v),
        other => Err(Error::InvalidArgument(format!(
            "language-model datasets must declare vocab_size >= 2, got {other:?}"
        ))),
    }
}

/// Checks that every id of `batch` is below `vocab` and the shapes agree.
pub(crate) fn check_lm_batch(batch: &LmBatch, vocab: usize) -> Result<()> {
    if batch.obs.shape() != batch.target.shape() {
        return Err(Error::ShapeMismatch {
            what: "LM batch obs and target".into(),
            expected: vec![batch.obs.nrows(), batch.obs.ncols()],
            got: vec![batch.target.nrows(), batch.target.ncols()],
        });
    }
    if let Some(id) = batch
        .obs
        .iter()
        .chain(batch.target.iter())
        .find(|&&i| i < 0 || i as usize >= vocab)
    {
        return Err(Error::InvalidArgument(format!(
            "token id {id} outside 0..{vocab}"
        )));
    }
    Ok(())
}

/// The loss mask of step `t` (time-major: the `B` examples at position `t`), `1` where
/// `obs != 0`.
pub(crate) fn step_masks(batch: &LmBatch) -> Vec<DVector<f32>> {
    let m = batch.mask();
    (0..m.ncols()).map(|t| m.column(t).into_owned()).collect()
}

/// The loss mask of every step, time-major (entry `t·B + b`), `1` where `obs != 0`.
pub(crate) fn time_major_mask(batch: &LmBatch) -> DVector<f32> {
    DVector::from_column_slice(batch.mask().as_slice())
}

/// Sequences per chunk of [`TeacherForcedRnnLm::data_parallel`]: the library's batch of
/// 128 runs as two chunks of 64 (smaller chunks cost more than they balance: the
/// recurrent product of a chunk has only its rows).
pub const RNN_CHUNK_ROWS: usize = 64;

/// A teacher-forced RNN language model (the library's `TeacherForcedRNNLM`); see the
/// [module docs](self). `C` is the cell's parameter layout: [`LstmCell`], [`GruCell`] or
/// [`VanillaCell`] (vanilla and IRNN).
#[derive(Debug, Clone)]
pub struct TeacherForcedRnnLm<C> {
    datasets: Datasets<LmBatch>,
    cell: Cell,
    hidden: usize,
    embed_dim: usize,
    vocab: usize,
    name: String,
    _cell: PhantomData<C>,
}

impl<C> TeacherForcedRnnLm<C> {
    fn build(
        cell: Cell,
        hidden: usize,
        embed_dim: usize,
        datasets: Datasets<LmBatch>,
    ) -> Result<Self> {
        if hidden == 0 || embed_dim == 0 {
            return Err(Error::InvalidArgument(format!(
                "RNN LM needs positive sizes, got hidden {hidden}, embedding {embed_dim}"
            )));
        }
        let vocab = vocab_of(&datasets)?;
        let seq = datasets
            .extra_info()
            .other
            .get("sequence_length")
            .cloned()
            .unwrap_or_else(|| "?".into());
        Ok(TeacherForcedRnnLm {
            name: format!(
                "RNNLM_bytes_Patch{seq}_{}{hidden}_Embed{embed_dim}",
                cell.jax_name()
            ),
            datasets,
            cell,
            hidden,
            embed_dim,
            vocab,
            _cell: PhantomData,
        })
    }

    /// The same task under another name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The cell.
    pub fn cell(&self) -> Cell {
        self.cell
    }

    /// Hidden units `H`.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// Embedding width `E`.
    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    /// Vocabulary size `V` (from the datasets).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The number of parameters ([`rnn_lm_num_params`]).
    pub fn num_params(&self) -> usize {
        rnn_lm_num_params(self.cell, self.vocab, self.embed_dim, self.hidden)
    }

    /// Checks that `batch` fits this task (the loss panics on ids outside the vocabulary).
    ///
    /// Errors: [`Error::ShapeMismatch`], [`Error::InvalidArgument`].
    pub fn check_batch(&self, batch: &LmBatch) -> Result<()> {
        check_lm_batch(batch, self.vocab)
    }

    /// This task with its loss and gradient computed over chunks of [`RNN_CHUNK_ROWS`]
    /// sequences in parallel ([`DataParallel`]; the same loss and gradient up to `f32`
    /// rounding, bit-identical on any number of threads). What the named constructors
    /// (`RNNLM_fortunesbytes_*`) return.
    pub fn data_parallel(self) -> DataParallel<Self> {
        DataParallel::new(self, RNN_CHUNK_ROWS).expect("a positive chunk size")
    }

    fn embed_and_readout(&self, key: Key) -> (DMatrix<f32>, DMatrix<f32>, DVector<f32>) {
        let (v, e, h) = (self.vocab, self.embed_dim, self.hidden);
        (
            trunc_normal(key.fold_in(0), v, e, 1.0),
            linear_init(key.fold_in(1), h, v),
            DVector::zeros(v),
        )
    }
}

impl TeacherForcedRnnLm<LstmCell> {
    /// An LSTM LM with `hidden` units and embedding `embed_dim` on `datasets` (whose
    /// `extra_info` gives the vocabulary size).
    ///
    /// Errors: [`Error::InvalidArgument`] for zero sizes or datasets without a vocabulary.
    pub fn lstm(hidden: usize, embed_dim: usize, datasets: Datasets<LmBatch>) -> Result<Self> {
        Self::build(Cell::Lstm, hidden, embed_dim, datasets)
    }
}

impl TeacherForcedRnnLm<GruCell> {
    /// A GRU LM; as [`TeacherForcedRnnLm::lstm`].
    ///
    /// Errors: as [`TeacherForcedRnnLm::lstm`].
    pub fn gru(hidden: usize, embed_dim: usize, datasets: Datasets<LmBatch>) -> Result<Self> {
        Self::build(Cell::Gru, hidden, embed_dim, datasets)
    }
}

impl TeacherForcedRnnLm<VanillaCell> {
    /// A vanilla-RNN LM (`hk.VanillaRNN`); as [`TeacherForcedRnnLm::lstm`].
    ///
    /// Errors: as [`TeacherForcedRnnLm::lstm`].
    pub fn vanilla(hidden: usize, embed_dim: usize, datasets: Datasets<LmBatch>) -> Result<Self> {
        Self::build(Cell::VanillaRnn, hidden, embed_dim, datasets)
    }

    /// An IRNN LM (identity-initialized recurrence); as [`TeacherForcedRnnLm::lstm`].
    ///
    /// Errors: as [`TeacherForcedRnnLm::lstm`].
    pub fn irnn(hidden: usize, embed_dim: usize, datasets: Datasets<LmBatch>) -> Result<Self> {
        Self::build(Cell::Irnn, hidden, embed_dim, datasets)
    }
}

/// The initial parameters of one cell's LM from its embedding and read-out: the cell's own
/// weights are drawn as the fixed tasks draw them (module docs; `key.fold_in(2)` and
/// `fold_in(3)`), so a task and a family instance of the same sizes differ only in the
/// embedding and read-out they are given.
pub(crate) trait AssembleRnnLm: Sized {
    fn assemble(
        cell: Cell,
        key: Key,
        e: usize,
        h: usize,
        readout: (DMatrix<f32>, DMatrix<f32>, DVector<f32>),
    ) -> Self;
}

impl AssembleRnnLm for LstmLm<f32> {
    fn assemble(
        _cell: Cell,
        key: Key,
        e: usize,
        h: usize,
        (embed, wo, bo): (DMatrix<f32>, DMatrix<f32>, DVector<f32>),
    ) -> Self {
        LstmLm {
            embed,
            w: linear_init(key.fold_in(2), e + h, 4 * h),
            b: DVector::zeros(4 * h),
            h0: DMatrix::zeros(1, h),
            c0: DMatrix::zeros(1, h),
            wo,
            bo,
        }
    }
}

impl AssembleRnnLm for GruLm<f32> {
    fn assemble(
        _cell: Cell,
        key: Key,
        e: usize,
        h: usize,
        (embed, wo, bo): (DMatrix<f32>, DMatrix<f32>, DVector<f32>),
    ) -> Self {
        GruLm {
            embed,
            w_i: variance_scaling(key.fold_in(2), e, 3 * h, 1.0),
            w_h: variance_scaling(key.fold_in(3), h, 3 * h, 1.0),
            b: DVector::zeros(3 * h),
            h0: DMatrix::zeros(1, h),
            wo,
            bo,
        }
    }
}

impl AssembleRnnLm for VanillaRnnLm<f32> {
    /// The IRNN's recurrent weights are the identity.
    fn assemble(
        cell: Cell,
        key: Key,
        e: usize,
        h: usize,
        (embed, wo, bo): (DMatrix<f32>, DMatrix<f32>, DVector<f32>),
    ) -> Self {
        let w_h = if cell == Cell::Irnn {
            DMatrix::identity(h, h)
        } else {
            linear_init(key.fold_in(3), h, h)
        };
        VanillaRnnLm {
            embed,
            w_i: linear_init(key.fold_in(2), e, h),
            b_i: DVector::zeros(h),
            w_h,
            b_h: DVector::zeros(h),
            h0: DMatrix::zeros(1, h),
            wo,
            bo,
        }
    }
}

/// One cell's task ([`TeacherForcedRnnLm<C>`]) and family ([`ParametricLmRnn<C>`]) with
/// one loss body, transcribed into both `loss` functions: embed the ids time-major,
/// unroll the cell over the sequence, read out every step, `Σ ce·mask / Σ mask` (module
/// docs). Not a `#[differentiable]` function both call: such a call runs its forward pass
/// again in the reverse sweep, the whole loss here. The body is taken as tokens, not as a
/// `block` fragment, which would reach `#[task]` as one opaque group.
macro_rules! rnn_lm_task_and_family {
    ($marker:ty, $p:ident, |$params:ident, $batch:ident, $hd:ident, $fd:ident| { $($body:tt)* }) => {
        #[task]
        impl Task for TeacherForcedRnnLm<$marker> {
            type Params<S: Real> = $p<S>;
            type Batch = LmBatch;

            /// haiku's init (module docs), drawn in `f32` and converted.
            fn init<S: Real>(&self, key: Key) -> $p<S> {
                let (e, h) = (self.embed_dim, self.hidden);
                $p::<f32>::assemble(self.cell, key, e, h, self.embed_and_readout(key)).cast::<S>()
            }

            /// The cell's LM loss (module docs) with this task's sizes.
            fn loss<S: Real>(&self, $params: &$p<S>, _key: S::Key, $batch: &LmBatch) -> S {
                let $hd = self.hidden;
                let $fd = self.embed_dim;
                $($body)*
            }

            fn datasets(&self) -> Option<Datasets<LmBatch>> {
                Some(self.datasets.clone())
            }

            fn name(&self) -> String {
                self.name.clone()
            }
        }

        #[task_family]
        impl TaskFamily for ParametricLmRnn<$marker> {
            type Cfg<S: Real> = ParametricLmRnnCfg<S>;
            type Params<S: Real> = $p<S>;
            type Batch = LmBatch;

            /// Hidden size from `key.fold_in(0)`, embedding from `fold_in(1)` (both `log_int`),
            /// scale `U(0.5, 2)` from `fold_in(2)`.
            fn sample(&self, key: Key) -> ParametricLmRnnCfg<f32> {
                self.sample_cfg(key)
            }

            /// As the fixed task's init, the embedding and read-out times `cfg.init_scale`.
            fn init(&self, cfg: &ParametricLmRnnCfg<f32>, key: Key) -> $p<f32> {
                let (e, h) = (cfg.embed_dim, cfg.hidden);
                $p::<f32>::assemble(self.cell, key, e, h, self.scaled_readout(cfg, key))
            }

            /// The fixed task's loss (the same body) with `cfg`'s sizes.
            fn loss<S: Real>(
                &self,
                $params: &$p<S>,
                cfg: &ParametricLmRnnCfg<S>,
                _key: S::Key,
                $batch: &LmBatch,
            ) -> S {
                let $hd = cfg.hidden;
                let $fd = cfg.embed_dim;
                $($body)*
            }

            fn datasets(&self) -> Option<Datasets<LmBatch>> {
                Some(self.datasets.clone())
            }

            fn name(&self) -> String {
                self.name.clone()
            }
        }
    };
}

rnn_lm_task_and_family!(LstmCell, LstmLm, |params, batch, hd, fd| {
    let bsz = batch.obs.nrows();
    let ones = DMatrix::<f32>::from_element(bsz, 1, 1.0);
    let mask = time_major_mask(batch);
    let count = batch.num_tokens() as f64;
    // Time-major: row t·B + b is example b at step t.
    let ids = batch.obs.as_slice();
    // embed(E, ids)·W_x + b = embed(E·W_x + b, ids): the input projection and the bias
    // of the V table rows (V·E·4H multiply-adds) instead of the T·B embedded rows
    // (T·B = 4096 > V = 259); the bias is then a pass over V rows, not over T·B.
    let table = &params.embed * params.w.rows(0, fd) + &params.b;
    let wh = params.w.rows(fd, hd);
    let h0 = &ones * &params.h0;
    let c0 = &ones * &params.c0;
    // hk.LSTM over all steps as one rule (gates i, g, f, o; forget bias +1), then the
    // read-out of every step as one product. `#[task]` makes the LSTM of the looked-up
    // rows one rule: each step's gates gathered from the table (in cache), the T·B × 4H
    // rows and their cotangent never stored.
    let hs = lstm_sequence(&embed(&table, ids), &wh, &h0, &c0);
    let ce = softmax_cross_entropy(hs * &params.wo + &params.bo, batch.target.as_slice());
    dot(&ce, &mask) / count
});

rnn_lm_task_and_family!(GruCell, GruLm, |params, batch, hd, _fd| {
    let bsz = batch.obs.nrows();
    let steps = batch.obs.ncols();
    let ones = DMatrix::<f32>::from_element(bsz, 1, 1.0);
    let masks = step_masks(batch);
    let count = batch.num_tokens() as f64;
    let tgt = batch.target.as_slice();
    let ids = batch.obs.as_slice();
    let e = embed(&params.embed, ids);
    let xw = e * &params.w_i + &params.b;
    let w_zr = params.w_h.columns(0, 2 * hd);
    let w_a = params.w_h.columns(2 * hd, hd);
    let mut h = &ones * &params.h0;
    let mut total = 0.0;
    for t in 0..steps {
        let x_t = xw.rows(t * bsz, bsz);
        let zr = sigmoid(x_t.columns(0, 2 * hd) + &h * &w_zr);
        let z = zr.columns(0, hd);
        let r = zr.columns(hd, hd);
        let a = tanh(x_t.columns(2 * hd, hd) + component_mul(&r, &h) * &w_a);
        h = h.clone() + component_mul(&z, &(a - h));
        let ce = softmax_cross_entropy(&h * &params.wo + &params.bo, &tgt[t * bsz..(t + 1) * bsz]);
        total += dot(&ce, &masks[t]);
    }
    total / count
});

rnn_lm_task_and_family!(VanillaCell, VanillaRnnLm, |params, batch, _hd, _fd| {
    let bsz = batch.obs.nrows();
    let steps = batch.obs.ncols();
    let ones = DMatrix::<f32>::from_element(bsz, 1, 1.0);
    let masks = step_masks(batch);
    let count = batch.num_tokens() as f64;
    let tgt = batch.target.as_slice();
    let ids = batch.obs.as_slice();
    let e = embed(&params.embed, ids);
    let xw = e * &params.w_i + &params.b_i + &params.b_h;
    let mut h = &ones * &params.h0;
    let mut total = 0.0;
    for t in 0..steps {
        h = relu(xw.rows(t * bsz, bsz) + &h * &params.w_h);
        let ce = softmax_cross_entropy(&h * &params.wo + &params.bo, &tgt[t * bsz..(t + 1) * bsz]);
        total += dot(&ce, &masks[t]);
    }
    total / count
});

/// Fortunes byte datasets at batch 128 and length `seq`, the task named by the library's
/// scheme.
fn fortunes(seq: usize) -> Result<Datasets<LmBatch>> {
    fortunes_lm_datasets(128, seq, None)
}

/// `RNNLM_fortunesbytes_Patch32_LSTM128_Embed64`: the library's
/// `RNNLM_lm1bbytes_Patch32_LSTM128_Embed64` on Debian's `fortunes` (149,059 parameters).
///
/// Errors: [`Error::DatasetMissing`] when the corpus is not installed.
#[allow(non_snake_case)]
pub fn RNNLM_fortunesbytes_Patch32_LSTM128_Embed64(
) -> Result<DataParallel<TeacherForcedRnnLm<LstmCell>>> {
    Ok(TeacherForcedRnnLm::lstm(128, 64, fortunes(32)?)?
        .with_name("RNNLM_fortunesbytes_Patch32_LSTM128_Embed64")
        .data_parallel())
}

/// `RNNLM_fortunesbytes_Patch32_GRU128_Embed64` (124,227 parameters).
///
/// Errors: as [`RNNLM_fortunesbytes_Patch32_LSTM128_Embed64`].
#[allow(non_snake_case)]
pub fn RNNLM_fortunesbytes_Patch32_GRU128_Embed64(
) -> Result<DataParallel<TeacherForcedRnnLm<GruCell>>> {
    Ok(TeacherForcedRnnLm::gru(128, 64, fortunes(32)?)?
        .with_name("RNNLM_fortunesbytes_Patch32_GRU128_Embed64")
        .data_parallel())
}

/// `RNNLM_fortunesbytes_Patch32_VanillaRNN128_Embed64` (74,947 parameters).
///
/// Errors: as [`RNNLM_fortunesbytes_Patch32_LSTM128_Embed64`].
#[allow(non_snake_case)]
pub fn RNNLM_fortunesbytes_Patch32_VanillaRNN128_Embed64(
) -> Result<DataParallel<TeacherForcedRnnLm<VanillaCell>>> {
    Ok(TeacherForcedRnnLm::vanilla(128, 64, fortunes(32)?)?
        .with_name("RNNLM_fortunesbytes_Patch32_VanillaRNN128_Embed64")
        .data_parallel())
}

/// `RNNLM_fortunesbytes_Patch32_IRNN128_Embed64` (74,947 parameters).
///
/// Errors: as [`RNNLM_fortunesbytes_Patch32_LSTM128_Embed64`].
#[allow(non_snake_case)]
pub fn RNNLM_fortunesbytes_Patch32_IRNN128_Embed64(
) -> Result<DataParallel<TeacherForcedRnnLm<VanillaCell>>> {
    Ok(TeacherForcedRnnLm::irnn(128, 64, fortunes(32)?)?
        .with_name("RNNLM_fortunesbytes_Patch32_IRNN128_Embed64")
        .data_parallel())
}

/// `RNNLM_fortunesbytes_Patch128_LSTM128_Embed64` (sequences of 128; 149,059 parameters).
///
/// Errors: as [`RNNLM_fortunesbytes_Patch32_LSTM128_Embed64`].
#[allow(non_snake_case)]
pub fn RNNLM_fortunesbytes_Patch128_LSTM128_Embed64(
) -> Result<DataParallel<TeacherForcedRnnLm<LstmCell>>> {
    Ok(TeacherForcedRnnLm::lstm(128, 64, fortunes(128)?)?
        .with_name("RNNLM_fortunesbytes_Patch128_LSTM128_Embed64")
        .data_parallel())
}

/// `RNNLM_fortunesbytes_Patch32_LSTM256_Embed128` (494,467 parameters).
///
/// Errors: as [`RNNLM_fortunesbytes_Patch32_LSTM128_Embed64`].
#[allow(non_snake_case)]
pub fn RNNLM_fortunesbytes_Patch32_LSTM256_Embed128(
) -> Result<DataParallel<TeacherForcedRnnLm<LstmCell>>> {
    Ok(TeacherForcedRnnLm::lstm(256, 128, fortunes(32)?)?
        .with_name("RNNLM_fortunesbytes_Patch32_LSTM256_Embed128")
        .data_parallel())
}

/// `RNNLM_fortunesbytes_Patch32_GRU256_Embed128` (395,651 parameters).
///
/// Errors: as [`RNNLM_fortunesbytes_Patch32_LSTM128_Embed64`].
#[allow(non_snake_case)]
pub fn RNNLM_fortunesbytes_Patch32_GRU256_Embed128(
) -> Result<DataParallel<TeacherForcedRnnLm<GruCell>>> {
    Ok(TeacherForcedRnnLm::gru(256, 128, fortunes(32)?)?
        .with_name("RNNLM_fortunesbytes_Patch32_GRU256_Embed128")
        .data_parallel())
}

// ------------------------------------------------------------------ the family

/// A sampled configuration of [`ParametricLmRnn`]: the init scale (a float leaf, so it
/// packs into lanes), and the hidden and embedding sizes (structure: instances that agree
/// on them share lane groups).
#[derive(Params, Clone, Debug, PartialEq)]
pub struct ParametricLmRnnCfg<S: Real> {
    /// Multiplies the standard deviation of the embedding and read-out initialization
    /// (the library's sampled `w_init` of `hk.Embed` and `hk.Linear`).
    pub init_scale: S,
    /// Hidden units (`rnn_size` of the library's `sample_lm_rnn`).
    #[params(skip)]
    pub hidden: usize,
    /// Embedding width (`embed_size`).
    #[params(skip)]
    pub embed_dim: usize,
}

/// The JAX library's `ParametricLMRNN` with `sample_lm_rnn`'s size ranges, one cell per
/// family as in the library (its `rnn_core_fn`: [`ParametricLmRnn::new`] for the LSTM,
/// [`ParametricLmRnn::gru`], [`ParametricLmRnn::vanilla`], [`ParametricLmRnn::irnn`]; the
/// family-level draw of the cell, batch size and sequence length is
/// [`sample_lm_rnn`](crate::tasks::lm_samplers::sample_lm_rnn)) and
/// one dataset per family (the datasets given, e.g. fortunes bytes or the embedded text):
/// each task samples the hidden and embedding sizes log-uniformly in `[8, 256)`
/// (`log_int(8, 256)`, or the range given) and an init scale uniformly in `[0.5, 2]` (the
/// range of the library's `SampleInitializer`; the embedding is truncated normal
/// σ = scale and the read-out σ = scale/√H, where the library also samples other
/// initializer kinds). The model and loss are [`TeacherForcedRnnLm<C>`]'s (module docs):
/// task and family share one loss body; no normalizer (the identity).
///
/// Instances of different sizes train in one batched call (lane groups by structure).
#[derive(Debug, Clone)]
pub struct ParametricLmRnn<C = LstmCell> {
    datasets: Datasets<LmBatch>,
    vocab: usize,
    cell: Cell,
    size_range: (usize, usize),
    name: String,
    _cell: PhantomData<C>,
}

impl<C> ParametricLmRnn<C> {
    fn build(cell: Cell, datasets: Datasets<LmBatch>, size_range: (usize, usize)) -> Result<Self> {
        let (lo, hi) = size_range;
        if !(lo >= 1 && lo < hi) {
            return Err(Error::InvalidArgument(format!(
                "ParametricLmRnn size range ({lo}, {hi}): need 1 <= lo < hi"
            )));
        }
        let vocab = vocab_of(&datasets)?;
        Ok(ParametricLmRnn {
            datasets,
            vocab,
            cell,
            size_range,
            name: format!("ParametricLMRNN_{}_bytes", cell.jax_name()),
            _cell: PhantomData,
        })
    }

    /// The same family under another name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Vocabulary size `V` (from the datasets).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The cell of every task of the family.
    pub fn cell(&self) -> Cell {
        self.cell
    }

    fn sample_cfg(&self, key: Key) -> ParametricLmRnnCfg<f32> {
        let (lo, hi) = self.size_range;
        ParametricLmRnnCfg {
            init_scale: key.fold_in(2).uniform_range(0.5f32, 2.0),
            hidden: log_int(key.fold_in(0), lo, hi),
            embed_dim: log_int(key.fold_in(1), lo, hi),
        }
    }

    /// Embedding σ = scale, read-out σ = scale/√H, read-out bias zero.
    fn scaled_readout(
        &self,
        cfg: &ParametricLmRnnCfg<f32>,
        key: Key,
    ) -> (DMatrix<f32>, DMatrix<f32>, DVector<f32>) {
        let (v, e, h, s) = (self.vocab, cfg.embed_dim, cfg.hidden, cfg.init_scale);
        (
            trunc_normal(key.fold_in(0), v, e, s),
            trunc_normal(key.fold_in(1), h, v, s / (h as f32).sqrt()),
            DVector::zeros(v),
        )
    }
}

impl ParametricLmRnn<LstmCell> {
    /// An LSTM family on `datasets` (whose `extra_info` gives the vocabulary size), hidden
    /// and embedding sizes drawn log-uniformly from `size_range = (lo, hi)` (the library's
    /// is `(8, 256)`).
    ///
    /// Errors: [`Error::InvalidArgument`] for a range that is not `1 <= lo < hi` or
    /// datasets without a vocabulary.
    pub fn new(datasets: Datasets<LmBatch>, size_range: (usize, usize)) -> Result<Self> {
        Self::build(Cell::Lstm, datasets, size_range)
    }
}

impl ParametricLmRnn<GruCell> {
    /// A GRU family (the library's `gru_fn`); as [`ParametricLmRnn::new`].
    ///
    /// Errors: as [`ParametricLmRnn::new`].
    pub fn gru(datasets: Datasets<LmBatch>, size_range: (usize, usize)) -> Result<Self> {
        Self::build(Cell::Gru, datasets, size_range)
    }
}

impl ParametricLmRnn<VanillaCell> {
    /// A vanilla-RNN family (the library's `vanilla_rnn_fn`); as [`ParametricLmRnn::new`].
    ///
    /// Errors: as [`ParametricLmRnn::new`].
    pub fn vanilla(datasets: Datasets<LmBatch>, size_range: (usize, usize)) -> Result<Self> {
        Self::build(Cell::VanillaRnn, datasets, size_range)
    }

    /// An IRNN family (identity-initialized recurrence); as [`ParametricLmRnn::new`].
    ///
    /// Errors: as [`ParametricLmRnn::new`].
    pub fn irnn(datasets: Datasets<LmBatch>, size_range: (usize, usize)) -> Result<Self> {
        Self::build(Cell::Irnn, datasets, size_range)
    }
}

/// `floor(exp(U(ln lo, ln hi)))` from `key`, clamped to `[lo, hi)` (the library's
/// `log_int`).
pub(crate) fn log_int(key: Key, lo: usize, hi: usize) -> usize {
    let u: f64 = key.uniform();
    let v = ((lo as f64).ln() + ((hi as f64).ln() - (lo as f64).ln()) * u).exp();
    (v as usize).clamp(lo, hi - 1)
}
