//! Causal multi-head self-attention as one rule (haiku's `MultiHeadAttention` with a causal
//! mask, as the JAX library's transformer calls it, without the projections).
//!
//! Layout: the input `qkv` has one row per token, `batch · time` rows ordered by sequence
//! then time step (row `b·T + t`), and `3 · heads · key_size` columns `[q | k | v]`, each
//! block `heads · key_size` wide with feature `head · key_size + d` (haiku's reshape to
//! `[B, T, H, d]`). So `qkv = x · [Wq | Wk | Wv] + [bq | bk | bv]` is one matrix product.
//! The output has the same rows and `heads · key_size` columns: the heads concatenated, as
//! haiku reshapes `[B, T, H, d]` to `[B, T, H·d]` before its output projection.
//!
//! Per sequence `b` and head `h`, with `Q, K, V` the `T × d` blocks:
//!
//! `L = Q Kᵀ / sqrt(d)`, `L[t, s] = −1e30` for `s > t` (`jnp.where(mask, logits, −1e30)`),
//! `P = softmax(L)` per row (`jax.nn.softmax`: the row maximum subtracted, exponentials
//! divided by their sum), `O = P V`.
//!
//! A masked logit's exponential is exactly zero (the diagonal is never masked, so every
//! row's maximum is a real logit), so the rule skips the masked entries: same values, and
//! their derivative is zero as `jnp.where`'s is. The products run on the project's GEMM
//! ([`crate::kernels::gemm`]) on strided views of `qkv`; `eval` keeps the probabilities
//! `P` in the op for the derivative that follows. On `f32` with AVX2 and FMA and `T` a
//! multiple of 8, the forward and reverse passes take a dedicated path instead (module
//! `fast`): chunks of sequences packed so that each pair's blocks sit in L1, every
//! product by one register-tiled kernel (AVX2, or AVX-512 with the same bits) that skips
//! the causal triangle by blocks of 8 rows, the softmax eight queries at a time in the
//! generic rule's order (within 2e-6 of the f64 definition, tested; bit-identical on any
//! number of threads). The tangent stays on the GEMM path.
//!
//! Derivatives, with `G` the output cotangent and `∘` the elementwise product:
//! reverse `dV = Pᵀ G`, `dP = G Vᵀ`, `dL = P ∘ (dP − rowsum(P ∘ dP)) / sqrt(d)`,
//! `dQ = dL K`, `dK = dLᵀ Q`; forward the same chain with tangents.

use std::any::Any;
use std::cell::Cell;

use nalgebra::DMatrix;

use super::matmul::{product_acc, product_into, View};
use super::Unary;
use crate::error::{Error, Result};
#[cfg(target_arch = "x86_64")]
use crate::kernels::tile8::{as_f32, from_f32};
use crate::kernels::vecmath::exp;
use crate::scalar::Real;

#[cfg(target_arch = "x86_64")]
mod fast;

/// The geometry of a causal self-attention: `batch` sequences of `time` tokens, `heads`
/// heads of `key_size` features each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionGeometry {
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub time: usize,
    /// Attention heads.
    pub heads: usize,
    /// Features per head (`key_size`, 32 in the JAX library's transformer).
    pub key_size: usize,
}

impl AttentionGeometry {
    /// `batch` sequences of `time` tokens, `heads × key_size` features.
    ///
    /// Errors ([`Error::InvalidArgument`]): a zero size.
    pub fn new(batch: usize, time: usize, heads: usize, key_size: usize) -> Result<Self> {
        let g = AttentionGeometry {
            batch,
            time,
            heads,
            key_size,
        };
        if [batch, time, heads, key_size].contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "causal_self_attention geometry with a zero size: {g:?}"
            )));
        }
        Ok(g)
    }

    /// Rows of the input and of the output (`batch · time`).
    pub fn rows(&self) -> usize {
        self.batch * self.time
    }

    /// Columns of the output (`heads · key_size`); the input has three times as many.
    pub fn width(&self) -> usize {
        self.heads * self.key_size
    }

    /// Multiply-adds of one forward pass (the two products per sequence and head, the
    /// masked half included, as the GEMMs compute it).
    pub fn forward_flops(&self) -> f64 {
        2.0 * 2.0 * (self.batch * self.heads * self.time * self.time * self.key_size) as f64
    }

    #[track_caller]
    fn check_input<S>(&self, qkv: &DMatrix<S>) {
        // The fields are public: a geometry built by hand skips `new`'s refusal, and a
        // zero size would divide by zero deep in the chunking.
        if [self.batch, self.time, self.heads, self.key_size].contains(&0) {
            panic!(
                "causal_self_attention: a geometry with a zero size (build it with \
                 AttentionGeometry::new, which refuses one): {self:?}"
            );
        }
        if qkv.shape() != (self.rows(), 3 * self.width()) {
            panic!(
                "causal_self_attention: qkv of shape {:?}, the geometry needs {:?} \
                 (batch·time rows, [q | k | v] columns of heads·key_size each): {self:?}",
                qkv.shape(),
                (self.rows(), 3 * self.width())
            );
        }
    }
}

/// What `eval` keeps for the derivative: the transposed probabilities of every sequence
/// and head, and the addresses of the input and output they came from (only compared).
struct Kept<S> {
    input: usize,
    output: usize,
    probs: Vec<S>,
}

/// The op of `causal_self_attention(qkv, &geometry)`, with a slot where `eval` keeps the
/// probabilities for the derivative that follows. A clone has the same geometry and
/// nothing kept.
pub struct CausalSelfAttention<'a>(
    pub &'a AttentionGeometry,
    pub(crate) Cell<Option<Box<dyn Any + Send>>>,
);

impl<'a> CausalSelfAttention<'a> {
    /// The op for `geometry` (what `#[task]` builds for
    /// `causal_self_attention(qkv, &geometry)`), with nothing kept yet.
    pub fn new(geometry: &'a AttentionGeometry) -> Self {
        CausalSelfAttention(geometry, Cell::new(None))
    }

