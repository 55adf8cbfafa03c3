//! An LSTM unrolled over a whole sequence as one rule: `lstm_sequence(xw, wh, h0, c0)`,
//! haiku's `hk.LSTM` under `hk.dynamic_unroll` with the input projection done outside
//! (JAX: `hk.dynamic_unroll(hk.LSTM(H), x, state)` with `x·W_x + b` as the input).
//!
//! Layout (time-major, as the rest of the language lays out sequences): `xw` has one row per
//! (step, example), row `t·B + b`, and `4H` columns, the gate pre-activations of the input
//! `x_t W_x + b` in haiku's order **i, g, f, o**; `wh` is the recurrent `H × 4H` block of the
//! gate weights; `h0`, `c0` are the `B × H` initial state. The result has the same rows and
//! `H` columns: `h_t` of every step, row `t·B + b`. Per step, with `h_{-1} = h0`,
//! `c_{-1} = c0`:
//!
//! `z = xw_t + h_{t−1} wh`, `i = σ(z_i)`, `g = tanh(z_g)`, `f = σ(z_f + 1)` (haiku's forget
//! bias, added in the forward pass), `o = σ(z_o)`, `c_t = f∘c_{t−1} + i∘g`,
//! `h_t = o∘tanh(c_t)`.
//!
//! What makes it one rule: the serial products `h_{t−1}·wh` (forward) and `dz_t·whᵀ`
//! (reverse) run back to back with `wh` in cache and nothing else in between but the gate
//! arithmetic, in place; the reverse sweep keeps only the activated gates, `c_t` and
//! `tanh(c_t)` of each step (`(4H + 2H)·B` values per step, besides the output), overwrites
//! the gates with their cotangents (which are `xw`'s cotangent), and accumulates
//! `dwh += h_{t−1}ᵀ dz_t` step by step while `dz_t` is in cache. A chunk keeps each
//! step's values in one contiguous block (step-major buffers, see `at`). The examples are
//! independent, so the batch runs in fixed chunks of rows ([`CHUNK_ROWS`]) on the thread
//! pool, each chunk its own recurrence; the chunks depend on `B` only, so the results are the
//! same bit for bit on any number of threads (`dwh` sums the chunks' parts in chunk order).
//! Each chunk also writes its rows of the results (`h`, `xw`'s cotangent) itself, into
//! matrices allocated without zeros: no serial pass assembles them.
//!
//! Derivatives (`∘` elementwise, `G` the output cotangent), reverse over `t`:
//! `dh ← dh + G_t`, `dc ← dc + dh∘o∘(1 − tanh²c_t)`, `dz_o = dh∘tanh(c_t)∘o(1 − o)`,
//! `dz_i = dc∘g∘i(1 − i)`, `dz_g = dc∘i∘(1 − g²)`, `dz_f = dc∘c_{t−1}∘f(1 − f)`,
//! `dc ← dc∘f`, `dh ← dz_t whᵀ`; then `dxw = dz`, `dh0 = dh`, `dc0 = dc`,
//! `dwh = Σ_t h_{t−1}ᵀ dz_t`. Forward mode runs the same chain with tangents.
//!
//! [`lstm_projected()`] is the same LSTM of `x·W_x + b` with the input projection inside
//! the rule (haiku's `hk.LSTM` with its own input weights): each chunk makes a step's gate
//! block as one product `[x_t | h_{t−1}]·[W_x; W_h] + b`, and its reverse sweep takes `dW_x`, `db` and `dx`
//! step by step while `dz_t` is in cache, so neither the `T·B × 4H` product nor its
//! cotangent is ever stored (measured on the benchmark layer, one thread: 30% less time
//! than `x·W_x + b` then [`lstm_sequence()`], whose passes over those two 8 MB matrices,
//! strided by chunk and step, the checksum's included, were a third of its time).
//!
//! [`lstm_embedded()`] is the same LSTM of `embed(table, ids)` (what the macro makes of
//! `lstm_sequence(&embed(&t, ids), ..)`): each chunk's gate block starts as its ids' rows
//! of the `V × 4H` table, and its reverse sweep scatters `dz_t` into its own part of the
//! table's cotangent (the RNN LM, whose table is `E·W_x + b`).
//!
//! It is called like a `#[differentiable]` function (a function and a module of the same
//! name with `jvp` and `vjp`), so it takes four differentiated matrices. Such a call keeps
//! no tape, so the value keeps its forward pass (gates and cells) on its thread, keyed by
//! the addresses and shapes of its four arguments, and the `vjp` that follows in the same
//! reverse sweep takes it instead of running the forward pass again (a third of the work).
//! One pass is kept per thread (the last); a `vjp` whose arguments are not the kept ones
//! recomputes. In a loss the arguments of a `vjp` are alive from their forward call to it
//! (the tape holds them, and the loss language never mutates a value); a direct call of
//! the public `vjp` has no such guarantee, so each chunk of the kept pass also holds a
//! checksum of what it read (its rows of `xw`, `h0`, `c0`, and `wh`), which the `vjp`
//! checks chunk by chunk on the pool, recomputing a chunk whose checksum differs. A
//! forward call whose `vjp` never comes (a value-only call) leaves its pass kept until the
//! next call on that thread.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::ops::Range;

use nalgebra::{DMatrix, DVector, Dyn, UninitMatrix};

use super::gather::{checked_rows, gather, Embed, Id};
use crate::kernels::gemm::{gemm_bias_raw, gemm_raw_ldc, MatRef};
use crate::kernels::vecmath::{sigmoid as sig, tanh};
use crate::scalar::Real;

mod tiles;
use tiles::Blocked;

/// Rows per chunk of the batch: the chunks run on the thread pool, each its own recurrence
/// (`B = 128` runs as two chunks of 64, `B ≤ 64` as one).
pub const CHUNK_ROWS: usize = 64;

/// Sizes of one call: `b` examples, `t` steps, `h` hidden units.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
}

impl Dims {
    /// The sizes, or a panic naming the shapes.
    #[track_caller]
    fn of<S: Real>(xw: &DMatrix<S>, wh: &DMatrix<S>, h0: &DMatrix<S>, c0: &DMatrix<S>) -> Dims {
        let (b, h) = h0.shape();
        let ok = b > 0
            && h > 0
            && wh.shape() == (h, 4 * h)
            && c0.shape() == (b, h)
            && xw.ncols() == 4 * h
            && xw.nrows().is_multiple_of(b);
        if !ok {
            panic!(
                "lstm_sequence(xw, wh, h0, c0): xw {:?} (T·B × 4H), wh {:?} (H × 4H), h0 {:?} \
                 and c0 {:?} (B × H, B and H positive) do not fit together",
                xw.shape(),
                wh.shape(),
                h0.shape(),
                c0.shape()
            );
        }
        Dims {
            b,
            t: xw.nrows() / b,
            h,
        }
    }

    /// The sizes of [`lstm_projected()`]'s arguments, or a panic naming the shapes.
    #[track_caller]
    fn of_projected<S: Real>(args: Args<'_, S>) -> Dims {
        let Input::Projected { x, wx, b: bias } = args.input else {
            return Dims::of(args.input.matrix(), args.wh, args.h0, args.c0);
        };
        let (b, h) = args.h0.shape();
        let ok = b > 0
            && h > 0
            && args.wh.shape() == (h, 4 * h)
            && args.c0.shape() == (b, h)
            && wx.shape() == (x.ncols(), 4 * h)
            && bias.len() == 4 * h
            && x.nrows().is_multiple_of(b);
        if !ok {
            panic!(
                "lstm_projected(x, wx, b, wh, h0, c0): x {:?} (T·B × E), wx {:?} (E × 4H), b                  {} entries (4H), wh {:?} (H × 4H), h0 {:?} and c0 {:?} (B × H, B and H                  positive) do not fit together",
                x.shape(),
                wx.shape(),
                bias.len(),
                args.wh.shape(),
                args.h0.shape(),
                args.c0.shape()
            );
        }
        Dims {
            b,
            t: x.nrows() / b,
            h,
        }
    }

    /// The sizes of [`lstm_embedded()`]'s arguments, or a panic naming the shapes.
    #[track_caller]
    fn of_embedded<S: Real>(table: &DMatrix<S>, rows: usize, args: Args<'_, S>) -> Dims {
        let (b, h) = args.h0.shape();
        let ok = b > 0
            && h > 0
            && args.wh.shape() == (h, 4 * h)
            && args.c0.shape() == (b, h)
            && table.ncols() == 4 * h
            && rows.is_multiple_of(b);
        if !ok {
            panic!(
                "lstm_sequence(embed(table, ids), wh, h0, c0): table {:?} (V × 4H), {rows} ids \
                 (T·B), wh {:?} (H × 4H), h0 {:?} and c0 {:?} (B × H, B and H positive) do \
                 not fit together",
                table.shape(),
                args.wh.shape(),
                args.h0.shape(),
                args.c0.shape()
            );
        }
        Dims { b, t: rows / b, h }
    }

    /// The fixed row chunks of the batch (they depend on `b` only).
    fn chunks(&self) -> Vec<Range<usize>> {
        let n = self.b.div_ceil(CHUNK_ROWS);
        let per = self.b.div_ceil(n);
        (0..n)
            .map(|i| i * per..((i + 1) * per).min(self.b))
            .filter(|r| !r.is_empty())
            .collect()
    }
}

/// Where each step's gate pre-activations start from, before `h_{t−1}·wh` is added to
/// them.
#[derive(Clone, Copy)]
enum Input<'a, S: Real> {
    /// Given whole: `xw` (`T·B × 4H`), as [`lstm_sequence()`] takes it.
    Given(&'a DMatrix<S>),
    /// Made step by step, for [`lstm_projected()`]: `x_t·wx + b` (`x` `T·B × E`, `wx`
    /// `E × 4H`, `b` `4H` entries), a chunk's `n × 4H` block at a time, into its gate
    /// buffer (the `T·B × 4H` product and its cotangent are never stored).
    Projected {
        x: &'a DMatrix<S>,
        wx: &'a DMatrix<S>,
        b: &'a DVector<S>,
    },
    /// Rows of a table by ids, for [`lstm_embedded()`]: row `k` of `xw` is row `rows[k]`
    /// of `table` (`V × 4H`), gathered a chunk's `n × 4H` block at a time into its gate
    /// buffer (the `T·B × 4H` rows and their cotangent are never stored).
    Embedded {
        table: &'a DMatrix<S>,
        rows: &'a [u32],
        /// The address of the caller's ids (`rows` is a checked copy, made anew by each
        /// call): what keys a kept pass.
        ids_at: usize,
    },
}

impl<'a, S: Real> Input<'a, S> {
    /// The matrix read step by step (`xw`, or `x`; the table for `Embedded`).
    fn matrix(self) -> &'a DMatrix<S> {
        match self {
            Input::Given(xw) => xw,
            Input::Projected { x, .. } => x,
            Input::Embedded { table, .. } => table,
        }
    }
}

/// The arguments of one call.
#[derive(Clone, Copy)]
struct Args<'a, S: Real> {
    input: Input<'a, S>,
    wh: &'a DMatrix<S>,
    h0: &'a DMatrix<S>,
    c0: &'a DMatrix<S>,
}

impl<'a, S: Real> Args<'a, S> {
    fn given(
        xw: &'a DMatrix<S>,
        wh: &'a DMatrix<S>,
        h0: &'a DMatrix<S>,
        c0: &'a DMatrix<S>,
    ) -> Self {
        Args {
            input: Input::Given(xw),
            wh,
            h0,
            c0,
        }
    }
}

/// `f(i)` for `i < n`, on the thread pool when there is more than one and more than one
/// thread; in order either way.
fn par_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    if n > 1 && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        (0..n).into_par_iter().map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}

/// [`par_map`] over owned items.
fn par_map_owned<T: Send, U: Send>(v: Vec<T>, f: impl Fn(T) -> U + Sync + Send) -> Vec<U> {
    if v.len() > 1 && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        v.into_par_iter().map(f).collect()
    } else {
        v.into_iter().map(f).collect()
    }
}

/// Where column `j` of step `t`'s block starts in a chunk buffer of `n × w` blocks.
///
/// A chunk's buffers are step-major: step `t`'s `n × w` block (column-major, columns `n`
/// apart) at `t·n·w`, so that a step's products and gate arithmetic touch one contiguous
/// block (`64 × 512` `f32`s, 128 KB, for the gates). Column-major `T·n`-row buffers put a
/// step's 512 gate columns 8 KB apart, a page each: measured, the step products at about
/// half their speed in cache, `dwh` at 0.5 of the peak.
#[inline(always)]
fn at(t: usize, j: usize, n: usize, w: usize) -> usize {
    (t * w + j) * n
}

/// A strided view (`rows × cols`, columns `ld` apart) starting at `data[offset]`.
fn view<S: Real>(data: &[S], offset: usize, rows: usize, cols: usize, ld: usize) -> MatRef<'_, S> {
    MatRef::new(&data[offset..], rows, cols, 1, ld).expect("an LSTM block lies inside its buffer")
}

/// `c[offset..]` (a `a.rows × b.cols` block, columns `ld` apart) `= a·b`, or `+=` when
/// `acc`.
fn product_ldc<S: Real>(
    a: MatRef<'_, S>,
    b: MatRef<'_, S>,
    c: &mut [S],
    offset: usize,
    ld: usize,
    acc: bool,
) {
    let (m, n) = (a.rows(), b.cols());
    assert_eq!(a.cols(), b.rows());
    assert!(m <= ld && (n == 0 || offset + (n - 1) * ld + m <= c.len()));
    // SAFETY: the shapes agree and every column `j < n` of the block, `m` elements at
    // `offset + j·ld`, lies inside `c` (checked above); the block is initialized.
    unsafe { gemm_raw_ldc(a, b, c.as_mut_ptr().add(offset), ld, acc) }
}

/// Asks for the cache lines of `v` to be brought into L2 (a hint: no effect on any
/// value; nothing off x86-64).
#[inline(always)]
fn prefetch<S>(v: &[S]) {
    prefetch_lines(v.as_ptr(), v.len());
}

