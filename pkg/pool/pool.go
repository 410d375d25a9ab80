// Package pool owns the volumes of one storage pool: a directory on a node's
// local flash holding, per volume, a preallocated image file and its metadata.
package pool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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

// ImagePool is one `image` pool. Its mutex makes capacity checks and
// reservations atomic: two creates can never both see the same free bytes.
type ImagePool struct {
	mirror
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
	// statfs is replaceable so capacity accounting can be unit tested.
	statfs func(path string, buf *unix.Statfs_t) error
}

// OpenImage prepares an image pool's directory (creating it if needed) and
// removes what an interrupted create or delete left behind.
func OpenImage(name, dir string, reserve int64) (*ImagePool, error) {
	if !ValidPoolName(name) {
		return nil, fmt.Errorf("%w: pool name %q must be a DNS label of at most 32 characters", ErrInvalid, name)
	}
	if reserve < 0 {
		return nil, fmt.Errorf("%w: pool %s: negative reserve", ErrInvalid, name)
	}
	real, lock, err := openDir(name, dir)
	if err != nil {
		return nil, err
	}
	p := &ImagePool{mirror: newMirror(name), dir: real, reserve: reserve, lock: lock, statfs: unix.Statfs, creating: map[string]int64{}}
	if err := p.collectGarbage(); err != nil {
		lock.Close()
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	if err := loadDir(&p.mirror, real); err != nil {
		lock.Close()
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	return p, nil
}

// openDir creates a pool directory if needed, resolves it and locks it.
func openDir(name, dir string) (string, *os.File, error) {
	if !filepath.IsAbs(dir) {
		return "", nil, fmt.Errorf("%w: pool %s: path %q is not absolute", ErrInvalid, name, dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, fmt.Errorf("pool %s: %w", name, err)
	}
	// Loop devices report the resolved path of their backing file, so the pool
	// works with resolved paths throughout.
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", nil, fmt.Errorf("pool %s: %w", name, err)
	}
	lock, err := lockDir(real)
	if err != nil {
		return "", nil, fmt.Errorf("pool %s: %w", name, err)
	}
	return real, lock, nil
}

// loadDir reads every volume's metadata file in dir into m.
func loadDir(m *mirror, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		key, ok := strings.CutSuffix(e.Name(), metaSuffix)
		if !ok || !keyRE.MatchString(key) {
			continue
		}
		v, err := readVolume(filepath.Join(dir, e.Name()))
		if err != nil {
			klog.ErrorS(err, "Unreadable volume metadata", "pool", m.name, "file", e.Name())
			m.bad[key] = err
			continue
		}
		m.vols[key] = v
	}
	return nil
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
func (p *ImagePool) Probe() error { return probeDir(p.dir) }

func probeDir(dir string) error {
	if _, err := os.ReadDir(dir); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}

// Close releases the pool's directory lock.
func (p *ImagePool) Close() error { return p.lock.Close() }

func (p *ImagePool) Kind() Kind  { return KindImage }
func (p *ImagePool) Dir() string { return p.dir }

// ImagePath is the image file of the volume with the given key.
func (p *ImagePool) ImagePath(key string) string { return filepath.Join(p.dir, key+imageSuffix) }

func (p *ImagePool) metaPath(key string) string { return filepath.Join(p.dir, key+metaSuffix) }

// collectGarbage removes temp files and images whose metadata is missing: they
// can only come from a create or delete that crashed half way (a volume is
// never staged without its metadata). Only files named the way this package
// names them are touched.
func (p *ImagePool) collectGarbage() error {
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

// Create allocates a volume, or returns the existing one of the same name when
// it is compatible with spec. created tells which.
func (p *ImagePool) Create(s Spec) (v *Volume, created bool, err error) {
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
func (p *ImagePool) claim(key string, s Spec) (*Volume, error) {
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
func (p *ImagePool) Delete(key string) error {
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
	if err := forgetVolume(&p.mirror, p.metaPath(key), key); err != nil {
		return err
	}
	if err := os.Remove(p.ImagePath(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return syncDir(p.dir)
}

// Expand grows a volume's image to size bytes. Asking for no more than the
// current size changes nothing and returns the volume as it is.
func (p *ImagePool) Expand(key string, size int64) (*Volume, error) {
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

func (p *ImagePool) writeVolume(v *Volume, key string) error {
	return writeVolume(&p.mirror, p.metaPath(key), key, v)
}

// forgetVolume removes a volume's metadata file, then forgets the volume.
func forgetVolume(m *mirror, path, key string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	m.remember(key, nil)
	return nil
}

// writeVolume stores v's metadata file atomically, then remembers it.
func writeVolume(m *mirror, path, key string, v *Volume) error {
	data, err := encodeVolume(v)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(path, data); err != nil {
		return err
	}
	m.remember(key, v)
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

// Check finds an image that is gone or shorter than its volume.
func (p *ImagePool) Check(v *Volume) []Problem {
	st, err := os.Stat(p.ImagePath(v.Key()))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return []Problem{{DataLoss: true, Reason: "ImageMissing", Message: fmt.Sprintf("the image of volume %s is gone from pool %s", v.ID, p.name)}}
	case err != nil:
		return []Problem{{Reason: "ImageUnreadable", Message: err.Error()}}
	case st.Size() < v.SizeBytes:
		return []Problem{{DataLoss: true, Reason: "ImageTruncated", Message: fmt.Sprintf("the image has %d of %d bytes", st.Size(), v.SizeBytes)}}
	}
	return nil
}