    /// The probabilities `eval` kept, if they came from `x` with output `out` (the first
    /// derivative takes them; a later one recomputes them).
    fn take_kept<S: Real>(&self, x: &DMatrix<S>, out: &DMatrix<S>) -> Option<Vec<S>> {
        let kept = self.1.take()?.downcast::<Kept<S>>().ok()?;
        let same = kept.input == x.as_ptr() as usize
            && kept.output == out.as_ptr() as usize
            && kept.probs.len() == probs_len(self.0);
        same.then_some(kept.probs)
    }

    /// The kept probabilities, or recomputed ones.
    fn probs<S: Real>(&self, x: &DMatrix<S>, out: &DMatrix<S>) -> Vec<S> {
        self.take_kept(x, out)
            .unwrap_or_else(|| forward(self.0, x).1)
    }
}

impl Clone for CausalSelfAttention<'_> {
    /// The same geometry, nothing kept.
    fn clone(&self) -> Self {
        Self::new(self.0)
    }
}

impl std::fmt::Debug for CausalSelfAttention<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CausalSelfAttention").field(self.0).finish()
    }
}

fn probs_len(g: &AttentionGeometry) -> usize {
    g.batch * g.heads * g.time * g.time
}

/// The `T × d` block of sequence `b` in columns `col..col + d` of the column-major
/// `rows`-row matrix `m`, as a strided view.
fn block<'a, S: Real>(
    m: &'a [S],
    rows: usize,
    g: &AttentionGeometry,
    b: usize,
    col: usize,
) -> View<'a, S> {
    let start = col * rows + b * g.time;
    View::new(&m[start..], g.time, g.key_size, 1, rows)
        .expect("an attention block lies inside its matrix")
}

/// A pointer shared by the threads of one attention call, each writing the blocks of its
/// own (sequence, head) pairs, which no other touches.
#[derive(Clone, Copy)]
struct Shared<S>(*mut S);
// SAFETY: the threads write disjoint elements (the blocks of their own pairs) and the
// owner reads the buffer only after they have all joined.
unsafe impl<S: Send> Send for Shared<S> {}
unsafe impl<S: Send> Sync for Shared<S> {}

impl<S> Shared<S> {
    /// The pointer (a method, so that closures capture the whole `Shared`).
    fn at(self, offset: usize) -> *mut S {
        self.0.wrapping_add(offset)
    }
}

/// Writes the contiguous `T × d` block `src` into sequence `b`, columns `col..col + d`, of
/// the column-major `rows`-row matrix at `dst`.
///
/// # Safety
/// `dst` is valid for writes of `rows · (col + d)` elements and no other thread touches
/// this block.
unsafe fn put_block<S: Real>(
    dst: Shared<S>,
    rows: usize,
    g: &AttentionGeometry,
    b: usize,
    col: usize,
    src: &[S],
) {
    for (j, s) in src.chunks_exact(g.time).enumerate() {
        let to = dst.at((col + j) * rows + b * g.time);
        // Pieces of a constant 8 elements: inline vector moves, where a copy of `T`
        // elements would be a library call per column (a tenth of the gradient's time).
        let mut pieces = s.chunks_exact(8);
        for (i, piece) in pieces.by_ref().enumerate() {
            std::ptr::copy_nonoverlapping(piece.as_ptr(), to.add(8 * i), 8);
        }
        let rest = pieces.remainder();
        std::ptr::copy_nonoverlapping(rest.as_ptr(), to.add(s.len() - rest.len()), rest.len());
    }
}

/// (sequence, head) pairs per unit of work on the thread pool: fixed by the geometry
/// (never by the number of threads), and each pair is computed alone, so the results
/// are the same on any number of threads.
fn chunk_pairs(g: &AttentionGeometry) -> usize {
    // About 16 chunks: enough to balance two to four threads, few enough that a chunk
    // (a few hundred microseconds at the library's sizes) outweighs its scheduling.
    (g.batch * g.heads).div_ceil(16)
}

/// Calls `f(pairs)` for consecutive ranges of [`chunk_pairs`] (sequence, head) pairs
/// (pair `b · heads + h`) covering all of them, on the thread pool when it has more than
/// one thread.
fn par_pairs(g: &AttentionGeometry, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let (n, c) = (g.batch * g.heads, chunk_pairs(g));
    let chunks = n.div_ceil(c);
    let range = |i: usize| i * c..((i + 1) * c).min(n);
    if chunks > 1 && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        (0..chunks).into_par_iter().for_each(|i| f(range(i)));
    } else {
        (0..chunks).for_each(|i| f(range(i)));
    }
}

/// Calls `f(seqs)` for consecutive chunks of [`fast::chunk_seqs`] sequences covering
/// the batch, on the thread pool when it has more than one thread. Each pair is
/// computed alone whatever the chunk, so the results are the same on any number of
/// threads.
#[cfg(target_arch = "x86_64")]
fn par_seqs(g: &AttentionGeometry, f: impl Fn(std::ops::Range<usize>) + Sync) {
    let c = fast::chunk_seqs(g);
    let range = |i: usize| i * c..((i + 1) * c).min(g.batch);
    let chunks = g.batch.div_ceil(c);
    if chunks > 1 && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        (0..chunks).into_par_iter().for_each(|i| f(range(i)));
    } else {
        (0..chunks).for_each(|i| f(range(i)));
    }
}

/// `f` on this thread's kept buffer of `n` `f32`s ([`ThreadBuffer`]; about a megabyte
/// for the library's transformer): a fresh zeroed one per chunk cost a pass over it each
/// time, as the allocator hands back reused memory. Its contents are whatever the last
/// use left: the chunks write before they read.
///
/// [`ThreadBuffer`]: crate::kernels::alloc::ThreadBuffer
#[cfg(target_arch = "x86_64")]
fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut s = crate::kernels::alloc::ThreadBuffer::<f32>::take();
    if s.len() < n {
        s.resize(n, 0.0);
    }
    f(&mut s[..n])
}

/// A column-major `r × c` matrix whose every element `fill` writes (through the pointer
/// it is given) before it returns.
///
/// # Safety
/// `fill` writes all `r · c` elements.
unsafe fn filled<S: Real>(r: usize, c: usize, fill: impl FnOnce(Shared<S>)) -> DMatrix<S> {
    let mut v = Vec::<S>::with_capacity(r * c);
    fill(Shared(v.as_mut_ptr()));
    v.set_len(r * c);
    DMatrix::from_vec(r, c, v)
}

