//! The HTTP/1.1 server on the API socket: `hyper` does the HTTP, this module owns the socket
//! (created mode 0600, stale sockets replaced), the accept loop and the per-connection
//! bounds. One thread runs a single-threaded `tokio` runtime for every connection. Quick
//! requests are answered on it, and so is a pause every vCPU acknowledges within
//! [`super::QUICK_PAUSE`]; the rest of a slower pause (it waits up to
//! [`super::PAUSE_TIMEOUT`]) and the other [`Control`] calls run on its blocking pool, so a
//! slow request holds up another connection by at most `QUICK_PAUSE`.
//!
//! Bounds: request headers at most [`MAX_HEADER_BUF`] bytes (hyper answers 431 past that),
//! bodies at most [`MAX_BODY_LEN`] (413) and complete within [`ServerLimits::idle_timeout`]
//! (408); a connection with no request in progress for `idle_timeout` (silent, idle
//! keep-alive or stuck mid-headers) is closed. At most [`ServerLimits::max_connections`]
//! connections are served; when a new one arrives at the limit, the longest-idle
//! connection is closed to make room, so idle clients never lock others out. Only when
//! every slot has a request in progress is the newcomer served as overflow: it may ask for
//! `vm.shutdown` / `vmm.shutdown` (so a shutdown always gets through) and gets 503 `busy`
//! for anything else.

use super::request::{parse_request, ApiError, MAX_BODY_LEN};
use super::{execute, execute_quick, Control, Reply};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Largest request head (request line and headers) hyper buffers, in bytes.
pub const MAX_HEADER_BUF: usize = 16 * 1024;

/// Per-connection bounds.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// A connection with no request in progress is closed after this long; a request's
    /// headers and body must arrive within it.
    pub idle_timeout: Duration,
    /// Connections served at once (see the module docs for what happens past it).
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            idle_timeout: Duration::from_secs(60),
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

/// A running API server. Dropping it stops serving and removes the socket file.
pub struct ApiServer {
    path: PathBuf,
    /// (device, inode) of the socket we created, so drop never removes someone else's.
    ident: (u64, u64),
    stop: Arc<Notify>,
    thread: Option<JoinHandle<()>>,
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
        let cleanup = |e: ServerError| {
            let _ = std::fs::remove_file(path);
            e
        };
        let meta = std::fs::symlink_metadata(path)
            .map_err(io_err("cannot stat"))
            .map_err(cleanup)?;
        let ident = (meta.dev(), meta.ino());
        listener
            .set_nonblocking(true)
            .map_err(io_err("cannot set up"))
            .map_err(cleanup)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name("api-blocking")
            .build()
            .map_err(io_err("cannot start the server runtime for"))
            .map_err(cleanup)?;
        let stop = Arc::new(Notify::new());
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("api-server".into())
            .spawn(move || {
                // The blocking pool's threads (and vCPU threads hot-added from them) are
                // spawned from here and inherit this filter.
                crate::seccomp::enter_or_log(crate::seccomp::ThreadKind::Api);
                runtime.block_on(accept_loop(listener, control, limits, stop2));
                // A request still running on the blocking pool (a pause) is bounded; do not
                // wait for it here.
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(io_err("cannot start the server thread for"))
            .map_err(cleanup)?;
        log::info!("API listening at {}", path.display());
        Ok(ApiServer {
            path: path.to_path_buf(),
            ident,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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

/// What the accept loop knows about one served connection.
struct ConnState {
    /// A request is being handled (from its head to its response).
    busy: AtomicBool,
    /// When the last request finished (or the connection was accepted).
    idle_since: Mutex<Instant>,
    /// Asks the connection to close (when idle; a request in progress is finished first).
    close: Notify,
    /// A shutdown request was answered: carry it out once the answer is out.
    shutdown: AtomicBool,
}

impl ConnState {
    fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            busy: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            close: Notify::new(),
            shutdown: AtomicBool::new(false),
        })
    }

    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The served connections (their tasks remove themselves when they end).
#[derive(Default)]
struct Table {
    conns: Mutex<Vec<(u64, Arc<ConnState>)>>,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Arc<ConnState>)>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes a connection from the table when its task ends.
struct Registered {
    table: Arc<Table>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.table.lock().retain(|(id, _)| *id != self.id);
    }
}

/// Counts overflow connections (served while every slot is busy).
struct Overflow(Arc<AtomicUsize>);

impl Drop for Overflow {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: UnixListener,
    control: Arc<dyn Control>,
    limits: ServerLimits,
    stop: Arc<Notify>,
) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("control API: cannot serve the socket: {e}");
            return;
        }
    };
    let table = Arc::new(Table::default());
    let overflow = Arc::new(AtomicUsize::new(0));
    let mut next_id = 0u64;
    loop {
        let stream = tokio::select! {
            _ = stop.notified() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("control API: accept failed: {e}");
                    // EMFILE and friends: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let admitted = {
            let mut conns = table.lock();
            if conns.len() >= limits.max_connections {
                // Make room: close the longest-idle connection, if any is idle.
                let victim = conns
                    .iter()
                    .filter(|(_, c)| !c.busy.load(Ordering::SeqCst))
                    .min_by_key(|(_, c)| c.idle_since())
                    .map(|(id, c)| (*id, c.clone()));
                if let Some((id, c)) = victim {
                    log::debug!("control API: closing idle connection {id} to admit another");
                    conns.retain(|(i, _)| *i != id);
                    c.close.notify_one();
                }
            }
            if conns.len() < limits.max_connections {
                let state = ConnState::new();
                conns.push((next_id, state.clone()));
                Some(state)
            } else {
                None
            }
        };
        let control = control.clone();
        match admitted {
            Some(state) => {
                let reg = Registered {
                    table: table.clone(),
                    id: next_id,
                };
                tokio::spawn(async move {
                    let _reg = reg;
                    serve_connection(stream, control, state, limits, false).await;
                });
            }
            None if overflow.fetch_add(1, Ordering::SeqCst) < limits.max_connections => {
                let guard = Overflow(overflow.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    serve_connection(stream, control, ConnState::new(), limits, true).await;
                });
            }
            None => {
                overflow.fetch_sub(1, Ordering::SeqCst);
                log::warn!("control API: too many connections; dropping one");
            }
        }
    }
}

