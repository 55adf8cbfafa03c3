//! The `f32` attention on AVX2 + FMA: every product of a (sequence, head) pair by one
//! register-tiled kernel that reads `q`, `k`, `v` and the output cotangent in place from
//! their column-major matrices (no packing, no copies of blocks), writes the output and
//! the input cotangent's blocks in place, and skips the causal mask's zero half: the
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
            for i in 0..RB {
                acc[i][j] = _mm256_fmadd_ps(av[i], bv, acc[i][j]);
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
    assert!(src.len() == tt * tt && dst.len() == tt * tt && tt % 8 == 0);
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

/// Whether the fast path applies: AVX2 and FMA, and `T` a multiple of 8.
pub(super) fn applies(g: &AttentionGeometry) -> bool {
    g.time % 8 == 0 && crate::kernels::cpu::has_avx2_fma()
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

/// The forward pass of pair `pair`: its output block written into `out` (column-major,
/// `rows` rows, `heads · key_size` columns), its transposed probabilities into `pt`
/// (`T × T`, masked entries zero); `p` is scratch of `T²`.
///
/// # Safety
/// [`applies`]; `xs` is the `qkv` matrix of `g`; `out` valid for writes of the pair's
/// block.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn forward_pair(
    g: &AttentionGeometry,
    xs: &[f32],
    pair: usize,
    out: *mut f32,
    pt: &mut [f32],
    p: &mut [f32],
) {
    let (tt, d, rows) = (g.time, g.key_size, g.rows());
    assert!(xs.len() == rows * 3 * g.width() && pt.len() == tt * tt && p.len() == tt * tt);
    let (qo, ko, vo, base) = offsets(g, pair);
    let x = xs.as_ptr();
    let sqrt_d = (d as f32).sqrt();
    // Lᵀ = K Qᵀ: column t holds query t's logits over the keys s ≤ t.
    upper_columns(
        &Product {
            a: x.add(ko),
            lda: rows,
            b: x.add(qo),
            bp: rows,
            bj: 1,
            c: pt.as_mut_ptr(),
            ldc: tt,
            n: tt,
        },
        tt,
        d,
    );
    for t in 0..tt {
        let col = &mut pt[t * tt..(t + 1) * tt];
        let (live, masked) = col.split_at_mut(t + 1);
        masked.iter_mut().for_each(|v| *v = 0.0);
        live.iter_mut().for_each(|v| *v /= sqrt_d);
        let m = live.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        live.iter_mut().for_each(|v| *v = exp_f32(*v - m));
        let sum = live.iter().fold(0.0f32, |s, &v| s + v);
        live.iter_mut().for_each(|v| *v /= sum);
    }
    transpose_square(pt, p, tt);
    // O = P V; row block rb (queries t < 8(rb + 1)) needs keys s ≤ t only.
    let h = pair % g.heads;
    band(
        &Product {
            a: p.as_ptr(),
            lda: tt,
            b: x.add(vo),
            bp: 1,
            bj: rows,
            c: out.add(h * d * rows + base),
            ldc: rows,
            n: d,
        },
        (0, tt / 8),
        (0, d),
        |_, hi| (0, 8 * hi),
    );
}

/// The reverse pass of pair `pair` given its transposed probabilities `pt`: the blocks
/// `dQ`, `dK`, `dV` written into `dx` (column-major like `qkv`); `e`, `el` scratch of
/// `T²`.
///
/// # Safety
/// [`applies`]; `xs` is the `qkv` matrix of `g`, `gs` the output cotangent; `dx` valid
/// for writes of the pair's blocks.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn reverse_pair(
    g: &AttentionGeometry,
    xs: &[f32],
    gs: &[f32],
    pair: usize,
    pt: &[f32],
    dx: *mut f32,
    e: &mut [f32],
    el: &mut [f32],
) {
    let (tt, d, rows) = (g.time, g.key_size, g.rows());
    assert!(xs.len() == rows * 3 * g.width() && gs.len() == rows * g.width());
    assert!(pt.len() == tt * tt && e.len() == tt * tt && el.len() == tt * tt);
    let (qo, ko, vo, base) = offsets(g, pair);
    let h = pair % g.heads;
    let (x, gp) = (xs.as_ptr(), gs.as_ptr());
    let go = h * d * rows + base;
    let sqrt_d = (d as f32).sqrt();
    // dV = Pᵀ G: row block of keys s ≥ 8·rb needs queries t ≥ s only.
    band(
        &Product {
            a: pt.as_ptr(),
            lda: tt,
            b: gp.add(go),
            bp: 1,
            bj: rows,
            c: dx.add(vo),
            ldc: rows,
            n: d,
        },
        (0, tt / 8),
        (0, d),
        |lo, _| (8 * lo, tt),
    );
    // dPᵀ = V Gᵀ (rows s ≤ t of column t), then dLᵀ through the softmax and the scale.
    upper_columns(
        &Product {
            a: x.add(vo),
            lda: rows,
            b: gp.add(go),
            bp: rows,
            bj: 1,
            c: e.as_mut_ptr(),
            ldc: tt,
            n: tt,
        },
        tt,
        d,
    );
    softmax_jacobian_t(pt, e, tt, Some(sqrt_d));
    transpose_square(e, el, tt);
    // dQ = dL K: queries t < 8(rb + 1) need keys s ≤ t only.
    band(
        &Product {
            a: el.as_ptr(),
            lda: tt,
            b: x.add(ko),
            bp: 1,
            bj: rows,
            c: dx.add(qo),
            ldc: rows,
            n: d,
        },
        (0, tt / 8),
        (0, d),
        |_, hi| (0, 8 * hi),
    );
    // dK = dLᵀ Q: keys s ≥ 8·rb need queries t ≥ s only.
    band(
        &Product {
            a: e.as_ptr(),
            lda: tt,
            b: x.add(qo),
            bp: 1,
            bj: rows,
            c: dx.add(ko),
            ldc: rows,
            n: d,
        },
        (0, tt / 8),
        (0, d),
        |lo, _| (8 * lo, tt),
    );
}
