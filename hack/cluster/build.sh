#!/usr/bin/env bash
# Builds (once) every binary the local cluster runs: Kubernetes from the module
# k8s.io/kubernetes, etcd, csi-provisioner, csi-resizer, csi-snapshotter,
# snapshot-controller, and flashpv. A binary is
# rebuilt only when its tools module or flashpv's sources change.
#   build.sh            the cluster's binaries
#   build.sh e2e.test   only what `make conformance` adds, from the same tools
#                       module (hack/tools/kubernetes) at the cluster's version:
#                       e2e.test (go test -c k8s.io/kubernetes/test/e2e), agnhost
#                       (k8s.io/kubernetes/test/images/agnhost, for the e2e
#                       images) and the ginkgo CLI (parallel runs)
#   build.sh apiserver  only kube-apiserver and etcd, for the tests against a
#                       real API server (make test-apiserver); nothing when
#                       the cluster's build has made them already
#   build.sh flashpv-at COMMIT
#                       only flashpv as of an earlier COMMIT of this
#                       repository, from that commit's own sources and
#                       go.mod (lib.sh's flashpv_ref_tree), into
#                       $BIN/flashpv-<12 hex>; kept, since a commit never
#                       changes (deploy.sh's FLASHPV_REF, the upgrade test)
source "$(dirname "$0")/lib.sh"
mkdir -p "$BIN"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

# build DIR LDFLAGS OUT=PKG...: go build in a tools module, skipped when the
# stamp (module files, packages, flags) is unchanged and the binaries exist.
# One go build for several commands shares the work between them. The stamp
# is $BIN/.DIR.stamp, or $BIN/.$STAMP.stamp when STAMP is set (a second group
# of commands from the same module).
build() {
	local dir=$1 ldflags=$2; shift 2
	local stamp spec stampfile=$BIN/.${STAMP:-$dir}.stamp
	stamp=$(stamp_of "$dir" "$ldflags" "$@")
	if built "$stampfile" "$stamp" "$@"; then
		return
	fi
	log "building ${*%%=*} (cached after the first time)"
	local tmp; tmp=$(mktemp -d)
	(cd "$REPO/hack/tools/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/" "${@#*=}")
	for spec in "$@"; do
		local pkg=${spec#*=} name
		name=$(basename "$pkg")
		case "$name" in v[0-9]*) name=$(basename "$(dirname "$pkg")") ;; esac
		mv "$tmp/$name" "$BIN/${spec%%=*}"
	done
	rm -rf "$tmp"
	echo "$stamp" >"$stampfile"
}

# stamp_of DIR LDFLAGS OUT=PKG...: the stamp of a build.
stamp_of() {
	local dir=$1 ldflags=$2; shift 2
	cat "$REPO/hack/tools/$dir/go.mod" "$REPO/hack/tools/$dir/go.sum" <(echo "$* $ldflags") | sha256sum | cut -c1-16
}

# built STAMPFILE STAMP OUT[=PKG]...: whether the binaries exist and were
# built with that stamp.
built() {
	local stampfile=$1 stamp=$2 spec; shift 2
	for spec in "$@"; do [ -x "$BIN/${spec%%=*}" ] || return 1; done
	[ "$(cat "$stampfile" 2>/dev/null)" = "$stamp" ]
}

# build_test DIR LDFLAGS OUT PKG: go test -c of PKG in a tools module, cached
# like build (its own stamp, $BIN/.OUT.stamp).
build_test() {
	local dir=$1 ldflags=$2 out=$3 pkg=$4 stamp
	stamp=$(cat "$REPO/hack/tools/$dir/go.mod" "$REPO/hack/tools/$dir/go.sum" <(echo "test $pkg $ldflags") | sha256sum | cut -c1-16)
	if [ -x "$BIN/$out" ] && [ "$(cat "$BIN/.$out.stamp" 2>/dev/null)" = "$stamp" ]; then
		return
	fi
	log "building $out (cached after the first time)"
	(cd "$REPO/hack/tools/$dir" && go test -c -trimpath -ldflags "-s -w $ldflags" -o "$BIN/$out.tmp" "$pkg")
	mv "$BIN/$out.tmp" "$BIN/$out"
	echo "$stamp" >"$BIN/.$out.stamp"
}

kv="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitTreeState=clean"
k8s=()
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
	k8s+=("$c=k8s.io/kubernetes/cmd/$c")
done
case "${1:-}" in
"") ;;
apiserver)
	# The cluster's kube-apiserver when its build is current, else one
	# built alone (its own stamp) from the same module with the same flags.
	if ! built "$BIN/.kubernetes.stamp" "$(stamp_of kubernetes "$kv" "${k8s[@]}")" kube-apiserver; then
		STAMP=kubernetes-apiserver build kubernetes "$kv" kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver
	fi
	build etcd "" etcd=go.etcd.io/etcd/server/v3
	log "kube-apiserver and etcd ready in $BIN"
	exit 0
	;;
e2e.test)
	build_test kubernetes "$kv" e2e.test k8s.io/kubernetes/test/e2e
	STAMP=kubernetes-e2e build kubernetes "" agnhost=k8s.io/kubernetes/test/images/agnhost \
		ginkgo=github.com/onsi/ginkgo/v2/ginkgo
	log "e2e.test, agnhost and ginkgo ready in $BIN"
	exit 0
	;;
flashpv-at)
	[ -n "${2:-}" ] || die "usage: build.sh flashpv-at COMMIT"
	tag=$(flashpv_ref_tag "$2")
	if [ ! -x "$BIN/flashpv-$tag" ]; then
		src=$(flashpv_ref_tree "$2")
		log "building flashpv $tag from its own sources (cached after the first time)"
		(cd "$src" && go build -trimpath -ldflags "-s -w -X main.version=$tag" -o "$BIN/flashpv-$tag.tmp" ./cmd/flashpv)
		mv "$BIN/flashpv-$tag.tmp" "$BIN/flashpv-$tag"
	fi
	log "flashpv $tag ready in $BIN/flashpv-$tag"
	exit 0
	;;
*) die "unknown target $1 (usage: build.sh [e2e.test|apiserver|flashpv-at COMMIT])" ;;
esac
build kubernetes "$kv" "${k8s[@]}"
build etcd "" etcd=go.etcd.io/etcd/server/v3
build provisioner "" csi-provisioner=github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner
build resizer "" csi-resizer=github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer
build snapshotter "" csi-snapshotter=github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter \
	snapshot-controller=github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller
# flashpv and the pause program are the project's own: go build is incremental.
(cd "$REPO" && go build -trimpath -ldflags "-s -w -X main.version=$(git describe --always --dirty 2>/dev/null || echo dev)" -o "$BIN/flashpv" ./cmd/flashpv)
(cd "$REPO" && go build -trimpath -ldflags "-s -w" -o "$BIN/pause" ./hack/cluster/pause)
log "binaries ready in $BIN"
