//! The UCI handwritten digits, embedded: a small real dataset that needs no download.
//!
//! 1,797 grayscale images of 8x8 pixels, digits 0-9, each pixel the count (0..16) of "on"
//! pixels in a 4x4 block of a 32x32 bitmap. Pixels are scaled into `[0, 1]` by dividing
//! by 16 (the counterpart of MNIST's division by 255).
//!
//! Splits: the **last 297** images are `test`; the first 1,500 are split 80% / 10% / 10%
//! into `train` (1,200), `inner_valid` (150) and `outer_valid` (150), contiguous as for
//! the MNIST-format datasets. So batch sizes up to 150 work. Batches are shuffled every
//! epoch and prefetched exactly like [`super::image`]'s datasets.
//!
//! Source and licence: the file is `digits.csv.gz` as shipped with scikit-learn (a copy
//! of the test set of "Optical Recognition of Handwritten Digits", E. Alpaydin and
//! C. Kaynak, 1998, UCI Machine Learning Repository, <https://doi.org/10.24432/C50P49>),
//! licensed under CC BY 4.0. One line per image: 64 pixel values then the label.

use std::io::Read;

use std::path::Path;

use super::image::{
    fashion_mnist_datasets, image_datasets, ImageBatch, ImageSource, LabeledImages,
};
use super::{try_cached_datasets, Datasets};
use crate::error::{Error, Result};
use crate::key::Key;

/// The embedded file (57 KB, gzip-compressed CSV).
pub const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Number of images.
pub const NUM_DIGITS: usize = 1797;

/// Images at the end of the file used as the `test` split.
pub const NUM_TEST_DIGITS: usize = 297;

const SEED: u64 = 0xd161_7500;

/// Parses the digits CSV format (gzip or plain): lines of 64 pixel values in 0..16
/// followed by a label in 0..9.
///
/// Errors: [`Error::Data`] naming the line of any malformed entry.
pub fn parse_digits_csv(bytes: &[u8]) -> Result<LabeledImages> {
    let mut text = String::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut text)
            .map_err(|e| Error::Data(format!("digits: gzip: {e}")))?;
    } else {
        text = String::from_utf8(bytes.to_vec())
            .map_err(|e| Error::Data(format!("digits: not UTF-8: {e}")))?;
    }
    let mut pixels = Vec::with_capacity(NUM_DIGITS * 64);
    let mut labels = Vec::with_capacity(NUM_DIGITS);
    for (line_no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |what: &str| Error::Data(format!("digits line {}: {what}", line_no + 1));
        let values = line
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<u8>()
                    .map_err(|e| bad(&format!("`{v}`: {e}")))
            })
            .collect::<Result<Vec<u8>>>()?;
        if values.len() != 65 {
            return Err(bad(&format!("{} values, expected 65", values.len())));
        }
        if values[..64].iter().any(|&p| p > 16) || values[64] > 9 {
            return Err(bad("pixel above 16 or label above 9"));
        }
        pixels.extend_from_slice(&values[..64]);
        labels.push(i32::from(values[64]));
    }
    Ok(LabeledImages {
        count: labels.len(),
        height: 8,
        width: 8,
        channels: 1,
        pixels,
        labels,
        max_value: 16.0,
        num_classes: 10,
    })
}

/// All 1,797 embedded digits, raw (values 0..16).
pub fn load_digits() -> Result<LabeledImages> {
    parse_digits_csv(DIGITS_CSV_GZ)
}

/// The embedded digits as 8x8 [`ImageBatch`]es in `[0, 1]` (see the [module docs](self)
/// for the splits). Cached by batch size, so tasks built alike share streams.
///
/// Errors: [`Error::InvalidArgument`] if `batch_size` is 0 or above 150.
///
/// ```
/// let ds = lopt_runtime::datasets::digits_datasets(32)?;
/// let batch = ds.train()?;
/// assert_eq!(batch.image.shape(), (32, 64));
/// assert!(batch.label.iter().all(|&l| (0..10).contains(&l)));
/// # Ok::<(), lopt_runtime::Error>(())
/// ```
pub fn digits_datasets(batch_size: usize) -> Result<Datasets<ImageBatch>> {
    digits_datasets_resized(batch_size, (8, 8))
}

/// The embedded digits resized (bilinear, as the MNIST-format datasets) to
/// `image_size = (height, width)`; otherwise as [`digits_datasets`].
pub fn digits_datasets_resized(
    batch_size: usize,
    image_size: (usize, usize),
) -> Result<Datasets<ImageBatch>> {
    try_cached_datasets(("digits", batch_size, image_size), || {
        let all = load_digits()?;
        let train = all.slice(0..NUM_DIGITS - NUM_TEST_DIGITS)?;
        let test = all.slice(NUM_DIGITS - NUM_TEST_DIGITS..NUM_DIGITS)?;
        image_datasets(&train, &test, batch_size, image_size, Key::new(SEED))
    })
}

/// Fashion-MNIST if its files are found, else the embedded digits resized to
/// `image_size`, and which one was used.
///
/// Only *absent* files fall back ([`Error::DatasetMissing`]); files that exist but are
/// unreadable or malformed are reported, not silently replaced.
pub fn image_datasets_or_digits(
    batch_size: usize,
    image_size: (usize, usize),
    dir: Option<&Path>,
) -> Result<(Datasets<ImageBatch>, ImageSource)> {
    match fashion_mnist_datasets(batch_size, image_size, dir) {
        Ok(ds) => Ok((ds, ImageSource::FashionMnist)),
        Err(Error::DatasetMissing { .. }) => Ok((
            digits_datasets_resized(batch_size, image_size)?,
            ImageSource::Digits,
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn absent_fashion_mnist_falls_back_to_the_digits() {
        let dir = std::env::temp_dir().join("lopt-no-such-dataset-dir");
        let (ds, source) = image_datasets_or_digits(8, (8, 8), Some(&dir)).unwrap();
        assert_eq!(source, ImageSource::Digits);
        assert_eq!(ds.train().unwrap().image.shape(), (8, 64));
    }

    use super::*;

    #[test]
    fn embedded_file_parses() {
        let d = load_digits().unwrap();
        assert_eq!(d.count, NUM_DIGITS);
        assert_eq!(d.pixels.len(), NUM_DIGITS * 64);
        // The first line of the file, as printed by `zcat digits.csv.gz | head -1`.
        assert_eq!(&d.pixels[..8], &[0, 0, 5, 13, 9, 1, 0, 0]);
        assert_eq!(d.labels[..3], [0, 1, 2]);
    }

    #[test]
    fn malformed_csv_is_an_error() {
        assert!(parse_digits_csv(b"1,2,3\n").is_err());
        let mut line = vec!["0"; 64];
        line.push("3");
        assert_eq!(
            parse_digits_csv(line.join(",").as_bytes()).unwrap().labels,
            vec![3]
        );
        line[0] = "17";
        assert!(parse_digits_csv(line.join(",").as_bytes()).is_err());
        line[0] = "x";
        assert!(parse_digits_csv(line.join(",").as_bytes()).is_err());
    }

    #[test]
    fn batch_size_limits() {
        assert!(digits_datasets(150).is_ok());
        assert!(matches!(
            digits_datasets(151),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(digits_datasets(0), Err(Error::InvalidArgument(_))));
    }
}
