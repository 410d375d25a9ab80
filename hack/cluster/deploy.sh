#!/usr/bin/env bash
# Deploys flashpv on the local cluster from deploy/kubernetes, as a user
# would, through an overlay that changes only what a local cluster needs:
#   - the images: the locally built ones;
#   - the pools ConfigMap: the default pool's reserve is 256Mi, not 1Gi
#     (the nodes' pool filesystems are small: 3, 6, 10 GiB);
#   - the DaemonSet stays off nodes labelled flashpv.dev/e2e-no-driver, so a
#     test can take one node's flashpv away and give it back.
# The pool hostPath stays /var/lib/flashpv: in each node's mount namespace
# that is the node's own pool filesystem.
# Before flashpv, what VolumeSnapshots need once per cluster: the
# VolumeSnapshot CRDs, from the module cache (the client module of the
# release hack/tools/snapshotter pins, config/crd; never copied into the
# repository), and deploy/kubernetes/snapshot-controller with its image.
#
# FLASHPV_DEPLOY=helm installs the same through the Helm chart
# deploy/helm/flashpv instead (helm upgrade --install, release flashpv in
# namespace flashpv, the snapshot-controller from the chart too), with the
# same three changes as values; the helm CLI is built by
# hack/tools/helm/build.sh. Objects a kustomize deploy made are taken over
# by the release.
#
# FLASHPV_REF=COMMIT deploys flashpv as of an earlier commit of this
# repository instead, with kustomize: that commit's own deploy/kubernetes
# and snapshot-controller bases with the same overlay, and its binary and
# image (localhost/flashpv:<12 hex>, built by build.sh flashpv-at and
# images.sh flashpv-at, imported into every node's containerd). Deploying
# again without it is an upgrade to this tree (test/e2e/upgrade_test.go).
# FLASHPV_IMAGE_TAG names another tag of localhost/flashpv than e2e.
source "$(dirname "$0")/lib.sh"
[ "$(id -u)" = 0 ] || die "run as root"
"$(dirname "$0")/install-deps.sh"
src=$REPO tag=${FLASHPV_IMAGE_TAG:-e2e}
if [ -n "${FLASHPV_REF:-}" ]; then
	[ "${FLASHPV_DEPLOY:-kustomize}" = kustomize ] || die "FLASHPV_REF deploys with kustomize (an earlier commit may have no chart)"
	"$(dirname "$0")/build.sh" flashpv-at "$FLASHPV_REF"
	"$(dirname "$0")/images.sh" flashpv-at "$FLASHPV_REF"
	# The earlier commit is installed afresh: what this tree's chart set
	# and its manifests never knew (the controller's readiness probe on the
	# transfer port, say) would outlive a kubectl apply of them.
	if [ -x "$BIN/helm" ] && "$BIN/helm" status flashpv --namespace flashpv >/dev/null 2>&1; then
		"$BIN/helm" uninstall flashpv --namespace flashpv --wait >/dev/null
	fi
	kubectl -n flashpv delete daemonset/flashpv-node deployment/flashpv-controller --ignore-not-found --wait=true >/dev/null 2>&1 || true
	src=$(flashpv_ref_tree "$FLASHPV_REF")
	tag=$(flashpv_ref_tag "$FLASHPV_REF")
	for n in $(node_names); do
		ctr -a "$(containerd_sock "$n")" -n k8s.io images import "$STATE/images/flashpv-$tag.tar" >/dev/null ||
			die "importing localhost/flashpv:$tag on $n"
	done
