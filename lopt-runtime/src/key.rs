//! Explicit, splittable pseudo-random keys (the Rust form of `jax.random.PRNGKey`).
//!
//! A [`Key`] is a value: every method consumes it (keys are `Copy`), and the same key
//! always yields the same numbers, on any thread, in any order, with any thread count.
//! As in JAX, a key is never advanced in place; to draw several independent things,
//! [`Key::split`] it or [`Key::fold_in`] an index.
//!
//! ```
//! use lopt_runtime::Key;
//!
//! let key = Key::new(0);
//! let (k_init, k_data) = key.split();
//! let w: Vec<f32> = k_init.normal_vec(640);
//! let batch_order = k_data.permutation(10);
//! assert_eq!(w, k_init.normal_vec::<f32>(640)); // same key, same numbers
//! assert_eq!(batch_order.len(), 10);
//! ```
//!
//! # Algorithm: Philox4x32-10
//!
//! Keys are counter-based (Salmon, Moraes, Dror, Shaw, *Parallel random numbers: as easy
//! as 1, 2, 3*, SC 2011). Philox4x32-10 is a keyed bijection of a 128-bit counter
//! `(c0, c1, c2, c3)` under a 64-bit key `(k0, k1)`. One round is
//!
//! ```text
//! (hi0, lo0) = 0xD2511F53 * c0      (32 x 32 -> 64-bit product)
//! (hi1, lo1) = 0xCD9E8D57 * c2
//! (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
//! ```
//!
//! and between rounds the key is bumped by the Weyl constants
//! `(k0, k1) += (0x9E3779B9, 0xBB67AE85)`; ten rounds make one output block of four
//! `u32`. This is the Random123 reference variant (`philox4x32_R(10, ...)`), checked
//! against its published known-answer vectors in the tests.
//!
//! A [`Key`] is exactly the Philox key `(k0, k1)`. The counter words are used as:
//!
//! | counter `(c0, c1, c2, c3)`     | use                                                |
//! |--------------------------------|----------------------------------------------------|
//! | `(lo(n), hi(n), 0, 0)`         | block `n` of the key's sample stream ([`Key::bits`]) |
//! | `(lo(i), hi(i), 1, 0)`         | child `i` of [`Key::split_n`] (words 0 and 1)     |
//! | `(lo(d), hi(d), 2, 0)`         | [`Key::fold_in`] of data `d` (words 0 and 1)      |
//!
//! So derived keys are Philox outputs of the parent at distinct counters, disjoint from
//! the counters the parent samples with. Child `i` of `split_n` does not depend on `n`
//! (`split()` returns children 0 and 1). [`Key::new`] uses the seed's low and high halves
//! as `(k0, k1)`. Bit-parity with JAX (which uses Threefry) is not a goal.
//!
//! # Sampling
//!
//! Every bulk fill walks the sample stream from block 0, eight blocks at a time (the
//! Box-Muller math of a group is vectorized); a fill of length `n` is a prefix of a fill
//! of any greater length, and the single-value draws ([`Key::uniform`], [`Key::normal`])
//! equal the first value of the matching fill. The precision follows the scalar:
//!
//! - **single precision** (`f32`, and packets with `f32` lanes): a uniform is the top 24
//!   bits of one word, `(w >> 8) * 2^-24` in `[0, 1)`, four per block. A normal pair is
//!   Box-Muller on two words `(w0, w1)`, computed in `f32` with polynomial `ln`, `sin`
//!   and `cos` (Cephes, about 1e-7 relative). The radius is `sqrt(-2 ln u)` with
//!   `u = ((w0 >> 8) + 1) * 2^-24` in `(0, 1]`, so `|z| <= 5.77`; the angle comes from the
//!   top 24 bits of `w1` (two bits pick the quadrant, 22 bits the angle within it). Four
//!   normals per block.
//! - **double precision** (`f64`): a uniform takes the top 53 bits of two words,
//!   `((w0 << 32 | w1) >> 11) * 2^-53`, two per block. A Box-Muller pair uses one block
//!   (53-bit radius and angle uniforms, `std` math), so `|z| <= 8.57`.
//!
//! Precision is detected from the scalar (whether it can hold `1 + 1e-9`). For SIMD
//! packets (`Real::LANES > 1`) every lane is an independent draw: element `i`, lane `j` is
//! value `i * LANES + j` of the scalar stream.
//!
//! On x86-64 CPUs with AVX2 the fills run an AVX2 build of the same code (detected at
//! run time). It performs the same IEEE operations (no fused multiply-add), so every
//! machine draws the same bits; a test checks it.
//!
//! The truncated normal ([`Key::fill_truncated_normal`]) is the JAX library's
//! `truncated_normal(-2, 2) * std` without variance correction: standard normals from
//! the stream above are kept when `|z| <= 2` (rejection, acceptance 95.4%), so the result
//! has standard deviation `0.8796 * std`.

use std::fmt;

use nalgebra::DMatrix;
use rand::RngCore;

use crate::params::Params;
use crate::scalar::Real;

/// Philox multipliers and Weyl key increments (Random123 `PHILOX_M4x32_*`, `PHILOX_W32_*`).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Counter word 2 separates the sample stream from key derivation.
const DOMAIN_SAMPLE: u32 = 0;
const DOMAIN_SPLIT: u32 = 1;
const DOMAIN_FOLD: u32 = 2;

/// Blocks computed side by side in bulk fills.
const CHUNK: usize = 8;

const TWO_POW_M22: f32 = 1.0 / (1u32 << 22) as f32;
const TWO_POW_M24: f32 = 1.0 / (1u32 << 24) as f32;
const TWO_POW_M53: f64 = 1.0 / (1u64 << 53) as f64;

/// An explicit pseudo-random key (a Philox4x32-10 key): see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Key {
    k: [u32; 2],
}

/// One Philox round.
#[inline(always)]
fn philox_round(c: [u32; 4], k0: u32, k1: u32) -> [u32; 4] {
    let p0 = M0 as u64 * c[0] as u64;
    let p1 = M1 as u64 * c[2] as u64;
    [
        (p1 >> 32) as u32 ^ c[1] ^ k0,
        p1 as u32,
        (p0 >> 32) as u32 ^ c[3] ^ k1,
        p0 as u32,
    ]
}