/// [`prefetch`] of elements `from..from + len` of `v`'s allocation, which may lie past its
/// length (a buffer about to be written: its lines then come in before the writes).
#[inline(always)]
fn prefetch_spare<S>(v: &Vec<S>, from: usize, len: usize) {
    assert!(from + len <= v.capacity());
    prefetch_lines(v.as_ptr().wrapping_add(from), len);
}

/// The prefetches of [`prefetch`]: `len` elements from `p`, inside one allocation.
#[inline(always)]
fn prefetch_lines<S>(p: *const S, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let p = p as *const i8;
        for off in (0..len * std::mem::size_of::<S>()).step_by(64) {
            // SAFETY: a prefetch never faults, and `p + off` lies inside the allocation
            // (the callers' bounds).
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// `v ← σ(v + shift)`, elementwise.
#[inline(always)]
fn map_sig<S: Real>(v: &mut [S], shift: S) {
    for x in v {
        *x = sig(*x + shift);
    }
}

/// `v ← tanh(v)`, elementwise.
#[inline(always)]
fn map_tanh<S: Real>(v: &mut [S]) {
    for x in v {
        *x = tanh(*x);
    }
}

/// The four gate columns `j`, `H + j`, `2H + j`, `3H + j` (each `n` long) of step `t`'s
/// block of a chunk's gate buffer ([`at`]).
fn gate_cols<S>(z: &mut [S], t: usize, j: usize, h: usize, n: usize) -> [&mut [S]; 4] {
    let blk = &mut z[at(t, 0, n, 4 * h)..][..4 * h * n];
    let (a, rest) = blk.split_at_mut(h * n);
    let (b, rest) = rest.split_at_mut(h * n);
    let (c, d) = rest.split_at_mut(h * n);
    let k = j * n;
    [
        &mut a[k..k + n],
        &mut b[k..k + n],
        &mut c[k..k + n],
        &mut d[k..k + n],
    ]
}

/// Fletcher's two running sums over 32-bit words (modulo 2^32), in sixteen interleaved
/// lanes (one vector register each), restarting the lanes at each [`Sum::add`]: a
/// checksum of the words in the order they are added. Addresses alone would let a direct call of the public `vjp`, on
/// matrices written in place or allocated where freed ones of the same shapes lay, take
/// a pass of other values; a checksum that differs makes it recompute instead.
#[derive(Clone, Copy)]
struct Sum {
    a: [u32; 16],
    b: [u32; 16],
    /// A scalar that is not whole 32-bit words: no checksum, its pass is never taken.
    none: bool,
}

impl Sum {
    fn new() -> Sum {
        Sum {
            a: [0; 16],
            b: [0; 16],
            none: false,
        }
    }

    /// Adds the words of `v`.
    #[inline(always)]
    fn add<S: Real>(&mut self, v: &[S]) {
        let size = std::mem::size_of::<S>();
        if std::mem::align_of::<S>() < 4 || !size.is_multiple_of(4) {
            self.none = true;
            return;
        }
        // SAFETY: the elements are plain floating-point values (`f32`, `f64` or packets of
        // them: no padding, aligned to at least 4), `v.len()` of them initialized.
        let w = unsafe {
            std::slice::from_raw_parts(v.as_ptr() as *const u32, std::mem::size_of_val(v) / 4)
        };
        self.add_words(w);
    }

    /// Adds the words `w` (ids, or the words of [`Sum::add`]'s elements).
    #[inline]
    fn add_words(&mut self, w: &[u32]) {
        // The whole chunks of 16 with AVX2 in registers where the CPU has it: kept in
        // `self` and updated through a closure, or in local arrays, the sums compiled to
        // a mix of 4-lane and scalar adds (2% of the RNN LM's gradient, 12% of
        // `lstm_sequence`'s, which sums `xw` a column of a step at a time).
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::cpu::has_avx2() {
            // SAFETY: the CPU has AVX2 (checked).
            done = unsafe { sum_avx2(&mut self.a, &mut self.b, w) };
        }
        let (a, b) = (&mut self.a, &mut self.b);
        let rest = &w[done..];
        let mut chunks = rest.chunks_exact(16);
        for c in &mut chunks {
            for (l, &w) in c.iter().enumerate() {
                a[l] = a[l].wrapping_add(w);
                b[l] = b[l].wrapping_add(a[l]);
            }
        }
        for (l, &w) in chunks.remainder().iter().enumerate() {
            a[l] = a[l].wrapping_add(w);
            b[l] = b[l].wrapping_add(a[l]);
        }
    }

    /// The sums folded into one word (`None` for a scalar of another layout).
    fn finish(&self) -> Option<u64> {
        (!self.none).then(|| {
            self.a.iter().chain(&self.b).fold(0, |h: u64, &x| {
                (h.rotate_left(5) ^ u64::from(x)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            })
        })
    }
}

/// [`Sum::add_words`] over the whole chunks of 16 words of `w` (lane `l` of the sums
/// `a`, `b` in lanes `l % 8` of two vectors each); returns how many words it added.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_avx2(a: &mut [u32; 16], b: &mut [u32; 16], w: &[u32]) -> usize {
    use std::arch::x86_64::*;
    let (pa, pb) = (
        a.as_mut_ptr() as *mut __m256i,
        b.as_mut_ptr() as *mut __m256i,
    );
    let (mut a0, mut a1) = (_mm256_loadu_si256(pa), _mm256_loadu_si256(pa.add(1)));
    let (mut b0, mut b1) = (_mm256_loadu_si256(pb), _mm256_loadu_si256(pb.add(1)));
    let full = w.len() / 16 * 16;
    for i in (0..full).step_by(16) {
        let p = w.as_ptr().add(i) as *const __m256i;
        a0 = _mm256_add_epi32(a0, _mm256_loadu_si256(p));
        a1 = _mm256_add_epi32(a1, _mm256_loadu_si256(p.add(1)));
        b0 = _mm256_add_epi32(b0, a0);
        b1 = _mm256_add_epi32(b1, a1);
    }
    _mm256_storeu_si256(pa, a0);
    _mm256_storeu_si256(pa.add(1), a1);
    _mm256_storeu_si256(pb, b0);
    _mm256_storeu_si256(pb.add(1), b1);
    full
}

/// Adds chunk `r`'s rows of step `t` of `m` (`xw`, or `x` for [`lstm_projected()`]; `T·B`
/// rows) to `sum`, column by column (`n` elements each, for `xw` the order of the step's
/// block of the chunk's gate buffer; each also given to `visit`).
fn step_inputs<S: Real>(
    d: Dims,
    r: &Range<usize>,
    m: &DMatrix<S>,
    t: usize,
    sum: &mut Sum,
    mut visit: impl FnMut(&[S]),
) {
    let (n, b) = (r.len(), d.b);
    let xs = m.as_slice();
    for j in 0..m.ncols() {
        let seg = &xs[t * b + r.start + j * d.t * b..][..n];
        sum.add(seg);
        visit(seg);
    }
}

/// Adds `wh` (then `wx` and `b` for [`lstm_projected()`]) and chunk `r`'s rows of `h0`
/// and `c0` to `sum`.
fn state_inputs<S: Real>(d: Dims, r: &Range<usize>, args: Args<'_, S>, sum: &mut Sum) {
    sum.add(args.wh.as_slice());
    match args.input {
        Input::Projected { wx, b, .. } => {
            sum.add(wx.as_slice());
            sum.add(b.as_slice());
        }
        Input::Embedded { table, .. } => sum.add(table.as_slice()),
        Input::Given(_) => {}
    }
    for m in [args.h0, args.c0] {
        for j in 0..d.h {
            sum.add(&m.as_slice()[r.start + j * d.b..][..r.len()]);
        }
    }
}

/// The checksum ([`Sum`]) of everything chunk `r`'s forward pass reads: its rows of `xw`
/// step by step ([`step_inputs`]), then `wh` and its rows of `h0` and `c0`
/// ([`state_inputs`]). It decides whether a kept pass of the chunk is still its
/// arguments' (the forward pass sums as it gathers, step by step, the `vjp` checks here:
/// one order for both).
fn chunk_inputs<S: Real>(d: Dims, r: &Range<usize>, args: Args<'_, S>) -> Option<u64> {
    let mut sum = Sum::new();
    for t in 0..d.t {
        match args.input {
            Input::Embedded { rows, .. } => sum.add_words(&rows[t * d.b + r.start..][..r.len()]),
            _ => step_inputs(d, r, args.input.matrix(), t, &mut sum, |_| ()),
        }
    }
    state_inputs(d, r, args, &mut sum);
    sum.finish()
}

/// A `rows × cols` column-major matrix written by the chunks, each its own rows (a raw
/// pointer: the chunks run on the pool at once and write disjoint elements).
#[derive(Clone, Copy)]
struct Out<S> {
    p: *mut S,
    rows: usize,
    cols: usize,
}
// SAFETY: the chunks write disjoint rows, and the matrix is read only after they joined.
unsafe impl<S: Send> Send for Out<S> {}
unsafe impl<S: Send> Sync for Out<S> {}

impl<S: Real> Out<S> {
    fn of(m: &mut UninitMatrix<S, Dyn, Dyn>) -> Out<S> {
        Out {
            p: m.as_mut_ptr() as *mut S,
            rows: m.nrows(),
            cols: m.ncols(),
        }
    }

    /// Writes `src` into column `j` from row `row` on.
    ///
    /// # Safety
    /// No other thread writes or reads these elements meanwhile.
    #[inline]
    unsafe fn put(self, row: usize, j: usize, src: &[S]) {
        assert!(j < self.cols && row + src.len() <= self.rows);
        // SAFETY: inside the matrix (checked above); exclusive by the caller's promise.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.p.add(j * self.rows + row), src.len())
        }
    }
}

/// Writes a chunk's buffer of `n × w` step blocks ([`at`]; row `k` of step `t`) to its
/// rows `t·B + r.start + k` of `out`: column by column, so that the writes stay within a
/// few pages at a time (step by step, each step's rows would touch a page per column).
fn put_rows<S: Real>(d: Dims, r: &Range<usize>, v: &[S], w: usize, out: Out<S>) {
    let n = r.len();
    for j in 0..w {
        for t in 0..d.t {
            // SAFETY: rows `t·B + r` are this chunk's alone.
            unsafe { out.put(t * d.b + r.start, j, &v[at(t, j, n, w)..][..n]) };
        }
    }
}

/// An uninitialized `rows × cols` matrix for the chunks to write in full.
fn uninit<S: Real>(rows: usize, cols: usize) -> UninitMatrix<S, Dyn, Dyn> {
    UninitMatrix::<S, Dyn, Dyn>::uninit(Dyn(rows), Dyn(cols))
}

/// One chunk's forward pass: for rows `r` of the batch, every step's activated gates
/// (`n × 4H` blocks, columns `i, g, f, o`), cell `c_t`, `tanh(c_t)` and output `h_t`
/// (`n × H` blocks), step-major ([`at`]), and the checksum of what it read
/// ([`chunk_inputs`]).
struct Chunk<S> {
    r: Range<usize>,
    sum: Option<u64>,
    gates: Vec<S>,
    c: Vec<S>,
    tc: Vec<S>,
    hs: Vec<S>,
}

/// Chunk `r`'s forward pass; with `out` (the `T·B × H` result), each `h_t` is also
/// written to its rows there, as it is made (in cache, on the chunk's thread).
fn forward_chunk<S: Real>(
    d: Dims,
    r: Range<usize>,
    args: Args<'_, S>,
    out: Option<Out<S>>,
) -> Chunk<S> {
    let Args { wh, h0, c0, .. } = args;
    let (n, h, tt, b) = (r.len(), d.h, d.t, d.b);
    let whv = MatRef::of(wh);
    let (zero, hn_len) = (S::zero(), n * h);
    // Each step's block of the gates starts as the chunk's rows of `xw_t` (appended in
    // order, checksummed on the way: no zero-fill, and the block is in cache for the
    // product that adds h_{t−1}·wh to it in place).
    let mut sum = Sum::new();
    // For `lstm_projected`: `[wx; wh]` (`(E + H) × 4H`) and a step's `[x_t | h_{t−1}]`.
    let (wxh, mut xh) = match args.input {
        Input::Projected { x, wx, .. } => {
            let e = x.ncols();
            let wxh = DMatrix::from_fn(e + h, 4 * h, |i, j| {
                if i < e {
                    wx[(i, j)]
                } else {
                    wh[(i - e, j)]
                }
            });
            (wxh, vec![zero; n * (e + h)])
        }
        _ => (DMatrix::zeros(0, 0), Vec::new()),
    };
    // For `lstm_embedded` in `f32` (AVX2): the table as blocks of 8 columns, row-major
    // within each, from which a step's gate block is gathered by 8 × 8 tiles.
    let blocked = match args.input {
        Input::Embedded { table, .. } => Blocked::of(table.as_slice(), table.nrows(), 4 * h),
        _ => None,
    };
    let mut gates = Vec::with_capacity(tt * 4 * hn_len);
    let mut c = Vec::with_capacity(tt * hn_len);
    let mut tc = Vec::with_capacity(tt * hn_len);
    let mut hs = Vec::with_capacity(tt * hn_len);
    for t in 0..tt {
        match args.input {
            Input::Given(xw) => {
                step_inputs(d, &r, xw, t, &mut sum, |seg| gates.extend_from_slice(seg))
            }
            Input::Embedded { table, rows, .. } => {
                // The step's ids (summed as the vjp's check sums them), then each gate
                // column of the block gathered from the table's column (`V` entries, in
                // cache), in place of `xw_t`.
                let ids = &rows[t * b + r.start..][..n];
                sum.add_words(ids);
                if let Some(bt) = &blocked {
                    let blk = gates.len();
                    assert!(gates.capacity() >= blk + 4 * h * n);
                    // SAFETY: the block's `n·4H` elements after `blk` lie inside the
                    // capacity (asserted), the gather writes every one of them, `S` is
                    // `f32` (`blocked` exists only then), and every id is below the
                    // table's rows (`checked_rows`).
                    unsafe {
                        bt.gather(ids, gates.as_mut_ptr().add(blk));
                        gates.set_len(blk + 4 * h * n);
                    }
                } else {
                    let v = table.nrows();
                    for col in table.as_slice().chunks_exact(v) {
                        gates.extend(ids.iter().map(|&i| col[i as usize]));
                    }
                }
            }
            Input::Projected { x, b: bias, .. } => {
                // One product of `[x_t | h_{t−1}]` (`n × (E + H)`, gathered) and
                // `[wx; wh]`, the bias added in registers: the block written once, no
                // pass over it for the bias, no second product reading and writing it.
                let e = x.ncols();
                let mut q = 0;
                step_inputs(d, &r, x, t, &mut sum, |seg| {
                    xh[q * n..][..n].copy_from_slice(seg);
                    q += 1;
                });
                if t == 0 {
                    for j in 0..h {
                        xh[(e + j) * n..][..n]
                            .copy_from_slice(&h0.as_slice()[r.start + j * b..][..n]);
                    }
                } else {
                    xh[e * n..].copy_from_slice(&hs[at(t - 1, 0, n, h)..][..n * h]);
                }
                let blk = at(t, 0, n, 4 * h);
                gates.reserve(4 * h * n);
                let a = view(&xh, 0, n, e + h, n);
                let w = MatRef::of(&wxh);
                assert!(gates.len() == blk && gates.capacity() >= blk + 4 * h * n);
                // SAFETY: the shapes agree (`n × (E + H)` by `(E + H) × 4H`, `4H` bias
                // entries) and the block's `n·4H` elements after `blk` lie inside the
                // reserved capacity; the product writes every one of them.
                unsafe {
                    gemm_bias_raw(a, w, bias.as_slice(), gates.as_mut_ptr().add(blk));
                    gates.set_len(blk + 4 * h * n);
                }
            }
        }
        if !matches!(args.input, Input::Projected { .. }) {
            let hprev = if t == 0 {
                view(h0.as_slice(), r.start, n, h, b)
            } else {
                view(&hs, at(t - 1, 0, n, h), n, h, n)
            };
            product_ldc(hprev, whv, &mut gates, at(t, 0, n, 4 * h), n, true);
        }
        // This step's blocks (written in full below; zeros first, in cache).
        for v in [&mut c, &mut tc, &mut hs] {
            v.resize((t + 1) * hn_len, zero);
        }
        for j in 0..h {
            if t + 1 < tt {
                // The next step's blocks of column j, about to be written (the gather's
                // stores waited on their lines, from L3, for most of their time).
                for q in 0..4 {
                    prefetch_spare(&gates, at(t + 1, q * h + j, n, 4 * h), n);
                }
                for v in [&c, &tc, &hs] {
                    prefetch_spare(v, at(t + 1, j, n, h), n);
                }
            }
            let [zi, zg, zf, zo] = gate_cols(&mut gates, t, j, h, n);
            let (c_before, c_now) = c.split_at_mut(at(t, j, n, h));
            let cp = if t == 0 {
                &c0.as_slice()[r.start + j * b..][..n]
            } else {
                &c_before[at(t - 1, j, n, h)..][..n]
            };
            let cn = &mut c_now[..n];
            let tcn = &mut tc[at(t, j, n, h)..][..n];
            let hn = &mut hs[at(t, j, n, h)..][..n];
            // One simple loop per function, so that each vectorizes.
            map_sig(zi, S::zero());
            map_tanh(zg);
            map_sig(zf, S::one());
            map_sig(zo, S::zero());
            for k in 0..n {
                cn[k] = zf[k] * cp[k] + zi[k] * zg[k];
            }
            tcn.copy_from_slice(cn);
            map_tanh(tcn);
            for k in 0..n {
                hn[k] = zo[k] * tcn[k];
            }
        }
    }
    state_inputs(d, &r, args, &mut sum);
    let sum = sum.finish();
    if let Some(o) = out {
        put_rows(d, &r, &hs, h, o);
    }
    Chunk {
        r,
        sum,
        gates,
        c,
        tc,
        hs,
    }
}

/// The chunks' buffers of `n × w` step blocks ([`at`]; row `k` of step `t`) as one
/// `T·B × w` matrix (row `t·B + r.start + k`).
fn assemble<S: Real>(d: Dims, w: usize, parts: Vec<(Range<usize>, Vec<S>)>) -> DMatrix<S> {
    let rows = d.t * d.b;
    let mut out = DMatrix::<S>::zeros(rows, w);
    let o = out.as_mut_slice();
    for (r, v) in parts {
        let n = r.len();
        for j in 0..w {
            for t in 0..d.t {
                let dst = j * rows + t * d.b + r.start;
                o[dst..dst + n].copy_from_slice(&v[at(t, j, n, w)..][..n]);
            }
        }
    }
    out
}

/// The chunks' `n × H` blocks (rows `r`) as one `B × H` matrix.
fn stack<S: Real>(d: Dims, parts: Vec<(Range<usize>, Vec<S>)>) -> DMatrix<S> {
    let mut out = DMatrix::<S>::zeros(d.b, d.h);
    let o = out.as_mut_slice();
    for (r, v) in parts {
        let n = r.len();
        for j in 0..d.h {
            o[j * d.b + r.start..][..n].copy_from_slice(&v[j * n..][..n]);
        }
    }
    out
}

/// What identifies the arguments of a kept forward pass besides the chunks' checksums:
/// the scalar type and the address and shape of `xw` (or `x`), `wh`, `h0`, `c0`, and of
/// `wx` and `b` for [`lstm_projected()`] (zeros for [`lstm_sequence()`]).
type KeepKey = (TypeId, [(usize, usize, usize); 6]);

fn keep_key<S: Real>(args: Args<'_, S>) -> KeepKey {
    let at = |p: *const S, r: usize, c: usize| (p as usize, r, c);
    let m = |m: &DMatrix<S>| at(m.as_ptr(), m.nrows(), m.ncols());
    let (wx, b) = match args.input {
        Input::Given(_) => ((0, 0, 0), (0, 0, 0)),
        Input::Projected { wx, b, .. } => (m(wx), at(b.as_ptr(), b.len(), 1)),
        // The ids' address and length (`2` tells them from a bias).
        Input::Embedded { rows, ids_at, .. } => ((ids_at, rows.len(), 2), (0, 0, 0)),
    };
    (
        TypeId::of::<S>(),
        [
            m(args.input.matrix()),
            m(args.wh),
            m(args.h0),
            m(args.c0),
            wx,
            b,
        ],
    )
}

thread_local! {
    /// The last forward pass of [`lstm_sequence()`] on this thread (see the module).
    static KEPT: RefCell<Option<(KeepKey, Box<dyn Any>)>> = const { RefCell::new(None) };
}

/// Keeps `chunks` as this thread's forward pass for `key`, in place of any kept before.
fn keep<S: Real>(key: KeepKey, chunks: Vec<Chunk<S>>) {
    KEPT.with(|k| *k.borrow_mut() = Some((key, Box::new(chunks))));
}

/// The kept forward pass if it is `key`'s (taken), else `None` (what was kept stays).
/// Each chunk of it is then still to be checked against its arguments' checksum.
fn take_kept<S: Real>(key: &KeepKey) -> Option<Vec<Chunk<S>>> {
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        if k.as_ref().is_some_and(|(kk, _)| kk == key) {
            let (_, v) = k.take()?;
            v.downcast::<Vec<Chunk<S>>>().ok().map(|b| *b)
        } else {
            None
        }
    })
}

