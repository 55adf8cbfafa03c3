//! Datasets with four splits (the JAX library's `tasks.datasets.base`).
//!
//! A [`Datasets<B>`] holds four **infinite** streams of batches of type `B`:
//!
//! | split | role |
//! |---|---|
//! | [`Split::Train`] | data a task trains on (inner training) |
//! | [`Split::InnerValid`] | validation inside inner training (e.g. picking hyper-parameters) |
//! | [`Split::OuterValid`] | the meta-objective, unseen by inner training |
//! | [`Split::Test`] | meta-test: evaluating a learned optimizer |
//!
//! # Shared streams
//!
//! A `Datasets` is a cheap handle ([`Clone`] copies an [`Arc`]): every clone pulls from the
//! **same** four streams, and so does every task built through the cache
//! ([`cached_datasets`], the JAX library's `dataset_lru_cache`). Pulling a batch anywhere
//! advances the stream for everyone. In particular, evaluating on `train` consumes
//! training data, exactly as in the JAX library. Streams are therefore expected to sample
//! randomly (image datasets reshuffle every epoch), so that which consumer sees which
//! batch does not matter.
//!
//! Each stream sits behind its own mutex, so several Rayon threads may pull at once; every
//! batch is handed out exactly once.
//!
//! ```
//! use lopt_runtime::datasets::{Datasets, Split};
//!
//! // Four iterators, one per split (here: counting integers).
//! let ds = Datasets::new(0.., 100.., 200.., 300..);
//! assert_eq!(ds.train()?, 0);
//! assert_eq!(ds.next(Split::Train)?, 1);
//! assert_eq!(ds.split("test")?.next(), Some(300));
//! assert_eq!(ds.batches(Split::InnerValid, 3)?, vec![100, 101, 102]);
//! assert!(ds.split("validation").is_err());
//! # Ok::<(), lopt_runtime::Error>(())
//! ```
//!
//! Submodules: [`idx`] reads MNIST-style IDX files, [`image`] resizes images and builds
//! image-classification datasets, [`digits`] embeds a small real dataset,
//! [`prefetch`](mod@prefetch) produces batches ahead of need on a background thread,
//! [`text`] builds byte-level language-modelling datasets, [`cifar`] reads CIFAR-10.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

mod cache;
pub mod cifar;
pub mod digits;
mod epochs;
pub mod idx;
pub mod image;
pub mod prefetch;
pub mod text;

pub use cache::{cached_datasets, clear_dataset_cache, try_cached_datasets};
pub use cifar::cifar10_datasets;
pub use digits::{digits_datasets, digits_datasets_resized, image_datasets_or_digits};
pub use image::{
    fashion_mnist_datasets, image_datasets, mnist_datasets, ImageBatch, ImageSource, LabeledImages,
};
pub use prefetch::prefetch;
pub use text::{
    fortunes_lm_datasets, lm_datasets, lm_datasets_or_embedded, target_unigram_entropy_bits,
    unigram_entropy_bits, LmBatch, TextCorpus,
};

/// One of the four splits of a [`Datasets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Data a task trains on.
    Train,
    /// Validation data used inside inner training.
    InnerValid,
    /// Data for the meta-objective, unseen by inner training.
    OuterValid,
    /// Data for testing learned optimizers.
    Test,
}

impl Split {
    /// The four splits in order.
    pub const ALL: [Split; 4] = [
        Split::Train,
        Split::InnerValid,
        Split::OuterValid,
        Split::Test,
    ];

    /// The split's name as the JAX library spells it (`train`, `inner_valid`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::InnerValid => "inner_valid",
            Split::OuterValid => "outer_valid",
            Split::Test => "test",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = Error;

    /// Parses `train`, `inner_valid`, `outer_valid` or `test`; anything else is
    /// [`Error::UnknownSplit`].
    fn from_str(s: &str) -> Result<Split> {
        Split::ALL
            .into_iter()
            .find(|split| split.name() == s)
            .ok_or_else(|| Error::UnknownSplit(s.to_string()))
    }
}

/// Extra facts about a dataset (the JAX library's `extra_info`, e.g. `num_classes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraInfo {
    /// The number of classes of a classification dataset.
    pub num_classes: Option<usize>,
    /// Anything else, by name.
    pub other: BTreeMap<String, String>,
}

impl ExtraInfo {
    /// Extra info of a classification dataset with `k` classes.
    pub fn with_num_classes(k: usize) -> ExtraInfo {
        ExtraInfo {
            num_classes: Some(k),
            ..ExtraInfo::default()
        }
    }
}

/// A boxed batch stream as stored in a [`Datasets`], with the number of batches it has
/// handed out (its position, which a checkpoint records).
type Stream<B> = Mutex<Counted<B>>;

/// A batch stream and the number of batches it has handed out.
type Counted<B> = (Box<dyn Iterator<Item = B> + Send>, u64);

/// Four infinite streams of batches, shared by every clone (see the [module docs](self)).
pub struct Datasets<B> {
    streams: Arc<[Stream<B>; 4]>,
    extra_info: Arc<ExtraInfo>,
}

