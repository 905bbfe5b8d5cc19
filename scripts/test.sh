#!/usr/bin/env bash
# The whole test suite (what CI runs through .ci/run):
#   1. fetch/build the guest kernel + initramfs (cached under target/guest),
#   2. every workspace test on std: core on real threads, property tests, fuzz corpora,
#      KVM backend tests and real Linux guest boots (they fail, not skip, without /dev/kvm),
#   3. the loom models in release mode with CI's bounded settings.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /dev/kvm ] && [ "${VMM_ALLOW_NO_KVM:-0}" != 1 ]; then
    echo "test.sh: /dev/kvm is missing; the real-guest tests need KVM (set VMM_ALLOW_NO_KVM=1 to run the rest)" >&2
    exit 1
fi

bash scripts/guest.sh

echo "== workspace tests (std)"
cargo test --workspace --release

echo "== loom models (release, bounded; see model-tests/README.md for deeper runs)"
RUSTFLAGS="--cfg loom" cargo test --release -p model-tests --target-dir target/loom -- --nocapture --test-threads=1
