#!/usr/bin/env bash
# Kubernetes' own storage conformance for flashpv: the External.Storage tests of
# e2e.test (k8s.io/kubernetes v1.37.2, the cluster's version) against the local
# cluster (make conformance: three nodes), with the driver as
# test/e2e/testdriver.yaml declares it.
# Brings the cluster up and deploys flashpv as `make e2e` does, and leaves both
# running (`make cluster-down`). Root, from anywhere; runs from the repository.
#
# Results in _output/conformance: per pass (spread: every test, on every
# node; pinned, on request: the snapshot tests with every pod on one node)
# e2e.log (everything) and junit_01.xml;
# summary.txt (counts and time), flashpv.log, snapshot-controller.log and
# kubelet-<node>.log.
#   CONFORMANCE_PROCS=N   parallel ginkgo processes (default 2: most of a test
#                         is waiting for pods and volumes, not CPU); 1 runs
#                         e2e.test alone, without the ginkgo CLI
#   CONFORMANCE_TIMEOUT   the whole suite's timeout (default 3h)
#   CONFORMANCE_FOCUS     narrows the run (a regex ANDed with External.Storage)
#   CONFORMANCE_PASSES    which passes run (default "spread", below)
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root"
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$REPO"
PROCS=${CONFORMANCE_PROCS:-2}
PASSES=${CONFORMANCE_PASSES:-spread}
TIMEOUT=${CONFORMANCE_TIMEOUT:-3h}
REPORT=$REPO/_output/conformance

# The build first: it wants both cores, the cluster would take them.
"$HERE/build.sh" e2e.test
"$HERE/up.sh"
FLASHPV_RESTART=1 "$HERE/deploy.sh"
# The e2e suite's images, under the names test/e2e/repo-list.yaml gives them.
"$HERE/images.sh" e2e
for n in $(node_names); do
	for t in "$STATE"/images/e2e-*.tar; do
		ctr -a "$(containerd_sock "$n")" -n k8s.io images import "$t" >/dev/null
	done
done
log "e2e images imported"

# What is not run, and why. Everything else the suite defines for the driver's
# declared capabilities runs; suites and patterns for undeclared capabilities
# (group snapshots, volume attributes classes, RWX, ROX, mount options,
# inline CSI volumes, volume limits, ReadWriteOncePod, SELinux mounts, stress
# and performance options) and tests that need a second node or topology skip
# themselves and are counted as skipped in the summary.
skips=(
	# Restart or stop the kubelet, or cut a node's network, through SSH and
	# systemd (with -provider=skeleton most skip themselves for want of an SSH
	# key): this cluster's kubelet is a process of up.sh and no SSH reaches the
	# node.
	'\[Disruptive\]'
	# Deploys hello-populator and volume-data-source-validator from
	# registry.k8s.io/sig-storage, the validator with imagePullPolicy Always:
	# this cluster has no registry and no image of either. (It tests
	# Kubernetes' volume populator machinery; flashpv takes no part beyond
	# provisioning, which every other test covers.)
	'should provision storage with any volume data source'
)
# Limits of the machine rather than of the cluster or the driver, probed here.
# Growing a mounted ext4 needs CAP_SYS_RESOURCE (README, Limits). flashpv
# grows a volume's image in NodeExpandVolume, which the kubelet calls only
# after it has staged and published the volume for the new pod, so without
# the capability an ext4 PVC's filesystem grows at the pod's next start, not
# this one, and these tests wait 10 minutes for it (the class's default
# fsType is ext4). Every growth of xfs and Block runs, and so does the
# refusal to grow a class that does not allow it.
# shellcheck disable=SC2016 # $k and $v are the container shell's
capeff=$(kubectl -n flashpv exec daemonset/flashpv-node -c flashpv -- \
	sh -c 'while read -r k v; do [ "$k" = CapEff: ] && echo "$v"; done </proc/1/status' 2>/dev/null || true)
