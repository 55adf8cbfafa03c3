//! The two products of a convolution with few patch columns (`kh·kw·C_in` ≤ [`MAX_K`]:
//! the first layer of an image model, 1 or 3 input channels), `f32`, for one block of
//! patches: `Y = P·W` written straight into the output's channel planes, and the lane
//! partial sums of `dW = Pᵀ·G` read straight from the cotangent's planes; and, on
//! AVX-512, the block's patches themselves ([`avx512::im2col_short`]).
//!
//! With `K` = 9 or 27 a general GEMM spends its time packing and storing: each output
//! element is only `K` multiply-adds. Here the patches are read in place (column-major)
//! and every output is stored once, with no zeroing pass and no copy of `G`. The
//! output and the cotangent (3.2 MB each at Fashion-MNIST's first layer, more than L2)
//! are each passed over once, which is what these layers' rule costs.

use crate::kernels::cpu::{isa, Isa};

/// At most this many patch columns take these kernels.
pub(super) const MAX_K: usize = 32;

/// Rows (of `Y`) per step of [`forward_avx2`].
const R: usize = 32;
/// Output channels per step of [`forward_avx2`] and of [`kernel_grad_avx2`].
const O: usize = 4;
/// Lanes of the kernel gradient's partial sums: row `r` of a block adds into lane
/// `r mod L`.
pub(super) const L: usize = 16;
/// Patch columns per step of [`kernel_grad`].
const KT: usize = 3;
/// Rows per pass of [`kernel_grad`]'s tiles: the strip of `P` and the tile's channels
/// of `G` (`SUB · (K + 8)` elements, at most 40 KiB) stay in L1 across the tiles.
const SUB: usize = 256;

/// `dst[t] = row[base + stride·t]` for every `t < dst.len()`, zero where that position
/// falls outside the row (padding): one window column's patches along an output line.
pub(super) fn gather(row: &[f32], base: isize, stride: usize, dst: &mut [f32]) {
    for (t, v) in dst.iter_mut().enumerate() {
        let at = base + (stride * t) as isize;
        *v = usize::try_from(at)
            .ok()
            .and_then(|a| row.get(a))
            .copied()
            .unwrap_or(0.0);
    }
}

/// `out[o·ldo + r] = Σ_k p[k·rows + r]·w[k + o·kn]` for `r < rows`, `o < n` (`p`: a block
/// of `rows` patches, column-major; `w`: the `kn × n` kernel, column-major), on the
/// widest registers this CPU has.
///
/// # Safety
/// `out` is valid for writes at every `o·ldo + r`; the CPU has AVX2 and FMA.
pub(super) unsafe fn forward(
    p: &[f32],
    rows: usize,
    w: &[f32],
    n: usize,
    out: *mut f32,
    ldo: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512 {
        return avx512::forward(p, rows, w, n, out, ldo);
    }
    forward_avx2(p, rows, w, n, out, ldo)
}

/// Adds `p[k·rows + r]·g[o][r]` over the block's rows `r < rows` into
/// `lanes[(k·n + o)·L + r mod L]`, for `k < kn = lanes.len() / (n·L)`, `o < n = g.len()`
/// (`g[o]`: the block's rows of channel `o` of the cotangent), on the widest registers
/// this CPU has. The order of the additions depends on `rows` alone.
///
/// # Safety
/// The CPU has AVX2 and FMA.
pub(super) unsafe fn kernel_grad(p: &[f32], rows: usize, g: &[&[f32]], lanes: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512 {
        return avx512::kernel_grad(p, rows, g, lanes);
    }
    kernel_grad_avx2(p, rows, g, lanes)
}

/// [`forward`] on AVX2 registers (LLVM vectorizes the fixed-size arrays).
///
/// # Safety
/// `out` is valid for writes at every `o·ldo + r`; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2(p: &[f32], rows: usize, w: &[f32], n: usize, out: *mut f32, ldo: usize) {
    let kn = w.len() / n.max(1);
    debug_assert!(p.len() >= kn * rows && w.len() == kn * n);
    let mut r0 = 0;
    while r0 + R <= rows {
        let mut o0 = 0;
        while o0 + O <= n {
            let mut acc = [[0f32; R]; O];
            for k in 0..kn {
                let pv: &[f32; R] = p[k * rows + r0..][..R].try_into().expect("R rows");
                for (q, a) in acc.iter_mut().enumerate() {
                    let wq = w[k + (o0 + q) * kn];
                    for (a, &x) in a.iter_mut().zip(pv) {
                        *a = x.mul_add(wq, *a);
                    }
                }
            }
            for (q, a) in acc.iter().enumerate() {
                // SAFETY: rows r0..r0 + R of channel o0 + q (the contract).
                let dst = unsafe { out.add((o0 + q) * ldo + r0) };
                unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), dst, R) };
            }
            o0 += O;
        }
        for o in o0..n {
            let mut a = [0f32; R];
            for k in 0..kn {
                let pv = &p[k * rows + r0..][..R];
                let wo = w[k + o * kn];
                for (a, &x) in a.iter_mut().zip(pv) {
                    *a = x.mul_add(wo, *a);
                }
            }
            // SAFETY: as above.
            unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), out.add(o * ldo + r0), R) };
        }
        r0 += R;
    }
    // The last rows, fewer than R.
    for o in 0..n {
        for r in r0..rows {
            let mut a = 0f32;
            for k in 0..kn {
                a = p[k * rows + r].mul_add(w[k + o * kn], a);
            }
            // SAFETY: as above.
            unsafe { *out.add(o * ldo + r) = a };
        }
    }
}

