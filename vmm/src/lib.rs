//! The VMM library: devices, ACPI, loader, API.
