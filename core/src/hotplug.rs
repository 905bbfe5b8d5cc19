//! The CPU-hotplug controller's registers as pure logic over the slots.
//!
//! Layout (12 bytes, as in the repository's docs/design.md; the AML in the VMM's DSDT relies on it):
//!
//! | offset | size | read | write |
//! |---|---|---|---|
//! | 0 | 4 | selected CPU index | select a CPU |
//! | 4 | 1 | bit0 enabled, bit1 inserting, bit2 removing | bit1 clears inserting, bit2 clears removing, bit3 ejects |
//!
//! Everything else reads as zero and ignores writes. This runs on whichever vCPU thread
//! services the guest's access; it takes no lock and never waits (an eject only *stops*
//! the target, the VMM thread reaps it), so a guest cannot make it block.

use crate::backend::Backend;
use crate::slot::{
    Life, FLAG_REMOVAL_SEEN, FLAG_REMOVE_REQUESTED, STATUS_EJECT, STATUS_ENABLED, STATUS_INSERTING,
    STATUS_REMOVING,
};
use crate::sync::Ordering;
use crate::vcpus::Vcpus;

/// Size of the controller's MMIO window in bytes.
pub const HOTPLUG_REGION_SIZE: u64 = 12;
/// Offset of the CPU-select register (32 bits).
pub const REG_SELECT: u64 = 0;
/// Offset of the status/command register (8 bits).
pub const REG_STATUS: u64 = 4;

/// What a register write did, so the VMM can act (reap an ejected vCPU) and log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteEffect {
    /// Nothing observable changed (bad offset/size, out-of-range selection, no-op bits).
    None,
    /// Selected a CPU.
    Selected(u32),
    /// Cleared inserting and/or removing on a CPU.
    Cleared(usize),
    /// Ejected a CPU: its thread was told to stop; the VMM must reap it.
    Ejected(usize),
    /// The guest asked to eject a CPU the VMM never asked to remove; ignored.
    EjectRefused(usize),
}

impl<B: Backend> Vcpus<B> {
    /// Services a guest read of `data.len()` bytes at `offset` into the controller window.
    pub fn hotplug_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let shared = self.shared();
        match (offset, data.len()) {
            (REG_SELECT, 4) => {
                data.copy_from_slice(&shared.selected.load(Ordering::SeqCst).to_le_bytes());
            }
            (REG_STATUS, 1) => {
                data[0] = self.selected_status();
            }
            _ => log::debug!(
                "hotplug: ignored read at offset {offset} size {}",
                data.len()
            ),
        }
    }

    fn selected_slot(&self) -> Option<usize> {
        let sel = self.shared().selected.load(Ordering::SeqCst) as usize;
        (sel < self.max_vcpus()).then_some(sel)
    }

    fn selected_status(&self) -> u8 {
        let Some(i) = self.selected_slot() else {
            return 0;
        };
        let slot = &self.shared().slots[i];
        // Read and, when `removing` is shown, mark it seen, in one atomic step.
        let mut flags = slot.flags.load(Ordering::SeqCst);
        while flags & STATUS_REMOVING != 0 && flags & FLAG_REMOVAL_SEEN == 0 {
            match slot.flags.compare_exchange(
                flags,
                flags | FLAG_REMOVAL_SEEN,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now) => flags = now,
            }
        }
        let mut status = flags & (STATUS_INSERTING | STATUS_REMOVING);
        if slot.life() == Life::Active {
            status |= STATUS_ENABLED;
        }
        status
    }

    /// Services a guest write of `data` at `offset` into the controller window.
    pub fn hotplug_write(&self, offset: u64, data: &[u8]) -> WriteEffect {
        let shared = self.shared();
        match (offset, data) {
            (REG_SELECT, &[a, b, c, d]) => {
                let v = u32::from_le_bytes([a, b, c, d]);
                shared.selected.store(v, Ordering::SeqCst);
                WriteEffect::Selected(v)
            }
            (REG_STATUS, &[v]) => {
                let Some(i) = self.selected_slot() else {
                    return WriteEffect::None;
                };
                let slot = &shared.slots[i];
                let clear = v & (STATUS_INSERTING | STATUS_REMOVING);
                if clear != 0 {
                    slot.flags.fetch_and(!clear, Ordering::SeqCst);
                }
                if v & STATUS_EJECT != 0 {
                    if slot.flags.load(Ordering::SeqCst) & FLAG_REMOVE_REQUESTED == 0 {
                        // Guest-triggered at will: the VMM reports it, rate-limited.
                        log::debug!(
                            "hotplug: guest ejected CPU {i} without a removal request; ignored"
                        );
                        return WriteEffect::EjectRefused(i);
                    }
                    // stop() cannot fail for an in-range index.
                    if matches!(self.stop(i), Ok(true)) {
                        shared.counters.ejects.fetch_add(1, Ordering::Relaxed);
                        log::info!("hotplug: guest ejected CPU {i}");
                        return WriteEffect::Ejected(i);
                    }
                    return WriteEffect::None;
                }
                if clear != 0 {
                    WriteEffect::Cleared(i)
                } else {
                    WriteEffect::None
                }
            }
            _ => {
                log::debug!(
                    "hotplug: ignored write at offset {offset} size {}",
                    data.len()
                );
                WriteEffect::None
            }
        }
    }
}
