//! The KVM backend on real KVM, with hand-assembled guests. Fail without /dev/kvm unless
//! VMM_ALLOW_NO_KVM=1.

mod common;

use common::ZERO_PAGE;
use common::*;
use kvm_backend::layout::BOOT_STACK;
use kvm_backend::{BackendConfig, BootEntry, Error, Fault, GuestStop, KvmVm};
use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
use std::time::{Duration, Instant};
use vcpu_sync::sim::{pause_with, Rekick};
use vcpu_sync::{Backend, Life, Location, Vcpus};
use vm_memory::GuestAddress;

const TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn port_writes_reach_the_handler_on_a_named_thread() {
    if !kvm_available() {
        return;
    }
    let t = TestVm::new(&guest_port_writes(), 1);
    t.vcpus.start(0).expect("start BSP");
    assert!(
        wait_until(TIMEOUT, || t.rec.pio_writes.lock().unwrap().len() >= 3),
        "guest port writes not seen: {:?}",
        t.rec.pio_writes.lock().unwrap()
    );
    let writes = t.rec.pio_writes.lock().unwrap().clone();
    assert_eq!(
        writes,
        vec![
            (0, TEST_PORT, vec![b'A']),
            (0, TEST_PORT, vec![b'B']),
            (0, TEST_PORT, vec![b'C']),
        ]
    );
    assert_eq!(*t.rec.threads.lock().unwrap(), vec!["vcpu0".to_string()]);
    t.vcpus.shutdown(TIMEOUT).expect("shutdown");
    assert_eq!(*t.rec.exited.lock().unwrap(), vec![0]);
    assert!(t.rec.stopped.lock().unwrap().is_empty());
}

#[test]
fn mmio_accesses_reach_the_handler() {
    if !kvm_available() {
        return;
    }
    let t = TestVm::new(&guest_mmio(), 1);
    t.vcpus.start(0).expect("start BSP");
    assert!(
        wait_until(TIMEOUT, || !t.rec.pio_writes.lock().unwrap().is_empty()),
        "guest never got past its MMIO accesses"
    );
    assert_eq!(
        *t.rec.mmio_writes.lock().unwrap(),
        vec![(0, MMIO_ADDR, 0x1234_5678u32.to_le_bytes().to_vec())]
    );
    assert_eq!(
        *t.rec.mmio_reads.lock().unwrap(),
        vec![(0, MMIO_ADDR + 8, 1)]
    );
    // The value the handler returned made it back into the guest's register.
    assert_eq!(
        *t.rec.pio_writes.lock().unwrap(),
        vec![(0, TEST_PORT, vec![READ_VALUE])]
    );
    t.vcpus.shutdown(TIMEOUT).expect("shutdown");
}

#[test]
fn pause_stops_a_spinning_guest_and_resume_restarts_it() {
    if !kvm_available() {
        return;
    }
    let t = TestVm::counting();

    let started = Instant::now();
    t.vcpus.pause(TIMEOUT).expect("pause of a spinning guest");
    assert!(started.elapsed() < Duration::from_secs(1), "pause was slow");
    let r = t.vcpus.report(0);
    assert!(r.paused, "not paused: {r}");
    assert_eq!(r.location, Location::Parked);
    assert!(r.kicks >= 1);

    let frozen = t.counter();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(t.counter(), frozen, "guest ran while paused");

    assert!(t.vcpus.resume());
    t.wait_counter_above(frozen);
    assert!(!t.vcpus.report(0).paused);
    t.vcpus.shutdown(TIMEOUT).expect("shutdown");
}

#[test]
fn pause_resume_200_times_with_an_ap_waiting_for_sipi() {
    if !kvm_available() {
        return;
    }
    let t = TestVm::new(&guest_counter(), 2);
    t.vcpus.start(0).expect("start BSP");
    t.vcpus.start(1).expect("start AP");
    t.wait_counter_above(0);
    // The AP sits in KVM_RUN, blocked in the in-kernel LAPIC waiting for INIT/SIPI.
    assert!(
        wait_until(TIMEOUT, || t.vcpus.report(1).location == Location::InGuest),
        "AP not in KVM_RUN: {}",
        t.vcpus.report(1)
    );

    let started = Instant::now();
    let mut last = t.counter();
    for i in 0..200 {
        t.vcpus
            .pause(TIMEOUT)
            .unwrap_or_else(|e| panic!("pause {i}: {e}"));
        for r in t.vcpus.reports() {
            assert!(r.paused && r.location == Location::Parked, "pause {i}: {r}");
        }
        let frozen = t.counter();
        assert!(frozen >= last);
        assert!(t.vcpus.resume(), "resume {i}");
        last = frozen;
    }
    // Timing is reported, not asserted: shared CI runners are noisy. A lost kick shows up
    // as a pause error (2 s deadline), not as slowness.
    eprintln!("200 pause/resume cycles took {:?}", started.elapsed());
    assert_eq!(t.vcpus.stats().pauses, 200);
    t.wait_counter_above(last);
    assert!(t.rec.stopped.lock().unwrap().is_empty());
    t.vcpus.shutdown(TIMEOUT).expect("shutdown");
    let mut exited = t.rec.exited.lock().unwrap().clone();
    exited.sort();
    assert_eq!(exited, vec![0, 1]);
}

