//! Byte-level language-modelling datasets (the JAX library's `tasks/datasets/language.py`,
//! `lm1b_bytes_datasets`, on text found on this machine).
//!
//! # Batch layout
//!
//! As in the JAX library, each **document** is encoded as bytes, cut to `T + 1` tokens
//! (cropped when longer, padded with the pad id `0` when shorter) and split into
//! `obs = t[..T]` and `target = t[1..]`, so `target[b, i] == obs[b, i + 1]` within a
//! row. An [`LmBatch`] holds `[B, T]` matrices of `i32` ids; the tasks' loss mask is
//! `obs != 0` ([`LmBatch::mask`]): after a short document's last byte the target is the
//! pad id (the model learns where documents end), after that nothing counts.
//!
//! # Vocabulary
//!
//! [`ByteVocab::Seqio`] (the default) is seqio's `ByteVocabulary`, which the JAX library's
//! byte datasets use: ids `0` = pad, `1` = end of sequence, `2` = unknown, and byte `b` is
//! id `b + 3`, so `vocab_size` is **259** (its `encode` adds no end-of-sequence id, so `1`
//! and `2` never occur). [`ByteVocab::Raw`] is `vocab_size` 256 with byte `b` = id `b`
//! (the figures of the JAX library's byte-level benchmarks); documents may not hold the
//! byte 0 in either case, so id 0 is always padding and the mask is exact. The
//! vocabulary size is in [`ExtraInfo::other`] under `"vocab_size"` ([`lm_vocab_size`]).
//!
//! # Cutting
//!
//! [`SequenceCut::Crop`] (the default, the JAX library's `_crop_or_pad`) makes **one**
//! example per document from its first `T + 1` bytes. [`SequenceCut::Chunks`] uses the
//! whole document: windows of `T + 1` tokens starting every `T` tokens (windows overlap
//! by one token, so every byte is an observation exactly once and every transition a
//! target exactly once), the last one padded.
//!
//! # Splits
//!
//! Documents are shuffled with the corpus key and split **by document**: the first 80%
//! are `train`, the next 5% `inner_valid`, 5% `outer_valid`, the last 10% `test`
//! (boundaries rounded to the nearest document). The JAX library splits lm1b's training
//! set 98% / 1% / 1% and tests on lm1b's test set; the corpora here are small, so the
//! held-out splits are larger. Every split yields batches forever, each epoch a fresh
//! permutation of its examples drawn from the dataset key (the JAX library shuffles with
//! a buffer of `10 * batch_size` instead), the remainder of an epoch dropped.
//!
//! # Corpora
//!
//! * [`TextCorpus::fortunes`]: Debian's package `fortunes` (`apt-get install fortunes`:
//!   2.5 MB of English in `/usr/share/games/fortunes/`, 15,217 documents separated by
//!   lines holding `%`; 12,174 / 760 / 761 / 1,522 documents in the four splits, 4.76
//!   bits per byte of unigram entropy in `train`), looked up in `dir`, else `$LOPT_DATA_DIR/fortunes/` (or
//!   `$LOPT_DATA_DIR` itself), else [`DEFAULT_FORTUNES_DIR`].
//! * [`TextCorpus::from_dir`]: any directory of text files (see [`read_text_dir`]).
//! * [`TextCorpus::embedded`]: the Constitution of the United States (a public-domain
//!   work of the U.S. government, 132 documents: the preamble, each clause and each
//!   amendment section; 42 KB; 106 / 6 / 7 / 13 documents, 4.37 bits per byte), compiled
//!   into the crate as the fallback.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nalgebra::DMatrix;

use super::epochs::EpochOrder;
use super::image::DATA_DIR_ENV;
use super::prefetch::{prefetch, DEFAULT_PREFETCH};
use super::{try_cached_datasets, Datasets, ExtraInfo, Split};
use crate::error::{Error, Result};
use crate::key::Key;

/// Where Debian's package `fortunes` installs its text files.
pub const DEFAULT_FORTUNES_DIR: &str = "/usr/share/games/fortunes";

