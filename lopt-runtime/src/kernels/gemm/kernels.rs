//! The kernels. `S` is the vector type, `S1` the one-lane type with the same
//! arithmetic: the broadcast kernel (with its panel packing) and the dot kernel, and
//! `drive`, which walks `C` in blocks and picks between them.

use super::*;

/// The largest vector block of `C` a kernel keeps (elements), for partial stores.
pub(super) const MAX_BLOCK: usize = 64;
/// The widest broadcast block (columns) a variant may use: `bcast_row_block`'s
/// remainder arms go up to one less.
pub(super) const MAX_NR: usize = 12;
/// The most lanes of any vector type.
pub(super) const MAX_LANES: usize = 16;

/// Stores the `NV` vectors `s` into the column of `C` at `c`, skipping its first `skip`
/// elements (already written by an earlier, overlapping block).
#[inline(always)]
pub(super) unsafe fn store_col<S: Simd, const NV: usize>(c: *mut S::E, s: [S; NV], skip: usize) {
    if skip == 0 {
        for (v, &x) in s.iter().enumerate() {
            x.store(c.add(v * S::LANES));
        }
    } else {
        let mut tmp = [<S::E as Elem>::ZERO; MAX_BLOCK];
        for (v, &x) in s.iter().enumerate() {
            x.store(tmp.as_mut_ptr().add(v * S::LANES));
        }
        for (r, &v) in tmp.iter().enumerate().take(NV * S::LANES).skip(skip) {
            c.add(r).write(v);
        }
    }
}

/// Broadcast kernel: `C[0..NV·LANES, 0..NR] = C0 + A[0..NV·LANES, :] · B[:, 0..NR]`, each
/// element one multiply-add chain in order of `k`, starting from `C`'s value when
/// `from_c` (else from zero), then `bias[j]` added to column `j` when `bias` is not null
/// (one rounding: `1·bias + s` fused is `bias + s`). `A` has contiguous columns `lda`
/// apart, `C` columns are `ldc` apart.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn bcast<S: Simd, const NV: usize, const NR: usize>(
    k: usize,
    a: *const S::E,
    lda: usize,
    b: *const S::E,
    rsb: usize,
    csb: usize,
    c: *mut S::E,
    ldc: usize,
    from_c: bool,
    skip: usize,
    bias: *const S::E,
) {
    let mut s = [[S::zero(); NV]; NR];
    if from_c {
        for (j, sj) in s.iter_mut().enumerate() {
            for (v, x) in sj.iter_mut().enumerate() {
                // Rows below `skip` belong to an earlier block, which wrote them.
                *x = S::load(c.add(j * ldc + v * S::LANES));
            }
        }
    }
    for p in 0..k {
        let ap = a.add(p * lda);
        let av: [S; NV] = build(S::zero(), |v| S::load(ap.add(v * S::LANES)));
        let bp = b.add(p * rsb);
        for (j, sj) in s.iter_mut().enumerate() {
            let bj = S::splat(bp.add(j * csb));
            for v in 0..NV {
                sj[v] = S::madd(av[v], bj, sj[v]);
            }
        }
    }
    if !bias.is_null() {
        // While the block is in registers: no pass over `C` for the bias.
        let one = <S::E as Elem>::ONE;
        let one = S::splat(&one);
        for (j, sj) in s.iter_mut().enumerate() {
            let bj = S::splat(bias.add(j));
            for x in sj.iter_mut() {
                *x = S::madd(one, bj, *x);
            }
        }
    }
    for (j, &sj) in s.iter().enumerate() {
        store_col::<S, NV>(c.add(j * ldc), sj, skip);
    }
}

/// Where a row block of `A` is read: `a` with columns `lda` apart.
#[derive(Clone, Copy)]
pub(super) struct Panel<E> {
    a: *const E,
    lda: usize,
}

