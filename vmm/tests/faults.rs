//! Failure paths of a real VM (issue 11, items 2 and 11), driven through the KVM
//! backend's test-only fault switch (`KvmBackend::inject_fault`) with the synthetic
//! spinner guest on every vCPU:
//!
//! * a pause that times out (a vCPU stuck in a device handler) is withdrawn: the VM is
//!   left running, and the error says so;
//! * a vCPU whose KVM_RUN fails brings the VM down cleanly with an error naming it, and a
//!   pause in flight returns an error instead of reporting a paused VM or hanging.
//!
//! Without /dev/kvm these fail with a clear message unless VMM_ALLOW_NO_KVM=1.

mod common;

use common::{guest_slot, kvm_available, wait_until};
use kvm_backend::Fault;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vcpu_sync::Life;
use vmm::api::ApiError;
use vmm::api::{Control, VmControl};
use vmm::vm::bus::VmEvent;
use vmm::vm::{Outcome, Vm};
use vmm_testguest::{progress, GuestFile, GuestSpec};

const DEADLINE: Duration = Duration::from_secs(20);

struct Running {
    vm: Arc<Vm>,
    main_loop: Option<JoinHandle<Result<Outcome, vmm::Error>>>,
    _guest: GuestFile,
}

impl Running {
    /// Two vCPUs, both running the spinner, with the main loop on its own thread if
    /// `main_loop` (else see [`Running::start_main_loop`]).
    fn boot(main_loop: bool) -> Running {
        let guest = GuestFile::create(&GuestSpec::spinner()).expect("guest");
        let vm =
            Arc::new(Vm::with_serial(&guest.config(2, 2), Box::new(std::io::sink())).expect("VM"));
        vm.vcpus().backend().set_all_vcpus_boot(true);
        vm.start().expect("start");
        let mut r = Running {
            vm,
            main_loop: None,
            _guest: guest,
        };
        if main_loop {
            r.start_main_loop();
        }
        for i in 0..2 {
            r.wait_progress(i);
        }
        r
    }

    fn start_main_loop(&mut self) {
        let vm = self.vm.clone();
        self.main_loop = Some(std::thread::spawn(move || vm.run()));
    }

    fn wait_progress(&self, i: usize) {
        let from = progress(self.vm.memory(), i);
        assert!(
            wait_until(DEADLINE, || progress(self.vm.memory(), i) > from),
            "vCPU {i} makes no progress"
        );
    }

    fn finish(&mut self) -> Result<Outcome, vmm::Error> {
        let h = self.main_loop.take().expect("main loop");
        assert!(wait_until(DEADLINE, || h.is_finished()), "main loop hung");
        h.join().expect("main loop panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.main_loop.is_none() {
            self.vm.shutdown();
        } else {
            let _ = self.vm.event_sender().send(VmEvent::Shutdown);
            let _ = self.finish();
        }
    }
}

/// Item 2: a timed-out pause used to stay in force (info: paused) although the reply said
/// it failed.
#[test]
fn a_timed_out_pause_is_withdrawn_and_the_vm_keeps_running() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let mut r = Running::boot(true);
    let backend = r.vm.vcpus().backend();
    backend.inject_fault(1, Some(Fault::Stall));
    let err =
        r.vm.pause(Duration::from_millis(300))
            .expect_err("vCPU 1 is stalled: the pause must time out");
    let msg = err.to_string();
    assert!(
        msg.contains("vCPU 1") && msg.contains("left running"),
        "{msg}"
    );
    let info = r.vm.info();
    assert!(!info.paused, "a failed pause stayed in force: {info:?}");
    assert!(info.vcpus.iter().all(|v| !v.paused), "{info:?}");
    r.wait_progress(0); // vCPU 0 had acknowledged and runs again
                        // Over the control API: the error names the vCPU and says the VM is running.
    let control = VmControl::new(r.vm.clone());
    match control.pause() {
        Err(e @ ApiError::PauseTimeout(_)) => {
            let m = e.to_string();
            assert!(
                m.contains("withdrawn") && m.contains("VM is running"),
                "{m}"
            );
        }
        other => panic!("expected a pause timeout, got {other:?}"),
    }
    assert!(!control.info().paused);
    // Unstalled, the VM pauses and resumes normally.
    backend.inject_fault(1, None);
    r.vm.pause(Duration::from_secs(5)).expect("pause");
    assert!(r.vm.info().paused);
    assert!(r.vm.resume());
    r.wait_progress(1);
    r.vm.event_sender().send(VmEvent::Shutdown).unwrap();
    assert!(matches!(r.finish(), Ok(Outcome::Shutdown)));
}

/// Item 11: a vCPU whose KVM_RUN fails (here: the one interrupted by a pause's kick). The
/// main loop is started only after the pause, so the pause cannot be cancelled by the
/// shutdown: the core then counts the dead vCPU as acknowledged, and the pause must still
/// not report a paused VM.
#[test]
fn a_failing_kvm_run_brings_the_vm_down_and_fails_the_pause_in_flight() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let mut r = Running::boot(false);
    r.vm.vcpus()
        .backend()
        .inject_fault(1, Some(Fault::RunFails));
    let started = Instant::now();
    let err =
        r.vm.pause(Duration::from_secs(5))
            .expect_err("a pause during a vCPU failure must not succeed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let msg = err.to_string();
    assert!(msg.contains("vCPU 1: KVM_RUN failed"), "pause error: {msg}");
    assert!(!r.vm.info().paused, "{:?}", r.vm.info());
    // Over the API the same failure is a `vm_failed` error.
    match VmControl::new(r.vm.clone()).pause() {
        Err(e @ ApiError::VmFailed(_)) => assert_eq!(e.kind(), "vm_failed"),
        other => panic!("expected vm_failed, got {other:?}"),
    }
    r.start_main_loop();
    match r.finish() {
        Err(vmm::Error::Guest(m)) => assert!(m.contains("vCPU 1: KVM_RUN failed"), "{m}"),
        other => panic!("main loop ended with {other:?}"),
    }
    for s in r.vm.vcpus().reports() {
        assert_eq!(s.life, Life::Absent, "vCPU not stopped: {s}");
    }
}
