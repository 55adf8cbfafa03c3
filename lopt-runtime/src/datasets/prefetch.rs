//! Batches produced ahead of need on a background thread (the JAX library's prefetch).

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread;

/// How many batches image datasets keep ready per split.
pub const DEFAULT_PREFETCH: usize = 32;

/// Wraps `iter` so its items are produced on a background thread, up to `capacity` ahead
/// of the consumer, so data never stalls training.
///
/// The thread starts on the first pull (splits nobody reads cost nothing) and stops when
/// the returned iterator is dropped or `iter` ends. It is a plain OS thread, not a Rayon
/// task: a Rayon worker blocked waiting for a batch must not be the one meant to produce
/// it. Order is preserved, so a deterministic `iter` stays deterministic.
///
/// ```
/// use lopt_runtime::datasets::prefetch;
/// let squares: Vec<u64> = prefetch((0..5u64).map(|i| i * i), 2).collect();
/// assert_eq!(squares, vec![0, 1, 4, 9, 16]);
/// ```
pub fn prefetch<I>(iter: I, capacity: usize) -> Prefetch<I::IntoIter>
where
    I: IntoIterator,
    I::IntoIter: Send + 'static,
    I::Item: Send + 'static,
{
    Prefetch {
        state: State::Idle(Some(iter.into_iter()), capacity.max(1)),
    }
}

/// The iterator returned by [`prefetch`].
pub struct Prefetch<I: Iterator> {
    state: State<I>,
}

enum State<I: Iterator> {
    Idle(Option<I>, usize),
    Running(Receiver<I::Item>),
}

impl<I> Iterator for Prefetch<I>
where
    I: Iterator + Send + 'static,
    I::Item: Send + 'static,
{
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        if let State::Idle(iter, capacity) = &mut self.state {
            let iter = iter.take()?;
            let (tx, rx) = sync_channel(*capacity);
            thread::Builder::new()
                .name("lopt-prefetch".into())
                .spawn(move || {
                    for item in iter {
                        // The consumer hung up: stop producing.
                        if tx.send(item).is_err() {
                            break;
                        }
                    }
                })
                .ok()?;
            self.state = State::Running(rx);
        }
        match &self.state {
            // Disconnected means the producer ended (or panicked): the stream is over.
            State::Running(rx) => rx.recv().ok(),
            State::Idle(..) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn keeps_order_and_ends_with_the_source() {
        let out: Vec<u32> = prefetch(0..100u32, 3).collect();
        assert_eq!(out, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn lazy_and_bounded() {
        let produced = Arc::new(AtomicUsize::new(0));
        let p = produced.clone();
        let mut it = prefetch(
            (0..).inspect(move |_: &u64| {
                p.fetch_add(1, Ordering::SeqCst);
            }),
            4,
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            produced.load(Ordering::SeqCst),
            0,
            "nothing before the first pull"
        );
        assert_eq!(it.next(), Some(0));
        // Wait until the producer is blocked on the full channel: 1 taken + 4 buffered +
        // at most 1 made and waiting to be sent.
        for _ in 0..2000 {
            if produced.load(Ordering::SeqCst) >= 5 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let n = produced.load(Ordering::SeqCst);
        assert!((5..=6).contains(&n), "produced {n}");
    }

    #[test]
    fn producer_panic_ends_the_stream() {
        let mut it = prefetch((0..3u8).map(|i| if i == 2 { panic!("boom") } else { i }), 1);
        assert_eq!(it.next(), Some(0));
        assert_eq!(it.next(), Some(1));
        assert_eq!(it.next(), None);
    }
}
