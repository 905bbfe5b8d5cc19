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
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vmm::api::client::Answer;
use vmm::api::Connection;
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
    doc: serde_yaml::Value,
    _guest: GuestFile,
}

impl Api {
    /// Boots the spinner with boot=1,max=4 and waits for the socket to answer.
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
            doc: common::openapi::document(),
            _guest: guest,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The stale socket refuses connections; a live answer means the VMM's.
            let up = Connection::connect(&api.path)
                .ok()
                .and_then(|mut c| c.raw("GET", "/api/v1/vmm.ping", None, IO_TIMEOUT).ok());
            if up.is_some_and(|a| a.status == 200) {
                break;
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
    /// Every answer is checked against the OpenAPI document (its status listed for the
    /// operation, its body as the schema says).
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        let mut c = Connection::connect(&self.path).expect("connect to the API socket");
        let a = c
            .raw(method, path, body.map(str::to_string), IO_TIMEOUT)
            .unwrap_or_else(|e| {
                panic!(
                    "no answer to {method} {path}: {e}\n{}",
                    self.vmm.diagnostics()
                )
            });
        common::openapi::check_any(&self.doc, method, path, a.status, a.body.as_ref());
        a
    }

    /// A PUT that must answer 204 with no body.
    fn action(&self, endpoint: &str) {
        let a = self.call("PUT", &format!("/api/v1/{endpoint}"), None);
        assert_eq!(
            a.status,
            204,
            "{endpoint} -> {a:?}\n{}",
            self.vmm.diagnostics()
        );
        assert_eq!(a.text, "", "204 has no body");
    }

    fn resize(&self, body: &str) -> Answer {
        self.call("PUT", "/api/v1/vm.resize", Some(body))
    }

    fn resize_ok(&self, n: usize) -> Value {
        let a = self.resize(&json!({ "desired_vcpus": n }).to_string());
        assert_eq!(a.status, 200, "resize {n} -> {a:?}");
        a.body.expect("resize answers its outcome")
    }

    /// Expects an error answer with `status` and `kind`; returns its body.
    fn err(&self, a: Answer, status: u16, kind: &str) -> Value {
        assert_eq!(a.status, status, "{a:?}");
        let b = a.body.expect("an error has a JSON body");
        assert_eq!(b["kind"], kind, "{b}");
        assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
        b
    }

