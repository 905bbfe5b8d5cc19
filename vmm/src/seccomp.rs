//! seccomp-bpf jails, one filter per kind of thread (as Firecracker and Cloud Hypervisor
//! do), built with rust-vmm's `seccompiler`.
//!
//! The binary sets the mode once ([`configure`], from `--seccomp`, default
//! [`SeccompMode::Kill`]); each thread then installs its own filter when its setup is
//! done ([`enter`]): the main thread after the vCPUs are started, every other thread at
//! the top of its body. A library user (tests, benchmarks) that never calls [`configure`]
//! gets no filter. Filters are inherited by threads created later and stack: a vCPU
//! hot-added from an API connection thread runs under the API filter and its own, which
//! is why the API list includes everything a vCPU thread needs plus `seccomp` itself.
//!
//! A syscall outside a thread's list kills the whole process (SIGSYS) in kill mode; in
//! log mode it is allowed and the kernel logs it (an `audit: type=1326` line with the
//! thread's `comm` and the syscall number in the kernel log), which is how the lists were
//! found, together with `strace -f` of the API, hotplug, signal and serial test scenarios.

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// What `--seccomp` asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// No filter (`--seccomp false`).
    Off,
    /// A forbidden syscall kills the process (`--seccomp true`, the default).
    #[default]
    Kill,
    /// A forbidden syscall is allowed and logged by the kernel (`--seccomp log`).
    Log,
}

impl SeccompMode {
    /// Parses `true`, `false` or `log`.
    pub fn parse(text: &str) -> Option<SeccompMode> {
        match text {
            "true" => Some(SeccompMode::Kill),
            "false" => Some(SeccompMode::Off),
            "log" => Some(SeccompMode::Log),
            _ => None,
        }
    }
}

/// The kinds of thread, each with its own list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the VM runs: the event loop, reaping, shutdown, exit.
    Vmm,
    /// vCPU threads: KVM_RUN and device emulation.
    Vcpu,
    /// The control API's accept and connection threads (which also hot-add vCPUs).
    Api,
    /// The serial output writer.
    Serial,
    /// The termination-signal thread.
    Signals,
    /// The console input thread: reads the terminal, feeds the UART (KVM_IRQ_LINE).
    Console,
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules.
    #[error("cannot build the {kind:?} seccomp filter: {source}")]
    Build {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's error.
        #[source]
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("cannot install the {kind:?} seccomp filter: {source}")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's error.
        #[source]
        source: seccompiler::Error,
    },
}

/// Everything every thread does: memory, futexes, signals (the vCPU kick and Rust's
/// stack-overflow guard), time, thread start and exit, logging to stderr.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    // A vCPU thread takes its pending kick (blocked outside KVM_RUN) without a handler.
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_getrandom,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// vCPU threads: KVM_RUN, KVM_IRQ_LINE for the serial interrupt, KVM_SET_MP_STATE etc.
/// on the way out.
const VCPU: &[i64] = &[libc::SYS_ioctl];

/// The API threads: sockets, connection threads, and hot-add (KVM_CREATE_VCPU, mapping
/// kvm_run, spawning the vCPU thread, which then installs its own filter).
const API: &[i64] = &[
    libc::SYS_ioctl,
    // tokio's reactor (epoll) and waker (eventfd) under hyper.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_shutdown,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_fcntl,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_prctl,
    libc::SYS_seccomp,
];

