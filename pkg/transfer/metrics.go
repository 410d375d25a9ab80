package transfer

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

const (
	dirIn  = "in"
	dirOut = "out"

	resultDone   = "done"
	resultFailed = "failed"
	resultDenied = "denied"
	resultBusy   = "busy"
)

// Metrics count transfers in both directions. A nil *Metrics counts
// nothing.
type Metrics struct {
	transfers *prometheus.CounterVec
	bytes     *prometheus.CounterVec
	active    *prometheus.GaugeVec
}

// NewMetrics registers the transfer metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		transfers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashpv_transfers_total",
			Help: "Transfers of volume data between nodes, by direction (in: this node received) and result.",
		}, []string{"direction", "result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashpv_transfer_bytes_total",
			Help: "Bytes of transfers between nodes, by direction; kind data counts the volume data, wire everything sent.",
		}, []string{"direction", "kind"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flashpv_transfers_in_progress",
			Help: "Transfers between nodes running now, by direction.",
		}, []string{"direction"}),
	}
	for _, c := range []prometheus.Collector{m.transfers, m.bytes, m.active} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) served(result string) { m.count(dirOut, result) }

// Received counts a transfer into this node.
func (m *Metrics) Received(result string) { m.count(dirIn, result) }

func (m *Metrics) count(dir, result string) {
	if m != nil {
		m.transfers.WithLabelValues(dir, result).Inc()
	}
}

func (m *Metrics) begin(dir string) {
	if m != nil {
		m.active.WithLabelValues(dir).Inc()
	}
}

func (m *Metrics) end(dir string) {
	if m != nil {
		m.active.WithLabelValues(dir).Dec()
	}
}

func (m *Metrics) add(dir string, st stream.Stats) {
	if m != nil {
		m.bytes.WithLabelValues(dir, "data").Add(float64(st.DataBytes))
		m.bytes.WithLabelValues(dir, "wire").Add(float64(st.WireBytes))
	}
}
