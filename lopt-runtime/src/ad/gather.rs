//! Gathers by integer ids and their derivatives (scatter-adds): embedding lookup
//! (`hk.Embed`, `jnp.take(table, ids, axis=0)`) and one entry per row
//! (`jnp.take_along_axis(x, idx[:, None], axis=1)`).
//!
//! Ids are integers of any type that converts to `usize` ([`Id`]: `u8`, `u16`, `u32`,
//! `u64`, `usize`, `i32`, `i64`); a negative or out-of-range id panics with the id, its
//! position and the range.

use nalgebra::{DMatrix, DVector};

use crate::scalar::Real;

use super::reduce::dot;
use super::Unary;

/// An integer id or label.
#[diagnostic::on_unimplemented(
    message = "ids and labels are integers (u8, u16, u32, u64, usize, i32 or i64), not `{Self}`",
    label = "not integer ids or labels"
)]
pub trait Id: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The id as an index, `None` when negative.
    fn index(self) -> Option<usize>;
}

macro_rules! ids {
    ($($t:ty),*) => {$(
        impl Id for $t {
            #[inline]
            #[allow(unused_comparisons)]
            fn index(self) -> Option<usize> {
                if self < 0 { None } else { usize::try_from(self).ok() }
            }
        }
    )*};
}
ids!(u8, u16, u32, u64, usize, i32, i64);

/// `ids[k]` as an index below `n`, or a panic naming it.
#[inline]
#[track_caller]
fn checked<I: Id>(ids: &[I], k: usize, n: usize, what: &str) -> usize {
    match ids[k].index() {
        Some(i) if i < n => i,
        _ => panic!("{what}: id {:?} at position {k} is outside 0..{n}", ids[k]),
    }
}

/// The op of `embed(&table, &ids)`: row `k` of the output is row `ids[k]` of the table.
#[derive(Debug, Clone, Copy)]
pub struct Embed<'a, I: Id>(pub &'a [I]);

impl<'a, I: Id> Embed<'a, I> {
    /// The op for `ids` (a `Vec`, slice or array of integers: what `#[task]` builds for
    /// `embed(&table, &ids)`).
    pub fn new<V: AsRef<[I]> + ?Sized>(ids: &'a V) -> Self {
        Embed(ids.as_ref())
    }
}

impl<S: Real, I: Id> Unary<Embed<'_, I>> for DMatrix<S> {
    type Out = DMatrix<S>;
    fn eval(&self, op: &Embed<'_, I>) -> DMatrix<S> {
        let rows = checked_rows(op.0, self.nrows());
        let out = gather(self.as_slice(), self.nrows(), self.ncols(), &rows);
        DMatrix::from_vec(rows.len(), self.ncols(), out)
    }
    fn jvp(&self, op: &Embed<'_, I>, _out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
        dx.eval(op)
    }
    /// Scatter-add: every looked-up row's cotangent adds into the table row it came from.
    fn vjp(&self, op: &Embed<'_, I>, _out: &DMatrix<S>, g: DMatrix<S>) -> DMatrix<S> {
        let (n, d) = self.shape();
        let rows = checked_rows(op.0, n);
        assert_eq!(
            g.shape(),
            (rows.len(), d),
            "embed: a cotangent of the wrong shape for {} ids of a {n}x{d} table",
            rows.len()
        );
        DMatrix::from_vec(n, d, scatter_add(g.as_slice(), n, d, &rows))
    }
}

/// Which of `[table, r]` need a cotangent from [`embed_dot()`].
pub type EmbedDotNeeds = [bool; 2];

/// `⟨embed(table, ids), r⟩ = Σ_k ⟨table[ids[k], :], r[k, :]⟩` in one rule: what
/// `#[task]` makes of `dot(embed(&table, &ids), r)` (either operand order, call or method
/// form), as XLA fuses `jnp.vdot(table[ids], r)`. The looked-up rows are never stored:
/// the value is `⟨table, scatter_add(r, ids)⟩` (the rows of `r` summed per table row,
/// then one dot product of a table's size), and the reverse rule scatter-adds `g·r`
/// straight from `r` (no copy of it when `g = 1`, as at a loss's root): one pass over `r`
/// each way, where the composition writes the rows, reads them back with `r`, and copies
/// `g·r` before scattering it. The table's cotangent is the composition's bit for bit;
/// the value sums the same products in another order.
#[track_caller]
pub fn embed_dot<S: Real, I: Id>(
    table: &DMatrix<S>,
    r: &DMatrix<S>,
    ids: &Embed<'_, I>,
    needs: &EmbedDotNeeds,
) -> S {
    let _ = needs;
    let rows = embed_dot_rows(table, r, ids);
    gather_dot(
        table.as_slice(),
        table.nrows(),
        table.ncols(),
        &rows,
        r.as_slice(),
    )
}

