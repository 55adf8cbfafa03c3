//! Datasets with four splits (the JAX library's `tasks.datasets.base`).
//!
//! STUB: the foundation work replaces this file.

use std::sync::Arc;

/// Four infinite streams of batches.
pub struct Datasets<B> {
    _b: Arc<B>,
}

impl<B> Clone for Datasets<B> {
    fn clone(&self) -> Self {
        Datasets { _b: self._b.clone() }
    }
}
