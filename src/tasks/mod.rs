//! The task library: ready-made tasks and task families (the JAX library's
//! `learned_optimization.tasks`).
//!
//! Every task here is written the way a user writes one: a generic `loss` under
//! `#[task]` (or `#[task_family]`), so its gradient and JVP are generated at compile time
//! and families run batched across SIMD lanes.
//!
//! - [`quadratics`]: the quadratic tasks and families of `tasks/quadratics.py`.
//! - [`image_mlp`]: the MLP image classifiers of `tasks/fixed/image_mlp.py`, and a family
//!   of them with sampled hidden widths.
//! - [`conv`]: the conv nets of `tasks/fixed/conv.py` and the family
//!   `ParametricImageConv` of `tasks/parametric/image_conv.py`.
//! - [`image_mlp_ae`]: the MLP autoencoder of `tasks/fixed/image_mlp_ae.py`.
//! - [`rnn_lm`]: the teacher-forced RNN language models of `tasks/fixed/rnn_lm.py`.
//! - [`transformer_lm`]: the transformer language models of `tasks/fixed/transformer_lm.py`.
//! - [`lm_samplers`]: the family-level samplers `sample_lm_rnn` and `sample_lm_transformer`
//!   of `tasks/parametric/lm_rnn.py` and `lm_transformer.py`.

pub mod conv;
pub mod image_mlp;
pub mod image_mlp_ae;
pub mod lm_samplers;
pub mod quadratics;
pub mod rnn_lm;
pub mod transformer_lm;
