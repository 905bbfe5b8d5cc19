//! How pause and resume scale with the vCPU count: 1, 2, 4, ... 128 and 254 vCPUs, on the
//! synthetic guest of `vmm_testguest` in two kinds:
//!
//! * **halted**: every vCPU halts at once with interrupts off (`GuestSpec::halter`), so it
//!   sits in KVM's halt: what the pause protocol itself costs (one signal and one exit
//!   per vCPU, the acknowledgments, the wait);
//! * **spinning**: every vCPU runs guest code (`GuestSpec::spinner`), more vCPU threads
//!   than host CPUs competing for them, so a pause also waits for the scheduler to run
//!   each kicked thread.
//!
//! Each cycle lets the guest run for a moment, then times `Vm::pause` (until every vCPU
//! has acknowledged) and `Vm::resume` (until every parked vCPU has been woken). Prints
//! median/p99/max per count and kind, and the growth from the smallest count to the
//! largest against the growth of the count, and writes `pause_scaling.svg` and
//! `resume_scaling.svg` (log-log) into `target/bench/scaling` (or `--out DIR`).
//!
//! Usage: `cargo bench -p vmm --bench bench_scaling -- [--cycles N] [--vcpus 1,2,...]
//! [--kinds halted,spinning] [--out DIR]` (default 200 cycles; fewer for the spinning kind above 32 vCPUs, where a
//! cycle waits for hundreds of threads on the host's CPUs). Needs /dev/kvm (any kind: the
//! synthetic guest runs on kvm_pvm). A measurement, not a test.

use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmm::config::VmConfig;
use vmm::vm::Vm;
use vmm_testguest::{progress, GuestFile, GuestSpec};

const PAUSE_DEADLINE: Duration = Duration::from_secs(10);
const WARMUP: usize = 10;
/// Guest running time between a resume and the next pause.
const GAP: Duration = Duration::from_millis(2);

fn fail(msg: &str) -> ! {
    eprintln!("bench_scaling: {msg}");
    std::process::exit(1)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Halted,
    Spinning,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Halted => "halted",
            Kind::Spinning => "spinning",
        }
    }
}

struct Row {
    kind: Kind,
    vcpus: usize,
    pause: Vec<f64>,
    resume: Vec<f64>,
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * q).round() as usize]
}

