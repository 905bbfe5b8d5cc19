//! Pause/resume storms on real KVM, in process through `vmm::vm::Vm`, against the synthetic
//! guest of `vmm_testguest` (vCPU 0 scans the CPU-hotplug controller's MMIO window in an
//! endless loop, like Linux's `CSCN`, and counts rounds in guest memory; vCPU 1 is an AP
//! waiting for INIT/SIPI inside KVM_RUN). This is the seed reproducer of the motivating bug
//! in DESIGN.md: pauses land while vCPU 0 is inside the hotplug device handler, and the
//! test counts (not guesses) how many did, through `Stats::pauses_overlapping_mmio`.
//!
//! * `pause_resume_storm_over_hotplug_mmio`: N pause/resume cycles; after each pause every
//!   present vCPU has acknowledged and the guest's counter stands still; after each resume
//!   it moves.
//! * `pause_resume_storm_with_hotplug_racing`: the same while a third thread hot-adds and
//!   removes vCPUs 2 and 3 (through `Vm::resize`, with the guest ejecting as Linux would,
//!   and through the core's VMM-side `hot_remove`).
//! * `stuck_device_handler_is_named_by_pause_timeout`: a device handler that blocks on one
//!   vCPU makes `pause` fail with a report naming that vCPU "in MMIO handler", while the
//!   other acknowledges; once released, pausing succeeds.
//!
//! The same storm against the real Debian guest, over the control API, is in
//! `tests/guest_storm.rs`.
//!
//! Default cycles keep CI well under a minute. Soak (any cycle count):
//!
//! ```text
//! STORM_CYCLES=100000 cargo test -p vmm --release --test storm -- --nocapture --test-threads=1
//! ```
//!
//! Without /dev/kvm the tests fail with a clear message unless VMM_ALLOW_NO_KVM=1.

mod common;

use common::{guest_slot, kvm_available, wait_until};
use kvm_backend::{BackendConfig, BootEntry, ExitHandler, GuestStop, KvmBackend, KvmVm};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vcpu_sync::{Life, Location, PauseError, Vcpus};
use vm_memory::GuestAddress;
use vmm::vm::bus::{DeviceBus, VmEvent};
use vmm::vm::devices::NoInterrupt;
use vmm::vm::layout::{HOTPLUG_MMIO_BASE, ZERO_PAGE};
use vmm::vm::{Outcome, Vm};
use vmm_testguest::{progress, GuestFile, GuestSpec};

/// Deadline of every pause in the storms: any timeout fails the test.
const PAUSE_DEADLINE: Duration = Duration::from_secs(5);
/// How long the guest may take to show progress after a resume.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(5);

