//! The one error type of the runtime.

use std::fmt;

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in lopt's runtime, as data a caller can match on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// Two shapes that must agree do not.
    ShapeMismatch {
        /// What was being checked.
        what: String,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
    },
    /// A checkpoint's leaf names differ from those of the params it is loaded into.
    LeafNameMismatch {
        /// The leaf index.
        index: usize,
        /// The name of the leaf in the params.
        expected: String,
        /// The name found in the checkpoint.
        got: String,
    },
    /// A dataset split name other than `train`, `inner_valid`, `outer_valid`, `test`.
    UnknownSplit(String),
    /// A task or family has no datasets but one was asked for.
    NoDatasets(String),
    /// A stream ended although datasets are infinite by contract.
    DataExhausted(String),
    /// A data file is malformed.
    Data(String),
    /// A malformed IDX (MNIST-format) file.
    Idx {
        /// The file.
        path: String,
        /// What is wrong with it.
        error: IdxError,
    },
    /// A dataset's files are not where they were looked for.
    DatasetMissing {
        /// The dataset's name.
        dataset: String,
        /// The file that was looked for and not found.
        path: String,
        /// How to get the files.
        help: String,
    },
    /// An I/O failure, with the path involved.
    Io {
        /// The file or directory.
        path: String,
        /// The operating system's message.
        message: String,
    },
    /// A loss or update produced NaN or infinity.
    NonFinite {
        /// Where it was found.
        what: String,
        /// The step at which it was found.
        step: usize,
    },
    /// An argument outside its valid range.
    InvalidArgument(String),
    /// A checkpoint file that cannot be used: malformed, truncated, of another format
    /// version, or holding values a run cannot have had.
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A learned optimizer's θ file (flax msgpack, as the JAX library saves θ) that cannot
    /// be used: not msgpack, truncated, or not holding the θ the optimizer's configuration
    /// needs (a missing entry, a wrong shape).
    ThetaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        error: FlaxMsgpackError,
    },
    /// A checkpoint written by another setup than the one resuming it.
    CheckpointMismatch {
        /// What differs (`learned optimizer`, `family`, `estimator 0`, ...).
        what: String,
        /// What the checkpoint holds.
        saved: String,
        /// What the resuming run has.
        current: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch {
                what,
                expected,
                got,
            } => {
                write!(
                    f,
                    "shape mismatch in {what}: expected {expected:?}, got {got:?}"
                )
            }
            Error::LeafNameMismatch {
                index,
                expected,
                got,
            } => {
                write!(f, "leaf {index} is named `{got}`, expected `{expected}`")
            }
            Error::UnknownSplit(s) => write!(
                f,
                "unknown split `{s}`: expected one of train, inner_valid, outer_valid, test"
            ),
            Error::NoDatasets(s) => write!(f, "{s} has no datasets"),
            Error::DataExhausted(s) => write!(f, "data stream `{s}` ended"),
            Error::Data(s) => write!(f, "malformed data: {s}"),
            Error::Idx { path, error } => write!(f, "{path}: {error}"),
            Error::DatasetMissing {
                dataset,
                path,
                help,
            } => {
                write!(f, "{dataset} not found: no file {path}. {help}")
            }
            Error::Io { path, message } => write!(f, "{path}: {message}"),
            Error::NonFinite { what, step } => {
                write!(f, "non-finite value in {what} at step {step}")
            }
            Error::InvalidArgument(s) => write!(f, "invalid argument: {s}"),
            Error::Checkpoint { path, message } => write!(f, "checkpoint {path}: {message}"),
            Error::ThetaFile { path, error } => write!(f, "θ file {path}: {error}"),
            Error::CheckpointMismatch {
                what,
                saved,
                current,
            } => write!(
                f,
                "the checkpoint was written for another {what}: it holds `{saved}`, this run has `{current}`"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// What is wrong with an IDX file (read by [`crate::datasets::idx`]; defined beside
/// [`Error`], which holds it, so that the reader and the error type do not import each
/// other).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdxError {
    /// The first two bytes are not zero: not an IDX file.
    BadMagic {
        /// The first two bytes found.
        found: [u8; 2],
    },
    /// The element type is not the one required (unsigned bytes, `0x08`).
    WrongDtype {
        /// The type code required.
        expected: u8,
        /// The type code found.
        found: u8,
    },
    /// The number of dimensions is not the one required.
    WrongRank {
        /// The rank required.
        expected: u8,
        /// The rank found.
        found: u8,
    },
    /// The product of the header's dimensions does not fit in memory sizes.
    DimsOverflow {
        /// The dimensions in the header.
        dims: Vec<u32>,
    },
    /// The file ends before the header or the data it announces.
    Truncated {
        /// Bytes required (header plus data, after decompression).
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The file is longer than its header says: the dimensions disagree with the size.
    SizeMismatch {
        /// Bytes the header accounts for.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// An image dimension (rows or columns) is zero.
    ZeroDimension {
        /// The dimensions in the header.
        dims: Vec<u32>,
    },
    /// An images file and a labels file hold different numbers of examples.
    CountMismatch {
        /// Images in the images file.
        images: usize,
        /// Labels in the labels file.
        labels: usize,
    },
    /// A label is not a valid class index.
    LabelOutOfRange {
        /// The example's position.
        index: usize,
        /// The label found.
        label: u8,
        /// The number of classes.
        num_classes: usize,
    },
    /// The data starts with the gzip magic bytes but does not decompress.
    Gzip(String),
}

impl fmt::Display for IdxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdxError::BadMagic { found } => write!(
                f,
                "not an IDX file: first bytes are {:02x} {:02x}, expected 00 00",
                found[0], found[1]
            ),
            IdxError::WrongDtype { expected, found } => {
                write!(
                    f,
                    "element type 0x{found:02x}, expected 0x{expected:02x} (unsigned byte)"
                )
            }
            IdxError::WrongRank { expected, found } => {
                write!(f, "{found} dimensions, expected {expected}")
            }
            IdxError::DimsOverflow { dims } => write!(f, "dimensions {dims:?} overflow"),
            IdxError::Truncated { expected, found } => {
                write!(f, "truncated: {found} bytes, expected {expected}")
            }
            IdxError::SizeMismatch { expected, found } => write!(
                f,
                "{found} bytes but the header's dimensions account for {expected}"
            ),
            IdxError::ZeroDimension { dims } => write!(f, "zero-sized images {dims:?}"),
            IdxError::CountMismatch { images, labels } => {
                write!(f, "{images} images but {labels} labels")
            }
            IdxError::LabelOutOfRange {
                index,
                label,
                num_classes,
            } => write!(
                f,
                "label {label} of example {index} is not below the number of classes {num_classes}"
            ),
            IdxError::Gzip(msg) => write!(f, "gzip data does not decompress: {msg}"),
        }
    }
}

