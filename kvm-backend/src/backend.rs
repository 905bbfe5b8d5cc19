//! [`KvmBackend`]: vCPU creation, the vCPU threads' run loop, and kicks.
//!
//! A kick must never be lost, whatever the target thread is doing:
//! * in KVM_RUN: `SIGRTMIN` makes KVM_RUN return `EINTR`. The vCPU thread blocks it and
//!   KVM unblocks it only inside KVM_RUN (KVM_SET_SIGNAL_MASK, as QEMU does), so the kick
//!   stays pending instead of running a handler, and the thread takes it with one
//!   `sigtimedwait` (a no-op handler, installed without `SA_RESTART`, is the fallback).
//!   At most one such signal is outstanding per thread (`VcpuSlot::signal_sent`): a
//!   real-time signal queues, and a vCPU stuck outside KVM_RUN while a pause re-kicks it
//!   would otherwise pile them up;
//! * anywhere else: `kvm_run.immediate_exit = 1` makes the next KVM_RUN return `EINTR`
//!   at once. The run loop clears it *before* `checkpoint()`, so a kick that lands between
//!   the checkpoint and KVM_RUN still takes effect, and the next checkpoint sees the pause.
//!
//! The kicker reaches `kvm_run` and the thread id through a per-slot lock that the vCPU
//! thread also takes to retract them before it gives up its `VcpuFd` (which unmaps
//! `kvm_run`) and exits; the lock is held only for a store and a `tgkill`.

use crate::cpuid::{self, Topology};
use crate::emulation;
use crate::error::Error;
use crate::setup;
use crate::{BackendConfig, BootEntry, ExitHandler, GuestStop};
use kvm_bindings::{
    kvm_mp_state, CpuId, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle};
use vcpu_sync::{Backend, Location, Next, VcpuLink};
use vm_memory::GuestMemoryMmap;

/// Locks ignoring poison: every guarded value here stays consistent across a panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kick signal. Read at run time because glibc reserves the first few real-time signals.
fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery alone makes KVM_RUN return EINTR.
}

/// Installs the no-op kick handler once per process (`sigaction` without `SA_RESTART`, so
/// KVM_RUN is interrupted rather than restarted).
fn install_kick_handler() -> Result<(), Error> {
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    (*INSTALLED
        .get_or_init(|| vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)))
    .map_err(Error::SignalHandler)
}

/// Sends the kick signal to thread `tid` of this process with one `tgkill`.
///
/// `pthread_kill` would cost four system calls here (glibc masks all signals around
/// `getpid` and `tgkill` to guard against the thread exiting meanwhile), which a pause of
/// many vCPUs pays once per vCPU on its serial path. The caller guarantees that guard
/// itself: it holds the slot's kick lock, which the thread takes to clear its target
/// before it exits, so `tid` cannot have been reused.
fn send_kick(tid: libc::pid_t) -> std::io::Result<()> {
    static PID: OnceLock<libc::pid_t> = OnceLock::new();
    // SAFETY: always safe to call.
    let pid = *PID.get_or_init(|| unsafe { libc::getpid() });
    // SAFETY: tgkill takes plain integers; a wrong target is an error, not UB.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, kick_signal()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `struct kvm_signal_mask` with room for the kernel's 64-bit signal set.
#[repr(C)]
struct KvmSignalMask {
    len: u32,
    sigset: [u8; 8],
}

vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_SIGNAL_MASK,
    kvm_bindings::KVMIO,
    0x8b,
    kvm_bindings::kvm_signal_mask
);

/// How this vCPU thread receives kicks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum KickMode {
    /// Blocked in the thread, unblocked only inside KVM_RUN (KVM_SET_SIGNAL_MASK): a kick
    /// interrupts KVM_RUN and stays pending, and the thread takes it with one
    /// `sigtimedwait` instead of a handler's signal frame and `rt_sigreturn`.
    MaskedOutsideRun,
    /// Unblocked throughout, caught by the no-op handler (when KVM_SET_SIGNAL_MASK fails).
    Handler,
}

/// The kick signal alone, as a signal set.
fn kick_set() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, fully initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        set
    }
}

