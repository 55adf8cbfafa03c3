//! MLP image classifiers (the JAX library's `tasks/fixed/image_mlp.py`), and a family of
//! them that varies the initialization scale and the hidden width.
//!
//! The architecture is the library's `_MLPImageTask` with ReLU and no dropout: the image
//! is flattened (an [`ImageBatch`] already has one row per example), then linear layers
//! `x · w + b` with `w` of shape `[in, out]` and `b` of shape `[out]`, ReLU after every
//! layer but the last. Initialization is haiku's: `w` ~ truncated normal on ±2σ with
//! σ = 1/√fan_in and **no** variance correction (so the actual standard deviation is
//! ≈ 0.88σ), `b` = 0. The loss is the batch mean of the softmax cross-entropy of the
//! logits against the integer labels, and the normalizer is
//! `clip(L, 0, 1.5 ln K)` with NaN mapped to `1.5 ln K` ([`normalize_cross_entropy`]).
//!
//! The DSL needs a fixed parameter structure per type, so depth is part of the type:
//! [`ImageMlpTask<1>`] has parameters [`Mlp1`], [`ImageMlpTask<2>`] has [`Mlp2`]; widths
//! are runtime sizes.
//!
//! | constructor | data | batch | layers |
//! |---|---|---|---|
//! | [`ImageMLP_FashionMnist8_Relu32`] | Fashion-MNIST resized to 8×8 | 128 | 64 → 32 → 10 |
//! | [`ImageMLP_FashionMnist_Relu128x128`] | Fashion-MNIST 28×28 | 128 | 784 → 128 → 128 → 10 |
//! | [`ImageMLP_Digits8_Relu32`] | the embedded 8×8 digits | 128 | 64 → 32 → 10 |
//!
//! ```
//! use lopt::prelude::*;
//! use lopt::tasks::image_mlp::{ImageMLP_Digits8_Relu32, Mlp1};
//!
//! let task = ImageMLP_Digits8_Relu32()?;
//! let params: Mlp1<f32> = task.init(Key::new(0));
//! assert_eq!(params.num_elements(), 64 * 32 + 32 + 32 * 10 + 10); // 2410
//! let batch = task.datasets().unwrap().train()?;
//! let (loss, grad) = task.value_and_grad(&params, Key::new(1), &batch);
//! assert!(loss > 1.0 && loss < 4.0); // about ln 10 at initialization
//! assert_eq!(grad.w1.shape(), (64, 32));
//! # Ok::<(), lopt::Error>(())
//! ```

use std::path::Path;

use nalgebra::{DMatrix, DVector};

use crate::datasets::{
    digits_datasets, fashion_mnist_datasets, image_datasets_or_digits, Datasets, ImageBatch,
    ImageSource,
};
use crate::eval_training::Aux;
use crate::params::Rebind;
use crate::prelude::{task, task_family, Params};
use crate::{Error, Key, Real, Result, Task, TaskFamily};

/// Parameters of an MLP with one hidden layer: `in → hidden → classes`.
#[derive(Params, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mlp1<S: Real> {
    /// First layer weights, `[in, hidden]`.
    pub w1: DMatrix<S>,
    /// First layer bias, `[hidden]`.
    pub b1: DVector<S>,
    /// Output layer weights, `[hidden, classes]`.
    pub w2: DMatrix<S>,
    /// Output layer bias, `[classes]`.
    pub b2: DVector<S>,
}

/// Parameters of an MLP with two hidden layers: `in → h1 → h2 → classes`.
#[derive(Params, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mlp2<S: Real> {
    /// First layer weights, `[in, h1]`.
    pub w1: DMatrix<S>,
    /// First layer bias, `[h1]`.
    pub b1: DVector<S>,
    /// Second layer weights, `[h1, h2]`.
    pub w2: DMatrix<S>,
    /// Second layer bias, `[h2]`.
    pub b2: DVector<S>,
    /// Output layer weights, `[h2, classes]`.
    pub w3: DMatrix<S>,
    /// Output layer bias, `[classes]`.
    pub b3: DVector<S>,
}

