//! Side by side with QEMU, in one run: our `vmm` against `qemu-system-x86_64 -accel kvm
//! -cpu host`, on the same guests.
//!
//! Metrics, each measured on both sides in alternating blocks (ABAB: ours, QEMU, ours, ...)
//! so that a slow phase of a shared host hits both alike, with the same random gaps. Two
//! groups, chosen with `--metrics control,guest` (default both):
//!
//! * **control**, on the spin image of `vmm_testguest::spin_image` (built by this
//!   workspace; both VMMs boot it, it starts its APs with INIT/SIPI and keeps every vCPU
//!   spinning in guest mode). Runs on any KVM, this project's `kvm_pvm` hosts included:
//!   * **pause** and **resume** as a client of the control socket sees them, for 1, 2 and
//!     4 vCPUs: our REST API (`PUT /api/v1/vm.pause`, `vm.resume`) against QMP (`stop`,
//!     `cont`), both on one persistent connection, and on a new connection per request
//!     (QMP's greeting and capabilities negotiation included: what a one-shot client
//!     pays). While one side is measured the other VM is paused, so only one guest spins;
//!   * **no-op request**: `GET /api/v1/vmm.ping` against QMP's `query-status`, after a gap
//!     drawn like the pause's, so as cold and as long after a resume as a pause: the trip
//!     every request pays, which tells the VMM's own share of a pause from the client's;
//!   * **hot-add, reply**: one more CPU per round (`vm.resize` to n + 1; QMP `device_add`
//!     of the slot `query-hotpluggable-cpus` offers), from the request to the reply. The
//!     image ignores added CPUs, so none is removed between rounds.
//! * **guest**, on the Debian kernel and initramfs of `scripts/guest.sh`, where the KVM
//!   runs Linux (a hardware host, or the nested-KVM lab):
//!   * **boot**: from spawning the VMM to the guest's `VMTEST-INIT-OK` on the serial port,
//!     1 vCPU, 512 MiB (QEMU: the `pc` machine with qboot, its fastest firmware);
//!   * **hot-add to online**: one CPU (`vm.resize` 1 -> 2; `device_add`), from the request
//!     to the reply and to the guest reporting it online (`vmtest.mode=watch`: the guest's
//!     init onlines it on its uevent, printing `VMTEST onlining=cpu1` as its handler
//!     starts, the "guest event" row, and `VMTEST onlined=cpu1` when done); then it is
//!     removed again (`vm.resize` to 1; `device_del`) before the next round.
//!
//! Prints, per metric, median/p90/p99/max for each side and the ratios ours/QEMU, and
//! writes one SVG per metric (latency CDFs, both sides on one chart) plus the pause median
//! against the vCPU count, into `target/bench/vs_qemu` (or `--out DIR`).
//!
//! Usage: `cargo bench -p vmm --bench bench_vs_qemu -- [--metrics control,guest]
//! [--cycles N] [--boots N] [--rounds N] [--vcpus 1,2,4] [--out DIR]
//! [--our-client blocking|library]`; the guest group
//! where the host's KVM runs Linux, elsewhere through the nested-KVM lab (both VMMs then
//! run on L1's kvm_amd):
//! `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/kvm-lab.sh --timeout 3000 --" cargo bench ...`.
//! Without `qemu-system-x86_64` it says so and measures ours alone. A measurement, not a
//! test: it prints figures and asserts nothing about them.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{cpu_list, guest, vmtest_value, Guest, VmmProcess};
use plotters::prelude::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmm::api::Request;
use vmm_testguest::spin_image;

const DEADLINE: Duration = Duration::from_secs(180);
const BLOCK: usize = 10;
const QEMU: &str = "qemu-system-x86_64";
/// Our loader's default command line minus `pci=off` (QEMU's `pc` machine has PCI).
const QEMU_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";

fn fail(msg: &str) -> ! {
    eprintln!("bench_vs_qemu: {msg}");
    std::process::exit(1)
}

