//! Races and random sequences against the real Debian guest.
//!
//! * `pause_storm_during_resize_rounds`: a client pauses and resumes continuously over the
//!   control API while another resizes up and down, round after round. Every pause returns
//!   within its deadline, every resize converges to what the guest reports, no thread
//!   leaks, and the pauses that landed while the guest's eject was being serviced (the
//!   window of Cloud Hypervisor's second deadlock: a pause arriving just before the join in
//!   `remove_vcpu`) and while the VMM reaped an ejected thread are counted.
//! * `random_sequences_match_the_guest_visible_contract`: proptest sequences of pause,
//!   resume, resize(n), waits and settles, checked after each settle against a reference
//!   model written from the contract the guest and a client can see (below), not from the
//!   VMM's own resize logic.
//!
//! The contract the model encodes:
//! * `pause` succeeds (within its deadline); `resume` succeeds iff a pause is in force,
//!   else it answers `not_paused`;
//! * `resize(n)` with n outside 1..=max is refused (`zero`, `above_max`) and changes
//!   nothing; otherwise it is accepted, or, only while CPUs given back earlier may still be
//!   on their way out, refused with `slots_busy`; an accepted resize makes n the target;
//! * once the VM runs and the guest has had time to act (a settle), the guest reports
//!   exactly CPUs 0..target online and present, and `info` reports target active vCPUs and
//!   every other slot absent;
//! * while paused, the guest reports nothing new.
//!
//! Cases: `GUEST_PROPTEST_CASES` (default 3, each boots a guest). Shrunk failures go to
//! `tests/proptest-regressions/guest_races.txt` and are replayed first. Soak:
//!
//! ```text
//! GUEST_PROPTEST_CASES=50 scripts/kvm-lab.sh -- cargo test --release -p vmm --test guest_races -- --ignored
//! ```

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a guest may take to act on a resize.
const SETTLE: Duration = Duration::from_secs(60);
/// What a client tolerates for one pause (the VMM's own deadline is 5 s).
const PAUSE_LIMIT: Duration = Duration::from_secs(8);
const MAX: usize = 4;

fn cpu_range(n: usize) -> String {
    format_cpus(&(0..n).collect())
}

