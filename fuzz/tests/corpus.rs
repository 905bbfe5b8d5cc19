//! Replays every corpus file (fuzz/corpus/<target>/) through its target under plain
//! `cargo test`, plus a fixed number of inputs from a seeded generator, so CI exercises
//! the targets without a fuzzing toolchain.

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut out = Vec::new();
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus dir {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("read corpus file");
            out.push((path.display().to_string(), data));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "corpus {target} is empty");
    out
}

/// xorshift64*: deterministic inputs without a dependency.
fn generated(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut s = seed;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..count)
        .map(|_| {
            let len = (next() as usize) % max_len;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

#[test]
fn hotplug_mmio_corpus() {
    for (name, data) in corpus("hotplug_mmio") {
        eprintln!("replaying {name}");
        vmm_fuzz::hotplug_mmio(&data);
    }
    for data in generated(0x5eed_0001, 300, 128) {
        vmm_fuzz::hotplug_mmio(&data);
    }
}
