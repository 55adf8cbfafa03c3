//! Work shared with one worker of the Rayon pool that is woken at the start of a short
//! computation, so that it is awake by the time the work exists. On the project's
//! virtual machines a sleeping worker takes 45–55 µs to wake: a job offered only once its
//! inputs exist (a `join`) arrives too late to help a computation of a few hundred
//! microseconds, such as a VeLO update.
//!
//! The caller publishes phases of independent tasks in order as their inputs become
//! ready ([`tasks`]); both threads claim tasks of a phase, and the caller collects the
//! results in task order, so no result depends on which thread computed it. The worker's
//! job is `'static` (its tasks own `Arc`s of what they read), so the caller never waits
//! for a job that has not started: it waits only for tasks the worker has claimed, and
//! when its [`Helper`] drops (also when unwinding) a late job returns at once. Both
//! wait by yielding, not spinning: on a machine busy with other work the worker may
//! share the caller's core, whose time a spinning wait would halve. No unsafe code.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// A phase's tasks, as the worker sees them.
trait Claim: Send + Sync {
    /// Claims and runs tasks until none is left.
    fn work(&self);
}

/// How long the caller waits for a task the worker claimed before running it itself:
/// about two of the released VeLO's blocks. A worker that the system has descheduled
/// (the machine busy with other work) must not stall the caller for a time slice.
const PATIENCE: Duration = Duration::from_micros(20);

/// A slot's states.
const PENDING: u8 = 0;
const DONE: u8 = 1;
/// The task panicked on the worker: the caller runs it again, so that the panic (if it
/// repeats) reaches the caller's thread.
const FAILED: u8 = 2;

/// One phase: tasks `0..slots.len()` of `f` (pure: a task the worker is late with is run
/// again by the caller, see [`PATIENCE`]), the caller claiming from the front and the
/// worker from the back. Each thread then takes mostly the same tasks every call, so
/// their data stays in its core's cache (the released VeLO's 4 MiB of LSTM weights are
/// two halves of a core's 2 MiB L2; taken in one order by both, every call would read
/// them from L3).
pub(crate) struct Phase<R, F> {
    /// The unclaimed tasks `lo..hi`: `lo` in the low 32 bits, `hi` in the high.
    ends: AtomicU64,
    f: F,
    slots: Vec<(AtomicU8, Mutex<Option<R>>)>,
}

impl<R, F: Fn(usize) -> R> Phase<R, F> {
    fn new(n: usize, f: F) -> Self {
        let n32 = u32::try_from(n).expect("helper::tasks: fewer than 2^32 tasks");
        Phase {
            ends: AtomicU64::new(u64::from(n32) << 32),
            f,
            slots: (0..n)
                .map(|_| (AtomicU8::new(PENDING), Mutex::new(None)))
                .collect(),
        }
    }

    /// The first unclaimed task (`front`) or the last.
    fn claim(&self, front: bool) -> Option<usize> {
        let mut cur = self.ends.load(Ordering::Relaxed);
        loop {
            let (lo, hi) = (cur & 0xffff_ffff, cur >> 32);
            if lo >= hi {
                return None;
            }
            let (next, task) = if front {
                (cur + 1, lo)
            } else {
                (cur - (1 << 32), hi - 1)
            };
            match self
                .ends
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                // (`task` < `hi` ≤ 2^32: it fits.)
                Ok(_) => return Some(task as usize),
                Err(now) => cur = now,
            }
        }
    }
}

impl<R, F: Fn(usize) -> R> Phase<R, F> {
    /// Task `i`'s result (or its failure), unless the slot is done already: a task the
    /// caller ran again because the worker was late is then dropped.
    fn put(&self, i: usize, r: Option<R>) {
        let (state, value) = &self.slots[i];
        let mut v = value.lock().unwrap_or_else(|e| e.into_inner());
        if state.load(Ordering::Acquire) != DONE {
            let done = r.is_some();
            *v = r;
            state.store(if done { DONE } else { FAILED }, Ordering::Release);
        }
    }
}

impl<R: Send, F: Fn(usize) -> R + Send + Sync> Claim for Phase<R, F> {
    fn work(&self) {
        while let Some(i) = self.claim(false) {
            self.put(i, catch_unwind(AssertUnwindSafe(|| (self.f)(i))).ok());
        }
    }
}

/// What the caller and the worker share.
struct Board {
    phases: Vec<OnceLock<Arc<dyn Claim>>>,
    closed: AtomicBool,
    /// The worker's job has started (for [`Helper::leave_all`]).
    started: AtomicBool,
    /// The job ran on the caller's own thread (popped while the caller waited on other
    /// pool work), where it cannot wait for the caller's phases: it returned at once.
    declined: AtomicBool,
}

impl Board {
    /// The worker's job: each phase in order as the caller publishes it, until closed.
    fn help(&self, owner: ThreadId) {
        if std::thread::current().id() == owner {
            self.declined.store(true, Ordering::Release);
            return;
        }
        self.started.store(true, Ordering::Release);
        for slot in &self.phases {
            let phase = loop {
                if let Some(p) = slot.get() {
                    break p;
                }
                if self.closed.load(Ordering::Acquire) {
                    return;
                }
                std::thread::yield_now();
            };
            phase.work();
        }
    }
}

/// The caller's handle on a woken worker; dropping it closes the board.
pub(crate) struct Helper {
    board: Arc<Board>,
    /// Tests: the caller claims no task while the worker's job runs (so that the worker's
    /// side is exercised whatever the timing).
    leave_all: bool,
}

