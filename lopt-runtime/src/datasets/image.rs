//! Image-classification datasets: resizing, splits, shuffled epochs (the JAX library's
//! `preload_tfds_image_classification_datasets` and `tasks/datasets/image.py`).
//!
//! Preprocessing follows the JAX library: each image is resized with bilinear
//! interpolation, half-pixel centers and no antialiasing on its raw pixel values (0..255
//! for MNIST-format files; the semantics of `tf.image.resize`), then divided by the
//! maximum pixel value into `[0, 1]`. The training file is split into contiguous ranges
//! `train` = first 80%, `inner_valid` = next 10%, `outer_valid` = last 10% (tfds
//! `train[0:80%]`, `train[80%:90%]`, `train[90%:]`; boundaries rounded to the nearest
//! example), and the test file is `test`. Every split yields batches forever: each epoch
//! visits its examples in a fresh permutation drawn from the dataset's key and yields
//! `floor(n / batch_size)` batches (the remainder is dropped), produced ahead of need on
//! a background thread.
//!
//! Files are looked up in the directory passed as `dir`; without one, in
//! `$LOPT_DATA_DIR/fashion-mnist/` (or `.../mnist/`) when `LOPT_DATA_DIR` is set, else
//! under [`DEFAULT_DATA_ROOT`], where Debian's package `dataset-fashion-mnist` installs
//! the four official gzip files (`apt-get install dataset-fashion-mnist`).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nalgebra::DMatrix;

use super::epochs::EpochOrder;
use super::idx::{self, IdxError, IdxImages};
use super::prefetch::{prefetch, DEFAULT_PREFETCH};
use super::{try_cached_datasets, Datasets, ExtraInfo, Split};
use crate::error::{Error, Result};
use crate::key::Key;

/// Where Debian's dataset packages install data: Fashion-MNIST is in
/// `/usr/share/datasets/fashion-mnist/`.
pub const DEFAULT_DATA_ROOT: &str = "/usr/share/datasets";

/// The environment variable naming a data root with `fashion-mnist/` and `mnist/`
/// subdirectories.
pub const DATA_DIR_ENV: &str = "LOPT_DATA_DIR";

/// One batch of images and labels.
///
/// Layout: `image` has one **row per example** (the JAX library's leading batch axis
/// `[B, H, W, C]`) and `height * width * channels` columns, each row the image flattened
/// row-major as `(y, x, c)`: column `(y * width + x) * channels + c`. So an MLP's first
/// layer is `image * w1` with `w1` of shape `[H*W*C, hidden]`. Values are in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    /// Pixels, `[batch, height * width * channels]`, in `[0, 1]`.
    pub image: DMatrix<f32>,
    /// Class labels, one per row of `image`.
    pub label: Vec<i32>,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Channels per pixel.
    pub channels: usize,
}

impl ImageBatch {
    /// Number of examples in the batch.
    pub fn batch_size(&self) -> usize {
        self.image.nrows()
    }
}

/// Raw labeled images as read from files, before preprocessing.
#[derive(Debug, Clone, PartialEq)]
pub struct LabeledImages {
    /// Number of images.
    pub count: usize,
    /// Height of each image.
    pub height: usize,
    /// Width of each image.
    pub width: usize,
    /// Channels per pixel.
    pub channels: usize,
    /// Raw pixel values, image after image, each row-major `(y, x, c)`.
    pub pixels: Vec<u8>,
    /// Class labels in `0..num_classes`.
    pub labels: Vec<i32>,
    /// The raw value that maps to 1.0 (255 for MNIST files, 16 for the digits).
    pub max_value: f32,
    /// Number of classes.
    pub num_classes: usize,
}

impl LabeledImages {
    /// Images from an IDX images file and its labels (one channel, values 0..255).
    pub fn from_idx(
        images: IdxImages,
        labels: Vec<u8>,
        num_classes: usize,
    ) -> Result<LabeledImages, IdxError> {
        if images.count != labels.len() {
            return Err(IdxError::CountMismatch {
                images: images.count,
                labels: labels.len(),
            });
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| usize::from(l) >= num_classes)
        {
            return Err(IdxError::LabelOutOfRange {
                index,
                label,
                num_classes,
            });
        }
        Ok(LabeledImages {
            count: images.count,
            height: images.rows,
            width: images.cols,
            channels: 1,
            pixels: images.pixels,
            labels: labels.into_iter().map(i32::from).collect(),
            max_value: 255.0,
            num_classes,
        })
    }

