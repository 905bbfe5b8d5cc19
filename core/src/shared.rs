//! State shared between the VMM-side handle and every vCPU thread.

use crate::slot::Slot;
use crate::sync::{AtomicU32, AtomicU64};

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
    /// Every sleeper sleeps on one slot's condvars (see [`Slot`]): there is no VM-wide lock.
    pub(crate) slots: Box<[Slot]>,
    /// The hotplug controller's selected CPU (register offset 0).
    pub(crate) selected: AtomicU32,
    pub(crate) counters: Counters,
}

impl Shared {
    pub(crate) fn new(max_vcpus: usize) -> Shared {
        Shared {
            epoch: AtomicU64::new(0),
            slots: (0..max_vcpus).map(|_| Slot::new()).collect(),
            selected: AtomicU32::new(0),
            counters: Counters::default(),
        }
    }
}
