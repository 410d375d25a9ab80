// Package nodeplugin wires flashpv's node plugin from its options: it opens
// the pools (standing in for those whose storage is not set up), and builds
// the driver on the real loop devices and mount layer. The flashpv command
// and the test harness both start the driver through it.
package nodeplugin

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/driver"
	"github.com/flashpv/flashpv/pkg/fsfreeze"
	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/pkg/pool"
)

// Plugin is a driver and the pools it serves.
type Plugin struct {
	Driver *driver.Driver
	Pools  []pool.Pool
	// Transfer, when set, serves this node's data to other nodes and keeps
	// its transfer certificate fresh.
	Transfer *Transfer
}

// Close releases the pools.
func (p *Plugin) Close() {
	for _, pl := range p.Pools {
		pl.Close()
	}
}

// Settings are what Open needs beyond the options.
type Settings struct {
	Version string
	// DefaultPool names the pool used without a `pool` parameter ("" for
	// the first).
	DefaultPool string
	// Metrics, when set, receives the driver's metrics.
	Metrics prometheus.Registerer
}

// Open opens the pools of opts and builds the driver. A pool whose storage
// is not set up for its kind is reported (log, /healthz warning, storage
// health, metrics) and stood in for, so the others are served.
func Open(ctx context.Context, opts config.Options, s Settings) (*Plugin, error) {
	freezer, err := openFreezer(opts.StateDir)
	if err != nil {
		return nil, err
	}
	p := &Plugin{}
	for _, spec := range opts.Pools {
		pl, err := pool.Open(ctx, spec)
		if errors.Is(err, pool.ErrUnusable) {
			klog.ErrorS(err, "Pool is unusable and will not be used", "pool", spec.Name, "kind", spec.Kind)
			pl = pool.NewUnusable(spec.Name, spec.Kind, err)
		} else if err != nil {
			p.Close()
			return nil, err
		}
		p.Pools = append(p.Pools, pl)
	}
	tr, err := openTransfer(opts, s.Metrics)
	if err != nil {
		p.Close()
		return nil, err
	}
	d, err := driver.New(driver.Config{
		NodeID:        opts.NodeID,
		Version:       s.Version,
		Pools:         p.Pools,
		DefaultPool:   s.DefaultPool,
		KubeletDir:    opts.KubeletDir,
		MaxVolumes:    opts.MaxVolumes,
		DefaultFsType: opts.FsType,
		Loops:         loopdev.New(),
		Mounts:        mounter.New(filepath.Join(opts.StateDir, "grow")),
		Metrics:       s.Metrics,
		Freezer:       freezer,
		Remote:        tr.client(),
	})
	if err != nil {
		p.Close()
		return nil, err
	}
	p.Driver = d
	if tr != nil {
		tr.bind(d)
		p.Transfer = tr
	}
	return p, nil
}

// openFreezer keeps the records of filesystems frozen for snapshots under
// the state directory (on the node's own disk, never on a volume) and thaws
// what a predecessor killed during a snapshot left frozen: an application
// writing to it would hang until then.
func openFreezer(stateDir string) (*fsfreeze.Freezer, error) {
	if !filepath.IsAbs(stateDir) {
		return nil, fmt.Errorf("--state-dir %q is not absolute", stateDir)
	}
	f, err := fsfreeze.New(filepath.Join(stateDir, "freeze"))
	if err != nil {
		return nil, err
	}
	thawed, err := f.ThawAll()
	for _, mp := range thawed {
		klog.InfoS("Thawed a filesystem left frozen by an interrupted snapshot", "mountpoint", mp)
	}
	if err != nil {
		klog.ErrorS(err, "Thawing filesystems left frozen by an interrupted snapshot")
	}
	return f, nil
}