/// The embedded fallback text: the Constitution of the United States with its
/// amendments, as printed in the House Manual of the 114th Congress (U.S. Government
/// Publishing Office), one document per preamble, clause or amendment section, documents
/// separated by lines holding `%`. A work of the U.S. government: public domain.
pub const EMBEDDED_TEXT: &str = include_str!("../../data/us_constitution.txt");

/// The key [`ExtraInfo::other`] holds the vocabulary size under.
pub const VOCAB_SIZE_KEY: &str = "vocab_size";

/// The pad id: padding after a document's end, never a byte.
pub const PAD_ID: i32 = 0;

/// How bytes become token ids (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ByteVocab {
    /// seqio's `ByteVocabulary` (the JAX library's byte datasets): byte `b` is id
    /// `b + 3`; ids 0, 1, 2 are pad, end of sequence, unknown; 259 ids.
    #[default]
    Seqio,
    /// Byte `b` is id `b`; 256 ids (byte 0 never occurs in a corpus, so id 0 is pad).
    Raw,
}

impl ByteVocab {
    /// The number of ids: 259 or 256.
    pub fn vocab_size(self) -> usize {
        match self {
            ByteVocab::Seqio => 259,
            ByteVocab::Raw => 256,
        }
    }

    /// The id of byte `b`.
    pub fn encode(self, b: u8) -> i32 {
        match self {
            ByteVocab::Seqio => i32::from(b) + 3,
            ByteVocab::Raw => i32::from(b),
        }
    }

    /// The byte of id `id`, or `None` for pad, the special ids and ids out of range.
    pub fn decode(self, id: i32) -> Option<u8> {
        let b = match self {
            ByteVocab::Seqio => id - 3,
            ByteVocab::Raw => id,
        };
        u8::try_from(b)
            .ok()
            .filter(|&b| b != 0 || self == ByteVocab::Seqio)
    }
}

/// How documents are cut into sequences of `T + 1` tokens (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SequenceCut {
    /// One example per document: its first `T + 1` tokens, padded (the JAX library).
    #[default]
    Crop,
    /// Every window of `T + 1` tokens starting at multiples of `T`, the last padded.
    Chunks,
}

/// One batch of a language-modelling dataset: `[B, T]` token ids.
///
/// `obs[(b, i)]` is token `i` of example `b`; `target[(b, i)]` is token `i + 1` (so
/// `target[(b, i)] == obs[(b, i + 1)]` for `i + 1 < T`). Pad id is [`PAD_ID`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmBatch {
    /// Input tokens, `[batch, seq_len]`.
    pub obs: DMatrix<i32>,
    /// Next tokens to predict, `[batch, seq_len]`.
    pub target: DMatrix<i32>,
}

impl LmBatch {
    /// Number of sequences `B`.
    pub fn batch_size(&self) -> usize {
        self.obs.nrows()
    }

    /// Sequence length `T`.
    pub fn seq_len(&self) -> usize {
        self.obs.ncols()
    }

    /// The loss mask the JAX library's LM tasks use: `1.0` where `obs != 0`, else `0.0`.
    pub fn mask(&self) -> DMatrix<f32> {
        self.obs.map(|t| if t != PAD_ID { 1.0 } else { 0.0 })
    }

    /// Number of positions the loss counts (`sum(mask)`).
    pub fn num_tokens(&self) -> usize {
        self.obs.iter().filter(|&&t| t != PAD_ID).count()
    }
}

/// Which text a language-modelling constructor used.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TextSource {
    /// Debian's `fortunes` files.
    Fortunes(PathBuf),
    /// A directory of text files given by the user.
    Directory(PathBuf),
    /// The embedded Constitution of the United States.
    Embedded,
    /// Documents passed in memory.
    Memory,
}

impl fmt::Display for TextSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextSource::Fortunes(p) => write!(f, "fortunes ({})", p.display()),
            TextSource::Directory(p) => write!(f, "text directory {}", p.display()),
            TextSource::Embedded => f.write_str("U.S. Constitution (embedded)"),
            TextSource::Memory => f.write_str("in-memory documents"),
        }
    }
}

