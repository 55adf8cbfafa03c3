//! Matrix products for scalars other than `f32`/`f64`: SIMD-lane packets.
//!
//! In a product of packet matrices every element is a whole packet (lane = task
//! instance), so `C[i,j] += A[i,k]·B[k,j]` is a lane-wise multiply-add of two packets:
//! there is nothing to broadcast, and every multiply-add needs one packet of `A` and one
//! of `B`. The fast path ([`Lanes`] of a multiple of 8 lanes on a CPU with AVX2 + FMA)
//! keeps an `MR x NR` block of `C` packets in registers (one `ymm` per 8 lanes) across the
//! `k` loop, loading `MR + NR` packets for `MR·NR` fused multiply-adds. Each packet is a
//! whole number of 32-byte rows (a 16-lane packet is one cache line), so strided and
//! transposed operands are read in place without packing. The block is walked so that the
//! panel of the larger operand stays in L1 while the smaller operand streams from L2.
//!
//! On CPUs with AVX-512 the `avx512` kernel takes its place: whole `zmm` registers (two
//! rows of an 8-lane packet in one), the same sums in the same order, so the same bits.
//!
//! Other scalars (and CPUs without AVX2/FMA) take a register-blocked generic loop. Both
//! sum each element's `k` products in order into a fresh accumulator and then add the old
//! value when accumulating; the fast path rounds each multiply-add once (FMA), the
//! generic one twice.

use std::any::TypeId;

use super::cpu::{isa, Isa};
use crate::lanes::Lanes;
use crate::scalar::Real;

/// A strided read-only view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a, S> {
    pub data: &'a [S],
    pub rs: usize,
    pub cs: usize,
}

impl<S: Copy> Strided<'_, S> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> S {
        self.data[i * self.rs + j * self.cs]
    }

    /// Whether every element of a `rows x cols` view lies inside `data`.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1)
                .checked_mul(self.rs)
                .and_then(|x| {
                    (cols - 1)
                        .checked_mul(self.cs)
                        .and_then(|y| x.checked_add(y))
                })
                .is_some_and(|last| last < self.data.len())
    }
}

/// `c = a·b` (or `c += a·b` with `accumulate`), `a` is `m × k`, `b` is `k × n`, `c` is
/// column-major `m × n` and contiguous. Each element of `c` sums its `k` products in
/// order into a fresh accumulator (then adds the old value when accumulating).
///
/// # Panics
/// When `c` does not hold `m·n` elements or a view reaches outside its data.
#[cfg(test)]
pub(crate) fn gemm_packets<S: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: Strided<'_, S>,
    b: Strided<'_, S>,
    c: &mut [S],
    accumulate: bool,
) {
    assert_eq!(c.len(), m * n, "gemm_packets: output size");
    // SAFETY: `c` is an initialized slice of `m·n` elements.
    unsafe { gemm_packets_raw(m, k, n, a, b, c.as_mut_ptr(), m, accumulate) }
}

/// `gemm_packets` (test-only) into raw memory, `C`'s columns `ldc ≥ m` packets apart.
///
/// # Safety
/// `c` is valid for writes of the `m` rows of `n` columns `ldc` apart and, when
/// `accumulate`, they are initialized. Without `accumulate` every one is written and none
/// is read, so they may be uninitialized; the rows between (`m..ldc`) are not touched.
///
/// # Panics
/// When a view reaches outside its data.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_packets_raw<S: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: Strided<'_, S>,
    b: Strided<'_, S>,
    c: *mut S,
    ldc: usize,
    accumulate: bool,
) {
    gemm_packets_with(isa(), m, k, n, a, b, c, ldc, accumulate)
}

/// [`gemm_packets_raw`] with the instruction set given.
///
/// # Safety
/// As [`gemm_packets_raw`]; the CPU supports `isa`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_packets_with<S: Real>(
    isa: Isa,
    m: usize,
    k: usize,
    n: usize,
    a: Strided<'_, S>,
    b: Strided<'_, S>,
    c: *mut S,
    ldc: usize,
    accumulate: bool,
) {
    assert!(
        a.fits(m, k) && b.fits(k, n),
        "gemm_packets: view outside its data"
    );
    assert!(ldc >= m, "gemm_packets: ldc {ldc} below m {m}");
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    #[cfg(target_arch = "x86_64")]
    if lanes_multiple_of_8::<S>() && isa != Isa::Portable {
        let kernel = match isa {
            Isa::Avx512 => avx512::gemm,
            _ => avx2::gemm,
        };
        // SAFETY: `S` is `Lanes<S::LANES>` (checked by TypeId), so its storage is
        // `S::LANES` contiguous `f32`; the CPU has the kernel's features (the caller's
        // contract); the views lie inside their data (asserted above) and `c` is valid
        // for `m` packets in each of `n` columns `ldc` apart (the caller's contract),
        // written without being read unless `accumulate`.
        kernel(
            m,
            k,
            n,
            S::LANES,
            (a.data.as_ptr() as *const f32, a.rs, a.cs),
            (b.data.as_ptr() as *const f32, b.rs, b.cs),
            (c as *mut f32, ldc),
            accumulate,
        );
        return;
    }
    // The generic loop on a contiguous `m × n` (through a copy when the columns are apart).
    let mut tmp = Vec::new();
    let cc = if ldc == m {
        c
    } else {
        tmp.resize(m * n, S::zero());
        tmp.as_mut_ptr()
    };
    for j in 0..n {
        for i in 0..m {
            let v = if accumulate {
                c.add(j * ldc + i).read()
            } else {
                S::zero()
            };
            cc.add(j * m + i).write(v);
        }
    }
    // SAFETY: every element is initialized now; adding to zeros is the plain product.
    let cs = std::slice::from_raw_parts_mut(cc, m * n);
    gemm_generic(m, k, n, a, b, cs, true);
    if ldc != m {
        for j in 0..n {
            std::ptr::copy_nonoverlapping(cc.add(j * m), c.add(j * ldc), m);
        }
    }
}