/// MLP parameters that can classify a batch: plain `f32` forward passes for metrics
/// such as [`accuracy`] (training uses the generated code of the task instead).
pub trait MlpParams: Params<Scalar = f32> {
    /// The logits, one row per row of `image`.
    ///
    /// # Panics
    /// When `image` does not have as many columns as the first layer has inputs.
    fn logits(&self, image: &DMatrix<f32>) -> DMatrix<f32>;
    /// Layer widths from input to output (`[64, 32, 10]`).
    fn layer_sizes(&self) -> Vec<usize>;
}

/// `x · w + b` with `b` broadcast over rows, then ReLU if `relu`.
fn dense(x: &DMatrix<f32>, w: &DMatrix<f32>, b: &DVector<f32>, relu: bool) -> DMatrix<f32> {
    let mut y = x * w;
    for (mut col, &bj) in y.column_iter_mut().zip(b.iter()) {
        for v in col.iter_mut() {
            *v += bj;
            if relu {
                // `max` would turn NaN into 0; keep it, like the DSL's relu.
                *v = if *v < 0.0 { 0.0 } else { *v };
            }
        }
    }
    y
}

impl MlpParams for Mlp1<f32> {
    fn logits(&self, image: &DMatrix<f32>) -> DMatrix<f32> {
        let h = dense(image, &self.w1, &self.b1, true);
        dense(&h, &self.w2, &self.b2, false)
    }
    fn layer_sizes(&self) -> Vec<usize> {
        vec![self.w1.nrows(), self.w1.ncols(), self.w2.ncols()]
    }
}

impl MlpParams for Mlp2<f32> {
    fn logits(&self, image: &DMatrix<f32>) -> DMatrix<f32> {
        let h1 = dense(image, &self.w1, &self.b1, true);
        let h2 = dense(&h1, &self.w2, &self.b2, true);
        dense(&h2, &self.w3, &self.b3, false)
    }
    fn layer_sizes(&self) -> Vec<usize> {
        vec![
            self.w1.nrows(),
            self.w1.ncols(),
            self.w2.ncols(),
            self.w3.ncols(),
        ]
    }
}

/// The fraction of rows of `logits` whose largest entry is at the row's label (ties go
/// to the first index, as `argmax`; a row with a NaN predicts its first NaN's index).
///
/// Errors: [`Error::ShapeMismatch`] when `labels` has not one entry per row.
pub fn accuracy(logits: &DMatrix<f32>, labels: &[i32]) -> Result<f64> {
    if labels.len() != logits.nrows() {
        return Err(Error::ShapeMismatch {
            what: "accuracy: one label per row of logits".into(),
            expected: vec![logits.nrows()],
            got: vec![labels.len()],
        });
    }
    if labels.is_empty() {
        return Ok(0.0);
    }
    let mut correct = 0usize;
    for (i, &label) in labels.iter().enumerate() {
        let row = logits.row(i);
        let mut best = 0usize;
        for j in 1..row.len() {
            if row[best].is_nan() {
                break;
            }
            if row[j].is_nan() || row[j] > row[best] {
                best = j;
            }
        }
        if i64::from(label) == best as i64 {
            correct += 1;
        }
    }
    Ok(correct as f64 / labels.len() as f64)
}

/// The accuracy ([`accuracy`]) of MLP parameters on an image batch, as an [`Aux`]
/// metric named `accuracy` for training curves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accuracy;

impl<P: MlpParams> Aux<P, ImageBatch> for Accuracy {
    fn names(&self) -> Vec<String> {
        vec!["accuracy".into()]
    }
    fn eval(&self, params: &P, batch: &ImageBatch) -> Vec<f64> {
        vec![accuracy(&params.logits(&batch.image), &batch.label).unwrap_or(f64::NAN)]
    }
}