/// The LSTM over the whole sequence (see the [module](self)): `h_t` of every step, row
/// `t·B + b`, from the input pre-activations `xw` (`T·B × 4H`, gates `i, g, f, o`), the
/// recurrent weights `wh` (`H × 4H`) and the initial state `h0`, `c0` (`B × H`).
///
/// Panics with the shapes when they do not fit together.
#[track_caller]
pub fn lstm_sequence<S: Real>(
    xw: &DMatrix<S>,
    wh: &DMatrix<S>,
    h0: &DMatrix<S>,
    c0: &DMatrix<S>,
) -> DMatrix<S> {
    let d = Dims::of(xw, wh, h0, c0);
    value(d, Args::given(xw, wh, h0, c0))
}

/// The value of a call of `d`'s sizes, its forward pass kept on this thread.
fn value<S: Real>(d: Dims, args: Args<'_, S>) -> DMatrix<S> {
    let mut out = uninit::<S>(d.t * d.b, d.h);
    let o = Out::of(&mut out);
    let ranges = d.chunks();
    let chunks = par_map(ranges.len(), |i| {
        forward_chunk(d, ranges[i].clone(), args, Some(o))
    });
    keep(keep_key(args), chunks);
    // SAFETY: the chunks' rows cover the batch and each wrote every `h_t` of its rows.
    unsafe { out.assume_init() }
}

/// The rules of [`lstm_sequence()`] (the convention of `#[differentiable]` functions, which
/// a loss calls them by): `jvp(args, tangents) -> (value, tangent)` and
/// `vjp(args, cotangent) -> (cotangent of each argument)`.
pub mod lstm_sequence {
    use super::*;

    /// The value and its tangent along the tangents of the arguments (`None`: constant).
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn jvp<S: Real>(
        xw: &DMatrix<S>,
        wh: &DMatrix<S>,
        h0: &DMatrix<S>,
        c0: &DMatrix<S>,
        dxw: Option<&DMatrix<S>>,
        dwh: Option<&DMatrix<S>>,
        dh0: Option<&DMatrix<S>>,
        dc0: Option<&DMatrix<S>>,
    ) -> (DMatrix<S>, DMatrix<S>) {
        let d = Dims::of(xw, wh, h0, c0);
        for (m, like, what) in [
            (dxw, xw, "xw"),
            (dwh, wh, "wh"),
            (dh0, h0, "h0"),
            (dc0, c0, "c0"),
        ] {
            if let Some(m) = m {
                assert_eq!(
                    m.shape(),
                    like.shape(),
                    "lstm_sequence: the tangent of {what} has the wrong shape"
                );
            }
        }
        tangent(d, Args::given(xw, wh, h0, c0), [dxw, dwh, dh0, dc0])
    }

    /// The cotangents of `xw`, `wh`, `h0` and `c0` given the cotangent `g` of the output
    /// (`T·B × H`). Takes the value's kept forward pass, chunk by chunk, where the
    /// chunk's arguments are still the ones it was run on; runs it otherwise.
    #[track_caller]
    #[allow(clippy::type_complexity)]
    pub fn vjp<S: Real>(
        xw: &DMatrix<S>,
        wh: &DMatrix<S>,
        h0: &DMatrix<S>,
        c0: &DMatrix<S>,
        g: &DMatrix<S>,
    ) -> (
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
    ) {
        let d = Dims::of(xw, wh, h0, c0);
        assert_eq!(
            g.shape(),
            (d.t * d.b, d.h),
            "lstm_sequence: a cotangent of the wrong shape"
        );
        let c = cotangents(d, Args::given(xw, wh, h0, c0), [true; 3], g);
        (c.input, Some(c.wh), Some(c.h0), Some(c.c0))
    }
}

/// Which arguments of [`lstm_projected()`] are differentiated: `[x, wx, b, wh, h0, c0]`
/// (the reverse rule skips the products of `x`'s and `wx`'s cotangents, and `b`'s sums,
/// when they are not asked for).
pub type LstmNeeds = [bool; 6];

/// [`lstm_sequence()`] of `x·wx + b`, with the input projection inside the rule: each
/// chunk makes its `n × 4H` block of the gate pre-activations step by step, one product
/// `[x_t | h_{t−1}]·[wx; wh] + b`, and its reverse sweep takes `dwx += x_tᵀ·dz_t`, `db` and
/// `dx_t = dz_t·wxᵀ` while `dz_t` is in cache; the `T·B × 4H` product and its cotangent
/// are never stored (haiku: `hk.dynamic_unroll(hk.LSTM(H))` with `hk.LSTM`'s own input
/// weights). `x` is `T·B × E` (row `t·B + b`), `wx` `E × 4H`, `b` `4H` entries (gates
/// `i, g, f, o`), `wh`, `h0`, `c0` as for [`lstm_sequence()`]; `needs` says which
/// arguments are differentiated (a differentiable body's call gets it from the macro).
///
/// Panics with the shapes when they do not fit together.
#[track_caller]
pub fn lstm_projected<S: Real>(
    x: &DMatrix<S>,
    wx: &DMatrix<S>,
    b: &DVector<S>,
    wh: &DMatrix<S>,
    h0: &DMatrix<S>,
    c0: &DMatrix<S>,
    needs: &LstmNeeds,
) -> DMatrix<S> {
    let _ = needs;
    let args = Args {
        input: Input::Projected { x, wx, b },
        wh,
        h0,
        c0,
    };
    value(Dims::of_projected(args), args)
}

/// The rules of [`lstm_projected()`] (the convention of `#[differentiable]` functions).
pub mod lstm_projected {
    use super::*;

