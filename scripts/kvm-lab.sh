#!/usr/bin/env bash
# The nested-KVM lab: runs one command inside an L1 Linux VM that has a real, hardware-style
# KVM (AMD SVM with nested paging, emulated by QEMU's TCG), for hosts whose own /dev/kvm
# cannot run a real Linux guest (kvm_pvm) or that have no /dev/kvm at all.
#
# Usage: scripts/kvm-lab.sh [OPTIONS] -- COMMAND [ARG...]
#   --timeout SECS      hard limit for the whole L1 run (default 1800; VMM_LAB_TIMEOUT)
#   --mem SIZE          L1 memory, QEMU syntax (default 6G; VMM_LAB_MEM)
#   --smp N             L1 vCPUs (default 1; VMM_LAB_SMP). With 2 (multi-threaded TCG), the L2
#                       guest triple-faulted or hung now and then under host load, and once
#                       the L1 kernel itself crashed ("stack guard page was hit"); with 1 the
#                       same suites ran clean, no slower on a 2-core host.
#   --heartbeat SECS    send L1 a harmless interrupt (a Ctrl key press through the emulated
#                       keyboard) every SECS seconds; 0 turns it off (default 2;
#                       VMM_LAB_HEARTBEAT). Why: now and then QEMU's TCG leaves L1's own
#                       timer interrupt pending, unseen, while L1's CPU runs the L2 guest, and
#                       L1 freezes until some other interrupt arrives (CI saw L1 frozen for
#                       236 s and 323 s, ended each time by the SysRq key press at the timeout).
#                       L1 records every stall of a second or more, and the run's summary
#                       line reports them.
#   --setup             only install/build what the lab needs, then exit
#   -h, --help          this text
#
# What it does:
#   1. installs QEMU >= 10 when missing (Debian's <codename>-backports suite, added through a
#      private apt configuration: the system's /etc/apt is not edited),
#   2. builds the L1 once (cached in target/lab/l1): the kernel of Debian's linux-image-amd64
#      and the modules KVM and virtio-9p need, from the same .deb, plus a busybox-static /init,
#   3. boots it under TCG with `-cpu max` (SVM), loads kvm_amd, mounts the host's root
#      read-only and the repository read-write at their own paths (virtio-9p), chroots into
#      the host's root, and runs COMMAND there with the caller's environment and working
#      directory (which must lie inside the repository),
#   4. streams the command's output (stdout and stderr both, through L1's serial console) and
#      exits with the command's exit status.
# Exit status: the command's, or 124 when the hard timeout fired (even if the command finished
# after it), 125 when the lab itself failed or L1 froze for 30 s or more during a command that
# failed (a clear one-line error says why).
#
# Suitable as a cargo runner, so that cargo builds on the host and runs each test binary in
# the lab: CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/kvm-lab.sh --"
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lab="$repo/target/lab"
l1="$lab/l1"

say() { printf 'kvm-lab: %s\n' "$*" >&2; }
die() { printf 'kvm-lab: error: %s\n' "$*" >&2; exit 125; }

timeout_secs=${VMM_LAB_TIMEOUT:-1800}
mem=${VMM_LAB_MEM:-6G}
smp=${VMM_LAB_SMP:-1}
heartbeat=${VMM_LAB_HEARTBEAT:-2}
setup_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout_secs=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --smp) smp=$2; shift 2 ;;
        --heartbeat) heartbeat=$2; shift 2 ;;
        --setup) setup_only=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        --) shift; break ;;
        *) die "unknown option '$1' (usage: $0 [OPTIONS] -- COMMAND [ARG...])" ;;
    esac