/// The JAX library's normalizer of a cross-entropy loss over `num_classes` classes:
/// `clip(loss, 0, 1.5 ln K)`, then NaN (and, redundantly after the clip, ±inf) becomes
/// `1.5 ln K`. Note that `-inf` is clipped to 0 first, as `jnp.clip` then
/// `jnp.nan_to_num` do.
///
/// ```
/// use lopt::tasks::image_mlp::normalize_cross_entropy;
/// let max = 1.5 * 10f64.ln();
/// assert_eq!(normalize_cross_entropy(f64::NAN, 10), max);
/// assert_eq!(normalize_cross_entropy(100.0, 10), max);
/// assert_eq!(normalize_cross_entropy(-1.0, 10), 0.0);
/// assert_eq!(normalize_cross_entropy(1.25, 10), 1.25);
/// ```
pub fn normalize_cross_entropy(loss: f64, num_classes: usize) -> f64 {
    let max = 1.5 * (num_classes as f64).ln();
    if loss.is_nan() {
        max
    } else {
        loss.clamp(0.0, max)
    }
}

/// [`normalize_cross_entropy`] lane by lane, in the loss's scalar type (the clip bound
/// is rounded to `S` as `jnp.clip` rounds it to the loss's dtype).
pub(crate) fn normalize_lanes<S: Real>(loss: S, num_classes: usize) -> S {
    S::from_lanes(|i| normalize_cross_entropy(loss.lane(i), num_classes))
}

/// Fills `w` with `scale / √fan_in` times truncated normals (haiku's `Linear` init),
/// fan_in = `w.nrows()`.
pub(crate) fn init_weight(key: Key, rows: usize, cols: usize, scale: f32) -> DMatrix<f32> {
    let mut w = DMatrix::<f32>::zeros(rows, cols);
    let std = scale / (rows as f32).sqrt();
    key.fill_truncated_normal(w.as_mut_slice(), std);
    w
}

/// The number of classes declared by `datasets` (`extra_info.num_classes`).
pub(crate) fn num_classes_of(datasets: &Datasets<ImageBatch>) -> Result<usize> {
    match datasets.extra_info().num_classes {
        Some(k) if k >= 2 => Ok(k),
        other => Err(Error::InvalidArgument(format!(
            "image MLP datasets must declare num_classes >= 2 in extra_info, got {other:?}"
        ))),
    }
}

/// Checks that a batch fits an MLP with `input_dim` inputs and `num_classes` classes.
pub(crate) fn check_image_batch(
    batch: &ImageBatch,
    input_dim: usize,
    num_classes: usize,
) -> Result<()> {
    if batch.image.ncols() != input_dim || batch.label.len() != batch.image.nrows() {
        return Err(Error::ShapeMismatch {
            what: "image batch [batch, inputs] and labels [batch]".into(),
            expected: vec![batch.label.len(), input_dim],
            got: vec![batch.image.nrows(), batch.image.ncols()],
        });
    }
    if let Some(l) = batch
        .label
        .iter()
        .find(|&&l| l < 0 || l as usize >= num_classes)
    {
        return Err(Error::InvalidArgument(format!(
            "label {l} outside 0..{num_classes}"
        )));
    }
    Ok(())
}

/// An MLP classifier on image batches with `DEPTH` hidden layers (the JAX library's
/// `_MLPImageTask` with ReLU, no dropout). See the [module docs](self).
///
/// Implemented as a [`Task`] for `DEPTH` = 1 (parameters [`Mlp1`]) and 2 ([`Mlp2`]).
#[derive(Debug, Clone)]
pub struct ImageMlpTask<const DEPTH: usize> {
    datasets: Datasets<ImageBatch>,
    input_dim: usize,
    hidden: Vec<usize>,
    num_classes: usize,
    name: String,
}

