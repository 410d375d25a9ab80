//go:build powerloss

package powerloss

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// acks is what a boot's events say was acknowledged and in flight at the cut.
type acks struct {
	ops      map[string]int // acknowledged calls by op
	recs     map[string]int // records acknowledged, by pool
	vols     map[string]int // volumes acknowledged made, by pool
	inFlight []string
}

func tally(events []event) acks {
	a := acks{ops: map[string]int{}, recs: map[string]int{}, vols: map[string]int{}}
	calls := map[int]event{}
	lastRec := map[string]int{}
	for _, ev := range events {
		switch ev.Ev {
		case "call":
			calls[ev.Seq] = ev
		case "ack":
			if ev.Op == "rec" {
				lastRec[ev.ID] = ev.Recs
				continue
			}
			a.ops[ev.Op]++
			if c := calls[ev.Seq]; ev.Op == "create" {
				a.vols[c.Pool]++
			}
			delete(calls, ev.Seq)
		}
	}
	for id, n := range lastRec {
		a.recs[strings.SplitN(id, ".", 2)[0]] += n
	}
	for _, seq := range slices.Sorted(maps.Keys(calls)) {
		c := calls[seq]
		what := c.Name
		if c.Snap != "" {
			what += " (restore)"
		}
		a.inFlight = append(a.inFlight, c.Op+" "+what)
	}
	return a
}

func (b *bootResult) summary() string {
	var s strings.Builder
	fmt.Fprintf(&s, "boot %d: %.0f s in the VM (%.0f s with the wait for the VM lock), exit %d", b.n, b.vmTime.Seconds(), b.took.Seconds(), b.rc)
	if b.cut {
		a := tally(b.events)
		fmt.Fprintf(&s, "; power cut %.2f s after every pool's writers ran; acknowledged %s, records %s; in flight: %s",
			b.cutAfter.Seconds(), counts(a.ops), counts(a.recs), strings.Join(a.inFlight, ", "))
	}
	if len(b.marks) > 0 {
		fmt.Fprintf(&s, "\n    uptime (s): %s", strings.Join(b.marks, "; "))
	}
	for _, c := range b.checks {
		fmt.Fprintf(&s, "\n    check: %s", c)
	}
	for _, f := range b.fails {
		fmt.Fprintf(&s, "\n    FAILED: %s", f)
	}
	return s.String()
}

func counts(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// writeReport writes the run's report to report-SEED.txt and report.txt.
func writeReport(t *testing.T, out string, cfg hostConfig, boots []*bootResult, took time.Duration) string {
	var s strings.Builder
	fmt.Fprintf(&s, "power-loss run, seed %d (FLASHPV_POWERLOSS_SEED=%d), %d cuts planned, cut window %v\n", cfg.seed, cfg.seed, cfg.cuts, cfg.window)
	var kinds []string
	for _, p := range pools {
		kinds = append(kinds, fmt.Sprintf("%s (%s)", p.name, p.arg))
	}
	fmt.Fprintf(&s, "pools, all five in every boot: %s\n\n", strings.Join(kinds, ", "))
	cuts, fails := 0, 0
	var vmTime time.Duration
	tot := acks{ops: map[string]int{}, recs: map[string]int{}, vols: map[string]int{}}
	inFlight := 0
	for _, b := range boots {
		s.WriteString(b.summary() + "\n")
		fails += len(b.fails)
		vmTime += b.vmTime
		if !b.cut {
			continue
		}
		cuts++
		a := tally(b.events)
		for k, v := range a.ops {
			tot.ops[k] += v
		}
		for k, v := range a.recs {
			tot.recs[k] += v
		}
		for k, v := range a.vols {
			tot.vols[k] += v
		}
		inFlight += len(a.inFlight)
	}
	fmt.Fprintf(&s, "\ntotals: %d power cuts (each in all %d pools at once), %d boots in %.1f min, %.1f min of it in the VM (%.0f s a boot)\n",
		cuts, len(pools), len(boots), took.Minutes(), vmTime.Minutes(), vmTime.Seconds()/float64(max(len(boots), 1)))
	fmt.Fprintf(&s, "  acknowledged before the cuts: %s\n", counts(tot.ops))
	fmt.Fprintf(&s, "  volumes acknowledged, by pool: %s\n", counts(tot.vols))
	fmt.Fprintf(&s, "  records acknowledged (fsync returned), by pool: %s\n", counts(tot.recs))
	fmt.Fprintf(&s, "  calls in flight at the cuts: %d\n", inFlight)
	fmt.Fprintf(&s, "  failures: %d\n", fails)
	rep := s.String()
	for _, name := range []string{"report.txt", fmt.Sprintf("report-%d.txt", cfg.seed)} {
		if err := os.WriteFile(filepath.Join(out, name), []byte(rep), 0o644); err != nil {
			t.Error(err)
		}
	}
	return rep
}
