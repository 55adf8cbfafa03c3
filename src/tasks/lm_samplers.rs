//! The family-level samplers of the language-model families: the JAX library's
//! `sample_lm_rnn` (`tasks/parametric/lm_rnn.py`) and `sample_lm_transformer`
//! (`tasks/parametric/lm_transformer.py`).
//!
//! In the library one draw of these samplers configures one family: its cell (or depth),
//! batch size, sequence length, dataset, vocabulary and model sizes, and the family's own
//! `sample` then draws only what varies between its instances. lopt splits the same draws
//! the other way round where it pays: the model sizes vary per *instance*
//! ([`ParametricLmRnn`], [`ParametricLmTransformer`]), so tasks of different widths train
//! in one batched call, and what changes the data or the code's type (batch size,
//! sequence length, cell, depth) is drawn here, once per family:
//!
//! | library draw | here |
//! |---|---|
//! | `batch_size = log_int(4, 512)` | [`LmFamilyRanges::batch`] (the library's by default) |
//! | `sequence_length = log_int(4, 512)` | [`LmFamilyRanges::sequence`] (same) |
//! | `rnn_core_fn ∈ {lstm, vanilla_rnn, gru}`, uniform | [`LmRnnFamilySample::cell`] |
//! | `num_layers = log_int(1, 8)` | [`LmTransformerFamilySample::num_layers`], `log_int(1, 4)`: the library's draw conditioned on the 1–3 layers lopt's transformer types provide |
//! | dataset among lm1b/wikipedia, 32k or bytes | the datasets the caller builds for the drawn batch and length (fortunes bytes, any text directory, or the embedded text) |
//! | `vocab_size = log_int(100, 10000)` | the datasets' byte vocabulary (a byte corpus fixes it) |
//! | `rnn_size`, `embed_size`, `d_model`, `num_heads` | per instance, in the family |
//!
//! ```no_run
//! use lopt::datasets::text::fortunes_lm_datasets;
//! use lopt::tasks::lm_samplers::{sample_lm_rnn, LmFamilyRanges, LmRnnFamily};
//! use lopt::{Key, TaskFamily};
//!
//! # fn main() -> lopt::Result<()> {
//! let draw = sample_lm_rnn(Key::new(0), &LmFamilyRanges::default())?;
//! let family = draw.build(|b, t| fortunes_lm_datasets(b, t, None), (8, 256))?;
//! // Each variant is an ordinary `TaskFamily` of its own type.
//! let name = match &family {
//!     LmRnnFamily::Lstm(f) => f.name(),
//!     LmRnnFamily::Gru(f) => f.name(),
//!     LmRnnFamily::Vanilla(f) => f.name(),
//! };
//! println!("{name}: batch {}, length {}", draw.batch_size, draw.sequence_length);
//! # Ok(())
//! # }
//! ```

use crate::datasets::text::LmBatch;
use crate::datasets::Datasets;
use crate::tasks::rnn_lm::{log_int, Cell, GruCell, LstmCell, ParametricLmRnn, VanillaCell};
use crate::tasks::transformer_lm::ParametricLmTransformer;
use crate::{Error, Key, Result};

/// The batch-size and sequence-length ranges `(lo, hi)` the samplers draw from,
/// log-uniformly (`log_int`, `hi` excluded). The default is the library's, `(4, 512)` for
/// both; a CPU meta-training run will usually narrow them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LmFamilyRanges {
    /// Batch sizes.
    pub batch: (usize, usize),
    /// Sequence lengths.
    pub sequence: (usize, usize),
}

impl Default for LmFamilyRanges {
    fn default() -> Self {
        LmFamilyRanges {
            batch: (4, 512),
            sequence: (4, 512),
        }
    }
}

impl LmFamilyRanges {
    fn check(&self) -> Result<()> {
        for (what, (lo, hi)) in [("batch", self.batch), ("sequence", self.sequence)] {
            if !(lo >= 1 && lo < hi) {
                return Err(Error::InvalidArgument(format!(
                    "LM family {what} range ({lo}, {hi}): need 1 <= lo < hi"
                )));
            }
        }
        Ok(())
    }

    /// Batch size from `key.fold_in(0)`, sequence length from `fold_in(1)`.
    fn draw(&self, key: Key) -> (usize, usize) {
        (
            log_int(key.fold_in(0), self.batch.0, self.batch.1),
            log_int(key.fold_in(1), self.sequence.0, self.sequence.1),
        )
    }
}

/// One draw of [`sample_lm_rnn`]: what configures a [`ParametricLmRnn`] family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LmRnnFamilySample {
    /// The cell: [`Cell::Lstm`], [`Cell::VanillaRnn`] or [`Cell::Gru`].
    pub cell: Cell,
    /// Examples per batch.
    pub batch_size: usize,
    /// Tokens per example.
    pub sequence_length: usize,
}

/// A [`ParametricLmRnn`] of the drawn cell; each variant is a `TaskFamily` of its own type.
#[derive(Debug, Clone)]
pub enum LmRnnFamily {
    /// The LSTM family.
    Lstm(ParametricLmRnn<LstmCell>),
    /// The GRU family.
    Gru(ParametricLmRnn<GruCell>),
    /// The vanilla-RNN family.
    Vanilla(ParametricLmRnn<VanillaCell>),
}

/// The library's cells in its order (`rnn_fns = ["lstm_fn", "vanilla_rnn_fn", "gru_fn"]`).
const RNN_CELLS: [Cell; 3] = [Cell::Lstm, Cell::VanillaRnn, Cell::Gru];

