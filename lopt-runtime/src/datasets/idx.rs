//! A reader for the IDX format of MNIST and Fashion-MNIST, gzip-compressed or plain.
//!
//! An IDX file is a header followed by raw data:
//!
//! | bytes | content |
//! |---|---|
//! | 0, 1 | zero |
//! | 2 | element type: `0x08` = unsigned byte (the only type MNIST files use) |
//! | 3 | rank *r* (3 for images: count, rows, columns; 1 for labels: count) |
//! | 4 .. 4+4*r | the *r* dimensions, big-endian `u32` |
//! | then | the elements, row-major, exactly the product of the dimensions |
//!
//! Files starting with the gzip magic bytes `1f 8b` are decompressed first, so the
//! official `*.gz` files are read as distributed. Every malformed input is a typed
//! [`IdxError`], never a panic; sizes are checked against the data actually present
//! before anything is allocated from header values.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// The IDX element type code for unsigned bytes.
pub const IDX_U8: u8 = 0x08;

pub use crate::error::IdxError;

impl std::error::Error for IdxError {}

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// The images of an IDX images file (rank 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows (height) of each image.
    pub rows: usize,
    /// Columns (width) of each image.
    pub cols: usize,
    /// Pixels, image after image, each image row-major.
    pub pixels: Vec<u8>,
}

/// Decompresses `bytes` if they start with the gzip magic `1f 8b`, else borrows them.
pub fn decompress(bytes: &[u8]) -> Result<Cow<'_, [u8]>, IdxError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| IdxError::Gzip(e.to_string()))?;
        Ok(Cow::Owned(out))
    } else {
        Ok(Cow::Borrowed(bytes))
    }
}

/// Parses an IDX array of unsigned bytes with `rank` dimensions (gzip or plain).
pub fn parse_idx(bytes: &[u8], rank: u8) -> Result<IdxArray, IdxError> {
    let bytes = decompress(bytes)?;
    let found = bytes.len() as u64;
    if bytes.len() < 4 {
        return Err(IdxError::Truncated { expected: 4, found });
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(IdxError::BadMagic {
            found: [bytes[0], bytes[1]],
        });
    }
    if bytes[2] != IDX_U8 {
        return Err(IdxError::WrongDtype {
            expected: IDX_U8,
            found: bytes[2],
        });
    }
    if bytes[3] != rank {
        return Err(IdxError::WrongRank {
            expected: rank,
            found: bytes[3],
        });
    }
    let header = 4 + 4 * usize::from(rank);
    if bytes.len() < header {
        return Err(IdxError::Truncated {
            expected: header as u64,
            found,
        });
    }
    let dims: Vec<u32> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // Elements (the product of the dimensions; 1 for rank 0) plus the header, checked.
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))
        .and_then(|count| count.checked_add(header as u64))
        .filter(|&total| usize::try_from(total).is_ok())
        .ok_or_else(|| IdxError::DimsOverflow { dims: dims.clone() })?;
    if found < expected {
        return Err(IdxError::Truncated { expected, found });
    }
    if found > expected {
        return Err(IdxError::SizeMismatch { expected, found });
    }
    Ok(IdxArray {
        dims: dims.iter().map(|&d| d as usize).collect(),
        data: bytes[header..].to_vec(),
    })
}

/// Parses an IDX images file: unsigned bytes, rank 3 (count, rows, columns).
pub fn parse_images(bytes: &[u8]) -> Result<IdxImages, IdxError> {
    let a = parse_idx(bytes, 3)?;
    let (count, rows, cols) = (a.dims[0], a.dims[1], a.dims[2]);
    if rows == 0 || cols == 0 {
        return Err(IdxError::ZeroDimension {
            dims: a.dims.iter().map(|&d| d as u32).collect(),
        });
    }
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: a.data,
    })
}

/// Parses an IDX labels file: unsigned bytes, rank 1.
pub fn parse_labels(bytes: &[u8]) -> Result<Vec<u8>, IdxError> {
    Ok(parse_idx(bytes, 1)?.data)
}

