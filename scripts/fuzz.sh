#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of every target (default 60 s each):
#   bash scripts/fuzz.sh [SECONDS] [TARGET...]
# Installs cargo-fuzz if missing; uses the stable toolchain with RUSTC_BOOTSTRAP=1 for the
# sanitizer flags. Seeds come from fuzz/corpus/<target> (read-only); new inputs go to
# fuzz/corpus-work/<target> (ignored by git). A crash leaves its input in
# fuzz/artifacts/<target>/: copy it into fuzz/corpus/<target>/ so CI replays it forever.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(hotplug_mmio api_request kernel_image)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus-work/$t"
    echo "== fuzzing $t for ${secs}s"
    cargo fuzz run --features libfuzzer "$t" "fuzz/corpus-work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -timeout=30
done
