//! `out = b + x·W` for a few rows `x` (`[rows, din]` row-major) and a large row-major
//! weight matrix `W: [din, dout]`: the per-tensor LSTMs and read-out layers of the
//! learned optimizers (one row per tensor of the optimized tree, a weight matrix of up to
//! megabytes). A matrix product with so few rows is bound by reading `W`; this kernel
//! reads it once for up to [`ROW_GROUP`] rows, as sequential runs of its rows.
//!
//! Every output is one multiply-add chain in the order of `i`, starting from `b[j]`:
//! `(((b_j + x_0·w_0j) + x_1·w_1j) + …)`. For `f32` on a CPU with AVX2 and FMA each step
//! is one fused multiply-add (vector or scalar, the same rounding), elsewhere a multiply
//! and an add (as [`parts::linear`](crate::learned_optimizers) does). The result does not
//! depend on the number of rows, on `dout`'s remainder of the vector width, or on the
//! blocking.

use std::any::TypeId;

use crate::kernels::SharedMut;
use crate::scalar::Real;

/// Rows sharing one pass over `W`.
pub(crate) const ROW_GROUP: usize = 4;
/// From this many weights (128 MiB of `f32`) two threads share the columns. Waking a
/// sleeping worker costs 45–55 µs on the project's virtual machines, so a split offered
/// only when the product starts loses at a few megabytes; the released VeLO instead wakes
/// its worker at the start of the update and shares its LSTM's column blocks through
/// [`helper`](crate::kernels::helper).
const SPLIT: usize = 1 << 25;

/// `out[r·dout + j] = b[j] + Σ_i x[r·din + i]·w[i·dout + j]` for `r < rows` (see the
/// module docs for the order of the sums).
///
/// # Panics
/// When the lengths disagree: `x.len() != rows·din`, `w.len() != din·dout`,
/// `out.len() != rows·dout` with `dout = b.len()`.
pub(crate) fn small_rows_product<S: Real>(
    x: &[S],
    rows: usize,
    din: usize,
    w: &[S],
    b: &[S],
    out: &mut [S],
) {
    let bias = Bias::Shared(b);
    product_on(
        crate::kernels::cpu::isa(),
        SPLIT,
        x,
        rows,
        din,
        w,
        bias,
        out,
    )
}

/// [`small_rows_product`] with a start per row: `out[r·dout + j] = start[r·dout + j] +
/// Σ_i x[r·din + i]·w[i·dout + j]`, each output's chain continuing from its own start. A
/// product over concatenated inputs `[y, x]` (weights `[W_y; W]`) is this one started
/// from the product over `y`, bit for bit.
///
/// # Panics
/// When the lengths disagree: `x.len() != rows·din`, `start.len() != rows·dout`,
/// `w.len() != din·dout`, `out.len() != rows·dout`.
pub(crate) fn small_rows_product_from<S: Real>(
    x: &[S],
    rows: usize,
    din: usize,
    w: &[S],
    start: &[S],
    out: &mut [S],
) {
    if rows == 0 {
        return;
    }
    let bias = Bias::PerRow(start, start.len() / rows);
    product_on(
        crate::kernels::cpu::isa(),
        SPLIT,
        x,
        rows,
        din,
        w,
        bias,
        out,
    )
}

