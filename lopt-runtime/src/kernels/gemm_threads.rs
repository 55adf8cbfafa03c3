//! Matrix products large enough to share between cores: `C = A·B` (or `C += A·B`) split
//! into chunks of `C`'s columns, run on the thread pool.
//!
//! The chunks depend on the product's shape only, never on the number of threads, and
//! each chunk is one [`gemm_raw`] call on the columns of `B` and `C` it owns. The GEMM
//! computes every element of `C` as one multiply-add chain in the order of `k` whatever
//! the number of columns it is given (the broadcast kernels; products narrow enough to
//! take the dot kernel are not split), so a split product equals the whole one bit for
//! bit, on one thread or many (tested). Products large enough to take `matrixmultiply`
//! are not split either, except thin ones (one dimension at most [`LARGE_DIM`], as
//! 8192 × 64 × 512) whose chunks fall back below it: those chunks take the broadcast
//! kernels (measured at 0.90–1.04 of one core's peak there, `matrixmultiply` at
//! 0.90–0.97), so such a product always runs split, and is the same bit for bit on any
//! number of threads, not the same as one `gemm_raw`. Other products are split only where
//! another core is free to take a chunk: not on a one-thread pool, not inside the pool's
//! own threads (a data-parallel chunk); there they run whole, with the same bits.

#[cfg(test)]
use crate::kernels::gemm::LARGE;
use crate::kernels::gemm::{gemm_bias_raw, gemm_raw, takes_matrixmultiply, MatRef, LARGE_DIM};
use crate::kernels::pool_is_free;
use crate::scalar::Real;

/// Multiply-adds (`m·k·n`) from which a product is split: about 30 µs of one core's work
/// at the GEMM's speed, so that a chunk outweighs handing it to another thread.
pub(crate) const SPLIT_MIN: usize = 1 << 20;

/// The narrowest chunk of columns (wide enough that each chunk keeps the broadcast
/// kernel's full column blocks).
const MIN_COLS: usize = 64;

/// At most this many chunks per product.
const MAX_CHUNKS: usize = 4;

/// `B` as a strided matrix whose column ranges can be taken (the GEMM's own view keeps
/// its strides private).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cols<'a, S> {
    /// The elements; `(i, j)` is `data[i·rs + j·cs]`.
    pub data: &'a [S],
    /// Rows (`k` of the product).
    pub rows: usize,
    /// Columns (`n` of the product).
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a, S: Copy> Cols<'a, S> {
    /// The column-major `rows × cols` `data`.
    pub(crate) fn col_major(data: &'a [S], rows: usize, cols: usize) -> Self {
        Cols {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }

    /// The transpose, without copying.
    pub(crate) fn t(self) -> Self {
        Cols {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Columns `j0..j0 + w` as the GEMM's view.
    fn view(&self, j0: usize, w: usize) -> MatRef<'a, S> {
        let start = if w == 0 { 0 } else { j0 * self.cs };
        MatRef::new(
            &self.data[start.min(self.data.len())..],
            self.rows,
            w,
            self.rs,
            self.cs,
        )
        .expect("a column range of a view lies inside it")
    }

    /// The whole matrix as the GEMM's view.
    pub(crate) fn all(&self) -> MatRef<'a, S> {
        self.view(0, self.cols)
    }
}

/// Columns per chunk for an `m × k` by `k × n` product (`rsb`: `B`'s row stride), `None`
/// when it is not split: too small, too narrow, or large enough for `matrixmultiply`
/// (whose blocked sums differ from the broadcast kernels') unless it is thin and its
/// chunks are not (see the module).
pub(crate) fn chunk_cols(m: usize, k: usize, n: usize, rsb: usize) -> Option<usize> {
    let work = m.saturating_mul(k).saturating_mul(n);
    let is_large = |cols: usize| takes_matrixmultiply(m, k, cols, rsb);
    if work < SPLIT_MIN || n < 2 * MIN_COLS {
        return None;
    }
    let w = n.div_ceil(MAX_CHUNKS).next_multiple_of(8).max(MIN_COLS);
    // Large: whole, unless thin with chunks below `matrixmultiply`'s range.
    let thin = m.min(k) <= LARGE_DIM;
    if is_large(n) && (!thin || is_large(w)) {
        return None;
    }
    Some(w)
}

/// [`chunk_cols`] where a split can use another core ([`pool_is_free`]), else `None`
/// (the product whole), unless the product always runs split for its bits (thin and
/// large, see the module). The whole product has the split one's bits otherwise, so this
/// changes no result. Measured on the transformer LM's training step
/// (`tlm.d128l1.train_100`, whose data-parallel chunks split their 256-row products in
/// two to four, each part packing its `A` and `B` again): its products took 7% less time
/// whole, the step 5% less on one thread and 6% less on two.
fn split_cols(m: usize, k: usize, n: usize, rsb: usize) -> Option<usize> {
    let w = chunk_cols(m, k, n, rsb)?;
    (pool_is_free() || takes_matrixmultiply(m, k, n, rsb)).then_some(w)
}

