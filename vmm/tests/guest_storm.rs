//! The upstream reproducer of the motivating bug, on the real Debian guest, as a user would
//! run it: the `vmm` binary boots Linux with `--cpus boot=2,max=4` while a client issues
//! pause/resume continuously through the control API. Linux reads the CPU-hotplug
//! controller (every processor's `_STA`) while it enumerates CPUs, so some pauses land
//! while a vCPU is inside that device's handler; the VMM counts them exactly
//! (`stats.pauses_during_hotplug_access`).
//!
//! * `pause_storm_over_api_while_debian_boots`: every pause returns within its deadline,
//!   boot completes, at least one pause overlapped a hotplug access, and the guest's clock
//!   moves on after the storm (it sleeps and reports its uptime before powering off).
//! * `legacy_wide_lock_storm_hangs_the_pause` (only with `--features legacy-wide-lock`):
//!   the negative control. The same storm against the old design, whose pause holds the
//!   lock every hotplug access takes across its whole wait, must end in a pause timeout
//!   that names a vCPU inside its device handler.
//!
//! Real-guest tests: `scripts/test.sh` runs them with `--ignored`, directly where the host's
//! KVM is hardware and inside the nested-KVM lab (`scripts/kvm-lab.sh`) elsewhere.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The VMM's own pause deadline (`vmm::api::PAUSE_TIMEOUT`) plus slack for the socket.
#[cfg(not(feature = "legacy-wide-lock"))]
const PAUSE_DEADLINE: Duration = Duration::from_secs(8);
/// Guest time between the two uptime reports, after the storm.
const HOLD_SECS: u64 = 2;

fn socket(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "vmm-guest-storm-{}-{name}.sock",
        std::process::id()
    ))
}

#[derive(Default, Debug)]
struct StormResult {
    pauses: u64,
    /// Slowest pause as the client saw it.
    slowest: Duration,
    /// The first failed pause: its answer (None: the connection broke).
    failure: Option<(u64, Option<Value>, Duration)>,
}

/// Pause, resume, let the guest run a little; until `stop` or the first failure.
fn storm(conn: &mut ApiConn, stop: &AtomicBool) -> StormResult {
    let mut r = StormResult::default();
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        let answer = conn.call("pause", json!({}));
        let took = t.elapsed();
        r.slowest = r.slowest.max(took);
        match &answer {
            Some(v) if v["ok"] == true => r.pauses += 1,
            _ => {
                r.failure = Some((r.pauses, answer, took));
                return r;
            }
        }
        let resumed = conn.call("resume", json!({}));
        assert!(
            resumed.as_ref().is_some_and(|v| v["ok"] == true),
            "resume after pause {} failed: {resumed:?}",
            r.pauses
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    r
}

/// Boots the guest with an API socket and storms it from a second thread until the guest's
/// first uptime report (its userspace is up). Returns the VMM, the storm's result and the
/// stats `info` gave right after the storm.
fn boot_under_storm(name: &str) -> (VmmProcess, StormResult, Value, PathBuf) {
    let guest = guest();
    let path = socket(name);
    let _ = std::fs::remove_file(&path);
    let cmdline = format!("vmtest.mode=poweroff vmtest.hold={HOLD_SECS}");
    let vm = VmmProcess::boot(
        &guest,
        &[
            "--cpus",
            "boot=2,max=4",
            "--memory",
            "size=512M",
            "--cmdline",
            &cmdline,
            "--api-socket",
            path.to_str().unwrap(),
        ],
    );
    let mut conn = ApiConn::connect(&path, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the API socket never answered\n{}", vm.diagnostics()));
    let stop = Arc::new(AtomicBool::new(false));
    let stormer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let r = storm(&mut conn, &stop);
            (r, conn)
        })
    };
    // The storm runs until the guest's userspace reports, or until it fails.
    let deadline = Instant::now() + boot_timeout();
    let up = loop {
        let line = vm.wait_for_prefix(Duration::from_millis(200), "VMTEST uptime=");
        if line.is_some() || stormer.is_finished() || Instant::now() >= deadline {
            break line;
        }
    };
    stop.store(true, Ordering::SeqCst);
    let (result, _conn) = stormer.join().expect("storm thread panicked");
    // A fresh connection: the server may close one whose request failed.
    let info = ApiConn::connect(&path, Duration::from_secs(5))
        .and_then(|mut c| c.call("info", json!({})))
        .unwrap_or_else(|| panic!("no info after the storm\n{}", vm.diagnostics()));
    if result.failure.is_none() {
        assert!(
            up.is_some(),
            "the guest's userspace never came up under the storm ({} pauses)\n{}",
            result.pauses,
            vm.diagnostics()
        );
    }
    (vm, result, info, path)
}