/// Whether `S` is a [`Lanes`] type whose width is a multiple of 8 (the widths the fast
/// path serves).
fn lanes_multiple_of_8<S: Real>() -> bool {
    let t = TypeId::of::<S>();
    macro_rules! any_of {
        ($($n:literal),*) => { false $(|| t == TypeId::of::<Lanes<$n>>())* };
    }
    any_of!(8, 16, 24, 32, 40, 48, 56, 64, 128)
}

/// The AVX2 + FMA kernel on the raw `f32` storage of `Lanes<N>` matrices, `N` a multiple
/// of 8: every packet is `N / 8` registers.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    /// A strided matrix of packets in floats: element `(i, j)` starts at
    /// `p + i * rs + j * cs`.
    #[derive(Clone, Copy)]
    struct View {
        p: *const f32,
        rs: usize,
        cs: usize,
    }

    /// The output: element `(i, j)` starts at `p + i * rs + j * cs`.
    #[derive(Clone, Copy)]
    struct Out {
        p: *mut f32,
        rs: usize,
        cs: usize,
    }

    /// `c (+)= a·b` on packets of `lanes` floats (a multiple of 8); `a` and `b` are
    /// (pointer, row stride, column stride) in packets, `c` is column-major `m x n` with
    /// its columns `ldc` packets apart.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; every element of the `m x k` and `k x n` views, and the
    /// `m` packets of each of `c`'s `n` columns, are valid `lanes`-float packets (`c`'s
    /// for writes, and initialized when `accumulate`).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        lanes: usize,
        a: (*const f32, usize, usize),
        b: (*const f32, usize, usize),
        (c, ldc): (*mut f32, usize),
        accumulate: bool,
    ) {
        debug_assert!(lanes.is_multiple_of(8));
        // Lane chunks of 16 (two registers a packet) then 8 are independent products.
        let mut off = 0;
        while off < lanes {
            let av = View {
                p: a.0.wrapping_add(off),
                rs: a.1 * lanes,
                cs: a.2 * lanes,
            };
            let bv = View {
                p: b.0.wrapping_add(off),
                rs: b.1 * lanes,
                cs: b.2 * lanes,
            };
            let cv = Out {
                p: c.wrapping_add(off),
                rs: lanes,
                cs: ldc * lanes,
            };
            if lanes - off >= 16 {
                chunk::<2>(m, k, n, lanes, av, bv, cv, accumulate);
                off += 16;
            } else {
                chunk::<1>(m, k, n, lanes, av, bv, cv, accumulate);
                off += 8;
            }
        }
    }

    /// A cache line of packed floats (the packing buffer's unit, so packets start on
    /// line boundaries).
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    #[allow(dead_code)] // only allocated: filled and read through raw pointers
    struct Line([f32; 16]);

    /// One lane chunk of `8·V` lanes (of packets of `lanes` floats), block by block.
    ///
    /// # Safety
    /// As [`gemm`], for the chunk's lanes.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chunk<const V: usize>(
        m: usize,
        k: usize,
        n: usize,
        lanes: usize,
        a: View,
        b: View,
        c: Out,
        accumulate: bool,
    ) {
        // One operand's panel (MR x k of `a` when rows are the outer loop) stays in L1
        // while the other operand streams through all the blocks of that panel: stream
        // the smaller operand, and keep its side of the block narrow so fewer of its
        // packets come per k step. 12 accumulators plus the held operand registers fit
        // the 16 ymm registers.
        let rows_outer = n <= m;
        let (mr, nr) = match (rows_outer, V) {
            (true, 2) => (3, 2),
            (false, 2) => (2, 3),
            (true, _) => (4, 3),
            (false, _) => (3, 4),
        };
        // A panel strided along k (a column-major `a`, a row-major `b`) puts its k steps
        // a power of two apart, all in the same few L1 sets: its first block copies it
        // k-major as it reads it, and the other blocks read the copy.
        let pack_panel = if rows_outer {
            a.cs != lanes
        } else {
            b.rs != lanes
        };
        // Uninitialized: the packing block writes every float the later blocks read.
        let mut buf: Vec<Line> = if pack_panel {
            Vec::with_capacity((mr.max(nr) * k * 8 * V).div_ceil(16))
        } else {
            Vec::new()
        };
        let bp = buf.as_mut_ptr() as *mut f32;
        let run = |i0: usize, j0: usize, ab: View, bb: View, pack: Pack| {
            let cb = Out {
                p: c.p.wrapping_add(i0 * c.rs + j0 * c.cs),
                ..c
            };
            // SAFETY: the block's rows i0..i0+mr' and columns j0..j0+nr' are inside the
            // matrices, so every packet it touches is valid (the caller's contract), as
            // is the packed panel (written by the panel's first block before any other
            // block reads it); `buf` holds max(mr, nr)·k·8V floats.
            unsafe {
                block_dyn::<V>(
                    (m - i0).min(mr),
                    (n - j0).min(nr),
                    k,
                    ab,
                    bb,
                    cb,
                    accumulate,
                    pack,
                    bp,
                )
            }
        };
        let a_at = |i0: usize| View {
            p: a.p.wrapping_add(i0 * a.rs),
            ..a
        };
        let b_at = |j0: usize| View {
            p: b.p.wrapping_add(j0 * b.cs),
            ..b
        };
        if rows_outer {
            for i0 in (0..m).step_by(mr) {
                // The packed panel: element (i, p) at (p·rows + i)·8V floats.
                let packed = View {
                    p: bp,
                    rs: 8 * V,
                    cs: (m - i0).min(mr) * 8 * V,
                };
                for j0 in (0..n).step_by(nr) {
                    match (pack_panel, j0) {
                        (false, _) => run(i0, j0, a_at(i0), b_at(j0), Pack::None),
                        (true, 0) => run(i0, j0, a_at(i0), b_at(j0), Pack::A),
                        (true, _) => run(i0, j0, packed, b_at(j0), Pack::None),
                    }
                }
            }
        } else {
            for j0 in (0..n).step_by(nr) {
                // The packed panel: element (p, j) at (p·cols + j)·8V floats.
                let packed = View {
                    p: bp,
                    rs: (n - j0).min(nr) * 8 * V,
                    cs: 8 * V,
                };
                for i0 in (0..m).step_by(mr) {
                    match (pack_panel, i0) {
                        (false, _) => run(i0, j0, a_at(i0), b_at(j0), Pack::None),
                        (true, 0) => run(i0, j0, a_at(i0), b_at(j0), Pack::B),
                        (true, _) => run(i0, j0, a_at(i0), packed, Pack::None),
                    }
                }
            }
        }
    }

    /// Which operand a block copies, k-major, while it reads it (see [`block`]).
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Pack {
        None,
        A,
        B,
    }

    /// [`block`] with run-time block sizes (1 to 4 each) and packing mode.
    ///
    /// # Safety
    /// As [`block`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block_dyn<const V: usize>(
        mr: usize,
        nr: usize,
        k: usize,
        a: View,
        b: View,
        c: Out,
        accumulate: bool,
        pack: Pack,
        pk: *mut f32,
    ) {
        macro_rules! arms {
            ($(($i:literal, $j:literal)),*) => {
                match (mr, nr, pack) {
                    $(
                        ($i, $j, Pack::None) => block::<$i, $j, V, false, false>(k, a, b, c, accumulate, pk),
                        ($i, $j, Pack::A) => block::<$i, $j, V, true, false>(k, a, b, c, accumulate, pk),
                        ($i, $j, Pack::B) => block::<$i, $j, V, false, true>(k, a, b, c, accumulate, pk),
                    )*
                    _ => unreachable!("block sizes are 1 to 4"),
                }
            };
        }
        arms!(
            (1, 1),
            (1, 2),
            (1, 3),
            (1, 4),
            (2, 1),
            (2, 2),
            (2, 3),
            (2, 4),
            (3, 1),
            (3, 2),
            (3, 3),
            (3, 4),
            (4, 1),
            (4, 2),
            (4, 3),
            (4, 4)
        )
    }

    /// An `MR x NR` block of packets of `8·V` lanes: `a` points at the block's first row
    /// (`MR x k`), `b` at its first column (`k x NR`), `c` at its top-left element. With
    /// `PA` (`PB`) it also copies the `a` (`b`) packets it reads to `pk`, k-major (`a`'s
    /// element `(i, p)` at `(p·MR + i)·8V` floats, `b`'s `(p, j)` at `(p·NR + j)·8V`), so
    /// the first block of a panel packs it for the others without a pass of its own.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the `MR x k` and `k x NR` packets read and the
    /// `MR x NR` packets written are valid (`c` initialized when `accumulate`); with
    /// `PA` or `PB`, `pk` is valid for writing `MR·k·8V` (`NR·k·8V`) floats.
    #[inline]
    #[allow(clippy::needless_range_loop)] // indices name the block's (i, j, v) plainly
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<
        const MR: usize,
        const NR: usize,
        const V: usize,
        const PA: bool,
        const PB: bool,
    >(
        k: usize,
        a: View,
        b: View,
        c: Out,
        accumulate: bool,
        pk: *mut f32,
    ) {
        let mut acc = [[[_mm256_setzero_ps(); V]; NR]; MR];
        for p in 0..k {
            let ap = a.p.add(p * a.cs);
            let bp = b.p.add(p * b.rs);
            for v in 0..V {
                // Hold the narrower side in registers and stream the other one packet at
                // a time: MR·NR·V accumulators + min(MR, NR) + 1 registers.
                if MR <= NR {
                    let mut ar = [_mm256_setzero_ps(); MR];
                    for (i, r) in ar.iter_mut().enumerate() {
                        *r = _mm256_loadu_ps(ap.add(i * a.rs + 8 * v));
                        if PA {
                            _mm256_storeu_ps(pk.add((p * MR + i) * 8 * V + 8 * v), *r);
                        }
                    }
                    for j in 0..NR {
                        let bj = _mm256_loadu_ps(bp.add(j * b.cs + 8 * v));
                        if PB {
                            _mm256_storeu_ps(pk.add((p * NR + j) * 8 * V + 8 * v), bj);
                        }
                        for i in 0..MR {
                            acc[i][j][v] = _mm256_fmadd_ps(ar[i], bj, acc[i][j][v]);
                        }
                    }
                } else {
                    let mut br = [_mm256_setzero_ps(); NR];
                    for (j, r) in br.iter_mut().enumerate() {
                        *r = _mm256_loadu_ps(bp.add(j * b.cs + 8 * v));
                        if PB {
                            _mm256_storeu_ps(pk.add((p * NR + j) * 8 * V + 8 * v), *r);
                        }
                    }
                    for (i, acc_i) in acc.iter_mut().enumerate() {
                        let ai = _mm256_loadu_ps(ap.add(i * a.rs + 8 * v));
                        if PA {
                            _mm256_storeu_ps(pk.add((p * MR + i) * 8 * V + 8 * v), ai);
                        }
                        for j in 0..NR {
                            acc_i[j][v] = _mm256_fmadd_ps(ai, br[j], acc_i[j][v]);
                        }
                    }
                }
            }
        }
        for (i, acc_i) in acc.iter().enumerate() {
            for (j, acc_ij) in acc_i.iter().enumerate() {
                let cp = c.p.add(i * c.rs + j * c.cs);
                for (v, &x) in acc_ij.iter().enumerate() {
                    let x = if accumulate {
                        _mm256_add_ps(_mm256_loadu_ps(cp.add(8 * v)), x)
                    } else {
                        x
                    };
                    _mm256_storeu_ps(cp.add(8 * v), x);
                }
            }
        }
    }
}

