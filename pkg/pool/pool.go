// Package pool owns the volumes of one storage pool: a directory on a node's
// local flash holding, per volume, a preallocated image file and its metadata.
package pool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

const (
	lockFile    = ".flashpv.lock"
	imageSuffix = ".img"
	metaSuffix  = ".json"
	tmpSuffix   = ".tmp"
)

// Pool is one `image` pool. Its mutex makes capacity checks and reservations
// atomic: two creates can never both see the same free bytes.
type Pool struct {
	name    string
	dir     string
	reserve int64

	lock *os.File // flock held while the pool is open

	// mu makes a capacity check and the reservation that follows one step,
	// and guards creating. The slow part of a create (fallocate, fsyncs)
	// runs outside it.
	mu sync.Mutex
	// creating holds the keys and sizes of creates whose images are still
	// being allocated.
	creating map[string]int64
	// vols mirrors the metadata files, which are written first and read
	// only at Open; bad holds the keys whose file could not be read.
	vmu  sync.RWMutex
	vols map[string]*Volume
	bad  map[string]error
	// statfs is replaceable so capacity accounting can be unit tested.
	statfs func(path string, buf *unix.Statfs_t) error
}

// Open prepares the pool directory (creating it if needed) and removes what an
// interrupted create or delete left behind.
func Open(name, dir string, reserve int64) (*Pool, error) {
	if !ValidPoolName(name) {
		return nil, fmt.Errorf("%w: pool name %q must be a DNS label of at most 32 characters", ErrInvalid, name)
	}
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("%w: pool %s: path %q is not absolute", ErrInvalid, name, dir)
	}
	if reserve < 0 {
		return nil, fmt.Errorf("%w: pool %s: negative reserve", ErrInvalid, name)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	// Loop devices report the resolved path of their backing file, so the pool
	// works with resolved paths throughout.
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	lock, err := lockDir(real)
	if err != nil {
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	p := &Pool{name: name, dir: real, reserve: reserve, lock: lock, statfs: unix.Statfs, creating: map[string]int64{}}
	if err := p.collectGarbage(); err != nil {
		lock.Close()
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	if err := p.load(); err != nil {
		lock.Close()
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	return p, nil
}

// load reads every volume's metadata.
func (p *Pool) load() error {
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return err
	}
	p.vols, p.bad = map[string]*Volume{}, map[string]error{}
	for _, e := range entries {
		key, ok := strings.CutSuffix(e.Name(), metaSuffix)
		if !ok || !keyRE.MatchString(key) {
			continue
		}
		v, err := readVolume(filepath.Join(p.dir, e.Name()))
		if err != nil {
			klog.ErrorS(err, "Unreadable volume metadata", "pool", p.name, "file", e.Name())
			p.bad[key] = err
			continue
		}
		p.vols[key] = v
	}
	return nil
}

// remember records what was just written to (or, with v nil, removed from)
// the metadata file of key.
func (p *Pool) remember(key string, v *Volume) {
	p.vmu.Lock()
	defer p.vmu.Unlock()
	delete(p.bad, key)
	if v == nil {
		delete(p.vols, key)
	} else {
		p.vols[key] = v.clone()
	}
}

// lockDir takes an exclusive lock on the pool directory, so two flashpv
// processes (or two pools of one) never manage the same volumes.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s is in use by another flashpv pool", dir)
		}
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return f, nil
}

// Probe checks that the pool directory can be listed and written.
func (p *Pool) Probe() error {
	if _, err := os.ReadDir(p.dir); err != nil {
		return err
	}
	f, err := os.CreateTemp(p.dir, ".probe-*")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}

// Close releases the pool's directory lock.
func (p *Pool) Close() error { return p.lock.Close() }

func (p *Pool) Name() string { return p.name }
func (p *Pool) Dir() string  { return p.dir }

// ImagePath is the image file of the volume with the given key.
func (p *Pool) ImagePath(key string) string { return filepath.Join(p.dir, key+imageSuffix) }

func (p *Pool) metaPath(key string) string { return filepath.Join(p.dir, key+metaSuffix) }

