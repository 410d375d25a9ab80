package main

// The scale-up's floor: the same StatefulSet on local PersistentVolumes made
// in advance. Their class has no provisioner, so what they cost is only what
// Kubernetes itself spends on a WaitForFirstConsumer claim of a node-local
// volume (the scheduler's binder, the persistent-volume controller, the node
// authorizer, the kubelet's mount). Each node gets as many volumes as the
// StatefulSet has replicas, so that every replica finds one wherever it
// lands; each is a directory on the node's pool filesystem, made from the
// host through the node's holder process (/proc/PID/root sees the node's
// own mounts). The class retains its volumes: between rounds the bench
// empties the used directories and clears the volumes' claimRef, which
// makes them Available again without recreating them.

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

const (
	staticSet   = "bench-static"
	staticClass = "flashpv-bench-static"
	// staticLabel marks the class and volumes the bench made, so that a
	// later run finds what a killed one left.
	staticLabel = "flashpv.dev/bench-static"
	// nodeFS is where each node mounts its pool filesystem, in its own
	// mount namespace; staticBase is the volumes' directory on it.
	nodeFS     = "/var/lib/flashpv"
	staticBase = nodeFS + "/bench-static"
	// hostnameKey is the node label the volumes' node affinity uses.
	hostnameKey = "kubernetes.io/hostname"
)

// staticStorageClass is the floor's class: no provisioner, binding delayed
// until a pod is scheduled (as flashpv's), volumes kept when released.
func staticStorageClass() *storagev1.StorageClass {
	wait := storagev1.VolumeBindingWaitForFirstConsumer
	retain := corev1.PersistentVolumeReclaimRetain
	return &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: staticClass, Labels: map[string]string{staticLabel: "true"}},
		Provisioner:       "kubernetes.io/no-provisioner",
		VolumeBindingMode: &wait,
		ReclaimPolicy:     &retain,
	}
}

// staticPV is the i-th local volume of a node: a directory under
// staticBase, pinned to the node, of the claims' size.
func staticPV(node string, i int, size resource.Quantity) *corev1.PersistentVolume {
	name := staticSet + "-" + node + "-" + strconv.Itoa(i)
	fsMode := corev1.PersistentVolumeFilesystem
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{staticLabel: "true"}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              staticClass,
			VolumeMode:                    &fsMode,
			PersistentVolumeSource: corev1.PersistentVolumeSource{
				Local: &corev1.LocalVolumeSource{Path: filepath.Join(staticBase, name)},
			},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
					{Key: hostnameKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}}}}}},
		},
	}
}

var staticSelector = metav1.ListOptions{LabelSelector: staticLabel + "=true"}

// makeStatic makes the class, and on every node per volume a directory
// and a PersistentVolume, then waits until all are Available.
func (k *kube) makeStatic(ctx context.Context, nodes []string, perNode int, size resource.Quantity) error {
	if _, err := k.cs.StorageV1().StorageClasses().Create(ctx, staticStorageClass(), metav1.CreateOptions{}); err != nil {
		return err
	}
	k.staticRoots = map[string]string{}
	for _, name := range nodes {
		n, err := k.node(ctx, k.state, name)
		if err != nil {
			return err
		}
		if !onPoolFS(n.root) {
			return fmt.Errorf("node %s: %s is not its own filesystem", name, nodeFS)
		}
		k.staticRoots[name] = n.root
		for i := range perNode {
			pv := staticPV(name, i, size)
			if err := os.MkdirAll(filepath.Join(n.root, pv.Spec.Local.Path), 0o755); err != nil {
				return err
			}
			if _, err := k.cs.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
	}
	log.Printf("cluster: %d local volumes of %s made on each of %s, under %s", perNode, size.String(), nodes, staticBase)
	return k.waitStaticAvailable(ctx, len(nodes)*perNode)
}

// onPoolFS says whether a node's nodeFS is a filesystem of its own, not
// the directory below (which would be the host's, or the node missing).
func onPoolFS(root string) bool {
	var fs, parent unix.Stat_t
	if unix.Stat(filepath.Join(root, nodeFS), &fs) != nil || unix.Stat(filepath.Join(root, filepath.Dir(nodeFS)), &parent) != nil {
		return false
	}
	return fs.Dev != parent.Dev
}

// waitStaticAvailable waits until the bench's n static volumes are
// Available, so that every round starts from the same state.
func (k *kube) waitStaticAvailable(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, scaleTimeout)
	defer cancel()
	return poll(ctx, 200*time.Millisecond, func() (bool, string, error) {
		list, err := k.cs.CoreV1().PersistentVolumes().List(ctx, staticSelector)
		if err != nil {
			return false, "", err
		}
		avail := 0
		for _, pv := range list.Items {
			if pv.Status.Phase == corev1.VolumeAvailable && pv.Spec.ClaimRef == nil {
				avail++
			}
		}
		return avail == n && len(list.Items) == n, fmt.Sprintf("%d of %d static volumes Available", avail, n), nil
	})
}

