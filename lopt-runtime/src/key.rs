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

// TEMPORARY (datasets branch): the key rewrite provides `fold_in` and `permutation` with
// counter-based semantics; these stand-ins only let the dataset code build until it lands.
impl Key {
    /// A new key derived from this one and `data` (stand-in until the key rewrite lands).
    pub fn fold_in(self, data: u32) -> Key {
        let mut z = (u64::from(self.k[1]) << 32 | u64::from(self.k[0]))
            ^ u64::from(data).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // splitmix64 finalizer: one well-mixed 64-bit output per (key, data).
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Key::new(z)
    }

    /// A uniformly random permutation of `0..n` (stand-in: Fisher-Yates with `StdRng`
    /// seeded from the key words).
    pub fn permutation(&self, n: usize) -> Vec<usize> {
        use rand::{Rng, SeedableRng};
        let seed = u64::from(self.k[1]) << 32 | u64::from(self.k[0]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            p.swap(i, rng.gen_range(0..=i));
        }
        p
    }
}
