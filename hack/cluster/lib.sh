# shellcheck shell=bash disable=SC2034
# Common settings of the local cluster harness. Sourced, not run.
#
# The cluster is one control plane and NODES kubelet "machines" on this host,
# each a set of Linux namespaces owned by a holder process (`sleep infinity`
# started by unshare): the control plane has its own network namespace; each
# node has its own network, mount and UTS namespaces, its own containerd,
# kubelet (own cgroup root) and kube-proxy, and its own pool filesystem. A
# bridge joins them. NODES=1 runs the same way as NODES=3.
#
# Everything lives in $STATE (default _output/cluster in the repository):
# $STATE/<machine>/ for cp and node-1..node-N (pid files, logs, configs, and
# for nodes var-lib, run and log, bound over /var/lib, /run and /var/log
# inside the node, and pool.img). Binaries are cached in $BIN (_output/bin).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${STATE:-$REPO/_output/cluster}
BIN=${BIN:-$REPO/_output/bin}
K8S_VERSION=v1.37.2
# How many nodes up.sh starts (default 1); unset, a cluster that is up keeps
# the count it has.
if [ -z "${NODES:-}" ] && [ -s "$STATE/nodes" ]; then NODES=$(wc -l <"$STATE/nodes"); fi
NODES=${NODES:-1}
# Pool filesystem size per node, in order (POOL_SIZES="3G 6G 10G"). Default:
# 10G for a single node; else 3G, 6G, 10G, 14G, 18G ... so capacities differ
# (the smallest still holds a 1 GiB volume grown to 2 GiB).
POOL_SIZES=${POOL_SIZES:-}
# The controller manager's API request rate, QPS/burst (e.g. 100/200); empty:
# Kubernetes' defaults (20/30). Its persistent-volume controller binds every
# provisioned claim through it.
CONTROLLER_MANAGER_QPS=${CONTROLLER_MANAGER_QPS:-}
BRIDGE=flashpv0
BRIDGE_IP=10.77.0.1
CP_IP=10.77.0.10
SERVICE_CIDR=10.79.0.0/16
CLUSTER_CIDR=10.78.0.0/16
export KUBECONFIG=$STATE/kc/admin.kubeconfig
export PATH=$BIN:$PATH
# The output of a failed run: every machine's daemon logs (logs.sh).
LOGS_OUT=$REPO/_output/cluster-logs

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# node_names: node-1 .. node-N of the cluster that is up, else of $NODES.
node_names() {
	if [ -s "$STATE/nodes" ]; then cat "$STATE/nodes"; else seq -f 'node-%g' 1 "$NODES"; fi
}
node_index() { echo "${1#node-}"; }
node_ip() { echo "10.77.0.$((10 + $(node_index "$1")))"; }
pod_cidr() { echo "10.78.$(node_index "$1").0/24"; }
pool_size() {
	local i; i=$(node_index "$1")
	if [ -n "$POOL_SIZES" ]; then
		# shellcheck disable=SC2086
		set -- $POOL_SIZES
		[ "$i" -le $# ] || die "POOL_SIZES has $# sizes, node-$i needs one"
		echo "${!i}"
	elif [ "$(node_names | wc -l)" = 1 ]; then echo 10G
	elif [ "$i" -le 2 ]; then echo "$((3 * i))G"
	else echo "$((10 + 4 * (i - 3)))G"; fi
}
# containerd's socket of a node, as seen from the host.
containerd_sock() { echo "$STATE/$1/run/containerd/containerd.sock"; }
# The cgroup directories of a node: one per v1 hierarchy, or one on cgroup v2.
cgroup_dirs() {
	if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
		echo "/sys/fs/cgroup/flashpv-$1"
	else
		local h
		for h in /sys/fs/cgroup/*/; do
			mountpoint -q "$h" && echo "${h}flashpv-$1"
		done
	fi
}

# Processes are recorded as "PID STARTTIME" so that a PID reused after a
# reboot or a crash is never taken for ours.
starttime() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; set -- $s; echo "${20}"; }
# pid_of MACHINE NAME: the PID of a process we started, if it still runs.
pid_of() {
	local f=$STATE/$1/$2.pid pid st
	[ -f "$f" ] || return 1
	read -r pid st <"$f" || return 1
	[ -n "$pid" ] && [ "$(starttime "$pid")" = "$st" ] && echo "$pid"
}
alive() { pid_of "$1" "$2" >/dev/null; }
record_pid() { echo "$3 $(starttime "$3")" >"$STATE/$1/$2.pid"; }

# make_machine NAME UNSHARE_FLAGS...: a holder in new namespaces, its veth on
# the bridge, addresses and routes. Idempotent.
make_machine() {
	local m=$1; shift
	mkdir -p "$STATE/$m/logs"
	if ! alive "$m" holder; then
		rm -f "$STATE/$m/holder.started"
		# The holder writes its own PID (the shell's, which exec keeps).
		(close_fds; exec setsid sh -c 'echo $$ >"$0"; exec unshare "$@" -- sleep infinity' \
			"$STATE/$m/holder.started" "$@") </dev/null >/dev/null 2>&1 &
		wait_for 10 "the holder of $m" test -s "$STATE/$m/holder.started"
		local pid; pid=$(cat "$STATE/$m/holder.started")
		wait_for 10 "the namespaces of $m" test "$(readlink "/proc/$pid/ns/net")" != "$(readlink /proc/self/ns/net)"
		record_pid "$m" holder "$pid"
		# Its mount namespace's ID: down.sh finds the node's processes by it,
		# even when the holder itself is gone.
		readlink "/proc/$pid/ns/mnt" >"$STATE/$m/mntns"
		ip link del "fpv-$m" 2>/dev/null || true
		ip link add "fpv-$m" type veth peer name eth0 netns "$pid"
		ip link set "fpv-$m" master "$BRIDGE" up
	fi
	local ip other
	if [ "$m" = cp ]; then ip=$CP_IP; else ip=$(node_ip "$m"); fi
	on "$m" sh -ec "
		ip link set lo up
		ip addr replace $ip/24 dev eth0
		ip link set eth0 up
		ip route replace default via $BRIDGE_IP"
	# Each node's pod network, routed to that node (no overlay, no NAT).
	for other in $(node_names); do
		[ "$other" = "$m" ] || on "$m" ip route replace "$(pod_cidr "$other")" via "$(node_ip "$other")"
	done
}

# on MACHINE CMD...: run CMD inside a machine (cp: its network namespace;
# a node: its network, mount and UTS namespaces).
on() {
	local m=$1 pid; shift
	pid=$(pid_of "$m" holder) || die "$m is not running"
	if [ "$m" = cp ]; then nsenter -t "$pid" -n -- "$@"
	else nsenter -t "$pid" -n -m -u -- "$@"; fi
}

# close_fds: closes every file descriptor above 2 of the calling (sub)shell.
# A daemon must not keep what its starter had open: `flock LOCK up.sh`
# would otherwise leave LOCK held by every daemon of the cluster for as
# long as it runs, and the next `flock LOCK ...` would wait forever.
close_fds() {
	local fd
	for fd in /proc/$BASHPID/fd/*; do
		fd=${fd##*/}
		[ "$fd" -gt 2 ] && eval "exec $fd>&-"
	done
	return 0
}

