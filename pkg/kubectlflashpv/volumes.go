package kubectlflashpv

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/nodestatus"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// VolumeInfo is one flashpv PersistentVolume as `volumes` shows it.
type VolumeInfo struct {
	PV         string   `json:"pv"`
	ID         string   `json:"volumeID"`
	Claim      string   `json:"claim,omitempty"`
	Pods       []string `json:"pods"`
	Node       string   `json:"node"`
	Pool       string   `json:"pool"`
	Size       int64    `json:"size"`
	Used       int64    `json:"used"`
	Filesystem string   `json:"filesystem"`
	Health     string   `json:"health"`
	Snapshots  int      `json:"snapshots"`
}

var contentsGVR = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents"}

// Volumes lists the flashpv PersistentVolumes.
func (a *App) Volumes(ctx context.Context) error {
	vols, err := a.volumeInfos(ctx)
	if err != nil {
		return err
	}
	return a.print(vols, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PV\tCLAIM\tPOD\tNODE\tPOOL\tSIZE\tUSED\tFS\tHEALTH\tSNAPSHOTS")
		for _, v := range vols {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", v.PV, dash(v.Claim), dash(strings.Join(v.Pods, ",")), dash(v.Node), v.Pool,
				size(v.Size), size(v.Used), v.Filesystem, v.Health, v.Snapshots)
		}
		tw.Flush()
	})
}

func (a *App) flashpvPVs(ctx context.Context) ([]corev1.PersistentVolume, error) {
	list, err := a.Client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, api(err, "list", "persistentvolumes", "")
	}
	var out []corev1.PersistentVolume
	for _, pv := range list.Items {
		if pv.Spec.CSI != nil && pv.Spec.CSI.Driver == wellknown.DriverName {
			out = append(out, pv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// snapshotContents lists flashpv's VolumeSnapshotContents; none when the
// snapshot CRDs are not installed.
func (a *App) snapshotContents(ctx context.Context) ([]unstructured.Unstructured, bool, error) {
	list, err := a.Dynamic.Resource(contentsGVR).List(ctx, metav1.ListOptions{})
	if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, api(err, "list", "volumesnapshotcontents.snapshot.storage.k8s.io", "")
	}
	var out []unstructured.Unstructured
	for _, c := range list.Items {
		if d, _, _ := unstructured.NestedString(c.Object, "spec", "driver"); d == wellknown.DriverName {
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out, true, nil
}

func (a *App) volumeInfos(ctx context.Context) ([]VolumeInfo, error) {
	pvs, err := a.flashpvPVs(ctx)
	if err != nil {
		return nil, err
	}
	pods, err := a.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, api(err, "list", "pods", "")
	}
	entries, _, err := a.statusEntries(ctx)
	if err != nil {
		return nil, err
	}
	contents, _, err := a.snapshotContents(ctx)
	if err != nil {
		return nil, err
	}
	snaps := map[string]int{}
	for _, c := range contents {
		if h, _, _ := unstructured.NestedString(c.Object, "spec", "source", "volumeHandle"); h != "" {
			snaps[h]++
		}
	}
	out := []VolumeInfo{}
	for i := range pvs {
		pv := &pvs[i]
		id := pv.Spec.CSI.VolumeHandle
		pool, _, _ := strings.Cut(id, ".")
		v := VolumeInfo{PV: pv.Name, ID: id, Pods: []string{}, Node: nodeloss.NodeOf(pv), Pool: pool, Used: -1, Snapshots: snaps[id],
			Size: pv.Spec.Capacity.Storage().Value(), Filesystem: filesystem(pv)}
		if ref := pv.Spec.ClaimRef; ref != nil {
			v.Claim = ref.Namespace + "/" + ref.Name
			for j := range pods.Items {
				p := &pods.Items[j]
				if p.Namespace == ref.Namespace && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed && nodeloss.UsesClaim(p, ref.Name) {
					v.Pods = append(v.Pods, p.Name)
				}
			}
		}
		v.Used, v.Health = volumeHealth(entries, v.Node, id)
		out = append(out, v)
	}
	return out, nil
}

func filesystem(pv *corev1.PersistentVolume) string {
	if pv.Spec.VolumeMode != nil && *pv.Spec.VolumeMode == corev1.PersistentVolumeBlock {
		return "block"
	}
	if pv.Spec.CSI.FSType != "" {
		return pv.Spec.CSI.FSType
	}
	return "ext4"
}

// volumeHealth is what the volume's node says of it.
func volumeHealth(entries map[string]nodestatus.Entry, node, id string) (int64, string) {
	e, ok := entries[node]
	switch {
	case !ok || e.Status == nil:
		return -1, "unknown (no status from node " + node + ")"
	case e.Status.VolumesOmitted:
		return -1, "unknown (volumes left out of the status: too many)"
	}
	v, ok := e.Status.Volume(id)
	if !ok {
		return -1, "missing: node " + node + " does not have it"
	}
	if len(v.Problems) == 0 {
		return v.Used, "ok"
	}
	var reasons []string
	for _, p := range v.Problems {
		reasons = append(reasons, p.Reason)
	}
	return v.Used, strings.Join(reasons, ",")
}