/// Where each output's chain starts: one bias for every row, or a start per row
/// (`[rows, dout]`, rows `dout` apart).
#[derive(Clone, Copy)]
enum Bias<'a, S> {
    Shared(&'a [S]),
    PerRow(&'a [S], usize),
}

impl<'a, S> Bias<'a, S> {
    /// Output width.
    fn dout(self) -> usize {
        match self {
            Bias::Shared(b) => b.len(),
            Bias::PerRow(_, d) => d,
        }
    }
    /// The values and the distance between the rows' starts (0: shared).
    fn parts(self) -> (&'a [S], usize) {
        match self {
            Bias::Shared(b) => (b, 0),
            Bias::PerRow(b, d) => (b, d),
        }
    }
}

/// [`small_rows_product`] with the kernels of `isa` (which this CPU supports) and two
/// threads from `split` weights, so that the tests check every variant the CPU can run
/// and the split at a small size.
// The product's operands plus the two choices.
#[allow(clippy::too_many_arguments)]
fn product_on<S: Real>(
    isa: crate::kernels::cpu::Isa,
    split: usize,
    x: &[S],
    rows: usize,
    din: usize,
    w: &[S],
    bias: Bias<S>,
    out: &mut [S],
) {
    use crate::kernels::cpu::Isa;
    let dout = bias.dout();
    let (b, b_stride) = bias.parts();
    assert!(
        x.len() == rows * din
            && w.len() == din * dout
            && out.len() == rows * dout
            && b.len() == if b_stride == 0 { dout } else { rows * dout },
        "small_rows_product: x {} (rows {rows} × din {din}), w {}, bias {} (dout {dout}), out {}",
        x.len(),
        w.len(),
        b.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if TypeId::of::<S>() == TypeId::of::<f32>() && isa != Isa::Portable {
        debug_assert!(isa.supported());
        // SAFETY (both closures): the CPU has the variant's features (the caller's `isa`);
        // the lengths agree (checked above) and `out` holds `rows` rows of `ldo`.
        let product = |cols: std::ops::Range<usize>, out: *mut f32, ldo: usize| unsafe {
            let cast = |s: &[S]| std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len());
            let (x, w, b) = (cast(x), cast(w), cast(b));
            match isa {
                Isa::Avx512 => {
                    avx512::product(x, rows, din, w, (b, b_stride), dout, cols, out, ldo)
                }
                _ => avx2::product(x, rows, din, w, (b, b_stride), dout, cols, out, ldo),
            }
        };
        // SAFETY: `S` is `f32` (checked).
        let out =
            unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut f32, out.len()) };
        if din * dout >= split && dout >= 32 && rayon::current_num_threads() > 1 {
            // Two threads read half the columns of `W` each (bound by each core's
            // bandwidth from L3); every output is still one chain summed by one thread.
            let mid = (dout / 2).next_multiple_of(16);
            let width = dout - mid;
            let mut right = vec![0.0f32; rows * width];
            // Each side of the join writes its own columns (the right one its own buffer).
            let (left, right_ptr) = (SharedMut(out.as_mut_ptr()), SharedMut(right.as_mut_ptr()));
            rayon::join(
                || product(0..mid, left.ptr(), dout),
                || product(mid..dout, right_ptr.ptr(), width),
            );
            for (o, r) in out.chunks_exact_mut(dout).zip(right.chunks_exact(width)) {
                o[mid..].copy_from_slice(r);
            }
        } else {
            product(0..dout, out.as_mut_ptr(), dout);
        }
        return;
    }
    for r in 0..rows {
        let o = &mut out[r * dout..(r + 1) * dout];
        o.copy_from_slice(&b[r * b_stride..r * b_stride + dout]);
        for (i, &xi) in x[r * din..(r + 1) * din].iter().enumerate() {
            for (o, &wv) in o.iter_mut().zip(&w[i * dout..(i + 1) * dout]) {
                *o += xi * wv;
            }
        }
    }
}

