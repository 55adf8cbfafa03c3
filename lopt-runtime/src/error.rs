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
    /// A dataset split name other than `train`, `inner_valid`, `outer_valid`, `test`.
    UnknownSplit(String),
    /// A task or family has no datasets but one was asked for.
    NoDatasets(String),
    /// A stream ended although datasets are infinite by contract.
    DataExhausted(String),
    /// A data file is malformed.
    Data(String),
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
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch { what, expected, got } => {
                write!(f, "shape mismatch in {what}: expected {expected:?}, got {got:?}")
            }
            Error::UnknownSplit(s) => write!(
                f,
                "unknown split `{s}`: expected one of train, inner_valid, outer_valid, test"
            ),
            Error::NoDatasets(s) => write!(f, "{s} has no datasets"),
            Error::DataExhausted(s) => write!(f, "data stream `{s}` ended"),
            Error::Data(s) => write!(f, "malformed data: {s}"),
            Error::Io { path, message } => write!(f, "{path}: {message}"),
            Error::NonFinite { what, step } => {
                write!(f, "non-finite value in {what} at step {step}")
            }
            Error::InvalidArgument(s) => write!(f, "invalid argument: {s}"),
        }
    }
}

impl std::error::Error for Error {}
