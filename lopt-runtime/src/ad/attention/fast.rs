//! The `f32` attention on AVX2 + FMA, or on AVX-512 where the CPU has it (the same bits):
//! the batch in chunks of sequences ([`chunk_seqs`], about 256 rows). In a large batch a
//! chunk's rows of `qkv` (and of the output cotangent) are first copied into scratch by
//! sequence, each column's piece read front to back (1 KB the hardware prefetcher
//! streams; pair by pair, each column's 128 bytes sat in a page of its own, a
//! latency-bound miss), so that each (sequence, head) pair's blocks are contiguous and
//! stay in L1; results go back a chunk at a time the same way. Matrices of at most
//! [`IN_PLACE_ROWS`] rows (a data-parallel chunk's, in L2) are read and written in place,
//! the kernels taking their column stride. Every product is one register-tiled kernel
//! that skips the causal mask's zero half: the logits only for keys `s ≤ t`, the products with `P` or
//! `dL` only over their nonzero triangle (by blocks of 8 rows). The softmax and its
//! Jacobian run eight queries at a time, one per lane of explicit AVX2 vectors (left to
//! the compiler, the lane loops stayed scalar: half the forward pass's time), with the
//! generic rule's operations in its order.
//!
//! Each product is `C = A · B` with `A` column-major (`A[r, p] = a[p·lda + r]`), `B` read
//! by elements (`B[p, j] = b[p·bp + j·bj]`, broadcast) and `C` column-major; a tile is
//! 16 (or 8) rows of `C` by up to 4 columns (AVX2) or 16 rows in one register by up to
//! 8 columns (AVX-512), held in registers over the whole sum. Every
//! element of `C` is summed over `p` in increasing order, one fused multiply-add per
//! term, whatever the tile: the results do not depend on the number of threads, which
//! only choose which pairs a thread computes.

use std::arch::x86_64::*;
use std::ops::Range;

use super::AttentionGeometry;
use crate::kernels::tile8::tr8;

/// Where a product's operands and result live, and the rows of `C` it computes.
#[derive(Clone, Copy)]
struct Product {
    a: *const f32,
    lda: usize,
    b: *const f32,
    bp: usize,
    bj: usize,
    c: *mut f32,
    ldc: usize,
    /// Columns of `C`.
    n: usize,
}

/// `C[rows, cols] = Σ_{p ∈ k0..k1} A[rows, p] B[p, cols]` for `RB` blocks of 8 rows from
/// `r0` and `NC` columns from `j0`.
///
/// # Safety
/// AVX2 and FMA; every address the product names for these rows, columns and `p` is
/// valid (reads of `A`, `B`; writes of `C`).
#[inline(always)]
unsafe fn tile<const RB: usize, const NC: usize>(
    x: &Product,
    r0: usize,
    j0: usize,
    k0: usize,
    k1: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); NC]; RB];
    for p in k0..k1 {
        let ap = x.a.add(p * x.lda + r0);
        let bp = x.b.add(p * x.bp + j0 * x.bj);
        let mut av = [_mm256_setzero_ps(); RB];
        for (i, v) in av.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(ap.add(8 * i));
        }
        for j in 0..NC {
            let bv = _mm256_broadcast_ss(&*bp.add(j * x.bj));
            for (row, &a) in acc.iter_mut().zip(&av) {
                row[j] = _mm256_fmadd_ps(a, bv, row[j]);
            }
        }
    }
    for j in 0..NC {
        let cp = x.c.add((j0 + j) * x.ldc + r0);
        for (i, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(cp.add(8 * i), a[j]);
        }
    }
}

/// [`tile`] for 16 rows (two blocks of 8) in one AVX-512 register per column, up to 8
/// columns: the same fused multiply-adds in the same order per element of `C`, so the
/// same bits as the AVX2 tile.
///
/// # Safety
/// AVX-512F (the caller's target features) and [`tile`]'s.
#[inline(always)]
unsafe fn tile_z<const NC: usize>(x: &Product, r0: usize, j0: usize, k0: usize, k1: usize) {
    let mut acc = [_mm512_setzero_ps(); NC];
    for p in k0..k1 {
        let a = _mm512_loadu_ps(x.a.add(p * x.lda + r0));
        let bp = x.b.add(p * x.bp + j0 * x.bj);
        for (j, c) in acc.iter_mut().enumerate() {
            *c = _mm512_fmadd_ps(a, _mm512_set1_ps(*bp.add(j * x.bj)), *c);
        }
    }
    for (j, c) in acc.iter().enumerate() {
        _mm512_storeu_ps(x.c.add((j0 + j) * x.ldc + r0), *c);
    }
}

