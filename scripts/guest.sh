#!/usr/bin/env bash
# Fetch a real Linux guest kernel and build a busybox initramfs for booting
# under the VMM (README's first command, CI integration tests).
#
# Usage: scripts/guest.sh [--force]
#
# Outputs (relative to the repository root), printed one per line on stdout:
#   target/guest/bzImage            Debian's stock x86-64 kernel (linux-image-amd64's dependency)
#   target/guest/initramfs.cpio.gz  gzip'd newc cpio: static busybox + /init
#   target/guest/guest.info         which package versions were used (informational)
# If both outputs already exist and are non-empty the script exits at once.
# --force rebuilds them. Progress goes to stderr.
#
# Everything comes from the configured apt sources via `apt-get download` +
# `dpkg -x`; nothing is installed system-wide except `cpio` if it is missing
# (that needs root or passwordless sudo). `apt-get update` runs automatically
# when a package cannot be found or downloaded.
#
# The guest's /init understands these kernel command-line parameters:
#   vmtest.mode=poweroff  (default) print the markers, then `poweroff -f`
#   vmtest.mode=watch     print the markers, then online each hot-added CPU (on its
#                         kernel "add" uevent) and print a line whenever cpu/online or
#                         cpu/present changes
#   vmtest.mode=shell     print the markers, then an interactive busybox shell
#   vmtest.mode=spin      print the markers, then keep every online CPU busy (one shell
#                         loop per CPU), for pause benchmarks that must catch running vCPUs
#   vmtest.hold=SECS      poweroff mode: wait SECS seconds (of guest time) before powering off
#   vmtest.tick=SECS      watch mode: also print the uptime line every SECS seconds
# Output lines (all start with VMTEST, lines end in \r\n on the serial port):
#   VMTEST-INIT-OK
#   VMTEST possible=<sysfs cpu/possible>
#   VMTEST present=<sysfs cpu/present>
#   VMTEST online=<sysfs cpu/online>
#   VMTEST nproc=<nproc>
#   VMTEST uptime=<seconds>                           (/proc/uptime, after the markers and
#                                                      again just before VMTEST-POWEROFF)
#   VMTEST meminfo-total-kb=<MemTotal>
#   VMTEST-POWEROFF                                   (poweroff mode, just before powering off)
#   VMTEST-WATCH                                      (watch mode, once before the loop)
#   VMTEST online=<online> present=<present> nproc=<n>  (watch mode, first round and on every change)
#   VMTEST onlining=cpuN                              (watch mode, a new CPU's event handled:
#                                                      just before writing its online file)
#   VMTEST onlined=cpuN / VMTEST online-failed=cpuN   (watch mode, when it onlines a new CPU)
#   VMTEST uptime=<seconds>                           (watch mode with vmtest.tick, periodically)
#   VMTEST-SHELL                                      (shell mode)
#   VMTEST-SPIN <n>                                   (spin mode, once <n> loops are running)
#   VMTEST-ERROR <message>                            (bad vmtest.mode; then powers off)
# Use console=ttyS0 (the VMM's 16550 at 0x3f8), e.g.
#   console=ttyS0 quiet panic=-1 vmtest.mode=poweroff
set -euo pipefail

log() { printf 'guest.sh: %s\n' "$*" >&2; }
die() { printf 'guest.sh: error: %s\n' "$*" >&2; exit 1; }

force=0
for arg in "$@"; do
    case "$arg" in
        --force|-f) force=1 ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) die "unknown argument '$arg' (usage: $0 [--force])" ;;
    esac
done

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="$repo_root/target/guest"
kernel="$out/bzImage"
initrd="$out/initramfs.cpio.gz"

# The initramfs's /init is written by this script: a newer script means a stale cache.
cached() { [ -s "$kernel" ] && [ -s "$initrd" ] && [ ! "${BASH_SOURCE[0]}" -nt "$initrd" ]; }
print_outputs() { printf '%s\n' "$kernel" "$initrd"; }