/// The broadcast kernel over all column blocks for rows `i..i+NV·LANES` of `C` and the
/// `k` range `p0..p0+kc` (`A` rows already at `panel`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn bcast_row_block<S: Simd, const NV: usize, const NR: usize>(
    j: &Job<S::E>,
    panel: Panel<S::E>,
    p0: usize,
    kc: usize,
    i: usize,
    from_c: bool,
    skip: usize,
) {
    let Panel { a, lda } = panel;
    let c = j.c.add(i);
    let ldc = j.ldc;
    // The bias goes in with the last chunk of `k`, when the sums are complete.
    let bias = if p0 + kc == j.k {
        j.bias
    } else {
        std::ptr::null()
    };
    let bias_at = |col: usize| {
        if bias.is_null() {
            bias
        } else {
            bias.add(col)
        }
    };
    // Full blocks first, in a loop of their own (the stride of packed blocks a constant),
    // then the last columns ([`block_width`]).
    let mut col = 0;
    let full = j.n - tail_width::<NR>(j.n);
    if j.bp.is_null() {
        let b0 = j.b.add(p0 * j.rsb);
        let (rsb, csb) = (j.rsb, j.csb);
        while col < full {
            let (b, c) = (b0.add(col * csb), c.add(col * ldc));
            bcast::<S, NV, NR>(kc, a, lda, b, rsb, csb, c, ldc, from_c, skip, bias_at(col));
            col += NR;
        }
    } else {
        // Packed (`pack_b`): block `col` holds rows of its width from `j.bp + col·k`.
        while col < full {
            let (b, c) = (j.bp.add(col * j.k + p0 * NR), c.add(col * ldc));
            bcast::<S, NV, NR>(kc, a, lda, b, NR, 1, c, ldc, from_c, skip, bias_at(col));
            col += NR;
        }
    }
    const { assert!(NR <= MAX_NR) };
    while col < j.n {
        let w = block_width::<NR>(j.n, col);
        let (b, rsb, csb) = if j.bp.is_null() {
            (j.b.add(p0 * j.rsb + col * j.csb), j.rsb, j.csb)
        } else {
            (j.bp.add(col * j.k + p0 * w), w, 1)
        };
        let (c, bias) = (c.add(col * ldc), bias_at(col));
        // `NR > x` is known at compile time: arms wider than this variant's block vanish.
        macro_rules! edge {
            ($($w:literal)*) => {
                match w {
                    w if w == NR => bcast::<S, NV, NR>(kc, a, lda, b, rsb, csb, c, ldc, from_c, skip, bias),
                    $($w if NR > $w => bcast::<S, NV, $w>(kc, a, lda, b, rsb, csb, c, ldc, from_c, skip, bias),)*
                    _ => unreachable!(),
                }
            };
        }
        edge!(1 2 3 4 5 6 7 8 9 10 11);
        col += w;
    }
}

/// The columns of an `n`-column `C` after its leading blocks of `NR` ([`block_width`]):
/// none when `NR` divides `n`, `n` itself below `NR`, else `NR` plus the remainder.
#[inline(always)]
pub(super) fn tail_width<const NR: usize>(n: usize) -> usize {
    match n % NR {
        0 => 0,
        r if n > NR => NR + r,
        _ => n,
    }
}

/// The width of the column block of `C` that starts at `col` (of `n`) for a kernel `NR`
/// wide: `NR` while at least two full blocks are left (or exactly one), the last
/// `NR < r < 2·NR` columns as two blocks of `⌈r/2⌉` and `⌊r/2⌋` (the 4 × 6 kernel's
/// `n = 128` ends in 4 + 4 rather than 6 + 2: a 2-column block runs at a third of the
/// rate), fewer than `NR` as one. Packing (`with_packed_b`) and the kernels walk the same
/// blocks.
#[inline(always)]
pub(crate) fn block_width<const NR: usize>(n: usize, col: usize) -> usize {
    let left = n - col;
    if left >= 2 * NR || left == NR {
        NR
    } else if left > NR {
        left.div_ceil(2)
    } else {
        left
    }
}

/// Below this many columns of `C`, a product with a transposed `A` takes dot products
/// rather than packing `A`.
pub(super) const PACK_MIN_N: usize = 4;

