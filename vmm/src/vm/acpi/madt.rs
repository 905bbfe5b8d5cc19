//! The one MADT structure both the MADT and the DSDT (`_MAT` of each processor device)
//! carry, so the two always agree.

use acpi_tables::madt::{EnabledStatus, ProcessorLocalApic};
use acpi_tables::Aml;

/// The MADT Local APIC structure of CPU `index` (APIC ID = ACPI UID = index): enabled for
/// boot CPUs, "online capable" for CPUs that may be hot-added later.
pub fn madt_local_apic(index: u8, enabled: bool, online_capable: bool) -> [u8; 8] {
    let status = if enabled {
        EnabledStatus::Enabled
    } else if online_capable {
        EnabledStatus::DisabledOnlineCapable
    } else {
        EnabledStatus::Disabled
    };
    let mut out = [0u8; 8];
    let mut v = Vec::with_capacity(8);
    ProcessorLocalApic::new(index, index, status).to_aml_bytes(&mut v);
    out.copy_from_slice(&v);
    out
}
