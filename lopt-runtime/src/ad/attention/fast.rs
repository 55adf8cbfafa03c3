//! The `f32` attention on AVX2 + FMA: every product of a (sequence, head) pair by one
//! register-tiled kernel over the pair's blocks of `q`, `k`, `v` and the output cotangent,
//! first copied into contiguous buffers that stay in L1 (read in place, their columns lie
//! a whole matrix apart and share one L1 set), with results copied back into the output
//! and the input cotangent; it skips the causal mask's zero half: the
//! logits only for keys `s ≤ t`, the products with `P` or `dL` only over their nonzero
//! triangle (by blocks of 8 rows).
//!
//! Each product is `C = A · B` with `A` column-major (`A[r, p] = a[p·lda + r]`), `B` read
//! by elements (`B[p, j] = b[p·bp + j·bj]`, broadcast) and `C` column-major; a tile is
//! 16 (or 8) rows of `C` by up to 4 columns, held in registers over the whole sum. Every
//! element of `C` is summed over `p` in increasing order, one fused multiply-add per
//! term, whatever the tile: the results do not depend on the number of threads, which
//! only choose which pairs a thread computes.

use std::arch::x86_64::*;

use super::{softmax_jacobian_t, AttentionGeometry};
use crate::kernels::tile8::tr8;
use crate::kernels::vecmath::exp_f32;

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
#[inline]
#[target_feature(enable = "avx2,fma")]
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

/// [`tile`] for `RB` row blocks over all `n` columns, 4 at a time.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_band<const RB: usize>(
    x: &Product,
    r0: usize,
    cols: (usize, usize),
    k: (usize, usize),
) {
    let (mut j, end) = cols;
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
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn band(
    x: &Product,
    rbs: (usize, usize),
    cols: (usize, usize),
    k: impl Fn(usize, usize) -> (usize, usize),
) {
    let (mut rb, hi) = rbs;
    while rb + 2 <= hi {
        row_band::<2>(x, 8 * rb, cols, k(rb, rb + 2));
        rb += 2;
    }
    if rb < hi {
        row_band::<1>(x, 8 * rb, cols, k(rb, rb + 1));
    }
}

/// `C = A B` where `C` is `T × n` and only its rows `s ≤ t` of column `t` are needed
/// (the logits `Lᵀ` and `dPᵀ`): columns in groups of 8, each over the row blocks up to
/// its own; all `k` terms.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn upper_columns(x: &Product, tt: usize, k: usize) {
    for c0 in (0..x.n).step_by(8) {
        let c1 = (c0 + 8).min(x.n);
        band(x, (0, c1.div_ceil(8).min(tt / 8)), (c0, c1), |_, _| (0, k));
    }
}

/// The `T × T` column-major `src` transposed into `dst`, by 8 × 8 tiles (`T` a multiple
/// of 8).
#[target_feature(enable = "avx2")]
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

/// `col[..live] ← softmax(col[..live] / scale)` (the row maximum subtracted), the rest of
/// `col` zero: query `t`'s weights over the keys `s ≤ t` (`live = t + 1`). By whole
/// vectors of 8 over the 8-aligned cover of the live keys, the masked ones in it as
/// `−∞` (whose exponential is zero): eight partial maxima and sums, then across.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_column(col: &mut [f32], live: usize, scale: f32) {
    let cover = live.div_ceil(8) * 8;
    let (head, tail) = col.split_at_mut(cover);
    tail.iter_mut().for_each(|v| *v = 0.0);
    head.iter_mut().for_each(|v| *v /= scale);
    head[live..].iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
    let mut m = [f32::NEG_INFINITY; 8];
    for c in head.chunks_exact(8) {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let m = m.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    head.iter_mut().for_each(|v| *v = exp_f32(*v - m));
    let mut sum = [0.0f32; 8];
    for c in head.chunks_exact(8) {
        for (s, &v) in sum.iter_mut().zip(c) {
            *s += v;
        }
    }
    let sum = ((sum[0] + sum[4]) + (sum[1] + sum[5])) + ((sum[2] + sum[6]) + (sum[3] + sum[7]));
    head.iter_mut().for_each(|v| *v /= sum);
}

/// Whether the fast path applies: AVX2 and FMA, and `T` a multiple of 8.
pub(super) fn applies(g: &AttentionGeometry) -> bool {
    g.time.is_multiple_of(8) && crate::kernels::cpu::has_avx2_fma()
}

