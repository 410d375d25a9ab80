// Package pool owns the volumes of a node's storage pools. A pool is one of
// three kinds: `image` (a preallocated image file per volume in a directory,
// attached as a loop device), `lvm` (a logical volume per volume in an
// existing volume group, thick or thin) and `quota` (a directory per volume
// on an XFS mounted with prjquota, with its own project quota). Each kind
// keeps every volume's metadata next to its data, written atomically, so a
// restart finds every volume and can finish or undo what a crash cut short.
//
// Pool is what the controller side needs of any pool; Source, built once per
// pool by Sources, is what the node side needs to reach a volume's data.
package pool

import (
	"context"
	"errors"
	"fmt"
)

// Kind names a pool backend.
type Kind string

const (
	// KindImage keeps each volume in a preallocated file, attached as a loop
	// device. It works on any filesystem.
	KindImage Kind = "image"
	// KindLVM makes each volume a logical volume of an existing volume group.
	KindLVM Kind = "lvm"
	// KindQuota makes each Filesystem volume a directory with its own XFS
	// project quota.
	KindQuota Kind = "quota"
)

// Config describes one pool as the operator configured it.
type Config struct {
	Name string
	Kind Kind
	// Path is the pool directory of image and quota pools.
	Path string
	// VG is the volume group of an lvm pool; ThinPool, when set, a thin
	// pool LV in it that holds the volumes.
	VG       string
	ThinPool string
	// Overprovision is how many times its size a thin pool may promise
	// (1 when unset: never more than it has).
	Overprovision float64
	// Stripes > 1 stripes thick volumes over that many physical volumes,
	// StripeSize bytes at a time (LVM's default when 0).
	Stripes    int
	StripeSize int64
	// Reserve is kept free for other users of the same storage.
	Reserve int64
}

// Pool is what the driver needs of a pool, whatever its backend. Calls that
// may run commands or wait on the storage take the caller's context.
type Pool interface {
	Name() string
	Kind() Kind
	// Layout tells what the pool's volumes are on the node.
	Layout() Layout
	Get(key string) (*Volume, error)
	GetByName(name string) (*Volume, error)
	List() ([]*Volume, error)
	// Create allocates a volume, or returns the existing one of the same
	// name when it is compatible with the spec; created tells which.
	Create(ctx context.Context, s Spec) (v *Volume, created bool, err error)
	// Delete removes a volume; a missing one is not an error. The caller
	// makes sure it is not in use.
	Delete(ctx context.Context, key string) error
	// Expand grows a volume to at least size bytes; never shrinks.
	Expand(ctx context.Context, key string, size int64) (*Volume, error)
	// SetNodeState stores the node-side state of a volume (see NodeState)
	// with its metadata, atomically.
	SetNodeState(ctx context.Context, key string, st NodeState) (*Volume, error)
	Capacity(ctx context.Context) (Capacity, error)
	// Probe tells whether the pool can be used right now.
	Probe(ctx context.Context) error
	// Check looks for problems of the storage of the given volumes, all at
	// once (one report of the volume group for an lvm pool), by volume ID.
	Check(ctx context.Context, vols []*Volume) map[string][]Problem
	Close() error
}

// Layout is what a pool's volumes are on the node, so the node side needs
// no knowledge of the backend.
type Layout struct {
	// Directory: a volume's source is a directory of the pool's own
	// filesystem (FsType), bind-mounted, never formatted. Otherwise it is
	// a block device that holds a filesystem of the volume's own or is
	// handed to the pod as it is.
	Directory bool
	FsType    string
	// Block tells whether the pool can have Block volumes.
	Block bool
}

// Problem is something wrong with a volume's storage.
type Problem struct {
	DataLoss bool // the data is (partly) gone, as opposed to unreachable
	Degraded bool // usable for now, but about to fail
	Reason   string
	Message  string
}

// Capacity describes a pool's space as flashpv promises it.
type Capacity struct {
	// Total is the size of the pool's storage minus the reserve.
	Total int64
	// Available can be promised to new volumes or growth.
	Available int64
	// Allocated is the sum of the sizes of all volumes.
	Allocated int64
	// Volumes counts the volumes in the pool.
	Volumes int
	// Thin is how full the thin pool the volumes share is; nil unless they
	// share one (an lvm pool with a thinPool) and LVM reports its fill.
	Thin *ThinFill
}

// ThinFill is how much of a thin pool's data and metadata space is used,
// each a fraction of 1. Writes to its volumes fail when either is full,
// however much the pool still promises.
type ThinFill struct {
	Data     float64
	Metadata float64
}

// ErrUnusable: the pool's storage is not set up as its kind needs (not XFS,
// no prjquota, no such volume group...). Such a pool is reported, not used.
var ErrUnusable = errors.New("pool unusable")

// Open opens a pool of any kind.
func Open(ctx context.Context, c Config) (Pool, error) {
	if !ValidPoolName(c.Name) {
		return nil, fmt.Errorf("%w: pool name %q must be a DNS label of at most 32 characters", ErrInvalid, c.Name)
	}
	if c.Reserve < 0 {
		return nil, fmt.Errorf("%w: pool %s: negative reserve", ErrInvalid, c.Name)
	}
	switch c.Kind {
	case KindImage, "":
		return OpenImage(c.Name, c.Path, c.Reserve)
	case KindQuota:
		return OpenQuota(c.Name, c.Path, c.Reserve)
	case KindLVM:
		return OpenLVM(ctx, c)
	}
	return nil, fmt.Errorf("%w: pool %s: unknown kind %q", ErrInvalid, c.Name, c.Kind)
}

// checkEach runs a per-volume check over vols, for pools where checking one
// volume costs no more alone than in a batch.
func checkEach(vols []*Volume, check func(*Volume) []Problem) map[string][]Problem {
	out := map[string][]Problem{}
	for _, v := range vols {
		if pr := check(v); len(pr) > 0 {
			out[v.ID] = pr
		}
	}
	return out
}