done
[ "$setup_only" = 1 ] || [ $# -gt 0 ] || die "no command given (usage: $0 [OPTIONS] -- COMMAND [ARG...])"
[[ "$timeout_secs" =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds, not '$timeout_secs'"
[[ "$smp" =~ ^[1-9][0-9]*$ ]] || die "--smp wants a positive count, not '$smp'"
[[ "$heartbeat" =~ ^[0-9]+$ ]] || die "--heartbeat wants whole seconds (0 for none), not '$heartbeat'"
case "$repo" in *[[:space:]]*) die "the repository path '$repo' contains white space; the L1 kernel command line cannot carry it" ;; esac

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
    else die "need root (or passwordless sudo) to run: $*"; fi
}

# ---------------------------------------------------------------------------------------
# 1. QEMU >= 10
qemu_major() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || { echo 0; return; }
    qemu-system-x86_64 --version | sed -n '1s/.*version \([0-9]*\)\..*/\1/p'
}

# apt with a private configuration: the system's sources plus <codename>-backports, and a
# private package-list directory, so nothing under /etc/apt or /var/lib/apt/lists changes.
backports_apt() {
    local conf="$lab/apt" codename uris
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || die "cannot tell the Debian release (/etc/os-release has no VERSION_CODENAME)"
    mkdir -p "$conf/parts" "$conf/lists/partial"
    rm -f "$conf/parts"/*
    cp /etc/apt/sources.list.d/*.sources "$conf/parts/" 2>/dev/null || true
    [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$conf/parts/system.list"
    # The backports suite lives in the same archive as the release's own suite.
    uris=$(awk -v s="$codename" '
        /^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) { print u; exit } }' \
        "$conf/parts"/*.sources 2>/dev/null || true)
    [ -n "$uris" ] || uris=$(awk -v s="$codename" '$1 == "deb" && $3 == s { print $2; exit }' "$conf/parts"/*.list 2>/dev/null || true)
    [ -n "$uris" ] || die "no apt source for '$codename' to derive $codename-backports from"
    printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uris" "$codename" >"$conf/parts/lab-backports.sources"
    local opts=(-o "Dir::Etc::SourceParts=$conf/parts" -o Dir::Etc::SourceList=/dev/null
                -o "Dir::State::Lists=$conf/lists")
    "$@" "${opts[@]}"
}

ensure_qemu() {
    local have
    have=$(qemu_major)
    [ "${have:-0}" -ge 10 ] && return 0
    say "QEMU >= 10 is needed (found: ${have:-none}); installing qemu-system-x86 from backports"
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    backports_apt as_root apt-get update -q >&2 || die "apt-get update (with $codename-backports) failed"
    backports_apt as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends -t "$codename-backports" qemu-system-x86 >&2 ||
        die "apt-get install -t $codename-backports qemu-system-x86 failed"
    have=$(qemu_major)
    [ "${have:-0}" -ge 10 ] || die "qemu-system-x86_64 is still older than 10 after installing (found: ${have:-none})"
}

# ---------------------------------------------------------------------------------------
# 2. The L1 image: kernel + initramfs with the modules and an /init that runs the command.
# Modules in load order (the .deb has no modules.dep; each one's depends= gives the order).
L1_MODULES="virt/lib/irqbypass arch/x86/kvm/kvm drivers/crypto/ccp/ccp arch/x86/kvm/kvm-amd
drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev
drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci net/9p/9pnet net/9p/9pnet_virtio
fs/netfs/netfs fs/fscache/fscache fs/9p/9p"

apt_download() { # PKG DIR
    local opts=()
    [ "$(id -u)" = 0 ] && opts+=(-o APT::Sandbox::User=root)
    (cd "$2" && apt-get "${opts[@]}" download "$1" >&2) && return 0
    as_root apt-get update -q >&2 || die "apt-get update failed"
    (cd "$2" && apt-get "${opts[@]}" download "$1" >&2) || die "apt-get download $1 failed"
}

build_l1() {
    [ -s "$l1/vmlinuz" ] && [ -s "$l1/initramfs.cpio.gz" ] && return 0
    mkdir -p "$lab"
    exec 8>"$lab/.l1.lock"
    flock 8
    [ -s "$l1/vmlinuz" ] && [ -s "$l1/initramfs.cpio.gz" ] && return 0
    for t in apt-get dpkg-deb cpio gzip; do
        command -v "$t" >/dev/null 2>&1 || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$t" >&2 ||
            die "$t is missing and could not be installed"
    done
    say "building the L1 image (once; cached in ${l1#"$repo"/})"
    local tmp kpkg
    tmp=$(mktemp -d "$lab/.build.XXXXXX")
    trap 'rm -rf "$tmp"' RETURN
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
           awk '$1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9]/ { print $2; exit }') || true
    if [ -z "$kpkg" ]; then
        as_root apt-get update -q >&2 || die "apt-get update failed"
        kpkg=$(apt-cache depends linux-image-amd64 | awk '$1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    fi
    [ -n "$kpkg" ] || die "cannot resolve linux-image-amd64 to a kernel package"
    mkdir -p "$tmp/deb" "$tmp/x" "$tmp/bb" "$tmp/root"
    apt_download "$kpkg" "$tmp/deb"
    apt_download busybox-static "$tmp/deb"
    local kdeb bdeb kver
    kdeb=$(ls "$tmp/deb"/linux-image-*.deb) bdeb=$(ls "$tmp/deb"/busybox-static*.deb)
    dpkg-deb -x "$kdeb" "$tmp/x" || die "dpkg-deb -x $kdeb failed"
    dpkg-deb -x "$bdeb" "$tmp/bb" || die "dpkg-deb -x $bdeb failed"
    kver=$(ls "$tmp/x/lib/modules")
    local r="$tmp/root"
    mkdir -p "$r"/{bin,dev,proc,sys,host,modules}
    install -m 755 "$tmp/bb/bin/busybox" "$r/bin/busybox"
    for m in $L1_MODULES; do
        cp "$tmp/x/lib/modules/$kver/kernel/$m.ko" "$r/modules/" || die "module $m.ko missing from $kpkg"
    done
    printf '%s\n' $L1_MODULES | sed 's#.*/##' >"$r/modules/order"
    cp "$repo/scripts/lab-init.sh" "$r/init"
    chmod 755 "$r/init"
    (cd "$r" && find . | cpio -o -H newc --quiet | gzip -1) >"$tmp/initramfs.cpio.gz"
    mkdir -p "$l1"
    cp "$tmp/x/boot/vmlinuz-$kver" "$l1/vmlinuz"
    mv "$tmp/initramfs.cpio.gz" "$l1/initramfs.cpio.gz"
    printf 'kernel %s (%s)\nbusybox %s\n' "$kpkg" "$(dpkg-deb -f "$kdeb" Version)" "$(dpkg-deb -f "$bdeb" Version)" >"$l1/l1.info"
}

