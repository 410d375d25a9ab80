// Package config holds flashpv's command-line options.
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flashpv/flashpv/pkg/pool"
)

// DefaultPoolName names the pool used when no --pool is given.
const DefaultPoolName = "default"

// PoolSpec is one --pool flag; see ParsePoolSpec.
type PoolSpec = pool.Config

// poolSyntax is the --pool syntax, for help and errors.
const poolSyntax = "NAME=[image:]PATH | NAME=quota:PATH | NAME=lvm:VG[,thin=THINPOOL[,overprovision=RATIO]][,stripes=N[,stripesize=SIZE]], each with [,reserve=SIZE]"

// Options are everything main needs to wire the driver.
type Options struct {
	Endpoint    string
	NodeID      string
	StateDir    string
	KubeletDir  string
	MaxVolumes  int64
	FsType      string
	Pools       []PoolSpec
	PoolsFile   string
	ShowVersion bool

	HealthAddress    string
	RegistrationPath string
	RegistrationDir  string

	// VolumeListDir is where the cluster controller's volume list
	// ConfigMap is mounted ("": no orphan check).
	VolumeListDir string
	// DeleteOrphans names the pools whose orphaned volumes are deleted
	// once orphaned for OrphanGrace.
	DeleteOrphans []string
	OrphanGrace   time.Duration

	Transfer Transfer
}

// AddFlags registers the options on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Endpoint, "endpoint", "unix:///var/lib/kubelet/plugins/flashpv.dev/csi.sock", "CSI endpoint, unix:///path/to/socket")
	fs.StringVar(&o.NodeID, "node-id", "", "this node's name (the value of the flashpv.dev/node topology key)")
	fs.StringVar(&o.StateDir, "state-dir", "/var/lib/flashpv", "directory of the default pool when no --pool is given")
	fs.StringVar(&o.KubeletDir, "kubelet-dir", "/var/lib/kubelet", "only staging and target paths below this directory are accepted")
	fs.Int64Var(&o.MaxVolumes, "max-volumes", 1000, "volumes this node can have staged at once (NodeGetInfo max_volumes_per_node)")
	fs.StringVar(&o.FsType, "default-fstype", "ext4", "filesystem for Mount volumes whose StorageClass names none: ext4, xfs or btrfs")
	fs.Func("pool", "a pool: "+poolSyntax+" (repeatable; SIZE like 10Gi, 500M or bytes)", func(s string) error {
		p, err := ParsePoolSpec(s)
		if err != nil {
			return err
		}
		o.Pools = append(o.Pools, p)
		return nil
	})
	fs.StringVar(&o.PoolsFile, "pools-file", "", "a file of pools, one --pool value per line (# starts a comment); adds to --pool")
	fs.StringVar(&o.HealthAddress, "health-address", ":9808", "address of /healthz and /metrics (empty: off)")
	fs.StringVar(&o.RegistrationPath, "kubelet-registration-path", "", "the CSI socket's path as the kubelet sees it; when set, flashpv registers itself with the kubelet")
	fs.StringVar(&o.RegistrationDir, "registration-dir", "/var/lib/kubelet/plugins_registry", "the kubelet's plugin registration directory")
	fs.StringVar(&o.VolumeListDir, "volume-list-dir", "", "where the flashpv controller's volume list ConfigMap is mounted; volumes no PV names are reported as orphans (empty: no orphan check)")
	fs.Func("delete-orphans", "a pool whose orphaned volumes are deleted after --orphan-grace (repeatable, or comma-separated; default: none, orphans are only reported)", func(s string) error {
		for _, name := range strings.Split(s, ",") {
			if name = strings.TrimSpace(name); name != "" {
				o.DeleteOrphans = append(o.DeleteOrphans, name)
			}
		}
		return nil
	})
	fs.DurationVar(&o.OrphanGrace, "orphan-grace", time.Hour, "how long a volume must stay without a PV before a pool named by --delete-orphans deletes it")
	o.Transfer.addFlags(fs)
	fs.BoolVar(&o.ShowVersion, "version", false, "print the version and exit")
}

