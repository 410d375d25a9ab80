package pool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/flashpv/flashpv/pkg/diskformat"
	"github.com/flashpv/flashpv/pkg/durable"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// dirPool is what image and quota pools share: a pool directory holding a
// metadata file per volume next to its data, a lock that makes a capacity
// check and the reservation that follows one step, and the creates in flight.
type dirPool struct {
	mirror
	dir     string
	reserve int64
	// lock is the flock held while the pool is open. An image pool whose
	// filesystem fails lets go of it (nil), so that the filesystem can be
	// unmounted and repaired without stopping flashpv, and takes it again
	// once a probe passes; lockMu guards it.
	lockMu sync.Mutex
	lock   *os.File
	closed bool // no lock is taken again after Close
	// releasable: the pool holds nothing else open on its filesystem, so
	// letting go of the lock frees it (not so for quota pools).
	releasable bool
	// checks runs probes and volume checks that cannot hang a caller.
	checks flights
	// reflink: files of the pool directory can share blocks, so snapshots
	// and clones are reflinks.
	reflink bool

	// mu guards creating and makes check-then-reserve atomic. Slow work
	// (fallocate, fsyncs) runs outside it, its key marked in creating.
	mu       sync.Mutex
	creating map[string]claim
}

// claim is a create in flight: the bytes it has set aside and, in a quota
// pool, the project it will use. In an image pool, file is the file the
// create allocates, whose blocks stand for part of size once written; with
// no file (a reflink copy, whose blocks are shared) size counts whole.
type claim struct {
	size    int64
	project uint32
	file    string
}

func newDirPool(name, dir string, reserve int64, lock *os.File) dirPool {
	return dirPool{mirror: newMirror(name), dir: dir, reserve: reserve, lock: lock, releasable: true, creating: map[string]claim{}, reflink: probeReflink(dir)}
}

// Dir is the pool directory.
func (p *dirPool) Dir() string { return p.dir }

func (p *dirPool) metaPath(key string) string { return filepath.Join(p.dir, key+metaSuffix) }

// Close releases the pool's directory lock.
func (p *dirPool) Close() error {
	p.lockMu.Lock()
	defer p.lockMu.Unlock()
	p.closed = true
	if p.lock == nil {
		return nil
	}
	err := p.lock.Close()
	p.lock = nil
	return err
}

// Probe checks that the pool directory can be listed, written and read
// back from its device, within probeWait.
func (p *dirPool) Probe(ctx context.Context) error { return p.probeWith(ctx, nil) }

// probeWith probes the pool directory, then runs more (a backend's own
// checks) when it passes.
func (p *dirPool) probeWith(ctx context.Context, more func() error) error {
	ctx, cancel := boundedWait(ctx)
	defer cancel()
	return p.checks.check(ctx, "", func() error {
		err := probeDir(p.dir)
		if err == nil && more != nil {
			err = more()
		}
		return p.holdLock(err)
	})
}

// holdLock lets go of the pool's lock when its filesystem fails, and
// takes it again once the probe passes (probeErr nil).
func (p *dirPool) holdLock(probeErr error) error {
	if !p.releasable {
		return probeErr
	}
	p.lockMu.Lock()
	defer p.lockMu.Unlock()
	switch {
	case probeErr != nil && FilesystemFailing(probeErr):
		if p.lock != nil {
			p.lock.Close()
			p.lock = nil
			klog.InfoS("Letting go of a failing pool's filesystem, so that it can be unmounted and repaired", "pool", p.name, "dir", p.dir, "err", probeErr)
		}
		return explainFailing(p.dir, probeErr)
	case probeErr != nil:
		return probeErr
	case p.lock == nil && !p.closed:
		l, err := lockDir(p.dir)
		if err != nil {
			return err
		}
		p.lock = l
		klog.InfoS("Pool's filesystem works again", "pool", p.name, "dir", p.dir)
	}
	return nil
}

// idle fails while key's create is in flight; p.mu must be held.
func (p *dirPool) idle(key string) error {
	if _, ok := p.creating[key]; ok {
		return fmt.Errorf("%w: volume is being created", ErrInProgress)
	}
	return nil
}

// reserved sums what creates in flight have set aside for volumes and
// snapshots not recorded yet; p.mu must be held. A create records its
// volume before it leaves the in-flight set (done, which waits for p.mu
// behind every create queued on it), and a recorded volume is counted with
// the others: counting it here too would refuse creates that fit. The
// caller lists the recorded ones after this, so a volume recorded in
// between counts twice for that one look, never not at all.
func (p *dirPool) reserved() int64 {
	p.vmu.RLock()
	defer p.vmu.RUnlock()
	var n int64
	for key, c := range p.creating {
		if !p.recorded(key) {
			n += c.size
		}
	}
	return n
}

