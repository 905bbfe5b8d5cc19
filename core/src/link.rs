//! The vCPU-thread side of the protocol.

use crate::shared::Shared;
use crate::slot::{Life, Location};
use crate::sync::{lock, wait, Arc, Ordering};

// Which vCPU the current thread runs, set when its run loop first calls into its link.
// Not under loom: loom runs every model thread on one OS thread, so a std thread-local
// would be shared by all of them (and no model calls a VMM-side method on a vCPU thread).
#[cfg(not(loom))]
std::thread_local! {
    static CURRENT_VCPU: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The index of the vCPU the calling thread runs, or `None` on any other thread. A thread
/// counts as a vCPU thread from its first [`VcpuLink::checkpoint`] or [`VcpuLink::in_mmio`]
/// until its link is dropped. Methods that wait for vCPUs refuse to run on one.
pub fn current_vcpu() -> Option<usize> {
    #[cfg(not(loom))]
    {
        CURRENT_VCPU.with(|c| c.get())
    }
    #[cfg(loom)]
    {
        None
    }
}

fn set_current_vcpu(index: Option<usize>) {
    #[cfg(not(loom))]
    CURRENT_VCPU.with(|c| c.set(index));
    #[cfg(loom)]
    let _ = index;
}

/// What the run loop does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Enter guest mode.
    Run,
    /// Leave the run loop: the vCPU was ejected or the VM is shutting down.
    Exit,
}

/// Handed to the vCPU thread by [`crate::Backend::spawn`]. The run loop is:
///
/// ```text
/// loop {
///     if link.checkpoint() == Next::Exit { break }
///     link.set_location(Location::InGuest);
///     run guest (returns on a guest exit or a kick)
///     link.set_location(Location::Userspace);
///     handle the exit, wrapping device work in link.in_mmio(..)
/// }
/// ```
///
/// Dropping the link (also on panic) marks the slot exited, which a pause counts as
/// acknowledged and `reap` turns into a joined, absent slot.
#[derive(Debug)]
pub struct VcpuLink {
    shared: Arc<Shared>,
    index: usize,
}

impl VcpuLink {
    pub(crate) fn new(shared: Arc<Shared>, index: usize) -> VcpuLink {
        VcpuLink { shared, index }
    }

    /// The slot index of this vCPU.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The pause/stop point. Call before every entry into guest mode, after the backend has
    /// cleared whatever made the last kick stick. If a pause is in force this acknowledges
    /// it and parks until `resume()`; a stop (eject, shutdown) returns [`Next::Exit`].
    pub fn checkpoint(&self) -> Next {
        set_current_vcpu(Some(self.index));
        let slot = &self.shared.slots[self.index];
        if slot.life() == Life::Stopping {
            return Next::Exit;
        }
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        if epoch & 1 == 0 {
            return Next::Run;
        }
        self.park()
    }

    fn park(&self) -> Next {
        let shared = &*self.shared;
        let slot = &shared.slots[self.index];
        slot.set_location(Location::Parked);
        let mut guard = lock(&slot.bell);
        let next = loop {
            if slot.life() == Life::Stopping {
                break Next::Exit;
            }
            let epoch = shared.epoch.load(Ordering::SeqCst);
            if epoch & 1 == 0 {
                break Next::Run;
            }
            if slot.ack.load(Ordering::SeqCst) != epoch {
                slot.ack.store(epoch, Ordering::SeqCst);
                // Waiters of this slot check `ack` under `bell`, which we hold.
                if guard.waiters > 0 {
                    slot.waiters_cv.notify_all();
                }
            }
            guard.parked = true;
            guard = wait(&slot.parked_cv, guard);
            guard.parked = false;
        };
        drop(guard);
        slot.set_location(Location::Userspace);
        next
    }

    /// Records where the thread is, for diagnosis of a stuck pause.
    pub fn set_location(&self, location: Location) {
        self.shared.slots[self.index].set_location(location);
    }

    /// Runs `f`, the handling of a device exit (MMIO or port I/O), with the location set to
    /// [`Location::InMmio`]. A pauser that kicks this vCPU meanwhile counts its pause in
    /// `Stats::pauses_overlapping_mmio`, and a pause stuck on a device handler names it.
    pub fn in_mmio<R>(&self, f: impl FnOnce() -> R) -> R {
        set_current_vcpu(Some(self.index));
        let slot = &self.shared.slots[self.index];
        slot.set_location(Location::InMmio);
        let r = f();
        slot.set_location(Location::Userspace);
        r
    }
}

impl Drop for VcpuLink {
    fn drop(&mut self) {
        if current_vcpu() == Some(self.index) {
            set_current_vcpu(None);
        }
        let slot = &self.shared.slots[self.index];
        slot.set_location(Location::Exited);
        slot.life.store(Life::Exited as u8, Ordering::SeqCst);
        slot.ring_waiters();
        log::debug!("vCPU {} left its run loop", self.index);
    }
}
