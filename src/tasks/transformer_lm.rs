//! Decoder-only transformer language models (the JAX library's
//! `tasks/fixed/transformer_lm.py` with its `tasks/transformer.py`) on byte-level text.
//!
//! The network is the library's `Transformer` exactly, with dropout 0:
//!
//! * `hk.Embed(V, D)` of the observed ids (truncated normal σ = 1). **No positional
//!   embedding or encoding of any kind** (the library has none).
//! * Each of the `L` layers is pre-LN with residuals: `h += Attn(LN₁(h))`, then
//!   `h += MLP(LN₂(h))`. `hk.LayerNorm` (ε = 1e-5, scale 1 and offset 0 at init) is
//!   `scale_columns(layer_norm(h, 1e-5), scale) + offset`.
//! * Attention: `heads` heads of **key_size 32** (whatever `D` is, so the attention width
//!   is `A = 32·heads`), query/key/value `Linear(A)` with bias, `logits / √32`, causal mask,
//!   softmax, weighted values, heads concatenated, `Linear(D)`. The three projections are
//!   held as one `[D, 3A]` matrix `[Wq | Wk | Wv]` and one `[3A]` bias (the same numbers as
//!   haiku's three `[D, A]` weights, so the same parameter count and init).
//! * MLP: `Linear(4D)`, `gelu` (tanh approximation, `jax.nn.gelu`'s default), `Linear(D)`.
//! * Final `LayerNorm`, then `hk.Linear(V)` (default init σ = 1/√D).
//! * Attention and MLP weights use `VarianceScaling(2/L)` (fan_in, truncated normal:
//!   σ = √(2/(L·fan_in)) / 0.8796); biases zero.
//! * Loss: `sum(ce · mask) / sum(mask)`, `mask = obs != 0`.
//!
//! **Key padding.** The library multiplies the causal mask by a key-padding mask
//! `obs != 0`. Here the attention has only the causal mask: the data pads only at the end
//! of a sequence (after a document's last byte, see [`crate::datasets::text`]), so for every
//! query at a non-pad position every key at or before it is a non-pad position too, and the
//! causal mask already excludes every pad key. Queries at pad positions differ (the library
//! masks all their keys), but their loss is masked out and nothing later reads them (a pad
//! is followed only by pads), so the loss and its gradient are the same. A batch with a pad
//! *inside* a sequence would differ; the byte datasets never make one.
//!
//! Layout: rows are tokens in batch-major order (`b·T + t`, what
//! `causal_self_attention` expects, [`AttentionGeometry`]).
//!
//! Depth is part of the type ([`TransformerLm<1>`] has parameters [`Tlm1`], `<2>` [`Tlm2`],
//! `<3>` [`Tlm3`]): `#[derive(Params)]` holds nested structs but not a `Vec` of them, so
//! a runtime number of layers cannot be a parameter tree; widths, heads, batch and length
//! are runtime sizes.
//!
//! The library's list `TransformerLM_LM1B_MultiRuntime_{0..11}` uses `lm1b_32k`
//! (a SentencePiece vocabulary of 32,100 ids). These tasks use byte data instead (seqio's
//! 259-id vocabulary on Debian's `fortunes`, named `FortunesBytes`; 256 classes with
//! [`ByteVocab::Raw`](crate::datasets::text::ByteVocab) as the benchmarks use). Configs 0
//! and 1 (dropout 0.1) and 9–11 (d_model 256+ with batch 64–256 × 64: not CPU-sized) are
//! not provided.
//!
//! | constructor | heads | D | L | batch | T | params (V = 259) | params (V = 256) |
//! |---|---|---|---|---|---|---|---|
//! | [`TransformerLM_FortunesBytes_MultiRuntime_2`] | 4 | 32 | 2 | 8 | 8 | 67,459 | 67,264 |
//! | [`TransformerLM_FortunesBytes_MultiRuntime_3`] | 4 | 32 | 1 | 8 | 16 | 42,179 | 41,984 |
//! | [`TransformerLM_FortunesBytes_MultiRuntime_4`] | 4 | 32 | 2 | 16 | 4 | 67,459 | 67,264 |
//! | [`TransformerLM_FortunesBytes_MultiRuntime_5`] | 4 | 32 | 1 | 8 | 32 | 42,179 | 41,984 |
//! | [`TransformerLM_FortunesBytes_MultiRuntime_6`] | 5 | 80 | 1 | 4 | 64 | 145,539 | 145,056 |
//! | [`TransformerLM_FortunesBytes_MultiRuntime_7`] | 7 | 112 | 3 | 16 | 32 | 665,987 | 665,312 |
//! | [`TransformerLM_FortunesBytes_MultiRuntime_8`] | 4 | 128 | 1 | 64 | 32 | 265,091 | 264,320 |
//!
//! (Counts checked against haiku's `Transformer` in `tests/lm_tasks.rs`.)
//!
//! The constructors above return the task wrapped in
//! [`DataParallel`] ([`TransformerLm::data_parallel`]):
//! batches of 16 or more sequences are computed as chunks of about [`TLM_CHUNK_ROWS`] on
//! the Rayon pool and combined by their mask sums (the same loss up to `f32` rounding);
//! smaller batches run whole. [`TransformerLm::new`] gives the whole-batch task.