    fn info(&self) -> Value {
        let a = self.call("GET", "/api/v1/vm.info", None);
        assert_eq!(a.status, 200, "{a:?}");
        a.body.expect("info has a body")
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

/// Writes raw bytes on a new connection and reads until the server closes or `timeout`.
fn raw_exchange(path: &Path, bytes: &[u8], timeout: Duration) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    let _ = s.write_all(bytes); // the server may answer and hang up mid-write
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
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

    // vmm.ping: Cloud Hypervisor's VmmPingResponse.
    let a = api.call("GET", "/api/v1/vmm.ping", None);
    assert_eq!(a.status, 200);
    let ping = a.body.unwrap();
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(ping["pid"], api.vmm.pid());
    assert!(ping["build_version"].is_string());

    // Boot state: vCPU 0 running, the rest absent; every field of the report is there.
    let info = api.info();
    assert_eq!(info["state"], "Running");
    assert_eq!(info["max_vcpus"], 4);
    assert_eq!(info["boot_vcpus"], 1);
    assert_eq!(info["active_vcpus"], 1);
    assert_eq!(info["paused"], false);
    assert_eq!(info["memory_size"], 128u64 << 20);
    assert_eq!(info["ged_notification_held"], false);
    assert_eq!(info["pending_insertions"], json!([]));
    assert_eq!(states(&info), ["running", "absent", "absent", "absent"]);
    assert_eq!(info["vcpus"][0]["life"], "active");
    for key in [
        "pauses",
        "pauses_overlapping_mmio",
        "pauses_during_hotplug_access",
        "pauses_during_eject",
        "pauses_during_reap",
        "rekicks",
        "ejects",
    ] {
        assert!(info["stats"][key].is_u64(), "stats.{key} in {info}");
    }
    for key in ["index", "kicks"] {
        assert!(info["vcpus"][0][key].is_u64(), "vcpus[0].{key} in {info}");
    }

    // Resume when not paused: typed error, nothing changes.
    let before = shape(&api.info());
    api.err(
        api.call("PUT", "/api/v1/vm.resume", None),
        409,
        "not_paused",
    );
    assert_eq!(shape(&api.info()), before);

    // Pause: every active vCPU acknowledges; pausing again is fine; resume.
    api.action("vm.pause");
    let info = api.info();
    assert_eq!(info["paused"], true);
    assert_eq!(info["state"], "Paused");
    assert_eq!(states(&info), ["paused", "absent", "absent", "absent"]);
    assert_eq!(info["vcpus"][0]["paused"], true);
    assert!(info["stats"]["pauses"].as_u64().unwrap() >= 1);
    api.action("vm.pause");
    api.action("vm.resume");
    let info = api.info();
    assert_eq!(info["paused"], false);
    assert_eq!(states(&info), ["running", "absent", "absent", "absent"]);
    api.err(
        api.call("PUT", "/api/v1/vm.resume", None),
        409,
        "not_paused",
    );

    // Grow to 4: three real vCPU threads, inserting until the guest scans (it never does).
    let r = api.resize_ok(4);
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
    let r = api.resize_ok(4);
    assert_eq!(
        (r["added"].clone(), r["removing"].clone()),
        (json!([]), json!([]))
    );
    assert_eq!(api.info()["ged_notifications"], 1);

    // A pause reaches the hot-added vCPUs too (they sit in KVM_RUN waiting for SIPI).
    api.action("vm.pause");
    let info = api.info();
    for i in 0..4 {
        assert_eq!(info["vcpus"][i]["paused"], true, "vCPU {i}: {info}");
    }
    api.action("vm.resume");

    // Shrink to 2: the guest is asked to give up 3 and 2. It never ejects them, so they
    // stay present and "removing", and info says so.
    let r = api.resize_ok(2);
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
    api.resize_ok(2); // no-op while removals are pending

    // Growing again withdraws the pending removal the guest has not seen (lowest first).
    let r = api.resize_ok(3);
    assert_eq!(r["cancelled"], json!([2]), "{r}");
    assert_eq!(r["added"], json!([]));
    let info = api.info();
    assert_eq!(info["pending_removals"], json!([3]));
    assert_eq!(info["vcpus"][2]["remove_requested"], false);
    assert_eq!(info["vcpus"][3]["state"], "removing");
    api.resize_ok(2);

    // Bad resizes name the limit and change nothing.
    let before = shape(&api.info());
    let e = api.err(api.resize(r#"{"desired_vcpus":0}"#), 400, "zero");
    assert!(e["message"].as_str().unwrap().contains("at least 1"), "{e}");
    let e = api.err(api.resize(r#"{"desired_vcpus":5}"#), 400, "above_max");
    assert_eq!(
        (e["requested"].clone(), e["max"].clone()),
        (json!(5), json!(4))
    );
    assert!(e["message"].as_str().unwrap().contains("maximum"), "{e}");
    api.err(
        api.resize(r#"{"desired_vcpus":18446744073709551615}"#),
        400,
        "above_max",
    );

    // Malformed and ill-formed bodies: typed errors, nothing changes.
    for (body, kind) in [
        ("{\"desired_vcpus\":3", "malformed_json"),
        ("not json at all", "malformed_json"),
        ("", "malformed_json"),
        ("[3]", "not_an_object"),
        ("{\"desired_vcpus\":3,\"desired_ram\":1}", "unknown_field"),
        ("{}", "missing_field"),
        ("{\"desired_vcpus\":\"3\"}", "wrong_type"),
        ("{\"desired_vcpus\":-3}", "wrong_type"),
        ("{\"desired_vcpus\":2.5}", "wrong_type"),
        (
            "{\"desired_vcpus\":2,\"desired_vcpus\":3}",
            "duplicate_field",
        ),
    ] {
        api.err(api.resize(body), 400, kind);
    }
    api.err(
        api.call("PUT", "/api/v1/vm.pause", Some("{\"now\":true}")),
        400,
        "unknown_field",
    );
    // Unknown paths are 404, wrong methods 405 (with Allow).
    for path in [
        "/api/v1/vm.reboot",
        "/",
        "/api/v2/vm.info",
        "/api/v1/",
        "/api/v1/vm.info/x",
    ] {
        api.err(api.call("GET", path, None), 404, "not_found");
    }
    for (method, path, allowed) in [
        ("GET", "/api/v1/vm.pause", "PUT"),
        ("POST", "/api/v1/vm.resize", "PUT"),
        ("PUT", "/api/v1/vm.info", "GET"),
        ("DELETE", "/api/v1/vmm.ping", "GET"),
    ] {
        let e = api.err(api.call(method, path, None), 405, "method_not_allowed");
        assert_eq!(e["allowed"], allowed);
    }
    let raw = raw_exchange(
        &api.path,
        b"GET /api/v1/vm.pause HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        IO_TIMEOUT,
    );
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    assert!(raw.to_ascii_lowercase().contains("allow: put"), "{raw}");
    // Several requests, good and bad, on one kept-alive connection.
    let mut c = Connection::connect(&api.path).unwrap();
    for (path, status) in [
        ("/api/v1/vm.info", 200),
        ("/api/v1/oops", 404),
        ("/api/v1/vm.info", 200),
    ] {
        let a = c
            .raw("GET", path, None, IO_TIMEOUT)
            .expect("answer on a kept connection");
        assert_eq!(a.status, status, "{path} -> {a:?}");
    }
    drop(c);
    assert_eq!(shape(&api.info()), before);

    // Oversized bodies and heads are refused; others are unaffected.
    let big = format!(
        "{{\"desired_vcpus\":3,\"pad\":\"{}\"}}",
        "x".repeat(100 * 1024)
    );
    api.err(api.resize(&big), 413, "too_large");
    let mut head = b"GET /api/v1/vm.info HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 64 * 1024));
    head.extend_from_slice(b"\r\n\r\n");
    let raw = raw_exchange(&api.path, &head, IO_TIMEOUT);
    assert!(raw.starts_with("HTTP/1.1 431"), "oversized head: {raw:?}");
    let raw = raw_exchange(
        &api.path,
        b"\x16\x03\x01 not http at all\r\n\r\n",
        IO_TIMEOUT,
    );
    assert!(raw.starts_with("HTTP/1.1 400"), "garbage: {raw:?}");
    assert_eq!(shape(&api.info()), before);

    // Clients that connect and send nothing (and one that stops mid-head), more of them than
    // the connection limit (16), do not lock others out: the longest-idle are closed to make
    // room.
    let started = Instant::now();
    let mut idle: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&api.path).unwrap())
        .collect();
    let mut partial = UnixStream::connect(&api.path).unwrap();
    partial
        .write_all(b"GET /api/v1/vm.info HTTP/1.1\r\nHo")
        .unwrap();
    idle.push(partial);
    std::thread::sleep(Duration::from_millis(200));
    api.info();
    let path = api.path.clone();
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = Connection::connect(&path).unwrap();
                for i in 0..20 {
                    let (p, status) = if (t + i) % 3 == 0 {
                        ("/api/v1/nope", 404)
                    } else {
                        ("/api/v1/vm.info", 200)
                    };
                    let a = c.raw("GET", p, None, IO_TIMEOUT).expect("answer");
                    assert_eq!(a.status, status, "{a:?}");
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
    // The evicted ones were closed by the server (EOF, no answer).
    let closed = idle
        .iter_mut()
        .filter(|s: &&mut UnixStream| {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 16];
            let mut r: &UnixStream = s;
            matches!(r.read(&mut b), Ok(0))
        })
        .count();
    assert!(
        closed >= 5,
        "only {closed} idle connections were closed to make room"
    );
    drop(idle);

    // The `vmm remote` client: the body on stdout, exit 1 with the message on error.
    let out = api.remote(&["info"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("remote prints JSON");
    assert_eq!(v["max_vcpus"], 4);
    let out = api.remote(&["ping"]);
    assert!(out.status.success(), "{out:?}");
    let out = api.remote(&["resume"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vmm: error: the VM is not paused (not_paused, HTTP 409)"),
        "{stderr}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("remote prints the error body");
    assert_eq!(v["kind"], "not_paused");
    let out = api.remote(&["resize", "--cpus", "9"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("maximum") && stderr.contains('4'),
        "{stderr}"
    );
    let out = api.remote(&["pause"]);
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "204 prints nothing: {out:?}");
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
    // One INFO line per phase and per action, at the default level.
    for line in [
        "kernel loaded",
        "vCPUs started: 1 of at most 4",
        "API listening at",
        "pause took",
        "resize 1 \u{2192} 4 done in",
    ] {
        assert!(diag.contains(line), "no {line:?} in the log\n{diag}");
    }
    assert!(
        !diag.contains("DEBUG"),
        "debug lines at the default level\n{diag}"
    );
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

    let r = api.resize_ok(4);
    assert_eq!(r["added"], json!([1, 2, 3]));
    let info = wait_info(&api, t, "the guest to acknowledge the hot-adds", |i| {
        i["pending_insertions"] == json!([])
    });
    assert_eq!(states(&info), ["running"; 4]);

    let r = api.resize_ok(2);
    assert_eq!(r["removing"], json!([3, 2]));
    let info = wait_info(&api, t, "the guest to eject vCPUs 2 and 3", |i| {
        states(i) == ["running", "running", "absent", "absent"]
    });
    assert_eq!(info["stats"]["ejects"], 2);
    assert_eq!(info["pending_removals"], json!([]));
    assert_eq!(info["active_vcpus"], 2);

    // Reaped slots are reused.
    let r = api.resize_ok(3);
    assert_eq!(r["added"], json!([2]));
    wait_info(&api, t, "the re-added vCPU 2", |i| {
        states(i) == ["running", "running", "running", "absent"]
    });
    api.action("vm.pause");
    let info = api.info();
    assert_eq!(states(&info), ["paused", "paused", "paused", "absent"]);
    api.action("vm.resume");

    api.action("vmm.shutdown");
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
    // A keep-alive client: the shutdown is answered (204, the connection closed after it)
    // before the VMM goes away.
    let raw = raw_exchange(
        &api.path,
        b"PUT /api/v1/vm.shutdown HTTP/1.1\r\nHost: localhost\r\n\r\n",
        IO_TIMEOUT,
    );
    assert!(raw.starts_with("HTTP/1.1 204"), "{raw:?}");
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

/// Guest RAM above the 32-bit MMIO hole: 5 GiB is 3 GiB below it and 2 GiB from 4 GiB on,
/// two KVM memory regions; the VM boots, runs and reports its size.
#[test]
fn guest_memory_above_4g() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let guest = GuestFile::create(&GuestSpec::spinner()).unwrap();
    let path = socket_path("high-mem");
    let _ = std::fs::remove_file(&path);
    let mut vmm = VmmProcess::spawn(&[
        "--kernel".to_string(),
        guest.path().display().to_string(),
        "--memory".into(),
        "size=5G".into(),
        "--api-socket".into(),
        path.display().to_string(),
        "-v".into(),
    ]);
    let deadline = Instant::now() + START_TIMEOUT;
    let mut c = loop {
        if let Ok(mut c) = Connection::connect(&path) {
            if c.raw("GET", "/api/v1/vmm.ping", None, IO_TIMEOUT).is_ok() {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "no API\n{}", vmm.diagnostics());
        std::thread::sleep(Duration::from_millis(50));
    };
    let info = c
        .raw("GET", "/api/v1/vm.info", None, IO_TIMEOUT)
        .unwrap()
        .body
        .unwrap();
    assert_eq!(info["memory_size"], 5u64 << 30);
    assert_eq!(info["vcpus"][0]["state"], "running", "{info}");
    let a = c.raw("PUT", "/api/v1/vm.pause", None, IO_TIMEOUT).unwrap();
    assert_eq!(a.status, 204, "{a:?}");
    let a = c
        .raw("PUT", "/api/v1/vmm.shutdown", None, IO_TIMEOUT)
        .unwrap();
    assert_eq!(a.status, 204);
    let status = vmm.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        vmm.diagnostics()
    );
    // -v: debug lines appear.
    assert!(vmm.stderr().contains("DEBUG"), "{}", vmm.stderr());
}
