//! Hot-add and hot-remove latency with the real Debian guest (watch mode: its init onlines
//! hot-added CPUs and reports every change):
//!
//! * hot-add: from the `resize 1 -> 4` request to the guest reporting CPUs 0-3 online;
//! * hot-remove: from the `resize 4 -> 1` request to the VMM having reaped the three
//!   ejected vCPU threads (slots absent in `info`), and, for reference, to the guest
//!   reporting only CPU 0.
//!
//! Usage: `cargo bench -p vmm --bench bench_guest_hotplug [-- ROUNDS]` (default 20), where
//! the host's KVM runs Linux; elsewhere through the nested-KVM lab:
//! `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/kvm-lab.sh --" cargo bench ...`.
//! A measurement, not a test: it prints figures and asserts nothing about them.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{cpu_list, vmtest_value, GuestVm};
use std::time::{Duration, Instant};

const MAX: usize = 4;
const DEADLINE: Duration = Duration::from_secs(120);

fn summary(name: &str, v: &mut [Duration]) {
    v.sort();
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<34} n={:<3} median {:>9.1} ms  p99 {:>9.1} ms  min {:>9.1} ms  max {:>9.1} ms",
        v.len(),
        pick(0.5).as_secs_f64() * 1e3,
        pick(0.99).as_secs_f64() * 1e3,
        v[0].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
}

/// Waits for the guest to report exactly CPUs 0..n online (a line after `from`); returns
/// the index of that line.
fn wait_online(g: &GuestVm, from: usize, n: usize) -> usize {
    let want: Vec<usize> = (0..n).collect();
    match g.vm.wait_for_line_from(from, DEADLINE, |l| {
        vmtest_value(l, "present").is_some()
            && vmtest_value(l, "online").map(|v| cpu_list(&v)) == Some(want.clone())
    }) {
        Some((i, _)) => i,
        None => {
            eprintln!(
                "bench_guest_hotplug: the guest never reported {n} CPUs online\n{}",
                g.vm.diagnostics()
            );
            std::process::exit(1)
        }
    }
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut g = GuestVm::boot_watch("bench", 1, MAX);
    let mut cursor = g.vm.lines().len();
    let (mut add, mut reaped, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        g.resize_ok(MAX);
        cursor = wait_online(&g, cursor, MAX) + 1;
        add.push(t.elapsed());

        let t = Instant::now();
        g.resize_ok(1);
        let mut guest_done = None;
        loop {
            let info = g.info();
            if guest_done.is_none()
                && g.vm
                    .wait_for_line_from(cursor, Duration::ZERO, |l| {
                        vmtest_value(l, "present").is_some()
                            && vmtest_value(l, "online").as_deref() == Some("0")
                    })
                    .is_some()
            {
                guest_done = Some(t.elapsed());
            }
            if (1..MAX).all(|i| info["vcpus"][i]["state"] == "absent") {
                reaped.push(t.elapsed());
                break;
            }
            if t.elapsed() > DEADLINE {
                eprintln!("bench_guest_hotplug: vCPUs not reaped: {info}");
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        cursor = wait_online(&g, cursor, 1) + 1;
        gone.push(guest_done.unwrap_or_else(|| t.elapsed()));
    }
    println!("real guest, {rounds} rounds, max {MAX} vCPUs:");
    summary("hot-add 1->4 to guest online", &mut add);
    summary("hot-remove 4->1 to slots reaped", &mut reaped);
    summary("hot-remove 4->1 to guest reports", &mut gone);
    g.finish();
}