#[test]
fn hot_remove_then_hot_add_the_same_index_then_shutdown() {
    if !kvm_available() {
        return;
    }
    let t = TestVm::new(&guest_counter(), 3);
    t.vcpus.start(0).expect("start BSP");
    t.vcpus.start(1).expect("start AP 1");
    t.vcpus.hot_add(2).expect("hot-add AP 2");
    t.wait_counter_above(0);

    t.vcpus.hot_remove(1, TIMEOUT).expect("hot-remove AP");
    assert_eq!(t.vcpus.report(1).life, Life::Absent);
    assert_eq!(*t.rec.exited.lock().unwrap(), vec![1]);

    // KVM cannot destroy a vCPU: re-adding index 1 must reuse the old one.
    t.vcpus.hot_add(1).expect("hot-add the removed index again");
    assert_eq!(t.vcpus.report(1).life, Life::Active);
    t.vcpus.pause(TIMEOUT).expect("pause after re-add");
    assert!(t.vcpus.resume());

    // A spinning BSP leaves promptly too.
    t.vcpus
        .hot_remove(0, TIMEOUT)
        .expect("hot-remove spinning BSP");
    assert_eq!(t.vcpus.report(0).life, Life::Absent);

    t.vcpus.shutdown(TIMEOUT).expect("shutdown");
    assert!(t.vcpus.reports().iter().all(|r| r.life == Life::Absent));
    let mut exited = t.rec.exited.lock().unwrap().clone();
    exited.sort();
    assert_eq!(exited, vec![0, 1, 1, 2]);
    assert!(t.rec.stopped.lock().unwrap().is_empty());
}

#[test]
fn triple_fault_is_reported_and_the_vcpu_exits() {
    if !kvm_available() {
        return;
    }
    let t = TestVm::new(&guest_triple_fault(), 1);
    t.vcpus.start(0).expect("start BSP");
    assert!(
        wait_until(TIMEOUT, || !t.rec.exited.lock().unwrap().is_empty()),
        "vCPU did not exit after a triple fault"
    );
    assert_eq!(
        *t.rec.stopped.lock().unwrap(),
        vec![(0, GuestStop::TripleFault)]
    );
    assert!(wait_until(TIMEOUT, || t.vcpus.report(0).life == Life::Exited));
    assert_eq!(t.vcpus.reap().unwrap(), vec![0]);
    assert_eq!(t.vcpus.report(0).life, Life::Absent);
}

#[test]
fn bsp_boots_in_long_mode_and_aps_wait_for_sipi() {
    if !kvm_available() {
        return;
    }
    let t = TestVm::new(&SPIN, 4);
    let backend = t.vcpus.backend();

    let bsp = backend.prepare_vcpu(0).expect("BSP");
    assert_eq!(
        bsp.get_mp_state().expect("mp state").mp_state,
        KVM_MP_STATE_RUNNABLE
    );
    let regs = bsp.get_regs().expect("regs");
    assert_eq!(regs.rip, CODE);
    assert_eq!(regs.rsi, ZERO_PAGE);
    assert_eq!(
        (regs.rsp, regs.rbp, regs.rflags),
        (BOOT_STACK, BOOT_STACK, 2)
    );
    let sregs = bsp.get_sregs().expect("sregs");
    assert_ne!(sregs.efer & (1 << 10), 0, "EFER.LMA");
    assert_eq!(sregs.cs.l, 1);
    assert_eq!(sregs.cs.selector, 8);

    let ap = backend.prepare_vcpu(3).expect("AP");
    assert_eq!(
        ap.get_mp_state().expect("mp state").mp_state,
        KVM_MP_STATE_UNINITIALIZED
    );
    let ap_regs = ap.get_regs().expect("regs");
    assert_eq!(ap_regs.rip, 0xfff0, "AP must be left in reset state");

    let cpuid = ap.get_cpuid2(KVM_MAX_CPUID_ENTRIES).expect("cpuid");
    let leaf = |f: u32, i: u32| {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap_or_else(|| panic!("leaf {f:#x}.{i} missing"))
    };
    let l1 = leaf(1, 0);
    assert_eq!(l1.ebx >> 24, 3, "initial APIC ID");
    assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processor count");
    assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
    assert_ne!(l1.edx & (1 << 28), 0, "HTT bit");
    assert_eq!(leaf(0xb, 0).edx, 3, "x2APIC ID");
    assert_eq!(leaf(0xb, 1).ebx & 0xffff, 4, "cores in the package");

    let lapic = ap.get_lapic().expect("lapic");
    let reg = |off: usize| {
        u32::from_le_bytes([
            lapic.regs[off] as u8,
            lapic.regs[off + 1] as u8,
            lapic.regs[off + 2] as u8,
            lapic.regs[off + 3] as u8,
        ])
    };
    assert_eq!((reg(0x350) >> 8) & 7, 7, "LINT0 ExtINT");
    assert_eq!((reg(0x360) >> 8) & 7, 4, "LINT1 NMI");
}

