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

/// Inputs made of JSON-ish tokens, so most are near misses of valid requests (random bytes
/// almost never get past the JSON syntax check).
fn generated_requests(seed: u64, count: usize) -> Vec<Vec<u8>> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        " ",
        "\"desired_vcpus\"",
        "\"desired_ram\"",
        "\"pause\"",
        "\"x\"",
        "0",
        "1",
        "4",
        "-1",
        "2.5",
        "1e3",
        "18446744073709551616",
        "true",
        "null",
        "\"\\u0000\"",
        "\"\\\"",
        "\u{e9}",
        "\u{ff}",
    ];
    let mut out = Vec::new();
    for (i, bytes) in generated(seed, count, 24).into_iter().enumerate() {
        let mut s: String = bytes
            .iter()
            .map(|b| TOKENS[usize::from(*b) % TOKENS.len()])
            .collect();
        // Every other input is wrapped as an object with the field, to reach the type
        // checks; all go to the endpoints that take a body or none.
        if i % 2 == 0 {
            s = format!("{{\"desired_vcpus\":{s}}}");
        }
        let target = if i % 3 == 0 {
            "PUT /api/v1/vm.pause"
        } else {
            "PUT /api/v1/vm.resize"
        };
        s = format!("{target}\n{s}");
        out.push(s.into_bytes());
    }
    out
}

fn accepts(data: &[u8]) -> bool {
    let (m, p, body) = vmm_fuzz::api::split(data);
    vmm::api::request::parse_request(&m, &p, body).is_ok()
}

#[test]
fn api_request_corpus() {
    let mut accepted = 0;
    for (name, data) in corpus("api_request") {
        eprintln!("replaying {name}");
        vmm_fuzz::api_request(&data);
        accepted += usize::from(accepts(&data));
    }
    assert!(accepted >= 5, "the corpus should hold valid requests too");
    for data in generated(0x5eed_0002, 300, 128) {
        vmm_fuzz::api_request(&data);
    }
    let mut accepted = 0;
    for data in generated_requests(0x5eed_0003, 2000) {
        vmm_fuzz::api_request(&data);
        accepted += usize::from(accepts(&data));
    }
    eprintln!("{accepted} generated requests were valid");
    // Around the size limit.
    let limit = vmm::api::request::MAX_BODY_LEN;
    let head = b"PUT /api/v1/vm.resize\n".len();
    for len in [limit - 1, limit, limit + 1] {
        let mut req = b"PUT /api/v1/vm.resize\n{\"desired_vcpus\":2}".to_vec();
        req.resize(head + len, b' ');
        vmm_fuzz::api_request(&req);
        let (m, p, body) = vmm_fuzz::api::split(&req);
        let r = vmm::api::request::parse_request(&m, &p, body);
        assert_eq!(r.is_ok(), len <= limit, "{len}: {r:?}");
    }
}

#[test]
fn kernel_image_corpus() {
    for (name, data) in corpus("kernel_image") {
        eprintln!("replaying {name}");
        vmm_fuzz::kernel_image(&data);
    }
    // A valid ELF guest, then truncated and byte-flipped variants of it: the loader must
    // load the first and refuse or safely load every variant.
    let elf = vmm_testguest::elf(&vmm_testguest::GuestSpec::spinner()).expect("spinner ELF");
    vmm_fuzz::kernel_image(&elf);
    for cut in (0..elf.len()).step_by(7) {
        vmm_fuzz::kernel_image(&elf[..cut]);
    }
    for (i, noise) in generated(0x5eed_0003, 400, 8).into_iter().enumerate() {
        let mut img = elf.clone();
        let at = (i * 131) % img.len();
        for (k, b) in noise.iter().enumerate() {
            if let Some(slot) = img.get_mut(at + k) {
                *slot ^= b | 1;
            }
        }
        vmm_fuzz::kernel_image(&img);
    }
    for data in generated(0x5eed_0004, 200, 2048) {
        vmm_fuzz::kernel_image(&data);
    }
}
