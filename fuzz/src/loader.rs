//! The kernel loader under arbitrary bytes given as a kernel image (a user's corrupt or
//! hostile `--kernel` file).

use std::sync::atomic::{AtomicU64, Ordering};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest RAM for each attempt: small, so an image that claims to be huge is refused fast.
const MEM_SIZE: usize = 64 << 20;

/// Writes `data` to a temporary file and loads it as the VMM would. It must either load
/// inside guest RAM with an entry point inside RAM, or return a typed error; never panic.
pub fn kernel_image(data: &[u8]) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        panic!("cannot allocate {MEM_SIZE} bytes of guest memory for the loader");
    };
    let path = std::env::temp_dir().join(format!(
        "vmm-fuzz-kernel-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    if let Err(e) = std::fs::write(&path, data) {
        panic!("cannot write {}: {e}", path.display());
    }
    let probed = vmm::vm::loader::probe_kernel(&path);
    let loaded = vmm::vm::loader::load_kernel(&mem, &path);
    let _ = std::fs::remove_file(&path);
    match loaded {
        Ok(k) => {
            assert!(probed.is_ok(), "loaded an image the probe rejected");
            assert!(
                k.end <= MEM_SIZE as u64,
                "image ends at {:#x}, past guest RAM",
                k.end
            );
            assert!(
                mem.address_in_range(k.entry),
                "entry {:#x} outside guest RAM",
                k.entry.0
            );
        }
        Err(e) => {
            // Every refusal has a message a user can act on.
            assert!(!e.to_string().is_empty());
        }
    }
}