/// [`tile`] for `RB` row blocks over all `n` columns, 4 at a time.
#[inline(always)]
unsafe fn row_band<const RB: usize, const Z: bool>(
    x: &Product,
    r0: usize,
    cols: (usize, usize),
    k: (usize, usize),
) {
    let (mut j, end) = cols;
    if Z && RB == 2 {
        while j + 8 <= end {
            tile_z::<8>(x, r0, j, k.0, k.1);
            j += 8;
        }
        match end - j {
            7 => tile_z::<7>(x, r0, j, k.0, k.1),
            6 => tile_z::<6>(x, r0, j, k.0, k.1),
            5 => tile_z::<5>(x, r0, j, k.0, k.1),
            4 => tile_z::<4>(x, r0, j, k.0, k.1),
            3 => tile_z::<3>(x, r0, j, k.0, k.1),
            2 => tile_z::<2>(x, r0, j, k.0, k.1),
            1 => tile_z::<1>(x, r0, j, k.0, k.1),
            _ => {}
        }
        return;
    }
    while j + 4 <= end {
        tile::<RB, 4>(x, r0, j, k.0, k.1);
        j += 4;
    }
    match end - j {
        3 => tile::<RB, 3>(x, r0, j, k.0, k.1),
        2 => tile::<RB, 2>(x, r0, j, k.0, k.1),
        1 => tile::<RB, 1>(x, r0, j, k.0, k.1),
        _ => {}
    }
}

/// Runs the product over row blocks `rb_lo..rb_hi` (two at a time, then one) and
/// columns `cols`, each pair of blocks over the terms `k(first block, end block)`.
#[inline(always)]
unsafe fn band<const Z: bool>(
    x: &Product,
    rbs: (usize, usize),
    cols: (usize, usize),
    k: impl Fn(usize, usize) -> (usize, usize),
) {
    let (mut rb, hi) = rbs;
    while rb + 2 <= hi {
        row_band::<2, Z>(x, 8 * rb, cols, k(rb, rb + 2));
        rb += 2;
    }
    if rb < hi {
        row_band::<1, Z>(x, 8 * rb, cols, k(rb, rb + 1));
    }
}

/// `C = A B` where `C` is `T × n` and only its rows `t ≥ s` of column `s` are needed
/// (the logits `L` and `dP`): columns in groups of 8, each over the row blocks from its
/// own on; all `k` terms.
#[inline(always)]
unsafe fn lower_columns<const Z: bool>(x: &Product, tt: usize, k: usize) {
    for c0 in (0..x.n).step_by(8) {
        let c1 = (c0 + 8).min(x.n);
        band::<Z>(x, (c0 / 8, tt / 8), (c0, c1), |_, _| (0, k));
    }
}

/// The `T × T` column-major `src` transposed into `dst`, by 8 × 8 tiles (`T` a multiple
/// of 8).
#[inline(always)]
unsafe fn transpose_square(src: &[f32], dst: &mut [f32], tt: usize) {
    assert!(src.len() == tt * tt && dst.len() == tt * tt && tt.is_multiple_of(8));
    let (s, o) = (src.as_ptr(), dst.as_mut_ptr());
    for j in (0..tt).step_by(8) {
        for i in (0..tt).step_by(8) {
            let mut v = [_mm256_setzero_ps(); 8];
            for (q, v) in v.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(s.add((j + q) * tt + i));
            }
            tr8(&mut v);
            for (q, v) in v.iter().enumerate() {
                _mm256_storeu_ps(o.add((i + q) * tt + j), *v);
            }
        }
    }
}

/// `a·b + c` on 8 lanes as [`exp_f32`]'s `madd` computes it: one fused multiply-add where
/// the build targets FMA, else a multiply and an add (so [`exp8`] has its bits in either
/// build).
///
/// [`exp_f32`]: crate::kernels::vecmath::exp_f32
#[inline(always)]
unsafe fn madd8(a: __m256, b: __m256, c: __m256) -> __m256 {
    if cfg!(target_feature = "fma") {
        _mm256_fmadd_ps(a, b, c)
    } else {
        _mm256_add_ps(_mm256_mul_ps(a, b), c)
    }
}