/// Documents split into the four splits, by document.
#[derive(Debug, Clone, PartialEq)]
pub struct TextCorpus {
    source: TextSource,
    documents: Vec<Vec<u8>>,
    /// Document indices of each split, in shuffled order.
    splits: [Vec<usize>; 4],
}

/// Where train, inner_valid and outer_valid end, in percent of the documents (test is
/// the rest): 80% / 5% / 5% / 10%.
pub const SPLIT_END_PERCENT: [usize; 3] = [80, 85, 90];

/// The index where `percent`% of `n` documents ends (nearest document).
fn percent(n: usize, percent: usize) -> usize {
    (n * percent + 50) / 100
}

/// The seed of the named corpora's document split.
const TEXT_SEED: u64 = 0x7e47_0001;

const FORTUNES_HELP: &str = "Get it with `apt-get install fortunes` (Debian/Ubuntu; installs the \
     text in /usr/share/games/fortunes/), or pass a directory of text files as `dir`, or put \
     them in $LOPT_DATA_DIR/fortunes/.";

impl TextCorpus {
    /// A corpus of `documents`, shuffled with `key` and split 80% / 5% / 5% / 10% by
    /// document.
    ///
    /// Split `d` (in shuffled order) is the documents from [`SPLIT_END_PERCENT`] of the
    /// previous split to its own, each boundary rounded to the nearest document.
    ///
    /// Errors: [`Error::InvalidArgument`] if a split would be empty (fewer than 20
    /// non-empty documents can leave `inner_valid` or `outer_valid` without one) or a
    /// document holds the byte 0 (it would read as padding).
    pub fn from_documents(
        source: TextSource,
        documents: Vec<Vec<u8>>,
        key: Key,
    ) -> Result<TextCorpus> {
        let documents: Vec<Vec<u8>> = documents.into_iter().filter(|d| !d.is_empty()).collect();
        if let Some(i) = documents.iter().position(|d| d.contains(&0)) {
            return Err(Error::InvalidArgument(format!(
                "document {i} of {source} holds the byte 0, which would read as padding"
            )));
        }
        let n = documents.len();
        let order = key.permutation(n);
        let a = percent(n, SPLIT_END_PERCENT[0]);
        let b = percent(n, SPLIT_END_PERCENT[1]);
        let c = percent(n, SPLIT_END_PERCENT[2]);
        let ranges = [0..a, a..b, b..c, c..n];
        if let Some((split, _)) = Split::ALL
            .into_iter()
            .zip(&ranges)
            .find(|(_, r)| r.is_empty())
        {
            return Err(Error::InvalidArgument(format!(
                "{n} documents in {source} leave split `{split}` empty"
            )));
        }
        let splits = ranges.map(|r: Range<usize>| order[r].to_vec());
        Ok(TextCorpus {
            source,
            documents,
            splits,
        })
    }

    /// The text files of `dir` as a corpus (see [`read_text_dir`]), split with `key`.
    ///
    /// Errors: as [`read_text_dir`] and [`TextCorpus::from_documents`].
    pub fn from_dir(dir: &Path, key: Key) -> Result<TextCorpus> {
        let docs = read_text_dir(dir)?;
        TextCorpus::from_documents(TextSource::Directory(dir.to_path_buf()), docs, key)
    }

    /// Debian's `fortunes` corpus from `dir`, else `$LOPT_DATA_DIR/fortunes/` (or
    /// `$LOPT_DATA_DIR` itself when it has no `fortunes/`), else
    /// [`DEFAULT_FORTUNES_DIR`]; split with a fixed key.
    ///
    /// Errors: [`Error::DatasetMissing`] with install instructions when the directory is
    /// absent or holds no text files; as [`read_text_dir`] otherwise.
    pub fn fortunes(dir: Option<&Path>) -> Result<TextCorpus> {
        let dir = resolve_fortunes_dir(dir);
        if !dir.is_dir() {
            return Err(missing(&dir));
        }
        let docs = match read_text_dir(&dir) {
            Err(Error::InvalidArgument(_)) => return Err(missing(&dir)),
            other => other?,
        };
        TextCorpus::from_documents(TextSource::Fortunes(dir), docs, Key::new(TEXT_SEED))
    }

