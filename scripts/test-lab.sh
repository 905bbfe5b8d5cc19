#!/usr/bin/env bash
# Checks of the nested-KVM lab itself (run by scripts/test.sh where real guests go to the
# lab): the command's exit status comes back, L1 has a nested-capable kvm_amd, the hard
# timeout fires, a working directory outside the repository is refused with a clear error,
# and README's lab examples run as written (the shell blocks right after each
# "<!-- tested by scripts/test-lab.sh -->" line).
set -euo pipefail
cd "$(dirname "$0")/.."
lab=scripts/kvm-lab.sh
fail() { echo "test-lab: FAILED: $*" >&2; exit 1; }
passed=0

set +e
out=$(bash "$lab" -- bash -c 'test -c /dev/kvm && grep -qx 1 /sys/module/kvm_amd/parameters/nested && grep -qx Y /sys/module/kvm_amd/parameters/npt && exit 7' 2>&1)
rc=$?
set -e
[ "$rc" = 7 ] || fail "expected the command's status 7 (kvm_amd nested+npt present), got $rc: $(tail -n 5 <<<"$out")"
passed=$((passed + 1))

set +e
out=$(bash "$lab" --timeout 25 -- sleep 300 2>&1)
rc=$?
set -e
[ "$rc" = 124 ] || fail "expected 124 from the hard timeout, got $rc: $out"
grep -q "hard timeout" <<<"$out" || fail "no timeout message: $out"
passed=$((passed + 1))

set +e
out=$(cd / && bash "$OLDPWD/$lab" -- true 2>&1)
rc=$?
set -e
[ "$rc" = 125 ] || fail "expected 125 for a working directory outside the repository, got $rc"
grep -q "outside the repository" <<<"$out" || fail "unclear error: $out"
passed=$((passed + 1))

# README's examples, verbatim.
n=0
while IFS= read -r -d '' block; do
    n=$((n + 1))
    log=$(mktemp)
    if ! bash -c "$block" </dev/null >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        fail "README lab example $n failed: $block"
    fi
    case "$block" in
        *"vmm remote"*) grep -q '"active_vcpus":4' "$log" || { tail -n 30 "$log" >&2; fail "README example $n: info did not show 4 active vCPUs"; } ;;
    esac
    rm -f "$log"
    passed=$((passed + 1))
done < <(awk '
    /<!-- tested by scripts\/test-lab.sh -->/ { want = 1; next }
    want && /^```sh$/ { inblock = 1; block = ""; next }
    inblock && /^```$/ { printf "%s%c", block, 0; inblock = 0; want = 0; next }
    inblock { block = block $0 "\n" }
' README.md)
[ "$n" -ge 2 ] || fail "found only $n tested README examples"
echo "test-lab: $passed passed, 0 failed"