struct Opts {
    control: bool,
    guest: bool,
    cycles: usize,
    boots: usize,
    rounds: usize,
    vcpus: Vec<usize>,
    out: PathBuf,
}

/// `--our-client library`: drive our API with `vmm::api::Connection` instead of [`Http`].
static OUR_CLIENT_LIBRARY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn opts() -> Opts {
    let mut o = Opts {
        control: true,
        guest: true,
        cycles: 200,
        boots: 5,
        rounds: 10,
        vcpus: vec![1, 2, 4],
        out: common::workspace_root().join("target/bench/vs_qemu"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{a} wants a value")))
        };
        let num = |s: String| -> usize {
            s.parse()
                .unwrap_or_else(|_| fail(&format!("not a count: {s:?}")))
        };
        match a.as_str() {
            "--metrics" => {
                (o.control, o.guest) = (false, false);
                for m in val().split(',') {
                    match m {
                        "control" => o.control = true,
                        "guest" => o.guest = true,
                        other => fail(&format!("unknown metrics {other:?} (control, guest)")),
                    }
                }
            }
            "--cycles" => o.cycles = num(val()),
            "--boots" => o.boots = num(val()),
            "--rounds" => o.rounds = num(val()),
            "--vcpus" => o.vcpus = val().split(',').map(|s| num(s.to_string())).collect(),
            "--out" => o.out = PathBuf::from(val()),
            "--our-client" => {
                let library = match val().as_str() {
                    "blocking" => false,
                    "library" => true,
                    other => fail(&format!("unknown client {other:?} (blocking, library)")),
                };
                let _ = OUR_CLIENT_LIBRARY.set(library);
            }
            "--bench" => {}
            other => fail(&format!(
                "unknown argument {other:?} (--metrics control,guest --cycles N --boots N \
                 --rounds N --vcpus 1,2,4 --out DIR --our-client blocking|library)"
            )),
        }
    }
    if o.cycles == 0 || o.boots == 0 || o.rounds == 0 || o.vcpus.contains(&0) {
        fail("counts must be positive");
    }
    o
}

// ---- the two sides ----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Ours,
    Qemu,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Qemu => "QEMU",
        }
    }
}

/// Connects to a control socket, retrying until `timeout` (the VMM may not listen yet);
/// reads on it time out after 30 s.
fn connect_socket(what: &str, path: &Path, timeout: Duration) -> Result<UnixStream, String> {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{what} {}: {e}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// A QMP client: one JSON object per line each way; asynchronous events are skipped.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path, timeout: Duration) -> Result<Qmp, String> {
        let stream = connect_socket("QMP", path, timeout)?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("no QMP greeting: {greeting}"));
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QMP connection closed".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}")),
            Err(e) => Err(format!("QMP read: {e}")),
        }
    }

    fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, String> {
        let mut msg = json!({ "execute": cmd });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        writeln!(self.writer, "{msg}").map_err(|e| format!("QMP write: {e}"))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {cmd}: {e}"));
            }
        }
    }
}

/// Our REST API over a blocking socket, the way QMP is driven above: the same kind of
/// client on both sides, so the figures compare the servers. (Our own client library,
/// `vmm::api::Connection`, runs hyper on a tokio runtime and costs 25-40 µs more per
/// request after an idle gap on this host: `--our-client library` measures it.)
struct Http {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Http {
    fn connect(path: &Path, timeout: Duration) -> Result<Http, String> {
        Ok(Http {
            stream: connect_socket("API", path, timeout)?,
            buf: Vec::with_capacity(4096),
        })
    }