/// Draws a [`ParametricLmRnn`] family configuration as the library's `sample_lm_rnn`
/// does (module docs): batch size and sequence length log-uniform in `ranges`, the cell
/// uniform over LSTM, vanilla RNN and GRU (from `key.fold_in(2)`).
///
/// Errors: [`Error::InvalidArgument`] for a range that is not `1 <= lo < hi`.
pub fn sample_lm_rnn(key: Key, ranges: &LmFamilyRanges) -> Result<LmRnnFamilySample> {
    ranges.check()?;
    let (batch_size, sequence_length) = ranges.draw(key);
    let pick = key.fold_in(2).randint(0, RNN_CELLS.len() as i64) as usize;
    Ok(LmRnnFamilySample {
        cell: RNN_CELLS[pick],
        batch_size,
        sequence_length,
    })
}

impl LmRnnFamilySample {
    /// The family of this draw on `datasets(batch_size, sequence_length)`, with hidden and
    /// embedding sizes drawn per instance from `size_range` (the library's is `(8, 256)`).
    ///
    /// Errors: those of `datasets` and of [`ParametricLmRnn::new`]; a zero batch size or
    /// length gives [`Error::InvalidArgument`].
    pub fn build(
        &self,
        datasets: impl FnOnce(usize, usize) -> Result<Datasets<LmBatch>>,
        size_range: (usize, usize),
    ) -> Result<LmRnnFamily> {
        check_draw(self.batch_size, self.sequence_length)?;
        let ds = datasets(self.batch_size, self.sequence_length)?;
        Ok(match self.cell {
            Cell::Lstm => LmRnnFamily::Lstm(ParametricLmRnn::new(ds, size_range)?),
            Cell::Gru => LmRnnFamily::Gru(ParametricLmRnn::gru(ds, size_range)?),
            Cell::VanillaRnn => LmRnnFamily::Vanilla(ParametricLmRnn::vanilla(ds, size_range)?),
            Cell::Irnn => LmRnnFamily::Vanilla(ParametricLmRnn::irnn(ds, size_range)?),
        })
    }
}

/// One draw of [`sample_lm_transformer`]: what configures a [`ParametricLmTransformer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LmTransformerFamilySample {
    /// Transformer blocks, 1 to 3.
    pub num_layers: usize,
    /// Examples per batch.
    pub batch_size: usize,
    /// Tokens per example.
    pub sequence_length: usize,
}

/// A [`ParametricLmTransformer`] of the drawn depth; each variant is a `TaskFamily` of its
/// own type (the depth is a type parameter, see [`crate::tasks::transformer_lm`]).
#[derive(Debug, Clone)]
pub enum LmTransformerFamily {
    /// One block.
    L1(ParametricLmTransformer<1>),
    /// Two blocks.
    L2(ParametricLmTransformer<2>),
    /// Three blocks.
    L3(ParametricLmTransformer<3>),
}

/// Draws a [`ParametricLmTransformer`] family configuration as the library's
/// `sample_lm_transformer` does (module docs): batch size and sequence length
/// log-uniform in `ranges`, the depth `log_int(1, 4)` from `key.fold_in(2)` (the library's
/// `log_int(1, 8)` given at most 3 layers).
///
/// Errors: [`Error::InvalidArgument`] for a range that is not `1 <= lo < hi`.
pub fn sample_lm_transformer(
    key: Key,
    ranges: &LmFamilyRanges,
) -> Result<LmTransformerFamilySample> {
    ranges.check()?;
    let (batch_size, sequence_length) = ranges.draw(key);
    Ok(LmTransformerFamilySample {
        num_layers: log_int(key.fold_in(2), 1, 4),
        batch_size,
        sequence_length,
    })
}

impl LmTransformerFamilySample {
    /// The family of this draw on `datasets(batch_size, sequence_length)`, with head
    /// counts and per-head widths drawn per instance (the library's ranges are both
    /// `(8, 128)`).
    ///
    /// Errors: those of `datasets` and of [`ParametricLmTransformer::new`]; a depth outside
    /// 1..=3 or a zero batch size or length gives [`Error::InvalidArgument`].
    pub fn build(
        &self,
        datasets: impl FnOnce(usize, usize) -> Result<Datasets<LmBatch>>,
        heads_range: (usize, usize),
        per_head_range: (usize, usize),
    ) -> Result<LmTransformerFamily> {
        check_draw(self.batch_size, self.sequence_length)?;
        if !(1..=3).contains(&self.num_layers) {
            return Err(Error::InvalidArgument(format!(
                "ParametricLmTransformer depth {}: lopt provides 1 to 3 layers",
                self.num_layers
            )));
        }
        let ds = datasets(self.batch_size, self.sequence_length)?;
        Ok(match self.num_layers {
            1 => LmTransformerFamily::L1(ParametricLmTransformer::new(
                ds,
                heads_range,
                per_head_range,
            )?),
            2 => LmTransformerFamily::L2(ParametricLmTransformer::new(
                ds,
                heads_range,
                per_head_range,
            )?),
            _ => LmTransformerFamily::L3(ParametricLmTransformer::new(
                ds,
                heads_range,
                per_head_range,
            )?),
        })
    }
}

/// A sampled batch size and length must be positive (a hand-made draw may not be).
fn check_draw(batch_size: usize, sequence_length: usize) -> Result<()> {
    if batch_size == 0 || sequence_length == 0 {
        return Err(Error::InvalidArgument(format!(
            "LM family draw with batch size {batch_size} and sequence length \
             {sequence_length}: both must be positive"
        )));
    }
    Ok(())
}
