//! The control API: a unix-socket server speaking line-delimited JSON (see
//! [`protocol`] for the wire format) and the client behind `vmm remote`.
//!
//! The server runs one accept thread and one short-lived thread per connection. Each
//! connection is bounded: a request line may not exceed [`protocol::MAX_REQUEST_LEN`]
//! bytes and must arrive within [`ServerLimits::line_timeout`] of the previous response (or
//! of connecting), responses must be taken within the same time, and at most
//! [`ServerLimits::max_connections`] clients are served at once. So a silent, slow or
//! greedy client ties up its own thread for a bounded time and never blocks the others or
//! the VM. A bad request gets an error response and changes nothing.
//!
//! The socket is created with mode 0600 before it accepts connections (bound, chmod-ed,
//! then put in listening state). A stale socket left by a dead VMM is replaced; a live one
//! or any other kind of file at the path is an error. The file is removed when the
//! [`ApiServer`] is dropped.

pub mod protocol;

use crate::vm::bus::VmEvent;
use crate::vm::Error;
use crate::vm::{ResizeError, ResizeOutcome, Vm, VmInfo};
use protocol::{parse_request, ApiError, Request, Response, MAX_REQUEST_LEN};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vcpu_sync::PauseError;

/// How long a `pause` request waits for every vCPU to acknowledge.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the API can do to a VM. [`Vm`] implements it; tests use a fake.
pub trait Control: Send + Sync + 'static {
    /// Pauses every vCPU (idempotent).
    fn pause(&self) -> Result<(), ApiError>;
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
}

