#!/usr/bin/env bash
# Checks the VM harness end to end with the Go tests of test/vmself (build
# tag vmselftest): an empty run (boot to exit), LVM (thick, striped, thin
# pool, thin LV, snapshot, JSON reports), XFS project quota on a loop device
# in TMPDIR, environment and arguments, a failing test, the timeout, SIGTERM,
# a guest that panics, and a power cut on kept disks. About 2 minutes; prints
# the wall time of each.
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
tmp=$(mktemp -d /tmp/flashpv-vm-selftest.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

(cd "$here/../.." && CGO_ENABLED=0 go test -c -tags vmselftest -o "$tmp/selftest.test" ./test/vmself)
printf '#!/bin/sh\necho 1 >/proc/sys/kernel/sysrq; echo c >/proc/sysrq-trigger\n' >"$tmp/panic"
chmod +x "$tmp/panic"

# The working directory is in the repository, two levels down, as for a package.
cd "$here"
export FLASHPV_SELFTEST_CWD=$here FLASHPV_VM_WORKDIR=$tmp/work
mkdir "$FLASHPV_VM_WORKDIR"
failed=0
# check NAME WANT-RC WANT-IN-OUTPUT COMMAND...: runs a VM, checks its exit code
# and output, and that it left no files or qemu behind. Sets $streamed to
# whether that output was there before the command ended.
check() {
	local name=$1 want=$2 grep=$3 start=$SECONDS rc=0 pid
	shift 3
	"$@" >"$tmp/out" 2>&1 &
	pid=$!
	streamed=false
	while kill -0 "$pid" 2>/dev/null; do
		! grep -q -- "$grep" "$tmp/out" || streamed=true
		sleep 1
	done
	wait "$pid" || rc=$?
	local verdict=ok
	if [ "$rc" != "$want" ] || ! grep -q -- "$grep" "$tmp/out"; then verdict=FAILED; fi
	if [ -n "$(ls -A "$FLASHPV_VM_WORKDIR")" ]; then verdict="FAILED (files left)"; fi
	if pgrep -f "qemu-system-x86_64 .*$tmp" >/dev/null; then verdict="FAILED (qemu left)"; fi
	printf '%-28s %4d s  exit %-3s %s\n' "$name" $((SECONDS - start)) "$rc" "$verdict"
	if [ "$verdict" != ok ]; then
		sed 's/^/    /' "$tmp/out"
		failed=1
	fi
}
vmexec=$here/vmexec
t=$tmp/selftest.test
weird='a b  "c" $d '\''e'\'' \ f*'
check "empty run" 0 PASS "$vmexec" "$t" -test.run 'TestEmpty$'
check "env, args, lvm, xfs quota" 0 "PASS: TestXFSProjectQuota" env GOTRACEBACK=all NOT_PASSED=1 FLASHPV_SELFTEST_ARG="$weird" \
	"$vmexec" "$t" -test.v -test.run 'TestEnvAndArgs|TestLVM|TestXFSProjectQuota' -selftest.arg "$weird"
grep -E '^\s+selftest_test.go:[0-9]+: +[0-9.]+s ' "$tmp/out" | sed 's/^\s*selftest_test.go:[0-9]*: */      /'
check "a failing test" 1 "failing on purpose" env FLASHPV_SELFTEST_FAIL=1 "$vmexec" "$t" -test.run TestFails
check "timeout (20 s), streaming" 124 "asleep for 3 s" env FLASHPV_VM_TIMEOUT=20 FLASHPV_SELFTEST_SLEEP=1 "$vmexec" "$t" -test.v -test.run TestSleeps
$streamed || { echo "    the output came only at the end"; failed=1; }
grep -q "vmexec: VM timed out after 20 s" "$tmp/out" || { echo "    no timeout message"; failed=1; }
check "kernel panic" 125 "gave no result" "$vmexec" "$tmp/panic"
check "SIGTERM after 15 s" 143 "SIGTERM: stopping the VM" timeout --preserve-status 15 env FLASHPV_SELFTEST_SLEEP=1 "$vmexec" "$t" -test.run TestSleeps
# A power cut (SIGUSR1) once the guest runs: exit 137 at once, and the disks
# of FLASHPV_VM_DISKDIR kept for the next VM.
mkdir "$tmp/disks"
cutter() {
	"$@" &
	local pid=$!
	# However long this VM waits for another one to end.
	while kill -0 "$pid" 2>/dev/null && ! grep -q "asleep for 2 s" "$tmp/out"; do
		sleep 0.2
	done
	kill -USR1 "$pid"
	wait "$pid"
}
check "power cut (SIGUSR1)" 137 "power cut (SIGUSR1): qemu killed" cutter env FLASHPV_VM_DISKDIR="$tmp/disks" FLASHPV_SELFTEST_SLEEP=1 \
	"$vmexec" "$t" -test.v -test.run TestSleeps
[ -f "$tmp/disks/disk1.raw" ] && [ -f "$tmp/disks/disk2.raw" ] || { echo "    the disks of FLASHPV_VM_DISKDIR are gone"; failed=1; }
exit $failed