/// Per column `t` (a query) of the `T × T` column-major `a` (the transposed probabilities)
/// and `e`: `e[s, t] ← a[s, t] · (e[s, t] − Σ_{s' ≤ t} a[s', t] e[s', t]) · scale` for
/// `s ≤ t` (the softmax's Jacobian, with the masked entries zero).
fn softmax_jacobian_t<S: Real>(a: &[S], e: &mut [S], t_len: usize, scale: Option<S>) {
    for t in 0..t_len {
        let (ac, ec) = (
            &a[t * t_len..t * t_len + t + 1],
            &mut e[t * t_len..(t + 1) * t_len],
        );
        let dot = ac
            .iter()
            .zip(ec.iter())
            .fold(S::zero(), |acc, (&p, &v)| acc + p * v);
        match scale {
            Some(s) => {
                for (v, &p) in ec[..=t].iter_mut().zip(ac) {
                    *v = p * (*v - dot) / s;
                }
            }
            None => {
                for (v, &p) in ec[..=t].iter_mut().zip(ac) {
                    *v = p * (*v - dot);
                }
            }
        }
        ec[t + 1..].iter_mut().for_each(|v| *v = S::zero());
    }
}

/// The output and the transposed probabilities `Pᵀ` of every sequence and head (block
/// `(b·H + h)·T²`, column `t` = query `t`'s weights over the keys).
fn forward<S: Real>(g: &AttentionGeometry, x: &DMatrix<S>) -> (DMatrix<S>, Vec<S>) {
    g.check_input(x);
    #[cfg(target_arch = "x86_64")]
    if let Some(xs) = as_f32(x.as_slice()).filter(|_| fast::applies(g)) {
        let (rows, w, tt) = (g.rows(), g.width(), g.time);
        let per_seq = g.heads * tt * tt;
        let mut probs = Vec::<f32>::with_capacity(probs_len(g));
        let mut out = Vec::<f32>::with_capacity(rows * w);
        let (pp, op) = (Shared(probs.as_mut_ptr()), Shared(out.as_mut_ptr()));
        // SAFETY: the fast path applies (checked); the chunks cover every sequence, each
        // writes every element of its own rows of the output and of its own pairs'
        // blocks of `probs` (masked entries as zeros), and the pool joins before the
        // lengths are set.
        unsafe {
            par_seqs(g, |seqs| {
                let n = seqs.len() * per_seq;
                let pt = std::slice::from_raw_parts_mut(pp.at(seqs.start * per_seq), n);
                with_scratch(fast::scratch_len(g), |scratch| {
                    fast::forward_chunk(g, xs, seqs, op.at(0), pt, scratch)
                });
            });
            out.set_len(rows * w);
            probs.set_len(probs_len(g));
        }
        return (DMatrix::from_vec(rows, w, from_f32(out)), from_f32(probs));
    }
    let (rows, w, tt, d) = (g.rows(), g.width(), g.time, g.key_size);
    let sqrt_d = S::from_f64((d as f64).sqrt());
    let xs = x.as_slice();
    let mut probs = vec![S::zero(); probs_len(g)];
    let pp = Shared(probs.as_mut_ptr());
    // SAFETY: the pairs cover every sequence and head, and each writes its own output
    // block (all `T` rows of sequence `b` in head `h`'s `d` columns) and its own block
    // of `probs`; the pool joins before `filled` returns.
    let out = unsafe {
        filled(rows, w, |op| {
            par_pairs(g, |pairs| {
                let mut o = vec![S::zero(); tt * d];
                for pair in pairs {
                    let (b, h) = (pair / g.heads, pair % g.heads);
                    let (q, k, v) = (
                        block(xs, rows, g, b, h * d),
                        block(xs, rows, g, b, w + h * d),
                        block(xs, rows, g, b, 2 * w + h * d),
                    );
                    let a = std::slice::from_raw_parts_mut(pp.at(pair * tt * tt), tt * tt);
                    // Lᵀ = K Qᵀ: column t holds query t's logits over the keys.
                    product_into(k, q.t(), a);
                    for t in 0..tt {
                        let col = &mut a[t * tt..(t + 1) * tt];
                        let (live, masked) = col.split_at_mut(t + 1);
                        masked.iter_mut().for_each(|v| *v = S::zero());
                        // Maps and reductions in separate loops, so that the maps (the
                        // exponentials above all) vectorize; the sum keeps its order.
                        live.iter_mut().for_each(|v| *v /= sqrt_d);
                        let m = live.iter().fold(S::c(f64::NEG_INFINITY), |m, &v| m.max(v));
                        live.iter_mut().for_each(|v| *v = exp(*v - m));
                        let sum = live.iter().fold(S::zero(), |s, &v| s + v);
                        live.iter_mut().for_each(|v| *v /= sum);
                    }
                    // O = P V = (Pᵀ)ᵀ V.
                    product_into(square(a, tt).t(), v, &mut o);
                    put_block(op, rows, g, b, h * d, &o);
                }
            })
        })
    };
    (out, probs)
}

/// The `n × n` column-major `a` as a view.
fn square<S: Real>(a: &[S], n: usize) -> View<'_, S> {
    View::col_major(a, n, n).expect("an n×n block holds n² elements")
}

