//! Convolution as patches and a matrix product (`jax.lax.conv_general_dilated` with NHWC
//! inputs and HWIO kernels, TensorFlow/haiku `SAME` and `VALID` padding).
//!
//! Activations are matrices: row `n·H·W + h·W + w` holds the channels of pixel `(h, w)`
//! of image `n`, one column per channel (NHWC, as the JAX library feeds images). A kernel
//! `[kh, kw, C_in, C_out]` (HWIO) is the matrix of `kh·kw·C_in` rows, row
//! `(i·kw + j)·C_in + c`, and `C_out` columns. Then
//!
//! `conv2d(x, w) = im2col(x) · w`
//!
//! where [`Im2col`] gathers every output position's receptive field into one row. It is
//! linear in `x`, so its forward-mode rule is itself and its reverse-mode rule scatters
//! the cotangent back (`col2im`); the product's rules are the existing ones. A per-channel
//! bias is the existing broadcast of a row vector over the rows, and a 1×1 convolution is
//! a plain product.

use std::any::TypeId;

use nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::kernels::alloc::{recycle, zeroed};
use crate::kernels::gemm::{gemm, gemm_raw_ldc, MatRef};
use crate::scalar::Real;

use super::{op, Unary};

mod thin;

/// How a convolution or pooling window pads its input (TensorFlow's and haiku's
/// semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Output size `ceil(in / stride)`; the zeros needed go half before, and the odd one
    /// after (at stride 2 on an even size: 0 before, 1 after).
    Same,
    /// No padding: output size `ceil((in − k + 1) / stride)`.
    Valid,
}

/// The geometry of a 2-D convolution (or pooling window) over a batch of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Input channels.
    pub channels: usize,
    /// Window height.
    pub kh: usize,
    /// Window width.
    pub kw: usize,
    /// Vertical and horizontal stride.
    pub stride: (usize, usize),
    /// Padding rule.
    pub padding: Padding,
}

/// Output size and zeros before, along one axis.
fn axis(input: usize, k: usize, stride: usize, padding: Padding) -> (usize, usize) {
    match padding {
        Padding::Same => {
            let out = input.div_ceil(stride);
            let total = ((out - 1) * stride + k).saturating_sub(input);
            (out, total / 2)
        }
        Padding::Valid => ((input + 1).saturating_sub(k).div_ceil(stride), 0),
    }
}

impl Conv2dGeometry {
    /// A `kh × kw` window with `stride` and `padding` over `batch` images of
    /// `height × width × channels`.
    ///
    /// Errors ([`Error::InvalidArgument`]): a zero size or stride, or a `VALID` window
    /// larger than the image.
    pub fn new(
        (batch, height, width, channels): (usize, usize, usize, usize),
        (kh, kw): (usize, usize),
        stride: (usize, usize),
        padding: Padding,
    ) -> Result<Self> {
        let g = Conv2dGeometry {
            batch,
            height,
            width,
            channels,
            kh,
            kw,
            stride,
            padding,
        };
        if [batch, height, width, channels, kh, kw, stride.0, stride.1].contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "conv2d geometry with a zero size or stride: {g:?}"
            )));
        }
        if padding == Padding::Valid && (kh > height || kw > width) {
            return Err(Error::InvalidArgument(format!(
                "conv2d: a {kh}x{kw} VALID window does not fit {height}x{width} images"
            )));
        }
        Ok(g)
    }

    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        (
            axis(self.height, self.kh, self.stride.0, self.padding).0,
            axis(self.width, self.kw, self.stride.1, self.padding).0,
        )
    }

    /// Zeros before the first row and the first column.
    pub fn pads(&self) -> (usize, usize) {
        (
            axis(self.height, self.kh, self.stride.0, self.padding).1,
            axis(self.width, self.kw, self.stride.1, self.padding).1,
        )
    }

    /// Rows of the input activation matrix (`batch · height · width`).
    pub fn in_rows(&self) -> usize {
        self.batch * self.height * self.width
    }

    /// Rows of the output (`batch · out_h · out_w`).
    pub fn out_rows(&self) -> usize {
        let (ho, wo) = self.out_hw();
        self.batch * ho * wo
    }

    /// Columns of the patches matrix (`kh · kw · channels`), the rows of an HWIO kernel.
    pub fn patch_len(&self) -> usize {
        self.kh * self.kw * self.channels
    }

    /// Calls `f(patch_offset, input_offset, count)` for every run of patch elements that
    /// read the input (padding reads nothing): `count` elements of one patch column,
    /// contiguous there, reading the input column from `input_offset` with the horizontal
    /// stride. Both are column-major offsets; runs come in patch order.
    #[inline]
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (ho, wo) = self.out_hw();
        let (pt, pl) = self.pads();
        let (sh, sw) = self.stride;
        let (rows_in, rows_out) = (self.in_rows(), self.out_rows());
        for i in 0..self.kh {
            let (oh_lo, oh_hi) = inside(ho, i, pt, sh, self.height);
            for j in 0..self.kw {
                let (ow_lo, ow_hi) = inside(wo, j, pl, sw, self.width);
                if ow_lo == ow_hi {
                    continue;
                }
                let w0 = ow_lo * sw + j - pl;
                for c in 0..self.channels {
                    let col = (i * self.kw + j) * self.channels + c;
                    for n in 0..self.batch {
                        for oh in oh_lo..oh_hi {
                            let h = oh * sh + i - pt;
                            f(
                                col * rows_out + (n * ho + oh) * wo + ow_lo,
                                c * rows_in + (n * self.height + h) * self.width + w0,
                                ow_hi - ow_lo,
                            );
                        }
                    }
                }
            }
        }
    }

    #[track_caller]
    fn check_input<S>(&self, x: &DMatrix<S>) {
        if x.shape() != (self.in_rows(), self.channels) {
            panic!(
                "im2col: activations of shape {:?}, the geometry needs {:?} (batch·height·width rows, one column per channel): {self:?}",
                x.shape(),
                (self.in_rows(), self.channels)
            );
        }
    }

    /// The patches of `x` (`out_rows × patch_len`).
    pub fn im2col<S: Real>(&self, x: &DMatrix<S>) -> DMatrix<S> {
        self.check_input(x);
        let mut out = zeroed::<S>(self.out_rows() * self.patch_len());
        let (src, sw) = (x.as_slice(), self.stride.1);
        self.for_each_run(|p, q, len| {
            let dst = &mut out[p..p + len];
            if sw == 1 {
                dst.copy_from_slice(&src[q..q + len]);
            } else {
                for (d, s) in dst.iter_mut().zip(src[q..].iter().step_by(sw)) {
                    *d = *s;
                }
            }
        });
        DMatrix::from_vec(self.out_rows(), self.patch_len(), out)
    }

    /// The transpose of [`im2col`](Self::im2col): every patch element added back to the
    /// input position it was read from (`in_rows × channels`).
    pub fn col2im<S: Real>(&self, patches: &DMatrix<S>) -> DMatrix<S> {
        assert_eq!(
            patches.shape(),
            (self.out_rows(), self.patch_len()),
            "col2im: patches of the wrong shape for {self:?}"
        );
        let mut out = zeroed::<S>(self.in_rows() * self.channels);
        let (src, sw) = (patches.as_slice(), self.stride.1);
        self.for_each_run(|p, q, len| {
            let from = &src[p..p + len];
            if sw == 1 {
                for (d, s) in out[q..q + len].iter_mut().zip(from) {
                    *d += *s;
                }
            } else {
                for (d, s) in out[q..].iter_mut().step_by(sw).zip(from) {
                    *d += *s;
                }
            }
        });
        DMatrix::from_vec(self.in_rows(), self.channels, out)
    }
}