/// Blocks the kick signal in this thread and has KVM unblock it while in KVM_RUN, so a
/// kick interrupts the guest and nothing else. Falls back to the handler if KVM refuses.
fn arm_kicks(vcpu: &VcpuFd, index: usize) -> KickMode {
    let kick = kick_set();
    // SAFETY: an all-zero sigset_t is valid and is overwritten by pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to initialised signal sets.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &kick, &mut old) };
    if rc != 0 {
        log::error!("vCPU {index}: cannot block the kick signal (error {rc})");
        return unblock_kicks(index);
    }
    let mut in_run = old;
    // SAFETY: valid pointer to an initialised signal set.
    unsafe { libc::sigdelset(&mut in_run, kick_signal()) };
    // The kernel's sigset_t is the first 64 bits of glibc's.
    let mut mask = KvmSignalMask {
        len: 8,
        sigset: [0; 8],
    };
    // SAFETY: glibc's sigset_t is at least 8 bytes long and fully initialised.
    let bytes =
        unsafe { std::slice::from_raw_parts((&in_run as *const libc::sigset_t).cast::<u8>(), 8) };
    mask.sigset.copy_from_slice(bytes);
    // SAFETY: KVM_SET_SIGNAL_MASK reads a kvm_signal_mask of `len` set bytes, which `mask` holds.
    let rc = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vcpu, KVM_SET_SIGNAL_MASK(), &mask) };
    if rc != 0 {
        log::warn!(
            "vCPU {index}: KVM_SET_SIGNAL_MASK failed ({}); kicks go through a handler",
            std::io::Error::last_os_error()
        );
        return unblock_kicks(index);
    }
    KickMode::MaskedOutsideRun
}

/// Unblocks the kick signal in this thread: a blocked kick would only be caught by
/// `immediate_exit`, never interrupting a running guest.
fn unblock_kicks(index: usize) -> KickMode {
    let kick = kick_set();
    // SAFETY: valid pointer to an initialised signal set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &kick, std::ptr::null_mut()) };
    if rc != 0 {
        log::error!(
            "vCPU {index}: cannot unblock the kick signal (error {rc}); kicks will be slow"
        );
    }
    KickMode::Handler
}

/// Takes one pending kick, if any, without waiting. Called after KVM_RUN returned EINTR:
/// a kick left pending would interrupt the next KVM_RUN at once. (At most one is normally
/// outstanding, see `VcpuSlot::signal_sent`; a second, sent while the thread was between
/// taking and clearing, is taken on the next round, which ends at once.)
fn take_kick() {
    let kick = kick_set();
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointers; a null siginfo is allowed. EAGAIN (none pending) is fine.
    unsafe { libc::sigtimedwait(&kick, std::ptr::null_mut(), &zero) };
}

/// `kvm_run.immediate_exit` of a live vCPU, accessed atomically because the kicker writes
/// it from another thread (the kernel only reads it at KVM_RUN entry).
///
/// # Safety
/// `ptr` must point into the `kvm_run` mapping of a `VcpuFd` that outlives the returned
/// reference's use.
unsafe fn immediate_exit<'a>(ptr: *mut u8) -> &'a AtomicU8 {
    // SAFETY: guaranteed by the caller; a u8 is always suitably aligned for AtomicU8.
    unsafe { AtomicU8::from_ptr(ptr) }
}

/// What a kicker needs to reach a running vCPU.
struct KickTarget {
    /// `&kvm_run.immediate_exit` of the vCPU.
    immediate_exit: *mut u8,
    /// The vCPU thread's kernel thread ID (see [`send_kick`]).
    tid: libc::pid_t,
    /// How the thread takes kicks.
    mode: KickMode,
}

// SAFETY: the pointer is only dereferenced under the slot's lock, and the vCPU thread
// removes the target under that lock before the mapping goes away.
unsafe impl Send for KickTarget {}

/// Test-only fault injection ([`KvmBackend::inject_fault`]): what a vCPU thread does
/// instead of what KVM told it, to exercise the failure paths on a real VM.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Fault {
    /// The vCPU's KVM_RUN in progress (or the next one) fails with EIO, as on a broken
    /// host: the thread reports a fatal error and leaves its run loop.
    RunFails = 1,
    /// After its KVM_RUN in progress (or the next one) returns, the vCPU stays in a
    /// device handler, never reaching its pause checkpoint, until the fault is cleared.
    Stall = 2,
}

