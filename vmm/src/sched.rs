//! A scheduling hint for the VMM's control threads (the API server and its blocking pool).
//!
//! On a host with no more CPUs than busy vCPU threads, a control thread that wakes (a
//! request arrives, a pause's acknowledgements come in) competes with vCPU threads that
//! want every CPU. Linux's fair scheduler (EEVDF) runs the woken thread at once only if
//! its virtual deadline is the earliest; otherwise it waits until a vCPU thread's slice
//! ends, which the scheduler tick notices: up to one tick (4 ms at `HZ=250`), the tail of
//! the API's pause and resume figures. A thread that asks for a short slice
//! (`sched_setattr` with `sched_runtime` under `SCHED_OTHER`, honoured since Linux 6.12)
//! gets earlier deadlines: it preempts a spinning vCPU when it wakes, and the vCPUs a
//! resume wakes do not preempt it before it has answered. It gets no more CPU time: the
//! slice says how soon, not how much.
//!
//! Unprivileged and per thread, and reset in the threads such a thread creates (so a vCPU
//! thread hot-added from the API keeps the default slice). A kernel that predates custom
//! slices accepts the request and ignores it; a refusal is logged and ignored.
//! `VMM_SCHED_HINT=off` in the environment turns the hint off (to measure what it buys).

use std::time::Duration;

/// The slice control threads ask for: the kernel's smallest (100 µs). Serving a request
/// takes a few tens of µs of CPU, so it fits in one.
pub const CONTROL_SLICE: Duration = Duration::from_micros(100);

/// The environment variable that turns the hint off (`off`).
pub const HINT_ENV: &str = "VMM_SCHED_HINT";

/// `struct sched_attr` (include/uapi/linux/sched/types.h), its first version (48 bytes:
/// what both system calls accept on every kernel that has them).
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
}

const SCHED_FLAG_RESET_ON_FORK: u64 = 0x01;

/// What became of a slice request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceOutcome {
    /// The kernel reports the requested slice for the thread.
    Honoured,
    /// The kernel accepted the request but reports no custom slice (before Linux 6.12).
    Ignored,
    /// The thread runs under another policy (real-time, batch, idle) that the user
    /// chose; it is left alone.
    OtherPolicy,
}

fn get_attr() -> std::io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: `attr` is a writable sched_attr of `size` bytes; pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            size,
            0u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr)
}

/// The slice the kernel reports for the calling thread under the fair policy (since Linux
/// 6.12 the default one too), or `None` (another policy, or an older kernel).
pub fn current_slice() -> std::io::Result<Option<Duration>> {
    let attr = get_attr()?;
    Ok(
        (attr.sched_policy == libc::SCHED_OTHER as u32 && attr.sched_runtime != 0)
            .then(|| Duration::from_nanos(attr.sched_runtime)),
    )
}

/// Asks for `slice` as the calling thread's fair-scheduler slice, keeping its policy and
/// nice value, and resetting both in threads it creates later.
pub fn request_slice(slice: Duration) -> std::io::Result<SliceOutcome> {
    let mut attr = get_attr()?;
    if attr.sched_policy != libc::SCHED_OTHER as u32 {
        return Ok(SliceOutcome::OtherPolicy);
    }
    attr.size = std::mem::size_of::<SchedAttr>() as u32;
    attr.sched_flags |= SCHED_FLAG_RESET_ON_FORK;
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `attr` is a valid sched_attr of the size it states; the kernel only reads it.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(match current_slice()? {
        Some(s) if s == slice => SliceOutcome::Honoured,
        _ => SliceOutcome::Ignored,
    })
}

/// Gives the calling control thread, named `who` for the log, [`CONTROL_SLICE`], unless
/// [`HINT_ENV`] is `off`. The hint is an optimisation: a refusal is logged, not an error.
pub fn control_thread(who: &str) {
    if std::env::var_os(HINT_ENV).is_some_and(|v| v == "off") {
        return;
    }
    match request_slice(CONTROL_SLICE) {
        Ok(outcome) => log::trace!("{who}: scheduler slice request: {outcome:?}"),
        Err(e) => log::debug!("{who}: no short scheduler slice ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux 6.12 added custom slices for fair tasks.
    fn kernel_has_custom_slices() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let mut parts = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (6, 12)
    }

    #[test]
    fn a_control_thread_gets_its_slice_and_its_children_do_not() {
        let want = Duration::from_micros(300);
        std::thread::spawn(move || {
            let before = current_slice().expect("sched_getattr");
            let outcome = request_slice(want).expect("sched_setattr");
            if kernel_has_custom_slices() {
                assert_eq!(outcome, SliceOutcome::Honoured);
                assert_eq!(current_slice().expect("sched_getattr"), Some(want));
                let child = std::thread::spawn(current_slice)
                    .join()
                    .expect("child")
                    .expect("sched_getattr in the child");
                assert_eq!(
                    child, before,
                    "a thread created by a control thread kept its slice"
                );
            } else {
                assert_eq!(outcome, SliceOutcome::Ignored);
            }
        })
        .join()
        .expect("the test thread");
    }
}