fn cycles(default: u64) -> u64 {
    std::env::var("STORM_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Serial output sink that only counts bytes (the guest writes '.' every 1024 rounds).
struct CountingSink(Arc<AtomicU64>);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A VM whose main loop (`Vm::run`) runs on its own thread, as in the VMM binary.
struct Running {
    vm: Arc<Vm>,
    main_loop: Option<JoinHandle<Result<Outcome, vmm::Error>>>,
    serial_bytes: Arc<AtomicU64>,
    _guest: GuestFile,
}

impl Running {
    fn boot(spec: &GuestSpec, boot: usize, max: usize) -> Running {
        let guest = GuestFile::create(spec).expect("write the synthetic guest");
        let serial_bytes = Arc::new(AtomicU64::new(0));
        let vm = Vm::with_serial(
            &guest.config(boot, max),
            Box::new(CountingSink(serial_bytes.clone())),
        )
        .unwrap_or_else(|e| panic!("build the VM: {e}"));
        let vm = Arc::new(vm);
        vm.start().unwrap_or_else(|e| panic!("start vCPUs: {e}"));
        let vm2 = vm.clone();
        let main_loop = std::thread::Builder::new()
            .name("vm-main".into())
            .spawn(move || vm2.run())
            .expect("spawn main loop");
        let r = Running {
            vm,
            main_loop: Some(main_loop),
            serial_bytes,
            _guest: guest,
        };
        r.wait_progress(0, 0, "first round");
        r
    }

    fn progress(&self) -> u64 {
        progress(self.vm.memory(), 0)
    }

    /// Waits until vCPU `index`'s counter is above `from`.
    fn wait_progress(&self, index: usize, from: u64, when: &str) -> u64 {
        let mut now = 0;
        if !wait_until(PROGRESS_DEADLINE, || {
            now = progress(self.vm.memory(), index);
            now > from
        }) {
            panic!(
                "{when}: guest counter of vCPU {index} stuck at {now} for {PROGRESS_DEADLINE:?}\n{}",
                self.diagnosis()
            );
        }
        now
    }

    fn diagnosis(&self) -> String {
        let finished = self.main_loop.as_ref().is_none_or(|h| h.is_finished());
        format!(
            "main loop finished: {finished}\nstats: {:?}\nvCPUs:\n{}",
            self.vm.stats(),
            self.vm
                .vcpus()
                .reports()
                .iter()
                .map(|r| format!("  {r} paused={}", r.paused))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    /// Asks the main loop to stop, waits for it (bounded) and checks every vCPU thread was
    /// joined.
    fn shut_down(mut self) {
        self.vm
            .event_sender()
            .send(VmEvent::Shutdown)
            .expect("main loop gone");
        let h = self.main_loop.take().unwrap();
        assert!(
            wait_until(Duration::from_secs(15), || h.is_finished()),
            "main loop did not stop\n{}",
            self.diagnosis()
        );
        let outcome = h.join().expect("main loop panicked");
        assert!(
            matches!(outcome, Ok(Outcome::Shutdown)),
            "main loop ended with {outcome:?}\n{}",
            self.diagnosis()
        );
        for r in self.vm.vcpus().reports() {
            assert_eq!(r.life, Life::Absent, "vCPU not joined after shutdown: {r}");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // On a failed assertion: never leave vCPU threads spinning behind.
        if self.main_loop.is_some() {
            self.vm.shutdown();
        }
    }
}

/// Every present vCPU has acknowledged the pause in force. `late_ok`: a vCPU hot-added
/// after the pause returned may still be on its way to its first checkpoint; it gets a
/// bounded grace period (it must park before ever entering the guest).
fn check_all_paused(r: &Running, cycle: u64, late_ok: bool) {
    let vcpus = r.vm.vcpus();
    let unpaused = || {
        vcpus
            .reports()
            .into_iter()
            .filter(|s| matches!(s.life, Life::Starting | Life::Active) && !s.paused)
            .collect::<Vec<_>>()
    };
    let missing = unpaused();
    if missing.is_empty() {
        return;
    }
    let boot_missing = missing.iter().any(|s| s.index < 2);
    if !late_ok || boot_missing || !wait_until(Duration::from_secs(2), || unpaused().is_empty()) {
        panic!(
            "cycle {cycle}: pause returned but not every vCPU acknowledged: {missing:?}\n{}",
            r.diagnosis()
        );
    }
}

struct StormFigures {
    cycles: u64,
    frozen_checks: u64,
    elapsed: Duration,
}

/// The storm loop: pause, check, (sometimes) check the guest stands still, resume, wait for
/// progress. `late_ok` as in [`check_all_paused`].
fn storm(r: &Running, n: u64, late_ok: bool) -> StormFigures {
    let started = Instant::now();
    let mut frozen_checks = 0;
    for cycle in 0..n {
        if let Err(e) = r.vm.pause(PAUSE_DEADLINE) {
            panic!("cycle {cycle}: {e}\n{}", r.diagnosis());
        }
        check_all_paused(r, cycle, late_ok);
        let frozen = r.progress();
        if cycle % 16 == 0 {
            std::thread::sleep(Duration::from_millis(1));
            let later = r.progress();
            assert_eq!(
                later,
                frozen,
                "cycle {cycle}: guest ran while paused\n{}",
                r.diagnosis()
            );
            frozen_checks += 1;
        }
        assert!(r.vm.resume(), "cycle {cycle}: VM was not paused");
        r.wait_progress(0, frozen, &format!("cycle {cycle} after resume"));
    }
    StormFigures {
        cycles: n,
        frozen_checks,
        elapsed: started.elapsed(),
    }
}

#[test]
fn pause_resume_storm_over_hotplug_mmio() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let r = Running::boot(&GuestSpec::default(), 2, 4);
    // vCPU 1 is an AP: it waits for INIT/SIPI inside KVM_RUN and must be kicked out of it.
    assert!(
        wait_until(Duration::from_secs(2), || r.vm.vcpus().report(1).location
            == Location::InGuest),
        "AP not in KVM_RUN\n{}",
        r.diagnosis()
    );
    let before = r.vm.stats();
    let f = storm(&r, cycles(2000), false);
    let s = r.vm.stats();
    let overlapping = s.pauses_overlapping_mmio - before.pauses_overlapping_mmio;
    println!(
        "storm: {} cycles in {:.2?} ({:.1} us/cycle), pauses {}, overlapping MMIO {}, \
         rekicks {}, frozen-progress checks {}, guest rounds {}, serial bytes {}",
        f.cycles,
        f.elapsed,
        f.elapsed.as_secs_f64() * 1e6 / f.cycles.max(1) as f64,
        s.pauses - before.pauses,
        overlapping,
        s.rekicks - before.rekicks,
        f.frozen_checks,
        r.progress(),
        r.serial_bytes.load(Ordering::Relaxed),
    );
    assert_eq!(s.pauses - before.pauses, f.cycles);
    assert!(
        overlapping > 0,
        "no pause caught vCPU 0 inside the hotplug handler in {} cycles",
        f.cycles
    );
    assert!(
        r.serial_bytes.load(Ordering::Relaxed) > 0,
        "the guest never wrote to the serial port"
    );
    // The AP never ran guest code.
    assert_eq!(progress(r.vm.memory(), 1), 0);
    r.shut_down();
}

#[derive(Default)]
struct HotplugCounts {
    rounds: AtomicU64,
    added: AtomicU64,
    removal_requests: AtomicU64,
    refused: AtomicU64,
    vmm_removes: AtomicU64,
}

/// Resizes between 2 and 4 vCPUs (guest ejects the removed ones) and every third round
/// hot-removes vCPU 3 from the VMM side, until `stop`.
fn hotplug_churn(vm: &Vm, stop: &AtomicBool, counts: &HotplugCounts) {
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        for n in [4, 2, 3, 4] {
            match vm.resize(n) {
                Ok(o) => {
                    counts
                        .added
                        .fetch_add(o.added.len() as u64, Ordering::Relaxed);
                    counts
                        .removal_requests
                        .fetch_add(o.removing.len() as u64, Ordering::Relaxed);
                }
                // Growing while the guest is still ejecting: expected now and then.
                Err(_) => {
                    counts.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_micros(300 + (round % 7) * 100));
        }
        if round % 3 == 0 {
            if let Err(e) = vm.vcpus().hot_remove(3, Duration::from_secs(5)) {
                panic!("VMM-side hot-remove of vCPU 3 failed: {e}");
            }
            counts.vmm_removes.fetch_add(1, Ordering::Relaxed);
        }
        counts.rounds.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn pause_resume_storm_with_hotplug_racing() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let r = Running::boot(&GuestSpec::default(), 2, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(HotplugCounts::default());
    let churn = {
        let (vm, stop, counts) = (r.vm.clone(), stop.clone(), counts.clone());
        std::thread::Builder::new()
            .name("hotplug-churn".into())
            .spawn(move || hotplug_churn(&vm, &stop, &counts))
            .expect("spawn churn thread")
    };
    let before = r.vm.stats();
    let f = storm(&r, cycles(2000), true);
    stop.store(true, Ordering::SeqCst);
    churn.join().expect("hotplug churn thread panicked");
    let s = r.vm.stats();
    let overlapping = s.pauses_overlapping_mmio - before.pauses_overlapping_mmio;
    println!(
        "storm+hotplug: {} cycles in {:.2?}, overlapping MMIO {}, rekicks {}, frozen checks {}; \
         churn rounds {}, hot-added {}, removals requested {}, guest ejects {}, \
         VMM-side removes {}, resizes refused {}",
        f.cycles,
        f.elapsed,
        overlapping,
        s.rekicks - before.rekicks,
        f.frozen_checks,
        counts.rounds.load(Ordering::Relaxed),
        counts.added.load(Ordering::Relaxed),
        counts.removal_requests.load(Ordering::Relaxed),
        s.ejects,
        counts.vmm_removes.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
    );
    assert!(overlapping > 0, "no pause overlapped the hotplug handler");
    assert!(
        counts.added.load(Ordering::Relaxed) > 0,
        "nothing was hot-added"
    );
    assert!(s.ejects > 0, "the guest never ejected a vCPU");
    // vCPUs 0 and 1 were never removed.
    for i in [0, 1] {
        assert_eq!(r.vm.vcpus().report(i).life, Life::Active);
    }
    r.shut_down();
}

// ---- a device handler that blocks: the diagnosis of a stuck pause ----

/// Blocks the hotplug-MMIO accesses of one vCPU while armed.
#[derive(Default)]
struct Gate {
    /// vCPU whose accesses block (usize::MAX: none).
    target: AtomicUsize,
    held: Mutex<bool>,
    cv: Condvar,
    /// Set when the target is blocked inside the handler.
    entered: AtomicBool,
}

impl Gate {
    fn arm(&self, vcpu: usize) {
        *self.held.lock().unwrap() = true;
        self.entered.store(false, Ordering::SeqCst);
        self.target.store(vcpu, Ordering::SeqCst);
    }
    fn release(&self) {
        self.target.store(usize::MAX, Ordering::SeqCst);
        *self.held.lock().unwrap() = false;
        self.cv.notify_all();
    }
    fn pass(&self, vcpu: usize, addr: u64) {
        let in_window = addr.wrapping_sub(HOTPLUG_MMIO_BASE) < vcpu_sync::HOTPLUG_REGION_SIZE;
        if !in_window || self.target.load(Ordering::SeqCst) != vcpu {
            return;
        }
        let mut held = self.held.lock().unwrap();
        self.entered.store(true, Ordering::SeqCst);
        while *held {
            held = self.cv.wait(held).unwrap();
        }
    }
}

/// The VMM's device bus behind a gate: a device model that hangs for one vCPU.
struct GatedBus {
    bus: Arc<DeviceBus<KvmBackend>>,
    gate: Arc<Gate>,
}

impl ExitHandler for GatedBus {
    fn pio_read(&self, vcpu: usize, port: u16, data: &mut [u8]) {
        self.bus.pio_read(vcpu, port, data)
    }
    fn pio_write(&self, vcpu: usize, port: u16, data: &[u8]) {
        self.bus.pio_write(vcpu, port, data)
    }
    fn mmio_read(&self, vcpu: usize, addr: u64, data: &mut [u8]) {
        self.gate.pass(vcpu, addr);
        ExitHandler::mmio_read(&*self.bus, vcpu, addr, data)
    }
    fn mmio_write(&self, vcpu: usize, addr: u64, data: &[u8]) {
        self.gate.pass(vcpu, addr);
        ExitHandler::mmio_write(&*self.bus, vcpu, addr, data)
    }
    fn guest_stopped(&self, vcpu: usize, reason: GuestStop) {
        self.bus.guest_stopped(vcpu, reason)
    }
    fn vcpu_exited(&self, vcpu: usize) {
        self.bus.vcpu_exited(vcpu)
    }
}

/// Releases the gate and stops the vCPUs however the test ends.
struct StuckVm {
    vcpus: Vcpus<KvmBackend>,
    gate: Arc<Gate>,
}

impl Drop for StuckVm {
    fn drop(&mut self) {
        self.gate.release();
        self.vcpus.resume();
        if let Err(e) = self.vcpus.shutdown(Duration::from_secs(5)) {
            eprintln!("stuck-pause VM: shutdown failed: {e}");
        }
    }
}

#[test]
fn stuck_device_handler_is_named_by_pause_timeout() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    // Both vCPUs run the guest (the backend starts vCPU 1 like the BSP) and scan the
    // controller, so both are in and out of the hotplug handler all the time.
    let spec = GuestSpec {
        eject: false,
        ..GuestSpec::default()
    };
    let guest = GuestFile::create(&spec).unwrap();
    let mem = vmm::vm::memory::create_guest_memory(128 << 20).unwrap();
    let kvm = KvmVm::new().expect("create VM");
    kvm.register_memory(&mem).unwrap();
    let kernel = vmm::vm::loader::load_kernel(&mem, guest.path()).unwrap();
    let (tx, _rx) = channel();
    let bus = Arc::new(DeviceBus::<KvmBackend>::new(
        Box::new(std::io::sink()),
        Arc::new(NoInterrupt),
        HOTPLUG_MMIO_BASE,
        tx,
    ));
    let gate = Arc::new(Gate {
        target: AtomicUsize::new(usize::MAX),
        ..Gate::default()
    });
    let backend = kvm
        .create_backend(BackendConfig {
            max_vcpus: 2,
            memory: mem.clone(),
            boot: BootEntry {
                entry: kernel.entry,
                zero_page: GuestAddress(ZERO_PAGE),
            },
            handler: Arc::new(GatedBus {
                bus: bus.clone(),
                gate: gate.clone(),
            }),
        })
        .expect("backend");
    backend.set_all_vcpus_boot(true);
    let vcpus = Vcpus::new(2, backend).unwrap();
    bus.hotplug().attach(vcpus.clone());
    let t = StuckVm {
        vcpus: vcpus.clone(),
        gate: gate.clone(),
    };
    vcpus.start(0).unwrap();
    vcpus.start(1).unwrap();
    let wait_progress = |i: usize, from: u64| {
        assert!(
            wait_until(PROGRESS_DEADLINE, || progress(&mem, i) > from),
            "vCPU {i} made no progress past {from}: {}",
            vcpus.report(i)
        );
    };
    wait_progress(0, 0);
    wait_progress(1, 0);

    // vCPU 1's next hotplug access hangs in the device model.
    gate.arm(1);
    assert!(
        wait_until(Duration::from_secs(5), || gate
            .entered
            .load(Ordering::SeqCst)),
        "vCPU 1 never reached the gated handler: {}",
        vcpus.report(1)
    );
    assert_eq!(vcpus.report(1).location, Location::InMmio);
    // vCPU 0 keeps running meanwhile.
    wait_progress(0, progress(&mem, 0));

    let started = Instant::now();
    let err = vcpus
        .pause(Duration::from_millis(200))
        .expect_err("pause must time out while vCPU 1 is stuck in its handler");
    let waited = started.elapsed();
    println!("stuck pause after {waited:?}: {err}");
    let PauseError::Timeout(t_out) = err else {
        panic!("expected a timeout, got {err:?}");
    };
    assert!(
        waited >= Duration::from_millis(200),
        "returned early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(2), "returned late: {waited:?}");
    assert_eq!(t_out.missing.len(), 1, "{t_out}");
    assert_eq!(t_out.missing[0].index, 1, "{t_out}");
    assert_eq!(t_out.missing[0].location, Location::InMmio, "{t_out}");
    assert!(
        t_out.to_string().contains("vCPU 1") && t_out.to_string().contains("MMIO"),
        "diagnosis does not name the vCPU and where it is: {t_out}"
    );
    let r0 = vcpus.report(0);
    assert!(
        r0.paused && r0.location == Location::Parked,
        "vCPU 0 did not acknowledge: {r0}"
    );
    let frozen = progress(&mem, 0);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(progress(&mem, 0), frozen, "vCPU 0 ran during the pause");

    // Unblock: vCPU 1 finishes its access, reaches its checkpoint and parks.
    gate.release();
    vcpus
        .pause(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("pause after release: {e}"));
    for r in vcpus.reports() {
        assert!(r.paused && r.location == Location::Parked, "{r}");
    }
    assert!(vcpus.resume());
    wait_progress(0, frozen);
    wait_progress(1, progress(&mem, 1));
    vcpus.shutdown(Duration::from_secs(5)).expect("shutdown");
    for r in vcpus.reports() {
        assert_eq!(r.life, Life::Absent, "{r}");
    }
    drop(t);
}
