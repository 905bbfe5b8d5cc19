//! Pause and resume as a client of the control API sees them: the real `vmm` binary with
//! the spin image (`vmm_testguest::spin_image`: every vCPU spins), driven over its socket, on one persistent (keep-alive)
//! connection and on a new connection per request (what `vmm remote` and `curl` do). The
//! two are interleaved in blocks of 10 cycles (ABAB), so a slow phase of this shared host
//! hits both alike. Prints median/p90/p99/max per metric and the new/persistent ratio.
//!
//! Usage: `cargo bench -p vmm --bench bench_api [-- CYCLES [VCPUS]]` (default 1000, 1).
//! Needs /dev/kvm (any kind: the spin image runs on kvm_pvm). A measurement, not a test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmm::api::{client, Connection, Request};
use vmm_testguest::spin_image;

const TIMEOUT: Duration = Duration::from_secs(10);
const BLOCK: usize = 10;

fn fail(msg: &str) -> ! {
    eprintln!("bench_api: {msg}");
    std::process::exit(1)
}

/// The VMM process, killed when dropped.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(guest: &Path, socket: &Path, vcpus: usize) -> Vmm {
    let _ = std::fs::remove_file(socket);
    let child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("--kernel")
        .arg(guest)
        .args(["--cpus", &format!("boot={vcpus},max={vcpus}")])
        .args(["--memory", "size=128M", "--serial", "off"])
        .arg("--api-socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start vmm: {e}")));
    let vmm = Vmm(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client::request(socket, &Request::Ping, TIMEOUT)
        .ok()
        .map(|a| a.status)
        != Some(200)
    {
        if Instant::now() > deadline {
            fail("the VMM's API never answered");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    vmm
}

fn check(what: &str, r: Result<client::Answer, vmm::api::ClientError>) {
    match r {
        Ok(a) if a.status == 204 => {}
        Ok(a) => fail(&format!("{what} answered {}: {}", a.status, a.text)),
        Err(e) => fail(&format!("{what} failed: {e}")),
    }
}

#[derive(Default)]
struct Side {
    pause: Vec<Duration>,
    resume: Vec<Duration>,
}

fn pick(v: &[Duration], q: f64) -> Duration {
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let cycles: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let vcpus: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let image = spin_image::path().unwrap_or_else(|e| fail(&e.to_string()));
    let socket = std::env::temp_dir().join(format!("vmm-bench-api-{}.sock", std::process::id()));
    let _vmm = start(image, &socket, vcpus);
    let mut conn =
        Connection::connect(&socket).unwrap_or_else(|e| fail(&format!("cannot connect: {e}")));
    let (mut kept, mut fresh) = (Side::default(), Side::default());
    for block in 0..cycles.div_ceil(BLOCK) * 2 {
        let persistent = block % 2 == 0;
        for _ in 0..BLOCK {
            // One request, timed, on the kept connection or a new one.
            let mut timed = |what: &str, req: &Request| {
                let t = Instant::now();
                let r = if persistent {
                    conn.send(req, TIMEOUT)
                } else {
                    client::request(&socket, req, TIMEOUT)
                };
                let took = t.elapsed();
                check(what, r);
                took
            };
            let paused = timed("pause", &Request::Pause);
            let resumed = timed("resume", &Request::Resume);
            let side = if persistent { &mut kept } else { &mut fresh };
            side.pause.push(paused);
            side.resume.push(resumed);
        }
    }
    println!("bench_api: {vcpus} vCPU(s), {cycles} pause+resume cycles per side, blocks of {BLOCK} alternating");
    println!(
        "{:<32} {:>10} {:>10} {:>10} {:>10}",
        "metric (µs)", "median", "p90", "p99", "max"
    );
    for (name, k, f) in [
        ("pause", &mut kept.pause, &mut fresh.pause),
        ("resume", &mut kept.resume, &mut fresh.resume),
    ] {
        k.sort();
        f.sort();
        for (label, v) in [("persistent", &*k), ("new connection", &*f)] {
            println!(
                "{:<32} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                format!("{name}, {label}"),
                us(pick(v, 0.5)),
                us(pick(v, 0.9)),
                us(pick(v, 0.99)),
                us(v[v.len() - 1])
            );
        }
        println!(
            "{:<32} {:>10.2} {:>10.2} {:>10.2}",
            format!("{name}, new / persistent"),
            us(pick(f, 0.5)) / us(pick(k, 0.5)),
            us(pick(f, 0.9)) / us(pick(k, 0.9)),
            us(pick(f, 0.99)) / us(pick(k, 0.99)),
        );
    }
    let _ = std::fs::remove_file(&socket);
}