use nalgebra::{DMatrix, DVector};

use crate::ad::attention::AttentionGeometry;
use crate::data_parallel::DataParallel;
use crate::datasets::text::{fortunes_lm_datasets, LmBatch};
use crate::datasets::Datasets;
use crate::ops::{layer_norm_affine, linear};
use crate::params::Rebind;
use crate::prelude::{task, task_family, Params};
use crate::tasks::rnn_lm::{
    check_lm_batch, linear_init, log_int, trunc_normal, variance_scaling, vocab_of,
};
use crate::{Error, Key, Real, Result, Task, TaskFamily};

/// The library's fixed key size per head.
pub const KEY_SIZE: usize = 32;

/// One pre-LN transformer layer's parameters (`D` model width, `A = 32·heads`).
#[derive(Params, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Block<S: Real> {
    /// `h{i}_ln_1` scale, `[D]`.
    pub ln1_scale: DVector<S>,
    /// `h{i}_ln_1` offset, `[D]`.
    pub ln1_offset: DVector<S>,
    /// `[Wq | Wk | Wv]`, `[D, 3A]`.
    pub wqkv: DMatrix<S>,
    /// `[bq | bk | bv]`, `[3A]`.
    pub bqkv: DVector<S>,
    /// Attention output projection, `[A, D]`.
    pub wo: DMatrix<S>,
    /// Its bias, `[D]`.
    pub bo: DVector<S>,
    /// `h{i}_ln_2` scale, `[D]`.
    pub ln2_scale: DVector<S>,
    /// `h{i}_ln_2` offset, `[D]`.
    pub ln2_offset: DVector<S>,
    /// MLP first weights, `[D, 4D]`.
    pub w1: DMatrix<S>,
    /// MLP first bias, `[4D]`.
    pub b1: DVector<S>,
    /// MLP second weights, `[4D, D]`.
    pub w2: DMatrix<S>,
    /// MLP second bias, `[D]`.
    pub b2: DVector<S>,
}

