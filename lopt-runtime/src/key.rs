//! Explicit, splittable pseudo-random keys (the Rust form of `jax.random.PRNGKey`).
//!
//! STUB: the foundation work replaces this file with the counter-based implementation.

/// A pseudo-random key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Key {
    k: [u32; 2],
}

impl Key {
    /// A key from a seed.
    pub fn new(seed: u64) -> Key {
        Key { k: [seed as u32, (seed >> 32) as u32] }
    }
}