if [ -z "$capeff" ]; then
	log "could not read flashpv's capabilities; the online growth of ext4 runs"
elif [ $((0x$capeff >> 24 & 1)) = 0 ]; then
	log "flashpv's container lacks CAP_SYS_RESOURCE (CapEff $capeff): skipping the online growth of ext4"
	skips+=('\[Testpattern: Generic Ephemeral-volume \(default fs\) \(late-binding\)\] ephemeral should support expansion of pvcs created for ephemeral pvcs')
	skips+=('\[Testpattern: Dynamic PV \((default fs|ext4)\)(\(allowExpansion\))?\] volume-expand (should resize volume when PVC is edited|Verify if offline PVC expansion works)')
fi
# The suite's host commands run in a privileged pod as
# `nsenter --mount=/rootfs/proc/1/ns/mnt -- sh -c ...`; where even root may not
# open PID 1's namespaces (a sandboxed machine), every such test fails.
if ! nsenter --mount=/proc/1/ns/mnt -- true 2>/dev/null; then
	log "PID 1's mount namespace is closed to root here: skipping the tests that run host commands through it"
	skips+=('volumeMode should not mount / map unused volumes in a pod')
fi
# Snapshots: distributed snapshotting hands a VolumeSnapshotContent to the
# csi-snapshotter of the node the snapshot-controller labels it with, which
# it does only for the contents it creates itself. The suite's
# pre-provisioned contents carry no such label, so no csi-snapshotter ever
# takes them (a user importing a snapshot adds
# snapshot.storage.kubernetes.io/managed-by=<node>).
skips+=('\[Testpattern: Pre-provisioned Snapshot')
# A clone of a Block volume while a pod has it published: flashpv refuses
# (FailedPrecondition, "stop the pod and retry") unless the pool copies at
# one instant (XFS with reflink, btrfs); this cluster's pools are ext4, where
# the copy would be torn by the pod's writes. The same test with Filesystem
# volumes runs (a staged filesystem is frozen for the copy).
skips+=('\[Testpattern: Dynamic PV \(block volmode\)\] multiVolume should concurrently access the volume and its clone')

# The pass "spread" runs every selected test on every node, snapshots and
# clones included: a restore or clone whose pod the suite starts on another
# node than its source's is copied there over flashpv's transfer. The pass
# "pinned" (CONFORMANCE_PASSES="pinned spread") runs the snapshot and clone
# tests (names matching $snap) a second time with every test pod on one
# node (ClientNodeName: the last node, the biggest pool), the only way they
# ran before restores could cross nodes.
snap='[Ss]napshot|pvc data source|its clone'
user=${CONFORMANCE_FOCUS:-.}
pinned_node=$(node_names | tail -n1)
rm -rf "$REPORT"
mkdir -p "$REPORT/spread" "$REPORT/pinned"
{ cat test/e2e/testdriver.yaml; echo "ClientNodeName: $pinned_node"; } >"$REPORT/pinned/testdriver.yaml"
export KUBE_TEST_REPO_LIST=$REPO/test/e2e/repo-list.yaml

