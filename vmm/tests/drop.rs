//! Dropping a VM frees it: its KVM fds, its vCPU threads and its guest memory. Runs VMs on
//! the synthetic guest in this process; the only test of its binary, so no other test's
//! threads or fds move the counts.

mod common;

use common::{guest_slot, kvm_available};
use std::time::{Duration, Instant};
use vmm::config::VmConfig;
use vmm::vm::Vm;
use vmm_testguest::{progress, GuestFile, GuestSpec};

const MAX_VCPUS: usize = 3;
const CYCLES: usize = 5;
const PROGRESS_DEADLINE: Duration = Duration::from_secs(60);

fn entries(dir: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .count()
}

/// VmSize of this process in KiB.
fn vm_size_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize in /proc/self/status")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Usage {
    fds: usize,
    threads: usize,
    vm_size_kib: u64,
}

fn usage() -> Usage {
    Usage {
        fds: entries("/proc/self/fd"),
        threads: entries("/proc/self/task"),
        vm_size_kib: vm_size_kib(),
    }
}

/// Builds a VM, runs both boot vCPUs, hot-adds a third, shuts it down and drops it.
fn cycle(guest: &GuestFile) {
    let config = VmConfig {
        aps_at_entry: true,
        seccomp: Default::default(),
        ..guest.config(2, MAX_VCPUS)
    };
    let vm = Vm::with_serial(&config, Box::new(std::io::sink())).expect("VM");
    vm.start().expect("start");
    vm.resize(MAX_VCPUS).expect("hot-add");
    let deadline = Instant::now() + PROGRESS_DEADLINE;
    for i in 0..MAX_VCPUS {
        while progress(vm.memory(), i) == 0 {
            assert!(
                Instant::now() < deadline,
                "vCPU {i} never ran: {:?}",
                vm.info()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    vm.shutdown();
    drop(vm);
}

#[test]
fn dropping_a_vm_releases_its_fds_threads_and_memory() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let guest = GuestFile::create(&GuestSpec::default()).expect("guest");
    // The first VM sets up what lives as long as the process (the kick signal handler,
    // the allocator's per-thread arenas).
    cycle(&guest);
    let before = usage();
    for _ in 0..CYCLES {
        cycle(&guest);
    }
    let after = usage();
    eprintln!("before {before:?}, after {CYCLES} VMs {after:?}");
    assert_eq!(after.fds, before.fds, "fds leaked: {before:?} -> {after:?}");
    assert_eq!(
        after.threads, before.threads,
        "threads leaked: {before:?} -> {after:?}"
    );
    // Each VM maps its guest RAM (the minimum, 128 MiB); leaking them all would add
    // CYCLES times that. Allow less than one VM's worth for allocator noise.
    let growth = after.vm_size_kib.saturating_sub(before.vm_size_kib);
    assert!(
        growth < vmm::vm::layout::MIN_MEMORY / 1024,
        "address space grew by {growth} KiB over {CYCLES} VMs: {before:?} -> {after:?}"
    );
}
