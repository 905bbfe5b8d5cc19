#!/usr/bin/env bash
# The main job: fetch the Debian guest (cached), build the VMM, and boot Linux with
# 2 of 4 possible vCPUs. Extra arguments go to the vmm (e.g. --api-socket /tmp/vmm.sock,
# --cmdline vmtest.mode=watch to keep the guest up).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/guest.sh >/dev/null
cargo build --release -p vmm --bin vmm
exec target/release/vmm \
    --kernel target/guest/bzImage \
    --initramfs target/guest/initramfs.cpio.gz \
    --cpus boot=2,max=4 \
    --memory size=512M \
    "$@"
