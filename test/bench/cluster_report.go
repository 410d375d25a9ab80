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
		} else {
			r.markdown(&b)
		}
	}
	if t := c.Transfer; t != nil {
		t.markdown(&b)
	}
	if m := c.Move; m != nil {
		m.markdown(&b)
	}
	return b.String()
}

func (r *restoreResult) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "A %d MiB volume with %d MiB written, snapshotted (VolumeSnapshot ready in %.1f s). Each round: a claim restored from the snapshot and a new empty claim of the same size, each with a pod pinned to the snapshot's node (%s) whose init container checks the data (restored: all of it; new: none), timed from the claim's creation to the pod Ready; %d round(s), order alternated.\n\n",
		r.VolumeBytes>>20, r.DataBytes>>20, r.SnapshotSec, r.Node, r.Rounds)
	fmt.Fprintf(b, "| | seconds |\n|---|---|\n| restored claim: pod Ready | %s |\n| new claim: pod Ready | %s |\n| restored ÷ new (per round) | %s |\n\n",
		fmtSecs(r.RestoreSec), fmtSecs(r.NewSec), fmtSpread(r.Ratio))
}

// markdown is the transfer part's section: one column per bandwidth.
func (t *transferResult) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "### Restores across nodes\n\n")
	if t.Skipped != "" {
		fmt.Fprintf(b, "Skipped: %s.\n\n", t.Skipped)
		return
	}
	fmt.Fprintf(b, "A %d MiB volume with %d MiB written on %s, snapshotted (ready in %.1f s; its file allocates %d MiB). Each round: a claim restored from the snapshot with its pod pinned to %s (flashpv fetches the data from %s over mutual TLS 1.3), and a plain TCP copy of the snapshot file's data extents between the same two nodes' network namespaces into a file on %s's pool filesystem, allocated first and synced once at the end (the bench's own sender and receiver: no TLS, no hashes); order alternated, the source's page cache dropped before each. Transfer time from the target's log (\"Volume data received from another node\"), bytes from its metrics (flashpv_transfer_bytes_total, direction in); MB/s is data bytes ÷ 10⁶ per second. CPU and run-queue wait (time the threads were runnable but had no CPU, from schedstat; for flashpv from the claim's creation to Ready) tell a transfer that does too much work from one on a busy machine. Medians [lowest–highest].\n\n",
		t.VolumeBytes>>20, t.DataBytes>>20, t.SourceNode, t.SnapshotSec, t.SnapshotAllocated>>20, t.TargetNode, t.SourceNode, t.TargetNode)
	fmt.Fprintf(b, "| --transfer-bandwidth |")
	for _, r := range t.Runs {
		fmt.Fprintf(b, " %s, %d round(s) |", bandwidthOrDefault(r.Bandwidth), len(r.Rounds))
	}
	fmt.Fprintf(b, "\n|---|%s\n", strings.Repeat("---|", len(t.Runs)))
	row := func(name string, f func(r transferRun) string) {
		fmt.Fprintf(b, "| %s |", name)
		for _, r := range t.Runs {
			fmt.Fprintf(b, " %s |", f(r))
		}
		fmt.Fprintf(b, "\n")
	}
	each := func(f func(transferRound) float64) func(transferRun) spread {
		return func(r transferRun) spread {
			var xs []float64
			for _, x := range r.Rounds {
				xs = append(xs, f(x))
			}
			return spreadOf(xs)
		}
	}
	data := each(func(x transferRound) float64 { return float64(x.DataBytes) })
	wire := each(func(x transferRound) float64 { return float64(x.WireBytes) })
	ratio := each(func(x transferRound) float64 { return float64(x.WireBytes) / float64(x.DataBytes) })
	cpu := func(src, dst func(transferRound) float64) func(transferRun) string {
		return func(r transferRun) string {
			return fmt.Sprintf("%.2f / %.2f", each(src)(r).Median, each(dst)(r).Median)
		}
	}
	row("claim created to pod Ready, s", func(r transferRun) string { return fmtSecs(r.ReadySec) })
	row("transfer, s", func(r transferRun) string {
		return fmt.Sprintf("%.2f [%.2f–%.2f]", r.Seconds.Median, r.Seconds.Min, r.Seconds.Max)
	})
	row("source's send (its log: \"Transfer sent\"), s", func(r transferRun) string {
		return fmt.Sprintf("%.2f", each(func(x transferRound) float64 { return x.SendSec })(r).Median)
	})
	row("flashpv, MB/s", func(r transferRun) string { return fmtMBps(r.MBps) })
	row("plain TCP copy, MB/s", func(r transferRun) string { return fmtMBps(r.PlainMBps) })
	row(fmt.Sprintf("**flashpv ÷ plain** (per round; target ≥ %.1f)", transferTarget), func(r transferRun) string { return "**" + fmtSpread(r.Ratio) + "**" })
	row("data bytes (MiB)", func(r transferRun) string { return fmt.Sprintf("%.1f", data(r).Median/(1<<20)) })
	row("wire bytes (MiB)", func(r transferRun) string { return fmt.Sprintf("%.1f", wire(r).Median/(1<<20)) })
	row("wire ÷ data", func(r transferRun) string { return fmt.Sprintf("%.4f", ratio(r).Median) })
	row("plain copy: data bytes (MiB)", func(r transferRun) string {
		return fmt.Sprintf("%.1f", each(func(x transferRound) float64 { return float64(x.PlainDataBytes) })(r).Median/(1<<20))
	})
	row("CPU s, flashpv source / target (claim to Ready)", cpu(func(x transferRound) float64 { return x.SourceCPUSec }, func(x transferRound) float64 { return x.TargetCPUSec }))
	row("CPU s, plain sender / receiver", cpu(func(x transferRound) float64 { return x.PlainSendCPU }, func(x transferRound) float64 { return x.PlainRecvCPU }))
	row("run-queue wait s, flashpv source / target", cpu(func(x transferRound) float64 { return x.SourceWaitSec }, func(x transferRound) float64 { return x.TargetWaitSec }))
	row("run-queue wait s, plain sender / receiver", cpu(func(x transferRound) float64 { return x.PlainSendWait }, func(x transferRound) float64 { return x.PlainRecvWait }))
	row("load average (1 min) as rounds start", func(r transferRun) string {
		return fmt.Sprintf("%.1f", each(func(x transferRound) float64 { return x.LoadAverage })(r).Median)
	})
	fmt.Fprintf(b, "\n")
}