/// Waits (bounded) until every vCPU has counted at least once: all have entered the guest.
fn wait_started(vm: &Vm, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..n).any(|i| progress(vm.memory(), i) == 0) {
        if Instant::now() > deadline {
            let idle: Vec<usize> = (0..n).filter(|&i| progress(vm.memory(), i) == 0).collect();
            return Err(format!("vCPU(s) {idle:?} never ran guest code"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn measure(guest: &GuestFile, kind: Kind, n: usize, cycles: usize) -> Result<Row, String> {
    let config = VmConfig {
        aps_at_entry: true,
        ..guest.config(n, n)
    };
    let vm = Vm::with_serial(&config, Box::new(std::io::sink())).map_err(|e| format!("VM: {e}"))?;
    vm.start().map_err(|e| format!("start: {e}"))?;
    let result = (|| {
        wait_started(&vm, n)?;
        let mut row = Row {
            kind,
            vcpus: n,
            pause: Vec::with_capacity(cycles),
            resume: Vec::with_capacity(cycles),
        };
        for i in 0..WARMUP + cycles {
            std::thread::sleep(GAP);
            let t = Instant::now();
            vm.pause(PAUSE_DEADLINE)
                .map_err(|e| format!("pause {i}: {e}"))?;
            let p = t.elapsed();
            let t = Instant::now();
            if !vm.resume() {
                return Err(format!("resume {i}: the VM was not paused"));
            }
            let r = t.elapsed();
            if i >= WARMUP {
                row.pause.push(p.as_secs_f64() * 1e3);
                row.resume.push(r.as_secs_f64() * 1e3);
            }
        }
        Ok(row)
    })();
    vm.shutdown();
    result
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Median and p99 against the vCPU count, both kinds, log-log.
fn plot(path: &Path, what: &str, rows: &[Row], pick: fn(&Row) -> &Vec<f64>) -> PlotResult {
    let root = SVGBackend::new(path, (720, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let all: Vec<f64> = rows.iter().flat_map(|r| pick(r).iter().copied()).collect();
    let ymin = all.iter().copied().fold(f64::INFINITY, f64::min).max(1e-4) * 0.8;
    let ymax = all.iter().copied().fold(0.0, f64::max) * 1.2;
    let xmax = rows.iter().map(|r| r.vcpus).max().unwrap_or(1) as f64 * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{what} latency vs vCPUs"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (0.8..xmax).log_scale(),
            (ymin..ymax.max(ymin * 2.0)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("vCPUs")
        .y_desc(format!("{what} (ms)"))
        .draw()?;
    let series = [
        (Kind::Halted, 0.5, "halted, median", BLUE),
        (Kind::Halted, 0.99, "halted, p99", CYAN),
        (Kind::Spinning, 0.5, "spinning, median", RED),
        (Kind::Spinning, 0.99, "spinning, p99", MAGENTA),
    ];
    for (kind, q, name, color) in series {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| (r.vcpus as f64, quantile(pick(r), q)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    let mut cycles = 200usize;
    let mut counts = vec![1usize, 2, 4, 8, 16, 32, 64, 128, 254];
    let mut kinds = vec![Kind::Halted, Kind::Spinning];
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/scaling");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{a} wants a value")))
        };
        let num = |s: &str| -> usize {
            s.parse()
                .unwrap_or_else(|_| fail(&format!("not a count: {s:?}")))
        };
        match a.as_str() {
            "--cycles" => cycles = num(&val()),
            "--vcpus" => counts = val().split(',').map(num).collect(),
            "--out" => out = PathBuf::from(val()),
            "--kinds" => {
                kinds = val()
                    .split(',')
                    .map(|k| match k {
                        "halted" => Kind::Halted,
                        "spinning" => Kind::Spinning,
                        other => fail(&format!("unknown kind {other:?} (halted, spinning)")),
                    })
                    .collect()
            }
            "--bench" => {}
            other => fail(&format!(
                "unknown argument {other:?} (--cycles N --vcpus 1,2,4 --kinds halted,spinning --out DIR)"
            )),
        }
    }
    if cycles == 0 || counts.is_empty() || counts.contains(&0) {
        fail("counts must be positive");
    }
    std::fs::create_dir_all(&out).unwrap_or_else(|e| fail(&format!("{}: {e}", out.display())));
    let host_cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("pause/resume scaling, synthetic guest, host CPUs: {host_cpus}, gap {GAP:?}");
    println!(
        "{:<9} {:>5} {:>7} {:>11} {:>11} {:>11} {:>12} {:>12}",
        "kind",
        "vCPUs",
        "cycles",
        "pause med",
        "pause p99",
        "pause max",
        "resume med",
        "resume p99"
    );
    let mut rows = Vec::new();
    for &kind in &kinds {
        let spec = match kind {
            Kind::Halted => GuestSpec::halter(),
            Kind::Spinning => GuestSpec::spinner(),
        };
        let guest = GuestFile::create(&spec)
            .unwrap_or_else(|e| fail(&format!("cannot write the guest: {e}")));
        for &n in &counts {
            // Spinning: each cycle waits for every kicked thread to get a host CPU.
            let c = if kind == Kind::Spinning && n > 32 {
                (cycles * 32 / n).max(20)
            } else {
                cycles
            };
            match measure(&guest, kind, n, c) {
                Ok(r) => {
                    println!(
                        "{:<9} {:>5} {:>7} {:>9.3}ms {:>9.3}ms {:>9.3}ms {:>10.3}ms {:>10.3}ms",
                        kind.name(),
                        n,
                        c,
                        quantile(&r.pause, 0.5),
                        quantile(&r.pause, 0.99),
                        quantile(&r.pause, 1.0),
                        quantile(&r.resume, 0.5),
                        quantile(&r.resume, 0.99),
                    );
                    rows.push(r);
                }
                Err(e) => fail(&format!("{} {n} vCPUs: {e}", kind.name())),
            }
        }
    }
    for &kind in &kinds {
        let k: Vec<&Row> = rows.iter().filter(|r| r.kind == kind).collect();
        if let (Some(a), Some(b)) = (k.first(), k.last()) {
            if b.vcpus > a.vcpus {
                println!(
                    "{}: {}x the vCPUs, pause median {:.1}x, resume median {:.1}x",
                    kind.name(),
                    b.vcpus / a.vcpus,
                    quantile(&b.pause, 0.5) / quantile(&a.pause, 0.5),
                    quantile(&b.resume, 0.5) / quantile(&a.resume, 0.5),
                );
            }
        }
    }
    for (file, what, pick) in [
        (
            "pause_scaling.svg",
            "pause",
            (|r: &Row| &r.pause) as fn(&Row) -> &Vec<f64>,
        ),
        ("resume_scaling.svg", "resume", |r: &Row| &r.resume),
    ] {
        let path = out.join(file);
        plot(&path, what, &rows, pick)
            .unwrap_or_else(|e| fail(&format!("plot {}: {e}", path.display())));
        println!("plot: {}", path.display());
    }
}
