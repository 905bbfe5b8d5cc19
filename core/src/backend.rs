//! What the core needs from a hypervisor backend (KVM, or a simulation in tests).

use crate::link::VcpuLink;

/// A hypervisor backend. The core never blocks inside these calls' callers while holding a
/// lock, and `kick` is called from any thread, including a vCPU thread servicing MMIO.
pub trait Backend: Send + Sync + 'static {
    /// Handle to a running vCPU thread; [`Backend::join`] consumes it.
    type Thread: Send + 'static;
    /// The backend's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Creates vCPU `link.index()` and starts a thread that runs it. The thread must follow
    /// the [`VcpuLink`] protocol: call `checkpoint()` before every guest entry and leave its
    /// run loop when it returns [`crate::Next::Exit`]. Dropping the link marks the slot exited.
    fn spawn(&self, link: VcpuLink) -> Result<Self::Thread, Self::Error>;

    /// Makes vCPU `index` leave guest mode promptly, or not enter it next time. Must not
    /// block and must tolerate an index whose vCPU is not (or no longer) running.
    fn kick(&self, index: usize);

    /// Waits for a thread that has left its run loop (the core only calls this after the
    /// slot reported `Exited`, so the wait is short) and releases the vCPU's resources.
    fn join(&self, index: usize, thread: Self::Thread);
}