func fmtMBps(s spread) string {
	return fmt.Sprintf("%.0f [%.0f–%.0f]", s.Median, s.Min, s.Max)
}

func fmtSecs(s spread) string {
	return fmt.Sprintf("%.1f [%.1f–%.1f]", s.Median, s.Min, s.Max)
}

// markdown is the move part's section.
func (m *moveResult) markdown(b *strings.Builder) {
	fmt.Fprintf(b, "### A drained replica moved to another node\n\n")
	if m.Skipped != "" {
		fmt.Fprintf(b, "Skipped: %s.\n\n", m.Skipped)
		return
	}
	fmt.Fprintf(b, "A one-replica StatefulSet (examples/statefulset.yaml) on a drainPolicy: Move class, a %d MiB volume with %d MiB written. Each round: a plain restart (the pod evicted, made again on its node) and a move (its node cordoned; once the pre-copy's snapshot is on the target, %d MiB rewritten, the pod evicted), timed from the eviction to the pod Ready; the data's checksum compared after each move; %d round(s), order alternated. Moves: %s.\n\n",
		m.VolumeBytes>>20, m.DataBytes>>20, m.ChangedBytes>>20, m.Rounds, strings.Join(m.Paths, ", "))
	fmt.Fprintf(b, "| | seconds |\n|---|---|\n| moved: eviction to Ready on the new node (target < 30) | %s |\n| plain restart: eviction to Ready | %s |\n| **moved ÷ restart** (per round; target < 2) | **%s** |\n| pre-copy: cordon to the snapshot on the target, while the pod runs | %s |\n| eviction to the move Done (old copy and snapshot deleted) | %s |\n\n",
		fmtSecs(m.MoveSec), fmtSecs(m.RestartSec), fmtSpread(m.Ratio), fmtSecs(m.PreCopySec), fmtSecs(m.DoneSec))
}
