//! Item 3 of issue 11: a guest looping on eject writes for a CPU that is not being removed
//! once produced a warning line per write (1.06 M lines in 10 s). With a counting logger
//! installed (its own test binary: the logger is process-wide), a million such writes
//! through the device bus must log only the first few and a summary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use vcpu_sync::sim::{KickMode, SimBackend};
use vcpu_sync::{REG_SELECT, REG_STATUS, STATUS_EJECT};
use vmm::vm::bus::DeviceBus;
use vmm::vm::devices::NoInterrupt;

struct Counting {
    warnings: AtomicU64,
    lines: Mutex<Vec<String>>,
}

impl log::Log for Counting {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if r.level() <= log::Level::Warn {
            self.warnings.fetch_add(1, Ordering::SeqCst);
            let mut l = self.lines.lock().unwrap();
            if l.len() < 100 {
                l.push(r.args().to_string());
            }
        }
    }
    fn flush(&self) {}
}

#[test]
fn eject_flood_is_rate_limited() {
    let logger: &'static Counting = Box::leak(Box::new(Counting {
        warnings: AtomicU64::new(0),
        lines: Mutex::new(Vec::new()),
    }));
    log::set_logger(logger).unwrap();
    log::set_max_level(log::LevelFilter::Warn);

    const BASE: u64 = 0xfe00_0000;
    let (tx, _rx) = channel();
    let bus =
        DeviceBus::<SimBackend>::new(Box::new(std::io::sink()), Arc::new(NoInterrupt), BASE, tx);
    let (vcpus, sim) = SimBackend::create(2, KickMode::ImmediateExit, false);
    bus.hotplug().attach(vcpus);
    bus.mmio_write(BASE + REG_SELECT, &1u32.to_le_bytes());
    const WRITES: u64 = 1_000_000;
    for _ in 0..WRITES {
        bus.mmio_write(BASE + REG_STATUS, &[STATUS_EJECT]);
    }
    sim.detach();
    let n = logger.warnings.load(Ordering::SeqCst);
    let lines = logger.lines.lock().unwrap().clone();
    // FIRST_N in full, plus summaries (at most one per 10 s: the loop takes well under a
    // minute even unoptimised).
    assert!(
        (vmm::vm::ratelimit::FIRST_N..=vmm::vm::ratelimit::FIRST_N + 7).contains(&n),
        "{n} warnings: {lines:#?}"
    );
    assert!(lines[0].contains("eject vCPU 1"), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("suppressed")),
        "no summary line: {lines:#?}"
    );
}
