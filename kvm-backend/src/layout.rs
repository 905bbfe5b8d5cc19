//! Guest-physical addresses the backend itself uses: the boot GDT, IDT, stack and page
//! tables it writes at BSP setup, and KVM's TSS and identity-map pages. The VMM must keep
//! them free; where the VMM puts the kernel, its `boot_params` and command line is the
//! VMM's business (it passes the entry and zero page in `BootEntry`).

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

/// KVM's real-mode TSS (three pages), placed just under the BIOS area at the top of 4 GiB.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// KVM's EPT identity-map page (one page, just below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