/// Philox4x32-10 of one counter under one key.
#[inline(always)]
fn philox4x32_10(mut c: [u32; 4], [mut k0, mut k1]: [u32; 2]) -> [u32; 4] {
    c = philox_round(c, k0, k1);
    for _ in 1..10 {
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
        c = philox_round(c, k0, k1);
    }
    c
}

impl Key {
    /// A key from a seed (the seed's low and high 32 bits are the Philox key).
    pub fn new(seed: u64) -> Key {
        Key {
            k: [seed as u32, (seed >> 32) as u32],
        }
    }

    /// The key as 64 bits, for storing it (a checkpoint); [`Key::from_bits`] inverts it.
    pub fn to_bits(self) -> u64 {
        u64::from(self.k[0]) | (u64::from(self.k[1]) << 32)
    }

    /// The key stored by [`Key::to_bits`].
    pub fn from_bits(bits: u64) -> Key {
        Key::new(bits)
    }

    /// The Philox block at counter `(lo(counter), hi(counter), domain, 0)`.
    #[inline(always)]
    fn block(self, counter: u64, domain: u32) -> [u32; 4] {
        philox4x32_10([counter as u32, (counter >> 32) as u32, domain, 0], self.k)
    }

    /// `N` consecutive blocks of the sample stream from `start`, as `words[word][block]`.
    ///
    /// One block at a time: the blocks are independent, so the CPU overlaps them, which
    /// beats vectorizing the 32 x 32 -> 64-bit products on baseline x86-64.
    #[inline(always)]
    fn blocks<const N: usize>(self, start: u64) -> [[u32; N]; 4] {
        let mut w = [[0; N]; 4];
        for j in 0..N {
            let b = self.block(start.wrapping_add(j as u64), DOMAIN_SAMPLE);
            for (wi, bi) in w.iter_mut().zip(b) {
                wi[j] = bi;
            }
        }
        w
    }

    /// The four words of block `counter` of this key's sample stream.
    ///
    /// Bulk fills and [`Key::rng`] read blocks 0, 1, 2, ... in order.
    #[inline]
    pub fn bits(self, counter: u64) -> [u32; 4] {
        self.block(counter, DOMAIN_SAMPLE)
    }

    /// Two independent keys (children 0 and 1 of [`Key::split_n`]).
    pub fn split(self) -> (Key, Key) {
        (self.child(0), self.child(1))
    }

    /// `n` independent keys; child `i` is the same for every `n > i`.
    pub fn split_n(self, n: usize) -> Vec<Key> {
        (0..n as u64).map(|i| self.child(i)).collect()
    }

    fn child(self, i: u64) -> Key {
        let b = self.block(i, DOMAIN_SPLIT);
        Key { k: [b[0], b[1]] }
    }

    /// A new key that mixes `data` into this one (`jax.random.fold_in`), e.g. a step or
    /// leaf index. Distinct `data` give independent keys.
    pub fn fold_in(self, data: u64) -> Key {
        let b = self.block(data, DOMAIN_FOLD);
        Key { k: [b[0], b[1]] }
    }

    /// A [`rand::RngCore`] reading this key's sample stream, so `rand`'s distributions can
    /// be used with a key. Its first `u32` is `bits(0)[0]`.
    ///
    /// ```
    /// use lopt_runtime::Key;
    /// use rand::Rng;
    ///
    /// let x: u8 = Key::new(3).rng().gen_range(0..10);
    /// assert!(x < 10);
    /// ```
    pub fn rng(self) -> KeyRng {
        KeyRng {
            key: self,
            counter: 0,
            buf: [0; 4],
            used: 4,
        }
    }

    /// A uniform sample in `[0, 1)`.
    pub fn uniform<S: Real>(self) -> S {
        let mut x = [S::zero()];
        self.fill_uniform(&mut x);
        x[0]
    }

    /// A uniform sample in `[lo, hi)` (`lo + (hi - lo) * u`; rounding can give `hi`).
    pub fn uniform_range<S: Real>(self, lo: S, hi: S) -> S {
        lo + (hi - lo) * self.uniform::<S>()
    }

    /// A standard normal sample.
    pub fn normal<S: Real>(self) -> S {
        let mut x = [S::zero()];
        self.fill_normal(&mut x);
        x[0]
    }

    /// Fills `out` with uniform samples in `[0, 1)`.
    pub fn fill_uniform<S: Real>(self, out: &mut [S]) {
        self.fill_dist(out, Dist::Uniform);
    }

    /// Fills `out` with standard normal samples (Box-Muller pairs).
    pub fn fill_normal<S: Real>(self, out: &mut [S]) {
        self.fill_dist(out, Dist::Normal);
    }

    /// Fills `out` with `std` times standard normals truncated to `[-2, 2]`, without
    /// variance correction (the JAX library's initializer; see the [module docs](self)).
    pub fn fill_truncated_normal<S: Real>(self, out: &mut [S], std: S) {
        self.fill_dist(out, Dist::TruncatedNormal);
        out.iter_mut().for_each(|x| *x *= std);
    }

    /// `n` standard normal samples.
    pub fn normal_vec<S: Real>(self, n: usize) -> Vec<S> {
        let mut v = vec![S::zero(); n];
        self.fill_normal(&mut v);
        v
    }

    /// An `r x c` matrix of standard normals, filled in column-major order (the same
    /// numbers as `normal_vec(r * c)`).
    pub fn normal_matrix<S: Real>(self, r: usize, c: usize) -> DMatrix<S> {
        DMatrix::from_vec(r, c, self.normal_vec(r * c))
    }

    /// A uniform integer in `lo..hi` (`hi` exclusive), without modulo bias (Lemire's
    /// multiply-and-reject on 64-bit draws from [`Key::rng`]).
    ///
    /// # Panics
    /// When `lo >= hi` (an empty range), like `rand::Rng::gen_range`.
    pub fn randint(self, lo: i64, hi: i64) -> i64 {
        assert!(lo < hi, "Key::randint: empty range {lo}..{hi}");
        let range = hi.wrapping_sub(lo) as u64;
        lo.wrapping_add(bounded(&mut self.rng(), range) as i64)
    }