impl<B> Clone for Datasets<B> {
    fn clone(&self) -> Self {
        Datasets {
            streams: self.streams.clone(),
            extra_info: self.extra_info.clone(),
        }
    }
}

impl<B> fmt::Debug for Datasets<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datasets")
            .field("streams", &Arc::as_ptr(&self.streams))
            .field("extra_info", &self.extra_info)
            .finish()
    }
}

impl<B: 'static> Datasets<B> {
    /// Datasets from four iterators, one per split (the seed: "simply write 4 iterators").
    ///
    /// The iterators should never end; if one does, pulling from it gives
    /// [`Error::DataExhausted`].
    pub fn new<Tr, Iv, Ov, Te>(train: Tr, inner_valid: Iv, outer_valid: Ov, test: Te) -> Self
    where
        Tr: IntoIterator<Item = B>,
        Tr::IntoIter: Send + 'static,
        Iv: IntoIterator<Item = B>,
        Iv::IntoIter: Send + 'static,
        Ov: IntoIterator<Item = B>,
        Ov::IntoIter: Send + 'static,
        Te: IntoIterator<Item = B>,
        Te::IntoIter: Send + 'static,
    {
        fn boxed<B, I: Iterator<Item = B> + Send + 'static>(it: I) -> Stream<B> {
            Mutex::new((Box::new(it), 0))
        }
        Datasets {
            streams: Arc::new([
                boxed(train.into_iter()),
                boxed(inner_valid.into_iter()),
                boxed(outer_valid.into_iter()),
                boxed(test.into_iter()),
            ]),
            extra_info: Arc::new(ExtraInfo::default()),
        }
    }
}

impl<B> Datasets<B> {
    /// The same streams with `info` attached (e.g. [`ExtraInfo::with_num_classes`]).
    pub fn with_extra_info(mut self, info: ExtraInfo) -> Self {
        self.extra_info = Arc::new(info);
        self
    }

    /// Extra facts about the data, such as the number of classes.
    pub fn extra_info(&self) -> &ExtraInfo {
        &self.extra_info
    }

    /// The next batch of `split`.
    ///
    /// Errors: [`Error::DataExhausted`] if the stream ended, [`Error::Data`] if an earlier
    /// pull panicked inside the stream (its state can no longer be trusted).
    pub fn next(&self, split: Split) -> Result<B> {
        let mut stream = self.lock(split)?;
        let batch = stream
            .0
            .next()
            .ok_or_else(|| Error::DataExhausted(split.name().to_string()))?;
        stream.1 += 1;
        Ok(batch)
    }

    fn lock(&self, split: Split) -> Result<std::sync::MutexGuard<'_, Counted<B>>> {
        self.streams[split.index()].lock().map_err(|_| {
            Error::Data(format!(
                "the `{split}` stream panicked during an earlier pull"
            ))
        })
    }

    /// How many batches each split has handed out so far (train, inner_valid,
    /// outer_valid, test), counted over every clone: what a checkpoint records so that a
    /// resumed run reads the batches the uninterrupted run would have read.
    pub fn positions(&self) -> Result<[u64; 4]> {
        let mut out = [0; 4];
        for (o, split) in out.iter_mut().zip(Split::ALL) {
            *o = self.lock(split)?.1;
        }
        Ok(out)
    }

    /// Moves every split forward to `positions` (as returned by [`Datasets::positions`]
    /// on the same data), skipping the batches between: a deterministic stream then
    /// continues exactly where the recorded one was. Image streams skip without building
    /// the skipped batches.
    ///
    /// Errors: [`Error::InvalidArgument`] when a split is already past its target (a
    /// stream cannot go back: build the datasets anew), [`Error::DataExhausted`] when a
    /// stream ends first.
    ///
    /// ```
    /// use lopt_runtime::datasets::Datasets;
    ///
    /// let a = Datasets::new(0.., 100.., 200.., 300..);
    /// a.train()?;
    /// a.train()?;
    /// let b = Datasets::new(0.., 100.., 200.., 300..);
    /// b.advance_to(a.positions()?)?;
    /// assert_eq!(b.train()?, a.train()?);
    /// assert!(a.advance_to([0; 4]).is_err());
    /// # Ok::<(), lopt_runtime::Error>(())
    /// ```
    pub fn advance_to(&self, positions: [u64; 4]) -> Result<()> {
        for (split, target) in Split::ALL.into_iter().zip(positions) {
            let mut stream = self.lock(split)?;
            let at = stream.1;
            if at > target {
                return Err(Error::InvalidArgument(format!(
                    "the `{split}` stream has handed out {at} batches, past the {target} to \
                     resume at: resume with datasets built anew"
                )));
            }
            if target > at {
                let skip = usize::try_from(target - at - 1).map_err(|_| {
                    Error::InvalidArgument(format!("`{split}` position {target} is too large"))
                })?;
                stream
                    .0
                    .nth(skip)
                    .ok_or_else(|| Error::DataExhausted(split.name().to_string()))?;
                stream.1 = target;
            }
        }
        Ok(())
    }

    /// The next training batch (`next(ds.train)` in the JAX library).
    pub fn train(&self) -> Result<B> {
        self.next(Split::Train)
    }

    /// The next inner-validation batch.
    pub fn inner_valid(&self) -> Result<B> {
        self.next(Split::InnerValid)
    }

    /// The next outer-validation batch.
    pub fn outer_valid(&self) -> Result<B> {
        self.next(Split::OuterValid)
    }

    /// The next test batch.
    pub fn test(&self) -> Result<B> {
        self.next(Split::Test)
    }

    /// `n` consecutive batches of `split` (the JAX library's `vec_get_batch`, before
    /// stacking).
    pub fn batches(&self, split: Split, n: usize) -> Result<Vec<B>> {
        (0..n).map(|_| self.next(split)).collect()
    }

    /// The stream of split `name` as an iterator (the JAX library's `Datasets.split`).
    ///
    /// Errors: [`Error::UnknownSplit`] unless `name` is `train`, `inner_valid`,
    /// `outer_valid` or `test`.
    pub fn split(&self, name: &str) -> Result<SplitIter<B>> {
        Ok(self.iter(name.parse()?))
    }

    /// The stream of `split` as an iterator sharing this dataset's streams.
    pub fn iter(&self, split: Split) -> SplitIter<B> {
        SplitIter {
            datasets: self.clone(),
            split,
        }
    }

    /// Whether `self` and `other` share the same streams (e.g. both came from the cache
    /// with equal arguments).
    pub fn shares_streams_with(&self, other: &Datasets<B>) -> bool {
        Arc::ptr_eq(&self.streams, &other.streams)
    }
}

