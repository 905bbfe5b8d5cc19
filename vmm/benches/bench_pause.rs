//! Pause-latency benchmark on real KVM with the synthetic guest of `vmm_testguest`.
//!
//! For 1, 2 and 4 vCPUs, all running guest code (the backend starts every vCPU like the
//! BSP, see `VmConfig::aps_at_entry`) and all scanning the CPU-hotplug controller's
//! MMIO window, measures N `pause()` calls: the time until every vCPU has acknowledged.
//! Between pauses every vCPU must have made progress again, so each pause catches running
//! vCPUs (in the guest or inside the hotplug handler). Prints median, p99 and max in
//! microseconds, and how many pauses caught a vCPU inside its device handler.
//!
//! Usage: `cargo bench -p vmm --bench bench_pause [-- N]` (default N = 2000).
//! Needs /dev/kvm. This is a measurement, not a test: it asserts nothing about the times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm::config::VmConfig;
use vmm::vm::Vm;
use vmm_testguest::{progress, GuestFile, GuestSpec};

const PAUSE_DEADLINE: Duration = Duration::from_secs(5);
const WARMUP: usize = 50;

struct Sink(Arc<AtomicU64>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench_pause: {msg}");
    std::process::exit(1)
}

/// Waits until every one of the first `n` vCPUs has counted past `from[i]`.
fn wait_all_progress(vm: &Vm, from: &[u64]) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stuck: Vec<usize> = (0..from.len())
            .filter(|&i| progress(vm.memory(), i) <= from[i])
            .collect();
        if stuck.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("vCPU(s) {stuck:?} made no progress for 5 s"));
        }
        // Sleep rather than spin: the host may have fewer cores than vCPUs + this thread.
        std::thread::sleep(Duration::from_micros(20));
    }
}

struct Figures {
    lat: Vec<Duration>,
    overlapping: u64,
    rekicks: u64,
}

fn measure(guest: &GuestFile, n_vcpus: usize, n: usize) -> Result<Figures, String> {
    let serial = Arc::new(AtomicU64::new(0));
    let config = VmConfig {
        aps_at_entry: true,
        seccomp: Default::default(),
        ..guest.config(n_vcpus, n_vcpus)
    };
    let vm = Vm::with_serial(&config, Box::new(Sink(serial))).map_err(|e| format!("VM: {e}"))?;
    vm.start().map_err(|e| format!("start: {e}"))?;
    let result = (|| {
        let zeros = vec![0; n_vcpus];
        wait_all_progress(&vm, &zeros)?;
        let mut lat = Vec::with_capacity(n);
        let mut before = None;
        for i in 0..WARMUP + n {
            if i == WARMUP {
                before = Some(vm.stats());
            }
            let t = Instant::now();
            vm.vcpus()
                .pause(PAUSE_DEADLINE)
                .map_err(|e| format!("pause {i}: {e}"))?;
            let d = t.elapsed();
            if i >= WARMUP {
                lat.push(d);
            }
            let frozen: Vec<u64> = (0..n_vcpus).map(|v| progress(vm.memory(), v)).collect();
            vm.resume();
            wait_all_progress(&vm, &frozen)?;
        }
        let after = vm.stats();
        let before = before.unwrap_or(after);
        Ok(Figures {
            lat,
            overlapping: after.pauses_overlapping_mmio - before.pauses_overlapping_mmio,
            rekicks: after.rekicks - before.rekicks,
        })
    })();
    vm.shutdown();
    result
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap_or_else(|_| fail("N must be a number")))
        .unwrap_or(2000);
    if n == 0 {
        fail("N must be at least 1");
    }
    let guest = GuestFile::create(&GuestSpec {
        eject: false,
        ..GuestSpec::default()
    })
    .unwrap_or_else(|e| fail(&format!("cannot write the synthetic guest: {e}")));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "pause latency, synthetic hotplug-scanning guest, {n} pauses each, host CPUs: {cores}"
    );
    println!("vCPUs  pauses  median_us    p99_us    max_us  overlapping_mmio  rekicks");
    for n_vcpus in [1usize, 2, 4] {
        match measure(&guest, n_vcpus, n) {
            Ok(mut f) => {
                f.lat.sort();
                let pct = |p: f64| f.lat[((f.lat.len() as f64 * p) as usize).min(f.lat.len() - 1)];
                println!(
                    "{n_vcpus:>5}  {:>6}  {:>9.1} {:>9.1} {:>9.1}  {:>16}  {:>7}",
                    f.lat.len(),
                    us(pct(0.5)),
                    us(pct(0.99)),
                    us(f.lat[f.lat.len() - 1]),
                    f.overlapping,
                    f.rekicks
                );
            }
            Err(e) => println!("{n_vcpus:>5}  failed: {e}"),
        }
    }
}