impl<const DEPTH: usize> ImageMlpTask<DEPTH> {
    /// An MLP with hidden widths `hidden` (exactly `DEPTH` of them) on `datasets`, whose
    /// images have `input_dim = height · width · channels` values and whose
    /// `extra_info.num_classes` gives the number of classes.
    ///
    /// Errors: [`Error::InvalidArgument`] when `hidden` does not have `DEPTH` positive
    /// widths, `input_dim` is 0, or the datasets do not declare at least two classes.
    pub fn new(
        datasets: Datasets<ImageBatch>,
        input_dim: usize,
        hidden: Vec<usize>,
    ) -> Result<Self> {
        if hidden.len() != DEPTH || hidden.contains(&0) || input_dim == 0 {
            return Err(Error::InvalidArgument(format!(
                "ImageMlpTask<{DEPTH}> needs {DEPTH} positive hidden widths and a positive \
                 input size; got hidden {hidden:?}, input {input_dim}"
            )));
        }
        let num_classes = num_classes_of(&datasets)?;
        let widths: Vec<String> = hidden.iter().map(|h| h.to_string()).collect();
        Ok(ImageMlpTask {
            datasets,
            input_dim,
            name: format!("ImageMLP_Relu{}", widths.join("x")),
            hidden,
            num_classes,
        })
    }

    /// The same task under another name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Inputs per example (`height · width · channels`).
    pub fn input_dim(&self) -> usize {
        self.input_dim
    }

    /// The hidden widths.
    pub fn hidden(&self) -> &[usize] {
        &self.hidden
    }

    /// The number of classes `K`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Checks that `batch` fits this task (the loss panics on a batch that does not).
    ///
    /// Errors: [`Error::ShapeMismatch`] for a wrong number of inputs or labels,
    /// [`Error::InvalidArgument`] for a label outside `0..K`.
    pub fn check_batch(&self, batch: &ImageBatch) -> Result<()> {
        check_image_batch(batch, self.input_dim, self.num_classes)
    }

    /// The fraction of `batch` that `params` classifies correctly.
    ///
    /// Errors: as [`ImageMlpTask::check_batch`].
    pub fn accuracy<P: MlpParams>(&self, params: &P, batch: &ImageBatch) -> Result<f64> {
        self.check_batch(batch)?;
        let sizes = params.layer_sizes();
        if sizes.first() != Some(&self.input_dim) || sizes.last() != Some(&self.num_classes) {
            return Err(Error::ShapeMismatch {
                what: "accuracy: MLP inputs and classes".into(),
                expected: vec![self.input_dim, self.num_classes],
                got: sizes,
            });
        }
        accuracy(&params.logits(&batch.image), &batch.label)
    }

    /// Layer widths from input to output.
    fn sizes(&self) -> Vec<usize> {
        let mut s = vec![self.input_dim];
        s.extend(&self.hidden);
        s.push(self.num_classes);
        s
    }

    /// Weights and biases in `f32`, layer `i` drawn from `key.fold_in(i)`.
    fn init_layers(&self, key: Key) -> Vec<(DMatrix<f32>, DVector<f32>)> {
        let sizes = self.sizes();
        sizes
            .windows(2)
            .enumerate()
            .map(|(i, io)| {
                (
                    init_weight(key.fold_in(i as u64), io[0], io[1], 1.0),
                    DVector::zeros(io[1]),
                )
            })
            .collect()
    }
}

#[task]
impl Task for ImageMlpTask<1> {
    type Params<S: Real> = Mlp1<S>;
    type Batch = ImageBatch;

    /// Haiku's init (see the [module docs](self)), drawn in `f32` and converted, so every
    /// scalar type starts from the same numbers.
    fn init<S: Real>(&self, key: Key) -> Mlp1<S> {
        let mut l = self.init_layers(key).into_iter();
        let (w1, b1) = l.next().expect("one hidden layer");
        let (w2, b2) = l.next().expect("output layer");
        Mlp1 { w1, b1, w2, b2 }.cast::<S>()
    }