/// A pointer to `C` shared by the chunks, each writing its own columns.
#[derive(Clone, Copy)]
struct Shared<S>(*mut S);
// SAFETY: the chunks write disjoint columns of `C`, and the caller reads it only after
// they have all joined.
unsafe impl<S: Send> Send for Shared<S> {}
unsafe impl<S: Send> Sync for Shared<S> {}

impl<S> Shared<S> {
    /// The pointer (a method, so that closures capture the whole `Shared`).
    fn at(self, offset: usize) -> *mut S {
        self.0.wrapping_add(offset)
    }
}

/// `c = a·b`, or `c += a·b` when `accumulate`, split into [`chunk_cols`] columns on the
/// thread pool when the product is large enough (see the module).
///
/// # Safety
/// As [`gemm_raw`]: `a.cols() == b.rows`; `c` valid for `a.rows() · b.cols` writes
/// (column-major) and initialized when accumulating.
pub(crate) unsafe fn gemm_split<S: Real>(
    a: MatRef<'_, S>,
    b: Cols<'_, S>,
    c: *mut S,
    accumulate: bool,
) {
    match split_cols(a.rows(), a.cols(), b.cols, b.rs) {
        Some(w) => gemm_chunks(a, b, c, accumulate, w),
        None => gemm_raw(a, b.all(), c, accumulate),
    }
}

/// [`gemm_split`] in chunks of `w` columns, on the pool.
///
/// # Safety
/// As [`gemm_split`].
unsafe fn gemm_chunks<S: Real>(
    a: MatRef<'_, S>,
    b: Cols<'_, S>,
    c: *mut S,
    accumulate: bool,
    w: usize,
) {
    let (m, n) = (a.rows(), b.cols);
    let out = Shared(c);
    on_chunks(n, w, |j0, cols| {
        // SAFETY: `on_chunks` gives each chunk its own columns `j0..j0 + cols` of `c`
        // (inside it, as the caller guarantees for all `n`); it reads nothing another
        // chunk writes.
        unsafe { gemm_raw(a, b.view(j0, cols), out.at(j0 * m), accumulate) }
    });
}

/// `f(j0, cols)` for each chunk of `w` of `n` columns, on the thread pool unless it has
/// one thread.
fn on_chunks(n: usize, w: usize, f: impl Fn(usize, usize) + Sync) {
    let chunks = n.div_ceil(w);
    let run = |i: usize| {
        let j0 = i * w;
        f(j0, w.min(n - j0))
    };
    if rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        (0..chunks).into_par_iter().for_each(run);
    } else {
        (0..chunks).for_each(run);
    }
}

