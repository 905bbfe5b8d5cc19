//! The control API end to end: the real `vmm` binary on real KVM with `--api-socket`,
//! driven over the socket and through `vmm remote`.
//!
//! The guest is the synthetic spinner of `vmm_testguest` (an ELF64 "kernel" whose 64-bit
//! code loops forever), so the VM stays up for as long as the test needs without depending
//! on a Linux guest booting (the Debian kernel does not finish booting on kvm-pvm hosts).
//! Hot-added vCPUs are real KVM vCPU threads that wait for an INIT/SIPI the spinner never
//! sends, and the spinner never ejects anything: so hot-adds stay "inserting" and removals
//! stay "removing", which is exactly what `info` must show for a guest that never completes
//! them.
//!
//! Without /dev/kvm the tests fail with a clear message unless VMM_ALLOW_NO_KVM=1.

mod common;

use common::{guest_slot, kvm_available, vmm_bin, VmmProcess};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmm_testguest::{GuestFile, GuestSpec};

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-api-{}-{name}.sock", std::process::id()))
}

/// The VMM under test and its socket.
struct Api {
    vmm: VmmProcess,
    path: PathBuf,
    _guest: GuestFile,
}

impl Api {
    /// Boots the spinner with boot=1,max=4 and waits for the socket to accept connections.
    fn start(name: &str) -> Api {
        Self::start_guest(name, &GuestSpec::spinner())
    }