    fn loss<S: Real>(&self, params: &Mlp1<S>, _key: S::Key, batch: &ImageBatch) -> S {
        let h = relu(batch.image * params.w1 + params.b1);
        let logits = h * params.w2 + params.b2;
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
impl Task for ImageMlpTask<2> {
    type Params<S: Real> = Mlp2<S>;
    type Batch = ImageBatch;

    /// Haiku's init (see the [module docs](self)), drawn in `f32` and converted.
    fn init<S: Real>(&self, key: Key) -> Mlp2<S> {
        let mut l = self.init_layers(key).into_iter();
        let (w1, b1) = l.next().expect("first hidden layer");
        let (w2, b2) = l.next().expect("second hidden layer");
        let (w3, b3) = l.next().expect("output layer");
        Mlp2 {
            w1,
            b1,
            w2,
            b2,
            w3,
            b3,
        }
        .cast::<S>()
    }

    fn loss<S: Real>(&self, params: &Mlp2<S>, _key: S::Key, batch: &ImageBatch) -> S {
        let h1 = relu(batch.image * params.w1 + params.b1);
        let h2 = relu(h1 * params.w2 + params.b2);
        let logits = h2 * params.w3 + params.b3;
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

/// `ImageMLP_FashionMnist8_Relu32`: Fashion-MNIST resized to 8×8, batch 128,
/// 64 → 32 → 10 with ReLU (2,410 parameters). The learned-optimization benchmark task.
///
/// Errors: [`Error::DatasetMissing`] (with instructions) when the Fashion-MNIST files are
/// not installed; see [`ImageMLP_FashionMnist8_Relu32_or_digits`] for a fallback.
#[allow(non_snake_case)]
pub fn ImageMLP_FashionMnist8_Relu32() -> Result<ImageMlpTask<1>> {
    let ds = fashion_mnist_datasets(128, (8, 8), None)?;
    Ok(ImageMlpTask::new(ds, 64, vec![32])?.with_name("ImageMLP_FashionMnist8_Relu32"))
}

/// `ImageMLP_FashionMnist_Relu128x128`: Fashion-MNIST at 28×28, batch 128,
/// 784 → 128 → 128 → 10 with ReLU.
///
/// Errors: as [`ImageMLP_FashionMnist8_Relu32`].
#[allow(non_snake_case)]
pub fn ImageMLP_FashionMnist_Relu128x128() -> Result<ImageMlpTask<2>> {
    let ds = fashion_mnist_datasets(128, (28, 28), None)?;
    Ok(ImageMlpTask::new(ds, 784, vec![128, 128])?.with_name("ImageMLP_FashionMnist_Relu128x128"))
}

/// `ImageMLP_Digits8_Relu32`: the same MLP as [`ImageMLP_FashionMnist8_Relu32`] on the
/// embedded 8×8 digits (batch 128; 1,200 training and 297 test images), which need no
/// download.
#[allow(non_snake_case)]
pub fn ImageMLP_Digits8_Relu32() -> Result<ImageMlpTask<1>> {
    image_mlp_digits8(128, 32)
}

/// The 64 → `hidden` → 10 MLP on the embedded 8×8 digits with batch size `batch_size`
/// (at most 150, the smallest split); named `ImageMLP_Digits8_Relu{hidden}_bs{batch}`
/// unless it is [`ImageMLP_Digits8_Relu32`].
///
/// Errors: [`Error::InvalidArgument`] for a batch size that does not fit the splits or a
/// zero width.
pub fn image_mlp_digits8(batch_size: usize, hidden: usize) -> Result<ImageMlpTask<1>> {
    let ds = digits_datasets(batch_size)?;
    let name = if batch_size == 128 {
        format!("ImageMLP_Digits8_Relu{hidden}")
    } else {
        format!("ImageMLP_Digits8_Relu{hidden}_bs{batch_size}")
    };
    Ok(ImageMlpTask::new(ds, 64, vec![hidden])?.with_name(name))
}

/// [`ImageMLP_FashionMnist8_Relu32`] when the Fashion-MNIST files are found, else
/// [`ImageMLP_Digits8_Relu32`]; and which data it used. Only *absent* files fall back.
#[allow(non_snake_case)]
pub fn ImageMLP_FashionMnist8_Relu32_or_digits() -> Result<(ImageMlpTask<1>, ImageSource)> {
    let (ds, source) = image_datasets_or_digits(128, (8, 8), None)?;
    let name = match source {
        ImageSource::Digits => "ImageMLP_Digits8_Relu32",
        _ => "ImageMLP_FashionMnist8_Relu32",
    };
    Ok((ImageMlpTask::new(ds, 64, vec![32])?.with_name(name), source))
}

/// A sampled configuration of [`ImageMlpFamily`]: an init scale (a float leaf, so it
/// packs into lanes) and a hidden width (a shape: instances of equal width share lane
/// groups).
#[derive(Params, Clone, Debug, PartialEq)]
pub struct ImageMlpFamilyCfg<S: Real> {
    /// Multiplies the standard deviation of every weight's initialization.
    pub init_scale: S,
    /// The hidden width.
    #[params(skip)]
    pub hidden: usize,
}

/// A family of one-hidden-layer ReLU MLPs on one image dataset: each task samples a
/// hidden width uniformly from `widths` and an init scale log-uniformly from
/// `init_scale_range`; weights start at `init_scale / √fan_in` times truncated normals
/// (haiku's init when the scale is 1). The loss is the tasks' common softmax
/// cross-entropy, so tasks of equal width train batched across SIMD lanes.
#[derive(Debug, Clone)]
pub struct ImageMlpFamily {
    datasets: Datasets<ImageBatch>,
    input_dim: usize,
    num_classes: usize,
    widths: Vec<usize>,
    init_scale_range: (f32, f32),
    name: String,
}

impl ImageMlpFamily {
    /// The hidden widths of the default family.
    pub const DEFAULT_WIDTHS: [usize; 3] = [16, 32, 64];
    /// The default range of init scales.
    pub const DEFAULT_INIT_SCALE_RANGE: (f32, f32) = (0.5, 2.0);

    /// A family on `datasets` (images of `input_dim` values; classes from
    /// `extra_info.num_classes`) with hidden widths drawn from `widths` and init scales
    /// from `init_scale_range = (lo, hi)`.
    ///
    /// Errors: [`Error::InvalidArgument`] for no or zero widths, a zero `input_dim`, a
    /// scale range that is not `0 < lo <= hi` (finite), or datasets without classes.
    pub fn new(
        datasets: Datasets<ImageBatch>,
        input_dim: usize,
        widths: Vec<usize>,
        init_scale_range: (f32, f32),
    ) -> Result<Self> {
        let (lo, hi) = init_scale_range;
        if widths.is_empty() || widths.contains(&0) || input_dim == 0 {
            return Err(Error::InvalidArgument(format!(
                "ImageMlpFamily needs positive widths and input size; got widths {widths:?}, \
                 input {input_dim}"
            )));
        }
        if !(lo > 0.0 && lo <= hi && hi.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "init scale range ({lo}, {hi}): need 0 < lo <= hi, finite"
            )));
        }
        let num_classes = num_classes_of(&datasets)?;
        Ok(ImageMlpFamily {
            datasets,
            input_dim,
            num_classes,
            widths,
            init_scale_range,
            name: "ImageMLPFamily_Relu".into(),
        })
    }

    /// The default family (widths 16, 32, 64; scales 0.5..2) on Fashion-MNIST 8×8 with
    /// batch 128 when the files are found, else on the embedded digits; and which data
    /// it used.
    pub fn fashion_mnist8_or_digits() -> Result<(Self, ImageSource)> {
        Self::fashion_mnist8_or_digits_in(None)
    }

    /// [`fashion_mnist8_or_digits`](Self::fashion_mnist8_or_digits) with Fashion-MNIST
    /// looked up in `dir` (the folder holding its files, or its parent) when given.
    pub fn fashion_mnist8_or_digits_in(dir: Option<&Path>) -> Result<(Self, ImageSource)> {
        let (ds, source) = image_datasets_or_digits(128, (8, 8), dir)?;
        let data = match source {
            ImageSource::Digits => "Digits8",
            _ => "FashionMnist8",
        };
        let family = ImageMlpFamily::new(
            ds,
            64,
            Self::DEFAULT_WIDTHS.to_vec(),
            Self::DEFAULT_INIT_SCALE_RANGE,
        )?
        .with_name(format!("ImageMLPFamily_{data}_Relu16to64"));
        Ok((family, source))
    }

    /// Why Fashion-MNIST is not used from `dir` (or the default places): the message of
    /// the error that made [`fashion_mnist8_or_digits_in`](Self::fashion_mnist8_or_digits_in)
    /// fall back, e.g. the file looked for. Empty when it is found.
    pub fn fashion_mnist_missing_reason(dir: Option<&Path>) -> String {
        match fashion_mnist_datasets(128, (8, 8), dir) {
            Ok(_) => String::new(),
            Err(Error::DatasetMissing { path, .. }) => format!("no file {path}"),
            Err(e) => e.to_string(),
        }
    }

    /// The default family on the embedded 8×8 digits with batch size `batch_size`.
    pub fn digits8(batch_size: usize) -> Result<Self> {
        Ok(ImageMlpFamily::new(
            digits_datasets(batch_size)?,
            64,
            Self::DEFAULT_WIDTHS.to_vec(),
            Self::DEFAULT_INIT_SCALE_RANGE,
        )?
        .with_name(format!("ImageMLPFamily_Digits8_Relu16to64_bs{batch_size}")))
    }

    /// The same family under another name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The hidden widths tasks are drawn from.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// Inputs per example.
    pub fn input_dim(&self) -> usize {
        self.input_dim
    }

    /// The number of classes `K`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The configuration with width `hidden` and scale `init_scale` (for choosing
    /// instances by hand rather than by [`TaskFamily::sample`]).
    pub fn cfg(&self, hidden: usize, init_scale: f32) -> ImageMlpFamilyCfg<f32> {
        ImageMlpFamilyCfg { init_scale, hidden }
    }

    /// Checks that `batch` fits the family's tasks (the loss panics on one that does not).
    pub fn check_batch(&self, batch: &ImageBatch) -> Result<()> {
        check_image_batch(batch, self.input_dim, self.num_classes)
    }
}

#[task_family]
impl TaskFamily for ImageMlpFamily {
    type Cfg<S: Real> = ImageMlpFamilyCfg<S>;
    type Params<S: Real> = Mlp1<S>;
    type Batch = ImageBatch;

