//! Hostile or careless users and guests (issue 11): each test reproduces one way the VMM
//! was once hung, flooded, crashed or fooled, against the real `vmm` binary on KVM with a
//! synthetic guest (`vmm::testguest`), and checks it now ends cleanly.
//!
//! Without /dev/kvm the KVM tests fail with a clear message unless VMM_ALLOW_NO_KVM=1.

mod common;

use common::{guest_slot, kvm_available, vmm_bin};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm::testguest::{GuestFile, GuestSpec};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A guest that writes a serial byte on every round of its loop.
fn printer() -> GuestSpec {
    GuestSpec {
        serial_every: 1,
        ..GuestSpec::spinner()
    }
}

/// A `vmm` process with a control socket; stdout either drained or left unread.
struct Vmm {
    child: Child,
    /// Held, never read, when stdout is to stay undrained.
    _stdout: Option<ChildStdout>,
    stderr: Arc<Mutex<String>>,
    sock: PathBuf,
    _guest: GuestFile,
}

impl Vmm {
    /// Boots `spec` with `extra` arguments and an API socket named after `name`; waits
    /// until the socket answers.
    fn start(name: &str, spec: &GuestSpec, drain_stdout: bool, extra: &[&str]) -> Vmm {
        let guest = GuestFile::create(spec).expect("write the test guest");
        let sock =
            std::env::temp_dir().join(format!("vmm-hard-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(vmm_bin());
        cmd.arg("--kernel")
            .arg(guest.path())
            .args(["--memory", "size=128M", "--api-socket"])
            .arg(&sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn vmm");
        let stdout = child.stdout.take().expect("stdout");
        let stdout = if drain_stdout {
            std::thread::spawn(move || {
                let mut s = stdout;
                let _ = std::io::copy(&mut s, &mut std::io::sink());
            });
            None
        } else {
            Some(stdout)
        };
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let e2 = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e2.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let vmm = Vmm {
            child,
            _stdout: stdout,
            stderr,
            sock,
            _guest: guest,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while vmm.try_call(r#"{"command":"info"}"#).is_none() {
            assert!(
                Instant::now() < deadline,
                "API never answered; stderr: {}",
                vmm.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        vmm
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn try_call(&self, line: &str) -> Option<Value> {
        let mut s = UnixStream::connect(&self.sock).ok()?;
        s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
        s.write_all(line.as_bytes()).ok()?;
        s.write_all(b"\n").ok()?;
        let mut resp = String::new();
        match BufReader::new(&s).read_line(&mut resp) {
            Ok(n) if n > 0 => serde_json::from_str(&resp).ok(),
            _ => None,
        }
    }

    fn call(&self, line: &str) -> Value {
        self.try_call(line)
            .unwrap_or_else(|| panic!("no answer to {line}; stderr: {}", self.stderr()))
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Waits for the exit; None (and the process killed) after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                // Let the stderr reader catch up.
                std::thread::sleep(Duration::from_millis(100));
                return Some(s);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.sock);
    }
}

fn wait_gone(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Item 1: a guest printing while nobody reads the VMM's stdout once blocked vCPU 0 in
/// `write(1)` under the UART lock: pause timed out and shutdown never finished.
#[test]
fn undrained_stdout_neither_blocks_pause_nor_shutdown() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let mut vmm = Vmm::start("undrained", &printer(), false, &[]);
    // Long enough for the guest to fill the pipe (64 KiB) many times over.
    std::thread::sleep(Duration::from_secs(2));
    let v = vmm.call(r#"{"command":"pause"}"#);
    assert_eq!(v["ok"], true, "pause: {v}; stderr: {}", vmm.stderr());
    let v = vmm.call(r#"{"command":"shutdown"}"#);
    assert_eq!(v["ok"], true, "shutdown: {v}");
    let status = vmm.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "vmm did not exit cleanly ({status:?}); stderr: {}",
        vmm.stderr()
    );
    assert!(
        vmm.stderr().contains("dropped"),
        "dropped output not reported: {}",
        vmm.stderr()
    );
    assert!(wait_gone(&vmm.sock, Duration::from_secs(2)));
}

/// Item 4: SIGTERM, SIGINT and SIGHUP once killed the VMM silently and left the socket.
#[test]
fn termination_signals_stop_the_vm_and_remove_the_socket() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let mut vmm = Vmm::start(name, &GuestSpec::spinner(), true, &[]);
        // SAFETY: signalling our own child, which has not been reaped.
        assert_eq!(unsafe { libc::kill(vmm.pid(), sig) }, 0);
        let status = vmm.wait_exit(Duration::from_secs(20));
        let err = vmm.stderr();
        let status = status.unwrap_or_else(|| panic!("{name}: vmm did not exit; {err}"));
        assert_eq!(status.code(), Some(128 + sig), "{name}: {status:?}; {err}");
        assert!(
            err.contains(&format!("vmm: stopped by {name}")),
            "{name}: no exit line: {err}"
        );
        assert!(
            wait_gone(&vmm.sock, Duration::from_secs(2)),
            "{name}: socket left behind"
        );
    }
}

/// Item 5: a non-UTF-8 argument once panicked (exit 101). Paths may be any bytes.
#[test]
fn non_utf8_arguments_get_clean_errors() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let bad = OsString::from_vec(b"/tmp/\xff-no-such-kernel".to_vec());
    for (args, expect) in [
        (vec![OsString::from("--kernel"), bad.clone()], "not found"),
        (
            vec![
                OsString::from("--kernel=k"),
                "--cmdline".into(),
                bad.clone(),
            ],
            "not valid UTF-8",
        ),
        (
            vec![OsString::from("--kernel=k"), bad.clone()],
            "unknown argument",
        ),
    ] {
        let out = Command::new(vmm_bin())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run vmm");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.lines()
                .any(|l| l.starts_with("vmm: error: ") && l.contains(expect)),
            "{args:?}: {err}"
        );
    }
}

/// Runs `vmm args` to completion (a bad-image run must end on its own, quickly).
fn run_to_end(args: &[&std::ffi::OsStr], timeout: Duration) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let mut child = Command::new(vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let mut pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s.code();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    (code, reader.join().unwrap_or_default(), elapsed)
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-hard-{}-{name}", std::process::id()))
}

/// Item 6: a 4 GiB sparse "bzImage" was read whole (4.7 GB RSS, 19 s) before being
/// refused. Its size is now checked against guest RAM from the metadata.
#[test]
fn huge_sparse_kernel_is_refused_from_its_size() {
    let path = temp_path("sparse-bzimage");
    {
        let f = std::fs::File::create(&path).unwrap();
        let mut head = vec![0u8; 4096];
        head[0x202..0x206].copy_from_slice(b"HdrS");
        std::os::unix::fs::FileExt::write_all_at(&f, &head, 0).unwrap();
        f.set_len(4 << 30).unwrap();
    }
    let (code, err, took) = run_to_end(
        &[
            "--kernel".as_ref(),
            path.as_os_str(),
            "--memory".as_ref(),
            "size=128M".as_ref(),
        ],
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("larger than guest RAM"), "{err}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// Item 7: a truncated bzImage (the first 100000 bytes of the guest kernel) used to load,
/// triple-fault and exit 0 as a "reboot".
#[test]
fn truncated_bzimage_is_refused() {
    let g = common::guest();
    let image = std::fs::read(&g.kernel).unwrap();
    let path = temp_path("truncated-bzimage");
    std::fs::write(&path, &image[..100_000]).unwrap();
    let (code, err, _) = run_to_end(&["--kernel".as_ref(), path.as_os_str()], START_TIMEOUT);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is truncated or corrupt"), "{err}");
}

/// Item 7: ELF images for AArch64 or 32-bit were loaded and run.
#[test]
fn foreign_elf_kernels_are_refused() {
    let good = vmm::testguest::elf(&GuestSpec::spinner());
    let mut arm = good.clone();
    arm[0x12..0x14].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let mut x32 = good;
    x32[4] = 1; // ELFCLASS32
    for (name, bytes, expect) in [
        ("elf-aarch64", arm, "is for AARCH64"),
        ("elf-32", x32, "is not 64-bit"),
    ] {
        let path = temp_path(name);
        std::fs::write(&path, &bytes).unwrap();
        let (code, err, _) = run_to_end(&["--kernel".as_ref(), path.as_os_str()], START_TIMEOUT);
        let _ = std::fs::remove_file(&path);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.contains(expect), "{name}: {err}");
    }
}

/// Item 7: a guest that triple-faults (here at its first instruction, `ud2` with no IDT)
/// is a failure, not a reboot.
#[test]
fn triple_fault_is_a_failure() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let mut elf = vmm::testguest::elf(&GuestSpec::spinner());
    elf[0x1000..0x1002].copy_from_slice(&[0x0f, 0x0b]); // ud2 at the entry point
    let path = temp_path("triple-fault");
    std::fs::write(&path, &elf).unwrap();
    let (code, err, _) = run_to_end(
        &[
            "--kernel".as_ref(),
            path.as_os_str(),
            "--memory".as_ref(),
            "size=128M".as_ref(),
        ],
        START_TIMEOUT,
    );
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("vmm: error: guest failed: vCPU 0: the guest triple-faulted"),
        "{err}"
    );
}

/// Starts `vmm` with the spinner and the test hook that makes every vCPU thread call a
/// syscall outside its seccomp list (`getppid`) once its filter is in place.
fn spawn_violating(extra: &[&str]) -> (Child, Arc<Mutex<String>>, GuestFile) {
    let guest = GuestFile::create(&GuestSpec::spinner()).expect("guest");
    let mut child = Command::new(vmm_bin())
        .arg("--kernel")
        .arg(guest.path())
        .args(["--memory", "size=128M"])
        .args(extra)
        .env(vmm::seccomp::VIOLATION_ENV, "vcpu")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmm");
    let mut pipe = child.stderr.take().unwrap();
    let err = Arc::new(Mutex::new(String::new()));
    let e2 = err.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            e2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, err, guest)
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Item 10: with the default `--seccomp true`, a vCPU thread's forbidden syscall kills
/// the whole process with SIGSYS.
#[test]
fn seccomp_kills_the_vmm_on_a_forbidden_vcpu_syscall() {
    use std::os::unix::process::ExitStatusExt;
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let (mut child, err, _g) = spawn_violating(&[]);
    let status = wait_child(&mut child, START_TIMEOUT);
    let err = err.lock().unwrap().clone();
    let status = status.unwrap_or_else(|| panic!("vmm survived a forbidden syscall: {err}"));
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}; {err}");
    assert!(
        err.contains("test hook: Vcpu thread calls getppid"),
        "{err}"
    );
}

/// Item 10: `--seccomp log` lets the syscall through, the kernel logs it (an audit record
/// naming the thread and the syscall), and the VM goes on; `--seccomp false` installs
/// nothing and the process survives too.
#[test]
fn seccomp_log_mode_logs_and_off_mode_allows() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    for mode in ["log", "false"] {
        let (mut child, err, _g) = spawn_violating(&["--seccomp", mode]);
        let pid = child.id();
        // The hook fires as vCPU 0 starts; give it time, then the VM must still run.
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            child.try_wait().unwrap().is_none(),
            "--seccomp {mode}: vmm died: {}",
            err.lock().unwrap()
        );
        // SAFETY: signalling our own live child.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
        let status = wait_child(&mut child, Duration::from_secs(20));
        assert_eq!(status.and_then(|s| s.code()), Some(143), "--seccomp {mode}");
        let err = err.lock().unwrap().clone();
        assert_eq!(
            err.contains("test hook: Vcpu thread calls getppid"),
            mode == "log",
            "--seccomp {mode}: {err}"
        );
        let audit = format!("pid={pid} comm=\"vcpu0\"");
        let syscall = format!("syscall={}", libc::SYS_getppid);
        let kmsg = kernel_log();
        let logged = kmsg
            .lines()
            .any(|l| l.contains("type=1326") && l.contains(&audit) && l.contains(&syscall));
        assert_eq!(
            logged,
            mode == "log",
            "--seccomp {mode}: audit record in the kernel log"
        );
    }
}

/// The kernel log (root reads /dev/kmsg without blocking).
fn kernel_log() -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .expect("open /dev/kmsg (the seccomp log test needs root)");
    let mut out = String::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
            // EPIPE: a record was overwritten; keep reading.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break, // EAGAIN: the end
        }
    }
    out
}
