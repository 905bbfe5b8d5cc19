//! CPU hot-add and hot-remove end to end with the real Debian guest: `resize` over the
//! control API → GED interrupt → the guest's `CSCN` scan → Linux adds (and the guest's init,
//! in watch mode, onlines) or offlines and ejects the CPU → the VMM reaps the ejected thread.
//! What the guest reports (`VMTEST online=.. present=..` lines) and what `info` reports are
//! both checked, and so are the VMM's threads (none leak).
//!
//! Real-guest tests: `scripts/test.sh` runs them with `--ignored`, directly where the host's
//! KVM is hardware and inside the nested-KVM lab (`scripts/kvm-lab.sh`) elsewhere.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// How long the guest may take to bring a hot-added CPU online or give one back.
const SETTLE: Duration = Duration::from_secs(60);

/// A list of slot indices from an answer, in ascending order.
fn slots(v: &serde_json::Value) -> Vec<u64> {
    let mut s: Vec<u64> = v
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
        .unwrap_or_default();
    s.sort_unstable();
    s
}

fn thread_count(g: &GuestVm) -> usize {
    vcpu_threads(g.pid())
}

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn hot_add_one_to_four() {
    let _slot = guest_slot();
    let mut g = GuestVm::boot_watch("add-1-4", 1, 4);
    let threads = thread_count(&g);
    g.resize_ok(4);
    g.expect_cpus("0-3", "0-3", SETTLE);
    let info = g.info();
    assert_eq!(info["active_vcpus"], 4, "{info}");
    assert_eq!(info["pending_insertions"], json!([]), "{info}");
    assert_eq!(
        thread_count(&g),
        threads + 3,
        "one thread per hot-added vCPU"
    );
    for i in 1..4 {
        assert!(
            g.vm.lines()
                .iter()
                .any(|l| l == &format!("VMTEST onlined=cpu{i}")),
            "the guest's init did not online cpu{i}\n{}",
            g.vm.diagnostics()
        );
    }
    g.finish();
}

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn hot_add_two_three_four() {
    let _slot = guest_slot();
    let mut g = GuestVm::boot_watch("add-2-3-4", 2, 4);
    g.resize_ok(3);
    g.expect_cpus("0-2", "0-2", SETTLE);
    g.resize_ok(4);
    g.expect_cpus("0-3", "0-3", SETTLE);
    g.finish();
}

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn hot_add_while_paused_comes_up_after_resume() {
    let _slot = guest_slot();
    let mut g = GuestVm::boot_watch("add-paused", 1, 4);
    g.ok("pause");
    let r = g.resize_ok(2);
    assert_eq!(r["added"], json!([1]), "{r}");
    // Paused: the guest cannot scan, so nothing changes and the new vCPU stays parked.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        g.vm.wait_for_line(Duration::from_millis(10), |l| l.contains("online=0-1"))
            .is_none(),
        "a CPU came online while the VM was paused\n{}",
        g.vm.diagnostics()
    );
    let info = g.info();
    assert_eq!(info["paused"], true, "{info}");
    assert_eq!(info["pending_insertions"], json!([1]), "{info}");
    assert_eq!(info["vcpus"][1]["paused"], true, "{info}");
    g.ok("resume");
    g.expect_cpus("0-1", "0-1", SETTLE);
    g.finish();
}

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn hot_remove_four_to_one() {
    let _slot = guest_slot();
    let mut g = GuestVm::boot_watch("remove-4-1", 4, 4);
    let threads = thread_count(&g);
    let r = g.resize_ok(1);
    assert_eq!(slots(&r["removing"]), [1, 2, 3], "{r}");
    g.expect_cpus("0", "0", SETTLE);
    g.expect_reaped(&[1, 2, 3], SETTLE);
    assert_eq!(
        thread_count(&g),
        threads - 3,
        "the ejected vCPUs' threads were not joined"
    );
    let stats = g.info()["stats"].clone();
    assert_eq!(stats["ejects"], 3, "{stats}");
    g.finish();
}

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn remove_then_readd_the_same_cpu() {
    let _slot = guest_slot();
    let mut g = GuestVm::boot_watch("readd", 2, 4);
    let threads = thread_count(&g);
    g.resize_ok(1);
    g.expect_cpus("0", "0", SETTLE);
    g.expect_reaped(&[1], SETTLE);
    let r = g.resize_ok(2);
    assert_eq!(r["added"], json!([1]), "the same slot comes back: {r}");
    g.expect_cpus("0-1", "0-1", SETTLE);
    // Online means Linux brought it up through INIT/SIPI and it ran its boot code; it also
    // keeps running: a second online round-trip through the guest's sysfs works.
    assert_eq!(thread_count(&g), threads);
    g.finish();
}

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn resize_down_while_paused() {
    let _slot = guest_slot();
    let mut g = GuestVm::boot_watch("remove-paused", 3, 4);
    g.ok("pause");
    let r = g.resize_ok(1);
    assert_eq!(slots(&r["removing"]), [1, 2], "{r}");
    std::thread::sleep(Duration::from_secs(1));
    let info = g.info();
    assert_eq!(info["paused"], true, "{info}");
    assert_eq!(
        info["active_vcpus"], 3,
        "nothing is ejected while paused: {info}"
    );
    g.ok("resume");
    g.expect_cpus("0", "0", SETTLE);
    g.expect_reaped(&[1, 2], SETTLE);
    g.finish();
}

/// The early-resize crash: a resize while the guest is still booting (its ACPI interpreter
/// and interrupt routing not up yet) must never crash it. Before the fix the GED's edge
/// reached the BSP through the unprogrammed 8259 PIC as exception vector 5 (`bounds:`).
/// Now the PICs are masked and the notification is held until the guest has enabled the
/// GED's interrupt; then the guest scans and brings the CPUs up.
#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn resize_during_early_boot_never_crashes_the_guest() {
    let _slot = guest_slot();
    let mut g = GuestVm::spawn_watch("early", 1, 4);
    // At once, then twice more while the kernel boots (each lands in another phase of it).
    let mut held = Vec::new();
    for n in 2..=4 {
        let r = g.resize_ok(n);
        assert_eq!(r["added"], json!([n - 1]), "{r}");
        held.push(g.info()["ged_notification_held"].clone());
        std::thread::sleep(Duration::from_millis(700));
    }
    println!("early resizes: notification held after each: {held:?}");
    g.expect_cpus("0-3", "0-3", boot_timeout());
    let info = g.info();
    assert_eq!(info["ged_notification_held"], false, "{info}");
    assert_eq!(info["pending_insertions"], json!([]), "{info}");
    g.finish();
}
