#!/usr/bin/env bash
# Runs flashpv on this machine against a pool directory, for trying it out
# with a CSI client such as csc or csi-sanity. Stop it with Ctrl-C.
#   hack/run-local.sh [STATE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
state=${1:-$PWD/_output/local}
mkdir -p "$state/kubelet"
make --no-print-directory build
echo "flashpv: socket $state/csi.sock, pool $state/pool, kubelet dir $state/kubelet" >&2
exec bin/flashpv \
	--endpoint "unix://$state/csi.sock" \
	--node-id "$(hostname)" \
	--pool "default=$state/pool" \
	--kubelet-dir "$state/kubelet" \
	--v=3
