//! Convolutional image classifiers (the JAX library's `tasks/fixed/conv.py`), and the
//! family of them of `tasks/parametric/image_conv.py` (`ParametricImageConv`).
//!
//! The network is the library's `_cross_entropy_pool_loss(hidden, relu)`: 3×3
//! convolutions (`hk.Conv2D`, NHWC, HWIO kernels, `SAME` padding, a bias per channel) with
//! stride 2 for the first and 1 for the others, each followed by ReLU; then the mean over
//! the image positions (`jnp.mean(net, [1, 2])`), a linear layer to the classes, and the
//! batch mean of the softmax cross-entropy. `SAME` at stride 2 on an even size pads 0
//! before and 1 after, as XLA does. Initialization is haiku's: every kernel and the head
//! `~ 1/√fan_in` times a normal truncated at ±2 **without** variance correction
//! (fan_in = 9·C_in for a kernel), biases 0. The normalizer is
//! `clip(L, 0, 1.5 ln K)` (NaN → `1.5 ln K`, see
//! [`normalize_cross_entropy`](super::image_mlp::normalize_cross_entropy)).
//!
//! Activations are matrices of one row per pixel (`n·H·W + h·W + w`) and one column per
//! channel ([`pixel_rows`] turns an [`ImageBatch`] into that layout); a kernel
//! `[3, 3, C_in, C_out]` is the matrix of `9·C_in` rows, row `(i·3 + j)·C_in + c`, so a
//! convolution is `im2col(x, &geometry) * w + b` (see `lopt::ad::conv`; `#[task]` makes
//! `im2col(x, &g) * w` one rule that never builds the patch matrix).
//!
//! Depth is part of the type (the parameter structure is fixed per type):
//! [`ConvTask<2>`] has parameters [`Conv2`], [`ConvTask<3>`] has [`Conv3`].
//!
//! | constructor | data | layers | parameters |
//! |---|---|---|---|
//! | [`Conv_Cifar10_8_16x32`] | CIFAR-10 resized to 8×8×3 | 16, 32 | 5,418 |
//! | [`Conv_Cifar10_16_32x64x64`] | CIFAR-10 resized to 16×16×3 | 32, 64, 64 | 56,970 |
//! | [`Conv_Cifar10_32x64x64`] | CIFAR-10 32×32×3 | 32, 64, 64 | 56,970 |
//! | [`Conv_FashionMnist8_16x32`] | Fashion-MNIST resized to 8×8×1 | 16, 32 | 5,130 |
//! | [`Conv_FashionMnist16_32x64x64`] | Fashion-MNIST resized to 16×16×1 | 32, 64, 64 | 56,394 |
//! | [`Conv_FashionMnist28_32x64x64`] | Fashion-MNIST 28×28×1 | 32, 64, 64 | 56,394 |
//!
//! All with batch 128 and 10 classes; the counts equal the JAX library's (haiku's
//! parameters of the same network on the same input shape).
//!
//! ```
//! use lopt::prelude::*;
//! use lopt::tasks::conv::{Conv2, ConvTask};
//! use lopt::datasets::digits_datasets;
//!
//! // The 16x32 network on the embedded 8×8 digits (no download needed).
//! let task = ConvTask::<2>::new(digits_datasets(32)?, (8, 8, 1), vec![16, 32])?;
//! let params: Conv2<f32> = task.init(Key::new(0));
//! assert_eq!(params.num_elements(), 5_130);
//! let batch = task.datasets().unwrap().train()?;
//! let (loss, grad) = task.value_and_grad(&params, Key::new(1), &batch);
//! assert!(loss > 1.0 && loss < 4.0); // about ln 10 at initialization
//! assert_eq!(grad.w1.shape(), (9, 16));
//! # Ok::<(), lopt::Error>(())
//! ```

use std::path::Path;

use nalgebra::{DMatrix, DVector};

use crate::ad::conv::{Conv2dGeometry, Padding};
use crate::datasets::{cifar10_datasets, fashion_mnist_datasets, Datasets, ImageBatch};
use crate::eval_training::Aux;
use crate::params::Rebind;
use crate::prelude::{differentiable, task, task_family, Params};
use crate::tasks::image_mlp::{accuracy, check_image_batch, init_weight, normalize_lanes};
use crate::{Error, Key, Real, Result, Task, TaskFamily};