    /// One request; the answer's status and JSON body (`null` when empty).
    fn call(&mut self, request: &vmm::api::Request) -> Result<(u16, Value), String> {
        let body = request.body().unwrap_or_default();
        let head = format!(
            "{} {} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            request.method(),
            request.path(),
            body.len()
        );
        self.stream
            .write_all([head.as_bytes(), body.as_bytes()].concat().as_slice())
            .map_err(|e| format!("API write: {e}"))?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let parsed = resp
                .parse(&self.buf)
                .map_err(|e| format!("API answer: {e}"))?;
            if let httparse::Status::Complete(head_len) = parsed {
                let status = resp.code.unwrap_or(0);
                let len = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0usize);
                while self.buf.len() < head_len + len {
                    self.read_more(&mut chunk)?;
                }
                let body = &self.buf[head_len..head_len + len];
                let value = if body.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(body).map_err(|e| format!("API body: {e}"))?
                };
                return Ok((status, value));
            }
            self.read_more(&mut chunk)?;
        }
    }

    fn read_more(&mut self, chunk: &mut [u8]) -> Result<(), String> {
        match self.stream.read(chunk) {
            Ok(0) => Err("API connection closed".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!("API read: {e}")),
        }
    }
}

/// The control connection of a running VM.
enum Control {
    Api(Http),
    /// Our API through our own client library (`--our-client library`).
    Library(vmm::api::Connection),
    Qmp(Qmp),
    /// Dropped, for the new-connection phase (QMP serves one client at a time).
    None,
}

struct Running {
    side: Side,
    proc: VmmProcess,
    socket: PathBuf,
    control: Control,
    /// QEMU: the ids of CPUs added by `hot_add`, to remove.
    added: Vec<String>,
}

fn socket_path(side: Side, what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "bench-vs-qemu-{}-{}-{what}.sock",
        std::process::id(),
        side.name()
    ))
}

/// What a VM of the bench boots.
#[derive(Clone, Copy)]
enum Boot<'a> {
    /// The Debian kernel and initramfs of `scripts/guest.sh`, with `vmtest.mode=...`.
    Debian(&'a Guest, &'a str),
    /// The spin image (no OS: every vCPU spins; serial markers only).
    Spin(&'a Path),
}

fn spawn(side: Side, boot: Boot, n: usize, max: usize, what: &str) -> Running {
    let socket = socket_path(side, what);
    let _ = std::fs::remove_file(&socket);
    let cpus = format!("boot={n},max={max}");
    let sock = socket.display().to_string();
    let qmp = format!("unix:{sock},server=on,wait=off");
    let proc = match (side, boot) {
        (Side::Ours, Boot::Debian(g, mode)) => VmmProcess::boot(
            g,
            &[
                "--cpus",
                &cpus,
                "--memory",
                "size=512M",
                "--cmdline",
                mode,
                "--api-socket",
                &sock,
            ],
        ),
        (Side::Ours, Boot::Spin(image)) => VmmProcess::spawn(&[
            "--kernel",
            &image.display().to_string(),
            "--cpus",
            &cpus,
            "--memory",
            "size=128M",
            "--api-socket",
            &sock,
        ]),
        (Side::Qemu, Boot::Debian(g, mode)) => {
            let smp = format!("{n},maxcpus={max}");
            let append = format!("{QEMU_CMDLINE} {mode}");
            let kernel = g.kernel.display().to_string();
            let initrd = g.initramfs.display().to_string();
            VmmProcess::spawn_program(
                QEMU.as_ref(),
                &[
                    "-accel",
                    "kvm",
                    "-cpu",
                    "host",
                    "-machine",
                    "pc",
                    "-bios",
                    "qboot.rom",
                    "-m",
                    "512M",
                    "-smp",
                    &smp,
                    "-nodefaults",
                    "-no-user-config",
                    "-display",
                    "none",
                    "-no-reboot",
                    "-serial",
                    "stdio",
                    "-kernel",
                    &kernel,
                    "-initrd",
                    &initrd,
                    "-append",
                    &append,
                    "-qmp",
                    &qmp,
                ],
            )
        }
        (Side::Qemu, Boot::Spin(image)) => {
            let mut args = spin_image::qemu_args(image, n, max);
            args.extend(["-no-user-config", "-qmp", &qmp].map(String::from));
            VmmProcess::spawn_program(QEMU.as_ref(), &args)
        }
    };
    Running {
        side,
        proc,
        socket,
        control: Control::None,
        added: Vec::new(),
    }
}

