package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

type settings struct {
	Rounds           int     `json:"rounds"`
	RuntimeSec       float64 `json:"runtime_sec"`
	RampSec          float64 `json:"ramp_sec"`
	FioBytes         int64   `json:"fio_bytes"`
	Volumes          int     `json:"control_volumes"`
	Concurrency      []int   `json:"control_concurrency"`
	Scale            int     `json:"scale_volumes"`
	ScaleVolumeBytes int64   `json:"scale_volume_bytes"`
}

type report struct {
	Machine  machine          `json:"machine"`
	Settings settings         `json:"settings"`
	Seconds  float64          `json:"seconds"`
	Data     []dataResult     `json:"data,omitempty"`
	Control  []controlResult  `json:"control,omitempty"`
	Scale    *scaleResult     `json:"scale,omitempty"`
	Snapshot []snapshotResult `json:"snapshot,omitempty"`
	Cluster  *clusterResult   `json:"cluster,omitempty"`
}

// volumeTargets are the volume kinds compared with raw, in report order.
var volumeTargets = []string{"ext4", "xfs", "block"}

// write writes the report files, and prints the Markdown when show is set.
func (r *report) write(dir string, show bool) error {
	if err := writeJSON(filepath.Join(dir, "report.json"), r); err != nil {
		return err
	}
	if len(r.Data) > 0 {
		if err := writeChart(filepath.Join(dir, "ratios.png"), r.Data); err != nil {
			return err
		}
	}
	md := r.markdown()
	if show {
		fmt.Print(md)
	}
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(md), 0o644)
}