    /// The value and its tangent along the tangents of the arguments (`None`: constant).
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn jvp<S: Real>(
        x: &DMatrix<S>,
        wx: &DMatrix<S>,
        b: &DVector<S>,
        wh: &DMatrix<S>,
        h0: &DMatrix<S>,
        c0: &DMatrix<S>,
        _needs: &LstmNeeds,
        dx: Option<&DMatrix<S>>,
        dwx: Option<&DMatrix<S>>,
        db: Option<&DVector<S>>,
        dwh: Option<&DMatrix<S>>,
        dh0: Option<&DMatrix<S>>,
        dc0: Option<&DMatrix<S>>,
        _dn: Option<&LstmNeeds>,
    ) -> (DMatrix<S>, DMatrix<S>) {
        let args = Args {
            input: Input::Projected { x, wx, b },
            wh,
            h0,
            c0,
        };
        let d = Dims::of_projected(args);
        let m = d.t * d.b;
        let shapes = [
            (dx.map(|m| m.shape()), x.shape(), "x"),
            (dwx.map(|m| m.shape()), wx.shape(), "wx"),
            (db.map(|m| m.shape()), b.shape(), "b"),
            (dwh.map(|m| m.shape()), wh.shape(), "wh"),
            (dh0.map(|m| m.shape()), h0.shape(), "h0"),
            (dc0.map(|m| m.shape()), c0.shape(), "c0"),
        ];
        for (got, want, what) in shapes {
            if let Some(got) = got {
                assert_eq!(
                    got, want,
                    "lstm_projected: the tangent of {what} has the wrong shape"
                );
            }
        }
        // The tangent of `x·wx + b`, whole (forward mode is not the fast path).
        let dxw = (dx.is_some() || dwx.is_some() || db.is_some()).then(|| {
            let mut t = DMatrix::<S>::zeros(m, 4 * d.h);
            if let Some(db) = db {
                for (col, &v) in t.as_mut_slice().chunks_exact_mut(m.max(1)).zip(db.iter()) {
                    col.fill(v);
                }
            }
            if let Some(dx) = dx {
                product_ldc(MatRef::of(dx), MatRef::of(wx), t.as_mut_slice(), 0, m, true);
            }
            if let Some(dwx) = dwx {
                product_ldc(MatRef::of(x), MatRef::of(dwx), t.as_mut_slice(), 0, m, true);
            }
            t
        });
        tangent(d, args, [dxw.as_ref(), dwh, dh0, dc0])
    }

    /// The cotangents of `x`, `wx`, `b` (each only when `needs` asks for it), `wh`, `h0`
    /// and `c0` given the cotangent `g` of the output (`T·B × H`).
    #[track_caller]
    #[allow(clippy::type_complexity)]
    #[allow(clippy::too_many_arguments)]
    pub fn vjp<S: Real>(
        x: &DMatrix<S>,
        wx: &DMatrix<S>,
        b: &DVector<S>,
        wh: &DMatrix<S>,
        h0: &DMatrix<S>,
        c0: &DMatrix<S>,
        needs: &LstmNeeds,
        g: &DMatrix<S>,
    ) -> (
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
        Option<DVector<S>>,
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
        Option<LstmNeeds>,
    ) {
        let args = Args {
            input: Input::Projected { x, wx, b },
            wh,
            h0,
            c0,
        };
        let d = Dims::of_projected(args);
        assert_eq!(
            g.shape(),
            (d.t * d.b, d.h),
            "lstm_projected: a cotangent of the wrong shape"
        );
        let c = cotangents(d, args, [needs[0], needs[1], needs[2]], g);
        let zero = |n: usize, m: usize| DMatrix::<S>::zeros(n, m);
        (
            c.input,
            // No steps: nothing was summed (the parts start at zero only when asked).
            needs[1].then(|| c.wx.unwrap_or_else(|| zero(wx.nrows(), wx.ncols()))),
            needs[2].then(|| c.b.unwrap_or_else(|| DVector::zeros(b.len()))),
            Some(c.wh),
            Some(c.h0),
            Some(c.c0),
            None,
        )
    }
}

/// [`lstm_sequence()`] of `embed(table, ids)` in one rule: what `#[task]` makes of
/// `lstm_sequence(&embed(&table, ids), wh, h0, c0)`. Each chunk's gate block of step `t`
/// starts as its ids' rows of the `V × 4H` table (gathered column by column from the
/// table, in cache; in `f32` on an AVX2 CPU by 8 × 8 tiles from a copy of the table in
/// blocks of 8 row-major columns, see `tiles.rs`), and its reverse sweep scatters `dz_t`'s
/// rows into its own part of the table's cotangent while `dz_t` is in cache (the same
/// tiles in `f32`; the parts summed in chunk order): the
/// `T·B × 4H` rows and their cotangent are never stored (the composition stores both and
/// makes three strided passes over them, a quarter of its time on the RNN LM). The
/// table's cotangent sums the same terms as the composition's scatter-add, per chunk
/// first.
///
/// Panics with the shapes, or the id, when they do not fit together.
#[track_caller]
pub fn lstm_embedded<S: Real, I: Id>(
    table: &DMatrix<S>,
    wh: &DMatrix<S>,
    h0: &DMatrix<S>,
    c0: &DMatrix<S>,
    ids: &Embed<'_, I>,
) -> DMatrix<S> {
    let rows = checked_rows(ids.0, table.nrows());
    let args = Args {
        input: Input::Embedded {
            table,
            rows: &rows,
            ids_at: ids.0.as_ptr() as usize,
        },
        wh,
        h0,
        c0,
    };
    value(Dims::of_embedded(table, rows.len(), args), args)
}

/// The rules of [`lstm_embedded()`] (the convention of `#[differentiable]` functions).
pub mod lstm_embedded {
    use super::*;

    /// The value and its tangent along the tangents of the arguments (`None`: constant).
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn jvp<S: Real, I: Id>(
        table: &DMatrix<S>,
        wh: &DMatrix<S>,
        h0: &DMatrix<S>,
        c0: &DMatrix<S>,
        ids: &Embed<'_, I>,
        dtable: Option<&DMatrix<S>>,
        dwh: Option<&DMatrix<S>>,
        dh0: Option<&DMatrix<S>>,
        dc0: Option<&DMatrix<S>>,
        _dids: Option<&Embed<'_, I>>,
    ) -> (DMatrix<S>, DMatrix<S>) {
        let rows = checked_rows(ids.0, table.nrows());
        let args = Args {
            input: Input::Embedded {
                table,
                rows: &rows,
                ids_at: ids.0.as_ptr() as usize,
            },
            wh,
            h0,
            c0,
        };
        let d = Dims::of_embedded(table, rows.len(), args);
        for (m, like, what) in [
            (dtable, table, "table"),
            (dwh, wh, "wh"),
            (dh0, h0, "h0"),
            (dc0, c0, "c0"),
        ] {
            if let Some(m) = m {
                assert_eq!(
                    m.shape(),
                    like.shape(),
                    "lstm_embedded: the tangent of {what} has the wrong shape"
                );
            }
        }
        // The tangent of the looked-up rows, whole (forward mode is not the fast path).
        let dxw = dtable.map(|dt| {
            let (v, w) = dt.shape();
            DMatrix::from_vec(rows.len(), w, gather(dt.as_slice(), v, w, &rows))
        });
        tangent(d, args, [dxw.as_ref(), dwh, dh0, dc0])
    }

    /// The cotangents of `table`, `wh`, `h0` and `c0` given the cotangent `g` of the
    /// output (`T·B × H`).
    #[track_caller]
    #[allow(clippy::type_complexity)]
    pub fn vjp<S: Real, I: Id>(
        table: &DMatrix<S>,
        wh: &DMatrix<S>,
        h0: &DMatrix<S>,
        c0: &DMatrix<S>,
        ids: &Embed<'_, I>,
        g: &DMatrix<S>,
    ) -> (
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
        Option<()>,
    ) {
        let rows = checked_rows(ids.0, table.nrows());
        let args = Args {
            input: Input::Embedded {
                table,
                rows: &rows,
                ids_at: ids.0.as_ptr() as usize,
            },
            wh,
            h0,
            c0,
        };
        let d = Dims::of_embedded(table, rows.len(), args);
        assert_eq!(
            g.shape(),
            (d.t * d.b, d.h),
            "lstm_embedded: a cotangent of the wrong shape"
        );
        let c = cotangents(d, args, [false; 3], g);
        // No steps: nothing was scattered.
        let dt = c
            .table
            .unwrap_or_else(|| DMatrix::zeros(table.nrows(), table.ncols()));
        (Some(dt), Some(c.wh), Some(c.h0), Some(c.c0), None)
    }
}

/// The value and its tangent of a call of `d`'s sizes along the tangents of `xw` (of
/// `x·wx + b` for [`lstm_projected()`]), `wh`, `h0`, `c0` (`None`: constant).
fn tangent<S: Real>(
    d: Dims,
    args: Args<'_, S>,
    tans: [Option<&DMatrix<S>>; 4],
) -> (DMatrix<S>, DMatrix<S>) {
    let mut val = uninit::<S>(d.t * d.b, d.h);
    let o = Out::of(&mut val);
    let chunks = d.chunks();
    let tans = par_map(chunks.len(), |i| {
        let fwd = forward_chunk(d, chunks[i].clone(), args, Some(o));
        let dhs = tangent_chunk(d, &fwd, args.wh, args.h0, args.c0, tans);
        (fwd.r, dhs)
    });
    // SAFETY: the chunks' rows cover the batch and each wrote every `h_t` of its rows.
    let val = unsafe { val.assume_init() };
    (val, assemble(d, d.h, tans))
}

/// The cotangents of one call's arguments.
struct Cotangents<S: Real> {
    /// Of `xw` (of `x` for [`lstm_projected()`], when asked for).
    input: Option<DMatrix<S>>,
    /// Of `wx` and `b` ([`lstm_projected()`], when asked for).
    wx: Option<DMatrix<S>>,
    b: Option<DVector<S>>,
    /// Of the table ([`lstm_embedded()`]).
    table: Option<DMatrix<S>>,
    wh: DMatrix<S>,
    h0: DMatrix<S>,
    c0: DMatrix<S>,
}

/// The cotangents of a call of `d`'s sizes given the cotangent `g` of the output; `need`
/// says which of `x`, `wx`, `b` of [`lstm_projected()`] are asked for (`xw`'s always is).
/// Takes the value's kept forward pass, chunk by chunk, where the chunk's arguments are
/// still the ones it was run on; runs it otherwise.
fn cotangents<S: Real>(
    d: Dims,
    args: Args<'_, S>,
    need: [bool; 3],
    g: &DMatrix<S>,
) -> Cotangents<S> {
    let ranges = d.chunks();
    let kept: Vec<Option<Chunk<S>>> = match take_kept::<S>(&keep_key(args)) {
        Some(v) if v.len() == ranges.len() => v.into_iter().map(Some).collect(),
        _ => ranges.iter().map(|_| None).collect(),
    };
    // `xw`'s cotangent (`dz`) in full; `x`'s (`dz·wxᵀ`) when asked for.
    let cols = match args.input {
        Input::Given(_) => Some(4 * d.h),
        Input::Projected { x, .. } => need[0].then_some(x.ncols()),
        Input::Embedded { .. } => None,
    };
    let mut din = cols.map(|c| uninit::<S>(d.t * d.b, c));
    let o = din.as_mut().map(Out::of);
    let jobs: Vec<(Range<usize>, Option<Chunk<S>>)> = ranges.into_iter().zip(kept).collect();
    let parts = par_map_owned(jobs, |(r, kept)| {
        let fwd = match kept {
            Some(k) if k.r == r && k.sum.is_some() && chunk_inputs(d, &r, args) == k.sum => k,
            _ => forward_chunk(d, r, args, None),
        };
        reverse_chunk(d, fwd, args, need, g, o)
    });
    let mut dwh = DMatrix::<S>::zeros(d.h, 4 * d.h);
    let (mut dwx, mut db) = (None::<DMatrix<S>>, None::<DVector<S>>);
    let mut dtable = None::<DMatrix<S>>;
    let (mut dh, mut dc) = (Vec::new(), Vec::new());
    // The chunks' parts summed in chunk order: the same bits on any number of threads.
    for p in parts {
        dwh += p.dwh;
        if let Some(w) = p.dwx {
            match &mut dwx {
                Some(s) => *s += w,
                None => dwx = Some(w),
            }
        }
        if let Some(w) = p.table {
            match &mut dtable {
                Some(s) => *s += w,
                None => dtable = Some(w),
            }
        }
        if let Some(v) = p.db {
            let v = DVector::from_vec(v);
            match &mut db {
                Some(s) => *s += v,
                None => db = Some(v),
            }
        }
        dh.push((p.r.clone(), p.dh));
        dc.push((p.r, p.dc));
    }
    Cotangents {
        // SAFETY: the chunks' rows cover the batch and each wrote every step of its rows.
        input: din.map(|m| unsafe { m.assume_init() }),
        wx: dwx,
        b: db,
        table: dtable,
        wh: dwh,
        h0: stack(d, dh),
        c0: stack(d, dc),
    }
}

/// One chunk's cotangents besides `dz` (which it writes into `xw`'s cotangent, or `dz·wxᵀ`
/// into `x`'s): its parts of `dwh` (and of `dwx`, `db` for [`lstm_projected()`], when
/// asked for), and `dh0`, `dc0` of its rows (`n × H`).
struct Reverse<S> {
    r: Range<usize>,
    dwh: DMatrix<S>,
    dwx: Option<DMatrix<S>>,
    db: Option<Vec<S>>,
    /// The chunk's part of the table's cotangent ([`lstm_embedded()`]).
    table: Option<DMatrix<S>>,
    dh: Vec<S>,
    dc: Vec<S>,
}