/// The ids of [`embed_dot()`] as rows, after checking them and `r`'s shape.
#[track_caller]
fn embed_dot_rows<S: Real, I: Id>(
    table: &DMatrix<S>,
    r: &DMatrix<S>,
    ids: &Embed<'_, I>,
) -> Vec<u32> {
    let (n, d) = table.shape();
    let rows = checked_rows(ids.0, n);
    assert_eq!(
        r.shape(),
        (rows.len(), d),
        "dot(embed(table, ids), r): {} ids of a {n}x{d} table look up {}x{d}, r is {}x{}",
        rows.len(),
        rows.len(),
        r.nrows(),
        r.ncols()
    );
    rows
}

/// The rules of [`embed_dot()`] (the convention of `#[differentiable]` functions).
pub mod embed_dot {
    use super::*;

    /// The value and its tangent `⟨embed(dt, ids), r⟩ + ⟨embed(table, ids), dr⟩`.
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    pub fn jvp<S: Real, I: Id>(
        table: &DMatrix<S>,
        r: &DMatrix<S>,
        ids: &Embed<'_, I>,
        _needs: &EmbedDotNeeds,
        dtable: Option<&DMatrix<S>>,
        dr: Option<&DMatrix<S>>,
        _dids: Option<&Embed<'_, I>>,
        _dneeds: Option<&EmbedDotNeeds>,
    ) -> (S, S) {
        let rows = embed_dot_rows(table, r, ids);
        let (n, d) = table.shape();
        let rs = scatter_add(r.as_slice(), n, d, &rows);
        let y = dot(table.as_slice(), &rs);
        let mut t = S::zero();
        if let Some(dt) = dtable {
            assert_eq!(
                dt.shape(),
                table.shape(),
                "embed_dot: a tangent of another shape"
            );
            t += dot(dt.as_slice(), &rs);
        }
        if let Some(dr) = dr {
            assert_eq!(
                dr.shape(),
                r.shape(),
                "embed_dot: a tangent of another shape"
            );
            t += gather_dot(table.as_slice(), n, d, &rows, dr.as_slice());
        }
        (y, t)
    }

    /// The cotangents of `table` (the scatter-add of `g·r` by the ids) and of `r`
    /// (`g·embed(table, ids)`), each only when `needs` asks for it.
    #[allow(clippy::type_complexity)]
    #[track_caller]
    pub fn vjp<S: Real, I: Id>(
        table: &DMatrix<S>,
        r: &DMatrix<S>,
        ids: &Embed<'_, I>,
        needs: &EmbedDotNeeds,
        g: &S,
    ) -> (
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
        Option<()>,
        Option<()>,
    ) {
        let rows = embed_dot_rows(table, r, ids);
        let (n, d) = table.shape();
        let g = *g;
        let dtable = needs[0].then(|| {
            let dt = if g == S::one() {
                scatter_add(r.as_slice(), n, d, &rows)
            } else {
                let gr: Vec<S> = r.iter().map(|&v| g * v).collect();
                scatter_add(&gr, n, d, &rows)
            };
            DMatrix::from_vec(n, d, dt)
        });
        let dr = needs[1].then(|| {
            let mut e = gather(table.as_slice(), n, d, &rows);
            if g != S::one() {
                e.iter_mut().for_each(|v| *v = g * *v);
            }
            DMatrix::from_vec(rows.len(), d, e)
        });
        (dtable, dr, None, None)
    }
}

/// `Σ_k ⟨t[rows[k], :], r[k, :]⟩` for the column-major `n × d` table `t` and the
/// column-major `r` (`rows.len() × d`), as `⟨t, scatter_add(r)⟩`: the rows of `r` summed
/// per table row (the scatter-add the reverse rule makes anyway, fast by tiles and a
/// table's size) and one dot product with the table, instead of a gather from the table
/// at every id. Every `rows[k] < n` (checked by the caller).
fn gather_dot<S: Real>(t: &[S], n: usize, d: usize, rows: &[u32], r: &[S]) -> S {
    dot(t, &scatter_add(r, n, d, rows))
}

/// Every id of `ids` as a row below `n` (a panic naming the first that is not).
#[track_caller]
pub(crate) fn checked_rows<I: Id>(ids: &[I], n: usize) -> Vec<u32> {
    assert!(
        n <= u32::MAX as usize,
        "embed: a table of {n} rows (at most 2^32 - 1)"
    );
    (0..ids.len())
        .map(|k| checked(ids, k, n, "embed") as u32)
        .collect()
}

