package main

import (
	"fmt"
	"strings"
)

// markdown is the cluster phase's section of report.md.
func (c *clusterResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Cluster: %d node(s)\n\n", len(c.Nodes))
	fmt.Fprintf(&b, "Run of %s, flashpv %s, %.0f s. The local cluster of hack/cluster (nodes %s, each its own namespaces, kubelet and pool filesystem on this host), flashpv deployed from deploy/kubernetes. Times are from the API request to the state, polled; medians [lowest–highest].\n\n",
		c.Date, c.Flashpv, c.Seconds, strings.Join(c.Nodes, ", "))
	if s := c.Scale; s != nil {
		fmt.Fprintf(&b, "### StatefulSet scale-up, 0 to %d replicas\n\n", s.Replicas)
		fmt.Fprintf(&b, "examples/statefulset.yaml (Parallel pods, preferred anti-affinity, a readiness probe every 2 s) with %d MiB volumes of the example class, and the same StatefulSet on emptyDir; %d round(s) after a warm-up, the two alternated, claims deleted and volumes gone between rounds.\n\n",
			s.VolumeBytes>>20, len(s.Rounds))
		fmt.Fprintf(&b, "| | seconds |\n|---|---|\n")
		fmt.Fprintf(&b, "| flashpv: all Ready | %s |\n", fmtSecs(s.FlashpvSec))
		fmt.Fprintf(&b, "| emptyDir: all Ready | %s |\n", fmtSecs(s.EmptyDirSec))
		fmt.Fprintf(&b, "| **flashpv ÷ emptyDir** (per round; target ≤ 1.2) | **%s** |\n", fmtSpread(s.Ratio))
		fmt.Fprintf(&b, "| flashpv: all claims Bound | %s |\n", fmtSecs(s.BoundSec))
		fmt.Fprintf(&b, "| flashpv: scale to 0, claims deleted, volumes gone | %s |\n\n", fmtSecs(s.TeardownSec))
		if len(s.FlashpvStages) > 0 {
			fmt.Fprintf(&b, "Where the time goes: seconds from the scale request until half of the replicas, and the last one, reached each stage (medians over the rounds; a stage is seen by polling every 0.2 s).\n\n")
			fmt.Fprintf(&b, "| stage | flashpv: half / last | emptyDir: half / last |\n|---|---|---|\n")
			for _, st := range s.FlashpvStages {
				ed := "–"
				for _, e := range s.EmptyDirStages {
					if e.Name == st.Name {
						ed = fmt.Sprintf("%.1f / %.1f", e.Median, e.Last)
					}
				}
				fmt.Fprintf(&b, "| %s | %.1f / %.1f | %s |\n", st.Name, st.Median, st.Last, ed)
			}
			fmt.Fprintf(&b, "\n")
			var lag []string
			for _, r := range s.Rounds {
				lag = append(lag, fmt.Sprint(r.AuthorizerLag))
			}
			fmt.Fprintf(&b, "flashpv pods whose kubelet was refused their claim once by the API server's node authorizer (\"no relationship found\"; the kubelet retries the pod after a back-off), per round: %s of %d.\n\n", strings.Join(lag, ", "), s.Replicas)
		}
		if len(s.Mismatches) == 0 {
			fmt.Fprintf(&b, "Node affinity: all %d volumes pinned (flashpv.dev/node) to their pod's node.", s.Checked)
		} else {
			fmt.Fprintf(&b, "Node affinity: **%d of %d volumes not on their pod's node**: %s.", len(s.Mismatches), s.Checked, strings.Join(s.Mismatches, "; "))
		}
		if len(s.Rounds) > 0 {
			fmt.Fprintf(&b, " Replicas per node (round 1): %v.", s.Rounds[0].PerNode)
		}
		fmt.Fprintf(&b, "\n\n")
	}
	if r := c.Restore; r != nil {
		fmt.Fprintf(&b, "### Restore to Ready\n\n")
		if r.Skipped != "" {
			fmt.Fprintf(&b, "Skipped: %s.\n\n", r.Skipped)
			return b.String()
		}
		fmt.Fprintf(&b, "A %d MiB volume with %d MiB written, snapshotted (VolumeSnapshot ready in %.1f s). Each round: a claim restored from the snapshot and a new empty claim of the same size, each with a pod pinned to the snapshot's node (%s) whose init container checks the data (restored: all of it; new: none), timed from the claim's creation to the pod Ready; %d round(s), order alternated.\n\n",
			r.VolumeBytes>>20, r.DataBytes>>20, r.SnapshotSec, r.Node, r.Rounds)
		fmt.Fprintf(&b, "| | seconds |\n|---|---|\n| restored claim: pod Ready | %s |\n| new claim: pod Ready | %s |\n| restored ÷ new (per round) | %s |\n\n",
			fmtSecs(r.RestoreSec), fmtSecs(r.NewSec), fmtSpread(r.Ratio))
	}
	return b.String()
}

func fmtSecs(s spread) string {
	return fmt.Sprintf("%.1f [%.1f–%.1f]", s.Median, s.Min, s.Max)
}
