//! KVM backend for `vcpu_sync`.
//!
//! * [`KvmVm`] owns `/dev/kvm` and the VM: in-kernel irqchip and PIT, memory slots,
//!   interrupt lines.
//! * [`KvmBackend`] implements [`vcpu_sync::Backend`]: it creates and configures vCPUs
//!   (CPUID topology, MSRs, FPU, LAPIC, long mode for the BSP), runs each on a thread
//!   named `vcpu<N>`, and kicks them with `immediate_exit` plus a `SIGRTMIN` signal.
//! * Device work goes to the VMM through [`ExitHandler`].
//!
//! The vCPU index is the APIC ID and the ACPI processor UID; vCPU 0 is the BSP. Every
//! other vCPU starts in reset and waits in the in-kernel LAPIC for INIT/SIPI, which is
//! also how Linux brings hot-added CPUs online.

#![deny(missing_docs)]

mod backend;
mod cpuid;
mod emulation;
mod error;
pub mod host;
pub mod layout;
mod setup;
mod vm;

use std::sync::Arc;
use vm_memory::{GuestAddress, GuestMemoryMmap};

#[doc(hidden)]
pub use backend::Fault;
pub use backend::KvmBackend;
pub use error::Error;
pub use vm::KvmVm;

/// Device dispatch implemented by the VMM; called on vCPU threads, must not block for long.
///
/// Every call happens inside `VcpuLink::in_mmio`, so a pause that lands meanwhile is
/// reported as overlapping a device access, and a stuck handler shows up in reports.
pub trait ExitHandler: Send + Sync + 'static {
    /// The guest executed `in` on `port`; fill `data` (its length is the access size).
    fn pio_read(&self, vcpu: usize, port: u16, data: &mut [u8]);
    /// The guest executed `out` on `port` with `data`.
    fn pio_write(&self, vcpu: usize, port: u16, data: &[u8]);
    /// The guest read `data.len()` bytes at an unmapped guest-physical address; fill `data`.
    fn mmio_read(&self, vcpu: usize, addr: u64, data: &mut [u8]);
    /// The guest wrote `data` at an unmapped guest-physical address.
    fn mmio_write(&self, vcpu: usize, addr: u64, data: &[u8]);
    /// The guest asked to stop the VM (KVM_EXIT_SHUTDOWN = triple fault/reset,
    /// KVM_EXIT_SYSTEM_EVENT) or the vCPU hit a fatal KVM error. The vCPU thread leaves its
    /// run loop after this call.
    fn guest_stopped(&self, vcpu: usize, reason: GuestStop);
    /// Called on a vCPU thread once it is set up, before its run loop (e.g. to install
    /// the thread's seccomp filter). Does nothing by default.
    fn vcpu_thread_started(&self, vcpu: usize) {
        let _ = vcpu;
    }
    /// The vCPU thread has left its run loop (its link is dropped): the VMM should call
    /// `Vcpus::reap()` from its own (non-vCPU) thread.
    fn vcpu_exited(&self, vcpu: usize);
}

/// Why a vCPU stopped the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestStop {
    /// KVM_EXIT_SHUTDOWN: a triple fault. Guests that mean to reset use the i8042 or the
    /// ACPI reset register; an image that dies before its kernel runs ends here too.
    TripleFault,
    /// The guest reset the machine (KVM_SYSTEM_EVENT_RESET).
    Reset,
    /// The guest powered off (KVM_SYSTEM_EVENT_SHUTDOWN).
    PowerOff,
    /// Any other KVM_EXIT_SYSTEM_EVENT (a crash report, say), with its KVM type number.
    SystemEvent(u32),
    /// A KVM error or exit the backend cannot continue from; the text says which.
    Fatal(String),
}

/// Where the BSP (vCPU 0) starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// 64-bit entry point (RIP).
    pub entry: GuestAddress,
    /// Linux `boot_params`, passed in RSI.
    pub zero_page: GuestAddress,
}

/// What [`KvmVm::create_backend`] needs.
#[derive(Clone)]
pub struct BackendConfig {
    /// Number of vCPU slots; sizes the CPUID topology (one package, one thread per core).
    pub max_vcpus: usize,
    /// Guest memory (a cheap clone): the BSP's GDT, IDT and page tables are written here.
    pub memory: GuestMemoryMmap,
    /// Where the BSP (vCPU 0) starts.
    pub boot: BootEntry,
    /// Device dispatch for guest exits.
    pub handler: Arc<dyn ExitHandler>,
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConfig")
            .field("max_vcpus", &self.max_vcpus)
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}
