//! The bad-input corpus (issue 11, item 12): every hostile or careless input the VMM was
//! probed with, as tables, so each stays fixed. One test walks them all and reports every
//! case that regressed at once:
//!
//! * command lines and images: run `vmm` to completion; expect its exit code, a
//!   `vmm: error:` line with the given words (or another stderr text), no panic, and a time
//!   bound;
//! * control API requests: against one running VMM; expect the error kind, and the VM still
//!   answering afterwards;
//! * runtime scenarios (a guest or host that misbehaves while the VM runs): expect the
//!   process to end as documented.
//!
//! The KVM parts fail without /dev/kvm unless VMM_ALLOW_NO_KVM=1, which skips them (and
//! says so).

mod common;

use common::hard::images::{self, Image};
use common::hard::*;
use common::{guest_slot, kvm_available, workspace_root};
use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::time::{Duration, Instant};
use vmm_testguest::{GuestFile, GuestSpec};

/// What a command-line case must end with.
enum Expect {
    /// Exit 1 with a `vmm: error:` line containing every word.
    Error(&'static [&'static str]),
    /// Exit 0 (`--help`).
    Success,
}

/// One command-line or image case.
struct CliCase {
    name: &'static str,
    /// Arguments; `{K}` is replaced by a valid kernel path, `{F}` by the case's file.
    args: &'static [&'static str],
    /// A file the case needs (`{F}`).
    file: Option<fn() -> Image>,
    /// Raw arguments appended after `args` (non-UTF-8 ones).
    raw: fn() -> Vec<OsString>,
    /// Needs /dev/kvm to get to its error.
    kvm: bool,
    expect: Expect,
    /// Must end within this long.
    within: Duration,
}

fn none() -> Vec<OsString> {
    Vec::new()
}

fn non_utf8_path() -> Vec<OsString> {
    vec![
        "--kernel".into(),
        OsString::from_vec(b"/tmp/\xff-no-such-kernel".to_vec()),
    ]
}

fn non_utf8_cmdline() -> Vec<OsString> {
    vec!["--cmdline".into(), OsString::from_vec(b"a\xffb".to_vec())]
}

fn non_utf8_flag() -> Vec<OsString> {
    vec![OsString::from_vec(b"--\xff".to_vec())]
}

fn random_bytes() -> Image {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let p = temp_path("random-kernel");
    std::fs::write(&p, bytes).unwrap();
    Image(p)
}

const T: Duration = Duration::from_secs(30);