/// [`exp_f32`] on 8 lanes: its operations in its order (the clamps as `min`/`max` whose
/// operand order keeps a NaN, the selects as blends), so each lane has its bits.
///
/// [`exp_f32`]: crate::kernels::vecmath::exp_f32
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    use crate::kernels::vecmath::exp_coeffs::*;
    let s = _mm256_set1_ps;
    // `_mm256_min_ps(a, b)` is `a < b ? a : b`: `x > HI ? HI : x`, NaN kept.
    let xc = _mm256_max_ps(s(LO), _mm256_min_ps(s(HI), x));
    let t = madd8(xc, s(std::f32::consts::LOG2_E), s(MAGIC));
    let n = _mm256_sub_ps(t, s(MAGIC));
    let ni = _mm256_sub_epi32(
        _mm256_castps_si256(t),
        _mm256_set1_epi32(MAGIC.to_bits() as i32),
    );
    let r = madd8(n, s(-C2), madd8(n, s(-C1), xc));
    let mut p = s(POLY[0]);
    for c in &POLY[1..] {
        p = madd8(p, r, s(*c));
    }
    let er = _mm256_add_ps(madd8(_mm256_mul_ps(p, r), r, r), s(1.0));
    let half_scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        ni,
        _mm256_set1_epi32(126),
    )));
    let y = _mm256_mul_ps(_mm256_mul_ps(er, half_scale), s(2.0));
    let y = _mm256_blendv_ps(y, s(f32::INFINITY), _mm256_cmp_ps::<_CMP_GT_OQ>(x, s(HI)));
    _mm256_blendv_ps(y, s(0.0), _mm256_cmp_ps::<_CMP_LT_OQ>(x, s(LO)))
}

/// The lanes `i` of the block of queries `r0..r0 + 8` for which key `s` is live
/// (`s ≤ r0 + i`): all of them for `s ≤ r0`.
#[inline(always)]
unsafe fn live_lanes(s: usize, r0: usize) -> __m256 {
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let first = s.saturating_sub(r0) as i32;
    _mm256_castsi256_ps(_mm256_cmpgt_epi32(iota, _mm256_set1_epi32(first - 1)))
}

/// `P ← softmax(L / scale)` row by row over the live keys, in place in the `T × T`
/// column-major `p` (`p[s·T + t]` = query `t`'s logit for key `s`, live for `s ≤ t`;
/// only those are read), the masked entries set to zero. Eight queries at a time, one
/// per lane, the keys in increasing order: per query, the same operations in the same
/// order as the generic rule's softmax (each logit divided by the scale, the maximum,
/// `exp(l − max)`, their sum from key 0 up, each divided by the sum), so the same bits
/// from the same logits, with no reduction across lanes.
///
/// # Safety
/// AVX2 and FMA (the caller's target features).
#[inline(always)]
unsafe fn softmax_rows(p: &mut [f32], tt: usize, scale: f32) {
    assert!(p.len() == tt * tt && tt.is_multiple_of(8));
    let base = p.as_mut_ptr();
    let sc = _mm256_set1_ps(scale);
    for r0 in (0..tt).step_by(8) {
        let live = r0 + 8;
        let at = |s: usize| base.add(s * tt + r0);
        // `f32::max` keeps the maximum when the logit is NaN; so does `max(v, m)`.
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for s in 0..live {
            let v = _mm256_div_ps(_mm256_loadu_ps(at(s)), sc);
            _mm256_storeu_ps(at(s), v);
            m = _mm256_blendv_ps(m, _mm256_max_ps(v, m), live_lanes(s, r0));
        }
        // The masked lanes add zero, as the generic rule adds nothing (the sum starts
        // at +0 and stays positive: the same bits).
        let mut sum = _mm256_setzero_ps();
        for s in 0..live {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(at(s)), m));
            let e = _mm256_and_ps(e, live_lanes(s, r0));
            sum = _mm256_add_ps(sum, e);
            _mm256_storeu_ps(at(s), e);
        }
        for s in 0..live {
            _mm256_storeu_ps(at(s), _mm256_div_ps(_mm256_loadu_ps(at(s)), sum));
        }
        for s in live..tt {
            _mm256_storeu_ps(at(s), _mm256_setzero_ps());
        }
    }
}

/// `dL ← P ∘ (dP − rowsum(P ∘ dP)) / scale` over the live entries of the `T × T`
/// column-major `p` and `e` (`e` holds `dP` for keys `s ≤ t` on entry, only those are
/// read; `dL` with the masked entries zero on return): eight queries at a time, one per
/// lane; per query the generic rule's operations in its order (the sum from key 0 up),
/// so the same bits from the same operands.
///
/// # Safety
/// AVX2 and FMA (the caller's target features).
#[inline(always)]
unsafe fn jacobian_rows(p: &[f32], e: &mut [f32], tt: usize, scale: f32) {
    assert!(p.len() == tt * tt && e.len() == tt * tt && tt.is_multiple_of(8));
    let (pb, eb) = (p.as_ptr(), e.as_mut_ptr());
    let sc = _mm256_set1_ps(scale);
    for r0 in (0..tt).step_by(8) {
        let live = r0 + 8;
        let mut dot = _mm256_setzero_ps();
        for s in 0..live {
            let o = s * tt + r0;
            let pe = _mm256_mul_ps(_mm256_loadu_ps(pb.add(o)), _mm256_loadu_ps(eb.add(o)));
            dot = _mm256_blendv_ps(dot, _mm256_add_ps(dot, pe), live_lanes(s, r0));
        }
        for s in 0..live {
            let o = s * tt + r0;
            let d = _mm256_sub_ps(_mm256_loadu_ps(eb.add(o)), dot);
            let v = _mm256_div_ps(_mm256_mul_ps(_mm256_loadu_ps(pb.add(o)), d), sc);
            _mm256_storeu_ps(eb.add(o), _mm256_and_ps(v, live_lanes(s, r0)));
        }
        for s in live..tt {
            _mm256_storeu_ps(eb.add(s * tt + r0), _mm256_setzero_ps());
        }
    }
}