/// The outputs `lo..hi` along one axis (`out` of them) whose window element `k` falls
/// inside the input (`size`, `pad` zeros before, stride `s`).
fn inside(out: usize, k: usize, pad: usize, s: usize, size: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(k).div_ceil(s);
    let hi = if size + pad > k {
        ((size + pad - k - 1) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

impl Conv2dGeometry {
    /// Calls `f(out_index, in_index)` for every input element of every pooling window
    /// (one output per window and channel), both column-major offsets into matrices of
    /// `channels` columns.
    #[inline]
    fn for_each_window_tap(&self, mut f: impl FnMut(usize, usize)) {
        let (ho, wo) = self.out_hw();
        let (pt, pl) = self.pads();
        let (rows_in, rows_out) = (self.in_rows(), self.out_rows());
        for c in 0..self.channels {
            for n in 0..self.batch {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let out = c * rows_out + (n * ho + oh) * wo + ow;
                        for i in 0..self.kh {
                            let h = (oh * self.stride.0 + i) as isize - pt as isize;
                            if h < 0 || h >= self.height as isize {
                                continue;
                            }
                            for j in 0..self.kw {
                                let w = (ow * self.stride.1 + j) as isize - pl as isize;
                                if w >= 0 && w < self.width as isize {
                                    let row = (n * self.height + h as usize) * self.width;
                                    f(out, c * rows_in + row + w as usize);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// How many input elements each window covers (padding excluded), per output row.
    fn window_counts(&self) -> Vec<f64> {
        let mut counts = vec![0.0; self.out_rows() * self.channels];
        self.for_each_window_tap(|o, _| counts[o] += 1.0);
        counts.truncate(self.out_rows());
        counts
    }
}

/// The op of `avg_pool(x, &geometry)` (`hk.avg_pool`): the mean of each window over the
/// elements inside the image (with `SAME` padding the zeros are not counted, as haiku
/// divides by the count of valid entries).
#[derive(Debug, Clone, Copy)]
pub struct AvgPool2d<'a>(pub &'a Conv2dGeometry);

impl<'a> AvgPool2d<'a> {
    /// The op for `geometry` (what `#[task]` builds for `avg_pool(x, &geometry)`).
    pub fn new(geometry: &'a Conv2dGeometry) -> Self {
        AvgPool2d(geometry)
    }
}

impl AvgPool2d<'_> {
    fn apply<S: Real>(&self, x: &DMatrix<S>) -> DMatrix<S> {
        let g = self.0;
        g.check_input(x);
        let counts = g.window_counts();
        let rows = g.out_rows();
        let mut out = DMatrix::<S>::zeros(rows, g.channels);
        let (src, dst) = (x.as_slice(), out.as_mut_slice());
        g.for_each_window_tap(|o, i| dst[o] += src[i]);
        for (k, v) in dst.iter_mut().enumerate() {
            *v *= S::from_f64(1.0 / counts[k % rows]);
        }
        out
    }
}

impl<S: Real> Unary<AvgPool2d<'_>> for DMatrix<S> {
    type Out = DMatrix<S>;
    fn eval(&self, op: &AvgPool2d<'_>) -> DMatrix<S> {
        op.apply(self)
    }
    fn jvp(&self, op: &AvgPool2d<'_>, _out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
        op.apply(dx)
    }
    fn vjp(&self, op: &AvgPool2d<'_>, _out: &DMatrix<S>, g: DMatrix<S>) -> DMatrix<S> {
        let geo = op.0;
        let counts = geo.window_counts();
        let rows = geo.out_rows();
        let mut dx = DMatrix::<S>::zeros(geo.in_rows(), geo.channels);
        let (src, dst) = (g.as_slice(), dx.as_mut_slice());
        geo.for_each_window_tap(|o, i| dst[i] += src[o] * S::from_f64(1.0 / counts[o % rows]));
        dx
    }
}

/// The op of `max_pool(x, &geometry)` (`hk.max_pool`): the largest element of each
/// window (padding never wins). The derivative goes to the window's first largest
/// element, per lane.
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d<'a>(pub &'a Conv2dGeometry);

impl<'a> MaxPool2d<'a> {
    /// The op for `geometry` (what `#[task]` builds for `max_pool(x, &geometry)`).
    pub fn new(geometry: &'a Conv2dGeometry) -> Self {
        MaxPool2d(geometry)
    }
}

impl MaxPool2d<'_> {
    /// For each output element, the input offset of its window's first largest element,
    /// per lane.
    fn argmax<S: Real>(&self, x: &DMatrix<S>) -> (DMatrix<S>, Vec<Vec<usize>>) {
        let g = self.0;
        g.check_input(x);
        let n_out = g.out_rows() * g.channels;
        let mut best = vec![S::from_f64(f64::NEG_INFINITY); n_out];
        let mut at = vec![vec![usize::MAX; S::LANES]; n_out];
        let src = x.as_slice();
        g.for_each_window_tap(|o, i| {
            let v = src[i];
            for (l, a) in at[o].iter_mut().enumerate() {
                if *a == usize::MAX || v.lane(l) > best[o].lane(l) {
                    *a = i;
                }
            }
            best[o] = S::from_lanes(|l| src[at[o][l]].lane(l));
        });
        (DMatrix::from_vec(g.out_rows(), g.channels, best), at)
    }
}

impl<S: Real> Unary<MaxPool2d<'_>> for DMatrix<S> {
    type Out = DMatrix<S>;
    fn eval(&self, op: &MaxPool2d<'_>) -> DMatrix<S> {
        op.argmax(self).0
    }
    fn jvp(&self, op: &MaxPool2d<'_>, _out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
        let (out, at) = op.argmax(self);
        let d = dx.as_slice();
        DMatrix::from_iterator(
            out.nrows(),
            out.ncols(),
            at.iter().map(|a| S::from_lanes(|l| d[a[l]].lane(l))),
        )
    }
    fn vjp(&self, op: &MaxPool2d<'_>, _out: &DMatrix<S>, g: DMatrix<S>) -> DMatrix<S> {
        let (_, at) = op.argmax(self);
        let mut dx = DMatrix::<S>::zeros(self.nrows(), self.ncols());
        let dst = dx.as_mut_slice();
        for (o, a) in at.iter().enumerate() {
            for (l, &i) in a.iter().enumerate() {
                let v = dst[i].lane(l) + g.as_slice()[o].lane(l);
                dst[i].set_lane(l, v);
            }
        }
        dx
    }
}

/// The op of `global_mean_pool(x, positions)` (`jnp.mean(x, axis=(1, 2))`): the mean over
/// each image's `positions = height · width` rows, one row per image.
#[derive(Debug, Clone, Copy)]
pub struct GlobalMeanPool(pub usize);

impl GlobalMeanPool {
    /// The op for images of `positions` rows (what `#[task]` builds for
    /// `global_mean_pool(x, positions)`).
    pub fn new(positions: &usize) -> Self {
        GlobalMeanPool(*positions)
    }
}

impl GlobalMeanPool {
    fn apply<S: Real>(&self, x: &DMatrix<S>) -> DMatrix<S> {
        let p = self.0;
        assert!(
            p > 0 && x.nrows().is_multiple_of(p),
            "global_mean_pool: {} rows are not whole images of {p} positions",
            x.nrows()
        );
        let inv = S::from_f64(1.0 / p as f64);
        DMatrix::from_fn(x.nrows() / p, x.ncols(), |n, c| {
            let start = c * x.nrows() + n * p;
            let col = &x.as_slice()[start..start + p];
            col.iter().fold(S::zero(), |a, &v| a + v) * inv
        })
    }
}

impl<S: Real> Unary<GlobalMeanPool> for DMatrix<S> {
    type Out = DMatrix<S>;
    fn eval(&self, op: &GlobalMeanPool) -> DMatrix<S> {
        op.apply(self)
    }
    fn jvp(&self, op: &GlobalMeanPool, _out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
        op.apply(dx)
    }
    fn vjp(&self, op: &GlobalMeanPool, _out: &DMatrix<S>, g: DMatrix<S>) -> DMatrix<S> {
        let inv = S::from_f64(1.0 / op.0 as f64);
        let mut dx = DMatrix::<S>::zeros(self.nrows(), self.ncols());
        // Column by column, each image's positions get its cotangent over their count.
        for (dst, src) in dx
            .as_mut_slice()
            .chunks_exact_mut(op.0)
            .zip(g.as_slice().iter())
        {
            dst.fill(*src * inv);
        }
        dx
    }
}

/// The op of `im2col(x, &geometry)`: the receptive fields of every output position.
#[derive(Debug, Clone, Copy)]
pub struct Im2col<'a>(pub &'a Conv2dGeometry);

impl<'a> Im2col<'a> {
    /// The op for `geometry` (what `#[task]` builds for `im2col(x, &geometry)`).
    pub fn new(geometry: &'a Conv2dGeometry) -> Self {
        Im2col(geometry)
    }
}

impl<S: Real> Unary<Im2col<'_>> for DMatrix<S> {
    type Out = DMatrix<S>;
    fn eval(&self, op: &Im2col<'_>) -> DMatrix<S> {
        op.0.im2col(self)
    }
    fn jvp(&self, op: &Im2col<'_>, _out: &DMatrix<S>, dx: &DMatrix<S>) -> DMatrix<S> {
        op.0.im2col(dx)
    }
    fn vjp(&self, op: &Im2col<'_>, _out: &DMatrix<S>, g: DMatrix<S>) -> DMatrix<S> {
        let dx = op.0.col2im(&g);
        // The patch cotangent's buffer serves the next large product on this thread
        // (the next step's `G·Wᵀ`) instead of being returned to the system.
        recycle(Vec::from(g.data));
        dx
    }
}

/// The patches of `x` for a convolution of `geometry` (`jax.lax.conv_general_dilated`'s
/// input side): `im2col(x, &g) * w` is the convolution with the HWIO kernel `w` viewed as
/// a `kh·kw·C_in × C_out` matrix.
pub fn im2col<S: Real>(x: &DMatrix<S>, geometry: &Conv2dGeometry) -> DMatrix<S> {
    geometry.im2col(x)
}

/// Bytes of one block of patches in [`im2col_mul`](fn@im2col_mul): three quarters of this core's L2
/// (512 KiB), so that a block stays in cache between forming the patches and
/// multiplying them. Larger than half of L2 on purpose: each block's patch columns are
/// copied run by run, and longer runs (10 output lines of 16 rather than 5 at 576
/// patch columns) cost less per element; measured side by side on the 3×3 layers of
/// `Conv_Cifar10_32x64x64` (`cargo bench --bench primitives -- conv.`, process CPU time,
/// one thread, under load): 384 KiB ran them 5–20% faster than 192 KiB.
const BLOCK_BYTES: usize = 384 << 10;

/// At most this many chunks of images per convolution: the unit of work of the threads
/// and of the kernel gradient's partial sums. The chunks depend on the geometry only,
/// never on the number of threads, so results are the same on any number of them.
const MAX_CHUNKS: usize = 8;

/// A run of one patch column (offsets into the block's column) in
/// [`Conv2dGeometry::shifted_runs`].
#[derive(Clone)]
enum Span {
    /// Padding rows: zeros.
    Zero(std::ops::Range<usize>),
    /// Patch elements `.0` read the input elements `.1` of the channel's plane.
    Copy(std::ops::Range<usize>, std::ops::Range<usize>),
    /// One element whose input lies outside its image row: zero.
    Edge(usize),
}

/// A pointer shared by the threads of one convolution, each writing rows no other
/// touches.
#[derive(Clone, Copy)]
struct Shared<S>(*mut S);
// SAFETY: the threads write disjoint elements (rows of their own images) and the owner
// reads the buffer only after they have all joined.
unsafe impl<S: Send> Send for Shared<S> {}
unsafe impl<S: Send> Sync for Shared<S> {}

impl<S> Shared<S> {
    /// The pointer (a method, so that closures capture the whole `Shared`).
    fn at(self, offset: usize) -> *mut S {
        self.0.wrapping_add(offset)
    }
}

/// `s` as `f32`s (the caller has checked that `S` is `f32`).
fn f32s<S: 'static>(s: &[S]) -> &[f32] {
    assert_eq!(TypeId::of::<S>(), TypeId::of::<f32>());
    // SAFETY: `S` is `f32` (asserted).
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) }
}

/// `s` as `f32`s, mutable (the caller has checked that `S` is `f32`).
fn f32s_mut<S: 'static>(s: &mut [S]) -> &mut [f32] {
    assert_eq!(TypeId::of::<S>(), TypeId::of::<f32>());
    // SAFETY: `S` is `f32` (asserted).
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut f32, s.len()) }
}

/// `v` as a vector of `S` (the caller has checked that `S` is `f32`).
fn f32_into<S: 'static>(v: Vec<f32>) -> Vec<S> {
    assert_eq!(TypeId::of::<S>(), TypeId::of::<f32>());
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: `S` is `f32` (asserted): the same allocation, length and capacity.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut S, v.len(), v.capacity()) }
}

impl Conv2dGeometry {
    /// Output lines per block of patches (at least one); line `n·out_h + oh` holds the
    /// outputs of row `oh` of image `n`.
    fn block_lines<S>(&self) -> usize {
        let line = self.out_hw().1 * self.patch_len() * std::mem::size_of::<S>();
        (BLOCK_BYTES / line.max(1)).max(1)
    }

    /// The chunks of output lines, whole images each (see [`MAX_CHUNKS`]).
    fn chunks(&self) -> Vec<(usize, usize)> {
        let ho = self.out_hw().0;
        let per = self.batch.div_ceil(MAX_CHUNKS.min(self.batch));
        (0..self.batch)
            .step_by(per)
            .map(|n| (n * ho, (n + per).min(self.batch) * ho))
            .collect()
    }

