//! Helpers shared by the VMM's integration tests (boot, hotplug, pause storms): locating
//! the guest, spawning the `vmm` binary, collecting its serial output line by line on a
//! reader thread, and waiting for lines or exit with hard timeouts.

#![allow(dead_code)]

pub mod hard;
pub mod openapi;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `vmm` binary under test.
pub fn vmm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vmm")
}

/// The workspace root (guest files live under its `target/guest`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm crate lives in the workspace")
        .to_path_buf()
}

/// Paths of the guest kernel and initramfs.
pub struct Guest {
    /// target/guest/bzImage
    pub kernel: PathBuf,
    /// target/guest/initramfs.cpio.gz
    pub initramfs: PathBuf,
}

/// The guest built by `scripts/guest.sh`; fails the test with instructions if missing.
pub fn guest() -> Guest {
    let dir = std::env::var_os("VMM_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/guest"));
    let g = Guest {
        kernel: dir.join("bzImage"),
        initramfs: dir.join("initramfs.cpio.gz"),
    };
    for p in [&g.kernel, &g.initramfs] {
        assert!(
            p.is_file(),
            "guest file {} is missing: run `bash scripts/guest.sh` first",
            p.display()
        );
    }
    g
}

/// Polls `f` until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Whether real-KVM tests should run. Without /dev/kvm they fail with a clear message,
/// unless VMM_ALLOW_NO_KVM=1 says skipping is acceptable (then this returns false).
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if ok {
        return true;
    }
    if std::env::var("VMM_ALLOW_NO_KVM").as_deref() == Ok("1") {
        eprintln!("SKIPPED: /dev/kvm is not usable and VMM_ALLOW_NO_KVM=1");
        return false;
    }
    panic!("/dev/kvm is not usable (missing or no permission); these tests need KVM. Set VMM_ALLOW_NO_KVM=1 to skip them.");
}

