//! The one place CPU features are read, and the one multiversioning scheme.
//!
//! Features are detected once ([`isa`]). A loop that gains from wider vectors is compiled
//! twice through [`with_avx2_fma`] (or [`with_avx2`]): once with the target features
//! enabled, run when the CPU has them, and once for the baseline. GEMM's own kernels
//! (`gemm/dispatch.rs`) are compiled per [`Isa`] with the same detection.

use std::sync::OnceLock;

/// The instruction-set variants kernels are compiled for, widest last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// The target's baseline (SSE2 on x86-64), separate multiply and add unless the
    /// build enables FMA.
    Portable,
    /// AVX2 with FMA: 8 `f32` per register.
    Avx2,
    /// AVX-512 (F) with FMA: 16 `f32` per register.
    Avx512,
}

impl Isa {
    /// Whether this CPU can run the variant.
    pub(crate) fn supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => Isa::Avx2.supported() && is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The environment variable that caps the variant kernels use: `portable`, `avx2` or
/// `avx512` (read once). It lets one machine run the code paths of a narrower CPU (CI
/// machines differ); a cap wider than the CPU changes nothing, an unknown value is
/// ignored with a warning on stderr.
pub(crate) const MAX_ISA_ENV: &str = "LOPT_MAX_ISA";

/// The widest variant this CPU supports, capped by [`MAX_ISA_ENV`], detected once.
pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let cap = match std::env::var(MAX_ISA_ENV).as_deref() {
            Ok("portable") => Isa::Portable,
            Ok("avx2") => Isa::Avx2,
            Ok("avx512") | Err(_) => Isa::Avx512,
            Ok(other) => {
                eprintln!(
                    "lopt: ignoring {MAX_ISA_ENV}={other:?} (expected portable, avx2 or avx512)"
                );
                Isa::Avx512
            }
        };
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|&i| i <= cap && i.supported())
            .unwrap_or(Isa::Portable)
    })
}

/// Whether this CPU has AVX2 and FMA (detected once).
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    isa() != Isa::Portable
}

/// Whether this CPU has AVX2 (detected once; FMA not required; off when
/// [`MAX_ISA_ENV`] says `portable`).
#[inline]
pub(crate) fn has_avx2() -> bool {
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2")
                && std::env::var(MAX_ISA_ENV).as_deref() != Ok("portable")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `f()`, compiled with AVX2 and FMA enabled when this CPU has them (the body is inlined
/// into a `#[target_feature]` function), else for the baseline.
#[inline(always)]
pub(crate) fn with_avx2_fma<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { wide(f) };
    }
    f()
}

/// `f()`, compiled with AVX2 (no FMA: the same IEEE operations as the baseline) when this
/// CPU has it, else for the baseline.
#[inline(always)]
pub(crate) fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { wide(f) };
    }
    f()
}