#[cfg(not(feature = "legacy-wide-lock"))]
#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn pause_storm_over_api_while_debian_boots() {
    let _slot = guest_slot();
    let (mut vm, r, info, path) = boot_under_storm("fixed");
    let stats = &info["stats"];
    println!(
        "debian storm over the API: {} pauses (slowest {:?}), during hotplug accesses {}, \
         overlapping any device access {}, rekicks {}",
        r.pauses,
        r.slowest,
        stats["pauses_during_hotplug_access"],
        stats["pauses_overlapping_mmio"],
        stats["rekicks"]
    );
    if let Some((n, answer, took)) = &r.failure {
        panic!(
            "pause {n} failed after {took:?} while the guest booted: {answer:?}\n{}",
            vm.diagnostics()
        );
    }
    assert!(r.slowest < PAUSE_DEADLINE, "a pause took {:?}", r.slowest);
    assert!(r.pauses > 0, "no pause was issued before the guest came up");
    assert_eq!(
        stats["pauses"].as_u64(),
        Some(r.pauses),
        "the VMM counted a different number of completed pauses: {info}"
    );
    let during = stats["pauses_during_hotplug_access"].as_u64().unwrap_or(0);
    assert!(
        during > 0,
        "no pause landed while a vCPU was inside the CPU-hotplug controller ({} pauses): \
         the storm did not reach the bug's window\n{info}",
        r.pauses
    );

    // The guest's clock moves on after the storm: it sleeps HOLD_SECS and reports again.
    let first = vm
        .lines()
        .iter()
        .find_map(|l| vmtest_value(l, "uptime"))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("first uptime");
    let second = vm
        .wait_for_line(boot_timeout(), |l| {
            l.starts_with("VMTEST uptime=")
                && vmtest_value(l, "uptime").and_then(|v| v.parse::<f64>().ok()) != Some(first)
        })
        .and_then(|l| vmtest_value(&l, "uptime"))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no second uptime report\n{}", vm.diagnostics()));
    assert!(
        second >= first + HOLD_SECS as f64 * 0.9,
        "guest clock: {first} s then {second} s, expected {HOLD_SECS} s more\n{}",
        vm.diagnostics()
    );
    assert!(
        vm.wait_for_prefix(boot_timeout(), "VMTEST-POWEROFF")
            .is_some(),
        "{}",
        vm.diagnostics()
    );
    let status = vm.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "vmm exit {status:?}\n{}",
        vm.diagnostics()
    );
    assert!(!path.exists(), "the API socket was left behind");
}

#[cfg(feature = "legacy-wide-lock")]
#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn legacy_wide_lock_storm_hangs_the_pause() {
    let _slot = guest_slot();
    let (mut vm, r, info, _path) = boot_under_storm("legacy");
    println!(
        "legacy storm: {} pauses before the failure, slowest {:?}, failure {:?}",
        r.pauses, r.slowest, r.failure
    );
    let Some((n, answer, took)) = r.failure else {
        panic!(
            "the old design survived the whole boot ({} pauses, {} during hotplug accesses): \
             the storm cannot see the motivating bug\n{info}\n{}",
            r.pauses,
            info["stats"]["pauses_during_hotplug_access"],
            vm.diagnostics()
        );
    };
    let answer = answer.unwrap_or_else(|| panic!("pause {n}: the connection broke"));
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(
        answer["error"]["kind"], "pause_timeout",
        "pause {n} failed otherwise: {answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("MMIO"),
        "the timeout does not name a vCPU inside its device handler: {message}"
    );
    assert!(
        took >= Duration::from_secs(4),
        "a timeout after only {took:?}"
    );
    vm.kill();
}
