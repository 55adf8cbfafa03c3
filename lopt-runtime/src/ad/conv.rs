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

use nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::kernels::alloc::{recycle, zeroed};
use crate::scalar::Real;

use super::Unary;

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
        DMatrix::from_fn(self.nrows(), self.ncols(), |r, c| g[(r / op.0, c)] * inv)
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

    #[test]
    #[should_panic(expected = "batch·height·width rows")]
    fn wrong_activation_shape_panics_with_the_shapes() {
        let g = geometries()[0];
        g.im2col(&DMatrix::<f32>::zeros(3, 3));
    }
}