/// Parameters of a conv net with two convolutions: kernels `w1 [9·C, h1]`,
/// `w2 [9·h1, h2]`, head `w3 [h2, K]`, and their biases. `strides` (not a parameter)
/// records the convolutions' strides for [`ConvParams::logits`].
#[derive(Params, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conv2<S: Real> {
    /// First kernel, HWIO as `[9·C_in, h1]`.
    pub w1: DMatrix<S>,
    /// First bias, `[h1]`.
    pub b1: DVector<S>,
    /// Second kernel, `[9·h1, h2]`.
    pub w2: DMatrix<S>,
    /// Second bias, `[h2]`.
    pub b2: DVector<S>,
    /// Head weights, `[h2, classes]`.
    pub w3: DMatrix<S>,
    /// Head bias, `[classes]`.
    pub b3: DVector<S>,
    /// The strides of the two convolutions (structure, not trained).
    #[params(skip)]
    pub strides: Vec<usize>,
}

/// Parameters of a conv net with three convolutions (`w1..w3`, `b1..b3`) and a head
/// (`w4`, `b4`); shapes as in [`Conv2`].
#[derive(Params, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Conv3<S: Real> {
    /// First kernel, `[9·C_in, h1]`.
    pub w1: DMatrix<S>,
    /// First bias.
    pub b1: DVector<S>,
    /// Second kernel, `[9·h1, h2]`.
    pub w2: DMatrix<S>,
    /// Second bias.
    pub b2: DVector<S>,
    /// Third kernel, `[9·h2, h3]`.
    pub w3: DMatrix<S>,
    /// Third bias.
    pub b3: DVector<S>,
    /// Head weights, `[h3, classes]`.
    pub w4: DMatrix<S>,
    /// Head bias.
    pub b4: DVector<S>,
    /// The strides of the three convolutions (structure, not trained).
    #[params(skip)]
    pub strides: Vec<usize>,
}

/// The layout of activations the convolutions read: one row per pixel
/// (`n·H·W + h·W + w`), one column per channel, from an image batch's one row per
/// example (columns `(h·W + w)·C + c`).
///
/// # Panics
/// When `channels` is 0 or does not divide the number of columns.
pub fn pixel_rows(image: &DMatrix<f32>, channels: usize) -> DMatrix<f32> {
    let (b, cols) = image.shape();
    assert!(
        channels > 0 && cols.is_multiple_of(channels),
        "pixel_rows: {cols} columns are not whole pixels of {channels} channels"
    );
    let hw = cols / channels;
    let src = image.as_slice();
    let mut out = DMatrix::<f32>::zeros(b * hw, channels);
    let dst = out.as_mut_slice();
    for c in 0..channels {
        for p in 0..hw {
            let col = &src[(p * channels + c) * b..(p * channels + c + 1) * b];
            for (n, &v) in col.iter().enumerate() {
                dst[c * b * hw + n * hw + p] = v;
            }
        }
    }
    out
}

/// The geometries of 3×3 `SAME` convolutions with `strides` over `batch` images of
/// `(height, width, channels)`, whose layers have `hidden` output channels; and the
/// number of positions of the last layer's output per image.
fn conv_geometries(
    batch: usize,
    (height, width, channels): (usize, usize, usize),
    hidden: &[usize],
    strides: &[usize],
) -> (Vec<Conv2dGeometry>, usize) {
    let (mut h, mut w, mut c) = (height, width, channels);
    let mut out = Vec::with_capacity(hidden.len());
    for (&co, &s) in hidden.iter().zip(strides) {
        let g = Conv2dGeometry::new((batch, h, w, c), (3, 3), (s, s), Padding::Same)
            .expect("sizes checked at construction");
        (h, w) = g.out_hw();
        c = co;
        out.push(g);
    }
    (out, h * w)
}

/// Conv net parameters that can classify a batch: a plain `f32` forward pass for metrics
/// such as accuracy (training uses the generated code of the task instead).
pub trait ConvParams: Params<Scalar = f32> {
    /// The logits of `batch`, one row per example (the batch carries the image size).
    ///
    /// # Panics
    /// When the batch's channels do not match the first kernel.
    fn logits(&self, batch: &ImageBatch) -> DMatrix<f32>;
}