ensure_qemu
# The /init and the module list are part of the image: rebuild when either script changed.
for f in "$repo/scripts/lab-init.sh" "$repo/scripts/kvm-lab.sh"; do
    if [ -s "$l1/initramfs.cpio.gz" ] && [ "$f" -nt "$l1/initramfs.cpio.gz" ]; then
        rm -f "$l1/initramfs.cpio.gz"
    fi
done
build_l1
[ "$setup_only" = 1 ] && { say "ready: $(qemu-system-x86_64 --version | head -n1); L1 $(head -n1 "$l1/l1.info")"; exit 0; }

# ---------------------------------------------------------------------------------------
# 3. One run: a directory in the repository (so L1 can write to it) with the command, the
#    environment and the working directory.
cwd=$(pwd -P)
case "$cwd/" in "$repo"/*) ;; *) die "the working directory $cwd is outside the repository $repo (L1 sees the host read-only)" ;; esac
mkdir -p "$lab/runs"
run=$(mktemp -d "$lab/runs/run.XXXXXX")
trap 'rm -rf "$run"' EXIT
interactive=0
[ -t 0 ] && [ -t 1 ] && interactive=1
{
    echo '# generated by scripts/kvm-lab.sh'
    # The caller's environment, less what belongs to this host's session.
    export -p | grep -vE '^declare -x (SSH_|DISPLAY=|XAUTHORITY=|TERMCAP=|DBUS_|XDG_RUNTIME_DIR=|OLDPWD=|PWD=|SHLVL=|_=)' || true
    printf 'export VMM_IN_LAB=1\n'
    printf 'cd %q || exit 125\n' "$cwd"
    printf 'lab_interactive=%s\n' "$interactive"
    printf 'lab_cmd=('; printf '%q ' "$@"; printf ')\n'
} >"$run/env.sh"

say "booting L1 ($(qemu-system-x86_64 --version | sed -n '1s/.*version \([^ ]*\).*/QEMU \1/p'), TCG, -cpu max, $smp vCPUs, $mem) for: $*"
started=$(date +%s)
serial=(-serial stdio)
[ "$interactive" = 1 ] && serial=(-serial mon:stdio)
# QEMU's monitor on two FIFOs. The watchdog below writes to it: the heartbeat's key presses
# (see --heartbeat) and, at the hard timeout, the magic SysRq keys that ask the L1 kernel for
# its CPUs' and tasks' state, so a timeout shows whether L1 itself hung or a command inside
# it is waiting. One writer, so a heartbeat key never lands inside a SysRq chord.
mkfifo "$run/mon.in" "$run/mon.out"
cat "$run/mon.out" >"$run/mon.log" 2>/dev/null &
mon_reader=$!
grace=15
(
    # Opened read-write, the FIFO never blocks, whether or not QEMU has it open. The sleeps
    # must not hold the caller's stdout (a pipe to tee would wait for them).
    exec 3<>"$run/mon.in" </dev/null >/dev/null
    deadline=$(( $(date +%s) + timeout_secs ))
    while left=$(( deadline - $(date +%s) )); [ "$left" -gt 0 ]; do
        if [ "$heartbeat" = 0 ]; then sleep "$left"; continue; fi
        sleep "$(( heartbeat < left ? heartbeat : left ))"
        printf 'sendkey ctrl\n' >&3
    done
    : >"$run/timed_out"
    say "hard timeout after ${timeout_secs}s: the L1 kernel's CPU backtraces and blocked tasks follow (SysRq l, w); a silent L1 is hung itself"
    for key in l w; do
        printf 'sendkey alt-sysrq-%s\n' "$key" >&3
        sleep 4
    done
) &
watchdog=$!
set +e
timeout --foreground -k 5 "$((timeout_secs + grace))" qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu max -smp "$smp" -m "$mem" \
    -nodefaults -no-user-config -nographic -no-reboot "${serial[@]}" -bios qboot.rom \
    -monitor "pipe:$run/mon" \
    -kernel "$l1/vmlinuz" -initrd "$l1/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 sysrq_always_enabled=1 lab.run=$run lab.repo=$repo" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$repo,mount_tag=repo,security_model=none,multidevs=remap"