/// Serves one connection until the client hangs up, it idles past the limit, the accept
/// loop asks it to make room, or it asked for a shutdown (answered, then carried out).
async fn serve_connection(
    stream: tokio::net::UnixStream,
    control: Arc<dyn Control>,
    state: Arc<ConnState>,
    limits: ServerLimits,
    overflow: bool,
) {
    let svc_state = state.clone();
    let svc_control = control.clone();
    let service = hyper::service::service_fn(move |req| {
        let state = svc_state.clone();
        let control = svc_control.clone();
        async move {
            state.busy.store(true, Ordering::SeqCst);
            let resp = handle(req, control, &state, limits, overflow).await;
            *state.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            state.busy.store(false, Ordering::SeqCst);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(MAX_HEADER_BUF)
        .keep_alive(!overflow);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    loop {
        let idle_deadline = if state.busy.load(Ordering::SeqCst) {
            Instant::now() + limits.idle_timeout
        } else {
            state.idle_since() + limits.idle_timeout
        };
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    log::debug!("control API connection ended: {e}");
                }
                break;
            }
            _ = state.close.notified() => {
                // At once if idle; a request in progress is finished first (bounded).
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.idle_timeout, conn.as_mut()).await;
                break;
            }
            _ = tokio::time::sleep_until(idle_deadline.into()) => {
                let idle = !state.busy.load(Ordering::SeqCst)
                    && state.idle_since().elapsed() >= limits.idle_timeout;
                if idle {
                    log::debug!("control API: closing a connection idle for {:?}", limits.idle_timeout);
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.idle_timeout, conn.as_mut()).await;
                    break;
                }
            }
        }
    }
    if state.shutdown.load(Ordering::SeqCst) {
        // The answer is out (the connection was closed after it): now stop the VM.
        if let Err(e) = control.shutdown() {
            // Only when the main loop is already stopping the VM.
            log::debug!("control API: shutdown: {e}");
        }
    }
}

