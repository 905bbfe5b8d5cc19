//! The spin guest: a tiny ELF64 image that both our VMM and QEMU boot, and that keeps every
//! vCPU busy in guest mode, for comparing pause/resume latency of the two on the same guest.
//! Unlike the synthetic guest of this crate's root (hand-assembled, one code path, APs
//! started by the VMM through `aps_at_entry`), it starts its APs itself with INIT/SIPI, as
//! an OS does, so it runs unchanged under any VMM with an in-kernel LAPIC.
//!
//! The source is `testguest/spinner/spinner.S` (+ `spinner.ld`); the build script
//! assembles it with gcc into `OUT_DIR`, and [`path`] returns the file (or, without gcc,
//! a [`SpinImageError`] saying so).
//!
//! # What it does
//!
//! The BSP starts the APs, then writes `\n` to COM1 (firmware may have left a line open).
//! Every CPU writes `SPIN cpu N up\n` (N = its APIC ID from CPUID leaf 1; lines serialized
//! by a spinlock, the BSP's first, the APs' in no fixed order) and, with interrupts off,
//! increments its little-endian u64 counter (see [`counter`]) forever:
//! `inc qword [rdi]; jmp`, no VM exit.
//!
//! # Boot paths
//!
//! * **Our VMM** loads the `PT_LOAD` segment at its physical address and enters the BSP at
//!   `e_entry` in 64-bit mode, on the backend's identity map of 4 GiB.
//! * **QEMU** (`-kernel`) finds the PVH note (`Xen`, type 18 `XEN_ELFNOTE_PHYS32_ENTRY`) and
//!   enters the BSP at its 32-bit entry, paging off. That code loads the image's GDT,
//!   builds its own identity map of 4 GiB (2 MiB pages, in the image's bss), enables
//!   PAE, LME and paging and joins the 64-bit path. Without the note QEMU refuses the file
//!   ("Error loading uncompressed kernel without PVH ELF Note").
//! * **APs**: the BSP copies a real-mode trampoline to [`TRAMPOLINE_ADDR`] and, as an OS
//!   does on real hardware, broadcasts (all-excluding-self) one INIT, then SIPI, SIPI
//!   (vector = the trampoline's page number; TSC-timed gaps of well under 1 ms, see
//!   `spinner.S`). Each AP goes real mode -> 32-bit protected mode (the image's GDT) ->
//!   long mode on the BSP's page tables.
//!
//! There is one INIT and no retry: an AP that does not exist when the BSP sends it stays
//! in wait-for-SIPI for good. The BSP sends it first thing, before its own marker, so a VMM
//! that lets the BSP run before every boot vCPU exists loses APs (`vmm/tests/spin_guest.rs`
//! is the regression test for ours). CPUs hot-added later are likewise never started.
//!
//! # Memory map (guest-physical)
//!
//! | address | what |
//! |---|---|
//! | 0x500, 0x7000, 0x8000..0xefff | our VMM's boot GDT, zero page, stack and page tables (left alone) |
//! | [`TRAMPOLINE_ADDR`] (0x6000) | the AP trampoline, copied there at run time |
//! | [`IMAGE_ADDR`] (1 MiB) | code, GDT, PVH note; then bss: serial lock, the APs' CR3, the PVH path's page tables (6 pages) |
//! | [`COUNTERS_ADDR`] (1 MiB + 64 KiB) | [`MAX_APIC_IDS`] counters, one u64 at the start of each [`COUNTER_STRIDE`]-byte line: 16 KiB, nothing else there |
//!
//! # QEMU
//!
//! [`qemu_args`] is a command line that works on this project's hosts, including
//! `kvm_pvm` ones (README, "Hosts whose /dev/kvm is kvm-pvm"), where the guest's
//! markers come about 0.2 s after exec with qboot and 4 s with SeaBIOS (the default BIOS,
//! whose real-mode code that host emulates slowly).

use std::path::Path;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::config::VmConfig;

