//! The VM: `/dev/kvm`, the VM fd, in-kernel irqchip and PIT, memory slots, interrupt lines.

use crate::backend::KvmBackend;
use crate::error::Error;
use crate::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::BackendConfig;
use kvm_bindings::{
    kvm_irqchip, kvm_pit_config, kvm_userspace_memory_region, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use std::sync::{Arc, Mutex, PoisonError};
use vm_memory::{
    Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

/// A KVM VM with an in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT.
pub struct KvmVm {
    kvm: Kvm,
    vm: Arc<VmFd>,
    /// Memory registered with KVM, kept mapped for as long as the VM can use it.
    memory: Mutex<Vec<GuestMemoryMmap>>,
    /// The next free KVM memory slot.
    next_slot: Mutex<u32>,
}

impl std::fmt::Debug for KvmVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmVm")
            .field("max_vcpus", &self.max_vcpus())
            .finish_non_exhaustive()
    }
}

/// Redirection-table entry bit 16: the pin is masked.
const IOAPIC_RTE_MASKED: u64 = 1 << 16;

/// Masks every line of both in-kernel 8259 PICs. The platform is ACPI hardware-reduced:
/// Linux never programs the PICs there, so an unmasked PIC at its reset state (vector base
/// 0) would deliver ISA line N to the BSP (whose LINT0 is ExtINT after reset) as exception
/// vector N. A GED edge on GSI 5 during early boot arrived as #BR ("bounds") and killed the
/// guest. Interrupts go through the IOAPIC only.
fn mask_pics(vm: &VmFd) -> Result<(), Error> {
    for chip_id in [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE] {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip)
            .map_err(Error::vm("KVM_GET_IRQCHIP"))?;
        // chip_id PIC_* selects the pic member of the union (writing a union field is safe).
        chip.chip.pic.imr = 0xff;
        vm.set_irqchip(&chip)
            .map_err(Error::vm("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

impl KvmVm {
    /// Opens `/dev/kvm` and creates a VM ready for an x86 Linux guest.
    pub fn new() -> Result<KvmVm, Error> {
        let kvm = Kvm::new().map_err(Error::OpenKvm)?;
        let vm = kvm.create_vm().map_err(Error::vm("KVM_CREATE_VM"))?;
        // Intel needs both before any vCPU exists: a TSS for real-mode emulation and the
        // EPT identity-map page; both sit in a hole below 4 GiB the guest never uses as RAM.
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(Error::vm("KVM_SET_TSS_ADDR"))?;
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(Error::vm("KVM_SET_IDENTITY_MAP_ADDR"))?;
        // The irqchip must exist before vCPUs so each gets an in-kernel LAPIC (which is what
        // parks APs in wait-for-SIPI and delivers INIT/SIPI for CPU hotplug).
        vm.create_irq_chip()
            .map_err(Error::vm("KVM_CREATE_IRQCHIP"))?;
        mask_pics(&vm)?;
        // PIT for Linux's early timer calibration; the dummy speaker port keeps port 0x61
        // in the kernel too.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(Error::vm("KVM_CREATE_PIT2"))?;
        log::debug!("KVM VM created (max {} vCPUs)", kvm.get_max_vcpus());
        Ok(KvmVm {
            kvm,
            vm: Arc::new(vm),
            memory: Mutex::new(Vec::new()),
            next_slot: Mutex::new(0),
        })
    }

    /// How many vCPUs this host lets one VM have: KVM_CAP_MAX_VCPUS (falling back to
    /// KVM_CAP_NR_VCPUS), bounded by KVM_CAP_MAX_VCPU_ID since the index is the vCPU id.
    pub fn max_vcpus(&self) -> usize {
        self.kvm
            .get_max_vcpus()
            .min(self.kvm.get_max_vcpu_id())
            .max(1)
    }

    /// Registers every region of `mem` as a KVM memory slot. The memory stays mapped for
    /// the life of this `KvmVm` (a clone is kept), so the guest never sees freed pages.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), Error> {
        let mut next_slot = self
            .next_slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for region in mem.iter() {
            let base = region.start_addr().raw_value();
            let size = region.len();
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| Error::MemoryRegion {
                    base,
                    size,
                    reason: format!("no host mapping: {e}"),
                })?;
            let slot = *next_slot;
            if slot as usize >= self.kvm.get_nr_memslots() {
                return Err(Error::MemoryRegion {
                    base,
                    size,
                    reason: format!("no free KVM memory slot (KVM has {slot})"),
                });
            }
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: base,
                memory_size: size,
                userspace_addr: host as u64,
            };
            // SAFETY: `host..host+size` is a live mapping owned by `mem`; a clone of `mem`
            // is stored below, so it stays mapped while the VM exists. The slot is fresh.
            unsafe { self.vm.set_user_memory_region(region) }
                .map_err(Error::vm("KVM_SET_USER_MEMORY_REGION"))?;
            *next_slot += 1;
            log::debug!("memory slot {slot}: guest {base:#x} size {size:#x}");
        }
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(mem.clone());
        Ok(())
    }

    /// Drives an interrupt line of the in-kernel PIC/IOAPIC.
    pub fn set_irq_line(&self, irq: u32, level: bool) -> Result<(), Error> {
        self.vm
            .set_irq_line(irq, level)
            .map_err(Error::vm("KVM_IRQ_LINE"))
    }

    /// Whether the guest has unmasked IOAPIC pin `gsi` (programmed and enabled its
    /// redirection entry). Until then an edge on that line is lost.
    pub fn gsi_unmasked(&self, gsi: u32) -> Result<bool, Error> {
        let mut chip = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        self.vm
            .get_irqchip(&mut chip)
            .map_err(Error::vm("KVM_GET_IRQCHIP"))?;
        // SAFETY: chip_id IOAPIC selects the ioapic member of the union.
        let ioapic = unsafe { chip.chip.ioapic };
        let Some(entry) = ioapic.redirtbl.get(gsi as usize) else {
            return Ok(false);
        };
        // SAFETY: every bit pattern is a valid u64.
        let bits = unsafe { entry.bits };
        Ok(bits & IOAPIC_RTE_MASKED == 0)
    }

    /// Creates the vCPU backend. Reads KVM_GET_SUPPORTED_CPUID once and installs the
    /// process-wide kick signal handler.
    pub fn create_backend(&self, cfg: BackendConfig) -> Result<KvmBackend, Error> {
        let max = self.max_vcpus();
        if cfg.max_vcpus == 0 || cfg.max_vcpus > max {
            return Err(Error::InvalidConfig(format!(
                "max_vcpus {} is not in 1..={max} (the host's limit)",
                cfg.max_vcpus
            )));
        }
        // The index is the APIC ID; xAPIC IDs (CPUID leaf 1, MADT local-APIC entries)
        // have 8 bits and 0xff is the broadcast ID.
        if cfg.max_vcpus > 255 {
            return Err(Error::InvalidConfig(format!(
                "max_vcpus {} exceeds 255 (APIC IDs are 8 bits without x2APIC)",
                cfg.max_vcpus
            )));
        }
        let supported = self
            .kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::vm("KVM_GET_SUPPORTED_CPUID"))?;
        let tsc_deadline = self.kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        KvmBackend::new(self.vm.clone(), supported, tsc_deadline, cfg)
    }
}