#[test]
fn kicks_of_absent_vcpus_are_harmless_and_bad_configs_are_rejected() {
    if !kvm_available() {
        return;
    }
    let t = TestVm::new(&SPIN, 2);
    t.vcpus.backend().kick(1);
    t.vcpus.backend().kick(99);
    assert!(matches!(
        t.vcpus.backend().prepare_vcpu(2),
        Err(Error::IndexOutOfRange { index: 2, max: 2 })
    ));

    let vm = KvmVm::new().expect("VM");
    assert!(vm.max_vcpus() >= 1);
    let cfg = BackendConfig {
        max_vcpus: 0,
        memory: t.mem.clone(),
        boot: BootEntry {
            entry: GuestAddress(CODE),
            zero_page: GuestAddress(ZERO_PAGE),
        },
        handler: t.rec.clone(),
    };
    assert!(matches!(
        vm.create_backend(cfg.clone()),
        Err(Error::InvalidConfig(_))
    ));
    let huge = BackendConfig {
        max_vcpus: vm.max_vcpus() + 1,
        ..cfg
    };
    assert!(matches!(
        vm.create_backend(huge.clone()),
        Err(Error::InvalidConfig(_))
    ));
    // A pause with no vCPU running is acknowledged at once.
    let idle_cfg = BackendConfig {
        max_vcpus: 2,
        ..huge
    };
    let idle = Vcpus::new(2, vm.create_backend(idle_cfg).expect("backend")).expect("vcpus");
    idle.pause(TIMEOUT).expect("empty pause");
    assert!(idle.resume());
}

/// Kicks must stick even when they land while the vCPU is in userspace, between its
/// checkpoint and KVM_RUN (likely right after a resume, when the thread is just waking up):
/// `immediate_exit` makes that KVM_RUN return at once. With re-kicking disabled, one lost
/// kick to a guest that never exits on its own would hang the pause.
fn single_kicks_stick(code: &[u8]) {
    if !kvm_available() {
        return;
    }
    let t = TestVm::new(code, 2);
    t.vcpus.start(0).expect("start BSP");
    t.vcpus.start(1).expect("start AP");
    let progress = || t.counter() + t.rec.pio_count();
    assert!(wait_until(TIMEOUT, || progress() > 100));
    let started = Instant::now();
    for i in 0..2000u64 {
        // Sweep the gap between resume and the next pause so that some kicks land while a
        // woken vCPU is between its checkpoint and KVM_RUN.
        let gap = Instant::now() + Duration::from_nanos((i * 7919) % 60_000);
        while Instant::now() < gap {
            std::hint::spin_loop();
        }
        pause_with(&t.vcpus, TIMEOUT, Rekick::Disabled)
            .unwrap_or_else(|e| panic!("pause {i} without re-kick: {e}"));
        let frozen = progress();
        assert_eq!(progress(), frozen, "guest ran while paused");
        assert!(t.vcpus.resume());
    }
    eprintln!("pauses without re-kick took {:?}", started.elapsed());
    assert_eq!(t.vcpus.stats().rekicks, 0);
    let before = progress();
    assert!(wait_until(TIMEOUT, || progress() > before));
    t.vcpus.shutdown(TIMEOUT).expect("shutdown");
}

/// Field `name` (e.g. `SigQ:`) of a `/proc/.../status` file, trimmed.
fn status_field(path: &str, name: &str) -> String {
    let status =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {path}: {status}"));
    line[name.len()..].trim().to_string()
}