// recorded tells whether the volume or snapshot of an in-flight claim's key
// is recorded already; p.vmu must be held.
func (p *dirPool) recorded(claimKey string) bool {
	var ok bool
	if snap, isSnap := strings.CutPrefix(claimKey, snapClaim("")); isSnap {
		_, ok = p.snaps[snap]
	} else {
		_, ok = p.vols[claimKey]
	}
	return ok
}

// begin returns the existing volume of key when there is one, or else
// calls reserve (under the lock, to clean up leftovers, check capacity and
// pick what the new volume needs) and records the create as in flight. The
// caller calls done(key) once its create has finished, whatever the result.
func (p *dirPool) begin(key string, s Spec, reserve func() (claim, error)) (*Volume, error) {
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
	c, err := reserve()
	if err != nil {
		return nil, err
	}
	p.creating[key] = c
	return nil, nil
}

func (p *dirPool) done(key string) {
	p.mu.Lock()
	delete(p.creating, key)
	p.mu.Unlock()
}

// remove deletes a volume: its metadata first (once that is gone the volume
// no longer exists, and a crash leaves data that Open collects), then its
// data with removeData. A missing volume is not an error.
func (p *dirPool) remove(key string, removeData func() error) error {
	if !keyRE.MatchString(key) {
		return fmt.Errorf("%w: malformed volume key", ErrInvalid)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.idle(key); err != nil {
		return err
	}
	if err := forgetVolume(&p.mirror, p.metaPath(key), key); err != nil {
		return err
	}
	if err := durable.SyncDir(p.dir); err != nil {
		return err
	}
	return removeData()
}

// grow raises a volume's size to size with growData (given the volume as
// stored), then records it. Asking for no more than the current size
// changes nothing and returns the volume as it is.
func (p *dirPool) grow(key string, size int64, growData func(v *Volume) error) (*Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.idle(key); err != nil {
		return nil, err
	}
	v, err := p.Get(key)
	if err != nil {
		return nil, err
	}
	if size <= v.SizeBytes {
		return v, nil
	}
	if err := growData(v); err != nil {
		return nil, err
	}
	v.SizeBytes = size
	if err := writeVolume(&p.mirror, p.metaPath(key), key, v); err != nil {
		return nil, err
	}
	return v, nil
}

// SetNodeState stores the node-side state with the volume's metadata.
func (p *dirPool) SetNodeState(_ context.Context, key string, st NodeState) (*Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.Get(key)
	if err != nil {
		return nil, err
	}
	v.NodeState = st
	if err := writeVolume(&p.mirror, p.metaPath(key), key, v); err != nil {
		return nil, err
	}
	return v, nil
}

// newVolume is the record of a volume created from s in pool with key.
// A filesystem of its own on a device starts out pending: only once the
// node has mounted the filesystem it made is it known good.
func newVolume(pool, key string, s Spec, l Layout) *Volume {
	v := &Volume{
		ID: VolumeID{pool, key}.String(), Name: s.Name, SizeBytes: s.SizeBytes,
		Mode: s.Mode, FsType: s.FsType, Parameters: s.Parameters, Source: s.Source,
		Created: time.Now().UTC().Truncate(time.Second),
	}
	v.Incoming, v.Move = s.Incoming, s.Move
	if s.Mode == ModeFilesystem && !l.Directory {
		v.Format = FormatPending
	}
	return v
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

// loadDir reads every volume's metadata file in dir into m. A record of a
// newer format makes the whole pool unusable (see refuseNewer).
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
		if err := refuseNewer(err); err != nil {
			return err
		}
		if err != nil {
			klog.ErrorS(err, "Unreadable volume metadata", "pool", m.name, "file", e.Name())
			m.bad[key] = err
			continue
		}
		m.vols[key] = v
	}
	return nil
}

// refuseNewer turns a record's diskformat.ErrNewer into the pool's
// ErrUnusable. A pool's capacity is a promise over all its records, so one
// this binary cannot read makes the pool unusable as a whole, and its Open
// stops before it collects anything: what a newer flashpv wrote, and the
// data beside it, stay exactly as they are.
func refuseNewer(err error) error {
	if !errors.Is(err, diskformat.ErrNewer) {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrUnusable, err)
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
	if err := durable.WriteFile(path, data); err != nil {
		return err
	}
	m.remember(key, v)
	return nil
}
