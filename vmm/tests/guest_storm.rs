//! The upstream reproducer of the motivating bug, on the real Debian guest, as a user would
//! run it: the `vmm` binary boots Linux with `--cpus boot=2,max=4` while a client issues
//! pause/resume continuously through the control API. Linux reads the CPU-hotplug
//! controller (every processor's `_STA`) while it enumerates CPUs, so some pauses land
//! while a vCPU is inside that device's handler; the VMM counts them exactly
//! (`stats.pauses_during_hotplug_access`). The storm goes on after boot while the test
//! resizes 2 -> 4 -> 2 a few times: each resize makes the guest's `CSCN` walk the controller
//! (and `_EJ0` write it), which is the same window again, much more often.
//!
//! * `pause_storm_over_api_while_debian_boots`: every pause returns within its deadline,
//!   boot completes, the resizes converge, at least one pause overlapped a hotplug access,
//!   and the guest's clock moves on after the storm (it reports its uptime every second).
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

/// What the storm saw, phase by phase.
struct Storm {
    vm: VmmProcess,
    result: StormResult,
    /// Pauses completed before the guest's userspace came up.
    boot_pauses: u64,
    /// `stats.pauses_during_hotplug_access` when the guest's userspace came up.
    boot_overlaps: u64,
    /// `info` right after the storm.
    info: Value,
    #[cfg_attr(feature = "legacy-wide-lock", allow(dead_code))]
    path: PathBuf,
}

fn info(path: &std::path::Path) -> Option<Value> {
    ApiConn::connect(path, Duration::from_secs(5)).and_then(|mut c| c.call("info", json!({})))
}