/// [`kernel_grad`] on AVX2 registers (the same sums, in another order).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_grad_avx2(p: &[f32], rows: usize, g: &[&[f32]], lanes: &mut [f32]) {
    let n = g.len();
    let kn = lanes.len() / (n * L).max(1);
    debug_assert!(p.len() >= kn * rows && lanes.len() == kn * n * L);
    let whole = rows / L * L;
    let gcol = |o: usize| &g[o][..rows];
    let mut s0 = 0;
    while s0 < whole {
        let s1 = (s0 + SUB).min(whole);
        let mut o0 = 0;
        while o0 < n {
            let oc = O.min(n - o0);
            let mut k0 = 0;
            while k0 < kn {
                let kc = KT.min(kn - k0);
                if oc == O && kc == KT {
                    tile::<KT, O>(p, rows, &gcol, (k0, o0), (s0, s1), n, lanes);
                } else {
                    for k in k0..k0 + kc {
                        for o in o0..o0 + oc {
                            tile::<1, 1>(p, rows, &gcol, (k, o), (s0, s1), n, lanes);
                        }
                    }
                }
                k0 += kc;
            }
            o0 += oc;
        }
        s0 = s1;
    }
    for k in 0..kn {
        for o in 0..n {
            let (pk, go) = (&p[k * rows..(k + 1) * rows], gcol(o));
            let at = (k * n + o) * L;
            for r in whole..rows {
                let lane = &mut lanes[at + r % L];
                *lane = pk[r].mul_add(go[r], *lane);
            }
        }
    }
}

/// [`kernel_grad`]'s `A × B` tile of patch columns `k0..` and channels `o0..` over the
/// whole-`L` rows `s0..s1`, its partial sums held in registers.
#[inline(always)]
fn tile<'a, const A: usize, const B: usize>(
    p: &[f32],
    rows: usize,
    gcol: &impl Fn(usize) -> &'a [f32],
    (k0, o0): (usize, usize),
    (s0, s1): (usize, usize),
    n: usize,
    lanes: &mut [f32],
) {
    let mut acc = [[[0f32; L]; B]; A];
    for (a, row) in acc.iter_mut().enumerate() {
        for (b, v) in row.iter_mut().enumerate() {
            let at = ((k0 + a) * n + o0 + b) * L;
            v.copy_from_slice(&lanes[at..at + L]);
        }
    }
    let ps: [&[f32]; A] = std::array::from_fn(|a| &p[(k0 + a) * rows + s0..(k0 + a) * rows + s1]);
    let gs: [&[f32]; B] = std::array::from_fn(|b| &gcol(o0 + b)[s0..s1]);
    for r in (0..s1 - s0).step_by(L) {
        let pv: [&[f32; L]; A] = std::array::from_fn(|a| ps[a][r..r + L].try_into().expect("L"));
        let gv: [&[f32; L]; B] = std::array::from_fn(|b| gs[b][r..r + L].try_into().expect("L"));
        for (a, row) in acc.iter_mut().enumerate() {
            for (b, v) in row.iter_mut().enumerate() {
                for l in 0..L {
                    v[l] = pv[a][l].mul_add(gv[b][l], v[l]);
                }
            }
        }
    }
    for (a, row) in acc.iter().enumerate() {
        for (b, v) in row.iter().enumerate() {
            let at = ((k0 + a) * n + o0 + b) * L;
            lanes[at..at + L].copy_from_slice(v);
        }
    }
}