    /// A uniformly random permutation of `0..n` (Fisher-Yates on [`Key::rng`]).
    pub fn permutation(self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        let mut rng = self.rng();
        for i in (1..n).rev() {
            let j = bounded(&mut rng, i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }

    /// Overwrites every leaf of `params` with `std` times standard normals; leaf `i` is
    /// drawn from `self.fold_in(i)`, so it does not depend on the other leaves. As with
    /// every draw, do not use `self` again for anything else.
    pub fn fill_params_normal<P: Params>(self, params: &mut P, std: P::Scalar) {
        for i in 0..params.num_leaves() {
            let leaf = params.leaf_mut(i);
            self.fold_in(i as u64).fill_normal(leaf);
            leaf.iter_mut().for_each(|x| *x *= std);
        }
    }

    /// A tree shaped like `template` filled as by [`Key::fill_params_normal`].
    pub fn normal_params<P: Params>(self, template: &P, std: P::Scalar) -> P {
        let mut p = template.clone();
        self.fill_params_normal(&mut p, std);
        p
    }

    /// Overwrites every leaf of `params` with truncated normals
    /// ([`Key::fill_truncated_normal`]); leaf `i` is drawn from `self.fold_in(i)`.
    pub fn fill_params_truncated_normal<P: Params>(self, params: &mut P, std: P::Scalar) {
        for i in 0..params.num_leaves() {
            self.fold_in(i as u64)
                .fill_truncated_normal(params.leaf_mut(i), std);
        }
    }

    /// A tree shaped like `template` filled as by [`Key::fill_params_truncated_normal`].
    pub fn truncated_normal_params<P: Params>(self, template: &P, std: P::Scalar) -> P {
        let mut p = template.clone();
        self.fill_params_truncated_normal(&mut p, std);
        p
    }

    /// Fills `out` with distribution `d`, dispatching on precision and lanes.
    fn fill_dist<S: Real>(self, out: &mut [S], d: Dist) {
        if S::LANES > 1 {
            return if single_precision::<S>() {
                self.fill_lanes::<f32, S>(out, d)
            } else {
                self.fill_lanes::<f64, S>(out, d)
            };
        }
        // Compiled for AVX2 too: twice the lanes for the Box-Muller math. The arithmetic is
        // the same IEEE operations (no fused multiply-add), so the numbers are
        // bit-identical to the baseline build.
        crate::kernels::cpu::with_avx2(|| self.fill_scalar(out, d))
    }

    /// Fills a slice of plain scalars (`S::LANES == 1`).
    #[inline(always)]
    fn fill_scalar<S: Real>(self, out: &mut [S], d: Dist) {
        match (single_precision::<S>(), d) {
            (true, Dist::Uniform) => self.fill_mapped::<UniformF32, S>(out),
            (false, Dist::Uniform) => self.fill_mapped::<UniformF64, S>(out),
            (true, Dist::Normal) => self.fill_mapped::<NormalF32, S>(out),
            (false, Dist::Normal) => self.fill_mapped::<NormalF64, S>(out),
            (true, Dist::TruncatedNormal) => self.fill_truncated::<NormalF32, S>(out),
            (false, Dist::TruncatedNormal) => self.fill_truncated::<NormalF64, S>(out),
        }
    }

    /// Packets: lane `j` of element `i` is value `i * LANES + j` of the scalar stream `T`.
    fn fill_lanes<T: Real, S: Real>(self, out: &mut [S], d: Dist) {
        let l = S::LANES;
        let mut flat = vec![T::zero(); out.len() * l];
        self.fill_dist(&mut flat, d);
        for (o, c) in out.iter_mut().zip(flat.chunks_exact(l)) {
            *o = S::from_lanes(|j| c[j].lane(0));
        }
    }

    /// Fills `out` by mapping consecutive blocks of the stream, `M::PER_BLOCK` values each.
    #[inline(always)]
    fn fill_mapped<M: BlockMap, S: Real>(self, out: &mut [S]) {
        let mut full = out.chunks_exact_mut(CHUNK * M::PER_BLOCK);
        let mut counter = 0u64;
        for dst in &mut full {
            M::map(&self.blocks::<CHUNK>(counter), dst);
            counter += CHUNK as u64;
        }
        // The tail block by block, so short fills cost no more blocks than they use.
        for dst in full.into_remainder().chunks_mut(M::PER_BLOCK) {
            let mut tmp = [S::zero(); 4];
            M::map(&self.blocks::<1>(counter), &mut tmp[..M::PER_BLOCK]);
            dst.copy_from_slice(&tmp[..dst.len()]);
            counter += 1;
        }
    }

    /// Standard normals from the `M` stream, in order, with `|z| > 2` rejected.
    #[inline(always)]
    fn fill_truncated<M: BlockMap, S: Real>(self, out: &mut [S]) {
        const LEN: usize = CHUNK * 4;
        let two = S::c(2.0);
        let (mut z, mut kept) = ([S::zero(); LEN], [S::zero(); LEN]);
        let len = CHUNK * M::PER_BLOCK;
        let (mut k, mut counter) = (0, 0u64);
        while k < out.len() {
            M::map(&self.blocks::<CHUNK>(counter), &mut z[..len]);
            counter += CHUNK as u64;
            // Branch-free compaction: every value is written, only accepted ones advance.
            let mut m = 0;
            for &x in &z[..len] {
                kept[m] = x;
                m += S::all(x.abs().le(two)) as usize;
            }
            let take = m.min(out.len() - k);
            out[k..k + take].copy_from_slice(&kept[..take]);
            k += take;
        }
    }
}

/// A [`rand::RngCore`] over a key's sample stream (blocks 0, 1, 2, ... word by word),
/// made by [`Key::rng`].
#[derive(Debug, Clone)]
pub struct KeyRng {
    key: Key,
    counter: u64,
    buf: [u32; 4],
    used: usize,
}

impl RngCore for KeyRng {
    #[inline]
    fn next_u32(&mut self) -> u32 {
        if self.used == 4 {
            self.buf = self.key.bits(self.counter);
            self.counter = self.counter.wrapping_add(1);
            self.used = 0;
        }
        self.used += 1;
        self.buf[self.used - 1]
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        let lo = self.next_u32() as u64;
        (self.next_u32() as u64) << 32 | lo
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(4) {
            chunk.copy_from_slice(&self.next_u32().to_le_bytes()[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// A uniform integer in `0..range` (`range > 0`): Lemire (2019), multiply-shift with
/// rejection of the few low products that would bias it.
fn bounded(rng: &mut KeyRng, range: u64) -> u64 {
    let mut m = rng.next_u64() as u128 * range as u128;
    if (m as u64) < range {
        let threshold = range.wrapping_neg() % range;
        while (m as u64) < threshold {
            m = rng.next_u64() as u128 * range as u128;
        }
    }
    (m >> 64) as u64
}

/// The distributions the bulk fills know.
#[derive(Clone, Copy)]
enum Dist {
    Uniform,
    Normal,
    TruncatedNormal,
}

/// True when `S` (or its lanes) is single precision. Constant after inlining.
#[inline(always)]
fn single_precision<S: Real>() -> bool {
    S::from_f64(1.0 + 1e-9).lane(0) == 1.0
}

/// Maps Philox blocks to values: block `b` of a group gives values
/// `b * PER_BLOCK .. (b + 1) * PER_BLOCK`.
trait BlockMap {
    const PER_BLOCK: usize;
    /// `w[word][block]` for `N` blocks to `out[..N * PER_BLOCK]`.
    fn map<const N: usize, S: Real>(w: &[[u32; N]; 4], out: &mut [S]);
}

/// Four 24-bit uniforms per block.
struct UniformF32;
/// Two 53-bit uniforms per block.
struct UniformF64;
/// Two single-precision Box-Muller pairs per block.
struct NormalF32;
/// One double-precision Box-Muller pair per block.
struct NormalF64;

impl BlockMap for UniformF32 {
    const PER_BLOCK: usize = 4;
    #[inline(always)]
    fn map<const N: usize, S: Real>(w: &[[u32; N]; 4], out: &mut [S]) {
        let out = &mut out[..4 * N];
        for b in 0..N {
            for j in 0..4 {
                out[4 * b + j] = S::from_f32(uniform_f32(w[j][b]));
            }
        }
    }
}

impl BlockMap for UniformF64 {
    const PER_BLOCK: usize = 2;
    #[inline(always)]
    fn map<const N: usize, S: Real>(w: &[[u32; N]; 4], out: &mut [S]) {
        let out = &mut out[..2 * N];
        for b in 0..N {
            out[2 * b] = S::from_f64(uniform_f64(w[0][b], w[1][b]));
            out[2 * b + 1] = S::from_f64(uniform_f64(w[2][b], w[3][b]));
        }
    }
}

impl BlockMap for NormalF32 {
    const PER_BLOCK: usize = 4;
    #[inline(always)]
    fn map<const N: usize, S: Real>(w: &[[u32; N]; 4], out: &mut [S]) {
        let out = &mut out[..4 * N];
        // Separate passes over the two pairs of each block keep the loops vectorizable.
        let mut z = [[0f32; N]; 4];
        for b in 0..N {
            (z[0][b], z[1][b]) = box_muller_f32(w[0][b], w[1][b]);
        }
        for b in 0..N {
            (z[2][b], z[3][b]) = box_muller_f32(w[2][b], w[3][b]);
        }
        for b in 0..N {
            for j in 0..4 {
                out[4 * b + j] = S::from_f32(z[j][b]);
            }
        }
    }
}

impl BlockMap for NormalF64 {
    const PER_BLOCK: usize = 2;
    #[inline(always)]
    fn map<const N: usize, S: Real>(w: &[[u32; N]; 4], out: &mut [S]) {
        let out = &mut out[..2 * N];
        for b in 0..N {
            let (z0, z1) = box_muller_f64(w[0][b], w[1][b], w[2][b], w[3][b]);
            out[2 * b] = S::from_f64(z0);
            out[2 * b + 1] = S::from_f64(z1);
        }
    }
}

/// `[0, 1)` from the top 24 bits of a word.
#[inline(always)]
fn uniform_f32(w: u32) -> f32 {
    (w >> 8) as f32 * TWO_POW_M24
}

/// `[0, 1)` from the top 53 bits of `(hi << 32) | lo`.
#[inline(always)]
fn uniform_f64(hi: u32, lo: u32) -> f64 {
    ((((hi as u64) << 32) | lo as u64) >> 11) as f64 * TWO_POW_M53
}

/// A Box-Muller pair in `f32`: radius from `a`, angle from `b` (see the module docs).
#[inline(always)]
fn box_muller_f32(a: u32, b: u32) -> (f32, f32) {
    let u = ((a >> 8) + 1) as f32 * TWO_POW_M24; // (0, 1], so ln(u) is finite
    let r = (-2.0 * crate::kernels::vecmath::ln_normal_f32(u)).sqrt();
    let (s, c) = sin_cos_turn_f32(b);
    (r * c, r * s)
}

/// A Box-Muller pair in `f64` from one block.
#[inline(always)]
fn box_muller_f64(a: u32, b: u32, c: u32, d: u32) -> (f64, f64) {
    let u = uniform_f64(a, b) + TWO_POW_M53; // (0, 1]
    let r = (-2.0 * u.ln()).sqrt();
    let (s, c) = (std::f64::consts::TAU * uniform_f64(c, d)).sin_cos();
    (r * c, r * s)
}

/// `(sin t, cos t)` of the angle `t = q * pi/2 + (v - 1/2) * pi/2`, with the quadrant `q`
/// the top two bits of `b` and `v` in `[0, 1)` its next 22 bits: a uniform angle on a
/// grid of `2^24` points. Cephes `sinf`/`cosf` polynomials on `[-pi/4, pi/4)`.
#[inline(always)]
fn sin_cos_turn_f32(b: u32) -> (f32, f32) {
    let q = b >> 30;
    let v = ((b >> 8) & 0x3f_ffff) as f32 * TWO_POW_M22;
    let x = (v - 0.5) * std::f32::consts::FRAC_PI_2;
    let (s, c) = crate::kernels::vecmath::sin_cos_poly(x);
    // Rotate by q quarter turns.
    let (s, c) = if q & 1 == 1 { (c, -s) } else { (s, c) };
    if q & 2 == 2 {
        (-s, -c)
    } else {
        (s, c)
    }
}

/// The Philox blocks of `N` keys at one counter, word-major (`out[word][lane]`): what
/// [`Key::block`] gives for each key, written as loops over the lanes so that one vector
/// instruction advances every lane (the batched form of a key operation). Interleaving
/// several counters measured no faster: the state of one already fills the registers.
#[inline(always)]
fn lane_blocks<const N: usize>(keys: &[Key; N], counter: u64, domain: u32) -> [[u32; N]; 4] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if N.is_multiple_of(8) {
        // LLVM widens the portable loops' 32 x 32 -> 64-bit products lane by lane; the
        // AVX2 form multiplies even and odd lanes in place (about 3x faster).
        let mut out = [[0u32; N]; 4];
        for l0 in (0..N).step_by(8) {
            let k0: [u32; 8] = std::array::from_fn(|l| keys[l0 + l].k[0]);
            let k1: [u32; 8] = std::array::from_fn(|l| keys[l0 + l].k[1]);
            let c = [counter as u32, (counter >> 32) as u32, domain, 0];
            let w = philox_avx2::blocks8(k0, k1, c);
            for (o, wj) in out.iter_mut().zip(&w) {
                o[l0..l0 + 8].copy_from_slice(wj);
            }
        }
        return out;
    }
    let mut k0: [u32; N] = std::array::from_fn(|l| keys[l].k[0]);
    let mut k1: [u32; N] = std::array::from_fn(|l| keys[l].k[1]);
    let mut c = [
        [counter as u32; N],
        [(counter >> 32) as u32; N],
        [domain; N],
        [0; N],
    ];
    for round in 0..10 {
        if round > 0 {
            for l in 0..N {
                k0[l] = k0[l].wrapping_add(W0);
                k1[l] = k1[l].wrapping_add(W1);
            }
        }
        for l in 0..N {
            let next = philox_round([c[0][l], c[1][l], c[2][l], c[3][l]], k0[l], k1[l]);
            (c[0][l], c[1][l], c[2][l], c[3][l]) = (next[0], next[1], next[2], next[3]);
        }
    }
    c
}

/// Philox4x32-10 under eight keys at once with AVX2 integer vectors: the operations of
/// [`philox_round`], eight lanes per instruction, so the words are bit for bit the same.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
mod philox_avx2 {
    use std::arch::x86_64::*;

    /// High and low halves of the 32 x 32 -> 64-bit products `a * m`, lane by lane.
    #[inline(always)]
    fn mul_hi_lo(a: __m256i, m: __m256i) -> (__m256i, __m256i) {
        // SAFETY: this module is compiled only when the target has AVX2.
        unsafe {
            let even = _mm256_mul_epu32(a, m);
            let odd = _mm256_mul_epu32(_mm256_srli_epi64::<32>(a), m);
            let hi = _mm256_blend_epi32::<0b1010_1010>(_mm256_srli_epi64::<32>(even), odd);
            let lo = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
            (hi, lo)
        }
    }

    /// The blocks of counter `c` (the same in every lane) under keys `(k0[l], k1[l])`,
    /// word-major.
    #[inline(always)]
    pub(super) fn blocks8(k0: [u32; 8], k1: [u32; 8], c: [u32; 4]) -> [[u32; 8]; 4] {
        // SAFETY: this module is compiled only when the target has AVX2; the loads and
        // stores are unaligned ones of whole `[u32; 8]` arrays.
        unsafe {
            let load = |a: &[u32; 8]| _mm256_loadu_si256(a.as_ptr() as *const __m256i);
            let splat = |x: u32| _mm256_set1_epi32(x as i32);
            let (m0, m1, w0, w1) = (
                splat(super::M0),
                splat(super::M1),
                splat(super::W0),
                splat(super::W1),
            );
            let (mut k0, mut k1) = (load(&k0), load(&k1));
            let (mut c0, mut c1, mut c2, mut c3) =
                (splat(c[0]), splat(c[1]), splat(c[2]), splat(c[3]));
            for round in 0..10 {
                if round > 0 {
                    k0 = _mm256_add_epi32(k0, w0);
                    k1 = _mm256_add_epi32(k1, w1);
                }
                let (hi0, lo0) = mul_hi_lo(c0, m0);
                let (hi1, lo1) = mul_hi_lo(c2, m1);
                (c0, c1, c2, c3) = (
                    _mm256_xor_si256(_mm256_xor_si256(hi1, c1), k0),
                    lo1,
                    _mm256_xor_si256(_mm256_xor_si256(hi0, c3), k1),
                    lo0,
                );
            }
            let mut out = [[0u32; 8]; 4];
            for (o, v) in out.iter_mut().zip([c0, c1, c2, c3]) {
                _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, v);
            }
            out
        }
    }
}

/// The keys that words 0 and 1 of lane blocks make (as [`Key::child`] and
/// [`Key::fold_in`] do for one key).
#[inline(always)]
fn lane_keys_from_blocks<const N: usize>(w: &[[u32; N]; 4]) -> [Key; N] {
    std::array::from_fn(|l| Key {
        k: [w[0][l], w[1][l]],
    })
}

/// [`Key::split`] of every lane's key at once.
pub(crate) fn split_lanes<const N: usize>(keys: &[Key; N]) -> ([Key; N], [Key; N]) {
    (
        lane_keys_from_blocks(&lane_blocks(keys, 0, DOMAIN_SPLIT)),
        lane_keys_from_blocks(&lane_blocks(keys, 1, DOMAIN_SPLIT)),
    )
}

/// [`Key::fold_in`] of `data` into every lane's key at once.
pub(crate) fn fold_in_lanes<const N: usize>(keys: &[Key; N], data: u64) -> [Key; N] {
    lane_keys_from_blocks(&lane_blocks(keys, data, DOMAIN_FOLD))
}

/// Fills `out[i][lane]` with value `i` of the single-precision stream of `keys[lane]`
/// (what [`Key::fill_normal`] or [`Key::fill_uniform`] into `f32` gives that key alone),
/// every lane at once.
pub(crate) fn fill_lanes_f32<const N: usize>(keys: &[Key; N], out: &mut [[f32; N]], normal: bool) {
    for (b, dst) in out.chunks_mut(4).enumerate() {
        let w = lane_blocks(keys, b as u64, DOMAIN_SAMPLE);
        let mut z = [[0f32; N]; 4];
        if normal {
            // The same pairs as `NormalF32::map`: (w0, w1) and (w2, w3).
            for l in 0..N {
                (z[0][l], z[1][l]) = box_muller_f32(w[0][l], w[1][l]);
            }
            for l in 0..N {
                (z[2][l], z[3][l]) = box_muller_f32(w[2][l], w[3][l]);
            }
        } else {
            for (zj, wj) in z.iter_mut().zip(&w) {
                for l in 0..N {
                    zj[l] = uniform_f32(wj[l]);
                }
            }
        }
        dst.copy_from_slice(&z[..dst.len()]);
    }
}

/// What a loss generic over the scalar type `S` can do with its key: `S::Key` is a
/// [`Key`] for plain floats and one key per lane ([`LaneKeys`](crate::lanes::LaneKeys))
/// for packets, so a batched instance draws exactly what it draws alone.
///
/// Draws through this trait are made in `f32` and converted, so the same key gives the
/// same numbers in an `f32` run, an `f64` gradient check and every lane of a batch.
pub trait KeyOps<S>: Copy + Send + Sync + fmt::Debug + 'static {
    /// The key of every lane from per-lane keys (`keys[i]` for lane `i`; the last one
    /// repeats if there are fewer keys than lanes).
    fn from_lane_keys(keys: &[Key]) -> Self;
    /// The key of lane `i` (the key itself for plain floats).
    fn lane_key(&self, i: usize) -> Key;
    /// Splits every lane's key in two.
    fn split(self) -> (Self, Self);
    /// Folds `data` into every lane's key.
    fn fold_in(self, data: u64) -> Self;
    /// Fills `out` with standard normals, lane `i` from lane `i`'s key.
    fn fill_normal(self, out: &mut [S]);
    /// Fills `out` with uniforms in `[0, 1)`, lane `i` from lane `i`'s key.
    fn fill_uniform(self, out: &mut [S]);
    /// `n` standard normals.
    fn normal_vec(self, n: usize) -> Vec<S>
    where
        S: Real,
    {
        let mut v = vec![S::zero(); n];
        self.fill_normal(&mut v);
        v
    }
    /// One standard normal.
    fn normal(self) -> S
    where
        S: Real,
    {
        let mut v = [S::zero()];
        self.fill_normal(&mut v);
        v[0]
    }
}

impl<S: Real> KeyOps<S> for Key {
    fn from_lane_keys(keys: &[Key]) -> Self {
        keys[0]
    }
    fn lane_key(&self, _i: usize) -> Key {
        *self
    }
    fn split(self) -> (Self, Self) {
        Key::split(self)
    }
    fn fold_in(self, data: u64) -> Self {
        Key::fold_in(self, data)
    }
    fn fill_normal(self, out: &mut [S]) {
        let mut buf = vec![0.0f32; out.len()];
        Key::fill_normal(self, &mut buf);
        out.iter_mut()
            .zip(buf)
            .for_each(|(o, v)| *o = S::from_f32(v));
    }
    fn fill_uniform(self, out: &mut [S]) {
        let mut buf = vec![0.0f32; out.len()];
        Key::fill_uniform(self, &mut buf);
        out.iter_mut()
            .zip(buf)
            .for_each(|(o, v)| *o = S::from_f32(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scalar::erf_f64;
    use rayon::prelude::*;

    fn philox_ref(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
        philox4x32_10(ctr, key)
    }

    /// Random123 `kat_vectors`, `philox4x32 10` lines.
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox_ref([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox_ref([0xffffffff; 4], [0xffffffff; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox_ref(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn bits_and_wide_blocks_agree() {
        let key = Key::new(0x0123_4567_89ab_cdef);
        assert_eq!(key.k, [0x89ab_cdef, 0x0123_4567]);
        assert_eq!(key.bits(0), philox_ref([0, 0, 0, 0], key.k));
        let start = u32::MAX as u64 - 3; // crosses into the high counter word
        let w = key.blocks::<CHUNK>(start);
        for (j, c) in (start..start + CHUNK as u64).enumerate() {
            assert_eq!([w[0][j], w[1][j], w[2][j], w[3][j]], key.bits(c));
        }
        assert_eq!(key.bits(1 << 32), philox_ref([0, 1, 0, 0], key.k));
    }

    #[test]
    fn derivation_counters_are_documented_ones() {
        let key = Key::new(42);
        let b = philox_ref([5, 0, DOMAIN_SPLIT, 0], key.k);
        assert_eq!(key.split_n(6)[5].k, [b[0], b[1]]);
        let b = philox_ref([7, 0, DOMAIN_FOLD, 0], key.k);
        assert_eq!(key.fold_in(7).k, [b[0], b[1]]);
        let (a, c) = key.split();
        assert_eq!(vec![a, c], key.split_n(2));
        assert_eq!(key.split_n(3)[..2], key.split_n(2)[..]);
    }

    #[test]
    fn derived_keys_are_distinct_streams() {
        let key = Key::new(1);
        let mut all = key.split_n(1000);
        all.extend((0..1000).map(|i| key.fold_in(i)));
        all.push(key);
        let set: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(set.len(), all.len());

        // Two children's normal streams are uncorrelated: |corr| within 5 standard errors.
        let n = 20_000;
        let (a, b) = key.split();
        let (x, y) = (a.normal_vec::<f64>(n), b.normal_vec::<f64>(n));
        let corr = x.iter().zip(&y).map(|(p, q)| p * q).sum::<f64>() / n as f64;
        assert!(corr.abs() < 5.0 / (n as f64).sqrt(), "corr {corr}");
        let z = key.fold_in(0).normal_vec::<f64>(n);
        let corr = x.iter().zip(&z).map(|(p, q)| p * q).sum::<f64>() / n as f64;
        assert!(corr.abs() < 5.0 / (n as f64).sqrt(), "corr {corr}");
    }

    #[test]
    fn fills_are_prefixes_and_single_draws_are_first_values() {
        let key = Key::new(9);
        let long = key.normal_vec::<f32>(100);
        for n in [0, 1, 3, 4, 5, 31, 32, 33, 70] {
            assert_eq!(key.normal_vec::<f32>(n)[..], long[..n]);
        }
        let long = key.normal_vec::<f64>(100);
        for n in [1, 15, 16, 17, 33] {
            assert_eq!(key.normal_vec::<f64>(n)[..], long[..n]);
        }
        assert_eq!(key.normal::<f32>(), key.normal_vec::<f32>(1)[0]);
        let mut u = vec![0f32; 50];
        key.fill_uniform(&mut u);
        assert_eq!(key.uniform::<f32>(), u[0]);
        assert_eq!(u[0], uniform_f32(key.bits(0)[0]));
        assert_eq!(u[37], uniform_f32(key.bits(9)[1]));
        let mut t = vec![0f64; 60];
        key.fill_truncated_normal(&mut t, 1.0);
        let mut t2 = vec![0f64; 25];
        key.fill_truncated_normal(&mut t2, 1.0);
        assert_eq!(t2[..], t[..25]);
        let m = key.normal_matrix::<f64>(3, 4);
        assert_eq!(m.as_slice(), &key.normal_vec::<f64>(12)[..]);
    }

    /// The f32 fast path against the same Box-Muller in f64 with `std` math.
    #[test]
    fn box_muller_f32_matches_f64_reference() {
        let mut rng = Key::new(5).rng();
        let edges = [
            0,
            1,
            255,
            256,
            0x4000_0000,
            0x8000_0000,
            0xc000_0000,
            u32::MAX,
        ];
        let mut pairs: Vec<(u32, u32)> = edges
            .iter()
            .flat_map(|&a| edges.iter().map(move |&b| (a, b)))
            .collect();
        pairs.extend((0..100_000).map(|_| (rng.next_u32(), rng.next_u32())));
        for (a, b) in pairs {
            let u = ((a >> 8) + 1) as f64 / (1u64 << 24) as f64;
            let r = (-2.0 * u.ln()).sqrt();
            let q = (b >> 30) as f64;
            let v = ((b >> 8) & 0x3f_ffff) as f64 / (1u64 << 22) as f64;
            let t = (q + v - 0.5) * std::f64::consts::FRAC_PI_2;
            let (z0, z1) = box_muller_f32(a, b);
            let tol = 4.0 * f32::EPSILON as f64 * (1.0 + r); // a few f32 ulps
            assert!((z0 as f64 - r * t.cos()).abs() < tol, "{a:x} {b:x}: {z0}");
            assert!((z1 as f64 - r * t.sin()).abs() < tol, "{a:x} {b:x}: {z1}");
        }
    }

    /// The AVX2 build must give the baseline build's numbers bit for bit (meaningful in
    /// release builds, where the two are vectorized differently).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_build_matches_baseline() {
        if !crate::kernels::cpu::has_avx2() {
            return;
        }
        let key = Key::new(77);
        for d in [Dist::Uniform, Dist::Normal, Dist::TruncatedNormal] {
            let (mut a, mut b) = (vec![0f32; 1003], vec![0f32; 1003]);
            key.fill_scalar(&mut a, d);
            crate::kernels::cpu::with_avx2(|| key.fill_scalar(&mut b, d));
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
            let (mut a, mut b) = (vec![0f64; 1003], vec![0f64; 1003]);
            key.fill_scalar(&mut a, d);
            crate::kernels::cpu::with_avx2(|| key.fill_scalar(&mut b, d));
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }

    fn draws_for(key: Key) -> (Vec<u32>, Vec<u64>, Vec<usize>, i64) {
        let k = key.split_n(4);
        let mut u = vec![0f64; 9];
        k[1].fill_uniform(&mut u);
        let mut t = vec![0f32; 21];
        k[2].fill_truncated_normal(&mut t, 0.3);
        let f32s = k[0].normal_vec::<f32>(77).into_iter().chain(t);
        (
            f32s.map(f32::to_bits).collect(),
            u.into_iter().map(f64::to_bits).collect(),
            k[3].permutation(13),
            key.fold_in(3).randint(-50, 50),
        )
    }

    #[test]
    fn same_draws_on_any_thread_count() {
        let keys = Key::new(2024).split_n(300);
        let serial: Vec<_> = keys.iter().map(|&k| draws_for(k)).collect();
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let par: Vec<_> = pool.install(|| keys.par_iter().map(|&k| draws_for(k)).collect());
            assert_eq!(par, serial, "{threads} threads");
            // Reverse order of evaluation too.
            let mut rev: Vec<_> =
                pool.install(|| keys.par_iter().rev().map(|&k| draws_for(k)).collect());
            rev.reverse();
            assert_eq!(rev, serial, "{threads} threads, reversed");
        }
    }

    /// Mean and variance within 5 standard errors of the closed forms; `m4` is the
    /// fourth central moment, for the standard error of the sample variance.
    fn check_moments(x: &[f64], mean: f64, var: f64, m4: f64) {
        let n = x.len() as f64;
        let m = x.iter().sum::<f64>() / n;
        let v = x.iter().map(|y| (y - mean) * (y - mean)).sum::<f64>() / n;
        assert!(
            (m - mean).abs() < 5.0 * (var / n).sqrt(),
            "mean {m} vs {mean}"
        );
        let se_v = ((m4 - var * var) / n).sqrt();
        assert!((v - var).abs() < 5.0 * se_v, "variance {v} vs {var}");
    }

    #[test]
    fn uniform_moments() {
        let n = 200_000;
        let mut x32 = vec![0f32; n];
        Key::new(11).fill_uniform(&mut x32);
        assert!(x32.iter().all(|&u| (0.0..1.0).contains(&u)));
        let x: Vec<f64> = x32.iter().map(|&u| u as f64).collect();
        // U(0,1): variance 1/12, fourth central moment 1/80.
        check_moments(&x, 0.5, 1.0 / 12.0, 1.0 / 80.0);
        let mut x = vec![0f64; n];
        Key::new(12).fill_uniform(&mut x);
        assert!(x.iter().all(|&u| (0.0..1.0).contains(&u)));
        check_moments(&x, 0.5, 1.0 / 12.0, 1.0 / 80.0);
        let y: Vec<f64> = (0..2000u64)
            .map(|i| Key::new(13).fold_in(i).uniform_range(-3.0, 5.0))
            .collect();
        assert!(y.iter().all(|&u| (-3.0..5.0).contains(&u)));
        check_moments(&y, 1.0, 64.0 / 12.0, 8f64.powi(4) / 80.0);
    }

    #[test]
    fn normal_moments() {
        let n = 200_000;
        let x: Vec<f64> = Key::new(21)
            .normal_vec::<f32>(n)
            .iter()
            .map(|&z| z as f64)
            .collect();
        check_moments(&x, 0.0, 1.0, 3.0);
        check_moments(&Key::new(22).normal_vec::<f64>(n), 0.0, 1.0, 3.0);
        // Single draws from many keys follow the same law.
        let y: Vec<f64> = (0..20_000u64)
            .map(|i| Key::new(23).fold_in(i).normal())
            .collect();
        check_moments(&y, 0.0, 1.0, 3.0);
        // The tail beyond 2 sigma: P(|Z| > 2) = 1 - erf(sqrt 2), binomial standard error.
        let p = 1.0 - erf_f64(std::f64::consts::SQRT_2);
        let frac = x.iter().filter(|z| z.abs() > 2.0).count() as f64 / n as f64;
        assert!(
            (frac - p).abs() < 5.0 * (p * (1.0 - p) / n as f64).sqrt(),
            "{frac}"
        );
    }

    #[test]
    fn truncated_normal_moments() {
        // N(0,1) restricted to [-2, 2]: with P = erf(sqrt 2) and phi = phi(2),
        // E z^2 = 1 - 2*2*phi/P and E z^4 = 3 - (6*2 + 2*2^3)*phi/P.
        let phi = (-2.0f64).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let p = erf_f64(std::f64::consts::SQRT_2);
        let var = 1.0 - 4.0 * phi / p;
        let m4 = 3.0 - 28.0 * phi / p;
        let (n, std) = (200_000, 0.5);
        let mut x32 = vec![0f32; n];
        Key::new(31).fill_truncated_normal(&mut x32, std as f32);
        assert!(x32.iter().all(|&z| z.abs() <= 2.0 * std as f32));
        let x: Vec<f64> = x32.iter().map(|&z| z as f64 / std).collect();
        check_moments(&x, 0.0, var, m4);
        let mut x = vec![0f64; n];
        Key::new(32).fill_truncated_normal(&mut x, std);
        assert!(x.iter().all(|&z| z.abs() <= 2.0 * std));
        x.iter_mut().for_each(|z| *z /= std);
        check_moments(&x, 0.0, var, m4);
    }

    /// Chi-square over `k` equiprobable bins below mean + 5 sd (df = k - 1).
    fn check_chi_square(counts: &[usize]) {
        let n: usize = counts.iter().sum();
        let e = n as f64 / counts.len() as f64;
        let chi2: f64 = counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum();
        let df = (counts.len() - 1) as f64;
        assert!(
            chi2 < df + 5.0 * (2.0 * df).sqrt(),
            "chi2 {chi2}, counts {counts:?}"
        );
    }

    #[test]
    fn randint_range_and_uniformity() {
        let mut counts = [0usize; 10];
        for i in 0..100_000 {
            let v = Key::new(41).fold_in(i).randint(-3, 7);
            assert!((-3..7).contains(&v));
            counts[(v + 3) as usize] += 1;
        }
        check_chi_square(&counts);

        // A range of 3 * 2^62: a modulo reduction would put half the mass in the first
        // third; Lemire's method must not.
        let (lo, hi) = (i64::MIN, 1i64 << 62);
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            let v = Key::new(42).fold_in(i).randint(lo, hi);
            assert!((lo..hi).contains(&v));
            counts[((v as i128 - lo as i128) >> 62) as usize] += 1;
        }
        check_chi_square(&counts);
        let full: Vec<i64> = (0..100)
            .map(|i| Key::new(i).randint(i64::MIN, i64::MAX))
            .collect();
        assert!(full.iter().any(|&v| v < 0) && full.iter().any(|&v| v > 0));
        assert_eq!(Key::new(1).randint(5, 6), 5);
    }

    #[test]
    #[should_panic(expected = "empty range")]
    fn randint_empty_range_panics() {
        Key::new(0).randint(3, 3);
    }

    #[test]
    fn permutations() {
        let p = Key::new(51).permutation(1000);
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_ne!(p, Key::new(52).permutation(1000));
        assert_ne!(p, s);
        assert!(Key::new(0).permutation(0).is_empty());
        assert_eq!(Key::new(0).permutation(1), vec![0]);

        // All 6 orders of 3 elements equally likely.
        let orders = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        let mut counts = [0usize; 6];
        for i in 0..60_000 {
            let p = Key::new(53).fold_in(i).permutation(3);
            counts[orders.iter().position(|o| o[..] == p[..]).unwrap()] += 1;
        }
        check_chi_square(&counts);
    }

    #[test]
    fn key_rng_reads_the_sample_stream() {
        use rand::Rng;
        let key = Key::new(61);
        let mut rng = key.rng();
        let words: Vec<u32> = (0..12).map(|_| rng.next_u32()).collect();
        let expect: Vec<u32> = (0..3).flat_map(|c| key.bits(c)).collect();
        assert_eq!(words, expect);
        let mut rng = key.rng();
        assert_eq!(rng.next_u64(), (expect[1] as u64) << 32 | expect[0] as u64);
        let mut bytes = [0u8; 6];
        rng.fill_bytes(&mut bytes);
        assert_eq!(bytes[..4], expect[2].to_le_bytes());
        assert_eq!(bytes[4..], expect[3].to_le_bytes()[..2]);
        let x: f64 = key.rng().gen();
        assert!((0.0..1.0).contains(&x));
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Two {
        a: Vec<f32>,
        b: Vec<f32>,
    }

    impl Params for Two {
        type Scalar = f32;
        fn num_leaves(&self) -> usize {
            2
        }
        fn leaf(&self, i: usize) -> &[f32] {
            [&self.a, &self.b][i]
        }
        fn leaf_mut(&mut self, i: usize) -> &mut [f32] {
            if i == 0 {
                &mut self.a
            } else {
                &mut self.b
            }
        }
        fn write_leaf_name(&self, i: usize, out: &mut String) {
            out.push_str(["a", "b"][i]);
        }
        fn leaf_shape(&self, i: usize) -> Vec<usize> {
            vec![self.leaf(i).len()]
        }
    }

    #[test]
    fn params_leaves_use_folded_keys() {
        let key = Key::new(71);
        let t = Two {
            a: vec![0.0; 5],
            b: vec![0.0; 7],
        };
        let p = key.normal_params(&t, 0.5);
        let scaled = |v: Vec<f32>| v.into_iter().map(|x| x * 0.5).collect::<Vec<_>>();
        assert_eq!(p.a, scaled(key.fold_in(0).normal_vec(5)));
        assert_eq!(p.b, scaled(key.fold_in(1).normal_vec(7)));
        // Leaf b does not depend on the size of leaf a.
        let q = key.normal_params(
            &Two {
                a: vec![0.0; 50],
                b: vec![0.0; 7],
            },
            0.5,
        );
        assert_eq!(q.b, p.b);
        let tr = key.truncated_normal_params(&t, 0.1);
        let mut b = vec![0f32; 7];
        key.fold_in(1).fill_truncated_normal(&mut b, 0.1);
        assert_eq!(tr.b, b);
        assert!(tr.a.iter().chain(&tr.b).all(|x| x.abs() <= 0.2));
    }

    #[test]
    fn serde_round_trip() {
        let key = Key::new(u64::MAX - 5).fold_in(3);
        let s = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<Key>(&s).unwrap(), key);
    }
}
