//! The task library: ready-made tasks and task families (the JAX library's
//! `tasks.fixed` and `tasks.quadratics`), written with `#[task]` and `#[task_family]`.

pub mod image_mlp;