/// Whether the kernels run on AVX-512 registers: the CPU has AVX-512F and
/// `LOPT_MAX_ISA` allows it (else AVX2).
pub(super) fn wide() -> bool {
    crate::kernels::cpu::isa() == crate::kernels::cpu::Isa::Avx512
}

/// Whether the fast path applies: AVX2 and FMA, and `T` a multiple of 8.
pub(super) fn applies(g: &AttentionGeometry) -> bool {
    g.time.is_multiple_of(8) && crate::kernels::cpu::has_avx2_fma()
}

/// Sequences per chunk of work: about 256 rows, so that each column's piece of a chunk
/// is 1 KB of consecutive floats (what the hardware prefetcher streams: read pair by
/// pair, each column's piece was 128 bytes in a page of its own, a latency-bound miss),
/// and at least 8 chunks where the batch allows, to balance the threads. Fixed by the
/// geometry, never by the number of threads.
pub(super) fn chunk_seqs(g: &AttentionGeometry) -> usize {
    (256 / g.time).clamp(1, g.batch.div_ceil(8))
}

/// Scratch `f32`s a thread needs for one chunk of [`chunk_seqs`] sequences: the chunk's
/// rows of `qkv`, of the output cotangent and of the input cotangent (`7·w` columns of
/// `T` floats per sequence), and three `T × T` matrices.
pub(super) fn scratch_len(g: &AttentionGeometry) -> usize {
    chunk_seqs(g) * g.time * 7 * g.width() + 3 * g.time * g.time
}

/// Copies rows `r0..r0 + s·T` of the `ncols` columns of the column-major `rows`-row
/// matrix at `src` into `dst` by sequence: sequence `i`'s piece of column `c` (`T`
/// floats) at `dst[(i·ncols + c)·T..]`, so that each (sequence, head) block of it is
/// contiguous and column-major. Each column's piece is read front to back.
///
/// # Safety
/// AVX2; the rows lie inside `src`'s allocation; `dst` holds `s·ncols·T` floats.
#[inline(always)]
unsafe fn pack_rows(src: *const f32, rows: usize, r0: usize, s: usize, tt: usize, dst: &mut [f32]) {
    let ncols = dst.len() / (s * tt);
    assert_eq!(dst.len(), s * ncols * tt);
    for c in 0..ncols {
        let d = dst.as_mut_ptr().add(c * tt);
        copy_block(src.add(c * rows + r0), tt, d, ncols * tt, tt, s);
    }
}

/// The inverse of [`pack_rows`]: `src` (by sequence) into rows `r0..r0 + s·T` of the
/// column-major `rows`-row matrix at `dst`, each column's piece written front to back.
///
/// # Safety
/// AVX2; the rows lie inside `dst`'s allocation and no other thread writes them.
#[inline(always)]
unsafe fn unpack_rows(src: &[f32], s: usize, tt: usize, dst: *mut f32, rows: usize, r0: usize) {
    let ncols = src.len() / (s * tt);
    assert_eq!(src.len(), s * ncols * tt);
    for c in 0..ncols {
        let from = src.as_ptr().add(c * tt);
        copy_block(from, ncols * tt, dst.add(c * rows + r0), tt, tt, s);
    }
}

/// Copies `cols` columns of `tt` (a multiple of 8) floats, `ls` apart in `src` and `ld`
/// apart in `dst`, by vector moves, a column at a time (each cache line touched once,
/// whole). By 32 floats, four loads then four stores: a loop of one 32-byte move per
/// step is turned into a `memcpy` call per column (measured: 38% of the gradient's
/// time at `T = 32`); the 8-float steps after the last 32 still are.
///
/// # Safety
/// AVX2; the columns are valid for reads (`src`) and writes (`dst`), not overlapping.
#[inline(always)]
unsafe fn copy_block(src: *const f32, ls: usize, dst: *mut f32, ld: usize, tt: usize, cols: usize) {
    let t32 = tt / 32 * 32;
    for j in 0..cols {
        let (s, d) = (src.add(j * ls), dst.add(j * ld));
        for i in (0..t32).step_by(32) {
            let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(s.add(i + o)));
            for (o, v) in [0, 8, 16, 24].into_iter().zip(v) {
                _mm256_storeu_ps(d.add(i + o), v);
            }
        }
        for i in (t32..tt).step_by(8) {
            _mm256_storeu_ps(d.add(i), _mm256_loadu_ps(s.add(i)));
        }
    }
}