if [ "$force" = 0 ] && cached; then
    print_outputs
    exit 0
fi

mkdir -p "$out"
# Serialize concurrent runs (e.g. parallel CI jobs); re-check the cache once we hold the lock.
exec 9>"$out/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
    # Holding the lock, any leftover build dir is from an interrupted run.
    rm -rf "$out"/.build.*
fi
if [ "$force" = 0 ] && cached; then
    print_outputs
    exit 0
fi

is_root() { [ "$(id -u)" = 0 ]; }
as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or passwordless sudo) to run: $*"
    fi
}

apt_opts=()
# apt-get download as root otherwise tries to drop to the _apt user, which may not
# be able to write into our build dir.
if is_root; then apt_opts+=(-o APT::Sandbox::User=root); fi

updated=0
apt_update() {
    [ "$updated" = 1 ] && return 0
    updated=1
    log "running apt-get update"
    as_root apt-get update >&2 || die "apt-get update failed (check the apt sources / network)"
}

# Resolve the metapackage to the real versioned kernel package.
kernel_pkg() {
    local meta dep
    for meta in linux-image-amd64 linux-image-generic; do
        dep=$(apt-cache depends "$meta" 2>/dev/null |
              awk '$1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9]/ { print $2; exit }') || true
        if [ -n "$dep" ]; then
            printf '%s\n' "$dep"
            return 0
        fi
    done
    return 1
}

# apt_download PKG DIR: download PKG's .deb into DIR (retrying once after apt-get update).
apt_download() {
    local pkg=$1 dir=$2
    log "downloading $pkg"
    if (cd "$dir" && apt-get "${apt_opts[@]}" download "$pkg" >&2); then
        return 0
    fi
    [ "$updated" = 1 ] && die "apt-get download $pkg failed"
    apt_update
    (cd "$dir" && apt-get "${apt_opts[@]}" download "$pkg" >&2) || die "apt-get download $pkg failed"
}

