//! Command-line and input errors: each must exit non-zero with a clear `vmm: error:` line
//! and never panic. None of these needs a guest; only `max=100000` needs /dev/kvm to learn
//! the KVM limit (without KVM it must still fail cleanly).

mod common;

use common::*;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(60);

fn assert_clean_failure(f: &Finished, expect: &[&str]) {
    let status = f.status.expect("vmm hung on bad input");
    assert!(
        !status.success(),
        "vmm succeeded on bad input: {}",
        f.stderr
    );
    assert_eq!(status.code(), Some(1), "exit code; stderr: {}", f.stderr);
    assert!(!f.stderr.contains("panicked"), "vmm panicked: {}", f.stderr);
    let line = f
        .stderr
        .lines()
        .find(|l| l.starts_with("vmm: error: "))
        .unwrap_or_else(|| panic!("no `vmm: error:` line in stderr: {}", f.stderr));
    for e in expect {
        assert!(
            line.contains(e),
            "error line {line:?} does not mention {e:?}"
        );
    }
}

/// A kernel file that passes for nothing: the tests that get past the kernel check use
/// the real guest kernel if present, or this stand-in otherwise.
fn some_kernel() -> (Option<TempFile>, String) {
    let k = workspace_root().join("target/guest/bzImage");
    if k.is_file() {
        return (None, k.display().to_string());
    }
    let mut bz = vec![0u8; 4096];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x1f4] = 1; // syssize: 16 bytes of kernel after the (default 4-sector) setup
                   // One file per call: tests run in parallel and each removes its file when done.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = TempFile::new(&format!("fake-bzimage-{n}"), &bz);
    let p = t.0.display().to_string();
    (Some(t), p)
}

#[test]
fn help_succeeds() {
    let f = run_vmm(&["--help"], TIMEOUT);
    assert!(f.status.expect("hung").success());
    assert!(f.stdout.contains("--kernel"));
}

#[test]
fn missing_kernel_argument() {
    let f = run_vmm(&["--cpus", "boot=1"], TIMEOUT);
    assert_clean_failure(&f, &["--kernel"]);
}

#[test]
fn missing_kernel_file() {
    let f = run_vmm(&["--kernel", "/nonexistent/bzImage"], TIMEOUT);
    assert_clean_failure(&f, &["/nonexistent/bzImage", "not found"]);
}

#[test]
fn corrupt_kernel_file() {
    // Deterministic pseudo-random bytes (xorshift), no magic anywhere useful.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let t = TempFile::new("random-kernel", &bytes);
    let f = run_vmm(&["--kernel", &t.0.display().to_string()], TIMEOUT);
    assert_clean_failure(&f, &["not a Linux kernel image"]);
}

#[test]
fn missing_initramfs_file() {
    let (_t, k) = some_kernel();
    let f = run_vmm(
        &["--kernel", &k, "--initramfs", "/nonexistent/initrd"],
        TIMEOUT,
    );
    assert_clean_failure(&f, &["/nonexistent/initrd", "not found"]);
}

#[test]
fn boot_above_max() {
    let (_t, k) = some_kernel();
    let f = run_vmm(&["--kernel", &k, "--cpus", "boot=4,max=2"], TIMEOUT);
    assert_clean_failure(&f, &["boot=4", "max=2"]);
}

#[test]
fn boot_zero() {
    let (_t, k) = some_kernel();
    let f = run_vmm(&["--kernel", &k, "--cpus", "boot=0,max=4"], TIMEOUT);
    assert_clean_failure(&f, &["boot must be at least 1"]);
}

#[test]
fn max_above_kvm_limit() {
    let (_t, k) = some_kernel();
    let f = run_vmm(&["--kernel", &k, "--cpus", "boot=1,max=100000"], TIMEOUT);
    if std::path::Path::new("/dev/kvm").exists() {
        assert_clean_failure(&f, &["max=100000", "KVM allows"]);
    } else {
        assert_clean_failure(&f, &[]);
    }
}

#[test]
fn memory_too_small() {
    let (_t, k) = some_kernel();
    let f = run_vmm(&["--kernel", &k, "--memory", "size=1M"], TIMEOUT);
    assert_clean_failure(&f, &["too little memory", "128 MiB"]);
}

#[test]
fn memory_too_large() {
    let (_t, k) = some_kernel();
    let f = run_vmm(&["--kernel", &k, "--memory", "size=2048G"], TIMEOUT);
    assert_clean_failure(&f, &["too large", "at most 1024 GiB"]);
}

#[test]
fn memory_above_the_host() {
    let (_t, k) = some_kernel();
    // Within the layout's limit, beyond any host this runs on: the lazy mapping would
    // succeed, so the VMM must refuse it itself.
    let f = run_vmm(&["--kernel", &k, "--memory", "size=1024G"], TIMEOUT);
    assert_clean_failure(&f, &["too large", "the host has"]);
}

#[test]
fn memory_garbage() {
    let (_t, k) = some_kernel();
    for bad in ["size=garbage", "garbage", "size=12Q", "size="] {
        let f = run_vmm(&["--kernel", &k, "--memory", bad], TIMEOUT);
        assert_clean_failure(&f, &["--memory"]);
    }
}