/// Bit masks of one thread's blocked and pending signal sets.
fn thread_signals(tid: i32) -> (u64, u64) {
    let path = format!("/proc/self/task/{tid}/status");
    let mask = |name| u64::from_str_radix(&status_field(&path, name), 16).expect("hex mask");
    (mask("SigBlk:"), mask("SigPnd:"))
}

/// Outside KVM_RUN a vCPU thread blocks the kick signal (so a kick never runs a handler on
/// it or cuts short a device model's system call), and it takes every kick that
/// interrupted KVM_RUN, leaving none pending to cut short its next KVM_RUN.
#[test]
fn kicks_are_blocked_outside_kvm_run_and_none_stays_pending() {
    if !kvm_available() {
        return;
    }
    let t = TestVm::counting();
    let tid = t.rec.tids.lock().unwrap()[0].1;
    let kick_bit = 1u64 << (libc::SIGRTMIN() - 1);
    for i in 0..50 {
        // Without re-kicks, exactly one kick per pause, landing in KVM_RUN (the guest is
        // running: its counter moved since the last resume; a vCPU still parked would
        // join this pause without leaving its checkpoint, its kick pending until its next
        // KVM_RUN).
        pause_with(&t.vcpus, TIMEOUT, Rekick::Disabled)
            .unwrap_or_else(|e| panic!("pause {i}: {e}"));
        let (blocked, pending) = thread_signals(tid);
        assert_ne!(
            blocked & kick_bit,
            0,
            "pause {i}: kick signal not blocked outside KVM_RUN"
        );
        assert_eq!(
            pending & kick_bit,
            0,
            "pause {i}: a kick stayed pending: {}",
            t.vcpus.report(0)
        );
        assert!(t.vcpus.resume());
        t.wait_counter_above(t.counter());
    }
    t.vcpus.shutdown(TIMEOUT).expect("shutdown");
}

/// Signals queued for this user (`SigQ` of `/proc/self/status`: count/limit).
fn queued_signals() -> u64 {
    let queue = status_field("/proc/self/status", "SigQ:");
    let count = queue.split('/').next().expect("count");
    count.parse().expect("SigQ count")
}

/// A vCPU stuck outside KVM_RUN (in a stalled device handler) while a pause keeps
/// re-kicking it holds at most one kick signal queued. Kicks queued without bound would
/// use up the user's RLIMIT_SIGPENDING (and then kicks to every other vCPU would fail),
/// and would each cost the vCPU a KVM_RUN round once it returns.
#[test]
fn rekicks_of_a_vcpu_stuck_outside_kvm_run_queue_one_signal() {
    if !kvm_available() {
        return;
    }
    let t = TestVm::counting();
    let before = queued_signals();
    t.vcpus.backend().inject_fault(0, Some(Fault::Stall));
    t.vcpus
        .pause(Duration::from_millis(300))
        .expect_err("a stalled vCPU cannot acknowledge");
    let rekicks = t.vcpus.stats().rekicks;
    let queued = queued_signals().saturating_sub(before);
    assert!(rekicks >= 50, "only {rekicks} re-kicks");
    // Other tests' kicks in this process come and go; a pile-up would be ~`rekicks`.
    assert!(
        queued <= 5,
        "{queued} signals queued after {rekicks} re-kicks"
    );
    t.vcpus.backend().inject_fault(0, None);
    assert!(
        t.vcpus.resume(),
        "the failed pause stays in force until withdrawn"
    );
    t.wait_counter_above(t.counter());
    t.vcpus.shutdown(TIMEOUT).expect("shutdown");
}

#[test]
fn single_kicks_never_get_lost_spinning_guest() {
    single_kicks_stick(&guest_counter());
}

#[test]
fn single_kicks_never_get_lost_exit_heavy_guest() {
    single_kicks_stick(&guest_port_loop());
}

#[test]
fn a_panicking_handler_stops_the_vcpu_cleanly() {
    if !kvm_available() {
        return;
    }
    let t = TestVm::new(&guest_panic_port(), 1);
    t.vcpus.start(0).expect("start BSP");
    assert!(
        wait_until(TIMEOUT, || t.vcpus.report(0).life == Life::Exited),
        "vCPU did not exit after its handler panicked"
    );
    let stopped = t.rec.stopped.lock().unwrap().clone();
    assert!(
        matches!(&stopped[..], [(0, GuestStop::Fatal(m))] if m.contains("panicked")),
        "{stopped:?}"
    );
    assert_eq!(*t.rec.exited.lock().unwrap(), vec![0]);
    // join() logs the panic instead of propagating it.
    assert_eq!(t.vcpus.reap().unwrap(), vec![0]);
}