/// Per-vCPU state of the backend.
#[derive(Default)]
struct VcpuSlot {
    /// A [`Fault`] armed for this vCPU (0: none).
    fault: AtomicU8,
    /// Set while a thread runs this vCPU. Held only to kick or to set/clear the target.
    kick: Mutex<Option<KickTarget>>,
    /// A kick signal was sent to the thread (in [`KickMode::MaskedOutsideRun`]) and the
    /// thread has not taken it yet: further kicks only set `immediate_exit`. Set by a
    /// kicker (under `kick`), cleared by the thread after it took the signal. Without
    /// it, a vCPU stuck outside KVM_RUN while a pause re-kicks it every few ms would
    /// queue a real-time signal per kick, up to the user's RLIMIT_SIGPENDING, after which
    /// kicks to every vCPU of the process fail.
    signal_sent: AtomicBool,
    /// The fd of a vCPU whose thread has exited. KVM cannot destroy a vCPU (its id stays
    /// taken until the VM is destroyed), so a hot-add of the same index after a
    /// hot-remove reuses it instead of failing KVM_CREATE_VCPU with EEXIST.
    idle_fd: Mutex<Option<VcpuFd>>,
}

struct Inner {
    vm: Arc<VmFd>,
    supported_cpuid: CpuId,
    tsc_deadline: bool,
    max_vcpus: usize,
    memory: GuestMemoryMmap,
    boot: BootEntry,
    handler: Arc<dyn ExitHandler>,
    slots: Box<[VcpuSlot]>,
    /// See [`KvmBackend::set_all_vcpus_boot`].
    all_vcpus_boot: AtomicBool,
}

/// The KVM implementation of [`vcpu_sync::Backend`]. Create it with
/// [`crate::KvmVm::create_backend`] and hand it to `vcpu_sync::Vcpus::new`.
pub struct KvmBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KvmBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmBackend")
            .field("max_vcpus", &self.inner.max_vcpus)
            .field("boot", &self.inner.boot)
            .finish_non_exhaustive()
    }
}

impl KvmBackend {
    pub(crate) fn new(
        vm: Arc<VmFd>,
        supported_cpuid: CpuId,
        tsc_deadline: bool,
        cfg: BackendConfig,
    ) -> Result<KvmBackend, Error> {
        install_kick_handler()?;
        let slots = (0..cfg.max_vcpus).map(|_| VcpuSlot::default()).collect();
        Ok(KvmBackend {
            inner: Arc::new(Inner {
                vm,
                supported_cpuid,
                tsc_deadline,
                max_vcpus: cfg.max_vcpus,
                memory: cfg.memory,
                boot: cfg.boot,
                handler: cfg.handler,
                slots,
                all_vcpus_boot: AtomicBool::new(false),
            }),
        })
    }

    /// The `max_vcpus` this backend was configured with.
    pub fn max_vcpus(&self) -> usize {
        self.inner.max_vcpus
    }

    /// Synthetic guests only (tests, benchmarks): when on, every vCPU created or re-armed
    /// afterwards starts like the BSP (64-bit mode at the boot entry, runnable) instead of
    /// waiting for INIT/SIPI, so all of them run guest code without an AP trampoline. All
    /// share the BSP's boot stack pointer: the guest code must not use the stack. The boot
    /// page tables are written once, by vCPU 0's setup. Never for a real kernel, which
    /// starts its APs itself. Off by default.
    pub fn set_all_vcpus_boot(&self, on: bool) {
        self.inner.all_vcpus_boot.store(on, Ordering::SeqCst);
    }

    /// Whether every vCPU starts like the BSP (see [`KvmBackend::set_all_vcpus_boot`]).
    pub fn all_vcpus_boot(&self) -> bool {
        self.inner.all_vcpus_boot.load(Ordering::SeqCst)
    }

    /// Tests only: arms `fault` for vCPU `index` (`None` clears it; a stalled vCPU then
    /// goes on). Out-of-range indices are ignored. A `RunFails` fires once.
    #[doc(hidden)]
    pub fn inject_fault(&self, index: usize, fault: Option<Fault>) {
        if let Some(slot) = self.inner.slots.get(index) {
            slot.fault
                .store(fault.map_or(0, |f| f as u8), Ordering::SeqCst);
        }
    }

    /// Whether vCPU `index` starts like the BSP (see [`KvmBackend::set_all_vcpus_boot`]).
    fn boots_like_bsp(&self, index: usize) -> bool {
        index == 0 || self.all_vcpus_boot()
    }

    fn slot(&self, index: usize) -> Result<&VcpuSlot, Error> {
        self.inner.slots.get(index).ok_or(Error::IndexOutOfRange {
            index,
            max: self.inner.max_vcpus,
        })
    }

