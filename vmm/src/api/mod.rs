//! The control API: Cloud Hypervisor's REST endpoints over HTTP/1.1 on a unix socket
//! (`PUT /api/v1/vm.pause`, `GET /api/v1/vm.info`, ...; [`request`] has the endpoints and
//! errors, `openapi.yaml` beside this file describes them), the server ([`server`], on
//! `hyper`) and the client behind `vmm remote` ([`client`]).
//!
//! A bad request gets an error answer (a JSON body with `kind` and `message`) and changes
//! nothing. Answers to actions are `204 No Content`; `vm.info`, `vmm.ping` and `vm.resize`
//! answer `200` with a JSON body.

pub mod client;
pub mod request;
pub mod server;

pub use client::{ClientError, Connection};
pub use request::{ApiError, Request};
pub use server::{ApiServer, ServerError, ServerLimits};

use crate::vm::bus::VmEvent;
use crate::vm::Error;
use crate::vm::{ResizeError, ResizeOutcome, Vm, VmInfo};
use serde_json::Value;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vcpu_sync::PauseError;

/// How long a `vm.pause` request waits for every vCPU to acknowledge.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server's own thread waits for a pause before it hands the rest of the wait
/// to a thread that may block: enough for every vCPU of a small VM to acknowledge (tens of
/// microseconds), short enough not to stall the other connections.
pub const QUICK_PAUSE: Duration = Duration::from_millis(1);

/// What the API can do to a VM. [`Vm`] implements it; tests use a fake.
pub trait Control: Send + Sync + 'static {
    /// Pauses every vCPU (idempotent).
    fn pause(&self) -> Result<(), ApiError>;
    /// Pauses if every vCPU acknowledges within `patience`: `Ok(true)` paused, `Ok(false)`
    /// not yet (a pause may be under way; [`Control::pause`] finishes it). The default
    /// never tries.
    fn try_pause(&self, patience: Duration) -> Result<bool, ApiError> {
        let _ = patience;
        Ok(false)
    }
    /// Ends the pause in force; [`ApiError::NotPaused`] if there is none.
    fn resume(&self) -> Result<(), ApiError>;
    /// Changes the number of present vCPUs.
    fn resize(&self, cpus: usize) -> Result<ResizeOutcome, ApiError>;
    /// A snapshot of the VM.
    fn info(&self) -> VmInfo;
    /// Asks the VMM's main loop to stop the VM.
    fn shutdown(&self) -> Result<(), ApiError>;
}

impl From<ResizeError> for ApiError {
    fn from(e: ResizeError) -> Self {
        match e {
            ResizeError::Zero => ApiError::ZeroCpus,
            ResizeError::AboveMax { requested, max } => ApiError::AboveMax { requested, max },
            ResizeError::SlotsBusy {
                requested,
                free,
                busy,
            } => ApiError::SlotsBusy {
                requested,
                free,
                busy,
            },
            ResizeError::ShuttingDown => ApiError::ShuttingDown,
            ResizeError::Vcpu(e) => ApiError::Vcpu(e.to_string()),
        }
    }
}

/// The control surface of a real VM: calls straight into [`Vm`]; `shutdown` goes through
/// the main loop's event channel.
pub struct VmControl {
    vm: Arc<Vm>,
    events: Mutex<Sender<VmEvent>>,
}

impl VmControl {
    /// Controls `vm`.
    pub fn new(vm: Arc<Vm>) -> Self {
        let events = Mutex::new(vm.event_sender());
        VmControl { vm, events }
    }

    /// What a client hears of a failed pause.
    fn pause_error(&self, e: Error) -> ApiError {
        match e {
            Error::Pause(PauseError::Timeout(t)) => ApiError::PauseTimeout(t),
            // The VM's own shutdown resumes every vCPU so they can see their stop; a pause
            // it cancels is reported as what it is, not as a client's concurrent resume.
            Error::Pause(PauseError::Interrupted) if self.vm.is_stopping() => {
                ApiError::ShuttingDown
            }
            Error::Pause(PauseError::Interrupted) => ApiError::PauseInterrupted,
            Error::Guest(msg) => ApiError::VmFailed(msg),
            // The API's threads are never vCPU threads; kept typed all the same.
            other => ApiError::Vcpu(other.to_string()),
        }
    }
}

