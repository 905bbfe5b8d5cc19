//! The Generic Event Device's VMM side. The GED has no registers of its own here: its only
//! event is "scan the CPU-hotplug controller", so raising its edge-triggered GSI makes the
//! guest run `_EVT`, which calls `\_SB.CPUS.CSCN`.
//!
//! A notification the guest cannot take yet (it has not enabled the GED's interrupt: its
//! ACPI is still starting) is held, not lost: a short-lived thread waits until the line is
//! enabled and then raises it once. The guest's scan finds every change made meanwhile.

use super::Interrupt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a held notification checks whether the guest enabled the line.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// The GED's interrupt and a count of notifications, for diagnostics.
pub struct Ged {
    irq: Arc<dyn Interrupt>,
    notifications: AtomicU64,
    /// A notification is waiting for the guest to enable the line (one waiter at most).
    held: Arc<AtomicBool>,
    /// The VM is going away: a waiter gives up.
    closed: Arc<AtomicBool>,
    /// The waiter's thread, joined when the GED is dropped (it holds the interrupt, and so
    /// the VM's KVM fds and memory, until it has returned).
    waiter: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Ged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ged")
            .field("notifications", &self.notifications.load(Ordering::Relaxed))
            .field("held", &self.held.load(Ordering::Relaxed))
            .finish()
    }
}

impl Ged {
    /// A GED raising `irq`.
    pub fn new(irq: Arc<dyn Interrupt>) -> Self {
        Ged {
            irq,
            notifications: AtomicU64::new(0),
            held: Arc::new(AtomicBool::new(false)),
            closed: Arc::new(AtomicBool::new(false)),
            waiter: Mutex::new(None),
        }
    }

    /// Asks the guest to rescan CPUs (after `hot_add`/`request_removal`): raises the line
    /// now, or holds the notification until the guest has enabled it.
    pub fn notify_cpu_change(&self) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
        if self.held.load(Ordering::SeqCst) {
            return; // the waiting notification covers this change too
        }
        if self.irq.accepted() {
            self.irq.trigger();
            return;
        }
        if self
            .held
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        log::info!("the guest has not enabled the GED interrupt yet: CPU-change notification held");
        let (irq, held, closed) = (self.irq.clone(), self.held.clone(), self.closed.clone());
        let spawned = std::thread::Builder::new()
            .name("ged-hold".into())
            .spawn(move || {
                while !closed.load(Ordering::SeqCst) {
                    if irq.accepted() {
                        held.store(false, Ordering::SeqCst);
                        irq.trigger();
                        log::info!("held CPU-change notification delivered");
                        return;
                    }
                    std::thread::sleep(HOLD_POLL);
                }
            });
        match spawned {
            Ok(t) => {
                // A previous waiter has returned (held was false): drop its handle.
                let mut w = self.waiter.lock().unwrap_or_else(|p| p.into_inner());
                *w = Some(t);
            }
            Err(e) => {
                // No thread: raise it anyway; the guest may still catch it.
                log::warn!("cannot start the GED hold thread ({e}); raising the line now");
                self.held.store(false, Ordering::SeqCst);
                self.irq.trigger();
            }
        }
    }

    /// Whether a notification is waiting for the guest to enable the line.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// Ends any wait for the guest (the VM is stopping) and joins the waiter thread.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let waiter = self.waiter.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = waiter {
            let _ = h.join();
        }
    }

    /// How many times the guest was notified.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }
}

impl Drop for Ged {
    fn drop(&mut self) {
        // Joins the waiter, which sees `closed` within one HOLD_POLL.
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    /// A line the "guest" enables when told to, counting pulses.
    #[derive(Default)]
    struct Line {
        enabled: AtomicBool,
        pulses: AtomicUsize,
    }

    impl Interrupt for Line {
        fn trigger(&self) {
            self.pulses.fetch_add(1, Ordering::SeqCst);
        }
        fn accepted(&self) -> bool {
            self.enabled.load(Ordering::SeqCst)
        }
    }

    fn wait_for(f: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn enabled_line_is_raised_at_once() {
        let line = Arc::new(Line::default());
        line.enabled.store(true, Ordering::SeqCst);
        let ged = Ged::new(line.clone());
        ged.notify_cpu_change();
        assert_eq!(line.pulses.load(Ordering::SeqCst), 1);
        assert!(!ged.is_held());
    }

    #[test]
    fn notification_is_held_until_the_guest_enables_the_line() {
        let line = Arc::new(Line::default());
        let ged = Ged::new(line.clone());
        ged.notify_cpu_change();
        ged.notify_cpu_change();
        assert!(ged.is_held());
        std::thread::sleep(HOLD_POLL * 3);
        assert_eq!(
            line.pulses.load(Ordering::SeqCst),
            0,
            "raised before enabled"
        );
        line.enabled.store(true, Ordering::SeqCst);
        assert!(wait_for(|| !ged.is_held()), "never delivered");
        // Both changes are covered by one pulse; later ones go straight through.
        assert_eq!(line.pulses.load(Ordering::SeqCst), 1);
        ged.notify_cpu_change();
        assert_eq!(line.pulses.load(Ordering::SeqCst), 2);
        assert_eq!(ged.notifications(), 3);
    }

    #[test]
    fn close_ends_the_wait() {
        let line = Arc::new(Line::default());
        let ged = Ged::new(line.clone());
        ged.notify_cpu_change();
        ged.close();
        std::thread::sleep(HOLD_POLL * 3);
        line.enabled.store(true, Ordering::SeqCst);
        std::thread::sleep(HOLD_POLL * 3);
        assert_eq!(line.pulses.load(Ordering::SeqCst), 0);
    }
}
