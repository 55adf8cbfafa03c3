//! # lopt
//!
//! Learned optimization and meta-learning in Rust. See the README for a tour.
#![warn(missing_docs)]

// The macros expand to `::lopt::...` paths; this lets tasks written in this crate use them.
extern crate self as lopt;

pub use lopt_macros::*;
pub use lopt_runtime::*;

pub mod eval_training;
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
    pub use lopt_runtime::ad;
    pub use lopt_runtime::params::{locate_leaf, write_field_leaf_name};
}