/// The kernel for one vector width: `$v`-wide registers of `f32` under `$feat`, column
/// blocks of `$block` (a block's `ROW_GROUP` output rows stay in L1 beside the two rows
/// of `W` read per step; wider blocks read `W` in longer sequential runs, which its
/// prefetchers keep up with: 2048 columns with AVX-512, whose CPUs here have 48 KiB of
/// L1, 28.7 GB/s from L3 against 16 for 512).
macro_rules! group_kernel {
    ($module:ident, $feat:literal, $v:literal, $block:literal, $ty:ty,
     $set1:ident, $zero:ident, $load:ident, $store:ident, $fmadd:ident) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use super::ROW_GROUP;
            use std::arch::x86_64::*;
            use std::ops::Range;

            /// Columns per block.
            const COL_BLOCK: usize = $block;
            /// Elements between the rows of a block's outputs on the stack (a block plus
            /// 64 bytes).
            const STRIDE: usize = COL_BLOCK + 16;

            /// [`super::small_rows_product`] for `f32`, columns `cols` of `W` (`dout`
            /// wide) into `out` (rows `ldo` apart, column `cols.start` first), in groups
            /// of up to [`ROW_GROUP`] rows; row `r`'s chains start from `b[r·b_stride..]`
            /// (`b_stride` 0: one bias for all).
            ///
            /// # Safety
            /// The CPU has the module's features; the lengths agree as the caller
            /// checked; `out` is valid for `rows` rows of `cols.len()` elements, `ldo`
            /// apart.
            // The operands of one product, as the caller has them (a struct would only
            // rename).
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn product(
                x: &[f32],
                rows: usize,
                din: usize,
                w: &[f32],
                (b, b_stride): (&[f32], usize),
                dout: usize,
                cols: Range<usize>,
                out: *mut f32,
                ldo: usize,
            ) {
                let mut r0 = 0;
                while r0 < rows {
                    let m = (rows - r0).min(ROW_GROUP);
                    let xg = &x[r0 * din..(r0 + m) * din];
                    let bg = (&b[r0 * b_stride..], b_stride);
                    let og = out.add(r0 * ldo);
                    let c = cols.clone();
                    match m {
                        1 => group::<1>(xg, din, w, bg, dout, c, og, ldo),
                        2 => group::<2>(xg, din, w, bg, dout, c, og, ldo),
                        3 => group::<3>(xg, din, w, bg, dout, c, og, ldo),
                        _ => group::<4>(xg, din, w, bg, dout, c, og, ldo),
                    }
                    r0 += m;
                }
            }

            /// `M` rows: for each block of columns, the outputs start from `b` in a
            /// buffer on the stack and take two rows of `W` per step (each output's two
            /// terms added one after the other), then are copied out. The buffer's rows
            /// are [`STRIDE`] apart, not a multiple of 4 KiB as `out`'s rows may be (the
            /// released VeLO's 2048 outputs): there a row's loads wait on the stores of
            /// the row before (4K aliasing).
            #[target_feature(enable = $feat)]
            // Index loops walk the rows of several arrays (broadcasts, `x`, the buffer)
            // at once.
            #[allow(clippy::needless_range_loop)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn group<const M: usize>(
                x: &[f32],
                din: usize,
                w: &[f32],
                (b, b_stride): (&[f32], usize),
                dout: usize,
                cols: Range<usize>,
                out: *mut f32,
                ldo: usize,
            ) {
                debug_assert!(x.len() == M * din && w.len() == din * dout && cols.end <= dout);
                debug_assert!(b.len() >= (M - 1) * b_stride + dout);
                // On a cache line's boundary: a 64-byte vector of an unaligned buffer
                // spans two lines, and its loads and stores were most of the time.
                #[repr(align(64))]
                struct Buf([f32; ROW_GROUP * STRIDE]);
                let mut buf = Buf([0.0f32; ROW_GROUP * STRIDE]);
                let (xp, wp, op) = (x.as_ptr(), w.as_ptr(), buf.0.as_mut_ptr());
                let mut j0 = cols.start;
                while j0 < cols.end {
                    let j1 = (j0 + COL_BLOCK).min(cols.end);
                    let width = j1 - j0;
                    let vend = width / $v * $v;
                    for r in 0..M {
                        std::ptr::copy_nonoverlapping(
                            b.as_ptr().add(r * b_stride + j0),
                            op.add(r * STRIDE),
                            width,
                        );
                    }
                    let pairs = din / 2 * 2;
                    let mut i = 0;
                    while i < pairs {
                        let mut x0: [$ty; M] = [$zero(); M];
                        let mut x1: [$ty; M] = [$zero(); M];
                        for r in 0..M {
                            x0[r] = $set1(*xp.add(r * din + i));
                            x1[r] = $set1(*xp.add(r * din + i + 1));
                        }
                        let (w0, w1) = (wp.add(i * dout + j0), wp.add((i + 1) * dout + j0));
                        let mut j = 0;
                        while j < vend {
                            // Two KiB ahead in both rows: in the column blocks of
                            // `velo::ColumnBlocks` (rows of 128 columns, one after another)
                            // the hardware prefetcher alone read them 10% slower (a VeLO
                            // update on one thread 320 against 289 µs).
                            _mm_prefetch::<_MM_HINT_T0>(w0.wrapping_add(j + 512) as *const i8);
                            _mm_prefetch::<_MM_HINT_T0>(w1.wrapping_add(j + 512) as *const i8);
                            let a = $load(w0.add(j));
                            let c = $load(w1.add(j));
                            for r in 0..M {
                                let o = op.add(r * STRIDE + j);
                                let acc = $fmadd(x0[r], a, $load(o));
                                $store(o, $fmadd(x1[r], c, acc));
                            }
                            j += $v;
                        }
                        for j in vend..width {
                            let (a, c) = (*w0.add(j), *w1.add(j));
                            for r in 0..M {
                                let o = op.add(r * STRIDE + j);
                                let (u, v) = (*xp.add(r * din + i), *xp.add(r * din + i + 1));
                                *o = v.mul_add(c, u.mul_add(a, *o));
                            }
                        }
                        i += 2;
                    }
                    if pairs < din {
                        let i = pairs;
                        let mut x0: [$ty; M] = [$zero(); M];
                        for r in 0..M {
                            x0[r] = $set1(*xp.add(r * din + i));
                        }
                        let w0 = wp.add(i * dout + j0);
                        let mut j = 0;
                        while j < vend {
                            let a = $load(w0.add(j));
                            for r in 0..M {
                                let o = op.add(r * STRIDE + j);
                                $store(o, $fmadd(x0[r], a, $load(o)));
                            }
                            j += $v;
                        }
                        for j in vend..width {
                            for r in 0..M {
                                let o = op.add(r * STRIDE + j);
                                *o = (*xp.add(r * din + i)).mul_add(*w0.add(j), *o);
                            }
                        }
                    }
                    for r in 0..M {
                        let o = out.add(r * ldo + j0 - cols.start);
                        std::ptr::copy_nonoverlapping(op.add(r * STRIDE), o, width);
                    }
                    j0 = j1;
                }
            }
        }
    };
}

