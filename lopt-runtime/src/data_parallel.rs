//! Data-parallel losses and gradients over a batch's rows ([`DataParallel`]).
//!
//! A task whose loss is an average over independent rows (examples, sequences),
//!
//! ```text
//! L(θ; batch) = Σ_rows ℓ(θ; row) / w(batch),
//! ```
//!
//! with `w` additive over rows ([`SplitBatch::loss_weight`]: the number of rows for a mean,
//! the number of unmasked tokens for the language models' `Σ ce·mask / Σ mask`), has
//!
//! ```text
//! L(θ; batch) = Σ_c (w_c / W) · L(θ; chunk c),   ∇L = Σ_c (w_c / W) · ∇L(θ; chunk c),
//! ```
//!
//! for any split of the rows into chunks with weights `w_c` and `W = Σ_c w_c`.
//! [`DataParallel`] wraps such a task: it splits each batch into row chunks, runs the
//! task's own `loss` / `value_and_grad` / `value_and_jvp` on each chunk on the Rayon pool,
//! and combines them as above.
//!
//! **Determinism.** The number of chunks and their rows depend only on the batch's row
//! count and the wrapper's `chunk_rows` ([`chunk_ranges`]), never on the number of
//! threads; the losses and gradients are summed along a binary tree fixed by the chunks
//! (each half of the chunks summed, then the two halves), whichever thread runs each
//! part. So the result is bit-identical on a pool of 1 thread or of any
//! number (each chunk is computed by the same code whichever thread runs it).
//!
//! **Nesting.** Inside a Rayon worker (a lane group of a vmapped family, a task trained
//! by `map_groups_mut`) the chunks are Rayon tasks of the same pool: no thread is
//! created, the pool's fixed threads steal the chunks, so nested use does not
//! oversubscribe the machine. On a one-thread pool the chunks run in order inline.
//!
//! **Not for** losses that couple rows (batch normalization, contrastive losses), or
//! stochastic losses whose draws must match the whole batch's: every chunk receives the
//! same key, so a chunk draws what the first rows of a whole batch would.

use std::ops::{Deref, Range};

use crate::datasets::text::LmBatch;
use crate::datasets::{Datasets, ImageBatch};
use crate::key::Key;
use crate::params::Params;
use crate::scalar::Real;
use crate::task::Task;
use crate::{Error, Result};

/// A batch of independent rows that can be cut into row chunks.
///
/// Implementations promise that a task using the batch with [`DataParallel`] has a loss of
/// the form `Σ_rows ℓ(row) / loss_weight(batch)` (module docs), with `loss_weight`
/// additive over any split of the rows.
pub trait SplitBatch: Send + Sync + Sized {
    /// Number of rows (independent examples).
    fn num_rows(&self) -> usize;
    /// The rows `range` as a batch of their own (`range` within `0..num_rows()`).
    fn rows(&self, range: Range<usize>) -> Self;
    /// The denominator of the loss's average over this batch: additive over rows; a chunk
    /// of weight 0 contributes nothing (its own loss, `0/0`, is not evaluated).
    fn loss_weight(&self) -> f64;
}

/// Sequences are rows; the weight is `Σ mask` ([`LmBatch::num_tokens`]), the denominator
/// of the JAX library's LM loss `Σ ce·mask / Σ mask`.
impl SplitBatch for LmBatch {
    fn num_rows(&self) -> usize {
        self.obs.nrows()
    }
    fn rows(&self, range: Range<usize>) -> Self {
        LmBatch {
            obs: self.obs.rows(range.start, range.len()).into_owned(),
            target: self.target.rows(range.start, range.len()).into_owned(),
        }
    }
    fn loss_weight(&self) -> f64 {
        self.num_tokens() as f64
    }
}

/// Images are rows; the weight is the number of images (a mean over the batch).
impl SplitBatch for ImageBatch {
    fn num_rows(&self) -> usize {
        self.image.nrows()
    }
    fn rows(&self, range: Range<usize>) -> Self {
        ImageBatch {
            image: self.image.rows(range.start, range.len()).into_owned(),
            label: self.label[range.clone()].to_vec(),
            height: self.height,
            width: self.width,
            channels: self.channels,
        }
    }
    fn loss_weight(&self) -> f64 {
        self.image.nrows() as f64
    }
}

