package nodeplugin

import (
	"context"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/daemon"
	"github.com/flashpv/flashpv/pkg/driver"
	"github.com/flashpv/flashpv/pkg/transfer"
	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

// Transfer is the node's side of transfers between nodes: its identity,
// the client that fetches other nodes' data, and the server that serves
// this node's.
type Transfer struct {
	Identity *transfer.Identity
	Client   *transfer.Client
	Server   *transfer.Server // nil without --transfer-address
	address  string
	driver   *driver.Driver
	orders   *driver.MoveOrders
	abandon  time.Duration
}

// openTransfer builds the transfer side from the options (nil when off).
func openTransfer(opts config.Options, reg prometheus.Registerer) (*Transfer, error) {
	o := opts.Transfer
	if !o.Enabled() {
		return nil, nil
	}
	var metrics *transfer.Metrics
	if reg != nil {
		m, err := transfer.NewMetrics(reg)
		if err != nil {
			return nil, err
		}
		metrics = m
	}
	trust := auth.NewTrustDir(o.TrustDir, auth.DefaultTrustRefresh)
	b := &broker.Client{URL: o.Broker, TokenFile: o.TokenFile, TLS: auth.BrokerClientConfig(trust.Current, o.BrokerServerName())}
	id, err := transfer.NewIdentity(opts.NodeID, b, trust.Current)
	if err != nil {
		return nil, err
	}
	t := &Transfer{
		Identity: id,
		Client:   &transfer.Client{Identity: id, Slots: stream.NewSlots(o.MaxConcurrent), Limit: stream.NewLimiter(o.Bandwidth), Metrics: metrics},
		address:  o.Address,
		abandon:  o.AbandonAfter,
	}
	if o.Address != "" {
		replay, err := auth.OpenReplay(filepath.Join(opts.StateDir, "transfer-replay.json"))
		if err != nil {
			return nil, err
		}
		t.Server = &transfer.Server{Identity: id, Replay: replay, Slots: stream.NewSlots(o.MaxConcurrent), Limit: stream.NewLimiter(o.Bandwidth), Metrics: metrics}
	}
	return t, nil
}

func (t *Transfer) client() *transfer.Client {
	if t == nil {
		return nil
	}
	return t.Client
}

func (t *Transfer) bind(d *driver.Driver) {
	t.driver = d
	if t.Server != nil {
		t.Server.Open = d
		t.orders = driver.NewMoveOrders(d)
		t.Server.Orders = t.orders
	}
}

// Tasks are what runs beside the CSI server until ctx ends: certificate
// renewal, the transfer server, and the collection of abandoned incoming
// volumes.
func (t *Transfer) Tasks() []daemon.Task {
	tasks := []daemon.Task{
		{Name: "transfer certificate renewal", Run: t.Identity.Keep},
		{Name: "abandoned transfer collection", Run: func(ctx context.Context) error {
			tick := time.NewTicker(time.Minute)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-tick.C:
					t.driver.CollectAbandoned(ctx, t.abandon)
				}
			}
		}},
	}
	if t.Server != nil {
		tasks = append(tasks,
			daemon.Task{Name: "transfer server", Run: func(ctx context.Context) error { return t.Server.Serve(ctx, t.address) }},
			daemon.Task{Name: "move orders", Run: t.orders.Run})
	}
	return tasks
}