// Validate checks the options and fills defaults that depend on others.
func (o *Options) Validate() error {
	var errs []error
	if !strings.HasPrefix(o.Endpoint, "unix://") || len(o.Endpoint) <= len("unix://") {
		errs = append(errs, fmt.Errorf("--endpoint %q: only unix:// endpoints are supported", o.Endpoint))
	}
	if o.NodeID == "" {
		errs = append(errs, errors.New("--node-id is required"))
	} else if len(o.NodeID) > 253 {
		errs = append(errs, errors.New("--node-id is longer than 253 characters"))
	}
	if !filepath.IsAbs(o.KubeletDir) {
		errs = append(errs, fmt.Errorf("--kubelet-dir %q is not absolute", o.KubeletDir))
	}
	if o.RegistrationPath != "" && !filepath.IsAbs(o.RegistrationPath) {
		errs = append(errs, fmt.Errorf("--kubelet-registration-path %q is not absolute", o.RegistrationPath))
	}
	if o.PoolsFile != "" {
		pools, err := ReadPoolsFile(o.PoolsFile)
		if err != nil {
			errs = append(errs, err)
		}
		o.Pools = append(o.Pools, pools...)
	}
	if o.MaxVolumes <= 0 {
		errs = append(errs, errors.New("--max-volumes must be positive"))
	}
	if len(o.Pools) == 0 {
		if !filepath.IsAbs(o.StateDir) {
			errs = append(errs, fmt.Errorf("--state-dir %q is not absolute", o.StateDir))
		}
		o.Pools = []PoolSpec{{Name: DefaultPoolName, Kind: pool.KindImage, Path: filepath.Join(o.StateDir, "pools", DefaultPoolName)}}
	}
	names := map[string]bool{}
	for i, p := range o.Pools {
		if names[p.Name] {
			errs = append(errs, fmt.Errorf("pool %q is given twice", p.Name))
		}
		names[p.Name] = true
		for _, q := range o.Pools[:i] {
			if p.Path != "" && q.Path != "" && nested(p.Path, q.Path) {
				errs = append(errs, fmt.Errorf("pools %q and %q overlap (%s, %s)", q.Name, p.Name, q.Path, p.Path))
			}
		}
	}
	for _, d := range o.DeleteOrphans {
		if !names[d] {
			errs = append(errs, fmt.Errorf("--delete-orphans %q: no such pool", d))
		}
	}
	if len(o.DeleteOrphans) > 0 && o.VolumeListDir == "" {
		errs = append(errs, errors.New("--delete-orphans needs --volume-list-dir"))
	}
	if o.OrphanGrace < time.Minute {
		errs = append(errs, fmt.Errorf("--orphan-grace %s: at least 1m", o.OrphanGrace))
	}
	errs = append(errs, o.Transfer.validate()...)
	return errors.Join(errs...)
}

// SocketPath is the filesystem path of the unix endpoint.
func (o *Options) SocketPath() string { return strings.TrimPrefix(o.Endpoint, "unix://") }

func nested(a, b string) bool {
	a, b = filepath.Clean(a)+"/", filepath.Clean(b)+"/"
	return strings.HasPrefix(a, b) || strings.HasPrefix(b, a)
}