    fn image_len(&self) -> usize {
        self.height * self.width * self.channels
    }

    /// The images in `range` (by example index).
    pub fn slice(&self, range: Range<usize>) -> Result<LabeledImages> {
        self.check()?;
        if range.start > range.end || range.end > self.count {
            return Err(Error::InvalidArgument(format!(
                "range {range:?} outside 0..{} images",
                self.count
            )));
        }
        let d = self.image_len();
        Ok(LabeledImages {
            count: range.len(),
            pixels: self.pixels[range.start * d..range.end * d].to_vec(),
            labels: self.labels[range.clone()].to_vec(),
            height: self.height,
            width: self.width,
            channels: self.channels,
            max_value: self.max_value,
            num_classes: self.num_classes,
        })
    }

    /// Checks the public fields agree with each other (they can be set by hand).
    pub fn check(&self) -> Result<()> {
        let total = self
            .height
            .checked_mul(self.width)
            .and_then(|d| d.checked_mul(self.channels))
            .filter(|&d| d > 0)
            .and_then(|d| d.checked_mul(self.count));
        if total != Some(self.pixels.len()) || self.labels.len() != self.count {
            return Err(Error::ShapeMismatch {
                what: "labeled images: pixels [count, height, width, channels], labels [count]"
                    .into(),
                expected: vec![
                    self.count,
                    self.height,
                    self.width,
                    self.channels,
                    self.count,
                ],
                got: vec![self.pixels.len(), self.labels.len()],
            });
        }
        if !(self.max_value > 0.0 && self.max_value.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "max_value {}",
                self.max_value
            )));
        }
        if let Some(l) = self
            .labels
            .iter()
            .find(|&&l| l < 0 || l as usize >= self.num_classes)
        {
            return Err(Error::InvalidArgument(format!(
                "label {l} outside 0..{} classes",
                self.num_classes
            )));
        }
        Ok(())
    }

    /// Every image resized to `size = (height, width)` and scaled into `[0, 1]`, one
    /// after another (`count * height * width * channels` values).
    pub fn preprocess(&self, size: (usize, usize)) -> Result<Vec<f32>> {
        self.check()?;
        let (h, w, c) = (self.height, self.width, self.channels);
        let d = self.image_len();
        let total = [size.0, size.1, c]
            .iter()
            .try_fold(self.count, |acc, &n| acc.checked_mul(n))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("{} images of size {size:?} overflow", self.count))
            })?;
        let mut out = Vec::with_capacity(total);
        let mut src = vec![0f32; d];
        for image in self.pixels.chunks_exact(d) {
            for (s, &p) in src.iter_mut().zip(image) {
                *s = f32::from(p);
            }
            // Resize on the raw scale, then normalize: the JAX library's order.
            let resized = resize_bilinear(&src, (h, w, c), size)?;
            out.extend(resized.into_iter().map(|v| v / self.max_value));
        }
        Ok(out)
    }
}

