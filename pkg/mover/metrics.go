package mover

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the move controller's Prometheus metrics.
type Metrics struct {
	started    prometheus.Counter
	finished   *prometheus.CounterVec
	inProgress *prometheus.GaugeVec
	steps      *prometheus.CounterVec
}

// NewMetrics registers the metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		started: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flashpv_moves_started_total",
			Help: "Moves of a volume to another node that were started (a flashpv.dev/move-to request, or a drained node of a drainPolicy: Move class).",
		}),
		finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashpv_moves_finished_total",
			Help: "Moves that ended, by outcome: moved, or rolled-back (cancelled, or a step failed; the volume stayed where it was).",
		}, []string{"outcome"}),
		inProgress: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flashpv_moves_in_progress",
			Help: "Moves under way, by state (the flashpv.dev/move-state of their PV).",
		}, []string{"state"}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashpv_move_steps_total",
			Help: "Steps the move controller took, by action and result (ok, error: tried again at the next sync).",
		}, []string{"action", "result"}),
	}
	for _, c := range []prometheus.Collector{m.started, m.finished, m.inProgress, m.steps} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Both outcomes start at 0: increase() sees nothing of a series whose
	// first sample is already 1, so an alert on the first rollback after a
	// start would miss it.
	for _, outcome := range []string{"moved", "rolled-back"} {
		m.finished.WithLabelValues(outcome)
	}
	return m, nil
}
