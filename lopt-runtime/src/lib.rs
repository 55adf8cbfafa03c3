//! Runtime of [lopt](https://docs.rs/lopt): everything that runs.
//!
//! Users normally depend on the `lopt` crate, which re-exports this one with the macros.
#![warn(missing_docs)]

pub mod ad;
pub mod datasets;
pub mod error;
pub mod key;
pub mod ops;
pub mod optimizer;
pub mod params;
pub mod scalar;
pub mod task;

pub use datasets::Datasets;
pub use error::{Error, Result};
pub use key::Key;
pub use optimizer::Optimizer;
pub use params::Params;
pub use scalar::Real;
pub use task::{single_task_to_family, SingleTaskFamily, Task, TaskFamily};