/// Bilinear resize with half-pixel centers and no antialiasing (`tf.image.resize` with
/// `method="bilinear"`, `antialias=False`, i.e. TensorFlow's `ResizeBilinear` with
/// `half_pixel_centers=True`).
///
/// `src` is one image of `shape = (height, width, channels)`, row-major `(y, x, c)`.
/// Output pixel `(y, x)` samples the source at
/// `sy = (y + 0.5) * height / out_height - 0.5` (likewise `sx`): with `y0 = floor(sy)`
/// clamped to `>= 0`, `y1 = min(ceil(sy), height - 1)` and `ly = sy - floor(sy)`,
/// `top = s[y0, x0] + (s[y0, x1] - s[y0, x0]) * lx`, `bottom` likewise on row `y1`, and
/// the value is `top + (bottom - top) * ly`. Computed in `f32` as TensorFlow does.
///
/// ```
/// use lopt_runtime::datasets::image::resize_bilinear;
/// // Halving: each output pixel sits exactly between four inputs and averages them.
/// let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
/// let out = resize_bilinear(&src, (4, 4, 1), (2, 2))?;
/// assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5]);
/// # Ok::<(), lopt_runtime::Error>(())
/// ```
pub fn resize_bilinear(
    src: &[f32],
    shape: (usize, usize, usize),
    size: (usize, usize),
) -> Result<Vec<f32>> {
    let (h, w, c) = shape;
    let (oh, ow) = size;
    if h == 0 || w == 0 || c == 0 || oh == 0 || ow == 0 {
        return Err(Error::InvalidArgument(format!(
            "resize from {shape:?} to {size:?}: sizes must be positive"
        )));
    }
    let src_len = h.checked_mul(w).and_then(|hw| hw.checked_mul(c));
    let out_len = oh.checked_mul(ow).and_then(|hw| hw.checked_mul(c));
    if src_len != Some(src.len()) || out_len.is_none() {
        return Err(Error::ShapeMismatch {
            what: "image to resize".into(),
            expected: vec![h, w, c],
            got: vec![src.len()],
        });
    }
    let ys = interpolation(h, oh);
    let xs = interpolation(w, ow);
    let at = |y: usize, x: usize, ch: usize| src[(y * w + x) * c + ch];
    let mut out = Vec::with_capacity(out_len.unwrap_or(0));
    for &(y0, y1, ly) in &ys {
        for &(x0, x1, lx) in &xs {
            for ch in 0..c {
                let top = at(y0, x0, ch) + (at(y0, x1, ch) - at(y0, x0, ch)) * lx;
                let bottom = at(y1, x0, ch) + (at(y1, x1, ch) - at(y1, x0, ch)) * lx;
                out.push(top + (bottom - top) * ly);
            }
        }
    }
    Ok(out)
}

/// For each output index: (lower source index, upper source index, weight of upper),
/// TensorFlow's `compute_interpolation_weights` with half-pixel centers.
fn interpolation(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|i| {
            let s = (i as f32 + 0.5) * scale - 0.5;
            let floor = s.floor();
            let lower = floor.max(0.0) as usize;
            let upper = (s.ceil().max(0.0) as usize).min(in_size - 1);
            (lower.min(in_size - 1), upper, s - floor)
        })
        .collect()
}

/// Preprocessed examples shared by the splits that draw from them.
struct Examples {
    pixels: Vec<f32>,
    labels: Vec<i32>,
    /// `height * width * channels`.
    dim: usize,
    shape: (usize, usize, usize),
}

/// An infinite stream of batches over `range` of `examples`, reshuffled every epoch.
struct EpochBatches {
    examples: Arc<Examples>,
    range: Range<usize>,
    order: EpochOrder,
}

impl EpochBatches {
    fn new(examples: Arc<Examples>, range: Range<usize>, batch_size: usize, key: Key) -> Self {
        let order = EpochOrder::new(range.len(), batch_size, key);
        EpochBatches {
            examples,
            range,
            order,
        }
    }
}
/// The batch of the examples `rows` (indices into `range` of `ex`).
fn gather_batch(ex: &Examples, range: &Range<usize>, rows: &[usize]) -> ImageBatch {
    // Gathered straight into nalgebra's column-major layout (column c holds pixel c of
    // every example), with no row-major staging copy.
    let b = rows.len();
    let mut buf = vec![0.0f32; b * ex.dim];
    let mut label = Vec::with_capacity(b);
    for (k, &r) in rows.iter().enumerate() {
        // The examples are random rows of a table larger than the caches: ask for the
        // ones a few rows ahead now, so their memory latency overlaps this copy.
        if let Some(&ahead) = rows.get(k + PREFETCH_AHEAD) {
            prefetch_rows(&ex.pixels, (range.start + ahead) * ex.dim, ex.dim);
        }
        let i = range.start + r;
        let src = &ex.pixels[i * ex.dim..(i + 1) * ex.dim];
        for (c, &v) in src.iter().enumerate() {
            buf[c * b + k] = v;
        }
        label.push(ex.labels[i]);
    }
    let (height, width, channels) = ex.shape;
    ImageBatch {
        image: DMatrix::from_vec(b, ex.dim, buf),
        label,
        height,
        width,
        channels,
    }
}