/// Rows `rows` of the column-major `n × d` table `t`, as a column-major `rows.len() × d`
/// matrix. Every `rows[k] < n` (checked by the caller).
pub(crate) fn gather<S: Real>(t: &[S], n: usize, d: usize, rows: &[u32]) -> Vec<S> {
    #[cfg(target_arch = "x86_64")]
    if let Some(out) = tiles::gather_f32(t, n, d, rows) {
        return out;
    }
    gather_plain(t, n, d, rows)
}

/// [`gather`] column by column, for any scalar.
fn gather_plain<S: Real>(t: &[S], n: usize, d: usize, rows: &[u32]) -> Vec<S> {
    let mut out = Vec::with_capacity(rows.len() * d);
    for col in t.chunks_exact(n.max(1)).take(d) {
        // Every row is below `n` = `col.len()` (checked by the caller): no panics here.
        out.extend(rows.iter().map(|&r| col[r as usize]));
    }
    out
}

/// The scatter-add `dt[rows[k], :] += g[k, :]` into a zero column-major `n × d` table,
/// `g` column-major `rows.len() × d`: each table entry is its cotangents summed in the
/// order of `k` (the same sums whatever the path).
fn scatter_add<S: Real>(g: &[S], n: usize, d: usize, rows: &[u32]) -> Vec<S> {
    #[cfg(target_arch = "x86_64")]
    if let Some(dt) = tiles::scatter_add_f32(g, n, d, rows) {
        return dt;
    }
    scatter_add_plain(g, n, d, rows)
}

/// [`scatter_add`] column by column, for any scalar.
fn scatter_add_plain<S: Real>(g: &[S], n: usize, d: usize, rows: &[u32]) -> Vec<S> {
    let mut dt = vec![S::zero(); n * d];
    // Column by column: each cotangent column is read once, in order, and its table
    // column stays in cache.
    for (dcol, gcol) in dt
        .chunks_exact_mut(n.max(1))
        .zip(g.chunks_exact(rows.len().max(1)))
    {
        for (&r, &v) in rows.iter().zip(gcol) {
            dcol[r as usize] += v;
        }
    }
    dt
}

/// The `f32` gather and scatter-add by 8 × 8 tiles (AVX2), 8 table columns at a time:
/// the block is transposed into a row-major `n × 8` buffer that stays in L1, so that 8
/// looked-up rows are 8 vector loads; one in-register transpose turns them into 8
/// contiguous pieces of 8 output columns (and back for the scatter, whose sums go into
/// such a buffer, transposed straight into the block's columns of the gradient). No
/// pass over a whole copy of the table. Same values
/// as the plain loops bit for bit: a gather only moves values, and each scatter sum
/// adds its terms in the order of `k` as they do.
#[cfg(target_arch = "x86_64")]
mod tiles {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use crate::kernels::cpu::has_avx2;
    use crate::kernels::tile8::{as_f32, from_f32, tr8};
    use crate::kernels::SharedMut;
    use crate::scalar::Real;

    /// The tile path's [`super::gather`], `None` unless `S` is `f32` and the CPU has AVX2.
    pub(super) fn gather_f32<S: Real>(t: &[S], n: usize, d: usize, rows: &[u32]) -> Option<Vec<S>> {
        let t = as_f32(t)?;
        if !has_avx2() || t.len() != n * d {
            return None;
        }
        // The unchecked loads below rely on it.
        assert!(
            rows.iter().all(|&r| (r as usize) < n),
            "embed: an id outside the table"
        );
        let m = rows.len();
        let mut out = Vec::with_capacity(m * d);
        // SAFETY: the CPU has AVX2 (checked); `out` has the capacity `gather_cols` needs,
        // every row is below `n` (checked above), and the chunks together write every
        // element of `out` before its length is set.
        unsafe {
            let o = SharedMut(out.as_mut_ptr());
            // SAFETY (each chunk): its own columns of `out`.
            par_col_chunks(d, m * d, |cols| gather_cols(t, n, rows, o.ptr(), cols));
            out.set_len(m * d);
        }
        Some(from_f32(out))
    }

