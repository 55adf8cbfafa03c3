//! Pieces the learned optimizers of the JAX library share: an optimizer state made of the
//! parameter tree and flat vectors of per-element or per-tensor statistics, and the small
//! functions their features and networks are built from.

use crate::scalar::Real;

pub(crate) use crate::primitives::declared::{sigmoid, sign};

/// `x` clipped to `[lo, hi]`.
#[inline]
pub(crate) fn clip<S: Real>(x: S, lo: f64, hi: f64) -> S {
    x.max(S::from_f64(lo)).min(S::from_f64(hi))
}

/// `1 / sqrt(x)`.
#[inline]
pub(crate) fn rsqrt<S: Real>(x: S) -> S {
    S::from_f64(1.0) / x.sqrt()
}

/// `out = b + x·W` for row-major `W: [x.len(), out.len()]`.
pub(crate) fn linear<S: Real>(w: &[S], b: &[S], x: &[S], out: &mut [S]) {
    out.copy_from_slice(b);
    let n = out.len();
    for (i, &xi) in x.iter().enumerate() {
        for (o, &wv) in out.iter_mut().zip(&w[i * n..(i + 1) * n]) {
            *o += xi * wv;
        }
    }
}

/// `impl Params` for a state `$ty<P>` whose leaves are those of its field `params: P`,
/// then each named `Vec<P::Scalar>` field as one flat leaf named after it, then each
/// field named after `scalars` (a `P::Scalar`, e.g. a step count that lanes keep apart
/// because they restart their tasks at different times) as a leaf of one element.
/// Other fields, such as `usize` counters, are carried outside the leaves.
macro_rules! params_then_vectors {
    ($ty:ident { $($field:ident),+ $(,)? } $(scalars { $($sc:ident),+ $(,)? })?) => {
        impl<P: $crate::params::Params> $crate::params::Params for $ty<P> {
            type Scalar = P::Scalar;
            fn num_leaves(&self) -> usize {
                self.params.num_leaves() + [$(stringify!($field),)+ $($(stringify!($sc),)+)?].len()
            }
            fn leaf(&self, i: usize) -> &[P::Scalar] {
                let k = self.params.num_leaves();
                if i < k {
                    return self.params.leaf(i);
                }
                let fields: &[&[P::Scalar]] = &[
                    $(&self.$field,)+
                    $($(std::slice::from_ref(&self.$sc),)+)?
                ];
                fields[i - k]
            }
            fn leaf_mut(&mut self, i: usize) -> &mut [P::Scalar] {
                let k = self.params.num_leaves();
                if i < k {
                    return self.params.leaf_mut(i);
                }
                let fields: [&mut [P::Scalar]; [$(stringify!($field),)+ $($(stringify!($sc),)+)?].len()] = [
                    $(&mut self.$field,)+
                    $($(std::slice::from_mut(&mut self.$sc),)+)?
                ];
                fields.into_iter().nth(i - k).expect("leaf index in range")
            }
            fn write_leaf_name(&self, i: usize, out: &mut String) {
                let k = self.params.num_leaves();
                match i.checked_sub(k) {
                    None => $crate::params::write_field_leaf_name(out, "params", &self.params, i),
                    Some(j) => out.push_str([$(stringify!($field),)+ $($(stringify!($sc),)+)?][j]),
                }
            }
            fn leaf_shape(&self, i: usize) -> Vec<usize> {
                let k = self.params.num_leaves();
                if i < k {
                    self.params.leaf_shape(i)
                } else {
                    vec![self.leaf(i).len()]
                }
            }
        }
    };
}
pub(crate) use params_then_vectors;

/// A layer borrowed for [`BlockMlp::forward`]: row-major `[in, out]` weights and the bias.
pub(crate) type LayerRef<'a, S> = (&'a [S], &'a [S]);

/// The first layer `(w, b)` of a per-element MLP whose inputs from `varying` on are
/// `fixed` for every element of a tensor (time features, per-tensor statistics): their
/// product with `w`'s rows is added to the bias once per tensor (into `bias`), and the
/// layer returned reads only the first `varying` inputs. The same function as feeding
/// every input to every element, with fewer multiplications per element (rounded
/// differently: the fixed inputs' terms are summed apart).
pub(crate) fn fold_fixed_inputs<'a, S: Real>(
    (w, b): LayerRef<'a, S>,
    varying: usize,
    fixed: &[S],
    bias: &'a mut Vec<S>,
) -> LayerRef<'a, S> {
    let dout = b.len();
    debug_assert_eq!(w.len(), (varying + fixed.len()) * dout);
    bias.clear();
    bias.extend_from_slice(b);
    for (i, &x) in fixed.iter().enumerate() {
        let row = &w[(varying + i) * dout..(varying + i + 1) * dout];
        for (o, &wv) in bias.iter_mut().zip(row) {
            *o += x * wv;
        }
    }
    (&w[..varying * dout], bias)
}