fn cli_cases() -> Vec<CliCase> {
    let c = |name, args, expect| CliCase {
        name,
        args,
        file: None,
        raw: none,
        kvm: false,
        expect,
        within: T,
    };
    vec![
        c("help", &["--help"], Expect::Success),
        c(
            "no kernel",
            &["--cpus", "boot=1"],
            Expect::Error(&["--kernel"]),
        ),
        c(
            "initramfs is a directory",
            &["--kernel", "{K}", "--initramfs", "/tmp"],
            Expect::Error(&["/tmp", "not a regular file"]),
        ),
        c(
            "initramfs is a device",
            &["--kernel", "{K}", "--initramfs", "/dev/zero"],
            Expect::Error(&["/dev/zero", "not a regular file"]),
        ),
        c(
            "missing kernel file",
            &["--kernel", "/nonexistent/bzImage"],
            Expect::Error(&["/nonexistent/bzImage", "not found"]),
        ),
        c(
            "unknown argument",
            &["--kernel", "{K}", "--frobnicate"],
            Expect::Error(&["--frobnicate"]),
        ),
        c(
            "kernel twice",
            &["--kernel", "{K}", "--kernel", "{K}"],
            Expect::Error(&["--kernel", "cannot be used multiple times"]),
        ),
        c(
            "flag without value",
            &["--kernel"],
            Expect::Error(&["a value is required", "--kernel"]),
        ),
        c(
            "missing initramfs",
            &["--kernel", "{K}", "--initramfs", "/nonexistent/initrd"],
            Expect::Error(&["/nonexistent/initrd", "not found"]),
        ),
        c(
            "boot above max",
            &["--kernel", "{K}", "--cpus", "boot=4,max=2"],
            Expect::Error(&["boot=4", "max=2"]),
        ),
        c(
            "boot zero",
            &["--kernel", "{K}", "--cpus", "boot=0,max=4"],
            Expect::Error(&["boot must be at least 1"]),
        ),
        c(
            "cpus garbage",
            &["--kernel", "{K}", "--cpus", "boot=x"],
            Expect::Error(&["--cpus", "'x'"]),
        ),
        CliCase {
            kvm: true,
            ..c(
                "max above the KVM limit",
                &["--kernel", "{K}", "--cpus", "boot=1,max=100000"],
                Expect::Error(&["max=100000", "KVM allows"]),
            )
        },
        c(
            "memory too small",
            &["--kernel", "{K}", "--memory", "size=1M"],
            Expect::Error(&["too little memory", "128 MiB"]),
        ),
        c(
            "memory too large",
            &["--kernel", "{K}", "--memory", "size=64G"],
            Expect::Error(&["too large", "the host has"]),
        ),
        c(
            "memory garbage",
            &["--kernel", "{K}", "--memory", "size=12Q"],
            Expect::Error(&["--memory"]),
        ),
        c(
            "memory without size",
            &["--kernel", "{K}", "--memory", "garbage"],
            Expect::Error(&["--memory"]),
        ),
        c(
            "seccomp garbage",
            &["--kernel", "{K}", "--seccomp", "maybe"],
            Expect::Error(&["--seccomp", "maybe"]),
        ),
        c(
            "remote without socket",
            &["remote", "pause"],
            Expect::Error(&["--api-socket PATH is required"]),
        ),
        c(
            "remote unknown command",
            &["remote", "--api-socket", "/tmp/none", "reboot"],
            Expect::Error(&["unrecognized subcommand", "reboot"]),
        ),
        c(
            "remote to no VMM",
            &["remote", "--api-socket", "/nonexistent/sock", "info"],
            Expect::Error(&["/nonexistent/sock"]),
        ),
        // Item 5: non-UTF-8 arguments (once a panic, exit 101).
        CliCase {
            raw: non_utf8_path,
            ..c("non-UTF-8 kernel path", &[], Expect::Error(&["not found"]))
        },
        CliCase {
            raw: non_utf8_cmdline,
            ..c(
                "non-UTF-8 cmdline",
                &["--kernel", "{K}"],
                Expect::Error(&["invalid UTF-8"]),
            )
        },
        CliCase {
            raw: non_utf8_flag,
            ..c(
                "non-UTF-8 flag",
                &["--kernel", "{K}"],
                Expect::Error(&["unexpected argument"]),
            )
        },
        // Images.
        CliCase {
            file: Some(random_bytes),
            ..c(
                "random bytes as kernel",
                &["--kernel", "{F}"],
                Expect::Error(&["not a Linux kernel image"]),
            )
        },
        // Item 6: read whole once (4.7 GB RSS, 19 s).
        CliCase {
            file: Some(images::sparse_bzimage),
            within: Duration::from_secs(3),
            ..c(
                "4 GiB sparse bzImage",
                &["--kernel", "{F}", "--memory", "size=128M"],
                Expect::Error(&["larger than guest RAM"]),
            )
        },
        // Item 7: once loaded, triple-faulted, exit 0.
        CliCase {
            file: Some(images::truncated_bzimage),
            ..c(
                "truncated bzImage",
                &["--kernel", "{F}"],
                Expect::Error(&["truncated or corrupt"]),
            )
        },
        // Item 7: once loaded and run.
        CliCase {
            file: Some(images::aarch64_elf),
            ..c(
                "AArch64 ELF",
                &["--kernel", "{F}"],
                Expect::Error(&["AARCH64", "not x86-64"]),
            )
        },
        CliCase {
            file: Some(images::elf32),
            ..c(
                "32-bit ELF",
                &["--kernel", "{F}"],
                Expect::Error(&["not 64-bit"]),
            )
        },
        // Item 7: once reported as a reboot, exit 0.
        CliCase {
            file: Some(images::triple_fault_elf),
            kvm: true,
            ..c(
                "guest that triple-faults",
                &["--kernel", "{F}", "--memory", "size=128M"],
                Expect::Error(&["vCPU 0", "triple-faulted"]),
            )
        },
    ]
}

