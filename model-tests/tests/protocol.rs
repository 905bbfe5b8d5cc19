//! Models 3-5 and the re-kick control: the real core over simulated vCPUs, with a vCPU
//! inside the hotplug MMIO handler, with ejects and hot-adds racing a pause, and with a
//! resume racing a pause, and two pausers at once. Bounded (2-3 preemptions in CI;
//! `MODEL_DEEP=1` or `MODEL_PREEMPTION_BOUND=n|none` goes deeper; see README.md).
#![cfg(loom)]

use loom::thread;
use model_tests::harness::{Model, TIMEOUT};
use std::sync::Arc;
use vcpu_sync::sim::{pause_with, GuestOp, KickMode, Rekick, SimBackend};
use vcpu_sync::{Life, PauseError, Vcpus, REG_STATUS, STATUS_INSERTING};

const LIVELOCK_OR_DEADLOCK: &[&str] = &["maximum number of branches", "deadlock"];

fn teardown(vcpus: &Vcpus<SimBackend>, sim: &SimBackend) {
    vcpus.resume();
    vcpus.shutdown(TIMEOUT).expect("shutdown");
    assert!(
        vcpus.reports().iter().all(|r| r.life == Life::Absent),
        "a slot was not reaped"
    );
    sim.detach();
}

fn assert_all_paused(vcpus: &Vcpus<SimBackend>) {
    for r in vcpus.reports() {
        if r.life == Life::Active {
            assert!(r.paused, "pause returned Ok but {r} has not acknowledged");
        }
    }
}

/// Model 3: the pause lands while vCPU 0 reads and writes the hotplug controller.
fn pause_during_mmio() {
    let (vcpus, sim) = SimBackend::create(2, KickMode::ImmediateExit, false);
    sim.push_ops(
        0,
        [
            GuestOp::select(0),
            GuestOp::MmioRead {
                offset: REG_STATUS,
                size: 1,
            },
            GuestOp::MmioWrite {
                offset: REG_STATUS,
                data: vec![STATUS_INSERTING],
            },
        ],
    );
    vcpus.start(0).expect("start");
    vcpus
        .pause(TIMEOUT)
        .expect("pause while the vCPU is in its MMIO handler");
    assert_all_paused(&vcpus);
    assert!(vcpus.resume());
    teardown(&vcpus, &sim);
}

#[test]
fn m3_pause_during_hotplug_mmio() {
    Model::new("m3_pause_during_mmio", 2)
        .bounded(3, None)
        .check(pause_during_mmio);
}

/// Model 4a: vCPU 0 ejects vCPU 1 (the guest's `_EJ0`) while a pause runs.
fn pause_vs_eject() {
    let (vcpus, sim) = SimBackend::create(2, KickMode::ImmediateExit, false);
    vcpus.start(0).expect("start 0");
    vcpus.start(1).expect("start 1");
    vcpus.request_removal(1).expect("request removal");
    sim.push_ops(0, GuestOp::eject(1));
    vcpus.pause(TIMEOUT).expect("pause while a vCPU is ejected");
    assert_all_paused(&vcpus);
    // The ejected vCPU is reaped by the teardown's shutdown (it may have exited already or
    // still be queued behind the pause).
    teardown(&vcpus, &sim);
}

#[test]
fn m4a_pause_while_hot_removed_by_eject() {
    Model::new("m4a_pause_vs_eject", 3)
        .bounded(2, Some(3))
        .check(pause_vs_eject);
}

/// Model 4b: the VMM hot-adds vCPU 1 from another thread while a pause runs.
fn pause_vs_hot_add() {
    let (vcpus, sim) = SimBackend::create(2, KickMode::ImmediateExit, false);
    vcpus.start(0).expect("start 0");
    let adder = {
        let vcpus = vcpus.clone();
        thread::spawn(move || vcpus.hot_add(1).expect("hot-add"))
    };
    vcpus
        .pause(TIMEOUT)
        .expect("pause while a vCPU is hot-added");
    adder.join().expect("adder");
    // Whatever the order, a pause now covers both vCPUs.
    vcpus.pause(TIMEOUT).expect("pause after the hot-add");
    assert_all_paused(&vcpus);
    teardown(&vcpus, &sim);
}