    /// Creates and configures vCPU `index` without starting a thread ([`Backend::spawn`]
    /// does this first). A vCPU whose thread has exited is reused: KVM cannot create the
    /// same id twice. Public for tests and diagnostics; note that KVM keeps the id taken
    /// even if the returned fd is dropped.
    pub fn prepare_vcpu(&self, index: usize) -> Result<VcpuFd, Error> {
        let slot = self.slot(index)?;
        let idle = lock(&slot.idle_fd).take();
        match idle {
            Some(vcpu) => match self.reset_vcpu(&vcpu, index) {
                Ok(()) => {
                    log::debug!("vCPU {index}: reusing its KVM vCPU");
                    Ok(vcpu)
                }
                Err(e) => {
                    // Keep it: it is the only fd this id will ever have.
                    *lock(&slot.idle_fd) = Some(vcpu);
                    Err(e)
                }
            },
            None => {
                let vcpu = self
                    .inner
                    .vm
                    .create_vcpu(index as u64)
                    .map_err(Error::vcpu(index, "KVM_CREATE_VCPU"))?;
                match self.configure_new(&vcpu, index) {
                    Ok(()) => Ok(vcpu),
                    Err(e) => {
                        *lock(&slot.idle_fd) = Some(vcpu);
                        Err(e)
                    }
                }
            }
        }
    }

    fn configure_new(&self, vcpu: &VcpuFd, index: usize) -> Result<(), Error> {
        let inner = &*self.inner;
        let topo = Topology {
            apic_id: index as u32,
            max_vcpus: inner.max_vcpus as u32,
        };
        let cpuid = cpuid::for_vcpu(
            &inner.supported_cpuid,
            topo,
            inner.tsc_deadline,
            crate::host::is_kvm_pvm(),
        )
        .map_err(|source| Error::FamList {
            index,
            what: "CPUID",
            source,
        })?;
        vcpu.set_cpuid2(&cpuid)
            .map_err(Error::vcpu(index, "KVM_SET_CPUID2"))?;
        for e in cpuid.as_slice() {
            log::trace!(
                "vCPU {index}: CPUID {:#x}.{:#x} = {:08x} {:08x} {:08x} {:08x} flags {:#x}",
                e.function,
                e.index,
                e.eax,
                e.ebx,
                e.ecx,
                e.edx,
                e.flags
            );
        }
        self.configure_common(vcpu, index, true)
    }

    /// Re-arms a vCPU that ran before (its CPUID is already set and KVM refuses changes).
    /// Guest memory is left alone: the guest owns it once booted, and other vCPUs may be
    /// running on the boot page tables (rewriting them, which zeroes the PML4 and PDPT
    /// first, made running vCPUs triple-fault when vCPU 0 was re-added).
    fn reset_vcpu(&self, vcpu: &VcpuFd, index: usize) -> Result<(), Error> {
        self.configure_common(vcpu, index, false)?;
        // An AP goes back to waiting for INIT/SIPI, as a fresh one would; the guest's INIT
        // resets the rest of its state.
        let mp_state = if self.boots_like_bsp(index) {
            KVM_MP_STATE_RUNNABLE
        } else {
            KVM_MP_STATE_UNINITIALIZED
        };
        vcpu.set_mp_state(kvm_mp_state { mp_state })
            .map_err(Error::vcpu(index, "KVM_SET_MP_STATE"))
    }

    /// `first`: the vCPU is being created (vCPU 0 then writes the boot tables into guest
    /// memory); false when re-arming one that ran before.
    fn configure_common(&self, vcpu: &VcpuFd, index: usize, first: bool) -> Result<(), Error> {
        setup::set_msrs(vcpu, index)?;
        setup::set_fpu(vcpu, index)?;
        setup::set_lint(vcpu, index)?;
        if index == 0 && first {
            setup::setup_bsp(vcpu, index, &self.inner.memory, &self.inner.boot)?;
        } else if self.boots_like_bsp(index) {
            setup::setup_long_mode(vcpu, index, &self.inner.boot)?;
            vcpu.set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(Error::vcpu(index, "KVM_SET_MP_STATE"))?;
        }
        Ok(())
    }
}

impl Backend for KvmBackend {
    type Thread = JoinHandle<()>;
    type Error = Error;

