#!/usr/bin/env bash
# Installs what the local cluster needs from Debian: containerd, runc and the
# CNI plugins (Kubernetes components and etcd are built from the Go module
# proxy by build.sh), the networking tools the kubelet and kube-proxy call,
# openssl for the PKI, and busybox-static for the workload image. The
# packages' own services are never started: up.sh runs its own processes.
set -euo pipefail
need=()
for tool in containerd:containerd runc:runc /usr/lib/cni/bridge:containernetworking-plugins \
	iptables:iptables conntrack:conntrack ebtables:ebtables ethtool:ethtool openssl:openssl \
	/bin/busybox:busybox-static modprobe:kmod curl:curl ip:iproute2; do
	t=${tool%%:*}
	if [ "${t#/}" != "$t" ]; then [ -e "$t" ] && continue; else command -v "$t" >/dev/null 2>&1 && continue; fi
	need+=("${tool##*:}")
done
[ ${#need[@]} -eq 0 ] && exit 0
[ "$(id -u)" = 0 ] || { echo "install-deps: missing ${need[*]}; run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
# Keep package scripts from starting daemons on machines with an init system.
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod +x /usr/sbin/policy-rc.d
	trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
