package main

import (
	"fmt"
	"slices"
	"strings"
)

// markdown is the cluster phase's section of report.md.
func (c *clusterResult) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Cluster: %d node(s)\n\n", len(c.Nodes))
	fmt.Fprintf(&b, "Run of %s, flashpv %s, %.0f s. The local cluster of hack/cluster (nodes %s, each its own namespaces, kubelet and pool filesystem on this host), flashpv deployed from deploy/kubernetes. Times are from the API request to the state, polled; medians [lowest–highest].\n\n",
		c.Date, c.Flashpv, c.Seconds, strings.Join(c.Nodes, ", "))
	if s := c.Scale; s != nil {
		s.markdown(&b)
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

// markdown is the scale-up's section. A report of a run before the static
// arm has no static rounds, and no static rows.
func (s *scaleUpResult) markdown(b *strings.Builder) {
	static := s.StaticSec.Median > 0
	fmt.Fprintf(b, "### StatefulSet scale-up, 0 to %d replicas\n\n", s.Replicas)
	if static {
		fmt.Fprintf(b, "examples/statefulset.yaml (Parallel pods, preferred anti-affinity, a readiness probe every 2 s) with %d MiB volumes of the example class; the same StatefulSet on local PersistentVolumes made in advance (the floor: a kubernetes.io/no-provisioner class, WaitForFirstConsumer, %d volumes per node, each a directory on the node's pool filesystem, so no provisioner at all); and on emptyDir. %d round(s) after a warm-up, the three rotated; between rounds flashpv's claims are deleted and their volumes gone, the static claims deleted and their volumes emptied and Available again.\n\n",
			s.VolumeBytes>>20, s.Replicas, len(s.Rounds))
	} else {
		fmt.Fprintf(b, "examples/statefulset.yaml (Parallel pods, preferred anti-affinity, a readiness probe every 2 s) with %d MiB volumes of the example class, and the same StatefulSet on emptyDir; %d round(s) after a warm-up, the two alternated, claims deleted and volumes gone between rounds.\n\n",
			s.VolumeBytes>>20, len(s.Rounds))
	}
	fmt.Fprintf(b, "| | seconds |\n|---|---|\n")
	fmt.Fprintf(b, "| flashpv: all Ready | %s |\n", fmtSecs(s.FlashpvSec))
	if static {
		fmt.Fprintf(b, "| static local volumes: all Ready | %s |\n", fmtSecs(s.StaticSec))
	}
	fmt.Fprintf(b, "| emptyDir: all Ready | %s |\n", fmtSecs(s.EmptyDirSec))
	if static {
		fmt.Fprintf(b, "| **flashpv ÷ static** (per round; target ≤ %.1f in every round) | **%s** |\n", s.StaticTarget, fmtSpread(s.VsStatic))
		fmt.Fprintf(b, "| static ÷ emptyDir (per round: the floor any PersistentVolume pays) | %s |\n", fmtSpread(s.StaticVsEmptyDir))
		fmt.Fprintf(b, "| flashpv ÷ emptyDir (per round) | %s |\n", fmtSpread(s.Ratio))
	} else {
		fmt.Fprintf(b, "| **flashpv ÷ emptyDir** (per round; target ≤ 1.2) | **%s** |\n", fmtSpread(s.Ratio))
	}
	fmt.Fprintf(b, "| flashpv: all claims Bound | %s |\n", fmtSecs(s.BoundSec))
	fmt.Fprintf(b, "| flashpv: scale to 0, claims deleted, volumes gone | %s |\n\n", fmtSecs(s.TeardownSec))
	if static {
		s.roundsMarkdown(b)
	}
	s.stagesMarkdown(b)
	if len(s.Mismatches) == 0 {
		fmt.Fprintf(b, "Node affinity: all %d flashpv volumes pinned (flashpv.dev/node) to their pod's node.", s.Checked)
	} else {
		fmt.Fprintf(b, "Node affinity: **%d of %d flashpv volumes not on their pod's node**: %s.", len(s.Mismatches), s.Checked, strings.Join(s.Mismatches, "; "))
	}
	if len(s.Rounds) > 0 {
		fmt.Fprintf(b, " flashpv replicas per node (round 1): %v.", s.Rounds[0].PerNode)
	}
	fmt.Fprintf(b, "\n\n")
}

// roundsMarkdown is the per-round table against the floor, and the verdict
// on the worst round.
func (s *scaleUpResult) roundsMarkdown(b *strings.Builder) {
	fmt.Fprintf(b, "| round | order | flashpv, s | static, s | emptyDir, s | flashpv ÷ static | static ÷ emptyDir |\n|---|---|---|---|---|---|---|\n")
	worst := 0
	for i, r := range s.Rounds {
		fmt.Fprintf(b, "| %d | %s | %.1f | %.1f | %.1f | %.2f | %.2f |\n", i+1, strings.Join(r.Order, ", "), r.FlashpvSec, r.StaticSec, r.EmptyDirSec, r.VsStatic, r.StaticVsEmptyDir)
		if r.VsStatic > s.Rounds[worst].VsStatic {
			worst = i
		}
	}
	verdict := "met"
	if !s.WithinStatic {
		verdict = "**not met**"
	}
	fmt.Fprintf(b, "\nflashpv ÷ static: median %.2f; worst round %d at %.2f against the target %.1f in every round: %s.\n\n",
		s.VsStatic.Median, worst+1, s.VsStatic.Max, s.StaticTarget, verdict)
}

// stagesMarkdown is where the time goes, per arm.
func (s *scaleUpResult) stagesMarkdown(b *strings.Builder) {
	if len(s.FlashpvStages) == 0 {
		return
	}
	arms := []struct {
		name   string
		stages []stage
	}{{"flashpv", s.FlashpvStages}, {"static", s.StaticStages}, {"emptyDir", s.EmptyDirStages}}
	if len(s.StaticStages) == 0 {
		arms = slices.Delete(arms, 1, 2)
	}
	fmt.Fprintf(b, "Where the time goes: seconds from the scale request until half of the replicas, and the last one, reached each stage (medians over the rounds; a stage is seen by polling every 0.2 s).\n\n")
	fmt.Fprintf(b, "| stage |")
	for _, a := range arms {
		fmt.Fprintf(b, " %s: half / last |", a.name)
	}
	fmt.Fprintf(b, "\n|---|%s\n", strings.Repeat("---|", len(arms)))
	for _, st := range s.FlashpvStages {
		fmt.Fprintf(b, "| %s |", st.Name)
		for _, a := range arms {
			cell := "–"
			for _, x := range a.stages {
				if x.Name == st.Name {
					cell = fmt.Sprintf("%.1f / %.1f", x.Median, x.Last)
				}
			}
			fmt.Fprintf(b, " %s |", cell)
		}
		fmt.Fprintf(b, "\n")
	}
	fmt.Fprintf(b, "\n")
	var lag, staticLag []string
	for _, r := range s.Rounds {
		lag, staticLag = append(lag, fmt.Sprint(r.AuthorizerLag)), append(staticLag, fmt.Sprint(r.StaticAuthorizerLag))
	}
	fmt.Fprintf(b, "Pods whose kubelet was refused their claim once by the API server's node authorizer (\"no relationship found\"; the kubelet retries the pod after a back-off), per round, of %d: flashpv %s", s.Replicas, strings.Join(lag, ", "))
	if len(s.StaticStages) > 0 {
		fmt.Fprintf(b, "; static %s", strings.Join(staticLag, ", "))
	}
	fmt.Fprintf(b, ".\n\n")
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
