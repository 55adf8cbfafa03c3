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

mod philox;

pub(crate) use philox::{fold_in_lanes, split_lanes};
use philox::{lane_blocks, philox4x32_10};

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
mod tests;