/// `c = a·b + 1·biasᵀ` ([`gemm_bias_raw`]: the bias added to each block of the product as
/// it is made), split as [`gemm_split`]; `bias[j0..]` goes with each chunk's columns.
///
/// # Safety
/// As [`gemm_split`] without accumulation; `bias` holds `b.cols` elements.
pub(crate) unsafe fn gemm_split_bias<S: Real>(
    a: MatRef<'_, S>,
    b: Cols<'_, S>,
    bias: &[S],
    c: *mut S,
) {
    assert_eq!(bias.len(), b.cols, "gemm: one bias per column");
    let (m, n) = (a.rows(), b.cols);
    let Some(w) = split_cols(m, a.cols(), n, b.rs) else {
        return gemm_bias_raw(a, b.all(), bias, c);
    };
    let out = Shared(c);
    on_chunks(n, w, |j0, cols| {
        // SAFETY: as in `gemm_split`: chunk columns are disjoint and inside `c`.
        unsafe { gemm_bias_raw(a, b.view(j0, cols), &bias[j0..j0 + cols], out.at(j0 * m)) }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;

    /// Split products equal the whole product (one `gemm_raw` call) bit for bit, written
    /// and accumulated, with `A` and `B` plain and transposed, on 1 and 3 threads, at the LSTM
    /// benchmark's shapes and at a width the chunks do not divide. Mutations caught: a
    /// chunk's `C` offset of `j0` instead of `j0·m`; the last chunk's width not clamped
    /// (`w` for `w.min(n − j0)`, a view outside `B`); each tried, each fails here.
    #[test]
    fn split_products_equal_the_whole_product() {
        // (m, k, n): z = x·Wx, h·Wh, dW = hᵀ·G, dh = G·Whᵀ, and an odd width.
        for (m, k, n) in [
            (128, 64, 512),
            (128, 128, 512),
            (128, 512, 128),
            (96, 120, 203),
        ] {
            assert!(chunk_cols(m, k, n, 1).is_some(), "{m}x{k}x{n} is split");
            let a = Key::new(1).normal_vec::<f32>(m * k);
            let b = Key::new(2).normal_vec::<f32>(k * n);
            let c0 = Key::new(3).normal_vec::<f32>(m * n);
            let a_views = [
                MatRef::col_major(&a, m, k).unwrap(),
                MatRef::col_major(&a, k, m).unwrap().t(),
            ];
            let b_views = [Cols::col_major(&b, k, n), Cols::col_major(&b, n, k).t()];
            for (av, b) in a_views.into_iter().flat_map(|a| b_views.map(|b| (a, b))) {
                for accumulate in [false, true] {
                    let mut want = c0.clone();
                    // SAFETY: shapes agree; `want` holds m·n initialized elements.
                    unsafe { gemm_raw(av, b.all(), want.as_mut_ptr(), accumulate) };
                    for threads in [1, 3] {
                        let mut got = c0.clone();
                        // SAFETY: as above.
                        let w = chunk_cols(m, k, n, b.rs).unwrap();
                        crate::on_threads(threads, || unsafe {
                            gemm_chunks(av, b, got.as_mut_ptr(), accumulate, w)
                        });
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(
                            same,
                            "{m}x{k}x{n} rs {} acc {accumulate} on {threads}",
                            b.rs
                        );
                    }
                }
            }
        }
        // Small, narrow and large products stay whole.
        assert_eq!(chunk_cols(64, 64, 64, 1), None);
        assert_eq!(chunk_cols(4096, 16, 100, 1), None);
        assert_eq!(chunk_cols(512, 512, 512, 1), None);
        // Thin large products whose chunks are too large stay whole too.
        assert_eq!(chunk_cols(32768, 64, 512, 1), None);
        assert_eq!(chunk_cols(8192, 64, 512, 512), None);
    }

    /// Products split only where another core is free: inside a pool's threads (where
    /// a data-parallel chunk runs) a product stays whole unless it is thin and large (it
    /// always runs split for its bits); outside, it splits as [`chunk_cols`] says when
    /// the pool has several threads. Mutations caught: the pool check dropped (splits
    /// inside the pool); the thin-large exception dropped (that product whole inside the
    /// pool, on `matrixmultiply`: other bits than outside it).
    #[test]
    fn products_split_only_where_a_core_is_free() {
        let (plain, thin) = ((128, 128, 512), (8192, 64, 512));
        assert!(takes_matrixmultiply(thin.0, thin.1, thin.2, 1));
        let split = |(m, k, n): (usize, usize, usize)| split_cols(m, k, n, 1);
        let chunks = |(m, k, n): (usize, usize, usize)| chunk_cols(m, k, n, 1);
        assert!(chunks(plain).is_some() && chunks(thin).is_some());
        crate::on_threads(3, || {
            assert_eq!(split(plain), None, "inside the pool");
            assert_eq!(
                split(thin),
                chunks(thin),
                "a thin large product inside the pool"
            );
        });
        crate::on_threads(1, || assert_eq!(split(thin), chunks(thin)));
        let outside = if rayon::current_num_threads() > 1 {
            chunks(plain)
        } else {
            None
        };
        assert_eq!(split(plain), outside, "outside the pool");
    }

    /// Thin products above `LARGE` whose whole takes `matrixmultiply` (8192 × 64 × 512,
    /// `A` plain and read transposed) run split, on the broadcast kernels: the same bit
    /// for bit on 1 and 3 threads, and within rounding of the whole product. Mutation
    /// caught: chunks `n / threads` columns wide (tried: on one thread the product stays
    /// whole, on `matrixmultiply`, and the bits differ from three threads').
    #[test]
    fn thin_large_products_run_split() {
        for (m, k, n, at) in [(8192, 64, 512, false), (8192, 64, 512, true)] {
            assert!(m * k * n > LARGE && takes_matrixmultiply(m, k, n, 1));
            let w = chunk_cols(m, k, n, 1).expect("a thin large product is split");
            assert!(m * k * w <= LARGE);
            let a = Key::new(4).normal_vec::<f32>(m * k);
            let b = Key::new(5).normal_vec::<f32>(k * n);
            let av = if at {
                MatRef::col_major(&a, k, m).unwrap().t()
            } else {
                MatRef::col_major(&a, m, k).unwrap()
            };
            let bc = Cols::col_major(&b, k, n);
            let run = |threads: usize| {
                let mut c = vec![0.0f32; m * n];
                // SAFETY: shapes agree; `c` holds m·n elements.
                crate::on_threads(threads, || unsafe {
                    gemm_split(av, bc, c.as_mut_ptr(), false)
                });
                c
            };
            let (one, three) = (run(1), run(3));
            assert!(one
                .iter()
                .zip(&three)
                .all(|(x, y)| x.to_bits() == y.to_bits()));
            let mut whole = vec![0.0f32; m * n];
            // SAFETY: as above.
            unsafe { gemm_raw(av, bc.all(), whole.as_mut_ptr(), false) };
            let scale = whole.iter().fold(0.0f32, |s, x| s.max(x.abs()));
            let err = one
                .iter()
                .zip(&whole)
                .fold(0.0f32, |s, (x, y)| s.max((x - y).abs()));
            assert!(err <= 1e-5 * scale, "{m}x{k}x{n}: {err} of {scale}");
        }
    }
}
