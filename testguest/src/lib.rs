//! A synthetic guest for tests and benchmarks: a tiny ELF64 "kernel" whose hand-assembled
//! 64-bit code mimics Linux enumerating CPUs through the ACPI CPU-hotplug controller
//! (`CSCN` in the DSDT), forever. It is *not* Linux and needs no firmware; it exists so the
//! pause/hotplug paths can be hammered on real KVM with a guest we fully control (the
//! Debian kernel does not boot on every host, e.g. kvm-pvm).
//!
//! What the code does on every vCPU that runs it (the BSP always; the APs only when the
//! backend is told to start them like the BSP, see
//! `kvm_backend::KvmBackend::set_all_vcpus_boot`):
//!
//! ```text
//! rdi = &counters[APIC ID]                (CPUID leaf 1, EBX[31:24])
//! loop {
//!     for i in 0..scan_cpus {
//!         select(i)                       mov dword [BASE], i        (MMIO write)
//!         status = [BASE+4]               mov al, byte [BASE+4]      (MMIO read)
//!         if ack_inserting && status & 2: mov byte [BASE+4], 2       (clear inserting)
//!         if eject && status & 4:         mov byte [BASE+4], 0x0c    (clear removing, eject)
//!     }
//!     counters[APIC ID] += 1
//!     if serial_every != 0 && counter % serial_every == 0: out 0x3f8, '.'
//! }
//! ```
//!
//! With `scan_cpus = 0` it is a plain spinning guest that only counts (no exits except
//! the serial byte). The code never touches the stack, so all vCPUs can share one.
//!
//! Every function returns a typed [`GuestError`] instead of panicking.
//!
//! The VMM's loader (`vmm::vm::loader::load_kernel`) loads it like an ELF vmlinux: one `PT_LOAD`
//! segment at [`CODE_ADDR`], entered at its first byte in 64-bit mode with the backend's
//! identity map of the first 4 GiB, so the code reaches the hotplug window directly.
//!
//! A second guest, [`spin_image`], boots in QEMU too and starts its APs itself (for
//! comparing the two VMMs on one guest); it is assembled from `spinner/spinner.S` by the
//! build script.

#![deny(missing_docs)]

pub mod spin_image;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::config::VmConfig;
use vmm::vm::layout::{COM1_PORT, HOTPLUG_MMIO_BASE, MIN_MEMORY};

/// Why the synthetic guest could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// [`GuestSpec::serial_every`] is not 0 or a power of two up to 2^31.
    #[error("serial_every must be 0 or a power of two up to 2^31, got {0}")]
    SerialEvery(u64),
    /// The code grew so that a short jump no longer reaches its target (a bug of the
    /// emitter's user: the spec made the loop body too long).
    #[error("jump at code offset {at} cannot reach its target with a rel8 displacement")]
    JumpOutOfRange {
        /// Offset of the displacement byte.
        at: usize,
    },
    /// A jump targets a label that was never bound (an emitter bug).
    #[error("jump at code offset {at} targets an unbound label")]
    UnboundLabel {
        /// Offset of the displacement byte.
        at: usize,
    },
    /// Writing the ELF file failed.
    #[error("cannot write the synthetic guest to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Guest-physical address of the code (the ELF's only segment and its entry point). Above
/// 1 MiB as the loader requires, clear of the backend's boot structures.
pub const CODE_ADDR: u64 = 0x20_0000;
/// Guest-physical address of the progress counters: one little-endian u64 per APIC ID
/// (= vCPU index), in its own 2 MiB page away from the code.
pub const COUNTERS_ADDR: u64 = 0x40_0000;
/// The byte written to the serial port every [`GuestSpec::serial_every`] rounds.
pub const SERIAL_BYTE: u8 = b'.';

/// What the synthetic guest does. [`GuestSpec::default`] is the storm guest: scan 4 CPUs
/// through the controller at [`HOTPLUG_MMIO_BASE`], acknowledge insertions, honour
/// removals by ejecting, and write a serial byte every 1024 rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestSpec {
    /// Base of the CPU-hotplug controller's MMIO window.
    pub hotplug_base: u64,
    /// How many CPU indices each round selects and reads (0: no MMIO at all).
    pub scan_cpus: u32,
    /// Write 2 to the status register when a CPU reports "inserting" (like `CSCN`).
    pub ack_inserting: bool,
    /// Write 0x0c (clear removing + eject) when a CPU reports "removing", like `CSCN`
    /// followed by Linux offlining the CPU and calling `_EJ0`.
    pub eject: bool,
    /// Write [`SERIAL_BYTE`] to COM1 every this many rounds; 0 = never. Must be a power of
    /// two no larger than 2^31.
    pub serial_every: u64,
    /// Count one round, then halt for good (`cli; hlt`): a vCPU that sits in KVM's halt,
    /// for measuring what pause costs on an idle vCPU. The other fields are then unused.
    pub halt: bool,
}