/// Rows up to which a chunk reads `qkv` and the output cotangent, and writes its results,
/// in place (column pieces of `T` floats, `rows` apart) instead of packing them by
/// sequence first: a data-parallel chunk's matrices (256 rows: `qkv` 384 KB) are in L2
/// when the attention runs, and the copies were a third of its time. Measured on the
/// transformer LM's training step (one thread, CPU time): the attention from 8% of the
/// step to 5%, the step 2-3% faster. Larger matrices come from memory, where the packed
/// copies read each column front to back (see [`pack_rows`]).
pub(super) const IN_PLACE_ROWS: usize = 256;

/// Whether the chunks of `g` read and write in place ([`IN_PLACE_ROWS`]).
fn reads_in_place(g: &AttentionGeometry) -> bool {
    g.rows() <= IN_PLACE_ROWS
}

/// Where sequence `i`'s `T`-float piece of column `c` of a matrix is: `base + i·si +
/// c·ld` (in the matrix itself, `(si, ld) = (T, rows)`; packed, `(cols·T, T)`).
#[derive(Clone, Copy)]
struct Blocks {
    base: *const f32,
    si: usize,
    ld: usize,
}

impl Blocks {
    fn new(base: *const f32, si: usize, ld: usize) -> Self {
        Blocks { base, si, ld }
    }

    /// The piece's first element (an address inside the matrix; no read).
    fn at(&self, i: usize, c: usize) -> *const f32 {
        self.base.wrapping_add(i * self.si + c * self.ld)
    }
}

/// The forward pass of the sequences `seqs` (a chunk: at most [`chunk_seqs`]): their rows
/// of the output written into `out` (column-major, `rows` rows, `heads · key_size`
/// columns), the transposed probabilities of their pairs into `probs` (`T × T` per pair
/// in the order `(b, h)`, masked entries zero); `scratch` has [`scratch_len`] elements.
///
/// # Safety
/// [`applies`]; `xs` is the `qkv` matrix of `g`; `out` valid for writes of the chunk's
/// rows, which no other thread writes.
pub(super) unsafe fn forward_chunk(
    g: &AttentionGeometry,
    xs: &[f32],
    seqs: Range<usize>,
    out: *mut f32,
    probs: &mut [f32],
    scratch: &mut [f32],
) {
    forward_chunk_on(wide(), reads_in_place(g), g, xs, seqs, out, probs, scratch)
}

