//! Emulated devices. Each is plain state plus register logic with no KVM in it, so the
//! fuzz crate and unit tests can drive them directly; the exit bus (`vm::bus`) wires them to exits.

pub mod acpi_pm;
pub mod cmos;
pub mod ged;
pub mod hotplug;
pub mod i8042;
pub mod serial;

/// A guest interrupt line the devices can raise (an edge: assert then deassert).
pub trait Interrupt: Send + Sync {
    /// Pulses the line.
    fn trigger(&self);

    /// Whether the guest has enabled the line, so that a pulse reaches it. A line that is
    /// always connected (tests) answers true.
    fn accepted(&self) -> bool {
        true
    }
}

/// An interrupt that goes nowhere (tests, fuzzing).
#[derive(Debug, Default)]
pub struct NoInterrupt;

impl Interrupt for NoInterrupt {
    fn trigger(&self) {}
}