// collectGarbage removes temp files and images whose metadata is missing: they
// can only come from a create or delete that crashed half way (a volume is
// never staged without its metadata). Only files named the way this package
// names them are touched.
func (p *Pool) collectGarbage() error {
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return err
	}
	metas := map[string]bool{}
	for _, e := range entries {
		if key, ok := strings.CutSuffix(e.Name(), metaSuffix); ok && keyRE.MatchString(key) {
			metas[key] = true
		}
	}
	for _, e := range entries {
		n := e.Name()
		var orphan bool
		if key, ok := strings.CutSuffix(n, metaSuffix+tmpSuffix); ok && keyRE.MatchString(key) {
			orphan = true
		} else if key, ok := strings.CutSuffix(n, imageSuffix); ok && keyRE.MatchString(key) && !metas[key] {
			orphan = true
		}
		if orphan {
			klog.InfoS("Removing leftover of an interrupted operation", "pool", p.name, "file", n)
			if err := os.Remove(filepath.Join(p.dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// Get returns the volume with the given key.
func (p *Pool) Get(key string) (*Volume, error) {
	if !keyRE.MatchString(key) {
		return nil, fmt.Errorf("%w: malformed volume key", ErrInvalid)
	}
	p.vmu.RLock()
	defer p.vmu.RUnlock()
	if err := p.bad[key]; err != nil {
		return nil, err
	}
	v, ok := p.vols[key]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, VolumeID{p.name, key})
	}
	return v.clone(), nil
}

// GetByName returns the volume with the given CSI name.
func (p *Pool) GetByName(name string) (*Volume, error) {
	v, err := p.Get(KeyForName(name))
	if err == nil && v.Name != name {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return v, err
}

// List returns every volume of the pool, ordered by ID.
func (p *Pool) List() ([]*Volume, error) {
	p.vmu.RLock()
	defer p.vmu.RUnlock()
	for _, err := range p.bad {
		return nil, err
	}
	vols := make([]*Volume, 0, len(p.vols))
	for _, v := range p.vols {
		vols = append(vols, v.clone())
	}
	sort.Slice(vols, func(i, j int) bool { return vols[i].ID < vols[j].ID })
	return vols, nil
}

// Create allocates a volume, or returns the existing one of the same name when
// it is compatible with spec. created tells which.
func (p *Pool) Create(s Spec) (v *Volume, created bool, err error) {
	if err := ValidateName(s.Name); err != nil {
		return nil, false, err
	}
	if s.SizeBytes <= 0 {
		return nil, false, fmt.Errorf("%w: size must be positive", ErrInvalid)
	}
	key := KeyForName(s.Name)
	if v, err := p.claim(key, s); v != nil || err != nil {
		return v, false, err
	}
	defer func() {
		p.mu.Lock()
		delete(p.creating, key)
		p.mu.Unlock()
	}()
	img := p.ImagePath(key)
	if err := allocate(img, 0, s.SizeBytes, true); err != nil {
		os.Remove(img)
		return nil, false, err
	}
	v = &Volume{
		ID:         VolumeID{p.name, key}.String(),
		Name:       s.Name,
		SizeBytes:  s.SizeBytes,
		Mode:       s.Mode,
		FsType:     s.FsType,
		Parameters: s.Parameters,
		Created:    time.Now().UTC().Truncate(time.Second),
	}
	if err := p.writeVolume(v, key); err != nil {
		os.Remove(img)
		return nil, false, err
	}
	return v, true, nil
}

// claim returns the existing volume of key if there is one, or else sets
// aside s.SizeBytes of the pool for its create, all under the pool's lock.
func (p *Pool) claim(key string, s Spec) (*Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.creating[key]; ok {
		return nil, fmt.Errorf("%w: volume %s is being created", ErrInProgress, s.Name)
	}
	existing, err := p.Get(key)
	if err == nil {
		return existing, existing.compatible(s)
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	// An image without metadata is the remains of an interrupted create of
	// this very name: start over.
	if err := os.Remove(p.ImagePath(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	avail, err := p.available()
	if err != nil {
		return nil, err
	}
	if s.SizeBytes > avail {
		return nil, fmt.Errorf("%w %s: %d bytes requested, %d available", ErrNoSpace, p.name, s.SizeBytes, avail)
	}
	p.creating[key] = s.SizeBytes
	return nil, nil
}

// Delete removes a volume. Deleting a missing volume succeeds. The caller
// makes sure the volume is not in use.
func (p *Pool) Delete(key string) error {
	if !keyRE.MatchString(key) {
		return fmt.Errorf("%w: malformed volume key", ErrInvalid)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.creating[key]; ok {
		return fmt.Errorf("%w: volume is being created", ErrInProgress)
	}
	// Metadata goes first: once it is gone the volume no longer exists, and a
	// crash before the image is removed leaves an orphan that Open collects.
	if err := os.Remove(p.metaPath(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	p.remember(key, nil)
	if err := os.Remove(p.ImagePath(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(p.dir)
}

// Expand grows a volume's image to size bytes. Asking for no more than the
// current size changes nothing and returns the volume as it is.
func (p *Pool) Expand(key string, size int64) (*Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.creating[key]; ok {
		return nil, fmt.Errorf("%w: volume is being created", ErrInProgress)
	}
	v, err := p.Get(key)
	if err != nil {
		return nil, err
	}
	if size <= v.SizeBytes {
		return v, nil
	}
	img := p.ImagePath(key)
	var st unix.Stat_t
	if err := unix.Stat(img, &st); err != nil {
		return nil, fmt.Errorf("volume %s image: %w", v.ID, err)
	}
	// A crash after a previous grow may have left the image bigger than the
	// metadata says: only the part beyond the image is new reservation.
	if grow := size - st.Size; grow > 0 {
		avail, err := p.available()
		if err != nil {
			return nil, err
		}
		if grow > avail {
			return nil, fmt.Errorf("%w %s: %d more bytes requested, %d available", ErrNoSpace, p.name, grow, avail)
		}
		if err := allocate(img, st.Size, grow, false); err != nil {
			return nil, err
		}
	}
	v.SizeBytes = size
	if err := p.writeVolume(v, key); err != nil {
		return nil, err
	}
	return v, nil
}

func (p *Pool) writeVolume(v *Volume, key string) error {
	data, err := encodeVolume(v)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(p.metaPath(key), data); err != nil {
		return err
	}
	p.remember(key, v)
	return nil
}

// allocate reserves [off, off+n) of an image with fallocate, so the blocks
// exist before anything is written into the volume.
func allocate(path string, off, n int64, create bool) error {
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE | os.O_EXCL
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, off, n); err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("%w: fallocate: %v", ErrNoSpace, err)
		}
		return fmt.Errorf("fallocate %s: %w", path, err)
	}
	return f.Sync()
}
