#!/usr/bin/env bash
# Deploys flashpv on the local cluster from deploy/kubernetes, as a user
# would: an overlay that points the images at the locally built ones and the
# pool host directory into the cluster's state directory.
source "$(dirname "$0")/lib.sh"
mkdir -p "$STATE/deploy" "$STATE/pool"
# The DaemonSet mounts the pool with HostToContainer propagation, which needs
# a shared mount on the host. systemd hosts share everything; this one may not.
if ! awk -v p="$STATE/pool" '$5 == p {found=1} END {exit !found}' /proc/self/mountinfo; then
	mount --bind "$STATE/pool" "$STATE/pool"
	mount --make-shared "$STATE/pool"
fi
rel=$(realpath --relative-to="$STATE/deploy" "$REPO/deploy/kubernetes")
cat >"$STATE/deploy/kustomization.yaml" <<CFG
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel
images:
  - name: flashpv
    newName: localhost/flashpv
    newTag: e2e
  - name: registry.k8s.io/sig-storage/csi-provisioner
    newName: localhost/csi-provisioner
  - name: registry.k8s.io/sig-storage/csi-resizer
    newName: localhost/csi-resizer
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata:
        name: flashpv-node
      spec:
        template:
          spec:
            volumes:
              - name: pools
                hostPath:
                  path: $STATE/pool
CFG
kubectl apply -k "$STATE/deploy" >/dev/null
# A new image under the same tag (a rebuilt flashpv) needs new pods.
if [ "${FLASHPV_RESTART:-}" = 1 ]; then
	kubectl -n flashpv rollout restart daemonset/flashpv-node >/dev/null
fi
kubectl -n flashpv rollout status daemonset/flashpv-node --timeout=180s >/dev/null
registered() { kubectl get csinode "$NODE_NAME" -o jsonpath='{.spec.drivers[*].name}' | grep -qw flashpv.dev; }
wait_for 120 "flashpv registered with the kubelet" registered
log "flashpv deployed; pool at $STATE/pool"
