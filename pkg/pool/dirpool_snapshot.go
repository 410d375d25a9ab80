package pool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/durable"
	"github.com/flashpv/flashpv/pkg/fscopy"
)

// In image and quota pools a snapshot is a file or directory "<key>.snap"
// in the pool directory, beside volumes, with its metadata in
// "<key>.snap.json".
const snapSuffix = ".snap"

func (p *dirPool) snapPath(key string) string { return filepath.Join(p.dir, key+snapSuffix) }
func (p *dirPool) snapMetaPath(key string) string {
	return filepath.Join(p.dir, key+snapSuffix+metaSuffix)
}

// snapClaim is the key under which a snapshot's create is in flight: apart
// from volumes', whose keys come from the same hash of other names.
func snapClaim(key string) string { return "snapshot/" + key }

// beginSnapshot is begin for snapshots: it returns the existing snapshot of
// key, or calls reserve under the lock and records the create as in flight;
// the caller then calls done(snapClaim(key)).
func (p *dirPool) beginSnapshot(key string, s SnapshotSpec, reserve func() (claim, error)) (*Snapshot, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.creating[snapClaim(key)]; ok {
		return nil, fmt.Errorf("%w: snapshot %s is being created", ErrInProgress, s.Name)
	}
	existing, err := p.GetSnapshot(key)
	if err == nil {
		return existing, existing.sameSnapshot(s)
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	// The source must not go away while it is read: its delete would wait
	// for nothing else (the driver locks the volume, not the pool).
	if err := p.idle(s.Source.Key()); err != nil {
		return nil, err
	}
	c, err := reserve()
	if err != nil {
		return nil, err
	}
	p.creating[snapClaim(key)] = c
	return nil, nil
}

// removeSnapshot deletes a snapshot: metadata first, then its data with
// removeData. A missing snapshot is not an error.
func (p *dirPool) removeSnapshot(key string, removeData func() error) error {
	if !keyRE.MatchString(key) {
		return fmt.Errorf("%w: malformed snapshot key", ErrInvalid)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.creating[snapClaim(key)]; ok {
		return fmt.Errorf("%w: snapshot is being created", ErrInProgress)
	}
	if err := os.Remove(p.snapMetaPath(key)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	p.rememberSnapshot(key, nil)
	if err := durable.SyncDir(p.dir); err != nil {
		return err
	}
	return removeData()
}

// markShared records, before a reflink of a volume's data, that the volume
// shares its blocks from now on (see Volume.Shared).
func (p *dirPool) markShared(v *Volume) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur, err := p.Get(v.Key())
	if err != nil || cur.Shared {
		return err
	}
	cur.Shared = true
	return writeVolume(&p.mirror, p.metaPath(cur.Key()), cur.Key(), cur)
}

// snapshotKeyOf tells whether name is a snapshot's data or metadata (or a
// temp file of the latter) and returns its key.
func snapshotKeyOf(name string) (key string, meta, tmp bool, ok bool) {
	rest := name
	if r, cut := strings.CutSuffix(rest, tmpSuffix); cut {
		rest, tmp = r, true
	}
	if r, cut := strings.CutSuffix(rest, metaSuffix); cut {
		rest, meta = r, true
	}
	key, ok = strings.CutSuffix(rest, snapSuffix)
	if !ok || !keyRE.MatchString(key) || (tmp && !meta) {
		return "", false, false, false
	}
	return key, meta, tmp, true
}

// loadSnapshots reads every snapshot's metadata file in dir into m.
func loadSnapshots(m *mirror, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		key, meta, tmp, ok := snapshotKeyOf(e.Name())
		if !ok || !meta || tmp {
			continue
		}
		s, err := readSnapshot(filepath.Join(dir, e.Name()))
		if err := refuseNewer(err); err != nil {
			return err
		}
		if err == nil && s.ID != (VolumeID{m.name, key}).String() {
			err = fmt.Errorf("snapshot metadata %s names snapshot %s", e.Name(), s.ID)
		}
		if err != nil {
			klog.ErrorS(err, "Unreadable snapshot metadata", "pool", m.name, "file", e.Name())
			m.badSnaps[key] = err
			continue
		}
		m.snaps[key] = s
	}
	return nil
}

// snapshotLeftovers lists what interrupted snapshot creates left in dir:
// metadata temp files, snapshot data without metadata, and the temporary
// files and trees of copies (fscopy.IsTemp).
func snapshotLeftovers(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	metas := map[string]bool{}
	for _, e := range entries {
		if key, meta, tmp, ok := snapshotKeyOf(e.Name()); ok && meta && !tmp {
			metas[key] = true
		}
	}
	var out []string
	for _, e := range entries {
		n := e.Name()
		key, meta, tmp, ok := snapshotKeyOf(n)
		switch {
		case fscopy.IsTemp(n), ok && tmp, ok && !meta && !metas[key]:
			out = append(out, n)
		}
	}
	return out, nil
}

// probeReflink tells whether files in dir can share blocks (FICLONE): XFS
// made with reflink=1, btrfs.
func probeReflink(dir string) bool {
	f, err := os.CreateTemp(dir, ".reflink-probe-*")
	if err != nil {
		return false
	}
	src := f.Name()
	defer os.Remove(src)
	_, err = f.Write(make([]byte, 4096))
	f.Close()
	if err != nil {
		return false
	}
	dst := src + ".clone"
	_, err = fscopy.File(context.Background(), src, dst, fscopy.Options{Mode: fscopy.ReflinkOnly})
	os.Remove(dst)
	return err == nil
}