fn run_cli_case(case: &CliCase, kernel: &str) -> Result<(), String> {
    let file = case.file.map(|f| f());
    let mut args: Vec<OsString> = case
        .args
        .iter()
        .map(|a| match *a {
            "{K}" => kernel.into(),
            "{F}" => file.as_ref().expect("case file").0.clone().into_os_string(),
            other => other.into(),
        })
        .collect();
    args.extend((case.raw)());
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (code, err, took) = run_to_end(&refs, case.within.max(T));
    if err.contains("panicked") {
        return Err(format!("panicked: {err}"));
    }
    if took > case.within {
        return Err(format!("took {took:?} (bound {:?}); {err}", case.within));
    }
    match case.expect {
        Expect::Success if code == Some(0) => Ok(()),
        Expect::Success => Err(format!("exit {code:?}: {err}")),
        Expect::Error(words) => {
            if code != Some(1) {
                return Err(format!("exit {code:?} (want 1): {err}"));
            }
            let line = err
                .lines()
                .find(|l| l.starts_with("vmm: error: "))
                .ok_or_else(|| format!("no `vmm: error:` line: {err}"))?;
            match words.iter().find(|w| !line.contains(**w)) {
                Some(w) => Err(format!("{line:?} does not mention {w:?}")),
                None => Ok(()),
            }
        }
    }
}

/// Control API requests (method, path, body) that must get a typed error and change
/// nothing.
const API_CASES: &[(&str, &str, &str, &str)] = &[
    (
        "PUT",
        "/api/v1/vm.resize",
        "not json at all",
        "malformed_json",
    ),
    ("PUT", "/api/v1/vm.resize", "{oops", "malformed_json"),
    ("PUT", "/api/v1/vm.resize", "[3]", "not_an_object"),
    ("PUT", "/api/v1/vm.reboot", "", "not_found"),
    ("GET", "/api/v1/vm.pause", "", "method_not_allowed"),
    ("PUT", "/api/v1/vm.resize", "{}", "missing_field"),
    (
        "PUT",
        "/api/v1/vm.resize",
        "{\"desired_vcpus\":\"3\"}",
        "wrong_type",
    ),
    (
        "PUT",
        "/api/v1/vm.resize",
        "{\"desired_vcpus\":-3}",
        "wrong_type",
    ),
    (
        "PUT",
        "/api/v1/vm.resize",
        "{\"desired_vcpus\":2.5}",
        "wrong_type",
    ),
    (
        "PUT",
        "/api/v1/vm.resize",
        "{\"desired_vcpus\":2,\"now\":true}",
        "unknown_field",
    ),
    (
        "PUT",
        "/api/v1/vm.resize",
        "{\"desired_vcpus\":2,\"desired_vcpus\":3}",
        "duplicate_field",
    ),
    ("PUT", "/api/v1/vm.resize", "{\"desired_vcpus\":0}", "zero"),
    (
        "PUT",
        "/api/v1/vm.resize",
        "{\"desired_vcpus\":5}",
        "above_max",
    ),
    ("PUT", "/api/v1/vm.resume", "", "not_paused"),
];