/// A set of CPUs in Linux's cpulist format, the guest's own: `0`, `0-2`, `0,2-3`.
fn format_cpus(cpus: &BTreeSet<usize>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut it = cpus.iter().copied().peekable();
    while let Some(first) = it.next() {
        let mut last = first;
        while it.peek() == Some(&(last + 1)) {
            last = it.next().unwrap_or(last);
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    parts.join(",")
}

fn thread_count(pid: u32) -> usize {
    vcpu_threads(pid)
}

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn pause_storm_during_resize_rounds() {
    let _slot = guest_slot();
    let mut g = GuestVm::boot_watch("races", 1, MAX);
    let threads = thread_count(g.pid());
    let mut storm_conn =
        ApiConn::connect(&g.socket, Duration::from_secs(5)).expect("second connection");
    let stop = Arc::new(AtomicBool::new(false));
    let pauses = Arc::new(AtomicU64::new(0));
    let storm = {
        let (stop, pauses) = (stop.clone(), pauses.clone());
        std::thread::spawn(move || -> Result<Duration, String> {
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = storm_conn.call("pause", json!({}));
                let took = t.elapsed();
                slowest = slowest.max(took);
                match r {
                    Some(v) if v["ok"] == true => {}
                    other => return Err(format!("pause failed after {took:?}: {other:?}")),
                }
                if took > PAUSE_LIMIT {
                    return Err(format!("a pause took {took:?}"));
                }
                pauses.fetch_add(1, Ordering::Relaxed);
                match storm_conn.call("resume", json!({})) {
                    Some(v) if v["ok"] == true => {}
                    other => return Err(format!("resume failed: {other:?}")),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(slowest)
        })
    };
    let rounds = std::env::var("GUEST_RACE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let started = Instant::now();
    for round in 0..rounds {
        for n in [4, 1, 3, 2, 4, 1] {
            // Growing right after a shrink may find slots still on their way out.
            let deadline = Instant::now() + SETTLE;
            loop {
                let r = g.call("resize", json!({ "cpus": n }));
                if r["ok"] == true {
                    break;
                }
                assert_eq!(
                    r["error"]["kind"], "slots_busy",
                    "round {round} resize {n}: {r}"
                );
                assert!(
                    Instant::now() < deadline,
                    "round {round}: resize {n} refused for too long: {r}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            g.expect_cpus(&cpu_range(n), &cpu_range(n), SETTLE);
            if n < MAX {
                g.expect_reaped(&(n..MAX).collect::<Vec<_>>(), SETTLE);
            }
            assert!(!storm.is_finished(), "the storm stopped early");
        }
    }
    stop.store(true, Ordering::SeqCst);
    let slowest = storm
        .join()
        .expect("storm thread panicked")
        .unwrap_or_else(|e| panic!("{e}\n{}", g.vm.diagnostics()));
    let info = g.info();
    let stats = &info["stats"];
    println!(
        "races: {rounds} rounds in {:?}, {} pauses (slowest {slowest:?}), ejects {}, \
         pauses during eject writes {}, during reaps {}, during hotplug accesses {}",
        started.elapsed(),
        pauses.load(Ordering::Relaxed),
        stats["ejects"],
        stats["pauses_during_eject"],
        stats["pauses_during_reap"],
        stats["pauses_during_hotplug_access"],
    );
    // Per round: 4 -> 1 gives back 3 CPUs, 3 -> 2 one, 4 -> 1 three.
    assert_eq!(stats["ejects"].as_u64(), Some(rounds as u64 * 7), "{info}");
    assert_eq!(
        thread_count(g.pid()),
        threads,
        "threads leaked over {rounds} rounds"
    );
    assert!(pauses.load(Ordering::Relaxed) > 0);
    g.finish();
}

// ---- random sequences ----

#[derive(Clone, Debug)]
enum Op {
    Pause,
    Resume,
    Resize(usize),
    /// Let the guest run (or stay paused) for this many milliseconds.
    Wait(u64),
    /// Resume if paused, wait for the guest to act, compare with the model.
    Settle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Pause),
        2 => Just(Op::Resume),
        4 => (0..=MAX + 1).prop_map(Op::Resize),
        1 => (0u64..300).prop_map(Op::Wait),
        2 => Just(Op::Settle),
    ]
}

/// What a client and the guest can see, as the contract says (`Vm::resize`): the slots the
/// VMM has promised will be present once the guest has acted, and those it asked the guest
/// to give back since the last settle (withdrawable, or still being ejected).
#[derive(Debug)]
struct Model {
    paused: bool,
    present: BTreeSet<usize>,
    leaving: BTreeSet<usize>,
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

fn slots(v: &serde_json::Value) -> Option<BTreeSet<usize>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_u64().map(|i| i as usize))
        .collect()
}

/// Checks an accepted resize's outcome against the contract and applies it to the model.
/// Shrinking asks for the highest present slots back; growing first withdraws pending
/// removals, then adds absent slots (never one that is present), and a slot the guest is
/// still ejecting stays out until reaped, so the set need not be `0..n`.
fn apply_resize(m: &mut Model, n: usize, r: &serde_json::Value) -> Result<(), String> {
    let (Some(added), Some(cancelled), Some(removing)) = (
        slots(&r["added"]),
        slots(&r["cancelled"]),
        slots(&r["removing"]),
    ) else {
        return Err(format!("the outcome does not list slots: {r}"));
    };
    let before = m.present.len();
    if n < before {
        let highest: BTreeSet<usize> = m.present.iter().rev().take(before - n).copied().collect();
        if removing != highest || !added.is_empty() || !cancelled.is_empty() {
            return Err(format!(
                "shrinking {before} -> {n} must ask for {highest:?} back: {r}"
            ));
        }
        m.present.retain(|i| !removing.contains(i));
        m.leaving.extend(&removing);
    } else if n > before {
        if !removing.is_empty()
            || !cancelled.is_subset(&m.leaving)
            || !added.is_disjoint(&m.present)
            || !added.is_disjoint(&cancelled)
            || added.len() + cancelled.len() != n - before
        {
            return Err(format!(
                "growing {before} -> {n} (present {:?}, leaving {:?}) must withdraw leaving \
                 slots or add absent ones, {} in all: {r}",
                m.present,
                m.leaving,
                n - before
            ));
        }
        m.present.extend(added.iter().chain(&cancelled));
        m.leaving
            .retain(|i| !added.contains(i) && !cancelled.contains(i));
    } else if !(added.is_empty() && cancelled.is_empty() && removing.is_empty()) {
        return Err(format!(
            "resizing to the current count {n} changed something: {r}"
        ));
    }
    Ok(())
}

/// The model's own checks, without a guest: outcomes the contract allows pass, and ones it
/// does not (the VMM misbehaving) are caught.
#[test]
fn the_model_accepts_the_contract_and_catches_breaches() {
    let model = |present: &[usize], leaving: &[usize]| Model {
        paused: false,
        present: present.iter().copied().collect(),
        leaving: leaving.iter().copied().collect(),
    };
    let outcome = |added: &[usize], cancelled: &[usize], removing: &[usize]| json!({ "added": added, "cancelled": cancelled, "removing": removing });
    // Shrinking 3 -> 1 gives back the highest two.
    let mut m = model(&[0, 1, 2], &[]);
    apply_resize(&mut m, 1, &outcome(&[], &[], &[2, 1])).unwrap();
    assert_eq!(
        (format_cpus(&m.present), format_cpus(&m.leaving)),
        ("0".into(), "1-2".into())
    );
    // Growing back while 1 is still being ejected: withdraw 2, add 3 (the case that found
    // the old model's bug), and the guest is to end with 0,2-3.
    apply_resize(&mut m, 3, &outcome(&[3], &[2], &[])).unwrap();
    assert_eq!(format_cpus(&m.present), "0,2-3");
    // Breaches: shrinking the lowest, adding a present slot, withdrawing one never asked
    // back, adding too few, and a no-op resize that changed something.
    for (present, leaving, n, r) in [
        (&[0, 1, 2][..], &[][..], 2, outcome(&[], &[], &[0])),
        (&[0, 1], &[], 3, outcome(&[1], &[], &[])),
        (&[0, 1], &[], 3, outcome(&[], &[2], &[])),
        (&[0], &[], 3, outcome(&[1], &[], &[])),
        (&[0, 1], &[], 2, outcome(&[2], &[], &[])),
    ] {
        let mut m = model(present, leaving);
        assert!(
            apply_resize(&mut m, n, &r).is_err(),
            "{present:?} -> {n}: {r} accepted"
        );
    }
    assert!(apply_resize(&mut model(&[0], &[]), 2, &json!({ "added": [1] })).is_err());
}

fn settle(g: &mut GuestVm, m: &mut Model) -> Result<(), TestCaseError> {
    if m.paused {
        let r = g.call("resume", json!({}));
        check(r["ok"] == true, || format!("settle: resume -> {r}"))?;
        m.paused = false;
    }
    let want = format_cpus(&m.present);
    g.try_settled_cpus(&want, &want, SETTLE)
        .map_err(TestCaseError::fail)?;
    let deadline = Instant::now() + SETTLE;
    loop {
        let info = g.call("info", json!({}));
        let absent = (0..MAX)
            .filter(|i| !m.present.contains(i))
            .all(|i| info["vcpus"][i]["state"] == "absent");
        if absent && info["active_vcpus"] == m.present.len() && info["paused"] == false {
            break;
        }
        check(Instant::now() < deadline, || {
            format!(
                "info never matched the present slots {:?}: {info}",
                m.present
            )
        })?;
        std::thread::sleep(Duration::from_millis(50));
    }
    m.leaving.clear();
    Ok(())
}

fn run_case(boot: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut g = GuestVm::boot_watch("props", boot, MAX);
    let mut m = Model {
        paused: false,
        present: (0..boot).collect(),
        leaving: BTreeSet::new(),
    };
    for (step, op) in ops.iter().enumerate() {
        let at = || format!("step {step} {op:?} (model {m:?})");
        match op {
            Op::Pause => {
                let t = Instant::now();
                let r = g.call("pause", json!({}));
                check(r["ok"] == true && t.elapsed() < PAUSE_LIMIT, || {
                    format!("{}: {r} after {:?}", at(), t.elapsed())
                })?;
                m.paused = true;
            }
            Op::Resume => {
                let r = g.call("resume", json!({}));
                if m.paused {
                    check(r["ok"] == true, || format!("{}: {r}", at()))?;
                } else {
                    check(r["error"]["kind"] == "not_paused", || {
                        format!("{}: {r}", at())
                    })?;
                }
                m.paused = false;
            }
            Op::Resize(n) => {
                let r = g.call("resize", json!({ "cpus": n }));
                let kind = r["error"]["kind"].as_str().unwrap_or("").to_string();
                if *n == 0 {
                    check(kind == "zero", || format!("{}: {r}", at()))?;
                } else if *n > MAX {
                    check(kind == "above_max", || format!("{}: {r}", at()))?;
                } else if r["ok"] == true {
                    let what = at();
                    apply_resize(&mut m, *n, &r)
                        .map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
                } else {
                    // Refused only while slots the guest was asked to give back are still
                    // being ejected, and there are too few absent ones.
                    check(
                        kind == "slots_busy" && !m.leaving.is_empty() && *n > m.present.len(),
                        || format!("{}: refused: {r}", at()),
                    )?;
                }
            }
            Op::Wait(ms) => {
                // Lines the guest wrote just before a pause may still be on their way to
                // the test's reader: look only at what comes after a grace period.
                let grace = (*ms).min(100);
                std::thread::sleep(Duration::from_millis(grace));
                let before = g.vm.lines().len();
                std::thread::sleep(Duration::from_millis(ms - grace));
                if m.paused {
                    let new: Vec<String> = g.vm.lines()[before..].to_vec();
                    check(new.is_empty(), || {
                        format!("{}: a paused guest printed {new:?}", at())
                    })?;
                }
            }
            Op::Settle => settle(&mut g, &mut m)?,
        }
    }
    settle(&mut g, &mut m)?;
    g.finish();
    Ok(())
}

const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/guest_races.txt"
);

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn random_sequences_match_the_guest_visible_contract() {
    let _slot = guest_slot();
    let cases = std::env::var("GUEST_PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let config = Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        source_file: Some(file!()),
        // Each case boots a guest: shrink for at most ten minutes.
        max_shrink_iters: std::env::var("GUEST_PROPTEST_SHRINK_ITERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(64),
        max_shrink_time: 600_000,
        ..Config::default()
    };
    // Cases that found bugs, replayed first by value (proptest's regression file replays
    // seeds, and the generator may change). This one: a shrink whose eject the guest began
    // just before a pause, then a grow while paused; the slot still being ejected cannot
    // be reused, so the guest ends with 0,2-3 (the model once expected 0-2).
    for (boot, ops) in [(
        2,
        vec![
            Op::Resize(1),
            Op::Resume,
            Op::Pause,
            Op::Resize(0),
            Op::Resize(3),
            Op::Wait(195),
        ],
    )] {
        if let Err(e) = run_case(boot, &ops) {
            panic!("known case boot={boot} {ops:?}: {e}");
        }
    }
    let mut runner = TestRunner::new(config);
    let strategy = (1..=MAX, proptest::collection::vec(op(), 3..10));
    let started = Instant::now();
    let result = runner.run(&strategy, |(boot, ops)| {
        // Each failure as it happens: shrinking boots a guest per step and may be cut short.
        run_case(boot, &ops).inspect_err(|e| {
            eprintln!(
                "guest proptest: boot={boot} {ops:?} failed after {:?}: {e}",
                started.elapsed()
            )
        })
    });
    println!("guest proptest: {cases} case(s) in {:?}", started.elapsed());
    if let Err(e) = result {
        panic!("{e}");
    }
}
