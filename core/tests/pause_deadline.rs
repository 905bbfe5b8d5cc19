//! A pause's deadline and a stopped process (issue 11 item 2): a SIGSTOP of the VMM during
//! a pause once made the deadline fire spuriously, the first check after SIGCONT finding
//! vCPUs that had had no chance to run. Simulated here by a deadline that has already
//! passed when the pauser first looks (`pause(0)`): the vCPUs were kicked a moment ago and
//! will acknowledge, so the one more check after the deadline must see them.

use std::time::{Duration, Instant};
use vcpu_sync::sim::{GuestOp, KickMode, SimBackend};
use vcpu_sync::{Life, Location, PauseError, PAUSE_GRACE};

const T: Duration = Duration::from_secs(5);

/// Yields until `cond` holds; fails with `what` after [`T`].
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::yield_now();
    }
}

#[test]
fn a_deadline_passed_before_the_first_check_is_not_a_timeout() {
    let (vcpus, sim) = SimBackend::create(3, KickMode::ImmediateExit, false);
    for i in 0..3 {
        vcpus.start(i).expect("start");
    }
    // Let every thread reach guest mode first.
    wait_for("vCPUs never entered the guest", || {
        (0..3).all(|i| sim.entries(i) > 0)
    });
    for round in 0..50 {
        vcpus
            .pause(Duration::ZERO)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(vcpus.reports().iter().all(|r| r.paused));
        assert!(vcpus.resume());
    }
    vcpus.shutdown(T).expect("shutdown");
    sim.detach();
}

#[test]
fn a_real_straggler_still_times_out_after_the_grace() {
    let (vcpus, sim) = SimBackend::create(2, KickMode::ImmediateExit, false);
    vcpus.start(0).expect("start");
    vcpus.start(1).expect("start");
    sim.push_ops(1, [GuestOp::Wedge]);
    wait_for("vCPU 1 never wedged", || {
        vcpus.report(1).location == Location::InMmio
    });
    let started = Instant::now();
    let err = vcpus.pause(Duration::from_millis(50)).expect_err("wedged");
    let waited = started.elapsed();
    assert!(matches!(err, PauseError::Timeout(ref t) if t.missing[0].index == 1));
    assert!(
        waited >= Duration::from_millis(50) + PAUSE_GRACE,
        "{waited:?}"
    );
    assert!(waited < T, "{waited:?}");
    sim.release(1);
    vcpus.resume();
    vcpus.shutdown(T).expect("shutdown");
    assert!(vcpus.reports().iter().all(|r| r.life == Life::Absent));
    sim.detach();
}

#[test]
fn try_pause_pauses_when_every_vcpu_acknowledges_in_time() {
    let (vcpus, sim) = SimBackend::create(3, KickMode::ImmediateExit, false);
    for i in 0..3 {
        vcpus.start(i).expect("start");
    }
    wait_for("vCPUs never entered the guest", || {
        (0..3).all(|i| sim.entries(i) > 0)
    });
    for round in 0..20 {
        assert!(matches!(vcpus.try_pause(T), Ok(true)), "round {round}");
        assert!(vcpus.reports().iter().all(|r| r.paused), "round {round}");
        // Joining the pause in force answers at once.
        assert!(
            matches!(vcpus.try_pause(Duration::ZERO), Ok(true)),
            "round {round}"
        );
        assert!(vcpus.resume());
    }
    assert_eq!(vcpus.stats().pauses, 40);
    vcpus.shutdown(T).expect("shutdown");
    sim.detach();
}

#[test]
fn try_pause_out_of_patience_leaves_a_pause_that_pause_finishes_or_resume_withdraws() {
    let (vcpus, sim) = SimBackend::create(2, KickMode::ImmediateExit, false);
    vcpus.start(0).expect("start");
    vcpus.start(1).expect("start");
    sim.push_ops(1, [GuestOp::Wedge]);
    wait_for("vCPU 1 never wedged", || {
        vcpus.report(1).location == Location::InMmio
    });

    // Out of patience: no error, no grace period, the pause in force, vCPU 0 parked.
    let started = Instant::now();
    assert!(matches!(
        vcpus.try_pause(Duration::from_millis(20)),
        Ok(false)
    ));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(20), "{waited:?}");
    assert!(waited < PAUSE_GRACE, "{waited:?}");
    assert!(vcpus.is_paused());
    wait_for("vCPU 0 never parked", || vcpus.report(0).paused);
    assert!(!vcpus.report(1).paused);

    // Withdrawn: vCPU 0 runs again.
    assert!(vcpus.resume());
    let entries = sim.entries(0);
    wait_for("vCPU 0 never ran again", || sim.entries(0) > entries);

    // Out of patience again; this time a blocking pause joins it and finishes once the
    // straggler lets go.
    assert!(matches!(
        vcpus.try_pause(Duration::from_millis(5)),
        Ok(false)
    ));
    let epoch = vcpus.pause_epoch();
    let releaser = {
        let sim = sim.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            sim.release(1);
        })
    };
    vcpus.pause(T).expect("the joined pause completes");
    assert_eq!(vcpus.pause_epoch(), epoch, "joined, not a new pause");
    assert!(vcpus.reports().iter().all(|r| r.paused));
    releaser.join().unwrap();
    assert_eq!(vcpus.stats().pauses, 1);
    assert!(vcpus.resume());
    vcpus.shutdown(T).expect("shutdown");
    sim.detach();
}