fn reverse_chunk<S: Real>(
    d: Dims,
    fwd: Chunk<S>,
    args: Args<'_, S>,
    need: [bool; 3],
    g: &DMatrix<S>,
    din: Option<Out<S>>,
) -> Reverse<S> {
    let Args { wh, h0, c0, .. } = args;
    let Chunk {
        r,
        gates: mut z,
        c,
        tc,
        hs,
        ..
    } = fwd;
    let (n, h, tt, b) = (r.len(), d.h, d.t, d.b);
    let (one, gs) = (S::one(), g.as_slice());
    let mut dh = vec![S::zero(); n * h];
    let mut dc = vec![S::zero(); n * h];
    let mut dwh = DMatrix::<S>::zeros(h, 4 * h);
    let wht = MatRef::of(wh).t();
    // For `lstm_projected`: `dwx += x_tᵀ dz_t`, `db += Σ_rows dz_t` and `dx_t = dz_t wxᵀ`
    // (through `dxt`, `n × E`) while `dz_t` is in cache, each only when asked for.
    let proj = match args.input {
        Input::Projected { x, wx, .. } => Some((x, wx)),
        _ => None,
    };
    // For `lstm_embedded`: the chunk's own `V × 4H` part of the table's cotangent, dz_t's
    // rows scattered into it step by step while dz_t is in cache (summed over the chunks
    // in chunk order by the caller: the same bits on any number of threads).
    let embedded = match args.input {
        Input::Embedded { table, rows, .. } => Some((table.nrows(), rows)),
        _ => None,
    };
    // In `f32` (AVX2) the part is summed in blocks of 8 columns, row-major within each
    // ([`Blocked`]), where a step's rows are added by 8 × 8 tiles.
    let mut dblocked = embedded.and_then(|(v, _)| Blocked::sums::<S>(v, 4 * h));
    let mut dtable = embedded
        .filter(|_| dblocked.is_none())
        .map(|(v, _)| vec![S::zero(); v * 4 * h]);
    let e = proj.map_or(0, |(x, _)| x.ncols());
    let [need_x, need_wx, need_b] = need;
    let mut dwx = (proj.is_some() && need_wx).then(|| DMatrix::<S>::zeros(e, 4 * h));
    let mut db = (proj.is_some() && need_b).then(|| vec![S::zero(); 4 * h]);
    let mut dxt = if proj.is_some() && need_x {
        vec![S::zero(); n * e]
    } else {
        Vec::new()
    };
    for t in (0..tt).rev() {
        for j in 0..h {
            if t > 0 {
                // What step t − 1's arithmetic reads of column j, asked into L2 while
                // this step's products run: a chunk's pass (7 MB at the RNN LM's sizes)
                // outgrows L2, and the step blocks, read last to first, a page per
                // column of `g`, come in unprefetched (the arithmetic waited on memory
                // for most of its time).
                for q in 0..4 {
                    prefetch(&z[at(t - 1, q * h + j, n, 4 * h)..][..n]);
                }
                prefetch(&tc[at(t - 1, j, n, h)..][..n]);
                prefetch(&gs[(t - 1) * b + r.start + j * tt * b..][..n]);
                if t > 1 {
                    prefetch(&c[at(t - 2, j, n, h)..][..n]);
                    prefetch(&hs[at(t - 2, j, n, h)..][..n]);
                }
            }
            let [zi, zg, zf, zo] = gate_cols(&mut z, t, j, h, n);
            let cp = if t == 0 {
                &c0.as_slice()[r.start + j * b..][..n]
            } else {
                &c[at(t - 1, j, n, h)..][..n]
            };
            let tcn = &tc[at(t, j, n, h)..][..n];
            let gt = &gs[t * b + r.start + j * tt * b..][..n];
            let (dhj, dcj) = (&mut dh[j * n..][..n], &mut dc[j * n..][..n]);
            for k in 0..n {
                let (i, gg, f, o) = (zi[k], zg[k], zf[k], zo[k]);
                let dhk = dhj[k] + gt[k];
                let th = tcn[k];
                let dck = dcj[k] + dhk * o * (one - th * th);
                zo[k] = dhk * th * o * (one - o);
                zi[k] = dck * gg * i * (one - i);
                zg[k] = dck * i * (one - gg * gg);
                zf[k] = dck * cp[k] * f * (one - f);
                dcj[k] = dck * f;
            }
        }
        // While dz_t is in cache: dwh += h_{t−1}ᵀ dz_t, and dh_{t−1} = dz_t · whᵀ
        // (written over dh).
        let dzt = view(&z, at(t, 0, n, 4 * h), n, 4 * h, n);
        let hprev = if t == 0 {
            view(h0.as_slice(), r.start, n, h, b)
        } else {
            view(&hs, at(t - 1, 0, n, h), n, h, n)
        };
        product_ldc(hprev.t(), dzt, dwh.as_mut_slice(), 0, h, true);
        product_ldc(dzt, wht, &mut dh, 0, n, false);
        if let Some((v, rows)) = embedded {
            let ids = &rows[t * b + r.start..][..n];
            let blk = &z[at(t, 0, n, 4 * h)..][..4 * h * n];
            if let Some(bs) = &mut dblocked {
                bs.scatter_add(ids, blk);
            } else if let Some(dt) = &mut dtable {
                for (dcol, zcol) in dt.chunks_exact_mut(v).zip(blk.chunks_exact(n)) {
                    for (&i, &g) in ids.iter().zip(zcol) {
                        dcol[i as usize] += g;
                    }
                }
            }
        }
        if let Some((x, wx)) = proj {
            let xt = view(x.as_slice(), t * b + r.start, n, e, tt * b);
            if let Some(dwx) = &mut dwx {
                product_ldc(xt.t(), dzt, dwx.as_mut_slice(), 0, e, true);
            }
            if let Some(db) = &mut db {
                let blk = &z[at(t, 0, n, 4 * h)..][..4 * h * n];
                for (s, col) in db.iter_mut().zip(blk.chunks_exact(n)) {
                    *s += col.iter().fold(S::zero(), |a, &v| a + v);
                }
            }
            if let Some(o) = din {
                product_ldc(dzt, MatRef::of(wx).t(), &mut dxt, 0, n, false);
                for (j, col) in dxt.chunks_exact(n).enumerate() {
                    // SAFETY: rows `t·B + r` are this chunk's alone.
                    unsafe { o.put(t * b + r.start, j, col) };
                }
            }
        }
    }
    if let (None, Some(o)) = (proj, din) {
        // dz is xw's cotangent.
        put_rows(d, &r, &z, 4 * h, o);
    }
    drop((z, c, tc, hs));
    if let Some(bs) = dblocked {
        dtable = Some(bs.into_table());
    }
    Reverse {
        r,
        dwh,
        dwx,
        db,
        table: embedded
            .zip(dtable)
            .map(|((v, _), dt)| DMatrix::from_vec(v, 4 * h, dt)),
        dh,
        dc,
    }
}

/// One chunk's output tangent (`T·n × H`) along the argument tangents `[dxw, dwh, dh0,
/// dc0]` (`None`: zero), from its forward pass.
fn tangent_chunk<S: Real>(
    d: Dims,
    fwd: &Chunk<S>,
    wh: &DMatrix<S>,
    h0: &DMatrix<S>,
    c0: &DMatrix<S>,
    tans: [Option<&DMatrix<S>>; 4],
) -> Vec<S> {
    let [dxw, dwh, dh0, dc0] = tans;
    let r = &fwd.r;
    let (n, h, tt, b) = (r.len(), d.h, d.t, d.b);
    let one = S::one();
    // dz_t = dxw_t + h_{t−1}·dwh + dh_{t−1}·wh, step by step.
    let mut dz = vec![S::zero(); tt * 4 * h * n];
    if let Some(dxw) = dxw {
        let xs = dxw.as_slice();
        for t in 0..tt {
            for j in 0..4 * h {
                let src = t * b + r.start + j * tt * b;
                dz[at(t, j, n, 4 * h)..][..n].copy_from_slice(&xs[src..src + n]);
            }
        }
    }
    let mut dc = vec![S::zero(); n * h];
    if let Some(dc0) = dc0 {
        for j in 0..h {
            dc[j * n..][..n].copy_from_slice(&dc0.as_slice()[r.start + j * b..][..n]);
        }
    }
    let mut dhs = vec![S::zero(); tt * h * n];
    let whv = MatRef::of(wh);
    for t in 0..tt {
        let blk = at(t, 0, n, 4 * h);
        if let Some(dwh) = dwh {
            let hprev = if t == 0 {
                view(h0.as_slice(), r.start, n, h, b)
            } else {
                view(&fwd.hs, at(t - 1, 0, n, h), n, h, n)
            };
            product_ldc(hprev, MatRef::of(dwh), &mut dz, blk, n, true);
        }
        if t > 0 {
            let dhp = view(&dhs, at(t - 1, 0, n, h), n, h, n);
            product_ldc(dhp, whv, &mut dz, blk, n, true);
        } else if let Some(dh0) = dh0 {
            let dhp = view(dh0.as_slice(), r.start, n, h, b);
            product_ldc(dhp, whv, &mut dz, blk, n, true);
        }
        for j in 0..h {
            let gcol = |q: usize| &fwd.gates[at(t, q * h + j, n, 4 * h)..][..n];
            let (gi, gg, gf, go) = (gcol(0), gcol(1), gcol(2), gcol(3));
            let [di, dg, df, dout] = gate_cols(&mut dz, t, j, h, n);
            let cp = if t == 0 {
                &c0.as_slice()[r.start + j * b..][..n]
            } else {
                &fwd.c[at(t - 1, j, n, h)..][..n]
            };
            let tcn = &fwd.tc[at(t, j, n, h)..][..n];
            let dcj = &mut dc[j * n..][..n];
            let dhn = &mut dhs[at(t, j, n, h)..][..n];
            for k in 0..n {
                let (i, g, f, o) = (gi[k], gg[k], gf[k], go[k]);
                let dcv = df[k] * f * (one - f) * cp[k]
                    + f * dcj[k]
                    + di[k] * i * (one - i) * g
                    + i * dg[k] * (one - g * g);
                let th = tcn[k];
                dhn[k] = dout[k] * o * (one - o) * th + o * (one - th * th) * dcv;
                dcj[k] = dcv;
            }
        }
    }
    dhs
}

#[cfg(test)]
mod tests {
    use super::lstm_sequence as rules;
    use super::*;
    use crate::key::Key;
    use crate::lanes::Lanes;

    /// haiku's LSTM unrolled, written from its definition with `f64` element loops,
    /// independent of the rule: per step `z = x_t + h W`, gates `i, g, f, o`, forget bias
    /// `+1`; returns every `h_t` as row `t·B + b`.
    fn plain_lstm(
        xw: &DMatrix<f64>,
        wh: &DMatrix<f64>,
        h0: &DMatrix<f64>,
        c0: &DMatrix<f64>,
    ) -> DMatrix<f64> {
        let (b, h) = h0.shape();
        let steps = xw.nrows() / b;
        let s = |x: f64| 1.0 / (1.0 + (-x).exp());
        let (mut hp, mut cp) = (h0.clone(), c0.clone());
        let mut out = DMatrix::zeros(steps * b, h);
        for t in 0..steps {
            let (mut hn, mut cn) = (hp.clone(), cp.clone());
            for e in 0..b {
                let z = |q: usize, j: usize| {
                    let mut v = xw[(t * b + e, q * h + j)];
                    for k in 0..h {
                        v += hp[(e, k)] * wh[(k, q * h + j)];
                    }
                    v
                };
                for j in 0..h {
                    let (i, g, f, o) = (s(z(0, j)), z(1, j).tanh(), s(z(2, j) + 1.0), s(z(3, j)));
                    cn[(e, j)] = f * cp[(e, j)] + i * g;
                    hn[(e, j)] = o * cn[(e, j)].tanh();
                    out[(t * b + e, j)] = hn[(e, j)];
                }
            }
            (hp, cp) = (hn, cn);
        }
        out
    }

    /// Eight `f32` draws as one matrix of lanes, lane `l` the draw `m(l)`.
    fn pack8(m: impl Fn(usize) -> DMatrix<f32>) -> DMatrix<Lanes<8>> {
        let all: Vec<DMatrix<f32>> = (0..8).map(m).collect();
        DMatrix::<Lanes<8>>::from_fn(all[0].nrows(), all[0].ncols(), |i, j| {
            Lanes::from_lanes(|l| all[l][(i, j)] as f64)
        })
    }

    /// Lane `l` of `packed` equals the `f32` run `single` within 1e-6 of its largest entry.
    fn assert_lane_is(packed: &DMatrix<Lanes<8>>, l: usize, single: &DMatrix<f32>) {
        let scale = single.abs().max().max(1e-30);
        for (a, b) in packed.iter().zip(single.iter()) {
            let err = (a.lane(l) as f32 - b).abs() / scale;
            assert!(err <= 1e-6, "lane {l}: {} vs {b}", a.lane(l));
        }
    }

    /// A `rows × cols` chunk output over `buf`, which starts as −0.0 (any write changes
    /// its bits).
    fn neg_zero_out(buf: &mut Vec<f64>, rows: usize, cols: usize) -> Out<f64> {
        *buf = vec![-0.0; rows * cols];
        Out {
            p: buf.as_mut_ptr(),
            rows,
            cols,
        }
    }

    /// Chunk `r` (of `b` examples, `t` steps) wrote every element of its own rows with
    /// `want`'s bits (row `t·B + e` is example `e`'s) and left every other −0.0.
    fn assert_only_own_rows(
        r: &Range<usize>,
        (t, b): (usize, usize),
        got: &[f64],
        want: &[f64],
        what: &str,
    ) {
        for (i, (v, w)) in got.iter().zip(want).enumerate() {
            let ok = if r.contains(&((i % (t * b)) % b)) {
                v.to_bits() == w.to_bits()
            } else {
                v.to_bits() == (-0.0f64).to_bits()
            };
            assert!(ok, "chunk {r:?} left {v} at the {what}'s element {i}");
        }
    }

    fn normal(r: usize, c: usize, scale: f64, seed: u64) -> DMatrix<f64> {
        let mut v = vec![0.0f32; r * c];
        Key::new(seed).fill_normal(&mut v);
        DMatrix::from_iterator(r, c, v.into_iter().map(|x| f64::from(x) * scale))
    }

    /// `[xw, wh, h0, c0]` for `b` examples, `t` steps, `h` units.
    fn inputs(b: usize, t: usize, h: usize, seed: u64) -> [DMatrix<f64>; 4] {
        [
            normal(t * b, 4 * h, 1.0, seed),
            normal(h, 4 * h, 0.6, seed + 1),
            normal(b, h, 0.5, seed + 2),
            normal(b, h, 0.5, seed + 3),
        ]
    }

    /// `(B, T, H)`: one chunk; two chunks (B = 70: 35 + 35); one step; one unit.
    const SIZES: [(usize, usize, usize); 4] = [(3, 4, 2), (70, 3, 3), (2, 1, 5), (1, 6, 1)];

