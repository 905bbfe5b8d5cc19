#!/bin/busybox sh
# /init of the nested-KVM lab's L1 (copied into its initramfs by scripts/kvm-lab.sh).
# Loads KVM (kvm_amd) and virtio-9p, mounts the host's root read-only at /host and the
# repository read-write at its own path inside it, then chroots into the host's root and runs
# the command that kvm-lab.sh left in lab.run=DIR (env.sh), writing its exit status to
# DIR/rc. Anything that goes wrong is written to DIR/error (when DIR is reachable) and to
# the console, and L1 powers off.
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
bb=/bin/busybox
run="" repo=""
for arg in $($bb cat /proc/cmdline); do
    case "$arg" in
        lab.run=*) run=${arg#lab.run=} ;;
        lab.repo=*) repo=${arg#lab.repo=} ;;
    esac
done

fail() {
    echo "kvm-lab (L1): error: $*" >/dev/console
    [ -d "/host$run" ] && echo "$*" >"/host$run/error"
    $bb sync
    $bb poweroff -f
}

while read -r m; do
    out=$($bb insmod "/modules/$m.ko" 2>&1) || fail "insmod $m.ko failed: $out"
done </modules/order
[ -c /dev/kvm ] || fail "/dev/kvm did not appear after loading kvm_amd (does the L1 CPU have SVM?)"

opts=trans=virtio,version=9p2000.L,msize=1048576
$bb mount -t 9p -o "$opts,ro,cache=loose" hostroot /host || fail "cannot mount the host's root (virtio-9p)"
$bb mount -t proc proc /host/proc
$bb mount -t sysfs sysfs /host/sys
$bb mount -t devtmpfs devtmpfs /host/dev
$bb mkdir -p /host/dev/pts /host/dev/shm 2>/dev/null
$bb mount -t devpts devpts /host/dev/pts
$bb mount -t tmpfs tmpfs /host/dev/shm
for d in /tmp /run /var/tmp; do
    $bb mount -t tmpfs -o mode=1777 tmpfs "/host$d" || fail "cannot mount a tmpfs on $d"
done
# The repository last, so that one under /tmp (a clone there) is not hidden by the tmpfs.
$bb mkdir -p "/host$repo" 2>/dev/null
$bb mount -t 9p -o "$opts,cache=mmap" repo "/host$repo" || fail "cannot mount the repository at $repo"
[ -f "/host$run/env.sh" ] || fail "no command at $run/env.sh"

# Stall recorder: L1's clock keeps running while L1 is frozen (see kvm-lab.sh --heartbeat),
# so a quarter-second sleep that took a second or more longer than asked is a stall. Each one
# goes to DIR/stalls (seconds, one per line) for kvm-lab.sh's summary line.
(
    read -r up _ </proc/uptime
    prev=${up%.*}${up#*.}
    while $bb sleep 0.25; do
        read -r up _ </proc/uptime
        now=${up%.*}${up#*.}
        late=$((now - prev - 25))
        [ "$late" -ge 100 ] && echo "$((late / 100)).$((late % 100 / 10))" >>"/host$run/stalls"
        prev=$now
    done
) &

# The command runs with the host's bash, libraries and tools. Its output goes to the
# console raw (no \n -> \r\n), and stdin is the console only when the caller has a terminal.
$bb chroot /host /bin/bash -c '
    . "$1"
    if [ "$lab_interactive" = 1 ]; then
        stty raw -echo 2>/dev/null
        "${lab_cmd[@]}" </dev/console >/dev/console 2>&1
    else
        stty -opost 2>/dev/null </dev/console
        "${lab_cmd[@]}" </dev/null >/dev/console 2>&1
    fi
    echo $? >"$2/rc"
' lab "$run/env.sh" "$run"
$bb sync
$bb poweroff -f