    /// [`Api::start`] with another synthetic guest.
    fn start_guest(name: &str, spec: &GuestSpec) -> Api {
        let guest = GuestFile::create(spec).expect("write the test guest");
        let path = socket_path(name);
        let _ = std::fs::remove_file(&path);
        // A stale socket from a dead VMM: the new one must replace it.
        drop(UnixListener::bind(&path).expect("bind a stale socket"));
        assert!(path.exists());
        let vmm = VmmProcess::spawn(&[
            "--kernel".to_string(),
            guest.path().display().to_string(),
            "--cpus".into(),
            "boot=1,max=4".into(),
            "--memory".into(),
            "size=128M".into(),
            "--api-socket".into(),
            path.display().to_string(),
        ]);
        let api = Api {
            vmm,
            path,
            _guest: guest,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut s) = UnixStream::connect(&api.path) {
                // The stale socket refuses connections; a live answer means the VMM's.
                if let Some(v) = exchange(&mut s, r#"{"command":"info"}"#) {
                    if v["ok"] == true {
                        break;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "the API socket never answered\n{}",
                api.vmm.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        api
    }

    /// One request on a fresh connection.
    fn call(&self, line: &str) -> Value {
        let mut s = UnixStream::connect(&self.path).expect("connect to the API socket");
        exchange(&mut s, line)
            .unwrap_or_else(|| panic!("no answer to {line:?}\n{}", self.vmm.diagnostics()))
    }

    fn ok(&self, line: &str) -> Value {
        let v = self.call(line);
        assert_eq!(v["ok"], true, "{line} -> {v}\n{}", self.vmm.diagnostics());
        v
    }

    /// Expects `ok:false` of `kind` and returns the error object.
    fn err(&self, line: &str, kind: &str) -> Value {
        let v = self.call(line);
        assert_eq!(v["ok"], false, "{line} -> {v}");
        assert_eq!(v["error"]["kind"], kind, "{line} -> {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        v["error"].clone()
    }

    fn info(&self) -> Value {
        self.ok(r#"{"command":"info"}"#)
    }

    /// `vmm remote --api-socket PATH args...`
    fn remote(&self, args: &[&str]) -> std::process::Output {
        Command::new(vmm_bin())
            .arg("remote")
            .arg("--api-socket")
            .arg(&self.path)
            .args(args)
            .output()
            .expect("run vmm remote")
    }
}

/// Writes `line` and a newline, reads one response line (None on EOF or timeout).
fn exchange(s: &mut UnixStream, line: &str) -> Option<Value> {
    s.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    s.write_all(line.as_bytes()).ok()?;
    s.write_all(b"\n").ok()?;
    read_response(s)
}

fn read_response(s: &UnixStream) -> Option<Value> {
    let mut r = BufReader::new(s);
    let mut resp = String::new();
    match r.read_line(&mut resp) {
        Ok(n) if n > 0 => {
            assert!(resp.ends_with('\n'), "response not newline-terminated");
            Some(serde_json::from_str(&resp).expect("response is JSON"))
        }
        _ => None,
    }
}

/// The slot states of an info response.
fn states(info: &Value) -> Vec<String> {
    info["vcpus"]
        .as_array()
        .expect("vcpus array")
        .iter()
        .map(|v| v["state"].as_str().expect("state").to_string())
        .collect()
}

/// What must not change when a request is refused.
fn shape(info: &Value) -> Value {
    json!({
        "states": states(info),
        "active": info["active_vcpus"],
        "paused": info["paused"],
        "removals": info["pending_removals"],
        "insertions": info["pending_insertions"],
        "ged": info["ged_notifications"],
    })
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

#[test]
fn control_api_end_to_end() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let mut api = Api::start("e2e");

    // The socket is private and is a socket.
    let meta = std::fs::symlink_metadata(&api.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");

    // Boot state: vCPU 0 running, the rest absent.
    let info = api.info();
    assert_eq!(info["max_vcpus"], 4);
    assert_eq!(info["boot_vcpus"], 1);
    assert_eq!(info["active_vcpus"], 1);
    assert_eq!(info["paused"], false);
    assert_eq!(states(&info), ["running", "absent", "absent", "absent"]);
    assert_eq!(info["vcpus"][0]["life"], "active");
    for key in ["pauses", "pauses_overlapping_mmio", "rekicks", "ejects"] {
        assert!(info["stats"][key].is_u64(), "stats.{key} in {info}");
    }

    // Resume when not paused: typed error, nothing changes.
    let before = shape(&api.info());
    api.err(r#"{"command":"resume"}"#, "not_paused");
    assert_eq!(shape(&api.info()), before);

    // Pause: every active vCPU acknowledges; pausing again is fine; resume.
    api.ok(r#"{"command":"pause"}"#);
    let info = api.info();
    assert_eq!(info["paused"], true);
    assert_eq!(states(&info), ["paused", "absent", "absent", "absent"]);
    assert_eq!(info["vcpus"][0]["paused"], true);
    assert!(info["stats"]["pauses"].as_u64().unwrap() >= 1);
    api.ok(r#"{"command":"pause"}"#);
    api.ok(r#"{"command":"resume"}"#);
    let info = api.info();
    assert_eq!(info["paused"], false);
    assert_eq!(states(&info), ["running", "absent", "absent", "absent"]);
    api.err(r#"{"command":"resume"}"#, "not_paused");

    // Grow to 4: three real vCPU threads, inserting until the guest scans (it never does).
    let r = api.ok(r#"{"command":"resize","cpus":4}"#);
    assert_eq!(r["added"], json!([1, 2, 3]), "{r}");
    assert_eq!(r["removing"], json!([]));
    let info = api.info();
    assert_eq!(info["active_vcpus"], 4);
    assert_eq!(
        states(&info),
        ["running", "inserting", "inserting", "inserting"]
    );
    assert_eq!(info["pending_insertions"], json!([1, 2, 3]));
    assert_eq!(info["ged_notifications"], 1);
    for i in 1..4 {
        assert_eq!(info["vcpus"][i]["life"], "active", "{info}");
        assert_eq!(info["vcpus"][i]["inserting"], true);
    }
    // Resizing to the current count is a no-op.
    let r = api.ok(r#"{"command":"resize","cpus":4}"#);
    assert_eq!(
        (r["added"].clone(), r["removing"].clone()),
        (json!([]), json!([]))
    );
    assert_eq!(api.info()["ged_notifications"], 1);

    // A pause reaches the hot-added vCPUs too (they sit in KVM_RUN waiting for SIPI).
    api.ok(r#"{"command":"pause"}"#);
    let info = api.info();
    for i in 0..4 {
        assert_eq!(info["vcpus"][i]["paused"], true, "vCPU {i}: {info}");
    }
    api.ok(r#"{"command":"resume"}"#);

    // Shrink to 2: the guest is asked to give up 3 and 2. It never ejects them, so they
    // stay present and "removing", and info says so.
    let r = api.ok(r#"{"command":"resize","cpus":2}"#);
    assert_eq!(r["removing"], json!([3, 2]), "{r}");
    std::thread::sleep(Duration::from_millis(300));
    let info = api.info();
    assert_eq!(
        states(&info),
        ["running", "inserting", "removing", "removing"]
    );
    assert_eq!(info["pending_removals"], json!([2, 3]));
    assert_eq!(
        info["active_vcpus"], 4,
        "not reaped: the guest never ejected"
    );
    for i in 2..4 {
        assert_eq!(info["vcpus"][i]["remove_requested"], true);
        assert_eq!(info["vcpus"][i]["removing"], true);
        assert_eq!(info["vcpus"][i]["life"], "active");
    }
    assert_eq!(info["stats"]["ejects"], 0);
    api.ok(r#"{"command":"resize","cpus":2}"#); // no-op while removals are pending

    // Growing again withdraws the pending removal the guest has not seen (lowest first).
    let r = api.ok(r#"{"command":"resize","cpus":3}"#);
    assert_eq!(r["cancelled"], json!([2]), "{r}");
    assert_eq!(r["added"], json!([]));
    let info = api.info();
    assert_eq!(info["pending_removals"], json!([3]));
    assert_eq!(info["vcpus"][2]["remove_requested"], false);
    assert_eq!(info["vcpus"][3]["state"], "removing");
    api.ok(r#"{"command":"resize","cpus":2}"#);

    // Bad resizes name the limit and change nothing.
    let before = shape(&api.info());
    let e = api.err(r#"{"command":"resize","cpus":0}"#, "invalid_value");
    assert!(e["message"].as_str().unwrap().contains("at least 1"), "{e}");
    let e = api.err(r#"{"command":"resize","cpus":5}"#, "above_max");
    assert_eq!(
        (e["requested"].clone(), e["max"].clone()),
        (json!(5), json!(4))
    );
    assert!(e["message"].as_str().unwrap().contains("maximum"), "{e}");
    api.err(
        r#"{"command":"resize","cpus":18446744073709551615}"#,
        "above_max",
    );

    // Malformed and ill-formed requests: typed errors, nothing changes.
    for (line, kind) in [
        ("{\"command\":\"info\"", "malformed_json"),
        ("not json at all", "malformed_json"),
        ("", "malformed_json"),
        ("[\"pause\"]", "not_an_object"),
        ("{\"command\":\"reboot\"}", "unknown_command"),
        ("{\"command\":\"pause\",\"now\":true}", "unknown_field"),
        (
            "{\"command\":\"resize\",\"cpus\":3,\"extra\":1}",
            "unknown_field",
        ),
        ("{\"command\":\"resize\"}", "missing_field"),
        ("{\"cpus\":3}", "missing_field"),
        ("{\"command\":\"resize\",\"cpus\":\"3\"}", "wrong_type"),
        ("{\"command\":\"resize\",\"cpus\":-3}", "wrong_type"),
        ("{\"command\":\"resize\",\"cpus\":2.5}", "wrong_type"),
        ("{\"command\":7}", "wrong_type"),
        (
            "{\"command\":\"pause\",\"command\":\"pause\"}",
            "duplicate_field",
        ),
    ] {
        api.err(line, kind);
    }
    // Several requests, good and bad, on one connection.
    let mut s = UnixStream::connect(&api.path).unwrap();
    for line in ["{\"command\":\"info\"}", "{oops", "{\"command\":\"info\"}"] {
        let v = exchange(&mut s, line).expect("answer on a kept connection");
        assert_eq!(v["ok"], line != "{oops", "{line} -> {v}");
    }
    drop(s);
    assert_eq!(shape(&api.info()), before);

    // An oversized line is refused and that connection closed; others are unaffected.
    let mut big = UnixStream::connect(&api.path).unwrap();
    big.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = big.write_all(&vec![b' '; 100 * 1024]); // the server may hang up mid-write
    let v = read_response(&big).expect("an answer to the oversized line");
    assert_eq!(v["error"]["kind"], "too_large", "{v}");
    let mut rest = Vec::new();
    let _ = big.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "connection not closed after an oversized line"
    );
    assert_eq!(shape(&api.info()), before);

    // A client that connects and sends nothing (and one that stops mid-line) does not
    // block others, sequential or concurrent.
    let _silent = UnixStream::connect(&api.path).unwrap();
    let mut partial = UnixStream::connect(&api.path).unwrap();
    partial.write_all(br#"{"command":"#).unwrap();
    let started = Instant::now();
    api.info();
    let path = api.path.clone();
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&path).unwrap();
                for i in 0..20 {
                    let line = if (t + i) % 3 == 0 {
                        r#"{"command":"nope"}"#
                    } else {
                        r#"{"command":"info"}"#
                    };
                    let v = exchange(&mut s, line).expect("answer");
                    assert_eq!(v["ok"], (t + i) % 3 != 0, "{v}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("concurrent client");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "idle clients slowed the others down: {:?}",
        started.elapsed()
    );

    // The `vmm remote` client: JSON on stdout, exit 1 with the message on error.
    let out = api.remote(&["info"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("remote prints JSON");
    assert_eq!(v["ok"], true);
    assert_eq!(v["max_vcpus"], 4);
    let out = api.remote(&["resume"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vmm: error: the VM is not paused"),
        "{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("remote prints JSON");
    assert_eq!(v["ok"], false);
    let out = api.remote(&["resize", "--cpus", "9"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("maximum") && stderr.contains('4'),
        "{stderr}"
    );
    let out = api.remote(&["pause"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(api.info()["paused"], true);
    let out = api.remote(&["resize", "--cpus", "3"]);
    assert!(out.status.success(), "resize while paused: {out:?}");
    let out = api.remote(&["resume"]);
    assert!(out.status.success(), "{out:?}");

    // Shutdown: answered, the VMM exits 0 and removes its socket.
    let out = api.remote(&["shutdown"]);
    assert!(out.status.success(), "{out:?}");
    let status = api.vmm.wait_exit(EXIT_TIMEOUT);
    let diag = api.vmm.diagnostics();
    let status = status.unwrap_or_else(|| panic!("vmm did not exit after shutdown\n{diag}"));
    assert!(status.success(), "vmm exit status {status}\n{diag}");
    assert!(diag.contains("vmm: VM shut down"), "{diag}");
    assert!(!diag.contains("panicked"), "{diag}");
    assert!(
        wait_gone(&api.path, Duration::from_secs(2)),
        "socket left behind"
    );

    // With the VMM gone, the client fails cleanly.
    let out = api.remote(&["info"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

/// Polls `info` until `pred` holds; panics with the last info after `timeout`.
fn wait_info(api: &Api, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let info = api.info();
        if pred(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last info: {info}\n{}",
            api.vmm.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The full hot-add/hot-remove flow through the binary with a guest that does what Linux's
/// `CSCN` + `_EJ0` do (vCPU 0 scans the controller, acknowledges insertions, ejects CPUs
/// being removed): resize down ends with the slots reaped and absent.
#[test]
fn resize_with_a_guest_that_ejects() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let spec = GuestSpec {
        serial_every: 0,
        ..GuestSpec::default()
    };
    let mut api = Api::start_guest("eject", &spec);
    let t = Duration::from_secs(20);

    let r = api.ok(r#"{"command":"resize","cpus":4}"#);
    assert_eq!(r["added"], json!([1, 2, 3]));
    let info = wait_info(&api, t, "the guest to acknowledge the hot-adds", |i| {
        i["pending_insertions"] == json!([])
    });
    assert_eq!(states(&info), ["running"; 4]);

    let r = api.ok(r#"{"command":"resize","cpus":2}"#);
    assert_eq!(r["removing"], json!([3, 2]));
    let info = wait_info(&api, t, "the guest to eject vCPUs 2 and 3", |i| {
        states(i) == ["running", "running", "absent", "absent"]
    });
    assert_eq!(info["stats"]["ejects"], 2);
    assert_eq!(info["pending_removals"], json!([]));
    assert_eq!(info["active_vcpus"], 2);

    // Reaped slots are reused.
    let r = api.ok(r#"{"command":"resize","cpus":3}"#);
    assert_eq!(r["added"], json!([2]));
    wait_info(&api, t, "the re-added vCPU 2", |i| {
        states(i) == ["running", "running", "running", "absent"]
    });
    api.ok(r#"{"command":"pause"}"#);
    let info = api.info();
    assert_eq!(states(&info), ["paused", "paused", "paused", "absent"]);
    api.ok(r#"{"command":"resume"}"#);

    api.ok(r#"{"command":"shutdown"}"#);
    let status = api.vmm.wait_exit(EXIT_TIMEOUT);
    let diag = api.vmm.diagnostics();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{diag}");
    assert!(
        wait_gone(&api.path, Duration::from_secs(2)),
        "socket left behind"
    );
}

#[test]
fn shutdown_over_a_raw_connection() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let mut api = Api::start("raw-shutdown");
    let mut s = UnixStream::connect(&api.path).unwrap();
    let v = exchange(&mut s, r#"{"command":"shutdown"}"#).expect("shutdown answered");
    assert_eq!(v, json!({"ok": true}));
    let status = api.vmm.wait_exit(EXIT_TIMEOUT);
    let diag = api.vmm.diagnostics();
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{diag}");
    assert!(
        wait_gone(&api.path, Duration::from_secs(2)),
        "socket left behind"
    );
}

#[test]
fn api_socket_never_clobbers_a_regular_file() {
    if !kvm_available() {
        return;
    }
    let guest = GuestFile::create(&GuestSpec::spinner()).unwrap();
    let path = socket_path("regular-file");
    std::fs::write(&path, b"not a socket").unwrap();
    let f = common::run_vmm(
        &[
            "--kernel".to_string(),
            guest.path().display().to_string(),
            "--memory".into(),
            "size=128M".into(),
            "--api-socket".into(),
            path.display().to_string(),
        ],
        EXIT_TIMEOUT,
    );
    let contents = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(f.status.and_then(|s| s.code()), Some(1), "{}", f.stderr);
    assert!(
        f.stderr.contains("not a socket; refusing to replace it"),
        "{}",
        f.stderr
    );
    assert_eq!(contents.unwrap(), b"not a socket");
}