# newc_entry NAME MODE RDEVMAJOR RDEVMINOR: a data-less newc cpio header (+ padded name).
newc_entry() {
    local name=$1 mode=$2 rmaj=$3 rmin=$4 namesize hdr pad
    namesize=$(( ${#name} + 1 ))
    hdr=$(printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        0 "$mode" 0 0 1 0 0 0 0 "$rmaj" "$rmin" "$namesize" 0)
    printf '%s%s\0' "$hdr" "$name"
    pad=$(( (4 - (110 + namesize) % 4) % 4 ))
    [ "$pad" = 0 ] || head -c "$pad" /dev/zero
}

# ---------------------------------------------------------------------------
# Tools
command -v apt-get >/dev/null 2>&1 || die "apt-get not found (this script needs a Debian/Ubuntu host)"
command -v dpkg >/dev/null 2>&1 || die "dpkg not found"
command -v gzip >/dev/null 2>&1 || die "gzip not found"
if ! command -v cpio >/dev/null 2>&1; then
    log "cpio not found; installing it with apt-get"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cpio >&2; then
        apt_update
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cpio >&2 ||
            die "apt-get install cpio failed"
    fi
fi

tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"

if [ "$force" = 1 ]; then
    # Remove both first so an interrupted rebuild can never leave a mismatched "cached" pair.
    rm -f "$kernel" "$initrd"
fi

# ---------------------------------------------------------------------------
# Kernel
if ! kpkg=$(kernel_pkg); then
    apt_update
    kpkg=$(kernel_pkg) || die "cannot resolve linux-image-amd64 to a kernel package (apt-cache depends found nothing)"
fi
log "kernel package: $kpkg"
mkdir "$tmp/kdeb" "$tmp/kx"
apt_download "$kpkg" "$tmp/kdeb"
kdeb=$(ls "$tmp/kdeb"/*.deb)
kver=$(dpkg-deb -f "$kdeb" Version)
log "extracting boot/vmlinuz-* from $(basename "$kdeb")"
# Only /boot is needed; skipping the ~400 MB of modules makes this much faster.
if ! dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$tmp/kx" --wildcards './boot/vmlinuz-*' 2>/dev/null; then
    rm -rf "$tmp/kx" && mkdir "$tmp/kx"
    dpkg -x "$kdeb" "$tmp/kx" || die "dpkg -x $kdeb failed"
fi
vmlinuz=$(ls "$tmp/kx"/boot/vmlinuz-* 2>/dev/null | head -n1) || true
[ -n "$vmlinuz" ] || die "no boot/vmlinuz-* in $kpkg"
cp "$vmlinuz" "$tmp/bzImage"
chmod 644 "$tmp/bzImage"

# ---------------------------------------------------------------------------
# Initramfs
mkdir "$tmp/bdeb" "$tmp/bx"
apt_download busybox-static "$tmp/bdeb"
bdeb=$(ls "$tmp/bdeb"/*.deb)
bver=$(dpkg-deb -f "$bdeb" Version)
dpkg -x "$bdeb" "$tmp/bx" || die "dpkg -x $bdeb failed"
[ -f "$tmp/bx/bin/busybox" ] || die "busybox-static has no bin/busybox"

root="$tmp/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,etc}
chmod 1777 "$root/tmp"
install -m 755 "$tmp/bx/bin/busybox" "$root/bin/busybox"
# Applet symlinks, if the static busybox runs on this host (init re-installs them otherwise).
if applets=$("$root/bin/busybox" --list 2>/dev/null); then
    for a in $applets; do
        [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
    done
fi

cat >"$root/init" <<'INIT'
#!/bin/busybox sh
# /init of the VMM test guest (generated by scripts/guest.sh). See that script for the protocol.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
[ -x /bin/sh ] || /bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# If the kernel could not open a console for us, get one now that devtmpfs is there.
if (: </dev/console >/dev/console) 2>/dev/null; then
    exec </dev/console >/dev/console 2>&1
fi

C=/sys/devices/system/cpu
mode=poweroff
hold=0
tick=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        vmtest.mode=*) mode=${arg#vmtest.mode=} ;;
        vmtest.hold=*) hold=${arg#vmtest.hold=} ;;
        vmtest.tick=*) tick=${arg#vmtest.tick=} ;;
    esac
done
uptime_line() { read -r up _ </proc/uptime; echo "VMTEST uptime=$up"; }

echo "VMTEST-INIT-OK"
echo "VMTEST possible=$(cat $C/possible)"
echo "VMTEST present=$(cat $C/present)"
echo "VMTEST online=$(cat $C/online)"
echo "VMTEST nproc=$(nproc)"
echo "VMTEST meminfo-total-kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
uptime_line

do_poweroff() {
    [ "$hold" = 0 ] || sleep "$hold"
    uptime_line
    echo "VMTEST-POWEROFF"
    sync
    poweroff -f
    # Only reached if the reboot syscall itself failed.
    sleep 1
    exit 1
}

watch_cpus() {
    # Hot-added CPUs are onlined on the kernel's "add" uevent for them, as udev's rule does
    # (SUBSYSTEM=="cpu", ACTION=="add" -> online=1): each new instance exactly once, and
    # never one the kernel itself offlined on its way to being ejected. (Polling sysfs
    # cannot tell a CPU removed and re-added between two polls from one that stayed.)
    uevent /bin/vmtest-cpu-event &
    listener=$!
    # Wait until the listener's netlink socket (protocol 15, kobject uevents; the kernel's
    # own has port 0) is bound: every CPU added from then on gets its event to it.
    tries=0
    until awk '$2 == 15 && $3 != 0 { f = 1 } END { exit !f }' /proc/net/netlink 2>/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -ge 200 ] || ! kill -0 "$listener" 2>/dev/null; then
            echo "VMTEST-ERROR the uevent listener did not start"
            do_poweroff
        fi
        sleep 0.05
    done
    # CPUs added before that (a resize during boot) had their event already: online them.
    for d in $C/cpu[0-9]*; do
        n=${d##*/}
        [ "$n" = cpu0 ] || /bin/vmtest-cpu-event "$n"
    done
    echo "VMTEST-WATCH"
    last=""
    next_tick=0
    while :; do
        if [ "$tick" != 0 ]; then
            read -r up _ </proc/uptime
            if [ "${up%.*}" -ge "$next_tick" ]; then
                echo "VMTEST uptime=$up"
                next_tick=$(( ${up%.*} + tick ))
            fi
        fi
        on=$(cat $C/online 2>/dev/null)
        pr=$(cat $C/present 2>/dev/null)
        if [ "$on $pr" != "$last" ]; then
            echo "VMTEST online=$on present=$pr nproc=$(nproc)"
            last="$on $pr"
        fi
        sleep 0.2
    done
}

case "$mode" in
    poweroff) do_poweroff ;;
    watch) watch_cpus ;;
    shell)
        echo "VMTEST-SHELL"
        setsid cttyhack sh || sh
        do_poweroff
        ;;
    spin)
        n=$(nproc)
        for _ in $(seq "$n"); do
            sh -c 'while :; do :; done' &
        done
        echo "VMTEST-SPIN $n"
        wait
        do_poweroff
        ;;
    *)
        echo "VMTEST-ERROR unknown vmtest.mode=$mode"
        do_poweroff
        ;;