fn run_api_cases(failures: &mut Vec<String>) {
    let vmm = Vmm::start(
        "corpus-api",
        &GuestSpec::spinner(),
        true,
        &["--cpus", "boot=1,max=4"],
    );
    let mut conn = vmm::api::Connection::connect(&vmm.sock).expect("connect");
    for (method, path, body, kind) in API_CASES {
        let v = conn
            .raw(
                method,
                path,
                (!body.is_empty()).then(|| body.to_string()),
                IO_TIMEOUT,
            )
            .map(|a| a.body.unwrap_or_default());
        match v {
            Ok(v) if v["kind"] == *kind => {}
            other => failures.push(format!(
                "api {method} {path} {body:?}: want {kind}, got {other:?}"
            )),
        }
    }
    // An oversized body is refused.
    let big = Some(" ".repeat(100 * 1024));
    match conn.raw("PUT", "/api/v1/vm.resize", big, IO_TIMEOUT) {
        Ok(a) if a.status == 413 => {}
        other => failures.push(format!("api oversized body: {other:?}")),
    }
    let v = vmm.call(r#"{"command":"info"}"#);
    if v["ok"] != true || v["paused"] != false || v["active_vcpus"] != 1 {
        failures.push(format!("api: the VM changed after bad requests: {v}"));
    }
}

/// A runtime scenario: its name and its check.
type Scenario = (&'static str, fn() -> Result<(), String>);

/// Runtime scenarios: what a guest or the host does while the VM runs.
fn runtime_cases() -> Vec<Scenario> {
    vec![
        (
            "undrained stdout, pause + shutdown (item 1)",
            undrained_stdout,
        ),
        ("SIGTERM, SIGINT, SIGHUP (item 4)", termination_signals),
        ("guest looping eject writes (item 3)", eject_flood),
        (
            "forbidden vCPU syscall under seccomp (item 10)",
            seccomp_violation,
        ),
    ]
}

fn undrained_stdout() -> Result<(), String> {
    let mut vmm = Vmm::start("corpus-undrained", &printer(), false, &[]);
    std::thread::sleep(Duration::from_secs(1));
    for cmd in ["pause", "shutdown"] {
        let v = vmm.call(&format!("{{\"command\":\"{cmd}\"}}"));
        if v["ok"] != true {
            return Err(format!("{cmd}: {v}; {}", vmm.stderr()));
        }
    }
    match vmm.wait_exit(Duration::from_secs(20)) {
        Some(s) if s.success() => Ok(()),
        other => Err(format!("exit {other:?}; {}", vmm.stderr())),
    }
}

fn termination_signals() -> Result<(), String> {
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let mut vmm = Vmm::start(&format!("corpus-{name}"), &GuestSpec::spinner(), true, &[]);
        // SAFETY: signalling our own live child.
        unsafe { libc::kill(vmm.pid(), sig) };
        let code = vmm
            .wait_exit(Duration::from_secs(20))
            .and_then(|s| s.code());
        if code != Some(128 + sig) || vmm.sock.exists() {
            return Err(format!(
                "{name}: exit {code:?}, socket left: {}; {}",
                vmm.sock.exists(),
                vmm.stderr()
            ));
        }
    }
    Ok(())
}

fn eject_flood() -> Result<(), String> {
    let image = images::eject_flood_elf();
    let mut child = std::process::Command::new(common::vmm_bin())
        .arg("--kernel")
        .arg(&image.0)
        .args(["--memory", "size=128M", "--cpus", "boot=1,max=4"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: signalling our own live child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    let err = reader.join().unwrap_or_default();
    let warnings = err.lines().filter(|l| l.contains("WARN")).count() as u64;
    let ejects = err.lines().filter(|l| l.contains("tried to eject")).count();
    if ejects == 0 {
        return Err(format!("the guest never ejected: {err}"));
    }
    // First 10 in full per kind, a summary at most every 10 s.
    if warnings > vmm::vm::ratelimit::FIRST_N + 2 {
        return Err(format!("{warnings} warning lines in 3 s"));
    }
    Ok(())
}

fn seccomp_violation() -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    let guest = GuestFile::create(&GuestSpec::spinner()).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let out = std::process::Command::new(common::vmm_bin())
        .arg("--kernel")
        .arg(guest.path())
        .args(["--memory", "size=128M"])
        .env(vmm::seccomp::VIOLATION_ENV, "vcpu")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.signal() != Some(libc::SIGSYS) || start.elapsed() > T {
        return Err(format!("{:?}", out.status));
    }
    Ok(())
}

#[test]
fn bad_input_corpus() {
    let kvm = kvm_available();
    let _slot = guest_slot();
    let kernel = workspace_root().join("target/guest/bzImage");
    assert!(
        kernel.is_file(),
        "run `bash scripts/guest.sh` first (the corpus uses the guest kernel)"
    );
    let kernel = kernel.display().to_string();
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in cli_cases() {
        if case.kvm && !kvm {
            eprintln!("SKIPPED (no KVM): {}", case.name);
            continue;
        }
        ran += 1;
        if let Err(e) = run_cli_case(&case, &kernel) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    if kvm {
        run_api_cases(&mut failures);
        ran += API_CASES.len();
        for (name, f) in runtime_cases() {
            ran += 1;
            if let Err(e) = f() {
                failures.push(format!("{name}: {e}"));
            }
        }
    } else {
        eprintln!("SKIPPED (no KVM): the API and runtime cases");
    }
    eprintln!("bad-input corpus: {ran} case(s), {} failed", failures.len());
    assert!(failures.is_empty(), "regressed:\n{}", failures.join("\n"));
}