impl Control for VmControl {
    fn pause(&self) -> Result<(), ApiError> {
        if self.vm.is_stopping() {
            return Err(ApiError::ShuttingDown);
        }
        match self.vm.pause(PAUSE_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(Error::Pause(PauseError::Timeout(t))) => Err(ApiError::PauseTimeout(t)),
            // The VM's own shutdown resumes every vCPU so they can see their stop; a pause
            // it cancels is reported as what it is, not as a client's concurrent resume.
            Err(Error::Pause(PauseError::Interrupted)) if self.vm.is_stopping() => {
                Err(ApiError::ShuttingDown)
            }
            Err(Error::Pause(PauseError::Interrupted)) => Err(ApiError::PauseInterrupted),
            Err(Error::Guest(msg)) => Err(ApiError::VmFailed(msg)),
            Err(other) => Err(ApiError::VmFailed(other.to_string())),
        }
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

/// Runs one request against `control`. `shutdown` is answered by the caller before it is
/// carried out (see [`serve_connection`]), so this only validates it.
pub fn execute(control: &dyn Control, req: &Request) -> Response {
    let r = match req {
        Request::Pause => control.pause().map(|()| Response::ok()),
        Request::Resume => control.resume().map(|()| Response::ok()),
        Request::Resize { cpus } => control.resize(*cpus).map(|o| Response::ok_with(&o)),
        Request::Info => Ok(Response::ok_with(&control.info())),
        Request::Shutdown => Ok(Response::ok()),
    };
    r.into()
}

/// Per-connection bounds.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// A request line must be complete within this long after connecting or after the
    /// previous response; a response must be taken by the client within it too.
    pub line_timeout: Duration,
    /// Clients served at once; more are told `busy` and disconnected.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            line_timeout: Duration::from_secs(30),
            max_connections: 16,
        }
    }
}

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Something that is not a socket exists at the path.
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// A VMM is already listening on the path.
    #[error("{} is in use by another process", .0.display())]
    InUse(PathBuf),
    /// `sockaddr_un` holds at most 107 bytes of path.
    #[error("socket path {} is too long ({len} bytes; the limit is {max})", path.display())]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A path with a NUL byte.
    #[error("socket path {} contains a NUL byte", .0.display())]
    NulInPath(PathBuf),
    /// An OS call failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A running API server. Dropping it stops accepting and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    /// (device, inode) of the socket we created, so drop never removes someone else's.
    ident: (u64, u64),
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ApiServer {
    /// Serves `control` on a new socket at `path` with default limits.
    pub fn start(path: &Path, control: Arc<dyn Control>) -> Result<ApiServer, ServerError> {
        Self::start_with(path, control, ServerLimits::default())
    }

    /// [`ApiServer::start`] with explicit limits.
    pub fn start_with(
        path: &Path,
        control: Arc<dyn Control>,
        limits: ServerLimits,
    ) -> Result<ApiServer, ServerError> {
        remove_stale_socket(path)?;
        let listener = bind_private(path)?;
        let io_err = |what| {
            let path = path.to_path_buf();
            move |source| ServerError::Io { what, path, source }
        };
        let meta = std::fs::symlink_metadata(path).map_err(io_err("cannot stat"))?;
        let ident = (meta.dev(), meta.ino());
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let accept_thread = std::thread::Builder::new()
            .name("api-accept".into())
            .spawn(move || accept_loop(listener, control, limits, stop2))
            .map_err(io_err("cannot start the server thread for"))?;
        log::info!("control API listening on {}", path.display());
        Ok(ApiServer {
            path: path.to_path_buf(),
            ident,
            stop,
            accept_thread: Some(accept_thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept thread with a connection of our own, then wait for it.
        let woke = UnixStream::connect(&self.path).is_ok();
        if let Some(t) = self.accept_thread.take() {
            if woke {
                let _ = t.join();
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Removes a socket at `path` that nobody listens on; refuses anything else.
fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Io {
                what: "cannot stat",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse(path.to_path_buf())),
        Err(_) => {
            log::info!("removing stale API socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| ServerError::Io {
                what: "cannot remove stale socket",
                path: path.to_path_buf(),
                source,
            })
        }
    }
}

/// socket + bind + chmod 0600 + listen: nobody can connect before the mode is set,
/// because connecting needs the listening state.
fn bind_private(path: &Path) -> Result<UnixListener, ServerError> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let io_err = |what: &'static str, source: io::Error| ServerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let max = addr.sun_path.len() - 1;
    if bytes.contains(&0) {
        return Err(ServerError::NulInPath(path.to_path_buf()));
    }
    if bytes.is_empty() || bytes.len() > max {
        return Err(ServerError::PathTooLong {
            path: path.to_path_buf(),
            len: bytes.len(),
            max,
        });
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err(
            "cannot create socket for",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    };
    if r != 0 {
        return Err(io_err("cannot bind", io::Error::last_os_error()));
    }
    let listen = || -> Result<(), ServerError> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("cannot chmod", e))?;
        // SAFETY: plain syscall on our descriptor.
        if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
            return Err(io_err("cannot listen on", io::Error::last_os_error()));
        }
        Ok(())
    };
    if let Err(e) = listen() {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(fd))
}

/// Decrements the live-connection count when a connection thread ends.
struct ConnSlot(Arc<AtomicUsize>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: UnixListener,
    control: Arc<dyn Control>,
    limits: ServerLimits,
    stop: Arc<AtomicBool>,
) {
    // Connection threads (and vCPU threads hot-added from them) inherit this filter.
    crate::seccomp::enter_or_log(crate::seccomp::ThreadKind::Api);
    let live = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("control API: accept failed: {e}");
                // EMFILE and friends: do not spin.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if live.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            live.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let line = Response::Err(ApiError::Busy(limits.max_connections)).to_line();
            let _ = stream.write_all(format!("{line}\n").as_bytes());
            continue;
        }
        let slot = ConnSlot(live.clone());
        let control = control.clone();
        let spawned = std::thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = serve_connection(stream, &*control, limits) {
                    log::debug!("control API connection ended: {e}");
                }
            });
        if let Err(e) = spawned {
            log::warn!("control API: cannot start a connection thread: {e}");
        }
    }
}

/// What reading a request line produced.
enum Line {
    Complete(Vec<u8>),
    TooLong,
    Eof,
    TimedOut,
}

/// Reads up to the next newline into a line, keeping any bytes after it in `pending`.
fn read_line(
    stream: &mut UnixStream,
    pending: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<Line> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = pending.drain(..=pos).collect();
            line.pop();
            if line.len() > MAX_REQUEST_LEN {
                return Ok(Line::TooLong);
            }
            return Ok(Line::Complete(line));
        }
        if pending.len() > MAX_REQUEST_LEN {
            return Ok(Line::TooLong);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Line::TimedOut);
        }
        stream.set_read_timeout(Some(deadline - now))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(Line::Eof),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Line::TimedOut)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn send(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    let mut line = response.to_line();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    stream.flush()
}

