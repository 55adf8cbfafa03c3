//! # lopt
//!
//! Learned optimization and meta-learning in Rust. See the README for a tour.
//!
//! Meta-training a learned optimizer in a few lines: the learnable learning rate of SGD
//! on the tutorial's quadratic family, by truncated PES with tasks in SIMD lanes.
//!
//! ```
//! use lopt::learned_optimizers::LearnableSgd;
//! use lopt::outer_trainers::{
//!     ConstantTruncationSchedule, GradientLearner, LOptTruncatedStep,
//!     SingleMachineGradientLearner, TruncatedPes,
//! };
//! use lopt::prelude::*;
//! use lopt::tasks::quadratics::FixedDimQuadraticFamily;
//!
//! # fn main() -> lopt::Result<()> {
//! let family = FixedDimQuadraticFamily { dim: 10 };
//! let lopt = LearnableSgd { initial_lr: 1e-3 };
//! let sched = ConstantTruncationSchedule { total_length: 40 };
//! let step = LOptTruncatedStep::new(&family, &lopt, sched, 16)?;
//! let learner = SingleMachineGradientLearner {
//!     learner: GradientLearner { lopt: &lopt, theta_opt: Adam::new(0.05) },
//!     estimators: vec![TruncatedPes::new(step, 10, 0.01)?.batched::<Lanes<8>>()],
//! };
//! let mut state = learner.init(Key::new(0))?;
//! let log_lr_before = learner.learner.theta(&state.learner)[0];
//! for key in Key::new(1).split_n(30) {
//!     let meta_loss = learner.update(&mut state, key)?;
//!     assert!(meta_loss.is_finite());
//! }
//! // A learning rate of 1e-3 is far too small for these quadratics: it must grow.
//! assert!(learner.learner.theta(&state.learner)[0] > log_lr_before);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

// The macros expand to `::lopt::...` paths; this lets tasks written in this crate use them.
extern crate self as lopt;

pub use lopt_macros::*;
pub use lopt_runtime::*;

pub mod eval_training;
pub mod language;

/// What `main` returns for `result`: success, or the error's message (its `Display`, not
/// its `Debug` form) on standard error and a failure code. Examples end with it:
/// `fn main() -> ExitCode { lopt::exit_code(run()) }`.
pub fn exit_code(result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
pub mod tasks;

/// Everything a typical program needs: `use lopt::prelude::*;`.
pub mod prelude {
    pub use lopt_macros::{differentiable, task, task_family, Params};
    pub use lopt_runtime::key::KeyOps;
    pub use lopt_runtime::lanes::Lanes;
    pub use lopt_runtime::learned_optimizers::{LearnedOptimizer, MlpLOpt};
    pub use lopt_runtime::params::Rebind;
    pub use lopt_runtime::{
        single_task_to_family, Adam, Datasets, Error, FamilyTask, GradientClip, Key, Optimizer,
        Params, Real, Result, RmsProp, Sgd, Sgdm, Task, TaskFamily,
    };
    pub use nalgebra::{DMatrix, DVector, RowDVector, SMatrix, SVector};
}

#[doc(hidden)]
pub mod __private {
    pub use lopt_macros::__expand as expand;
    pub use lopt_runtime::__with_primitives as with_primitives;
    pub use lopt_runtime::ad;
    pub use lopt_runtime::params::{locate_leaf, write_field_leaf_name};
}

/// The README's Rust snippets, compiled and run as doc tests by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