qrc=$?
pkill -P "$watchdog" 2>/dev/null
kill "$watchdog" 2>/dev/null
wait "$watchdog" 2>/dev/null
kill "$mon_reader" 2>/dev/null
set -e
elapsed=$(( $(date +%s) - started ))
stalls="" longest=0
if [ -s "$run/stalls" ]; then
    longest=$(sort -n "$run/stalls" | tail -n 1)
    stalls="; L1 stalled $(wc -l <"$run/stalls") time(s) for a second or more (longest $longest s)"
fi
# Past the hard timeout the run is the lab's fault even when L1 came back to life (the SysRq
# key presses have revived a frozen L1) and the command then finished: its own deadlines
# had passed while L1 stood still.
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ] || [ -e "$run/timed_out" ]; then
    say "error: hard timeout after ${timeout_secs}s (--timeout); the command did not finish in time${stalls}"
    exit 124
fi
if [ ! -s "$run/rc" ]; then
    err=$(cat "$run/error" 2>/dev/null || true)
    die "L1 ended (QEMU status $qrc) without the command's exit status${err:+: $err}"
fi
rc=$(cat "$run/rc")
say "command exited $rc after ${elapsed}s in L1${stalls}"
# A command that failed while L1 stood still for half a minute or more failed on the lab's
# account: every deadline it had was measured on a clock that ran while nothing else did.
if [ "$rc" != 0 ] && [ "${longest%.*}" -ge 30 ]; then
    die "L1 froze for $longest s during the run; the command's failure (exit $rc) is the lab's"
fi
exit "$rc"