esac
INIT
chmod 755 "$root/init"

# Watch mode's CPU onliner: busybox `uevent` runs it for every kernel event (with the
# event in its environment); /init also runs it as `vmtest-cpu-event cpuN` once at start.
cat >"$root/bin/vmtest-cpu-event" <<'EVENT'
#!/bin/busybox sh
if [ $# -gt 0 ]; then
    n=$1
else
    [ "$ACTION" = add ] && [ "$SUBSYSTEM" = cpu ] || exit 0
    n=${DEVPATH##*/}
fi
case "$n" in cpu[0-9]*) ;; *) exit 0 ;; esac
f=/sys/devices/system/cpu/$n/online
[ -f "$f" ] && [ "$(cat "$f" 2>/dev/null)" = 0 ] || exit 0
echo "VMTEST onlining=$n"
if echo 1 2>/dev/null >"$f"; then
    echo "VMTEST onlined=$n"
else
    echo "VMTEST online-failed=$n"
fi
EVENT
chmod 755 "$root/bin/vmtest-cpu-event"

# /dev/console must exist in the archive: the kernel opens it for init's stdio before
# init runs (devtmpfs is only mounted by init itself).
append_console=0
if ! mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null; then
    append_console=1   # not root: add the node as a second, hand-made newc archive below
fi

# Fixed timestamps so identical inputs give an identical archive.
find "$root" -exec touch -h -d @0 {} +
cpio_opts=(--quiet -o -H newc -R 0:0)
if cpio --help 2>&1 | grep -q -- --reproducible; then cpio_opts+=(--reproducible); fi
log "building initramfs"
{
    (cd "$root" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort | cpio "${cpio_opts[@]}")
    if [ "$append_console" = 1 ]; then
        # The kernel accepts concatenated archives.
        newc_entry dev/console $((0020600)) 5 1
        newc_entry TRAILER!!! 0 0 0
    fi
} | gzip -9 -n >"$tmp/initramfs.cpio.gz"
[ -s "$tmp/initramfs.cpio.gz" ] || die "initramfs build produced nothing"

cat >"$tmp/guest.info" <<EOF
kernel_package=$kpkg
kernel_version=$kver
kernel_file=$(basename "$vmlinuz")
busybox_package=busybox-static
busybox_version=$bver
EOF

# Atomic within target/guest (same filesystem). The initramfs goes in first and the
# kernel last; the cache check needs both.
mv -f "$tmp/guest.info" "$out/guest.info"
mv -f "$tmp/initramfs.cpio.gz" "$initrd"
mv -f "$tmp/bzImage" "$kernel"
log "kernel $kpkg $kver -> $kernel"
log "busybox-static $bver -> $initrd"
print_outputs
