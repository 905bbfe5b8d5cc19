//! Typed errors: every KVM ioctl failure names the ioctl, and the vCPU when there is one.

/// Errors of the KVM backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/dev/kvm` could not be opened (missing module, no permission, not on KVM).
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A system or VM ioctl failed.
    #[error("{ioctl} failed: {source}")]
    VmIoctl {
        /// The ioctl, e.g. `KVM_CREATE_IRQCHIP`.
        ioctl: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A vCPU ioctl failed.
    #[error("vCPU {index}: {ioctl} failed: {source}")]
    VcpuIoctl {
        /// vCPU index.
        index: usize,
        /// The ioctl, e.g. `KVM_SET_SREGS`.
        ioctl: &'static str,
        /// errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_MSRS stopped at an MSR it rejected.
    #[error(
        "vCPU {index}: KVM_SET_MSRS set {applied} of {wanted} MSRs; MSR {rejected:#x} was rejected"
    )]
    MsrRejected {
        /// vCPU index.
        index: usize,
        /// How many were set.
        applied: usize,
        /// How many were asked for.
        wanted: usize,
        /// The first MSR not set.
        rejected: u32,
    },
    /// A KVM list (CPUID entries, MSRs) would not fit its fixed-size structure.
    #[error("vCPU {index}: building the {what} list: {source}")]
    FamList {
        /// vCPU index.
        index: usize,
        /// Which list.
        what: &'static str,
        /// The size error.
        #[source]
        source: vmm_sys_util::fam::Error,
    },
    /// Writing boot structures (GDT, page tables, ...) into guest memory failed.
    #[error("writing the boot {what} at {addr:#x} into guest memory: {source}")]
    GuestMemory {
        /// What was written.
        what: &'static str,
        /// Guest-physical address.
        addr: u64,
        /// The memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A memory region could not be registered.
    #[error("memory region at {base:#x} (size {size:#x}): {reason}")]
    MemoryRegion {
        /// Guest-physical start.
        base: u64,
        /// Size in bytes.
        size: u64,
        /// What is wrong.
        reason: String,
    },
    /// A vCPU index past the backend's `max_vcpus`.
    #[error("vCPU index {index} is out of range (backend configured for {max} vCPUs)")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The configured `max_vcpus`.
        max: usize,
    },
    /// The backend configuration cannot work on this host.
    #[error("invalid backend configuration: {0}")]
    InvalidConfig(String),
    /// The vCPU thread could not be started.
    #[error("cannot start the thread of vCPU {index}: {source}")]
    SpawnThread {
        /// vCPU index.
        index: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The no-op `SIGRTMIN` handler that makes kicks interrupt KVM_RUN could not be installed.
    #[error("cannot install the SIGRTMIN kick handler: {0}")]
    SignalHandler(#[source] vmm_sys_util::errno::Error),
}

impl Error {
    pub(crate) fn vm(ioctl: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::VmIoctl { ioctl, source }
    }

    pub(crate) fn vcpu(
        index: usize,
        ioctl: &'static str,
    ) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::VcpuIoctl {
            index,
            ioctl,
            source,
        }
    }
}
