#!/usr/bin/env bash
# Runs the upstream csi-sanity CLI (kubernetes-csi/csi-test, pinned in
# hack/tools/csi-sanity) against the flashpv binary, as a user would: the
# driver with its default flags and its default image pool, on a filesystem of
# its own (a sparse file on a loop device), csi-sanity with its default
# settings (volume sizes, made-up IDs) except the paths it must be given.
# Needs root. Everything it made goes at exit, also on failure or Ctrl-C.
#   hack/csi-sanity.sh [mount|block ...]   (default: mount block)
# Logs and JUnit reports: _output/csi-sanity. CSI_SANITY_FLAGS adds flags to
# csi-sanity, e.g. CSI_SANITY_FLAGS=--ginkgo.focus=NodeExpandVolume.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/_output/csi-sanity
access_types=("$@")
[ ${#access_types[@]} -gt 0 ] || access_types=(mount block)
# Sparse: only what the volumes write takes disk space. csi-sanity's volumes
# are 10 GiB, grown to 11 GiB, and a few exist at once.
POOL_SIZE=${POOL_SIZE:-100G}

log() { printf 'csi-sanity.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (loop devices, mkfs, mounts)"
for tool in losetup mkfs.ext4 mkfs.xfs mount umount findmnt; do
	command -v "$tool" >/dev/null || die "$tool is missing; run hack/install-deps.sh"
done

mkdir -p "$out/bin"
log "building flashpv and csi-sanity"
(cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$out/bin/flashpv" ./cmd/flashpv)
(cd "$repo/hack/tools/csi-sanity" && CGO_ENABLED=0 go build -trimpath \
	-ldflags "-X main.VERSION=$(go list -m -f '{{.Version}}' github.com/kubernetes-csi/csi-test/v5)" \
	-o "$out/bin/csi-sanity" github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity)

work=$(mktemp -d /tmp/flashpv-csi-sanity.XXXXXX)
state=$work/state   # the pool filesystem; the driver's default pool is in it
kubelet=$work/kubelet
sock=$work/csi.sock
driver_pid=""

# loops_under DIR: loop devices whose backing file is below DIR.
loops_under() {
	losetup -n -l -O NAME,BACK-FILE 2>/dev/null | awk -v d="$1/" 'index($2, d) == 1 { print $1 }'
}
# mounts_under DIR: mount points below DIR, deepest first.
mounts_under() {
	findmnt -rn -o TARGET | awk -v d="$1/" 'index($0, d) == 1' | sort -r
}

stop_driver() {
	[ -n "$driver_pid" ] || return 0
	kill -TERM "$driver_pid" 2>/dev/null || true
	for _ in $(seq 50); do
		kill -0 "$driver_pid" 2>/dev/null || break
		sleep 0.2
	done
	kill -KILL "$driver_pid" 2>/dev/null || true
	wait "$driver_pid" 2>/dev/null || true
	driver_pid=""
}

cleanup() {
	local rc=$?
	set +e
	stop_driver
	# Volumes first (their mounts under the kubelet dir, their loop devices on
	# images in the pool), then the pool filesystem and its loop device.
	for m in $(mounts_under "$kubelet"); do umount "$m" || umount -l "$m"; done
	for l in $(loops_under "$state"); do losetup -d "$l"; done
	if mountpoint -q "$state"; then umount "$state" || umount -l "$state"; fi
	for l in $(loops_under "$work"); do losetup -d "$l"; done
	rm -rf "$work"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "pool filesystem: $POOL_SIZE sparse ext4 on a loop device"
mkdir -p "$state" "$kubelet/sanity"
truncate -s "$POOL_SIZE" "$work/pool.img"
# Few inodes: the pool holds a few files per volume, and small inode tables
# keep the sparse file small (no lazy zeroing of gigabytes of tables).
mkfs.ext4 -q -F -m0 -N 4096 -E nodiscard "$work/pool.img"
pool_dev=$(losetup --find --show "$work/pool.img")
mount "$pool_dev" "$state"

# Growing a mounted ext4 (csi-sanity's NodeExpandVolume after publish) needs
# CAP_SYS_RESOURCE, which flashpv's DaemonSet has and some sandboxes lack;
# without it, Mount volumes are xfs (grows online without it).
fstype_flag=()
cap_eff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
if [ $(( 0x$cap_eff >> 24 & 1 )) -eq 0 ]; then
	log "no CAP_SYS_RESOURCE here: Mount volumes are xfs, not the default ext4"
	fstype_flag=(--default-fstype xfs)
fi

log "starting flashpv (default flags; socket, node ID and directories in $work)"
# The health endpoint's default port may be taken (a local cluster's
# flashpv): any free port serves the same purpose here.
"$out/bin/flashpv" --endpoint "unix://$sock" --node-id csi-sanity-node \
	--state-dir "$state" --kubelet-dir "$kubelet" --health-address 127.0.0.1:0 \
	"${fstype_flag[@]}" >"$out/flashpv.log" 2>&1 &
driver_pid=$!
# Up to a minute: on a loaded machine opening the pool can be slow.
for _ in $(seq 600); do
	[ -S "$sock" ] && break
	kill -0 "$driver_pid" 2>/dev/null || { cat "$out/flashpv.log" >&2; die "flashpv exited"; }
	sleep 0.1
done
[ -S "$sock" ] || die "flashpv did not open $sock"

failed=()
for at in "${access_types[@]}"; do
	log "csi-sanity, access type $at (log: $out/$at.log)"
	# shellcheck disable=SC2086 # CSI_SANITY_FLAGS is a list of flags
	if "$out/bin/csi-sanity" --csi.endpoint "unix://$sock" \
		--csi.mountdir "$kubelet/sanity/target" --csi.stagingdir "$kubelet/sanity/staging" \
		--csi.testvolumeaccesstype "$at" --ginkgo.junit-report "$out/junit-$at.xml" --ginkgo.no-color \
		${CSI_SANITY_FLAGS:-} >"$out/$at.log" 2>&1; then
		result=passed
	else
		result=FAILED
		failed+=("$at")
		grep -E '^\s*\[FAIL\]' "$out/$at.log" | sort -u >&2 || true
	fi
	log "$at: $result: $(grep -E '^(Passed|Ran|FAIL!|SUCCESS!)' "$out/$at.log" | tr '\n' ' ')"
done

# csi-sanity deletes what it made; nothing of it may stay behind.
leaked=$(mounts_under "$kubelet"; loops_under "$state")
[ -z "$leaked" ] || { log "left behind after the runs:"; echo "$leaked" >&2; failed+=(leaks); }
stop_driver
[ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]} (flashpv's log: $out/flashpv.log)"
log "all passed: ${access_types[*]}"