/// Boots the guest (watch mode, uptime every second) with an API socket and storms it from
/// a second thread: through the boot, then through `RESIZE_ROUNDS` rounds of 2 -> 4 -> 2.
/// Stops at the first failed pause.
fn storm_boot_and_resizes(name: &str) -> Storm {
    let guest = guest();
    let path = socket(name);
    let _ = std::fs::remove_file(&path);
    let vm = VmmProcess::boot(
        &guest,
        &[
            "--cpus",
            "boot=2,max=4",
            "--memory",
            "size=512M",
            "--cmdline",
            "vmtest.mode=watch vmtest.tick=1",
            "--api-socket",
            path.to_str().unwrap(),
        ],
    );
    let mut conn = ApiConn::connect(&path, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the API socket never answered\n{}", vm.diagnostics()));
    let stop = Arc::new(AtomicBool::new(false));
    let stormer = {
        let stop = stop.clone();
        std::thread::spawn(move || storm(&mut conn, &stop))
    };
    let failed = || stormer.is_finished();
    // Phase 1: the boot, until the guest's init watches the CPUs.
    let deadline = Instant::now() + boot_timeout();
    let mut cursor = 0;
    loop {
        if let Some((i, _)) = vm.wait_for_line_from(0, Duration::from_millis(200), |l| {
            l.starts_with("VMTEST online=") && l.contains("present=")
        }) {
            cursor = i + 1;
            break;
        }
        if failed() || Instant::now() >= deadline {
            break;
        }
    }
    let at_boot = info(&path).unwrap_or_default();
    let boot_pauses = at_boot["stats"]["pauses"].as_u64().unwrap_or(0);
    let boot_overlaps = at_boot["stats"]["pauses_during_hotplug_access"]
        .as_u64()
        .unwrap_or(0);
    // Phase 2: resizes, each a CSCN walk of the controller in the guest.
    let mut control = ApiConn::connect(&path, Duration::from_secs(5)).expect("control connection");
    'rounds: for _ in 0..RESIZE_ROUNDS {
        for (n, online) in [(4, "0-3"), (2, "0-1")] {
            if failed() || cursor == 0 {
                break 'rounds;
            }
            // Growing right after a shrink may find slots still on their way out.
            let until = Instant::now() + Duration::from_secs(60);
            loop {
                match control.call("resize", json!({ "cpus": n })) {
                    Some(r) if r["ok"] == true => break,
                    Some(r) if r["error"]["kind"] == "slots_busy" && Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    other => panic!("resize {n}: {other:?}\n{}", vm.diagnostics()),
                }
            }
            let want = format!("online={online} present={online} ");
            loop {
                if let Some((i, _)) =
                    vm.wait_for_line_from(cursor, Duration::from_millis(200), |l| l.contains(&want))
                {
                    cursor = i + 1;
                    break;
                }
                assert!(
                    !vm.lines().is_empty() && Instant::now() < until || failed(),
                    "the guest never reported {want}\ninfo: {}\n{}",
                    info(&path).map(|i| i.to_string()).unwrap_or_default(),
                    vm.diagnostics()
                );
                if failed() {
                    break 'rounds;
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let result = stormer.join().expect("storm thread panicked");
    // A fresh connection: the server may close one whose request failed.
    let info =
        info(&path).unwrap_or_else(|| panic!("no info after the storm\n{}", vm.diagnostics()));
    if result.failure.is_none() {
        assert!(
            cursor > 0,
            "the guest's userspace never came up under the storm ({} pauses)\n{}",
            result.pauses,
            vm.diagnostics()
        );
    }
    Storm {
        vm,
        result,
        boot_pauses,
        boot_overlaps,
        info,
        path,
    }
}

/// Rounds of 2 -> 4 -> 2 after boot, under the storm.
const RESIZE_ROUNDS: usize = 3;

fn report(what: &str, s: &Storm) {
    let st = &s.info["stats"];
    println!(
        "{what}: {} pauses (slowest {:?}); during boot: {} pauses, {} during hotplug accesses; \
         in all: {} during hotplug accesses, {} during eject writes, {} overlapping any device \
         access, {} rekicks; failure: {:?}",
        s.result.pauses,
        s.result.slowest,
        s.boot_pauses,
        s.boot_overlaps,
        st["pauses_during_hotplug_access"],
        st["pauses_during_eject"],
        st["pauses_overlapping_mmio"],
        st["rekicks"],
        s.result.failure
    );
}

#[cfg(not(feature = "legacy-wide-lock"))]
#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn pause_storm_over_api_while_debian_boots() {
    let _slot = guest_slot();
    let mut s = storm_boot_and_resizes("fixed");
    report("debian storm over the API", &s);
    let (r, info) = (&s.result, &s.info);
    if let Some((n, answer, took)) = &r.failure {
        panic!(
            "pause {n} failed after {took:?}: {answer:?}\n{}",
            s.vm.diagnostics()
        );
    }
    assert!(r.slowest < PAUSE_DEADLINE, "a pause took {:?}", r.slowest);
    assert!(
        s.boot_pauses > 0,
        "no pause was issued while the guest booted"
    );
    assert_eq!(
        info["stats"]["pauses"].as_u64(),
        Some(r.pauses),
        "the VMM counted a different number of completed pauses: {info}"
    );
    let during = info["stats"]["pauses_during_hotplug_access"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        during > 0,
        "no pause landed while a vCPU was inside the CPU-hotplug controller ({} pauses): \
         the storm did not reach the bug's window\n{info}",
        r.pauses
    );

    // The guest's clock moves on after the storm. It ticks when its uptime crosses a whole
    // second, so two ticks can be close together; three span more than a second.
    let from = s.vm.lines().len();
    let uptime = |vm: &VmmProcess, from: usize| {
        vm.wait_for_line_from(from, Duration::from_secs(30), |l| {
            l.starts_with("VMTEST uptime=")
        })
        .and_then(|(i, l)| Some((i, vmtest_value(&l, "uptime")?.parse::<f64>().ok()?)))
    };
    let (i, first) = uptime(&s.vm, from)
        .unwrap_or_else(|| panic!("no uptime tick after the storm\n{}", s.vm.diagnostics()));
    let (j, _) = uptime(&s.vm, i + 1)
        .unwrap_or_else(|| panic!("no second uptime tick\n{}", s.vm.diagnostics()));
    let (_, third) = uptime(&s.vm, j + 1)
        .unwrap_or_else(|| panic!("no third uptime tick\n{}", s.vm.diagnostics()));
    assert!(
        third >= first + 1.0 && third < first + 10.0,
        "guest clock after the storm: {first} s, then {third} s two ticks later\n{}",
        s.vm.diagnostics()
    );
    let crashes = guest_crash_lines(&s.vm.lines());
    assert!(crashes.is_empty(), "guest crashed: {crashes:#?}");
    let mut c = ApiConn::connect(&s.path, Duration::from_secs(5)).expect("connect");
    assert_eq!(
        c.call("shutdown", json!({})).unwrap_or_default()["ok"],
        true
    );
    let status = s.vm.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|st| st.success()),
        "vmm exit {status:?}\n{}",
        s.vm.diagnostics()
    );
    assert!(!s.path.exists(), "the API socket was left behind");
}

#[cfg(feature = "legacy-wide-lock")]
#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn legacy_wide_lock_storm_hangs_the_pause() {
    let _slot = guest_slot();
    let mut s = storm_boot_and_resizes("legacy");
    report("legacy storm", &s);
    let Some((n, answer, took)) = s.result.failure.take() else {
        panic!(
            "the old design survived the boot and {RESIZE_ROUNDS} resize rounds ({} pauses, {} \
             during hotplug accesses): the storm cannot see the motivating bug\n{}\n{}",
            s.result.pauses,
            s.info["stats"]["pauses_during_hotplug_access"],
            s.info,
            s.vm.diagnostics()
        );
    };
    let phase = if n < s.boot_pauses { "boot" } else { "resizes" };
    println!("legacy storm: pause {n} hung (during the {phase})");
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
    s.vm.kill();
}