# start_on MACHINE NAME CMD...: a daemon inside a machine, its log in
# $STATE/MACHINE/logs/NAME.log. Nothing happens when it already runs.
start_on() {
	local m=$1 name=$2 pid; shift 2
	alive "$m" "$name" && return 0
	pid=$(pid_of "$m" holder) || die "$m is not running"
	local ns=(-n)
	[ "$m" = cp ] || ns=(-n -m -u)
	# A session of its own: the cluster outlives the shell (and the process
	# group) that brought it up, whatever ends that shell's jobs. The
	# subshell is not a group leader, so setsid keeps its PID.
	(close_fds; exec setsid nohup nsenter -t "$pid" "${ns[@]}" -- "$@") >>"$STATE/$m/logs/$name.log" 2>&1 </dev/null &
	record_pid "$m" "$name" $!
}

# stop_on MACHINE NAME...: SIGTERM, SIGKILL after 15 s; only our PIDs.
stop_on() {
	local m=$1 n p pids=""; shift
	for n in "$@"; do
		if p=$(pid_of "$m" "$n"); then pids="$pids $p"; fi
		rm -f "$STATE/$m/$n.pid"
	done
	[ -n "$pids" ] || return 0
	kill $pids 2>/dev/null || true
	for _ in $(seq 1 30); do kill -0 $pids 2>/dev/null || return 0; sleep 0.5; done
	kill -9 $pids 2>/dev/null || true
}

# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds.
wait_for() {
	local secs=$1 what=$2; shift 2
	local end=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what (logs in $STATE/*/logs)"
		sleep 0.5
	done
}

# flashpv_ref_tree COMMIT: this repository's files as of COMMIT (an earlier
# flashpv, for the upgrade test), extracted with git archive into
# $REPO/_output/src/flashpv-<12 hex> once, so no worktree is registered in
# the shared .git; prints the directory. flashpv_ref_tag COMMIT: those 12 hex
# digits, the tag of its binary and image.
flashpv_ref_tag() {
	git -C "$REPO" rev-parse --verify --quiet "$1^{commit}" >/dev/null || die "no commit $1 in $REPO"
	git -C "$REPO" rev-parse --short=12 "$1^{commit}"
}
flashpv_ref_tree() {
	local tag dir
	tag=$(flashpv_ref_tag "$1") || return 1
	dir=$REPO/_output/src/flashpv-$tag
	if [ ! -e "$dir/.complete" ]; then
		rm -rf "$dir"
		mkdir -p "$dir"
		git -C "$REPO" archive "$tag" | tar -x -C "$dir"
		touch "$dir/.complete"
	fi
	echo "$dir"
}