/// Bytes of the stack buffer a transposed panel of `A` is packed into, and so of a row
/// block's chunk of `k`: 32 KB, a 64-row panel 128 long, in the 48 KB L1 of the
/// AVX-512 Xeon (16 KB, chunks of 64, measured 2-5% slower on the transformer's
/// products; 64 KB no faster).
pub(super) const PACK_BYTES: usize = 32 * 1024;

/// A 64-byte aligned buffer (aligned loads of the packed panel never split a line).
#[repr(C, align(64))]
pub(super) struct PackBuf([u8; PACK_BYTES]);

/// Copies rows `i..i+rows` of the row-contiguous `A` (rows `j.rsa` apart), columns
/// `p0..p0+kc`, into `dst` as a column-major `rows x kc` panel, by transposed tiles.
#[inline(always)]
pub(super) unsafe fn pack_rows<S: Simd>(
    j: &Job<S::E>,
    i: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    dst: *mut S::E,
) {
    let t = S::TILE;
    let src = j.a.add(i * j.rsa + p0);
    let full = kc - kc % t;
    for r0 in (0..rows).step_by(t) {
        let (s, d) = (src.add(r0 * j.rsa), dst.add(r0));
        let mut q = 0;
        while q < full {
            S::transpose_tile(s.add(q), j.rsa, d.add(q * rows), rows);
            q += t;
        }
        for q in full..kc {
            for r in 0..t {
                *d.add(q * rows + r) = *s.add(r * j.rsa + q);
            }
        }
    }
}

/// Whether column-contiguous `A` with columns `csa` elements apart is better copied than
/// read in place against `n` columns of `B`: when the stride is a multiple of two cache
/// lines, a row block's columns fall into at most half of L1's 64 sets (a stride of a
/// multiple of 4 KB, e.g. 2048 `f32` rows, into one set: 8 lines for a panel of hundreds),
/// so the panel does not stay in L1 across the column blocks that reread it (measured: a
/// 2048 × 128 by 128 × 256 product at 41% of the FMA peak in place, 85% copied). The copy
/// (one pass over the panel per row block) pays from a few column blocks on.
#[inline(always)]
fn same_sets<E>(csa: usize, n: usize) -> bool {
    n >= 16 && (csa * std::mem::size_of::<E>()).is_multiple_of(128)
}

/// The length of the chunks of `k` for row blocks of `rows`: equal (at most a packed
/// panel's), e.g. 3 x 192 rather than 256 + 256 + 64 for k = 576.
#[inline(always)]
pub(super) fn chunk_len<E>(k: usize, rows: usize) -> usize {
    let kc_max = (PACK_BYTES / std::mem::size_of::<E>() / rows).max(1);
    k.div_ceil(k.div_ceil(kc_max))
}

/// One row block of `C` (`NV` vectors tall, at row `i`), chunk by chunk of `k` ([`row_chunk`]);
/// a chunk after the first continues each chain from the `C` the previous one stored, so
/// chunking does not change a single rounding.
#[inline(always)]
pub(super) unsafe fn row_block<S: Simd, const NV: usize, const NR: usize>(
    j: &Job<S::E>,
    buf: *mut S::E,
    i: usize,
    skip: usize,
) {
    let kc_max = chunk_len::<S::E>(j.k, NV * S::LANES);
    let mut p0 = 0;
    while p0 < j.k {
        let kc = kc_max.min(j.k - p0);
        row_chunk::<S, NV, NR>(j, buf, i, skip, p0, kc);
        p0 += kc;
    }
}

