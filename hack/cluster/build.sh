#!/usr/bin/env bash
# Builds (once) every binary the local cluster runs: Kubernetes from the module
# k8s.io/kubernetes, etcd, csi-provisioner, csi-resizer, and flashpv. A binary is
# rebuilt only when its tools module or flashpv's sources change.
source "$(dirname "$0")/lib.sh"
mkdir -p "$BIN"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

# build DIR PKG OUT [LDFLAGS]: go build in a tools module, skipped when the
# stamp (module files + flags) is unchanged and the binary exists.
build() {
	local dir=$1 pkg=$2 out=$3 ldflags=${4:-}
	local stamp
	stamp=$(cat "$REPO/hack/tools/$dir/go.mod" "$REPO/hack/tools/$dir/go.sum" <(echo "$pkg $ldflags") | sha256sum | cut -c1-16)
	if [ -x "$BIN/$out" ] && [ "$(cat "$BIN/.$out.stamp" 2>/dev/null)" = "$stamp" ]; then
		return
	fi
	log "building $out"
	(cd "$REPO/hack/tools/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN/$out" "$pkg")
	echo "$stamp" >"$BIN/.$out.stamp"
}

kv="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitTreeState=clean"
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
	build kubernetes "k8s.io/kubernetes/cmd/$c" "$c" "$kv"
done
build etcd go.etcd.io/etcd/server/v3 etcd
build provisioner github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner csi-provisioner
build resizer github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer csi-resizer
# flashpv and the pause program are the project's own: go build is incremental.
(cd "$REPO" && go build -trimpath -ldflags "-s -w -X main.version=$(git describe --always --dirty 2>/dev/null || echo dev)" -o "$BIN/flashpv" ./cmd/flashpv)
(cd "$REPO" && go build -trimpath -ldflags "-s -w" -o "$BIN/pause" ./hack/cluster/pause)
log "binaries ready in $BIN"
