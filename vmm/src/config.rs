//! What a VM is, independent of how it was asked for (command line, tests, benchmarks):
//! vCPUs at boot and at most, guest RAM, what to boot, and where to serve the control API.
//! Nothing here checks the host or the files; `vm::check_config` does.

use std::path::PathBuf;

/// Default guest RAM size.
pub const DEFAULT_MEMORY: u64 = 512 << 20;

/// A VM's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Kernel image path (bzImage or ELF vmlinux).
    pub kernel: PathBuf,
    /// Optional initramfs path.
    pub initramfs: Option<PathBuf>,
    /// Extra kernel command line, appended to the default one.
    pub cmdline: Option<String>,
    /// vCPUs started at boot.
    pub boot_vcpus: usize,
    /// Most vCPUs the guest can ever have (ACPI possible CPUs).
    pub max_vcpus: usize,
    /// Guest RAM in bytes.
    pub memory_size: u64,
    /// Control socket path (stored for the control API).
    pub api_socket: Option<PathBuf>,
    /// Where the guest's serial console (COM1) goes.
    pub serial: SerialConfig,
    /// Start every vCPU (not only the BSP) in 64-bit mode at the kernel's entry instead of
    /// waiting for INIT/SIPI. Only for synthetic guests that run the same code on every
    /// vCPU without using the stack (tests, benchmarks); a real kernel starts its APs
    /// itself. The command line never sets it.
    pub aps_at_entry: bool,
    /// The seccomp jail of the VMM's threads (`--seccomp`; default on, killing). A library
    /// user that never calls `seccomp::configure` gets no filter whatever this says.
    pub seccomp: crate::seccomp::SeccompMode,
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialConfig {
    /// The VMM's stdout (and stdin feeds the guest when it is a terminal).
    #[default]
    Tty,
    /// Nowhere.
    Off,
    /// Appended to this file (created if missing).
    File(PathBuf),
}