/// The main thread once the VM runs: joins, KVM fds closed at exit, the API server's
/// wake-up connection and socket removal.
const VMM: &[i64] = &[
    libc::SYS_ioctl,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// The console input thread reads stdin (in COMMON) and raises the UART's interrupt.
const CONSOLE: &[i64] = &[libc::SYS_ioctl];

/// The serial writer only writes (in COMMON).
const SERIAL: &[i64] = &[];

/// The signal thread: the only one with the termination signals unblocked
/// (`signals::block`), so it runs signal-hook's handler, which writes its self-pipe (a
/// socket pair) that the thread then reads.
const SIGNALS: &[i64] = &[
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// The process-wide settings, set once by [`configure`].
#[derive(Clone, Copy, Debug)]
struct Settings {
    mode: SeccompMode,
    /// Test hook: this kind makes a forbidden syscall right after installing its filter.
    violate: Option<ThreadKind>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Test-only: `VMM_TEST_SECCOMP_VIOLATION=vcpu` makes each vCPU thread call a syscall
/// outside its list (`getppid`) right after installing its filter, to prove the jail
/// works (the process dies of SIGSYS in kill mode; the kernel logs it in log mode).
pub const VIOLATION_ENV: &str = "VMM_TEST_SECCOMP_VIOLATION";

/// Sets the mode for every later [`enter`] (first call wins). Reads [`VIOLATION_ENV`].
pub fn configure(mode: SeccompMode) {
    let violate = match std::env::var(VIOLATION_ENV).as_deref() {
        Ok("vcpu") => Some(ThreadKind::Vcpu),
        Ok("api") => Some(ThreadKind::Api),
        Ok("vmm") => Some(ThreadKind::Vmm),
        _ => None,
    };
    let _ = SETTINGS.set(Settings { mode, violate });
}

/// The mode in force (Off until [`configure`]).
pub fn mode() -> SeccompMode {
    SETTINGS.get().map_or(SeccompMode::Off, |s| s.mode)
}

/// Files no thread opens once set up; glibc's malloc still probes two lazily
/// (`/sys/devices/system/cpu/online` when a thread gets an arena,
/// `/proc/sys/vm/overcommit_memory` the first time a heap shrinks) and copes with a
/// failure. So `openat` fails with EACCES (a second filter, [`errno_filter`]) instead of
/// killing the process.
const FAIL_WITH_EACCES: &[i64] = &[libc::SYS_openat, libc::SYS_open];

/// The syscalls `kind` may make.
pub fn allowed(kind: ThreadKind) -> Vec<i64> {
    let own = match kind {
        ThreadKind::Vmm => VMM,
        ThreadKind::Vcpu => VCPU,
        // A hot-added vCPU thread inherits the API filter.
        ThreadKind::Api => API,
        ThreadKind::Serial => SERIAL,
        ThreadKind::Signals => SIGNALS,
        ThreadKind::Console => CONSOLE,
    };
    let mut v: Vec<i64> = COMMON.iter().chain(own).copied().collect();
    if kind == ThreadKind::Api {
        v.extend(VCPU);
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// The filter that makes `FAIL_WITH_EACCES` fail with EACCES (stacked with the main
/// one: the kernel applies the strictest verdict, and EACCES beats allow).
pub fn errno_filter() -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        FAIL_WITH_EACCES.iter().map(|&n| (n, Vec::new())).collect();
    let build = |source| SeccompError::Build {
        kind: ThreadKind::Vmm,
        source,
    };
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(build)?;
    f.try_into().map_err(build)
}

/// Builds the BPF program of `kind` for `mode` (not Off).
pub fn filter(kind: ThreadKind, mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = allowed(kind)
        .into_iter()
        .chain(FAIL_WITH_EACCES.iter().copied())
        .map(|n| (n, Vec::new()))
        .collect();
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::KillProcess,
    };
    let build = |source| SeccompError::Build { kind, source };
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(build)?;
    f.try_into().map_err(build)
}

/// Installs `kind`'s filter on the calling thread, as configured (nothing when Off).
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(settings) = SETTINGS.get().copied() else {
        return Ok(());
    };
    if settings.mode == SeccompMode::Off {
        return Ok(());
    }
    let install = |prog: &BpfProgram| {
        seccompiler::apply_filter(prog).map_err(|source| SeccompError::Install { kind, source })
    };
    install(&errno_filter()?)?;
    install(&filter(kind, settings.mode)?)?;
    log::debug!("seccomp: {kind:?} filter installed ({:?})", settings.mode);
    if settings.violate == Some(kind) {
        log::warn!("seccomp: test hook: {kind:?} thread calls getppid, which it may not");
        // SAFETY: getppid has no arguments and no side effects.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    Ok(())
}

/// [`enter`] for threads that cannot return an error: a failure is logged and the thread
/// goes on without its filter (it still runs under any inherited one).
pub fn enter_or_log(kind: ThreadKind) {
    if let Err(e) = enter(kind) {
        log::error!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_filters() {
        assert_eq!(SeccompMode::parse("true"), Some(SeccompMode::Kill));
        assert_eq!(SeccompMode::parse("false"), Some(SeccompMode::Off));
        assert_eq!(SeccompMode::parse("log"), Some(SeccompMode::Log));
        assert_eq!(SeccompMode::parse("yes"), None);
        for kind in [
            ThreadKind::Vmm,
            ThreadKind::Vcpu,
            ThreadKind::Api,
            ThreadKind::Serial,
            ThreadKind::Signals,
            ThreadKind::Console,
        ] {
            assert!(!filter(kind, SeccompMode::Kill).unwrap().is_empty());
            assert!(!allowed(kind).contains(&libc::SYS_getppid), "{kind:?}");
            assert!(!allowed(kind).contains(&libc::SYS_execve), "{kind:?}");
        }
        // A vCPU hot-added from an API thread runs under both filters.
        let api = allowed(ThreadKind::Api);
        assert!(allowed(ThreadKind::Vcpu).iter().all(|s| api.contains(s)));
        assert!(api.contains(&libc::SYS_seccomp));
        assert!(!allowed(ThreadKind::Vcpu).contains(&libc::SYS_socket));
    }
}