/// Calls `body::<true>(args)` compiled for AVX-512F when `wide`, else `body::<false>(args)`
/// compiled for AVX2: a `#[target_feature]` function each, so the `#[inline(always)]` body
/// and its intrinsics inline into code built for the width it uses.
macro_rules! on_width {
    ($wide:expr, $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {{
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn z($($arg: $ty),*) {
            $body::<true>($($arg),*)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn y($($arg: $ty),*) {
            $body::<false>($($arg),*)
        }
        if $wide {
            z($($arg),*)
        } else {
            y($($arg),*)
        }
    }};
}

/// [`forward_chunk`] on AVX-512 registers when `wide` (the CPU must have AVX-512F), else
/// on AVX2, reading and writing the matrices in place when `in_place`, else through
/// packed copies ([`IN_PLACE_ROWS`]): the tests compare all four.
///
/// # Safety
/// [`forward_chunk`]'s, and AVX-512F when `wide`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn forward_chunk_on(
    wide: bool,
    in_place: bool,
    g: &AttentionGeometry,
    xs: &[f32],
    seqs: Range<usize>,
    out: *mut f32,
    probs: &mut [f32],
    scratch: &mut [f32],
) {
    on_width!(wide, forward_body(
        in_place: bool,
        g: &AttentionGeometry,
        xs: &[f32],
        seqs: Range<usize>,
        out: *mut f32,
        probs: &mut [f32],
        scratch: &mut [f32],
    ))
}

/// [`forward_chunk`] on 256-bit (`Z` false) or 512-bit tiles.
///
/// # Safety
/// [`forward_chunk`]'s, and AVX-512F when `Z` (the caller's target features).
#[inline(always)]
unsafe fn forward_body<const Z: bool>(
    direct: bool,
    g: &AttentionGeometry,
    xs: &[f32],
    seqs: Range<usize>,
    out: *mut f32,
    probs: &mut [f32],
    scratch: &mut [f32],
) {
    let (tt, d, rows, w, hh) = (g.time, g.key_size, g.rows(), g.width(), g.heads);
    let s = seqs.len();
    assert!(s <= chunk_seqs(g) && seqs.end <= g.batch);
    assert!(xs.len() == rows * 3 * w && probs.len() == s * hh * tt * tt);
    assert_eq!(scratch.len(), scratch_len(g));
    let (xin, rest) = scratch.split_at_mut(s * 3 * w * tt);
    let (o, rest) = rest.split_at_mut(s * w * tt);
    let p = &mut rest[..tt * tt];
    let r0 = seqs.start * tt;
    // Sequence `i`'s block of column `c`: in `xs` itself, or packed by sequence.
    let (x_at, o_at) = if direct {
        (
            Blocks::new(xs.as_ptr().add(r0), tt, rows),
            Blocks::new(out.add(r0), tt, rows),
        )
    } else {
        pack_rows(xs.as_ptr(), rows, r0, s, tt, xin);
        (
            Blocks::new(xin.as_ptr(), 3 * w * tt, tt),
            Blocks::new(o.as_mut_ptr(), w * tt, tt),
        )
    };
    let sqrt_d = (d as f32).sqrt();
    for i in 0..s {
        for h in 0..hh {
            let (q, k, v) = (
                x_at.at(i, h * d),
                x_at.at(i, w + h * d),
                x_at.at(i, 2 * w + h * d),
            );
            let pt = &mut probs[(i * hh + h) * tt * tt..][..tt * tt];
            // L = Q Kᵀ (Kᵀ[j, s] = k[s + j·ld]): row t holds query t's logits, over the
            // keys s ≤ t; then P row by row, and Pᵀ kept for the reverse pass.
            let logits = Product {
                a: q,
                lda: x_at.ld,
                b: k,
                bp: x_at.ld,
                bj: 1,
                c: p.as_mut_ptr(),
                ldc: tt,
                n: tt,
            };
            lower_columns::<Z>(&logits, tt, d);
            softmax_rows(p, tt, sqrt_d);
            transpose_square(p, pt, tt);
            // O = P V (V[s, j] = v[s + j·ld]); row block rb (queries t < 8(rb + 1))
            // needs keys s ≤ t only.
            let pv = Product {
                a: p.as_ptr(),
                lda: tt,
                b: v,
                bp: 1,
                bj: x_at.ld,
                c: o_at.at(i, h * d) as *mut f32,
                ldc: o_at.ld,
                n: d,
            };
            band::<Z>(&pv, (0, tt / 8), (0, d), |_, hi| (0, 8 * hi));
        }
    }
    if !direct {
        unpack_rows(o, s, tt, out, rows, r0);
    }
}

/// The reverse pass of the sequences `seqs` (a chunk) given their pairs' transposed
/// probabilities `probs` (as [`forward_chunk`] wrote them): their rows of `dQ`, `dK`,
/// `dV` written into `dx` (column-major like `qkv`); `scratch` has [`scratch_len`]
/// elements.
///
/// # Safety
/// [`applies`]; `xs` is the `qkv` matrix of `g`, `gs` the output cotangent; `dx` valid
/// for writes of the chunk's rows, which no other thread writes.
pub(super) unsafe fn reverse_chunk(
    g: &AttentionGeometry,
    xs: &[f32],
    gs: &[f32],
    seqs: Range<usize>,
    probs: &[f32],
    dx: *mut f32,
    scratch: &mut [f32],
) {
    reverse_chunk_on(
        wide(),
        reads_in_place(g),
        g,
        xs,
        gs,
        seqs,
        probs,
        dx,
        scratch,
    )
}

/// [`reverse_chunk`] on AVX-512 registers when `wide` (the CPU must have AVX-512F), else
/// on AVX2, in place or through packed copies as [`forward_chunk_on`]: the tests compare
/// all four.
///
/// # Safety
/// [`reverse_chunk`]'s, and AVX-512F when `wide`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn reverse_chunk_on(
    wide: bool,
    in_place: bool,
    g: &AttentionGeometry,
    xs: &[f32],
    gs: &[f32],
    seqs: Range<usize>,
    probs: &[f32],
    dx: *mut f32,
    scratch: &mut [f32],
) {
    on_width!(wide, reverse_body(
        in_place: bool,
        g: &AttentionGeometry,
        xs: &[f32],
        gs: &[f32],
        seqs: Range<usize>,
        probs: &[f32],
        dx: *mut f32,
        scratch: &mut [f32],
    ))
}