/// The same two kernels on AVX-512 registers (16 `f32`): the rows in strips of whole
/// registers, the last one masked.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::super::Conv2dGeometry;
    use super::{KT, L, SUB};

    /// Output channels per tile of [`kernel_grad`] (with [`KT`] patch columns: 24
    /// registers of partial sums, 11 loads for 24 multiply-adds).
    const OG: usize = 8;
    /// Output channels per step of [`forward`].
    const O: usize = 4;

    /// Registers of rows per strip of [`forward`].
    const V: usize = 4;

    /// The mask of the first `n` lanes (all of them from 16 up).
    #[inline(always)]
    fn first(n: usize) -> __mmask16 {
        if n >= 16 {
            !0
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// The lanes `e` of a register loaded from position `start` of a row of `width`
    /// elements that fall inside it (`0 ≤ start + e < width`).
    #[inline(always)]
    fn inside(start: isize, width: usize) -> __mmask16 {
        let lo = (-start).clamp(0, 16) as u32;
        let hi = (width as isize - start).clamp(0, 16) as u32;
        if hi <= lo {
            0
        } else {
            (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16
        }
    }

    /// [`Conv2dGeometry::im2col_thin`] when output lines are at most 16 wide at a
    /// horizontal stride of 1 or 2: each window element's run along a line is one
    /// register, loaded from the input row (stride 2: two registers and a permute that
    /// keeps every other element) with the positions outside the row masked off, which
    /// reads them as zeros and touches nothing there. The masks depend on the window
    /// column only, so they are made once.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(in crate::ad::conv) unsafe fn im2col_short(
        g: &Conv2dGeometry,
        x: &[f32],
        (l0, l1): (usize, usize),
        buf: &mut [f32],
    ) {
        let (ho, wo) = g.out_hw();
        let (pt, pl) = g.pads();
        let (sh, sw) = g.stride;
        let (rows, rows_in, chans, width) = ((l1 - l0) * wo, g.in_rows(), g.channels, g.width);
        assert!(wo <= 16 && (sw == 1 || sw == 2) && l1 <= g.batch * ho);
        assert!(x.len() == rows_in * chans && buf.len() >= g.patch_len() * rows);
        let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        // Window column j reads positions j − pl + sw·t of its row, t < wo.
        let masks: Vec<(isize, __mmask16, __mmask16)> = (0..g.kw)
            .map(|j| {
                let s = j as isize - pl as isize;
                (s, inside(s, width), inside(s + 16, width))
            })
            .collect();
        let (store, xp, bp) = (first(wo), x.as_ptr(), buf.as_mut_ptr());
        for l in l0..l1 {
            let (n, oh) = (l / ho, l % ho);
            let at = (l - l0) * wo;
            for i in 0..g.kh {
                let h = (oh * sh + i).wrapping_sub(pt);
                for c in 0..chans {
                    // A row of the padding (`h` wrapped below zero or past the image) is
                    // never read: no address is formed for it.
                    let row = if h < g.height {
                        xp.wrapping_add(c * rows_in + (n * g.height + h) * width)
                    } else {
                        xp
                    };
                    for (j, &(s, m0, m1)) in masks.iter().enumerate() {
                        let v = if h >= g.height {
                            _mm512_setzero_ps()
                        } else if sw == 1 {
                            _mm512_maskz_loadu_ps(m0, row.wrapping_offset(s))
                        } else {
                            let lo = _mm512_maskz_loadu_ps(m0, row.wrapping_offset(s));
                            let hi = _mm512_maskz_loadu_ps(m1, row.wrapping_offset(s + 16));
                            _mm512_permutex2var_ps(lo, idx, hi)
                        };
                        let d = ((i * g.kw + j) * chans + c) * rows + at;
                        _mm512_mask_storeu_ps(bp.add(d), store, v);
                    }
                }
            }
        }
    }

    /// [`super::forward`] (same contract; the CPU has AVX-512F).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(in crate::ad::conv) unsafe fn forward(
        p: &[f32],
        rows: usize,
        w: &[f32],
        n: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        let kn = w.len() / n.max(1);
        assert!(p.len() >= kn * rows && w.len() == kn * n);
        let mut r0 = 0;
        while r0 < rows {
            let left = rows - r0;
            if left >= V * 16 {
                strip::<V>(p, rows, r0, !0, w, (kn, n), out, ldo);
                r0 += V * 16;
            } else {
                strip::<1>(p, rows, r0, first(left), w, (kn, n), out, ldo);
                r0 += left.min(16);
            }
        }
    }

    /// Rows `r0..r0 + 16·R` of every channel (the last register's rows masked by `last`).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn strip<const R: usize>(
        p: &[f32],
        rows: usize,
        r0: usize,
        last: __mmask16,
        w: &[f32],
        (kn, n): (usize, usize),
        out: *mut f32,
        ldo: usize,
    ) {
        let mask = |v: usize| if v + 1 == R { last } else { !0 };
        let (pp, wp) = (p.as_ptr().add(r0), w.as_ptr());
        let mut o0 = 0;
        while o0 < n {
            let oc = if o0 + O <= n { O } else { 1 };
            let mut acc = [[_mm512_setzero_ps(); R]; O];
            for k in 0..kn {
                let pk = pp.add(k * rows);
                let mut pv = [_mm512_setzero_ps(); R];
                for (v, x) in pv.iter_mut().enumerate() {
                    *x = _mm512_maskz_loadu_ps(mask(v), pk.add(16 * v));
                }
                for (q, a) in acc.iter_mut().enumerate().take(oc) {
                    let wq = _mm512_set1_ps(*wp.add(k + (o0 + q) * kn));
                    for (a, x) in a.iter_mut().zip(&pv) {
                        *a = _mm512_fmadd_ps(*x, wq, *a);
                    }
                }
            }
            for (q, a) in acc.iter().enumerate().take(oc) {
                let dst = out.add((o0 + q) * ldo + r0);
                for (v, x) in a.iter().enumerate() {
                    _mm512_mask_storeu_ps(dst.add(16 * v), mask(v), *x);
                }
            }
            o0 += oc;
        }
    }

    /// [`super::kernel_grad`] (same contract; the CPU has AVX-512F).
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(in crate::ad::conv) unsafe fn kernel_grad(
        p: &[f32],
        rows: usize,
        g: &[&[f32]],
        lanes: &mut [f32],
    ) {
        let n = g.len();
        let kn = lanes.len() / (n * L).max(1);
        assert!(L == 16 && p.len() >= kn * rows && lanes.len() == kn * n * L);
        assert!(g.iter().all(|c| c.len() >= rows));
        let mut s0 = 0;
        while s0 < rows {
            let s1 = (s0 + SUB).min(rows);
            let mut o0 = 0;
            while o0 < n {
                let oc = OG.min(n - o0);
                let mut k0 = 0;
                while k0 < kn {
                    let kc = KT.min(kn - k0);
                    if oc == OG && kc == KT {
                        tile::<KT, OG>(p, rows, g, (k0, o0), (s0, s1), n, lanes);
                    } else {
                        for k in k0..k0 + kc {
                            for o in o0..o0 + oc {
                                tile::<1, 1>(p, rows, g, (k, o), (s0, s1), n, lanes);
                            }
                        }
                    }
                    k0 += kc;
                }
                o0 += oc;
            }
            s0 = s1;
        }
    }

    /// The `A × B` tile of patch columns `k0..` and channels `o0..` over rows `s0..s1`
    /// (`s0` a multiple of 16), its partial sums held in registers.
    #[inline(always)]
    unsafe fn tile<const A: usize, const B: usize>(
        p: &[f32],
        rows: usize,
        g: &[&[f32]],
        (k0, o0): (usize, usize),
        (s0, s1): (usize, usize),
        n: usize,
        lanes: &mut [f32],
    ) {
        let lp = lanes.as_mut_ptr();
        let at = |a: usize, b: usize| ((k0 + a) * n + o0 + b) * L;
        let mut acc = [[_mm512_setzero_ps(); B]; A];
        for (a, row) in acc.iter_mut().enumerate() {
            for (b, v) in row.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(lp.add(at(a, b)));
            }
        }
        let mut ps = [p.as_ptr(); A];
        for (a, s) in ps.iter_mut().enumerate() {
            *s = s.add((k0 + a) * rows);
        }
        let mut gs = [p.as_ptr(); B];
        for (b, s) in gs.iter_mut().enumerate() {
            *s = g[o0 + b].as_ptr();
        }
        let step = |acc: &mut [[__m512; B]; A], r: usize, m: __mmask16| {
            let mut pv = [_mm512_setzero_ps(); A];
            for (x, s) in pv.iter_mut().zip(&ps) {
                *x = _mm512_maskz_loadu_ps(m, s.add(r));
            }
            for (b, s) in gs.iter().enumerate() {
                let gv = _mm512_maskz_loadu_ps(m, s.add(r));
                for (row, x) in acc.iter_mut().zip(&pv) {
                    row[b] = _mm512_fmadd_ps(*x, gv, row[b]);
                }
            }
        };
        let whole = s0 + (s1 - s0) / 16 * 16;
        let mut r = s0;
        while r < whole {
            step(&mut acc, r, !0);
            r += 16;
        }
        if whole < s1 {
            step(&mut acc, whole, first(s1 - whole));
        }
        for (a, row) in acc.iter().enumerate() {
            for (b, v) in row.iter().enumerate() {
                _mm512_storeu_ps(lp.add(at(a, b)), *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    /// Both variants of both kernels (the AVX2 one, which the rule takes on CPUs without
    /// AVX-512, and the AVX-512 one where this CPU has it) against the products in f64,
    /// at row counts around the registers' and strips' sizes, channel counts around the
    /// tiles', and one to 32 patch columns; every output written (the buffer starts as
    /// NaN), the lane sums added to what they held. Nothing past a channel's `rows` is
    /// written: the rule's chunks share the output, and the rows after a block's are
    /// the next block's, maybe another thread's (its padding, 19 rows, stays NaN).
    /// Mutation: the AVX-512 `forward`'s last register stored unmasked (fails).
    #[test]
    fn kernels_are_the_products() {
        if !crate::kernels::cpu::has_avx2_fma() {
            return;
        }
        let avx512 = isa() == Isa::Avx512;
        let mut seed = 0;
        for rows in [1, 15, 16, 17, 31, 63, 64, 65, 300, 777] {
            for (kn, n) in [(1, 1), (9, 32), (27, 33), (32, 5), (4, 9)] {
                seed += 1;
                let p = Key::new(seed).normal_vec::<f32>(kn * rows);
                let w = Key::new(100 + seed).normal_vec::<f32>(kn * n);
                let gv = Key::new(200 + seed).normal_vec::<f32>(n * rows);
                let g: Vec<&[f32]> = gv.chunks_exact(rows).collect();
                let (ldo, mut want, mut mag) =
                    (rows + 19, vec![0f64; n * rows], vec![0f64; n * rows]);
                for o in 0..n {
                    for r in 0..rows {
                        for k in 0..kn {
                            let t = p[k * rows + r] as f64 * w[k + o * kn] as f64;
                            want[o * rows + r] += t;
                            mag[o * rows + r] += t.abs();
                        }
                    }
                }
                let start = Key::new(300 + seed).normal_vec::<f32>(kn * n * L);
                let mut want_dw = vec![0f64; kn * n];
                let mut mag_dw = vec![0f64; kn * n];
                for k in 0..kn {
                    for (o, go) in g.iter().enumerate() {
                        let e = k * n + o;
                        want_dw[e] = start[e * L..(e + 1) * L].iter().map(|&v| v as f64).sum();
                        mag_dw[e] = start[e * L..(e + 1) * L]
                            .iter()
                            .map(|&v| (v as f64).abs())
                            .sum();
                        for r in 0..rows {
                            let t = p[k * rows + r] as f64 * go[r] as f64;
                            want_dw[e] += t;
                            mag_dw[e] += t.abs();
                        }
                    }
                }
                for wide in [false, true] {
                    if wide && !avx512 {
                        continue;
                    }
                    let mut out = vec![f32::NAN; n * ldo];
                    let mut lanes = start.clone();
                    // SAFETY: out holds n columns of ldo ≥ rows; the CPU has AVX2 and FMA
                    // (checked above) and AVX-512F when `wide`.
                    unsafe {
                        #[cfg(target_arch = "x86_64")]
                        if wide {
                            avx512::forward(&p, rows, &w, n, out.as_mut_ptr(), ldo);
                            avx512::kernel_grad(&p, rows, &g, &mut lanes);
                        }
                        if !wide {
                            forward_avx2(&p, rows, &w, n, out.as_mut_ptr(), ldo);
                            kernel_grad_avx2(&p, rows, &g, &mut lanes);
                        }
                    }
                    for o in 0..n {
                        for r in 0..rows {
                            let (a, b) = (out[o * ldo + r] as f64, want[o * rows + r]);
                            assert!(
                                (a - b).abs() <= 1e-6 * (1.0 + mag[o * rows + r]),
                                "forward wide={wide} rows {rows} kn {kn} n {n} at ({r}, {o}): {a} vs {b}"
                            );
                        }
                        assert!(
                            out[o * ldo + rows..(o + 1) * ldo]
                                .iter()
                                .all(|v| v.is_nan()),
                            "forward wide={wide} rows {rows} kn {kn} n {n}: channel {o} \
                             written past its rows"
                        );
                    }
                    for (e, l) in lanes.chunks_exact(L).enumerate() {
                        let a: f64 = l.iter().map(|&v| v as f64).sum();
                        assert!(
                            (a - want_dw[e]).abs() <= 1e-5 * (1.0 + mag_dw[e]),
                            "kernel_grad wide={wide} rows {rows} kn {kn} n {n} at {e}: {a} vs {}",
                            want_dw[e]
                        );
                    }
                }
            }
        }
    }
}
