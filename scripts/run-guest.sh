#!/usr/bin/env bash
# The main job: fetch the Debian guest (cached), build the VMM, and boot Linux with
# 2 of 4 possible vCPUs. Extra arguments go to the vmm (e.g. --api-socket /tmp/vmm.sock,
# --cmdline vmtest.mode=watch to keep the guest up, --cmdline vmtest.mode=shell for a shell).
#
# Where the host's /dev/kvm cannot run a Linux guest's userspace (kvm_pvm) or is missing,
# the VMM runs inside the nested-KVM lab (scripts/kvm-lab.sh), which says so in one line;
# the guest's serial console is still this terminal. VMM_RUN_IN=host|lab forces either.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/guest.sh >/dev/null
cargo build --release -p vmm --bin vmm
vmm=(target/release/vmm
    --kernel target/guest/bzImage
    --initramfs target/guest/initramfs.cpio.gz
    --cpus boot=2,max=4
    --memory size=512M
    "$@")
where=${VMM_RUN_IN:-}
if [ -z "$where" ]; then
    where=lab
    if [ -r /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
        where=host
    fi
fi
if [ "$where" = host ]; then
    exec "${vmm[@]}"
fi
reason="no usable /dev/kvm"
[ -d /sys/module/kvm_pvm ] && reason="the host's KVM is kvm_pvm, which cannot run a Linux guest's userspace"
echo "run-guest.sh: $reason: running the VMM inside the nested-KVM lab (scripts/kvm-lab.sh)" >&2
exec bash scripts/kvm-lab.sh -- "${vmm[@]}"