    /// The tile path's [`super::scatter_add`], `None` unless `S` is `f32` and the CPU has
    /// AVX2.
    pub(super) fn scatter_add_f32<S: Real>(
        g: &[S],
        n: usize,
        d: usize,
        rows: &[u32],
    ) -> Option<Vec<S>> {
        let g = as_f32(g)?;
        if !has_avx2() || g.len() != rows.len() * d {
            return None;
        }
        // The unchecked stores below rely on it.
        assert!(
            rows.iter().all(|&r| (r as usize) < n),
            "embed: an id outside the table"
        );
        let mut dt = Vec::with_capacity(n * d);
        // SAFETY: as in `gather_f32`.
        unsafe {
            let p = SharedMut(dt.as_mut_ptr());
            // SAFETY (each chunk): its own columns of `dt`.
            par_col_chunks(d, g.len(), |cols| scatter_cols(g, n, rows, p.ptr(), cols));
            dt.set_len(n * d);
        }
        Some(from_f32(dt))
    }

    /// Columns per chunk of work: fixed (never by the number of threads), a multiple of 8.
    const CHUNK_COLS: usize = 32;

    /// Gathered elements below which the columns stay on one thread: split across
    /// cores, a gather that fits in one core's L2 (2 MiB here) leaves half of its output
    /// in the other core's cache for whatever reads it next, which cost twice the
    /// one-thread time at 2,048 × 128 (the transformer's embedding).
    const PAR_MIN_ELEMS: usize = 1 << 20;

