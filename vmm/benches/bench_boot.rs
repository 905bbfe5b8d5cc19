//! Boot-time benchmark: boots the test guest 5 times each with 1, 2 and 4 vCPUs (max 4)
//! and prints the median time from spawning `vmm` to the guest's `VMTEST-INIT-OK` line.
//!
//! Usage: `cargo bench -p vmm --bench bench_boot [-- RUNS [TIMEOUT_SECS]]` where the host's
//! KVM runs Linux; elsewhere through the nested-KVM lab:
//! `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/kvm-lab.sh --timeout 900 --" cargo bench ...`.
//! Uses the `vmm` binary cargo built with it and target/guest/{bzImage,initramfs.cpio.gz}.
//! For the same boot against QEMU's, see `bench_vs_qemu`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn main() {
    // `cargo bench` adds `--bench`: only the plain arguments are ours.
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let runs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let timeout = Duration::from_secs(args.next().and_then(|s| s.parse().ok()).unwrap_or(600));
    let vmm = PathBuf::from(env!("CARGO_BIN_EXE_vmm"));
    let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest");
    let kernel = guest.join("bzImage");
    let initramfs = guest.join("initramfs.cpio.gz");
    if !kernel.is_file() || !initramfs.is_file() {
        fail("guest files missing: run `bash scripts/guest.sh` first");
    }

    println!("vCPUs  runs  median boot-to-VMTEST-INIT-OK  (min .. max)");
    for boot in [1usize, 2, 4] {
        let mut times = Vec::new();
        for run in 0..runs {
            match boot_once(&vmm, &kernel, &initramfs, boot, timeout) {
                Ok(t) => times.push(t),
                Err(e) => eprintln!("boot={boot} run {run}: {e}"),
            }
        }
        if times.is_empty() {
            println!("{boot:>5}  {:>4}  no successful boot", 0);
            continue;
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "{boot:>5}  {:>4}  {:>10.3} s  ({:.3} .. {:.3})",
            times.len(),
            median.as_secs_f64(),
            times[0].as_secs_f64(),
            times[times.len() - 1].as_secs_f64()
        );
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench_boot: {msg}");
    std::process::exit(1);
}

/// One boot: time to VMTEST-INIT-OK; the guest then powers off (the VM is killed if not).
fn boot_once(
    vmm: &PathBuf,
    kernel: &Path,
    initramfs: &Path,
    boot: usize,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut child = Command::new(vmm)
        .arg("--kernel")
        .arg(kernel)
        .arg("--initramfs")
        .arg(initramfs)
        .arg("--cpus")
        .arg(format!("boot={boot},max=4"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            if buf.starts_with(b"VMTEST-INIT-OK") {
                let _ = tx.send(Instant::now());
            }
            buf.clear();
        }
    });
    let result = match rx.recv_timeout(timeout) {
        Ok(at) => Ok(at - start),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("no VMTEST-INIT-OK within {timeout:?}"))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(format!(
            "vmm exited after {:?} without printing VMTEST-INIT-OK",
            start.elapsed()
        )),
    };
    // Let the guest power off on its own; do not wait long for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    result
}