/// Serves one client until it disconnects, times out, sends an oversized line or asks for
/// `shutdown` (answered, then carried out).
pub fn serve_connection(
    mut stream: UnixStream,
    control: &dyn Control,
    limits: ServerLimits,
) -> io::Result<()> {
    stream.set_write_timeout(Some(limits.line_timeout))?;
    let mut pending = Vec::new();
    loop {
        let deadline = Instant::now() + limits.line_timeout;
        let line = match read_line(&mut stream, &mut pending, deadline)? {
            Line::Complete(l) => l,
            Line::Eof => return Ok(()),
            Line::TooLong => {
                // The rest of the line may be huge: answer and hang up rather than drain.
                let e = ApiError::TooLarge {
                    limit: MAX_REQUEST_LEN,
                };
                return send(&mut stream, &Response::Err(e));
            }
            Line::TimedOut => {
                let e = ApiError::Timeout(limits.line_timeout);
                return send(&mut stream, &Response::Err(e));
            }
        };
        let response = match parse_request(&line) {
            Ok(req) => {
                log::info!("control API: {}", req.to_json());
                let resp = execute(control, &req);
                if req == Request::Shutdown {
                    // Answer first: once the main loop has the event, the process may exit.
                    let sent = send(&mut stream, &resp);
                    if let Err(e) = control.shutdown() {
                        // Only when the main loop is already stopping the VM.
                        log::debug!("control API: shutdown: {e}");
                    }
                    return sent;
                }
                resp
            }
            Err(e) => {
                log::debug!("control API: bad request: {e}");
                Response::Err(e)
            }
        };
        send(&mut stream, &response)?;
    }
}

/// Why `vmm remote` failed before getting an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("talking to {}: {source}", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server hung up without answering.
    #[error("{} closed the connection without answering", .0.display())]
    NoAnswer(PathBuf),
    /// The answer was not a JSON object with a boolean `ok`.
    #[error("invalid response from {}: {reason}", path.display())]
    BadResponse {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// A response as the client sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientAnswer {
    /// The raw response line.
    pub line: String,
    /// Its `ok` field.
    pub ok: bool,
    /// `error.message` when `ok` is false.
    pub error: Option<String>,
}