    /// The embedded Constitution of the United States ([`EMBEDDED_TEXT`]), split with a
    /// fixed key.
    pub fn embedded() -> TextCorpus {
        let docs = split_documents(EMBEDDED_TEXT.as_bytes());
        match TextCorpus::from_documents(TextSource::Embedded, docs, Key::new(TEXT_SEED)) {
            Ok(c) => c,
            // 132 documents of ASCII text: checked by the tests.
            Err(e) => unreachable!("the embedded text is a valid corpus: {e}"),
        }
    }

    /// [`TextCorpus::fortunes`] if found, else [`TextCorpus::embedded`].
    ///
    /// Only an *absent* corpus falls back ([`Error::DatasetMissing`]); files that exist
    /// but cannot be read are reported. Which corpus was used is [`TextCorpus::source`].
    pub fn fortunes_or_embedded(dir: Option<&Path>) -> Result<TextCorpus> {
        match TextCorpus::fortunes(dir) {
            Ok(c) => Ok(c),
            Err(Error::DatasetMissing { .. }) => Ok(TextCorpus::embedded()),
            Err(e) => Err(e),
        }
    }

    /// Where the documents came from.
    pub fn source(&self) -> &TextSource {
        &self.source
    }

    /// Number of documents in all splits.
    pub fn num_documents(&self) -> usize {
        self.documents.len()
    }

    /// Every document, in reading order (before the split's shuffle).
    pub fn all_documents(&self) -> &[Vec<u8>] {
        &self.documents
    }

    /// Indices (into [`TextCorpus::all_documents`]) of the documents of `split`.
    pub fn document_indices(&self, split: Split) -> &[usize] {
        &self.splits[split as usize]
    }

    /// The documents of `split`.
    pub fn documents(&self, split: Split) -> impl Iterator<Item = &[u8]> + '_ {
        self.splits[split as usize]
            .iter()
            .map(|&i| self.documents[i].as_slice())
    }

    /// Total bytes of the documents of `split`.
    pub fn num_bytes(&self, split: Split) -> usize {
        self.documents(split).map(<[u8]>::len).sum()
    }

    /// The examples of `split`: `n` rows of `seq_len + 1` ids, row after row.
    fn examples(
        &self,
        split: Split,
        seq_len: usize,
        vocab: ByteVocab,
        cut: SequenceCut,
    ) -> Vec<i32> {
        let mut out = Vec::new();
        if seq_len == 0 {
            return out; // no window fits; `lm_datasets` refuses this length
        }
        for doc in self.documents(split) {
            let mut start = 0;
            while start < doc.len() {
                let end = (start + seq_len + 1).min(doc.len());
                out.extend(doc[start..end].iter().map(|&b| vocab.encode(b)));
                out.resize(out.len() + (start + seq_len + 1 - end), PAD_ID);
                start += seq_len;
                if cut == SequenceCut::Crop {
                    break;
                }
            }
        }
        out
    }
}

fn missing(dir: &Path) -> Error {
    Error::DatasetMissing {
        dataset: "fortunes".into(),
        path: dir.join("fortunes").display().to_string(),
        help: FORTUNES_HELP.into(),
    }
}

/// `dir`, else `$LOPT_DATA_DIR`, each as its `fortunes/` subdirectory when it has one,
/// else itself; else [`DEFAULT_FORTUNES_DIR`] (the convention of the image datasets).
fn resolve_fortunes_dir(dir: Option<&Path>) -> PathBuf {
    let base = match (dir, std::env::var_os(DATA_DIR_ENV)) {
        (Some(d), _) => d.to_path_buf(),
        (None, Some(e)) => PathBuf::from(e),
        (None, None) => return PathBuf::from(DEFAULT_FORTUNES_DIR),
    };
    let nested = base.join("fortunes");
    if nested.is_dir() {
        nested
    } else {
        base
    }
}