/// Rows `i..i + NV·LANES` of `C` over `k`'s chunk `p0..p0 + kc` (continuing from `C`
/// after the first chunk): `A` read in place when it has contiguous columns (copied when
/// their stride maps them into few cache sets, see [`same_sets`]), else packed
/// (transposed), so that the panel's rows stay in L1 across the column blocks.
#[inline(always)]
pub(super) unsafe fn row_chunk<S: Simd, const NV: usize, const NR: usize>(
    j: &Job<S::E>,
    buf: *mut S::E,
    i: usize,
    skip: usize,
    p0: usize,
    kc: usize,
) {
    let rows = NV * S::LANES;
    let panel = if j.rsa == 1 && !same_sets::<S::E>(j.csa, j.n) {
        Panel {
            a: j.a.add(i + p0 * j.csa),
            lda: j.csa,
        }
    } else {
        if j.rsa == 1 {
            // Columns whose stride lands them in few L1 sets: copied next to each other.
            for q in 0..kc {
                let src = j.a.add(i + (p0 + q) * j.csa);
                std::ptr::copy_nonoverlapping(src, buf.add(q * rows), rows);
            }
        } else {
            pack_rows::<S>(j, i, rows, p0, kc, buf);
        }
        Panel { a: buf, lda: rows }
    };
    bcast_row_block::<S, NV, NR>(j, panel, p0, kc, i, j.acc || p0 > 0, skip);
}

/// Whether `B` is worth packing (`pack_b`) for an `m`-row product with `n` columns,
/// `rows` a row block: when every block of `NR` columns of it is read by several row
/// blocks. Each block's broadcasts then come from one sequential stream instead of `NR`
/// columns `k` apart (column-major `B`) or a row `n` apart per step of `k` (`Bᵀ`),
/// which leaves the kernel waiting on L2. Packing copies `k·n` elements once.
#[inline(always)]
pub(super) fn pack_b_pays(m: usize, n: usize, rows: usize, nr: usize) -> bool {
    m >= PACK_B_MIN_ROW_BLOCKS * rows && n >= 2 * nr
}

/// Row blocks from which `B` is packed (each packed element is then read by at least
/// this many blocks: the copy is a small part of the product).
pub(super) const PACK_B_MIN_ROW_BLOCKS: usize = 8;

/// A 64-byte line of the packed-`B` buffer (aligned, so every block starts on a line).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub(super) struct Line([u8; 64]);

thread_local! {
    /// This thread's packed-`B` buffer, kept between products (a fresh 256 KB allocation
    /// each time would fault its pages in again).
    static PACKED_B: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `j` with `B` packed: its column blocks of `NR` (the last one narrower,
/// `w` columns) one after another, block `col` at `col·k`, each `k` rows of `w`
/// consecutive elements. The kernels read the same values in the same order, so the
/// results are those of the unpacked product bit for bit.
#[inline(always)]
pub(super) unsafe fn with_packed_b<S: Simd, const NR: usize>(
    j: &Job<S::E>,
    f: impl FnOnce(&Job<S::E>),
) {
    let len = j.k * j.n;
    let lines = (len * std::mem::size_of::<S::E>()).div_ceil(64);
    let fill = |buf: &mut Vec<Line>| {
        if buf.len() < lines {
            buf.resize(lines, Line([0; 64]));
        }
        let dst = buf.as_mut_ptr() as *mut S::E;
        let mut col = 0;
        while col < j.n {
            let w = block_width::<NR>(j.n, col);
            let d = dst.add(col * j.k);
            if j.rsb == 1 {
                // Column-major `B`: tiles of `TILE` columns by `TILE` rows transposed
                // (a scalar copy took 2% of the transformer's gradient), the edges
                // element by element.
                let t = S::TILE;
                let (kt, wt) = (j.k - j.k % t, w - w % t);
                for q0 in (0..wt).step_by(t) {
                    let s = j.b.add((col + q0) * j.csb);
                    for p0 in (0..kt).step_by(t) {
                        S::transpose_tile(s.add(p0), j.csb, d.add(p0 * w + q0), w);
                    }
                }
                for q in 0..w {
                    let s = j.b.add((col + q) * j.csb);
                    let p_from = if q < wt { kt } else { 0 };
                    for p in p_from..j.k {
                        *d.add(p * w + q) = *s.add(p);
                    }
                }
            } else if j.csb == 1 {
                // `Bᵀ` (a weight matrix read transposed): each row's `w` elements are
                // already together. A full block's length is a constant, so its copy is
                // a few vector moves; a copy of run-time length was a `memcpy` call per
                // row (2% of the transformer's step).
                if w == NR {
                    for p in 0..j.k {
                        let s = j.b.add(p * j.rsb + col);
                        std::ptr::copy_nonoverlapping(s, d.add(p * NR), NR);
                    }
                } else {
                    for p in 0..j.k {
                        let s = j.b.add(p * j.rsb + col);
                        std::ptr::copy_nonoverlapping(s, d.add(p * w), w);
                    }
                }
            } else {
                for p in 0..j.k {
                    let s = j.b.add(p * j.rsb + col * j.csb);
                    for q in 0..w {
                        *d.add(p * w + q) = *s.add(q * j.csb);
                    }
                }
            }
            col += w;
        }
        Job {
            bp: dst as *const S::E,
            ..*j
        }
    };
    // A product inside a product on the same thread does not happen (the kernels call
    // nothing that could run one); if it did, it gets its own buffer.
    let mut own = Vec::new();
    PACKED_B.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&fill(&mut buf)),
        Err(_) => f(&fill(&mut own)),
    })
}