/// Elements × lanes from which a tensor's per-element network runs its blocks on the
/// thread pool. Waking a sleeping worker costs tens of microseconds on the project's
/// virtual machines: at 2,410 parameters (about 100 µs a step) two threads measured
/// slower than one (MlpLOpt 112 against 86 µs), so only tensors whose network runs for
/// milliseconds are split.
const PAR_ELEMENTS: usize = 1 << 16;

/// Whether the per-element network of a tensor of `n` elements of `S` spreads its blocks
/// over the thread pool (MlpLOpt's: each block's result is the same on any thread).
pub(crate) fn par_worthy<S: Real>(n: usize) -> bool {
    n * S::LANES >= PAR_ELEMENTS && rayon::current_num_threads() > 1
}

/// Elements a [`BlockMlp`] runs at once: its activations stay in L1/L2.
pub(crate) const MLP_BLOCK: usize = 256;

/// A per-element MLP run as one matrix product a layer over a block of elements (the
/// parameters of a tensor), with ReLU between layers: the buffers are reused across
/// blocks and calls.
pub(crate) struct BlockMlp<S> {
    a: Vec<S>,
    b: Vec<S>,
}

impl<S: Real> BlockMlp<S> {
    /// Empty buffers.
    pub(crate) fn new() -> Self {
        BlockMlp {
            a: Vec::new(),
            b: Vec::new(),
        }
    }

