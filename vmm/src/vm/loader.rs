//! Kernel, initramfs and command-line loading plus the Linux x86 boot protocol's zero page
//! (`boot_params`). Uses linux-loader for the image formats; the zero page is filled here
//! because its contents (e820, RSDP, initrd) follow from this VMM's layout.

use crate::vm::layout::{CMDLINE, CMDLINE_MAX, HIMEM_START, ZERO_PAGE};
use crate::vm::memory::{e820_map, low_ram_end, ram_size, E820Entry};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

/// Linux/x86 boot protocol constants (Documentation/arch/x86/boot.rst).
const BOOT_FLAG: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Offset of the 64-bit entry point (startup_64) from the protected-mode kernel's start.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Classic initrd_addr_max when the header does not say (ELF vmlinux boots).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
const PAGE_SIZE: u64 = 4096;
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

/// The default kernel command line; the user's `--cmdline` is appended.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd pci=off";

/// Added after [`DEFAULT_CMDLINE`] (before the user's part, which can override it) when
/// `/dev/kvm` is `kvm-pvm` ([`kvm_backend::host::is_kvm_pvm`]), where the guest kernel's
/// ring-0 code runs through KVM's instruction emulator, slowly and without some
/// instructions:
/// * `clearcpuid=`/`noxsave`: the guest may see the host's CPUID directly (not the VMM's
///   masked one), so Linux itself is told to drop the features whose instructions the
///   emulator lacks in kernel code: `cmpxchg16b`, `popcnt`, `xsave*`/`xrstor*` (and with
///   XSAVE every AVX/AVX-512/PKU feature), `rd/wr{fs,gs}base`, `stac`/`clac`, `rdrand`,
///   `rdseed`, `invpcid`, `rdpid`, and the SSSE3/SSE4/AES/PCLMUL/SHA/GFNI instructions
///   built-in crypto (blake2s for the RNG) would run inside `kernel_fpu_begin()`;
/// * `mitigations=off`, `init_on_alloc=0`, `tsc=reliable`, `no_timer_check`,
///   `cryptomgr.notests`, `initcall_blacklist=`, `rodata=off` and `nowatchdog` skip work
///   that costs seconds to minutes when emulated (speculation thunks on every indirect
///   call, zeroing every allocation, clocksource watchdog and timer checks, crypto
///   self-tests, building tracefs and the trace-event enum maps, the W+X page-table walk
///   after write-protecting the kernel) and that a test guest does not need; the soft-lockup
///   watchdog would only report the emulator's slowness.
///
/// Even so, an unmodified (non-PVM-aware) kernel cannot run user space there: the first
/// `syscall` from user mode enters the kernel through the PVM ABI, which runs the kernel
/// natively at an address only a PVM guest kernel may use, and init dies with SIGSEGV at
/// `entry_SYSCALL_64`.
///
/// None of this is needed, or added, on hardware-assisted KVM.
pub const KVM_PVM_CMDLINE: &str = "clearcpuid=cx16,popcnt,xsave,fsgsbase,smep,smap,pku,\
rdrand,rdseed,pcid,invpcid,rdpid,ssse3,sse4_1,sse4_2,aes,pclmulqdq,sha_ni,gfni noxsave \
mitigations=off init_on_alloc=0 tsc=reliable no_timer_check cryptomgr.notests \
initcall_blacklist=trace_eval_init,tracer_init_tracefs,init_kprobe_trace,crypto_kdf108_init \
rodata=off nowatchdog";

