//! Hot-add and hot-remove latency on real KVM with the synthetic guest of `vmm_testguest`
//! (every vCPU scans the CPU-hotplug controller like Linux's `CSCN`: it clears "inserting"
//! and ejects CPUs marked "removing").
//!
//! * hot-add: `resize(1 -> 4)` until every new vCPU has been acknowledged by the guest's
//!   scan (inserting cleared) and runs guest code (its progress counter moves);
//! * hot-remove: `resize(4 -> 1)` until the guest has ejected the three vCPUs and the VMM
//!   has reaped their threads (slots absent).
//!
//! Usage: `cargo bench -p vmm --bench bench_hotplug [-- ROUNDS]` (default 30).
//! Needs /dev/kvm. A measurement, not a test: it asserts nothing about the times.

use std::time::{Duration, Instant};
use vcpu_sync::Life;
use vmm::config::VmConfig;
use vmm::vm::Vm;
use vmm_testguest::{progress, GuestFile, GuestSpec};

const MAX: usize = 4;
const DEADLINE: Duration = Duration::from_secs(10);

fn fail(msg: &str) -> ! {
    eprintln!("bench_hotplug: {msg}");
    std::process::exit(1)
}

/// Polls `done` (sleeping briefly: the host may have fewer cores than vCPUs) until it holds.
fn wait(what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > DEADLINE {
            return Err(format!("{what} did not happen within {DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}

fn round(vm: &Vm) -> Result<(Duration, Duration), String> {
    let before: Vec<u64> = (0..MAX).map(|i| progress(vm.memory(), i)).collect();
    let t = Instant::now();
    vm.resize(MAX).map_err(|e| format!("resize up: {e}"))?;
    wait("hot-add", || {
        let reports = vm.vcpus().reports();
        (1..MAX).all(|i| {
            reports[i].life == Life::Active
                && !reports[i].inserting
                && progress(vm.memory(), i) > before[i]
        })
    })?;
    let add = t.elapsed();

    let t = Instant::now();
    vm.resize(1).map_err(|e| format!("resize down: {e}"))?;
    wait("hot-remove", || {
        let _ = vm.vcpus().reap();
        vm.vcpus().reports()[1..]
            .iter()
            .all(|r| r.life == Life::Absent)
    })?;
    Ok((add, t.elapsed()))
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    println!(
        "{name:<11} {:>6} {:>10.1} {:>10.1} {:>10.1}",
        v.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| fail("ROUNDS must be a number"))
        })
        .unwrap_or(30);
    if rounds == 0 {
        fail("ROUNDS must be at least 1");
    }
    let guest = GuestFile::create(&GuestSpec {
        serial_every: 0,
        ..GuestSpec::default()
    })
    .unwrap_or_else(|e| fail(&format!("cannot write the synthetic guest: {e}")));
    let config = VmConfig {
        aps_at_entry: true,
        seccomp: Default::default(),
        ..guest.config(1, MAX)
    };
    let vm = Vm::with_serial(&config, Box::new(std::io::sink()))
        .unwrap_or_else(|e| fail(&format!("VM: {e}")));
    vm.start().unwrap_or_else(|e| fail(&format!("start: {e}")));
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        match round(&vm) {
            Ok((a, d)) => {
                adds.push(a);
                removes.push(d);
            }
            Err(e) => {
                vm.shutdown();
                fail(&format!("round {r}: {e}"));
            }
        }
    }
    vm.shutdown();
    println!("hotplug latency, synthetic guest, 1 <-> {MAX} vCPUs, {rounds} rounds (ms)");
    println!(
        "{:<11} {:>6} {:>10} {:>10} {:>10}",
        "operation", "rounds", "median", "p99", "max"
    );
    summary("hot-add", adds);
    summary("hot-remove", removes);
}
