package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// restoreResult is the time from creating a claim restored from a
// VolumeSnapshot, and a pod using it on the snapshot's node, to the pod
// Ready; beside the same for a new empty claim, alternated.
type restoreResult struct {
	Skipped     string  `json:"skipped,omitempty"` // why it did not run
	Node        string  `json:"node,omitempty"`
	VolumeBytes int64   `json:"volume_bytes,omitempty"`
	DataBytes   int64   `json:"data_bytes,omitempty"`
	Rounds      int     `json:"rounds,omitempty"`
	SnapshotSec float64 `json:"snapshot_ready_sec,omitempty"` // VolumeSnapshot created to readyToUse
	RestoreSec  spread  `json:"restore_ready_sec"`
	NewSec      spread  `json:"new_ready_sec"`
	Ratio       spread  `json:"ratio"` // restore ÷ new, per round
}

var (
	snapshotGV       = schema.GroupVersion{Group: "snapshot.storage.k8s.io", Version: "v1"}
	snapshots        = snapshotGV.WithResource("volumesnapshots")
	snapshotClasses  = snapshotGV.WithResource("volumesnapshotclasses")
	benchSnapClass   = "flashpv-bench"
	restoreTimeout   = 5 * time.Minute
	errNoSnapshotAPI = errors.New("the VolumeSnapshot API (snapshot.storage.k8s.io/v1) is not served: the cluster has no snapshot CRDs and controller")
)

// snapshotAPI says whether the cluster serves VolumeSnapshots.
func (k *kube) snapshotAPI() error {
	list, err := k.cs.Discovery().ServerResourcesForGroupVersion(snapshotGV.String())
	if apierrors.IsNotFound(err) {
		return errNoSnapshotAPI
	}
	if err != nil {
		return err
	}
	for _, r := range list.APIResources {
		if r.Name == snapshots.Resource {
			return nil
		}
	}
	return errNoSnapshotAPI
}

// runRestore writes data into a claim, snapshots it, and then, round after
// round, times a restored claim and a new empty claim (order alternated)
// from creation until a pod using it on the snapshot's node is Ready. The
// pods' init containers check that the restored data is there and that the
// new volume is empty.
func (k *kube) runRestore(ctx context.Context, o *clusterOptions, class string) (*restoreResult, error) {
	if err := k.snapshotAPI(); err != nil {
		if errors.Is(err, errNoSnapshotAPI) {
			log.Printf("cluster: restore skipped: %v", err)
			return &restoreResult{Skipped: err.Error()}, nil
		}
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout+time.Duration(o.restoreRounds)*2*restoreTimeout)
	defer cancel()
	res := &restoreResult{VolumeBytes: o.restoreBytes, DataBytes: o.restoreDataBytes, Rounds: o.restoreRounds}
	mib := o.restoreDataBytes >> 20
	// The source: a claim whose pod writes the data before it is Ready.
	write := fmt.Sprintf("dd if=/dev/urandom of=/data/f bs=1M count=%d && sync", mib)
	if _, err := k.claimAndPod(ctx, "source", class, o.restoreBytes, "", "", write); err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	pod, err := k.cs.CoreV1().Pods(k.ns).Get(ctx, "source", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	res.Node = pod.Spec.NodeName
	if err := k.createSnapshotClass(ctx); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := k.snapshot(ctx, "source-snap", "source"); err != nil {
		return nil, err
	}
	res.SnapshotSec = time.Since(start).Seconds()
	log.Printf("cluster: snapshot of %d MiB written in a %d MiB volume on %s ready in %.1f s", mib, o.restoreBytes>>20, res.Node, res.SnapshotSec)
	// busybox stat: the restored file has every byte the source wrote.
	check := fmt.Sprintf("test \"$(stat -c %%s /data/f)\" = %d", mib<<20)
	var restore, fresh, ratio []float64
	for i := range o.restoreRounds {
		var r, n float64
		for j := range 2 {
			name, source, script := fmt.Sprintf("new-%d", i), "", "test ! -e /data/f"
			if (i+j)%2 == 0 {
				name, source, script = fmt.Sprintf("restore-%d", i), "source-snap", check
			}
			d, err := k.claimAndPod(ctx, name, class, o.restoreBytes, source, res.Node, script)
			if err != nil {
				return res, fmt.Errorf("round %d, %s: %w", i+1, name, err)
			}
			if source != "" {
				r = d.Seconds()
			} else {
				n = d.Seconds()
			}
			if err := k.deleteClaimAndPod(ctx, name); err != nil {
				return res, err
			}
		}
		log.Printf("cluster: restore round %d: Ready in %.1f s restored, %.1f s new: %.2fx", i+1, r, n, r/n)
		restore, fresh, ratio = append(restore, r), append(fresh, n), append(ratio, r/n)
	}
	res.RestoreSec, res.NewSec, res.Ratio = spreadOf(restore), spreadOf(fresh), spreadOf(ratio)
	return res, k.deleteClaimAndPod(ctx, "source")
}

// claimAndPod creates a claim (from a snapshot when source is set) and a
// pod of the same name using it (on node when set) whose init container
// runs script, and returns the time from the claim's creation until the
// pod is Ready.
func (k *kube) claimAndPod(ctx context.Context, name, class string, size int64, source, node, script string) (time.Duration, error) {
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		StorageClassName: &class,
		Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceStorage: *resource.NewQuantity(size, resource.BinarySI)}},
	}}
	if source != "" {
		pvc.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: &snapshotGV.Group, Kind: "VolumeSnapshot", Name: source}
	}
	mount := []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{
		RestartPolicy:                 corev1.RestartPolicyNever,
		TerminationGracePeriodSeconds: new(int64),
		InitContainers: []corev1.Container{{Name: "check", Image: "busybox:1.36",
			Command: []string{"sh", "-c", script}, VolumeMounts: mount}},
		Containers: []corev1.Container{{Name: "idle", Image: "busybox:1.36",
			Command: []string{"sleep", "2147483647"}, VolumeMounts: mount}},
		Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name}}}},
	}}
	if node != "" {
		// How docs/how-it-works.md tells users to pin a restore's pod.
		pod.Spec.NodeSelector = map[string]string{"kubernetes.io/hostname": node}
	}
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	start := time.Now()
	if _, err := k.cs.CoreV1().PersistentVolumeClaims(k.ns).Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		return 0, err
	}
	if _, err := k.cs.CoreV1().Pods(k.ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return 0, err
	}
	err := poll(ctx, 100*time.Millisecond, func() (bool, string, error) {
		p, err := k.cs.CoreV1().Pods(k.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		if p.Status.Phase == corev1.PodFailed {
			return false, "", fmt.Errorf("pod %s failed (its check: %s)", name, script)
		}
		return podReady(p), "pod " + name + ": " + podState(p), nil
	})
	return time.Since(start), err
}