    /// Calls `f(columns)` for consecutive ranges of [`CHUNK_COLS`] columns covering
    /// `0..d`, on the thread pool when there are several, it has more than one thread,
    /// and the operation moves at least [`PAR_MIN_ELEMS`] gathered elements (`elems`).
    /// Each column's values are computed alone, so the results are the same on any
    /// number of threads.
    fn par_col_chunks(d: usize, elems: usize, f: impl Fn(Range<usize>) + Sync) {
        let range = |c: usize| c..(c + CHUNK_COLS).min(d);
        if d > CHUNK_COLS && elems >= PAR_MIN_ELEMS && rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            (0..d.div_ceil(CHUNK_COLS))
                .into_par_iter()
                .for_each(|i| f(range(i * CHUNK_COLS)));
        } else {
            (0..d).step_by(CHUNK_COLS).for_each(|c| f(range(c)));
        }
    }

    /// `blk` (row-major `n × 8`) = columns `c..c + 8` of the column-major `t` (`n` rows):
    /// one 8-column block of the table, transposed by 8 × 8 tiles.
    ///
    /// # Safety
    /// AVX2; `t` holds columns `c..c + 8` of `n` rows; `blk.len() == 8·n`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn block_rows(t: &[f32], n: usize, c: usize, blk: &mut [f32]) {
        assert!(t.len() >= (c + 8) * n && blk.len() == 8 * n);
        let (s, o) = (t.as_ptr().add(c * n), blk.as_mut_ptr());
        let n8 = n / 8 * 8;
        for i in (0..n8).step_by(8) {
            let mut v = [_mm256_setzero_ps(); 8];
            for (j, v) in v.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(s.add(j * n + i));
            }
            tr8(&mut v);
            for (q, v) in v.iter().enumerate() {
                _mm256_storeu_ps(o.add((i + q) * 8), *v);
            }
        }
        for i in n8..n {
            for j in 0..8 {
                *o.add(i * 8 + j) = *s.add(j * n + i);
            }
        }
    }

    /// Columns `c..c + 8` of the column-major `dst` (`n` rows) = the row-major `n × 8`
    /// `blk` (the inverse of [`block_rows`]).
    ///
    /// # Safety
    /// AVX2; `blk.len() == 8·n`; `dst` valid for writes of columns `c..c + 8` of `n` rows.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn block_cols(blk: &[f32], n: usize, c: usize, dst: *mut f32) {
        assert_eq!(blk.len(), 8 * n);
        let (s, o) = (blk.as_ptr(), dst.add(c * n));
        let n8 = n / 8 * 8;
        for i in (0..n8).step_by(8) {
            let mut v = [_mm256_setzero_ps(); 8];
            for (q, v) in v.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(s.add((i + q) * 8));
            }
            tr8(&mut v);
            for (j, v) in v.iter().enumerate() {
                _mm256_storeu_ps(o.add(j * n + i), *v);
            }
        }
        for i in n8..n {
            for j in 0..8 {
                *o.add(j * n + i) = *s.add(i * 8 + j);
            }
        }
    }

    /// Columns `cols` of `out` (column-major `rows.len() × d`) = those of rows `rows` of
    /// the column-major table `t` (`n` rows). Eight columns at a time: the block is
    /// transposed into a row-major `n × 8` buffer that stays in L1, from which 8 ids are
    /// 8 aligned loads and one in-register transpose gives 8 contiguous pieces of the 8
    /// output columns. No copy of the whole table.
    ///
    /// # Safety
    /// AVX2; `cols` ends by `d = t.len() / n`; `out` valid for `rows.len()·d` writes
    /// (every one in `cols` is written, no other); every `rows[k] < n`.
    #[target_feature(enable = "avx2")]
    unsafe fn gather_cols(t: &[f32], n: usize, rows: &[u32], out: *mut f32, cols: Range<usize>) {
        let m = rows.len();
        let m8 = m / 8 * 8;
        let d8 = cols.start + cols.len() / 8 * 8;
        let mut blk = vec![0.0f32; 8 * n];
        let mut stage = [0.0f32; 8 * 32];
        let o = out;
        for cb in (cols.start..d8).step_by(8) {
            block_rows(t, n, cb, &mut blk);
            let b = blk.as_ptr();
            // Four tiles (32 ids) go through `stage`, then out a column at a time: two
            // whole cache lines per column written back to back, where tile by tile
            // each line of the 8 columns (`m` floats apart: on one L1 set at
            // m = 2,048) was written in halves a tile apart.
            let m32 = m8 / 32 * 32;
            for kb in (0..m8).step_by(8) {
                let mut v = [_mm256_setzero_ps(); 8];
                for (i, v) in v.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(b.add(rows[kb + i] as usize * 8));
                }
                tr8(&mut v);
                if kb >= m32 {
                    for (j, v) in v.iter().enumerate() {
                        _mm256_storeu_ps(o.add((cb + j) * m + kb), *v);
                    }
                    continue;
                }
                let q = kb % 32;
                for (j, v) in v.iter().enumerate() {
                    _mm256_storeu_ps(stage.as_mut_ptr().add(j * 32 + q), *v);
                }
                if q == 24 {
                    let st = stage.as_ptr();
                    for j in 0..8 {
                        let to = o.add((cb + j) * m + kb - 24);
                        let w = [0, 8, 16, 24].map(|x| _mm256_loadu_ps(st.add(j * 32 + x)));
                        for (x, w) in [0, 8, 16, 24].into_iter().zip(w) {
                            _mm256_storeu_ps(to.add(x), w);
                        }
                    }
                }
            }
            for (k, &r) in rows.iter().enumerate().skip(m8) {
                for j in 0..8 {
                    o.add((cb + j) * m + k).write(*b.add(r as usize * 8 + j));
                }
            }
        }
        // The columns after the last whole block, straight from the table.
        for c in d8..cols.end {
            let col = &t[c * n..(c + 1) * n];
            for (k, &r) in rows.iter().enumerate() {
                o.add(c * m + k).write(*col.get_unchecked(r as usize));
            }
        }
    }

    /// Columns `cols` of the column-major `n × d` table `dt` = the scatter-add
    /// `dt[rows[k], cols] = Σ_k g[k, cols]` (column-major `g` of `rows.len()` rows), each
    /// entry's terms added in the order of `k` from zero. Eight columns at a time into a
    /// zeroed row-major `n × 8` accumulator that stays in L1 (8 cotangent columns loaded
    /// as a tile and transposed: one vector add per id), then transposed straight into
    /// the 8 columns of `dt`.
    ///
    /// # Safety
    /// AVX2; `cols` ends by `d = g.len() / rows.len()`; `dt` valid for `n·d` writes
    /// (every one in `cols` is written, no other); every `rows[k] < n`.
    #[target_feature(enable = "avx2")]
    unsafe fn scatter_cols(g: &[f32], n: usize, rows: &[u32], dt: *mut f32, cols: Range<usize>) {
        let m = rows.len();
        let m8 = m / 8 * 8;
        let d8 = cols.start + cols.len() / 8 * 8;
        assert!(g.len() >= cols.end * m);
        let mut acc = vec![0.0f32; 8 * n];
        let (s, a) = (g.as_ptr(), acc.as_mut_ptr());
        for cb in (cols.start..d8).step_by(8) {
            acc.fill(0.0);
            for kb in (0..m8).step_by(8) {
                let mut v = [_mm256_setzero_ps(); 8];
                for (j, v) in v.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(s.add((cb + j) * m + kb));
                }
                tr8(&mut v);
                // In the order of k: two equal ids in one tile add one after the other.
                for (i, v) in v.iter().enumerate() {
                    let p = a.add(rows[kb + i] as usize * 8);
                    _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), *v));
                }
            }
            // The ids after the last whole tile, still in order.
            for (k, &r) in rows.iter().enumerate().skip(m8) {
                for j in 0..8 {
                    *a.add(r as usize * 8 + j) += *s.add((cb + j) * m + k);
                }
            }
            block_cols(&acc, n, cb, dt);
        }
        // The columns after the last whole block, one at a time.
        for c in d8..cols.end {
            std::ptr::write_bytes(dt.add(c * n), 0, n);
            let col = std::slice::from_raw_parts_mut(dt.add(c * n), n);
            for (k, &r) in rows.iter().enumerate() {
                *col.get_unchecked_mut(r as usize) += *s.add(c * m + k);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::key::Key;

        /// Each chunk of columns writes its own columns of the gather's output and of the
        /// scatter-add's table, and nothing else: the chunks run on the pool at once, and a
        /// write into another chunk's column, even of the value there, would race the
        /// chunk that owns it (a lost sum, rarely: what CI once saw in the convolution's
        /// col2im). Every element starts as −0.0, which any write turns into another bit
        /// pattern; 75 columns (chunks of 32, 32 and 11: whole 8-column blocks and 3 after
        /// them), 13 table rows (5 after the last whole tile), 37 ids. And every element
        /// of its own columns is written (the rule's buffers start uninitialized): each
        /// equals the plain loops' bit for bit. Mutations: `block_cols` writing one row
        /// past the table's (`n8..=n`); the gather's first id after the last whole tile
        /// skipped (each tried, each fails).
        #[test]
        fn chunks_write_only_their_own_columns() {
            if !has_avx2() {
                return;
            }
            let (n, d, m) = (13, 75, 37);
            let t = Key::new(41).normal_vec::<f32>(n * d);
            let g = Key::new(42).normal_vec::<f32>(m * d);
            let rows: Vec<u32> = (0..m).map(|k| ((k * 5 + k * k) % n) as u32).collect();
            let neg0 = (-0.0f32).to_bits();
            let want = (
                super::super::gather_plain(&t, n, d, &rows),
                super::super::scatter_add_plain(&g, n, d, &rows),
            );
            for c in (0..d).step_by(CHUNK_COLS) {
                let cols = c..(c + CHUNK_COLS).min(d);
                let mut out = vec![-0.0f32; m * d];
                let mut dt = vec![-0.0f32; n * d];
                // SAFETY: the CPU has AVX2 (checked); the buffers hold every column; the
                // ids are below `n`.
                unsafe {
                    gather_cols(&t, n, &rows, out.as_mut_ptr(), cols.clone());
                    scatter_cols(&g, n, &rows, dt.as_mut_ptr(), cols.clone());
                }
                let both = [
                    ("gather", &out, &want.0, m),
                    ("scatter-add", &dt, &want.1, n),
                ];
                for (what, v, want, len) in both {
                    for (i, (x, w)) in v.iter().zip(want).enumerate() {
                        // Its own elements all written (the rule's buffers start
                        // uninitialized), the others not at all.
                        let ok = if cols.contains(&(i / len)) {
                            x.to_bits() == w.to_bits()
                        } else {
                            x.to_bits() == neg0
                        };
                        assert!(ok, "{what}: columns {cols:?} left {x} at element {i}");
                    }
                }
            }
        }
    }
}

