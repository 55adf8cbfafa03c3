//! Byte-level language-modelling data: the JAX library's batch layout (obs / target
//! shifted by one, pad 0, mask obs != 0), both vocabularies, splits disjoint by
//! document, determinism and resume, the unigram entropy, the reader of text folders,
//! the embedded fallback and the `fortunes` corpus when installed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use lopt::datasets::text::{
    embedded_lm_datasets, lm_vocab_size, read_text_dir, split_documents, ByteVocab, LmOptions,
    SequenceCut, TextSource,
};
use lopt::datasets::{
    fortunes_lm_datasets, lm_datasets, lm_datasets_or_embedded, target_unigram_entropy_bits,
    unigram_entropy_bits, LmBatch, Split, TextCorpus,
};
use lopt::{Error, Key};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lopt-lm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` distinct documents of lengths 1..=40 (some shorter, some longer than T + 1).
fn documents(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let len = 1 + (i * 7) % 40;
            let mut d = format!("{i:03}|").into_bytes();
            d.extend((0..len).map(|k| b'a' + ((i + k) % 26) as u8));
            d
        })
        .collect()
}

fn corpus(n: usize, key: u64) -> TextCorpus {
    TextCorpus::from_documents(TextSource::Memory, documents(n), Key::new(key)).unwrap()
}

/// The example the JAX library makes of `doc` (written here from its definition, not
/// with the library code): ids byte + 3 (seqio) or byte, cropped or padded with 0 to
/// `t + 1`.
fn reference_row(doc: &[u8], t: usize, vocab: ByteVocab) -> Vec<i32> {
    let shift = if vocab == ByteVocab::Seqio { 3 } else { 0 };
    let mut row: Vec<i32> = doc.iter().take(t + 1).map(|&b| b as i32 + shift).collect();
    row.resize(t + 1, 0);
    row
}

/// Row `r` of the batch as the `t + 1` tokens it came from (`obs` then the last target),
/// after checking the shift by one.
fn row_tokens(b: &LmBatch, r: usize) -> Vec<i32> {
    let t = b.seq_len();
    for i in 0..t - 1 {
        assert_eq!(
            b.target[(r, i)],
            b.obs[(r, i + 1)],
            "target is obs shifted by one"
        );
    }
    let mut v: Vec<i32> = (0..t).map(|i| b.obs[(r, i)]).collect();
    v.push(b.target[(r, t - 1)]);
    v
}

/// One epoch of each split is exactly the split's documents, each made into the
/// reference example (a mutation of the crop length, the pad id, the id offset, or the
/// shift between obs and target fails), and the mask is `obs != 0`.
#[test]
fn batches_are_the_libraries_layout() {
    for vocab in [ByteVocab::Seqio, ByteVocab::Raw] {
        let c = corpus(200, 1); // splits of 160 / 10 / 10 / 20 documents
        let t = 12;
        let opts = LmOptions {
            vocab,
            cut: SequenceCut::Crop,
        };
        let ds = lm_datasets(&c, 10, t, opts, Key::new(2)).unwrap();
        assert_eq!(lm_vocab_size(ds.extra_info()), Some(vocab.vocab_size()));
        assert_eq!(
            vocab.vocab_size(),
            if vocab == ByteVocab::Seqio { 259 } else { 256 }
        );
        for split in Split::ALL {
            let docs: Vec<&[u8]> = c.documents(split).collect();
            let mut want: Vec<Vec<i32>> = docs.iter().map(|d| reference_row(d, t, vocab)).collect();
            let mut got = Vec::new();
            for _ in 0..docs.len() / 10 {
                let b = ds.next(split).unwrap();
                assert_eq!((b.batch_size(), b.seq_len()), (10, t));
                let mask = b.mask();
                for r in 0..10 {
                    for i in 0..t {
                        let m = if b.obs[(r, i)] != 0 { 1.0 } else { 0.0 };
                        assert_eq!(mask[(r, i)], m);
                    }
                    got.push(row_tokens(&b, r));
                }
                assert_eq!(b.num_tokens() as f32, mask.sum());
            }
            want.sort();
            got.sort();
            assert_eq!(got, want, "{split} ({vocab:?})");
        }
    }
}

/// Short documents end with the pad id as target after their last byte, then pad; the
/// mask keeps the end-of-document target and nothing after it.
#[test]
fn short_documents_pad_with_zero() {
    let docs: Vec<Vec<u8>> = (0..20).map(|i| vec![b'a' + i as u8; 3]).collect();
    let c = TextCorpus::from_documents(TextSource::Memory, docs, Key::new(0)).unwrap();
    let ds = lm_datasets(&c, 1, 6, LmOptions::default(), Key::new(0)).unwrap();
    let b = ds.test().unwrap();
    let x = b.obs[(0, 0)];
    assert!((i32::from(b'a') + 3..i32::from(b't') + 4).contains(&x));
    assert_eq!(
        b.obs.row(0).iter().copied().collect::<Vec<_>>(),
        [x, x, x, 0, 0, 0]
    );
    assert_eq!(
        b.target.row(0).iter().copied().collect::<Vec<_>>(),
        [x, x, 0, 0, 0, 0]
    );
    assert_eq!(b.num_tokens(), 3);
}

/// `Chunks` uses every byte: over one epoch, the (obs, target) pairs the mask keeps are
/// exactly each document's byte bigrams plus (last byte, pad), counted independently
/// from the documents (a stride of T + 1, which loses the bigram across windows, fails;
/// so does a window too many or too few).
#[test]
fn chunks_cover_every_transition_once() {
    let c = corpus(100, 4);
    let t = 8;
    let opts = LmOptions {
        vocab: ByteVocab::Raw,
        cut: SequenceCut::Chunks,
    };
    let split = Split::Train;
    let mut want: BTreeMap<(i32, i32), usize> = BTreeMap::new();
    let mut windows = 0;
    for d in c.documents(split) {
        for w in d.windows(2) {
            *want.entry((w[0] as i32, w[1] as i32)).or_default() += 1;
        }
        *want.entry((*d.last().unwrap() as i32, 0)).or_default() += 1;
        windows += d.len().div_ceil(t);
    }
    // Batch 1: one epoch is every window exactly once.
    let ds = lm_datasets(&c, 1, t, opts, Key::new(5)).unwrap();
    let mut got: BTreeMap<(i32, i32), usize> = BTreeMap::new();
    for _ in 0..windows {
        let b = ds.train().unwrap();
        for i in 0..t {
            if b.obs[(0, i)] != 0 {
                *got.entry((b.obs[(0, i)], b.target[(0, i)])).or_default() += 1;
            }
        }
    }
    assert_eq!(got, want);
}

/// Splits are disjoint by document, cover every document, have the stated sizes
/// (80 / 5 / 5 / 10%), and a split's batches hold only its own documents.
#[test]
fn splits_are_disjoint_by_document() {
    let c = corpus(200, 7);
    let sizes: Vec<usize> = Split::ALL
        .iter()
        .map(|&s| c.document_indices(s).len())
        .collect();
    assert_eq!(sizes, [160, 10, 10, 20]);
    let mut all = HashSet::new();
    for s in Split::ALL {
        for &i in c.document_indices(s) {
            assert!(all.insert(i), "document {i} in two splits");
        }
    }
    assert_eq!(all.len(), 200);
    // Each document starts with its number: check batches carry their split's numbers.
    let ds = lm_datasets(&c, 5, 6, LmOptions::default(), Key::new(1)).unwrap();
    for s in Split::ALL {
        let own: HashSet<Vec<u8>> = c.documents(s).map(|d| d[..4].to_vec()).collect();
        for _ in 0..10 {
            let b = ds.next(s).unwrap();
            for r in 0..5 {
                let prefix: Vec<u8> = (0..4).map(|i| (b.obs[(r, i)] - 3) as u8).collect();
                assert!(own.contains(&prefix), "{s}: foreign document");
            }
        }
    }
}

fn first_batches(ds: &lopt::datasets::Datasets<LmBatch>, n: usize) -> Vec<Vec<LmBatch>> {
    Split::ALL
        .iter()
        .map(|&s| ds.batches(s, n).unwrap())
        .collect()
}

/// Equal keys give equal splits and batches; another key changes both; skipping with
/// `advance_to` (the checkpoint resume) lands on the batch the stream would have given.
#[test]
fn deterministic_given_the_key_and_resumable() {
    assert_eq!(corpus(100, 3), corpus(100, 3));
    assert_ne!(
        corpus(100, 3).document_indices(Split::Test),
        corpus(100, 4).document_indices(Split::Test)
    );
    let c = corpus(100, 3);
    let make = |k| lm_datasets(&c, 4, 10, LmOptions::default(), Key::new(k)).unwrap();
    let (a, b) = (make(8), make(8));
    assert_eq!(first_batches(&a, 7), first_batches(&b, 7));
    assert_ne!(first_batches(&make(9), 3), first_batches(&make(8), 3));
    // Resume: 2 epochs of train are 40 batches; jump across epochs.
    let whole = make(8);
    let want: Vec<LmBatch> = whole.batches(Split::Train, 53).unwrap();
    let resumed = make(8);
    resumed.advance_to([50, 0, 0, 0]).unwrap();
    assert_eq!(resumed.batches(Split::Train, 3).unwrap(), want[50..]);
    let resumed = make(8);
    resumed.advance_to([7, 1, 0, 2]).unwrap();
    assert_eq!(resumed.train().unwrap(), want[7]);
}

/// The unigram entropy against closed forms (two equally frequent bytes: 1 bit; four:
/// 2 bits; p = (3/4, 1/4): 0.811278 bits) and against counting done here.
#[test]
fn unigram_entropy_closed_forms() {
    let same = |text: &str| {
        let docs = vec![text.as_bytes().to_vec(); 40];
        TextCorpus::from_documents(TextSource::Memory, docs, Key::new(0)).unwrap()
    };
    assert!((unigram_entropy_bits(&same("abab")) - 1.0).abs() < 1e-12);
    assert!((unigram_entropy_bits(&same("dcba")) - 2.0).abs() < 1e-12);
    let h = -(0.75f64 * 0.75f64.log2() + 0.25 * 0.25f64.log2());
    assert!((unigram_entropy_bits(&same("aaab")) - h).abs() < 1e-12);
    assert!((h - 0.811_278_124_459_132_8).abs() < 1e-12);
    // Train split only: counted here with a hash map, natural logs.
    let c = corpus(200, 2);
    let mut counts: HashMap<u8, f64> = HashMap::new();
    let mut n = 0.0;
    for d in c.documents(Split::Train) {
        for &b in d {
            *counts.entry(b).or_default() += 1.0;
            n += 1.0;
        }
    }
    let want: f64 = counts
        .values()
        .map(|k| -(k / n) * (k / n).ln())
        .sum::<f64>()
        / 2f64.ln();
    assert!((unigram_entropy_bits(&c) - want).abs() < 1e-9);
    let all: f64 = {
        let mut counts: HashMap<u8, f64> = HashMap::new();
        let mut n = 0.0;
        for d in c.all_documents() {
            for &b in d {
                *counts.entry(b).or_default() += 1.0;
                n += 1.0;
            }
        }
        counts.values().map(|k| -(k / n) * (k / n).log2()).sum()
    };
    assert_ne!(
        unigram_entropy_bits(&c),
        all,
        "entropy of the train split only"
    );
}

/// The entropy of the targets the loss counts: closed form (documents "ab" at T = 4:
/// targets b and pad, 1 bit; documents "aaab" at T = 2 with `Crop`: targets a, a, 0 bits,
/// while the whole text has 0.811 bits) and counted here from one epoch of batches (a
/// version that counts targets at pad positions, or ignores the crop, fails).
#[test]
fn target_entropy_counts_what_the_loss_counts() {
    let same = |text: &str| {
        let docs = vec![text.as_bytes().to_vec(); 40];
        TextCorpus::from_documents(TextSource::Memory, docs, Key::new(0)).unwrap()
    };
    let crop = LmOptions::default();
    let h = target_unigram_entropy_bits(&same("ab"), Split::Train, 4, crop);
    assert!((h - 1.0).abs() < 1e-12, "{h}");
    let h = target_unigram_entropy_bits(&same("aaab"), Split::Train, 2, crop);
    assert_eq!(h, 0.0);
    let c = corpus(200, 6);
    for cut in [SequenceCut::Crop, SequenceCut::Chunks] {
        let opts = LmOptions {
            cut,
            ..LmOptions::default()
        };
        let t = 10;
        let ds = lm_datasets(&c, 1, t, opts, Key::new(0)).unwrap();
        let windows: usize = c
            .documents(Split::Test)
            .map(|d| {
                if cut == SequenceCut::Crop {
                    1
                } else {
                    d.len().div_ceil(t)
                }
            })
            .sum();
        let mut counts: HashMap<i32, f64> = HashMap::new();
        for _ in 0..windows {
            let b = ds.test().unwrap();
            for i in 0..t {
                if b.obs[(0, i)] != 0 {
                    *counts.entry(b.target[(0, i)]).or_default() += 1.0;
                }
            }
        }
        let n: f64 = counts.values().sum();
        let want: f64 = counts.values().map(|k| -(k / n) * (k / n).log2()).sum();
        let got = target_unigram_entropy_bits(&c, Split::Test, t, opts);
        assert!((got - want).abs() < 1e-9, "{cut:?}: {got} vs {want}");
    }
}

/// Documents: `%` lines separate (with or without `\r`), whitespace around is trimmed,
/// empty ones dropped; a file without `%` lines is one document.
#[test]
fn split_documents_on_percent_lines() {
    let docs = split_documents(b"one\n two \n%\n\n%\r\nthree\n%\n100% sure\n");
    assert_eq!(docs, [&b"one\n two"[..], b"three", b"100% sure"]);
    assert_eq!(
        split_documents(b"plain text\nno separators"),
        [b"plain text\nno separators"]
    );
    assert!(split_documents(b"%\n%\n").is_empty());
}

/// A text folder: files in name order, `%`-separated or whole; hidden files, `.dat`
/// files, binary files and symbolic links skipped; empty and missing folders are errors;
/// the fortunes lookup says how to install it and the fallback uses the embedded text.
#[test]
fn text_directories() {
    let dir = temp_dir("texts");
    std::fs::write(dir.join("b.txt"), "whole file\nas one document\n").unwrap();
    std::fs::write(dir.join("a"), "first\n%\nsecond\n%\n").unwrap();
    std::fs::write(dir.join("a.dat"), "not text\n").unwrap();
    std::fs::write(dir.join(".hidden"), "hidden\n").unwrap();
    std::fs::write(dir.join("c.bin"), b"bin\0ary").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.join("a"), dir.join("a.u8")).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/x"), "nested\n").unwrap();
    let docs = read_text_dir(&dir).unwrap();
    assert_eq!(
        docs,
        [&b"first"[..], b"second", b"whole file\nas one document"]
    );
    // Too few documents for four splits.
    assert!(matches!(
        TextCorpus::from_dir(&dir, Key::new(0)),
        Err(Error::InvalidArgument(_))
    ));
    let empty = temp_dir("empty");
    assert!(matches!(
        read_text_dir(&empty),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        read_text_dir(&empty.join("nope")),
        Err(Error::Io { .. })
    ));
    match TextCorpus::fortunes(Some(&empty.join("nope"))) {
        Err(Error::DatasetMissing { help, .. }) => {
            assert!(help.contains("apt-get install fortunes"))
        }
        other => panic!("expected DatasetMissing, got {other:?}"),
    }
    assert!(matches!(
        TextCorpus::fortunes(Some(&empty)),
        Err(Error::DatasetMissing { .. })
    ));
    let (ds, source) = lm_datasets_or_embedded(8, 32, Some(&empty.join("nope"))).unwrap();
    assert_eq!(source, TextSource::Embedded);
    assert_eq!(ds.train().unwrap().obs.shape(), (8, 32));
    // A folder of 30 files, one document each, makes a corpus.
    let many = temp_dir("many");
    for i in 0..30 {
        std::fs::write(many.join(format!("{i:02}.txt")), format!("text {i}\n")).unwrap();
    }
    let c = TextCorpus::from_dir(&many, Key::new(0)).unwrap();
    assert_eq!(c.num_documents(), 30);
    assert_eq!(c.all_documents()[3], b"text 3");
}

/// Bad arguments are errors, not endless or empty streams.
#[test]
fn refusals() {
    let c = corpus(200, 0);
    assert!(matches!(
        lm_datasets(&c, 11, 8, LmOptions::default(), Key::new(0)),
        Err(Error::InvalidArgument(_)) // inner_valid has 10 examples
    ));
    assert!(matches!(
        lm_datasets(&c, 0, 8, LmOptions::default(), Key::new(0)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        lm_datasets(&c, 2, 0, LmOptions::default(), Key::new(0)),
        Err(Error::InvalidArgument(_))
    ));
    let mut docs = documents(40);
    docs[5].push(0);
    assert!(matches!(
        TextCorpus::from_documents(TextSource::Memory, docs, Key::new(0)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        TextCorpus::from_documents(TextSource::Memory, documents(10), Key::new(0)),
        Err(Error::InvalidArgument(_))
    ));
}

/// The embedded Constitution: 132 documents of ASCII English, an entropy in the range of
/// English text, and LM batches in every split.
#[test]
fn embedded_text() {
    let c = TextCorpus::embedded();
    assert_eq!(c.num_documents(), 132);
    let bytes: usize = Split::ALL.iter().map(|&s| c.num_bytes(s)).sum();
    assert!((40_000..45_000).contains(&bytes), "{bytes}");
    assert!(c.all_documents()[0].starts_with(b"We the People"));
    assert!(c.all_documents().iter().flatten().all(|b| b.is_ascii()));
    let h = unigram_entropy_bits(&c);
    assert!((3.9..4.6).contains(&h), "{h}");
    let ds = embedded_lm_datasets(16, 32).unwrap();
    for s in Split::ALL {
        let b = ds.next(s).unwrap();
        assert_eq!(b.obs.shape(), (16, 32));
        assert!(b
            .obs
            .iter()
            .all(|&t| t == 0 || (3 + 32..3 + 127).contains(&t)));
    }
}

/// The `fortunes` corpus when installed (CI installs it: there a missing corpus fails).
#[test]
fn fortunes_corpus() {
    let c = match TextCorpus::fortunes(None) {
        Ok(c) => c,
        Err(Error::DatasetMissing { .. }) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("SKIPPED fortunes_corpus: `apt-get install fortunes` to run it");
            return;
        }
        Err(e) => panic!("fortunes corpus: {e}"),
    };
    assert!(matches!(c.source(), TextSource::Fortunes(_)));
    let n = c.num_documents();
    let bytes: usize = Split::ALL.iter().map(|&s| c.num_bytes(s)).sum();
    assert!(
        n > 10_000 && bytes > 2_000_000,
        "{n} documents, {bytes} bytes"
    );
    let h = unigram_entropy_bits(&c);
    assert!((4.0..5.5).contains(&h), "{h} bits per byte");
    let ds = fortunes_lm_datasets(128, 32, None).unwrap();
    assert_eq!(lm_vocab_size(ds.extra_info()), Some(259));
    for s in Split::ALL {
        let b = ds.next(s).unwrap();
        assert_eq!(b.obs.shape(), (128, 32));
        assert!(b
            .obs
            .iter()
            .chain(b.target.iter())
            .all(|&t| (0..259).contains(&t)));
        assert!(b.num_tokens() > 128 * 16);
    }
}
