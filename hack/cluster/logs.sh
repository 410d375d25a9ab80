#!/usr/bin/env bash
# Collects the logs of every machine's daemons (etcd, the control plane, and
# each node's containerd, kubelet and kube-proxy), each node's pods' logs,
# mount table and containers, into _output/cluster-logs, replacing what an
# earlier run left there. Run by up.sh when it fails, by make e2e and
# make conformance when they fail, and by down.sh before it removes the
# state. logs.sh [WHY]
source "$(dirname "$0")/lib.sh"
[ -d "$STATE" ] || exit 0
rm -rf "$LOGS_OUT"
mkdir -p "$LOGS_OUT"
echo "${1:-collected} at $(date -u +%FT%TZ)" >"$LOGS_OUT/WHY"
for d in "$STATE"/*/logs; do
	[ -d "$d" ] || continue
	m=$(basename "$(dirname "$d")")
	cp -r "$d" "$LOGS_OUT/$m"
	[ "$m" != cp ] || continue
	if pid=$(pid_of "$m" holder); then
		cat "/proc/$pid/mountinfo" >"$LOGS_OUT/$m/mountinfo.txt" 2>/dev/null || true
		cp -r "$STATE/$m/log/pods" "$LOGS_OUT/$m/pods" 2>/dev/null || true
		if alive "$m" containerd; then
			timeout 20 ctr -a "$(containerd_sock "$m")" -n k8s.io containers ls >"$LOGS_OUT/$m/containers.txt" 2>&1 || true
		fi
	fi
done
if alive cp kube-apiserver; then
	timeout 30 kubectl get nodes,pods,pvc,pv,csinodes,csistoragecapacities -A -o wide >"$LOGS_OUT/objects.txt" 2>&1 || true
	timeout 30 kubectl get events -A --sort-by=.lastTimestamp >"$LOGS_OUT/events.txt" 2>&1 || true
fi
log "${1:-logs}: every machine's logs are in $LOGS_OUT"