    /// The MLP on `n` elements whose inputs are `x`, `n x din` column-major
    /// (feature-major: input `j` of element `e` at `j·n + e`, as features built a column
    /// at a time are); `layers` are row-major `[in, out]` weights and biases. Returns the
    /// outputs, `n x out` column-major (output `j` of element `e` at `j·n + e`), and the
    /// last layer's inputs (the last hidden layer's activations, `n x in` column-major;
    /// empty for a single layer).
    pub(crate) fn forward(
        &mut self,
        layers: &[LayerRef<'_, S>],
        x: &[S],
        n: usize,
    ) -> (&[S], &[S]) {
        use crate::kernels::gemm::{gemm, MatRef};
        use crate::kernels::small_rows::element_layer;
        let last = layers.len() - 1;
        let mut din = layers[0].0.len() / layers[0].1.len().max(1);
        for (k, &(w, bias)) in layers.iter().enumerate() {
            let dout = bias.len();
            // Every element is written by the layer (not accumulated): only new space is
            // zeroed, and the buffer is never shrunk (a narrow last layer would otherwise
            // make the next block's first layer zero it again).
            if self.b.len() < n * dout {
                self.b.resize(n * dout, S::from_f64(0.0));
            }
            let input = if k == 0 {
                &x[..n * din]
            } else {
                &self.a[..n * din]
            };
            let out = &mut self.b[..n * dout];
            // `f32` with AVX2: product, bias and ReLU in one pass, into `b` (then swapped
            // into `a`, the next layer's input).
            if din > 0 && element_layer(input, n, din, w, (dout, 1), bias, k < last, out) {
                if k < last {
                    std::mem::swap(&mut self.a, &mut self.b);
                }
            } else {
                let a = MatRef::col_major(input, n, din).expect("block inputs");
                let wv = MatRef::new(w, din, dout, dout, 1).expect("row-major [in, out] weights");
                gemm(a, wv, out, false).expect("shapes agree");
                if k < last {
                    self.a.clear();
                    for (col, &bj) in out.chunks_exact(n).zip(bias) {
                        // `0.max(z)` keeps a NaN, as JAX's relu does.
                        self.a
                            .extend(col.iter().map(|&v| S::from_f64(0.0).max(v + bj)));
                    }
                } else {
                    for (col, &bj) in out.chunks_exact_mut(n).zip(bias) {
                        col.iter_mut().for_each(|v| *v += bj);
                    }
                }
            }
            if k < last {
                din = dout;
            } else {
                let hidden = if last > 0 { &self.a[..n * din] } else { &[] };
                return (&self.b[..n * dout], hidden);
            }
        }
        (&[], &[])
    }
}

/// Tensors of up to this many inputs (elements × features) keep their features between
/// [`normalized_mlp`]'s two passes instead of building them again.
const KEEP_FEATURES: usize = 1 << 17;

/// The per-element MLP on a tensor of `n` elements whose `nf` features are each
/// normalized by their root mean square over the tensor (`x·rsqrt(1e-5 + mean x²)`, the
/// sum of squares taken in element order): `build(start, cols)` writes the features of
/// elements `start..start + nb` feature-major (`cols[j·nb + i]`, `nb = cols.len() / nf`),
/// a block of at most [`MLP_BLOCK`] at a time; `emit(out, hidden, nb)` receives each
/// block's outputs and last hidden activations as [`BlockMlp::forward`] gives them, in
/// element order. `buf` is scratch space
/// kept by the caller.
pub(crate) fn normalized_mlp<S: Real>(
    n: usize,
    nf: usize,
    mut build: impl FnMut(usize, &mut [S]),
    mlp: &mut BlockMlp<S>,
    layers: &[LayerRef<'_, S>],
    buf: &mut Vec<S>,
    mut emit: impl FnMut(&[S], &[S], usize),
) {
    let c = S::from_f64;
    let keep = keeps_features(n, nf);
    // `build` writes every feature of every block: only new space is zeroed, and a
    // buffer kept from a larger tensor is not shrunk (then grown and zeroed again).
    let need = if keep { n * nf } else { MLP_BLOCK * nf };
    if buf.len() < need {
        buf.resize(need, c(0.0));
    }
    let scale = feature_scales(n, nf, &mut build, keep, buf);
    for start in (0..n).step_by(MLP_BLOCK) {
        let nb = MLP_BLOCK.min(n - start);
        let at = if keep { start * nf } else { 0 };
        let cols = &mut buf[at..at + nb * nf];
        if !keep {
            build(start, cols);
        }
        for (col, &sc) in cols.chunks_exact_mut(nb).zip(&scale) {
            col.iter_mut().for_each(|x| *x *= sc);
        }
        let (out, hidden) = mlp.forward(layers, cols, nb);
        emit(out, hidden, nb);
    }
}

/// Whether [`normalized_mlp`] keeps a tensor's features (`n` elements of `nf`) between
/// its two passes.
pub(crate) fn keeps_features(n: usize, nf: usize) -> bool {
    n * nf <= KEEP_FEATURES
}

/// [`normalized_mlp`]'s first pass: every block built into `buf` (at `start·nf` when
/// `keep`, else over the first block) and each feature's `rsqrt(1e-5 + mean x²)`.
pub(crate) fn feature_scales<S: Real>(
    n: usize,
    nf: usize,
    mut build: impl FnMut(usize, &mut [S]),
    keep: bool,
    buf: &mut [S],
) -> Vec<S> {
    let c = S::from_f64;
    let mut ss = vec![c(0.0); nf];
    for start in (0..n).step_by(MLP_BLOCK) {
        let nb = MLP_BLOCK.min(n - start);
        let at = if keep { start * nf } else { 0 };
        let cols = &mut buf[at..at + nb * nf];
        build(start, cols);
        // In element order, one running sum per feature: the rounding is part of what
        // meta-training sees (a reordered sum sent the AdafacMlpLOpt meta-training test
        // to a diverging θ).
        sum_squares_in_order(cols, nb, &mut ss);
    }
    let nn = c(n as f64);
    ss.iter().map(|&s| rsqrt(c(1e-5) + s / nn)).collect()
}

/// `acc[e·K + k] ← d_k·acc[e·K + k] + (1 − d_k)·f(g[e])` for the `K = d.len()` decays of
/// each element's interleaved accumulators (momenta `f(x) = x`, second moments
/// `f(x) = x²`), the same operations as element by element; for 1, 3 or 5 decays
/// through [`ema_records`], otherwise eight elements at a time through a copy of their
/// `8·K` inputs, so the loop over them vectorizes.
pub(crate) fn ema_interleaved<S: Real>(acc: &mut [S], g: &[S], d: &[S], f: impl Fn(S) -> S) {
    let k = d.len();
    assert_eq!(
        acc.len(),
        g.len() * k,
        "ema_interleaved: {} elements of {k}",
        g.len()
    );
    match k {
        1 => return ema_records::<S, 1>(acc, g, d, f),
        3 => return ema_records::<S, 3>(acc, g, d, f),
        5 => return ema_records::<S, 5>(acc, g, d, f),
        _ => {}
    }
    let one = S::from_f64(1.0);
    let dpat: Vec<S> = (0..8 * k).map(|t| d[t % k]).collect();
    let mpat: Vec<S> = dpat.iter().map(|&x| one - x).collect();
    let mut gx = vec![S::from_f64(0.0); 8 * k];
    let mut chunks = acc.chunks_exact_mut(8 * k);
    let mut gs = g.chunks_exact(8);
    for (a, g8) in (&mut chunks).zip(&mut gs) {
        for (dst, &ge) in gx.chunks_exact_mut(k).zip(g8) {
            dst.fill(f(ge));
        }
        for (((x, &dd), &mm), &q) in a.iter_mut().zip(&dpat).zip(&mpat).zip(&gx) {
            *x = dd * *x + mm * q;
        }
    }
    for (a, &ge) in chunks
        .into_remainder()
        .chunks_exact_mut(k)
        .zip(gs.remainder())
    {
        let q = f(ge);
        for ((x, &dd), &mm) in a.iter_mut().zip(&dpat).zip(&mpat) {
            *x = dd * *x + mm * q;
        }
    }
}

/// [`ema_interleaved`] for `K` decays known at compile time: sixteen elements' records
/// at a time, `f(g)` spread over each record's `K` slots by index (no scalar stores
/// read back as vectors); the same operations per slot.
fn ema_records<S: Real, const K: usize>(acc: &mut [S], g: &[S], d: &[S], f: impl Fn(S) -> S) {
    const E: usize = 16;
    let one = S::from_f64(1.0);
    let dpat: [S; K] = std::array::from_fn(|j| d[j]);
    let mpat: [S; K] = std::array::from_fn(|j| one - d[j]);
    let mut chunks = acc.chunks_exact_mut(E * K);
    let mut gs = g.chunks_exact(E);
    for (a, ge) in (&mut chunks).zip(&mut gs) {
        let q: [S; E] = std::array::from_fn(|e| f(ge[e]));
        for (t, x) in a.iter_mut().enumerate() {
            *x = dpat[t % K] * *x + mpat[t % K] * q[t / K];
        }
    }
    for (a, &ge) in chunks
        .into_remainder()
        .chunks_exact_mut(K)
        .zip(gs.remainder())
    {
        let q = f(ge);
        for ((x, &dd), &mm) in a.iter_mut().zip(&dpat).zip(&mpat) {
            *x = dd * *x + mm * q;
        }
    }
}

/// `ss[j] += x²` for every element `i` of feature `j` of `cols` (feature-major,
/// `cols[j·nb + i]`), one running sum per feature in element order, each term a rounded
/// square then a rounded add: for `f32` on AVX, eight features at a time (8×8 tiles
/// transposed in registers) with the same operations in the same order as one element
/// at a time.
pub(crate) fn sum_squares_in_order<S: Real>(cols: &[S], nb: usize, ss: &mut [S]) {
    let nf = ss.len();
    assert_eq!(
        cols.len(),
        nf * nb,
        "sum_squares_in_order: {nf} features of {nb}"
    );
    sum_squares_by(nb, ss, |j| &cols[j * nb..(j + 1) * nb]);
}

/// [`sum_squares_in_order`] of features held apart: `ss[j] += x²` for each element of
/// `col(j)` (each `nb` long), the same operations in the same order.
pub(crate) fn sum_squares_by<'a, S: Real>(nb: usize, ss: &mut [S], col: impl Fn(usize) -> &'a [S]) {
    let nf = ss.len();
    let cols: Vec<&[S]> = (0..nf).map(&col).collect();
    assert!(
        cols.iter().all(|c| c.len() == nb),
        "sum_squares_by: {nf} features of {nb}"
    );
    let mut j0 = 0;
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<S>() == std::any::TypeId::of::<f32>()
        && crate::kernels::cpu::has_avx2()
    {
        // SAFETY: `S` is `f32` (checked); the CPU has AVX2 (checked); every column holds
        // `nb` elements (checked).
        unsafe {
            let ptrs: Vec<*const f32> = cols.iter().map(|c| c.as_ptr() as *const f32).collect();
            let s = std::slice::from_raw_parts_mut(ss.as_mut_ptr() as *mut f32, nf);
            j0 = sum_squares_avx(&ptrs, nb, s);
        }
    }
    // Element-major: each feature's sum stays in element order.
    #[allow(clippy::needless_range_loop)]
    for i in 0..nb {
        for (acc, col) in ss.iter_mut().zip(&cols).skip(j0) {
            let x = col[i];
            *acc += x * x;
        }
    }
}

/// [`sum_squares_in_order`] for all the features, eight at a time (the last group padded
/// with zeros), up to four groups sharing each tile of eight elements (independent
/// chains), then the elements after the last whole tile one at a time; returns the number
/// of features done (all).
///
/// # Safety
/// The CPU has AVX2; `cols.len() == ss.len()`, each valid for `nb` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_squares_avx(cols: &[*const f32], nb: usize, ss: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let nf = ss.len();
    debug_assert_eq!(cols.len(), nf);
    let tiles = nb / 8 * 8;
    let mut g0 = 0;
    while g0 * 8 < nf {
        let ng = (nf.div_ceil(8) - g0).min(4);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut lanes = [[0.0f32; 8]; 4];
        for (g, l) in lanes.iter_mut().enumerate().take(ng) {
            let j0 = (g0 + g) * 8;
            let valid = (nf - j0).min(8);
            l[..valid].copy_from_slice(&ss[j0..j0 + valid]);
            acc[g] = _mm256_loadu_ps(l.as_ptr());
        }
        let mut i = 0;
        while i < tiles {
            for (g, acc) in acc.iter_mut().enumerate().take(ng) {
                let j0 = (g0 + g) * 8;
                let valid = (nf - j0).min(8);
                let r: [__m256; 8] = std::array::from_fn(|j| {
                    if j < valid {
                        _mm256_loadu_ps(cols[j0 + j].add(i))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                // Transpose: t[e] holds element i + e of the eight features.
                let a0 = _mm256_unpacklo_ps(r[0], r[1]);
                let a1 = _mm256_unpackhi_ps(r[0], r[1]);
                let a2 = _mm256_unpacklo_ps(r[2], r[3]);
                let a3 = _mm256_unpackhi_ps(r[2], r[3]);
                let a4 = _mm256_unpacklo_ps(r[4], r[5]);
                let a5 = _mm256_unpackhi_ps(r[4], r[5]);
                let a6 = _mm256_unpacklo_ps(r[6], r[7]);
                let a7 = _mm256_unpackhi_ps(r[6], r[7]);
                let b0 = _mm256_shuffle_ps::<0x44>(a0, a2);
                let b1 = _mm256_shuffle_ps::<0xEE>(a0, a2);
                let b2 = _mm256_shuffle_ps::<0x44>(a1, a3);
                let b3 = _mm256_shuffle_ps::<0xEE>(a1, a3);
                let b4 = _mm256_shuffle_ps::<0x44>(a4, a6);
                let b5 = _mm256_shuffle_ps::<0xEE>(a4, a6);
                let b6 = _mm256_shuffle_ps::<0x44>(a5, a7);
                let b7 = _mm256_shuffle_ps::<0xEE>(a5, a7);
                let t = [
                    _mm256_permute2f128_ps::<0x20>(b0, b4),
                    _mm256_permute2f128_ps::<0x20>(b1, b5),
                    _mm256_permute2f128_ps::<0x20>(b2, b6),
                    _mm256_permute2f128_ps::<0x20>(b3, b7),
                    _mm256_permute2f128_ps::<0x31>(b0, b4),
                    _mm256_permute2f128_ps::<0x31>(b1, b5),
                    _mm256_permute2f128_ps::<0x31>(b2, b6),
                    _mm256_permute2f128_ps::<0x31>(b3, b7),
                ];
                for te in t {
                    *acc = _mm256_add_ps(*acc, _mm256_mul_ps(te, te));
                }
            }
            i += 8;
        }
        for (g, l) in lanes.iter_mut().enumerate().take(ng) {
            _mm256_storeu_ps(l.as_mut_ptr(), acc[g]);
            let j0 = (g0 + g) * 8;
            let valid = (nf - j0).min(8);
            for i in tiles..nb {
                for (j, lj) in l.iter_mut().enumerate().take(valid) {
                    let x = *cols[j0 + j].add(i);
                    *lj += x * x;
                }
            }
            ss[j0..j0 + valid].copy_from_slice(&l[..valid]);
        }
        g0 += ng;
    }
    nf
}

/// `out[i] = records[i·stride + k]`: entry `k` of each of the interleaved records (a
/// block's moments stored decay-major per element), as one feature column.
pub(crate) fn strided_column<S: Real>(out: &mut [S], records: &[S], stride: usize, k: usize) {
    for (o, r) in out.iter_mut().zip(records.chunks_exact(stride)) {
        *o = r[k];
    }
}

/// The sum of `f(x)` over `xs` in eight interleaved partial sums, added pairwise at the
/// end: vectorizable, and rounded no worse than one running sum (the order differs from
/// it, and from XLA's reductions, only in rounding).
#[inline]
pub(crate) fn sum8<S: Real>(xs: &[S], f: impl Fn(S) -> S) -> S {
    let mut acc = [S::from_f64(0.0); 8];
    let mut chunks = xs.chunks_exact(8);
    for ch in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a += f(x);
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a += f(x);
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// [`sum8`] of `f(e)` over the indices `e` in `0..n` (e.g. a strided column).
#[cfg(test)]
#[inline]
pub(crate) fn sum8_by<S: Real>(n: usize, f: impl Fn(usize) -> S) -> S {
    let mut acc = [S::from_f64(0.0); 8];
    let full = n - n % 8;
    for base in (0..full).step_by(8) {
        for (t, a) in acc.iter_mut().enumerate() {
            *a += f(base + t);
        }
    }
    for (a, e) in acc.iter_mut().zip(full..n) {
        *a += f(e);
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// For each entry `j` of the `k`-entry records of `x` (`x[e·k + j]`, element `e`),
/// `out[j] =` `sum8_by` (test-only) of `f(x[e·k + j], pat[j])` over the elements: the same partial
/// sums in the same order, bit for bit, but all `k` in one pass over contiguous records
/// (the loop vectorizes; `k` strided passes did not).
pub(crate) fn sum8_records<S: Real>(
    x: &[S],
    k: usize,
    pat: &[S],
    f: impl Fn(S, S) -> S,
    out: &mut [S],
) {
    assert!(
        k > 0 && x.len().is_multiple_of(k) && pat.len() == k && out.len() == k,
        "sum8_records: {} values in records of {k}",
        x.len()
    );
    let n = x.len() / k;
    // Partial sum `t` of entry `j` at `t·k + j`: the layout of eight records.
    let mut acc = vec![S::from_f64(0.0); 8 * k];
    let p8: Vec<S> = (0..8 * k).map(|q| pat[q % k]).collect();
    let full = n - n % 8;
    for chunk in x[..full * k].chunks_exact(8 * k) {
        for ((a, &v), &pp) in acc.iter_mut().zip(chunk).zip(&p8) {
            *a += f(v, pp);
        }
    }
    for ((a, &v), &pp) in acc.iter_mut().zip(&x[full * k..]).zip(&p8) {
        *a += f(v, pp);
    }
    for (j, o) in out.iter_mut().enumerate() {
        let a = |t: usize| acc[t * k + j];
        *o = ((a(0) + a(4)) + (a(2) + a(6))) + ((a(1) + a(5)) + (a(3) + a(7)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    /// [`sum_squares_in_order`] equals, bit for bit, one running `f32` sum per feature in
    /// element order (what the normalization's rounding is defined as), and is within
    /// `f32` rounding of the `f64` sums; for feature counts below, at and past whole
    /// groups of eight and beyond four groups, and element counts with and without a
    /// remainder of the tiles; starting from nonzero sums (the blocks after the first).
    /// Catches: the elements after the last whole tile skipped (tried: fails at
    /// `nb = 1`), a tile's eight elements added in reverse order (tried: fails bit for
    /// bit at `nb = 8`).
    #[test]
    fn sum_squares_in_order_is_the_running_sum() {
        for nf in [1usize, 7, 8, 9, 23, 28, 39, 40] {
            for nb in [1usize, 8, 13, 256] {
                let mut cols = vec![0.0f32; nf * nb];
                Key::new(nf as u64 * 1000 + nb as u64).fill_normal(&mut cols);
                let start: Vec<f32> = (0..nf).map(|j| 0.5 + j as f32).collect();
                let mut got = start.clone();
                sum_squares_in_order(&cols, nb, &mut got);
                for j in 0..nf {
                    let (mut want, mut exact) = (start[j], start[j] as f64);
                    for i in 0..nb {
                        let x = cols[j * nb + i];
                        want += x * x;
                        exact += x as f64 * x as f64;
                    }
                    assert_eq!(got[j], want, "nf {nf} nb {nb} feature {j}");
                    assert!(((got[j] as f64) - exact).abs() <= 1e-6 * exact * nb as f64);
                }
            }
        }
    }

    /// [`ema_interleaved`] equals the element-by-element update bit for bit, and the
    /// `f64` definition within rounding, for 1, 2, 3 and 5 decays (2 takes the general
    /// path, the others [`ema_records`]) and element counts with and without a remainder
    /// of eight and of sixteen. Catches: the decays applied to the wrong slot (tried on
    /// the general path: `d[t / 8]`, fails at 3 decays), the elements after the last
    /// eight skipped (tried: fails at 1 element).
    #[test]
    fn ema_interleaved_is_the_elementwise_update() {
        for k in [1usize, 2, 3, 5] {
            for n in [1usize, 8, 13, 16, 40] {
                let mut acc = vec![0.0f32; n * k];
                let mut g = vec![0.0f32; n];
                Key::new(3).fill_normal(&mut acc);
                Key::new(4).fill_normal(&mut g);
                let d: Vec<f32> = [0.5f32, 0.9, 0.99, 0.999, 0.9999][..k].to_vec();
                let mut got = acc.clone();
                ema_interleaved(&mut got, &g, &d, |x| x * x);
                for e in 0..n {
                    for j in 0..k {
                        let x = acc[e * k + j];
                        let want = d[j] * x + (1.0 - d[j]) * (g[e] * g[e]);
                        assert_eq!(got[e * k + j], want, "k {k} n {n} ({e}, {j})");
                        let exact = d[j] as f64 * x as f64
                            + (1.0 - d[j] as f64) * (g[e] as f64 * g[e] as f64);
                        assert!(
                            (got[e * k + j] as f64 - exact).abs() <= 1e-6 * (1.0 + exact.abs())
                        );
                    }
                }
            }
        }
    }

    /// [`sum8_records`] equals [`sum8_by`] over each entry's strided column bit for bit,
    /// for 1, 3 and 4 entries and element counts below, at and past whole groups of
    /// eight. Catches: the remainder's records added to partial sum 0 (`acc[j]`: fails
    /// at 13 elements), the pattern indexed by element (`pat[q / k]`: fails at 3
    /// entries).
    #[test]
    fn sum8_records_is_sum8_by_per_entry() {
        for k in [1usize, 3, 4] {
            for n in [1usize, 7, 8, 13, 2048] {
                let mut x = vec![0.0f32; n * k];
                Key::new(n as u64 + 10 * k as u64).fill_normal(&mut x);
                let pat: Vec<f32> = (0..k).map(|j| 0.25 * j as f32 - 0.1).collect();
                let f = |v: f32, p: f32| (v * 1.5 - p) * (v * 1.5 - p);
                let mut got = vec![0.0f32; k];
                sum8_records(&x, k, &pat, f, &mut got);
                for j in 0..k {
                    let want = sum8_by(n, |e| f(x[e * k + j], pat[j]));
                    assert_eq!(got[j].to_bits(), want.to_bits(), "k {k} n {n} entry {j}");
                }
            }
        }
    }

    /// [`sum_squares_by`] on features held in separate vectors equals one running sum
    /// per feature in element order, bit for bit (nine features: a group of eight and
    /// one more; 13 elements: a tile and a remainder). Catches: every feature
    /// read from the first one's vector (fails at feature 1).
    #[test]
    fn sum_squares_by_reads_each_feature_apart() {
        let cols: Vec<Vec<f32>> = (0..9).map(|j| Key::new(30 + j).normal_vec(13)).collect();
        let mut got = vec![0.25f32; 9];
        sum_squares_by(13, &mut got, |j| &cols[j]);
        for (j, col) in cols.iter().enumerate() {
            let want = col.iter().fold(0.25f32, |a, &x| a + x * x);
            assert_eq!(got[j].to_bits(), want.to_bits(), "feature {j}");
        }
    }
}
