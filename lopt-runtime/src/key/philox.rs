//! Philox4x32-10 (the bijection behind every [`Key`]): one block for one key, and the
//! batched form that advances the keys of every lane with one vector instruction.

use super::{Key, DOMAIN_FOLD, DOMAIN_SPLIT};

/// Philox multipliers and Weyl key increments (Random123 `PHILOX_M4x32_*`, `PHILOX_W32_*`).
pub(super) const M0: u32 = 0xD251_1F53;
pub(super) const M1: u32 = 0xCD9E_8D57;
pub(super) const W0: u32 = 0x9E37_79B9;
pub(super) const W1: u32 = 0xBB67_AE85;

/// One Philox round.
#[inline(always)]
pub(super) fn philox_round(c: [u32; 4], k0: u32, k1: u32) -> [u32; 4] {
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
pub(super) fn philox4x32_10(mut c: [u32; 4], [mut k0, mut k1]: [u32; 2]) -> [u32; 4] {
    c = philox_round(c, k0, k1);
    for _ in 1..10 {
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
        c = philox_round(c, k0, k1);
    }
    c
}

/// The Philox blocks of `N` keys at one counter, word-major (`out[word][lane]`): what
/// [`Key::block`] gives for each key, written as loops over the lanes so that one vector
/// instruction advances every lane (the batched form of a key operation). Interleaving
/// several counters measured no faster: the state of one already fills the registers.
#[inline(always)]
pub(super) fn lane_blocks<const N: usize>(
    keys: &[Key; N],
    counter: u64,
    domain: u32,
) -> [[u32; N]; 4] {
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