/// One request: read the (bounded) body, parse, run it on the blocking pool, answer.
async fn handle(
    req: hyper::Request<Incoming>,
    control: Arc<dyn Control>,
    state: &ConnState,
    limits: ServerLimits,
    overflow: bool,
) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let body = Limited::new(req.into_body(), MAX_BODY_LEN).collect();
    let body = match tokio::time::timeout(limits.idle_timeout, body).await {
        Err(_) => return error_response(&ApiError::BodyTimeout(limits.idle_timeout)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return error_response(&ApiError::TooLarge {
                limit: MAX_BODY_LEN,
            })
        }
        Ok(Err(e)) => {
            return error_response(&ApiError::Malformed(format!("cannot read the body: {e}")))
        }
        Ok(Ok(b)) => b.to_bytes(),
    };
    let request = match parse_request(&method, &path, &body) {
        Ok(r) => r,
        Err(e) => {
            log::debug!("control API: {method} {path}: {e}");
            return error_response(&e);
        }
    };
    if request.is_shutdown() {
        log::info!("control API: {method} {path}: shutting down");
        state.shutdown.store(true, Ordering::SeqCst);
        let mut resp = reply_response(Reply::no_content());
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    if overflow {
        return error_response(&ApiError::Busy(limits.max_connections));
    }
    log::debug!("control API: {method} {path}");
    // Answered right here when that is quick: a hop through the blocking pool and back
    // costs two thread wake-ups, each racing the vCPU threads a resume has just woken.
    if let Some(answer) = execute_quick(&*control, &request) {
        return match answer {
            Ok(reply) => reply_response(reply),
            Err(e) => error_response(&e),
        };
    }
    match tokio::task::spawn_blocking(move || execute(&*control, &request)).await {
        Ok(Ok(reply)) => reply_response(reply),
        Ok(Err(e)) => error_response(&e),
        Err(e) => error_response(&ApiError::Vcpu(format!("the request failed: {e}"))),
    }
}