/// `C (=|+=) A·B` by broadcast kernels, `A` column-contiguous (read in place) or
/// row-contiguous with at least `LANES` rows (packed): row blocks of `NV` vectors, then of
/// one, then one last vector block shifted back to end at row `m` (single rows when
/// `m < LANES`, only for column-contiguous `A`).
#[inline(always)]
pub(super) unsafe fn drive_bcast<S: Simd, S1: Simd<E = S::E>, const NV: usize, const NR: usize>(
    j: &Job<S::E>,
) {
    if j.bp.is_null() && pack_b_pays(j.m, j.n, NV * S::LANES, NR) {
        return with_packed_b::<S, NR>(j, |jp| drive_bcast::<S, S1, NV, NR>(jp));
    }
    let mut buf = std::mem::MaybeUninit::<PackBuf>::uninit();
    let buf = buf.as_mut_ptr() as *mut S::E;
    let (m, w) = (j.m, S::LANES);
    let kc_max = chunk_len::<S::E>(j.k, NV * w);
    if m >= NV * w && m <= K_OUTER_ROWS && j.k > kc_max {
        // Chunks of `k` outermost, the same row blocks in each (the blocks of one vector
        // take the tall blocks' chunks: chunking changes no rounding): each chunk of `B`
        // (`kc × n`) then comes from L2 for every row block, not from memory once per
        // block (the LSTM's `dwh = hᵀ·dz`, 128 × 1,984 × 512, reads a 4 MB `dz`).
        let mut p0 = 0;
        while p0 < j.k {
            let kc = kc_max.min(j.k - p0);
            let mut i = 0;
            while i + NV * w <= m {
                row_chunk::<S, NV, NR>(j, buf, i, 0, p0, kc);
                i += NV * w;
            }
            while i + w <= m {
                row_chunk::<S, 1, NR>(j, buf, i, 0, p0, kc);
                i += w;
            }
            if i < m {
                row_chunk::<S, 1, NR>(j, buf, m - w, i - (m - w), p0, kc);
            }
            p0 += kc;
        }
        return;
    }
    let mut i = 0;
    while i + NV * w <= m {
        row_block::<S, NV, NR>(j, buf, i, 0);
        i += NV * w;
    }
    while i + w <= m {
        row_block::<S, 1, NR>(j, buf, i, 0);
        i += w;
    }
    if i < m {
        if m >= w {
            row_block::<S, 1, NR>(j, buf, m - w, i - (m - w));
        } else {
            debug_assert_eq!(j.rsa, 1);
            for r in i..m {
                let panel = Panel {
                    a: j.a.add(r),
                    lda: j.csa,
                };
                bcast_row_block::<S1, 1, NR>(j, panel, 0, j.k, r, j.acc, 0);
            }
        }
    }
}