/// The forward pass of convolutions `layers` (kernel, bias) with `strides`, ReLU, mean
/// pool and the head, in `f32`.
fn conv_logits(
    layers: &[(&DMatrix<f32>, &DVector<f32>)],
    head: (&DMatrix<f32>, &DVector<f32>),
    strides: &[usize],
    batch: &ImageBatch,
) -> DMatrix<f32> {
    let hidden: Vec<usize> = layers.iter().map(|(w, _)| w.ncols()).collect();
    let shape = (batch.height, batch.width, batch.channels);
    let (gs, positions) = conv_geometries(batch.batch_size(), shape, &hidden, strides);
    let mut x = pixel_rows(&batch.image, batch.channels);
    for (g, (w, b)) in gs.iter().zip(layers) {
        let mut y = g.im2col(&x) * *w;
        for (mut col, &bj) in y.column_iter_mut().zip(b.iter()) {
            col.iter_mut()
                .for_each(|v| *v = if *v + bj < 0.0 { 0.0 } else { *v + bj });
        }
        x = y;
    }
    let n = batch.batch_size();
    let pooled = DMatrix::from_fn(n, x.ncols(), |i, c| {
        x.view((i * positions, c), (positions, 1)).sum() / positions as f32
    });
    let mut logits = pooled * head.0;
    for (mut col, &bj) in logits.column_iter_mut().zip(head.1.iter()) {
        col.iter_mut().for_each(|v| *v += bj);
    }
    logits
}

impl ConvParams for Conv2<f32> {
    fn logits(&self, batch: &ImageBatch) -> DMatrix<f32> {
        conv_logits(
            &[(&self.w1, &self.b1), (&self.w2, &self.b2)],
            (&self.w3, &self.b3),
            &self.strides,
            batch,
        )
    }
}

impl ConvParams for Conv3<f32> {
    fn logits(&self, batch: &ImageBatch) -> DMatrix<f32> {
        conv_logits(
            &[
                (&self.w1, &self.b1),
                (&self.w2, &self.b2),
                (&self.w3, &self.b3),
            ],
            (&self.w4, &self.b4),
            &self.strides,
            batch,
        )
    }
}

/// The accuracy of conv net parameters on an image batch, as an [`Aux`] metric named
/// `accuracy` for training curves.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvAccuracy;

impl<P: ConvParams> Aux<P, ImageBatch> for ConvAccuracy {
    fn names(&self) -> Vec<String> {
        vec!["accuracy".into()]
    }
    fn eval(&self, params: &P, batch: &ImageBatch) -> Vec<f64> {
        vec![accuracy(&params.logits(batch), &batch.label).unwrap_or(f64::NAN)]
    }
}

/// Kernels and head in `f32` for `hidden` channels on `channels` inputs: layer `i` from
/// `key.fold_in(i)`, std `scale/√fan_in`, biases 0.
fn init_conv_layers(
    key: Key,
    channels: usize,
    hidden: &[usize],
    num_classes: usize,
    scale: f32,
) -> Vec<(DMatrix<f32>, DVector<f32>)> {
    let mut c = channels;
    let mut out = Vec::with_capacity(hidden.len() + 1);
    for (i, &h) in hidden.iter().enumerate() {
        out.push((
            init_weight(key.fold_in(i as u64), 9 * c, h, scale),
            DVector::zeros(h),
        ));
        c = h;
    }
    // haiku's default init for the head (the family's `w_init` applies to the convs only).
    let head_scale = 1.0;
    out.push((
        init_weight(key.fold_in(hidden.len() as u64), c, num_classes, head_scale),
        DVector::zeros(num_classes),
    ));
    out
}

/// Checks image shape and class count of a conv task or family.
fn check_conv_config(
    datasets: &Datasets<ImageBatch>,
    (h, w, c): (usize, usize, usize),
    hidden: &[usize],
    depth: usize,
) -> Result<usize> {
    if hidden.len() != depth || hidden.contains(&0) || h == 0 || w == 0 || c == 0 {
        return Err(Error::InvalidArgument(format!(
            "a conv net of {depth} layers needs {depth} positive channel counts and a \
             positive image size; got hidden {hidden:?}, image {h}x{w}x{c}"
        )));
    }
    match datasets.extra_info().num_classes {
        Some(k) if k >= 2 => Ok(k),
        other => Err(Error::InvalidArgument(format!(
            "conv net datasets must declare num_classes >= 2 in extra_info, got {other:?}"
        ))),
    }
}

