//! Guest RAM: one anonymous mapping from guest-physical 0 up to the requested size, always
//! below the 32-bit MMIO hole so device windows (IOAPIC, LAPIC, hotplug controller) never
//! alias RAM. Also the e820 map the kernel gets, since it follows from the same layout.

use crate::vm::layout::{ACPI_TABLES_START, BIOS_END, LOW_RAM_END, MAX_MEMORY, MIN_MEMORY};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Below [`MIN_MEMORY`].
    #[error("memory size {} is too little memory: at least {} is needed", human(*.size), human(*.min))]
    TooSmall {
        /// Requested bytes.
        size: u64,
        /// Minimum bytes.
        min: u64,
    },
    /// Above [`MAX_MEMORY`].
    #[error("memory size {} is too large: at most {} is supported (RAM must stay below the 32-bit MMIO hole)", human(*.size), human(*.max))]
    TooLarge {
        /// Requested bytes.
        size: u64,
        /// Maximum bytes.
        max: u64,
    },
    /// Not a multiple of the page size.
    #[error("memory size {0} bytes is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// The host refused the mapping.
    #[error("cannot allocate {} of guest memory: {source}", human(*.size))]
    Mmap {
        /// Requested bytes.
        size: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Formats a byte count for messages (exact, in the largest unit that divides it).
pub fn human(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// Checks a requested RAM size against the layout's limits without allocating.
pub fn check_size(size: u64) -> Result<(), MemoryError> {
    if size < MIN_MEMORY {
        return Err(MemoryError::TooSmall {
            size,
            min: MIN_MEMORY,
        });
    }
    if size > MAX_MEMORY {
        return Err(MemoryError::TooLarge {
            size,
            max: MAX_MEMORY,
        });
    }
    if size % 4096 != 0 {
        return Err(MemoryError::Unaligned(size));
    }
    Ok(())
}

/// Allocates guest RAM `[0, size)`.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    check_size(size)?;
    // check_size bounds size to 3 GiB, so the cast cannot truncate.
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
        .map_err(|source| MemoryError::Mmap { size, source })
}

/// e820 entry types used here (Linux `E820_TYPE_*`).
pub const E820_RAM: u32 = 1;
/// Reserved: the kernel leaves it alone.
pub const E820_RESERVED: u32 = 2;
/// ACPI reclaimable: holds ACPI tables.
pub const E820_ACPI: u32 = 3;

/// One e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// One of the `E820_*` types.
    pub kind: u32,
}

/// The e820 map for `mem_size` bytes of RAM: low RAM up to the EBDA, the EBDA reserved,
/// the ACPI tables' area marked ACPI, the rest of the BIOS hole reserved, then high RAM.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    vec![
        E820Entry {
            addr: 0,
            size: LOW_RAM_END,
            kind: E820_RAM,
        },
        E820Entry {
            addr: LOW_RAM_END,
            size: ACPI_TABLES_START - LOW_RAM_END,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: ACPI_TABLES_START,
            size: crate::vm::layout::ACPI_TABLES_END - ACPI_TABLES_START,
            kind: E820_ACPI,
        },
        E820Entry {
            addr: crate::vm::layout::ACPI_TABLES_END,
            size: BIOS_END - crate::vm::layout::ACPI_TABLES_END,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: BIOS_END,
            size: mem_size.saturating_sub(BIOS_END),
            kind: E820_RAM,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(matches!(
            check_size(1 << 20),
            Err(MemoryError::TooSmall { .. })
        ));
        assert!(matches!(
            check_size(4 << 30),
            Err(MemoryError::TooLarge { .. })
        ));
        assert!(check_size(128 << 20).is_ok());
        assert!(check_size(3 << 30).is_ok());
        assert!(matches!(
            check_size((128 << 20) + 1),
            Err(MemoryError::Unaligned(_))
        ));
    }

    #[test]
    fn e820_is_contiguous() {
        let map = e820_map(512 << 20);
        let mut next = 0;
        for e in &map {
            assert_eq!(e.addr, next);
            next = e.addr + e.size;
        }
        assert_eq!(next, 512 << 20);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512 << 20), "512 MiB");
        assert_eq!(human(3 << 30), "3 GiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