    fn spawn(&self, link: VcpuLink) -> Result<JoinHandle<()>, Error> {
        let index = link.index();
        let vcpu = self.prepare_vcpu(index)?;
        let inner = self.inner.clone();
        // On failure the closure, with the link, is dropped, which is what the core expects.
        // The VcpuFd goes with it, so this index cannot be re-added (rare: out of threads).
        thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || vcpu_thread(inner, vcpu, link))
            .map_err(|source| Error::SpawnThread { index, source })
    }

    fn kick(&self, index: usize) {
        let Some(slot) = self.inner.slots.get(index) else {
            return;
        };
        let target = lock(&slot.kick);
        let Some(t) = target.as_ref() else {
            return; // no thread (not started, or already leaving): nothing to interrupt
        };
        // SAFETY: the target is present, so the vCPU thread still owns its VcpuFd and
        // cannot remove the target (or unmap kvm_run) while we hold the lock.
        unsafe { immediate_exit(t.immediate_exit) }.store(1, Ordering::SeqCst);
        // One signal outstanding is enough: until the thread takes it, it either is
        // pending (and ends the next KVM_RUN at once) or the thread is between taking
        // it and its checkpoint, which sees what this kick is about (published before
        // the kick) and clears the flag before it runs the guest again.
        if t.mode == KickMode::MaskedOutsideRun && slot.signal_sent.swap(true, Ordering::SeqCst) {
            return;
        }
        // The thread is alive (it clears the target under this lock before exiting), so
        // its thread ID names it and no other.
        let sent = send_kick(t.tid);
        if sent.is_err() {
            slot.signal_sent.store(false, Ordering::SeqCst);
        }
        drop(target);
        if let Err(e) = sent {
            log::warn!("vCPU {index}: tgkill failed: {e}");
        }
    }

    fn join(&self, index: usize, thread: JoinHandle<()>) {
        if let Err(payload) = thread.join() {
            log::error!(
                "vCPU {index} thread panicked: {}",
                panic_message(payload.as_ref())
            );
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

/// Body of the `vcpu<N>` thread.
fn vcpu_thread(inner: Arc<Inner>, mut vcpu: VcpuFd, link: VcpuLink) {
    let index = link.index();
    let Some(slot) = inner.slots.get(index) else {
        // spawn() already checked the index through prepare_vcpu().
        log::error!("vCPU {index}: no backend slot");
        drop(link);
        inner.handler.vcpu_exited(index);
        return;
    };
    let kick_mode = arm_kicks(&vcpu, index);
    let ie_ptr: *mut u8 = std::ptr::addr_of_mut!(vcpu.get_kvm_run().immediate_exit);
    {
        let mut target = lock(&slot.kick);
        // A signal sent to an earlier thread of this slot died with it.
        slot.signal_sent.store(false, Ordering::SeqCst);
        *target = Some(KickTarget {
            immediate_exit: ie_ptr,
            // SAFETY: always safe to call.
            tid: unsafe { libc::gettid() },
            mode: kick_mode,
        });
    }
    log::debug!("vCPU {index}: thread started");
    inner.handler.vcpu_thread_started(index);

    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        run_loop(
            &mut vcpu,
            &link,
            inner.handler.as_ref(),
            &inner.memory,
            ie_ptr,
            kick_mode,
            slot,
        )
    }));

    // Retract the kick target before the fd can be dropped (munmap of kvm_run) and before
    // this thread ends, so no kicker touches freed memory or signals a dead thread.
    *lock(&slot.kick) = None;
    complete_pending_io(&mut vcpu, index);
    *lock(&slot.idle_fd) = Some(vcpu);
    if let Err(payload) = &outcome {
        // The VM lost a vCPU: tell the VMM as it would hear of a fatal KVM error. The
        // handler may be what panicked, so a second panic must not skip the cleanup below.
        let reason = GuestStop::Fatal(format!(
            "vCPU {index}: thread panicked: {}",
            panic_message(payload.as_ref())
        ));
        log::error!("{reason:?}");
        let handler = inner.handler.as_ref();
        if panic::catch_unwind(AssertUnwindSafe(|| handler.guest_stopped(index, reason))).is_err() {
            log::error!("vCPU {index}: guest_stopped panicked too");
        }
    }
    drop(link);
    inner.handler.vcpu_exited(index);
    match outcome {
        Ok(()) => log::debug!("vCPU {index}: thread exiting"),
        // Re-raise so `join` reports it.
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// Lets KVM finish the instruction behind the last MMIO/PIO exit. A thread that stops right
/// after servicing an exit leaves without re-entering KVM_RUN, and KVM completes that
/// instruction (stores the data read, advances RIP) only on the next KVM_RUN: were that the
/// first run of the re-armed vCPU (hot-add into the same slot), it would overwrite the fresh
/// boot registers with the old instruction's and resume the old code path. KVM_RUN with
/// `immediate_exit` completes pending I/O and returns EINTR without entering the guest (the
/// KVM API's way to make guest state consistent before userspace inspects or changes it).
/// Called with the kick target retracted, so nobody else writes `immediate_exit`.
fn complete_pending_io(vcpu: &mut VcpuFd, index: usize) {
    vcpu.set_kvm_immediate_exit(1);
    match vcpu.run() {
        Err(e) if e.errno() == libc::EINTR => {}
        other => log::warn!("vCPU {index}: completing pending I/O, KVM_RUN gave {other:?}"),
    }
    vcpu.set_kvm_immediate_exit(0);
}

fn run_loop(
    vcpu: &mut VcpuFd,
    link: &VcpuLink,
    handler: &dyn ExitHandler,
    memory: &GuestMemoryMmap,
    ie_ptr: *mut u8,
    kick_mode: KickMode,
    slot: &VcpuSlot,
) {
    let fault = &slot.fault;
    let index = link.index();
    // SAFETY: `vcpu` (which owns the kvm_run mapping) outlives this function.
    let immediate_exit = unsafe { immediate_exit(ie_ptr) };
    let stop = loop {
        // Clear before the checkpoint: a kick from here on either is seen by the checkpoint
        // (the pause/stop was published before the kick) or makes KVM_RUN return at once.
        immediate_exit.store(0, Ordering::SeqCst);
        if link.checkpoint() == Next::Exit {
            break None;
        }
        link.set_location(Location::InGuest);
        let mut exit = vcpu.run();
        link.set_location(Location::Userspace);
        match fault.load(Ordering::SeqCst) {
            0 => {}
            f if f == Fault::RunFails as u8 => {
                fault.store(0, Ordering::SeqCst);
                exit = Err(kvm_ioctls::Error::new(libc::EIO));
            }
            _ => link.in_mmio(|| {
                while fault.load(Ordering::SeqCst) == Fault::Stall as u8 {
                    thread::sleep(std::time::Duration::from_millis(1));
                }
            }),
        }
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                link.in_mmio(|| handler.pio_read(index, port, data));
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                link.in_mmio(|| handler.pio_write(index, port, data));
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                link.in_mmio(|| handler.mmio_read(index, addr, data));
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                link.in_mmio(|| handler.mmio_write(index, addr, data));
            }
            Ok(VcpuExit::Shutdown) => {
                log::info!("vCPU {index}: KVM_EXIT_SHUTDOWN (triple fault or reset)");
                break Some(GuestStop::TripleFault);
            }
            Ok(VcpuExit::SystemEvent(kind, data)) => {
                log::info!("vCPU {index}: KVM_EXIT_SYSTEM_EVENT type {kind} data {data:x?}");
                break Some(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => GuestStop::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => GuestStop::Reset,
                    other => GuestStop::SystemEvent(other),
                });
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                break Some(GuestStop::Fatal(format!(
                    "vCPU {index}: KVM_EXIT_FAIL_ENTRY, hardware entry failure reason \
                     {reason:#x} on host CPU {cpu}"
                )));
            }
            Ok(VcpuExit::InternalError) => {
                match emulation::on_internal_error(vcpu, index, memory) {
                    emulation::Outcome::Resume => {}
                    emulation::Outcome::Fatal(msg) => break Some(GuestStop::Fatal(msg)),
                }
            }
            // With the in-kernel irqchip KVM handles HLT itself; these are benign.
            Ok(VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen) => {}
            Ok(VcpuExit::IoapicEoi(_)) => {}
            Ok(other) => {
                break Some(GuestStop::Fatal(format!(
                    "vCPU {index}: unexpected KVM exit {other:?}"
                )));
            }
            // Kicked: the signal or immediate_exit interrupted KVM_RUN.
            Err(e) if e.errno() == libc::EINTR => {
                if kick_mode == KickMode::MaskedOutsideRun {
                    // Take, then clear: cleared first, a kick could send a second
                    // signal that this take consumes, leaving the flag set with none
                    // pending, and later kicks would then never interrupt the guest.
                    take_kick();
                    slot.signal_sent.store(false, Ordering::SeqCst);
                }
            }
            Err(e) if e.errno() == libc::EAGAIN => {}
            Err(e) => {
                break Some(GuestStop::Fatal(format!(
                    "vCPU {index}: KVM_RUN failed: {e}"
                )));
            }
        }
    };
    if let Some(reason) = stop {
        match &reason {
            GuestStop::Fatal(msg) => log::error!("{msg}"),
            other => log::info!("vCPU {index}: guest stopped: {other:?}"),
        }
        handler.guest_stopped(index, reason);
    }
}
