//! A reader for CIFAR-10's binary batches, and CIFAR-10 image datasets (the JAX library's
//! `cifar10_datasets`).
//!
//! The official `cifar-10-batches-bin` folder (from `cifar-10-binary.tar.gz`) holds
//! `data_batch_1.bin` .. `data_batch_5.bin` (training, 10,000 images each) and
//! `test_batch.bin`. Each file is a sequence of records of [`RECORD_BYTES`] = 3,073 bytes:
//!
//! | bytes | content |
//! |---|---|
//! | 0 | the label, `0..=9` |
//! | 1 .. 1025 | the red plane, 32 rows of 32 pixels, row-major |
//! | 1025 .. 2049 | the green plane |
//! | 2049 .. 3073 | the blue plane |
//!
//! Images are converted to NHWC (`(y, x, c)`, the layout of [`ImageBatch`]) and, like the
//! JAX library's `image_classification_datasets`, resized (bilinear, identity at 32x32)
//! and divided by 255 into `[0, 1]`, with no mean/std normalization. Splits as the JAX
//! library's: `train` = the first 80% of the 50,000 training images (files in order
//! 1..5), `inner_valid` the next 10%, `outer_valid` the last 10%, `test` = `test_batch`.
//! tfds orders the training images differently, so the split membership is not the
//! library's, only its proportions.
//!
//! Every malformed file is a typed [`CifarError`] (wrapped in [`Error::Data`] with the
//! path by the file-level readers), never a panic.

use std::fmt;
use std::path::{Path, PathBuf};

use super::image::{image_datasets, ImageBatch, LabeledImages, DATA_DIR_ENV, DEFAULT_DATA_ROOT};
use super::{try_cached_datasets, Datasets};
use crate::error::{Error, Result};
use crate::key::Key;

/// Side of a CIFAR-10 image.
pub const SIDE: usize = 32;
/// Pixels per channel plane.
pub const PLANE: usize = SIDE * SIDE;
/// Bytes of one record: a label byte and three planes.
pub const RECORD_BYTES: usize = 1 + 3 * PLANE;
/// Number of classes.
pub const NUM_CLASSES: usize = 10;
/// The training files, in the order they are concatenated.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";
/// The folder the official archive unpacks to.
pub const SUBDIR: &str = "cifar-10-batches-bin";

/// What is wrong with a CIFAR-10 binary batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CifarError {
    /// The file holds no record.
    Empty,
    /// The file's length is not a whole number of records: the last one is cut short,
    /// or the file is of another format (CIFAR-100's records are 3,074 bytes).
    Truncated {
        /// Complete records present.
        records: usize,
        /// Bytes left over after them.
        trailing: usize,
    },
    /// A label byte outside `0..=9`.
    LabelOutOfRange {
        /// The record's index in the file.
        index: usize,
        /// The label found.
        label: u8,
    },
}

impl fmt::Display for CifarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CifarError::Empty => f.write_str("no CIFAR-10 record in the file"),
            CifarError::Truncated { records, trailing } => write!(
                f,
                "not a whole number of {RECORD_BYTES}-byte CIFAR-10 records: {records} \
                 records and {trailing} bytes left over (truncated, or another format)"
            ),
            CifarError::LabelOutOfRange { index, label } => {
                write!(f, "record {index} has label {label}, outside 0..=9")
            }
        }
    }
}

impl std::error::Error for CifarError {}

/// Parses the records of one binary batch into raw NHWC images (0..255) and labels.
///
/// Errors: [`CifarError::Empty`], [`CifarError::Truncated`] (checked before anything is
/// read), [`CifarError::LabelOutOfRange`].
///
/// ```
/// use lopt_runtime::datasets::cifar::{parse_batch, PLANE, RECORD_BYTES};
/// let mut record = vec![0u8; RECORD_BYTES];
/// record[0] = 7; // label
/// record[1] = 10; // red of pixel (0, 0)
/// record[1 + PLANE] = 20; // green of pixel (0, 0)
/// record[1 + 2 * PLANE + 1] = 30; // blue of pixel (0, 1)
/// let images = parse_batch(&record)?;
/// assert_eq!(images.labels, vec![7]);
/// assert_eq!(&images.pixels[..6], &[10, 20, 0, 0, 0, 30]);
/// # Ok::<(), lopt_runtime::datasets::cifar::CifarError>(())
/// ```
pub fn parse_batch(bytes: &[u8]) -> Result<LabeledImages, CifarError> {
    let records = bytes.len() / RECORD_BYTES;
    let trailing = bytes.len() % RECORD_BYTES;
    if trailing != 0 {
        return Err(CifarError::Truncated { records, trailing });
    }
    if records == 0 {
        return Err(CifarError::Empty);
    }
    let mut pixels = Vec::with_capacity(records * 3 * PLANE);
    let mut labels = Vec::with_capacity(records);
    for (index, record) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        let label = record[0];
        if usize::from(label) >= NUM_CLASSES {
            return Err(CifarError::LabelOutOfRange { index, label });
        }
        labels.push(i32::from(label));
        let planes = &record[1..];
        for p in 0..PLANE {
            for c in 0..3 {
                pixels.push(planes[c * PLANE + p]);
            }
        }
    }
    Ok(LabeledImages {
        count: records,
        height: SIDE,
        width: SIDE,
        channels: 3,
        pixels,
        labels,
        max_value: 255.0,
        num_classes: NUM_CLASSES,
    })
}

