//! Runtime of [lopt](https://docs.rs/lopt): everything that runs.
//!
//! Users normally depend on the `lopt` crate, which re-exports this one with the macros.
#![warn(missing_docs)]

pub mod ad;
pub mod batch;
pub mod datasets;
pub mod error;
pub mod gradcheck;
pub mod kernels;
pub mod key;
pub mod lanes;
pub mod learned_optimizers;
pub mod ops;
pub mod optimizers;
pub mod outer_trainers;
pub mod params;
pub mod primitives;
pub mod scalar;
pub mod task;

pub use datasets::Datasets;
pub use error::{Error, Result};
pub use key::Key;
pub use optimizers::{Adam, GradientClip, Optimizer, RmsProp, Sgd, Sgdm};
pub use params::Params;
pub use scalar::Real;
pub use task::{single_task_to_family, FamilyTask, SingleTaskFamily, Task, TaskFamily};