/// Where the image's only loadable segment starts (the ELF's `p_paddr`): 1 MiB, the
/// lowest address our VMM's loader accepts.
pub const IMAGE_ADDR: u64 = 0x10_0000;
/// Where the BSP copies the APs' real-mode trampoline (SIPI vector 0x06). Free in our VMM
/// (between the backend's GDT and the zero page) and in QEMU.
pub const TRAMPOLINE_ADDR: u64 = 0x6000;
/// Guest-physical address of the counters: APIC ID `n`'s little-endian u64 is at
/// `COUNTERS_ADDR + n * COUNTER_STRIDE`. The region ([`COUNTERS_LEN`] bytes) ends the image
/// and holds nothing else.
pub const COUNTERS_ADDR: u64 = 0x11_0000;
/// Distance between two CPUs' counters: a cache line, so that CPUs spinning on their own
/// counters do not bounce one line between them (`COUNTER_SHIFT` in `spinner.S`).
pub const COUNTER_STRIDE: u64 = 64;
/// Size of the counters region: [`MAX_APIC_IDS`] lines of [`COUNTER_STRIDE`] bytes (16 KiB).
pub const COUNTERS_LEN: u64 = MAX_APIC_IDS as u64 * COUNTER_STRIDE;
/// Number of counters (APIC IDs 0..=255, the xAPIC's range).
pub const MAX_APIC_IDS: usize = 256;
/// What every CPU's serial line starts with; [`marker`] gives the whole line.
pub const MARKER_PREFIX: &str = "SPIN cpu ";
/// QEMU's fastest firmware (Debian's `qemu-system-x86` ships it).
pub const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";

/// Why the spin image is not available.
#[derive(Debug, thiserror::Error)]
pub enum SpinImageError {
    /// The build script could not assemble it; the reason is the build script's.
    #[error(
        "the spin guest image was not built: {0} (vmm-testguest's build script assembles \
         testguest/spinner/spinner.S with gcc and GNU binutils; install them and rebuild)"
    )]
    NotBuilt(&'static str),
}

/// The assembled image (an ELF64 file under the build's `OUT_DIR`).
pub fn path() -> Result<&'static Path, SpinImageError> {
    match option_env!("VMM_SPIN_IMAGE") {
        Some(p) => Ok(Path::new(p)),
        None => Err(SpinImageError::NotBuilt(
            option_env!("VMM_SPIN_IMAGE_ERROR").unwrap_or("the build script did not say why"),
        )),
    }
}

/// The serial line CPU `apic_id` writes once it is up (without the newline).
pub fn marker(apic_id: u32) -> String {
    format!("{MARKER_PREFIX}{apic_id} up")
}

/// The APIC ID announced by a serial line, if it holds a marker (anywhere: firmware may
/// have written to the same line before).
pub fn marker_apic_id(line: &str) -> Option<u32> {
    let rest = &line[line.find(MARKER_PREFIX)? + MARKER_PREFIX.len()..];
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 || !rest[digits..].starts_with(" up") {
        return None;
    }
    rest[..digits].parse().ok()
}

/// The counter of CPU `apic_id`, read from guest memory (0 if out of range).
pub fn counter(mem: &GuestMemoryMmap, apic_id: usize) -> u64 {
    if apic_id >= MAX_APIC_IDS {
        return 0;
    }
    mem.read_obj::<u64>(GuestAddress(
        COUNTERS_ADDR + COUNTER_STRIDE * apic_id as u64,
    ))
    .unwrap_or(0)
}

/// A VM configuration booting the image with `boot` of `max` vCPUs and the minimum RAM;
/// the APs wait for the guest's INIT/SIPI.
pub fn config(boot: usize, max: usize) -> Result<VmConfig, SpinImageError> {
    Ok(crate::kernel_config(path()?, boot, max))
}