/// The row chunks of a batch of `rows` rows for chunks of about `chunk_rows`:
/// `max(1, rows / chunk_rows)` consecutive ranges whose sizes differ by at most one (the
/// first `rows mod n` are one longer). A function of the geometry only, never of the
/// thread count.
///
/// ```
/// use lopt_runtime::data_parallel::chunk_ranges;
/// assert_eq!(chunk_ranges(128, 64), vec![0..64, 64..128]);
/// assert_eq!(chunk_ranges(10, 4), vec![0..5, 5..10]);
/// assert_eq!(chunk_ranges(3, 64), vec![0..3]);
/// ```
pub fn chunk_ranges(rows: usize, chunk_rows: usize) -> Vec<Range<usize>> {
    let n = (rows / chunk_rows.max(1)).max(1);
    let (base, extra) = (rows / n, rows % n);
    let mut start = 0;
    (0..n)
        .map(|c| {
            let len = base + usize::from(c < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// A task whose loss, gradient and JVP are computed over row chunks of the batch in
/// parallel and combined by the chunks' loss weights (see the [module docs](self)); every
/// other method is the wrapped task's. Dereferences to the wrapped task, so its own
/// methods (sizes, `check_batch`) stay callable.
///
/// ```
/// use lopt_runtime::data_parallel::DataParallel;
/// # use lopt_runtime::{Key, Real, Task};
/// # #[derive(Debug)] struct Quad;
/// # impl Task for Quad {
/// #     type Params<S: Real> = S; type Batch = lopt_runtime::datasets::ImageBatch;
/// #     fn init<S: Real>(&self, key: Key) -> S { key.normal() }
/// #     fn loss<S: Real>(&self, p: &S, _: S::Key, _: &Self::Batch) -> S { *p * *p }
/// #     fn value_and_grad<S: Real>(&self, p: &S, _: S::Key, _: &Self::Batch) -> (S, S) { (*p * *p, *p + *p) }
/// #     fn value_and_jvp<S: Real>(&self, p: &S, t: &S, _: S::Key, _: &Self::Batch) -> (S, S) { (*p * *p, (*p + *p) * *t) }
/// #     fn cast_params<T: Real, S: Real>(&self, p: &T) -> S { S::from_f64(p.lane(0)) }
/// # }
/// // Batches of 128 rows run as two chunks of 64, on one thread or many.
/// let task = DataParallel::new(Quad, 64).unwrap();
/// assert_eq!(task.chunks(128).len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct DataParallel<T> {
    task: T,
    chunk_rows: usize,
}

impl<T> DataParallel<T> {
    /// `task` split into chunks of about `chunk_rows` rows ([`chunk_ranges`]).
    ///
    /// Errors: [`Error::InvalidArgument`] when `chunk_rows` is 0.
    pub fn new(task: T, chunk_rows: usize) -> Result<Self> {
        if chunk_rows == 0 {
            return Err(Error::InvalidArgument(
                "DataParallel: chunk_rows must be positive".into(),
            ));
        }
        Ok(DataParallel { task, chunk_rows })
    }

    /// The wrapped task (whole-batch loss and gradient).
    pub fn inner(&self) -> &T {
        &self.task
    }

    /// The wrapped task, unwrapped.
    pub fn into_inner(self) -> T {
        self.task
    }

    /// The nominal rows per chunk.
    pub fn chunk_rows(&self) -> usize {
        self.chunk_rows
    }

    /// The row chunks of a batch of `rows` rows ([`chunk_ranges`]).
    pub fn chunks(&self, rows: usize) -> Vec<Range<usize>> {
        chunk_ranges(rows, self.chunk_rows)
    }
}

impl<T> Deref for DataParallel<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.task
    }
}

/// `Σ_c (w_c / W) · f(chunk c)` over the chunks of positive weight, added along a binary
/// tree fixed by the chunks alone: a range of chunks is cut at its middle, each half
/// reduced, and the two results combined, `combine((s_a, a), (s_b, b)) = s_a·a + s_b·b`
/// (a chunk's own result enters with its weight `w_c / W`, a combined one with 1).
/// `None` when the batch has one chunk or every weight is zero (the caller runs the
/// whole batch).
///
/// On a pool of several threads the halves run as a `rayon::join`, so each thread adds
/// up its own chunks as they finish, while the results are in its cache, and only the
/// last addition waits for both (a fold in chunk order left the other thread's chunks
/// to be added one by one at the end while it idled). The tree, and the order within
/// each addition, do not depend on the thread that runs them, so the result is
/// bit-identical on any number of threads.
fn tree_chunks<B: SplitBatch, R: Send>(
    batch: &B,
    ranges: &[Range<usize>],
    f: impl Fn(&B) -> R + Sync,
    combine: impl Fn((f64, R), (f64, R)) -> R + Sync,
) -> Option<R> {
    if ranges.len() < 2 {
        return None;
    }
    let subs: Vec<(f64, B)> = ranges
        .iter()
        .map(|r| {
            let sub = batch.rows(r.clone());
            (sub.loss_weight(), sub)
        })
        .filter(|(w, _)| *w > 0.0)
        .collect();
    if subs.is_empty() {
        return None;
    }
    let tree = Tree {
        f: &f,
        combine: &combine,
        total: subs.iter().map(|(w, _)| w).sum(),
        parallel: rayon::current_num_threads() > 1,
    };
    // The root's factor is 1: a combined result's, or a lone chunk's `w / w`.
    Some(tree.reduce(&subs).1)
}

/// The recursion of [`tree_chunks`].
struct Tree<'a, F, C> {
    f: &'a F,
    combine: &'a C,
    total: f64,
    parallel: bool,
}

