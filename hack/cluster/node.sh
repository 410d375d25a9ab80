#!/usr/bin/env bash
# Stops and starts one node of the local cluster, for the node loss tests
# (test/e2e/nodeloss_test.go):
#   node.sh stop NODE   the node is gone as far as the cluster can tell: its
#                       kubelet, kube-proxy and containerd stop, and every
#                       process in its cgroups and its mount namespace (its
#                       pods, flashpv among them) is killed. Its machine
#                       stays: the namespaces and the pool filesystem with
#                       its volumes, as a powered-off server keeps its disks.
#   node.sh start NODE  brings its daemons back (up.sh leaves what runs
#                       alone); the kubelet registers the Node again.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root"
cmd=${1:-} n=${2:-}
grep -qx -- "$n" "$STATE/nodes" 2>/dev/null || die "usage: node.sh stop|start NODE (a node of the cluster that is up)"
case $cmd in
stop)
	stop_on "$n" kubelet kube-proxy
	stop_on "$n" containerd
	h=$(pid_of "$n" holder) || die "$n is not running"
	for _ in 1 2 3 4 5; do
		pids=""
		for d in $(cgroup_dirs "$n"); do
			[ -d "$d" ] || continue
			pids="$pids $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ' || true)"
		done
		if [ -s "$STATE/$n/mntns" ]; then
			pids="$pids $(find /proc/[0-9]*/ns -maxdepth 1 -name mnt -lname "$(sed 's/[][]/\\&/g' "$STATE/$n/mntns")" 2>/dev/null |
				cut -d/ -f3 | grep -vx "$h" | tr '\n' ' ' || true)"
		fi
		[ -n "${pids// /}" ] || break
		kill -9 $pids 2>/dev/null || true
		sleep 1
	done
	log "$n stopped; its machine and pool filesystem stay"
	;;
start)
	NODES=$(wc -l <"$STATE/nodes") exec "$(dirname "$0")/up.sh"
	;;
*)
	die "usage: node.sh stop|start NODE"
	;;
esac
