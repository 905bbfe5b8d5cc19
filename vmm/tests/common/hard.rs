//! The harness of the hardening and bad-input tests (issue 11): a `vmm` process with a
//! control socket whose stdout can be left undrained, runs to completion with a time
//! bound, the bad images of the issue, and the kernel log.

use super::vmm_bin;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_testguest::{GuestFile, GuestSpec};

pub const START_TIMEOUT: Duration = Duration::from_secs(60);
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A guest that writes a serial byte on every round of its loop.
pub fn printer() -> GuestSpec {
    GuestSpec {
        serial_every: 1,
        ..GuestSpec::spinner()
    }
}

/// A `vmm` process with a control socket; stdout either drained or left unread.
pub struct Vmm {
    pub child: Child,
    /// Held, never read, when stdout is to stay undrained.
    _stdout: Option<ChildStdout>,
    stderr: Arc<Mutex<String>>,
    pub sock: PathBuf,
    _guest: GuestFile,
}

impl Vmm {
    /// Boots `spec` with `extra` arguments and an API socket named after `name`; waits
    /// until the socket answers.
    pub fn start(name: &str, spec: &GuestSpec, drain_stdout: bool, extra: &[&str]) -> Vmm {
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

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// One request, written as `{"command": NAME, ...fields}`, over the HTTP API (see
    /// [`super::ApiConn::call`]); None when the VMM does not answer.
    pub fn try_call(&self, line: &str) -> Option<Value> {
        let mut req: Value = serde_json::from_str(line).ok()?;
        let command = req.get("command")?.as_str()?.to_string();
        req.as_object_mut()?.remove("command");
        super::ApiConn::connect(&self.sock, IO_TIMEOUT)?.call(&command, req)
    }

    pub fn call(&self, line: &str) -> Value {
        self.try_call(line)
            .unwrap_or_else(|| panic!("no answer to {line}; stderr: {}", self.stderr()))
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Waits for the exit; None (and the process killed) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
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

pub fn wait_gone(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Runs `vmm args` to completion (a bad-image run must end on its own, quickly).
pub fn run_to_end(args: &[&std::ffi::OsStr], timeout: Duration) -> (Option<i32>, String, Duration) {
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

pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-hard-{}-{name}", std::process::id()))
}

/// Starts `vmm` with the spinner and the test hook that makes every vCPU thread call a
/// syscall outside its seccomp list (`getppid`) once its filter is in place.
pub fn spawn_violating(extra: &[&str]) -> (Child, Arc<Mutex<String>>, GuestFile) {
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

pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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

/// The kernel log (root reads /dev/kmsg without blocking).
pub fn kernel_log() -> String {
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

/// The bad images of issue 11, written to temp files removed on drop.
pub mod images {
    use super::temp_path;
    use std::path::PathBuf;
    use vmm_testguest::{elf, GuestSpec};

    /// A file removed on drop.
    pub struct Image(pub PathBuf);

    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn write(name: &str, bytes: &[u8]) -> Image {
        let p = temp_path(name);
        std::fs::write(&p, bytes).expect("write image");
        Image(p)
    }

    /// 4 GiB, sparse, with a bzImage magic in its first page.
    pub fn sparse_bzimage() -> Image {
        let p = temp_path("sparse-bzimage");
        let f = std::fs::File::create(&p).unwrap();
        let mut head = vec![0u8; 4096];
        head[0x202..0x206].copy_from_slice(b"HdrS");
        std::os::unix::fs::FileExt::write_all_at(&f, &head, 0).unwrap();
        f.set_len(4 << 30).unwrap();
        Image(p)
    }

    /// The first 100000 bytes of the guest kernel (`scripts/guest.sh`).
    pub fn truncated_bzimage() -> Image {
        let g = crate::common::guest();
        let image = std::fs::read(&g.kernel).unwrap();
        write("truncated-bzimage", &image[..100_000])
    }

    /// The spinner with its ELF header saying AArch64.
    pub fn aarch64_elf() -> Image {
        let mut e = elf(&GuestSpec::spinner()).expect("synthetic guest");
        e[0x12..0x14].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        write("elf-aarch64", &e)
    }

    /// The spinner with its ELF header saying 32-bit.
    pub fn elf32() -> Image {
        let mut e = elf(&GuestSpec::spinner()).expect("synthetic guest");
        e[4] = 1; // ELFCLASS32
        write("elf-32", &e)
    }

    /// A guest whose first instruction is `ud2` (no IDT: a triple fault).
    pub fn triple_fault_elf() -> Image {
        let mut e = elf(&GuestSpec::spinner()).expect("synthetic guest");
        e[0x1000..0x1002].copy_from_slice(&[0x0f, 0x0b]);
        write("triple-fault", &e)
    }

    /// A guest that writes "eject" for CPU 0..4 on every round, whether or not a removal
    /// was requested: the storm guest with its `test al, 4; jz` skip patched out.
    pub fn eject_flood_elf() -> Image {
        let mut e = elf(&GuestSpec {
            ack_inserting: false,
            serial_every: 0,
            ..GuestSpec::default()
        })
        .expect("synthetic guest");
        let at = e
            .windows(4)
            .position(|w| w[0] == 0xa8 && w[1] == 0x04 && w[2] == 0x74)
            .expect("the removing test in the guest code");
        e[at + 2..at + 4].copy_from_slice(&[0x90, 0x90]);
        write("eject-flood", &e)
    }
}
