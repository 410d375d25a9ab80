package mover

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Both outcomes of a move are exported at 0 before any move ends, so that
// the first rollback after a start is an increase (FlashpvMoveFailing).
func TestMoveOutcomesStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP flashpv_moves_finished_total Moves that ended, by outcome: moved, or rolled-back (cancelled, or a step failed; the volume stayed where it was).
# TYPE flashpv_moves_finished_total counter
flashpv_moves_finished_total{outcome="moved"} 0
flashpv_moves_finished_total{outcome="rolled-back"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "flashpv_moves_finished_total"); err != nil {
		t.Error(err)
	}
}