    /// Width uniform over `widths` (from `key.fold_in(0)`), scale log-uniform over the
    /// range (from `key.fold_in(1)`).
    fn sample(&self, key: Key) -> ImageMlpFamilyCfg<f32> {
        let i = key.fold_in(0).randint(0, self.widths.len() as i64) as usize;
        let (lo, hi) = self.init_scale_range;
        let u: f32 = key.fold_in(1).uniform();
        let init_scale = (lo.ln() + (hi.ln() - lo.ln()) * u).exp();
        ImageMlpFamilyCfg {
            init_scale,
            hidden: self.widths[i],
        }
    }

    /// Layer `i`'s weights from `key.fold_in(i)`, scaled by `cfg.init_scale`; biases 0.
    fn init(&self, cfg: &ImageMlpFamilyCfg<f32>, key: Key) -> Mlp1<f32> {
        let (d, h, k) = (self.input_dim, cfg.hidden, self.num_classes);
        Mlp1 {
            w1: init_weight(key.fold_in(0), d, h, cfg.init_scale),
            b1: DVector::zeros(h),
            w2: init_weight(key.fold_in(1), h, k, cfg.init_scale),
            b2: DVector::zeros(k),
        }
    }

    fn loss<S: Real>(
        &self,
        params: &Mlp1<S>,
        _cfg: &ImageMlpFamilyCfg<S>,
        _key: S::Key,
        batch: &ImageBatch,
    ) -> S {
        let h = relu(batch.image * params.w1 + params.b1);
        let logits = h * params.w2 + params.b2;
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
