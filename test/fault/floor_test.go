package fault

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// A run that kills nothing inside calls tests nothing, and passes. So each
// trigger kind a backend can produce must cut at least a floor of calls
// short (a kill after the answer arrived does not count), or the run
// fails. The floor scales with the run's length and keeps far enough below
// what was measured that a run fails by bad luck about never, yet above
// zero at the length `make test` runs: a change to the harness that stops
// killing inside calls fails. A kind a backend cannot produce has no rate
// and no floor (quota pools: not measured yet).

// killRates are the fewest kills inside calls per operation measured, by
// backend and trigger kind. Image: 20 seeds of 300 operations (at a delay
// 43–89 kills, mean 57; in a command 8–32, mean 16.5) and 10 of 40 (4–12
// and 2–10); the rate is the lowest of either length (4/40 and 8/300).
// lvm: two VM runs only (40 and 120 operations, 0.10 and 0.12 per
// operation at the least), halved until more are measured.
var killRates = map[string]map[triggerKind]float64{
	"image":     {afterDelay: 4.0 / 40, inCommand: 8.0 / 300},
	"lvm-thin":  {afterDelay: 0.05, inCommand: 0.05},
	"lvm-thick": {afterDelay: 0.05, inCommand: 0.05},
}

// killFloor is the fewest kills inside calls of a kind a run of ops
// operations may have, where rate is the lowest rate measured: m = rate ×
// ops is the count of the poorest seed measured, scaled to the run. The
// floor is half of m, or ⌊(√m − 1.5)²⌋ where that is lower (small counts):
// the square root of a run's count was measured to vary by about 0.8 (0.5
// at 40 operations), and the poorest of 20 seeds is about two of those
// below the mean, so the floor is at least four below it. For 300
// operations on image pools that is 15 at a delay and 1 in a command; for
// 40, none.
func killFloor(rate float64, ops int) int {
	m := rate * float64(ops)
	small := math.Sqrt(m) - 1.5
	if small <= 0 {
		return 0
	}
	return int(math.Floor(min(m/2, small*small)))
}

// checkKillFloors fails the run where a trigger kind's kills inside calls
// fall below its floor.
func (r *run) checkKillFloors() {
	for _, k := range triggerKinds {
		rate, ok := killRates[r.cfg.backend][k]
		if !ok {
			continue
		}
		if floor := killFloor(rate, r.stats.ops); r.stats.inside[k] < floor {
			r.t.Errorf("seed %d: %d kills inside calls by the %s trigger, fewer than the floor of %d for %d operations on %s: is the harness still killing inside calls?",
				r.cfg.seed, r.stats.inside[k], k, floor, r.stats.ops, r.cfg.backend)
		}
	}
}

// floorReport is the report's line on the floors.
func (r *run) floorReport() string {
	var parts []string
	for _, k := range triggerKinds {
		s := fmt.Sprintf("%s %d", k, r.stats.inside[k])
		if rate, ok := killRates[r.cfg.backend][k]; ok {
			s += fmt.Sprintf(" (floor %d)", killFloor(rate, r.stats.ops))
		} else {
			s += " (no floor)"
		}
		parts = append(parts, s)
	}
	return "kills inside calls before the answer, by trigger: " + strings.Join(parts, ", ") + "\n"
}

func TestKillFloor(t *testing.T) {
	for _, tc := range []struct {
		rate float64
		ops  int
		want int
	}{
		{rate: 0, ops: 1000, want: 0},
		{rate: killRates["image"][afterDelay], ops: 40, want: 0},
		{rate: killRates["image"][afterDelay], ops: 300, want: 15},
		{rate: killRates["image"][afterDelay], ops: 1000, want: 50},
		{rate: killRates["image"][inCommand], ops: 40, want: 0},
		{rate: killRates["image"][inCommand], ops: 300, want: 1},
		{rate: killRates["image"][inCommand], ops: 1000, want: 13},
	} {
		t.Run(fmt.Sprintf("%.3g×%d", tc.rate, tc.ops), func(t *testing.T) {
			if got := killFloor(tc.rate, tc.ops); got != tc.want {
				t.Errorf("killFloor(%v, %d) = %d, want %d", tc.rate, tc.ops, got, tc.want)
			}
		})
	}
}
