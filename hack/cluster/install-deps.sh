#!/usr/bin/env bash
# Installs from Debian everything the local cluster harness runs or copies
# into its images, so that every make target of it (cluster-up, demo, e2e,
# conformance, cluster-down) works on a machine where nothing was installed
# before. Kubernetes, etcd and the CSI sidecars are built from the Go module
# proxy by build.sh (Go itself is a prerequisite). The packages' own services
# are never started: up.sh runs its own processes.
#
# `tools` is the one list of what the harness needs: TOOL:PACKAGE, where TOOL
# is a command looked up in PATH or an absolute path that must exist.
# hack/cluster/checktools verifies (make verify-cluster, run by .ci/run) that
# every program a hack/cluster script runs or copies is on it, or comes with
# Debian's essential packages.
set -euo pipefail
tools=(
	# containers, networking, the kubelet's and kube-proxy's helpers
	containerd:containerd ctr:containerd runc:runc
	/usr/lib/cni/bridge:containernetworking-plugins /usr/lib/cni/host-local:containernetworking-plugins
	/usr/lib/cni/portmap:containernetworking-plugins /usr/lib/cni/loopback:containernetworking-plugins
	iptables:iptables iptables-save:iptables iptables-restore:iptables
	ip6tables-save:iptables ip6tables-restore:iptables
	conntrack:conntrack ebtables:ebtables ethtool:ethtool socat:socat
	ip:iproute2 sysctl:procps modprobe:kmod curl:curl openssl:openssl
	# the nodes' mounts and pool filesystems
	mount:mount umount:mount losetup:mount awk:mawk
	# the workload image and the e2e images' userland
	/bin/busybox:busybox-static
	# what images.sh copies into the flashpv image (the Dockerfile's runtime tools)
	mkfs.ext4:e2fsprogs mke2fs:e2fsprogs e2fsck:e2fsprogs fsck.ext4:e2fsprogs
	resize2fs:e2fsprogs e2image:e2fsprogs dumpe2fs:e2fsprogs tune2fs:e2fsprogs /etc/mke2fs.conf:e2fsprogs
	mkfs.xfs:xfsprogs xfs_growfs:xfsprogs xfs_io:xfsprogs xfs_repair:xfsprogs
	btrfs:btrfs-progs mkfs.btrfs:btrfs-progs btrfstune:btrfs-progs
)
need=()
for tool in "${tools[@]}"; do
	t=${tool%%:*}
	if [ "${t#/}" != "$t" ]; then
		[ -e "$t" ] && continue
	else
		command -v "$t" >/dev/null 2>&1 && continue
	fi
	need+=("${tool##*:}")
done
[ ${#need[@]} -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
[ "$(id -u)" = 0 ] || { echo "install-deps: missing ${need[*]}; run as root" >&2; exit 1; }
echo "install-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Keep package scripts from starting daemons on machines with an init system.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
