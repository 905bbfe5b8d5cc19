//! Why a VM could not be built or run: one variant per concern, each carrying that
//! module's typed error.

use crate::vm::acpi::AcpiError;
use crate::vm::loader::LoaderError;
use crate::vm::memory::MemoryError;

/// Anything that stops a VM from being built or from running.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel/initramfs/cmdline loading.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// KVM setup failed.
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_backend::Error),
    /// vCPU management.
    #[error("vCPU: {0}")]
    Vcpu(#[from] vcpu_sync::CoreError),
    /// A pause did not complete.
    #[error("pause failed, the VM is left running: {0}")]
    Pause(#[from] vcpu_sync::PauseError),
    /// More vCPUs than the host or the machine model allow.
    #[error("--cpus max={requested} is above the limit of {limit} vCPUs (KVM allows {kvm_limit}; xAPIC MADT entries allow 254)")]
    TooManyVcpus {
        /// max asked for.
        requested: usize,
        /// The effective limit.
        limit: usize,
        /// KVM_CAP_MAX_VCPUS.
        kvm_limit: usize,
    },
    /// boot vCPUs outside 1..=max.
    #[error("boot vCPUs must be between 1 and max ({max}), got {boot}")]
    BadBootVcpus {
        /// boot asked for.
        boot: usize,
        /// max asked for.
        max: usize,
    },
    /// The guest or a vCPU failed fatally.
    #[error("guest failed: {0}")]
    Guest(String),
    /// The serial output thread could not be started.
    #[error("cannot set up serial output: {0}")]
    Console(#[source] std::io::Error),
    /// `--serial file=PATH` could not be opened.
    #[error("--serial: cannot open {}: {source}", path.display())]
    SerialFile {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `run` was called twice.
    #[error("the VM's main loop is already running")]
    AlreadyRunning,
}