/// Parses an images file and its labels file, checking they hold the same number of
/// examples.
pub fn parse_pair(images: &[u8], labels: &[u8]) -> Result<(IdxImages, Vec<u8>), IdxError> {
    let images = parse_images(images)?;
    let labels = parse_labels(labels)?;
    if images.count != labels.len() {
        return Err(IdxError::CountMismatch {
            images: images.count,
            labels: labels.len(),
        });
    }
    Ok((images, labels))
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn at(path: &Path) -> impl FnOnce(IdxError) -> Error + '_ {
    move |error| Error::Idx {
        path: path.display().to_string(),
        error,
    }
}

/// Reads an IDX images file (gzip or plain). Errors: [`Error::Io`], [`Error::Idx`].
pub fn read_images(path: &Path) -> Result<IdxImages> {
    parse_images(&read_file(path)?).map_err(at(path))
}

/// Reads an IDX labels file (gzip or plain). Errors: [`Error::Io`], [`Error::Idx`].
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    parse_labels(&read_file(path)?).map_err(at(path))
}

/// Reads an images file and its labels file, checking the counts agree.
/// Errors: [`Error::Io`], [`Error::Idx`] (for a count mismatch, with the labels path).
pub fn read_pair(images: &Path, labels: &Path) -> Result<(IdxImages, Vec<u8>)> {
    let imgs = read_images(images)?;
    let labs = read_labels(labels)?;
    if imgs.count != labs.len() {
        return Err(at(labels)(IdxError::CountMismatch {
            images: imgs.count,
            labels: labs.len(),
        }));
    }
    Ok((imgs, labs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dtype: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, dtype, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn reads_a_small_plain_file() {
        let bytes = idx(0x08, &[2, 1, 3], &[1, 2, 3, 4, 5, 6]);
        let img = parse_images(&bytes).unwrap();
        assert_eq!((img.count, img.rows, img.cols), (2, 1, 3));
        assert_eq!(img.pixels, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn each_malformation_has_its_error() {
        let ok = idx(0x08, &[2, 1, 3], &[0; 6]);
        let mut bad = ok.clone();
        bad[1] = 3;
        assert_eq!(
            parse_images(&bad),
            Err(IdxError::BadMagic { found: [0, 3] })
        );
        assert_eq!(
            parse_images(&idx(0x0D, &[2, 1, 3], &[0; 24])),
            Err(IdxError::WrongDtype {
                expected: 0x08,
                found: 0x0D
            })
        );
        assert_eq!(
            parse_labels(&ok),
            Err(IdxError::WrongRank {
                expected: 1,
                found: 3
            })
        );
        assert_eq!(
            parse_images(&ok[..ok.len() - 1]),
            Err(IdxError::Truncated {
                expected: 22,
                found: 21
            })
        );
        assert_eq!(
            parse_images(&ok[..10]),
            Err(IdxError::Truncated {
                expected: 16,
                found: 10
            })
        );
        assert_eq!(
            parse_images(&[]),
            Err(IdxError::Truncated {
                expected: 4,
                found: 0
            })
        );
        let mut long = ok.clone();
        long.push(0);
        assert_eq!(
            parse_images(&long),
            Err(IdxError::SizeMismatch {
                expected: 22,
                found: 23
            })
        );
        let huge = [u32::MAX; 3];
        assert_eq!(
            parse_images(&idx(0x08, &huge, &[])),
            Err(IdxError::DimsOverflow {
                dims: huge.to_vec()
            })
        );
        assert_eq!(
            parse_images(&idx(0x08, &[2, 0, 3], &[])),
            Err(IdxError::ZeroDimension {
                dims: vec![2, 0, 3]
            })
        );
        assert_eq!(
            parse_pair(&ok, &idx(0x08, &[3], &[0, 1, 2])),
            Err(IdxError::CountMismatch {
                images: 2,
                labels: 3
            })
        );
        assert!(matches!(
            parse_images(&[0x1f, 0x8b, 1, 2, 3]),
            Err(IdxError::Gzip(_))
        ));
    }
}
