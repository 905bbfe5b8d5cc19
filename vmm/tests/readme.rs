//! README's control-API examples, run as written against a live `vmm` on real KVM (the
//! synthetic spinner guest): the block after `<!-- tested by vmm/tests/readme.rs -->` is
//! run line by line with bash in the workspace root, `S` set to the VMM's socket and
//! `target/release/vmm` meaning the binary under test; after each line the test checks
//! what it did through its own API connection. Needs `curl` (scripts/test.sh installs it).

mod common;

use common::{guest_slot, kvm_available, vmm_bin, workspace_root, VmmProcess};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};
use vmm::api::{Connection, Request};
use vmm_testguest::{GuestFile, GuestSpec};

const MARK: &str = "<!-- tested by vmm/tests/readme.rs -->";

/// The lines of README's tested block.
fn readme_lines() -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let at = text.find(MARK).expect("README has the tested block");
    let rest = &text[at + MARK.len()..];
    let start = rest.find("```sh\n").expect("a sh block after the mark") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block ends");
    rest[start..start + end]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_control_examples_work_as_written() {
    if !kvm_available() {
        return;
    }
    assert!(
        Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "curl is missing: `apt-get install curl` (scripts/test.sh does)"
    );
    let lines = readme_lines();
    assert!(lines
        .iter()
        .any(|l| l.contains("curl --unix-socket $S -X PUT http://localhost/api/v1/vm.pause")));
    assert!(lines.len() >= 8, "{lines:?}");
    assert!(
        lines.last().unwrap().contains("shutdown"),
        "the block ends the VM: {lines:?}"
    );

    let _slot = guest_slot();
    let guest = GuestFile::create(&GuestSpec::spinner()).expect("test guest");
    let sock = std::env::temp_dir().join(format!("vmm-readme-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let mut vmm = VmmProcess::spawn(&[
        "--kernel".to_string(),
        guest.path().display().to_string(),
        "--cpus".into(),
        "boot=1,max=4".into(),
        "--memory".into(),
        "size=128M".into(),
        "--api-socket".into(),
        sock.display().to_string(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut api = loop {
        if let Ok(mut c) = Connection::connect(&sock) {
            if c.send(&Request::Ping, Duration::from_secs(5)).is_ok() {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "no API\n{}", vmm.diagnostics());
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut info = || -> Value {
        api.send(&Request::Info, Duration::from_secs(10))
            .expect("info")
            .body
            .expect("info body")
    };

    for line in &lines {
        let script = line.replace("target/release/vmm", vmm_bin());
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("S", &sock)
            .current_dir(workspace_root())
            .output()
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let diag = format!(
            "{line}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "README line failed: {diag}");
        let json = || -> Value {
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {diag}"))
        };
        if line.contains("vmm.ping") {
            assert_eq!(json()["version"], env!("CARGO_PKG_VERSION"), "{diag}");
        } else if line.contains("vm.pause") {
            assert_eq!(stdout, "", "204 has no body: {diag}");
            assert_eq!(info()["paused"], true, "{diag}");
        } else if line.contains("vm.info") {
            let v = json();
            assert_eq!(
                (v["paused"].clone(), v["state"].clone()),
                (true.into(), "Paused".into()),
                "{diag}"
            );
        } else if line.contains("-i -X PUT") && line.contains("vm.resume") {
            // Not paused any more: the error as a client sees it, status line included.
            assert!(stdout.starts_with("HTTP/1.1 409"), "{diag}");
            assert!(stdout.contains("\"kind\":\"not_paused\""), "{diag}");
        } else if line.contains("vm.resume") {
            assert_eq!(stdout, "", "{diag}");
            assert_eq!(info()["paused"], false, "{diag}");
        } else if line.contains("vm.resize") {
            assert_eq!(json()["added"], serde_json::json!([1, 2, 3]), "{diag}");
            assert_eq!(info()["active_vcpus"], 4, "{diag}");
        } else if line.contains("remote") && line.ends_with(" info") {
            assert_eq!(json()["max_vcpus"], 4, "{diag}");
        } else if line.contains("resize --cpus 2") {
            assert_eq!(json()["removing"], serde_json::json!([3, 2]), "{diag}");
            assert_eq!(
                info()["pending_removals"],
                serde_json::json!([2, 3]),
                "{diag}"
            );
        } else if line.contains("shutdown") {
            let status = vmm.wait_exit(Duration::from_secs(30));
            assert!(
                status.is_some_and(|s| s.success()),
                "{status:?}\n{}",
                vmm.diagnostics()
            );
        } else {
            panic!("the test does not know what this README line should do: {line}");
        }
    }
    assert!(!sock.exists(), "socket left behind");
}
