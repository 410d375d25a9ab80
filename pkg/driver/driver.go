// Package driver implements the CSI Identity, Controller and Node services of
// flashpv. It reaches storage only through the pool package (what a pool
// holds and how a volume's source is attached on the node) and the mount
// layer (pkg/mounter), both behind interfaces, so it knows no backend.
package driver

import (
	"fmt"
	"sort"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/transfer"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

const (
	// Name is the CSI driver name.
	Name = wellknown.DriverName
	// TopologyKey carries the node name in volume and node topology.
	TopologyKey = wellknown.TopologyKey
	// ParamPool is the StorageClass parameter that selects a pool.
	ParamPool = wellknown.ParamPool
)

// Config wires a Driver.
type Config struct {
	NodeID      string
	Version     string
	Pools       []pool.Pool
	DefaultPool string // name of the pool used without a `pool` parameter
	KubeletDir  string // staging and target paths must lie below it
	MaxVolumes  int64
	// DefaultFsType formats Mount volumes whose capability names no fsType.
	DefaultFsType string
	// Loops attaches image volumes (nil: pool sources without loop
	// devices, as in tests that give Sources).
	Loops pool.LoopDevices
	// Sources, when set, replaces the pools' own node side (tests).
	Sources map[string]pool.Source
	// Mounts is the mount layer.
	Mounts mounter.Interface
	// Metrics, when set, receives the driver's Prometheus metrics.
	Metrics prometheus.Registerer
	// Freezer freezes staged filesystems around snapshot copies (nil: a
	// staged filesystem cannot be snapshotted).
	Freezer Freezer
	// Remote fetches snapshots and volumes of other nodes (nil: restores
	// and clones happen only on their source's node).
	Remote *transfer.Client
}

// Driver holds the state shared by the three CSI services.
type Driver struct {
	nodeID        string
	version       string
	pools         map[string]*poolEntry
	poolNames     []string
	defaultPool   string
	kubeletDir    string
	maxVolumes    int64
	defaultFsType string

	mounts  mounter.Interface
	freezer Freezer
	remote  *transfer.Client
	locks   *keyLocks
	metrics *metrics
}

// poolEntry is a pool with what the driver learned of it once: its node
// side, its layout and the optional capabilities it has.
type poolEntry struct {
	pool.Pool
	src    pool.Source
	layout pool.Layout
	usage  pool.UsageReporter // nil unless the pool reports volume usage
	snap   pool.Snapshotter   // nil unless the pool has snapshots
	cloner pool.Cloner        // nil unless the pool makes volumes from others
}

// New checks cfg and returns a Driver.
func New(cfg Config) (*Driver, error) {
	if cfg.NodeID == "" {
		return nil, fmt.Errorf("node ID is required")
	}
	if len(cfg.Pools) == 0 {
		return nil, fmt.Errorf("at least one pool is required")
	}
	if cfg.Mounts == nil {
		return nil, fmt.Errorf("a mount layer is required")
	}
	d := &Driver{
		nodeID:        cfg.NodeID,
		version:       cfg.Version,
		pools:         map[string]*poolEntry{},
		defaultPool:   cfg.DefaultPool,
		kubeletDir:    cfg.KubeletDir,
		maxVolumes:    cfg.MaxVolumes,
		defaultFsType: cfg.DefaultFsType,
		mounts:        cfg.Mounts,
		freezer:       cfg.Freezer,
		remote:        cfg.Remote,
		locks:         newKeyLocks(),
	}
	if d.defaultFsType == "" {
		d.defaultFsType = DefaultFsType
	}
	if _, ok := minFsSize[d.defaultFsType]; !ok {
		return nil, fmt.Errorf("default fsType %q: supported are ext4, xfs and btrfs", d.defaultFsType)
	}
	sources := cfg.Sources
	if sources == nil {
		sources = pool.Sources(cfg.Pools, pool.NodeEnv{Loops: cfg.Loops, Limit: d.checkLimit})
	}
	for _, p := range cfg.Pools {
		e := &poolEntry{Pool: p, src: sources[p.Name()], layout: p.Layout()}
		if e.src == nil {
			return nil, fmt.Errorf("pool %s has no node side", p.Name())
		}
		e.usage, _ = p.(pool.UsageReporter)
		e.snap, _ = p.(pool.Snapshotter)
		e.cloner, _ = p.(pool.Cloner)
		d.pools[p.Name()] = e
		d.poolNames = append(d.poolNames, p.Name())
	}
	sort.Strings(d.poolNames)
	if d.defaultPool == "" {
		d.defaultPool = cfg.Pools[0].Name()
	}
	if d.pools[d.defaultPool] == nil {
		return nil, fmt.Errorf("default pool %q is not configured", d.defaultPool)
	}
	if cfg.Metrics != nil {
		if err := d.registerMetrics(cfg.Metrics); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// checkLimit keeps the node under its volume limit when one more volume is
// attached.
func (d *Driver) checkLimit(attached int) error {
	if int64(attached) >= d.maxVolumes {
		return fmt.Errorf("%w: %d volumes are staged, the limit is %d", errTooMany, attached, d.maxVolumes)
	}
	return nil
}

// lookup resolves a volume ID to its pool and metadata.
func (d *Driver) lookup(volumeID string) (*poolEntry, *pool.Volume, error) {
	id, err := pool.ParseVolumeID(volumeID)
	if err != nil {
		return nil, nil, err
	}
	p := d.pools[id.Pool]
	if p == nil {
		return nil, nil, fmt.Errorf("%w: volume %s: no pool %q on node %s", pool.ErrNotFound, volumeID, id.Pool, d.nodeID)
	}
	v, err := p.Get(id.Key)
	if err != nil {
		return nil, nil, err
	}
	return p, v, nil
}

func (d *Driver) topology() *csi.Topology {
	return &csi.Topology{Segments: map[string]string{TopologyKey: d.nodeID}}
}
