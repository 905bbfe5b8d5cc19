//! Assembles the spin guest (`spinner/spinner.S`, linked by `spinner/spinner.ld`) with gcc
//! into `OUT_DIR/spinner.elf`; `vmm_testguest::spin_image::path` returns it.
//!
//! A missing or failing gcc does not fail the build: the rest of the crate (the synthetic
//! guest) does not need it. The reason is passed on instead, and `spin_image::path` returns
//! it as an error, so only the users of the spin image fail, and they say why.

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "spinner/spinner.S";
const SCRIPT: &str = "spinner/spinner.ld";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed={SCRIPT}");
    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        report_failure("cargo did not set OUT_DIR".into());
        return;
    };
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let elf = out_dir.join("spinner.elf");
    match assemble(&manifest_dir, &elf) {
        Ok(()) => println!("cargo:rustc-env=VMM_SPIN_IMAGE={}", elf.display()),
        Err(reason) => report_failure(reason),
    }
}

fn assemble(manifest_dir: &Path, elf: &Path) -> Result<(), String> {
    let source = manifest_dir.join(SOURCE);
    let script = manifest_dir.join(SCRIPT);
    let output = Command::new("gcc")
        .args(["-nostdlib", "-static", "-no-pie"])
        .arg(format!("-Wl,-T,{}", script.display()))
        // No build-id note; -n: no page alignment of the file, keeping it about 3 KiB; the
        // one RWX segment is deliberate (code, data and page tables share it).
        .args([
            "-Wl,--build-id=none",
            "-Wl,-n",
            "-Wl,--no-warn-rwx-segments",
        ])
        .arg("-o")
        .arg(elf)
        .arg(&source)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "gcc was not found on PATH".to_string(),
            _ => format!("cannot run gcc: {e}"),
        })?;
    if !output.status.success() {
        return Err(format!(
            "gcc failed ({}) on {}: {}",
            output.status,
            source.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// Warns at build time and hands the reason to the crate (one line: it becomes an env var).
fn report_failure(reason: String) {
    let line = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    println!("cargo:warning=spin guest image not built: {line}");
    println!("cargo:rustc-env=VMM_SPIN_IMAGE_ERROR={line}");
}
