//! The core on real threads over the simulated backend: fake vCPUs that spin in "guest
//! mode", leave it when kicked, and access the hotplug controller.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use vcpu_sync::sim::{pause_with, GuestOp, KickMode, Observed, Rekick, SimBackend};
use vcpu_sync::{
    CoreError, Life, Location, PauseError, Vcpus, WriteEffect, REG_SELECT, REG_STATUS,
    STATUS_EJECT, STATUS_ENABLED, STATUS_INSERTING, STATUS_REMOVING,
};

const T: Duration = Duration::from_secs(5);

fn vm(max: usize, boot: usize, mode: KickMode) -> (Vcpus<SimBackend>, SimBackend) {
    let (vcpus, sim) = SimBackend::create(max, mode, true);
    for i in 0..boot {
        vcpus.start(i).expect("start boot vCPU");
    }
    (vcpus, sim)
}

fn teardown(vcpus: &Vcpus<SimBackend>, sim: &SimBackend) {
    vcpus.resume();
    vcpus.shutdown(T).expect("shutdown");
    assert!(vcpus.reports().iter().all(|r| r.life == Life::Absent));
    sim.detach();
}

fn status() -> GuestOp {
    GuestOp::MmioRead {
        offset: REG_STATUS,
        size: 1,
    }
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn pause_stops_guest_progress_and_resume_restarts_it() {
    let (vcpus, sim) = vm(2, 2, KickMode::ImmediateExit);
    wait_until("guest progress", || sim.ticks(0) > 10 && sim.ticks(1) > 10);
    vcpus.pause(T).expect("pause");
    assert!(vcpus
        .reports()
        .iter()
        .all(|r| r.paused && r.location == Location::Parked));
    let before = (sim.ticks(0), sim.ticks(1));
    thread::sleep(Duration::from_millis(30));
    assert_eq!(
        before,
        (sim.ticks(0), sim.ticks(1)),
        "guest ran while paused"
    );
    assert!(vcpus.resume());
    wait_until("progress after resume", || {
        sim.ticks(0) > before.0 + 10 && sim.ticks(1) > before.1 + 10
    });
    assert!(vcpus.reports().iter().all(|r| !r.paused));
    assert_eq!(vcpus.stats().pauses, 1);
    teardown(&vcpus, &sim);
}

#[test]
fn pause_is_idempotent_and_resume_reports_whether_it_resumed() {
    let (vcpus, sim) = vm(3, 3, KickMode::ImmediateExit);
    assert!(
        !vcpus.resume(),
        "resume while running must report nothing to do"
    );
    vcpus.pause(T).expect("pause");
    vcpus.pause(T).expect("second pause joins the first");
    assert!(vcpus.is_paused());
    assert!(vcpus.resume());
    assert!(!vcpus.resume());
    assert!(!vcpus.is_paused());
    teardown(&vcpus, &sim);
}

#[test]
fn lossy_kicks_are_recovered_by_rekicking() {
    let (vcpus, sim) = vm(3, 3, KickMode::Lossy);
    for _ in 0..50 {
        vcpus.pause(T).expect("pause with lossy kicks");
        assert!(vcpus.resume());
    }
    teardown(&vcpus, &sim);
}

#[test]
fn pause_succeeds_while_vcpus_hammer_the_hotplug_controller() {
    let (vcpus, sim) = vm(4, 2, KickMode::ImmediateExit);
    let stop = Arc::new(AtomicBool::new(false));
    // Keep both vCPUs busy with controller accesses (the window of the original bug).
    let feeder = {
        let (sim, stop) = (sim.clone(), stop.clone());
        thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                for i in 0..2 {
                    if !sim.has_pending(i) {
                        sim.push_ops(
                            i,
                            [
                                GuestOp::select(n % 5),
                                status(),
                                GuestOp::MmioRead { offset: 0, size: 4 },
                            ],
                        );
                    }
                }
                n += 1;
                thread::sleep(Duration::from_micros(100));
            }
        })
    };
    for _ in 0..200 {
        vcpus.pause(T).expect("pause during MMIO traffic");
        assert!(vcpus
            .reports()
            .iter()
            .filter(|r| r.life == Life::Active)
            .all(|r| r.paused));
        assert!(vcpus.resume());
    }
    stop.store(true, Ordering::SeqCst);
    feeder.join().expect("feeder");
    assert_eq!(vcpus.stats().pauses, 200);
    // The observations are real register reads, not just "no hang".
    let reads = sim
        .take_observed()
        .into_iter()
        .filter(|(_, o)| matches!(o, Observed::Read { .. }))
        .count();
    assert!(reads > 0, "the vCPUs never reached the controller");
    teardown(&vcpus, &sim);
}

