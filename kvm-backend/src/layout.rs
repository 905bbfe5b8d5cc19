//! Guest-physical addresses the backend writes at BSP setup; the VMM must keep them free.

/// The boot GDT (null, code64, data, TSS entries).
pub const BOOT_GDT: u64 = 0x500;
/// An empty IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT: u64 = 0x520;
/// Page-map level 4 of the boot identity map.
pub const PML4: u64 = 0x9000;
/// Page-directory-pointer table of the boot identity map.
pub const PDPTE: u64 = 0xa000;
/// First of [`PDE_COUNT`] consecutive page directories: together they identity-map the
/// first 4 GiB with 2 MiB pages (RAM and the MMIO hole).
pub const PDE: u64 = 0xb000;
/// Number of page directories at [`PDE`] (one per GiB).
pub const PDE_COUNT: u64 = 4;
/// Initial RSP/RBP of the BSP.
pub const BOOT_STACK: u64 = 0x8ff0;
/// The VMM writes `boot_params` here.
pub const ZERO_PAGE: u64 = 0x7000;
/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Room for the kernel command line, in bytes.
pub const CMDLINE_MAX: usize = 0x10000;
/// Kernel load address.
pub const HIMEM_START: u64 = 0x100000;
/// 3 GiB: RAM stays below (the VMM rejects more than 3 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;

/// KVM's real-mode TSS (three pages), placed just under the BIOS area at the top of 4 GiB.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// KVM's EPT identity-map page (one page, just below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