# pass NAME TESTDRIVER FOCUS SKIP: one ginkgo run; log, JUnit report and
# counts in $REPORT/NAME.
pass() {
	local name=$1 driver=$2 focus=$3 skip=$4 dir=$REPORT/$1
	local e2e_args=(
		-kubeconfig="$KUBECONFIG"
		# No cloud: "skeleton" (the default) makes provider- and SSH-bound
		# tests skip themselves.
		-provider=skeleton
		-storage.testdriver="$driver"
		# testdriver.yaml's StorageClass.FromFile is relative to this.
		-repo-root="$REPO"
		-kubectl-path="$BIN/kubectl"
		-report-dir="$dir"
	)
	local ginkgo_args=(
		--focus="$focus"
		--skip="$skip"
		--timeout="$TIMEOUT"
		--poll-progress-after=5m
		--poll-progress-interval=1m
		--no-color
		--v
	)
	log "pass $name: External.Storage ($PROCS processes, timeout $TIMEOUT); log in $dir/e2e.log"
	set +e
	if [ "$PROCS" -gt 1 ]; then
		# GO111MODULE=off: the CLI compares its version with `go list -m
		# github.com/onsi/ginkgo/v2` run beside the binary, which finds
		# flashpv's own go.mod, not the tools module e2e.test and ginkgo were
		# built from (both v2.32.0); off, that check is skipped instead of
		# warning wrongly.
		GO111MODULE=off "$BIN/ginkgo" --procs="$PROCS" "${ginkgo_args[@]}" "$BIN/e2e.test" -- "${e2e_args[@]}"
	else
		"$BIN/e2e.test" "${ginkgo_args[@]/#--/-ginkgo.}" "${e2e_args[@]}"
	fi 2>&1 | tee "$dir/e2e.log" |
		grep --line-buffered -E '^(External Storage|• |S \[SKIPPED\]|\[FAIL\]|Ran [0-9]+ of|(SUCCESS|FAIL)!)'
	local rc=${PIPESTATUS[0]}
	set -e
	# Ginkgo's "Skipped" also counts the thousands of specs outside the
	# focus; the specs the focus and skip list selected that skipped
	# themselves (an undeclared capability, one node) are the selected ones
	# that neither passed nor failed.
	local sel counts
	sel=$(sed -n 's/^Will run \([0-9]*\) of .*/\1/p' "$dir/e2e.log" | head -n1)
	counts=$(sed -n 's/^\(SUCCESS\|FAIL\)!.* -- \([0-9]*\) Passed | \([0-9]*\) Failed.*/\2 \3/p' "$dir/e2e.log" | tail -n1)
	if [ -z "$sel" ] || [ -z "$counts" ]; then
		log "no ginkgo summary in $dir/e2e.log"
		summary_ok=
	else
		selected=$((selected + sel)) passed=$((passed + ${counts% *})) failed=$((failed + ${counts#* }))
		echo "$name: $sel selected, ${counts% *} passed, ${counts#* } failed" >>"$REPORT/summary.txt"
	fi
	[ "$rc" = 0 ] || status=$rc
}

start=$SECONDS
selected=0 passed=0 failed=0 status=0 summary_ok=1
skip=$(IFS='|'; echo "${skips[*]}")
for p in $PASSES; do
	case $p in
	pinned) pass pinned "$REPORT/pinned/testdriver.yaml" "External.Storage.*(($snap).*($user)|($user).*($snap))" "$skip" ;;
	spread) pass spread "$REPO/test/e2e/testdriver.yaml" "External.Storage.*($user)" "$skip" ;;
	*) die "unknown pass $p in CONFORMANCE_PASSES" ;;
	esac
done
took="$(((SECONDS - start) / 60))m$(((SECONDS - start) % 60))s"

# The driver's side of the story, failed or not.
kubectl -n flashpv logs daemonset/flashpv-node --all-containers --prefix --tail=-1 >"$REPORT/flashpv.log" 2>&1 || true
kubectl -n kube-system logs deployment/snapshot-controller --tail=-1 >"$REPORT/snapshot-controller.log" 2>&1 || true
for n in $(node_names); do cp "$STATE/$n/logs/kubelet.log" "$REPORT/kubelet-$n.log" 2>/dev/null || true; done
[ "$status" = 0 ] || "$HERE/logs.sh" "make conformance failed"

if [ -n "$summary_ok" ]; then
	echo "External.Storage: $selected selected, $passed passed, $failed failed, $((selected - passed - failed)) skipped themselves; ${#skips[@]} skip patterns; $PROCS processes; $took" |
		tee -a "$REPORT/summary.txt"
fi
log "External.Storage finished in $took, exit $status; results in $REPORT"
exit "$status"
