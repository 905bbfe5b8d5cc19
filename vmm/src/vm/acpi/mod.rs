//! ACPI: the tables ([`tables`]), the DSDT's AML ([`aml`]) and the MADT local-APIC entry
//! both of them carry ([`madt`]).

pub mod aml;
pub mod madt;
pub mod tables;

pub use tables::{write_tables, AcpiError};
