#!/usr/bin/env bash
# Stops the local cluster and leaves the machine as up.sh found it: pods
# deleted through the API, then the kubelet, leftover containers, containerd,
# the control plane and etcd (only the PIDs up.sh recorded); then mounts, loop
# devices of the cluster's pools, network namespaces, the bridge, iptables
# chains, sysctls, and the state directory. Idempotent.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root"
[ -d "$STATE" ] || exit 0
"$(dirname "$0")/install-deps.sh"
A=$CONTAINERD_SOCK

if alive kube-apiserver && alive kubelet; then
	# Workloads first, while flashpv still runs to unpublish and unstage their
	# volumes; then flashpv itself. The kubelet tears sandboxes down (CNI).
	kubectl delete statefulsets,deployments,replicasets,daemonsets,jobs,pods --all -A \
		--field-selector metadata.namespace!=flashpv --wait=false >/dev/null 2>&1 || true
	for _ in $(seq 1 120); do
		[ -z "$(kubectl get pods -A --field-selector metadata.namespace!=flashpv -o name 2>/dev/null)" ] && break
		sleep 0.5
	done
	kubectl delete daemonsets,pods --all -n flashpv --grace-period=5 --wait=false >/dev/null 2>&1 || true
	for _ in $(seq 1 60); do
		[ "$(ctr -a "$A" -n k8s.io tasks ls -q 2>/dev/null | wc -l)" = 0 ] && break
		sleep 0.5
	done
fi
stop kubelet kube-proxy
if alive containerd; then
	for t in $(ctr -a "$A" -n k8s.io tasks ls -q 2>/dev/null); do ctr -a "$A" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
	sleep 1
	for t in $(ctr -a "$A" -n k8s.io tasks ls -q 2>/dev/null); do ctr -a "$A" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1 || true; done
fi
stop containerd
stop kube-scheduler kube-controller-manager kube-apiserver
stop etcd
log "processes stopped"

"$BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
for save in iptables-save ip6tables-save; do
	restore=${save/-save/-restore}
	if command -v "$save" >/dev/null && "$save" | grep -q KUBE-; then
		"$save" | grep -v KUBE- | "$restore" || true
	fi
done

# Mounts below the kubelet directory and the state directory, deepest first.
mounts() { awk -v a="$KUBELET_DIR" -v b="$STATE" '$5 == a || index($5, a "/") == 1 || index($5, b "/") == 1 {print $5}' /proc/self/mountinfo | sort -ru; }
for _ in 1 2 3; do
	for m in $(mounts); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
done
# Loop devices of the cluster's pool images. Their paths as losetup shows them
# are the container's, so they are matched by inode and device.
ids=$(find "$STATE/pool" -xdev -type f -name '*.img' -exec stat -c '%i %Hd:%Ld' {} + 2>/dev/null || true)
if [ -n "$ids" ]; then
	losetup -n -O NAME,BACK-INO,BACK-MAJ:MIN 2>/dev/null | while read -r dev ino majmin; do
		if grep -qx "$ino $majmin" <<<"$ids"; then losetup -d "$dev" 2>/dev/null || true; fi
	done
fi
for ns in /var/run/netns/cni-*; do
	[ -e "$ns" ] || continue
	umount "$ns" 2>/dev/null || true
	rm -f "$ns"
done
ip link del cni0 2>/dev/null || true
# Never remove directories that still have something mounted below them.
left=$(mounts | wc -l)
[ "$left" = 0 ] || die "$left mounts left below $KUBELET_DIR or $STATE; not removing anything"

if [ -f "$STATE/machine.saved" ]; then
	while read -r kind a b; do
		case "$kind $b" in
		"sysctl "*) sysctl -qw "$a=$b" 2>/dev/null || true ;;
		"module absent") modprobe -r "$a" 2>/dev/null || true ;;
		"dir absent") rm -rf "$a" ;;
		esac
	done <"$STATE/machine.saved"
fi
rm -rf "$STATE"
log "cluster down; machine restored"