#[test]
fn unknown_argument() {
    let f = run_vmm(&["--kernel", "k", "--frobnicate"], TIMEOUT);
    assert_clean_failure(&f, &["--frobnicate"]);
}

#[test]
fn version_prints_the_version() {
    let f = run_vmm(&["--version"], TIMEOUT);
    assert!(f.status.expect("hung").success(), "{}", f.stderr);
    assert!(f.stdout.contains(env!("CARGO_PKG_VERSION")), "{}", f.stdout);
}

#[test]
fn bad_serial_and_socket_values() {
    let (_t, k) = some_kernel();
    let f = run_vmm(&["--kernel", &k, "--serial", "pty"], TIMEOUT);
    assert_clean_failure(&f, &["--serial", "tty, off or file=PATH", "pty"]);
    let f = run_vmm(&["--kernel", &k, "--serial", "file="], TIMEOUT);
    assert_clean_failure(&f, &["--serial", "empty"]);
    let f = run_vmm(&["--kernel", &k, "--api-socket", "path="], TIMEOUT);
    assert_clean_failure(&f, &["--api-socket", "empty"]);
    let f = run_vmm(
        &["--kernel", &k, "--log-file", "/nonexistent/dir/log"],
        TIMEOUT,
    );
    assert_clean_failure(&f, &["--log-file", "/nonexistent/dir/log"]);
    let f = run_vmm(&["remote", "info"], TIMEOUT);
    assert_clean_failure(&f, &["--api-socket"]);
    let f = run_vmm(
        &["remote", "--api-socket", "/tmp/x", "resize", "--cpus", "0"],
        TIMEOUT,
    );
    assert_clean_failure(&f, &["--cpus", "0"]);
}

#[test]
fn non_utf8_paths_do_not_panic() {
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    let bad = OsString::from_vec(b"/nonexistent/k\xff\xfe".to_vec());
    let f = run_vmm(&[OsString::from("--kernel"), bad], TIMEOUT);
    assert_clean_failure(&f, &["/nonexistent/k", "not found"]);
    let sock = OsString::from_vec(b"/nonexistent/s\xff".to_vec());
    let f = run_vmm(
        &[
            OsString::from("remote"),
            "--api-socket".into(),
            sock,
            "ping".into(),
        ],
        TIMEOUT,
    );
    assert_clean_failure(&f, &["cannot connect", "/nonexistent/s"]);
}

/// `--serial file=PATH` sends the guest's console to the file (not stdout), `--log-file`
/// the log to its file (not stderr); `--serial off` drops the console.
#[test]
fn serial_and_log_files() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let guest = vmm_testguest::GuestFile::create(&vmm_testguest::GuestSpec {
        scan_cpus: 0,
        serial_every: 1 << 16,
        ..Default::default()
    })
    .unwrap();
    let console = std::env::temp_dir().join(format!("vmm-cli-console-{}", std::process::id()));
    let log = std::env::temp_dir().join(format!("vmm-cli-log-{}", std::process::id()));
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(&log);
    let mut vmm = VmmProcess::spawn(&[
        "--kernel".to_string(),
        guest.path().display().to_string(),
        "--memory".into(),
        "size=128M".into(),
        "--serial".into(),
        format!("file={}", console.display()),
        "--log-file".into(),
        log.display().to_string(),
    ]);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::fs::metadata(&console).map_or(0, |m| m.len()) < 16 {
        assert!(
            std::time::Instant::now() < deadline,
            "no console output in the file\n{}",
            vmm.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    vmm.kill();
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(
        text.bytes().all(|b| b == vmm_testguest::SERIAL_BYTE),
        "{text:?}"
    );
    assert!(
        vmm.lines().is_empty(),
        "console also on stdout: {:?}",
        vmm.lines()
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("kernel loaded") && logged.contains("vCPUs started"),
        "{logged}"
    );
    assert!(
        !vmm.stderr().contains("kernel loaded"),
        "log also on stderr: {}",
        vmm.stderr()
    );
    let _ = std::fs::remove_file(&console);
    let _ = std::fs::remove_file(&log);

    // The guest's bytes carry no newline: only a clean shutdown (which flushes the console)
    // shows whether any reached stdout, so stop it over the API.
    let sock = std::env::temp_dir().join(format!("vmm-cli-off-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let mut vmm = VmmProcess::spawn(&[
        "--kernel".to_string(),
        guest.path().display().to_string(),
        "--memory".into(),
        "size=128M".into(),
        "--serial".into(),
        "off".into(),
        "--api-socket".into(),
        sock.display().to_string(),
    ]);
    let mut api = ApiConn::connect(&sock, TIMEOUT).expect("API");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        api.call("shutdown", serde_json::json!({})).unwrap()["ok"],
        true
    );
    let status = vmm.wait_exit(TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "{}", vmm.diagnostics());
    assert!(
        vmm.lines().is_empty(),
        "console with --serial off: {:?}",
        vmm.lines()
    );
    assert!(vmm.stderr().contains("vCPUs started"), "{}", vmm.stderr());
}