// deleteClaimAndPod deletes a pod and its claim and waits until the
// claim's volume is gone.
func (k *kube) deleteClaimAndPod(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	now := metav1.DeleteOptions{GracePeriodSeconds: new(int64)}
	if err := k.cs.CoreV1().Pods(k.ns).Delete(ctx, name, now); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	if err := k.cs.CoreV1().PersistentVolumeClaims(k.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return poll(ctx, 200*time.Millisecond, func() (bool, string, error) {
		pvs, err := k.cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, "", err
		}
		for _, pv := range pvs.Items {
			if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == k.ns && ref.Name == name {
				return false, "volume " + pv.Name + " of claim " + name + " left", nil
			}
		}
		return true, "", nil
	})
}

// createSnapshotClass makes the bench's own VolumeSnapshotClass (deleted
// by cleanup after the snapshots).
func (k *kube) createSnapshotClass(ctx context.Context) error {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion":     snapshotGV.String(),
		"kind":           "VolumeSnapshotClass",
		"metadata":       map[string]any{"name": benchSnapClass},
		"driver":         "flashpv.dev",
		"deletionPolicy": "Delete",
	}}
	_, err := k.dyn.Resource(snapshotClasses).Create(ctx, obj, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// snapshot takes a VolumeSnapshot of a claim and waits until it is ready
// to use.
func (k *kube) snapshot(ctx context.Context, name, claim string) error {
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": snapshotGV.String(),
		"kind":       "VolumeSnapshot",
		"metadata":   map[string]any{"name": name},
		"spec": map[string]any{
			"volumeSnapshotClassName": benchSnapClass,
			"source":                  map[string]any{"persistentVolumeClaimName": claim},
		},
	}}
	if _, err := k.dyn.Resource(snapshots).Namespace(k.ns).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, restoreTimeout)
	defer cancel()
	return poll(ctx, 100*time.Millisecond, func() (bool, string, error) {
		s, err := k.dyn.Resource(snapshots).Namespace(k.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		ready, _, _ := unstructured.NestedBool(s.Object, "status", "readyToUse")
		msg, _, _ := unstructured.NestedString(s.Object, "status", "error", "message")
		return ready, "snapshot " + name + " not ready: " + msg, nil
	})
}

// deleteSnapshots deletes the snapshots in the bench's namespace and waits
// until they are gone.
func (k *kube) deleteSnapshots(ctx context.Context) error {
	if k.snapshotAPI() != nil {
		return nil
	}
	r := k.dyn.Resource(snapshots).Namespace(k.ns)
	if err := r.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return poll(ctx, 500*time.Millisecond, func() (bool, string, error) {
		list, err := r.List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, "", err
		}
		return len(list.Items) == 0, fmt.Sprintf("%d snapshot(s) left", len(list.Items)), nil
	})
}

func (k *kube) deleteSnapshotClass(ctx context.Context) error {
	if k.snapshotAPI() != nil {
		return nil
	}
	err := k.dyn.Resource(snapshotClasses).Delete(ctx, benchSnapClass, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}