/// One split of a [`Datasets`] as an [`Iterator`]; pulls from the shared stream.
///
/// `next` returns `None` where [`Datasets::next`] would return an error.
pub struct SplitIter<B> {
    datasets: Datasets<B>,
    split: Split,
}

impl<B> SplitIter<B> {
    /// Which split this iterates.
    pub fn split(&self) -> Split {
        self.split
    }
}

impl<B> Clone for SplitIter<B> {
    fn clone(&self) -> Self {
        SplitIter {
            datasets: self.datasets.clone(),
            split: self.split,
        }
    }
}

impl<B> Iterator for SplitIter<B> {
    type Item = B;
    fn next(&mut self) -> Option<B> {
        self.datasets.next(self.split).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_names_round_trip() {
        for split in Split::ALL {
            assert_eq!(split.name().parse::<Split>(), Ok(split));
            assert_eq!(split.to_string(), split.name());
        }
        assert_eq!(
            "valid".parse::<Split>(),
            Err(Error::UnknownSplit("valid".into()))
        );
        assert_eq!(
            "Train".parse::<Split>(),
            Err(Error::UnknownSplit("Train".into()))
        );
    }

    #[test]
    fn unknown_split_is_an_error() {
        let ds = Datasets::new(0.., 0.., 0.., 0..);
        assert_eq!(
            ds.split("validation").err(),
            Some(Error::UnknownSplit("validation".into()))
        );
    }

    #[test]
    fn ended_stream_is_data_exhausted() {
        let ds = Datasets::new(0..2, 0..0, 0.., 0..);
        assert_eq!(ds.batches(Split::Train, 2).unwrap(), vec![0, 1]);
        assert_eq!(ds.train(), Err(Error::DataExhausted("train".into())));
        assert_eq!(
            ds.inner_valid(),
            Err(Error::DataExhausted("inner_valid".into()))
        );
        assert_eq!(ds.outer_valid(), Ok(0));
    }

    #[test]
    fn clones_share_streams() {
        let a = Datasets::new(0.., 0.., 0.., 0..);
        let b = a.clone();
        assert!(a.shares_streams_with(&b));
        assert_eq!(a.train().unwrap(), 0);
        assert_eq!(b.train().unwrap(), 1);
        assert_eq!(a.iter(Split::Train).take(2).collect::<Vec<_>>(), vec![2, 3]);
        let c = Datasets::new(0.., 0.., 0.., 0..);
        assert!(!a.shares_streams_with(&c));
    }

    #[test]
    fn panicking_stream_is_a_data_error_not_a_panic() {
        let ds = Datasets::new(
            (0..).map(|i| if i == 1 { panic!("boom") } else { i }),
            0..,
            0..,
            0..,
        );
        assert_eq!(ds.train(), Ok(0));
        let ds2 = ds.clone();
        assert!(std::thread::spawn(move || ds2.train()).join().is_err());
        assert!(matches!(ds.train(), Err(Error::Data(_))));
    }

    #[test]
    fn extra_info_is_kept() {
        let ds = Datasets::new(0.., 0.., 0.., 0..).with_extra_info(ExtraInfo::with_num_classes(10));
        assert_eq!(ds.clone().extra_info().num_classes, Some(10));
    }
}