/// The AVX-512 kernel on the raw `f32` storage of `Lanes<N>` matrices, `N` a multiple of
/// 8: a 16-lane chunk of a packet is one `zmm`; an 8-lane chunk (the last of `N = 8, 24,
/// ...`) puts two rows of `A` and `C` in one `zmm` (rows `i`, `i + 1`) and broadcasts the
/// packet of `B` to both halves, so the FMAs run at full width either way.
///
/// Row panels of `A` (up to 4 `zmm` a k step: 4 rows of 16 lanes or 8 rows of 8) are
/// packed k-major, `KC` steps of `k` at a time so that the panel stays in L1 (an odd
/// last row paired with zeros), and every
/// column block of `B` (up to 6 packets, read in place) runs against it: 24 accumulators,
/// 4 loads of `A` and 6 of `B` per 24 FMAs. Each element is one FMA chain over `k` in
/// order from zero (the chain's value carried between `k` slices in a buffer, exactly),
/// then `old +` it when accumulating: the same operations as the AVX2 kernel, so the
/// same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use core::arch::x86_64::*;

    use crate::kernels::gemm::block_width;

    /// Packets of `B` (columns) in a block.
    const NR: usize = 6;
    /// Registers of `A` (and rows of accumulators) in a block.
    const MZ: usize = 4;
    /// The most `k` steps of a packed panel: 4 registers × 64 steps is 16 KiB of the
    /// 48 KiB L1, the rest for the streamed columns of `B` (measured on
    /// `part.lanes8.conv_fwd_*`, k = 288: 64 ran 5% faster than 48 or 96, 15% faster
    /// than 144 or one slice).
    const KC: usize = 64;

    /// A `zmm` of packed floats (the buffers' unit, so aligned loads never split a line).
    #[derive(Clone, Copy)]
    #[repr(C, align(64))]
    #[allow(dead_code)] // only allocated: filled and read through raw pointers
    struct Z([f32; 16]);

    /// A strided matrix of packets in floats: element `(i, j)` starts at
    /// `p + i * rs + j * cs`.
    #[derive(Clone, Copy)]
    struct View {
        p: *const f32,
        rs: usize,
        cs: usize,
    }

    /// The output: element `(i, j)` starts at `p + i * rs + j * cs`.
    #[derive(Clone, Copy)]
    struct Out {
        p: *mut f32,
        rs: usize,
        cs: usize,
    }

    /// `c (+)= a·b` on packets of `lanes` floats (a multiple of 8); `a` and `b` are
    /// (pointer, row stride, column stride) in packets, `c` is column-major `m x n` with
    /// its columns `ldc` packets apart.
    ///
    /// # Safety
    /// The CPU has AVX-512F, AVX2 and FMA; every element of the `m x k` and `k x n`
    /// views, and the `m` packets of each of `c`'s `n` columns, are valid `lanes`-float
    /// packets (`c`'s for writes, and initialized when `accumulate`).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        lanes: usize,
        a: (*const f32, usize, usize),
        b: (*const f32, usize, usize),
        (c, ldc): (*mut f32, usize),
        accumulate: bool,
    ) {
        debug_assert!(lanes.is_multiple_of(8));
        // Lane chunks of 16 (one register a packet) then 8 (two rows a register) are
        // independent products.
        let mut off = 0;
        while off < lanes {
            let av = View {
                p: a.0.wrapping_add(off),
                rs: a.1 * lanes,
                cs: a.2 * lanes,
            };
            let bv = View {
                p: b.0.wrapping_add(off),
                rs: b.1 * lanes,
                cs: b.2 * lanes,
            };
            let cv = Out {
                p: c.wrapping_add(off),
                rs: lanes,
                cs: ldc * lanes,
            };
            if lanes - off >= 16 {
                chunk::<false>(m, k, n, av, bv, cv, accumulate);
                off += 16;
            } else {
                chunk::<true>(m, k, n, av, bv, cv, accumulate);
                off += 8;
            }
        }
    }

    /// One lane chunk: 16 lanes of each packet, or 8 with `PAIR` (two rows a register).
    ///
    /// # Safety
    /// As [`gemm`], for the chunk's lanes.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn chunk<const PAIR: bool>(
        m: usize,
        k: usize,
        n: usize,
        a: View,
        b: View,
        c: Out,
        accumulate: bool,
    ) {
        let per = if PAIR { 2 } else { 1 };
        let mr = MZ * per;
        // Equal slices of at most KC steps; one (empty) slice when k = 0, whose blocks
        // still write zeros (or old + 0).
        let slices = k.div_ceil(KC).max(1);
        let kc = k.div_ceil(slices);
        let mut panel: Vec<Z> = Vec::with_capacity(MZ * kc);
        let pk = panel.as_mut_ptr() as *mut f32;
        // The chains of a row panel between slices: register (j, q) at (j·MZ + q)·16.
        let mut carry: Vec<Z> = Vec::with_capacity(if slices > 1 { MZ * n } else { 0 });
        let cy = carry.as_mut_ptr() as *mut f32;
        let mut scratch = [Z([0.0; 16]); MZ * NR];
        let sc = scratch.as_mut_ptr() as *mut f32;
        for i0 in (0..m).step_by(mr) {
            let rows = (m - i0).min(mr);
            let mz = rows.div_ceil(per);
            for s in 0..slices {
                let k0 = s * kc;
                let kk = kc.min(k - k0);
                // Packed even when the panel's registers are adjacent in `a`: reading
                // them in place measured 10-15% slower on the conv family's forward
                // product (`part.lanes8.conv_fwd_*`: `Lanes` are 4-byte aligned, so
                // the loads split cache lines, and the k steps are far apart).
                pack::<PAIR>(a, i0, rows, k0, kk, pk);
                let mut j0 = 0;
                while j0 < n {
                    let nr = block_width::<NR>(n, j0);
                    let blk = Block {
                        k: kk,
                        a: pk,
                        b: View {
                            p: b.p.wrapping_add(k0 * b.rs + j0 * b.cs),
                            ..b
                        },
                        c: Out {
                            p: c.p.wrapping_add(i0 * c.rs + j0 * c.cs),
                            ..c
                        },
                        rows,
                        carry: cy.wrapping_add(j0 * MZ * 16),
                        scratch: sc,
                        first: s == 0,
                        last: s + 1 == slices,
                        accumulate,
                    };
                    // SAFETY: the block's rows, columns and k steps are inside the
                    // matrices (the caller's contract), the panel holds its mz·kk
                    // registers (packed just above) and `carry` MZ·n registers when
                    // there is more than one slice (the only case it is used).
                    block_dyn::<PAIR>(mz, nr, &blk);
                    j0 += nr;
                }
            }
        }
    }

    /// Copies rows `i0..i0 + rows` of `a`, k steps `k0..k0 + kk`, into `pk` k-major, a
    /// register a time: with `PAIR` register `q` of step `p` (at `(p·mz + q)·16`) holds
    /// rows `2q` and `2q + 1` (zeros for a missing last row), else row `q`.
    ///
    /// # Safety
    /// The rows and steps are inside `a`; `pk` is valid for `mz·kk` registers.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn pack<const PAIR: bool>(
        a: View,
        i0: usize,
        rows: usize,
        k0: usize,
        kk: usize,
        pk: *mut f32,
    ) {
        let mz = if PAIR { rows.div_ceil(2) } else { rows };
        for p in 0..kk {
            let src = a.p.add(i0 * a.rs + (k0 + p) * a.cs);
            let dst = pk.add(p * mz * 16);
            if PAIR {
                for i in 0..rows {
                    _mm256_store_ps(dst.add(i * 8), _mm256_loadu_ps(src.add(i * a.rs)));
                }
                if rows % 2 == 1 {
                    _mm256_store_ps(dst.add(rows * 8), _mm256_setzero_ps());
                }
            } else {
                for i in 0..rows {
                    _mm512_store_ps(dst.add(i * 16), _mm512_loadu_ps(src.add(i * a.rs)));
                }
            }
        }
    }

    /// One block's operands: the packed panel `a` (`k` steps of the block's registers),
    /// `b` at the block's first step and column, `c` at its top-left packet.
    struct Block {
        k: usize,
        a: *const f32,
        b: View,
        c: Out,
        /// Rows of the panel (the last register of an odd count holds one row).
        rows: usize,
        /// The panel's chains at this block's first column (between slices).
        carry: *mut f32,
        /// Room for a block's registers (the last slice's results on their way to `c`).
        scratch: *mut f32,
        /// The first slice of `k` (chains start at zero, else from `carry`).
        first: bool,
        /// The last slice (results to `c`, else the chains to `carry`).
        last: bool,
        accumulate: bool,
    }

    /// [`block`] with run-time sizes (1 to [`MZ`] registers, 1 to [`NR`] columns).
    ///
    /// # Safety
    /// As [`block`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn block_dyn<const PAIR: bool>(mz: usize, nr: usize, x: &Block) {
        macro_rules! arms {
            ($(($i:literal, $j:literal)),*) => {
                match (mz, nr) {
                    $(($i, $j) => block::<$i, $j, PAIR>(x),)*
                    _ => unreachable!("block sizes are 1 to 4 by 1 to 6"),
                }
            };
        }
        arms!(
            (1, 1),
            (1, 2),
            (1, 3),
            (1, 4),
            (1, 5),
            (1, 6),
            (2, 1),
            (2, 2),
            (2, 3),
            (2, 4),
            (2, 5),
            (2, 6),
            (3, 1),
            (3, 2),
            (3, 3),
            (3, 4),
            (3, 5),
            (3, 6),
            (4, 1),
            (4, 2),
            (4, 3),
            (4, 4),
            (4, 5),
            (4, 6)
        )
    }

    /// A block of `Z` registers (rows, or pairs of rows with `PAIR`) by `N` packets of
    /// `B`: `Z·N` chains over the slice's `k` steps.
    ///
    /// # Safety
    /// The CPU has AVX-512F; the panel holds `k·Z` registers; the slice's `k x N` packets
    /// of `b` and the block's packets of `c` are valid (`c` initialized when
    /// `accumulate`); `carry` holds `N·Z` registers unless the slice is the only one.
    #[inline]
    #[allow(clippy::needless_range_loop)] // indices name the block's (q, j) plainly
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn block<const Z: usize, const N: usize, const PAIR: bool>(x: &Block) {
        let mut acc = [[_mm512_setzero_ps(); N]; Z];
        if !x.first {
            for j in 0..N {
                for q in 0..Z {
                    acc[q][j] = _mm512_load_ps(x.carry.add((j * MZ + q) * 16));
                }
            }
        }
        for p in 0..x.k {
            let ap = x.a.add(p * Z * 16);
            let bp = x.b.p.add(p * x.b.rs);
            let mut ar = [_mm512_setzero_ps(); Z];
            for (q, r) in ar.iter_mut().enumerate() {
                *r = _mm512_load_ps(ap.add(q * 16));
            }
            for j in 0..N {
                let bj = if PAIR {
                    // The 8-lane packet to both halves (one load-port uop).
                    _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(
                        bp.add(j * x.b.cs) as *const f64
                    )))
                } else {
                    _mm512_loadu_ps(bp.add(j * x.b.cs))
                };
                for q in 0..Z {
                    acc[q][j] = _mm512_fmadd_ps(ar[q], bj, acc[q][j]);
                }
            }
        }
        if x.last && (!PAIR || (x.c.rs == 8 && x.rows == 2 * Z)) {
            // Every register is one whole packet (or two adjacent ones) of `c`.
            for j in 0..N {
                for q in 0..Z {
                    let rows = if PAIR { 2 * q } else { q };
                    let cp = x.c.p.add(rows * x.c.rs + j * x.c.cs);
                    let v = if x.accumulate {
                        _mm512_add_ps(_mm512_loadu_ps(cp), acc[q][j])
                    } else {
                        acc[q][j]
                    };
                    _mm512_storeu_ps(cp, v);
                }
            }
            return;
        }
        // The chains leave the registers in one plain loop (kept simple so that it is
        // unrolled and `acc` stays in registers: an output loop with branches indexing
        // `acc` kept it on the stack, stored at every k step).
        let (dst, stride) = if x.last {
            (x.scratch, Z)
        } else {
            (x.carry, MZ)
        };
        for j in 0..N {
            for q in 0..Z {
                _mm512_store_ps(dst.add((j * stride + q) * 16), acc[q][j]);
            }
        }
        if !x.last {
            return;
        }
        for j in 0..N {
            for q in 0..Z {
                let v = _mm512_load_ps(x.scratch.add((j * Z + q) * 16));
                if !PAIR {
                    let cp = x.c.p.add(q * x.c.rs + j * x.c.cs);
                    let v = if x.accumulate {
                        _mm512_add_ps(_mm512_loadu_ps(cp), v)
                    } else {
                        v
                    };
                    _mm512_storeu_ps(cp, v);
                    continue;
                }
                // Rows 2q (low half) and 2q + 1 (high half, when the panel has it).
                let lo = x.c.p.add(2 * q * x.c.rs + j * x.c.cs);
                let hi = lo.wrapping_add(x.c.rs);
                let both = 2 * q + 1 < x.rows;
                if both && x.c.rs == 8 {
                    let v = if x.accumulate {
                        _mm512_add_ps(_mm512_loadu_ps(lo), v)
                    } else {
                        v
                    };
                    _mm512_storeu_ps(lo, v);
                    continue;
                }
                let vl = _mm512_castps512_ps256(v);
                let vh = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                let (vl, vh) = if x.accumulate {
                    (
                        _mm256_add_ps(_mm256_loadu_ps(lo), vl),
                        if both {
                            _mm256_add_ps(_mm256_loadu_ps(hi), vh)
                        } else {
                            vh
                        },
                    )
                } else {
                    (vl, vh)
                };
                _mm256_storeu_ps(lo, vl);
                if both {
                    _mm256_storeu_ps(hi, vh);
                }
            }
        }
    }
}

