//! The VMM library: guest memory, kernel loading, ACPI tables, legacy devices and the VM
//! object that ties them to `kvm-backend` and the `vcpu_sync` core.
//!
//! Everything a guest or a command line can reach returns a typed error instead of
//! panicking; the binary (`src/main.rs`) only parses arguments and reports outcomes.

pub mod acpi;
pub mod aml;
pub mod api;
pub mod bus;
pub mod cli;
pub mod console;
pub mod devices;
pub mod error;
pub mod image_check;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod ratelimit;
pub mod seccomp;
pub mod signals;
pub mod testguest;
pub mod vm;

pub use error::Error;
