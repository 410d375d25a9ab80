package clustercontroller

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashpv/flashpv/pkg/mover"
	"github.com/flashpv/flashpv/pkg/nodeloss"
)

// RegisterMetrics registers on reg, with no API client behind them, the
// collectors Run registers besides the Go runtime's and the process's:
// the node-loss reconciler's, the volume list writer's, the node status
// collector's, the transfer broker's and the moves'. docs/reference.md's test reads
// the metrics of `flashpv controller` from it; a collector Run registers
// elsewhere must be added here too.
func RegisterMetrics(reg prometheus.Registerer) error {
	if _, err := nodeloss.NewMetrics(reg); err != nil {
		return err
	}
	if _, err := newListWriter(nil, "", nil, nil, 0, reg); err != nil {
		return err
	}
	if _, err := newStatusCollector(nil, "", nil, nil, nil, 0, reg); err != nil {
		return err
	}
	if _, err := mover.NewMetrics(reg); err != nil {
		return err
	}
	opts := TransferOptions{NodePodLabel: "app.kubernetes.io/name=flashpv"}
	_, err := newTransferBroker(opts, "", nil, nil, nodeloss.Listers{}, nil, reg)
	return err
}