/// Dot kernel: the `MI x NJ` dot products of rows `a[i]` and columns `b[j]` (both
/// contiguous, length `k`).
#[inline(always)]
pub(super) unsafe fn dot<S: Simd, S1: Simd<E = S::E>, const MI: usize, const NJ: usize>(
    k: usize,
    a: [*const S::E; MI],
    b: [*const S::E; NJ],
) -> [[S::E; NJ]; MI] {
    let w = S::LANES;
    let mut s = [[S::zero(); NJ]; MI];
    let kv = k - k % w;
    let mut p = 0;
    while p < kv {
        let bv: [S; NJ] = build(S::zero(), |q| S::load(b[q].add(p)));
        for (si, ai) in s.iter_mut().zip(&a) {
            let av = S::load(ai.add(p));
            for (sij, &bj) in si.iter_mut().zip(&bv) {
                *sij = S::madd(av, bj, *sij);
            }
        }
        p += w;
    }
    let mut out = [[<S::E as Elem>::ZERO; NJ]; MI];
    if w <= MAX_LANES && MI * NJ >= w / 2 {
        // LANES accumulators at a time (column-major order within the block; the last
        // group padded with zeros) folded into one vector of their sums: a transposing
        // reduction, far cheaper than one horizontal sum each.
        let mut tmp = [<S::E as Elem>::ZERO; MAX_LANES];
        for g in 0..(MI * NJ).div_ceil(w) {
            let x: [S; MAX_LANES] = build(S::zero(), |l| {
                let q = g * w + l;
                if l < w && q < MI * NJ {
                    s[q % MI][q / MI]
                } else {
                    S::zero()
                }
            });
            S::fold(&x[..w]).store(tmp.as_mut_ptr());
            for (l, &v) in tmp.iter().enumerate().take(w) {
                let q = g * w + l;
                if q < MI * NJ {
                    out[q % MI][q / MI] = v;
                }
            }
        }
    } else {
        for (o, si) in out.iter_mut().zip(&s) {
            for (o, sij) in o.iter_mut().zip(si) {
                *o = sij.hsum();
            }
        }
    }
    if kv < k {
        for (o, ai) in out.iter_mut().zip(&a) {
            for (o, bj) in o.iter_mut().zip(&b) {
                let mut t = S1::splat(o);
                for q in kv..k {
                    t = S1::madd(S1::load(ai.add(q)), S1::load(bj.add(q)), t);
                }
                t.store(o);
            }
        }
    }
    out
}

/// The dot kernel for rows `i..i+mi` and columns `col..col+NJ` of `C` (`mi <= MI`; the
/// row pointers beyond `mi` repeat the last row), `B` columns `ldb` apart.
#[inline(always)]
pub(super) unsafe fn dot_block<S: Simd, S1: Simd<E = S::E>, const MI: usize, const NJ: usize>(
    j: &Job<S::E>,
    a_rows: [*const S::E; MI],
    mi: usize,
    i: usize,
    col: usize,
    ldb: usize,
) {
    let b_cols: [*const S::E; NJ] = build(j.b, |q| j.b.add((col + q) * ldb));
    let out = dot::<S, S1, MI, NJ>(j.k, a_rows, b_cols);
    for jj in 0..NJ {
        let c = j.c.add(i + (col + jj) * j.ldc);
        for (q, oq) in out.iter().take(mi).enumerate() {
            let p = c.add(q);
            p.write(if j.acc { *p + oq[jj] } else { oq[jj] });
        }
    }
}

/// `C (+)= A·B` with `A` row-contiguous (rows `lda` apart) and `B` column-contiguous
/// (columns `ldb` apart), in `MI x NJ` blocks; the last row block repeats its last row
/// (stored once), the last column block is narrower.
#[inline(always)]
pub(super) unsafe fn drive_dot<S: Simd, S1: Simd<E = S::E>, const MI: usize, const NJ: usize>(
    j: &Job<S::E>,
    lda: usize,
    ldb: usize,
) {
    let (m, n) = (j.m, j.n);
    let mut i = 0;
    while i < m {
        let mi = MI.min(m - i);
        let a_rows: [*const S::E; MI] = build(j.a, |q| j.a.add((i + q.min(mi - 1)) * lda));
        let mut col = 0;
        while col + NJ <= n {
            dot_block::<S, S1, MI, NJ>(j, a_rows, mi, i, col, ldb);
            col += NJ;
        }
        if col < n {
            macro_rules! edge {
                ($($w:literal)*) => {
                    match n - col {
                        $($w if NJ > $w => dot_block::<S, S1, MI, $w>(j, a_rows, mi, i, col, ldb),)*
                        _ => unreachable!(),
                    }
                };
            }
            edge!(1 2 3 4 5 6 7)
        }
        i += MI;
    }
}