group_kernel!(
    avx2,
    "avx2,fma",
    8,
    512,
    __m256,
    _mm256_set1_ps,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps
);
group_kernel!(
    avx512,
    "avx512f,avx2,fma",
    16,
    2048,
    __m512,
    _mm512_set1_ps,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps
);

/// A layer of a per-element MLP on `nb` elements: `out[j·nb + e] = act(Σ_i x[i·nb + e]·
/// W(i, j) + b[j])` with `x` and `out` feature-major (a column of `nb` elements per
/// feature), `W(i, j) = w[i·ws.0 + j·ws.1]` (row-major `[din, dout]` is `(dout, 1)`,
/// nalgebra's column-major is `(1, din)`), `act` the identity or, with `relu`,
/// `0.max(z)` as [`Real::max`] (`0` for `z ≤ 0`, a NaN kept). Many rows and a small `W`
/// (the learned optimizers' per-parameter networks, 2 to 39 inputs and outputs): the
/// elements go in the vector lanes, `W` is read as broadcasts from L1, and a block of
/// outputs stays in registers over the whole sum, so no `[nb, dout]` product is stored
/// and read again for the bias and the activation.
///
/// Each output is one chain in the order of `i`: `x_0·w_0` (rounded), then a fused
/// multiply-add per input, then `+ b` (rounded), for every element however the elements
/// and outputs are blocked. Returns `false`, writing nothing, unless `S` is `f32` and the
/// CPU has AVX2 and FMA ([`Isa`](crate::kernels::cpu::Isa) not portable): the caller then
/// takes its general path.
///
/// # Panics
/// When the lengths disagree: `x.len() != din·nb`, `out.len() != dout·nb` (`dout =
/// b.len()`), or `W`'s last element past the end of `w`; or `din == 0`.
// The layer's operands as the callers hold them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn element_layer<S: Real>(
    x: &[S],
    nb: usize,
    din: usize,
    w: &[S],
    ws: (usize, usize),
    b: &[S],
    relu: bool,
    out: &mut [S],
) -> bool {
    element_layer_on(crate::kernels::cpu::isa(), x, nb, din, w, ws, b, relu, out)
}

/// [`element_layer`] with the kernels of `isa` (which this CPU supports), for the tests.
#[allow(clippy::too_many_arguments)]
fn element_layer_on<S: Real>(
    isa: crate::kernels::cpu::Isa,
    x: &[S],
    nb: usize,
    din: usize,
    w: &[S],
    ws: (usize, usize),
    b: &[S],
    relu: bool,
    out: &mut [S],
) -> bool {
    use crate::kernels::cpu::Isa;
    let dout = b.len();
    assert!(
        din > 0
            && x.len() == din * nb
            && out.len() == dout * nb
            && (dout == 0 || (din - 1) * ws.0 + (dout - 1) * ws.1 < w.len()),
        "element_layer: x {} ({din} × {nb}), w {} (strides {ws:?}), b {dout}, out {}",
        x.len(),
        w.len(),
        out.len()
    );
    #[cfg(target_arch = "x86_64")]
    if TypeId::of::<S>() == TypeId::of::<f32>() && isa != Isa::Portable {
        debug_assert!(isa.supported());
        // SAFETY: `S` is `f32` (checked); the CPU has the variant's features (the caller's
        // `isa`); the lengths agree (checked above).
        unsafe {
            let cast = |s: &[S]| std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len());
            let (x, w, b) = (cast(x), cast(w), cast(b));
            let out = std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut f32, out.len());
            let l = Layer {
                x,
                nb,
                din,
                w,
                ws,
                b,
                relu,
            };
            match isa {
                Isa::Avx512 => layer512::layer(&l, out),
                _ => layer256::layer(&l, out),
            }
        }
        return true;
    }
    let _ = (isa, relu);
    false
}

