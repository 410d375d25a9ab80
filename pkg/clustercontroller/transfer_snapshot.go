package clustercontroller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// VolumeSnapshots are read with the dynamic client: flashpv does not
// depend on external-snapshotter's client module.
const snapshotGroup = "snapshot.storage.k8s.io"

var (
	snapshotsGVR = schema.GroupVersionResource{Group: snapshotGroup, Version: "v1", Resource: "volumesnapshots"}
	contentsGVR  = schema.GroupVersionResource{Group: snapshotGroup, Version: "v1", Resource: "volumesnapshotcontents"}
)

// labelManagedBy is the node a content's snapshot was taken on, set by the
// snapshot-controller with distributed snapshotting.
const labelManagedBy = "snapshot.storage.kubernetes.io/managed-by"

// snapshotNode checks that the claim restores the VolumeSnapshot whose
// content is the flashpv snapshot source, and returns the snapshot's node.
func (a *grantAuthorizer) snapshotNode(ctx context.Context, claim *corev1.PersistentVolumeClaim, source string) (string, error) {
	name, err := dataSource(claim, snapshotGroup, "VolumeSnapshot")
	if err != nil {
		return "", err
	}
	vs, err := a.dynamic.Resource(snapshotsGVR).Namespace(claim.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", notFound("VolumeSnapshot %s/%s not found", claim.Namespace, name)
	}
	if err != nil {
		return "", err
	}
	contentName, _, _ := unstructured.NestedString(vs.Object, "status", "boundVolumeSnapshotContentName")
	if contentName == "" {
		return "", unavailable("VolumeSnapshot %s/%s is not bound to a content yet", claim.Namespace, name)
	}
	content, err := a.dynamic.Resource(contentsGVR).Get(ctx, contentName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", notFound("VolumeSnapshotContent %s not found", contentName)
	}
	if err != nil {
		return "", err
	}
	// The binding must hold both ways, as the snapshot-controller checks.
	refNS, _, _ := unstructured.NestedString(content.Object, "spec", "volumeSnapshotRef", "namespace")
	refName, _, _ := unstructured.NestedString(content.Object, "spec", "volumeSnapshotRef", "name")
	refUID, _, _ := unstructured.NestedString(content.Object, "spec", "volumeSnapshotRef", "uid")
	if refNS != vs.GetNamespace() || refName != vs.GetName() || (refUID != "" && refUID != string(vs.GetUID())) {
		return "", denied("VolumeSnapshotContent %s is not bound to VolumeSnapshot %s/%s", contentName, claim.Namespace, name)
	}
	if driver, _, _ := unstructured.NestedString(content.Object, "spec", "driver"); driver != wellknown.DriverName {
		return "", denied("VolumeSnapshotContent %s is not a %s snapshot", contentName, wellknown.DriverName)
	}
	if handle, _, _ := unstructured.NestedString(content.Object, "status", "snapshotHandle"); handle != source {
		return "", denied("VolumeSnapshot %s/%s is not snapshot %s", claim.Namespace, name, source)
	}
	if node := content.GetLabels()[labelManagedBy]; node != "" {
		return node, nil
	}
	volume, _, _ := unstructured.NestedString(content.Object, "spec", "source", "volumeHandle")
	if node := a.nodeOfVolume(volume); node != "" {
		return node, nil
	}
	return "", notFound("the node of snapshot %s is not known: content %s has no %s label and no PV of its source volume names a node", source, contentName, labelManagedBy)
}

// nodeOfVolume is the node of the flashpv PV whose volume handle is id.
func (a *grantAuthorizer) nodeOfVolume(id string) string {
	if id == "" {
		return ""
	}
	pvs, err := a.pvs.List(labels.Everything())
	if err != nil {
		return ""
	}
	for _, pv := range pvs {
		if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == wellknown.DriverName && pv.Spec.CSI.VolumeHandle == id {
			return nodeloss.NodeOf(pv)
		}
	}
	return ""
}