impl Helper {
    /// Wakes one worker for `phases` phases, or `None` on a pool of one thread; with
    /// `leave_all` (tests) the caller leaves every task to the worker (unless its job
    /// declined, see [`Board::declined`]).
    pub(crate) fn wake(phases: usize, leave_all: bool) -> Option<Helper> {
        if rayon::current_num_threads() < 2 {
            return None;
        }
        let board = Arc::new(Board {
            phases: (0..phases).map(|_| OnceLock::new()).collect(),
            closed: AtomicBool::new(false),
            started: AtomicBool::new(false),
            declined: AtomicBool::new(false),
        });
        let (job, owner) = (board.clone(), std::thread::current().id());
        rayon::spawn(move || job.help(owner));
        Some(Helper { board, leave_all })
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.board.closed.store(true, Ordering::Release);
    }
}

/// `f(0..n)` in order: phase `phase` of `helper`'s board, shared with its worker, or on
/// this thread alone without one ([`offer`] then [`Offered::collect`]).
///
/// # Panics
/// As [`offer`] and [`Offered::collect`].
pub(crate) fn tasks<R, F>(helper: Option<&Helper>, phase: usize, n: usize, f: F) -> Vec<R>
where
    R: Send + 'static,
    F: Fn(usize) -> R + Send + Sync + 'static,
{
    offer(helper, phase, n, f).collect()
}

/// Phase `phase`'s tasks `f(0..n)` published to `helper`'s worker, which starts on them
/// while this thread does other work; [`Offered::collect`] then claims what is left.
/// Phases are published once each, in order (the worker waits for each in turn).
///
/// # Panics
/// When phase `phase` was published before or does not exist.
pub(crate) fn offer<R, F>(
    helper: Option<&Helper>,
    phase: usize,
    n: usize,
    f: F,
) -> Offered<'_, R, F>
where
    R: Send + 'static,
    F: Fn(usize) -> R + Send + Sync + 'static,
{
    let Some(helper) = helper else {
        return Offered::Alone(n, f);
    };
    let ph = Arc::new(Phase::new(n, f));
    let shared: Arc<dyn Claim> = ph.clone();
    assert!(
        helper.board.phases[phase].set(shared).is_ok(),
        "helper::offer: phase {phase} published twice"
    );
    Offered::Shared(helper, ph)
}

/// A phase published by [`offer`] (or, without a helper, its tasks not yet run).
pub(crate) enum Offered<'h, R, F> {
    Alone(usize, F),
    Shared(&'h Helper, Arc<Phase<R, F>>),
}

impl<R: Send + 'static, F: Fn(usize) -> R + Send + Sync + 'static> Offered<'_, R, F> {
    /// The results in task order: the tasks left claimed here from the front, then those
    /// the worker claimed waited for (and run here when it is late, see [`PATIENCE`]).
    ///
    /// # Panics
    /// When a task panics here (or on the worker and again here).
    pub(crate) fn collect(self) -> Vec<R> {
        let (helper, ph) = match self {
            Offered::Alone(n, f) => return (0..n).map(f).collect(),
            Offered::Shared(h, ph) => (h, ph),
        };
        let board = &helper.board;
        let worker_gone = || board.declined.load(Ordering::Acquire);
        if helper.leave_all {
            while !board.started.load(Ordering::Acquire) && !worker_gone() {
                std::thread::yield_now();
            }
        }
        let mine = |i: usize| ph.put(i, Some((ph.f)(i)));
        if !helper.leave_all || worker_gone() {
            while let Some(i) = ph.claim(true) {
                mine(i);
            }
        }
        (0..ph.slots.len())
            .map(|i| {
                let (state, value) = &ph.slots[i];
                let mut since = None;
                loop {
                    match state.load(Ordering::Acquire) {
                        DONE => break,
                        FAILED => mine(i),
                        _ if !helper.leave_all
                            && since.get_or_insert_with(Instant::now).elapsed() > PATIENCE =>
                        {
                            mine(i)
                        }
                        _ => std::thread::yield_now(),
                    }
                }
                value
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .expect("a done task's result")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::on_threads;

    /// Results come in task order whoever ran them, on one thread, two and three, with
    /// the caller claiming or leaving every task to the worker; a task that panics on the
    /// worker is run again here. Catches (tried): the results in reverse order.
    #[test]
    fn results_in_task_order_on_any_thread() {
        for threads in [1, 2, 3] {
            for leave_all in [false, true] {
                let got = on_threads(threads, || {
                    let h = Helper::wake(2, leave_all);
                    assert_eq!(h.is_some(), threads > 1);
                    let a = tasks(h.as_ref(), 0, 37, |i| {
                        std::thread::sleep(std::time::Duration::from_micros((i % 5) as u64));
                        i * i
                    });
                    let b = tasks(h.as_ref(), 1, 5, |i| vec![i; i]);
                    (a, b)
                });
                assert_eq!(got.0, (0..37).map(|i| i * i).collect::<Vec<_>>());
                assert_eq!(got.1, (0..5).map(|i| vec![i; i]).collect::<Vec<_>>());
            }
        }
    }

    /// With every task left to the worker, the tasks run on another thread (the worker's
    /// side is what runs); a panic on the worker is redone here, where it panics again.
    /// Catches (tried): the worker's results dropped (the caller then redoes every task).
    #[test]
    fn left_tasks_run_on_the_worker_and_its_panics_reach_the_caller() {
        let caller = on_threads(2, || {
            let h = Helper::wake(1, true);
            let me = std::thread::current().id();
            let ran = tasks(h.as_ref(), 0, 8, move |_| std::thread::current().id() != me);
            assert!(ran.iter().all(|&x| x), "{ran:?}");
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let h = Helper::wake(1, true);
                tasks(h.as_ref(), 0, 3, |i| {
                    assert!(i != 1, "task one fails");
                    i
                })
            }))
        });
        assert!(caller.is_err(), "the worker's panic must reach the caller");
    }
}
