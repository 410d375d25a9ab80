#!/usr/bin/env bash
# Stops the local cluster and leaves the machine as up.sh found it, also
# after a failed or interrupted up.sh, and when run twice. Only what the
# harness started is killed: the PIDs it recorded, and the processes inside
# its nodes (in a node's cgroups: containers; in a node's mount namespace:
# containerd's shims). With the last process of a node gone, the kernel drops
# the node's mounts (its pool filesystem, volumes, netns pins) and its veth.
# Then: the loop devices of the nodes' volumes and pools, the cgroups, the
# bridge, the kernel settings recorded in machine.saved, and $STATE itself
# (its logs are kept in _output/cluster-logs first). Never removes state that
# something still uses: run it again then.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root"
[ -d "$STATE" ] || exit 0
"$(dirname "$0")/install-deps.sh"
"$(dirname "$0")/logs.sh" "the last cluster's logs, kept by down.sh" 2>/dev/null || true

# The nodes whose directories exist, whatever NODES says now.
nodes=$(find "$STATE" -mindepth 1 -maxdepth 1 -type d -name 'node-*' -printf '%f\n' | sort)

# down_node NODE: its daemons, then whatever still runs in its cgroups or its
# mount namespace, then its holder.
down_node() {
	local n=$1 h p pids dirs
	stop_on "$n" kubelet kube-proxy
	stop_on "$n" containerd
	dirs=$(cgroup_dirs "$n")
	h=$(pid_of "$n" holder) || h=""
	for _ in 1 2 3 4 5; do
		pids=""
		for d in $dirs; do
			[ -d "$d" ] || continue
			[ ! -e "$d/cgroup.kill" ] || echo 1 >"$d/cgroup.kill" 2>/dev/null || true
			pids="$pids $(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ' || true)"
		done
		if [ -s "$STATE/$n/mntns" ] && [ "$(cat "$STATE/$n/mntns")" != "$(readlink /proc/self/ns/mnt)" ]; then
			# Every process in the node's mount namespace but the holder (one
			# find for all: no fork per process).
			pids="$pids $(find /proc/[0-9]*/ns -maxdepth 1 -name mnt -lname "$(sed 's/[][]/\\&/g' "$STATE/$n/mntns")" 2>/dev/null |
				cut -d/ -f3 | grep -vx "${h:-none}" | tr '\n' ' ' || true)"
		fi
		[ -n "${pids// /}" ] || break
		kill -9 $pids 2>/dev/null || true
		sleep 1
	done
	if [ -n "$h" ]; then
		kill -9 "$h" 2>/dev/null || true
		for _ in $(seq 1 20); do kill -0 "$h" 2>/dev/null || break; sleep 0.25; done
	fi
	rm -f "$STATE/$n/holder.pid"
}
for n in $nodes; do down_node "$n" & done
wait
log "node processes stopped"

# Loop devices: first those of flashpv's volumes (files on a node's pool
# filesystem, so their backing device is that pool's loop device; the same
# path and even inode exist on every node), then the pools' own.
for n in $nodes; do
	[ -f "$STATE/$n/pool.img" ] || continue
	ino=$(stat -c %i "$STATE/$n/pool.img")
	dev=$(stat -c '%Hd:%Ld' "$STATE/$n/pool.img")
	for pool in $(losetup -n -O NAME,BACK-INO,BACK-MAJ:MIN | awk -v i="$ino" -v d="$dev" '$2 == i && $3 == d {print $1}'); do
		mm=$(lsblk -dno MAJ:MIN "$pool" | tr -d ' ')
		for _ in 1 2 3; do
			vols=$(losetup -n -O NAME,BACK-MAJ:MIN | awk -v mm="$mm" '$2 == mm {print $1}')
			[ -n "$vols" ] || break
			for v in $vols; do losetup -d "$v" 2>/dev/null || true; done
			sleep 0.5
		done
		losetup -d "$pool" 2>/dev/null || true
	done
done

stop_on cp kube-scheduler kube-controller-manager kube-apiserver
stop_on cp etcd
if h=$(pid_of cp holder); then
	kill -9 "$h" 2>/dev/null || true
	rm -f "$STATE/cp/holder.pid"
fi
ip link del "$BRIDGE" 2>/dev/null || true
log "control plane stopped"

for n in $nodes; do
	for _ in $(seq 1 10); do
		left=""
		for d in $(cgroup_dirs "$n"); do
			[ -d "$d" ] || continue
			left=1
			find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		done
		[ -n "$left" ] || break
		sleep 0.5
	done
done

# Never remove state that something still uses.
for n in $nodes; do
	[ -f "$STATE/$n/pool.img" ] || continue
	ino=$(stat -c %i "$STATE/$n/pool.img")
	dev=$(stat -c '%Hd:%Ld' "$STATE/$n/pool.img")
	if losetup -n -O BACK-INO,BACK-MAJ:MIN | awk -v i="$ino" -v d="$dev" '$1 == i && $2 == d {f=1} END {exit !f}'; then
		die "the pool of $n is still attached to a loop device; not removing $STATE (run make cluster-down again)"
	fi
	for d in $(cgroup_dirs "$n"); do
		[ ! -d "$d" ] || die "cgroup $d is still there; not removing $STATE (run make cluster-down again)"
	done
done
if awk -v s="$STATE/" 'index($5, s) == 1 {f=1} END {exit !f}' /proc/self/mountinfo; then
	die "something is mounted below $STATE; not removing it"
fi

# The machine's own settings, as they were before the first bring-up.
if [ -f "$STATE/machine.saved" ]; then
	while read -r kind a b; do
		case "$kind $b" in
		"sysctl "*) sysctl -qw "$a=$b" 2>/dev/null || true ;;
		"module absent") modprobe -r "$a" 2>/dev/null || true ;;
		"subtree_control "*)
			for c in $(cat "$a/cgroup.subtree_control"); do
				case ",$b," in *",$c,"*) ;; *) echo "-$c" >"$a/cgroup.subtree_control" 2>/dev/null || true ;; esac
			done
			;;
		esac
	done <"$STATE/machine.saved"
fi
rm -rf "$STATE"
log "cluster down; machine restored (logs of the last cluster in $LOGS_OUT)"