const HELP: &str = "Download the CIFAR-10 binary version (cifar-10-binary.tar.gz, from \
     https://www.cs.toronto.edu/~kriz/cifar.html), unpack it and pass the folder \
     cifar-10-batches-bin (or its parent) as `dir`, or put it in $LOPT_DATA_DIR/.";

/// The folder searched: `dir`, else `$LOPT_DATA_DIR`, else `/usr/share/datasets`; in each
/// case its `cifar-10-batches-bin/` when it has one, else the folder itself.
fn resolve_dir(dir: Option<&Path>) -> PathBuf {
    let base = match (dir, std::env::var_os(DATA_DIR_ENV)) {
        (Some(d), _) => d.to_path_buf(),
        (None, Some(e)) => PathBuf::from(e),
        (None, None) => PathBuf::from(DEFAULT_DATA_ROOT),
    };
    let nested = base.join(SUBDIR);
    if nested.is_dir() {
        nested
    } else {
        base
    }
}

/// Reads one binary batch file.
///
/// Errors: [`Error::DatasetMissing`] if it does not exist, [`Error::Io`] if it cannot be
/// read, [`Error::Data`] naming the file and the [`CifarError`] if it is malformed.
pub fn read_batch_file(path: &Path) -> Result<LabeledImages> {
    if !path.is_file() {
        return Err(Error::DatasetMissing {
            dataset: "CIFAR-10".into(),
            path: path.display().to_string(),
            help: HELP.into(),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    parse_batch(&bytes).map_err(|e| Error::Data(format!("{}: {e}", path.display())))
}

/// Reads the five training files (concatenated in order) and the test file from `dir` or
/// the default lookup (see [`cifar10_datasets`]); raw, unresized.
///
/// Errors: as [`read_batch_file`], for the first file that fails.
pub fn load_cifar10(dir: Option<&Path>) -> Result<(LabeledImages, LabeledImages)> {
    let dir = resolve_dir(dir);
    let mut train: Option<LabeledImages> = None;
    for name in TRAIN_FILES {
        let part = read_batch_file(&dir.join(name))?;
        match &mut train {
            None => train = Some(part),
            Some(t) => {
                t.count += part.count;
                t.pixels.extend(part.pixels);
                t.labels.extend(part.labels);
            }
        }
    }
    let test = read_batch_file(&dir.join(TEST_FILE))?;
    let train = train.ok_or_else(|| Error::Data("no CIFAR-10 training file".into()))?;
    Ok((train, test))
}

/// CIFAR-10 as [`ImageBatch`]es of `image_size` (`(32, 32)` is the original size; the JAX
/// library's `cifar10_datasets`): 40,000 / 5,000 / 5,000 training images and the 10,000
/// test images with the official files. Cached by its arguments (the resolved directory
/// included); shuffled with a fixed key. The files are looked up in `dir`, else
/// `$LOPT_DATA_DIR`, else `/usr/share/datasets`, each as its `cifar-10-batches-bin/`
/// when it has one, else the folder itself.
///
/// Errors: as [`load_cifar10`] and [`image_datasets`].
pub fn cifar10_datasets(
    batch_size: usize,
    image_size: (usize, usize),
    dir: Option<&Path>,
) -> Result<Datasets<ImageBatch>> {
    let resolved = resolve_dir(dir);
    try_cached_datasets(("CIFAR-10", batch_size, image_size, resolved), || {
        let (train, test) = load_cifar10(dir)?;
        image_datasets(&train, &test, batch_size, image_size, Key::new(0xc1fa_0010))
    })
}
