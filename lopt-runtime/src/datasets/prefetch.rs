//! Batches produced ahead of need on a background thread (the JAX library's prefetch).

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread;

/// How many batches image datasets keep ready per split.
pub const DEFAULT_PREFETCH: usize = 32;

/// Items handed from the producer thread to the consumer at once (at most).
pub const CHUNK: usize = 8;

/// Wraps `iter` so its items are produced on a background thread, about `capacity` ahead
/// of the consumer, so data never stalls training.
///
/// Items cross between the threads in chunks of up to [`CHUNK`]: handing over one item
/// at a time cost a thread wake-up per batch (several microseconds on a busy machine,
/// measured as a stall of a third of a training step), one per chunk does not.
///
/// The thread starts on the first pull (splits nobody reads cost nothing) and stops when
/// the returned iterator is dropped or `iter` ends. It is a plain OS thread, not a Rayon
/// task: a Rayon worker blocked waiting for a batch must not be the one meant to produce
/// it. Order is preserved, so a deterministic `iter` stays deterministic. A panic in
/// `iter` ends the stream (with the items of its unfinished chunk).
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
    /// The chunks to come, and what is left of the current one.
    Running(Receiver<Vec<I::Item>>, std::vec::IntoIter<I::Item>),
}

impl<I> Iterator for Prefetch<I>
where
    I: Iterator + Send + 'static,
    I::Item: Send + 'static,
{
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        if let State::Idle(iter, capacity) = &mut self.state {
            let mut iter = iter.take()?;
            let chunk = CHUNK.min(*capacity);
            let (tx, rx) = sync_channel(capacity.div_ceil(chunk));
            thread::Builder::new()
                .name("lopt-prefetch".into())
                .spawn(move || loop {
                    let items: Vec<_> = iter.by_ref().take(chunk).collect();
                    let last = items.len() < chunk;
                    // The consumer hung up: stop producing.
                    if (!items.is_empty() && tx.send(items).is_err()) || last {
                        break;
                    }
                })
                .ok()?;
            self.state = State::Running(rx, Vec::new().into_iter());
        }
        match &mut self.state {
            State::Running(rx, current) => match current.next() {
                Some(x) => Some(x),
                // Disconnected means the producer ended (or panicked): the stream is over.
                None => {
                    *current = rx.recv().ok()?.into_iter();
                    current.next()
                }
            },
            State::Idle(..) => None,
        }
    }

    /// Before the first pull, skips on the wrapped iterator itself (an image stream skips
    /// without building batches); afterwards, as `next` would.
    fn nth(&mut self, n: usize) -> Option<I::Item> {
        if let State::Idle(Some(iter), _) = &mut self.state {
            if n > 0 {
                iter.nth(n - 1)?;
            }
            return self.next();
        }
        for _ in 0..n {
            self.next()?;
        }
        self.next()
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
        // Capacity 4 makes chunks of 4 and a channel of one chunk. Wait until the producer
        // is blocked: the chunk in the consumer's hands, one in the channel, one made and
        // waiting to be sent.
        for _ in 0..2000 {
            if produced.load(Ordering::SeqCst) >= 12 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let n = produced.load(Ordering::SeqCst);
        assert_eq!(n, 12, "produced {n}");
        // Order holds across chunk boundaries.
        let next: Vec<u64> = it.by_ref().take(10).collect();
        assert_eq!(next, (1..11).collect::<Vec<_>>());
    }

    #[test]
    fn producer_panic_ends_the_stream() {
        let mut it = prefetch((0..3u8).map(|i| if i == 2 { panic!("boom") } else { i }), 1);
        assert_eq!(it.next(), Some(0));
        assert_eq!(it.next(), Some(1));
        assert_eq!(it.next(), None);
    }
}