impl Iterator for EpochBatches {
    type Item = ImageBatch;

    fn next(&mut self) -> Option<ImageBatch> {
        let rows = self.order.next_rows()?;
        Some(gather_batch(&self.examples, &self.range, rows))
    }

    /// Skips `n` batches without building them (a resumed run catching up), then returns
    /// the next: the same batch as `n + 1` calls of `next`.
    fn nth(&mut self, n: usize) -> Option<ImageBatch> {
        let rows = self.order.nth_rows(n)?;
        Some(gather_batch(&self.examples, &self.range, rows))
    }
}

/// Examples ahead whose pixels a batch gather prefetches.
const PREFETCH_AHEAD: usize = 8;

/// Hints the CPU to fetch `data[start..start + len]` into cache (no effect elsewhere; a
/// prefetch never faults, and the range is clamped to `data` anyway).
#[inline(always)]
fn prefetch_rows(data: &[f32], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let end = (start + len).min(data.len());
        // One hint per 64-byte cache line (16 floats).
        for i in (start.min(end)..end).step_by(16) {
            // SAFETY: the pointer is inside `data`; prefetching reads nothing and cannot
            // fault.
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(data.as_ptr().add(i).cast::<i8>())
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, start, len);
}

/// The index where `percent`% of `n` examples ends (nearest example, as tfds rounds).
fn percent(n: usize, percent: usize) -> usize {
    (n * percent + 50) / 100
}

/// Image datasets from a training file and a test file (uncached; the named
/// constructors below cache theirs).
///
/// `train_file` is split 80% / 10% / 10% into `train`, `inner_valid`, `outer_valid`;
/// `test_file` is `test`. Images are resized to `image_size = (height, width)` and scaled
/// into `[0, 1]` once, up front; each split is shuffled every epoch with a key derived
/// from `key` and prefetched on a background thread.
///
/// Errors: [`Error::InvalidArgument`] if `batch_size` is 0 or larger than a split (no full
/// batch could ever be made), or `image_size` has a zero; [`Error::ShapeMismatch`] if the
/// two files' images differ in channels or are inconsistent.
pub fn image_datasets(
    train_file: &LabeledImages,
    test_file: &LabeledImages,
    batch_size: usize,
    image_size: (usize, usize),
    key: Key,
) -> Result<Datasets<ImageBatch>> {
    if train_file.channels != test_file.channels {
        return Err(Error::ShapeMismatch {
            what: "channels of train and test images".into(),
            expected: vec![train_file.channels],
            got: vec![test_file.channels],
        });
    }
    let n = train_file.count;
    let ranges = [
        0..percent(n, 80),
        percent(n, 80)..percent(n, 90),
        percent(n, 90)..n,
        0..test_file.count,
    ];
    for (split, range) in Split::ALL.into_iter().zip(&ranges) {
        if batch_size == 0 || batch_size > range.len() {
            return Err(Error::InvalidArgument(format!(
                "batch size {batch_size} does not fit split `{split}` of {} examples",
                range.len()
            )));
        }
    }
    let shape = (image_size.0, image_size.1, train_file.channels);
    let examples = |file: &LabeledImages| -> Result<Arc<Examples>> {
        Ok(Arc::new(Examples {
            pixels: file.preprocess(image_size)?,
            labels: file.labels.clone(),
            dim: shape.0 * shape.1 * shape.2,
            shape,
        }))
    };
    let (train, test) = (examples(train_file)?, examples(test_file)?);
    let stream = |split: Split| {
        let source = if split == Split::Test { &test } else { &train };
        let batches = EpochBatches::new(
            source.clone(),
            ranges[split as usize].clone(),
            batch_size,
            key.fold_in(split as u64),
        );
        prefetch(batches, DEFAULT_PREFETCH)
    };
    let info = ExtraInfo::with_num_classes(train_file.num_classes.max(test_file.num_classes));
    Ok(Datasets::new(
        stream(Split::Train),
        stream(Split::InnerValid),
        stream(Split::OuterValid),
        stream(Split::Test),
    )
    .with_extra_info(info))
}