/// How long a guest may take to boot. Overridable with VMM_TEST_BOOT_TIMEOUT_SECS for slow
/// hosts (software-emulated virtualization boots in minutes, hardware KVM in seconds).
pub fn boot_timeout() -> Duration {
    let secs = std::env::var("VMM_TEST_BOOT_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

/// Guests are heavy; booting several at once on a small host only makes each slower and
/// the timeouts flakier. Tests that boot hold this for the guest's lifetime.
pub fn guest_slot() -> MutexGuard<'static, ()> {
    static SLOT: Mutex<()> = Mutex::new(());
    SLOT.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    /// When each line arrived, since spawn (a failure report shows them).
    arrived: Vec<Duration>,
    stdout_closed: bool,
}

/// A running `vmm` with its stdout collected line by line and stderr collected whole.
pub struct VmmProcess {
    child: Child,
    out: Arc<(Mutex<Output>, Condvar)>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    status: Option<ExitStatus>,
}

impl VmmProcess {
    /// Spawns `vmm` with `args`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> VmmProcess {
        Self::spawn_program(vmm_bin().as_ref(), args)
    }

    /// Spawns another VMM (a peer such as QEMU, for benchmarks) the same way: stdout
    /// collected line by line, stderr whole.
    pub fn spawn_program<S: AsRef<std::ffi::OsStr>>(
        program: &std::ffi::OsStr,
        args: &[S],
    ) -> VmmProcess {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.to_string_lossy()));
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout_pipe = child.stdout.take().expect("stdout pipe");
        let mut stderr_pipe = child.stderr.take().expect("stderr pipe");
        let out2 = out.clone();
        let started = Instant::now();
        let r1 = std::thread::spawn(move || {
            // Serial output may contain stray non-UTF-8 bytes: read bytes, convert lossily.
            let mut reader = BufReader::new(stdout_pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_string();
                        let (m, cv) = &*out2;
                        let mut o = m.lock().unwrap();
                        o.lines.push(line);
                        o.arrived.push(started.elapsed());
                        drop(o);
                        cv.notify_all();
                    }
                }
            }
            let (m, cv) = &*out2;
            m.lock().unwrap().stdout_closed = true;
            cv.notify_all();
        });
        let err2 = stderr.clone();
        let r2 = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err2.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        VmmProcess {
            child,
            out,
            stderr,
            readers: vec![r1, r2],
            started,
            status: None,
        }
    }

    /// Boots the test guest with extra `args` (e.g. `--cpus`, `--cmdline`).
    pub fn boot(guest: &Guest, extra: &[&str]) -> VmmProcess {
        let mut args: Vec<String> = vec![
            "--kernel".into(),
            guest.kernel.display().to_string(),
            "--initramfs".into(),
            guest.initramfs.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        VmmProcess::spawn(&args)
    }

    /// Time since spawn.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until a stdout line satisfies `pred`; returns it, or None on timeout or when
    /// stdout closes first.
    pub fn wait_for_line(
        &self,
        timeout: Duration,
        pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        self.wait_for_line_from(0, timeout, pred).map(|(_, l)| l)
    }

    /// [`VmmProcess::wait_for_line`] looking only at lines from index `from` on; returns
    /// the matching line's index too.
    pub fn wait_for_line_from(
        &self,
        from: usize,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.out;
        let mut seen = from;
        let mut g = m.lock().unwrap();
        loop {
            while seen < g.lines.len() {
                if pred(&g.lines[seen]) {
                    return Some((seen, g.lines[seen].clone()));
                }
                seen += 1;
            }
            if g.stdout_closed {
                return None;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line starting with `prefix`.
    pub fn wait_for_prefix(&self, timeout: Duration, prefix: &str) -> Option<String> {
        self.wait_for_line(timeout, |l| l.starts_with(prefix))
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.out.0.lock().unwrap().lines.clone()
    }

    /// Stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the process to exit; kills it and returns None after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                self.status = Some(s);
                self.join_readers();
                return Some(s);
            }
            if Instant::now() >= deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (idempotent) and collects the rest of its output.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        if let Ok(s) = self.child.wait() {
            self.status = Some(s);
        }
        self.join_readers();
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// A report for assertion messages: the tail of stdout and all of stderr.
    pub fn diagnostics(&self) -> String {
        let tail = {
            let o = self.out.0.lock().unwrap();
            let from = o.lines.len().saturating_sub(60);
            (from..o.lines.len())
                .map(|i| format!("{:>8.3}s {}", o.arrived[i].as_secs_f64(), o.lines[i]))
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "--- last serial lines (arrival since spawn, guest text) ---\n{tail}\n--- {:.3}s now\n--- stderr (a storm's per-pause lines cut short) ---\n{}",
            self.started.elapsed().as_secs_f64(),
            quiet_stderr(&self.stderr())
        )
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill();
        }
    }
}

/// `stderr` with the lines a pause/resume storm prints per request (thousands) cut to the
/// first few and a count: what a failure report needs. Every other line is kept.
pub fn quiet_stderr(stderr: &str) -> String {
    const KEEP: usize = 10;
    let storm = |l: &str| l.contains("vmm::api] pause took") || l.contains("vmm::api] resumed");
    let mut seen = 0usize;
    let mut out = String::with_capacity(stderr.len().min(1 << 20));
    for l in stderr.lines() {
        if storm(l) {
            seen += 1;
            if seen > KEEP {
                continue;
            }
        }
        out.push_str(l);
        out.push('\n');
    }
    if seen > KEEP {
        out.push_str(&format!(
            "({} more pause/resume lines left out)\n",
            seen - KEEP
        ));
    }
    out
}

/// The result of a `vmm` run to completion.
pub struct Finished {
    /// Exit status (None when killed at the timeout).
    pub status: Option<ExitStatus>,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

/// Runs `vmm` with `args` to completion (killed after `timeout`).
pub fn run_vmm<S: AsRef<std::ffi::OsStr>>(args: &[S], timeout: Duration) -> Finished {
    let mut p = VmmProcess::spawn(args);
    let status = p.wait_exit(timeout);
    Finished {
        status,
        stdout: p.lines().join("\n"),
        stderr: p.stderr(),
    }
}

/// The value of `key=` in a `VMTEST ...` line (`VMTEST online=0-1 present=0-3` → key
/// `online` gives `0-1`).
pub fn vmtest_value(line: &str, key: &str) -> Option<String> {
    line.strip_prefix("VMTEST ")?
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// Expands a Linux CPU list (`0-2,5`) into indices.
pub fn cpu_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                out.extend(a..=b);
            }
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

/// A temporary file with `bytes`, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// Creates it under the system temp dir.
    pub fn new(name: &str, bytes: &[u8]) -> TempFile {
        let p = std::env::temp_dir().join(format!("vmm-test-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).expect("write temp file");
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A persistent (keep-alive) HTTP connection to a VMM's control socket, as a client that
/// issues many requests (a storm) keeps it. `call` takes the old command names and answers
/// in the shape the tests match on: `{"ok":true, ...body}` on 2xx,
/// `{"ok":false,"error":{"kind":..,"message":..}}` otherwise.
pub struct ApiConn {
    conn: vmm::api::Connection,
}

/// How long one API call may take (a pause waits up to `vmm::api::PAUSE_TIMEOUT`).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl ApiConn {
    /// Connects to `path`, retrying until `timeout` (the VMM may not listen yet).
    pub fn connect(path: &Path, timeout: Duration) -> Option<ApiConn> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(conn) = vmm::api::Connection::connect(path) {
                return Some(ApiConn { conn });
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `command` (`pause`, `resume`, `resize` with `{"cpus":N}`, `info`, `ping`,
    /// `shutdown`) and returns the answer, or None when the connection broke.
    pub fn call(&mut self, command: &str, args: serde_json::Value) -> Option<serde_json::Value> {
        use vmm::api::Request;
        let req = match command {
            "pause" => Request::Pause,
            "resume" => Request::Resume,
            "info" => Request::Info,
            "ping" => Request::Ping,
            "shutdown" => Request::VmShutdown,
            "resize" => {
                // Sent as given, so a test can send 0 or a huge number and see the refusal.
                let body = serde_json::json!({ "desired_vcpus": args["cpus"] }).to_string();
                return self.raw("PUT", "/api/v1/vm.resize", Some(body));
            }
            other => panic!("ApiConn::call: unknown command {other:?}"),
        };
        self.raw(req.method(), &req.path(), req.body())
    }

    /// Any method, path and body, answered in `call`'s shape.
    pub fn raw(
        &mut self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Option<serde_json::Value> {
        let a = self.conn.raw(method, path, body, CALL_TIMEOUT).ok()?;
        let mut v = serde_json::json!({ "ok": a.is_success(), "status": a.status });
        match a.body {
            Some(serde_json::Value::Object(m)) if a.is_success() => {
                for (k, x) in m {
                    v[k] = x;
                }
            }
            Some(b) if !a.is_success() => v["error"] = b,
            _ => {}
        }
        Some(v)
    }
}

/// Serial lines that mean the guest kernel crashed or hit a bug.
pub fn guest_crash_lines(lines: &[String]) -> Vec<String> {
    const MARKS: [&str; 8] = [
        "Kernel panic",
        "Oops",
        "BUG:",
        "bounds: ",
        "general protection fault",
        "invalid opcode",
        "Call Trace",
        "WARNING: CPU",
    ];
    lines
        .iter()
        .filter(|l| MARKS.iter().any(|m| l.contains(m)))
        .cloned()
        .collect()
}

/// The real guest in watch mode (it onlines hot-added CPUs and prints
/// `VMTEST online=.. present=.. nproc=..` on every change) with its control API.
pub struct GuestVm {
    /// The VMM process.
    pub vm: VmmProcess,
    /// A persistent connection to its API.
    pub api: ApiConn,
    /// The API socket.
    pub socket: PathBuf,
    /// Serial lines already consumed by `expect_cpus`.
    cursor: usize,
}

impl GuestVm {
    /// Starts the VMM (boot/max vCPUs, watch mode) and connects to its API; the guest is
    /// still booting when this returns.
    pub fn spawn_watch(name: &str, boot: usize, max: usize) -> GuestVm {
        Self::spawn_with(name, boot, max, "vmtest.mode=watch", &[])
    }

    /// [`GuestVm::spawn_watch`] with another guest command line and extra VMM arguments.
    pub fn spawn_with(
        name: &str,
        boot: usize,
        max: usize,
        cmdline: &str,
        extra: &[&str],
    ) -> GuestVm {
        let g = guest();
        let socket =
            std::env::temp_dir().join(format!("vmm-guest-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let cpus = format!("boot={boot},max={max}");
        let mut args = vec![
            "--cpus",
            &cpus,
            "--memory",
            "size=512M",
            "--cmdline",
            cmdline,
            "--api-socket",
            socket.to_str().expect("UTF-8 temp dir"),
        ];
        args.extend_from_slice(extra);
        let vm = VmmProcess::boot(&g, &args);
        let api = ApiConn::connect(&socket, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("the API socket never answered\n{}", vm.diagnostics()));
        GuestVm {
            vm,
            api,
            socket,
            cursor: 0,
        }
    }

    /// Starts the guest and waits until its init is watching with the boot CPUs online.
    pub fn boot_watch(name: &str, boot: usize, max: usize) -> GuestVm {
        let mut g = Self::spawn_watch(name, boot, max);
        let want = if boot == 1 {
            "0".to_string()
        } else {
            format!("0-{}", boot - 1)
        };
        g.expect_cpus(&want, &want, boot_timeout());
        g
    }

    /// The VMM's pid.
    pub fn pid(&self) -> u32 {
        self.vm.pid()
    }

    /// One API call (fails the test if the connection broke).
    pub fn call(&mut self, command: &str, args: serde_json::Value) -> serde_json::Value {
        match self.api.call(command, args) {
            Some(v) => v,
            None => panic!("no answer to {command}\n{}", self.vm.diagnostics()),
        }
    }

    /// A call that must succeed.
    pub fn ok(&mut self, command: &str) -> serde_json::Value {
        let v = self.call(command, serde_json::json!({}));
        assert_eq!(v["ok"], true, "{command} -> {v}\n{}", self.vm.diagnostics());
        v
    }

    /// `resize` that must succeed; returns the answer.
    pub fn resize_ok(&mut self, cpus: usize) -> serde_json::Value {
        let v = self.call("resize", serde_json::json!({ "cpus": cpus }));
        assert_eq!(
            v["ok"],
            true,
            "resize {cpus} -> {v}\n{}",
            self.vm.diagnostics()
        );
        v
    }

    /// `info`.
    pub fn info(&mut self) -> serde_json::Value {
        self.ok("info")
    }

    /// Waits until the guest's latest CPU report (any line, consumed or not) says exactly
    /// `online` and `present`: the guest reports only changes, so after a resize that
    /// changed nothing (or was undone before the guest acted) there is no new line to wait
    /// for. Consumes up to that report.
    pub fn try_settled_cpus(
        &mut self,
        online: &str,
        present: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.vm.lines();
            let crashes = guest_crash_lines(&lines);
            if !crashes.is_empty() {
                return Err(format!(
                    "the guest crashed: {crashes:#?}\n{}",
                    self.vm.diagnostics()
                ));
            }
            let latest = lines.iter().enumerate().rev().find(|(_, l)| {
                vmtest_value(l, "present").is_some() && vmtest_value(l, "online").is_some()
            });
            if let Some((i, l)) = latest {
                if vmtest_value(l, "online").as_deref() == Some(online)
                    && vmtest_value(l, "present").as_deref() == Some(present)
                {
                    self.cursor = self.cursor.max(i + 1);
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let info = self.call("info", serde_json::json!({}));
                return Err(format!(
                    "the guest's latest report never became online={online} present={present} within {timeout:?} (latest: {:?})\ninfo: {info}\n{}",
                    latest.map(|(_, l)| l.clone()),
                    self.vm.diagnostics()
                ));
            }
            // Wake on the next line (or after a while, to re-check).
            let _ = self.vm.wait_for_line_from(
                lines.len(),
                (deadline - now).min(Duration::from_secs(1)),
                |_| true,
            );
        }
    }

    /// Waits for the guest to report exactly `online` and `present` (a watch-mode line after
    /// the ones already consumed); fails with the serial tail and any crash lines.
    pub fn expect_cpus(&mut self, online: &str, present: &str, timeout: Duration) {
        if let Err(e) = self.try_expect_cpus(online, present, timeout) {
            panic!("{e}");
        }
    }

    /// [`GuestVm::expect_cpus`] returning the failure instead of panicking.
    pub fn try_expect_cpus(
        &mut self,
        online: &str,
        present: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let found = self.vm.wait_for_line_from(self.cursor, timeout, |l| {
            vmtest_value(l, "present").is_some()
                && vmtest_value(l, "online").as_deref() == Some(online)
                && vmtest_value(l, "present").as_deref() == Some(present)
        });
        let crashes = guest_crash_lines(&self.vm.lines());
        if !crashes.is_empty() {
            return Err(format!(
                "the guest crashed: {crashes:#?}\n{}",
                self.vm.diagnostics()
            ));
        }
        match found {
            Some((i, _)) => {
                self.cursor = i + 1;
                Ok(())
            }
            None => {
                let info = self.call("info", serde_json::json!({}));
                Err(format!(
                    "the guest never reported online={online} present={present} within {timeout:?}\ninfo: {info}\n{}",
                    self.vm.diagnostics()
                ))
            }
        }
    }

    /// Waits until `info` shows each of `slots` absent (ejected and reaped).
    pub fn expect_reaped(&mut self, slots: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.info();
            if slots.iter().all(|&i| info["vcpus"][i]["state"] == "absent") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "slots {slots:?} not reaped: {info}\n{}",
                self.vm.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Shuts the VM down over the API and checks a clean exit, no guest crash, and the
    /// socket removed.
    pub fn finish(mut self) {
        let crashes = guest_crash_lines(&self.vm.lines());
        assert!(
            crashes.is_empty(),
            "the guest crashed: {crashes:#?}\n{}",
            self.vm.diagnostics()
        );
        self.ok("shutdown");
        let status = self.vm.wait_exit(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "vmm exit {status:?}\n{}",
            self.vm.diagnostics()
        );
        assert!(!self.socket.exists(), "the API socket was left behind");
    }
}

/// The vCPU threads (named `vcpuN`) of process `pid`; other threads (the API's blocking
/// pool keeps idle threads for a while) come and go on their own.
pub fn vcpu_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("vcpu"))
                })
                .count()
        })
        .unwrap_or(0)
}