impl<S: Real> Unary<CausalSelfAttention<'_>> for DMatrix<S> {
    type Out = DMatrix<S>;

    /// The attention output; the probabilities are kept in `op` for the derivative.
    #[track_caller]
    fn eval(&self, op: &CausalSelfAttention<'_>) -> DMatrix<S> {
        let (out, probs) = forward(op.0, self);
        op.1.set(Some(Box::new(Kept {
            input: self.as_ptr() as usize,
            output: out.as_ptr() as usize,
            probs,
        })));
        out
    }

    fn jvp(&self, op: &CausalSelfAttention<'_>, out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
        let g = op.0;
        g.check_input(dx);
        let probs = op.probs(self, out);
        let (rows, w, tt, d) = (g.rows(), g.width(), g.time, g.key_size);
        let sqrt_d = S::from_f64((d as f64).sqrt());
        let (xs, ts) = (self.as_slice(), dx.as_slice());
        // SAFETY: as in `forward`: every pair writes its own output block.
        unsafe {
            filled(rows, w, |dout| {
                par_pairs(g, |pairs| {
                    let mut e = vec![S::zero(); tt * tt];
                    let mut o = vec![S::zero(); tt * d];
                    for pair in pairs {
                        let (b, h) = (pair / g.heads, pair % g.heads);
                        let (q, k, v) = (
                            block(xs, rows, g, b, h * d),
                            block(xs, rows, g, b, w + h * d),
                            block(xs, rows, g, b, 2 * w + h * d),
                        );
                        let (dq, dk, dv) = (
                            block(ts, rows, g, b, h * d),
                            block(ts, rows, g, b, w + h * d),
                            block(ts, rows, g, b, 2 * w + h * d),
                        );
                        let a = &probs[pair * tt * tt..][..tt * tt];
                        // dLᵀ = (dK Qᵀ + K dQᵀ) / sqrt(d), then dPᵀ through the softmax.
                        product_into(dk, q.t(), &mut e);
                        product_acc(k, dq.t(), &mut e);
                        e.iter_mut().for_each(|v| *v /= sqrt_d);
                        softmax_jacobian_t(a, &mut e, tt, None);
                        // dO = dP V + P dV.
                        product_into(square(&e, tt).t(), v, &mut o);
                        product_acc(square(a, tt).t(), dv, &mut o);
                        put_block(dout, rows, g, b, h * d, &o);
                    }
                })
            })
        }
    }

    fn vjp(&self, op: &CausalSelfAttention<'_>, out: &DMatrix<S>, gr: DMatrix<S>) -> DMatrix<S> {
        let g = op.0;
        assert_eq!(
            gr.shape(),
            (g.rows(), g.width()),
            "causal_self_attention: a cotangent of the wrong shape for {g:?}"
        );
        let probs = op.probs(self, out);
        let (rows, w, tt, d) = (g.rows(), g.width(), g.time, g.key_size);
        let sqrt_d = S::from_f64((d as f64).sqrt());
        let (xs, gs) = (self.as_slice(), gr.as_slice());
        #[cfg(target_arch = "x86_64")]
        if let (Some(xf), Some(gf), Some(pf), true) =
            (as_f32(xs), as_f32(gs), as_f32(&probs), fast::applies(g))
        {
            let mut dx = Vec::<f32>::with_capacity(rows * 3 * w);
            let dp = Shared(dx.as_mut_ptr());
            // SAFETY: the fast path applies (checked); every pair writes its own blocks
            // of `dq`, `dk`, `dv`, together all of them, and the pool joins before the
            // length is set.
            unsafe {
                let per_seq = g.heads * tt * tt;
                par_seqs(g, |seqs| {
                    let pt = &pf[seqs.start * per_seq..seqs.end * per_seq];
                    with_scratch(fast::scratch_len(g), |scratch| {
                        fast::reverse_chunk(g, xf, gf, seqs, pt, dp.at(0), scratch)
                    });
                });
                dx.set_len(rows * 3 * w);
            }
            return DMatrix::from_vec(rows, 3 * w, from_f32(dx));
        }
        // SAFETY: as in `forward`: every pair writes its own blocks of `dq`, `dk`, `dv`.
        unsafe {
            filled(rows, 3 * w, |dx| {
                par_pairs(g, |pairs| {
                    let mut e = vec![S::zero(); tt * tt];
                    let mut o = vec![S::zero(); tt * d];
                    for pair in pairs {
                        let (b, h) = (pair / g.heads, pair % g.heads);
                        let (q, k, v) = (
                            block(xs, rows, g, b, h * d),
                            block(xs, rows, g, b, w + h * d),
                            block(xs, rows, g, b, 2 * w + h * d),
                        );
                        let go = block(gs, rows, g, b, h * d);
                        let a = &probs[pair * tt * tt..][..tt * tt];
                        let a_view = square(a, tt);
                        // dV = Pᵀ G.
                        product_into(a_view, go, &mut o);
                        put_block(dx, rows, g, b, 2 * w + h * d, &o);
                        // dPᵀ = V Gᵀ, then dLᵀ through the softmax and the scale.
                        product_into(v, go.t(), &mut e);
                        softmax_jacobian_t(a, &mut e, tt, Some(sqrt_d));
                        let e_view = square(&e, tt);
                        // dQ = dL K = (dLᵀ)ᵀ K, dK = dLᵀ Q.
                        product_into(e_view.t(), k, &mut o);
                        put_block(dx, rows, g, b, h * d, &o);
                        product_into(e_view, q, &mut o);
                        put_block(dx, rows, g, b, w + h * d, &o);
                    }
                })
            })
        }
    }
}

