package nodeloss

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the node loss controller's Prometheus metrics.
type Metrics struct {
	lost    prometheus.Gauge
	stuck   *prometheus.GaugeVec
	waiting *prometheus.GaugeVec
	actions *prometheus.CounterVec
}

// NewMetrics registers the metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		lost: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flashpv_nodeloss_lost_nodes",
			Help: "Nodes named by flashpv PVs that have no Node object (in their grace period or past it).",
		}),
		stuck: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flashpv_nodeloss_stuck_claims",
			Help: "PVs (and their claims) of nodes gone past the grace period that flashpv will not delete: their class did not opt in (nodeLossPolicy: Recreate) or the PV is retained. The claim label names the claim an operator must delete.",
		}, []string{"node", "claim", "pv"}),
		waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flashpv_nodeloss_waiting_volumes",
			Help: "PVs of lost nodes that flashpv will act on once what they wait for happens (grace period, a pod still bound, a deletion in progress).",
		}, []string{"node"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashpv_nodeloss_actions_total",
			Help: "Deletions done for lost nodes, by action (DeleteClaim, DeletePV, RemoveFinalizer) and result (ok, error, refused: a precondition or a re-check stopped it).",
		}, []string{"action", "result"}),
	}
	for _, c := range []prometheus.Collector{m.lost, m.stuck, m.waiting, m.actions} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
