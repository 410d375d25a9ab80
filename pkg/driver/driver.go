// Package driver implements the CSI Identity, Controller and Node services of
// flashpv on top of the pool, loop device and mount layers.
package driver

import (
	"fmt"
	"sort"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/pkg/pool"
)

const (
	// Name is the CSI driver name.
	Name = "flashpv.dev"
	// TopologyKey carries the node name in volume and node topology.
	TopologyKey = "flashpv.dev/node"
	// ParamPool is the StorageClass parameter that selects a pool.
	ParamPool = "pool"
)

// devices is what the node service needs from loop devices.
type devices interface {
	Find(file string) (string, error)
	AttachLimited(file string, limit *loopdev.Limit) (string, error)
	Detach(file string) error
	Attached(dirs ...string) (map[string]string, error)
}

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
	Devices       devices
	Mounter       mount.Interface
	Exec          utilexec.Interface
	// Metrics, when set, receives the driver's Prometheus metrics.
	Metrics prometheus.Registerer
}

// Driver holds the state shared by the three CSI services.
type Driver struct {
	nodeID        string
	version       string
	pools         map[string]pool.Pool
	poolNames     []string
	defaultPool   string
	kubeletDir    string
	maxVolumes    int64
	defaultFsType string

	devices devices
	mounter *mount.SafeFormatAndMount
	resizer *mount.ResizeFs
	// growMountedExt4: this process may grow a mounted ext4.
	growMountedExt4 bool
	exec            utilexec.Interface
	locks           *keyLocks
	metrics         *metrics
}

// New checks cfg and returns a Driver.
func New(cfg Config) (*Driver, error) {
	if cfg.NodeID == "" {
		return nil, fmt.Errorf("node ID is required")
	}
	if len(cfg.Pools) == 0 {
		return nil, fmt.Errorf("at least one pool is required")
	}
	d := &Driver{
		nodeID:          cfg.NodeID,
		version:         cfg.Version,
		pools:           map[string]pool.Pool{},
		defaultPool:     cfg.DefaultPool,
		kubeletDir:      cfg.KubeletDir,
		maxVolumes:      cfg.MaxVolumes,
		defaultFsType:   cfg.DefaultFsType,
		devices:         cfg.Devices,
		mounter:         mount.NewSafeFormatAndMount(cfg.Mounter, cfg.Exec),
		resizer:         mount.NewResizeFs(cfg.Exec),
		growMountedExt4: CanGrowMountedExt4(),
		exec:            cfg.Exec,
		locks:           newKeyLocks(),
	}
	if d.defaultFsType == "" {
		d.defaultFsType = DefaultFsType
	}
	if _, ok := minFsSize[d.defaultFsType]; !ok {
		return nil, fmt.Errorf("default fsType %q: supported are ext4, xfs and btrfs", d.defaultFsType)
	}
	for _, p := range cfg.Pools {
		d.pools[p.Name()] = p
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

// lookup resolves a volume ID to its pool and metadata.
func (d *Driver) lookup(volumeID string) (pool.Pool, *pool.Volume, error) {
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
