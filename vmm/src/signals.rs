//! Termination signals: SIGTERM, SIGINT and SIGHUP stop the VM the way an API `shutdown`
//! does (vCPUs stopped, serial output drained, API socket removed), and the process then
//! exits with status 128 + the signal number, as a shell reports a process killed by it.
//! A second signal while the first one's shutdown is still running exits at once.
//!
//! The handler itself only records the signal (signal-hook's self-pipe); a `signals`
//! thread turns it into a [`VmEvent::Shutdown`] for the main loop.

use crate::vm::bus::VmEvent;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::Sender;

/// The signals handled.
pub const HANDLED: [i32; 3] = [SIGTERM, SIGINT, SIGHUP];

/// The first signal caught (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// The signal thread could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot handle termination signals: {0}")]
pub struct SignalError(#[source] std::io::Error);

/// Blocks the handled signals in the calling thread and so in every thread it creates
/// later. Call first thing on the main thread: then only the `signals` thread (which
/// unblocks them) ever runs the handler, so no other thread's seccomp filter needs the
/// handler's syscalls, and a signal that arrives before [`watch`] waits for it.
pub fn block() {
    set_mask(libc::SIG_BLOCK);
}

fn set_mask(how: libc::c_int) {
    // SAFETY: plain libc calls on a local, fully initialised signal set.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        log::error!("cannot change the mask of termination signals (error {rc})");
    }
}

/// Installs the handlers and starts the thread that tells the main loop through `events`.
/// The handlers stay for the life of the process.
pub fn watch(events: Sender<VmEvent>) -> Result<(), SignalError> {
    let mut signals = Signals::new(HANDLED).map_err(SignalError)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            set_mask(libc::SIG_UNBLOCK);
            crate::seccomp::enter_or_log(crate::seccomp::ThreadKind::Signals);
            for sig in signals.forever() {
                if CAUGHT
                    .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    log::info!("caught {}: stopping the VM", name(sig));
                    // The receiver lives as long as the VM; gone means we are exiting.
                    let _ = events.send(VmEvent::Shutdown);
                } else {
                    eprintln!(
                        "vmm: second signal ({}) during shutdown; exiting now",
                        name(sig)
                    );
                    std::process::exit(exit_status(sig).into());
                }
            }
        })
        .map_err(SignalError)?;
    Ok(())
}

/// The first termination signal caught, if any.
pub fn caught() -> Option<i32> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The exit status for a VMM stopped by `sig`: 128 + `sig`.
pub fn exit_status(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(u8::MAX)
}

/// `SIGTERM`, `SIGINT`, `SIGHUP` or `signal N`.
pub fn name(sig: i32) -> String {
    match sig {
        SIGTERM => "SIGTERM".into(),
        SIGINT => "SIGINT".into(),
        SIGHUP => "SIGHUP".into(),
        n => format!("signal {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_names() {
        assert_eq!(exit_status(SIGTERM), 143);
        assert_eq!(exit_status(SIGINT), 130);
        assert_eq!(exit_status(SIGHUP), 129);
        assert_eq!(name(SIGHUP), "SIGHUP");
        assert_eq!(caught(), None);
    }
}