// recycleStatic makes the static volumes that served the last round
// Available again, once their claims are gone: their directories emptied,
// their claimRef cleared.
func (k *kube) recycleStatic(ctx context.Context) error {
	sel := metav1.ListOptions{LabelSelector: "app=" + staticSet}
	err := poll(ctx, 200*time.Millisecond, func() (bool, string, error) {
		pvcs, err := k.cs.CoreV1().PersistentVolumeClaims(k.ns).List(ctx, sel)
		return err == nil && len(pvcs.Items) == 0, fmt.Sprintf("%s: claims left", staticSet), err
	})
	if err != nil {
		return err
	}
	n, err := k.releaseStatic(ctx)
	if err != nil {
		return err
	}
	return k.waitStaticAvailable(ctx, n)
}

// releaseStatic empties the directory and clears the claimRef of every
// static volume that has one, and returns how many static volumes there
// are. The persistent-volume controller then sees an unused volume and
// makes it Available.
func (k *kube) releaseStatic(ctx context.Context) (int, error) {
	list, err := k.cs.CoreV1().PersistentVolumes().List(ctx, staticSelector)
	if err != nil {
		return 0, err
	}
	for _, pv := range list.Items {
		if pv.Spec.ClaimRef == nil {
			continue
		}
		root, ok := k.staticRoots[affinityNode(&pv, hostnameKey)]
		if !ok || pv.Spec.Local == nil {
			return 0, fmt.Errorf("static volume %s: not one of the bench's nodes' directories", pv.Name)
		}
		if err := emptyDir(filepath.Join(root, pv.Spec.Local.Path)); err != nil {
			return 0, err
		}
		patch := []byte(`{"spec":{"claimRef":null}}`)
		if _, err := k.cs.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return 0, err
		}
	}
	return len(list.Items), nil
}

// emptyDir removes what a directory holds, and keeps the directory.
func emptyDir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// cleanupStatic deletes the static volumes, their directories on every
// node and their class: also what a killed run left, so it finds the
// volumes by label and looks at every node. Called once the bench's
// namespace is gone, so no pod uses a volume any more.
func (k *kube) cleanupStatic(ctx context.Context) error {
	list, err := k.cs.CoreV1().PersistentVolumes().List(ctx, staticSelector)
	if err != nil {
		return err
	}
	for _, pv := range list.Items {
		if err := k.cs.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	err = poll(ctx, 200*time.Millisecond, func() (bool, string, error) {
		list, err := k.cs.CoreV1().PersistentVolumes().List(ctx, staticSelector)
		return err == nil && len(list.Items) == 0, "static volumes left", err
	})
	if err != nil {
		return err
	}
	if err := k.removeStaticDirs(ctx); err != nil {
		return err
	}
	k.staticRoots = nil
	err = k.cs.StorageV1().StorageClasses().Delete(ctx, staticClass, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// removeStaticDirs removes staticBase on every node of the local cluster
// whose pool filesystem the host can reach; a node it cannot (another
// cluster than hack/cluster's, a node gone) has none of the bench's.
func (k *kube) removeStaticDirs(ctx context.Context) error {
	nodes, err := k.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var errs []error
	for _, node := range nodes.Items {
		n, err := k.node(ctx, k.state, node.Name)
		if err != nil || !onPoolFS(n.root) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(n.root, staticBase)); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", node.Name, err))
		}
	}
	return errors.Join(errs...)
}