/// Why a kernel, initramfs or command line could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel file does not exist.
    #[error("kernel file {} not found", .0.display())]
    KernelNotFound(PathBuf),
    /// The initramfs file does not exist.
    #[error("initramfs file {} not found", .0.display())]
    InitramfsNotFound(PathBuf),
    /// The initramfs path exists but is no regular file (a directory, a device).
    #[error("initramfs {} is not a regular file", .0.display())]
    InitramfsNotAFile(PathBuf),
    /// A file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Neither a bzImage nor an ELF file.
    #[error("{} is not a Linux kernel image (expected a bzImage or an ELF vmlinux)", .0.display())]
    NotAKernel(PathBuf),
    /// The image's headers do not fit the file or the guest ([`crate::vm::image_check`]).
    #[error(transparent)]
    Image(#[from] crate::vm::image_check::ImageError),
    /// linux-loader rejected the image.
    #[error("cannot load kernel {}: {source}", path.display())]
    Load {
        /// The file.
        path: PathBuf,
        /// linux-loader's error.
        #[source]
        source: loader::Error,
    },
    /// The initramfs does not fit between the kernel and the top of usable RAM.
    #[error("initramfs {} ({size} bytes) does not fit in guest memory above the kernel", path.display())]
    InitramfsTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The bzImage's XZ payload could not be unpacked.
    #[error("cannot unpack the compressed kernel inside {}: {reason}", path.display())]
    Unpack {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The image claims to occupy or start outside guest RAM.
    #[error("kernel {} does not fit in guest memory (entry {entry:#x}, ends at {end:#x}, RAM ends at {ram_end:#x})", path.display())]
    OutsideRam {
        /// The file.
        path: PathBuf,
        /// The entry point it asked for.
        entry: u64,
        /// The end of its loaded segments.
        end: u64,
        /// First byte past guest RAM.
        ram_end: u64,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// Writing into guest memory failed (an address outside RAM).
    #[error("cannot write {what} into guest memory: {source}")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// vm-memory's error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Kernel image formats we boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage (boot protocol setup header with "HdrS").
    BzImage,
    /// An uncompressed ELF vmlinux.
    Elf,
}

/// Looks at a kernel file's magic numbers without loading it, so a wrong file is reported
/// before any VM resources are created.
pub fn probe_kernel(path: &Path) -> Result<KernelFormat, LoaderError> {
    let mut file = open(path, LoaderError::KernelNotFound)?;
    let io = |source| LoaderError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; 4];
    let n = read_up_to(&mut file, &mut head).map_err(io)?;
    if n == 4 && head == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    let mut magic = [0u8; 4];
    file.seek(SeekFrom::Start(0x202)).map_err(io)?;
    let n = read_up_to(&mut file, &mut magic).map_err(io)?;
    if n == 4 && u32::from_le_bytes(magic) == HDRS_MAGIC {
        return Ok(KernelFormat::BzImage);
    }
    Err(LoaderError::NotAKernel(path.to_path_buf()))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn open(path: &Path, not_found: fn(PathBuf) -> LoaderError) -> Result<File, LoaderError> {
    File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            not_found(path.to_path_buf())
        } else {
            LoaderError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// A kernel in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The image format.
    pub format: KernelFormat,
    /// 64-bit entry point.
    pub entry: GuestAddress,
    /// First byte past the loaded image.
    pub end: u64,
    /// The bzImage setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// XZ stream magic.
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
/// Setup-header offsets of the compressed payload's offset and length (protocol 2.08+).
const HDR_PAYLOAD_OFFSET: usize = 0x248;
const HDR_PAYLOAD_LENGTH: usize = 0x24c;
const SETUP_HEADER_START: usize = 0x1f1;

/// The embedded vmlinux of a bzImage whose payload is XZ (Debian's are), unpacked on the
/// host. `None` for other payload formats. Booting it directly skips the in-guest
/// decompressor, which matters where guest kernel code is slow (software-emulated
/// virtualization such as PVM runs the decompressor for many minutes); on hardware KVM
/// it is merely faster.
pub fn unpack_bzimage(image: &[u8], limit: usize) -> Result<Option<Vec<u8>>, String> {
    let u32_at = |off: usize| -> Option<usize> {
        let b = image.get(off..off + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let setup_sects = match image.get(SETUP_HEADER_START) {
        Some(0) => 4,
        Some(&n) => usize::from(n),
        None => return Ok(None),
    };
    let (Some(off), Some(len)) = (u32_at(HDR_PAYLOAD_OFFSET), u32_at(HDR_PAYLOAD_LENGTH)) else {
        return Ok(None);
    };
    let start = (setup_sects + 1) * 512 + off;
    let Some(payload) = image.get(start..start.saturating_add(len)) else {
        return Ok(None);
    };
    if !payload.starts_with(&XZ_MAGIC) || payload.len() < 4 {
        return Ok(None);
    }
    // The kernel's build appends the uncompressed size (le32) to the payload.
    let tail = &payload[payload.len() - 4..];
    let hint = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as usize;
    let mut out = Vec::with_capacity(hint.min(limit));
    let mut stream = xz2::stream::Stream::new_stream_decoder(u64::MAX, 0)
        .map_err(|e| format!("cannot start the XZ decoder: {e}"))?;
    let mut input = payload;
    loop {
        if out.len() == out.capacity() {
            if out.len() >= limit {
                return Err(format!("the kernel unpacks to more than {limit} bytes"));
            }
            out.reserve((16 << 20).min(limit - out.len()));
        }
        let (in_before, out_before) = (stream.total_in(), out.len());
        let action = if input.is_empty() {
            xz2::stream::Action::Finish
        } else {
            xz2::stream::Action::Run
        };
        let status = stream
            .process_vec(input, &mut out, action)
            .map_err(|e| format!("corrupt XZ data: {e}"))?;
        let consumed = (stream.total_in() - in_before) as usize;
        input = &input[consumed..];
        if status == xz2::stream::Status::StreamEnd {
            return Ok(Some(out));
        }
        if consumed == 0 && out.len() == out_before && out.len() < out.capacity() {
            return Err("the XZ data ends early".into());
        }
    }
}

/// Loads the kernel at `path` into `mem`: an XZ bzImage as its unpacked vmlinux, another
/// bzImage at 1 MiB (entered at its 64-bit entry), an ELF at its physical addresses.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let kernel = load_kernel_unchecked(mem, path)?;
    // linux-loader writes only file-backed bytes; an ELF whose segment sizes or entry point
    // lie outside RAM would otherwise "load" and send the initramfs or the vCPU astray.
    let ram_end = low_ram_end(mem);
    if kernel.end > ram_end || kernel.entry.raw_value() >= ram_end {
        return Err(LoaderError::OutsideRam {
            path: path.to_path_buf(),
            entry: kernel.entry.raw_value(),
            end: kernel.end,
            ram_end,
        });
    }
    Ok(kernel)
}

fn load_kernel_unchecked(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let format = probe_kernel(path)?;
    crate::vm::image_check::check_kernel(path, format, crate::vm::memory::ram_size(mem))?;
    let mut file = open(path, LoaderError::KernelNotFound)?;
    let himem = GuestAddress(HIMEM_START);
    let load_err = |source| LoaderError::Load {
        path: path.to_path_buf(),
        source,
    };
    match format {
        KernelFormat::BzImage => {
            let io = |source| LoaderError::Io {
                path: path.to_path_buf(),
                source,
            };
            let mut image = Vec::new();
            file.read_to_end(&mut image).map_err(io)?;
            let limit = low_ram_end(mem) as usize;
            let started = std::time::Instant::now();
            let unpacked = unpack_bzimage(&image, limit).map_err(|reason| LoaderError::Unpack {
                path: path.to_path_buf(),
                reason,
            })?;
            if let Some(vmlinux) = unpacked {
                log::info!(
                    "unpacked the bzImage's XZ payload ({} bytes) in {:?}; booting its vmlinux directly",
                    vmlinux.len(),
                    started.elapsed()
                );
                let r = Elf::load(
                    mem,
                    None,
                    &mut std::io::Cursor::new(&vmlinux[..]),
                    Some(himem),
                )
                .map_err(load_err)?;
                let mut hdr = setup_header::default();
                let raw = image
                    .get(SETUP_HEADER_START..SETUP_HEADER_START + hdr.as_slice().len())
                    .ok_or_else(|| LoaderError::NotAKernel(path.to_path_buf()))?;
                hdr.as_mut_slice().copy_from_slice(raw);
                return Ok(LoadedKernel {
                    format,
                    entry: r.kernel_load,
                    end: r.kernel_end,
                    setup_header: Some(hdr),
                });
            }
            file.rewind().map_err(io)?;
            let r = BzImage::load(mem, Some(himem), &mut file, Some(himem)).map_err(load_err)?;
            Ok(LoadedKernel {
                format,
                entry: r
                    .kernel_load
                    .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
                    .ok_or(LoaderError::NotAKernel(path.to_path_buf()))?,
                end: r.kernel_end,
                setup_header: r.setup_header,
            })
        }
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, Some(himem)).map_err(load_err)?;
            Ok(LoadedKernel {
                format,
                entry: r.kernel_load,
                end: r.kernel_end,
                setup_header: None,
            })
        }
    }
}

/// An initramfs in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitramfs {
    /// Guest-physical start (page aligned).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Places the initramfs page-aligned as high as the kernel allows (`initrd_addr_max`) and
/// RAM ends, above the kernel image.
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<LoadedInitramfs, LoaderError> {
    let mut file = open(path, LoaderError::InitramfsNotFound)?;
    let io = |source| LoaderError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(io)?.len();
    let addr_max = kernel
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let top = low_ram_end(mem).min(addr_max + 1);
    let too_large = || LoaderError::InitramfsTooLarge {
        path: path.to_path_buf(),
        size,
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if size == 0 || addr < kernel.end.max(HIMEM_START) {
        return Err(too_large());
    }
    let len = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|source| LoaderError::GuestMemory {
            what: "the initramfs",
            source,
        })?;
    Ok(LoadedInitramfs { addr, size })
}

/// Builds the full command line: the default one, [`KVM_PVM_CMDLINE`] on a `kvm-pvm`
/// host, then the user's.
pub fn build_cmdline(extra: Option<&str>) -> Result<Cmdline, LoaderError> {
    build_cmdline_for(extra, kvm_backend::host::is_kvm_pvm())
}

/// [`build_cmdline`] with the host kind given.
pub fn build_cmdline_for(extra: Option<&str>, kvm_pvm: bool) -> Result<Cmdline, LoaderError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(LoaderError::Cmdline)?;
    cmdline
        .insert_str(DEFAULT_CMDLINE)
        .map_err(LoaderError::Cmdline)?;
    if kvm_pvm {
        cmdline
            .insert_str(KVM_PVM_CMDLINE)
            .map_err(LoaderError::Cmdline)?;
    }
    if let Some(extra) = extra.map(str::trim).filter(|s| !s.is_empty()) {
        cmdline.insert_str(extra).map_err(LoaderError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Writes the command line at `layout::CMDLINE`; returns its length without NUL.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<u32, LoaderError> {
    loader::load_cmdline(mem, GuestAddress(CMDLINE), cmdline).map_err(|e| match e {
        loader::Error::InvalidCommandLine => {
            LoaderError::Cmdline(linux_loader::cmdline::Error::InvalidAscii)
        }
        _ => LoaderError::Cmdline(linux_loader::cmdline::Error::TooLarge),
    })?;
    let text = cmdline
        .as_cstring()
        .map_err(LoaderError::Cmdline)?
        .into_bytes();
    Ok(text.len() as u32)
}

/// Builds the zero page for `kernel` and writes it at `layout::ZERO_PAGE`.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    initramfs: Option<LoadedInitramfs>,
    cmdline_len: u32,
    rsdp: GuestAddress,
) -> Result<GuestAddress, LoaderError> {
    let params = boot_params_for(
        kernel,
        initramfs,
        cmdline_len,
        rsdp,
        &e820_map(ram_size(mem)),
    );
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(|source| LoaderError::GuestMemory {
            what: "boot_params",
            source,
        })?;
    Ok(GuestAddress(ZERO_PAGE))
}

/// The zero page's contents (pure, for tests).
pub fn boot_params_for(
    kernel: &LoadedKernel,
    initramfs: Option<LoadedInitramfs>,
    cmdline_len: u32,
    rsdp: GuestAddress,
    e820: &[E820Entry],
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        // An ELF kernel has no header of its own; the kernel still checks these fields.
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len;
    if let Some(initrd) = initramfs {
        // Both fit in 32 bits: RAM ends below 3 GiB.
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = rsdp.raw_value();
    let n = e820.len().min(E820_MAX_ENTRIES_ZEROPAGE);
    for (slot, e) in params.e820_table.iter_mut().zip(&e820[..n]) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = n as u8;
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vmm-loader-{}-{name}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        path
    }

    #[test]
    fn probe_rejects_garbage_and_missing() {
        let p = temp_file("garbage", &[0x5a; 8192]);
        assert!(matches!(probe_kernel(&p), Err(LoaderError::NotAKernel(_))));
        let short = temp_file("short", b"abc");
        assert!(matches!(
            probe_kernel(&short),
            Err(LoaderError::NotAKernel(_))
        ));
        assert!(matches!(
            probe_kernel(Path::new("/nonexistent/kernel")),
            Err(LoaderError::KernelNotFound(_))
        ));
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(short);
    }

    #[test]
    fn probe_detects_formats() {
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let p = temp_file("bz", &bz);
        assert_eq!(probe_kernel(&p).unwrap(), KernelFormat::BzImage);
        let e = temp_file("elf", b"\x7fELF\x02\x01\x01");
        assert_eq!(probe_kernel(&e).unwrap(), KernelFormat::Elf);
        // A fake bzImage with a bad header is refused (by the header checks), not a panic.
        let mem = crate::vm::memory::create_guest_memory(128 << 20).unwrap();
        assert!(matches!(load_kernel(&mem, &p), Err(LoaderError::Image(_))));
        assert!(matches!(load_kernel(&mem, &e), Err(LoaderError::Image(_))));
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(e);
    }

    #[test]
    fn unpack_rejects_non_xz_and_corrupt_payloads() {
        // No payload fields / not XZ: fall back to the in-guest decompressor.
        assert_eq!(unpack_bzimage(&[0u8; 16], 1 << 30), Ok(None));
        let mut bz = vec![0u8; 0x2000];
        bz[0x1f1] = 1;
        bz[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&64u32.to_le_bytes());
        assert_eq!(unpack_bzimage(&bz, 1 << 30), Ok(None));
        // XZ magic followed by garbage: an error, not a panic.
        bz[0x400..0x406].copy_from_slice(&XZ_MAGIC);
        assert!(unpack_bzimage(&bz, 1 << 30).is_err());
    }

    #[test]
    fn unpacks_the_guest_kernel_if_present() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest/bzImage");
        let Ok(image) = std::fs::read(&path) else {
            return;
        };
        if let Some(vmlinux) = unpack_bzimage(&image, 1 << 30).unwrap() {
            assert_eq!(&vmlinux[..4], b"\x7fELF");
        }
        // A limit below the unpacked size is refused.
        if unpack_bzimage(&image, 1 << 30).unwrap().is_some() {
            assert!(unpack_bzimage(&image, 1 << 20).is_err());
        }
    }

    #[test]
    fn pvm_params_only_on_kvm_pvm() {
        let hw = build_cmdline_for(Some("quiet"), false).unwrap();
        let hw = hw.as_cstring().unwrap().into_string().unwrap();
        assert_eq!(hw, format!("{DEFAULT_CMDLINE} quiet"));
        let pvm = build_cmdline_for(Some("quiet"), true).unwrap();
        let pvm = pvm.as_cstring().unwrap().into_string().unwrap();
        assert_eq!(pvm, format!("{DEFAULT_CMDLINE} {KVM_PVM_CMDLINE} quiet"));
        assert!(!KVM_PVM_CMDLINE.contains("  "));
        assert!(pvm.contains(" clearcpuid=cx16,popcnt,xsave,"));
    }

    #[test]
    fn zero_page_fields() {
        let k = LoadedKernel {
            format: KernelFormat::Elf,
            entry: GuestAddress(0x100_0000),
            end: 0x200_0000,
            setup_header: None,
        };
        let initrd = LoadedInitramfs {
            addr: 0x1000_0000,
            size: 1234,
        };
        let p = boot_params_for(
            &k,
            Some(initrd),
            10,
            GuestAddress(0xe0000),
            &e820_map(512 << 20),
        );
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.ramdisk_image }, 0x1000_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 1234);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries, 5);
    }

    #[test]
    fn cmdline_appends_user_part() {
        let c = build_cmdline(Some("vmtest.mode=watch")).unwrap();
        let s = c.as_cstring().unwrap().into_string().unwrap();
        assert!(s.starts_with("console=ttyS0"));
        assert!(s.ends_with(" vmtest.mode=watch"));
        assert!(build_cmdline(Some("bad\u{1}char")).is_err());
    }
}