/// The op of `take_along(x, &idx)`: entry `idx[r]` of each row `r`, a vector (e.g. the
/// label's log-probability).
#[derive(Debug, Clone, Copy)]
pub struct TakeAlong<'a, I: Id>(pub &'a [I]);

impl<'a, I: Id> TakeAlong<'a, I> {
    /// The op for one index per row (what `#[task]` builds for `take_along(x, &idx)`).
    pub fn new<V: AsRef<[I]> + ?Sized>(idx: &'a V) -> Self {
        TakeAlong(idx.as_ref())
    }
}

impl<S: Real, I: Id> Unary<TakeAlong<'_, I>> for DMatrix<S> {
    type Out = DVector<S>;
    fn eval(&self, op: &TakeAlong<'_, I>) -> DVector<S> {
        assert_eq!(
            op.0.len(),
            self.nrows(),
            "take_along: {} indices for {} rows",
            op.0.len(),
            self.nrows()
        );
        let m = self.ncols();
        DVector::from_fn(self.nrows(), |r, _| {
            self[(r, checked(op.0, r, m, "take_along"))]
        })
    }
    fn jvp(&self, op: &TakeAlong<'_, I>, _out: &DVector<S>, dx: &DMatrix<S>) -> DVector<S> {
        dx.eval(op)
    }
    fn vjp(&self, op: &TakeAlong<'_, I>, _out: &DVector<S>, g: DVector<S>) -> DMatrix<S> {
        let m = self.ncols();
        let mut dx = DMatrix::<S>::zeros(self.nrows(), m);
        for r in 0..self.nrows() {
            dx[(r, checked(op.0, r, m, "take_along"))] = g[r];
        }
        dx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use crate::lanes::Lanes;

    fn normal_matrix(r: usize, c: usize, seed: u64) -> DMatrix<f64> {
        let mut v = vec![0.0f32; r * c];
        Key::new(seed).fill_normal(&mut v);
        DMatrix::from_iterator(r, c, v.into_iter().map(f64::from))
    }

    /// Lookup by the definition; the reverse rule is the adjoint of the forward one, with
    /// repeated ids adding up (a mutation that assigns instead of adding fails).
    #[test]
    fn embed_looks_up_and_scatter_adds() {
        let table = normal_matrix(5, 3, 1);
        let ids: Vec<u8> = vec![4, 0, 4, 2];
        let op = Embed(&ids);
        let y = table.eval(&op);
        for (k, &i) in ids.iter().enumerate() {
            assert_eq!(y.row(k), table.row(i as usize));
        }
        let u = normal_matrix(4, 3, 2);
        let t = normal_matrix(5, 3, 3);
        let lhs = table.vjp(&op, &y, u.clone()).dot(&t);
        let rhs = u.dot(&table.jvp(&op, &y, &t));
        assert!((lhs - rhs).abs() < 1e-12);
        let g = table.vjp(&op, &y, DMatrix::from_element(4, 3, 1.0));
        assert_eq!((g[(4, 0)], g[(0, 0)], g[(1, 0)]), (2.0, 1.0, 0.0));
        // Every integer type says the same.
        let wide: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        assert_eq!(table.eval(&Embed(&wide)), y);
    }

    /// The `f32` tile path (8 × 8 transposes, AVX2) equals the plain loops bit for bit,
    /// gather and scatter-add, on shapes with edges in every dimension and repeated ids
    /// inside one tile (whose sums must keep the order of `k`), and on the benchmark's
    /// shape, on 1 and on 3 threads (chunks of 32 columns, the last one with an edge:
    /// 75 columns, large enough for the pool). Mutations caught: the scatter's leftover ids (after the last whole
    /// tile) dropped; the transpose's edge rows skipped; the tile's second shuffle pair
    /// swapped (`0xEE` for `0x44`); each tried, each fails here. Again after the tiles
    /// went by 8-column blocks through an L1 buffer (no whole-table transposes): the
    /// leftover ids dropped, and `block_rows`' edge rows (`n % 8`) skipped; each tried,
    /// each fails here. The gather's runs of 32 ids through `stage` (50 ids: one run,
    /// then two tiles stored directly, then two ids): the tiles after the last whole run
    /// dropped (tried, fails here).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn f32_tiles_equal_the_plain_loops() {
        if !crate::kernels::cpu::has_avx2() {
            return;
        }
        for (n, d, m, seed) in [
            (13, 19, 37, 1),
            (8, 8, 8, 2),
            (5, 3, 2, 3),
            (256, 128, 2048, 4),
            (40, 75, 29, 5),
            (11, 16, 50, 6),
            // Above `PAR_MIN_ELEMS` (75 × 14,000): the only one that takes the pool.
            (300, 75, 14_000, 7),
        ] {
            let t: Vec<f32> = normal_matrix(n, d, seed)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let g: Vec<f32> = normal_matrix(m, d, seed + 10)
                .iter()
                .map(|&v| v as f32)
                .collect();
            // Ids with repeats: runs of equal ids inside a tile and ids seen many times.
            let rows: Vec<u32> = (0..m).map(|k| ((k * 7 / 3 + k * k) % n) as u32).collect();
            for threads in [1, 3] {
                let (got, want) = (
                    crate::on_threads(threads, || tiles::gather_f32(&t, n, d, &rows).unwrap()),
                    gather_plain(&t, n, d, &rows),
                );
                assert_eq!(got, want, "gather {n}x{d}, {m} ids, {threads} threads");
                let (got, want) = (
                    crate::on_threads(threads, || tiles::scatter_add_f32(&g, n, d, &rows).unwrap()),
                    scatter_add_plain(&g, n, d, &rows),
                );
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "scatter-add {n}x{d}, {m} ids, {threads} threads"
                );
            }
        }
    }

    #[test]
    fn take_along_picks_one_entry_per_row() {
        let x = normal_matrix(3, 4, 4);
        let idx: Vec<usize> = vec![3, 0, 2];
        let op = TakeAlong(&idx);
        let y = x.eval(&op);
        assert_eq!(y, DVector::from_vec(vec![x[(0, 3)], x[(1, 0)], x[(2, 2)]]));
        let u = DVector::from_vec(vec![0.5, -1.0, 2.0]);
        let t = normal_matrix(3, 4, 5);
        let lhs = x.vjp(&op, &y, u.clone()).dot(&t);
        assert!((lhs - u.dot(&x.jvp(&op, &y, &t))).abs() < 1e-12);
    }

    #[test]
    fn lanes_look_up_as_their_instances() {
        let lanes: Vec<DMatrix<f64>> = (0..8).map(|l| normal_matrix(6, 2, 10 + l)).collect();
        let packed =
            DMatrix::<Lanes<8>>::from_fn(6, 2, |r, c| Lanes::from_lanes(|l| lanes[l][(r, c)]));
        let ids = [5u32, 1, 1];
        let y = packed.eval(&Embed(&ids));
        for (l, t) in lanes.iter().enumerate() {
            let want = t.map(|v| v as f32).eval(&Embed(&ids));
            assert!(y
                .iter()
                .zip(want.iter())
                .all(|(a, b)| a.lane(l) as f32 == *b));
        }
    }

    /// The fused `dot(embed(t, ids), r)` on lanes: each lane's value, tangent and
    /// cotangents are those of its own `f32` instance bit for bit (the scatter-add and the
    /// dot sum in the same order for every scalar type, and the `f32` tiles as the plain
    /// loops), with a cotangent `g` that differs per lane. A wrong shape of `r` names both.
    /// Mutation tried: the shape check on `r` removed (the short `r` then fails deeper,
    /// without the shapes): fails.
    #[test]
    fn embed_dot_lanes_are_their_instances() {
        let (n, d, m) = (7, 9, 20);
        let ids: Vec<u32> = (0..m).map(|k| ((k * k + 3) % n) as u32).collect();
        let op = Embed(&ids);
        let f32s = |r, c, seed| normal_matrix(r, c, seed).map(|v| v as f32);
        let inst: Vec<[DMatrix<f32>; 4]> = (0..8)
            .map(|l| {
                let s = 100 + 10 * l;
                [
                    f32s(n, d, s),
                    f32s(m, d, s + 1),
                    f32s(n, d, s + 2),
                    f32s(m, d, s + 3),
                ]
            })
            .collect();
        let pack = |i: usize, r: usize, c: usize| {
            DMatrix::<Lanes<8>>::from_fn(r, c, |a, b| {
                Lanes::from_lanes(|l| f64::from(inst[l][i][(a, b)]))
            })
        };
        let (t, r, dt, dr) = (pack(0, n, d), pack(1, m, d), pack(2, n, d), pack(3, m, d));
        let g = Lanes::<8>::from_lanes(|l| 0.5 + l as f64);
        let needs = [true, true];
        let (y, ty) = embed_dot::jvp(&t, &r, &op, &needs, Some(&dt), Some(&dr), None, None);
        let (gt, gr, _, _) = embed_dot::vjp(&t, &r, &op, &needs, &g);
        let (gt, gr) = (gt.unwrap(), gr.unwrap());
        for (l, [t1, r1, dt1, dr1]) in inst.iter().enumerate() {
            let (y1, ty1) = embed_dot::jvp(t1, r1, &op, &needs, Some(dt1), Some(dr1), None, None);
            assert_eq!(embed_dot(t1, r1, &op, &needs), y1);
            let g1 = g.lane(l) as f32;
            let (gt1, gr1, _, _) = embed_dot::vjp(t1, r1, &op, &needs, &g1);
            assert_eq!((y.lane(l) as f32, ty.lane(l) as f32), (y1, ty1), "lane {l}");
            assert!(gt
                .iter()
                .zip(gt1.unwrap().iter())
                .all(|(a, b)| a.lane(l) as f32 == *b));
            assert!(gr
                .iter()
                .zip(gr1.unwrap().iter())
                .all(|(a, b)| a.lane(l) as f32 == *b));
        }
        let short = DMatrix::<f64>::zeros(m - 1, d);
        let err =
            std::panic::catch_unwind(|| embed_dot(&normal_matrix(n, d, 1), &short, &op, &needs))
                .unwrap_err();
        let msg = err.downcast_ref::<String>().expect("a message");
        assert!(msg.contains("look up 20x9, r is 19x9"), "{msg}");
    }

    #[test]
    #[should_panic(expected = "id -1 at position 1 is outside 0..5")]
    fn negative_ids_panic_with_their_position() {
        normal_matrix(5, 2, 0).eval(&Embed(&[0i32, -1]));
    }

    #[test]
    #[should_panic(expected = "id 7 at position 0 is outside 0..4")]
    fn out_of_range_labels_panic() {
        normal_matrix(2, 4, 0).eval(&TakeAlong(&[7u16, 0]));
    }
}