/// Causal multi-head self-attention of `qkv` (`[q | k | v]` columns, see the module) for
/// `geometry`: haiku's `MultiHeadAttention` core with a causal mask, the heads
/// concatenated.
#[track_caller]
pub fn causal_self_attention<S: Real>(
    qkv: &DMatrix<S>,
    geometry: &AttentionGeometry,
) -> DMatrix<S> {
    forward(geometry, qkv).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use crate::lanes::Lanes;

    /// haiku's attention written from its definition in f64 loops, independent of the
    /// rule: logits over all keys, `−1e30` where `s > t`, a softmax over the full row
    /// (max subtracted), the weighted values; `x` row-major `[B·T, 3·H·d]`, result
    /// row-major `[B·T, H·d]`.
    fn plain_attention(x: &[f64], g: &AttentionGeometry) -> Vec<f64> {
        let (tt, hh, d) = (g.time, g.heads, g.key_size);
        let w = hh * d;
        let at = |b: usize, t: usize, c: usize| x[(b * tt + t) * 3 * w + c];
        let mut y = vec![0.0; g.rows() * w];
        for b in 0..g.batch {
            for h in 0..hh {
                for t in 0..tt {
                    let logits: Vec<f64> = (0..tt)
                        .map(|s| {
                            let l: f64 = (0..d)
                                .map(|j| at(b, t, h * d + j) * at(b, s, w + h * d + j))
                                .sum::<f64>()
                                / (d as f64).sqrt();
                            if s <= t {
                                l
                            } else {
                                -1e30
                            }
                        })
                        .collect();
                    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for j in 0..d {
                        y[(b * tt + t) * w + h * d + j] = (0..tt)
                            .map(|s| e[s] / z * at(b, s, 2 * w + h * d + j))
                            .sum();
                    }
                }
            }
        }
        y
    }

    fn normals(n: usize, seed: u64) -> Vec<f64> {
        let mut v = vec![0.0f32; n];
        Key::new(seed).fill_normal(&mut v);
        v.into_iter().map(f64::from).collect()
    }

    /// A row-major `r × c` vector as a matrix.
    fn from_rows(r: usize, c: usize, v: &[f64]) -> DMatrix<f64> {
        DMatrix::from_fn(r, c, |i, j| v[i * c + j])
    }

    fn geometries() -> Vec<AttentionGeometry> {
        vec![
            AttentionGeometry::new(2, 5, 2, 3).unwrap(),
            AttentionGeometry::new(1, 7, 3, 4).unwrap(),
            AttentionGeometry::new(3, 1, 1, 2).unwrap(),
        ]
    }

    /// The value against the definition. Mutations caught: scaling by `1/d` instead of
    /// `1/sqrt(d)`; dropping the mask (letting `s ≤ t` become all `s`), both tried and
    /// failing here.
    #[test]
    fn value_matches_the_definition() {
        for (k, g) in geometries().into_iter().enumerate() {
            let x = normals(g.rows() * 3 * g.width(), 1 + k as u64);
            let y = causal_self_attention(&from_rows(g.rows(), 3 * g.width(), &x), &g);
            let want = from_rows(g.rows(), g.width(), &plain_attention(&x, &g));
            assert!((&y - &want).abs().max() < 1e-12, "{g:?}");
        }
    }

    /// Both modes against f64 central differences of the definition, and the adjoint
    /// identity ⟨vjp(u), t⟩ = ⟨u, jvp(t)⟩. Mutations caught: the softmax Jacobian without
    /// its `− rowsum(P ∘ dP)` term; `dK` computed as `dL Q` (untransposed); the reverse
    /// rule's scale omitted; each tried, each fails here.
    #[test]
    fn derivatives_match_central_differences() {
        for (k, g) in geometries().into_iter().enumerate() {
            let (r, c) = (g.rows(), 3 * g.width());
            let xv = normals(r * c, 10 + k as u64);
            let (x, t, u) = (
                from_rows(r, c, &xv),
                from_rows(r, c, &normals(r * c, 20 + k as u64)),
                from_rows(r, g.width(), &normals(r * g.width(), 30 + k as u64)),
            );
            let op = CausalSelfAttention::new(&g);
            let y = x.eval(&op);
            let jvp = x.jvp(&op, &y, &t);
            let vjp = x.vjp(&op, &y, u.clone());
            // Forward mode: (f(x + h t) − f(x − h t)) / 2h, elementwise.
            let h = 1e-6;
            let tv: Vec<f64> = (0..r * c).map(|i| t[(i / c, i % c)]).collect();
            let shifted = |sign: f64| {
                let v: Vec<f64> = xv.iter().zip(&tv).map(|(a, b)| a + sign * h * b).collect();
                from_rows(r, g.width(), &plain_attention(&v, &g))
            };
            let fd = (shifted(1.0) - shifted(-1.0)) / (2.0 * h);
            assert!((&jvp - &fd).abs().max() < 1e-6, "{g:?} jvp");
            // Reverse mode: d⟨u, f(x)⟩ / dx_i by central differences, every element.
            let f = |v: &[f64]| from_rows(r, g.width(), &plain_attention(v, &g)).dot(&u);
            for i in 0..r * c {
                let (mut a, mut b) = (xv.clone(), xv.clone());
                a[i] += h;
                b[i] -= h;
                let fd = (f(&a) - f(&b)) / (2.0 * h);
                let got = vjp[(i / c, i % c)];
                assert!((got - fd).abs() < 1e-6, "{g:?} element {i}: {got} vs {fd}");
            }
            assert!((vjp.dot(&t) - u.dot(&jvp)).abs() < 1e-10, "{g:?} adjoint");
        }
    }

    /// The probabilities `eval` keeps are the ones the derivative would recompute: a
    /// derivative after `eval` equals one on a fresh op (nothing kept), and the first
    /// derivative takes what was kept. Mutation caught: keeping a buffer other than
    /// the probabilities (tried: every kept probability doubled; the gradients differ).
    #[test]
    fn kept_probabilities_equal_recomputed_ones() {
        let g = geometries()[1];
        let (r, c) = (g.rows(), 3 * g.width());
        let x = from_rows(r, c, &normals(r * c, 3));
        let u = from_rows(r, g.width(), &normals(r * g.width(), 4));
        let op = CausalSelfAttention::new(&g);
        let y = x.eval(&op);
        let kept = x.vjp(&op, &y, u.clone());
        assert!(op.1.take().is_none(), "the derivative took what eval kept");
        let fresh = x.vjp(&CausalSelfAttention::new(&g), &y, u);
        assert_eq!(kept, fresh);
    }

    /// Each lane of a packed attention is its own `f32` instance's, within the matrix
    /// products' and `exp`'s 1e-6 (README, "What batched == serial promises"), value,
    /// tangent and cotangent. Mutation caught: normalizing every lane's softmax by
    /// lane 0's sum (tried; invisible to the `f64` tests, where lane 0 is the value).
    #[test]
    fn lanes_are_their_f32_instances() {
        let g = AttentionGeometry::new(2, 6, 2, 8).unwrap();
        let (r, c) = (g.rows(), 3 * g.width());
        let draw = |seed: u64, cols: usize| -> Vec<DMatrix<f32>> {
            (0..8)
                .map(|l| {
                    DMatrix::from_vec(
                        r,
                        cols,
                        normals(r * cols, seed * 100 + l)
                            .iter()
                            .map(|&v| v as f32)
                            .collect(),
                    )
                })
                .collect()
        };
        let pack = |m: &[DMatrix<f32>]| {
            DMatrix::<Lanes<8>>::from_fn(m[0].nrows(), m[0].ncols(), |i, j| {
                Lanes::from_lanes(|l| m[l][(i, j)] as f64)
            })
        };
        let (xs, ts, us) = (draw(1, c), draw(2, c), draw(3, g.width()));
        let (xp, tp, up) = (pack(&xs), pack(&ts), pack(&us));
        let op = CausalSelfAttention::new(&g);
        let yp = xp.eval(&op);
        let (jp, vp) = (xp.jvp(&op, &yp, &tp), xp.vjp(&op, &yp, up));
        for l in 0..8 {
            let op = CausalSelfAttention::new(&g);
            let y = xs[l].eval(&op);
            let (j, v) = (
                xs[l].jvp(&op, &y, &ts[l]),
                xs[l].vjp(&op, &y, us[l].clone()),
            );
            for (packed, single) in [(&yp, &y), (&jp, &j), (&vp, &v)] {
                let scale = single.abs().max().max(1e-30);
                for (a, b) in packed.iter().zip(single.iter()) {
                    let err = (a.lane(l) as f32 - b).abs() / scale;
                    assert!(err <= 1e-6, "lane {l}: {} vs {b}", a.lane(l));
                }
            }
        }
    }

    /// The (sequence, head) pairs run in fixed chunks on the thread pool: on 1 and on 3
    /// threads the value, tangent and cotangent are the same bit for bit, and the value
    /// is the definition's, with a pair count the chunks do not divide (34 pairs in
    /// chunks of 3). Mutations caught: the last chunk's range not clamped to the pair
    /// count (a panic); the last chunk dropped (`n / c` chunks: its blocks are never
    /// written); each tried, each fails here.
    #[test]
    fn chunks_on_the_pool_are_bit_identical_to_one_thread() {
        let g = AttentionGeometry::new(17, 4, 2, 3).unwrap();
        assert_eq!((chunk_pairs(&g), g.batch * g.heads), (3, 34));
        let (r, c) = (g.rows(), 3 * g.width());
        let xv = normals(r * c, 41);
        let x = from_rows(r, c, &xv).map(|v| v as f32);
        let t = from_rows(r, c, &normals(r * c, 42)).map(|v| v as f32);
        let u = from_rows(r, g.width(), &normals(r * g.width(), 43)).map(|v| v as f32);
        let run = |threads: usize| {
            crate::on_threads(threads, || {
                let op = CausalSelfAttention::new(&g);
                let y = x.eval(&op);
                (y.clone(), x.jvp(&op, &y, &t), x.vjp(&op, &y, u.clone()))
            })
        };
        let (one, three) = (run(1), run(3));
        assert_eq!(one, three);
        let want = from_rows(r, g.width(), &plain_attention(&xv, &g));
        let err = (one.0.map(f64::from) - want).abs().max();
        assert!(err < 1e-5, "value off by {err}");
    }

    /// The reverse pass of haiku's attention written by hand in f64 loops from the
    /// definition (independent of the rule): per sequence, head and query `t`, the
    /// softmax over keys `s ≤ t` and `o_t = Σ p_s v_s`; then `dv_s += p_s g_t`,
    /// `dp_s = ⟨g_t, v_s⟩`, `dl_s = p_s (dp_s − Σ_s' p_s' dp_s') / sqrt(d)`,
    /// `dq_t += Σ_s dl_s k_s`, `dk_s += dl_s q_t`. `x` row-major `[B·T, 3·H·d]`, `gy`
    /// row-major `[B·T, H·d]`; the result row-major like `x`.
    fn plain_attention_vjp(x: &[f64], gy: &[f64], g: &AttentionGeometry) -> Vec<f64> {
        let (tt, hh, d) = (g.time, g.heads, g.key_size);
        let w = hh * d;
        let at = |b: usize, t: usize, c: usize| x[(b * tt + t) * 3 * w + c];
        let mut dx = vec![0.0; g.rows() * 3 * w];
        let sq = (d as f64).sqrt();
        for b in 0..g.batch {
            for h in 0..hh {
                let (qc, kc, vc) = (h * d, w + h * d, 2 * w + h * d);
                for t in 0..tt {
                    let l: Vec<f64> = (0..=t)
                        .map(|s| {
                            (0..d)
                                .map(|j| at(b, t, qc + j) * at(b, s, kc + j))
                                .sum::<f64>()
                                / sq
                        })
                        .collect();
                    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = l.iter().map(|v| (v - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    let p: Vec<f64> = e.iter().map(|v| v / z).collect();
                    let gt = |j: usize| gy[(b * tt + t) * w + h * d + j];
                    let dp: Vec<f64> = (0..=t)
                        .map(|s| (0..d).map(|j| gt(j) * at(b, s, vc + j)).sum())
                        .collect();
                    let pdp: f64 = (0..=t).map(|s| p[s] * dp[s]).sum();
                    for s in 0..=t {
                        let dl = p[s] * (dp[s] - pdp) / sq;
                        for j in 0..d {
                            dx[(b * tt + s) * 3 * w + vc + j] += p[s] * gt(j);
                            dx[(b * tt + t) * 3 * w + qc + j] += dl * at(b, s, kc + j);
                            dx[(b * tt + s) * 3 * w + kc + j] += dl * at(b, t, qc + j);
                        }
                    }
                }
            }
        }
        dx
    }

    /// The `f32` fast path (AVX2 + FMA, `T` a multiple of 8: register tiles read in
    /// place, the causal triangle skipped by blocks of 8 rows) against the plain f64
    /// definitions of the value and of the reverse pass, on shapes that take every tile
    /// form: `T` of 8, 16, 24 (pairs of row blocks and a single one), 32, and `d` of 32,
    /// 5, 6, 7 (column groups of 4 and remainders of 1, 2, 3); and bit for bit the same
    /// on 1 and 3 threads. The tangent (generic products on the fast path's
    /// probabilities) against the f64 rule's. Mutations caught (each tried, each fails
    /// here): the dV product's term range starting at `8·hi` instead of `8·lo`;
    /// `O = P V` summing keys only below `8·lo`; the logits' row blocks one short (`c0 / 8`
    /// instead of `c1.div_ceil(8)`: the diagonal block left out); `dK` from `dL` instead
    /// of `dLᵀ`.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn f32_fast_path_matches_the_f64_definitions() {
        for (bb, tt, hh, d, seed) in [
            (2, 8, 2, 5, 1),
            (1, 16, 1, 6, 2),
            (2, 24, 3, 7, 3),
            (2, 32, 4, 32, 4),
            (1, 16, 2, 3, 5),
        ] {
            let g = AttentionGeometry::new(bb, tt, hh, d).unwrap();
            assert!(fast::applies(&g) || !crate::kernels::cpu::has_avx2_fma());
            let (r, c, w) = (g.rows(), 3 * g.width(), g.width());
            let xv = normals(r * c, seed);
            let gv = normals(r * w, seed + 50);
            let tv = normals(r * c, seed + 90);
            let x = from_rows(r, c, &xv).map(|v| v as f32);
            let gy = from_rows(r, w, &gv).map(|v| v as f32);
            let t = from_rows(r, c, &tv).map(|v| v as f32);
            let run = |threads: usize| {
                crate::on_threads(threads, || {
                    let op = CausalSelfAttention::new(&g);
                    let y = x.eval(&op);
                    let dx = x.vjp(&op, &y, gy.clone());
                    let op = CausalSelfAttention::new(&g);
                    let y2 = x.eval(&op);
                    (y, dx, x.jvp(&op, &y2, &t))
                })
            };
            let (one, three) = (run(1), run(3));
            assert_eq!(one, three, "{g:?}: 1 vs 3 threads");
            let (y, dx, jv) = one;
            let close = |got: &DMatrix<f32>, want: &DMatrix<f64>, what: &str| {
                let scale = want.abs().max().max(1e-30);
                let err = (got.map(f64::from) - want).abs().max() / scale;
                assert!(err < 2e-6, "{g:?} {what}: relative error {err}");
            };
            close(&y, &from_rows(r, w, &plain_attention(&xv, &g)), "value");
            close(
                &dx,
                &from_rows(r, c, &plain_attention_vjp(&xv, &gv, &g)),
                "vjp",
            );
            let x64 = from_rows(r, c, &xv);
            let op = CausalSelfAttention::new(&g);
            let y64 = x64.eval(&op);
            close(&jv, &x64.jvp(&op, &y64, &from_rows(r, c, &tv)), "jvp");
        }
    }

    /// Each chunk of sequences of the fast path writes its own rows of the output and of
    /// the input's cotangent, and nothing else: the chunks run on the pool at once, and a
    /// write into another chunk's rows, even of the value there, would race the chunk
    /// that owns them (a lost sum, rarely: what CI once saw in the convolution's col2im).
    /// Every element starts as −0.0, which any write turns into another bit pattern;
    /// `T` = 16 (two row blocks), `d` = 5 (a column remainder), 3 heads, 19 sequences in
    /// chunks of 3 (the last one short). And every element of its own rows is written
    /// (the rule's buffers start uninitialized): each equals the rule's result bit for
    /// bit; its probabilities too; both through packed copies and in place. Mutations:
    /// `unpack_rows` copying `T + 8` rows per sequence; `pack_rows`/`unpack_rows` leaving
    /// the last column out; the chunk's last sequence left out; in place, the output's
    /// columns `T` apart, or the cotangent's sequences read at one offset (each tried,
    /// each fails).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn fast_chunks_write_only_their_own_rows() {
        if !crate::kernels::cpu::has_avx2_fma() {
            return;
        }
        let g = AttentionGeometry::new(19, 16, 3, 5).unwrap();
        assert!(fast::applies(&g));
        assert_eq!(fast::chunk_seqs(&g), 3);
        let (rows, w, tt) = (g.rows(), g.width(), g.time);
        let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        let (x, gy) = (f32s(normals(rows * 3 * w, 31)), f32s(normals(rows * w, 32)));
        // NaN scratch: the chunks write their scratch before reading it (the thread's
        // kept buffer holds whatever its last user left).
        let mut scratch = vec![f32::NAN; fast::scratch_len(&g)];
        let neg0 = (-0.0f32).to_bits();
        // The rule's results, for the chunks' own rows.
        let (xm, gm) = (
            DMatrix::from_vec(rows, 3 * w, x.clone()),
            DMatrix::from_vec(rows, w, gy.clone()),
        );
        let op = CausalSelfAttention::new(&g);
        let want_y = xm.eval(&op);
        let want_p = forward(&g, &xm).1;
        let want_dx = xm.vjp(&op, &want_y, gm);
        let per_seq = g.heads * tt * tt;
        let chunks = (0..g.batch).step_by(3);
        for (in_place, b0) in [false, true]
            .into_iter()
            .flat_map(|p| chunks.clone().map(move |b| (p, b)))
        {
            let seqs = b0..(b0 + 3).min(g.batch);
            // Element `i` of a column-major matrix of `rows` rows is this chunk's when
            // its row is in one of the chunk's sequences.
            let own = |i: usize| seqs.contains(&((i % rows) / tt));
            let mut out = vec![-0.0f32; rows * w];
            let mut pt = vec![-0.0f32; seqs.len() * per_seq];
            // SAFETY: the fast path applies (asserted); `out` holds the whole output.
            unsafe {
                fast::forward_chunk_on(
                    fast::wide(),
                    in_place,
                    &g,
                    &x,
                    seqs.clone(),
                    out.as_mut_ptr(),
                    &mut pt,
                    &mut scratch,
                )
            };
            let want_pt = &want_p[seqs.start * per_seq..seqs.end * per_seq];
            assert!(pt
                .iter()
                .zip(want_pt)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
            let mut dx = vec![-0.0f32; rows * 3 * w];
            // SAFETY: as above; `dx` holds the whole cotangent.
            unsafe {
                fast::reverse_chunk_on(
                    fast::wide(),
                    in_place,
                    &g,
                    &x,
                    &gy,
                    seqs.clone(),
                    &pt,
                    dx.as_mut_ptr(),
                    &mut scratch,
                )
            };
            let both = [
                ("output", &out, want_y.as_slice()),
                ("cotangent", &dx, want_dx.as_slice()),
            ];
            for (what, m, want) in both {
                for (i, (v, w)) in m.iter().zip(want).enumerate() {
                    // Its own elements all written (the rule's buffers start
                    // uninitialized), the others not at all.
                    let ok = if own(i) {
                        v.to_bits() == w.to_bits()
                    } else {
                        v.to_bits() == neg0
                    };
                    assert!(
                        ok,
                        "chunk {seqs:?} (in place {in_place}) left {v} at the {what}'s element {i}"
                    );
                }
            }
        }
    }

    /// The AVX-512 kernels (16-row tiles in one register, up to 8 columns) give the AVX2
    /// ones' bits, in place and through packed copies alike: every element is the same
    /// fused multiply-adds in the same order, the softmax and its Jacobian the same code.
    /// Chunk by chunk on shapes that take every tile form (`d` of 1 to 8, 13 and 32: 8-column tiles and remainders of 1 to 7; `T`
    /// of 8 to 40: pairs of row blocks and a single one) and with a short last chunk;
    /// and the rule, on 1 and on 3 threads, gives the same bits as the chunks of the
    /// variant it runs (unless capped to the generic path). Skipped where the CPU lacks
    /// AVX-512F. Mutations caught (each tried, each fails here): the
    /// 7-column remainder run as a 6-column tile; `tile_z`'s terms from `k0 + 1`.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx512_chunks_equal_avx2_chunks_bit_for_bit() {
        use crate::kernels::cpu::Isa;
        if !Isa::Avx512.supported() {
            return;
        }
        let shapes = [
            (3, 16, 2, 13, 1),
            (2, 24, 1, 7, 2),
            (2, 32, 2, 32, 3),
            (1, 8, 3, 1, 4),
            (2, 40, 1, 6, 5),
            (1, 16, 1, 5, 6),
            (1, 16, 2, 4, 7),
            (1, 8, 1, 3, 8),
            (1, 8, 1, 2, 9),
            (1, 8, 1, 8, 10),
            (17, 8, 1, 3, 11),
        ];
        for (bb, tt, hh, d, seed) in shapes {
            let g = AttentionGeometry::new(bb, tt, hh, d).unwrap();
            let (rows, w) = (g.rows(), g.width());
            let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
            let x = f32s(normals(rows * 3 * w, seed));
            let gy = f32s(normals(rows * w, seed + 20));
            let per_seq = hh * tt * tt;
            let run = |wide: bool, in_place: bool| {
                let mut scratch = vec![0.0f32; fast::scratch_len(&g)];
                let (mut out, mut probs) = (vec![0.0f32; rows * w], vec![0.0f32; bb * per_seq]);
                let mut dx = vec![0.0f32; rows * 3 * w];
                let c = fast::chunk_seqs(&g);
                for b0 in (0..bb).step_by(c) {
                    let seqs = b0..(b0 + c).min(bb);
                    let pt = &mut probs[seqs.start * per_seq..seqs.end * per_seq];
                    // SAFETY: the CPU has AVX-512F (checked) and AVX2; the buffers hold
                    // the whole matrices; one chunk at a time.
                    unsafe {
                        fast::forward_chunk_on(
                            wide,
                            in_place,
                            &g,
                            &x,
                            seqs.clone(),
                            out.as_mut_ptr(),
                            pt,
                            &mut scratch,
                        );
                        fast::reverse_chunk_on(
                            wide,
                            in_place,
                            &g,
                            &x,
                            &gy,
                            seqs,
                            pt,
                            dx.as_mut_ptr(),
                            &mut scratch,
                        );
                    }
                }
                (out, probs, dx)
            };
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            let (wide, narrow) = (run(true, true), run(false, false));
            for other in [&narrow, &run(true, false), &run(false, true)] {
                assert_eq!(bits(&wide.0), bits(&other.0), "{g:?} output");
                assert_eq!(bits(&wide.1), bits(&other.1), "{g:?} probabilities");
                assert_eq!(bits(&wide.2), bits(&other.2), "{g:?} cotangent");
            }
            if !fast::applies(&g) {
                continue; // `LOPT_MAX_ISA=portable`: the rule takes the generic path.
            }
            let mine = if crate::kernels::cpu::isa() == Isa::Avx512 {
                &wide
            } else {
                &narrow
            };
            let (xm, gm) = (
                DMatrix::from_vec(rows, 3 * w, x.clone()),
                DMatrix::from_vec(rows, w, gy.clone()),
            );
            for threads in [1, 3] {
                let (y, dx) = crate::on_threads(threads, || {
                    let op = CausalSelfAttention::new(&g);
                    let y = xm.eval(&op);
                    let dx = xm.vjp(&op, &y, gm.clone());
                    (y, dx)
                });
                assert_eq!(bits(y.as_slice()), bits(&mine.0), "{g:?} rule's output");
                assert_eq!(bits(dx.as_slice()), bits(&mine.2), "{g:?} rule's cotangent");
            }
        }
    }

    /// Mutation caught: the zero-size refusal removed (tried).
    #[test]
    fn zero_sizes_are_refused() {
        assert!(matches!(
            AttentionGeometry::new(1, 0, 2, 3),
            Err(Error::InvalidArgument(_))
        ));
        assert!(AttentionGeometry::new(0, 1, 1, 1).is_err());
    }

    /// A hand-built geometry with a zero size is refused by name at the call, not by a
    /// division by zero inside (the input is empty, so it has the shape such a geometry
    /// asks for).
    #[test]
    #[should_panic(expected = "a geometry with a zero size")]
    fn hand_built_zero_geometry_panics_by_name() {
        let g = AttentionGeometry {
            batch: 2,
            time: 4,
            heads: 0,
            key_size: 8,
        };
        causal_self_attention(&DMatrix::<f32>::zeros(g.rows(), 3 * g.width()), &g);
    }

    #[test]
    #[should_panic(expected = "batch·time rows")]
    fn wrong_input_shape_panics_with_the_shapes() {
        let g = geometries()[0];
        causal_self_attention(&DMatrix::<f32>::zeros(g.rows(), g.width()), &g);
    }
}