/// The register-blocked loop for any scalar (`a·b` in the scalar's own `*` and `+`).
fn gemm_generic<S: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: Strided<'_, S>,
    b: Strided<'_, S>,
    c: &mut [S],
    accumulate: bool,
) {
    let mut j = 0;
    while j + 2 <= n {
        let mut i = 0;
        while i + 2 <= m {
            let (mut c00, mut c10, mut c01, mut c11) = (S::zero(), S::zero(), S::zero(), S::zero());
            for p in 0..k {
                let (a0, a1) = (a.at(i, p), a.at(i + 1, p));
                let (b0, b1) = (b.at(p, j), b.at(p, j + 1));
                c00 += a0 * b0;
                c10 += a1 * b0;
                c01 += a0 * b1;
                c11 += a1 * b1;
            }
            store(c, i + j * m, c00, accumulate);
            store(c, i + 1 + j * m, c10, accumulate);
            store(c, i + (j + 1) * m, c01, accumulate);
            store(c, i + 1 + (j + 1) * m, c11, accumulate);
            i += 2;
        }
        if i < m {
            let (mut c0, mut c1) = (S::zero(), S::zero());
            for p in 0..k {
                let a0 = a.at(i, p);
                c0 += a0 * b.at(p, j);
                c1 += a0 * b.at(p, j + 1);
            }
            store(c, i + j * m, c0, accumulate);
            store(c, i + (j + 1) * m, c1, accumulate);
        }
        j += 2;
    }
    if j < n {
        let mut i = 0;
        while i + 2 <= m {
            let (mut c0, mut c1) = (S::zero(), S::zero());
            for p in 0..k {
                let b0 = b.at(p, j);
                c0 += a.at(i, p) * b0;
                c1 += a.at(i + 1, p) * b0;
            }
            store(c, i + j * m, c0, accumulate);
            store(c, i + 1 + j * m, c1, accumulate);
            i += 2;
        }
        if i < m {
            let mut c0 = S::zero();
            for p in 0..k {
                c0 += a.at(i, p) * b.at(p, j);
            }
            store(c, i + j * m, c0, accumulate);
        }
    }
}

