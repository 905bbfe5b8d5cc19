//! The one place the core imports synchronization from.
//!
//! Under `--cfg loom` every primitive is loom's model, so the exact code that runs in the
//! VMM is the code loom explores. Time does not exist under loom: a [`Deadline`] never
//! passes there (loom reports a hang as a deadlock or as exceeding its branch budget), and
//! a timed wait is a yield, which models "the timeout may fire at any moment".

#[cfg(loom)]
pub use loom::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
#[cfg(loom)]
pub use loom::thread;

#[cfg(not(loom))]
pub use std::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};
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

/// Sleeps until `cv` is notified, `slice` has passed, or `done()` holds. `done` is checked
/// under `m`, so a notifier that changes state and then notifies under `m` is never missed.
/// Under loom this is a yield: the timed wake-up may happen at any point, which is exactly
/// the freedom the real timeout gives the scheduler.
pub fn wait_slice(m: &Mutex<()>, cv: &Condvar, slice: Duration, done: impl Fn() -> bool) {
    #[cfg(loom)]
    {
        let _ = (m, cv, slice);
        if !done() {
            thread::yield_now();
        }
    }
    #[cfg(not(loom))]
    {
        let guard = lock(m);
        if done() {
            return;
        }
        drop(cv.wait_timeout(guard, slice));
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