impl Default for GuestSpec {
    fn default() -> Self {
        GuestSpec {
            hotplug_base: HOTPLUG_MMIO_BASE,
            scan_cpus: 4,
            ack_inserting: true,
            eject: true,
            serial_every: 1024,
            halt: false,
        }
    }
}

impl GuestSpec {
    /// A guest that only spins and counts (no device exits at all).
    pub fn spinner() -> Self {
        GuestSpec {
            scan_cpus: 0,
            ack_inserting: false,
            eject: false,
            serial_every: 0,
            ..Self::default()
        }
    }

    /// A guest whose vCPUs halt at once, with interrupts off (see [`GuestSpec::halt`]).
    pub fn halter() -> Self {
        GuestSpec {
            halt: true,
            ..Self::spinner()
        }
    }
}

/// A minimal x86-64 emitter with forward/backward `rel8` jumps.
struct Asm {
    code: Vec<u8>,
    labels: Vec<Option<usize>>,
    /// (offset of a rel8 byte, label it targets)
    fixups: Vec<(usize, usize)>,
}

impl Asm {
    fn new() -> Self {
        Asm {
            code: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        self.code.extend_from_slice(b);
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, l: usize) {
        self.labels[l] = Some(self.code.len());
    }
    /// A short jump: `opcode rel8` to label `l`.
    fn jump(&mut self, opcode: u8, l: usize) {
        self.code.push(opcode);
        self.fixups.push((self.code.len(), l));
        self.code.push(0);
    }
    fn finish(mut self) -> Result<Vec<u8>, GuestError> {
        for &(at, l) in &self.fixups {
            let target = self
                .labels
                .get(l)
                .copied()
                .flatten()
                .ok_or(GuestError::UnboundLabel { at })?;
            let rel = target as i64 - (at as i64 + 1);
            let rel = i8::try_from(rel).map_err(|_| GuestError::JumpOutOfRange { at })?;
            self.code[at] = rel as u8;
        }
        Ok(self.code)
    }
}

/// The guest's machine code (position independent; loaded at [`CODE_ADDR`]).
pub fn code(spec: &GuestSpec) -> Result<Vec<u8>, GuestError> {
    if !(spec.serial_every == 0
        || (spec.serial_every.is_power_of_two() && spec.serial_every <= 1 << 31))
    {
        return Err(GuestError::SerialEvery(spec.serial_every));
    }
    let mut a = Asm::new();
    // Prologue: rdi = &counters[APIC ID], rsi = hotplug base, dx = COM1.
    a.bytes(&[0xb8, 1, 0, 0, 0]); // b8 01 00 00 00     mov eax, 1
    a.bytes(&[0x0f, 0xa2]); //       0f a2              cpuid   (EBX[31:24] = APIC ID)
    a.bytes(&[0xc1, 0xeb, 24]); //   c1 eb 18           shr ebx, 24  (zero-extends rbx)
    a.bytes(&[0x48, 0xbf]); //       48 bf imm64        mov rdi, COUNTERS_ADDR
    a.bytes(&COUNTERS_ADDR.to_le_bytes());
    a.bytes(&[0x48, 0x8d, 0x3c, 0xdf]); // 48 8d 3c df  lea rdi, [rdi + rbx*8]
    a.bytes(&[0x48, 0xbe]); //       48 be imm64        mov rsi, hotplug_base
    a.bytes(&spec.hotplug_base.to_le_bytes());
    a.bytes(&[0x66, 0xba]); //       66 ba imm16        mov dx, COM1_PORT
    a.bytes(&COM1_PORT.to_le_bytes());

    if spec.halt {
        let halted = a.label();
        a.bytes(&[0x48, 0xff, 0x07]); // 48 ff 07       inc qword [rdi]       (progress)
        a.bytes(&[0xfa]); //             fa             cli
        a.bind(halted);
        a.bytes(&[0xf4]); //             f4             hlt
        a.jump(0xeb, halted); //         eb rel8        jmp halted
        return a.finish();
    }

    let outer = a.label();
    let scan = a.label();
    let round_done = a.label();
    a.bind(outer);
    a.bytes(&[0x31, 0xc9]); //       31 c9              xor ecx, ecx   (i = 0)
    a.bind(scan);
    a.bytes(&[0x81, 0xf9]); //       81 f9 imm32        cmp ecx, scan_cpus
    a.bytes(&spec.scan_cpus.to_le_bytes());
    a.jump(0x73, round_done); //     73 rel8            jae round_done
    a.bytes(&[0x89, 0x0e]); //       89 0e              mov [rsi], ecx        (select i)
    a.bytes(&[0x8a, 0x46, 0x04]); // 8a 46 04           mov al, [rsi+4]       (status)
    if spec.ack_inserting {
        let no_insert = a.label();
        a.bytes(&[0xa8, 0x02]); //   a8 02              test al, 2            (inserting?)
        a.jump(0x74, no_insert); //  74 rel8            jz no_insert
        a.bytes(&[0xc6, 0x46, 0x04, 0x02]); // c6 46 04 02  mov byte [rsi+4], 2  (clear)
        a.bind(no_insert);
    }
    if spec.eject {
        let no_remove = a.label();
        a.bytes(&[0xa8, 0x04]); //   a8 04              test al, 4            (removing?)
        a.jump(0x74, no_remove); //  74 rel8            jz no_remove
        a.bytes(&[0xc6, 0x46, 0x04, 0x0c]); // c6 46 04 0c  mov byte [rsi+4], 0x0c (eject)
        a.bind(no_remove);
    }
    a.bytes(&[0xff, 0xc1]); //       ff c1              inc ecx
    a.jump(0xeb, scan); //           eb rel8            jmp scan
    a.bind(round_done);
    a.bytes(&[0x48, 0xff, 0x07]); // 48 ff 07           inc qword [rdi]       (progress)
    if spec.serial_every != 0 {
        let mask = (spec.serial_every - 1) as u32;
        a.bytes(&[0x48, 0xf7, 0x07]); // 48 f7 07 imm32 test qword [rdi], serial_every-1
        a.bytes(&mask.to_le_bytes());
        a.jump(0x75, outer); //      75 rel8            jnz outer
        a.bytes(&[0xb0, SERIAL_BYTE]); // b0 2e         mov al, '.'
        a.bytes(&[0xee]); //         ee                 out dx, al
    }
    a.jump(0xeb, outer); //          eb rel8            jmp outer
    a.finish()
}

/// Offset of the code in the ELF file (page aligned, like a linker would place it).
const CODE_FILE_OFFSET: u64 = 0x1000;

/// The guest as an ELF64 executable: header, one `PT_LOAD` program header, the code.
pub fn elf(spec: &GuestSpec) -> Result<Vec<u8>, GuestError> {
    let code = code(spec)?;
    let mut f = Vec::with_capacity(CODE_FILE_OFFSET as usize + code.len());
    // Elf64_Ehdr (64 bytes).
    f.extend_from_slice(b"\x7fELF"); // e_ident: magic
    f.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, ELFDATA2LSB, EV_CURRENT, SYSV ABI
    f.extend_from_slice(&[0; 8]); // e_ident padding
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type = ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine = EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&CODE_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff: right after this header
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                              // Elf64_Phdr (56 bytes).
    f.extend_from_slice(&1u32.to_le_bytes()); // p_type = PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // p_flags = R | X
    f.extend_from_slice(&CODE_FILE_OFFSET.to_le_bytes()); // p_offset
    f.extend_from_slice(&CODE_ADDR.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&CODE_ADDR.to_le_bytes()); // p_paddr (where the loader puts it)
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    f.resize(CODE_FILE_OFFSET as usize, 0);
    f.extend_from_slice(&code);
    Ok(f)
}

/// The guest written to a temporary file (a path to pass as `--kernel`), removed on drop.
#[derive(Debug)]
pub struct GuestFile {
    path: PathBuf,
}

impl GuestFile {
    /// Writes [`elf`]`(spec)` to a fresh file under the system temp directory.
    pub fn create(spec: &GuestSpec) -> Result<GuestFile, GuestError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "vmm-testguest-{}-{}.elf",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::write(&path, elf(spec)?) {
            Ok(()) => Ok(GuestFile { path }),
            Err(source) => Err(GuestError::Write { path, source }),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A VM configuration booting this guest with `boot` of `max` vCPUs and the minimum
    /// RAM. The APs wait for INIT/SIPI as on a real machine (set
    /// [`VmConfig::aps_at_entry`] to make them all run the guest code).
    pub fn config(&self, boot: usize, max: usize) -> VmConfig {
        kernel_config(&self.path, boot, max)
    }
}

/// A VM booting `kernel` alone (no initramfs, no command line) with `boot` of `max` vCPUs
/// and the minimum RAM; the APs wait for INIT/SIPI. Both test guests boot this way.
fn kernel_config(kernel: &Path, boot: usize, max: usize) -> VmConfig {
    VmConfig {
        kernel: kernel.to_path_buf(),
        initramfs: None,
        cmdline: None,
        boot_vcpus: boot,
        max_vcpus: max,
        memory_size: MIN_MEMORY,
        api_socket: None,
        serial: Default::default(),
        aps_at_entry: false,
        seccomp: Default::default(),
    }
}

impl Drop for GuestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The progress counter of vCPU `index` (rounds completed), read from guest memory.
pub fn progress(mem: &GuestMemoryMmap, index: usize) -> u64 {
    mem.read_obj::<u64>(GuestAddress(COUNTERS_ADDR + 8 * index as u64))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::vm::loader::{load_kernel, KernelFormat};

    #[test]
    fn elf_loads_at_its_address_with_the_code() {
        let spec = GuestSpec::default();
        let file = GuestFile::create(&spec).unwrap();
        let mem = vmm::vm::memory::create_guest_memory(128 << 20).unwrap();
        let k = load_kernel(&mem, file.path()).unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
        assert_eq!(k.entry, GuestAddress(CODE_ADDR));
        let code = code(&spec).unwrap();
        assert_eq!(k.end, CODE_ADDR + code.len() as u64);
        let mut loaded = vec![0u8; code.len()];
        mem.read_slice(&mut loaded, GuestAddress(CODE_ADDR))
            .unwrap();
        assert_eq!(loaded, code);
        assert!(k.end < COUNTERS_ADDR);
        assert_eq!(progress(&mem, 3), 0);
    }

    #[test]
    fn code_shapes() {
        // The spinner has no MMIO/PIO instructions beyond the (unreachable) scan body.
        let spin = code(&GuestSpec::spinner()).unwrap();
        assert!(
            !spin.contains(&0xee),
            "spinner must not write the serial port"
        );
        let storm = code(&GuestSpec::default()).unwrap();
        assert!(storm.len() > spin.len());
        // Both end with a backward short jump to the round's start.
        assert_eq!(storm[storm.len() - 2], 0xeb);
        assert!((storm[storm.len() - 1] as i8) < 0);
        // The prologue starts with `mov eax, 1; cpuid`.
        assert_eq!(&storm[..7], &[0xb8, 1, 0, 0, 0, 0x0f, 0xa2]);
    }

    #[test]
    fn the_halter_counts_once_then_halts_with_interrupts_off() {
        let halter = code(&GuestSpec::halter()).unwrap();
        // inc qword [rdi]; cli; hlt; jmp back to the hlt (rel8 -3)
        assert!(
            halter.ends_with(&[0x48, 0xff, 0x07, 0xfa, 0xf4, 0xeb, 0xfd]),
            "{halter:x?}"
        );
        assert!(code(&GuestSpec::spinner()).unwrap() != halter);
    }

    #[test]
    fn serial_every_must_be_a_power_of_two() {
        for bad in [3, 6, 1 << 32] {
            let spec = GuestSpec {
                serial_every: bad,
                ..GuestSpec::default()
            };
            assert!(matches!(code(&spec), Err(GuestError::SerialEvery(v)) if v == bad));
            assert!(matches!(
                GuestFile::create(&spec),
                Err(GuestError::SerialEvery(_))
            ));
        }
        for good in [0, 1, 1024, 1 << 31] {
            let spec = GuestSpec {
                serial_every: good,
                ..GuestSpec::default()
            };
            assert!(code(&spec).is_ok(), "serial_every {good}");
        }
    }

    #[test]
    fn a_jump_that_cannot_reach_is_an_error() {
        let mut a = Asm::new();
        let l = a.label();
        a.jump(0xeb, l);
        a.bytes(&[0x90; 200]);
        a.bind(l);
        assert!(matches!(
            a.finish(),
            Err(GuestError::JumpOutOfRange { at: 1 })
        ));
        let mut a = Asm::new();
        let l = a.label();
        a.jump(0xeb, l);
        assert!(matches!(
            a.finish(),
            Err(GuestError::UnboundLabel { at: 1 })
        ));
    }
}