/// Splits a text into documents: at lines holding only `%` (the `fortune` format) when
/// there are any, else the whole text is one document. Each document is trimmed of
/// surrounding whitespace; empty ones are dropped.
pub fn split_documents(text: &[u8]) -> Vec<Vec<u8>> {
    let is_sep = |line: &[u8]| matches!(line, b"%" | b"%\r");
    let mut docs = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    for line in text.split_inclusive(|&b| b == b'\n') {
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        if is_sep(bare) {
            docs.push(std::mem::take(&mut current));
        } else {
            current.extend_from_slice(line);
        }
    }
    docs.push(current);
    docs.into_iter()
        .map(|d| d.trim_ascii().to_vec())
        .filter(|d| !d.is_empty())
        .collect()
}

/// Reads every text file directly in `dir` (not subdirectories), in file-name order, and
/// splits each with [`split_documents`]: a file is one document, or several separated by
/// `%` lines.
///
/// Skipped: hidden files, symbolic links (the `fortunes` package links `*.u8` to the
/// files themselves), `*.dat` files and any file holding a byte 0 (binary, e.g. the
/// `strfile` indexes).
///
/// Errors: [`Error::Io`] if `dir` or a file cannot be read; [`Error::InvalidArgument`] if
/// no document was found.
pub fn read_text_dir(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let io = |path: &Path, e: std::io::Error| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !meta.is_file() || name.starts_with('.') || name.ends_with(".dat") {
            continue;
        }
        files.push(path);
    }
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
        if bytes.contains(&0) {
            continue;
        }
        docs.extend(split_documents(&bytes));
    }
    if docs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no text documents in {}",
            dir.display()
        )));
    }
    Ok(docs)
}

/// The entropy in bits per byte of the byte distribution of `corpus`'s train split
/// (`-sum p log2 p` over the byte frequencies): the loss of the best model that ignores
/// context, which a language model that learns anything beats.
pub fn unigram_entropy_bits(corpus: &TextCorpus) -> f64 {
    let mut counts = [0u64; 256];
    for doc in corpus.documents(Split::Train) {
        for &b in doc {
            counts[usize::from(b)] += 1;
        }
    }
    entropy_bits(&counts)
}

/// The entropy in bits of the distribution of the **targets the loss counts** (those at
/// `obs != 0`, the pad id included as a symbol) over the examples of `split` as
/// [`lm_datasets`] cuts them: the loss, in bits per token, of the best model that ignores
/// its input, for exactly the tokens a task's masked loss averages over. With
/// [`SequenceCut::Crop`] the examples see only the start of each document, whose byte
/// distribution differs from the whole text's ([`unigram_entropy_bits`]).
pub fn target_unigram_entropy_bits(
    corpus: &TextCorpus,
    split: Split,
    seq_len: usize,
    options: LmOptions,
) -> f64 {
    let mut counts = [0u64; 259];
    let width = seq_len + 1;
    let ids = corpus.examples(split, seq_len, options.vocab, options.cut);
    for row in ids.chunks_exact(width) {
        for w in row.windows(2).filter(|w| w[0] != PAD_ID) {
            counts[w[1] as usize] += 1;
        }
    }
    entropy_bits(&counts)
}