/// Which data an image constructor used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageSource {
    /// Fashion-MNIST IDX files.
    FashionMnist,
    /// MNIST IDX files.
    Mnist,
    /// The embedded 8x8 digits ([`super::digits`]).
    Digits,
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageSource::FashionMnist => "Fashion-MNIST",
            ImageSource::Mnist => "MNIST",
            ImageSource::Digits => "UCI digits (embedded)",
        })
    }
}

/// How to obtain the files of an MNIST-format dataset.
struct IdxSource {
    name: &'static str,
    subdir: &'static str,
    help: &'static str,
    seed: u64,
}

const FASHION: IdxSource = IdxSource {
    name: "Fashion-MNIST",
    subdir: "fashion-mnist",
    help: "Get it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs the \
           files in /usr/share/datasets/fashion-mnist/), or download train-images-idx3-ubyte.gz, \
           train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz \
           from https://github.com/zalandoresearch/fashion-mnist (folder data/fashion) into a \
           directory and pass that directory as `dir`, or put them in \
           $LOPT_DATA_DIR/fashion-mnist/.",
    seed: 0x0fa5_0001,
};

const MNIST: IdxSource = IdxSource {
    name: "MNIST",
    subdir: "mnist",
    help: "Download the four files of the MNIST database (train-images-idx3-ubyte.gz, \
           train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, \
           e.g. from https://storage.googleapis.com/cvdf-datasets/mnist/) into a directory and \
           pass that directory as `dir`, or put them in $LOPT_DATA_DIR/mnist/ \
           (default /usr/share/datasets/mnist/).",
    seed: 0x3a15_0001,
};

/// The directory searched for `source`'s files: `dir`, else `$LOPT_DATA_DIR`, else
/// `/usr/share/datasets`; in each case its `<subdir>` (e.g. `fashion-mnist/`) when it has
/// one, else the directory itself, so a user may name the folder holding the files or
/// its parent.
fn resolve_dir(dir: Option<&Path>, subdir: &str) -> PathBuf {
    let (base, named) = match (dir, std::env::var_os(DATA_DIR_ENV)) {
        (Some(d), _) => (d.to_path_buf(), true),
        (None, Some(e)) => (PathBuf::from(e), true),
        (None, None) => (PathBuf::from(DEFAULT_DATA_ROOT), false),
    };
    let nested = base.join(subdir);
    if named && !nested.is_dir() {
        base
    } else {
        nested
    }
}

