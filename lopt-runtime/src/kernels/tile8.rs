//! Helpers of the `f32` AVX2 tile paths (embedding gather and scatter, attention): the
//! in-register 8 × 8 transpose, and the casts between a generic scalar and `f32` that
//! let a rule take its `f32` path.

use std::any::TypeId;

use crate::scalar::Real;

/// `v` as `f32` when `S` is `f32`.
pub(crate) fn as_f32<S: Real>(v: &[S]) -> Option<&[f32]> {
    (TypeId::of::<S>() == TypeId::of::<f32>()).then(|| {
        // SAFETY: `S` is `f32` (the TypeId test): the same layout.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len()) }
    })
}

/// A `Vec<f32>` as `Vec<S>`, `S` being `f32`.
pub(crate) fn from_f32<S: Real>(v: Vec<f32>) -> Vec<S> {
    assert_eq!(TypeId::of::<S>(), TypeId::of::<f32>());
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `S` is `f32` (asserted): the same allocation, length and capacity.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut S, v.len(), v.capacity()) }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::tr8;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Transposes the 8 × 8 tile held as 8 rows in `r`, in place.
    #[inline(always)]
    pub(crate) unsafe fn tr8(r: &mut [__m256; 8]) {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        r[0] = _mm256_permute2f128_ps::<0x20>(s0, s4);
        r[1] = _mm256_permute2f128_ps::<0x20>(s1, s5);
        r[2] = _mm256_permute2f128_ps::<0x20>(s2, s6);
        r[3] = _mm256_permute2f128_ps::<0x20>(s3, s7);
        r[4] = _mm256_permute2f128_ps::<0x31>(s0, s4);
        r[5] = _mm256_permute2f128_ps::<0x31>(s1, s5);
        r[6] = _mm256_permute2f128_ps::<0x31>(s2, s6);
        r[7] = _mm256_permute2f128_ps::<0x31>(s3, s7);
    }
}
