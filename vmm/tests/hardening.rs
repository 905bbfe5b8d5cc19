//! Hostile or careless users and guests (issue 11): each test reproduces one way the VMM
//! was once hung, flooded, crashed or fooled, against the real `vmm` binary on KVM with a
//! synthetic guest (`vmm::testguest`), and checks it now ends cleanly.
//!
//! Without /dev/kvm the KVM tests fail with a clear message unless VMM_ALLOW_NO_KVM=1.

mod common;

use common::hard::*;
use common::{guest_slot, kvm_available, vmm_bin};
use std::process::{Command, Stdio};
use std::time::Duration;
use vmm_testguest::GuestSpec;

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
            "invalid UTF-8",
        ),
        (
            vec![OsString::from("--kernel=k"), bad.clone()],
            // clap names the stray argument (it takes it for a subcommand).
            "-no-such-kernel",
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

/// Item 6: a 4 GiB sparse "bzImage" was read whole (4.7 GB RSS, 19 s) before being
/// refused. Its size is now checked against guest RAM from the metadata.
#[test]
fn huge_sparse_kernel_is_refused_from_its_size() {
    let image = images::sparse_bzimage();
    let (code, err, took) = run_to_end(
        &[
            "--kernel".as_ref(),
            image.0.as_os_str(),
            "--memory".as_ref(),
            "size=128M".as_ref(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("larger than guest RAM"), "{err}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

/// Item 7: a truncated bzImage (the first 100000 bytes of the guest kernel) used to load,
/// triple-fault and exit 0 as a "reboot".
#[test]
fn truncated_bzimage_is_refused() {
    let image = images::truncated_bzimage();
    let (code, err, _) = run_to_end(&["--kernel".as_ref(), image.0.as_os_str()], START_TIMEOUT);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is truncated or corrupt"), "{err}");
}

/// Item 7: ELF images for AArch64 or 32-bit were loaded and run.
#[test]
fn foreign_elf_kernels_are_refused() {
    for (name, image, expect) in [
        ("elf-aarch64", images::aarch64_elf(), "is for AARCH64"),
        ("elf-32", images::elf32(), "is not 64-bit"),
    ] {
        let (code, err, _) = run_to_end(&["--kernel".as_ref(), image.0.as_os_str()], START_TIMEOUT);
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
    let image = images::triple_fault_elf();
    let (code, err, _) = run_to_end(
        &[
            "--kernel".as_ref(),
            image.0.as_os_str(),
            "--memory".as_ref(),
            "size=128M".as_ref(),
        ],
        START_TIMEOUT,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("vmm: error: guest failed: vCPU 0: the guest triple-faulted"),
        "{err}"
    );
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