#[inline(always)]
fn store<S: Real>(c: &mut [S], idx: usize, v: S, accumulate: bool) {
    if accumulate {
        c[idx] += v;
    } else {
        c[idx] = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value in [-1, 1) from a hash of its position and lane (no structure a wrong
    /// index or lane could accidentally match).
    fn val(x: usize, lane: usize, salt: u64) -> f64 {
        let mut h = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (lane as u64) << 32 ^ salt;
        h ^= h >> 29;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 32;
        (h % 2048) as f64 / 1024.0 - 1.0
    }

    /// Which implementation a check runs.
    #[derive(Clone, Copy, Debug)]
    enum Path {
        /// [`gemm_packets`] (the dispatch).
        Dispatch,
        /// The generic loop.
        Generic,
        /// The kernel of this instruction set (which the CPU must have).
        Kernel(Isa),
    }

    /// `c (+)= a·b` by `path`.
    fn run<S: Real>(
        path: Path,
        (m, k, n): (usize, usize, usize),
        a: Strided<'_, S>,
        b: Strided<'_, S>,
        c: &mut [S],
        acc: bool,
    ) {
        match path {
            Path::Dispatch => gemm_packets(m, k, n, a, b, c, acc),
            Path::Generic => gemm_generic(m, k, n, a, b, c, acc),
            Path::Kernel(isa) => {
                assert!(isa.supported());
                assert_eq!(c.len(), m * n);
                // SAFETY: the CPU has `isa`; `c` holds m·n initialized packets.
                unsafe { gemm_packets_with(isa, m, k, n, a, b, c.as_mut_ptr(), m, acc) }
            }
        }
    }

    /// The instruction sets of the packet kernels this CPU has, besides the generic loop.
    fn kernels() -> Vec<Isa> {
        [Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.supported())
            .collect()
    }

    /// Shapes `(m, k, n)` covering every block class of both kernels: m, n and k of 0
    /// and 1, odd row counts (a half-empty register of row pairs), the row panels' and
    /// column blocks' remainders (`n` = 13 ends in 4 + 3, 17 in 6 + 5), and `k` past one
    /// AVX-512 slice (97: two of 49 and 48; 200: four of 50).
    const SHAPES: [(usize, usize, usize); 16] = [
        (1, 1, 1),
        (2, 3, 2),
        (3, 4, 5),
        (5, 1, 3),
        (7, 9, 4),
        (4, 6, 1),
        (13, 17, 11),
        (9, 5, 14),
        (1, 7, 9),
        (11, 2, 1),
        (6, 0, 3),
        (8, 97, 13),
        (17, 3, 17),
        (9, 200, 7),
        (16, 12, 12),
        (0, 3, 2),
    ];

    /// One storage of a `rows x cols` matrix: column-major, row-major (a transpose read in
    /// place), or column-major with a padded leading dimension.
    fn view<const N: usize>(
        layout: usize,
        rows: usize,
        cols: usize,
        salt: u64,
    ) -> (Vec<Lanes<N>>, usize, usize) {
        let (rs, cs, len) = match layout {
            0 => (1, rows, rows * cols),
            1 => (cols, 1, rows * cols),
            _ => (1, rows + 3, (rows + 3) * cols),
        };
        let data = (0..len)
            .map(|x| Lanes::from_lanes(|l| val(x, l, salt)))
            .collect();
        (data, rs, cs)
    }

    /// Every element and lane of `a·b` (and `c + a·b`) against an `f64` sum, within the
    /// rounding bound of a `k`-term `f32` sum: `(k + 2)·2⁻²⁴·(Σ|a·b| + |c|)`.
    fn check<const N: usize>(path: Path) {
        for (m, k, n) in SHAPES {
            for la in 0..3 {
                for lb in 0..3 {
                    let (av, ars, acs) = view::<N>(la, m, k, 1);
                    let (bv, brs, bcs) = view::<N>(lb, k, n, 2);
                    let a = Strided {
                        data: &av,
                        rs: ars,
                        cs: acs,
                    };
                    let b = Strided {
                        data: &bv,
                        rs: brs,
                        cs: bcs,
                    };
                    let init: Vec<Lanes<N>> = (0..m * n)
                        .map(|x| Lanes::from_lanes(|l| 4.0 * val(x, l, 3)))
                        .collect();
                    for acc in [false, true] {
                        let mut c = init.clone();
                        run(path, (m, k, n), a, b, &mut c, acc);
                        for i in 0..m {
                            for j in 0..n {
                                for l in 0..N {
                                    let old = if acc {
                                        init[i + j * m].0[l] as f64
                                    } else {
                                        0.0
                                    };
                                    let (mut s, mut mag) = (old, old.abs());
                                    for p in 0..k {
                                        let t = a.at(i, p).0[l] as f64 * b.at(p, j).0[l] as f64;
                                        s += t;
                                        mag += t.abs();
                                    }
                                    let got = c[i + j * m].0[l] as f64;
                                    let tol = (k + 2) as f64 * f32::EPSILON as f64 / 2.0 * mag;
                                    assert!(
                                        (got - s).abs() <= tol,
                                        "{path:?} N={N} {m}x{k}x{n} layouts ({la},{lb}) \
                                         acc={acc} ({i},{j}) lane {l}: {got} vs {s}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn packet_products_match_f64_sums() {
        // 8 and 16 lanes: one and two registers a packet; 24: a 16-lane and an 8-lane
        // chunk; 3: not a register multiple (the generic loop).
        check::<8>(Path::Dispatch);
        check::<16>(Path::Dispatch);
        check::<24>(Path::Dispatch);
        check::<3>(Path::Dispatch);
    }

    #[test]
    fn each_kernel_matches_f64_sums() {
        for isa in kernels() {
            check::<8>(Path::Kernel(isa));
            check::<16>(Path::Kernel(isa));
            check::<24>(Path::Kernel(isa));
            check::<32>(Path::Kernel(isa));
        }
    }

    /// The AVX-512 kernel against the AVX2 kernel, bit for bit (the same chain of FMAs
    /// for every element), on every shape and layout with and without accumulation,
    /// into outputs with guard packets on both sides that no write may touch; the old
    /// values include `-0.0` (`-0 + +0` is `+0`: the add is never skipped).
    ///
    /// Mutations tried, each failing this test (the first five also both f64 checks):
    /// the rows of a pair swapped in the packed panel (`B` meets the wrong half); an odd
    /// last row not stored; the packed panel read with a full panel's stride in a
    /// narrower one; chains not carried between `k` slices; the whole-register store
    /// used for 24-lane packets (rows 24 floats apart); the odd last row's empty half
    /// stored too (the guards); accumulating an empty sum by leaving `c` alone.
    fn same_bits<const N: usize>(shapes: &[(usize, usize, usize)]) {
        let guard = Lanes::<N>::splat(f32::from_bits(0x7FC0_0123));
        for &(m, k, n) in shapes {
            for la in 0..3 {
                for lb in 0..3 {
                    let (av, ars, acs) = view::<N>(la, m, k, 5);
                    let (bv, brs, bcs) = view::<N>(lb, k, n, 6);
                    let a = Strided {
                        data: &av,
                        rs: ars,
                        cs: acs,
                    };
                    let b = Strided {
                        data: &bv,
                        rs: brs,
                        cs: bcs,
                    };
                    let init: Vec<Lanes<N>> = (0..m * n + 4)
                        .map(|x| match x {
                            0 | 1 => guard,
                            x if x >= m * n + 2 => guard,
                            x if x % 5 == 0 => Lanes::splat(-0.0),
                            x => Lanes::from_lanes(|l| val(x, l, 7)),
                        })
                        .collect();
                    for acc in [false, true] {
                        let mut out = Vec::new();
                        for isa in [Isa::Avx2, Isa::Avx512] {
                            let mut c = init.clone();
                            // SAFETY: the CPU has `isa` (checked by the caller);
                            // packets 2..2 + m·n of `c` are initialized.
                            unsafe {
                                gemm_packets_with(isa, m, k, n, a, b, c.as_mut_ptr().add(2), m, acc)
                            };
                            let bits: Vec<u32> =
                                c.iter().flat_map(|x| x.0.map(f32::to_bits)).collect();
                            out.push(bits);
                        }
                        let guards = |c: &[u32]| {
                            let (head, tail) = (&c[..2 * N], &c[(m * n + 2) * N..]);
                            head.iter().chain(tail).all(|&x| x == 0x7FC0_0123)
                        };
                        assert!(guards(&out[0]) && guards(&out[1]), "{m}x{k}x{n} guards");
                        if let Some(x) = (0..out[0].len()).find(|&x| out[0][x] != out[1][x]) {
                            let (e, l) = (x / N - 2, x % N);
                            panic!(
                                "N={N} {m}x{k}x{n} layouts ({la},{lb}) acc={acc}: element \
                                 ({}, {}) lane {l}: AVX2 {:#x}, AVX-512 {:#x}",
                                e % m.max(1),
                                e / m.max(1),
                                out[0][x],
                                out[1][x]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn avx512_kernel_matches_avx2_bit_for_bit() {
        if !Isa::Avx512.supported() {
            return;
        }
        same_bits::<8>(&SHAPES);
        same_bits::<16>(&SHAPES);
        same_bits::<24>(&SHAPES);
        same_bits::<32>(&SHAPES);
        // The products of a small conv net's layers (blocks of 40 patch rows): forward,
        // dWᵀ = Gᵀ·P and G·Wᵀ, and a 3-slice k.
        let conv = [(40, 288, 32), (32, 40, 288), (40, 32, 288), (33, 288, 9)];
        same_bits::<8>(&conv);
        same_bits::<16>(&conv);
    }

    #[test]
    fn generic_loop_matches_f64_sums() {
        check::<8>(Path::Generic);
        check::<16>(Path::Generic);
        check::<1>(Path::Generic);
    }

    #[test]
    fn plain_floats_take_the_generic_loop() {
        assert!(!lanes_multiple_of_8::<f32>());
        assert!(!lanes_multiple_of_8::<Lanes<4>>());
        assert!(lanes_multiple_of_8::<Lanes<8>>());
        assert!(lanes_multiple_of_8::<Lanes<16>>());
        let a = [1.0f64, 2.0, 3.0, 4.0]; // 2x2 column-major
        let mut c = [0.0f64; 4];
        let v = Strided {
            data: &a,
            rs: 1,
            cs: 2,
        };
        gemm_packets(2, 2, 2, v, v, &mut c, false);
        assert_eq!(c, [7.0, 10.0, 15.0, 22.0]);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn a_view_outside_its_data_panics() {
        let a = [Lanes::<8>::splat(1.0); 5];
        let mut c = [Lanes::<8>::splat(0.0); 4];
        let v = Strided {
            data: &a,
            rs: 1,
            cs: 2,
        };
        gemm_packets(2, 3, 2, v, v, &mut c, false);
    }
}
