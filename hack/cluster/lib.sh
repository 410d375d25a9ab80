# shellcheck shell=bash disable=SC2034
# Common settings of the local cluster harness. Sourced, not run.
# Everything lives in $STATE (default _output/cluster in the repository);
# binaries are cached in $BIN (default _output/bin).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
STATE=${STATE:-$REPO/_output/cluster}
BIN=${BIN:-$REPO/_output/bin}
K8S_VERSION=v1.37.2
NODE_NAME=${NODE_NAME:-$(hostname | tr "[:upper:]" "[:lower:]")}
# The node's address: this machine's own, never anything off it.
NODE_IP=${NODE_IP:-$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1)}
SERVICE_CIDR=10.96.0.0/12
POD_CIDR=10.244.0.0/24
KUBELET_DIR=/var/lib/kubelet
CONTAINERD_SOCK=$STATE/run/containerd/containerd.sock
export KUBECONFIG=$STATE/kc/admin.kubeconfig
export PATH=$BIN:$PATH

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# alive NAME: the process we started under that name still runs.
alive() { [ -f "$STATE/run/$1.pid" ] && kill -0 "$(cat "$STATE/run/$1.pid")" 2>/dev/null; }

# start NAME CMD...: run CMD in the background with its log in $STATE/logs.
start() {
	local name=$1; shift
	if alive "$name"; then return; fi
	mkdir -p "$STATE/logs" "$STATE/run"
	nohup "$@" >>"$STATE/logs/$name.log" 2>&1 &
	echo $! >"$STATE/run/$name.pid"
}

# stop NAME...: SIGTERM what we started, SIGKILL after 15 s. Only our PIDs.
stop() {
	local pids="" n p
	for n in "$@"; do
		if alive "$n"; then pids="$pids $(cat "$STATE/run/$n.pid")"; fi
		rm -f "$STATE/run/$n.pid"
	done
	[ -n "$pids" ] || return 0
	kill $pids 2>/dev/null || true
	for _ in $(seq 1 30); do kill -0 $pids 2>/dev/null || return 0; sleep 0.5; done
	for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
}

# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds.
wait_for() {
	local secs=$1 what=$2; shift 2
	local end=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what (logs in $STATE/logs)"
		sleep 0.5
	done
}
