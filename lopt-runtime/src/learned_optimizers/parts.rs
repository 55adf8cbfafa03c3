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
        let last = layers.len() - 1;
        let mut din = layers[0].0.len() / layers[0].1.len().max(1);
        for (k, &(w, bias)) in layers.iter().enumerate() {
            let dout = bias.len();
            let a = if k == 0 {
                MatRef::col_major(&x[..n * din], n, din)
            } else {
                MatRef::col_major(&self.a[..n * din], n, din)
            }
            .expect("block inputs");
            let wv = MatRef::new(w, din, dout, dout, 1).expect("row-major [in, out] weights");
            self.b.clear();
            self.b.resize(n * dout, S::from_f64(0.0));
            gemm(a, wv, &mut self.b, false).expect("shapes agree");
            if k < last {
                self.a.clear();
                for (col, &bj) in self.b.chunks_exact(n).zip(bias) {
                    // `0.max(z)` keeps a NaN, as JAX's relu does.
                    self.a
                        .extend(col.iter().map(|&v| S::from_f64(0.0).max(v + bj)));
                }
            } else {
                for (col, &bj) in self.b.chunks_exact_mut(n).zip(bias) {
                    col.iter_mut().for_each(|v| *v += bj);
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
    let keep = n * nf <= KEEP_FEATURES;
    buf.clear();
    buf.resize(if keep { n * nf } else { MLP_BLOCK * nf }, c(0.0));
    let mut ss = vec![c(0.0); nf];
    for start in (0..n).step_by(MLP_BLOCK) {
        let nb = MLP_BLOCK.min(n - start);
        let at = if keep { start * nf } else { 0 };
        let cols = &mut buf[at..at + nb * nf];
        build(start, cols);
        // In element order, one running sum per feature: the rounding is part of what
        // meta-training sees (a reordered sum sent the AdafacMlpLOpt meta-training test
        // to a diverging θ).
        for i in 0..nb {
            for (j, acc) in ss.iter_mut().enumerate() {
                let x = cols[j * nb + i];
                *acc += x * x;
            }
        }
    }
    let nn = c(n as f64);
    let scale: Vec<_> = ss.iter().map(|&s| rsqrt(c(1e-5) + s / nn)).collect();
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
