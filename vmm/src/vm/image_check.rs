//! Checks of a kernel image's headers against the file and the guest, done from file
//! metadata and the first few KiB before anything is loaded:
//!
//! * a bzImage is loaded whole, so a file larger than guest RAM is refused by its size
//!   (a 4 GiB sparse file was once read in full, 4.7 GB RSS, before being refused);
//! * a bzImage whose setup header promises more than the file holds (`setup_sects` +
//!   `syssize`, and the compressed payload's offset + length) is truncated: it used to
//!   load, the guest triple-faulted, and the VMM called that a reboot;
//! * an ELF must be 64-bit (`ELFCLASS64`) for x86-64 (`EM_X86_64`); AArch64 or 32-bit
//!   images used to be loaded and run.
//!
//! Headers are read with linux-loader's `setup_header` and goblin's ELF header.

use super::loader::KernelFormat;
use goblin::elf::header::{EI_CLASS, ELFCLASS64, EM_X86_64};
use linux_loader::loader::bootparam::setup_header;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vm_memory::ByteValued;

/// Where the setup header starts in a bzImage (boot protocol).
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// `syssize` is 32 bits wide from boot protocol 2.04 on.
const PROTOCOL_SYSSIZE_32: u16 = 0x204;
/// `payload_offset`/`payload_length` exist from boot protocol 2.08 on.
const PROTOCOL_PAYLOAD: u16 = 0x208;

/// Why a kernel image is refused before loading.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than guest RAM.
    #[error("kernel {} is {size} bytes, larger than guest RAM ({ram} bytes)", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (metadata).
        size: u64,
        /// Guest RAM.
        ram: u64,
    },
    /// The bzImage's header asks for more bytes than the file has.
    #[error("bzImage {} is truncated or corrupt: its header says {what} needs {needed} bytes, the file has {size}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Which part.
        what: &'static str,
        /// Bytes the header implies.
        needed: u64,
        /// The file's size.
        size: u64,
    },
    /// The bzImage has no protected-mode kernel.
    #[error("bzImage {} is corrupt: its header says the kernel is empty (syssize 0)", .0.display())]
    EmptyKernel(PathBuf),
    /// The ELF header cannot be parsed.
    #[error("ELF kernel {} has a bad header: {reason}", path.display())]
    BadElf {
        /// The file.
        path: PathBuf,
        /// goblin's reason.
        reason: String,
    },
    /// Not a 64-bit ELF.
    #[error("ELF kernel {} is not 64-bit (ELF class {class}); an x86-64 vmlinux is needed", path.display())]
    ElfNot64Bit {
        /// The file.
        path: PathBuf,
        /// `e_ident[EI_CLASS]`.
        class: u8,
    },
    /// An ELF for another machine.
    #[error("ELF kernel {} is for {machine} (e_machine {code}), not x86-64", path.display())]
    ElfWrongMachine {
        /// The file.
        path: PathBuf,
        /// goblin's name for the machine.
        machine: &'static str,
        /// `e_machine`.
        code: u16,
    },
}

/// Checks the kernel at `path` (already identified as `format`) against `ram` bytes of
/// guest RAM, reading only its headers.
pub fn check_kernel(path: &Path, format: KernelFormat, ram: u64) -> Result<(), ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    match format {
        KernelFormat::BzImage => check_bzimage(path, &file, size, ram),
        KernelFormat::Elf => check_elf(path, file),
    }
}

fn check_bzimage(path: &Path, file: &File, size: u64, ram: u64) -> Result<(), ImageError> {
    if size > ram {
        return Err(ImageError::TooLarge {
            path: path.to_path_buf(),
            size,
            ram,
        });
    }
    let mut hdr = setup_header::default();
    let truncated = |what, needed| ImageError::Truncated {
        path: path.to_path_buf(),
        what,
        needed,
        size,
    };
    let hdr_end = SETUP_HEADER_OFFSET + hdr.as_slice().len() as u64;
    if size < hdr_end {
        return Err(truncated("the setup header", hdr_end));
    }
    file.read_exact_at(hdr.as_mut_slice(), SETUP_HEADER_OFFSET)
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    let version = hdr.version;
    let syssize = if version >= PROTOCOL_SYSSIZE_32 {
        u64::from(hdr.syssize)
    } else {
        u64::from(hdr.syssize & 0xffff)
    };
    if syssize == 0 {
        return Err(ImageError::EmptyKernel(path.to_path_buf()));
    }
    let kernel_end = setup_size + syssize * 16;
    if kernel_end > size {
        return Err(truncated("the kernel (setup_sects, syssize)", kernel_end));
    }
    if version >= PROTOCOL_PAYLOAD {
        let payload_end =
            setup_size + u64::from(hdr.payload_offset) + u64::from(hdr.payload_length);
        if payload_end > size {
            return Err(truncated(
                "the compressed payload (payload_offset, payload_length)",
                payload_end,
            ));
        }
    }
    Ok(())
}