/// The operands of [`element_layer`] for `f32`.
#[cfg(target_arch = "x86_64")]
struct Layer<'a> {
    x: &'a [f32],
    nb: usize,
    din: usize,
    w: &'a [f32],
    ws: (usize, usize),
    b: &'a [f32],
    relu: bool,
}

#[cfg(target_arch = "x86_64")]
impl Layer<'_> {
    /// Output `j` of element `e`, one element at a time (the elements after the last
    /// whole vector): the chain the vector kernels compute, with the same roundings.
    #[inline]
    fn one(&self, e: usize, j: usize) -> f32 {
        let (x, w, nb, ws) = (self.x, self.w, self.nb, self.ws);
        let mut acc = x[e] * w[j * ws.1];
        for i in 1..self.din {
            acc = x[i * nb + e].mul_add(w[i * ws.0 + j * ws.1], acc);
        }
        let z = acc + self.b[j];
        if self.relu && 0.0 >= z {
            0.0
        } else {
            z
        }
    }
}

/// `0.max(z)` as [`Real::max`] per lane: `0` where `0 ≥ z` (ordered: a NaN stays).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn relu512(z: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    _mm512_mask_mov_ps(z, _mm512_cmp_ps_mask::<_CMP_GE_OQ>(zero, z), zero)
}

/// [`relu512`] for 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn relu256(z: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let zero = _mm256_setzero_ps();
    _mm256_blendv_ps(z, zero, _mm256_cmp_ps::<_CMP_GE_OQ>(zero, z))
}

/// The layer kernel for one vector width: `$v` elements a register, blocks of up to 8
/// outputs; `$tw` vectors of elements at once for blocks of 5 to 8 outputs and `$tn` for
/// blocks of up to 4 (enough independent chains to hide the FMA latency, few enough
/// accumulators for the registers: 32 with AVX-512, 16 with AVX2).
macro_rules! layer_kernel {
    ($module:ident, $feat:literal, $v:literal, $tw:literal, $tn:literal, $ty:ty,
     $set1:ident, $zero:ident, $load:ident, $store:ident, $fmadd:ident, $mul:ident,
     $add:ident, $relu:ident) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use super::Layer;
            use std::arch::x86_64::*;

            /// [`super::element_layer`] for `f32`.
            ///
            /// # Safety
            /// The CPU has the module's features; the lengths agree as
            /// [`super::element_layer`] checks.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn layer(l: &Layer<'_>, out: &mut [f32]) {
                let dout = l.b.len();
                let mut j0 = 0;
                while j0 < dout {
                    let m = (dout - j0).min(8);
                    match m {
                        1 => outputs::<1, $tn>(l, j0, out),
                        2 => outputs::<2, $tn>(l, j0, out),
                        3 => outputs::<3, $tn>(l, j0, out),
                        4 => outputs::<4, $tn>(l, j0, out),
                        5 => outputs::<5, $tw>(l, j0, out),
                        6 => outputs::<6, $tw>(l, j0, out),
                        7 => outputs::<7, $tw>(l, j0, out),
                        _ => outputs::<8, $tw>(l, j0, out),
                    }
                    j0 += m;
                }
            }

            /// Outputs `j0..j0 + M` of every element: `T` vectors of elements at a time,
            /// then single vectors, then single elements.
            #[target_feature(enable = $feat)]
            unsafe fn outputs<const M: usize, const T: usize>(
                l: &Layer<'_>,
                j0: usize,
                out: &mut [f32],
            ) {
                let nb = l.nb;
                let mut e = 0;
                while e + T * $v <= nb {
                    tile::<M, T>(l, j0, e, out);
                    e += T * $v;
                }
                while e + $v <= nb {
                    tile::<M, 1>(l, j0, e, out);
                    e += $v;
                }
                for e in e..nb {
                    for m in 0..M {
                        out[(j0 + m) * nb + e] = l.one(e, j0 + m);
                    }
                }
            }

            /// Outputs `j0..j0 + M` of the `T·$v` elements from `e`.
            #[target_feature(enable = $feat)]
            #[inline]
            // Index loops over the accumulators' two dimensions.
            #[allow(clippy::needless_range_loop)]
            unsafe fn tile<const M: usize, const T: usize>(
                l: &Layer<'_>,
                j0: usize,
                e: usize,
                out: &mut [f32],
            ) {
                let (xp, wp, nb) = (l.x.as_ptr().add(e), l.w.as_ptr(), l.nb);
                let (ri, cj) = l.ws;
                let wcol = wp.add(j0 * cj);
                let mut acc = [[$zero(); M]; T];
                let xv: [$ty; T] = std::array::from_fn(|t| $load(xp.add(t * $v)));
                for m in 0..M {
                    let wv = $set1(*wcol.add(m * cj));
                    for t in 0..T {
                        acc[t][m] = $mul(xv[t], wv);
                    }
                }
                for i in 1..l.din {
                    let xv: [$ty; T] = std::array::from_fn(|t| $load(xp.add(i * nb + t * $v)));
                    let wi = wcol.add(i * ri);
                    for m in 0..M {
                        let wv = $set1(*wi.add(m * cj));
                        for t in 0..T {
                            acc[t][m] = $fmadd(xv[t], wv, acc[t][m]);
                        }
                    }
                }
                let op = out.as_mut_ptr().add(e);
                for m in 0..M {
                    let bv = $set1(l.b[j0 + m]);
                    for t in 0..T {
                        let mut z = $add(acc[t][m], bv);
                        if l.relu {
                            z = super::$relu(z);
                        }
                        $store(op.add((j0 + m) * nb + t * $v), z);
                    }
                }
            }
        }
    };
}