    /// The value against the definition, on one chunk and on two (B = 70). Mutations
    /// caught: the forget bias dropped; the gate order i, f, g, o (haiku's is i, g, f, o);
    /// the second chunk reading the first chunk's rows of `h0` (`r.start` dropped from
    /// the forward pass's view); a chunk writing its rows of the results without
    /// `r.start`; the last chunk one row short (its last row of the results never
    /// written); each tried, each fails here.
    #[test]
    fn value_matches_the_definition() {
        for (k, &(b, t, h)) in SIZES.iter().enumerate() {
            let [xw, wh, h0, c0] = inputs(b, t, h, 10 * k as u64);
            let got = lstm_sequence(&xw, &wh, &h0, &c0);
            let want = plain_lstm(&xw, &wh, &h0, &c0);
            assert!((&got - &want).abs().max() < 1e-12, "{b} {t} {h}");
        }
    }

    /// Forward mode against f64 central differences of the definition along each
    /// argument's tangent alone and all four at once; reverse mode by the adjoint identity
    /// ⟨vjp(u)_k, t_k⟩ = ⟨u, jvp(t_k)⟩ for each argument `k`, and element by element against
    /// central differences on the smallest size. Mutations caught: `dz_f` without `c_{t−1}`;
    /// the reverse `dc` not carried through `f` (`dc ← dc`); `dwh` without the `h0` term
    /// (zeros for `h0`); the tangent's `f∘dc_{t−1}` term dropped; each tried, each fails
    /// here.
    #[test]
    fn derivatives_match_central_differences() {
        for (k, &(b, t, h)) in SIZES.iter().enumerate() {
            let x = inputs(b, t, h, 100 + 10 * k as u64);
            let tans = inputs(b, t, h, 200 + 10 * k as u64);
            let u = normal(t * b, h, 1.0, 300 + k as u64);
            let f = |a: &[DMatrix<f64>; 4]| plain_lstm(&a[0], &a[1], &a[2], &a[3]);
            let eps = 1e-6;
            let shifted = |which: Option<usize>, sign: f64| {
                let mut a = x.clone();
                for (q, m) in a.iter_mut().enumerate() {
                    if which.is_none_or(|w| w == q) {
                        *m += &tans[q] * (sign * eps);
                    }
                }
                f(&a)
            };
            let jvp = |which: Option<usize>| {
                let pick = |q: usize| which.is_none_or(|w| w == q).then_some(&tans[q]);
                rules::jvp(
                    &x[0],
                    &x[1],
                    &x[2],
                    &x[3],
                    pick(0),
                    pick(1),
                    pick(2),
                    pick(3),
                )
            };
            let (gx, gw, gh, gc) = rules::vjp(&x[0], &x[1], &x[2], &x[3], &u);
            let grads = [gx.unwrap(), gw.unwrap(), gh.unwrap(), gc.unwrap()];
            for which in [None, Some(0), Some(1), Some(2), Some(3)] {
                let (val, tan) = jvp(which);
                assert!((&val - f(&x)).abs().max() < 1e-12);
                let fd = (shifted(which, 1.0) - shifted(which, -1.0)) / (2.0 * eps);
                assert!((&tan - &fd).abs().max() < 1e-6, "{b} {t} {h} jvp {which:?}");
                if let Some(q) = which {
                    let (lhs, rhs) = (grads[q].dot(&tans[q]), u.dot(&tan));
                    assert!((lhs - rhs).abs() < 1e-10 * (1.0 + rhs.abs()), "adjoint {q}");
                }
            }
            if k == 0 {
                for q in 0..4 {
                    for e in 0..x[q].len() {
                        let mut a = x.clone();
                        a[q][e] += eps;
                        let up = f(&a).dot(&u);
                        a[q][e] -= 2.0 * eps;
                        let fd = (up - f(&a).dot(&u)) / (2.0 * eps);
                        assert!((grads[q][e] - fd).abs() < 1e-6, "argument {q} element {e}");
                    }
                }
            }
        }
    }

    /// Each lane of a packed LSTM is its own `f32` instance's, within the products' 1e-6
    /// (README, "What batched == serial promises"): value, tangent and cotangents, on two
    /// chunks. Mutation caught: `tanh` of lane 0 broadcast to every lane (tried;
    /// invisible to the `f64` tests, where lane 0 is the value).
    #[test]
    fn lanes_are_their_f32_instances() {
        let (b, t, h) = (66, 3, 4);
        let draws: Vec<[DMatrix<f32>; 4]> = (0..8)
            .map(|l| inputs(b, t, h, 500 + 10 * l).map(|m| m.map(|v| v as f32)))
            .collect();
        let tans: Vec<[DMatrix<f32>; 4]> = (0..8)
            .map(|l| inputs(b, t, h, 900 + 10 * l).map(|m| m.map(|v| v as f32)))
            .collect();
        let us: Vec<DMatrix<f32>> = (0..8)
            .map(|l| normal(t * b, h, 1.0, 1300 + l).map(|v| v as f32))
            .collect();
        let xp: Vec<DMatrix<Lanes<8>>> = (0..4).map(|q| pack8(|l| draws[l][q].clone())).collect();
        let tp: Vec<DMatrix<Lanes<8>>> = (0..4).map(|q| pack8(|l| tans[l][q].clone())).collect();
        let up = pack8(|l| us[l].clone());
        let (yp, jp) = rules::jvp(
            &xp[0],
            &xp[1],
            &xp[2],
            &xp[3],
            Some(&tp[0]),
            Some(&tp[1]),
            Some(&tp[2]),
            Some(&tp[3]),
        );
        let vp = rules::vjp(&xp[0], &xp[1], &xp[2], &xp[3], &up);
        let vp = [vp.0.unwrap(), vp.1.unwrap(), vp.2.unwrap(), vp.3.unwrap()];
        for l in 0..8 {
            let (x, tn) = (&draws[l], &tans[l]);
            let (y, j) = rules::jvp(
                &x[0],
                &x[1],
                &x[2],
                &x[3],
                Some(&tn[0]),
                Some(&tn[1]),
                Some(&tn[2]),
                Some(&tn[3]),
            );
            let v = rules::vjp(&x[0], &x[1], &x[2], &x[3], &us[l]);
            let v = [v.0.unwrap(), v.1.unwrap(), v.2.unwrap(), v.3.unwrap()];
            let mut pairs = vec![(&yp, &y), (&jp, &j)];
            pairs.extend(vp.iter().zip(v.iter()));
            for (packed, single) in pairs {
                assert_lane_is(packed, l, single);
            }
        }
    }

    /// The batch runs in fixed chunks of rows on the pool: on 1 and on 3 threads the value,
    /// tangent and cotangents are the same bit for bit (B = 130: three chunks of 44, 44,
    /// 42). Mutation caught: as many chunks as threads
    /// (`rayon::current_num_threads()`), tried.
    #[test]
    fn chunks_on_the_pool_are_bit_identical_to_one_thread() {
        let (b, t, h) = (130, 3, 4);
        let d = Dims { b, t, h };
        assert_eq!(
            d.chunks().iter().map(|r| r.len()).collect::<Vec<_>>(),
            [44, 44, 42]
        );
        let x = inputs(b, t, h, 7).map(|m| m.map(|v| v as f32));
        let tn = inputs(b, t, h, 17).map(|m| m.map(|v| v as f32));
        let u = normal(t * b, h, 1.0, 27).map(|v| v as f32);
        let run = |threads: usize| {
            crate::on_threads(threads, || {
                let jvp = rules::jvp(
                    &x[0],
                    &x[1],
                    &x[2],
                    &x[3],
                    Some(&tn[0]),
                    Some(&tn[1]),
                    Some(&tn[2]),
                    Some(&tn[3]),
                );
                (jvp, rules::vjp(&x[0], &x[1], &x[2], &x[3], &u))
            })
        };
        let (one, three) = (run(1), run(3));
        assert_eq!(one, three);
        let want = plain_lstm(
            &x[0].map(f64::from),
            &x[1].map(f64::from),
            &x[2].map(f64::from),
            &x[3].map(f64::from),
        );
        assert!((one.0 .0.map(f64::from) - want).abs().max() < 1e-5);
    }

    /// The forward pass the value keeps is the one the `vjp` would recompute: a `vjp`
    /// right after the value (which takes the kept pass) equals one with nothing kept, bit
    /// for bit, and takes it; a `vjp` of other arguments after a value leaves the kept pass
    /// alone and recomputes. Mutations caught: keeping the pass of other inputs (`c0`
    /// for `h0`; tried, the cotangents differ); a key without the addresses (tried: the
    /// `vjp` then takes the pass of other inputs).
    #[test]
    fn the_kept_forward_pass_equals_a_recomputed_one() {
        let (b, t, h) = (67, 3, 2);
        let x = inputs(b, t, h, 71).map(|m| m.map(|v| v as f32));
        let other = inputs(b, t, h, 81).map(|m| m.map(|v| v as f32));
        let u = normal(t * b, h, 1.0, 91).map(|v| v as f32);
        let fresh = rules::vjp(&x[0], &x[1], &x[2], &x[3], &u);
        let _ = lstm_sequence(&x[0], &x[1], &x[2], &x[3]);
        let kept = rules::vjp(&x[0], &x[1], &x[2], &x[3], &u);
        assert_eq!(kept, fresh);
        assert!(
            KEPT.with(|k| k.borrow().is_none()),
            "the vjp took the kept pass"
        );
        let _ = lstm_sequence(&other[0], &x[1], &x[2], &x[3]);
        assert_eq!(rules::vjp(&x[0], &x[1], &x[2], &x[3], &u), fresh);
        assert!(
            KEPT.with(|k| k.borrow().is_some()),
            "another call's pass stays"
        );
        // The same matrices (same addresses and shapes) written in place after the value:
        // the vjp must not take the pass of the old contents (caught without the checksum:
        // tried, the cotangents differ).
        let z = [other[0].clone(), x[1].clone(), x[2].clone(), x[3].clone()];
        KEPT.with(|k| k.borrow_mut().take());
        let want = rules::vjp(&z[0], &z[1], &z[2], &z[3], &u);
        let mut y = x.clone();
        let _ = lstm_sequence(&y[0], &y[1], &y[2], &y[3]);
        y[0].copy_from(&other[0]);
        assert_eq!(rules::vjp(&y[0], &y[1], &y[2], &y[3], &u), want);
    }

    /// Each chunk of a kept pass is checked against what it read: one element written in
    /// place after the value, in the second chunk's rows of `xw` (last step, last
    /// column), of `h0` or of `c0`, or anywhere in `wh`, makes the `vjp` recompute (it
    /// equals a `vjp` with nothing kept, bit for bit). Mutations caught: a checksum
    /// without the last gate column of `xw`, without `h0`'s rows, or without `wh` (each
    /// tried, each fails here); a chunk taken without its check (tried).
    #[test]
    fn a_chunk_read_after_an_in_place_write_is_recomputed() {
        let (b, t, h) = (67, 3, 2);
        let d = Dims { b, t, h };
        let second = d.chunks()[1].clone();
        let x = inputs(b, t, h, 171).map(|m| m.map(|v| v as f32));
        let u = normal(t * b, h, 1.0, 191).map(|v| v as f32);
        let row = second.end - 1;
        let writes: [(usize, usize, usize); 4] = [
            (0, (t - 1) * b + row, 4 * h - 1),
            (1, h - 1, 1),
            (2, row, h - 1),
            (3, second.start, 0),
        ];
        for (q, i, j) in writes {
            let mut y = x.clone();
            let _ = lstm_sequence(&y[0], &y[1], &y[2], &y[3]);
            y[q][(i, j)] += 0.25;
            let got = rules::vjp(&y[0], &y[1], &y[2], &y[3], &u);
            KEPT.with(|k| k.borrow_mut().take());
            let want = rules::vjp(&y[0], &y[1], &y[2], &y[3], &u);
            assert_eq!(got, want, "argument {q} element ({i}, {j})");
        }
    }

    /// Each chunk writes its own rows of the results (every `h_t` of the value, every
    /// `dz_t` of `xw`'s cotangent) and nothing else: the chunks run on the pool at once,
    /// and a write into another chunk's rows, even of the value there, would race that
    /// chunk's own (a lost result, rarely: what CI once saw in the convolution's col2im).
    /// Every element starts as −0.0, which any write turns into another bit pattern;
    /// B = 130 makes three chunks (44, 44, 42 rows). And every element of its own rows is
    /// written (the rule's matrices start uninitialized): each equals the rule's result
    /// bit for bit. Mutations: `put_rows` writing `n + 1` rows from each step; its last
    /// step skipped (each tried, each fails).
    #[test]
    fn chunks_write_only_their_own_rows() {
        let (b, t, h) = (130, 3, 2);
        let d = Dims { b, t, h };
        assert_eq!(d.chunks().len(), 3);
        let x = inputs(b, t, h, 271);
        let g = normal(t * b, h, 1.0, 281);
        // The rule's results, for the chunks' own rows.
        let want_h = lstm_sequence(&x[0], &x[1], &x[2], &x[3]);
        let want_dz = rules::vjp(&x[0], &x[1], &x[2], &x[3], &g).0.unwrap();
        for r in d.chunks() {
            let (mut hv, mut dv) = (Vec::new(), Vec::new());
            let out = neg_zero_out(&mut hv, t * b, h);
            let args = Args::given(&x[0], &x[1], &x[2], &x[3]);
            let fwd = forward_chunk(d, r.clone(), args, Some(out));
            let dout = neg_zero_out(&mut dv, t * b, 4 * h);
            let _ = reverse_chunk(d, fwd, args, [true; 3], &g, Some(dout));
            assert_only_own_rows(&r, (t, b), &hv, want_h.as_slice(), "value");
            assert_only_own_rows(&r, (t, b), &dv, want_dz.as_slice(), "cotangent");
        }
    }

