//! Runs the calls under test on a dedicated "VMM" thread with a deadline, so that a
//! deadlock fails a property-test case (and shrinks) instead of hanging the suite.
//! Used by the core's property tests on the simulated backend and the VMM's on KVM.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

type Job<S> = Box<dyn FnOnce(&S) + Send>;

/// The VMM thread, owning the state `S` every call receives.
pub struct Exec<S> {
    tx: Option<mpsc::Sender<Job<S>>>,
    worker: Option<thread::JoinHandle<()>>,
    stuck: bool,
    limit: Duration,
}

impl<S: Send + 'static> Exec<S> {
    /// Starts the thread; each call must return within `limit`. Fails only if the thread
    /// cannot be spawned.
    pub fn new(state: S, limit: Duration) -> std::io::Result<Exec<S>> {
        let (tx, rx) = mpsc::channel::<Job<S>>();
        let worker = thread::Builder::new().name("vmm".into()).spawn(move || {
            for job in rx {
                job(&state);
            }
        })?;
        Ok(Exec {
            tx: Some(tx),
            worker: Some(worker),
            stuck: false,
            limit,
        })
    }

    /// Runs `f` on the VMM thread; a call that does not return within the limit is a
    /// deadlock (the thread is abandoned, the case fails).
    pub fn call<R: Send + 'static>(
        &mut self,
        what: &str,
        f: impl FnOnce(&S) -> R + Send + 'static,
    ) -> Result<R, String> {
        if self.stuck {
            return Err(format!(
                "{what}: the VMM thread is stuck in an earlier call"
            ));
        }
        let (rtx, rrx) = mpsc::sync_channel(1);
        let job: Job<S> = Box::new(move |s| {
            let _ = rtx.send(f(s));
        });
        if self.tx.as_ref().is_none_or(|tx| tx.send(job).is_err()) {
            self.stuck = true;
            return Err(format!(
                "{what}: the VMM thread is gone (an earlier call panicked)"
            ));
        }
        match rrx.recv_timeout(self.limit) {
            Ok(r) => Ok(r),
            Err(RecvTimeoutError::Timeout) => {
                self.stuck = true;
                Err(format!(
                    "DEADLOCK: `{what}` did not return within {:?}",
                    self.limit
                ))
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.stuck = true;
                Err(format!("`{what}` panicked on the VMM thread"))
            }
        }
    }
}

impl<S> Exec<S> {
    /// Whether a call overran its deadline (the thread is abandoned; skip teardown).
    pub fn is_stuck(&self) -> bool {
        self.stuck
    }
}

impl<S> Drop for Exec<S> {
    fn drop(&mut self) {
        self.tx.take();
        if !self.stuck {
            if let Some(w) = self.worker.take() {
                let _ = w.join();
            }
        }
    }
}
