//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced), MADT and DSDT, written into the
//! guest's legacy BIOS hole (`layout::ACPI_TABLES_START`, marked ACPI in e820) with a copy
//! of the RSDP at 0xE0000 where the kernel's legacy scan finds it.
//!
//! acpi_tables 0.2's MADT builder fixes the table revision at 1 and lacks an interrupt
//! source override, and Linux only honours the "online capable" flag with MADT revision
//! >= 5, so the MADT is assembled here as a generic SDT.

use super::aml::{dsdt_body, DsdtConfig};
use super::madt::madt_local_apic;
use crate::vm::layout::{
    ACPI_PM_PORT, ACPI_RESET_VALUE, ACPI_TABLES_END, ACPI_TABLES_START, COM1_IRQ, COM1_PORT,
    GED_GSI, HOTPLUG_MMIO_BASE, IOAPIC_ADDR, LAPIC_ADDR, RSDP_LEGACY_COPY, S5_SLEEP_TYPE,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::IoApic;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const OEM_ID: [u8; 6] = *b"VCPUSY";
const OEM_TABLE_ID: [u8; 8] = *b"VMMTABLE";
const OEM_REVISION: u32 = 1;
/// FADT IAPC_BOOT_ARCH bit 2: no VGA. (No 8042 bit: the i8042 exists only as a reset sink.)
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;

/// Why the ACPI tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the space reserved for them.
    #[error("ACPI tables need {needed} bytes but only {available} are reserved")]
    TooLarge {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// More CPUs than 8-bit local APIC IDs allow.
    #[error("{0} vCPUs cannot be described with xAPIC MADT entries (at most 255)")]
    TooManyCpus(usize),
    /// Writing to guest memory failed.
    #[error("cannot write ACPI tables into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// MADT: LAPIC address, one Local APIC per possible CPU, the IOAPIC and ISA IRQ0 -> GSI2.
pub fn madt(max_vcpus: usize, boot_vcpus: usize) -> Result<Sdt, AcpiError> {
    if max_vcpus > 255 {
        return Err(AcpiError::TooManyCpus(max_vcpus));
    }
    // Revision 5: Linux honours the online-capable flag (possible CPUs) from this revision.
    let mut t = Sdt::new(*b"APIC", 36, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let mut body = Vec::new();
    body.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: dual 8259s present
    for i in 0..max_vcpus {
        body.extend_from_slice(&madt_local_apic(i as u8, i < boot_vcpus, true));
    }
    IoApic::new(0, IOAPIC_ADDR, 0).to_aml_bytes(&mut body);
    // Interrupt Source Override: bus 0 (ISA), source IRQ 0, GSI 2, flags 0 (conforms).
    body.extend_from_slice(&[2, 10, 0, 0]);
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    t.append_slice(&body);
    Ok(t)
}

/// FADT: hardware-reduced ACPI 6, sleep control/status and reset registers on the PM port.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let pm_port = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_PM_PORT),
    );
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b = b.dsdt_64(dsdt_addr);
    // Both DSDT pointers: old parsers read the 32-bit one, ACPI 2+ prefer X_DSDT.
    b.dsdt = (dsdt_addr as u32).into();
    b.iapc_boot_arch = IAPC_BOOT_ARCH_NO_VGA.into();
    b.reset_reg = pm_port;
    b.reset_value = ACPI_RESET_VALUE;
    b.sleep_control_reg = pm_port;
    b.sleep_status_reg = pm_port;
    let mut out = Vec::new();
    b.finalize().to_aml_bytes(&mut out);
    out
}

/// DSDT with the hotplug controller, processor devices and GED.
pub fn dsdt(max_vcpus: usize) -> Sdt {
    let mut t = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.append_slice(&dsdt_body(&DsdtConfig {
        max_vcpus,
        hotplug_base: HOTPLUG_MMIO_BASE as u32,
        hotplug_len: vcpu_sync::HOTPLUG_REGION_SIZE as u32,
        ged_gsi: GED_GSI,
        com1: (COM1_PORT, COM1_IRQ),
        s5_type: S5_SLEEP_TYPE,
    }));
    t
}

/// Lays the tables out from `ACPI_TABLES_START` and writes them; returns the RSDP address
/// (for `boot_params.acpi_rsdp_addr`).
pub fn write_tables(
    mem: &GuestMemoryMmap,
    max_vcpus: usize,
    boot_vcpus: usize,
) -> Result<GuestAddress, AcpiError> {
    let tables = build_tables(max_vcpus, boot_vcpus, ACPI_TABLES_START)?;
    for (addr, bytes) in &tables.blobs {
        mem.write_slice(bytes, GuestAddress(*addr))?;
    }
    mem.write_slice(&tables.rsdp, GuestAddress(RSDP_LEGACY_COPY))?;
    Ok(GuestAddress(tables.rsdp_addr))
}

/// The tables and where each goes (pure, for tests).
pub struct Tables {
    /// (guest address, bytes) of every table including the RSDP.
    pub blobs: Vec<(u64, Vec<u8>)>,
    /// RSDP bytes (also copied to the legacy scan area).
    pub rsdp: Vec<u8>,
    /// Primary RSDP address.
    pub rsdp_addr: u64,
}

fn align8(x: u64) -> u64 {
    (x + 7) & !7
}

/// Builds all tables for placement starting at `start`.
pub fn build_tables(max_vcpus: usize, boot_vcpus: usize, start: u64) -> Result<Tables, AcpiError> {
    let rsdp_addr = start;
    let mut next = align8(start + Rsdp::len() as u64);

    let dsdt = dsdt(max_vcpus).as_slice().to_vec();
    let dsdt_addr = next;
    next = align8(next + dsdt.len() as u64);

    let fadt = fadt(dsdt_addr);
    let fadt_addr = next;
    next = align8(next + fadt.len() as u64);

    let madt = madt(max_vcpus, boot_vcpus)?.as_slice().to_vec();
    let madt_addr = next;
    next = align8(next + madt.len() as u64);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = next;
    next += xsdt_bytes.len() as u64;

    if next > ACPI_TABLES_END.max(start) {
        return Err(AcpiError::TooLarge {
            needed: next - start,
            available: ACPI_TABLES_END.saturating_sub(start),
        });
    }

    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    Ok(Tables {
        blobs: vec![
            (rsdp_addr, rsdp.clone()),
            (dsdt_addr, dsdt),
            (fadt_addr, fadt),
            (madt_addr, madt),
            (xsdt_addr, xsdt_bytes),
        ],
        rsdp,
        rsdp_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_lengths() {
        let t = build_tables(4, 2, ACPI_TABLES_START).unwrap();
        for (addr, bytes) in &t.blobs {
            if bytes.starts_with(b"RSD PTR ") {
                assert_eq!(sum(&bytes[..20]), 0);
                assert_eq!(sum(bytes), 0);
                continue;
            }
            assert_eq!(sum(bytes), 0, "table at {addr:#x}");
            let len = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
            assert_eq!(len as usize, bytes.len());
        }
    }

    #[test]
    fn madt_layout() {
        let m = madt(4, 2).unwrap();
        let b = m.as_slice();
        assert_eq!(&b[0..4], b"APIC");
        assert_eq!(b[8], 5, "revision");
        assert_eq!(
            u32::from_le_bytes(b[36..40].try_into().unwrap()),
            LAPIC_ADDR
        );
        // 4 LAPIC entries after the 44-byte header.
        for i in 0..4 {
            let e = &b[44 + 8 * i..52 + 8 * i];
            assert_eq!(&e[..4], &[0, 8, i as u8, i as u8]);
            let flags = u32::from_le_bytes(e[4..8].try_into().unwrap());
            assert_eq!(flags, if i < 2 { 1 } else { 2 });
        }
        let io = &b[76..88];
        assert_eq!(&io[..2], &[1, 12]);
        let iso = &b[88..98];
        assert_eq!(&iso[..4], &[2, 10, 0, 0]);
        assert_eq!(b.len(), 98);
        assert!(madt(256, 1).is_err());
    }

    #[test]
    fn fadt_fields() {
        let f = fadt(0xa1000);
        assert_eq!(&f[0..4], b"FACP");
        assert_eq!(f[8], 6);
        assert_eq!(sum(&f), 0);
        let flags = u32::from_le_bytes(f[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_eq!(u64::from_le_bytes(f[140..148].try_into().unwrap()), 0xa1000);
        // Sleep control register GAS at offset 244: SystemIO, 8 bits, port.
        assert_eq!(f[244], 1);
        assert_eq!(
            u64::from_le_bytes(f[248..256].try_into().unwrap()),
            u64::from(ACPI_PM_PORT)
        );
    }

    /// With VMM_ACPI_DUMP_DIR set, writes each table to `<dir>/<SIG>.dat` so it can be
    /// checked with `iasl -d` (the AML disassembler) by hand.
    #[test]
    fn dump_for_iasl() {
        let Ok(dir) = std::env::var("VMM_ACPI_DUMP_DIR") else {
            return;
        };
        let t = build_tables(4, 2, ACPI_TABLES_START).unwrap();
        for (_, bytes) in &t.blobs {
            let sig = if bytes.starts_with(b"RSD PTR ") {
                "RSDP".to_string()
            } else {
                String::from_utf8_lossy(&bytes[..4]).into_owned()
            };
            std::fs::write(format!("{dir}/{sig}.dat"), bytes).unwrap();
        }
    }

    #[test]
    fn many_cpus_fit() {
        build_tables(254, 1, ACPI_TABLES_START).unwrap();
    }
}