// ParsePoolSpec parses a pool: NAME=[image:]PATH, NAME=quota:PATH or
// NAME=lvm:VG, then options: reserve=SIZE for every kind; thin=THINPOOL,
// overprovision=RATIO, stripes=N and stripesize=SIZE for lvm.
func ParsePoolSpec(s string) (PoolSpec, error) {
	name, rest, ok := strings.Cut(s, "=")
	if !ok {
		return PoolSpec{}, fmt.Errorf("pool %q: want %s", s, poolSyntax)
	}
	if !pool.ValidPoolName(name) {
		return PoolSpec{}, fmt.Errorf("pool name %q: lower-case letters, digits and '-', at most 32", name)
	}
	parts := strings.Split(rest, ",")
	spec := PoolSpec{Name: name, Kind: pool.KindImage}
	where := parts[0]
	if kind, arg, ok := strings.Cut(where, ":"); ok {
		spec.Kind, where = pool.Kind(kind), arg
	}
	switch spec.Kind {
	case pool.KindImage, pool.KindQuota:
		spec.Path = where
		if !filepath.IsAbs(spec.Path) || filepath.Clean(spec.Path) != spec.Path {
			return PoolSpec{}, fmt.Errorf("pool %s: path %q must be absolute and clean", name, spec.Path)
		}
	case pool.KindLVM:
		spec.VG = where
		if where == "" {
			return PoolSpec{}, fmt.Errorf("pool %s: lvm needs a volume group: NAME=lvm:VG", name)
		}
	default:
		return PoolSpec{}, fmt.Errorf("pool %s: unknown kind %q (image, lvm or quota)", name, spec.Kind)
	}
	for _, opt := range parts[1:] {
		k, v, _ := strings.Cut(opt, "=")
		lvmOnly := k == "thin" || k == "overprovision" || k == "stripes" || k == "stripesize"
		if lvmOnly && spec.Kind != pool.KindLVM {
			return PoolSpec{}, fmt.Errorf("pool %s: option %q is for lvm pools", name, k)
		}
		var err error
		switch k {
		case "reserve":
			spec.Reserve, err = ParseSize(v)
		case "thin":
			spec.ThinPool = v
			if v == "" {
				err = errors.New("empty thin pool name")
			}
		case "overprovision":
			spec.Overprovision, err = strconv.ParseFloat(v, 64)
			if err == nil && (spec.Overprovision < 1 || spec.Overprovision > 1000) {
				err = errors.New("want a ratio from 1 to 1000")
			}
		case "stripes":
			spec.Stripes, err = strconv.Atoi(v)
			if err == nil && (spec.Stripes < 1 || spec.Stripes > 128) {
				err = errors.New("want 1 to 128")
			}
		case "stripesize":
			spec.StripeSize, err = ParseSize(v)
		default:
			return PoolSpec{}, fmt.Errorf("pool %s: unknown option %q", name, k)
		}
		if err != nil {
			return PoolSpec{}, fmt.Errorf("pool %s: %s: %w", name, k, err)
		}
	}
	if spec.Overprovision != 0 && spec.ThinPool == "" {
		return PoolSpec{}, fmt.Errorf("pool %s: overprovision needs thin=THINPOOL", name)
	}
	if spec.Stripes > 1 && spec.ThinPool != "" {
		return PoolSpec{}, fmt.Errorf("pool %s: stripes apply to thick volumes, not thin ones", name)
	}
	if spec.StripeSize != 0 && spec.Stripes < 2 {
		return PoolSpec{}, fmt.Errorf("pool %s: stripesize needs stripes=N with N > 1", name)
	}
	return spec, nil
}

var sizeSuffixes = []struct {
	suffix string
	mult   int64
}{
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
}

// ParseSize reads a byte count with an optional binary (Ki, Mi, Gi, Ti) or
// decimal (K, M, G, T) suffix, as Kubernetes quantities write them.
func ParseSize(s string) (int64, error) {
	mult := int64(1)
	num := s
	for _, sf := range sizeSuffixes {
		if n, ok := strings.CutSuffix(s, sf.suffix); ok {
			num, mult = n, sf.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a non-negative integer with an optional suffix (Ki, Mi, Gi, Ti, K, M, G, T)", s)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n * mult, nil
}

// ReadPoolsFile reads pool specs, one per line, as a ConfigMap provides them.
func ReadPoolsFile(path string) ([]PoolSpec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--pools-file: %w", err)
	}
	var pools []PoolSpec
	for i, line := range strings.Split(string(data), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		p, err := ParsePoolSpec(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
		}
		pools = append(pools, p)
	}
	return pools, nil
}
