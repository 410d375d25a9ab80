package kubectlflashpv

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/nodestatus"
)

// labelManagedBy is the node a distributed snapshot's content belongs to.
const labelManagedBy = "snapshot.storage.kubernetes.io/managed-by"

// SnapshotInfo is one flashpv VolumeSnapshotContent.
type SnapshotInfo struct {
	Content  string    `json:"content"`
	Snapshot string    `json:"snapshot,omitempty"`
	ID       string    `json:"snapshotID,omitempty"`
	Source   string    `json:"sourceVolumeID,omitempty"`
	PV       string    `json:"sourcePV,omitempty"`
	Claim    string    `json:"sourceClaim,omitempty"`
	Node     string    `json:"node,omitempty"`
	Size     int64     `json:"size"`
	Ready    bool      `json:"ready"`
	Error    string    `json:"error,omitempty"`
	Created  time.Time `json:"created"`
}

// Snapshots lists flashpv's snapshots.
func (a *App) Snapshots(ctx context.Context) error {
	contents, installed, err := a.snapshotContents(ctx)
	if err != nil {
		return err
	}
	if !installed {
		fmt.Fprintln(a.Err, "kubectl flashpv: the VolumeSnapshot CRDs are not installed (see kubectl flashpv doctor)")
	}
	pvs, err := a.flashpvPVs(ctx)
	if err != nil {
		return err
	}
	byID := map[string]int{}
	for i, pv := range pvs {
		byID[pv.Spec.CSI.VolumeHandle] = i
	}
	out := []SnapshotInfo{}
	for _, c := range contents {
		s := SnapshotInfo{Content: c.GetName(), Created: c.GetCreationTimestamp().UTC(), Size: -1, Node: c.GetLabels()[labelManagedBy]}
		ns, _, _ := unstructured.NestedString(c.Object, "spec", "volumeSnapshotRef", "namespace")
		name, _, _ := unstructured.NestedString(c.Object, "spec", "volumeSnapshotRef", "name")
		if name != "" {
			s.Snapshot = ns + "/" + name
		}
		s.Source, _, _ = unstructured.NestedString(c.Object, "spec", "source", "volumeHandle")
		s.ID, _, _ = unstructured.NestedString(c.Object, "status", "snapshotHandle")
		if s.ID == "" {
			s.ID, _, _ = unstructured.NestedString(c.Object, "spec", "source", "snapshotHandle")
		}
		if n, ok, _ := unstructured.NestedInt64(c.Object, "status", "restoreSize"); ok {
			s.Size = n
		}
		s.Ready, _, _ = unstructured.NestedBool(c.Object, "status", "readyToUse")
		s.Error, _, _ = unstructured.NestedString(c.Object, "status", "error", "message")
		if i, ok := byID[s.Source]; ok {
			pv := &pvs[i]
			s.PV = pv.Name
			if ref := pv.Spec.ClaimRef; ref != nil {
				s.Claim = ref.Namespace + "/" + ref.Name
			}
			if s.Node == "" {
				s.Node = nodeloss.NodeOf(pv)
			}
		}
		out = append(out, s)
	}
	return a.print(out, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CONTENT\tSNAPSHOT\tSOURCE PV\tSOURCE CLAIM\tNODE\tSIZE\tREADY\tAGE")
		for _, s := range out {
			ready := fmt.Sprint(s.Ready)
			if s.Error != "" {
				ready = "error: " + s.Error
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Content, dash(s.Snapshot), dash(s.PV), dash(s.Claim), dash(s.Node), size(s.Size), ready, age(a.Now().Sub(s.Created)))
		}
		tw.Flush()
	})
}

// NodeOrphans is what one node reports of its orphaned volumes.
type NodeOrphans struct {
	Node string `json:"node"`
	// Judged is false when the node could not tell (State says why).
	Judged  bool                `json:"judged"`
	State   string              `json:"state,omitempty"`
	AsOf    *time.Time          `json:"asOf,omitempty"`
	Orphans []nodestatus.Orphan `json:"orphans"`
}

// Orphans lists the orphaned volumes the node plugins report.
func (a *App) Orphans(ctx context.Context) error {
	entries, found, err := a.statusEntries(ctx)
	if err != nil {
		return err
	}
	if !found {
		fmt.Fprintf(a.Err, "kubectl flashpv: no node status (ConfigMap %s/flashpv-status): is the flashpv controller running?\n", a.System)
	}
	out := []NodeOrphans{}
	for _, node := range sortedKeys(entries) {
		e := entries[node]
		n := NodeOrphans{Node: node, Orphans: []nodestatus.Orphan{}}
		if e.Status == nil {
			n.State = "no status: " + e.Error
		} else {
			asOf := e.Status.AsOf
			n.AsOf, n.Judged, n.State = &asOf, e.Status.Orphans.Judged, e.Status.Orphans.State
			n.Orphans = append(n.Orphans, e.Status.Orphans.Volumes...)
		}
		out = append(out, n)
	}
	return a.print(out, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tPOOL\tVOLUME\tNAME\tCREATED\tORPHANED FOR")
		for _, n := range out {
			for _, o := range n.Orphans {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Node, o.Pool, o.ID, o.Name, o.Created.UTC().Format(time.RFC3339), age(a.Now().Sub(o.Since)))
			}
		}
		tw.Flush()
		for _, n := range out {
			if !n.Judged {
				fmt.Fprintf(a.Err, "node %s: orphans not judged: %s\n", n.Node, n.State)
			}
		}
	})
}