/// `-sum p log2 p` of the frequencies `counts` (0 when all are 0).
fn entropy_bits(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let n = total as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Options of [`lm_datasets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LmOptions {
    /// How bytes become ids (default: seqio's 259-id vocabulary).
    pub vocab: ByteVocab,
    /// How documents become sequences (default: the JAX library's crop).
    pub cut: SequenceCut,
}

/// Examples of one split, `rows` of `width = T + 1` ids.
struct Examples {
    ids: Vec<i32>,
    width: usize,
}

impl Examples {
    fn len(&self) -> usize {
        self.ids.len() / self.width
    }
}

/// An infinite stream of batches over `examples`, reshuffled every epoch (as the image
/// datasets' stream).
struct EpochLm {
    examples: Arc<Examples>,
    order: EpochOrder,
}

impl EpochLm {
    fn new(examples: Arc<Examples>, batch_size: usize, key: Key) -> Self {
        let order = EpochOrder::new(examples.len(), batch_size, key);
        EpochLm { examples, order }
    }
}

/// The batch of the examples `rows`: `obs` the first `T` ids of each, `target` the last.
fn lm_batch(ex: &Examples, rows: &[usize]) -> LmBatch {
    let (b, w) = (rows.len(), ex.width);
    let t = w - 1;
    let ids = &ex.ids;
    let obs = DMatrix::from_fn(b, t, |r, i| ids[rows[r] * w + i]);
    let target = DMatrix::from_fn(b, t, |r, i| ids[rows[r] * w + i + 1]);
    LmBatch { obs, target }
}

impl Iterator for EpochLm {
    type Item = LmBatch;

    fn next(&mut self) -> Option<LmBatch> {
        let rows = self.order.next_rows()?;
        Some(lm_batch(&self.examples, rows))
    }

    /// Skips `n` batches without building them (a resumed run catching up), then returns
    /// the next: the same batch as `n + 1` calls of `next`.
    fn nth(&mut self, n: usize) -> Option<LmBatch> {
        let rows = self.order.nth_rows(n)?;
        Some(lm_batch(&self.examples, rows))
    }
}

/// Language-modelling datasets of `corpus` (uncached; the named constructors below cache
/// theirs): `[batch_size, seq_len]` batches in the layout of the [module docs](self),
/// each split shuffled every epoch with a key derived from `key` and prefetched on a
/// background thread. [`ExtraInfo::other`] holds `vocab_size`, `sequence_length` and
/// `corpus`.
///
/// Errors: [`Error::InvalidArgument`] if `seq_len` is 0, or `batch_size` is 0 or larger
/// than a split's number of examples (no full batch could ever be made).
pub fn lm_datasets(
    corpus: &TextCorpus,
    batch_size: usize,
    seq_len: usize,
    options: LmOptions,
    key: Key,
) -> Result<Datasets<LmBatch>> {
    if seq_len == 0 {
        return Err(Error::InvalidArgument("sequence length 0".into()));
    }
    let mut streams = Vec::with_capacity(4);
    for split in Split::ALL {
        let examples = Examples {
            ids: corpus.examples(split, seq_len, options.vocab, options.cut),
            width: seq_len + 1,
        };
        if batch_size == 0 || batch_size > examples.len() {
            return Err(Error::InvalidArgument(format!(
                "batch size {batch_size} does not fit split `{split}` of {} examples \
                 ({} documents of {}, cut {:?} at length {seq_len})",
                examples.len(),
                corpus.document_indices(split).len(),
                corpus.source(),
                options.cut,
            )));
        }
        let batches = EpochLm::new(Arc::new(examples), batch_size, key.fold_in(split as u64));
        streams.push(prefetch(batches, DEFAULT_PREFETCH));
    }
    let mut info = ExtraInfo::default();
    info.other.insert(
        VOCAB_SIZE_KEY.into(),
        options.vocab.vocab_size().to_string(),
    );
    info.other
        .insert("sequence_length".into(), seq_len.to_string());
    info.other
        .insert("corpus".into(), corpus.source().to_string());
    let mut it = streams.into_iter();
    let mut next = || {
        it.next()
            .ok_or_else(|| Error::Data("missing stream".into()))
    };
    Ok(Datasets::new(next()?, next()?, next()?, next()?).with_extra_info(info))
}

/// The vocabulary size an LM dataset records in its extra info, if any.
pub fn lm_vocab_size(info: &ExtraInfo) -> Option<usize> {
    info.other.get(VOCAB_SIZE_KEY)?.parse().ok()
}

/// Byte-level LM datasets of Debian's `fortunes` corpus (see [`TextCorpus::fortunes`] for
/// the lookup), with the JAX library's layout and vocabulary ([`LmOptions::default`]).
/// Cached by its arguments (the resolved directory included), so tasks built alike share
/// streams; shuffled with a fixed key.
///
/// Errors: as [`TextCorpus::fortunes`] and [`lm_datasets`].
pub fn fortunes_lm_datasets(
    batch_size: usize,
    seq_len: usize,
    dir: Option<&Path>,
) -> Result<Datasets<LmBatch>> {
    let resolved = resolve_fortunes_dir(dir);
    try_cached_datasets(("fortunes_lm", batch_size, seq_len, resolved), || {
        lm_datasets(
            &TextCorpus::fortunes(dir)?,
            batch_size,
            seq_len,
            LmOptions::default(),
            Key::new(TEXT_SEED),
        )
    })
}

/// Byte-level LM datasets of the embedded Constitution, cut into every window
/// ([`SequenceCut::Chunks`]: cropping its 132 documents would leave too few examples),
/// seqio vocabulary; cached by its arguments.
///
/// Errors: as [`lm_datasets`] (at `seq_len` 32 the splits hold 1,010 / 68 / 144 / 148
/// windows, so `batch_size` must not exceed 68).
pub fn embedded_lm_datasets(batch_size: usize, seq_len: usize) -> Result<Datasets<LmBatch>> {
    try_cached_datasets(("embedded_lm", batch_size, seq_len), || {
        let options = LmOptions {
            cut: SequenceCut::Chunks,
            ..LmOptions::default()
        };
        lm_datasets(
            &TextCorpus::embedded(),
            batch_size,
            seq_len,
            options,
            Key::new(TEXT_SEED),
        )
    })
}

/// [`fortunes_lm_datasets`] if the corpus is found, else [`embedded_lm_datasets`], and
/// which text was used.
///
/// Only an *absent* corpus falls back ([`Error::DatasetMissing`]); files that exist but
/// cannot be read are reported, not silently replaced.
pub fn lm_datasets_or_embedded(
    batch_size: usize,
    seq_len: usize,
    dir: Option<&Path>,
) -> Result<(Datasets<LmBatch>, TextSource)> {
    match fortunes_lm_datasets(batch_size, seq_len, dir) {
        Ok(ds) => Ok((ds, TextSource::Fortunes(resolve_fortunes_dir(dir)))),
        Err(Error::DatasetMissing { .. }) => Ok((
            embedded_lm_datasets(batch_size, seq_len)?,
            TextSource::Embedded,
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(docs: &[&str]) -> TextCorpus {
        TextCorpus::from_documents(
            TextSource::Memory,
            docs.iter().map(|d| d.as_bytes().to_vec()).collect(),
            Key::new(3),
        )
        .unwrap()
    }

    /// `nth(k)` is `k + 1` calls of `next`, within an epoch and across many (a mutation
    /// that skips whole epochs without advancing the epoch counter fails).
    #[test]
    fn nth_skips_exactly_as_next_would() {
        let ex = Arc::new(Examples {
            ids: (0..23 * 3).collect(),
            width: 3,
        });
        for start in [0, 1, 3] {
            for k in [0, 1, 4, 5, 6, 11, 17, 40] {
                let mut a = EpochLm::new(ex.clone(), 4, Key::new(9));
                let mut b = EpochLm::new(ex.clone(), 4, Key::new(9));
                for _ in 0..start {
                    a.next();
                    b.next();
                }
                for _ in 0..k {
                    a.next();
                }
                assert_eq!(a.next(), b.nth(k), "start {start}, k {k}");
                assert_eq!(a.next(), b.next());
            }
        }
    }

    #[test]
    fn chunks_cover_every_byte_once_as_obs() {
        let mut docs = vec!["xyz"; 19];
        docs.push("abcdefghij");
        let c = corpus(&docs);
        let i = c.documents.iter().position(|d| d == b"abcdefghij").unwrap();
        let split = Split::ALL
            .into_iter()
            .find(|&s| c.document_indices(s).contains(&i))
            .unwrap();
        let ex = c.examples(split, 4, ByteVocab::Raw, SequenceCut::Chunks);
        let rows: Vec<&[i32]> = ex.chunks(5).collect();
        let mut found = Vec::new();
        for r in rows {
            if r[0] == i32::from(b'a') || r[0] == i32::from(b'e') || r[0] == i32::from(b'i') {
                found.push(r.to_vec());
            }
        }
        let s = |t: &str| t.bytes().map(i32::from).collect::<Vec<_>>();
        let mut last = s("ij");
        last.extend([0, 0, 0]);
        assert_eq!(found, vec![s("abcde"), s("efghi"), last]);
    }
}
