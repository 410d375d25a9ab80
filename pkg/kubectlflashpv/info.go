package kubectlflashpv

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flashpv/flashpv/pkg/nodestatus"
)

// NodeInfo is one node as `info` shows it.
type NodeInfo struct {
	Node    string `json:"node"`
	Version string `json:"version,omitempty"`
	// Status is "ok", or why the node's status is missing or old.
	Status string `json:"status"`
	// AsOf is when the node measured what is shown.
	AsOf  *time.Time `json:"asOf,omitempty"`
	Pools []PoolInfo `json:"pools"`
}

// PoolInfo is one pool of a node.
type PoolInfo struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	Size     int64  `json:"size"`
	Promised int64  `json:"promised"`
	Free     int64  `json:"free"`
	Volumes  int    `json:"volumes"`
	Health   string `json:"health"`
}

// Info lists every node with its pools.
func (a *App) Info(ctx context.Context) error {
	nodes, err := a.nodeInfos(ctx)
	if err != nil {
		return err
	}
	return a.print(nodes, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tPOOL\tKIND\tSIZE\tPROMISED\tFREE\tVOLUMES\tHEALTH\tVERSION\tSTATUS")
		for _, n := range nodes {
			if len(n.Pools) == 0 {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\t%s\t%s\n", n.Node, dash(n.Version), n.Status)
			}
			for _, p := range n.Pools {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", n.Node, p.Name, p.Kind, size(p.Size), size(p.Promised), size(p.Free), p.Volumes, p.Health, dash(n.Version), n.Status)
			}
		}
		tw.Flush()
	})
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// staleAfter: a status older than this is flagged (the controller asks
// every minute by default).
const staleAfter = 5 * time.Minute

// nodeInfos joins the Node objects with the node plugins' status.
func (a *App) nodeInfos(ctx context.Context) ([]NodeInfo, error) {
	list, err := a.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, api(err, "list", "nodes", "")
	}
	entries, found, err := a.statusEntries(ctx)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, n := range list.Items {
		names[n.Name] = true
	}
	for n := range entries {
		names[n] = true
	}
	var out []NodeInfo
	for _, name := range sortedKeys(names) {
		out = append(out, a.nodeInfo(name, entries[name], found))
	}
	return out, nil
}

func (a *App) nodeInfo(name string, e nodestatus.Entry, found bool) NodeInfo {
	n := NodeInfo{Node: name, Status: "ok", Pools: []PoolInfo{}}
	switch {
	case !found:
		n.Status = "no status: the ConfigMap " + a.System + "/flashpv-status is missing (is the flashpv controller running?)"
	case e.Status == nil && e.Error == "":
		n.Status = "no flashpv status for this node"
	case e.Error != "":
		n.Status = "not answering: " + e.Error
	}
	st := e.Status
	if st == nil {
		return n
	}
	asOf := st.AsOf
	n.AsOf, n.Version = &asOf, st.Version
	if old := a.Now().Sub(st.AsOf); n.Status == "ok" && old > staleAfter {
		n.Status = "status from " + age(old) + " ago"
	} else if n.Status != "ok" {
		n.Status += " (showing what it said " + age(old) + " ago)"
	}
	for _, p := range st.Pools {
		n.Pools = append(n.Pools, PoolInfo{Name: p.Name, Kind: p.Kind, Size: p.Capacity, Promised: p.Allocated, Free: p.Available, Volumes: p.Volumes, Health: poolHealth(p)})
	}
	return n
}

func poolHealth(p nodestatus.Pool) string {
	if p.Healthy {
		return "ok"
	}
	return strings.TrimSpace(p.Reason + ": " + p.Message)
}