/// A conv net classifier with `DEPTH` convolutions (the JAX library's `_ConvTask` over
/// `_cross_entropy_pool_loss(hidden, relu)`). See the [module docs](self).
///
/// Implemented as a [`Task`] for `DEPTH` = 2 (parameters [`Conv2`]) and 3 ([`Conv3`]).
#[derive(Debug, Clone)]
pub struct ConvTask<const DEPTH: usize> {
    datasets: Datasets<ImageBatch>,
    image: (usize, usize, usize),
    hidden: Vec<usize>,
    strides: Vec<usize>,
    num_classes: usize,
    name: String,
}

impl<const DEPTH: usize> ConvTask<DEPTH> {
    /// A conv net with `hidden` output channels per convolution (exactly `DEPTH`) on
    /// `datasets` of images `(height, width, channels)`, whose `extra_info.num_classes`
    /// gives the classes. Strides 2, 1, 1, …
    ///
    /// Errors: [`Error::InvalidArgument`] for a wrong number of or a zero channel count,
    /// a zero image size, or datasets without at least two classes.
    pub fn new(
        datasets: Datasets<ImageBatch>,
        image: (usize, usize, usize),
        hidden: Vec<usize>,
    ) -> Result<Self> {
        let num_classes = check_conv_config(&datasets, image, &hidden, DEPTH)?;
        let widths: Vec<String> = hidden.iter().map(|h| h.to_string()).collect();
        let mut strides = vec![1; DEPTH];
        strides[0] = 2;
        Ok(ConvTask {
            datasets,
            image,
            name: format!("Conv_{}", widths.join("x")),
            hidden,
            strides,
            num_classes,
        })
    }

    /// The same task under another name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// `(height, width, channels)` of the images.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        self.image
    }

    /// Output channels of each convolution.
    pub fn hidden(&self) -> &[usize] {
        &self.hidden
    }

    /// The number of classes `K`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Checks that `batch` fits this task (the loss panics on a batch that does not).
    ///
    /// Errors: [`Error::ShapeMismatch`] for another image shape or a wrong number of
    /// labels, [`Error::InvalidArgument`] for a label outside `0..K`.
    pub fn check_batch(&self, batch: &ImageBatch) -> Result<()> {
        let (h, w, c) = self.image;
        if (batch.height, batch.width, batch.channels) != self.image {
            return Err(Error::ShapeMismatch {
                what: "conv net image (height, width, channels)".into(),
                expected: vec![h, w, c],
                got: vec![batch.height, batch.width, batch.channels],
            });
        }
        check_image_batch(batch, h * w * c, self.num_classes)
    }

    /// The fraction of `batch` that `params` classifies correctly.
    ///
    /// Errors: as [`ConvTask::check_batch`].
    pub fn accuracy<P: ConvParams>(&self, params: &P, batch: &ImageBatch) -> Result<f64> {
        self.check_batch(batch)?;
        accuracy(&params.logits(batch), &batch.label)
    }

    /// The geometries of the convolutions for `batch` images, and the positions per
    /// image of the last one's output.
    fn geometries(&self, batch: usize) -> (Vec<Conv2dGeometry>, usize) {
        conv_geometries(batch, self.image, &self.hidden, &self.strides)
    }

    /// Layers in `f32` (haiku's init).
    fn init_layers(&self, key: Key) -> Vec<(DMatrix<f32>, DVector<f32>)> {
        init_conv_layers(key, self.image.2, &self.hidden, self.num_classes, 1.0)
    }
}

#[task]
impl Task for ConvTask<2> {
    type Params<S: Real> = Conv2<S>;
    type Batch = ImageBatch;

    /// Haiku's init (see the [module docs](self)), drawn in `f32` and converted.
    fn init<S: Real>(&self, key: Key) -> Conv2<S> {
        let mut l = self.init_layers(key).into_iter();
        let (w1, b1) = l.next().expect("conv 1");
        let (w2, b2) = l.next().expect("conv 2");
        let (w3, b3) = l.next().expect("head");
        let strides = self.strides.clone();
        Conv2 {
            w1,
            b1,
            w2,
            b2,
            w3,
            b3,
            strides,
        }
        .cast::<S>()
    }

