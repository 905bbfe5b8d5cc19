//! Boots the real guest (Debian 6.1 bzImage + busybox initramfs from scripts/guest.sh) with
//! 1, 2 and 4 of 4 possible vCPUs and 1 of 8, and checks, from the serial output, that ACPI
//! enumerated every possible CPU, that exactly the boot CPUs are present and online, and
//! that the guest powers off cleanly (exit 0).
//!
//! Real-guest tests: `scripts/test.sh` runs them with `--ignored`, directly where the host's
//! KVM is hardware and inside the nested-KVM lab (`scripts/kvm-lab.sh`) elsewhere.

mod common;

use common::*;

fn boot_and_check(boot: usize, max: usize, want_online: &str) {
    let guest = guest();
    let _slot = guest_slot();
    let cpus = format!("boot={boot},max={max}");
    let mut vm = VmmProcess::boot(&guest, &["--cpus", &cpus]);
    let timeout = boot_timeout();

    let init = vm.wait_for_prefix(timeout, "VMTEST-INIT-OK");
    assert!(
        init.is_some(),
        "no VMTEST-INIT-OK after {:?} (timeout {timeout:?})\n{}",
        vm.elapsed(),
        vm.diagnostics()
    );
    let boot_time = vm.elapsed();

    let possible = vm
        .wait_for_prefix(timeout, "VMTEST possible=")
        .unwrap_or_else(|| panic!("no possible= line\n{}", vm.diagnostics()));
    let want_possible = format!("0-{}", max - 1);
    assert_eq!(
        vmtest_value(&possible, "possible").as_deref(),
        Some(want_possible.as_str()),
        "ACPI must enumerate max possible CPUs\n{}",
        vm.diagnostics()
    );

    let present = vm
        .wait_for_prefix(timeout, "VMTEST present=")
        .unwrap_or_else(|| panic!("no present= line\n{}", vm.diagnostics()));
    assert_eq!(
        vmtest_value(&present, "present").as_deref(),
        Some(want_online),
        "only the boot CPUs are present\n{}",
        vm.diagnostics()
    );

    let online = vm
        .wait_for_prefix(timeout, "VMTEST online=")
        .unwrap_or_else(|| panic!("no online= line\n{}", vm.diagnostics()));
    assert_eq!(
        vmtest_value(&online, "online").as_deref(),
        Some(want_online),
        "{}",
        vm.diagnostics()
    );

    let nproc = vm
        .wait_for_prefix(timeout, "VMTEST nproc=")
        .unwrap_or_else(|| panic!("no nproc= line\n{}", vm.diagnostics()));
    assert_eq!(
        vmtest_value(&nproc, "nproc").as_deref(),
        Some(boot.to_string().as_str()),
        "{}",
        vm.diagnostics()
    );

    assert!(
        vm.wait_for_prefix(timeout, "VMTEST-POWEROFF").is_some(),
        "no VMTEST-POWEROFF\n{}",
        vm.diagnostics()
    );
    let status = vm.wait_exit(timeout);
    let diag = vm.diagnostics();
    let status = status.unwrap_or_else(|| panic!("vmm did not exit after poweroff\n{diag}"));
    assert!(status.success(), "vmm exit status {status}\n{diag}");
    assert!(
        vm.stderr().contains("powered off"),
        "expected a poweroff message\n{diag}"
    );
    let acpi_errors: Vec<String> = vm
        .lines()
        .into_iter()
        .filter(|l| l.contains("ACPI BIOS Error") || l.contains("ACPI Error"))
        .collect();
    assert!(acpi_errors.is_empty(), "ACPI errors: {acpi_errors:#?}");
    eprintln!("boot={boot} max={max}: VMTEST-INIT-OK after {boot_time:?}");
}

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn boot_one_of_four() {
    boot_and_check(1, 4, "0");
}

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn boot_two_of_four() {
    boot_and_check(2, 4, "0-1");
}

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn boot_four_of_four() {
    boot_and_check(4, 4, "0-3");
}

#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn boot_one_of_eight() {
    boot_and_check(1, 8, "0");
}

/// RAM above 4 GiB: past the 32-bit MMIO hole the rest is mapped from 4 GiB on, and Linux
/// must see (nearly) all of it.
#[test]
#[ignore = "real guest: scripts/test.sh runs it with --ignored (hardware KVM, else the nested-KVM lab)"]
fn guest_with_five_gib_sees_its_memory() {
    let guest = guest();
    let _slot = guest_slot();
    let mut vm = VmmProcess::boot(&guest, &["--cpus", "boot=1", "--memory", "size=5G"]);
    let timeout = boot_timeout();
    let line = vm
        .wait_for_prefix(timeout, "VMTEST meminfo-total-kb=")
        .unwrap_or_else(|| panic!("no meminfo line\n{}", vm.diagnostics()));
    let kb: u64 = vmtest_value(&line, "meminfo-total-kb")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad meminfo line {line:?}"));
    // MemTotal is RAM less what the kernel reserves for itself (well under 5%).
    assert!(
        kb > 4_800_000 && kb <= 5 * 1024 * 1024,
        "guest MemTotal {kb} kB for 5 GiB of RAM\n{}",
        vm.diagnostics()
    );
    assert!(
        vm.wait_for_prefix(timeout, "VMTEST-POWEROFF").is_some(),
        "{}",
        vm.diagnostics()
    );
    let status = vm.wait_exit(timeout);
    assert!(status.is_some_and(|s| s.success()), "{}", vm.diagnostics());
    eprintln!("5 GiB guest: MemTotal {kb} kB");
}