/// The column offsets of head `h`'s `q`, `k` and `v` blocks in `qkv`, and the start of
/// sequence `b`'s rows.
fn offsets(g: &AttentionGeometry, pair: usize) -> (usize, usize, usize, usize) {
    let (b, h) = (pair / g.heads, pair % g.heads);
    let rows = g.rows();
    let (w, d) = (g.width(), g.key_size);
    let base = b * g.time;
    (
        h * d * rows + base,
        (w + h * d) * rows + base,
        (2 * w + h * d) * rows + base,
        base,
    )
}

/// Scratch `f32`s a thread needs for its pairs: five `T × d` blocks (four inputs and an
/// output) and two `T × T` matrices.
pub(super) fn scratch_len(g: &AttentionGeometry) -> usize {
    5 * g.time * g.key_size + 2 * g.time * g.time
}

/// Copies the `T × d` block at `src + off` (columns `rows` apart) into the contiguous
/// column-major `dst`. (Read in place, the columns of a block lie `rows` floats apart:
/// at 2,048 rows all on one L1 set, which the products' loads then thrash.)
///
/// # Safety
/// AVX2; the block lies inside `src`'s allocation.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn pack(src: *const f32, off: usize, rows: usize, tt: usize, dst: &mut [f32]) {
    copy_block(src.add(off), rows, dst.as_mut_ptr(), tt, tt, dst.len() / tt);
}

/// Asks the cache for the `T × d` block at `src + off` (columns `rows` apart, each
/// `T` floats): the next pair's blocks while this pair computes. Read in place, each
/// column is its own pair of cache lines far from the last, which the hardware
/// prefetcher does not foresee.
///
/// # Safety
/// None beyond the addresses lying inside `src`'s allocation (a prefetch never faults).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn prefetch_block(src: *const f32, off: usize, rows: usize, tt: usize, d: usize) {
    for j in 0..d {
        let col = src.wrapping_add(off + j * rows);
        for i in (0..tt).step_by(16) {
            _mm_prefetch::<_MM_HINT_T0>(col.wrapping_add(i) as *const i8);
        }
    }
}

/// Copies the contiguous column-major `T × d` block `src` to `dst + off` (columns `rows`
/// apart).
///
/// # Safety
/// AVX2; the block lies inside `dst`'s allocation and no other thread writes it.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn unpack(src: &[f32], dst: *mut f32, off: usize, rows: usize, tt: usize) {
    copy_block(src.as_ptr(), tt, dst.add(off), rows, tt, src.len() / tt);
}

/// Copies `cols` columns of `tt` (a multiple of 8) floats, `ls` apart in `src` and `ld`
/// apart in `dst`, by vector moves, a column at a time (each cache line touched once,
/// whole). By 32 floats, four loads then four stores: a loop of one 32-byte move per
/// step is turned into a `memcpy` call per column (measured: 38% of the gradient's
/// time at `T = 32`); the 8-float steps after the last 32 still are.
///
/// # Safety
/// AVX2; the columns are valid for reads (`src`) and writes (`dst`), not overlapping.
#[inline]
#[target_feature(enable = "avx2")]
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

/// `C = A B` on contiguous column-major blocks of `T` rows (`A` and `C`), `B[p, j]` at
/// `b[p·bp + j·bj]` with `(bp, bj) = b_strides`.
fn product(a: &[f32], b: &[f32], b_strides: (usize, usize), c: &mut [f32], tt: usize) -> Product {
    Product {
        a: a.as_ptr(),
        lda: tt,
        b: b.as_ptr(),
        bp: b_strides.0,
        bj: b_strides.1,
        c: c.as_mut_ptr(),
        ldc: tt,
        n: c.len() / tt,
    }
}

