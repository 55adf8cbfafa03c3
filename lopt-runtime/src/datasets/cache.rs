//! A process-wide cache of datasets (the JAX library's `dataset_lru_cache`).
//!
//! Tasks build their datasets through a constructor; the cache makes every task built
//! with the same constructor arguments share **one** set of streams, so creating many
//! tasks is cheap and they all draw from the same shuffled data. Like the JAX library's
//! cache it is unbounded; [`clear_dataset_cache`] empties it.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use super::Datasets;
use crate::error::Result;

/// One cache entry: the key (compared with `Eq`, so hash collisions are harmless) and a
/// slot filled once by the factory. The slot has its own lock so a slow factory (loading
/// a dataset from disk) holds up only callers with the same key.
type Slot<K, B> = (K, Mutex<Option<Datasets<B>>>);

type Bucket = Vec<Arc<dyn Any + Send + Sync>>;

fn cache() -> &'static Mutex<HashMap<(TypeId, u64), Bucket>> {
    static CACHE: OnceLock<Mutex<HashMap<(TypeId, u64), Bucket>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The datasets cached under `key`, built by `factory` on first use.
///
/// Every caller with an equal key gets a handle to the **same** streams: a batch pulled
/// by one is gone for all (evaluating on `train` consumes training data), as with the
/// JAX library's `dataset_lru_cache`.
///
/// `key` stands for the constructor's arguments; include something naming the
/// constructor itself (e.g. `("my_dataset", batch_size)`) so that two constructors with
/// the same arguments do not collide. Entries are also told apart by the key's type and
/// the batch type `B`.
///
/// ```
/// use lopt_runtime::datasets::{cached_datasets, Datasets};
///
/// fn counting(start: u64) -> Datasets<u64> {
///     cached_datasets(("counting", start), || Datasets::new(start.., 0.., 0.., 0..))
/// }
/// let (a, b) = (counting(7), counting(7));
/// assert_eq!(a.train()?, 7);
/// assert_eq!(b.train()?, 8); // `b` shares `a`'s streams
/// assert_eq!(counting(1).train()?, 1);
/// # Ok::<(), lopt_runtime::Error>(())
/// ```
pub fn cached_datasets<K, B, F>(key: K, factory: F) -> Datasets<B>
where
    K: Hash + Eq + Send + Sync + 'static,
    B: 'static,
    F: FnOnce() -> Datasets<B>,
{
    match try_cached_datasets(key, || Ok(factory())) {
        Ok(ds) => ds,
        Err(_) => unreachable!("the factory cannot fail"),
    }
}

/// Like [`cached_datasets`] for a factory that can fail; failures are returned and not
/// cached, so a later call tries again (e.g. after the data files were installed).
pub fn try_cached_datasets<K, B, F>(key: K, factory: F) -> Result<Datasets<B>>
where
    K: Hash + Eq + Send + Sync + 'static,
    B: 'static,
    F: FnOnce() -> Result<Datasets<B>>,
{
    let slot = slot_for::<K, B>(key);
    // A factory that panicked left the slot empty; the next caller just tries again.
    let mut filled = slot
        .1
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(ds) = filled.as_ref() {
        return Ok(ds.clone());
    }
    let ds = factory()?;
    *filled = Some(ds.clone());
    Ok(ds)
}

/// Finds or creates the slot for `key` under the global lock (held only briefly).
fn slot_for<K, B>(key: K) -> Arc<Slot<K, B>>
where
    K: Hash + Eq + Send + Sync + 'static,
    B: 'static,
{
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    let id = (TypeId::of::<Slot<K, B>>(), hasher.finish());
    let mut map = cache()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let bucket = map.entry(id).or_default();
    for entry in bucket.iter() {
        // The TypeId in the map key guarantees the downcast succeeds.
        if let Ok(slot) = entry.clone().downcast::<Slot<K, B>>() {
            if slot.0 == key {
                return slot;
            }
        }
    }
    let slot: Arc<Slot<K, B>> = Arc::new((key, Mutex::new(None)));
    bucket.push(slot.clone());
    slot
}

/// Empties the dataset cache (the JAX library's `dataset_lru_cache_clear`).
///
/// Datasets already handed out keep working; later constructor calls build new streams.
pub fn clear_dataset_cache() {
    cache()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[derive(Hash, PartialEq, Eq)]
    struct CacheTestKey(&'static str, u32);

    #[test]
    fn same_key_shares_and_other_keys_do_not() {
        let make = |n: u32| {
            cached_datasets(CacheTestKey("unit_cache", n), move || {
                Datasets::new(u64::from(n) * 1000.., 0.., 0.., 0..)
            })
        };
        let a = make(1);
        let b = make(1);
        let c = make(2);
        assert!(a.shares_streams_with(&b));
        assert!(!a.shares_streams_with(&c));
        assert_eq!(a.train().unwrap(), 1000);
        assert_eq!(b.train().unwrap(), 1001);
        assert_eq!(c.train().unwrap(), 2000);
    }

    #[test]
    fn batch_type_is_part_of_the_key() {
        let a = cached_datasets(CacheTestKey("unit_batch_type", 0), || {
            Datasets::new(0u32.., 0.., 0.., 0..)
        });
        let b = cached_datasets(CacheTestKey("unit_batch_type", 0), || {
            Datasets::new(0u64.., 0.., 0.., 0..)
        });
        assert_eq!(a.train().unwrap(), 0u32);
        assert_eq!(b.train().unwrap(), 0u64);
    }

    #[test]
    fn failures_are_not_cached() {
        let key = CacheTestKey("unit_failure", 0);
        let err = try_cached_datasets::<_, u8, _>(key, || Err(Error::Data("missing".into())));
        assert!(err.is_err());
        let ok = try_cached_datasets(CacheTestKey("unit_failure", 0), || {
            Ok(Datasets::new(5u8.., 0.., 0.., 0..))
        });
        assert_eq!(ok.unwrap().train().unwrap(), 5);
    }
}
