//! The one place the core imports synchronization from (crate-private, as tokio's
//! `src/loom` is: `--cfg loom` changes what the core is built from, never a public type).
//!
//! Under `--cfg loom` every primitive is loom's model, so the exact code that runs in the
//! VMM is the code loom explores. Time does not exist under loom: a [`Deadline`] never
//! passes there (loom reports a hang as a deadlock or as exceeding its branch budget).
//! A timed wait ([`wait_slice`]) either times out (a yield: the timeout may fire at any
//! moment) or blocks until notified; how many timeouts one execution may see is the
//! model's choice ([`model_time`]).

// The simulated backend (feature `sim`) is the only user of some of these.
#![cfg_attr(not(feature = "sim"), allow(unused_imports))]

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
#[cfg(loom)]
pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(loom)]
pub use loom::thread;

#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
#[cfg(not(loom))]
pub use std::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub use std::thread;

use std::time::Duration;

/// Locks `m`, ignoring poisoning: every value the core guards stays consistent across a
/// panic (it is an `Option` of a handle or a unit), so a panicked holder is no reason to
/// wedge everybody else.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Polls `done()` for up to `limit` and returns its last answer. Under loom it is one
/// look: spinning adds no interleaving a model would not already explore.
pub fn spin_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    #[cfg(loom)]
    {
        let _ = limit;
        done()
    }
    #[cfg(not(loom))]
    {
        let start = std::time::Instant::now();
        loop {
            if done() {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            for _ in 0..64 {
                std::hint::spin_loop();
            }
        }
    }
}

/// Sleeps until `cv` is notified, `slice` has passed, or `done()` holds. `done` is checked
/// under `m`, so a notifier that changes state and then notifies under `m` is never missed.
/// While asleep the caller is counted in `sleepers(&mut *guard)`, so a notifier that finds
/// the count at 0 under `m` may skip the notify.
///
/// Under loom, while the execution's timeout budget lasts ([`model_time`]) the slice
/// times out: a yield, so the wake-up may come at any point, which is the freedom the
/// real timeout gives the scheduler. Once it is spent the wait blocks until notified, so
/// a waiter never spins: loom has no fair scheduler, and two threads that keep timing out
/// and yielding to each other would build endless schedules that starve everybody else.
///
/// Returns whether the slice timed out (ended with no notification and `done()` false).
pub fn wait_slice<T>(
    m: &Mutex<T>,
    cv: &Condvar,
    slice: Duration,
    sleepers: impl Fn(&mut T) -> &mut u32,
    done: impl Fn() -> bool,
) -> bool {
    let mut guard = lock(m);
    if done() {
        return false;
    }
    #[cfg(loom)]
    {
        let _ = slice;
        if model_time::take_timeout() {
            // Never asleep on `cv`, so never counted.
            drop(guard);
            thread::yield_now();
            return true;
        }
        *sleepers(&mut guard) += 1;
        let mut guard = wait(cv, guard);
        *sleepers(&mut guard) -= 1;
        drop(guard);
        false
    }
    #[cfg(not(loom))]
    {
        *sleepers(&mut guard) += 1;
        let (mut guard, r) = match cv.wait_timeout(guard, slice) {
            Ok(x) => x,
            Err(poisoned) => poisoned.into_inner(),
        };
        *sleepers(&mut guard) -= 1;
        let timed_out = r.timed_out() && !done();
        drop(guard);
        timed_out
    }
}

/// Waits on `cv` until notified (no timeout).
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    match cv.wait(guard) {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A point in time after which a bounded wait gives up.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    #[cfg(not(loom))]
    at: Option<std::time::Instant>,
}

impl Deadline {
    /// A deadline `timeout` from now (saturating: an absurd timeout means "no deadline").
    pub fn after(timeout: Duration) -> Self {
        #[cfg(loom)]
        {
            let _ = timeout;
            Deadline {}
        }
        #[cfg(not(loom))]
        {
            Deadline {
                at: std::time::Instant::now().checked_add(timeout),
            }
        }
    }

    /// The time left, at most `cap` (`cap` itself under loom, where time does not pass).
    pub fn left(&self, cap: Duration) -> Duration {
        #[cfg(loom)]
        {
            cap
        }
        #[cfg(not(loom))]
        {
            self.at.map_or(cap, |at| {
                at.saturating_duration_since(std::time::Instant::now())
                    .min(cap)
            })
        }
    }

    /// Whether the deadline has passed. Never true under loom.
    pub fn passed(&self) -> bool {
        #[cfg(loom)]
        {
            false
        }
        #[cfg(not(loom))]
        {
            self.at.is_some_and(|at| std::time::Instant::now() >= at)
        }
    }
}

/// Loom only: how many of the timed waits of one execution time out.
///
/// Time is the environment, not state of the model, so the budget is not a loom object
/// (it adds no interleavings). It is kept per OS thread: loom runs every thread of one
/// model on the thread that called it, so parallel test threads do not share budgets. A
/// model sets it at the start of every execution; the default is unlimited, which is the
/// plain "every timed wait may time out" model (waits then never block, so only models
/// whose waiters cannot starve each other stay within loom's branch budget).
#[cfg(loom)]
pub mod model_time {
    use std::cell::Cell;

    thread_local! {
        static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
    }

    /// Sets the budget for the execution about to run: `Some(n)`: the first `n` timed
    /// waits that find nothing to do time out, later ones block until notified; `None`:
    /// every timed wait times out.
    pub fn set_timeouts(budget: Option<usize>) {
        LEFT.with(|l| l.set(budget));
    }

    /// Spends one timeout, if any is left.
    pub(crate) fn take_timeout() -> bool {
        LEFT.with(|l| match l.get() {
            None => true,
            Some(0) => false,
            Some(n) => {
                l.set(Some(n - 1));
                true
            }
        })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn wait_slice_reports_a_timeout_only_when_nothing_happened() {
        let m = Mutex::new(0u32);
        let cv = Condvar::new();
        let slice = Duration::from_millis(5);
        assert!(
            wait_slice(&m, &cv, slice, |n| n, || false),
            "nothing happened"
        );
        assert!(!wait_slice(&m, &cv, slice, |n| n, || true), "already done");
        assert_eq!(*lock(&m), 0, "a sleeper stayed counted after its wait");
    }

    #[test]
    fn wait_slice_wakes_on_notification_without_timing_out() {
        let shared = Arc::new((Mutex::new(0u32), Condvar::new(), AtomicBool::new(false)));
        let s = shared.clone();
        let waker = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            s.2.store(true, Ordering::SeqCst);
            // As the core's wakers do: notify only a counted sleeper.
            let g = lock(&s.0);
            if *g > 0 {
                s.1.notify_all();
            }
            drop(g);
        });
        let start = std::time::Instant::now();
        let mut timed_out = false;
        while !shared.2.load(Ordering::SeqCst) {
            timed_out = wait_slice(
                &shared.0,
                &shared.1,
                Duration::from_secs(30),
                |n| n,
                || shared.2.load(Ordering::SeqCst),
            );
        }
        assert!(!timed_out, "a notified wait reported a timeout");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the sleeper was not counted, so nobody woke it"
        );
        waker.join().expect("waker");
    }
}
