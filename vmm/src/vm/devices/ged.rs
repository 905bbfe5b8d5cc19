//! The Generic Event Device's VMM side. The GED has no registers of its own here: its only
//! event is "scan the CPU-hotplug controller", so raising its edge-triggered GSI makes the
//! guest run `_EVT`, which calls `\_SB.CPUS.CSCN`.

use super::Interrupt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The GED's interrupt and a count of notifications, for diagnostics.
pub struct Ged {
    irq: Arc<dyn Interrupt>,
    notifications: AtomicU64,
}

impl std::fmt::Debug for Ged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ged")
            .field("notifications", &self.notifications.load(Ordering::Relaxed))
            .finish()
    }
}

impl Ged {
    /// A GED raising `irq`.
    pub fn new(irq: Arc<dyn Interrupt>) -> Self {
        Ged {
            irq,
            notifications: AtomicU64::new(0),
        }
    }

    /// Asks the guest to rescan CPUs (after `hot_add`/`request_removal`).
    pub fn notify_cpu_change(&self) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
        self.irq.trigger();
    }

    /// How many times the guest was notified.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }
}
