//! The CIFAR-10 binary reader, on files this test writes from the format's definition:
//! layout (planar RGB -> NHWC), scaling, splits, and every malformed input as a typed error.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use lopt::datasets::cifar::{
    self, load_cifar10, parse_batch, read_batch_file, CifarError, PLANE, RECORD_BYTES,
};
use lopt::datasets::{cifar10_datasets, Split};
use lopt::Error;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lopt-cifar-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The value the test writes for image `id`, channel `c`, row `y`, column `x`: distinct
/// across channels and positions, and carrying the image id (mod 4) in its low bits.
fn pixel(id: usize, c: usize, y: usize, x: usize) -> u8 {
    ((c * 67 + y * 7 + x * 3) * 4 % 256 + id % 4) as u8
}

/// One record written as the format defines it: label, then the R, G, B planes, each row
/// by row.
fn record(id: usize, label: u8) -> Vec<u8> {
    let mut r = vec![label];
    for c in 0..3 {
        for y in 0..32 {
            for x in 0..32 {
                r.push(pixel(id, c, y, x));
            }
        }
    }
    assert_eq!(r.len(), RECORD_BYTES);
    r
}

/// Writes the six files: `per_file` records each, image ids numbered through the
/// training files, label = id % 10.
fn write_cifar(dir: &Path, per_file: usize) {
    let mut id = 0;
    for name in cifar::TRAIN_FILES.iter().chain([&cifar::TEST_FILE]) {
        let mut bytes = Vec::new();
        for _ in 0..per_file {
            bytes.extend(record(id, (id % 10) as u8));
            id += 1;
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Planar RGB becomes NHWC: value `(y, x, c)` at `(y * 32 + x) * 3 + c` is byte
/// `1 + c * 1024 + y * 32 + x` of the record (a reader that keeps the planes, or swaps
/// x and y, fails).
#[test]
fn planes_become_nhwc() {
    let mut bytes = record(5, 3);
    bytes.extend(record(6, 9));
    let images = parse_batch(&bytes).unwrap();
    assert_eq!(
        (images.count, images.height, images.width, images.channels),
        (2, 32, 32, 3)
    );
    assert_eq!(images.labels, vec![3, 9]);
    assert_eq!(images.max_value, 255.0);
    for (k, id) in [5usize, 6].into_iter().enumerate() {
        for y in 0..32 {
            for x in 0..32 {
                for c in 0..3 {
                    assert_eq!(
                        images.pixels[k * 3 * PLANE + (y * 32 + x) * 3 + c],
                        pixel(id, c, y, x),
                        "image {k} at ({y}, {x}, {c})"
                    );
                }
            }
        }
    }
}

/// Datasets from the written files: [0, 1] values equal to byte / 255 in NHWC order,
/// labels with their images, train/inner/outer = 80/10/10% of the training files in
/// file order, test = the test file.
#[test]
fn datasets_scale_split_and_keep_labels() {
    let dir = temp_dir("ok");
    write_cifar(&dir, 4); // 20 training images, 4 test images
    let ds = cifar10_datasets(2, (32, 32), Some(&dir)).unwrap();
    assert_eq!(ds.extra_info().num_classes, Some(10));
    let mut seen: [HashSet<i32>; 4] = Default::default();
    for (s, split) in Split::ALL.into_iter().enumerate() {
        for _ in 0..8 {
            let b = ds.next(split).unwrap();
            assert_eq!(
                (b.batch_size(), b.height, b.width, b.channels),
                (2, 32, 32, 3)
            );
            assert_eq!(b.image.ncols(), 3072);
            for (r, &label) in b.label.iter().enumerate() {
                // Label = id % 10 and pixel low bits = id % 4: recover id from both.
                let low = (b.image[(r, 0)] * 255.0).round() as usize % 4;
                let id = (0..24).find(|i| i % 10 == label as usize && i % 4 == low);
                let id = id.unwrap() as i32;
                seen[s].insert(label);
                for y in [0, 13, 31] {
                    for x in [0, 20, 31] {
                        for c in 0..3 {
                            let v = b.image[(r, (y * 32 + x) * 3 + c)];
                            let want = f32::from(pixel(id as usize, c, y, x)) / 255.0;
                            assert_eq!(v, want, "({y}, {x}, {c})");
                        }
                    }
                }
            }
        }
    }
    // Training ids 0..16 (labels 0..9), inner 16..18, outer 18..20, test 20..24.
    assert_eq!(seen[0], (0..10).collect());
    assert_eq!(seen[1], [6, 7].into_iter().collect());
    assert_eq!(seen[2], [8, 9].into_iter().collect());
    assert_eq!(seen[3], [0, 1, 2, 3].into_iter().collect());
    let small = cifar10_datasets(2, (8, 8), Some(&dir)).unwrap();
    assert_eq!(small.train().unwrap().image.shape(), (2, 8 * 8 * 3));
    let (train, test) = load_cifar10(Some(&dir)).unwrap();
    assert_eq!((train.count, test.count), (20, 4));
    assert_eq!(train.labels[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
}

/// The parent folder works too (the archive's `cifar-10-batches-bin/` inside it).
#[test]
fn parent_folder_is_searched() {
    let dir = temp_dir("parent");
    let inner = dir.join(cifar::SUBDIR);
    std::fs::create_dir_all(&inner).unwrap();
    write_cifar(&inner, 2);
    let (train, test) = load_cifar10(Some(&dir)).unwrap();
    assert_eq!((train.count, test.count), (10, 2));
}

/// Malformed bytes are typed errors (a reader that reads the whole records it can and
/// ignores the rest, or accepts label 10, fails).
#[test]
fn malformed_batches_are_typed_errors() {
    let two = [record(0, 1), record(1, 2)].concat();
    assert_eq!(
        parse_batch(&two[..2 * RECORD_BYTES - 5]),
        Err(CifarError::Truncated {
            records: 1,
            trailing: RECORD_BYTES - 5
        })
    );
    // CIFAR-100's records have two label bytes: 3,074 bytes each.
    let cifar100: Vec<u8> = (0..2)
        .flat_map(|i| {
            let mut r = vec![1u8];
            r.extend(record(i, 1));
            r
        })
        .collect();
    assert_eq!(
        parse_batch(&cifar100),
        Err(CifarError::Truncated {
            records: 2,
            trailing: 2
        })
    );
    assert_eq!(parse_batch(&[]), Err(CifarError::Empty));
    let mut bad = two.clone();
    bad[RECORD_BYTES] = 10;
    assert_eq!(
        parse_batch(&bad),
        Err(CifarError::LabelOutOfRange {
            index: 1,
            label: 10
        })
    );
    assert!(parse_batch(&two).is_ok());
}

/// File-level errors: a malformed file is `Error::Data` naming it; a missing file is
/// `DatasetMissing` with instructions; nothing panics.
#[test]
fn bad_and_missing_files() {
    let dir = temp_dir("bad");
    write_cifar(&dir, 2);
    let path = dir.join("data_batch_3.bin");
    std::fs::write(&path, &record(0, 1)[..100]).unwrap();
    match load_cifar10(Some(&dir)) {
        Err(Error::Data(m)) => assert!(m.contains("data_batch_3.bin") && m.contains("3073")),
        other => panic!("expected Error::Data, got {other:?}"),
    }
    assert!(matches!(
        cifar10_datasets(2, (32, 32), Some(&dir)),
        Err(Error::Data(_))
    ));
    std::fs::remove_file(&path).unwrap();
    match load_cifar10(Some(&dir)) {
        Err(Error::DatasetMissing { path, help, .. }) => {
            assert!(path.ends_with("data_batch_3.bin"));
            assert!(help.contains("cifar-10-binary.tar.gz"));
        }
        other => panic!("expected DatasetMissing, got {other:?}"),
    }
    assert!(matches!(
        read_batch_file(&dir.join("nope.bin")),
        Err(Error::DatasetMissing { .. })
    ));
    // A batch larger than a split is refused, not an endless stream.
    write_cifar(&dir, 2); // 10 training images: inner_valid has 1
    assert!(matches!(
        cifar10_datasets(2, (32, 32), Some(&dir)),
        Err(Error::InvalidArgument(_))
    ));
}
