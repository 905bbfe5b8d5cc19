//! The VMM's top-level error: one variant per concern, each carrying that module's typed
//! error, so `main` can print one clear line and exit 1.

use crate::acpi::AcpiError;
use crate::cli::CliError;
use crate::loader::LoaderError;
use crate::memory::MemoryError;

/// Anything that stops the VMM from booting or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line.
    #[error(transparent)]
    Cli(#[from] CliError),
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
    /// A resize request that cannot be honoured.
    #[error("resize: {0}")]
    Resize(#[from] crate::vm::ResizeError),
    /// The control API socket could not be set up.
    #[error("control API: {0}")]
    Api(#[from] crate::api::ServerError),
    /// `vmm remote` could not get an answer.
    #[error("{0}")]
    Client(#[from] crate::api::ClientError),
    /// `vmm remote` got an error answer (its message).
    #[error("{0}")]
    Remote(String),
    /// The guest or a vCPU failed fatally.
    #[error("guest failed: {0}")]
    Guest(String),
    /// The serial output thread could not be started.
    #[error("cannot set up serial output: {0}")]
    Console(#[source] std::io::Error),
    /// Termination signals could not be handled.
    #[error(transparent)]
    Signals(#[from] crate::signals::SignalError),
    /// The main thread's seccomp filter.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// `run` was called twice.
    #[error("the VM's main loop is already running")]
    AlreadyRunning,
}