/// Routes a product to a kernel by the operands' layout.
#[inline(always)]
pub(super) unsafe fn drive<
    S: Simd,
    S1: Simd<E = S::E>,
    const NV: usize,
    const NR: usize,
    const MI: usize,
    const NJ: usize,
>(
    j: &Job<S::E>,
) {
    // A single row against column-contiguous B, or a transpose too narrow to pay for
    // packing: dot products along k. Otherwise broadcast kernels, with A read in place
    // or packed.
    let dot_ok = j.csa == 1 && (j.rsb == 1 || j.k == 1);
    let pack_ok = j.rsa != 1 && j.csa == 1 && j.m >= S::LANES && j.n >= PACK_MIN_N;
    if (j.rsa == 1 || pack_ok) && !(dot_ok && j.m == 1) {
        // The broadcast kernels add the bias themselves.
        return drive_bcast::<S, S1, NV, NR>(j);
    }
    let bias = j.bias;
    let j = &Job {
        bias: std::ptr::null(),
        ..*j
    };
    drive_other::<S, S1, MI, NJ>(j, dot_ok, pack_ok);
    add_bias(j.c, j.ldc, j.m, j.n, bias);
}

/// `C[:, col] += bias[col]` over the finished `m × n` product at `c` (columns `ldc`
/// apart): the routes other than the broadcast kernels', and the lanes' GEMM; nothing
/// when `bias` is null.
#[inline(always)]
pub(super) unsafe fn add_bias<E: Copy + std::ops::Add<Output = E>>(
    c: *mut E,
    ldc: usize,
    m: usize,
    n: usize,
    bias: *const E,
) {
    if bias.is_null() {
        return;
    }
    for col in 0..n {
        let (c, b) = (c.add(col * ldc), *bias.add(col));
        for r in 0..m {
            *c.add(r) = *c.add(r) + b;
        }
    }
}

/// [`drive`]'s routes other than the broadcast kernels: dot products, `Aᵀ·Bᵀ`, general
/// strides.
#[inline(always)]
unsafe fn drive_other<S: Simd, S1: Simd<E = S::E>, const MI: usize, const NJ: usize>(
    j: &Job<S::E>,
    dot_ok: bool,
    pack_ok: bool,
) {
    if dot_ok && ((j.rsa != 1 && !pack_ok) || j.m == 1) {
        drive_dot::<S, S1, MI, NJ>(j, j.rsa, j.csb);
    } else if j.csa == 1 {
        // Aᵀ·Bᵀ: copy B to column-major once, then dot products.
        let b: Vec<S::E> = (0..j.n)
            .flat_map(|c| (0..j.k).map(move |p| (c, p)))
            .map(|(c, p)| *j.b.add(p * j.rsb + c * j.csb))
            .collect();
        let jb = Job {
            b: b.as_ptr(),
            rsb: 1,
            csb: j.k,
            ..*j
        };
        drive_dot::<S, S1, MI, NJ>(&jb, j.rsa, j.k);
    } else {
        // Neither layout (general strides): one dot product at a time.
        for q in 0..j.n {
            for r in 0..j.m {
                let c = j.c.add(r + q * j.ldc);
                let mut s = if j.acc { S1::splat(c) } else { S1::zero() };
                for p in 0..j.k {
                    let (x, y) = (
                        j.a.add(r * j.rsa + p * j.csa),
                        j.b.add(p * j.rsb + q * j.csb),
                    );
                    s = S1::madd(S1::splat(x), S1::splat(y), s);
                }
                s.store(c);
            }
        }
    }
}
