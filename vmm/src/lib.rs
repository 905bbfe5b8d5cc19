//! The VMM library, top-down:
//!
//! * [`config`]: what a VM is (vCPUs, memory, what to boot, the control socket);
//! * [`vm`]: building and running one: guest memory, kernel loading, ACPI tables and
//!   AML, devices, the exit bus, and the `vcpu_sync` core over `kvm-backend`;
//! * [`api`]: the control API (protocol, unix-socket server and client) over a [`vm::Vm`];
//! * [`cli`]: the command line, which yields a [`config::VmConfig`] or an API request;
//! * [`terminal`]: the user's terminal as the guest's serial console (for the binary).
//!
//! Each module uses only those above it in this list. Everything a guest or a command line
//! can reach returns a typed error instead of panicking; the binary (`src/main.rs`) only
//! parses arguments and reports outcomes.

#![deny(missing_docs)]

pub mod api;
pub mod cli;
pub mod config;
pub mod seccomp;
pub mod signals;
pub mod terminal;
pub mod vm;

pub use vm::Error;
