#!/usr/bin/env bash
# The whole test suite: workspace tests on std, then the loom models in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
RUSTFLAGS="--cfg loom" cargo test --release -p model-tests --target-dir target/loom -- --nocapture --test-threads=1
