//! `vcpu_sync`: a backend-agnostic core that pauses, resumes, hot-adds and hot-removes
//! vCPUs without ever holding a lock across a wait, so that a vCPU busy in a device
//! handler (the ACPI CPU-hotplug controller in particular) can always acknowledge a pause.
//!
//! * [`Vcpus`] is the VMM-side handle; [`VcpuLink`] is what each vCPU thread holds.
//! * [`Backend`] is the hypervisor (KVM in `kvm-backend`, a simulation in tests).
//! * The hotplug controller's registers are [`Vcpus::hotplug_read`]/[`Vcpus::hotplug_write`].
//! * All synchronization comes from [`sync`], which is loom's under `--cfg loom`.
//!
//! See `../shared/DESIGN.md` for the rules this crate follows.

#![warn(missing_docs)]

mod backend;
mod error;
mod hotplug;
mod link;
mod shared;
pub mod sim;
mod slot;
pub mod sync;
mod vcpus;

pub use backend::Backend;
pub use error::{CoreError, PauseError, PauseTimeout};
pub use hotplug::{WriteEffect, HOTPLUG_REGION_SIZE, REG_SELECT, REG_STATUS};
pub use link::{Next, VcpuLink};
pub use slot::{
    Life, Location, SlotReport, STATUS_EJECT, STATUS_ENABLED, STATUS_INSERTING, STATUS_REMOVING,
};
pub use vcpus::{Rekick, Stats, Vcpus, PAUSE_GRACE, REKICK_INTERVAL};