/// The file `stem` in `dir`, gzip or plain, with `-idx` or `.idx` spelling.
fn find_file(dir: &Path, stem: &str, source: &IdxSource) -> Result<PathBuf> {
    let dotted = stem.replacen("-idx", ".idx", 1);
    for name in [stem, dotted.as_str()] {
        for ext in [".gz", ""] {
            let path = dir.join(format!("{name}{ext}"));
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    Err(Error::DatasetMissing {
        dataset: source.name.to_string(),
        path: dir.join(format!("{stem}.gz")).display().to_string(),
        help: source.help.to_string(),
    })
}

fn load(source: &IdxSource, dir: &Path) -> Result<(LabeledImages, LabeledImages)> {
    let mut files = Vec::new();
    for stem in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        files.push(find_file(dir, stem, source)?);
    }
    let part = |images: &Path, labels: &Path| -> Result<LabeledImages> {
        let (imgs, labs) = idx::read_pair(images, labels)?;
        LabeledImages::from_idx(imgs, labs, 10).map_err(|error| Error::Idx {
            path: labels.display().to_string(),
            error,
        })
    };
    Ok((part(&files[0], &files[1])?, part(&files[2], &files[3])?))
}

/// Reads the Fashion-MNIST training and test files (raw, unresized) from `dir` or the
/// default location (see the [module docs](self)).
///
/// Errors: [`Error::DatasetMissing`] with instructions when a file is absent;
/// [`Error::Io`] or [`Error::Idx`] for unreadable or malformed files.
pub fn load_fashion_mnist(dir: Option<&Path>) -> Result<(LabeledImages, LabeledImages)> {
    load(&FASHION, &resolve_dir(dir, FASHION.subdir))
}

/// Reads the MNIST training and test files (raw, unresized) from `dir` or the default
/// location; errors as [`load_fashion_mnist`].
pub fn load_mnist(dir: Option<&Path>) -> Result<(LabeledImages, LabeledImages)> {
    load(&MNIST, &resolve_dir(dir, MNIST.subdir))
}

fn cached_idx_datasets(
    source: &'static IdxSource,
    batch_size: usize,
    image_size: (usize, usize),
    dir: Option<&Path>,
) -> Result<Datasets<ImageBatch>> {
    let dir = resolve_dir(dir, source.subdir);
    try_cached_datasets((source.name, batch_size, image_size, dir.clone()), || {
        let (train, test) = load(source, &dir)?;
        image_datasets(&train, &test, batch_size, image_size, Key::new(source.seed))
    })
}

/// Fashion-MNIST as [`ImageBatch`]es of `image_size` (the JAX library's
/// `fashion_mnist_datasets`; `(8, 8)` with batch size 128 is the learned-optimization
/// benchmark's setting). Splits: 48,000 / 6,000 / 6,000 training images and the 10,000
/// test images. Cached by its arguments (the resolved directory included), so tasks
/// built alike share streams; shuffled with a fixed key.
///
/// Errors: as [`load_fashion_mnist`] and [`image_datasets`].
pub fn fashion_mnist_datasets(
    batch_size: usize,
    image_size: (usize, usize),
    dir: Option<&Path>,
) -> Result<Datasets<ImageBatch>> {
    cached_idx_datasets(&FASHION, batch_size, image_size, dir)
}

/// MNIST as [`ImageBatch`]es of `image_size`, like [`fashion_mnist_datasets`]; the files
/// are looked up in `dir`, else `$LOPT_DATA_DIR/mnist/`, else `/usr/share/datasets/mnist/`.
pub fn mnist_datasets(
    batch_size: usize,
    image_size: (usize, usize),
    dir: Option<&Path>,
) -> Result<Datasets<ImageBatch>> {
    cached_idx_datasets(&MNIST, batch_size, image_size, dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// `n` one-pixel images whose value is their index, labels = index % 10.
    fn numbered(n: usize) -> LabeledImages {
        LabeledImages {
            count: n,
            height: 1,
            width: 1,
            channels: 1,
            pixels: (0..n).map(|i| i as u8).collect(),
            labels: (0..n).map(|i| (i % 10) as i32).collect(),
            max_value: 255.0,
            num_classes: 10,
        }
    }

    /// [`numbered`] as preprocessed examples.
    fn one_pixel_examples(n: usize) -> Arc<Examples> {
        let file = numbered(n);
        Arc::new(Examples {
            pixels: file.preprocess((1, 1)).unwrap(),
            labels: file.labels.clone(),
            dim: 1,
            shape: (1, 1, 1),
        })
    }

    fn epoch_ids(it: &mut EpochBatches, batches: usize) -> Vec<usize> {
        (0..batches)
            .flat_map(|_| {
                let b = it.next().unwrap();
                b.image
                    .iter()
                    .map(|v| (v * 255.0).round() as usize)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// `nth(k)` is `k + 1` calls of `next` within an epoch, across one and across many
    /// (a mutation that skips whole epochs without advancing the epoch counter fails).
    #[test]
    fn nth_skips_exactly_as_next_would() {
        let ex = one_pixel_examples(23);
        for start in [0, 1, 3] {
            for k in [0, 1, 4, 5, 6, 11, 17, 40] {
                let mut a = EpochBatches::new(ex.clone(), 0..23, 4, Key::new(9));
                let mut b = EpochBatches::new(ex.clone(), 0..23, 4, Key::new(9));
                for _ in 0..start {
                    a.next();
                    b.next();
                }
                for _ in 0..k {
                    a.next();
                }
                let (x, y) = (a.next().unwrap(), b.nth(k).unwrap());
                assert_eq!(
                    (x.label, x.image),
                    (y.label, y.image),
                    "start {start}, k {k}"
                );
                assert_eq!(a.next().unwrap().label, b.next().unwrap().label);
            }
        }
    }

    #[test]
    fn epochs_are_permutations_with_the_remainder_dropped() {
        let ex = one_pixel_examples(23);
        // Split 3..23 (20 examples) in batches of 6: 3 batches an epoch, 2 dropped.
        let mut it = EpochBatches::new(ex, 3..23, 6, Key::new(5));
        let e1 = epoch_ids(&mut it, 3);
        let e2 = epoch_ids(&mut it, 3);
        for e in [&e1, &e2] {
            assert_eq!(e.len(), 18);
            assert_eq!(
                e.iter().collect::<HashSet<_>>().len(),
                18,
                "repeat within an epoch"
            );
            assert!(
                e.iter().all(|i| (3..23).contains(i)),
                "example outside the split"
            );
        }
        assert_ne!(e1, e2, "two epochs in the same order");
    }

    #[test]
    fn labels_follow_their_images() {
        let file = numbered(40);
        let test = numbered(12);
        let ds = image_datasets(&file, &test, 4, (1, 1), Key::new(1)).unwrap();
        for split in Split::ALL {
            let b = ds.next(split).unwrap();
            assert_eq!(
                (b.batch_size(), b.height, b.width, b.channels),
                (4, 1, 1, 1)
            );
            for (v, &l) in b.image.iter().zip(&b.label) {
                assert_eq!((v * 255.0).round() as i32 % 10, l);
            }
        }
        assert_eq!(ds.extra_info().num_classes, Some(10));
    }

    #[test]
    fn split_ranges_are_80_10_10() {
        let file = numbered(50);
        let test = numbered(7);
        // Batch = whole split: each batch is exactly the split's set of examples.
        let ds = image_datasets(&file, &test, 5, (1, 1), Key::new(2)).unwrap();
        let ids = |b: ImageBatch| -> HashSet<usize> {
            b.image
                .iter()
                .map(|v| (v * 255.0).round() as usize)
                .collect()
        };
        let iv = ids(ds.inner_valid().unwrap());
        let ov = ids(ds.outer_valid().unwrap());
        assert_eq!(iv, (40..45).collect());
        assert_eq!(ov, (45..50).collect());
        let tr: HashSet<usize> = (0..8).flat_map(|_| ids(ds.train().unwrap())).collect();
        assert_eq!(tr, (0..40).collect());
    }

    #[test]
    fn batch_size_must_fit_every_split() {
        let (file, test) = (numbered(50), numbered(7));
        for bs in [0, 6, 8] {
            assert!(matches!(
                image_datasets(&file, &test, bs, (1, 1), Key::new(0)),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn resize_identity_and_upsampling_edges() {
        let src = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(
            resize_bilinear(&src, (2, 2, 1), (2, 2)).unwrap(),
            src.to_vec()
        );
        // 1x2 -> 1x4: positions -0.25, 0.25, 0.75, 1.25, clamped at the edges.
        let up = resize_bilinear(&[0.0, 4.0], (1, 2, 1), (1, 4)).unwrap();
        assert_eq!(up, vec![0.0, 1.0, 3.0, 4.0]);
        assert!(resize_bilinear(&src, (2, 2, 1), (0, 2)).is_err());
        assert!(resize_bilinear(&src[..3], (2, 2, 1), (1, 1)).is_err());
    }

    #[test]
    fn missing_files_say_how_to_get_them() {
        let dir = std::env::temp_dir().join("lopt-no-such-dataset-dir");
        match fashion_mnist_datasets(8, (8, 8), Some(&dir)) {
            Err(Error::DatasetMissing { help, .. }) => {
                assert!(help.contains("apt-get install dataset-fashion-mnist"))
            }
            other => panic!("expected DatasetMissing, got {other:?}"),
        }
    }
}