/// What is wrong with a flax msgpack file or with the tree read from it (read by
/// [`crate::learned_optimizers::flax_msgpack`]; defined beside [`Error`], which holds it,
/// so that the reader and the error type do not import each other).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum FlaxMsgpackError {
    /// The bytes end inside a value (a truncated file) or are not msgpack.
    Malformed(String),
    /// Bytes remain after the top-level value.
    TrailingBytes(usize),
    /// A msgpack extension type flax does not use, or one lopt does not read (complex).
    UnsupportedExt(i8),
    /// An array dtype lopt does not read.
    UnsupportedDtype(String),
    /// An array whose payload is malformed (wrong triple, or bytes not matching the shape).
    BadArray(String),
    /// A map key that is not a string, or another value flax state dicts do not hold.
    Unexpected(String),
    /// A name θ needs is missing from the tree.
    Missing(String),
    /// A leaf of θ has another shape than the optimizer's configuration implies.
    Shape {
        /// The leaf's path.
        path: String,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
    },
}

impl fmt::Display for FlaxMsgpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlaxMsgpackError::Malformed(s) => write!(f, "not flax msgpack or truncated: {s}"),
            FlaxMsgpackError::TrailingBytes(n) => write!(f, "{n} bytes after the top value"),
            FlaxMsgpackError::UnsupportedExt(c) => write!(f, "unsupported msgpack ext type {c}"),
            FlaxMsgpackError::UnsupportedDtype(d) => write!(f, "unsupported array dtype {d}"),
            FlaxMsgpackError::BadArray(s) => write!(f, "malformed array: {s}"),
            FlaxMsgpackError::Unexpected(s) => write!(f, "unexpected value: {s}"),
            FlaxMsgpackError::Missing(p) => write!(f, "no entry `{p}`"),
            FlaxMsgpackError::Shape {
                path,
                expected,
                got,
            } => write!(f, "`{path}` has shape {got:?}, expected {expected:?}"),
        }
    }
}

impl std::error::Error for FlaxMsgpackError {}

impl From<FlaxMsgpackError> for Error {
    fn from(e: FlaxMsgpackError) -> Error {
        Error::Data(format!("flax msgpack: {e}"))
    }
}
