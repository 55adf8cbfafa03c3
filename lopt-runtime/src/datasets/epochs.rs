//! Which examples each batch of a shuffled stream takes: every epoch a new permutation of
//! the examples (from the stream's key folded with the epoch number), cut into batches,
//! the partial batch left over dropped. The image and text streams share it, and with it
//! the cheap skip a resumed run catches up with.

use crate::key::Key;

/// The batch order of a stream over `n` examples.
pub(crate) struct EpochOrder {
    n: usize,
    batch_size: usize,
    key: Key,
    epoch: u32,
    order: Vec<usize>,
    pos: usize,
}

impl EpochOrder {
    /// Batches of `batch_size` out of `n` examples, shuffled by `key`.
    pub(crate) fn new(n: usize, batch_size: usize, key: Key) -> Self {
        EpochOrder {
            n,
            batch_size,
            key,
            epoch: 0,
            order: Vec::new(),
            pos: 0,
        }
    }

    fn start_epoch(&mut self) {
        self.order = self.key.fold_in(u64::from(self.epoch)).permutation(self.n);
        self.epoch = self.epoch.wrapping_add(1);
        self.pos = 0;
    }

    /// The examples of the next batch; `None` when no full batch fits (a batch size the
    /// constructors reject: never loop forever).
    pub(crate) fn next_rows(&mut self) -> Option<&[usize]> {
        let b = self.batch_size;
        if b == 0 || b > self.n {
            return None;
        }
        if self.pos + b > self.order.len() {
            self.start_epoch();
        }
        self.pos += b;
        Some(&self.order[self.pos - b..self.pos])
    }

    /// Skips `k` batches without anyone building them, then the next batch's examples:
    /// what `k + 1` calls of [`next_rows`](Self::next_rows) end with.
    pub(crate) fn nth_rows(&mut self, mut k: usize) -> Option<&[usize]> {
        let b = self.batch_size;
        let per_epoch = self.n.checked_div(b).unwrap_or(0);
        if per_epoch == 0 {
            return None;
        }
        let left = self.order.len().saturating_sub(self.pos) / b;
        if k < left {
            self.pos += k * b;
            return self.next_rows();
        }
        k -= left;
        let whole = k / per_epoch;
        self.epoch = self.epoch.wrapping_add(whole as u32);
        // The epoch holding the batch wanted, shuffled as `next_rows` would shuffle it.
        self.start_epoch();
        self.pos = (k - whole * per_epoch) * b;
        self.next_rows()
    }
}
