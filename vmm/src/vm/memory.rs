//! Guest RAM: anonymous mappings from guest-physical 0 up to the 32-bit MMIO hole
//! ([`MMIO_HOLE_START`], 3 GiB) and, for the rest, from 4 GiB ([`HIGH_RAM_START`]) up, so
//! device windows (IOAPIC, LAPIC, hotplug controller) never alias RAM. Each range is one
//! KVM memory region. Also the e820 map the kernel gets, since it follows from the same
//! layout.

use crate::vm::layout::{
    ACPI_TABLES_START, BIOS_END, HIGH_RAM_START, LOW_RAM_END, MAX_MEMORY, MIN_MEMORY,
    MMIO_HOLE_START,
};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

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
    #[error("memory size {} is too large: at most {} is supported", human(*.size), human(*.max))]
    TooLarge {
        /// Requested bytes.
        size: u64,
        /// Maximum bytes.
        max: u64,
    },
    /// More than the host has.
    #[error("memory size {} is too large: the host has {} of RAM", human(*.size), human(*.host))]
    AboveHost {
        /// Requested bytes.
        size: u64,
        /// The host's RAM in bytes.
        host: u64,
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

/// Where `size` bytes of RAM go: `[0, min(size, 3 GiB))` and, past that, from 4 GiB on.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    let low = size.min(MMIO_HOLE_START);
    let mut ranges = vec![(0, low)];
    if size > low {
        ranges.push((HIGH_RAM_START, size - low));
    }
    ranges
}

/// The host's physical RAM in bytes (None if the kernel does not say).
fn host_ram() -> Option<u64> {
    // SAFETY: sysinfo fills the struct it is given; all-zero is a valid value.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on a valid pointer.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    // c_ulong is u64 on the hosts we build for; the conversion keeps other widths right.
    #[allow(clippy::useless_conversion)]
    let total = u64::from(info.totalram);
    total.checked_mul(u64::from(info.mem_unit))
}

/// Allocates `size` bytes of guest RAM laid out by [`ram_ranges`], refusing more than the
/// host has (the mappings are lazy, so the kernel would not refuse them itself).
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    check_size(size)?;
    if let Some(host) = host_ram() {
        if size > host {
            return Err(MemoryError::AboveHost { size, host });
        }
    }
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Mmap { size, source })
}

/// The end of the RAM below the MMIO hole (where the kernel, initramfs and boot data go).
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .find(|r| r.start_addr().raw_value() == 0)
        .map_or(0, |r| r.len())
}

/// The guest's RAM in bytes, over all ranges.
pub fn ram_size(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
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

/// The e820 map for `mem_size` bytes of RAM laid out by [`ram_ranges`]: low RAM up to the
/// EBDA, the EBDA reserved, the ACPI tables' area marked ACPI, the rest of the BIOS hole
/// reserved, RAM up to the MMIO hole, then RAM above 4 GiB if any.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let low_end = mem_size.min(MMIO_HOLE_START);
    let mut map = vec![
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
            size: low_end.saturating_sub(BIOS_END),
            kind: E820_RAM,
        },
    ];
    if mem_size > low_end {
        map.push(E820Entry {
            addr: HIGH_RAM_START,
            size: mem_size - low_end,
            kind: E820_RAM,
        });
    }
    map
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
            check_size((1 << 40) + 4096),
            Err(MemoryError::TooLarge { .. })
        ));
        assert!(check_size(128 << 20).is_ok());
        assert!(check_size(3 << 30).is_ok());
        assert!(check_size(8 << 30).is_ok());
        assert!(check_size(1 << 40).is_ok());
        let e = create_guest_memory(1 << 40).unwrap_err();
        assert!(matches!(e, MemoryError::AboveHost { .. }), "{e}");
        assert!(e.to_string().contains("the host has"), "{e}");
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
    fn ram_above_4g() {
        const G: u64 = 1 << 30;
        assert_eq!(ram_ranges(512 << 20), [(0, 512 << 20)]);
        assert_eq!(ram_ranges(3 * G), [(0, 3 * G)]);
        assert_eq!(ram_ranges(3 * G + 4096), [(0, 3 * G), (4 * G, 4096)]);
        assert_eq!(ram_ranges(8 * G), [(0, 3 * G), (4 * G, 5 * G)]);
        for size in [128 << 20, 3 * G, 3 * G + 4096, 8 * G, 64 * G] {
            let ranges = ram_ranges(size);
            assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), size);
            let map = e820_map(size);
            // Every RAM entry lies inside a RAM range, none in the MMIO hole, and the RAM
            // entries reach each range's end.
            for e in map.iter().filter(|e| e.kind == E820_RAM) {
                assert!(
                    ranges
                        .iter()
                        .any(|&(s, l)| e.addr >= s && e.addr + e.size <= s + l),
                    "{e:?} outside {ranges:x?}"
                );
                assert!(
                    e.addr + e.size <= MMIO_HOLE_START || e.addr >= HIGH_RAM_START,
                    "{e:?} in the hole"
                );
            }
            for &(s, l) in &ranges {
                assert!(
                    map.iter()
                        .any(|e| e.kind == E820_RAM && e.addr + e.size == s + l),
                    "{size:#x}: no RAM entry ends at {:#x}: {map:x?}",
                    s + l
                );
            }
            // The low part stays contiguous from 0.
            let mut next = 0;
            for e in map.iter().take(5) {
                assert_eq!(e.addr, next);
                next = e.addr + e.size;
            }
            assert_eq!(next, size.min(MMIO_HOLE_START));
            assert_eq!(map.len(), if size > 3 * G { 6 } else { 5 });
        }
        // The mappings: one region per range, as KVM gets them.
        let mem = create_guest_memory(3 * G + (64 << 20)).unwrap();
        let regions: Vec<(u64, u64)> = mem
            .iter()
            .map(|r| (r.start_addr().raw_value(), r.len()))
            .collect();
        assert_eq!(regions, [(0, 3 * G), (4 * G, 64 << 20)]);
        assert_eq!(low_ram_end(&mem), 3 * G);
        assert_eq!(ram_size(&mem), 3 * G + (64 << 20));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512 << 20), "512 MiB");
        assert_eq!(human(3 << 30), "3 GiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