layer_kernel!(
    layer256,
    "avx2,fma",
    8,
    1,
    2,
    __m256,
    _mm256_set1_ps,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps,
    _mm256_mul_ps,
    _mm256_add_ps,
    relu256
);
layer_kernel!(
    layer512,
    "avx512f,avx2,fma",
    16,
    2,
    4,
    __m512,
    _mm512_set1_ps,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps,
    _mm512_mul_ps,
    _mm512_add_ps,
    relu512
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::Isa;
    use crate::key::Key;

    /// Every variant this CPU can run: the portable loop, AVX2, AVX-512.
    fn isas() -> impl Iterator<Item = Isa> {
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.supported())
    }

    /// Output `(r, j)` of `b + x·W` (`x` rows of `din`, `W` row-major `din × dout`): its
    /// `f64` value, `Σ|terms|` for the rounding bound, and the `f32` fused chain in input
    /// order that the kernel promises with FMA.
    fn reference(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        (din, dout): (usize, usize),
        (r, j): (usize, usize),
    ) -> (f64, f64, f32) {
        let (mut want, mut mag, mut fused) = (b[j] as f64, (b[j] as f64).abs(), b[j]);
        for i in 0..din {
            let t = x[r * din + i] as f64 * w[i * dout + j] as f64;
            want += t;
            mag += t.abs();
            fused = x[r * din + i].mul_add(w[i * dout + j], fused);
        }
        (want, mag, fused)
    }

    /// Against a plain `f64` evaluation of `b + x·W`, for row counts across and beyond a
    /// row group, input widths odd and even (the last single row of `W`), and output
    /// widths with and without a remainder of the vector width and beyond a column
    /// block; the error bound is a few `f32` roundings of `Σ|x·w|`. With FMA, also bit
    /// for bit the fused chain in the order of `i` that the docs promise. Catches: the
    /// odd last input skipped (tried: fails at `din = 1`), remainder columns skipped
    /// (tried: fails at `dout = 1`), a group of three rows run as two (tried: stopped by
    /// the kernel's debug assertion in a debug build).
    #[test]
    fn small_rows_product_is_the_plain_product() {
        for isa in isas() {
            for_each_shape(isa);
        }
    }

    fn for_each_shape(isa: Isa) {
        for &rows in &[1usize, 2, 3, 4, 5, 9] {
            for &din in &[1usize, 2, 5, 8, 33] {
                for &dout in &[1usize, 7, 8, 9, 24, 600] {
                    let x = Key::new(1 + rows as u64).normal_vec::<f32>(rows * din);
                    let w = Key::new(2 + din as u64).normal_vec::<f32>(din * dout);
                    let b = Key::new(3 + dout as u64).normal_vec::<f32>(dout);
                    let mut got = vec![f32::NAN; rows * dout];
                    product_on(isa, SPLIT, &x, rows, din, &w, Bias::Shared(&b), &mut got);
                    for r in 0..rows {
                        for j in 0..dout {
                            let (want, mag, fused) = reference(&x, &w, &b, (din, dout), (r, j));
                            let g = got[r * dout + j];
                            let tol = 4.0 * (din as f64 + 1.0) * f32::EPSILON as f64 * mag;
                            assert!(
                                (g as f64 - want).abs() <= tol,
                                "rows {rows} din {din} dout {dout} ({r}, {j}): {g} vs {want}"
                            );
                            if isa != Isa::Portable {
                                assert_eq!(
                                    g, fused,
                                    "{isa:?}: rows {rows} din {din} dout {dout} ({r}, {j})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Two threads sharing the columns (from 4 MiB here; 1040 columns: the split point
    /// inside a column block and a remainder after the last whole vector): still the
    /// fused chain per output (with FMA) and the `f64` sums within rounding. Catches: the right half's
    /// columns copied to the wrong place (tried: `o[..width]`, fails).
    #[test]
    fn small_rows_product_split_over_threads_is_the_plain_product() {
        let (rows, din, dout) = (5, 1024, 1040);
        let x = Key::new(11).normal_vec::<f32>(rows * din);
        let w = Key::new(12).normal_vec::<f32>(din * dout);
        let b = Key::new(13).normal_vec::<f32>(dout);
        for isa in isas() {
            let mut got = vec![f32::NAN; rows * dout];
            crate::on_threads(3, || {
                product_on(isa, 1 << 20, &x, rows, din, &w, Bias::Shared(&b), &mut got)
            });
            for r in 0..rows {
                for j in (0..dout).step_by(7).chain([dout - 1]) {
                    let (want, mag, fused) = reference(&x, &w, &b, (din, dout), (r, j));
                    let g = got[r * dout + j];
                    assert!((g as f64 - want).abs() <= 4.0 * din as f64 * 1.2e-7 * mag);
                    if isa != Isa::Portable {
                        assert_eq!(g, fused, "{isa:?} ({r}, {j})");
                    }
                }
            }
        }
    }

    /// A product over `[y, x]` (weights `[W_y; W_x]`) equals, bit for bit, the one over
    /// `x` started per row from the one over `y`: every variant, row counts within and
    /// past a group (the second group's starts), an odd split of the inputs, a remainder
    /// of the vector width, and two threads sharing the columns. Catches (tried): the
    /// kernel starting every row from the first row's start (`r * b_stride` dropped:
    /// fails at 2 rows).
    #[test]
    fn product_from_a_start_per_row_continues_the_chain() {
        let (dy, dx, dout) = (7, 12, 1040);
        let w = Key::new(21).normal_vec::<f32>((dy + dx) * dout);
        let b = Key::new(22).normal_vec::<f32>(dout);
        let (wy, wx) = w.split_at(dy * dout);
        for isa in isas() {
            for &rows in &[1usize, 2, 4, 5, 9] {
                let xy = Key::new(23 + rows as u64).normal_vec::<f32>(rows * (dy + dx));
                let (y, x): (Vec<f32>, Vec<f32>) = {
                    let (mut y, mut x) = (Vec::new(), Vec::new());
                    for r in xy.chunks_exact(dy + dx) {
                        y.extend_from_slice(&r[..dy]);
                        x.extend_from_slice(&r[dy..]);
                    }
                    (y, x)
                };
                let mut whole = vec![f32::NAN; rows * dout];
                let bias = Bias::Shared(&b[..]);
                product_on(isa, SPLIT, &xy, rows, dy + dx, &w, bias, &mut whole);
                for split in [SPLIT, 1 << 12] {
                    let mut start = vec![f32::NAN; rows * dout];
                    product_on(isa, split, &y, rows, dy, wy, bias, &mut start);
                    let mut got = vec![f32::NAN; rows * dout];
                    crate::on_threads(3, || {
                        let from = Bias::PerRow(&start[..], dout);
                        product_on(isa, split, &x, rows, dx, wx, from, &mut got)
                    });
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&whole),
                        "{isa:?} rows {rows} split {split}"
                    );
                }
            }
        }
    }

    /// `f64` takes the plain path: equal to the same sums in `f64`, for a row count past
    /// a group.
    #[test]
    fn small_rows_product_f64_is_the_plain_loop() {
        let (rows, din, dout) = (5, 3, 10);
        let x: Vec<f64> = Key::new(7)
            .normal_vec::<f32>(rows * din)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let w: Vec<f64> = Key::new(8)
            .normal_vec::<f32>(din * dout)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let b: Vec<f64> = Key::new(9)
            .normal_vec::<f32>(dout)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mut got = vec![0.0; rows * dout];
        small_rows_product(&x, rows, din, &w, &b, &mut got);
        for r in 0..rows {
            for j in 0..dout {
                let mut want = b[j];
                for i in 0..din {
                    want += x[r * din + i] * w[i * dout + j];
                }
                assert_eq!(got[r * dout + j], want);
            }
        }
    }

    /// [`element_layer`] against the chain it promises (`x_0·w_0`, fused multiply-adds in
    /// input order, `+ b`, then `0.max(·)`), bit for bit, and against an `f64` evaluation
    /// within rounding: both variants, element counts around the vector widths and the
    /// tiles of two and four vectors (and their remainders), inputs 1 to 39, output blocks
    /// of 1 to 8 and past them, both weight layouts, with and without ReLU; a NaN input
    /// stays NaN through the ReLU, an output of exactly zero is `+0`. Catches: the
    /// elements after the last whole vector skipped (tried: fails at `nb = 1`), the column
    /// stride ignored (fails for the column-major layout), the ReLU's blend reversed
    /// (`max(z, 0)` turns the NaN into 0).
    #[test]
    fn element_layer_is_the_chain_per_element() {
        for isa in isas() {
            let mut done = false;
            for &nb in &[1usize, 7, 8, 16, 17, 33, 64, 100, 256] {
                for &din in &[1usize, 2, 8, 23, 39] {
                    for &dout in &[1usize, 2, 3, 4, 5, 8, 9, 16, 32, 35] {
                        for (relu, col_major) in [(false, false), (true, false), (true, true)] {
                            let seed = (nb * 1000 + din * 50 + dout) as u64;
                            let mut x = Key::new(seed).normal_vec::<f32>(din * nb);
                            if nb > 5 {
                                x[(din - 1) * nb + 5] = f32::NAN;
                            }
                            let w = Key::new(seed + 1).normal_vec::<f32>(din * dout);
                            let mut b = Key::new(seed + 2).normal_vec::<f32>(dout);
                            // Output 0 of element 0 exactly zero: x₀ = 0 everywhere, b = 0.
                            for i in 0..din {
                                x[i * nb] = if i == 0 { -0.0 } else { 0.0 };
                            }
                            b[0] = 0.0;
                            let ws = if col_major { (1, din) } else { (dout, 1) };
                            let wat = |i: usize, j: usize| w[i * ws.0 + j * ws.1];
                            let mut got = vec![f32::NAN; dout * nb];
                            let ran =
                                element_layer_on(isa, &x, nb, din, &w, ws, &b, relu, &mut got);
                            assert_eq!(ran, isa != Isa::Portable);
                            if !ran {
                                continue;
                            }
                            done = true;
                            for e in 0..nb {
                                for j in 0..dout {
                                    let mut chain = x[e] * wat(0, j);
                                    let (mut exact, mut mag) = (b[j] as f64, (b[j] as f64).abs());
                                    for i in 0..din {
                                        let (xi, wi) = (x[i * nb + e], wat(i, j));
                                        if i > 0 {
                                            chain = xi.mul_add(wi, chain);
                                        }
                                        exact += xi as f64 * wi as f64;
                                        mag += (xi as f64 * wi as f64).abs();
                                    }
                                    let mut z = chain + b[j];
                                    // `Real::max`'s `0.max(z)`: a NaN stays.
                                    if relu && 0.0 >= z {
                                        z = 0.0;
                                        exact = exact.max(0.0);
                                    }
                                    let g = got[j * nb + e];
                                    let at = format!(
                                        "{isa:?} nb {nb} din {din} dout {dout} relu {relu} \
                                         ({e}, {j})"
                                    );
                                    if z.is_nan() {
                                        assert!(g.is_nan(), "{at}: {g}");
                                        continue;
                                    }
                                    assert_eq!(g.to_bits(), z.to_bits(), "{at}");
                                    let tol = 4.0 * (din as f64 + 1.0) * 1.2e-7 * mag;
                                    assert!(
                                        (g as f64 - exact).abs() <= tol,
                                        "{at}: {g} vs {exact}"
                                    );
                                }
                            }
                            if nb > 5 && relu {
                                assert!(got[5].is_nan(), "a NaN input stays NaN");
                            }
                        }
                    }
                }
            }
            assert_eq!(done, isa != Isa::Portable);
        }
        // Other scalars are the caller's: nothing written.
        let mut out = [0.0f64; 2];
        assert!(!element_layer(
            &[1.0f64, 2.0],
            2,
            1,
            &[3.0],
            (1, 1),
            &[0.5],
            false,
            &mut out
        ));
        assert_eq!(out, [0.0, 0.0]);
    }
}