impl Control for VmControl {
    fn pause(&self) -> Result<(), ApiError> {
        if self.vm.is_stopping() {
            return Err(ApiError::ShuttingDown);
        }
        self.vm
            .pause(PAUSE_TIMEOUT)
            .map_err(|e| self.pause_error(e))
    }

    fn try_pause(&self, patience: Duration) -> Result<bool, ApiError> {
        if self.vm.is_stopping() {
            return Err(ApiError::ShuttingDown);
        }
        self.vm.try_pause(patience).map_err(|e| self.pause_error(e))
    }

    fn resume(&self) -> Result<(), ApiError> {
        if self.vm.resume() {
            Ok(())
        } else {
            Err(ApiError::NotPaused)
        }
    }

    fn resize(&self, cpus: usize) -> Result<ResizeOutcome, ApiError> {
        Ok(self.vm.resize(cpus)?)
    }

    fn info(&self) -> VmInfo {
        self.vm.info()
    }

    fn shutdown(&self) -> Result<(), ApiError> {
        let tx = self.events.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(VmEvent::Shutdown)
            .map_err(|_| ApiError::ShuttingDown)
    }
}

/// A successful answer: an HTTP status and an optional JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// 200 or 204.
    pub status: u16,
    /// The JSON body (none for 204).
    pub body: Option<Value>,
}

impl Reply {
    /// `204 No Content`.
    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            body: None,
        }
    }

    /// `200 OK` with `body`.
    pub fn json<T: serde::Serialize>(body: &T) -> Result<Reply, ApiError> {
        let v = serde_json::to_value(body)
            .map_err(|e| ApiError::Vcpu(format!("cannot encode the answer: {e}")))?;
        Ok(Reply {
            status: 200,
            body: Some(v),
        })
    }
}

/// `vm.info`'s body: the VM's snapshot plus Cloud Hypervisor's `state` field.
#[derive(serde::Serialize)]
struct InfoBody {
    /// `Running` or `Paused`.
    state: &'static str,
    #[serde(flatten)]
    info: VmInfo,
}

/// `vmm.ping`'s body (Cloud Hypervisor's `VmmPingResponse`).
#[derive(serde::Serialize)]
struct PingBody {
    build_version: &'static str,
    version: &'static str,
    pid: u32,
    features: [&'static str; 0],
}

/// Runs `req` if that cannot block for long: the requests that never block, and a pause
/// every vCPU acknowledges within [`QUICK_PAUSE`]. `None`: run it with [`execute`] where
/// blocking is fine (a pause left under way is joined there, not started again).
pub fn execute_quick(control: &dyn Control, req: &Request) -> Option<Result<Reply, ApiError>> {
    match req {
        Request::Pause => {
            let t = Instant::now();
            match control.try_pause(QUICK_PAUSE) {
                Ok(true) => {
                    log::info!("pause took {} µs", t.elapsed().as_micros());
                    Some(Ok(Reply::no_content()))
                }
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            }
        }
        r if r.may_block() => None,
        r => Some(execute(control, r)),
    }
}

/// Runs one request against `control`. A shutdown is answered by the server before it is
/// carried out, so here it only succeeds.
pub fn execute(control: &dyn Control, req: &Request) -> Result<Reply, ApiError> {
    match req {
        Request::Ping => Reply::json(&PingBody {
            build_version: env!("CARGO_PKG_VERSION"),
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            features: [],
        }),
        Request::Info => {
            let info = control.info();
            let state = if info.paused { "Paused" } else { "Running" };
            Reply::json(&InfoBody { state, info })
        }
        Request::Pause => {
            let t = Instant::now();
            control.pause()?;
            log::info!("pause took {} µs", t.elapsed().as_micros());
            Ok(Reply::no_content())
        }
        Request::Resume => {
            control.resume()?;
            log::info!("resumed");
            Ok(Reply::no_content())
        }
        Request::Resize { desired_vcpus } => {
            let before = control.info().active_vcpus;
            let t = Instant::now();
            let outcome = control.resize(*desired_vcpus)?;
            log::info!(
                "resize {before} \u{2192} {desired_vcpus} done in {} ms",
                t.elapsed().as_millis()
            );
            Reply::json(&outcome)
        }
        Request::VmShutdown | Request::VmmShutdown => Ok(Reply::no_content()),
    }
}