impl Running {
    fn connect(&mut self) -> Result<(), String> {
        // QMP serves one client at a time: close the old connection first.
        self.control = Control::None;
        self.control = match self.side {
            Side::Ours if OUR_CLIENT_LIBRARY.get() == Some(&true) => {
                // A stream that connects is a listening VMM (as in `Http::connect`).
                Http::connect(&self.socket, Duration::from_secs(30))?;
                Control::Library(
                    vmm::api::Connection::connect(&self.socket).map_err(|e| e.to_string())?,
                )
            }
            Side::Ours => Control::Api(Http::connect(&self.socket, Duration::from_secs(30))?),
            Side::Qemu => Control::Qmp(Qmp::connect(&self.socket, Duration::from_secs(30))?),
        };
        Ok(())
    }

    fn disconnect(&mut self) {
        self.control = Control::None;
    }

    /// Runs `f` on the control connection; without a persistent one, on a new connection
    /// made for it (and closed after), so the time measured includes connecting.
    fn with_control(
        &mut self,
        f: impl FnOnce(&mut Control) -> Result<Value, String>,
    ) -> Result<Value, String> {
        let fresh = matches!(self.control, Control::None);
        if fresh {
            self.connect()?;
        }
        let r = f(&mut self.control);
        if fresh {
            self.disconnect();
        }
        r
    }

    /// A request to our control API; an answer other than 2xx is an error.
    fn api(&mut self, request: Request) -> Result<Value, String> {
        self.with_control(|c| {
            let (status, body) = match c {
                Control::Api(a) => a.call(&request)?,
                Control::Library(l) => {
                    let a = l
                        .raw(
                            request.method(),
                            &request.path(),
                            request.body(),
                            Duration::from_secs(30),
                        )
                        .map_err(|e| e.to_string())?;
                    (a.status, a.body.unwrap_or(Value::Null))
                }
                _ => return Err(format!("{}: not our VMM", request.path())),
            };
            if !(200..300).contains(&status) {
                return Err(format!(
                    "{} {} -> {status} {body}",
                    request.method(),
                    request.path()
                ));
            }
            Ok(body)
        })
    }

