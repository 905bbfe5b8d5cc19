//! Guest-physical addresses, ports and interrupt numbers chosen by the VMM, including the
//! Linux boot-protocol addresses (zero page, command line, kernel load address). The
//! backend's own fixed addresses (boot GDT/IDT, stack, page tables, KVM's TSS) live in
//! `kvm_backend::layout`; everything here is picked so it never overlaps those (checked
//! by this module's tests).

/// End of the usable low RAM: the 1 KiB below 640 KiB is the EBDA on PCs, kept reserved.
pub const LOW_RAM_END: u64 = 0x9_fc00;
/// Start of the legacy VGA/BIOS hole; ACPI tables live from here.
pub const ACPI_TABLES_START: u64 = 0xa_0000;
/// Where the legacy RSDP scan (0xE0000..0xFFFFF) finds its copy of the RSDP.
pub const RSDP_LEGACY_COPY: u64 = 0xe_0000;
/// Tables must end before the legacy RSDP copy.
pub const ACPI_TABLES_END: u64 = RSDP_LEGACY_COPY;
/// End of the BIOS area; RAM resumes here.
pub const BIOS_END: u64 = 0x10_0000;

/// Linux `boot_params` (the zero page), between the backend's IDT and its boot stack.
pub const ZERO_PAGE: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE: u64 = 0x2_0000;
/// Room for the kernel command line, in bytes.
pub const CMDLINE_MAX: usize = 0x1_0000;
/// Kernel load address: the first byte of RAM above the BIOS area.
pub const HIMEM_START: u64 = BIOS_END;

/// Smallest guest RAM we accept: a Debian kernel plus initramfs need room to unpack.
pub const MIN_MEMORY: u64 = 128 << 20;
/// Start of the 32-bit MMIO hole (IOAPIC, LAPIC, the hotplug controller, KVM's pages):
/// RAM below 4 GiB ends here at most.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Where RAM beyond [`MMIO_HOLE_START`] bytes continues: above 4 GiB.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// Largest guest RAM accepted (the host's RAM may allow less; guest memory checks that).
pub const MAX_MEMORY: u64 = 1 << 40;

/// The CPU-hotplug controller's 12-byte MMIO window, in the 32-bit hole and away from
/// the IOAPIC (0xfec00000) and LAPIC (0xfee00000).
pub const HOTPLUG_MMIO_BASE: u64 = 0xfe00_0000;

/// Local APIC base as advertised in the MADT.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// The in-kernel IOAPIC's base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;

/// COM1 base port and its ISA interrupt.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's IRQ (ISA IRQ 4 = IOAPIC pin 4, no override).
pub const COM1_IRQ: u32 = 4;
/// i8042 data and command/status ports.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command (write) / status (read) port.
pub const I8042_CMD_PORT: u16 = 0x64;
/// CMOS/RTC index and data ports.
pub const CMOS_INDEX_PORT: u16 = 0x70;
/// CMOS/RTC data port.
pub const CMOS_DATA_PORT: u16 = 0x71;
/// POST diagnostic port, written by Linux as an I/O delay.
pub const POST_PORT: u16 = 0x80;
/// PCI configuration mechanism #1 ports (we have no PCI: reads return all ones).
pub const PCI_CONFIG_START: u16 = 0xcf8;
/// Last PCI configuration port.
pub const PCI_CONFIG_END: u16 = 0xcff;
/// The ACPI sleep control/status and reset register (hardware-reduced ACPI).
pub const ACPI_PM_PORT: u16 = 0x3c0;
/// Value the guest writes to the reset register to reboot.
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// SLP_TYP value of `_S5_` (what the guest writes, shifted, to power off).
pub const S5_SLEEP_TYPE: u8 = 5;

/// GSI of the Generic Event Device: edge-triggered through the in-kernel IOAPIC. ISA IRQ 5
/// is free on this machine model (no sound card, no LPT2).
pub const GED_GSI: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_backend::layout as backend;

    fn overlaps(a: std::ops::Range<u64>, b: std::ops::Range<u64>) -> bool {
        a.start < b.end && b.start < a.end
    }

    #[test]
    fn boot_protocol_areas_avoid_the_backends_structures() {
        let page_tables = backend::PML4..backend::PDE + backend::PDE_COUNT * 0x1000;
        let gdt_idt = backend::BOOT_GDT..backend::BOOT_IDT + 0x10;
        // The stack grows down from BOOT_STACK within its page; the kernel switches to its
        // own stack at once.
        let stack = (backend::BOOT_STACK & !0xfff)..backend::BOOT_STACK;
        let ours = [
            ("zero page", ZERO_PAGE..ZERO_PAGE + 0x1000),
            ("command line", CMDLINE..CMDLINE + CMDLINE_MAX as u64),
            ("ACPI tables", ACPI_TABLES_START..BIOS_END),
        ];
        for (name, r) in ours {
            for theirs in [&page_tables, &gdt_idt, &stack] {
                assert!(
                    !overlaps(r.clone(), theirs.clone()),
                    "{name} {r:x?} overlaps {theirs:x?}"
                );
            }
            assert!(r.end <= HIMEM_START, "{name} reaches the kernel");
        }
        // RAM and the hotplug window end below KVM's identity-map and TSS pages.
        let kvm_pages = backend::KVM_IDENTITY_MAP_ADDRESS;
        assert!(kvm_pages >= MMIO_HOLE_START, "low RAM reaches KVM's pages");
        assert!(
            HIGH_RAM_START > backend::KVM_TSS_ADDRESS as u64 + 3 * 0x1000,
            "high RAM starts below KVM's pages"
        );
        assert!(
            kvm_pages >= HOTPLUG_MMIO_BASE + 12,
            "hotplug window reaches KVM's pages"
        );
        assert_eq!(
            backend::KVM_IDENTITY_MAP_ADDRESS + 0x1000,
            backend::KVM_TSS_ADDRESS as u64,
            "KVM's pages are contiguous"
        );
    }
}
