//! MMIO glue for the CPU-hotplug controller: maps guest accesses in the 12-byte window to
//! the core's `Vcpus::hotplug_read/hotplug_write` (the register logic lives in the core so
//! loom checks it with pause). Runs on vCPU threads and never blocks: an eject only *stops*
//! the vCPU; the exit bus reports the eject (`VmEvent::Ejected`) and the
//! VMM's main thread reaps it.

use std::sync::OnceLock;
use vcpu_sync::{Backend, Vcpus, WeakVcpus, WriteEffect, HOTPLUG_REGION_SIZE};

/// The controller's window and a handle on the vCPUs. The handle is set once the vCPUs
/// exist (they are created after the exit handler that contains this device). It is weak:
/// the vCPUs own the backend, which owns the exit handler that contains this device, so a
/// strong handle would be a cycle that keeps the whole VM alive after it is dropped.
pub struct HotplugController<B: Backend> {
    base: u64,
    vcpus: OnceLock<WeakVcpus<B>>,
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

    /// The window's offset for `addr`, if the access `[addr, addr+len)` starts inside it.
    pub fn offset(&self, addr: u64) -> Option<u64> {
        addr.checked_sub(self.base)
            .filter(|&o| o < HOTPLUG_REGION_SIZE)
    }

    /// Services a read at window offset `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        match self.vcpus() {
            Some(v) => v.hotplug_read(offset, data),
            None => data.fill(0),
        }
    }

    /// Services a write at window offset `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> WriteEffect {
        match self.vcpus() {
            Some(v) => v.hotplug_write(offset, data),
            None => WriteEffect::None,
        }
    }
}