    /// The patches of output lines `l0..l1` into `buf`: `(l1 − l0)·out_w` rows, one
    /// column per patch element, column-major (padding written as zeros).
    fn im2col_lines<S: Real>(&self, x: &[S], (l0, l1): (usize, usize), buf: &mut [S]) {
        if self.rows_follow_input() {
            let rows = (l1 - l0) * self.width;
            return self.shifted_runs((l0, l1), false, |col, c, span| {
                let dst_col = &mut buf[col * rows..(col + 1) * rows];
                let src = &x[c * self.in_rows()..(c + 1) * self.in_rows()];
                match span {
                    Span::Zero(r) => dst_col[r].fill(S::zero()),
                    Span::Copy(dst, from) => {
                        dst_col[dst].copy_from_slice(&src[from]);
                    }
                    Span::Edge(at) => dst_col[at] = S::zero(),
                }
            });
        }
        let (ho, wo) = self.out_hw();
        let (pt, pl) = self.pads();
        let (sh, sw) = self.stride;
        let (rows, rows_in) = ((l1 - l0) * wo, self.in_rows());
        for i in 0..self.kh {
            for j in 0..self.kw {
                let (lo, hi) = inside(wo, j, pl, sw, self.width);
                for c in 0..self.channels {
                    let col = (i * self.kw + j) * self.channels + c;
                    let dst_col = &mut buf[col * rows..(col + 1) * rows];
                    let src = &x[c * rows_in..(c + 1) * rows_in];
                    for (l, dst) in (l0..l1).zip(dst_col.chunks_exact_mut(wo)) {
                        let (n, oh) = (l / ho, l % ho);
                        let h = (oh * sh + i).wrapping_sub(pt);
                        if h >= self.height || lo == hi {
                            dst.fill(S::zero());
                            continue;
                        }
                        dst[..lo].fill(S::zero());
                        dst[hi..].fill(S::zero());
                        let start = (n * self.height + h) * self.width + lo * sw + j - pl;
                        let run = &mut dst[lo..hi];
                        if sw == 1 {
                            run.copy_from_slice(&src[start..start + run.len()]);
                        } else if sw == 2 && src.len() >= start + 2 * run.len() {
                            // Pairs, the first of each: a form the compiler turns into
                            // vector loads and shuffles (`step_by` stays a scalar loop).
                            let pairs = src[start..start + 2 * run.len()].chunks_exact(2);
                            for (d, s) in run.iter_mut().zip(pairs) {
                                *d = s[0];
                            }
                        } else {
                            for (d, s) in run.iter_mut().zip(src[start..].iter().step_by(sw)) {
                                *d = *s;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The transpose of [`im2col_lines`](Self::im2col_lines): adds the patch cotangents
    /// of output lines `l0..l1` (`buf`, laid out as the patches) into `dx` (column-major
    /// `in_rows × channels`).
    ///
    /// # Safety
    /// `dx` is valid for `in_rows · channels` elements, and no other thread touches the
    /// input rows of the images of lines `l0..l1` meanwhile.
    unsafe fn col2im_lines<S: Real>(&self, buf: &mut [S], (l0, l1): (usize, usize), dx: Shared<S>) {
        if self.rows_follow_input() {
            let rows = (l1 - l0) * self.width;
            return self.shifted_runs((l0, l1), true, |col, c, span| {
                let src_col = &mut buf[col * rows..(col + 1) * rows];
                match span {
                    Span::Zero(_) => {}
                    // An element read from outside its image row: it must not be added
                    // (the contiguous run below would add it to a neighbouring row).
                    Span::Edge(at) => src_col[at] = S::zero(),
                    Span::Copy(from, to) => {
                        let d = std::slice::from_raw_parts_mut(
                            dx.at(c * self.in_rows() + to.start),
                            to.len(),
                        );
                        d.iter_mut().zip(&src_col[from]).for_each(|(d, s)| *d += *s);
                    }
                }
            });
        }
        let (ho, wo) = self.out_hw();
        let (pt, pl) = self.pads();
        let (sh, sw) = self.stride;
        let (rows, rows_in) = ((l1 - l0) * wo, self.in_rows());
        for i in 0..self.kh {
            for j in 0..self.kw {
                let (lo, hi) = inside(wo, j, pl, sw, self.width);
                if lo == hi {
                    continue;
                }
                for c in 0..self.channels {
                    let col = (i * self.kw + j) * self.channels + c;
                    let src_col = &buf[col * rows..(col + 1) * rows];
                    let dst = dx.at(c * rows_in);
                    for (l, src) in (l0..l1).zip(src_col.chunks_exact(wo)) {
                        let (n, oh) = (l / ho, l % ho);
                        let h = (oh * sh + i).wrapping_sub(pt);
                        if h >= self.height {
                            continue;
                        }
                        let start = (n * self.height + h) * self.width + lo * sw + j - pl;
                        if sw == 1 {
                            let d = std::slice::from_raw_parts_mut(dst.add(start), hi - lo);
                            d.iter_mut().zip(&src[lo..hi]).for_each(|(d, s)| *d += *s);
                        } else {
                            for (t, s) in src[lo..hi].iter().enumerate() {
                                *dst.add(start + t * sw) += *s;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Whether output rows are input rows (stride 1 and as many outputs as inputs, as
    /// `SAME` at stride 1): then the patch column of window element `(i, j)` over a run of
    /// output lines is one contiguous run of the input, shifted, with the elements that
    /// fall outside their image row set to zero.
    fn rows_follow_input(&self) -> bool {
        self.stride == (1, 1) && self.out_hw() == (self.height, self.width)
    }

    /// For [`rows_follow_input`](Self::rows_follow_input) geometries: the runs making the
    /// patch columns of lines `l0..l1`, as `f(column, channel, span)` calls; each `Copy`
    /// comes before the `Edge`s inside it, or after them when `edges_first`. The runs of a
    /// window element are the same for every channel (only the plane differs): they are
    /// found once per element and replayed for each channel, channel by channel (the
    /// calls of one column keep their order; columns come in channel-major order).
    fn shifted_runs(
        &self,
        (l0, l1): (usize, usize),
        edges_first: bool,
        mut f: impl FnMut(usize, usize, Span),
    ) {
        let (ho, w) = (self.height, self.width);
        let (pt, pl) = self.pads();
        let image_len = (ho * w) as isize;
        // The runs of every window element, then the channels in the outer loop: the
        // few input lines a channel's window elements read stay in L1 across them.
        let mut taps: Vec<Vec<Span>> = Vec::with_capacity(self.kh * self.kw);
        for i in 0..self.kh {
            for j in 0..self.kw {
                let shift = j as isize - pl as isize;
                let mut spans: Vec<Span> = Vec::new();
                let mut l = l0;
                while l < l1 {
                    let n = l / ho;
                    let end = ((n + 1) * ho).min(l1);
                    // Lines of image n in the block: oh in a..b; valid where
                    // 0 <= oh + i - pt < H.
                    let (a, b) = (l - n * ho, end - n * ho);
                    let va = a.max(pt.saturating_sub(i)).min(b);
                    let vb = b.min((ho + pt).saturating_sub(i)).max(va);
                    let at = |oh: usize| (n * ho + oh - l0) * w;
                    if va > a {
                        spans.push(Span::Zero(at(a)..at(va)));
                    }
                    if vb < b {
                        spans.push(Span::Zero(at(vb)..at(b)));
                    }
                    if vb > va {
                        // Source of the first element: input row (n, va + i − pt),
                        // column `shift`; clipped to image n. The elements cut off are
                        // edges (zeros) anyway, and col2im must not even add a zero to
                        // another image's element: that image may be another thread's,
                        // and a read-modify-write racing its own loses its sum.
                        let s0 = ((n * ho + va + i - pt) * w) as isize + shift;
                        let len = ((vb - va) * w) as isize;
                        let image = (n * ho * w) as isize;
                        let lo = (image - s0).clamp(0, len);
                        let hi = (image + image_len - s0).clamp(lo, len);
                        let d0 = at(va) as isize;
                        let copy = Span::Copy(
                            (d0 + lo) as usize..(d0 + hi) as usize,
                            (s0 + lo) as usize..(s0 + hi) as usize,
                        );
                        let edges = |spans: &mut Vec<Span>| {
                            for oh in va..vb {
                                let row = at(oh);
                                let cols = if shift < 0 {
                                    0..(shift.unsigned_abs()).min(w)
                                } else {
                                    w.saturating_sub(shift as usize)..w
                                };
                                spans.extend(cols.map(|e| Span::Edge(row + e)));
                            }
                        };
                        if edges_first {
                            edges(&mut spans);
                            spans.push(copy);
                        } else {
                            spans.push(copy);
                            edges(&mut spans);
                        }
                    }
                    l = end;
                }
                taps.push(spans);
            }
        }
        for c in 0..self.channels {
            for (t, spans) in taps.iter().enumerate() {
                let col = t * self.channels + c;
                for span in spans {
                    f(col, c, span.clone());
                }
            }
        }
    }

    /// Calls `f(chunk index, lines)` for every chunk, in parallel when there are
    /// several and the thread pool has more than one thread.
    fn par_chunks(&self, f: impl Fn(usize, (usize, usize)) + Sync) {
        let chunks = self.chunks();
        if chunks.len() > 1 && rayon::current_num_threads() > 1 {
            use rayon::prelude::*;
            chunks.par_iter().enumerate().for_each(|(k, &c)| f(k, c));
        } else {
            for (k, &c) in chunks.iter().enumerate() {
                f(k, c);
            }
        }
    }

    /// Asks the caches for the input rows that output lines `l0..l1` read, in every
    /// channel (`x` column-major, one plane per channel), ahead of their use. The planes
    /// lie a whole image batch apart: forming a block of patches reads a few hundred
    /// bytes from each of them, more streams at once than the hardware prefetcher
    /// follows, and without this each of those reads waited on L3 or memory.
    fn prefetch_input<S>(&self, x: &[S], (l0, l1): (usize, usize)) {
        #[cfg(target_arch = "x86_64")]
        {
            let ho = self.out_hw().0;
            if l0 >= l1 || l1 > self.batch * ho {
                return;
            }
            let (sh, pt) = (self.stride.0, self.pads().0);
            let first = |l: usize| {
                let (n, oh) = (l / ho, l % ho);
                n * self.height + (oh * sh).saturating_sub(pt)
            };
            let last = |l: usize| {
                let (n, oh) = (l / ho, l % ho);
                n * self.height + (oh * sh + self.kh).saturating_sub(pt).min(self.height)
            };
            let (r0, r1) = (first(l0) * self.width, last(l1 - 1) * self.width);
            let step = (64 / std::mem::size_of::<S>()).max(1);
            let plane = self.in_rows();
            for c in 0..self.channels {
                let base = c * plane;
                for r in (r0..r1).step_by(step) {
                    if let Some(v) = x.get(base + r) {
                        // SAFETY: a prefetch is a hint; the address is of an element of
                        // `x` (checked above) and nothing is read or written.
                        unsafe {
                            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                            _mm_prefetch::<_MM_HINT_T0>(v as *const S as *const i8);
                        }
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (x, (l0, l1));
    }

    /// Splits lines `l0..l1` into the blocks of [`block_lines`](Self::block_lines).
    fn blocks<S>(&self, (l0, l1): (usize, usize)) -> impl Iterator<Item = (usize, usize)> {
        let step = self.block_lines::<S>();
        (l0..l1).step_by(step).map(move |l| (l, (l + step).min(l1)))
    }

    #[track_caller]
    fn check_kernel<S>(&self, w: &DMatrix<S>) {
        if w.nrows() != self.patch_len() {
            panic!(
                "conv2d: a kernel of shape {:?}, the geometry needs {} rows (kh·kw·C_in, HWIO): {self:?}",
                w.shape(),
                self.patch_len()
            );
        }
    }

    /// Whether [`thin`]'s kernels take the products of this convolution in `S`: `f32`,
    /// at most [`thin::MAX_K`] patch columns, a CPU with AVX2 and FMA.
    fn takes_thin<S: 'static>(&self) -> bool {
        TypeId::of::<S>() == TypeId::of::<f32>()
            && self.patch_len() <= thin::MAX_K
            && crate::kernels::cpu::has_avx2_fma()
    }

    /// [`im2col_lines`](Self::im2col_lines) for the thin path (`f32`): every window
    /// element's run along an output line is one [`thin::gather`] from the input row,
    /// padding included (the runs of the first layers are short, 14 or 16 outputs, and
    /// the general loop spends more on finding their ends than on copying them).
    fn im2col_thin(&self, x: &[f32], lines: (usize, usize), buf: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.out_hw().1 <= 16
            && self.stride.1 <= 2
            && crate::kernels::cpu::isa() == crate::kernels::cpu::Isa::Avx512
        {
            // SAFETY: the CPU has AVX-512F (just checked).
            return unsafe { thin::avx512::im2col_short(self, x, lines, buf) };
        }
        self.im2col_thin_with(x, lines, buf, thin::gather);
    }

    #[inline(always)]
    fn im2col_thin_with(
        &self,
        x: &[f32],
        (l0, l1): (usize, usize),
        buf: &mut [f32],
        gather: impl Fn(&[f32], isize, usize, &mut [f32]),
    ) {
        let (ho, wo) = self.out_hw();
        let (pt, pl) = self.pads();
        let (sh, sw) = self.stride;
        let (rows, rows_in, chans) = ((l1 - l0) * wo, self.in_rows(), self.channels);
        for l in l0..l1 {
            let (n, oh) = (l / ho, l % ho);
            let at = (l - l0) * wo;
            for i in 0..self.kh {
                let h = (oh * sh + i).wrapping_sub(pt);
                for c in 0..chans {
                    // A padding row (`h` wrapped below zero or past the image) has no
                    // index: it is never read.
                    let row = (h < self.height).then(|| {
                        let src = c * rows_in + (n * self.height + h) * self.width;
                        &x[src..src + self.width]
                    });
                    for j in 0..self.kw {
                        let d = ((i * self.kw + j) * chans + c) * rows + at;
                        let dst = &mut buf[d..d + wo];
                        match row {
                            Some(row) => gather(row, j as isize - pl as isize, sw, dst),
                            None => dst.fill(0.0),
                        }
                    }
                }
            }
        }
    }

    /// [`conv_blocked`](Self::conv_blocked) by [`thin::forward`]: `x` (`in_rows ×
    /// channels`) and `w` (`patch_len × n`) column-major; every output is written once
    /// (no zeroing pass).
    fn conv_thin(&self, x: &[f32], w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let (m, k) = (self.out_rows(), self.patch_len());
        let wo = self.out_hw().1;
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        let out = Shared(y.as_mut_ptr());
        self.par_chunks(|_, chunk| {
            let lines = self.block_lines::<f32>().min(chunk.1 - chunk.0);
            let mut patches = vec![0f32; lines * wo * k];
            for (l0, l1) in self.blocks::<f32>(chunk) {
                let rows = (l1 - l0) * wo;
                let p = &mut patches[..rows * k];
                self.im2col_thin(x, (l0, l1), p);
                self.prefetch_input(x, (l1, (2 * l1 - l0).min(chunk.1)));
                // SAFETY: the block's rows l0·wo.. of every channel of y (m apart) are
                // this block's alone and inside y's capacity; takes_thin checked the CPU.
                unsafe {
                    thin::forward(p, rows, w, n, out.at(l0 * wo), m);
                    if let Some(bias) = bias {
                        bias_relu_rows(out, m, l0 * wo, rows, bias);
                    }
                }
            }
        });
        // SAFETY: the chunks cover every line, so every element has been written.
        unsafe { y.set_len(m * n) };
        y
    }

    /// The convolution `im2col(x) · w` formed a block of patches at a time (no patch
    /// matrix is built); with `bias` (one per output channel), `relu(im2col(x)·w + b)`,
    /// applied to each block's outputs while they are in cache.
    fn conv_blocked<S: Real>(
        &self,
        x: &DMatrix<S>,
        w: &DMatrix<S>,
        bias: Option<&[S]>,
    ) -> DMatrix<S> {
        self.check_input(x);
        self.check_kernel(w);
        if let Some(b) = bias {
            assert_eq!(b.len(), w.ncols(), "conv2d: one bias per output channel");
        }
        if self.takes_thin::<S>() {
            let y = self.conv_thin(
                f32s(x.as_slice()),
                f32s(w.as_slice()),
                w.ncols(),
                bias.map(f32s),
            );
            return DMatrix::from_vec(self.out_rows(), w.ncols(), f32_into(y));
        }
        let (m, k, n) = (self.out_rows(), self.patch_len(), w.ncols());
        let wo = self.out_hw().1;
        // Uninitialized: each block's product writes its rows of every column (no
        // accumulation), and the blocks cover every line. A zero-fill here was a pass by
        // the calling thread alone for packets (`f32` and `f64` come zeroed from the
        // allocator).
        let mut y: Vec<S> = Vec::with_capacity(m * n);
        let out = Shared(y.as_mut_ptr());
        let wv = MatRef::col_major(w.as_slice(), k, n).expect("kernel shape checked");
        self.par_chunks(|_, chunk| {
            let lines = self.block_lines::<S>().min(chunk.1 - chunk.0);
            let mut patches = vec![S::zero(); lines * wo * k];
            for (l0, l1) in self.blocks::<S>(chunk) {
                let rows = (l1 - l0) * wo;
                let p = &mut patches[..rows * k];
                self.im2col_lines(x.as_slice(), (l0, l1), p);
                self.prefetch_input(x.as_slice(), (l1, (2 * l1 - l0).min(chunk.1)));
                let pv = MatRef::col_major(p, rows, k).expect("block shape");
                // SAFETY: the block's rows l0·wo.. of every column of y (m apart) are
                // this block's alone and inside y; the shapes agree.
                unsafe {
                    gemm_raw_ldc(pv, wv, out.at(l0 * wo), m, false);
                    if let Some(bias) = bias {
                        bias_relu_rows(out, m, l0 * wo, rows, bias);
                    }
                }
            }
        });
        // SAFETY: every block wrote all of its rows of every column (above), and the
        // chunks' blocks cover all `m` rows.
        unsafe { y.set_len(m * n) };
        DMatrix::from_vec(m, n, y)
    }
}

/// `y = relu(y + b[o])` on rows `r0..r0 + rows` of every column `o` of the column-major
/// `y` (`m` rows): `AddRelu`'s value (`relu(v)` is 0 where `v ≤ 0`, NaN passes).
///
/// # Safety
/// `y` holds `b.len()` columns of `m` rows, these rows of which are the caller's alone.
unsafe fn bias_relu_rows<S: Real>(y: Shared<S>, m: usize, r0: usize, rows: usize, b: &[S]) {
    let z = S::zero();
    for (o, &bo) in b.iter().enumerate() {
        // SAFETY: rows r0..r0 + rows of column o (the contract).
        let col = unsafe { std::slice::from_raw_parts_mut(y.at(o * m + r0), rows) };
        for v in col {
            let t = *v + bo;
            *v = S::select(t.le(z), z, t);
        }
    }
}

impl Conv2dGeometry {
    /// The cotangents of `x` (`col2im(G·Wᵀ)`) and `w` (`im2col(x)ᵀ·G`) of the product
    /// `im2col(x)·w`, each when `needs` asks for it, block by block over chunks of images
    /// on the thread pool. With `relu = Some((z, need_b))`, `gy` is the cotangent of
    /// `z = relu(im2col(x)·w + b)` and `G = gy ∘ [z > 0]` (`AddRelu`'s mask) is taken
    /// block by block as `G` is copied; with `need_b`, also the bias's cotangent, the
    /// column sums of `G` (per chunk, then added in chunk order: the same on any number
    /// of threads).
    #[allow(clippy::type_complexity)]
    fn conv_vjp<S: Real>(
        &self,
        x: &DMatrix<S>,
        w: &DMatrix<S>,
        [need_x, need_w]: [bool; 2],
        gy: &DMatrix<S>,
        relu: Option<(&DMatrix<S>, bool)>,
    ) -> (Option<DMatrix<S>>, Option<DMatrix<S>>, Option<Vec<S>>) {
        let g = self;
        let (m, k, n) = (g.out_rows(), g.patch_len(), w.ncols());
        assert_eq!(
            gy.shape(),
            (m, n),
            "conv2d: a cotangent of the wrong shape for {g:?}"
        );
        if let Some((z, _)) = relu {
            assert_eq!(z.shape(), (m, n), "conv2d: a value of the wrong shape");
        }
        let need_b = relu.is_some_and(|r| r.1);
        let wo = g.out_hw().1;
        let chunks = g.chunks();
        // Uninitialized: each chunk zeroes its own images' rows before adding into them,
        // on its thread (a zero-fill here was a pass by the calling thread alone for
        // packets), and the chunks cover every image.
        let mut dx: Vec<S> = Vec::with_capacity(if need_x { g.in_rows() * g.channels } else { 0 });
        let dx_ptr = Shared(dx.as_mut_ptr());
        let mut partial = if need_w {
            vec![S::zero(); chunks.len() * k * n]
        } else {
            Vec::new()
        };
        let dw_ptr = Shared(partial.as_mut_ptr());
        let mut partial_b = vec![S::zero(); if need_b { chunks.len() * n } else { 0 }];
        let db_ptr = Shared(partial_b.as_mut_ptr());
        let wv = MatRef::col_major(w.as_slice(), k, n).expect("kernel shape");
        let gs = gy.as_slice();
        let zs = relu.map(|r| r.0.as_slice());
        let thin = g.takes_thin::<S>();
        g.par_chunks(|ci, chunk| {
            if need_x {
                let (ho, img) = (g.out_hw().0, g.height * g.width);
                let (i0, i1) = (chunk.0 / ho * img, chunk.1 / ho * img);
                for c in 0..g.channels {
                    // SAFETY: rows i0..i1 of channel c are this chunk's images' alone,
                    // inside dx's capacity of in_rows·channels (not yet initialized).
                    let rows = unsafe {
                        std::slice::from_raw_parts_mut(
                            dx_ptr.at(c * g.in_rows() + i0) as *mut std::mem::MaybeUninit<S>,
                            i1 - i0,
                        )
                    };
                    rows.fill(std::mem::MaybeUninit::new(S::zero()));
                }
            }
            let lines = g.block_lines::<S>().min(chunk.1 - chunk.0);
            let mut buf = vec![S::zero(); lines * wo * k];
            // Filled by copies block by block (no pass of zeros first).
            let mut gbuf: Vec<S> = Vec::with_capacity(lines * wo * n);
            // SAFETY: chunk ci's partial sum is its own k·n elements of `partial`.
            let dw = need_w
                .then(|| unsafe { std::slice::from_raw_parts_mut(dw_ptr.at(ci * k * n), k * n) });
            let mut dw = dw;
            // SAFETY: chunk ci's bias sums are its own n elements of `partial_b`.
            let mut db =
                need_b.then(|| unsafe { std::slice::from_raw_parts_mut(db_ptr.at(ci * n), n) });
            // The thin kernels' lane sums of the chunk's dWᵀ.
            let mut lanes = vec![0f32; if thin && need_w { k * n * thin::L } else { 0 }];
            for (l0, l1) in g.blocks::<S>(chunk) {
                let rows = (l1 - l0) * wo;
                let p = &mut buf[..rows * k];
                if need_w && thin {
                    g.im2col_thin(f32s(x.as_slice()), (l0, l1), f32s_mut(p));
                    g.prefetch_input(x.as_slice(), (l1, (2 * l1 - l0).min(chunk.1)));
                } else if need_w {
                    g.im2col_lines(x.as_slice(), (l0, l1), p);
                    g.prefetch_input(x.as_slice(), (l1, (2 * l1 - l0).min(chunk.1)));
                }
                let block = |c: usize| c * m + l0 * wo..c * m + l0 * wo + rows;
                if let Some(zs) = zs {
                    // G = gy ∘ [z > 0], the block's rows, contiguous.
                    let zero = S::zero();
                    gbuf.clear();
                    for c in 0..n {
                        let (gc, zc) = (&gs[block(c)], &zs[block(c)]);
                        gbuf.extend(
                            gc.iter()
                                .zip(zc)
                                .map(|(&t, &y)| S::select(y.gt(zero), t, zero)),
                        );
                    }
                    if let Some(db) = db.as_deref_mut() {
                        for (d, s) in db
                            .iter_mut()
                            .zip(super::reduce::column_sums(&gbuf, (rows, n)))
                        {
                            *d += s;
                        }
                    }
                }
                if thin && need_w {
                    // The block's rows of each channel of G: in place, or the masked copy.
                    let gb: Vec<&[f32]> = match zs {
                        Some(_) => f32s(&gbuf).chunks_exact(rows.max(1)).take(n).collect(),
                        None => (0..n).map(|c| &f32s(gs)[block(c)]).collect(),
                    };
                    // SAFETY: takes_thin checked the CPU.
                    unsafe { thin::kernel_grad(f32s(&*p), rows, &gb, &mut lanes) };
                }
                if thin && !need_x {
                    continue;
                }
                if zs.is_none() {
                    // The block's rows of G, contiguous: read in place, its columns lie
                    // a whole G apart and fall on the same cache sets.
                    gbuf.clear();
                    for c in 0..n {
                        gbuf.extend_from_slice(&gs[block(c)]);
                    }
                }
                let gb = MatRef::col_major(&gbuf, rows, n).expect("block of G");
                if let (false, Some(dw)) = (thin, dw.as_deref_mut()) {
                    let pv = MatRef::col_major(&*p, rows, k).expect("block shape");
                    // dWᵀ += Gᵀ·P: the kernel packs (transposes) the block of G, C_out
                    // columns, rather than the block of patches, kh·kw·C_in of them;
                    // every element is the same chain of multiply-adds as in Pᵀ·G.
                    gemm(gb.t(), pv, dw, true).expect("block shapes agree");
                }
                if need_x {
                    gemm(gb, wv.t(), p, false).expect("block shapes agree");
                    // SAFETY: the chunk's images are its own; dx holds in_rows·channels.
                    unsafe { g.col2im_lines(p, (l0, l1), dx_ptr) };
                }
            }
            if let (true, Some(dw)) = (thin, dw) {
                // The chunk's dWᵀ: each element's lanes summed in order.
                for (d, l) in f32s_mut(dw).iter_mut().zip(lanes.chunks_exact(thin::L)) {
                    *d = l.iter().sum();
                }
            }
        });
        let dw = need_w.then(|| {
            let mut parts = partial.chunks_exact(k * n);
            let mut sum = parts.next().expect("one chunk at least").to_vec();
            for part in parts {
                sum.iter_mut().zip(part).for_each(|(s, &v)| *s += v);
            }
            // The partial sums hold dWᵀ (C_out × kh·kw·C_in).
            DMatrix::from_vec(n, k, sum).transpose()
        });
        let db = need_b.then(|| {
            let mut parts = partial_b.chunks_exact(n.max(1));
            let mut sum = parts.next().map_or_else(Vec::new, <[S]>::to_vec);
            for part in parts {
                sum.iter_mut().zip(part).for_each(|(s, &v)| *s += v);
            }
            sum
        });
        let dx = need_x.then(|| {
            // SAFETY: every chunk zeroed its images' rows of every channel (then added
            // into them), and the chunks cover every image.
            unsafe { dx.set_len(g.in_rows() * g.channels) };
            DMatrix::from_vec(g.in_rows(), g.channels, dx)
        });
        (dx, dw, db)
    }
}

/// Which arguments of [`im2col_mul()`] need a cotangent: `[x, w]`.
pub type Needs = [bool; 2];

/// `im2col(x, g) · w` in one rule: the convolution of NHWC activations `x` with the HWIO
/// kernel `w` (`jax.lax.conv_general_dilated`), what `#[task]` makes of
/// `im2col(x, &g) * w`. It forms the patches a block of output rows at a time in a
/// cache-sized buffer and multiplies each block at once, so no patch matrix exists; the
/// reverse rule forms each block again for `dW = Pᵀ·G` and turns `G·Wᵀ` into the input's
/// cotangent block by block. Images are split into chunks (a function of the geometry
/// alone) that run on the thread pool.
///
/// `needs` says which arguments are differentiated (the reverse rule skips the others'
/// products).
///
/// # Panics
/// When `x` or `w` does not fit the geometry (the message names the shapes).
pub fn im2col_mul<S: Real>(
    x: &DMatrix<S>,
    w: &DMatrix<S>,
    g: &Conv2dGeometry,
    needs: &Needs,
) -> DMatrix<S> {
    let _ = needs;
    g.conv_blocked(x, w, None)
}

/// The rules of [`im2col_mul()`] (the convention of `#[differentiable]` functions).
pub mod im2col_mul {
    use super::*;

    /// The value and its tangent `conv(dx, w) + conv(x, dw)`.
    #[allow(clippy::too_many_arguments)]
    pub fn jvp<S: Real>(
        x: &DMatrix<S>,
        w: &DMatrix<S>,
        g: &Conv2dGeometry,
        _needs: &Needs,
        dx: Option<&DMatrix<S>>,
        dw: Option<&DMatrix<S>>,
        _dg: Option<&Conv2dGeometry>,
        _dn: Option<&Needs>,
    ) -> (DMatrix<S>, DMatrix<S>) {
        let y = g.conv_blocked(x, w, None);
        let mut t = match dx {
            Some(dx) => g.conv_blocked(dx, w, None),
            None => DMatrix::zeros(y.nrows(), y.ncols()),
        };
        if let Some(dw) = dw {
            t += g.conv_blocked(x, dw, None);
        }
        (y, t)
    }

    /// The cotangents of `x` (`col2im(G·Wᵀ)`) and `w` (`im2col(x)ᵀ·G`), each only when
    /// `needs` asks for it.
    #[allow(clippy::type_complexity)]
    pub fn vjp<S: Real>(
        x: &DMatrix<S>,
        w: &DMatrix<S>,
        g: &Conv2dGeometry,
        needs: &Needs,
        gy: &DMatrix<S>,
    ) -> (
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
        Option<Conv2dGeometry>,
        Option<Needs>,
    ) {
        let [need_x, need_w] = *needs;
        let (dx, dw, _) = g.conv_vjp(x, w, [need_x, need_w], gy, None);
        (dx, dw, None, None)
    }
}

/// Which arguments of [`im2col_mul_add_relu()`] need a cotangent: `[x, w, b]`.
pub type NeedsBias = [bool; 3];

/// A bias of [`im2col_mul_add_relu()`]: what `relu(im2col(x, g) * w + b)` may add (as
/// `AddRelu` does): a column or row vector with one entry per output channel, a scalar,
/// or a whole matrix.
pub trait ConvBias<S: Real>: Sized {
    /// One value per output channel (`n` of them), or `None` (a whole matrix, or a vector
    /// of another length: the rule then composes the product with `AddRelu`, which
    /// adds it or names the shapes).
    fn per_channel(&self, n: usize) -> Option<std::borrow::Cow<'_, [S]>>;
    /// The cotangent of this bias from that of `relu`'s argument: `sums` (the column
    /// sums of it) when [`per_channel`](Self::per_channel) is `Some`, else all of it.
    fn cotangent(&self, sums: Vec<S>, full: DMatrix<S>) -> Self;
}

impl<S: Real> ConvBias<S> for S {
    fn per_channel(&self, n: usize) -> Option<std::borrow::Cow<'_, [S]>> {
        Some(vec![*self; n].into())
    }
    fn cotangent(&self, sums: Vec<S>, _full: DMatrix<S>) -> Self {
        sums.into_iter().fold(S::zero(), |a, v| a + v)
    }
}

impl<S: Real> ConvBias<S> for nalgebra::DVector<S> {
    fn per_channel(&self, n: usize) -> Option<std::borrow::Cow<'_, [S]>> {
        (self.len() == n).then(|| self.as_slice().into())
    }
    fn cotangent(&self, sums: Vec<S>, _full: DMatrix<S>) -> Self {
        nalgebra::DVector::from_vec(sums)
    }
}

impl<S: Real> ConvBias<S> for nalgebra::RowDVector<S> {
    fn per_channel(&self, n: usize) -> Option<std::borrow::Cow<'_, [S]>> {
        (self.len() == n).then(|| self.as_slice().into())
    }
    fn cotangent(&self, sums: Vec<S>, _full: DMatrix<S>) -> Self {
        nalgebra::RowDVector::from_vec(sums)
    }
}

impl<S: Real> ConvBias<S> for DMatrix<S> {
    fn per_channel(&self, _n: usize) -> Option<std::borrow::Cow<'_, [S]>> {
        None
    }
    fn cotangent(&self, _sums: Vec<S>, full: DMatrix<S>) -> Self {
        full
    }
}

/// `relu(im2col(x, g) · w + b)` in one rule: what `#[task]` makes of
/// `relu(im2col(x, &g) * w + b)`, a convolution layer with its bias and ReLU. Each block
/// of the product gets its bias and ReLU while it is in cache (no pass over the output
/// for them), and the reverse rule takes the ReLU's mask and the bias's cotangent (the
/// column sums) in its own pass over the cotangent, block by block. The values are
/// `AddRelu`'s of [`im2col_mul()`]'s.
///
/// # Panics
/// When `x`, `w` or `b` does not fit the geometry (the message names the shapes).
pub fn im2col_mul_add_relu<S: Real, B: ConvBias<S>>(
    x: &DMatrix<S>,
    w: &DMatrix<S>,
    b: &B,
    g: &Conv2dGeometry,
    needs: &NeedsBias,
) -> DMatrix<S>
where
    DMatrix<S>: crate::ad::Binary<op::AddRelu, B, Out = DMatrix<S>>,
{
    let _ = needs;
    match b.per_channel(w.ncols()) {
        Some(bias) => g.conv_blocked(x, w, Some(&bias)),
        None => crate::ad::Binary::<op::AddRelu, B>::eval(&g.conv_blocked(x, w, None), b),
    }
}

/// The rules of [`im2col_mul_add_relu()`] (the convention of `#[differentiable]`
/// functions, the reverse rule also taking the value `z`).
pub mod im2col_mul_add_relu {
    use super::*;

    /// The value and its tangent: `AddRelu`'s of the product's.
    #[allow(clippy::too_many_arguments)]
    pub fn jvp<S: Real, B: ConvBias<S>>(
        x: &DMatrix<S>,
        w: &DMatrix<S>,
        b: &B,
        g: &Conv2dGeometry,
        needs: &NeedsBias,
        dx: Option<&DMatrix<S>>,
        dw: Option<&DMatrix<S>>,
        db: Option<&B>,
        _dg: Option<&Conv2dGeometry>,
        _dn: Option<&NeedsBias>,
    ) -> (DMatrix<S>, DMatrix<S>)
    where
        DMatrix<S>: crate::ad::Binary<op::AddRelu, B, Out = DMatrix<S>>,
    {
        let [nx, nw, _] = *needs;
        let (y, t) = super::im2col_mul::jvp(x, w, g, &[nx, nw], dx, dw, None, None);
        let z = crate::ad::Binary::<op::AddRelu, B>::eval(&y, b);
        let t = crate::ad::Binary::<op::AddRelu, B>::jvp(&y, b, &z, Some(&t), db);
        (z, t)
    }

    /// The cotangents of `x`, `w` and `b` (each only when `needs` asks for it) given the
    /// value `z` and its cotangent `gz`: those of the product for `gz ∘ [z > 0]`
    /// (`AddRelu`'s mask), and the bias's sums of it.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    pub fn vjp<S: Real, B: ConvBias<S>>(
        x: &DMatrix<S>,
        w: &DMatrix<S>,
        b: &B,
        g: &Conv2dGeometry,
        needs: &NeedsBias,
        z: &DMatrix<S>,
        gz: &DMatrix<S>,
    ) -> (
        Option<DMatrix<S>>,
        Option<DMatrix<S>>,
        Option<B>,
        Option<Conv2dGeometry>,
        Option<NeedsBias>,
    ) {
        let [nx, nw, nb] = *needs;
        if b.per_channel(w.ncols()).is_some() {
            let (dx, dw, sums) = g.conv_vjp(x, w, [nx, nw], gz, Some((z, nb)));
            let db = sums.map(|s| b.cotangent(s, DMatrix::zeros(0, 0)));
            return (dx, dw, db, None, None);
        }
        // A whole matrix: its cotangent is the masked one.
        let zero = S::zero();
        let masked = DMatrix::from_iterator(
            z.nrows(),
            z.ncols(),
            gz.iter()
                .zip(z.iter())
                .map(|(&t, &y)| S::select(y.gt(zero), t, zero)),
        );
        let (dx, dw, _) = g.conv_vjp(x, w, [nx, nw], &masked, None);
        let db = nb.then(|| b.cotangent(Vec::new(), masked));
        (dx, dw, db, None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use crate::lanes::Lanes;

    /// A convolution written directly from its definition (`jax.lax.conv` with NHWC /
    /// HWIO and explicit pads), in f64, independent of the patches code.
    fn naive_conv(x: &[f64], w: &[f64], g: &Conv2dGeometry, cout: usize) -> Vec<f64> {
        // TensorFlow's rule, from its documentation: SAME gives ceil(in / s) outputs and
        // pads max((out − 1)·s + k − in, 0) zeros, the smaller half before.
        let tf = |input: usize, k: usize, s: usize| match g.padding {
            Padding::Same => {
                let out = input.div_ceil(s);
                let total = ((out - 1) * s + k).max(input) - input;
                (out, total / 2)
            }
            Padding::Valid => ((input - k) / s + 1, 0),
        };
        let ((ho, pt), (wo, pl)) = (
            tf(g.height, g.kh, g.stride.0),
            tf(g.width, g.kw, g.stride.1),
        );
        assert_eq!((ho, wo), g.out_hw());
        let mut y = vec![0.0; g.batch * ho * wo * cout];
        for n in 0..g.batch {
            for oh in 0..ho {
                for ow in 0..wo {
                    for o in 0..cout {
                        let mut s = 0.0;
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let h = (oh * g.stride.0 + i) as isize - pt as isize;
                                let ww = (ow * g.stride.1 + j) as isize - pl as isize;
                                if h < 0
                                    || ww < 0
                                    || h >= g.height as isize
                                    || ww >= g.width as isize
                                {
                                    continue;
                                }
                                for c in 0..g.channels {
                                    // x NHWC, w HWIO, both row-major.
                                    let xv = x[((n * g.height + h as usize) * g.width
                                        + ww as usize)
                                        * g.channels
                                        + c];
                                    let wv = w[((i * g.kw + j) * g.channels + c) * cout + o];
                                    s += xv * wv;
                                }
                            }
                        }
                        y[((n * ho + oh) * wo + ow) * cout + o] = s;
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

    fn geometries() -> Vec<Conv2dGeometry> {
        let g = |b, h, w, c, k: (usize, usize), s, p| {
            Conv2dGeometry::new((b, h, w, c), k, s, p).unwrap()
        };
        vec![
            g(2, 6, 6, 3, (3, 3), (2, 2), Padding::Same), // 0 before, 1 after
            g(1, 7, 5, 2, (3, 3), (2, 2), Padding::Same), // odd sizes: 1 and 1
            g(2, 5, 5, 2, (3, 3), (1, 1), Padding::Same),
            g(1, 6, 7, 3, (3, 2), (1, 2), Padding::Valid),
            g(1, 4, 4, 1, (1, 1), (1, 1), Padding::Valid),
            g(2, 5, 6, 2, (5, 4), (2, 3), Padding::Same), // pads wider than a stride
            g(1, 3, 2, 1, (5, 5), (1, 1), Padding::Same), // windows wider than the image
        ]
    }

    #[test]
    fn same_padding_follows_tensorflow() {
        let g = Conv2dGeometry::new((1, 32, 32, 3), (3, 3), (2, 2), Padding::Same).unwrap();
        assert_eq!((g.out_hw(), g.pads()), ((16, 16), (0, 0)));
        let g = Conv2dGeometry::new((1, 28, 28, 1), (3, 3), (1, 1), Padding::Same).unwrap();
        assert_eq!((g.out_hw(), g.pads()), ((28, 28), (1, 1)));
        let g = Conv2dGeometry::new((1, 7, 7, 1), (3, 3), (2, 2), Padding::Valid).unwrap();
        assert_eq!(g.out_hw(), (3, 3));
        assert!(Conv2dGeometry::new((1, 2, 2, 1), (3, 3), (1, 1), Padding::Valid).is_err());
        assert!(Conv2dGeometry::new((1, 2, 2, 1), (1, 1), (0, 1), Padding::Same).is_err());
    }

    /// `im2col(x)·w` against the definition, for SAME (asymmetric at stride 2) and VALID.
    /// A mutation that pads symmetrically at stride 2 fails the first geometry; so do
    /// (tried) the first valid output of a window row rounded down instead of up, and
    /// one output too many read at its end.
    #[test]
    fn patches_times_kernel_is_the_convolution() {
        for (k, g) in geometries().into_iter().enumerate() {
            let cout = 4;
            let x = normals(g.in_rows() * g.channels, 10 + k as u64);
            let w = normals(g.patch_len() * cout, 20 + k as u64);
            // Matrix layouts: x rows (n,h,w) x channels; w rows (i,j,c) x cout.
            let xm = DMatrix::from_fn(g.in_rows(), g.channels, |r, c| x[r * g.channels + c]);
            let wm = DMatrix::from_fn(g.patch_len(), cout, |r, c| w[r * cout + c]);
            let y = g.im2col(&xm) * &wm;
            let want = naive_conv(&x, &w, &g, cout);
            for r in 0..g.out_rows() {
                for o in 0..cout {
                    assert!(
                        (y[(r, o)] - want[r * cout + o]).abs() < 1e-12,
                        "{g:?} {r} {o}"
                    );
                }
            }
        }
    }

    /// The reverse rule is the adjoint of the forward one: ⟨col2im(u), t⟩ = ⟨u, im2col(t)⟩.
    /// Mutation tried: col2im adding a run contiguously at a horizontal stride of 2 fails.
    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        for (k, g) in geometries().into_iter().enumerate() {
            let t = DMatrix::from_vec(
                g.in_rows(),
                g.channels,
                normals(g.in_rows() * g.channels, k as u64),
            );
            let u = DMatrix::from_vec(
                g.out_rows(),
                g.patch_len(),
                normals(g.out_rows() * g.patch_len(), 99 + k as u64),
            );
            let lhs = g.col2im(&u).dot(&t);
            let rhs = u.dot(&g.im2col(&t));
            assert!(
                (lhs - rhs).abs() < 1e-10 * (1.0 + lhs.abs()),
                "{g:?}: {lhs} vs {rhs}"
            );
            // And the Unary rules say the same.
            let op = Im2col(&g);
            let out = t.eval(&op);
            assert_eq!(t.jvp(&op, &out, &t), out);
            assert_eq!(t.vjp(&op, &out, u.clone()), g.col2im(&u));
        }
    }

    /// Each lane of a packed im2col is the lane's own f32 im2col, bit for bit (a copy).
    #[test]
    fn lanes_gather_as_their_instances() {
        let g = geometries()[0];
        let lanes: Vec<DMatrix<f32>> = (0..8)
            .map(|l| {
                DMatrix::from_vec(
                    g.in_rows(),
                    g.channels,
                    normals(g.in_rows() * g.channels, l)
                        .iter()
                        .map(|&v| v as f32)
                        .collect(),
                )
            })
            .collect();
        let packed = DMatrix::<Lanes<8>>::from_fn(g.in_rows(), g.channels, |r, c| {
            Lanes::from_lanes(|l| lanes[l][(r, c)] as f64)
        });
        let out = g.im2col(&packed);
        for (l, x) in lanes.iter().enumerate() {
            let want = g.im2col(x);
            for (a, b) in out.iter().zip(want.iter()) {
                assert_eq!(a.lane(l) as f32, *b);
            }
        }
    }

    /// Average pooling of one channel written from haiku's definition (sum of the window
    /// inside the image over the count of such elements), max pooling likewise.
    fn naive_pool(x: &[f64], g: &Conv2dGeometry, max: bool) -> Vec<f64> {
        let (ho, wo) = g.out_hw();
        let (pt, pl) = g.pads();
        let mut y = Vec::new();
        for c in 0..g.channels {
            for n in 0..g.batch {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let (mut s, mut k, mut m) = (0.0, 0.0, f64::NEG_INFINITY);
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let h = (oh * g.stride.0 + i) as isize - pt as isize;
                                let w = (ow * g.stride.1 + j) as isize - pl as isize;
                                if h >= 0 && w >= 0 && h < g.height as isize && w < g.width as isize
                                {
                                    let v = x[c * g.in_rows()
                                        + (n * g.height + h as usize) * g.width
                                        + w as usize];
                                    s += v;
                                    k += 1.0;
                                    m = m.max(v);
                                }
                            }
                        }
                        y.push(if max { m } else { s / k });
                    }
                }
            }
        }
        y
    }

    /// Pools against their definitions, and their rules against f64 central differences
    /// of those definitions (independent of the rules) and the adjoint identity.
    #[test]
    fn pools_match_their_definitions_and_differentiate() {
        for (k, g) in geometries().into_iter().enumerate() {
            let xv = normals(g.in_rows() * g.channels, 40 + k as u64);
            let x = DMatrix::from_vec(g.in_rows(), g.channels, xv.clone());
            let u = DMatrix::from_vec(
                g.out_rows(),
                g.channels,
                normals(g.out_rows() * g.channels, 50 + k as u64),
            );
            for max in [false, true] {
                let (y, dx_rev) = if max {
                    let op = MaxPool2d(&g);
                    let y = x.eval(&op);
                    let d = x.vjp(&op, &y, u.clone());
                    (y, d)
                } else {
                    let op = AvgPool2d(&g);
                    let y = x.eval(&op);
                    let d = x.vjp(&op, &y, u.clone());
                    (y, d)
                };
                let want = naive_pool(&xv, &g, max);
                assert!(
                    y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12),
                    "{g:?} max={max}"
                );
                // ⟨u, pool(x)⟩ by central differences of the definition.
                let f = |x: &[f64]| {
                    naive_pool(x, &g, max)
                        .iter()
                        .zip(u.iter())
                        .map(|(a, b)| a * b)
                        .sum::<f64>()
                };
                for i in (0..xv.len()).step_by(3) {
                    let (mut a, mut b) = (xv.clone(), xv.clone());
                    a[i] += 1e-6;
                    b[i] -= 1e-6;
                    let fd = (f(&a) - f(&b)) / 2e-6;
                    assert!(
                        (dx_rev.as_slice()[i] - fd).abs() < 1e-6,
                        "{g:?} max={max} element {i}: {} vs {fd}",
                        dx_rev.as_slice()[i]
                    );
                }
            }
        }
        let x = DMatrix::from_vec(6, 2, normals(12, 7));
        let op = GlobalMeanPool(3);
        let y = x.eval(&op);
        assert!((y[(1, 0)] - (x[(3, 0)] + x[(4, 0)] + x[(5, 0)]) / 3.0).abs() < 1e-15);
        let u = DMatrix::from_vec(2, 2, normals(4, 8));
        let t = DMatrix::from_vec(6, 2, normals(12, 9));
        assert!((x.vjp(&op, &y, u.clone()).dot(&t) - u.dot(&x.jvp(&op, &y, &t))).abs() < 1e-12);
    }

    /// Geometries whose chunks hold several images and whose blocks split an image
    /// (at stride 1 and at stride 2 with SAME's asymmetric pad), besides the small ones.
    fn blocked_geometries() -> Vec<Conv2dGeometry> {
        let g =
            |b, h, c, s| Conv2dGeometry::new((b, h, h, c), (3, 3), (s, s), Padding::Same).unwrap();
        let mut v = vec![g(9, 20, 16, 1), g(3, 30, 32, 2)];
        // Check the premise: several blocks per image, several images per chunk.
        assert!(v[0].block_lines::<f64>() < v[0].out_hw().0);
        assert!(v[1].block_lines::<f64>() < v[1].out_hw().0);
        assert!(v[0].chunks().len() > 1 && v[0].chunks()[0].1 > v[0].out_hw().0);
        v.extend(geometries());
        v
    }

    /// The chunks of one convolution add into `dx` on several threads at once, each
    /// trusting that no other touches its images: `col2im_lines` must not so much as add a
    /// zero to another image's element (a read-modify-write racing the owner's, which
    /// loses the owner's sum: seen once on CI as a wrong kernel gradient). Every element
    /// outside the lines' images starts as −0.0, which any write (even `+= 0.0`) turns
    /// into +0.0. Mutation: the shifted runs clipped to the channel's plane instead of
    /// the image (the code before this test): fails.
    #[test]
    fn col2im_lines_write_only_their_own_images() {
        for g in blocked_geometries() {
            let (ho, wo) = g.out_hw();
            let img = g.height * g.width;
            for n in 0..g.batch {
                for (l0, l1) in [(n * ho, (n + 1) * ho), (n * ho, n * ho + 1)] {
                    let rows = (l1 - l0) * wo;
                    let mut buf = normals(rows * g.patch_len(), 500 + n as u64);
                    let mut dx = vec![-0.0f64; g.in_rows() * g.channels];
                    // SAFETY: dx holds in_rows·channels elements; one thread.
                    unsafe { g.col2im_lines(&mut buf, (l0, l1), Shared(dx.as_mut_ptr())) };
                    for (i, v) in dx.iter().enumerate() {
                        let image = (i % g.in_rows()) / img;
                        if image != n {
                            assert!(
                                v.to_bits() == (-0.0f64).to_bits(),
                                "{g:?} lines {l0}..{l1}: wrote {v} into image {image}'s \
                                 element {i}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The fused `im2col(x)·w` against the convolution's definition, and its reverse
    /// rule against the patches' rules (`col2im(G·Wᵀ)`, `im2col(x)ᵀ·G`, themselves tested
    /// above) in f64. Mutations tried, each fails: the last (partial) block of a chunk
    /// dropped; a chunk's partial kernel gradient left out of the sum; `col2im_lines`
    /// adding at stride 1 when the stride is 2; the shifted runs' edge elements not
    /// zeroed in im2col, or zeroed after (not before) their run is added in col2im; the
    /// shifted runs' channel-major replay writing column `c·taps + t` instead of
    /// `t·channels + c`; the kernel gradient's partial sums (dWᵀ) read back without the
    /// transpose.
    #[test]
    fn fused_convolution_matches_the_definition_and_the_patch_rules() {
        for (k, g) in blocked_geometries().into_iter().enumerate() {
            let cout = 5;
            let xv = normals(g.in_rows() * g.channels, 300 + k as u64);
            let wv = normals(g.patch_len() * cout, 400 + k as u64);
            let x = DMatrix::from_fn(g.in_rows(), g.channels, |r, c| xv[r * g.channels + c]);
            let w = DMatrix::from_fn(g.patch_len(), cout, |r, c| wv[r * cout + c]);
            let y = im2col_mul(&x, &w, &g, &[true, true]);
            let want = naive_conv(&xv, &wv, &g, cout);
            for r in 0..g.out_rows() {
                for o in 0..cout {
                    assert!(
                        (y[(r, o)] - want[r * cout + o]).abs() < 1e-12,
                        "{g:?} {r} {o}"
                    );
                }
            }
            let gy = DMatrix::from_vec(
                g.out_rows(),
                cout,
                normals(g.out_rows() * cout, 500 + k as u64),
            );
            let p = g.im2col(&x);
            let (dx, dw, _, _) = im2col_mul::vjp(&x, &w, &g, &[true, true], &gy);
            let (dx, dw) = (dx.unwrap(), dw.unwrap());
            let want_dx = g.col2im(&(&gy * w.transpose()));
            let want_dw = p.transpose() * &gy;
            assert!((&dx - &want_dx).abs().max() < 1e-11, "{g:?} dx");
            assert!((&dw - &want_dw).abs().max() < 1e-11, "{g:?} dw");
            // Only what is asked for is made, and it is the same.
            let (dx2, dw2, _, _) = im2col_mul::vjp(&x, &w, &g, &[false, true], &gy);
            assert!(dx2.is_none() && dw2.as_ref() == Some(&dw));
            let (dx3, dw3, _, _) = im2col_mul::vjp(&x, &w, &g, &[true, false], &gy);
            assert!(dw3.is_none() && dx3.as_ref() == Some(&dx));
            // The forward rule: conv(tx, w) + conv(x, tw), and the adjoint identity
            // ⟨vjp(u), t⟩ = ⟨u, jvp(t)⟩.
            let tx = DMatrix::from_vec(x.nrows(), x.ncols(), normals(x.len(), 600 + k as u64));
            let tw = DMatrix::from_vec(w.nrows(), w.ncols(), normals(w.len(), 700 + k as u64));
            let (y2, t) =
                im2col_mul::jvp(&x, &w, &g, &[true, true], Some(&tx), Some(&tw), None, None);
            assert_eq!(y2, y);
            let want_t = g.im2col(&tx) * &w + &p * &tw;
            assert!((&t - &want_t).abs().max() < 1e-11, "{g:?} jvp");
            let lhs = dx.dot(&tx) + dw.dot(&tw);
            let rhs = gy.dot(&t);
            assert!(
                (lhs - rhs).abs() < 1e-10 * (1.0 + lhs.abs()),
                "{g:?}: {lhs} vs {rhs}"
            );
        }
    }

    /// Each lane of the fused convolution on `Lanes<8>`, built from the eight `(x, w)`
    /// instances, is its instance's own `f32` convolution to `tol` (relative, plus one).
    fn assert_lanes_are_instances(
        inst: &[(DMatrix<f32>, DMatrix<f32>)],
        g: &Conv2dGeometry,
        tol: f32,
    ) {
        let cout = inst[0].1.ncols();
        let px = DMatrix::<Lanes<8>>::from_fn(g.in_rows(), g.channels, |r, c| {
            Lanes::from_lanes(|l| inst[l].0[(r, c)] as f64)
        });
        let pw = DMatrix::<Lanes<8>>::from_fn(g.patch_len(), cout, |r, c| {
            Lanes::from_lanes(|l| inst[l].1[(r, c)] as f64)
        });
        let y = im2col_mul(&px, &pw, g, &[true, true]);
        for (l, (x, w)) in inst.iter().enumerate() {
            let want = im2col_mul(x, w, g, &[true, true]);
            for (a, b) in y.iter().zip(want.iter()) {
                assert!((a.lane(l) as f32 - b).abs() <= tol * (1.0 + b.abs()));
            }
        }
    }

    /// Each lane of the fused convolution on `Lanes<8>` is the lane's own `f32`
    /// convolution (to f32 rounding: the two take different products), and the result
    /// is the same on one thread as on the pool (the chunks do not depend on the threads).
    /// Mutation tried: chunks made from `rayon::current_num_threads()` fails the second
    /// check.
    #[test]
    fn fused_convolution_lanes_and_threads() {
        let g = blocked_geometries()[1];
        let cout = 4;
        let inst: Vec<(DMatrix<f32>, DMatrix<f32>)> = (0..8)
            .map(|l| {
                let x = normals(g.in_rows() * g.channels, 800 + l);
                let w = normals(g.patch_len() * cout, 900 + l);
                (
                    DMatrix::from_iterator(g.in_rows(), g.channels, x.iter().map(|&v| v as f32)),
                    DMatrix::from_iterator(g.patch_len(), cout, w.iter().map(|&v| v as f32 / 12.0)),
                )
            })
            .collect();
        assert_lanes_are_instances(&inst, &g, 1e-5);
        let (x, w) = &inst[0];
        let gy = DMatrix::from_fn(g.out_rows(), cout, |r, c| ((r * 7 + c) % 5) as f32 - 2.0);
        let one = crate::on_threads(1, || im2col_mul::vjp(x, w, &g, &[true, true], &gy));
        let three = crate::on_threads(3, || im2col_mul::vjp(x, w, &g, &[true, true], &gy));
        assert_eq!(one.0, three.0);
        assert_eq!(one.1, three.1);
    }

    /// `im2col_mul_add_relu` is `AddRelu` of `im2col_mul`, on the thin path (`f32`, few
    /// patch columns), the blocked GEMM path (`f32` with many, and `f64`), for every kind
    /// of bias (column and row vectors, a scalar, a whole matrix): the value bit for bit;
    /// the cotangents of `x` and `w` bit for bit with `im2col_mul`'s of the masked
    /// cotangent (the same products of the same values); the bias's within rounding of
    /// `AddRelu`'s (other partial sums); the tangent bit for bit; and the same on 1 and 3
    /// threads. Mutations tried, each fails here: the mask taken from `gy` instead of
    /// `z`; the bias and ReLU left off the blocks after the first of a chunk.
    #[test]
    fn conv_add_relu_is_the_composition() {
        use crate::params::Params;
        fn check<S: Real, B: ConvBias<S> + Params<Scalar = S> + std::fmt::Debug + PartialEq>(
            g: &Conv2dGeometry,
            x: &DMatrix<S>,
            w: &DMatrix<S>,
            b: &B,
            tol: f64,
        ) where
            DMatrix<S>: crate::ad::Binary<op::AddRelu, B, Out = DMatrix<S>>,
        {
            let n = w.ncols();
            let needs = [true, true, true];
            let y = im2col_mul(x, w, g, &[true, true]);
            let want = crate::ad::Binary::<op::AddRelu, B>::eval(&y, b);
            let run = || im2col_mul_add_relu(x, w, b, g, &needs);
            let z = crate::on_threads(1, run);
            assert!(
                z.iter().zip(want.iter()).all(|(a, b)| a == b),
                "value {g:?}"
            );
            assert_eq!(z, crate::on_threads(3, run));
            // Some outputs are cut by the ReLU, some pass (the mask is exercised).
            assert!(z.iter().any(|&v| v.lane(0) == 0.0) && z.iter().any(|&v| v.lane(0) > 0.0));
            let gz = DMatrix::from_fn(z.nrows(), n, |r, c| {
                S::c(((r * 7 + c * 3) % 5) as f64 - 1.5)
            });
            let back = || im2col_mul_add_relu::vjp(x, w, b, g, &needs, &z, &gz);
            let (dx, dw, db, _, _) = crate::on_threads(1, back);
            let three = crate::on_threads(3, back);
            assert_eq!(
                (&dx, &dw, &db),
                (&three.0, &three.1, &three.2),
                "threads {g:?}"
            );
            let (ga, gb) =
                crate::ad::Binary::<op::AddRelu, B>::vjp(&y, b, &z, gz.clone(), true, true);
            let ga = ga.unwrap();
            let (wx, ww, _, _) = im2col_mul::vjp(x, w, g, &[true, true], &ga);
            assert_eq!(dx, wx, "dx {g:?}");
            assert_eq!(dw, ww, "dw {g:?}");
            let (db, gb) = (db.unwrap().flatten(), gb.unwrap().flatten());
            assert_eq!(db.len(), gb.len());
            let bound = tol * z.len() as f64;
            assert!(
                db.iter()
                    .zip(&gb)
                    .all(|(a, b)| (a.lane(0) - b.lane(0)).abs() <= bound),
                "db {g:?}: {db:?} vs {gb:?}"
            );
            let (dx, dw) = (x.map(|v| v * S::c(0.5)), w.map(|v| -v));
            let (zt, t) = im2col_mul_add_relu::jvp(
                x,
                w,
                b,
                g,
                &needs,
                Some(&dx),
                Some(&dw),
                Some(b),
                None,
                None,
            );
            let (yt, ty) =
                im2col_mul::jvp(x, w, g, &[true, true], Some(&dx), Some(&dw), None, None);
            assert_eq!(zt, crate::ad::Binary::<op::AddRelu, B>::eval(&yt, b));
            assert_eq!(
                t,
                crate::ad::Binary::<op::AddRelu, B>::jvp(&yt, b, &zt, Some(&ty), Some(b))
            );
        }
        let thin = thin_geometries();
        let geoms = [
            thin[0],
            thin[3],
            thin[11],
            blocked_geometries()[0],
            blocked_geometries()[1],
        ];
        for (i, g) in geoms.iter().enumerate() {
            let n = if i < 3 { 32 } else { 5 };
            let xs = normals(g.in_rows() * g.channels, 40 + i as u64);
            let ws = normals(g.patch_len() * n, 50 + i as u64);
            let x = DMatrix::from_iterator(g.in_rows(), g.channels, xs.iter().map(|&v| v as f32));
            let scale = 1.0 / (g.patch_len() as f64).sqrt();
            let w =
                DMatrix::from_iterator(g.patch_len(), n, ws.iter().map(|&v| (v * scale) as f32));
            let bias = nalgebra::DVector::from_fn(n, |c, _| 0.1 * c as f32 - 0.2);
            check(g, &x, &w, &bias, 1e-6);
            check(g, &x, &w, &bias.transpose(), 1e-6);
            check(g, &x, &w, &0.05f32, 1e-6);
            let full = DMatrix::from_fn(g.out_rows(), n, |r, c| ((r + c) % 3) as f32 * 0.1 - 0.1);
            check(g, &x, &w, &full, 0.0);
            let (x, w) = (x.map(f64::from), w.map(f64::from));
            check(g, &x, &w, &bias.map(f64::from), 1e-14);
        }
    }

    /// Geometries the thin `f32` path takes (`kh·kw·C_in` ≤ 32): the first layers' (1 and
    /// 3 channels, 3×3, SAME at stride 2 with its pad after), odd sizes (a pad on each
    /// side), stride 1, VALID, lines wider than 16 outputs and a horizontal stride of 3
    /// (the portable gather), windows wider than the image, and a chunk split into
    /// several blocks (the lane sums carried across them).
    fn thin_geometries() -> Vec<Conv2dGeometry> {
        let g = |b, h, w, c, k: (usize, usize), s, p| {
            Conv2dGeometry::new((b, h, w, c), k, s, p).unwrap()
        };
        let v = vec![
            g(5, 28, 28, 1, (3, 3), (2, 2), Padding::Same),
            g(3, 32, 32, 3, (3, 3), (2, 2), Padding::Same),
            g(2, 7, 9, 3, (3, 3), (2, 2), Padding::Same),
            g(3, 9, 11, 1, (3, 3), (1, 1), Padding::Same),
            g(2, 10, 13, 3, (3, 3), (1, 1), Padding::Valid),
            g(2, 11, 11, 1, (3, 3), (2, 2), Padding::Valid),
            g(1, 5, 40, 1, (3, 3), (1, 1), Padding::Same),
            g(2, 13, 17, 1, (5, 5), (3, 2), Padding::Same),
            g(2, 12, 12, 3, (3, 2), (2, 3), Padding::Same),
            g(1, 3, 2, 1, (5, 5), (1, 1), Padding::Same),
            g(3, 6, 6, 2, (2, 2), (2, 2), Padding::Valid),
            g(4, 100, 40, 3, (3, 3), (1, 1), Padding::Same),
        ];
        // Check the premises: every one is thin enough for the thin path (which it takes
        // where the CPU has AVX2 and FMA: elsewhere, as under `LOPT_MAX_ISA=portable`,
        // the tests still check the general path and the portable gather), and the last
        // one's chunks hold more than one block.
        assert!(v.iter().all(|g| g.patch_len() <= thin::MAX_K));
        if crate::kernels::cpu::has_avx2_fma() {
            assert!(v.iter().all(|g| g.takes_thin::<f32>()));
        }
        let last = v[v.len() - 1];
        assert!(last.block_lines::<f32>() < last.chunks()[0].1 - last.chunks()[0].0);
        v
    }

    /// The thin `f32` path of the fused rule against the convolution's definition and
    /// the patch rules evaluated in f64 on the same inputs: the value, the kernel
    /// gradient alone (the first layer's case: the input is data), both cotangents, the
    /// tangent, and the adjoint identity. Bounds: f32 rounding of each sum, relative to
    /// the sum of its terms' magnitudes. Mutations tried, each fails this test and the two
    /// below: a padding offset one too large in `im2col_short`, a patch column written at
    /// the wrong window element (`(j·kh + i)` for `(i·kw + j)`).
    #[test]
    fn thin_convolution_matches_the_definition() {
        for (k, g) in thin_geometries().into_iter().enumerate() {
            let cout = if k % 2 == 0 { 33 } else { 5 };
            let f = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
            let x = DMatrix::from_vec(
                g.in_rows(),
                g.channels,
                f(normals(g.in_rows() * g.channels, 1000 + k as u64)),
            );
            let w = DMatrix::from_vec(
                g.patch_len(),
                cout,
                f(normals(g.patch_len() * cout, 1100 + k as u64)),
            );
            let gy = DMatrix::from_vec(
                g.out_rows(),
                cout,
                f(normals(g.out_rows() * cout, 1200 + k as u64)),
            );
            let to64 = |m: &DMatrix<f32>| m.map(f64::from);
            let (x64, w64, gy64) = (to64(&x), to64(&w), to64(&gy));
            let p64 = g.im2col(&x64);
            // The definition, and its magnitudes for the bounds.
            let xv: Vec<f64> = (0..x64.len())
                .map(|i| x64[(i / g.channels, i % g.channels)])
                .collect();
            let wv: Vec<f64> = (0..w64.len()).map(|i| w64[(i / cout, i % cout)]).collect();
            let want = naive_conv(&xv, &wv, &g, cout);
            let mag = p64.abs() * w64.abs();
            let y = im2col_mul(&x, &w, &g, &[false, true]);
            for r in 0..g.out_rows() {
                for o in 0..cout {
                    let e = (y[(r, o)] as f64 - want[r * cout + o]).abs();
                    assert!(e <= 1e-6 * (1.0 + mag[(r, o)]), "{g:?} y {r} {o}: {e}");
                }
            }
            let close = |a: &DMatrix<f32>, b: &DMatrix<f64>, m: &DMatrix<f64>, what: &str| {
                for ((a, b), m) in a.iter().zip(b.iter()).zip(m.iter()) {
                    let e = (*a as f64 - b).abs();
                    assert!(e <= 1e-5 * (1.0 + m), "{g:?} {what}: {a} vs {b}");
                }
            };
            let want_dw = p64.transpose() * &gy64;
            let mag_dw = p64.abs().transpose() * gy64.abs();
            let want_dx = g.col2im(&(&gy64 * w64.transpose()));
            let mag_dx = g.col2im(&(gy64.abs() * w64.abs().transpose()));
            let (none, dw, _, _) = im2col_mul::vjp(&x, &w, &g, &[false, true], &gy);
            assert!(none.is_none());
            let dw = dw.unwrap();
            close(&dw, &want_dw, &mag_dw, "dw");
            let (dx2, dw2, _, _) = im2col_mul::vjp(&x, &w, &g, &[true, true], &gy);
            assert_eq!(dw2.as_ref(), Some(&dw));
            let dx2 = dx2.unwrap();
            close(&dx2, &want_dx, &mag_dx, "dx");
            // The tangent (x, w both moving) and the adjoint identity.
            let tx = DMatrix::from_vec(x.nrows(), x.ncols(), f(normals(x.len(), 1300)));
            let tw = DMatrix::from_vec(w.nrows(), w.ncols(), f(normals(w.len(), 1400)));
            let (y2, t) =
                im2col_mul::jvp(&x, &w, &g, &[true, true], Some(&tx), Some(&tw), None, None);
            assert_eq!(y2, y);
            let (tx64, tw64) = (to64(&tx), to64(&tw));
            let want_t = g.im2col(&tx64) * &w64 + &p64 * &tw64;
            let mag_t = g.im2col(&tx64).abs() * w64.abs() + p64.abs() * tw64.abs();
            close(&t, &want_t, &mag_t, "jvp");
            let lhs = to64(&dx2).dot(&tx64) + to64(&dw).dot(&tw64);
            let rhs = gy64.dot(&to64(&t));
            let scale = mag_dx.dot(&tx64.abs()) + mag_dw.dot(&tw64.abs());
            assert!(
                (lhs - rhs).abs() <= 1e-5 * (1.0 + scale),
                "{g:?}: {lhs} vs {rhs}"
            );
        }
    }

    /// The thin path's patches (`im2col_thin`, on AVX-512 `im2col_short` where lines fit
    /// a register, else the portable gather) are the general `im2col_lines`', bit for
    /// bit, block by block (the buffers start as NaN, so an element left unwritten fails).
    #[test]
    fn thin_patches_are_the_general_patches() {
        for (k, g) in thin_geometries().into_iter().enumerate() {
            let x: Vec<f32> = normals(g.in_rows() * g.channels, 1500 + k as u64)
                .into_iter()
                .map(|v| v as f32)
                .collect();
            let k_len = g.patch_len();
            for chunk in g.chunks() {
                for (l0, l1) in g.blocks::<f32>(chunk) {
                    let rows = (l1 - l0) * g.out_hw().1;
                    let mut want = vec![f32::NAN; rows * k_len];
                    g.im2col_lines(&x, (l0, l1), &mut want);
                    for portable in [false, true] {
                        let mut got = vec![f32::NAN; rows * k_len];
                        if portable {
                            g.im2col_thin_with(&x, (l0, l1), &mut got, thin::gather);
                        } else {
                            g.im2col_thin(&x, (l0, l1), &mut got);
                        }
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{g:?} lines {l0}..{l1} portable={portable}");
                    }
                }
            }
        }
    }

    /// The thin path's results are the same on one thread as on three (its chunks and
    /// the order of its sums depend on the geometry alone), and each lane of the rule on
    /// `Lanes<8>` (the general path) is its instance's thin `f32` result to rounding.
    #[test]
    fn thin_convolution_threads_and_lanes() {
        for g in [thin_geometries()[0], thin_geometries()[11]] {
            let cout = 32;
            let inst: Vec<(DMatrix<f32>, DMatrix<f32>)> = (0..8)
                .map(|l| {
                    let x = normals(g.in_rows() * g.channels, 1600 + l);
                    let w = normals(g.patch_len() * cout, 1700 + l);
                    (
                        DMatrix::from_iterator(
                            g.in_rows(),
                            g.channels,
                            x.iter().map(|&v| v as f32),
                        ),
                        DMatrix::from_iterator(g.patch_len(), cout, w.iter().map(|&v| v as f32)),
                    )
                })
                .collect();
            let (x, w) = &inst[0];
            let gy = DMatrix::from_fn(g.out_rows(), cout, |r, c| ((r * 7 + c) % 5) as f32 - 2.0);
            let run = || {
                let y = im2col_mul(x, w, &g, &[false, true]);
                (y, im2col_mul::vjp(x, w, &g, &[true, true], &gy))
            };
            let one = crate::on_threads(1, run);
            let three = crate::on_threads(3, run);
            assert_eq!(one.0, three.0);
            assert_eq!(one.1 .0, three.1 .0);
            assert_eq!(one.1 .1, three.1 .1);
            assert_lanes_are_instances(&inst, &g, 1e-4);
        }
    }

    #[test]
    #[should_panic(expected = "batch·height·width rows")]
    fn wrong_activation_shape_panics_with_the_shapes() {
        let g = geometries()[0];
        g.im2col(&DMatrix::<f32>::zeros(3, 3));
    }
}
