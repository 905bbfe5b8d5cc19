//! A pause's deadline and a stopped process (issue 11 item 2): a SIGSTOP of the VMM during
//! a pause once made the deadline fire spuriously, the first check after SIGCONT finding
//! vCPUs that had had no chance to run. Simulated here by a deadline that has already
//! passed when the pauser first looks (`pause(0)`): the vCPUs were kicked a moment ago and
//! will acknowledge, so the one more check after the deadline must see them.

use std::time::{Duration, Instant};
use vcpu_sync::sim::{GuestOp, KickMode, SimBackend};
use vcpu_sync::{Life, PauseError, PAUSE_GRACE};

const T: Duration = Duration::from_secs(5);

#[test]
fn a_deadline_passed_before_the_first_check_is_not_a_timeout() {
    let (vcpus, sim) = SimBackend::create(3, KickMode::ImmediateExit, false);
    for i in 0..3 {
        vcpus.start(i).expect("start");
    }
    // Let every thread reach guest mode first.
    let deadline = Instant::now() + T;
    while (0..3).any(|i| sim.entries(i) == 0) {
        assert!(Instant::now() < deadline, "vCPUs never entered the guest");
        std::thread::yield_now();
    }
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
    let deadline = Instant::now() + T;
    while vcpus.report(1).location != vcpu_sync::Location::InMmio {
        assert!(Instant::now() < deadline, "vCPU 1 never wedged");
        std::thread::yield_now();
    }
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
