#!/usr/bin/env bash
# The README's first command: a local cluster with flashpv and the example
# StatefulSet, then what it got.
source "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
start_time=$SECONDS
"$HERE/up.sh"
"$HERE/deploy.sh"
kubectl apply -f "$REPO/examples/storageclass.yaml" -f "$REPO/examples/storageclass-xfs.yaml" -f "$REPO/examples/statefulset.yaml" >/dev/null
kubectl rollout status statefulset/journal --timeout=300s >/dev/null
echo
echo "== PersistentVolumeClaims"
kubectl get pvc -l app=journal
echo
echo "== PersistentVolumes and the node each is pinned to"
kubectl get pv -o custom-columns='NAME:.metadata.name,CLAIM:.spec.claimRef.name,SIZE:.spec.capacity.storage,NODE AFFINITY:.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0]'
echo
echo "== CSIStorageCapacity (what the scheduler sees per node and class)"
kubectl get csistoragecapacities -n flashpv -o custom-columns='CLASS:.storageClassName,NODE:.nodeTopology.matchLabels,AVAILABLE:.capacity,MAX VOLUME:.maximumVolumeSize'
echo
echo "== Nodes"
kubectl get nodes -o wide
echo
echo "== What journal-0 wrote on its volume"
kubectl logs journal-0
echo
log "demo ready in $((SECONDS - start_time))s. KUBECONFIG=$KUBECONFIG kubectl get pods; stop with: make cluster-down"
