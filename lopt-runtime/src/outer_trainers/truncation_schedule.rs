//! Truncation schedules (`outer_trainers/truncation_schedule.py`): how long an inner
//! training run lasts before its task is replaced by a fresh one.

use crate::error::{Error, Result};
use crate::key::Key;

/// Decides the length of each inner training run. The state is the current length.
pub trait TruncationSchedule: Send + Sync {
    /// The length of a fresh run (`init(key, outer_state)`); `usize::MAX` never ends.
    fn init(&self, key: Key, outer_iteration: usize) -> usize;
    /// After inner step `step` (counted from 1) of a run of `length`: the length from now
    /// on and whether the run is done. A done run draws its next length right away.
    fn next_state(
        &self,
        length: usize,
        step: usize,
        key: Key,
        outer_iteration: usize,
    ) -> (usize, bool);
    /// `Ok` when the settings make sense; checked when a step or estimator is built
    /// ([`LOptTruncatedStep::new`](super::LOptTruncatedStep::new)). Default: `Ok`.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    /// The schedule and its settings, for a checkpoint's header. Default: the type's name.
    fn config(&self) -> String {
        std::any::type_name::<Self>().to_string()
    }
}

/// Every run lasts `total_length` steps (`ConstantTruncationSchedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConstantTruncationSchedule {
    /// Steps per run.
    pub total_length: usize,
}

impl TruncationSchedule for ConstantTruncationSchedule {
    fn init(&self, _key: Key, _outer_iteration: usize) -> usize {
        self.total_length
    }
    fn next_state(&self, length: usize, step: usize, _key: Key, _outer: usize) -> (usize, bool) {
        (length, step >= length)
    }
    /// A run of 0 steps would train nothing: refused.
    fn validate(&self) -> Result<()> {
        if self.total_length == 0 {
            return Err(Error::InvalidArgument(
                "ConstantTruncationSchedule: total_length must be at least 1".into(),
            ));
        }
        Ok(())
    }
    fn config(&self) -> String {
        format!("{self:?}")
    }
}

/// Runs never end (`NeverEndingTruncationSchedule`; what full-length ES uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NeverEndingTruncationSchedule;

impl TruncationSchedule for NeverEndingTruncationSchedule {
    fn init(&self, _key: Key, _outer_iteration: usize) -> usize {
        usize::MAX
    }
    fn next_state(&self, length: usize, _step: usize, _key: Key, _outer: usize) -> (usize, bool) {
        (length, false)
    }
    fn config(&self) -> String {
        format!("{self:?}")
    }
}

/// Lengths log-uniform in `[min_length, max_length)`: `L = ⌊exp(U[ln min, ln max))⌋`
/// (`LogUniformLengthSchedule`), drawn anew when a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogUniformLengthSchedule {
    /// Shortest run.
    pub min_length: usize,
    /// Longest run (exclusive).
    pub max_length: usize,
}

impl LogUniformLengthSchedule {
    fn draw(&self, key: Key) -> usize {
        let (lo, hi) = (
            (self.min_length.max(1) as f64).ln(),
            (self.max_length.max(1) as f64).ln(),
        );
        let u: f64 = key.uniform();
        ((lo + (hi - lo) * u).exp() as usize).max(1)
    }
}

impl TruncationSchedule for LogUniformLengthSchedule {
    fn init(&self, key: Key, _outer_iteration: usize) -> usize {
        self.draw(key)
    }
    fn next_state(&self, length: usize, step: usize, key: Key, _outer: usize) -> (usize, bool) {
        if step >= length {
            (self.draw(key), true)
        } else {
            (length, false)
        }
    }
    /// Refuses a minimum of 0 and a minimum above the maximum.
    fn validate(&self) -> Result<()> {
        if self.min_length == 0 || self.min_length > self.max_length {
            return Err(Error::InvalidArgument(format!(
                "LogUniformLengthSchedule: need 1 <= min_length <= max_length (got min {} and max {})",
                self.min_length, self.max_length
            )));
        }
        Ok(())
    }
    fn config(&self) -> String {
        format!("{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_is_done_at_its_length() {
        let s = ConstantTruncationSchedule { total_length: 3 };
        let k = Key::new(0);
        let l = s.init(k, 0);
        let done: Vec<bool> = (1..=4).map(|t| s.next_state(l, t, k, 0).1).collect();
        assert_eq!(done, [false, false, true, true]);
        assert!(
            !NeverEndingTruncationSchedule
                .next_state(usize::MAX, 1 << 40, k, 0)
                .1
        );
    }

    #[test]
    fn log_uniform_lengths_cover_the_range_log_uniformly() {
        let s = LogUniformLengthSchedule {
            min_length: 10,
            max_length: 1000,
        };
        let lens: Vec<usize> = Key::new(5)
            .split_n(4000)
            .iter()
            .map(|&k| s.init(k, 0))
            .collect();
        assert!(lens.iter().all(|&l| (10..1000).contains(&l)));
        // ln L is uniform on [ln 10, ln 1000) up to the floor: mean ln 100, sd 1.33;
        // the sample mean of 4000 is within 0.1 of it with probability > 0.999 (the
        // floor lowers it by at most 0.05 on average).
        let mean = lens.iter().map(|&l| (l as f64).ln()).sum::<f64>() / lens.len() as f64;
        assert!((mean - 100f64.ln()).abs() < 0.15, "mean ln L = {mean}");
        // Done at the length, and a new length comes with it.
        let k = Key::new(1);
        let (l2, done) = s.next_state(50, 50, k, 0);
        assert!(done && (10..1000).contains(&l2));
        assert_eq!(s.next_state(50, 49, k, 0), (50, false));
    }
}
