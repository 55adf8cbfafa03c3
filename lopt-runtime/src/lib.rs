//! Runtime of [lopt](https://docs.rs/lopt): everything that runs.
//!
//! Users normally depend on the `lopt` crate, which re-exports this one with the macros.
//!
//! # Rooms
//!
//! - [`primitives`]: every primitive of the loss language, declared once with its rules
//!   (`primitives/declared.rs`). **Add a primitive** there: an elementwise unary one is
//!   one entry (value and derivative), an elementwise binary one too (value, both
//!   partials, the operand shapes it takes); others name the rules they have in `ad/`.
//!   Declare your own outside lopt with [`elementwise_primitive!`]. The declarations also
//!   make the list the `#[task]` macros read (the macro crate holds none).
//! - [`ad`]: differentiation: the [`ad::Unary`] / [`ad::Binary`] rule traits the
//!   generated code calls, the rules of the non-elementwise primitives, their tests.
//! - [`kernels`]: what runs fast and is not differentiation: GEMM, the packet GEMM,
//!   vector math, and the one place CPU features are detected.
//! - [`ops`] (the file `primitives/functions.rs`): the primitives as plain functions, for
//!   hand-written code.
//! - [`scalar`], [`lanes`]: the [`Real`] trait; SIMD packets whose lanes are task
//!   instances.
//! - [`lane_groups`]: instances in SIMD lanes: grouping by structure, padding, packing,
//!   widths and the dispatch of groups to Rayon, for every batched runner.
//! - [`task`], [`vmap`]: tasks and task families (**add a task**: implement [`Task`] under
//!   `#[task]`); vmap over lanes.
//! - [`optimizers`] (**add an optimizer**: implement [`Optimizer`]),
//!   [`learned_optimizers`] (a learned optimizer), [`outer_trainers`] (**add a gradient
//!   estimator** here, beside PES and ES), [`params`], [`key`], [`datasets`], [`error`].
#![warn(missing_docs)]

pub mod ad;
pub mod data_parallel;
pub mod datasets;
pub mod error;
pub mod gradcheck;
pub mod kernels;
pub mod key;
pub mod lane_groups;
pub mod lanes;
pub mod learned_optimizers;
pub mod optimizers;
pub mod outer_trainers;
pub mod params;
pub mod prefab;
pub mod primitives;
pub mod scalar;
pub mod task;
pub mod vmap;

/// `f` run on a fresh Rayon pool of `n` threads: the tests that results do not depend on
/// the number of threads.
#[cfg(test)]
pub(crate) fn on_threads<T: Send>(n: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("a thread pool")
        .install(f)
}

/// The primitives as plain functions, for hand-written code (the file
/// `primitives/functions.rs`; `ops` is the short path users write: `lopt::ops::relu`).
pub use primitives::functions as ops;

pub use datasets::Datasets;
pub use error::{Error, Result};
pub use key::Key;
pub use optimizers::{Adam, GradientClip, Optimizer, RmsProp, Sgd, Sgdm};
pub use params::Params;
pub use scalar::Real;
pub use task::{single_task_to_family, FamilyTask, SingleTaskFamily, Task, TaskFamily};