impl<F, C> Tree<'_, F, C> {
    /// The chunks' result and the factor it still needs.
    fn reduce<B, R>(&self, subs: &[(f64, B)]) -> (f64, R)
    where
        B: SplitBatch,
        R: Send,
        F: Fn(&B) -> R + Sync,
        C: Fn((f64, R), (f64, R)) -> R + Sync,
    {
        if let [(w, sub)] = subs {
            return (w / self.total, (self.f)(sub));
        }
        let (left, right) = subs.split_at(subs.len() / 2);
        let (a, b) = if self.parallel {
            rayon::join(|| self.reduce(left), || self.reduce(right))
        } else {
            (self.reduce(left), self.reduce(right))
        };
        (1.0, (self.combine)(a, b))
    }
}

/// `s_a·a + s_b·b`: [`tree_chunks`]' combine for a scalar.
fn scaled_sum<S: Real>((sa, a): (f64, S), (sb, b): (f64, S)) -> S {
    S::from_f64(sa) * a + S::from_f64(sb) * b
}

impl<T: Task> Task for DataParallel<T>
where
    T::Batch: SplitBatch,
{
    type Params<S: Real> = T::Params<S>;
    type Batch = T::Batch;

    fn init<S: Real>(&self, key: Key) -> T::Params<S> {
        self.task.init(key)
    }

    fn loss<S: Real>(&self, params: &T::Params<S>, key: S::Key, batch: &T::Batch) -> S {
        let ranges = self.chunks(batch.num_rows());
        let f = |b: &T::Batch| self.task.loss(params, key, b);
        match tree_chunks(batch, &ranges, f, scaled_sum) {
            Some(v) => v,
            None => self.task.loss(params, key, batch),
        }
    }

    fn value_and_grad<S: Real>(
        &self,
        params: &T::Params<S>,
        key: S::Key,
        batch: &T::Batch,
    ) -> (S, T::Params<S>) {
        let ranges = self.chunks(batch.num_rows());
        type Part<S, P> = (f64, (S, P));
        let combine = |(sa, (va, mut ga)): Part<S, T::Params<S>>,
                       (sb, (vb, gb)): Part<S, T::Params<S>>| {
            let (sa, sb) = (S::from_f64(sa), S::from_f64(sb));
            ga.zip_leaves_mut(&gb, |a, b| {
                a.iter_mut()
                    .zip(b)
                    .for_each(|(a, &b)| *a = sa * *a + sb * b);
            });
            (sa * va + sb * vb, ga)
        };
        let f = |b: &T::Batch| self.task.value_and_grad(params, key, b);
        match tree_chunks(batch, &ranges, f, combine) {
            Some(vg) => vg,
            None => self.task.value_and_grad(params, key, batch),
        }
    }

    fn value_and_jvp<S: Real>(
        &self,
        params: &T::Params<S>,
        tangent: &T::Params<S>,
        key: S::Key,
        batch: &T::Batch,
    ) -> (S, S) {
        let ranges = self.chunks(batch.num_rows());
        let f = |b: &T::Batch| self.task.value_and_jvp(params, tangent, key, b);
        let combine = |(sa, (va, ja)): (f64, (S, S)), (sb, (vb, jb)): (f64, (S, S))| {
            (
                scaled_sum((sa, va), (sb, vb)),
                scaled_sum((sa, ja), (sb, jb)),
            )
        };
        match tree_chunks(batch, &ranges, f, combine) {
            Some(vj) => vj,
            None => self.task.value_and_jvp(params, tangent, key, batch),
        }
    }

    fn cast_params<U: Real, S: Real>(&self, params: &T::Params<U>) -> T::Params<S> {
        self.task.cast_params(params)
    }

    fn normalizer<S: Real>(&self, loss: S) -> S {
        self.task.normalizer(loss)
    }

    fn datasets(&self) -> Option<Datasets<T::Batch>> {
        self.task.datasets()
    }

    fn name(&self) -> String {
        self.task.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::{DMatrix, DVector};

    /// `mean_rows (x_row · p − label)²` with its gradient and JVP written by hand: a loss
    /// averaged over rows, as [`ImageBatch`]'s weight says.
    #[derive(Debug)]
    struct RowMse;

    impl Task for RowMse {
        type Params<S: Real> = DVector<S>;
        type Batch = ImageBatch;
        fn init<S: Real>(&self, _key: Key) -> DVector<S> {
            DVector::from_fn(3, |i, _| S::from_f64(0.3 * i as f64 - 0.2))
        }
        fn loss<S: Real>(&self, p: &DVector<S>, key: S::Key, b: &ImageBatch) -> S {
            self.value_and_grad(p, key, b).0
        }
        fn value_and_grad<S: Real>(
            &self,
            p: &DVector<S>,
            _key: S::Key,
            b: &ImageBatch,
        ) -> (S, DVector<S>) {
            let n = S::from_f64(b.image.nrows() as f64);
            let (mut v, mut g) = (S::zero(), DVector::from_element(p.len(), S::zero()));
            for r in 0..b.image.nrows() {
                let x = |j: usize| S::from_f64(f64::from(b.image[(r, j)]));
                let z =
                    (0..p.len()).fold(-S::from_f64(f64::from(b.label[r])), |z, j| z + x(j) * p[j]);
                v += z * z / n;
                for j in 0..p.len() {
                    g[j] += S::from_f64(2.0) * z * x(j) / n;
                }
            }
            (v, g)
        }
        fn value_and_jvp<S: Real>(
            &self,
            p: &DVector<S>,
            t: &DVector<S>,
            key: S::Key,
            b: &ImageBatch,
        ) -> (S, S) {
            let (v, g) = self.value_and_grad(p, key, b);
            (
                v,
                g.iter()
                    .zip(t.iter())
                    .fold(S::zero(), |a, (&g, &t)| a + g * t),
            )
        }
        fn cast_params<T: Real, S: Real>(&self, p: &DVector<T>) -> DVector<S> {
            p.map(|x| S::from_f64(x.lane(0)))
        }
    }

    fn images(rows: usize) -> ImageBatch {
        ImageBatch {
            image: DMatrix::from_fn(rows, 3, |r, j| ((r * 7 + j * 3) % 5) as f32 * 0.25 - 0.4),
            label: (0..rows).map(|r| (r % 3) as i32).collect(),
            height: 1,
            width: 3,
            channels: 1,
        }
    }

    /// Seven rows in chunks of 3, 2, 2: the split loss, gradient and JVP equal the whole
    /// batch's in f64. Catches a chunk's result left unscaled (tried: each chunk's factor
    /// `w_c / W` set to 1 in `tree_chunks` — the value assertion fails).
    #[test]
    fn split_mean_loss_equals_the_whole_batch() {
        let task = DataParallel::new(RowMse, 2).unwrap();
        let b = images(7);
        assert_eq!(task.chunks(7), vec![0..3, 3..5, 5..7]);
        let p: DVector<f64> = task.init(Key::new(0));
        let t = DVector::from_vec(vec![0.5, -1.0, 2.0]);
        let (v, g) = task.value_and_grad(&p, Key::new(0), &b);
        let (v0, g0) = RowMse.value_and_grad(&p, Key::new(0), &b);
        assert!((v - v0).abs() < 1e-12, "{v} vs {v0}");
        assert!((&g - &g0).amax() < 1e-12, "{g} vs {g0}");
        assert!((task.loss(&p, Key::new(0), &b) - v0).abs() < 1e-12);
        let (jv, j) = task.value_and_jvp(&p, &t, Key::new(0), &b);
        let (_, j0) = RowMse.value_and_jvp(&p, &t, Key::new(0), &b);
        assert!(
            (jv - v0).abs() < 1e-12 && (j - j0).abs() < 1e-12,
            "{j} vs {j0}"
        );
    }

    /// A one-row chunk's value and gradient set by its label, chosen so that the order
    /// of the sum shows: `1`, `1e17`, `-1e17`, `1` (weights ¼): along the tree,
    /// `(1 + 1e17) + (−1e17 + 1)` is 0; in chunk order `((1 + 1e17) − 1e17) + 1` is ¼;
    /// with the first chunk last, `((1e17 − 1e17) + 1) + 1` is ½. On a pool of several
    /// threads the first chunk waits (up to two seconds) until another has finished.
    #[derive(Debug)]
    struct Ordered(std::sync::atomic::AtomicBool);

    impl Task for Ordered {
        type Params<S: Real> = DVector<S>;
        type Batch = ImageBatch;
        fn init<S: Real>(&self, _key: Key) -> DVector<S> {
            DVector::from_element(1, S::zero())
        }
        fn loss<S: Real>(&self, p: &DVector<S>, key: S::Key, b: &ImageBatch) -> S {
            self.value_and_grad(p, key, b).0
        }
        fn value_and_grad<S: Real>(
            &self,
            _p: &DVector<S>,
            _key: S::Key,
            b: &ImageBatch,
        ) -> (S, DVector<S>) {
            use std::sync::atomic::Ordering::SeqCst;
            let v = [1.0, 1e17, -1e17, 1.0][b.label[0] as usize];
            if b.label[0] == 0 && rayon::current_num_threads() > 1 {
                let t = std::time::Instant::now();
                while !self.0.load(SeqCst) && t.elapsed().as_secs() < 2 {
                    std::hint::spin_loop();
                }
            } else {
                self.0.store(true, SeqCst);
            }
            (S::from_f64(v), DVector::from_element(1, S::from_f64(v)))
        }
        fn value_and_jvp<S: Real>(
            &self,
            p: &DVector<S>,
            _t: &DVector<S>,
            key: S::Key,
            b: &ImageBatch,
        ) -> (S, S) {
            let (v, g) = self.value_and_grad(p, key, b);
            (v, g[0])
        }
        fn cast_params<T: Real, S: Real>(&self, p: &DVector<T>) -> DVector<S> {
            p.map(|x| S::from_f64(x.lane(0)))
        }
    }

    /// The chunks' gradients are added along the fixed tree even when a later chunk
    /// finishes first (two, three and four threads, the first chunk held back): the
    /// same bits as on one thread, 0 where chunk order gives ¼ and finishing order ½.
    /// Catches (tried): the first chunk split off alone instead of the halves cut at the
    /// middle (`[0.25] vs [0]` on every thread count); the chunk-order fold this tree
    /// replaced gives ¼ too.
    #[test]
    fn chunk_gradients_are_added_along_a_fixed_tree_on_any_thread_count() {
        let b = ImageBatch {
            label: vec![0, 1, 2, 3],
            ..images(4)
        };
        for n in [1, 2, 3, 4] {
            let task = DataParallel::new(Ordered(Default::default()), 1).unwrap();
            let p: DVector<f64> = task.init(Key::new(0));
            let (v, g) = crate::on_threads(n, || task.value_and_grad(&p, Key::new(0), &b));
            assert_eq!((v, g[0]), (0.0, 0.0), "{n} threads: [{}] vs [0]", g[0]);
        }
    }

    #[test]
    fn chunks_cover_the_rows_in_order_and_ignore_threads() {
        for rows in 1..40 {
            for chunk in 1..12 {
                let r = chunk_ranges(rows, chunk);
                assert_eq!(r.len(), (rows / chunk).max(1));
                assert_eq!(r[0].start, 0);
                assert_eq!(r.last().unwrap().end, rows);
                for w in r.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let (lo, hi) = (
                    r.iter().map(|x| x.len()).min().unwrap(),
                    r.iter().map(|x| x.len()).max().unwrap(),
                );
                assert!(hi - lo <= 1, "{rows} rows by {chunk}: {r:?}");
            }
        }
        assert!(DataParallel::new((), 0).is_err());
    }

    #[test]
    fn lm_rows_keep_their_tokens_and_weights_add_up() {
        let obs = nalgebra::DMatrix::from_fn(5, 3, |b, t| if b + t < 5 { 1 + b as i32 } else { 0 });
        let target = obs.map(|x| x + 7);
        let batch = LmBatch { obs, target };
        let parts: Vec<LmBatch> = chunk_ranges(5, 2)
            .into_iter()
            .map(|r| batch.rows(r))
            .collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].obs.row(2), batch.obs.row(2));
        assert_eq!(parts[1].target.row(0), batch.target.row(3));
        let w: f64 = parts.iter().map(SplitBatch::loss_weight).sum();
        assert_eq!(w, batch.loss_weight());
        assert_ne!(parts[0].loss_weight(), parts[1].loss_weight());
    }
}