func (r *report) markdown() string {
	var b strings.Builder
	m := r.Machine
	fmt.Fprintf(&b, "# flashpv benchmark, %s\n\n", m.Date)
	fmt.Fprintf(&b, "Machine: %s, %d × %s, %s RAM, kernel %s. Pool filesystem: %s on %s. %s. flashpv %s. Whole run: %.0f s.\n\n",
		m.Host, m.CPUs, m.CPU, m.Memory, m.Kernel, m.PoolFS, m.Device, m.Fio, m.Flashpv, r.Seconds)
	s := r.Settings
	if len(r.Data) > 0 {
		fmt.Fprintf(&b, "## Data path: volume ÷ raw\n\n")
		fmt.Fprintf(&b, "fio, O_DIRECT, libaio, over %d MiB, after writing all of it; %d rounds of %.0f s (after %.0f s of warm-up) per case and target, targets alternated. ",
			s.FioBytes>>20, s.Rounds, s.RuntimeSec, s.RampSec)
		fmt.Fprintf(&b, "raw is a file on the pool's filesystem; ext4 and xfs are a file in a Filesystem volume; block is a Block volume. ")
		fmt.Fprintf(&b, "Ratios are per round (volume ÷ raw of the same round): median [lowest–highest]. Higher is better for throughput, lower for p99.\n\n")
		fmt.Fprintf(&b, "| case | raw | ext4 | xfs | block | ext4 ÷ raw | xfs ÷ raw | block ÷ raw | p99 ext4 ÷ raw | p99 xfs ÷ raw | p99 block ÷ raw |\n")
		fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, d := range r.Data {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s", d.Case.Name, value(d, "raw"), value(d, "ext4"), value(d, "xfs"), value(d, "block"))
			for _, t := range volumeTargets {
				fmt.Fprintf(&b, " | %s", fmtSpread(d.Ratio[t]))
			}
			for _, t := range volumeTargets {
				fmt.Fprintf(&b, " | %s", fmtSpread(d.P99[t]))
			}
			fmt.Fprintf(&b, " |\n")
		}
		fmt.Fprintf(&b, "\nLatency (submission to completion, µs, medians of the rounds) and what the whole machine spent per I/O:\n\n")
		fmt.Fprintf(&b, "| case | target | p50 | p99 | p99.9 | CPU µs/IO | ctx switches/IO | interrupts/IO | IPIs/IO |\n|---|---|---|---|---|---|---|---|---|\n")
		for _, d := range r.Data {
			for _, t := range append([]string{"raw"}, volumeTargets...) {
				x := d.Median[t]
				fmt.Fprintf(&b, "| %s | %s | %.0f | %.0f | %.0f | %.1f | %.2f | %.2f | %.2f |\n", d.Case.Name, t, x.P50us, x.P99us, x.P999us, x.CPUus, x.CtxSw, x.Interru, x.IPIs)
			}
		}
		fmt.Fprintf(&b, "\n![volume ÷ raw](ratios.png)\n\n")
	}
	if len(r.Control) > 0 {
		fmt.Fprintf(&b, "## Control path\n\n")
		fmt.Fprintf(&b, "Whole lifecycles of 1 GiB ext4 volumes over the CSI socket (NodeExpandVolume: online growth of a published 1 GiB %s volume to 1.5 GiB). p50 / p99 in ms.\n\n", r.Control[0].Expansion)
		fmt.Fprintf(&b, "| call |")
		for _, c := range r.Control {
			fmt.Fprintf(&b, " C=%d (%d volumes) |", c.Concurrency, c.Volumes)
		}
		fmt.Fprintf(&b, "\n|---|%s\n", strings.Repeat("---|", len(r.Control)))
		for _, name := range controlRPCs {
			fmt.Fprintf(&b, "| %s |", name)
			for _, c := range r.Control {
				st := c.RPC[name]
				fmt.Fprintf(&b, " %.1f / %.1f |", st.P50ms, st.P99ms)
			}
			fmt.Fprintf(&b, "\n")
		}
		fmt.Fprintf(&b, "| lifecycles per second |")
		for _, c := range r.Control {
			fmt.Fprintf(&b, " %.1f |", c.VolumesPerSec)
		}
		fmt.Fprintf(&b, "\n\n")
	}
	if sc := r.Scale; sc != nil {
		fmt.Fprintf(&b, "## Scale: %d volumes on one node\n\n", sc.Volumes)
		fmt.Fprintf(&b, "%d ext4 volumes of %d MiB created, staged and published at concurrency 8 in %.1f s, torn down in %.1f s.\n\n",
			sc.Volumes, s.ScaleVolumeBytes>>20, sc.FillSeconds, sc.TeardownSeconds)
		fmt.Fprintf(&b, "- Restart (SIGTERM, then a new process): stopped in %.0f ms; ready (Probe) %.0f ms after exec; serving %.0f ms after exec, with all %d volumes listed by ListVolumes. NodeGetVolumeStats of every volume then took %.1f s at concurrency 8.\n",
			sc.StopSeconds*1000, sc.ReadySeconds*1000, sc.ServingSeconds*1000, sc.Volumes, sc.StatsSeconds)
		fmt.Fprintf(&b, "- RSS with %d volumes: %.1f MiB (peak %.1f MiB) before the restart, %.1f MiB after.\n\n",
			sc.Volumes, mib(sc.RSSBefore), mib(sc.PeakBefore), mib(sc.RSSAfter))
		fmt.Fprintf(&b, "Latency of one more volume's calls, one at a time, p50 in ms:\n\n| call | with %d | with %d | ratio |\n|---|---|---|---|\n", sc.Small, sc.Volumes)
		for _, name := range probeRPCs {
			a, z := sc.AtSmall[name].P50ms, sc.AtScale[name].P50ms
			fmt.Fprintf(&b, "| %s | %.2f | %.2f | %.2f |\n", name, a, z, z/a)
		}
		fmt.Fprintf(&b, "\n")
	}
	b.WriteString(snapshotMarkdown(r.Snapshot))
	if r.Cluster != nil {
		b.WriteString(r.Cluster.markdown())
	}
	return b.String()
}

func value(d dataResult, t string) string {
	v := d.Median[t].Value
	if d.Case.Unit == "MB/s" {
		return fmt.Sprintf("%.0f MB/s", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func fmtSpread(s spread) string {
	return fmt.Sprintf("%.2f [%.2f–%.2f]", s.Median, s.Min, s.Max)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
