//! State shared between the VMM-side handle and every vCPU thread.

use crate::slot::Slot;
use crate::sync::{lock, AtomicU32, AtomicU64, Condvar, Mutex};

/// Counters worth reporting (benchmarks, the storm test, `info`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) pauses: AtomicU64,
    pub(crate) pauses_overlapping_mmio: AtomicU64,
    pub(crate) rekicks: AtomicU64,
    pub(crate) ejects: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    /// Pause epoch: odd while a pause is in force. Every pause that starts from "running"
    /// and every resume bumps it, so an acknowledgement names the exact pause it answers.
    pub(crate) epoch: AtomicU64,
    pub(crate) slots: Box<[Slot]>,
    /// Parked vCPUs sleep here; resume and stop notify under `park_lock`.
    pub(crate) park_lock: Mutex<()>,
    pub(crate) park_cv: Condvar,
    /// Pausers and stoppers sleep here (in bounded slices) waiting for acknowledgements.
    pub(crate) ack_lock: Mutex<()>,
    pub(crate) ack_cv: Condvar,
    /// The hotplug controller's selected CPU (register offset 0).
    pub(crate) selected: AtomicU32,
    pub(crate) counters: Counters,
}

impl Shared {
    pub(crate) fn new(max_vcpus: usize) -> Shared {
        Shared {
            epoch: AtomicU64::new(0),
            slots: (0..max_vcpus).map(|_| Slot::new()).collect(),
            park_lock: Mutex::new(()),
            park_cv: Condvar::new(),
            ack_lock: Mutex::new(()),
            ack_cv: Condvar::new(),
            selected: AtomicU32::new(0),
            counters: Counters::default(),
        }
    }

    /// Wakes pausers/stoppers after a slot's ack or life changed (the change itself is
    /// made before, on the atomics; taking the lock orders it against a waiter's check).
    pub(crate) fn notify_ack(&self) {
        let guard = lock(&self.ack_lock);
        self.ack_cv.notify_all();
        drop(guard);
    }

    /// Wakes parked vCPUs after the epoch or a slot's life changed.
    pub(crate) fn notify_park(&self) {
        let guard = lock(&self.park_lock);
        self.park_cv.notify_all();
        drop(guard);
    }
}
