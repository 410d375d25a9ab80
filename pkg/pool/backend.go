package pool

import (
	"errors"
	"fmt"
	"sort"
	"sync"
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

// Pool is what the driver needs of a pool, whatever its backend.
type Pool interface {
	Name() string
	Kind() Kind
	Get(key string) (*Volume, error)
	GetByName(name string) (*Volume, error)
	List() ([]*Volume, error)
	// Create allocates a volume, or returns the existing one of the same
	// name when it is compatible with the spec; created tells which.
	Create(s Spec) (v *Volume, created bool, err error)
	// Delete removes a volume; a missing one is not an error. The caller
	// makes sure it is not in use.
	Delete(key string) error
	// Expand grows a volume to at least size bytes; never shrinks.
	Expand(key string, size int64) (*Volume, error)
	Capacity() (Capacity, error)
	// Probe tells whether the pool can be used right now.
	Probe() error
	// Check looks for problems of a volume's storage.
	Check(v *Volume) []Problem
	Close() error
}

// Problem is something wrong with a volume's storage.
type Problem struct {
	DataLoss bool // the data is (partly) gone, as opposed to unreachable
	Degraded bool // usable for now, but about to fail
	Reason   string
	Message  string
}

// ErrUnusable: the pool's storage is not set up as its kind needs (not XFS,
// no prjquota, no such volume group...). Such a pool is reported, not used.
var ErrUnusable = errors.New("pool unusable")

// Open opens a pool of any kind.
func Open(c Config) (Pool, error) {
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
		return OpenLVM(c)
	}
	return nil, fmt.Errorf("%w: pool %s: unknown kind %q", ErrInvalid, c.Name, c.Kind)
}

// Usable tells whether p is a real pool, not a stand-in for an unusable one.
func Usable(p Pool) bool {
	_, unusable := p.(*Unusable)
	return !unusable
}

// Unusable stands in for a pool that could not be opened because its storage
// is not set up right: every operation fails with the reason, which health
// checks report, while the driver keeps serving its other pools.
type Unusable struct {
	name string
	kind Kind
	err  error
}

// NewUnusable records why pool name of kind cannot be used.
func NewUnusable(name string, kind Kind, err error) *Unusable {
	return &Unusable{name: name, kind: kind, err: err}
}

func (u *Unusable) fail() error                 { return fmt.Errorf("%w: pool %s: %v", ErrUnusable, u.name, u.err) }
func (u *Unusable) Name() string                { return u.name }
func (u *Unusable) Kind() Kind                  { return u.kind }
func (u *Unusable) Get(string) (*Volume, error) { return nil, u.fail() }
func (u *Unusable) GetByName(string) (*Volume, error) {
	return nil, fmt.Errorf("%w: pool %s is unusable", ErrNotFound, u.name)
}
func (u *Unusable) List() ([]*Volume, error)              { return nil, nil }
func (u *Unusable) Create(Spec) (*Volume, bool, error)    { return nil, false, u.fail() }
func (u *Unusable) Delete(string) error                   { return u.fail() }
func (u *Unusable) Expand(string, int64) (*Volume, error) { return nil, u.fail() }
func (u *Unusable) Capacity() (Capacity, error)           { return Capacity{}, nil }
func (u *Unusable) Probe() error                          { return u.fail() }
func (u *Unusable) Check(*Volume) []Problem               { return nil }
func (u *Unusable) Close() error                          { return nil }

// mirror keeps every volume's metadata of a pool in memory. The backend
// writes its own persistent copy first and only then remembers it here.
type mirror struct {
	name string
	vmu  sync.RWMutex
	vols map[string]*Volume
	bad  map[string]error // keys whose stored metadata could not be read
}

func newMirror(name string) mirror {
	return mirror{name: name, vols: map[string]*Volume{}, bad: map[string]error{}}
}

func (m *mirror) Name() string { return m.name }

// remember records what was just written for key (or, with v nil, removed).
func (m *mirror) remember(key string, v *Volume) {
	m.vmu.Lock()
	defer m.vmu.Unlock()
	delete(m.bad, key)
	if v == nil {
		delete(m.vols, key)
	} else {
		m.vols[key] = v.clone()
	}
}

// Get returns the volume with the given key.
func (m *mirror) Get(key string) (*Volume, error) {
	if !keyRE.MatchString(key) {
		return nil, fmt.Errorf("%w: malformed volume key", ErrInvalid)
	}
	m.vmu.RLock()
	defer m.vmu.RUnlock()
	if err := m.bad[key]; err != nil {
		return nil, err
	}
	v, ok := m.vols[key]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, VolumeID{m.name, key})
	}
	return v.clone(), nil
}

// GetByName returns the volume with the given CSI name.
func (m *mirror) GetByName(name string) (*Volume, error) {
	v, err := m.Get(KeyForName(name))
	if err == nil && v.Name != name {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return v, err
}

// List returns every volume of the pool, ordered by ID.
func (m *mirror) List() ([]*Volume, error) {
	m.vmu.RLock()
	defer m.vmu.RUnlock()
	for _, err := range m.bad {
		return nil, err
	}
	vols := make([]*Volume, 0, len(m.vols))
	for _, v := range m.vols {
		vols = append(vols, v.clone())
	}
	sort.Slice(vols, func(i, j int) bool { return vols[i].ID < vols[j].ID })
	return vols, nil
}