fi
crd=$(cd "$REPO/hack/tools/snapshotter" && GOFLAGS=-mod=mod go mod download -json github.com/kubernetes-csi/external-snapshotter/client/v8 |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$crd/config/crd" ] || die "no config/crd in the snapshot client module (go mod download gave '$crd')"
for c in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
	kubectl apply --server-side --force-conflicts -f "$crd/config/crd/snapshot.storage.k8s.io_$c.yaml" >/dev/null
done
for c in volumesnapshotclasses volumesnapshotcontents volumesnapshots; do
	kubectl wait --for=condition=Established --timeout=60s "crd/$c.snapshot.storage.k8s.io" >/dev/null
done
# deploy_helm: the chart with what a local cluster needs (see the top).
deploy_helm() {
	local helm=$BIN/helm values=$STATE/deploy/helm-values.yaml
	BIN=$BIN "$REPO/hack/tools/helm/build.sh"
	mkdir -p "$STATE/deploy"
	cat >"$values" <<CFG
image:
  repository: localhost/flashpv
  tag: $tag
sidecars:
  provisioner:
    image:
      repository: localhost/csi-provisioner
  resizer:
    image:
      repository: localhost/csi-resizer
  snapshotter:
    image:
      repository: localhost/csi-snapshotter
node:
  nodeAffinityExpressions:
    - key: flashpv.dev/e2e-no-driver
      operator: DoesNotExist
nodeGroups:
  - name: default
    hostPath: /var/lib/flashpv
    pools:
      - name: default
        path: /var/lib/flashpv/pools/default
        reserve: 256Mi
snapshotController:
  enabled: true
  image:
    repository: localhost/snapshot-controller
CFG
	# The chart leaves the namespace to the installer: flashpv's pods are
	# privileged.
	kubectl create namespace flashpv --dry-run=client -o yaml | kubectl apply -f - >/dev/null
	kubectl label --overwrite namespace flashpv pod-security.kubernetes.io/enforce=privileged >/dev/null
	# --take-ownership: objects a kustomize deploy made join the release.
	# --force-conflicts: e2e tests patch the DaemonSet's and the
	# controller's args and put them back; the chart's values win.
	"$helm" upgrade --install flashpv "$REPO/deploy/helm/flashpv" --namespace flashpv \
		--values "$values" --take-ownership --server-side=true --force-conflicts >/dev/null
}

if [ "${FLASHPV_DEPLOY:-kustomize}" = helm ]; then
	deploy_helm
else
	mkdir -p "$STATE/deploy/snapshot-controller"
	rel=$(realpath --relative-to="$STATE/deploy/snapshot-controller" "$src/deploy/kubernetes/snapshot-controller")
	cat >"$STATE/deploy/snapshot-controller/kustomization.yaml" <<CFG
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel
images:
  - name: registry.k8s.io/sig-storage/snapshot-controller
    newName: localhost/snapshot-controller
CFG
	kubectl apply -k "$STATE/deploy/snapshot-controller" >/dev/null
	mkdir -p "$STATE/deploy"
	rel=$(realpath --relative-to="$STATE/deploy" "$src/deploy/kubernetes")
	cat >"$STATE/deploy/kustomization.yaml" <<CFG
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel
images:
  - name: flashpv
    newName: localhost/flashpv
    newTag: $tag
  - name: registry.k8s.io/sig-storage/csi-provisioner
    newName: localhost/csi-provisioner
  - name: registry.k8s.io/sig-storage/csi-resizer
    newName: localhost/csi-resizer
  - name: registry.k8s.io/sig-storage/csi-snapshotter
    newName: localhost/csi-snapshotter
patches:
  - patch: |-
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: flashpv-pools
      data:
        pools: |
          default=/var/lib/flashpv/pools/default,reserve=256Mi
  - patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata:
        name: flashpv-node
      spec:
        template:
          spec:
            affinity:
              nodeAffinity:
                requiredDuringSchedulingIgnoredDuringExecution:
                  nodeSelectorTerms:
                    - matchExpressions:
                        - key: flashpv.dev/e2e-no-driver
                          operator: DoesNotExist
CFG
	kubectl apply -k "$STATE/deploy" >/dev/null
fi
# A new image under the same tag (a rebuilt flashpv) needs new pods.
if [ "${FLASHPV_RESTART:-}" = 1 ]; then
	kubectl -n flashpv rollout restart daemonset/flashpv-node deployment/flashpv-controller >/dev/null
fi
kubectl -n flashpv rollout status daemonset/flashpv-node --timeout=300s >/dev/null
# The controller brokers transfers between nodes: restores onto another node
# wait for it.
kubectl -n flashpv rollout status deployment/flashpv-controller --timeout=300s >/dev/null
kubectl -n kube-system rollout status deployment/snapshot-controller --timeout=300s >/dev/null
count=$(wc -l <"$STATE/nodes")
registered() {
	[ "$(kubectl get csinodes -o jsonpath='{range .items[*]}{.spec.drivers[*].name}{"\n"}{end}' | grep -cw flashpv.dev)" = "$count" ]
}
wait_for 180 "flashpv registered with $count kubelet(s)" registered
log "flashpv deployed on $count node(s)"