    /// A QMP command.
    fn qmp(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, String> {
        self.with_control(|c| match c {
            Control::Qmp(q) => q.execute(cmd, args),
            _ => Err(format!("{cmd}: not QEMU")),
        })
    }

    fn pause(&mut self) -> Result<(), String> {
        match self.side {
            Side::Ours => self.api(Request::Pause).map(drop),
            Side::Qemu => self.qmp("stop", None).map(drop),
        }
    }

    fn resume(&mut self) -> Result<(), String> {
        match self.side {
            Side::Ours => self.api(Request::Resume).map(drop),
            Side::Qemu => self.qmp("cont", None).map(drop),
        }
    }

    /// A request that does nothing (`vmm.ping`, QMP's `query-status`): the control trip.
    fn ping(&mut self) -> Result<(), String> {
        match self.side {
            Side::Ours => self.api(Request::Ping).map(drop),
            Side::Qemu => self.qmp("query-status", None).map(drop),
        }
    }

    /// Adds one CPU.
    fn hot_add(&mut self) -> Result<(), String> {
        match self.side {
            Side::Ours => {
                let n = 1 + self.added.len() + 1;
                self.api(Request::Resize { desired_vcpus: n })?;
                self.added.push(format!("slot{}", n - 1));
            }
            Side::Qemu => {
                let slots = self.qmp("query-hotpluggable-cpus", None)?;
                let free = slots
                    .as_array()
                    .and_then(|a| a.iter().find(|s| s.get("qom-path").is_none()))
                    .ok_or_else(|| format!("no free CPU slot: {slots}"))?
                    .clone();
                let id = format!("hp{}", self.added.len() + 1);
                let mut args = free["props"].clone();
                args["driver"] = free["type"].clone();
                args["id"] = json!(id);
                self.qmp("device_add", Some(args))?;
                self.added.push(id);
            }
        }
        Ok(())
    }

    /// Removes the CPU added last.
    fn hot_remove(&mut self) -> Result<(), String> {
        let id = self.added.pop().ok_or("nothing to remove")?;
        match self.side {
            Side::Ours => self.api(Request::Resize {
                desired_vcpus: 1 + self.added.len(),
            })?,
            Side::Qemu => self.qmp("device_del", Some(json!({ "id": id })))?,
        };
        Ok(())
    }

    /// Waits for a serial line from index `from` on; returns its index.
    fn wait_line(&self, from: usize, what: &str, pred: impl FnMut(&str) -> bool) -> usize {
        match self.proc.wait_for_line_from(from, DEADLINE, pred) {
            Some((i, _)) => i,
            None => fail(&format!(
                "{}: no {what} within {DEADLINE:?}\n{}",
                self.side.name(),
                self.proc.diagnostics()
            )),
        }
    }

    /// Waits until the spin image reports every one of its `n` boot CPUs up.
    fn wait_spinning(&self, n: usize) {
        let mut up = std::collections::BTreeSet::new();
        let mut at = 0;
        while up.len() < n {
            at = self.wait_line(at, &format!("{n} spinning CPUs"), |l| {
                spin_image::marker_apic_id(l).is_some()
            });
            up.extend(
                self.proc
                    .lines()
                    .get(at)
                    .and_then(|l| spin_image::marker_apic_id(l)),
            );
            at += 1;
        }
    }

    fn stop(mut self) {
        let _ = match self.side {
            Side::Ours => self.api(Request::VmShutdown),
            Side::Qemu => self.qmp("quit", None),
        };
        if self.proc.wait_exit(Duration::from_secs(20)).is_none() {
            self.proc.kill();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

// ---- figures ----

/// Latencies in milliseconds, per side.
#[derive(Default)]
struct Metric {
    ours: Vec<f64>,
    qemu: Vec<f64>,
}

impl Metric {
    fn push(&mut self, side: Side, d: Duration) {
        let ms = d.as_secs_f64() * 1e3;
        match side {
            Side::Ours => self.ours.push(ms),
            Side::Qemu => self.qemu.push(ms),
        }
    }
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 - 1.0) * q).round() as usize]
}

fn print_header() {
    println!(
        "{:<34} {:>5} {:>10} {:>10} {:>10} {:>10}   {:>12} {:>10}",
        "metric (ms)", "side", "median", "p90", "p99", "max", "ours/QEMU med", "p99"
    );
}

fn print_metric(name: &str, m: &Metric) {
    for (side, v) in [("ours", &m.ours), ("QEMU", &m.qemu)] {
        if v.is_empty() {
            continue;
        }
        let ratio = if side == "QEMU" && !m.ours.is_empty() {
            format!(
                "{:>12.2} {:>10.2}",
                quantile(&m.ours, 0.5) / quantile(v, 0.5),
                quantile(&m.ours, 0.99) / quantile(v, 0.99)
            )
        } else {
            String::new()
        };
        println!(
            "{name:<34} {side:>5} {:>10.3} {:>10.3} {:>10.3} {:>10.3}   {ratio}",
            quantile(v, 0.5),
            quantile(v, 0.9),
            quantile(v, 0.99),
            quantile(v, 1.0),
        );
    }
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// A latency CDF, ours and QEMU on one chart.
fn plot_cdf(path: &Path, title: &str, m: &Metric) -> PlotResult {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = m.ours.iter().chain(&m.qemu).copied().fold(0.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..xmax.max(1e-3), 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("fraction of requests")
        .draw()?;
    for (name, v, color) in [("ours", &m.ours, BLUE), ("QEMU", &m.qemu, RED)] {
        if v.is_empty() {
            continue;
        }
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len() as f64;
        let points = s.iter().enumerate().map(|(i, &x)| (x, (i + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The pause median against the vCPU count, both sides.
fn plot_pause_curve(path: &Path, points: &[(usize, f64, Option<f64>)]) -> PlotResult {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = points.iter().map(|p| p.0).max().unwrap_or(1) as f64 + 0.5;
    let ymax = points
        .iter()
        .flat_map(|p| [Some(p.1), p.2])
        .flatten()
        .fold(0.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "pause median vs vCPUs (persistent connection)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.5..xmax, 0.0..ymax.max(1e-3))?;
    chart
        .configure_mesh()
        .x_desc("vCPUs")
        .y_desc("pause median (ms)")
        .draw()?;
    let ours: Vec<(f64, f64)> = points.iter().map(|p| (p.0 as f64, p.1)).collect();
    let qemu: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.2.map(|q| (p.0 as f64, q)))
        .collect();
    for (name, v, color) in [("ours", ours, BLUE), ("QEMU", qemu, RED)] {
        if v.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(v.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(v.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
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

/// xorshift64*: the same gaps for both sides, no dependency.
struct Gaps(u64);

impl Gaps {
    /// A gap of 1 to 8 ms of guest running time between a resume and the next pause.
    fn next(&mut self) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Duration::from_micros(1000 + r % 7000)
    }
}

// ---- the measurements ----

fn bench_boot(g: &Guest, sides: &[Side], boots: usize) -> Metric {
    let mut m = Metric::default();
    for i in 0..boots {
        for &side in sides {
            let t = Instant::now();
            let boot = Boot::Debian(g, "vmtest.mode=poweroff");
            let vm = spawn(side, boot, 1, 1, &format!("boot{i}"));
            vm.wait_line(0, "VMTEST-INIT-OK", |l| l == "VMTEST-INIT-OK");
            m.push(side, t.elapsed());
            let mut vm = vm;
            if vm.proc.wait_exit(Duration::from_secs(60)).is_none() {
                vm.proc.kill();
            }
            let _ = std::fs::remove_file(&vm.socket);
        }
    }
    m
}

/// Pause and resume of the spin image with `n` vCPUs: (pause, resume) on a persistent
/// connection, then on a new connection per request; last, the trip of a request that does
/// nothing, after a gap of its own before each pause of the persistent phase (as cold as
/// the pause, as long after the resume).
fn bench_pause(image: &Path, sides: &[Side], n: usize, cycles: usize) -> [Metric; 5] {
    let mut vms: Vec<Running> = sides
        .iter()
        .map(|&s| spawn(s, Boot::Spin(image), n, n, &format!("spin{n}")))
        .collect();
    for vm in &mut vms {
        vm.wait_spinning(n);
        vm.connect()
            .unwrap_or_else(|e| fail(&format!("{}: {e}", vm.side.name())));
        // Only the side being measured runs.
        vm.pause()
            .unwrap_or_else(|e| fail(&format!("{}: {e}", vm.side.name())));
    }
    let mut out: [Metric; 5] = Default::default();
    for (phase, persistent) in [(0, true), (2, false)] {
        for vm in &mut vms {
            if persistent {
                vm.connect()
                    .unwrap_or_else(|e| fail(&format!("{}: {e}", vm.side.name())));
            } else {
                vm.disconnect();
            }
        }
        let mut gaps: Vec<Gaps> = vms.iter().map(|_| Gaps(0x9e37_79b9_7f4a_7c15)).collect();
        let blocks = cycles.div_ceil(BLOCK);
        for _ in 0..blocks {
            for (vm, gap) in vms.iter_mut().zip(gaps.iter_mut()) {
                vm.resume()
                    .unwrap_or_else(|e| fail(&format!("{}: {e}", vm.side.name())));
                for _ in 0..BLOCK {
                    if persistent {
                        std::thread::sleep(gap.next());
                        let t = Instant::now();
                        vm.ping()
                            .unwrap_or_else(|e| fail(&format!("{}: {e}", vm.side.name())));
                        out[4].push(vm.side, t.elapsed());
                    }
                    std::thread::sleep(gap.next());
                    let t = Instant::now();
                    vm.pause()
                        .unwrap_or_else(|e| fail(&format!("{}: {e}", vm.side.name())));
                    out[phase].push(vm.side, t.elapsed());
                    let t = Instant::now();
                    vm.resume()
                        .unwrap_or_else(|e| fail(&format!("{}: {e}", vm.side.name())));
                    out[phase + 1].push(vm.side, t.elapsed());
                }
                vm.pause()
                    .unwrap_or_else(|e| fail(&format!("{}: {e}", vm.side.name())));
            }
        }
    }
    for mut vm in vms {
        let _ = vm.resume();
        vm.stop();
    }
    out
}

/// Hot-add of one CPU per round to the spin image (1 boot vCPU, at most 1 + `rounds`),
/// from the request to the reply.
fn bench_hot_add_reply(image: &Path, sides: &[Side], rounds: usize) -> Metric {
    let mut vms: Vec<Running> = sides
        .iter()
        .map(|&s| spawn(s, Boot::Spin(image), 1, 1 + rounds, "hotadd-reply"))
        .collect();
    for vm in &mut vms {
        vm.wait_spinning(1);
        vm.connect()
            .unwrap_or_else(|e| fail(&format!("{}: {e}", vm.side.name())));
    }
    let mut out = Metric::default();
    for _ in 0..rounds {
        for vm in &mut vms {
            let t = Instant::now();
            vm.hot_add()
                .unwrap_or_else(|e| fail(&format!("{}: hot-add: {e}", vm.side.name())));
            out.push(vm.side, t.elapsed());
        }
    }
    for vm in vms {
        vm.stop();
    }
    out
}

/// Hot-add of one CPU to a 1-vCPU Debian guest (max 2): [reply, the guest's uevent
/// handler starting to online it, guest online].
fn bench_hot_add(g: &Guest, sides: &[Side], rounds: usize) -> [Metric; 3] {
    let mut vms: Vec<Running> = sides
        .iter()
        .map(|&s| spawn(s, Boot::Debian(g, "vmtest.mode=watch"), 1, 2, "hotadd"))
        .collect();
    let mut cursor = Vec::new();
    let settled = |n: usize| {
        let want: Vec<usize> = (0..n).collect();
        move |l: &str| {
            vmtest_value(l, "present").map(|v| cpu_list(&v)) == Some(want.clone())
                && vmtest_value(l, "online").map(|v| cpu_list(&v)) == Some(want.clone())
        }
    };
    for vm in &mut vms {
        cursor.push(vm.wait_line(0, "the watch loop", settled(1)) + 1);
        vm.connect()
            .unwrap_or_else(|e| fail(&format!("{}: {e}", vm.side.name())));
    }
    let mut out: [Metric; 3] = Default::default();
    for _ in 0..rounds {
        for (vm, at) in vms.iter_mut().zip(cursor.iter_mut()) {
            let t = Instant::now();
            vm.hot_add()
                .unwrap_or_else(|e| fail(&format!("{}: hot-add: {e}", vm.side.name())));
            out[0].push(vm.side, t.elapsed());
            // The guest's uevent handler prints a line as it starts onlining the CPU
            // (the kernel has added the CPU and sent its event) and one when done (the
            // watch loop's summary lines come every 0.2 s and would quantise this).
            let onlining = vm.wait_line(*at, "CPU 1 event", |l| l == "VMTEST onlining=cpu1");
            out[1].push(vm.side, t.elapsed());
            let onlined = vm.wait_line(onlining, "CPU 1 onlined", |l| l == "VMTEST onlined=cpu1");
            out[2].push(vm.side, t.elapsed());
            let summary = vm.wait_line(*at, "CPU 1 online", settled(2));
            *at = onlined.max(summary) + 1;
            vm.hot_remove()
                .unwrap_or_else(|e| fail(&format!("{}: hot-remove: {e}", vm.side.name())));
            *at = vm.wait_line(*at, "CPU 1 gone", settled(1)) + 1;
            if vm.side == Side::Ours {
                // The ejected slot must be reaped before the next resize can reuse it.
                let deadline = Instant::now() + DEADLINE;
                loop {
                    let info = vm.api(Request::Info).unwrap_or_default();
                    if info["vcpus"][1]["state"] == "absent" {
                        break;
                    }
                    if Instant::now() > deadline {
                        fail(&format!("ours: slot 1 never reaped: {info}"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    for vm in vms {
        vm.stop();
    }
    out
}

fn main() {
    let o = opts();
    // Our VMM logs one INFO line per pause and resume on stderr, which this process reads
    // on a thread of its own that would compete with the measured request; QEMU logs
    // nothing. Warnings still come through.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    let qemu_ok = std::process::Command::new(QEMU)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    let sides: Vec<Side> = if qemu_ok {
        vec![Side::Ours, Side::Qemu]
    } else {
        println!("bench_vs_qemu: {QEMU} is not installed here: measuring ours alone");
        vec![Side::Ours]
    };
    std::fs::create_dir_all(&o.out)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", o.out.display())));
    let mut table: Vec<(String, Metric)> = Vec::new();
    let mut curve = Vec::new();
    if o.control {
        let image = spin_image::path().unwrap_or_else(|e| fail(&e.to_string()));
        println!(
            "bench_vs_qemu: control: {} pause/resume cycles per vCPU count and connection \
             kind (blocks of {BLOCK}, alternating), {} hot-add rounds; guest {}",
            o.cycles,
            o.rounds,
            image.display()
        );
        for &n in &o.vcpus {
            let [p, r, pn, rn, trip] = bench_pause(image, &sides, n, o.cycles);
            curve.push((
                n,
                quantile(&p.ours, 0.5),
                (!p.qemu.is_empty()).then(|| quantile(&p.qemu, 0.5)),
            ));
            table.push((format!("pause, {n} vCPU(s)"), p));
            table.push((format!("resume, {n} vCPU(s)"), r));
            table.push((format!("pause, {n} vCPU(s), new conn"), pn));
            table.push((format!("resume, {n} vCPU(s), new conn"), rn));
            table.push((format!("no-op request, {n} vCPU(s)"), trip));
        }
        table.push((
            "hot-add, reply".into(),
            bench_hot_add_reply(image, &sides, o.rounds),
        ));
    }
    if o.guest {
        let g = guest();
        println!(
            "bench_vs_qemu: guest: {} boots, {} hot-add rounds; guest {}",
            o.boots,
            o.rounds,
            g.kernel.display()
        );
        table.push((
            "boot to init, 1 vCPU".into(),
            bench_boot(&g, &sides, o.boots),
        ));
        let [reply, event, online] = bench_hot_add(&g, &sides, o.rounds);
        table.push(("Linux hot-add 1 -> 2, reply".into(), reply));
        table.push(("Linux hot-add 1 -> 2, guest event".into(), event));
        table.push(("Linux hot-add 1 -> 2, guest online".into(), online));
    }

    print_header();
    for (name, m) in &table {
        print_metric(name, m);
    }
    let mut written = Vec::new();
    for (name, m) in &table {
        let file: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>()
            .split('_')
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("_");
        let path = o.out.join(format!("{file}.svg"));
        match plot_cdf(&path, name, m) {
            Ok(()) => written.push(path),
            Err(e) => fail(&format!("plot {}: {e}", path.display())),
        }
    }
    if !curve.is_empty() {
        let path = o.out.join("pause_vs_vcpus.svg");
        plot_pause_curve(&path, &curve)
            .unwrap_or_else(|e| fail(&format!("plot {}: {e}", path.display())));
        written.push(path);
    }
    println!("plots: {}", o.out.display());
    for p in written {
        println!("  {}", p.display());
    }
}
