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
        error: crate::datasets::idx::IdxError,
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
