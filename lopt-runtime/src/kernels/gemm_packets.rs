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
//! Other scalars (and CPUs without AVX2/FMA) take a register-blocked generic loop. Both
//! sum each element's `k` products in order into a fresh accumulator and then add the old
//! value when accumulating; the fast path rounds each multiply-add once (FMA), the
//! generic one twice.

use std::any::TypeId;

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
    unsafe { gemm_packets_raw(m, k, n, a, b, c.as_mut_ptr(), accumulate) }
}

/// `gemm_packets` (test-only) into raw memory.
///
/// # Safety
/// `c` is valid for writes of `m·n` elements and, when `accumulate`, initialized. Without
/// `accumulate` every element is written and none is read, so `c` may be uninitialized.
///
/// # Panics
/// When a view reaches outside its data.
pub(crate) unsafe fn gemm_packets_raw<S: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: Strided<'_, S>,
    b: Strided<'_, S>,
    c: *mut S,
    accumulate: bool,
) {
    assert!(
        a.fits(m, k) && b.fits(k, n),
        "gemm_packets: view outside its data"
    );
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if lanes_multiple_of_8::<S>() && super::cpu::has_avx2_fma() {
        // SAFETY: `S` is `Lanes<S::LANES>` (checked by TypeId), so its storage is
        // `S::LANES` contiguous `f32`; the CPU has AVX2 and FMA; the views lie inside
        // their data (asserted above) and `c` is valid for `m·n` packets (the caller's
        // contract), written without being read unless `accumulate`.
        avx2::gemm(
            m,
            k,
            n,
            S::LANES,
            (a.data.as_ptr() as *const f32, a.rs, a.cs),
            (b.data.as_ptr() as *const f32, b.rs, b.cs),
            c as *mut f32,
            accumulate,
        );
        return;
    }
    if !accumulate {
        for i in 0..m * n {
            c.add(i).write(S::zero());
        }
    }
    // SAFETY: every element is initialized now; adding to zeros is the plain product.
    let c = std::slice::from_raw_parts_mut(c, m * n);
    gemm_generic(m, k, n, a, b, c, true);
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
    /// (pointer, row stride, column stride) in packets, `c` is column-major `m x n`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; every element of the `m x k` and `k x n` views, and
    /// `m·n` packets at `c`, are valid `lanes`-float packets (`c` for writes, and
    /// initialized when `accumulate`).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        lanes: usize,
        a: (*const f32, usize, usize),
        b: (*const f32, usize, usize),
        c: *mut f32,
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
                cs: m * lanes,
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
    }

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
        let shapes = [
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
        ];
        for &(m, k, n) in &shapes {
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
                        match path {
                            Path::Dispatch => gemm_packets(m, k, n, a, b, &mut c, acc),
                            Path::Generic => gemm_generic(m, k, n, a, b, &mut c, acc),
                        }
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