/// Sends `req` to the server at `path` and returns its answer.
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<ClientAnswer, ClientError> {
    let mut stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let io_err = |source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    };
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io_err)?;
    let mut line = req.to_json();
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io_err)?;
    let mut pending = Vec::new();
    let deadline = Instant::now() + timeout;
    let line = match read_line(&mut stream, &mut pending, deadline).map_err(io_err)? {
        Line::Complete(l) => l,
        Line::Eof => return Err(ClientError::NoAnswer(path.to_path_buf())),
        Line::TooLong => {
            return Err(ClientError::BadResponse {
                path: path.to_path_buf(),
                reason: "response line too long".into(),
            })
        }
        Line::TimedOut => {
            return Err(io_err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no response within {timeout:?}"),
            )))
        }
    };
    let bad = |reason: String| ClientError::BadResponse {
        path: path.to_path_buf(),
        reason,
    };
    let text = String::from_utf8(line).map_err(|_| bad("not UTF-8".into()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
    let ok = v
        .get("ok")
        .and_then(serde_json::Value::as_bool)
        .ok_or_else(|| bad("no boolean 'ok' field".into()))?;
    let error = if ok {
        None
    } else {
        let e = v.get("error");
        let msg = e
            .and_then(|e| e.get("message"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown error");
        let kind = e
            .and_then(|e| e.get("kind"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown");
        Some(format!("{msg} ({kind})"))
    };
    Ok(ClientAnswer {
        line: text,
        ok,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::{StatsInfo, VcpuInfo};
    use serde_json::Value;
    use std::io::BufRead;

    /// A VM stand-in: 4 slots, `n` present, a pause flag.
    struct Fake {
        n: Mutex<usize>,
        paused: AtomicBool,
        shutdowns: AtomicUsize,
    }

    impl Fake {
        fn new() -> Arc<Fake> {
            Arc::new(Fake {
                n: Mutex::new(1),
                paused: AtomicBool::new(false),
                shutdowns: AtomicUsize::new(0),
            })
        }
    }

    impl Control for Fake {
        fn pause(&self) -> Result<(), ApiError> {
            self.paused.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn resume(&self) -> Result<(), ApiError> {
            if self.paused.swap(false, Ordering::SeqCst) {
                Ok(())
            } else {
                Err(ApiError::NotPaused)
            }
        }
        fn resize(&self, cpus: usize) -> Result<ResizeOutcome, ApiError> {
            if cpus > 4 {
                return Err(ApiError::AboveMax {
                    requested: cpus,
                    max: 4,
                });
            }
            *self.n.lock().unwrap() = cpus;
            Ok(ResizeOutcome {
                cpus,
                ..Default::default()
            })
        }
        fn info(&self) -> VmInfo {
            let n = *self.n.lock().unwrap();
            VmInfo {
                boot_vcpus: 1,
                max_vcpus: 4,
                active_vcpus: n,
                memory_size: 0,
                paused: self.paused.load(Ordering::SeqCst),
                ged_notifications: 0,
                ged_notification_held: false,
                pending_insertions: vec![],
                pending_removals: vec![],
                stats: StatsInfo {
                    pauses: 0,
                    pauses_overlapping_mmio: 0,
                    pauses_during_hotplug_access: 0,
                    pauses_during_eject: 0,
                    pauses_during_reap: 0,
                    rekicks: 0,
                    ejects: 0,
                },
                vcpus: (0..4)
                    .map(|i| VcpuInfo {
                        index: i,
                        state: if i < n { "running" } else { "absent" },
                        life: "active".into(),
                        location: "in guest mode".into(),
                        inserting: false,
                        removing: false,
                        remove_requested: false,
                        paused: false,
                        kicks: 0,
                    })
                    .collect(),
            }
        }
        fn shutdown(&self) -> Result<(), ApiError> {
            self.shutdowns.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn sock_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vmm-api-unit-{}-{name}.sock", std::process::id()))
    }

    fn start(name: &str, limits: ServerLimits) -> (ApiServer, Arc<Fake>) {
        let fake = Fake::new();
        let path = sock_path(name);
        let _ = std::fs::remove_file(&path);
        let server = ApiServer::start_with(&path, fake.clone(), limits).unwrap();
        (server, fake)
    }

    fn roundtrip(stream: &mut UnixStream, line: &[u8]) -> Value {
        stream.write_all(line).unwrap();
        stream.write_all(b"\n").unwrap();
        let mut r = io::BufReader::new(stream.try_clone().unwrap());
        let mut resp = String::new();
        r.read_line(&mut resp).unwrap();
        serde_json::from_str(&resp).unwrap()
    }

    #[test]
    fn requests_and_errors_over_a_socket() {
        let (server, fake) = start("basic", ServerLimits::default());
        let mode = std::fs::metadata(server.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut c = UnixStream::connect(server.path()).unwrap();
        assert_eq!(roundtrip(&mut c, br#"{"command":"pause"}"#)["ok"], true);
        assert_eq!(roundtrip(&mut c, br#"{"command":"resume"}"#)["ok"], true);
        let v = roundtrip(&mut c, br#"{"command":"resume"}"#);
        assert_eq!(v["error"]["kind"], "not_paused");
        let v = roundtrip(&mut c, br#"{"command":"resize","cpus":3}"#);
        assert_eq!(v["cpus"], 3);
        let v = roundtrip(&mut c, br#"{"command":"info"}"#);
        assert_eq!(v["active_vcpus"], 3);
        let v = roundtrip(&mut c, b"\xff\xfe");
        assert_eq!(v["error"]["kind"], "malformed_json");
        let v = roundtrip(&mut c, br#"{"command":"resize","cpus":9}"#);
        assert_eq!(v["error"]["kind"], "above_max");
        assert_eq!(fake.shutdowns.load(Ordering::SeqCst), 0);
        let v = roundtrip(&mut c, br#"{"command":"shutdown"}"#);
        assert_eq!(v["ok"], true);
        // Shutdown hangs up after answering.
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(fake.shutdowns.load(Ordering::SeqCst), 1);
        let path = server.path().to_path_buf();
        drop(server);
        assert!(!path.exists(), "socket file left behind");
    }

    #[test]
    fn pipelined_requests_in_one_write() {
        let (server, _fake) = start("pipelined", ServerLimits::default());
        let mut c = UnixStream::connect(server.path()).unwrap();
        c.write_all(b"{\"command\":\"pause\"}\n{\"command\":\"info\"}\n")
            .unwrap();
        let mut r = io::BufReader::new(c);
        let mut a = String::new();
        let mut b = String::new();
        r.read_line(&mut a).unwrap();
        r.read_line(&mut b).unwrap();
        let b: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(b["paused"], true);
    }

    #[test]
    fn oversized_line_is_refused_and_connection_closed() {
        let (server, _fake) = start("big", ServerLimits::default());
        let mut c = UnixStream::connect(server.path()).unwrap();
        let big = vec![b'x'; MAX_REQUEST_LEN + 10];
        // The server may hang up before reading everything.
        let _ = c.write_all(&big);
        let mut resp = String::new();
        let _ = io::BufReader::new(c).read_line(&mut resp);
        let v: Value = serde_json::from_str(&resp).unwrap();
        assert_eq!(v["error"]["kind"], "too_large");
        // Others are unaffected.
        let mut d = UnixStream::connect(server.path()).unwrap();
        assert_eq!(roundtrip(&mut d, br#"{"command":"info"}"#)["ok"], true);
    }

    #[test]
    fn silent_client_times_out_without_blocking_others() {
        let limits = ServerLimits {
            line_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let (server, _fake) = start("silent", limits);
        let silent = UnixStream::connect(server.path()).unwrap();
        let mut partial = UnixStream::connect(server.path()).unwrap();
        partial.write_all(br#"{"command":"#).unwrap();
        let mut c = UnixStream::connect(server.path()).unwrap();
        assert_eq!(roundtrip(&mut c, br#"{"command":"info"}"#)["ok"], true);
        for s in [silent, partial] {
            let mut resp = String::new();
            io::BufReader::new(s).read_line(&mut resp).unwrap();
            let v: Value = serde_json::from_str(&resp).unwrap();
            assert_eq!(v["error"]["kind"], "timeout");
        }
    }

    #[test]
    fn connection_limit() {
        let limits = ServerLimits {
            max_connections: 2,
            ..Default::default()
        };
        let (server, _fake) = start("limit", limits);
        let mut a = UnixStream::connect(server.path()).unwrap();
        let mut b = UnixStream::connect(server.path()).unwrap();
        // Make sure both are being served before the third arrives.
        assert_eq!(roundtrip(&mut a, br#"{"command":"info"}"#)["ok"], true);
        assert_eq!(roundtrip(&mut b, br#"{"command":"info"}"#)["ok"], true);
        let c = UnixStream::connect(server.path()).unwrap();
        let mut resp = String::new();
        io::BufReader::new(c).read_line(&mut resp).unwrap();
        let v: Value = serde_json::from_str(&resp).unwrap();
        assert_eq!(v["error"]["kind"], "busy");
        drop(a);
        // The slot frees up once the thread notices the hang-up.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // While still busy the server may answer and hang up before our request is
            // written, so a failed write or read here just means "not yet".
            let ok = UnixStream::connect(server.path()).ok().and_then(|mut d| {
                d.write_all(b"{\"command\":\"info\"}\n").ok()?;
                let mut resp = String::new();
                io::BufReader::new(d).read_line(&mut resp).ok()?;
                serde_json::from_str::<Value>(&resp).ok()
            });
            if ok.is_some_and(|v| v["ok"] == true) {
                break;
            }
            assert!(Instant::now() < deadline, "connection slot never freed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn socket_path_rules() {
        // A regular file is never clobbered.
        let path = sock_path("regular");
        std::fs::write(&path, b"precious").unwrap();
        let err = ApiServer::start(&path, Fake::new()).unwrap_err();
        assert!(matches!(err, ServerError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();

        // A live socket is in use; a dead one is replaced.
        let path = sock_path("live");
        let _ = std::fs::remove_file(&path);
        let first = ApiServer::start(&path, Fake::new()).unwrap();
        let err = ApiServer::start(&path, Fake::new()).unwrap_err();
        assert!(matches!(err, ServerError::InUse(_)), "{err}");
        drop(first);
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale); // leaves the file behind with nobody listening
        assert!(path.exists());
        let second = ApiServer::start(&path, Fake::new()).unwrap();
        let mut c = UnixStream::connect(&path).unwrap();
        assert_eq!(roundtrip(&mut c, br#"{"command":"info"}"#)["ok"], true);
        drop(second);
        assert!(!path.exists());

        let long = std::env::temp_dir().join("x".repeat(200));
        let err = ApiServer::start(&long, Fake::new()).unwrap_err();
        assert!(matches!(err, ServerError::PathTooLong { .. }), "{err}");
    }

    #[test]
    fn client_reports_errors() {
        let (server, _fake) = start("client", ServerLimits::default());
        let t = Duration::from_secs(10);
        let a = request(server.path(), &Request::Info, t).unwrap();
        assert!(a.ok, "{}", a.line);
        let a = request(server.path(), &Request::Resume, t).unwrap();
        assert!(!a.ok);
        assert_eq!(
            a.error.as_deref(),
            Some("the VM is not paused (not_paused)")
        );
        let missing = sock_path("nobody");
        assert!(matches!(
            request(&missing, &Request::Info, t),
            Err(ClientError::Connect { .. })
        ));
    }
}