/// The forward pass of pair `pair`: its output block written into `out` (column-major,
/// `rows` rows, `heads · key_size` columns), its transposed probabilities into `pt`
/// (`T × T`, masked entries zero); `scratch` has [`scratch_len`] elements.
///
/// # Safety
/// [`applies`]; `xs` is the `qkv` matrix of `g`; `out` valid for writes of the pair's
/// block, which no other thread writes.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward_pair(
    g: &AttentionGeometry,
    xs: &[f32],
    pair: usize,
    out: *mut f32,
    pt: &mut [f32],
    scratch: &mut [f32],
) {
    let (tt, d, rows) = (g.time, g.key_size, g.rows());
    assert!(xs.len() == rows * 3 * g.width() && pt.len() == tt * tt);
    assert_eq!(scratch.len(), scratch_len(g));
    let (qo, ko, vo, _) = offsets(g, pair);
    let (q, rest) = scratch.split_at_mut(tt * d);
    let (k, rest) = rest.split_at_mut(tt * d);
    let (v, rest) = rest.split_at_mut(tt * d);
    let (o, rest) = rest.split_at_mut(tt * d);
    let p = &mut rest[..tt * tt];
    let x = xs.as_ptr();
    pack(x, qo, rows, tt, q);
    pack(x, ko, rows, tt, k);
    pack(x, vo, rows, tt, v);
    if pair + 1 < g.batch * g.heads {
        let (nq, nk, nv, _) = offsets(g, pair + 1);
        for o in [nq, nk, nv] {
            prefetch_block(x, o, rows, tt, d);
        }
    }
    let sqrt_d = (d as f32).sqrt();
    // Lᵀ = K Qᵀ (Qᵀ[j, t] = q[t + j·T]): column t holds query t's logits over the keys
    // s ≤ t.
    upper_columns(&product(k, q, (tt, 1), pt, tt), tt, d);
    for t in 0..tt {
        softmax_column(&mut pt[t * tt..(t + 1) * tt], t + 1, sqrt_d);
    }
    transpose_square(pt, p, tt);
    // O = P V (V[s, j] = v[s + j·T]); row block rb (queries t < 8(rb + 1)) needs keys
    // s ≤ t only.
    band(
        &product(p, v, (1, tt), o, tt),
        (0, tt / 8),
        (0, d),
        |_, hi| (0, 8 * hi),
    );
    unpack(o, out, qo, rows, tt);
}

/// The reverse pass of pair `pair` given its transposed probabilities `pt`: the blocks
/// `dQ`, `dK`, `dV` written into `dx` (column-major like `qkv`); `scratch` has
/// [`scratch_len`] elements.
///
/// # Safety
/// [`applies`]; `xs` is the `qkv` matrix of `g`, `gs` the output cotangent; `dx` valid
/// for writes of the pair's blocks, which no other thread writes.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn reverse_pair(
    g: &AttentionGeometry,
    xs: &[f32],
    gs: &[f32],
    pair: usize,
    pt: &[f32],
    dx: *mut f32,
    scratch: &mut [f32],
) {
    let (tt, d, rows) = (g.time, g.key_size, g.rows());
    assert!(xs.len() == rows * 3 * g.width() && gs.len() == rows * g.width());
    assert!(pt.len() == tt * tt);
    assert_eq!(scratch.len(), scratch_len(g));
    let (qo, ko, vo, _) = offsets(g, pair);
    let (q, rest) = scratch.split_at_mut(tt * d);
    let (k, rest) = rest.split_at_mut(tt * d);
    let (v, rest) = rest.split_at_mut(tt * d);
    let (gb, rest) = rest.split_at_mut(tt * d);
    let (db, rest) = rest.split_at_mut(tt * d);
    let (e, rest) = rest.split_at_mut(tt * tt);
    let el = &mut rest[..tt * tt];
    let x = xs.as_ptr();
    pack(x, qo, rows, tt, q);
    pack(x, ko, rows, tt, k);
    pack(x, vo, rows, tt, v);
    // The output cotangent's block sits where `q`'s does, in a matrix of `w` columns.
    pack(gs.as_ptr(), qo, rows, tt, gb);
    if pair + 1 < g.batch * g.heads {
        let (nq, nk, nv, _) = offsets(g, pair + 1);
        for o in [nq, nk, nv] {
            prefetch_block(x, o, rows, tt, d);
        }
        prefetch_block(gs.as_ptr(), nq, rows, tt, d);
    }
    let sqrt_d = (d as f32).sqrt();
    // dV = Pᵀ G (G[t, j] = gb[t + j·T]): keys s ≥ 8·rb need queries t ≥ s only.
    band(
        &product(pt, gb, (1, tt), db, tt),
        (0, tt / 8),
        (0, d),
        |lo, _| (8 * lo, tt),
    );
    unpack(db, dx, vo, rows, tt);
    // dPᵀ = V Gᵀ (Gᵀ[j, t] = gb[t + j·T]; rows s ≤ t of column t), then dLᵀ through the
    // softmax and the scale.
    upper_columns(&product(v, gb, (tt, 1), e, tt), tt, d);
    softmax_jacobian_t(pt, e, tt, Some(sqrt_d));
    transpose_square(e, el, tt);
    // dQ = dL K: queries t < 8(rb + 1) need keys s ≤ t only.
    band(
        &product(el, k, (1, tt), db, tt),
        (0, tt / 8),
        (0, d),
        |_, hi| (0, 8 * hi),
    );
    unpack(db, dx, qo, rows, tt);
    // dK = dLᵀ Q: keys s ≥ 8·rb need queries t ≥ s only.
    band(
        &product(e, q, (1, tt), db, tt),
        (0, tt / 8),
        (0, d),
        |lo, _| (8 * lo, tt),
    );
    unpack(db, dx, ko, rows, tt);
}