/// [`reverse_chunk`] on 256-bit (`Z` false) or 512-bit tiles.
///
/// # Safety
/// [`reverse_chunk`]'s, and AVX-512F when `Z` (the caller's target features).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn reverse_body<const Z: bool>(
    direct: bool,
    g: &AttentionGeometry,
    xs: &[f32],
    gs: &[f32],
    seqs: Range<usize>,
    probs: &[f32],
    dx: *mut f32,
    scratch: &mut [f32],
) {
    let (tt, d, rows, w, hh) = (g.time, g.key_size, g.rows(), g.width(), g.heads);
    let s = seqs.len();
    assert!(s <= chunk_seqs(g) && seqs.end <= g.batch);
    assert!(xs.len() == rows * 3 * w && gs.len() == rows * w);
    assert!(probs.len() == s * hh * tt * tt);
    assert_eq!(scratch.len(), scratch_len(g));
    let (xin, rest) = scratch.split_at_mut(s * 3 * w * tt);
    let (gin, rest) = rest.split_at_mut(s * w * tt);
    let (dxb, rest) = rest.split_at_mut(s * 3 * w * tt);
    let (e, rest) = rest.split_at_mut(tt * tt);
    let (el, rest) = rest.split_at_mut(tt * tt);
    let pm = &mut rest[..tt * tt];
    let r0 = seqs.start * tt;
    // Sequence `i`'s block of column `c`: in the matrices themselves, or packed.
    let (x_at, g_at, dx_at) = if direct {
        (
            Blocks::new(xs.as_ptr().add(r0), tt, rows),
            Blocks::new(gs.as_ptr().add(r0), tt, rows),
            Blocks::new(dx.add(r0), tt, rows),
        )
    } else {
        pack_rows(xs.as_ptr(), rows, r0, s, tt, xin);
        pack_rows(gs.as_ptr(), rows, r0, s, tt, gin);
        (
            Blocks::new(xin.as_ptr(), 3 * w * tt, tt),
            Blocks::new(gin.as_ptr(), w * tt, tt),
            Blocks::new(dxb.as_mut_ptr(), 3 * w * tt, tt),
        )
    };
    let sqrt_d = (d as f32).sqrt();
    for i in 0..s {
        for h in 0..hh {
            let [qc, kc, vc] = [h * d, w + h * d, 2 * w + h * d];
            let (q, k, v) = (x_at.at(i, qc), x_at.at(i, kc), x_at.at(i, vc));
            let gb = g_at.at(i, h * d);
            let pt = &probs[(i * hh + h) * tt * tt..][..tt * tt];
            // `C = A·B` into sequence `i`'s block of `dx`'s column `c`, `A` a `T × T`
            // scratch matrix, `B[p, j] = b[p + j·ld]`.
            let into_dx = |a: *const f32, b: *const f32, ld: usize, c: usize| Product {
                a,
                lda: tt,
                b,
                bp: 1,
                bj: ld,
                c: dx_at.at(i, c) as *mut f32,
                ldc: dx_at.ld,
                n: d,
            };
            // dV = Pᵀ G (G[t, j] = gb[t + j·ld]): keys s ≥ 8·rb need queries t ≥ s only.
            band::<Z>(
                &into_dx(pt.as_ptr(), gb, g_at.ld, vc),
                (0, tt / 8),
                (0, d),
                |lo, _| (8 * lo, tt),
            );
            // dP = G Vᵀ (Vᵀ[j, s] = v[s + j·ld]; rows t ≥ s of column s), then dL through
            // the softmax and the scale, row by row (with P, Pᵀ transposed back).
            let dp = Product {
                a: gb,
                lda: g_at.ld,
                b: v,
                bp: x_at.ld,
                bj: 1,
                c: e.as_mut_ptr(),
                ldc: tt,
                n: tt,
            };
            lower_columns::<Z>(&dp, tt, d);
            transpose_square(pt, pm, tt);
            jacobian_rows(pm, e, tt, sqrt_d);
            transpose_square(e, el, tt);
            // dQ = dL K: queries t < 8(rb + 1) need keys s ≤ t only.
            band::<Z>(
                &into_dx(e.as_ptr(), k, x_at.ld, qc),
                (0, tt / 8),
                (0, d),
                |_, hi| (0, 8 * hi),
            );
            // dK = dLᵀ Q: keys s ≥ 8·rb need queries t ≥ s only.
            band::<Z>(
                &into_dx(el.as_ptr(), q, x_at.ld, kc),
                (0, tt / 8),
                (0, d),
                |lo, _| (8 * lo, tt),
            );
        }
    }
    if !direct {
        unpack_rows(dxb, s, tt, dx, rows, r0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::vecmath::exp_f32;

    /// [`exp8`] gives [`exp_f32`]'s bits lane by lane: over the softmax's range and past
    /// both clamps, at the special values, and in every lane position. Mutations caught
    /// (each tried, each fails here): the upper clamp as `min(x, HI)` (a NaN becomes
    /// `HI`'s exponential); one polynomial coefficient dropped; the `2^(n−1)` bias 127.
    #[test]
    fn exp8_has_the_bits_of_exp_f32() {
        if !crate::kernels::cpu::has_avx2_fma() {
            return;
        }
        let mut xs: Vec<f32> = (0..40_000).map(|i| -100.0 + i as f32 * 0.00491).collect();
        xs.extend([
            0.0,
            -0.0,
            88.72283,
            88.7229,
            -86.5,
            -86.500_01,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            -1e-30,
        ]);
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run(x: &[f32; 8]) -> [f32; 8] {
            let mut out = [0.0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(x.as_ptr())));
            out
        }
        for k in 0..xs.len() {
            // Each value in lane k mod 8, its neighbours in the others.
            let lanes: [f32; 8] = std::array::from_fn(|i| xs[(k + i) % xs.len()]);
            // SAFETY: the CPU has AVX2 and FMA (checked).
            let got = unsafe { run(&lanes) };
            for (x, y) in lanes.iter().zip(got) {
                assert_eq!(y.to_bits(), exp_f32(*x).to_bits(), "exp({x}): {y}");
            }
        }
    }

    /// The softmax and its Jacobian, eight queries a vector, give the generic rule's bits
    /// from the same operands: [`softmax_rows`] against the generic rule's loop per query
    /// (each logit divided by the scale, the maximum, `exp(l − max)`, the sum from key 0
    /// up, each divided by the sum), [`jacobian_rows`] against the generic
    /// `softmax_jacobian_t` on the transposes. The masked entries of the diagonal blocks
    /// hold NaN and 1e30 on entry (never read: zeros on return). `T` of 8, 24 and 40.
    /// Mutations caught (each tried, each fails here): the masked lanes' exponentials
    /// added to the sum; the maximum over the masked lanes; the Jacobian's dot over the
    /// masked lanes; the live lanes one short (`s − r0 < i` for `s − r0 ≤ i`).
    #[test]
    fn softmax_and_jacobian_rows_have_the_generic_bits() {
        if !crate::kernels::cpu::has_avx2_fma() {
            return;
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn both(p: &mut [f32], e: &mut [f32], tt: usize, scale: f32) {
            softmax_rows(p, tt, scale);
            jacobian_rows(p, e, tt, scale);
        }
        for (tt, seed) in [(8usize, 1u64), (24, 2), (40, 3)] {
            let mut draws = vec![0.0f32; 2 * tt * tt];
            crate::key::Key::new(seed).fill_normal(&mut draws);
            // Row layout: `x[s·T + t]`, key `s`, query `t`; live for `s ≤ t`.
            let garbage = |i: usize| if i.is_multiple_of(2) { f32::NAN } else { 1e30 };
            let fill = |off: usize, gain: f32| -> Vec<f32> {
                (0..tt * tt)
                    .map(|i| {
                        let (s, t) = (i / tt, i % tt);
                        if s <= t {
                            gain * draws[off + i]
                        } else {
                            garbage(i)
                        }
                    })
                    .collect()
            };
            let (mut p, mut e) = (fill(0, 3.0), fill(tt * tt, 1.0));
            let scale = 5.0f32.sqrt();
            // The generic rule's softmax, per query `t` (column `t` of the transposes).
            let tr = |x: &[f32]| -> Vec<f32> {
                (0..tt * tt).map(|i| x[(i % tt) * tt + i / tt]).collect()
            };
            let (mut want_p, mut want_e) = (tr(&p), tr(&e));
            for t in 0..tt {
                let col = &mut want_p[t * tt..(t + 1) * tt];
                let (live, masked) = col.split_at_mut(t + 1);
                masked.iter_mut().for_each(|v| *v = 0.0);
                live.iter_mut().for_each(|v| *v /= scale);
                let m = live.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                live.iter_mut()
                    .for_each(|v| *v = crate::kernels::vecmath::exp(*v - m));
                let sum = live.iter().fold(0.0f32, |s, &v| s + v);
                live.iter_mut().for_each(|v| *v /= sum);
            }
            super::super::softmax_jacobian_t(&want_p, &mut want_e, tt, Some(scale));
            // SAFETY: the CPU has AVX2 and FMA (checked).
            unsafe { both(&mut p, &mut e, tt, scale) };
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&tr(&p)), bits(&want_p), "T = {tt}: probabilities");
            assert_eq!(bits(&tr(&e)), bits(&want_e), "T = {tt}: Jacobian");
        }
    }
}