#[test]
fn concurrent_pausers_and_resumers_never_hang() {
    let (vcpus, sim) = vm(4, 4, KickMode::Lossy);
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (vcpus, done) = (vcpus.clone(), done.clone());
            thread::spawn(move || {
                for k in 0..100 {
                    if (w + k) % 3 == 0 {
                        vcpus.resume();
                    } else {
                        match vcpus.pause(T) {
                            Ok(()) | Err(PauseError::Interrupted) => {}
                            Err(e) => panic!("pause failed: {e}"),
                        }
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    assert_eq!(done.load(Ordering::SeqCst), 3);
    // Whatever the interleaving, a final pause completes and a resume restarts everyone.
    vcpus.pause(T).expect("final pause");
    assert!(vcpus.reports().iter().all(|r| r.paused));
    assert!(vcpus.resume());
    teardown(&vcpus, &sim);
}

#[test]
fn a_wedged_vcpu_makes_pause_time_out_with_a_diagnosis() {
    let (vcpus, sim) = vm(3, 3, KickMode::ImmediateExit);
    sim.push_ops(1, [GuestOp::Wedge]);
    wait_until("vCPU 1 wedged in its device handler", || {
        vcpus.report(1).location == Location::InMmio
    });
    let err = vcpus
        .pause(Duration::from_millis(100))
        .expect_err("pause must time out");
    let PauseError::Timeout(t) = &err else {
        panic!("unexpected error {err}")
    };
    assert_eq!(t.missing.len(), 1);
    assert_eq!(t.missing[0].index, 1);
    assert_eq!(t.missing[0].location, Location::InMmio);
    assert!(t.missing[0].kicks > 1, "the straggler was re-kicked");
    let msg = err.to_string();
    assert!(
        msg.contains("vCPU 1") && msg.contains("MMIO"),
        "message: {msg}"
    );
    // The others did acknowledge and stay parked.
    assert!(vcpus.report(0).paused && vcpus.report(2).paused);
    sim.release(1);
    vcpus.pause(T).expect("pause after the device is released");
    teardown(&vcpus, &sim);
}

#[test]
fn hot_add_while_paused_parks_the_new_vcpu_before_it_runs() {
    let (vcpus, sim) = vm(4, 1, KickMode::ImmediateExit);
    vcpus.pause(T).expect("pause");
    vcpus.hot_add(2).expect("hot-add");
    vcpus.pause(T).expect("pause again covers the new vCPU");
    assert!(vcpus.report(2).paused);
    assert_eq!(
        sim.entries(2),
        0,
        "a hot-added vCPU entered the guest while paused"
    );
    assert!(vcpus.resume());
    wait_until("new vCPU runs", || sim.ticks(2) > 0);
    teardown(&vcpus, &sim);
}

#[test]
fn hot_remove_of_a_parked_vcpu_during_pause() {
    let (vcpus, sim) = vm(3, 3, KickMode::ImmediateExit);
    vcpus.pause(T).expect("pause");
    vcpus.hot_remove(1, T).expect("hot-remove a parked vCPU");
    assert_eq!(vcpus.report(1).life, Life::Absent);
    vcpus.pause(T).expect("pause with an empty slot");
    assert!(vcpus.resume());
    assert_eq!(vcpus.active_count(), 2);
    teardown(&vcpus, &sim);
}

#[test]
fn hotplug_register_semantics() {
    let (vcpus, sim) = vm(4, 1, KickMode::ImmediateExit);
    let read = |off: u64, size: usize| {
        let mut d = vec![0xAAu8; size];
        vcpus.hotplug_read(off, &mut d);
        d
    };
    let sel = |i: u32| vcpus.hotplug_write(REG_SELECT, &i.to_le_bytes());
    assert_eq!(sel(0), WriteEffect::Selected(0));
    assert_eq!(read(REG_STATUS, 1), vec![STATUS_ENABLED]);
    assert_eq!(read(REG_SELECT, 4), 0u32.to_le_bytes());
    // Out of range selects nothing; status reads 0; writes change nothing.
    sel(77);
    assert_eq!(read(REG_SELECT, 4), 77u32.to_le_bytes());
    assert_eq!(read(REG_STATUS, 1), vec![0]);
    assert_eq!(vcpus.hotplug_write(REG_STATUS, &[0xff]), WriteEffect::None);
    // Hot-add: inserting until the guest clears it.
    vcpus.hot_add(2).expect("hot-add");
    sel(2);
    assert_eq!(read(REG_STATUS, 1), vec![STATUS_ENABLED | STATUS_INSERTING]);
    assert_eq!(
        vcpus.hotplug_write(REG_STATUS, &[STATUS_INSERTING]),
        WriteEffect::Cleared(2)
    );
    assert_eq!(read(REG_STATUS, 1), vec![STATUS_ENABLED]);
    // An eject the VMM never asked for is refused.
    assert_eq!(
        vcpus.hotplug_write(REG_STATUS, &[STATUS_EJECT]),
        WriteEffect::EjectRefused(2)
    );
    assert_eq!(vcpus.report(2).life, Life::Active);
    // Removal: removing until scanned, then the eject stops the vCPU; the VMM reaps it.
    vcpus.request_removal(2).expect("request removal");
    assert_eq!(read(REG_STATUS, 1), vec![STATUS_ENABLED | STATUS_REMOVING]);
    assert_eq!(
        vcpus.hotplug_write(REG_STATUS, &[STATUS_REMOVING]),
        WriteEffect::Cleared(2)
    );
    assert_eq!(read(REG_STATUS, 1), vec![STATUS_ENABLED]);
    assert_eq!(
        vcpus.hotplug_write(REG_STATUS, &[STATUS_EJECT]),
        WriteEffect::Ejected(2)
    );
    assert_eq!(
        read(REG_STATUS, 1),
        vec![0],
        "an ejected CPU is no longer enabled"
    );
    wait_until("ejected thread exits", || {
        vcpus.report(2).life == Life::Exited
    });
    assert_eq!(vcpus.reap().unwrap(), vec![2]);
    assert_eq!(vcpus.report(2).life, Life::Absent);
    assert_eq!(vcpus.stats().ejects, 1);
    // Odd offsets and sizes read as zero and ignore writes.
    for (off, size) in [
        (0u64, 1usize),
        (0, 2),
        (0, 8),
        (1, 4),
        (4, 4),
        (4, 2),
        (5, 1),
        (8, 4),
        (12, 4),
        (u64::MAX, 1),
    ] {
        assert!(
            read(off, size).iter().all(|&b| b == 0),
            "offset {off} size {size}"
        );
        assert_eq!(
            vcpus.hotplug_write(off, &vec![0xffu8; size]),
            WriteEffect::None,
            "offset {off} size {size}"
        );
    }
    assert_eq!(
        read(REG_SELECT, 4),
        2u32.to_le_bytes(),
        "stray writes must not change the selection"
    );
    teardown(&vcpus, &sim);
}

#[test]
fn guest_can_eject_through_a_vcpu_while_a_pause_runs() {
    let (vcpus, sim) = vm(3, 3, KickMode::Lossy);
    vcpus.request_removal(2).expect("request removal");
    sim.push_ops(0, GuestOp::eject(2));
    vcpus.pause(T).expect("pause");
    assert!(vcpus.resume());
    wait_until("ejected", || {
        vcpus.report(2).life == Life::Exited || vcpus.report(2).life == Life::Absent
    });
    vcpus.reap().unwrap();
    assert_eq!(vcpus.report(2).life, Life::Absent);
    teardown(&vcpus, &sim);
}

#[test]
fn vcpus_ejecting_each_other_do_not_deadlock() {
    let (vcpus, sim) = vm(2, 2, KickMode::ImmediateExit);
    vcpus.request_removal(0).expect("removal 0");
    vcpus.request_removal(1).expect("removal 1");
    // Both vCPUs service an eject of the other at the same time; neither waits.
    sim.push_ops(0, GuestOp::eject(1));
    sim.push_ops(1, GuestOp::eject(0));
    wait_until("at least one ejected", || {
        vcpus.reports().iter().any(|r| r.life != Life::Active)
    });
    teardown(&vcpus, &sim);
}

#[test]
fn slot_management_errors_are_typed() {
    assert!(matches!(
        Vcpus::new(0, SimBackend::new(1, KickMode::Lossy, false)),
        Err(CoreError::NoSlots)
    ));
    let (vcpus, sim) = vm(2, 1, KickMode::ImmediateExit);
    assert!(matches!(
        vcpus.start(0),
        Err(CoreError::WrongState {
            index: 0,
            life: Life::Active,
            ..
        })
    ));
    assert!(matches!(
        vcpus.hot_add(2),
        Err(CoreError::OutOfRange { index: 2, max: 2 })
    ));
    assert!(matches!(
        vcpus.request_removal(1),
        Err(CoreError::WrongState {
            index: 1,
            life: Life::Absent,
            ..
        })
    ));
    assert!(matches!(vcpus.stop(9), Err(CoreError::OutOfRange { .. })));
    assert!(matches!(
        vcpus.try_report(5),
        Err(CoreError::OutOfRange { .. })
    ));
    assert!(!vcpus.stop(1).expect("stop absent"));
    assert!(!vcpus.cancel_removal(0).expect("cancel"));
    vcpus.request_removal(0).expect("request");
    assert!(vcpus.cancel_removal(0).expect("cancel"));
    assert!(!vcpus.report(0).removing);
    // Once the guest has read `removing` it may be offlining the CPU to eject it: the
    // request stands (withdrawing it left a guest that ejected a CPU the VMM kept).
    vcpus.request_removal(0).expect("request");
    vcpus.hotplug_write(REG_SELECT, &0u32.to_le_bytes());
    let mut status = [0u8];
    vcpus.hotplug_read(REG_STATUS, &mut status);
    assert_ne!(status[0] & vcpu_sync::STATUS_REMOVING, 0);
    assert!(!vcpus.cancel_removal(0).expect("cancel"));
    assert!(vcpus.report(0).remove_requested);
    // Asking again does not make a seen request withdrawable.
    vcpus.request_removal(0).expect("request");
    assert!(!vcpus.cancel_removal(0).expect("cancel"));
    teardown(&vcpus, &sim);
}

/// The simulated backend with one switch: while `lose` is set, the next kick is dropped
/// (a kick lost in the race KVM's `immediate_exit` closes), later ones are delivered.
struct LosesAKick {
    sim: SimBackend,
    lose: Arc<AtomicBool>,
}

impl vcpu_sync::Backend for LosesAKick {
    type Thread = <SimBackend as vcpu_sync::Backend>::Thread;
    type Error = <SimBackend as vcpu_sync::Backend>::Error;

    fn spawn(&self, link: vcpu_sync::VcpuLink) -> Result<Self::Thread, Self::Error> {
        self.sim.spawn(link)
    }

    fn kick(&self, index: usize) {
        if !self.lose.swap(false, Ordering::SeqCst) {
            self.sim.kick(index);
        }
    }

    fn join(&self, index: usize, thread: Self::Thread) {
        self.sim.join(index, thread);
    }
}

#[test]
fn without_rekick_a_lost_kick_is_diagnosed_not_hung() {
    // The negative control on real threads, made deterministic: the first kick of a pause
    // is lost while the vCPU is in guest mode, where it stays until kicked.
    let sim = SimBackend::new(1, KickMode::ImmediateExit, false);
    let lose = Arc::new(AtomicBool::new(false));
    let vcpus = Vcpus::new(
        1,
        LosesAKick {
            sim: sim.clone(),
            lose: lose.clone(),
        },
    )
    .expect("vcpus");
    vcpus.start(0).expect("start");
    let in_guest = || vcpus.report(0).location == Location::InGuest;
    wait_until("vCPU 0 in guest mode", in_guest);

    // Without re-kick the pause can only wait: it must give up at its deadline (not hang,
    // not return early) and name vCPU 0, still in guest mode.
    let deadline = Duration::from_millis(100);
    lose.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let r = pause_with(&vcpus, deadline, Rekick::Disabled);
    let took = start.elapsed();
    match r {
        Err(PauseError::Timeout(t)) => {
            assert_eq!(t.missing.len(), 1, "{t}");
            assert_eq!(t.missing[0].index, 0);
            assert_eq!(t.missing[0].location, Location::InGuest, "{t}");
        }
        other => panic!("a pause whose only kick was lost returned {other:?}"),
    }
    assert!(took >= deadline, "gave up early, after {took:?}");
    assert!(
        took < deadline + Duration::from_secs(2),
        "overran its deadline: {took:?}"
    );
    assert!(!lose.load(Ordering::SeqCst), "the kick was not sent");
    assert!(vcpus.resume());

    // The same lost kick with re-kicking (the real `pause`): recovered, well before T.
    wait_until("vCPU 0 back in guest mode", in_guest);
    lose.store(true, Ordering::SeqCst);
    let rekicks = vcpus.stats().rekicks;
    let start = Instant::now();
    vcpus.pause(T).expect("re-kicking recovers a lost kick");
    assert!(start.elapsed() < T / 2, "took {:?}", start.elapsed());
    assert!(vcpus.stats().rekicks > rekicks, "no re-kick was counted");
    assert!(vcpus.report(0).paused);
    assert!(vcpus.resume());
    vcpus.shutdown(T).expect("shutdown");
}

#[test]
fn a_weak_handle_does_not_keep_the_vcpus_alive() {
    let sim = SimBackend::new(2, KickMode::ImmediateExit, false);
    let vcpus = Vcpus::new(2, sim.clone()).expect("vcpus");
    let weak = vcpus.downgrade();
    assert!(vcpus_sync_weak_upgrades(&weak));
    vcpus.start(0).expect("start");
    vcpus.shutdown(T).expect("shutdown");
    drop(vcpus);
    assert!(
        weak.upgrade().is_none(),
        "a weak handle kept the vCPUs alive"
    );
    assert!(vcpu_sync::WeakVcpus::<SimBackend>::new()
        .upgrade()
        .is_none());
}

fn vcpus_sync_weak_upgrades(weak: &vcpu_sync::WeakVcpus<SimBackend>) -> bool {
    weak.upgrade().is_some_and(|v| v.max_vcpus() == 2)
}

/// A backend whose vCPU 0, once in its run loop, calls every VMM-side method on its own
/// thread and reports what they returned and how long they took.
struct SelfCaller {
    core: Arc<std::sync::OnceLock<vcpu_sync::WeakVcpus<SelfCaller>>>,
    report: std::sync::mpsc::SyncSender<(Vec<String>, Duration, Option<usize>)>,
}

impl vcpu_sync::Backend for SelfCaller {
    type Thread = thread::JoinHandle<()>;
    type Error = std::io::Error;

    fn spawn(&self, link: vcpu_sync::VcpuLink) -> Result<Self::Thread, std::io::Error> {
        let core = self.core.clone();
        let report = self.report.clone();
        thread::Builder::new().spawn(move || {
            let before = vcpu_sync::current_vcpu();
            let mut first = link.index() == 0;
            while link.checkpoint() == vcpu_sync::Next::Run {
                if std::mem::take(&mut first) {
                    let vcpus = core.get().and_then(|w| w.upgrade()).expect("core");
                    let start = Instant::now();
                    let errors = vec![
                        format!("{:?}", vcpus.pause(Duration::from_millis(300))),
                        format!("{:?}", vcpus.hot_remove(1, T)),
                        format!("{:?}", vcpus.reap()),
                        format!("{:?}", vcpus.shutdown(T)),
                    ];
                    // Calls that do not wait still work here.
                    assert!(vcpus.request_removal(1).is_ok());
                    assert!(vcpus.cancel_removal(1).expect("cancel"));
                    let _ = report.send((errors, start.elapsed(), before));
                }
                thread::sleep(Duration::from_micros(200));
            }
        })
    }

    fn kick(&self, _index: usize) {}

    fn join(&self, _index: usize, thread: Self::Thread) {
        let _ = thread.join();
    }
}

#[test]
fn waiting_calls_on_a_vcpu_thread_fail_at_once_with_a_typed_error() {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let core = Arc::new(std::sync::OnceLock::new());
    let vcpus = Vcpus::new(
        2,
        SelfCaller {
            core: core.clone(),
            report: tx,
        },
    )
    .expect("vcpus");
    core.set(vcpus.downgrade()).expect("set once");
    vcpus.start(1).expect("start 1");
    vcpus.start(0).expect("start 0");
    let (errors, took, before) = rx.recv_timeout(T * 8).expect("vCPU 0 reported");
    assert_eq!(before, None, "a fresh thread is not a vCPU thread yet");
    assert_eq!(
        errors[0], "Err(OnVcpuThread { index: 0 })",
        "pause: {errors:?}"
    );
    for (e, op) in errors[1..].iter().zip(["hot_remove", "reap", "shutdown"]) {
        assert_eq!(e, &format!("Err(OnVcpuThread {{ index: 0, op: {op:?} }})"));
    }
    assert!(took < Duration::from_secs(1), "refusals took {took:?}");
    // The same calls work from this (VMM) thread.
    assert_eq!(vcpu_sync::current_vcpu(), None);
    vcpus.pause(T).expect("pause from the VMM thread");
    assert!(vcpus.resume());
    vcpus.shutdown(T).expect("shutdown from the VMM thread");
    assert!(vcpus.reports().iter().all(|r| r.life == Life::Absent));
}
