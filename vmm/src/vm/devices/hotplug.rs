//! MMIO glue for the CPU-hotplug controller: maps guest accesses in the 12-byte window to
//! the core's `Vcpus::hotplug_read/hotplug_write` (the register logic lives in the core so
//! loom checks it with pause). Runs on vCPU threads and never blocks: an eject only *stops*
//! the vCPU; the exit bus reports the eject (`VmEvent::Ejected`) and the
//! VMM's main thread reaps it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use vcpu_sync::{Backend, Vcpus, WeakVcpus, WriteEffect, HOTPLUG_REGION_SIZE};

/// The controller's window and a handle on the vCPUs. The handle is set once the vCPUs
/// exist (they are created after the exit handler that contains this device). It is weak:
/// the vCPUs own the backend, which owns the exit handler that contains this device, so a
/// strong handle would be a cycle that keeps the whole VM alive after it is dropped.
pub struct HotplugController<B: Backend> {
    base: u64,
    vcpus: OnceLock<WeakVcpus<B>>,
    /// Pauses that were in force or started while some vCPU was inside this handler.
    pauses_during_access: AtomicU64,
    /// Of those, the ones that overlapped an eject being serviced (the window of Cloud
    /// Hypervisor's second deadlock), counted once per eject.
    pauses_during_eject: AtomicU64,
    /// The number (epoch / 2 rounded up) of the last pause counted there, so a pause that
    /// overlaps several accesses counts once.
    last_counted: AtomicU64,
    /// The old design's lock over "the vCPU states" (the motivating bug): taken by every
    /// access here and by the pause path across its whole wait. Negative control only.
    #[cfg(feature = "legacy-wide-lock")]
    legacy_states: std::sync::Mutex<()>,
}

impl<B: Backend> std::fmt::Debug for HotplugController<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotplugController")
            .field("base", &self.base)
            .finish()
    }
}

impl<B: Backend> HotplugController<B> {
    /// A controller at guest-physical `base`.
    pub fn new(base: u64) -> Self {
        HotplugController {
            base,
            vcpus: OnceLock::new(),
            pauses_during_access: AtomicU64::new(0),
            pauses_during_eject: AtomicU64::new(0),
            last_counted: AtomicU64::new(0),
            #[cfg(feature = "legacy-wide-lock")]
            legacy_states: std::sync::Mutex::new(()),
        }
    }

    /// Connects the vCPUs (keeping only a [`WeakVcpus`]). Later calls are ignored (there
    /// is one set of vCPUs per VM).
    pub fn attach(&self, vcpus: Vcpus<B>) {
        let _ = self.vcpus.set(vcpus.downgrade());
    }

    fn vcpus(&self) -> Option<Vcpus<B>> {
        self.vcpus.get().and_then(WeakVcpus::upgrade)
    }

    /// Whether slot `index` is being given back: its removal was requested or the guest
    /// has ejected it (its thread is stopping).
    pub fn removal_in_progress(&self, index: usize) -> bool {
        self.vcpus()
            .and_then(|v| v.try_report(index).ok())
            .is_some_and(|r| r.remove_requested || r.life == vcpu_sync::Life::Stopping)
    }

    /// The window's offset for `addr`, if the access `[addr, addr+len)` starts inside it.
    pub fn offset(&self, addr: u64) -> Option<u64> {
        addr.checked_sub(self.base)
            .filter(|&o| o < HOTPLUG_REGION_SIZE)
    }

    /// Services a read at window offset `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        match self.vcpus() {
            Some(v) => self.access(&v, || v.hotplug_read(offset, data)).0,
            None => data.fill(0),
        }
    }

    /// Services a write at window offset `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> WriteEffect {
        match self.vcpus() {
            Some(v) => {
                let (effect, overlapped) = self.access(&v, || v.hotplug_write(offset, data));
                if overlapped && matches!(effect, WriteEffect::Ejected(_)) {
                    self.pauses_during_eject.fetch_add(1, Ordering::Relaxed);
                }
                effect
            }
            None => WriteEffect::None,
        }
    }

    /// Pauses that were in force or began while a vCPU was servicing an access to this
    /// controller: the window of the motivating bug, counted exactly (each such pause once).
    pub fn pauses_during_access(&self) -> u64 {
        self.pauses_during_access.load(Ordering::Relaxed)
    }

    /// Ejects during which a pause was in force or began.
    pub fn pauses_during_eject(&self) -> u64 {
        self.pauses_during_eject.load(Ordering::Relaxed)
    }

    /// Runs one register access, noting whether a pause landed while it ran (also
    /// returned).
    fn access<R>(&self, vcpus: &Vcpus<B>, f: impl FnOnce() -> R) -> (R, bool) {
        let before = vcpus.pause_epoch();
        #[cfg(feature = "legacy-wide-lock")]
        let r = {
            let _states = self.legacy_states.lock().unwrap_or_else(|p| p.into_inner());
            f()
        };
        #[cfg(not(feature = "legacy-wide-lock"))]
        let r = f();
        let after = vcpus.pause_epoch();
        // Pause k (k >= 1) is in force while the epoch is 2k - 1.
        let overlapped = before & 1 == 1 || after != before;
        if overlapped {
            let pause = after.div_ceil(2).max(before.div_ceil(2));
            if self.last_counted.fetch_max(pause, Ordering::Relaxed) < pause {
                self.pauses_during_access.fetch_add(1, Ordering::Relaxed);
            }
        }
        (r, overlapped)
    }

    /// Runs `pause` the way the old design did: holding the lock every access takes, across
    /// the whole kick-and-wait. A vCPU inside an access then cannot acknowledge.
    #[cfg(feature = "legacy-wide-lock")]
    pub fn legacy_locked<R>(&self, pause: impl FnOnce() -> R) -> R {
        let _states = self.legacy_states.lock().unwrap_or_else(|p| p.into_inner());
        pause()
    }
}
