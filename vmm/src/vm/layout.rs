//! Guest-physical addresses, ports and interrupt numbers chosen by the VMM. The backend's
//! own fixed addresses (page tables, GDT, zero page, command line) live in
//! `kvm_backend::layout`; everything here is picked so it never overlaps those.

/// End of the usable low RAM: the 1 KiB below 640 KiB is the EBDA on PCs, kept reserved.
pub const LOW_RAM_END: u64 = 0x9_fc00;
/// Start of the legacy VGA/BIOS hole; ACPI tables live from here.
pub const ACPI_TABLES_START: u64 = 0xa_0000;
/// Where the legacy RSDP scan (0xE0000..0xFFFFF) finds its copy of the RSDP.
pub const RSDP_LEGACY_COPY: u64 = 0xe_0000;
/// Tables must end before the legacy RSDP copy.
pub const ACPI_TABLES_END: u64 = RSDP_LEGACY_COPY;
/// End of the BIOS area; RAM resumes here (== `kvm_backend::layout::HIMEM_START`).
pub const BIOS_END: u64 = 0x10_0000;

/// Smallest guest RAM we accept: a Debian kernel plus initramfs need room to unpack.
pub const MIN_MEMORY: u64 = 128 << 20;
/// Largest guest RAM: everything stays below the 32-bit MMIO hole (3 GiB).
pub const MAX_MEMORY: u64 = 0xc000_0000;

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