/// Arguments for `qemu-system-x86_64` booting `image` with `boot` of `max` CPUs, serial on
/// stdout: KVM, the `pc` machine, qboot, 128 MiB, no default devices. Add `-qmp ...` to
/// drive it.
///
/// `-cpu host,-arch-capabilities`: on `kvm_pvm` hosts plain `-cpu host` (and `max`) aborts
/// at start, KVM refusing QEMU's write of MSR 0x10a (IA32_ARCH_CAPABILITIES); the guest
/// does not care about that MSR, and on hardware KVM the flag only hides it.
pub fn qemu_args(image: &Path, boot: usize, max: usize) -> Vec<String> {
    let mut args: Vec<String> = [
        "-accel",
        "kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-machine",
        "pc",
        "-bios",
        QBOOT_ROM,
        "-m",
        "128M",
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
        "-smp",
    ]
    .map(String::from)
    .into();
    args.push(format!("{boot},maxcpus={max}"));
    args.push("-kernel".into());
    args.push(image.display().to_string());
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::vm::loader::{load_kernel, KernelFormat};

    fn image_path() -> &'static Path {
        path().unwrap_or_else(|e| panic!("{e}"))
    }

    fn image() -> Vec<u8> {
        let p = image_path();
        std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// (p_type, p_offset, p_paddr, p_filesz, p_memsz, p_align) of every program header.
    fn program_headers(elf: &[u8]) -> Vec<(u32, u64, u64, u64, u64, u64)> {
        let (phoff, phentsize, phnum) = (
            u64_at(elf, 0x20) as usize,
            u16_at(elf, 0x36) as usize,
            u16_at(elf, 0x38) as usize,
        );
        (0..phnum)
            .map(|i| {
                let h = phoff + i * phentsize;
                (
                    u32_at(elf, h),
                    u64_at(elf, h + 8),
                    u64_at(elf, h + 24),
                    u64_at(elf, h + 32),
                    u64_at(elf, h + 40),
                    u64_at(elf, h + 48),
                )
            })
            .collect()
    }

    #[test]
    fn the_image_is_small_and_laid_out_as_documented() {
        let elf = image();
        assert!(elf.len() < 8192, "{} bytes", elf.len());
        assert_eq!(&elf[..5], b"\x7fELF\x02", "ELF64");
        assert_eq!(u16_at(&elf, 0x12), 0x3e, "EM_X86_64");
        let phdrs = program_headers(&elf);
        let loads: Vec<_> = phdrs.iter().filter(|p| p.0 == 1).collect();
        assert_eq!(loads.len(), 1, "{phdrs:x?}");
        let (_, _, paddr, filesz, memsz, _) = *loads[0];
        assert_eq!(paddr, IMAGE_ADDR);
        assert!(filesz < 4096);
        // The counters are the segment's last bytes.
        assert_eq!(paddr + memsz, COUNTERS_ADDR + COUNTERS_LEN);
        let entry = u64_at(&elf, 0x18);
        assert!((IMAGE_ADDR..IMAGE_ADDR + filesz).contains(&entry));
    }

    #[test]
    fn the_pvh_note_is_where_qemu_reads_it() {
        let elf = image();
        let phdrs = program_headers(&elf);
        let notes: Vec<_> = phdrs.iter().filter(|p| p.0 == 4).collect();
        assert_eq!(notes.len(), 1, "{phdrs:x?}");
        let (_, off, _, filesz, _, align) = *notes[0];
        // QEMU skips the name aligned to p_align: 4 keeps the descriptor at +16.
        assert_eq!(align, 4);
        let n = &elf[off as usize..(off + filesz) as usize];
        assert_eq!((u32_at(n, 0), u32_at(n, 4), u32_at(n, 8)), (4, 8, 18));
        assert_eq!(&n[12..16], b"Xen\0");
        // QEMU reads 8 bytes from an ELF64 file: the high half must be 0.
        let pvh = u64_at(n, 16);
        assert!(pvh > IMAGE_ADDR && pvh < IMAGE_ADDR + 4096, "{pvh:#x}");
        assert_ne!(
            pvh,
            u64_at(&elf, 0x18),
            "PVH entry is the 32-bit one, not e_entry"
        );
    }

    #[test]
    fn our_loader_takes_it_at_its_address() {
        let mem = vmm::vm::memory::create_guest_memory(vmm::vm::layout::MIN_MEMORY).unwrap();
        let k = load_kernel(&mem, image_path()).unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
        assert!(k.entry.0 >= IMAGE_ADDR);
        assert_eq!(k.end, COUNTERS_ADDR + COUNTERS_LEN);
        let mut first = [0u8; 1];
        mem.read_slice(&mut first, k.entry).unwrap();
        assert_eq!(first[0], 0xfa, "entry64 starts with cli");
        assert_eq!(counter(&mem, 3), 0);
        assert_eq!(counter(&mem, MAX_APIC_IDS), 0);
        // One line per counter: CPU 3's is 3 lines in, CPU 2's line untouched by it.
        mem.write_obj(
            0x0123_4567_89ab_cdefu64,
            GuestAddress(COUNTERS_ADDR + 3 * 64),
        )
        .unwrap();
        assert_eq!(counter(&mem, 3), 0x0123_4567_89ab_cdef);
        assert_eq!((counter(&mem, 2), counter(&mem, 4)), (0, 0));
    }

    #[test]
    fn markers_parse() {
        assert_eq!(marker(3), "SPIN cpu 3 up");
        assert_eq!(marker_apic_id("SPIN cpu 0 up"), Some(0));
        assert_eq!(marker_apic_id("Booting from ROM..SPIN cpu 17 up"), Some(17));
        for bad in [
            "SPIN cpu  up",
            "SPIN cpu 1",
            "SPIN cpu x up",
            "cpu 1 up",
            "",
        ] {
            assert_eq!(marker_apic_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn qemu_args_name_the_image_and_cpus() {
        let a = qemu_args(Path::new("/x/spinner.elf"), 2, 4);
        let after = |flag: &str| a[a.iter().position(|s| s == flag).unwrap() + 1].clone();
        assert_eq!(after("-kernel"), "/x/spinner.elf");
        assert_eq!(after("-smp"), "2,maxcpus=4");
        assert_eq!(after("-bios"), QBOOT_ROM);
    }
}