    /// A sequence of no steps (`xw` with no rows, which the shapes allow) has an empty
    /// value, an empty tangent and an empty cotangent of `xw`, and zero cotangents of `wh`,
    /// `h0` and `c0`; a chunk's buffers are then empty, so a product formed for a step
    /// that does not exist would not fit (mutation: the reverse sweep over
    /// `0..tt.max(1)`; tried, panics).
    #[test]
    fn zero_steps_give_empty_results() {
        let (b, h) = (20, 3);
        let [xw, wh, h0, c0] = inputs(b, 0, h, 301);
        assert_eq!(xw.shape(), (0, 4 * h));
        let y = lstm_sequence(&xw, &wh, &h0, &c0);
        assert_eq!(y.shape(), (0, h));
        let (y2, t) = rules::jvp(
            &xw,
            &wh,
            &h0,
            &c0,
            Some(&xw),
            Some(&wh),
            Some(&h0),
            Some(&c0),
        );
        assert_eq!((y2.shape(), t.shape()), ((0, h), (0, h)));
        let g = DMatrix::<f64>::zeros(0, h);
        let (dxw, dwh, dh0, dc0) = rules::vjp(&xw, &wh, &h0, &c0, &g);
        assert_eq!(dxw.unwrap().shape(), (0, 4 * h));
        assert_eq!(dwh.unwrap(), DMatrix::zeros(h, 4 * h));
        assert_eq!(dh0.unwrap(), DMatrix::zeros(b, h));
        assert_eq!(dc0.unwrap(), DMatrix::zeros(b, h));
    }

    #[test]
    #[should_panic(expected = "do not fit together")]
    fn mismatched_shapes_panic_with_the_shapes() {
        let [xw, wh, h0, c0] = inputs(3, 2, 2, 1);
        lstm_sequence(&xw, &wh.columns(0, 7).into_owned(), &h0, &c0);
    }

    use super::lstm_projected as proj;

    /// `[x, wx, b, wh, h0, c0]` of `lstm_projected` for `b` examples, `t` steps, `e`
    /// inputs, `h` units (`b` as a one-column matrix).
    fn proj_inputs(b: usize, t: usize, e: usize, h: usize, seed: u64) -> [DMatrix<f64>; 6] {
        [
            normal(t * b, e, 1.0, seed),
            normal(e, 4 * h, 0.7, seed + 1),
            normal(4 * h, 1, 0.5, seed + 2),
            normal(h, 4 * h, 0.6, seed + 3),
            normal(b, h, 0.5, seed + 4),
            normal(b, h, 0.5, seed + 5),
        ]
    }

    fn col<S: Real>(m: &DMatrix<S>) -> DVector<S> {
        m.column(0).into_owned()
    }

    /// `x·wx + b` whole, in `f64` (nalgebra's product: independent of the rule's).
    fn xw_of(a: &[DMatrix<f64>; 6]) -> DMatrix<f64> {
        let mut xw = &a[0] * &a[1];
        for (j, mut c) in xw.column_iter_mut().enumerate() {
            c.add_scalar_mut(a[2][j]);
        }
        xw
    }

    /// Runs the projected rule's value, tangent (along `tans`, each `None` where `which`
    /// leaves it out) and cotangents (all asked for) in one go.
    #[allow(clippy::type_complexity)]
    fn run_proj<S: Real>(
        a: &[DMatrix<S>; 6],
        tans: &[DMatrix<S>; 6],
        u: &DMatrix<S>,
        needs: LstmNeeds,
    ) -> (DMatrix<S>, DMatrix<S>, [Option<DMatrix<S>>; 6]) {
        let b = col(&a[2]);
        let db = col(&tans[2]);
        let y = lstm_projected(&a[0], &a[1], &b, &a[3], &a[4], &a[5], &needs);
        let (_, tan) = proj::jvp(
            &a[0],
            &a[1],
            &b,
            &a[3],
            &a[4],
            &a[5],
            &needs,
            Some(&tans[0]),
            Some(&tans[1]),
            Some(&db),
            Some(&tans[3]),
            Some(&tans[4]),
            Some(&tans[5]),
            None,
        );
        let v = proj::vjp(&a[0], &a[1], &b, &a[3], &a[4], &a[5], &needs, u);
        let db =
            v.2.map(|v| DMatrix::from_column_slice(v.len(), 1, v.as_slice()));
        (y, tan, [v.0, v.1, db, v.3, v.4, v.5])
    }

    /// `lstm_projected(x, wx, b, ..)` is `lstm_sequence(x·wx + b, ..)`: value, tangent
    /// (`dxw = dx·wx + x·dwx + db`) and cotangents (`dx = dxw·wxᵀ`, `dwx = xᵀ·dxw`, `db`
    /// the column sums of `dxw`), within rounding, on one chunk and on two (B = 70).
    /// Mutations caught: the forward pass without `b` (the block starting at zeros); the
    /// reverse `x_t` view without `r.start` (the second chunk's `dwx` from the first
    /// chunk's rows); `db` keeping only the last step's sums (`=` for `+=`); each tried,
    /// each fails here.
    #[test]
    fn projected_equals_the_composition() {
        for (k, &(b, t, h)) in SIZES.iter().enumerate() {
            let e = 3;
            let a = proj_inputs(b, t, e, h, 400 + 10 * k as u64);
            let tans = proj_inputs(b, t, e, h, 600 + 10 * k as u64);
            let u = normal(t * b, h, 1.0, 800 + k as u64);
            let (y, tan, grads) = run_proj(&a, &tans, &u, [true; 6]);
            let xw = xw_of(&a);
            let want = rules::vjp(&xw, &a[3], &a[4], &a[5], &u);
            let dxw = want.0.unwrap();
            let mut dxw_t = &tans[0] * &a[1] + &a[0] * &tans[1];
            for (j, mut c) in dxw_t.column_iter_mut().enumerate() {
                c.add_scalar_mut(tans[2][j]);
            }
            let (y2, tan2) = rules::jvp(
                &xw,
                &a[3],
                &a[4],
                &a[5],
                Some(&dxw_t),
                Some(&tans[3]),
                Some(&tans[4]),
                Some(&tans[5]),
            );
            let sums = DMatrix::from_fn(4 * h, 1, |j, _| dxw.column(j).sum());
            let expected = [
                &dxw * a[1].transpose(),
                a[0].transpose() * &dxw,
                sums,
                want.1.unwrap(),
                want.2.unwrap(),
                want.3.unwrap(),
            ];
            let close = |p: &DMatrix<f64>, q: &DMatrix<f64>| {
                p.shape() == q.shape() && (p - q).abs().max() <= 1e-12 * (1.0 + q.abs().max())
            };
            assert!(close(&y, &y2), "{b} {t} {h} value");
            assert!(close(&tan, &tan2), "{b} {t} {h} tangent");
            for (q, (g, w)) in grads.iter().zip(&expected).enumerate() {
                assert!(close(g.as_ref().unwrap(), w), "{b} {t} {h} argument {q}");
            }
        }
    }

    /// `needs` leaves out the cotangents of `x`, `wx` and `b` that are not asked for
    /// (`None`), and the others are the same bit for bit as with everything asked for.
    /// Mutation caught: `needs` ignored (every cotangent made; tried).
    #[test]
    fn projected_skips_what_needs_leaves_out() {
        let (b, t, e, h) = (70, 3, 4, 3);
        let a = proj_inputs(b, t, e, h, 31).map(|m| m.map(|v| v as f32));
        let tans = proj_inputs(b, t, e, h, 41).map(|m| m.map(|v| v as f32));
        let u = normal(t * b, h, 1.0, 51).map(|v| v as f32);
        let (_, _, all) = run_proj(&a, &tans, &u, [true; 6]);
        for leave in 0..3 {
            let mut needs = [true; 6];
            needs[leave] = false;
            let (_, _, some) = run_proj(&a, &tans, &u, needs);
            for q in 0..6 {
                if q == leave {
                    assert!(some[q].is_none(), "argument {q} was not asked for");
                } else {
                    assert_eq!(some[q], all[q], "argument {q} with {leave} left out");
                }
            }
        }
    }

    /// Each lane of a packed projected LSTM is its own `f32` instance's, within the
    /// products' 1e-6: value, tangent and cotangents, on two chunks (the packets' products
    /// with `x_t` read in place, columns `T·B` apart). Mutation caught: the packets'
    /// `tanh` giving lane 0's value to every lane (tried; the rule's own code is generic).
    #[test]
    fn projected_lanes_are_their_f32_instances() {
        let (b, t, e, h) = (66, 3, 2, 4);
        let draw = |seed: u64| -> Vec<[DMatrix<f32>; 6]> {
            (0..8)
                .map(|l| proj_inputs(b, t, e, h, seed + 10 * l).map(|m| m.map(|v| v as f32)))
                .collect()
        };
        let (xs, ts) = (draw(500), draw(900));
        let us: Vec<DMatrix<f32>> = (0..8)
            .map(|l| normal(t * b, h, 1.0, 1300 + l).map(|v| v as f32))
            .collect();
        let xp: [DMatrix<Lanes<8>>; 6] = std::array::from_fn(|q| pack8(|l| xs[l][q].clone()));
        let tp: [DMatrix<Lanes<8>>; 6] = std::array::from_fn(|q| pack8(|l| ts[l][q].clone()));
        let up = pack8(|l| us[l].clone());
        let (yp, jp, gp) = run_proj(&xp, &tp, &up, [true; 6]);
        for l in 0..8 {
            let (y, j, g) = run_proj(&xs[l], &ts[l], &us[l], [true; 6]);
            let mut pairs = vec![(&yp, &y), (&jp, &j)];
            pairs.extend(gp.iter().flatten().zip(g.iter().flatten()));
            assert_eq!(pairs.len(), 8);
            for (packed, single) in pairs {
                assert_lane_is(packed, l, single);
            }
        }
    }

    /// On 1 and on 3 threads the projected rule's value, tangent and cotangents are the
    /// same bit for bit (B = 130: three chunks; `dwx`, `db` summed in chunk order).
    /// Mutation caught: as many chunks as threads (tried).
    #[test]
    fn projected_chunks_are_bit_identical_to_one_thread() {
        let (b, t, e, h) = (130, 3, 5, 4);
        let a = proj_inputs(b, t, e, h, 7).map(|m| m.map(|v| v as f32));
        let tans = proj_inputs(b, t, e, h, 17).map(|m| m.map(|v| v as f32));
        let u = normal(t * b, h, 1.0, 27).map(|v| v as f32);
        let run =
            |threads: usize| crate::on_threads(threads, || run_proj(&a, &tans, &u, [true; 6]));
        assert_eq!(run(1), run(3));
    }

    /// A kept projected pass is taken only while its arguments are unchanged: one element
    /// written in place after the value, in the second chunk's rows of `x` (last step,
    /// last column), in `wx` or in `b`, makes the `vjp` recompute (it equals a `vjp` with
    /// nothing kept, bit for bit); unchanged, the `vjp` takes the pass. Mutations caught:
    /// a checksum without `wx`, or without `b` (each tried, each fails here).
    #[test]
    fn projected_kept_pass_is_checked_against_x_wx_and_b() {
        let (b, t, e, h) = (67, 3, 2, 2);
        let d = Dims { b, t, h };
        let second = d.chunks()[1].clone();
        let a = proj_inputs(b, t, e, h, 171).map(|m| m.map(|v| v as f32));
        let u = normal(t * b, h, 1.0, 191).map(|v| v as f32);
        let needs = [true; 6];
        let vjp = |y: &[DMatrix<f32>; 6]| {
            proj::vjp(&y[0], &y[1], &col(&y[2]), &y[3], &y[4], &y[5], &needs, &u)
        };
        let keep_value = |y: &[DMatrix<f32>; 6], bias: &DVector<f32>| {
            lstm_projected(&y[0], &y[1], bias, &y[3], &y[4], &y[5], &needs)
        };
        // Unchanged: taken.
        let bias = col(&a[2]);
        let _ = keep_value(&a, &bias);
        let kept = proj::vjp(&a[0], &a[1], &bias, &a[3], &a[4], &a[5], &needs, &u);
        assert!(KEPT.with(|k| k.borrow().is_none()), "the vjp took the pass");
        assert_eq!(kept, vjp(&a));
        let writes: [(usize, usize, usize); 3] = [
            (0, (t - 1) * b + second.end - 1, e - 1),
            (1, e - 1, 4 * h - 1),
            (2, 4 * h - 1, 0),
        ];
        for (q, i, j) in writes {
            let mut y = a.clone();
            let mut bias = col(&y[2]);
            let _ = keep_value(&y, &bias);
            y[q][(i, j)] += 0.25;
            if q == 2 {
                bias[i] += 0.25;
            }
            let got = proj::vjp(&y[0], &y[1], &bias, &y[3], &y[4], &y[5], &needs, &u);
            KEPT.with(|k| k.borrow_mut().take());
            assert_eq!(got, vjp(&y), "argument {q} element ({i}, {j})");
        }
    }

    /// Each chunk writes its own rows of `x`'s cotangent (`dz_t·wxᵀ`, step by step) and
    /// nothing else, all of them: every element starts as −0.0, which any write changes;
    /// B = 130 makes three chunks. Mutation caught: the rows written from `t·B` without
    /// `r.start` (tried).
    #[test]
    fn projected_chunks_write_only_their_own_rows_of_dx() {
        let (b, t, e, h) = (130, 3, 3, 2);
        let d = Dims { b, t, h };
        let a = proj_inputs(b, t, e, h, 271);
        let g = normal(t * b, h, 1.0, 281);
        let bias = col(&a[2]);
        let args = Args {
            input: Input::Projected {
                x: &a[0],
                wx: &a[1],
                b: &bias,
            },
            wh: &a[3],
            h0: &a[4],
            c0: &a[5],
        };
        let want = proj::vjp(&a[0], &a[1], &bias, &a[3], &a[4], &a[5], &[true; 6], &g).0;
        let want = want.unwrap();
        for r in d.chunks() {
            let mut dv = Vec::new();
            let out = neg_zero_out(&mut dv, t * b, e);
            let fwd = forward_chunk(d, r.clone(), args, None);
            let _ = reverse_chunk(d, fwd, args, [true; 3], &g, Some(out));
            assert_only_own_rows(&r, (t, b), &dv, want.as_slice(), "x cotangent");
        }
    }