#[test]
fn m4b_pause_while_hot_added() {
    Model::new("m4b_pause_vs_hot_add", 4)
        .bounded(2, Some(3))
        .check(pause_vs_hot_add);
}

/// Model 5a: two threads pause at once, while the vCPU starts. Both must return Ok with
/// every vCPU acknowledged (the second joins the pause in force); one resume ends the
/// pause, a second resume finds nothing to end, and the VM pauses again cleanly.
fn two_pausers(n: usize) {
    let (vcpus, sim) = SimBackend::create(n, KickMode::ImmediateExit, false);
    for i in 0..n {
        vcpus.start(i).expect("start");
    }
    let other = {
        let vcpus = vcpus.clone();
        thread::spawn(move || {
            let r = vcpus.pause(TIMEOUT);
            // Checked by the pauser itself, at the instant it returns.
            if r.is_ok() {
                assert_all_paused(&vcpus);
            }
            r
        })
    };
    vcpus.pause(TIMEOUT).expect("pause (main thread)");
    assert_all_paused(&vcpus);
    other
        .join()
        .expect("second pauser")
        .expect("pause (second thread)");
    assert!(vcpus.is_paused());
    assert!(vcpus.resume(), "resume found no pause in force");
    assert!(!vcpus.resume(), "a second resume found a pause in force");
    vcpus.pause(TIMEOUT).expect("pause after resume");
    assert_all_paused(&vcpus);
    teardown(&vcpus, &sim);
}

#[test]
fn m5a_two_concurrent_pausers() {
    Model::new("m5a_two_pausers", 3)
        .bounded(3, None)
        .check(|| two_pausers(1));
}

#[test]
fn m5a_two_concurrent_pausers_2vcpu() {
    Model::new("m5a_two_pausers_2vcpu", 4)
        .bounded(2, Some(3))
        .check(|| two_pausers(2));
}

/// Model 5b: a resume races a pause: the pause either completes or is interrupted, never
/// hangs, and the VM ends consistent (a final pause/resume works).
fn pause_vs_resume() {
    let (vcpus, sim) = SimBackend::create(1, KickMode::ImmediateExit, false);
    vcpus.start(0).expect("start");
    let resumer = {
        let vcpus = vcpus.clone();
        thread::spawn(move || vcpus.resume())
    };
    match vcpus.pause(TIMEOUT) {
        Ok(()) | Err(PauseError::Interrupted) => {}
        Err(e) => panic!("{e}"),
    }
    resumer.join().expect("resumer");
    vcpus.resume();
    vcpus.pause(TIMEOUT).expect("final pause");
    assert_all_paused(&vcpus);
    teardown(&vcpus, &sim);
}

#[test]
fn m5b_pause_racing_resume() {
    Model::new("m5b_pause_vs_resume", 3)
        .bounded(3, None)
        .check(pause_vs_resume);
}

/// Control (c): the real core with a kick that can be lost (a bare signal that lands
/// outside guest mode). With re-kicking the pause completes in every interleaving. Every
/// timed wait may time out here: recovering from lost kicks is what the timeouts are for.
fn lossy_pause(rekick: Rekick) -> impl Fn() + Send + Sync + 'static {
    move || {
        let (vcpus, sim) = SimBackend::create(1, KickMode::Lossy, false);
        vcpus.start(0).expect("start");
        let sim = Arc::new(sim);
        pause_with(&vcpus, TIMEOUT, rekick).expect("pause");
        teardown(&vcpus, &sim);
    }
}

#[test]
fn c6c_lossy_kick_with_rekick_passes() {
    Model::new("c6c_lossy_kick/rekick", 2)
        .bounded(3, None)
        .unlimited_timeouts()
        .check(lossy_pause(Rekick::Enabled));
}

#[test]
fn c6c_lossy_kick_without_rekick_is_reported() {
    Model::new("c6c_lossy_kick/no_rekick", 2)
        .fixed_bound(Some(3))
        .unlimited_timeouts()
        .max_branches(model_tests::harness::CONTROL_MAX_BRANCHES)
        .check_fails(
            "c6c_lossy_kick_without_rekick_is_reported",
            LIVELOCK_OR_DEADLOCK,
            lossy_pause(Rekick::Disabled),
        );
}