    fn loss<S: Real>(&self, params: &Conv2<S>, _key: S::Key, batch: &ImageBatch) -> S {
        let geo = self.geometries(batch.batch_size());
        let g = geo.0;
        let positions = geo.1;
        let x = pixel_rows(&batch.image, self.image.2);
        let h1 = relu(im2col(x, &g[0]) * &params.w1 + &params.b1);
        let h2 = relu(im2col(h1, &g[1]) * &params.w2 + &params.b2);
        let pooled = global_mean_pool(h2, positions);
        let logits = pooled * &params.w3 + &params.b3;
        mean(softmax_cross_entropy(logits, &batch.label))
    }

    fn normalizer<S: Real>(&self, loss: S) -> S {
        normalize_lanes(loss, self.num_classes)
    }

    fn datasets(&self) -> Option<Datasets<ImageBatch>> {
        Some(self.datasets.clone())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

#[task]
impl Task for ConvTask<3> {
    type Params<S: Real> = Conv3<S>;
    type Batch = ImageBatch;

    /// Haiku's init (see the [module docs](self)), drawn in `f32` and converted.
    fn init<S: Real>(&self, key: Key) -> Conv3<S> {
        let mut l = self.init_layers(key).into_iter();
        let (w1, b1) = l.next().expect("conv 1");
        let (w2, b2) = l.next().expect("conv 2");
        let (w3, b3) = l.next().expect("conv 3");
        let (w4, b4) = l.next().expect("head");
        let strides = self.strides.clone();
        Conv3 {
            w1,
            b1,
            w2,
            b2,
            w3,
            b3,
            w4,
            b4,
            strides,
        }
        .cast::<S>()
    }

    fn loss<S: Real>(&self, params: &Conv3<S>, _key: S::Key, batch: &ImageBatch) -> S {
        let geo = self.geometries(batch.batch_size());
        let g = geo.0;
        let positions = geo.1;
        let x = pixel_rows(&batch.image, self.image.2);
        let h1 = relu(im2col(x, &g[0]) * &params.w1 + &params.b1);
        let h2 = relu(im2col(h1, &g[1]) * &params.w2 + &params.b2);
        let h3 = relu(im2col(h2, &g[2]) * &params.w3 + &params.b3);
        let pooled = global_mean_pool(h3, positions);
        let logits = pooled * &params.w4 + &params.b4;
        mean(softmax_cross_entropy(logits, &batch.label))
    }

    fn normalizer<S: Real>(&self, loss: S) -> S {
        normalize_lanes(loss, self.num_classes)
    }

    fn datasets(&self) -> Option<Datasets<ImageBatch>> {
        Some(self.datasets.clone())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// The 16x32 network on CIFAR-10 resized to `size`×`size`.
fn cifar_16x32(size: usize, dir: Option<&Path>, name: &str) -> Result<ConvTask<2>> {
    let ds = cifar10_datasets(128, (size, size), dir)?;
    Ok(ConvTask::new(ds, (size, size, 3), vec![16, 32])?.with_name(name))
}

/// The 32x64x64 network on CIFAR-10 at `size`×`size`.
fn cifar_32x64x64(size: usize, dir: Option<&Path>, name: &str) -> Result<ConvTask<3>> {
    let ds = cifar10_datasets(128, (size, size), dir)?;
    Ok(ConvTask::new(ds, (size, size, 3), vec![32, 64, 64])?.with_name(name))
}

/// `Conv_Cifar10_8_16x32`: CIFAR-10 resized to 8×8, batch 128, convolutions of 16 and 32
/// channels (5,418 parameters). CIFAR-10's binary batches are looked up in `dir` (see
/// [`cifar10_datasets`]).
///
/// Errors: [`Error::DatasetMissing`] (with instructions) when the files are not found.
#[allow(non_snake_case)]
pub fn Conv_Cifar10_8_16x32(dir: Option<&Path>) -> Result<ConvTask<2>> {
    cifar_16x32(8, dir, "Conv_Cifar10_8_16x32")
}

/// `Conv_Cifar10_16_32x64x64`: CIFAR-10 resized to 16×16, batch 128, convolutions of
/// 32, 64 and 64 channels (56,970 parameters).
///
/// Errors: as [`Conv_Cifar10_8_16x32`].
#[allow(non_snake_case)]
pub fn Conv_Cifar10_16_32x64x64(dir: Option<&Path>) -> Result<ConvTask<3>> {
    cifar_32x64x64(16, dir, "Conv_Cifar10_16_32x64x64")
}

/// `Conv_Cifar10_32x64x64`: CIFAR-10 at 32×32, batch 128, convolutions of 32, 64 and 64
/// channels (56,970 parameters).
///
/// Errors: as [`Conv_Cifar10_8_16x32`].
#[allow(non_snake_case)]
pub fn Conv_Cifar10_32x64x64(dir: Option<&Path>) -> Result<ConvTask<3>> {
    cifar_32x64x64(32, dir, "Conv_Cifar10_32x64x64")
}

/// `Conv_FashionMnist8_16x32`: the network of [`Conv_Cifar10_8_16x32`] on Fashion-MNIST
/// resized to 8×8×1 (5,130 parameters).
///
/// Errors: [`Error::DatasetMissing`] (with instructions) when Fashion-MNIST is not
/// installed.
#[allow(non_snake_case)]
pub fn Conv_FashionMnist8_16x32() -> Result<ConvTask<2>> {
    let ds = fashion_mnist_datasets(128, (8, 8), None)?;
    Ok(ConvTask::new(ds, (8, 8, 1), vec![16, 32])?.with_name("Conv_FashionMnist8_16x32"))
}

/// `Conv_FashionMnist16_32x64x64`: the 32x64x64 network on Fashion-MNIST resized to
/// 16×16×1 (56,394 parameters).
///
/// Errors: as [`Conv_FashionMnist8_16x32`].
#[allow(non_snake_case)]
pub fn Conv_FashionMnist16_32x64x64() -> Result<ConvTask<3>> {
    let ds = fashion_mnist_datasets(128, (16, 16), None)?;
    Ok(ConvTask::new(ds, (16, 16, 1), vec![32, 64, 64])?.with_name("Conv_FashionMnist16_32x64x64"))
}

/// `Conv_FashionMnist28_32x64x64`: the network of [`Conv_Cifar10_32x64x64`] on
/// Fashion-MNIST at 28×28×1 (56,394 parameters).
///
/// Errors: as [`Conv_FashionMnist8_16x32`].
#[allow(non_snake_case)]
pub fn Conv_FashionMnist28_32x64x64() -> Result<ConvTask<3>> {
    let ds = fashion_mnist_datasets(128, (28, 28), None)?;
    Ok(ConvTask::new(ds, (28, 28, 1), vec![32, 64, 64])?.with_name("Conv_FashionMnist28_32x64x64"))
}

// ------------------------------------------------------------------ the family

/// The activations a [`ParametricImageConv`] task samples from: the distinct functions
/// of the JAX library's `SampleActivation.acts` that have lopt primitives (its list also
/// has relu6, selu and the tanh-approximated gelu, left out here), indexed as
/// [`ParametricImageConvCfg::activation`].
pub const CONV_FAMILY_ACTIVATIONS: [&str; 8] = [
    "relu",
    "tanh",
    "cos",
    "sin",
    "sigmoid",
    "silu",
    "leaky_relu(-0.5)",
    "relu", // relu appears twice in the library's list: twice as likely
];

/// The activation number `which` of [`CONV_FAMILY_ACTIVATIONS`], elementwise.
#[differentiable]
fn activation<S: Real>(z: &DMatrix<S>, which: usize) -> DMatrix<S> {
    if which == 1 {
        tanh(z)
    } else if which == 2 {
        cos(z)
    } else if which == 3 {
        sin(z)
    } else if which == 4 {
        sigmoid(z)
    } else if which == 5 {
        component_mul(z, sigmoid(z))
    } else if which == 6 {
        relu(z) + relu(-z) * 0.5
    } else {
        relu(z)
    }
}

/// A sampled configuration of [`ParametricImageConv`]: the init scale (a float leaf, so
/// it packs into lanes), and the channel count, the number of stride-2 convolutions and
/// the activation (structure: instances that agree on them share lane groups).
#[derive(Params, Clone, Debug, PartialEq)]
pub struct ParametricImageConvCfg<S: Real> {
    /// Multiplies the standard deviation of every kernel's initialization.
    pub init_scale: S,
    /// Output channels of both convolutions (`hidden_size` of the library's sampler).
    #[params(skip)]
    pub hidden: usize,
    /// How many of the two convolutions have stride 2 (the first ones), `0..=2`.
    #[params(skip)]
    pub num_stride: usize,
    /// Index into [`CONV_FAMILY_ACTIVATIONS`].
    #[params(skip)]
    pub activation: usize,
}

/// The JAX library's `ParametricImageConv` with `sample_image_conv`'s ranges, restricted
/// to one dataset per family (Fashion-MNIST at 8, 16 or 28 pixels, or CIFAR-10 when
/// given; the library samples the dataset, image size and batch size too, which here are
/// fixed at construction) and to two convolutions: each task samples the channel count
/// log-uniformly in `[4, 64)` (`log_int(4, 64)`), the number of stride-2 convolutions
/// uniformly from 0, 1, 2, an activation uniformly from [`CONV_FAMILY_ACTIVATIONS`] and
/// an init scale uniformly in `[0.5, 2]` (the library's `SampleInitializer` range; the
/// kernels are haiku's truncated normal times that scale, where the library also samples
/// orthogonal and variance-scaling initializers). 3×3 `SAME` convolutions, mean pool,
/// linear head with haiku's init, mean softmax cross-entropy. The normalizer is the
/// family's: `(clip(nan_to_num(L, ln 2K), 0, ln 2K) − ln(K/5)) · 10 / ln K`.
///
/// Instances of different channel counts, strides and activations train in one batched
/// call (lane groups by structure).
#[derive(Debug, Clone)]
pub struct ParametricImageConv {
    datasets: Datasets<ImageBatch>,
    image: (usize, usize, usize),
    num_classes: usize,
    hidden_range: (usize, usize),
    name: String,
}

impl ParametricImageConv {
    /// A family on `datasets` of `(height, width, channels)` images, channel counts drawn
    /// log-uniformly from `hidden_range = (lo, hi)` (the library's is `(4, 64)`).
    ///
    /// Errors: [`Error::InvalidArgument`] for a zero image size, a range that is not
    /// `1 <= lo < hi`, or datasets without classes.
    pub fn new(
        datasets: Datasets<ImageBatch>,
        image: (usize, usize, usize),
        hidden_range: (usize, usize),
    ) -> Result<Self> {
        let (lo, hi) = hidden_range;
        if !(lo >= 1 && lo < hi) {
            return Err(Error::InvalidArgument(format!(
                "ParametricImageConv channel range ({lo}, {hi}): need 1 <= lo < hi"
            )));
        }
        let num_classes = check_conv_config(&datasets, image, &[lo, lo], 2)?;
        Ok(ParametricImageConv {
            datasets,
            image,
            num_classes,
            hidden_range,
            name: format!("ParametricImageConv_{}x{}x{}", image.0, image.1, image.2),
        })
    }

    /// The family with the library's channel range `[4, 64)` on Fashion-MNIST resized to
    /// `size`×`size` (8, 16 or 28), batch `batch_size`, looked up in `dir` when given.
    ///
    /// Errors: [`Error::DatasetMissing`] when Fashion-MNIST is not installed.
    pub fn fashion_mnist(size: usize, batch_size: usize, dir: Option<&Path>) -> Result<Self> {
        let ds = fashion_mnist_datasets(batch_size, (size, size), dir)?;
        Ok(Self::new(ds, (size, size, 1), (4, 64))?.with_name(format!(
            "ParametricImageConv_FashionMnist{size}_bs{batch_size}"
        )))
    }

    /// The family on CIFAR-10 resized to `size`×`size`, batch `batch_size`, from `dir`.
    ///
    /// Errors: [`Error::DatasetMissing`] when the files are not found.
    pub fn cifar10(size: usize, batch_size: usize, dir: Option<&Path>) -> Result<Self> {
        let ds = cifar10_datasets(batch_size, (size, size), dir)?;
        Ok(Self::new(ds, (size, size, 3), (4, 64))?
            .with_name(format!("ParametricImageConv_Cifar10_{size}_bs{batch_size}")))
    }

    /// The same family under another name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// `(height, width, channels)` of the images.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        self.image
    }

    /// The number of classes `K`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// A configuration chosen by hand.
    pub fn cfg(
        &self,
        hidden: usize,
        num_stride: usize,
        activation: usize,
        init_scale: f32,
    ) -> ParametricImageConvCfg<f32> {
        ParametricImageConvCfg {
            init_scale,
            hidden,
            num_stride: num_stride.min(2),
            activation: activation % CONV_FAMILY_ACTIVATIONS.len(),
        }
    }

    /// The strides of `cfg`'s two convolutions.
    pub fn strides<S: Real>(cfg: &ParametricImageConvCfg<S>) -> Vec<usize> {
        (0..2)
            .map(|i| if i < cfg.num_stride { 2 } else { 1 })
            .collect()
    }

    /// The family's normalizer (see the type's docs) of one loss.
    pub fn normalize(loss: f64, num_classes: usize) -> f64 {
        let k = num_classes as f64;
        let max = (2.0 * k).ln();
        let l = if loss.is_finite() { loss } else { max };
        (l.clamp(0.0, max) - (k / 5.0).ln()) * 10.0 / k.ln()
    }

    fn geometries<S: Real>(
        &self,
        cfg: &ParametricImageConvCfg<S>,
        batch: usize,
    ) -> (Vec<Conv2dGeometry>, usize) {
        conv_geometries(
            batch,
            self.image,
            &[cfg.hidden, cfg.hidden],
            &Self::strides(cfg),
        )
    }
}

#[task_family]
impl TaskFamily for ParametricImageConv {
    type Cfg<S: Real> = ParametricImageConvCfg<S>;
    type Params<S: Real> = Conv2<S>;
    type Batch = ImageBatch;

    /// Channels `floor(exp(U(ln lo, ln hi)))` from `key.fold_in(0)`, stride-2 count from
    /// `fold_in(1)`, activation from `fold_in(2)`, scale `U(0.5, 2)` from `fold_in(3)`.
    fn sample(&self, key: Key) -> ParametricImageConvCfg<f32> {
        let (lo, hi) = self.hidden_range;
        let u: f64 = key.fold_in(0).uniform();
        let hidden = ((lo as f64).ln() + ((hi as f64).ln() - (lo as f64).ln()) * u).exp();
        let hidden = (hidden as usize).clamp(lo, hi - 1);
        ParametricImageConvCfg {
            init_scale: key.fold_in(3).uniform_range(0.5f32, 2.0),
            hidden,
            num_stride: key.fold_in(1).randint(0, 3) as usize,
            activation: key
                .fold_in(2)
                .randint(0, CONV_FAMILY_ACTIVATIONS.len() as i64) as usize,
        }
    }

    /// Kernels `cfg.init_scale/√fan_in` times truncated normals, head haiku's default,
    /// biases 0; layer `i` from `key.fold_in(i)`.
    fn init(&self, cfg: &ParametricImageConvCfg<f32>, key: Key) -> Conv2<f32> {
        let h = [cfg.hidden, cfg.hidden];
        let mut l =
            init_conv_layers(key, self.image.2, &h, self.num_classes, cfg.init_scale).into_iter();
        let (w1, b1) = l.next().expect("conv 1");
        let (w2, b2) = l.next().expect("conv 2");
        let (w3, b3) = l.next().expect("head");
        Conv2 {
            w1,
            b1,
            w2,
            b2,
            w3,
            b3,
            strides: Self::strides(cfg),
        }
    }

    fn loss<S: Real>(
        &self,
        params: &Conv2<S>,
        cfg: &ParametricImageConvCfg<S>,
        _key: S::Key,
        batch: &ImageBatch,
    ) -> S {
        let geo = self.geometries(cfg, batch.batch_size());
        let g = geo.0;
        let positions = geo.1;
        let act = cfg.activation;
        let x = pixel_rows(&batch.image, self.image.2);
        let z1 = im2col(x, &g[0]) * &params.w1 + &params.b1;
        let h1 = activation(&z1, act);
        let z2 = im2col(h1, &g[1]) * &params.w2 + &params.b2;
        let h2 = activation(&z2, act);
        let pooled = global_mean_pool(h2, positions);
        let logits = pooled * &params.w3 + &params.b3;
        mean(softmax_cross_entropy(logits, &batch.label))
    }

    fn normalizer<S: Real>(&self, loss: S) -> S {
        let k = self.num_classes;
        S::from_lanes(|i| Self::normalize(loss.lane(i), k))
    }

    fn datasets(&self) -> Option<Datasets<ImageBatch>> {
        Some(self.datasets.clone())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}