    /// No steps: an empty value, tangent and `x` cotangent, zero cotangents of the rest.
    #[test]
    fn projected_zero_steps_give_empty_results() {
        let (b, e, h) = (5, 3, 2);
        let a = proj_inputs(b, 0, e, h, 301);
        let tans = proj_inputs(b, 0, e, h, 311);
        let u = DMatrix::<f64>::zeros(0, h);
        let (y, tan, g) = run_proj(&a, &tans, &u, [true; 6]);
        assert_eq!((y.shape(), tan.shape()), ((0, h), (0, h)));
        assert_eq!(g[0].as_ref().unwrap().shape(), (0, e));
        for q in 1..6 {
            let m = g[q].as_ref().unwrap();
            assert_eq!(
                m,
                &DMatrix::zeros(a[q].nrows(), a[q].ncols()),
                "argument {q}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "do not fit together")]
    fn projected_mismatched_shapes_panic_with_the_shapes() {
        let a = proj_inputs(3, 2, 2, 2, 1);
        let short = DVector::zeros(7);
        lstm_projected(&a[0], &a[1], &short, &a[3], &a[4], &a[5], &[true; 6]);
    }

    use super::lstm_embedded as emb;

    /// Pseudo-random ids for `rows` rows of a `v`-row table (most rows used many times).
    fn ids_of(rows: usize, v: usize, seed: u64) -> Vec<u32> {
        // A multiplicative hash: no period that a chunk's start could line up with.
        (0..rows as u64)
            .map(|k| {
                ((k.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % v as u64) as u32
            })
            .collect()
    }

    /// `[table, wh, h0, c0]` for a `v`-row table, `b` examples, `h` units.
    fn emb_inputs(v: usize, b: usize, h: usize, seed: u64) -> [DMatrix<f64>; 4] {
        [
            normal(v, 4 * h, 1.0, seed),
            normal(h, 4 * h, 0.6, seed + 1),
            normal(b, h, 0.5, seed + 2),
            normal(b, h, 0.5, seed + 3),
        ]
    }

    /// The embedded rule's value, tangent (along all four tangents) and cotangents.
    #[allow(clippy::type_complexity)]
    fn run_emb<S: Real>(
        a: &[DMatrix<S>; 4],
        ids: &[u32],
        tans: &[DMatrix<S>; 4],
        u: &DMatrix<S>,
    ) -> (DMatrix<S>, DMatrix<S>, [DMatrix<S>; 4]) {
        let op = Embed::new(ids);
        let y = lstm_embedded(&a[0], &a[1], &a[2], &a[3], &op);
        let (_, tan) = emb::jvp(
            &a[0],
            &a[1],
            &a[2],
            &a[3],
            &op,
            Some(&tans[0]),
            Some(&tans[1]),
            Some(&tans[2]),
            Some(&tans[3]),
            None,
        );
        let v = emb::vjp(&a[0], &a[1], &a[2], &a[3], &op, u);
        assert!(v.4.is_none());
        (
            y,
            tan,
            [v.0.unwrap(), v.1.unwrap(), v.2.unwrap(), v.3.unwrap()],
        )
    }

    /// Rows `ids` of `m`, and the scatter-add of `g`'s rows by `ids` into `v` rows, in
    /// `f64` element loops (independent of the rule and of `gather.rs`).
    fn rows_of(m: &DMatrix<f64>, ids: &[u32]) -> DMatrix<f64> {
        DMatrix::from_fn(ids.len(), m.ncols(), |k, j| m[(ids[k] as usize, j)])
    }
    fn scatter(g: &DMatrix<f64>, ids: &[u32], v: usize) -> DMatrix<f64> {
        let mut out = DMatrix::zeros(v, g.ncols());
        for (k, &i) in ids.iter().enumerate() {
            for j in 0..g.ncols() {
                out[(i as usize, j)] += g[(k, j)];
            }
        }
        out
    }

    /// `lstm_embedded(table, .., ids)` is `lstm_sequence(embed(table, ids), ..)`: value and
    /// tangent equal the composition's bit for bit (the same gate blocks), the cotangents
    /// within rounding (the table's summed per chunk first), on one chunk and on two
    /// (B = 70), with repeated ids. Mutations caught: the gather reading row `k` instead of
    /// `ids[k]`; the reverse scatter of the ids without `r.start` (the second chunk's dz
    /// into the first chunk's ids' rows); the scatter with `=` for `+=` (each tried, each
    /// fails here).
    #[test]
    fn embedded_equals_the_composition() {
        for (k, &(b, t, h)) in SIZES.iter().enumerate() {
            let v = 5;
            let a = emb_inputs(v, b, h, 400 + 10 * k as u64);
            let tans = emb_inputs(v, b, h, 600 + 10 * k as u64);
            let ids = ids_of(t * b, v, k as u64);
            let u = normal(t * b, h, 1.0, 800 + k as u64);
            let (y, tan, grads) = run_emb(&a, &ids, &tans, &u);
            let xw = rows_of(&a[0], &ids);
            let (y2, tan2) = rules::jvp(
                &xw,
                &a[1],
                &a[2],
                &a[3],
                Some(&rows_of(&tans[0], &ids)),
                Some(&tans[1]),
                Some(&tans[2]),
                Some(&tans[3]),
            );
            assert_eq!((&y, &tan), (&y2, &tan2), "{b} {t} {h}");
            let want = rules::vjp(&xw, &a[1], &a[2], &a[3], &u);
            let expected = [
                scatter(&want.0.unwrap(), &ids, v),
                want.1.unwrap(),
                want.2.unwrap(),
                want.3.unwrap(),
            ];
            for (q, (g, w)) in grads.iter().zip(&expected).enumerate() {
                let ok =
                    g.shape() == w.shape() && (g - w).abs().max() <= 1e-12 * (1.0 + w.abs().max());
                assert!(ok, "{b} {t} {h} argument {q}: {g} vs {w}");
            }
        }
    }

    /// In `f32` (the 8 × 8 tile gather and scatter-add of `tiles.rs` on an AVX2 CPU) the
    /// embedded rule equals `lstm_sequence` of the looked-up rows bit for bit: value,
    /// tangent, the cotangents of `wh`, `h0`, `c0`, and the table's, which is `xw`'s
    /// cotangent scattered in the rule's order (per chunk, steps last to first, rows in
    /// order, the chunks' parts summed in chunk order) in `f32` element loops. Sizes with
    /// whole tiles and with edges: chunks of 16 rows and of 35 (4 tiles and 3 rows), 8
    /// gate columns, 12 and 20 (a block and 4 columns), tables of 11 and 8 rows, repeated
    /// ids. Mutations caught: the gather's last columns skipped; the scatter's last rows
    /// skipped; the scatter's tile stored without the sum it adds to (each tried, each
    /// fails here).
    #[test]
    fn embedded_f32_tiles_equal_the_element_loops() {
        for (q, &(v, b, t, h)) in [
            (11, 16, 3, 2),
            (11, 70, 2, 3),
            (8, 16, 2, 5),
            (11, 35, 2, 5),
        ]
        .iter()
        .enumerate()
        {
            let f = |m: DMatrix<f64>| m.map(|x| x as f32);
            let a = emb_inputs(v, b, h, 40 + q as u64).map(f);
            let tans = emb_inputs(v, b, h, 60 + q as u64).map(f);
            let ids = ids_of(t * b, v, 7 + q as u64);
            let u = f(normal(t * b, h, 1.0, 80 + q as u64));
            let (y, tan, grads) = run_emb(&a, &ids, &tans, &u);
            let rows = |m: &DMatrix<f32>| {
                DMatrix::from_fn(ids.len(), m.ncols(), |k, j| m[(ids[k] as usize, j)])
            };
            let xw = rows(&a[0]);
            let (y2, tan2) = rules::jvp(
                &xw,
                &a[1],
                &a[2],
                &a[3],
                Some(&rows(&tans[0])),
                Some(&tans[1]),
                Some(&tans[2]),
                Some(&tans[3]),
            );
            assert_eq!((&y, &tan), (&y2, &tan2), "{v} {b} {t} {h}");
            let want = rules::vjp(&xw, &a[1], &a[2], &a[3], &u);
            let dz = want.0.unwrap();
            let mut dt = None::<DMatrix<f32>>;
            for r in (Dims { b, t, h }).chunks() {
                let mut part = DMatrix::<f32>::zeros(v, 4 * h);
                for step in (0..t).rev() {
                    for k in r.clone() {
                        let row = step * b + k;
                        for j in 0..4 * h {
                            part[(ids[row] as usize, j)] += dz[(row, j)];
                        }
                    }
                }
                dt = Some(match dt {
                    Some(s) => s + part,
                    None => part,
                });
            }
            let expected = [
                dt.unwrap(),
                want.1.unwrap(),
                want.2.unwrap(),
                want.3.unwrap(),
            ];
            assert_eq!(grads, expected, "{v} {b} {t} {h}");
        }
    }

    /// Each lane of a packed embedded LSTM is its own `f32` instance's, within 1e-6:
    /// value, tangent and cotangents, on two chunks. Mutation caught: the packets'
    /// `tanh` giving lane 0's value to every lane (tried; the rule's code is generic).
    #[test]
    fn embedded_lanes_are_their_f32_instances() {
        let (v, b, t, h) = (7, 66, 3, 4);
        let ids = ids_of(t * b, v, 3);
        let draw = |seed: u64| -> Vec<[DMatrix<f32>; 4]> {
            (0..8)
                .map(|l| emb_inputs(v, b, h, seed + 10 * l).map(|m| m.map(|x| x as f32)))
                .collect()
        };
        let (xs, ts) = (draw(500), draw(900));
        let us: Vec<DMatrix<f32>> = (0..8)
            .map(|l| normal(t * b, h, 1.0, 1300 + l).map(|x| x as f32))
            .collect();
        let xp: [DMatrix<Lanes<8>>; 4] = std::array::from_fn(|q| pack8(|l| xs[l][q].clone()));
        let tp: [DMatrix<Lanes<8>>; 4] = std::array::from_fn(|q| pack8(|l| ts[l][q].clone()));
        let up = pack8(|l| us[l].clone());
        let (yp, jp, gp) = run_emb(&xp, &ids, &tp, &up);
        for l in 0..8 {
            let (y, j, g) = run_emb(&xs[l], &ids, &ts[l], &us[l]);
            let mut pairs = vec![(&yp, &y), (&jp, &j)];
            pairs.extend(gp.iter().zip(g.iter()));
            for (packed, single) in pairs {
                assert_lane_is(packed, l, single);
            }
        }
    }

    /// On 1 and on 3 threads the embedded rule's value, tangent and cotangents are the
    /// same bit for bit (B = 130: three chunks; the table's cotangent summed in chunk
    /// order). Mutation caught: as many chunks as threads (tried).
    #[test]
    fn embedded_chunks_are_bit_identical_to_one_thread() {
        let (v, b, t, h) = (9, 130, 3, 4);
        let ids = ids_of(t * b, v, 5);
        let a = emb_inputs(v, b, h, 7).map(|m| m.map(|x| x as f32));
        let tans = emb_inputs(v, b, h, 17).map(|m| m.map(|x| x as f32));
        let u = normal(t * b, h, 1.0, 27).map(|x| x as f32);
        let run = |threads: usize| crate::on_threads(threads, || run_emb(&a, &ids, &tans, &u));
        assert_eq!(run(1), run(3));
    }

    /// A kept embedded pass is taken only while its arguments are unchanged: unchanged, the
    /// `vjp` takes it (and equals one with nothing kept, bit for bit); one id written in
    /// place after the value (second chunk, last step), or one table element, makes it
    /// recompute. Mutations caught: a checksum without the ids, or without the table
    /// (each tried, each fails here).
    #[test]
    fn embedded_kept_pass_is_checked_against_ids_and_table() {
        let (v, b, t, h) = (6, 67, 3, 2);
        let d = Dims { b, t, h };
        let second = d.chunks()[1].clone();
        let a = emb_inputs(v, b, h, 171).map(|m| m.map(|x| x as f32));
        let ids = ids_of(t * b, v, 2);
        let u = normal(t * b, h, 1.0, 191).map(|x| x as f32);
        let vjp = |y: &[DMatrix<f32>; 4], ids: &[u32]| {
            emb::vjp(&y[0], &y[1], &y[2], &y[3], &Embed::new(ids), &u)
        };
        KEPT.with(|k| k.borrow_mut().take());
        let fresh = vjp(&a, &ids);
        let _ = lstm_embedded(&a[0], &a[1], &a[2], &a[3], &Embed::new(&ids));
        assert_eq!(vjp(&a, &ids), fresh);
        assert!(KEPT.with(|k| k.borrow().is_none()), "the vjp took the pass");
        for which in 0..2 {
            let (mut y, mut z) = (a.clone(), ids.clone());
            let _ = lstm_embedded(&y[0], &y[1], &y[2], &y[3], &Embed::new(&z));
            if which == 0 {
                let k = (t - 1) * b + second.end - 1;
                z[k] = (z[k] + 1) % v as u32;
            } else {
                y[0][(v - 1, 4 * h - 1)] += 0.25;
            }
            let got = vjp(&y, &z);
            KEPT.with(|k| k.borrow_mut().take());
            assert_eq!(got, vjp(&y, &z), "write {which}");
        }
    }

    /// No steps: an empty value and tangent, zero cotangents.
    #[test]
    fn embedded_zero_steps_give_empty_results() {
        let (v, b, h) = (4, 5, 2);
        let a = emb_inputs(v, b, h, 301);
        let tans = emb_inputs(v, b, h, 311);
        let u = DMatrix::<f64>::zeros(0, h);
        let (y, tan, g) = run_emb(&a, &[], &tans, &u);
        assert_eq!((y.shape(), tan.shape()), ((0, h), (0, h)));
        for q in 0..4 {
            assert_eq!(g[q], DMatrix::zeros(a[q].nrows(), a[q].ncols()), "{q}");
        }
    }

    #[test]
    #[should_panic(expected = "outside 0..4")]
    fn embedded_ids_outside_the_table_panic() {
        let a = emb_inputs(4, 2, 2, 1);
        lstm_embedded(&a[0], &a[1], &a[2], &a[3], &Embed::new(&[0u32, 4]));
    }
}