fn check_elf(path: &Path, file: File) -> Result<(), ImageError> {
    let mut head = Vec::with_capacity(64);
    file.take(64)
        .read_to_end(&mut head)
        .map_err(|source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let bad = |reason: String| ImageError::BadElf {
        path: path.to_path_buf(),
        reason,
    };
    let class = *head
        .get(EI_CLASS)
        .ok_or_else(|| bad("shorter than an ELF identification".into()))?;
    if class != ELFCLASS64 {
        return Err(ImageError::ElfNot64Bit {
            path: path.to_path_buf(),
            class,
        });
    }
    let hdr = goblin::elf::Elf::parse_header(&head).map_err(|e| bad(e.to_string()))?;
    if hdr.e_machine != EM_X86_64 {
        return Err(ImageError::ElfWrongMachine {
            path: path.to_path_buf(),
            machine: goblin::elf::header::machine_to_str(hdr.e_machine),
            code: hdr.e_machine,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-imgchk-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// A bzImage header for a file of `len` bytes whose kernel ends at `kernel_end`.
    fn bz(len: usize, syssize: u32) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0x1f1] = 1; // setup_sects: setup is 1 KiB
        b[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        b
    }

    #[test]
    fn bzimage_sizes() {
        let ok = temp("ok", &bz(1024 + 4096, 256));
        assert!(check_kernel(&ok, KernelFormat::BzImage, 128 << 20).is_ok());
        assert!(matches!(
            check_kernel(&ok, KernelFormat::BzImage, 4096),
            Err(ImageError::TooLarge { .. })
        ));
        let short = temp("short", &bz(1024 + 4000, 256));
        let e = check_kernel(&short, KernelFormat::BzImage, 128 << 20).unwrap_err();
        assert!(
            matches!(e, ImageError::Truncated { needed: 5120, .. }),
            "{e}"
        );
        let mut payload = bz(1024 + 4096, 256);
        payload[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        payload[0x24c..0x250].copy_from_slice(&4000u32.to_le_bytes());
        let p = temp("payload", &payload);
        let e = check_kernel(&p, KernelFormat::BzImage, 128 << 20).unwrap_err();
        assert!(e.to_string().contains("payload"), "{e}");
        let empty = temp("empty", &bz(2048, 0));
        assert!(matches!(
            check_kernel(&empty, KernelFormat::BzImage, 128 << 20),
            Err(ImageError::EmptyKernel(_))
        ));
        for p in [ok, short, p, empty] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn elf_machine_and_class() {
        let good =
            vmm_testguest::elf(&vmm_testguest::GuestSpec::spinner()).expect("synthetic guest");
        let p = temp("elf-ok", &good);
        assert!(check_kernel(&p, KernelFormat::Elf, 128 << 20).is_ok());
        let mut arm = good.clone();
        arm[0x12..0x14].copy_from_slice(&183u16.to_le_bytes());
        let a = temp("elf-arm", &arm);
        let e = check_kernel(&a, KernelFormat::Elf, 128 << 20).unwrap_err();
        assert!(e.to_string().contains("AARCH64"), "{e}");
        let mut x32 = good;
        x32[EI_CLASS] = 1;
        let c = temp("elf-32", &x32);
        assert!(matches!(
            check_kernel(&c, KernelFormat::Elf, 128 << 20),
            Err(ImageError::ElfNot64Bit { class: 1, .. })
        ));
        for p in [p, a, c] {
            let _ = std::fs::remove_file(p);
        }
    }
}