fn json_response(status: u16, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn reply_response(reply: Reply) -> Response<Full<Bytes>> {
    match reply.body {
        Some(body) => json_response(reply.status, &body),
        None => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() =
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            resp
        }
    }
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let mut resp = json_response(e.status(), &e.to_json());
    if let ApiError::MethodNotAllowed { allowed, .. } = e {
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static(allowed));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::client::Connection;
    use crate::api::Request;
    use crate::vm::{ResizeOutcome, StatsInfo, VcpuInfo, VmInfo};
    use std::io::{Read, Write};
    use std::sync::Condvar;

    const T: Duration = Duration::from_secs(10);

    /// A VM stand-in: 4 slots, `n` present, a pause flag; `pause` blocks while `hold` is set
    /// and `try_pause` then runs out of patience (as a real VM's does when its vCPUs are
    /// slow to acknowledge), otherwise pauses at once.
    struct Fake {
        n: Mutex<usize>,
        paused: AtomicBool,
        shutdowns: AtomicUsize,
        hold: Mutex<bool>,
        released: Condvar,
        pausing: AtomicUsize,
        /// Calls of `pause` and pauses `try_pause` completed.
        slow_pauses: AtomicUsize,
        quick_pauses: AtomicUsize,
    }

    impl Fake {
        fn new() -> Arc<Fake> {
            Arc::new(Fake {
                n: Mutex::new(1),
                paused: AtomicBool::new(false),
                shutdowns: AtomicUsize::new(0),
                hold: Mutex::new(false),
                released: Condvar::new(),
                pausing: AtomicUsize::new(0),
                slow_pauses: AtomicUsize::new(0),
                quick_pauses: AtomicUsize::new(0),
            })
        }

        fn set_hold(&self, on: bool) {
            *self.hold.lock().unwrap() = on;
            self.released.notify_all();
        }
    }

    impl Control for Fake {
        fn try_pause(&self, _patience: Duration) -> Result<bool, ApiError> {
            if *self.hold.lock().unwrap() {
                return Ok(false);
            }
            self.quick_pauses.fetch_add(1, Ordering::SeqCst);
            self.paused.store(true, Ordering::SeqCst);
            Ok(true)
        }
        fn pause(&self) -> Result<(), ApiError> {
            self.slow_pauses.fetch_add(1, Ordering::SeqCst);
            self.pausing.fetch_add(1, Ordering::SeqCst);
            let g = self.hold.lock().unwrap();
            let _g = self
                .released
                .wait_timeout_while(g, Duration::from_secs(20), |h| *h)
                .unwrap();
            self.pausing.fetch_sub(1, Ordering::SeqCst);
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

    fn send(path: &Path, req: &Request) -> crate::api::client::Answer {
        Connection::connect(path).unwrap().send(req, T).unwrap()
    }

    /// Waits until the server closes `s` (EOF); the time it took, or None past `within`.
    fn closed_within(s: &mut UnixStream, within: Duration) -> Option<Duration> {
        let t = Instant::now();
        s.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Some(t.elapsed()),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    #[test]
    fn requests_and_errors_over_a_socket() {
        let (server, fake) = start("basic", ServerLimits::default());
        let mode = std::fs::metadata(server.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut c = Connection::connect(server.path()).unwrap();
        let a = c.send(&Request::Pause, T).unwrap();
        assert_eq!((a.status, a.text.as_str()), (204, ""));
        assert_eq!(c.send(&Request::Resume, T).unwrap().status, 204);
        let a = c.send(&Request::Resume, T).unwrap();
        assert_eq!(a.status, 409);
        assert_eq!(a.body.as_ref().unwrap()["kind"], "not_paused");
        assert_eq!(
            a.error().unwrap(),
            "the VM is not paused (not_paused, HTTP 409)"
        );
        let a = c.send(&Request::Resize { desired_vcpus: 3 }, T).unwrap();
        assert_eq!((a.status, a.body.unwrap()["cpus"].clone()), (200, 3.into()));
        let a = c.send(&Request::Info, T).unwrap();
        assert_eq!(a.body.unwrap()["active_vcpus"], 3);
        let a = c.send(&Request::Resize { desired_vcpus: 9 }, T).unwrap();
        assert_eq!(
            (a.status, a.body.unwrap()["kind"].clone()),
            (400, "above_max".into())
        );
        assert_eq!(fake.shutdowns.load(Ordering::SeqCst), 0);
        let a = c.send(&Request::VmmShutdown, T).unwrap();
        assert_eq!(a.status, 204);
        // Carried out once the answer is out.
        let deadline = Instant::now() + T;
        while fake.shutdowns.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "shutdown never carried out");
            std::thread::sleep(Duration::from_millis(10));
        }
        let path = server.path().to_path_buf();
        drop(server);
        assert!(!path.exists(), "socket file left behind");
        assert_eq!(fake.shutdowns.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn idle_and_stuck_connections_are_closed() {
        let limits = ServerLimits {
            idle_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let (server, _fake) = start("idle", limits);
        let mut silent = UnixStream::connect(server.path()).unwrap();
        let mut partial = UnixStream::connect(server.path()).unwrap();
        partial
            .write_all(b"GET /api/v1/vm.info HTTP/1.1\r\nHo")
            .unwrap();
        // A body that never completes is answered 408.
        let mut body = UnixStream::connect(server.path()).unwrap();
        body.write_all(
            b"PUT /api/v1/vm.resize HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"des",
        )
        .unwrap();
        // A kept-alive client that goes quiet after a request.
        let mut kept = UnixStream::connect(server.path()).unwrap();
        kept.write_all(b"GET /api/v1/vm.info HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(send(server.path(), &Request::Info).status, 200);
        for (name, s) in [
            ("silent", &mut silent),
            ("partial", &mut partial),
            ("kept", &mut kept),
        ] {
            let took = closed_within(s, Duration::from_secs(5))
                .unwrap_or_else(|| panic!("{name} connection never closed"));
            assert!(took < Duration::from_secs(3), "{name}: {took:?}");
        }
        body.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        let _ = body.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(out.contains("\"kind\":\"timeout\""), "{out}");
    }

    #[test]
    fn idle_connections_make_room_for_new_ones() {
        let limits = ServerLimits {
            max_connections: 2,
            ..Default::default()
        };
        let (server, _fake) = start("evict", limits);
        let mut a = UnixStream::connect(server.path()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut b = UnixStream::connect(server.path()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // Both slots are taken by idle clients; a third is served at once.
        let t = Instant::now();
        assert_eq!(send(server.path(), &Request::Info).status, 200);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // The longest-idle one (a) was closed for it; b is still served.
        assert!(
            closed_within(&mut a, Duration::from_secs(2)).is_some(),
            "a not evicted"
        );
        b.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        b.set_read_timeout(Some(T)).unwrap();
        let mut buf = [0u8; 12];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }

    #[test]
    fn a_quick_pause_is_answered_in_place_and_a_slow_one_finishes_on_the_pool() {
        let (server, fake) = start("quick", ServerLimits::default());
        let path = server.path().to_path_buf();
        assert_eq!(send(&path, &Request::Pause).status, 204);
        assert_eq!(fake.quick_pauses.load(Ordering::SeqCst), 1);
        assert_eq!(fake.slow_pauses.load(Ordering::SeqCst), 0);
        assert_eq!(send(&path, &Request::Resume).status, 204);
        // Out of patience: the same request is finished by the blocking `pause`, and the
        // server keeps answering others meanwhile.
        fake.set_hold(true);
        let pauser = {
            let path = path.clone();
            std::thread::spawn(move || send(&path, &Request::Pause).status)
        };
        let deadline = Instant::now() + T;
        while fake.pausing.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the slow pause never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(send(&path, &Request::Info).status, 200);
        fake.set_hold(false);
        assert_eq!(pauser.join().unwrap(), 204);
        assert_eq!(fake.quick_pauses.load(Ordering::SeqCst), 1);
        assert_eq!(fake.slow_pauses.load(Ordering::SeqCst), 1);
        assert!(fake.paused.load(Ordering::SeqCst));
    }

    #[test]
    fn shutdown_gets_through_when_every_slot_is_busy() {
        let limits = ServerLimits {
            max_connections: 2,
            ..Default::default()
        };
        let (server, fake) = start("busy", limits);
        fake.set_hold(true);
        let path = server.path().to_path_buf();
        let pausers: Vec<_> = (0..2)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || send(&path, &Request::Pause).status)
            })
            .collect();
        let deadline = Instant::now() + T;
        while fake.pausing.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "pauses never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Every slot has a request in progress: others are refused as busy...
        let a = send(&path, &Request::Info);
        assert_eq!(a.status, 503);
        assert_eq!(a.body.unwrap()["kind"], "busy");
        // ...but a shutdown is answered and carried out.
        let a = send(&path, &Request::VmShutdown);
        assert_eq!(a.status, 204);
        let deadline = Instant::now() + T;
        while fake.shutdowns.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "shutdown never carried out");
            std::thread::sleep(Duration::from_millis(10));
        }
        fake.set_hold(false);
        for p in pausers {
            assert_eq!(p.join().unwrap(), 204);
        }
    }

    #[test]
    fn a_kept_connection_survives_the_servers_idle_close() {
        let limits = ServerLimits {
            idle_timeout: Duration::from_millis(200),
            ..Default::default()
        };
        let (server, fake) = start("reconnect", limits);
        let mut c = Connection::connect(server.path()).unwrap();
        for round in 0..3 {
            assert_eq!(
                c.send(&Request::Pause, T).unwrap().status,
                204,
                "round {round}"
            );
            // The server closes the quiet connection; the client opens a new one and the
            // request runs exactly once.
            std::thread::sleep(Duration::from_millis(600));
            assert_eq!(
                c.send(&Request::Resume, T).unwrap().status,
                204,
                "round {round}"
            );
            assert!(!fake.paused.load(Ordering::SeqCst));
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
        assert_eq!(send(&path, &Request::Ping).status, 200);
        drop(second);
        assert!(!path.exists());

        let long = std::env::temp_dir().join("x".repeat(200));
        let err = ApiServer::start(&long, Fake::new()).unwrap_err();
        assert!(matches!(err, ServerError::PathTooLong { .. }), "{err}");
    }

    #[test]
    fn client_reports_errors() {
        let missing = sock_path("nobody");
        assert!(matches!(
            crate::api::client::request(&missing, &Request::Info, T),
            Err(crate::api::ClientError::Connect { .. })
        ));
    }
}