macro_rules! tlm_params {
    ($(#[$m:meta])* $name:ident { $($layer:ident),* }) => {
        $(#[$m])*
        #[derive(Params, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct $name<S: Real> {
            /// Embedding table, `[V, D]`.
            pub embed: DMatrix<S>,
            $(
                /// A layer.
                pub $layer: Block<S>,
            )*
            /// Final layer norm (`h_f`) scale, `[D]`.
            pub lnf_scale: DVector<S>,
            /// Final layer norm offset, `[D]`.
            pub lnf_offset: DVector<S>,
            /// Readout weights, `[D, V]`.
            pub wout: DMatrix<S>,
            /// Readout bias, `[V]`.
            pub bout: DVector<S>,
        }
    };
}

tlm_params!(
    /// Parameters of a one-layer transformer LM.
    Tlm1 { l0 }
);
tlm_params!(
    /// Parameters of a two-layer transformer LM.
    Tlm2 { l0, l1 }
);
tlm_params!(
    /// Parameters of a three-layer transformer LM.
    Tlm3 { l0, l1, l2 }
);

/// A batch in batch-major order: ids, targets, the mask and its sum.
pub(crate) struct BatchMajor {
    pub ids: Vec<i32>,
    pub targets: Vec<i32>,
    pub mask: DVector<f32>,
    pub count: f64,
}

/// `batch` rearranged batch-major (row `b·T + t`).
pub(crate) fn batch_major(batch: &LmBatch) -> BatchMajor {
    let ids: Vec<i32> = batch.obs.transpose().as_slice().to_vec();
    let targets: Vec<i32> = batch.target.transpose().as_slice().to_vec();
    let mask = DVector::from_iterator(
        ids.len(),
        ids.iter().map(|&i| if i != 0 { 1.0f32 } else { 0.0 }),
    );
    let count = batch.num_tokens() as f64;
    BatchMajor {
        ids,
        targets,
        mask,
        count,
    }
}

/// Sequences per chunk of [`TransformerLm::data_parallel`]: `MultiRuntime_8`'s batch of
/// 64 runs as eight chunks of 8 (256 tokens). Small chunks keep each layer's activations
/// (the MLP's 256 × 512 is 512 KB of `f32`) in the core's L2 cache between the passes
/// that write and read them; chunks of 32 (its 2 MB MLP activations streamed from L3 by
/// every pass) took 1.15–1.2× the time per step (measured on the 2-vCPU AVX-512 Xeon, one
/// thread, CPU time, `tlm.d128l1.train_100`); chunks of 4 were no faster than 8.
pub const TLM_CHUNK_ROWS: usize = 8;

/// A transformer LM with `L` layers (the library's `_TransformerTask` with dropout 0); see
/// the [module docs](self). Implemented for `L` = 1, 2, 3.
#[derive(Debug, Clone)]
pub struct TransformerLm<const L: usize> {
    datasets: Datasets<LmBatch>,
    heads: usize,
    d_model: usize,
    vocab: usize,
    name: String,
}

impl<const L: usize> TransformerLm<L> {
    /// A transformer with `heads` heads of 32 features and model width `d_model` on
    /// `datasets` (whose `extra_info` gives the vocabulary size).
    ///
    /// Errors: [`Error::InvalidArgument`] for zero sizes, `L` not 1..=3, or datasets
    /// without a vocabulary.
    pub fn new(heads: usize, d_model: usize, datasets: Datasets<LmBatch>) -> Result<Self> {
        if heads == 0 || d_model == 0 || !(1..=3).contains(&L) {
            return Err(Error::InvalidArgument(format!(
                "TransformerLm<{L}>: need 1..=3 layers and positive sizes, got heads {heads}, \
                 d_model {d_model}"
            )));
        }
        let vocab = vocab_of(&datasets)?;
        Ok(TransformerLm {
            datasets,
            heads,
            d_model,
            vocab,
            name: format!("TransformerLM_Bytes_h{heads}_d{d_model}_l{L}"),
        })
    }

    /// The same task under another name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// This task with its loss and gradient computed over chunks of [`TLM_CHUNK_ROWS`]
    /// sequences in parallel ([`DataParallel`]; the same loss and gradient up to `f32`
    /// rounding, bit-identical on any number of threads). Attention stays within a
    /// sequence, so rows are independent.
    pub fn data_parallel(self) -> DataParallel<Self> {
        DataParallel::new(self, TLM_CHUNK_ROWS).expect("a positive chunk size")
    }

    /// Heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Model width `D`.
    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// Vocabulary size `V`.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// The number of parameters: `V·D` + per layer `4D` (two LNs) + `D·3A + 3A + A·D + D`
    /// + `D·4D + 4D + 4D·D + D`, then `2D + D·V + V`.
    pub fn num_params(&self) -> usize {
        let (v, d, a) = (self.vocab, self.d_model, KEY_SIZE * self.heads);
        let layer = 4 * d + d * 3 * a + 3 * a + a * d + d + d * 4 * d + 4 * d + 4 * d * d + d;
        v * d + L * layer + 2 * d + d * v + v
    }

    /// Checks that `batch` fits this task.
    ///
    /// Errors: [`Error::ShapeMismatch`], [`Error::InvalidArgument`].
    pub fn check_batch(&self, batch: &LmBatch) -> Result<()> {
        check_lm_batch(batch, self.vocab)
    }

    /// The attention geometry of `batch`.
    ///
    /// # Panics
    /// On an empty batch.
    pub fn geometry(&self, batch: &LmBatch) -> AttentionGeometry {
        AttentionGeometry::new(batch.obs.nrows(), batch.obs.ncols(), self.heads, KEY_SIZE)
            .expect("a non-empty LM batch")
    }

    fn init_block(&self, key: Key) -> Block<f32> {
        let (d, a) = (self.d_model, KEY_SIZE * self.heads);
        let s = 2.0 / L as f32;
        Block {
            ln1_scale: DVector::from_element(d, 1.0),
            ln1_offset: DVector::zeros(d),
            wqkv: variance_scaling(key.fold_in(0), d, 3 * a, s),
            bqkv: DVector::zeros(3 * a),
            wo: variance_scaling(key.fold_in(1), a, d, s),
            bo: DVector::zeros(d),
            ln2_scale: DVector::from_element(d, 1.0),
            ln2_offset: DVector::zeros(d),
            w1: variance_scaling(key.fold_in(2), d, 4 * d, s),
            b1: DVector::zeros(4 * d),
            w2: variance_scaling(key.fold_in(3), 4 * d, d, s),
            b2: DVector::zeros(d),
        }
    }

    /// Embedding, final LN (scale, offset) and readout (weights, bias).
    #[allow(clippy::type_complexity)]
    fn init_ends(
        &self,
        key: Key,
    ) -> (
        DMatrix<f32>,
        DVector<f32>,
        DVector<f32>,
        DMatrix<f32>,
        DVector<f32>,
    ) {
        let (v, d) = (self.vocab, self.d_model);
        (
            trunc_normal(key.fold_in(100), v, d, 1.0),
            DVector::from_element(d, 1.0),
            DVector::zeros(d),
            linear_init(key.fold_in(101), d, v),
            DVector::zeros(v),
        )
    }
}

/// The transformer LM's task ([`TransformerLm<L>`]) and family
/// ([`ParametricLmTransformer<L>`]) of one depth, with one loss body transcribed into both
/// `loss` functions: embed the ids batch-major, the pre-LN layers in order
/// (`h + Attn(LN₁(h))`, then `+ MLP(LN₂(·))`), the final layer norm and read-out,
/// `Σ ce·mask / Σ mask`. Not a `#[differentiable]` function both call: such a call runs
/// its forward pass again in the reverse sweep (a quarter of this gradient's time). The
/// body is written once, in `transformer_task!`, and passed here as tokens (a `block`
/// fragment would reach `#[task]` as one opaque group).
macro_rules! transformer_impls {
    (
        $l:literal, $params:ident { $($layer:ident = $i:literal),* },
        |$p:ident, $b:ident, $g:ident| { $($body:tt)* }
    ) => {
        #[task]
        impl Task for TransformerLm<$l> {
            type Params<S: Real> = $params<S>;
            type Batch = LmBatch;

            /// haiku's init (module docs), drawn in `f32` and converted; layer `i` from
            /// `key.fold_in(i)`.
            fn init<S: Real>(&self, key: Key) -> $params<S> {
                let (embed, lnf_scale, lnf_offset, wout, bout) = self.init_ends(key);
                $params {
                    embed,
                    $($layer: self.init_block(key.fold_in($i)),)*
                    lnf_scale,
                    lnf_offset,
                    wout,
                    bout,
                }
                .cast::<S>()
            }

            /// The transformer LM's loss (module docs) with this task's heads.
            fn loss<S: Real>(&self, $p: &$params<S>, _key: S::Key, $b: &LmBatch) -> S {
                let $g = self.geometry($b);
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
        impl TaskFamily for ParametricLmTransformer<$l> {
            type Cfg<S: Real> = ParametricLmTransformerCfg<S>;
            type Params<S: Real> = $params<S>;
            type Batch = LmBatch;

            /// `d_model_per_head` from `key.fold_in(0)`, heads from `fold_in(1)` (both
            /// `log_int`).
            fn sample(&self, key: Key) -> ParametricLmTransformerCfg<f32> {
                let (plo, phi) = self.per_head_range;
                let (hlo, hhi) = self.heads_range;
                let per_head = log_int(key.fold_in(0), plo, phi);
                let heads = log_int(key.fold_in(1), hlo, hhi);
                ParametricLmTransformerCfg::new(heads, heads * per_head)
            }

            /// [`TransformerLm`]'s init for `cfg`'s sizes.
            fn init(&self, cfg: &ParametricLmTransformerCfg<f32>, key: Key) -> $params<f32> {
                Task::init::<f32>(&self.task_of(cfg), key)
            }

            /// The fixed task's loss (the same body) with `cfg`'s heads.
            fn loss<S: Real>(
                &self,
                $p: &$params<S>,
                cfg: &ParametricLmTransformerCfg<S>,
                _key: S::Key,
                $b: &LmBatch,
            ) -> S {
                let $g = AttentionGeometry::new($b.obs.nrows(), $b.obs.ncols(), cfg.heads, KEY_SIZE)
                    .expect("a non-empty LM batch");
                $($body)*
            }

            fn normalizer<S: Real>(&self, loss: S) -> S {
                let v = self.vocab;
                S::from_lanes(|i| Self::normalize(loss.lane(i), v))
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

macro_rules! transformer_task {
    ($l:literal, $params:ident { $($layer:ident = $i:literal),* }) => {
        transformer_impls!($l, $params { $($layer = $i),* }, |params, batch, g| {
            let bm = batch_major(batch);
            let h = embed(&params.embed, &bm.ids);
            $(
                let a_in = layer_norm_affine(
                    &h, &params.$layer.ln1_scale, &params.$layer.ln1_offset, 1e-5);
                let qkv = linear(&a_in, &params.$layer.wqkv, &params.$layer.bqkv);
                let att = causal_self_attention(&qkv, &g);
                let h1 = &h + linear(&att, &params.$layer.wo, &params.$layer.bo);
                let m_in = layer_norm_affine(
                    &h1, &params.$layer.ln2_scale, &params.$layer.ln2_offset, 1e-5);
                let act = gelu_tanh(linear(&m_in, &params.$layer.w1, &params.$layer.b1));
                let h = h1 + linear(&act, &params.$layer.w2, &params.$layer.b2);
            )*
            let hf = layer_norm_affine(&h, &params.lnf_scale, &params.lnf_offset, 1e-5);
            let ce = softmax_cross_entropy(linear(&hf, &params.wout, &params.bout), &bm.targets);
            dot(&ce, &bm.mask) / bm.count
        });
    };
}

transformer_task!(1, Tlm1 { l0 = 0 });
transformer_task!(2, Tlm2 { l0 = 0, l1 = 1 });
transformer_task!(3, Tlm3 { l0 = 0, l1 = 1, l2 = 2 });

macro_rules! multiruntime {
    ($(#[$m:meta])* $name:ident, $l:literal, $heads:literal, $d:literal, $b:literal, $t:literal) => {
        $(#[$m])*
        ///
        /// Errors: [`Error::DatasetMissing`] when the `fortunes` corpus is not installed.
        #[allow(non_snake_case)]
        pub fn $name() -> Result<DataParallel<TransformerLm<$l>>> {
            let ds = fortunes_lm_datasets($b, $t, None)?;
            Ok(TransformerLm::<$l>::new($heads, $d, ds)?
                .with_name(stringify!($name))
                .data_parallel())
        }
    };
}

multiruntime!(
    /// The library's `TransformerLM_LM1B_MultiRuntime_2` (4 heads, D 32, 2 layers, batch 8,
    /// length 8) on `fortunes` bytes.
    TransformerLM_FortunesBytes_MultiRuntime_2, 2, 4, 32, 8, 8
);
multiruntime!(
    /// `MultiRuntime_3` (4 heads, D 32, 1 layer, batch 8, length 16) on `fortunes` bytes.
    TransformerLM_FortunesBytes_MultiRuntime_3, 1, 4, 32, 8, 16
);
multiruntime!(
    /// `MultiRuntime_4` (4 heads, D 32, 2 layers, batch 16, length 4) on `fortunes` bytes.
    TransformerLM_FortunesBytes_MultiRuntime_4, 2, 4, 32, 16, 4
);
multiruntime!(
    /// `MultiRuntime_5` (4 heads, D 32, 1 layer, batch 8, length 32) on `fortunes` bytes.
    TransformerLM_FortunesBytes_MultiRuntime_5, 1, 4, 32, 8, 32
);
multiruntime!(
    /// `MultiRuntime_6` (5 heads, D 80, 1 layer, batch 4, length 64) on `fortunes` bytes.
    TransformerLM_FortunesBytes_MultiRuntime_6, 1, 5, 80, 4, 64
);
multiruntime!(
    /// `MultiRuntime_7` (7 heads, D 112, 3 layers, batch 16, length 32) on `fortunes`
    /// bytes.
    TransformerLM_FortunesBytes_MultiRuntime_7, 3, 7, 112, 16, 32
);
multiruntime!(
    /// `MultiRuntime_8` (4 heads, D 128, 1 layer, batch 64, length 32) on `fortunes`
    /// bytes: the configuration the benchmarks compare.
    TransformerLM_FortunesBytes_MultiRuntime_8, 1, 4, 128, 64, 32
);

// ------------------------------------------------------------------ the family

/// A sampled configuration of [`ParametricLmTransformer`]: the number of heads and the
/// model width (both structure: instances that agree on them share lane groups). The
/// library's family samples no float (its `sample` returns an empty configuration).
#[derive(Params, Clone, Debug, PartialEq)]
pub struct ParametricLmTransformerCfg<S: Real> {
    /// Attention heads (`num_heads` of the library's `sample_lm_transformer`).
    #[params(skip)]
    pub heads: usize,
    /// Model width `D = heads · d_model_per_head`.
    #[params(skip)]
    pub d_model: usize,
    /// Always empty: the library samples no float for this family, and `#[derive(Params)]`
    /// needs a leaf.
    pub floats: Vec<S>,
}

impl<S: Real> ParametricLmTransformerCfg<S> {
    /// The configuration of `heads` heads and model width `d_model`.
    pub fn new(heads: usize, d_model: usize) -> Self {
        ParametricLmTransformerCfg {
            heads,
            d_model,
            floats: Vec::new(),
        }
    }
}

/// The JAX library's `ParametricLMTransformer` (dropout 0) with `sample_lm_transformer`'s
/// ranges for the heads and their width, restricted to a depth fixed by the type (`L` =
/// 1, 2 or 3, where the library samples `log_int(1, 8)` layers; see the module docs on
/// why depth is a type) and to one dataset per family (the datasets given; the library
/// samples the dataset, batch size, sequence length and vocabulary size too): each task
/// samples `d_model_per_head` and `num_heads` log-uniformly in `[8, 128)` (`log_int(8,
/// 128)`; narrower ranges can be given, as a CPU needs) and takes `D = heads ·
/// d_model_per_head`. Model and loss are [`TransformerLm`]'s (key size 32 per head;
/// one loss body, written once for both); the normalizer is the library's:
/// `(clip(nan_to_num(L, ln 2V), 0, ln 2V) − ln(V/5)) · 10 / ln V`.
///
/// Instances of different widths and head counts train in one batched call (lane groups
/// by structure).
#[derive(Debug, Clone)]
pub struct ParametricLmTransformer<const L: usize> {
    datasets: Datasets<LmBatch>,
    vocab: usize,
    heads_range: (usize, usize),
    per_head_range: (usize, usize),
    name: String,
}

impl<const L: usize> ParametricLmTransformer<L> {
    /// A family on `datasets` (whose `extra_info` gives the vocabulary size), head counts
    /// from `heads_range` and per-head widths from `per_head_range` (each `(lo, hi)`,
    /// log-uniform; the library's are both `(8, 128)`).
    ///
    /// Errors: [`Error::InvalidArgument`] for a range that is not `1 <= lo < hi`, `L` not
    /// 1..=3, or datasets without a vocabulary.
    pub fn new(
        datasets: Datasets<LmBatch>,
        heads_range: (usize, usize),
        per_head_range: (usize, usize),
    ) -> Result<Self> {
        for (lo, hi) in [heads_range, per_head_range] {
            if !(lo >= 1 && lo < hi && (1..=3).contains(&L)) {
                return Err(Error::InvalidArgument(format!(
                    "ParametricLmTransformer<{L}> range ({lo}, {hi}): need 1 <= lo < hi and \
                     1..=3 layers"
                )));
            }
        }
        let vocab = vocab_of(&datasets)?;
        Ok(ParametricLmTransformer {
            datasets,
            vocab,
            heads_range,
            per_head_range,
            name: format!("ParametricLMTransformer_bytes_l{L}"),
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

    /// The family's normalizer (see the type's docs) of one loss, vocabulary `vocab`.
    pub fn normalize(loss: f64, vocab: usize) -> f64 {
        let v = vocab as f64;
        let max = (2.0 * v).ln();
        let l = if loss.is_finite() { loss } else { max };
        (l.clamp(0.0, max) - (v / 5.0).ln()) * 10.0 / v.ln()
    }

    /// The fixed task of `cfg`'s sizes on this family's datasets.
    fn task_of<S: Real>(&self, cfg: &ParametricLmTransformerCfg<S>) -> TransformerLm<L> {
        TransformerLm {
            datasets: self.datasets.clone(),
            heads: cfg.heads,
            d_model: cfg.d_model,
            vocab: self.vocab,
            name: self.name.clone(),
        }
    }
}
