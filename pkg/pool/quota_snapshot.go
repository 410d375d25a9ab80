package pool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/flashpv/flashpv/pkg/fscopy"
	"github.com/flashpv/flashpv/pkg/xfsquota"
)

// A quota pool's snapshot is a copy of the volume's directory tree (its
// files reflinked where the XFS has reflink=1, else sparse-copied) in a
// directory "<key>.snap" of its own project, limited to the source's size.
// The directory shares the pool's filesystem with every volume and with
// the copy itself, so it cannot be frozen: the driver copies only volumes
// that nothing has mounted.

var (
	_ Snapshotter = (*QuotaPool)(nil)
	_ Cloner      = (*QuotaPool)(nil)
)

// makeProjectDir makes dir in its own project limited to limit bytes. The
// limit comes first: the directory is never without it.
func (p *QuotaPool) makeProjectDir(dir string, project uint32, limit int64) error {
	if err := xfsquota.SetLimit(p.root, project, limit, 0); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := xfsquota.SetProject(f, project); err != nil {
		return err
	}
	return f.Sync()
}

// fill copies the tree of c into the empty directory dir.
func (p *QuotaPool) fill(ctx context.Context, dir string, c Content) error {
	src := ""
	var quiesce Quiesce // a snapshot never changes
	if c.Snapshot != nil {
		src = p.snapPath(c.Snapshot.Key())
	} else {
		src, quiesce = p.VolumeDir(c.Volume.Key()), c.Quiesce
		if p.reflink {
			if err := p.markShared(c.Volume); err != nil {
				return err
			}
		}
	}
	// Reflinks are one call per file: the tree is not instant.
	return quiesce.run(ctx, false, func(ctx context.Context) error {
		_, err := fscopy.Tree(ctx, src, dir, fscopy.Options{Mode: fscopy.ReflinkOrCopy})
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: the directory of %s is gone: %v", ErrStorageMissing, c.ID(), err)
		}
		return err
	})
}

// CreateSnapshot copies the source's directory tree into the snapshot's.
func (p *QuotaPool) CreateSnapshot(ctx context.Context, s SnapshotSpec) (*Snapshot, bool, error) {
	key, err := checkSnapshotSpec(s)
	if err != nil {
		return nil, false, err
	}
	dst := p.snapPath(key)
	var project uint32
	existing, err := p.beginSnapshot(key, s, func() (claim, error) {
		if _, err := os.Lstat(dst); err == nil {
			if err := p.removeTree(dst); err != nil {
				return claim{}, err
			}
		}
		c, err := p.capacity()
		if err != nil {
			return claim{}, err
		}
		if s.Source.SizeBytes > c.Available {
			return claim{}, fmt.Errorf("%w %s: %d bytes requested, %d available", ErrNoSpace, p.name, s.Source.SizeBytes, c.Available)
		}
		project, err = p.freeProject()
		return claim{size: s.Source.SizeBytes, project: project}, err
	})
	if existing != nil || err != nil {
		return existing, false, err
	}
	defer p.done(snapClaim(key))
	undo := func(err error) (*Snapshot, bool, error) {
		os.RemoveAll(dst)
		xfsquota.SetLimit(p.root, project, 0, 0)
		return nil, false, err
	}
	if err := p.makeProjectDir(dst, project, s.Source.SizeBytes); err != nil {
		return undo(err)
	}
	err = s.Quiesce.run(ctx, false, func(ctx context.Context) error {
		_, err := fscopy.Tree(ctx, p.VolumeDir(s.Source.Key()), dst, fscopy.Options{Mode: fscopy.ReflinkOrCopy})
		return err
	})
	if err != nil {
		return undo(p.copyFailed(err, dst))
	}
	snap := newSnapshot(p.name, key, s)
	snap.ProjectID = project
	snap.Shared = p.reflink
	if err := writeSnapshot(&p.mirror, p.snapMetaPath(key), key, snap); err != nil {
		return undo(err)
	}
	return snap, true, nil
}

// DeleteSnapshot removes a snapshot's metadata, then its tree and limit.
func (p *QuotaPool) DeleteSnapshot(_ context.Context, key string) error {
	return p.removeSnapshot(key, func() error {
		if _, err := os.Lstat(p.snapPath(key)); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return p.removeTree(p.snapPath(key))
	})
}

// CreateFrom makes a volume directory holding a copy of a snapshot's or a
// volume's tree.
func (p *QuotaPool) CreateFrom(ctx context.Context, s Spec, c Content) (*Volume, bool, error) {
	if err := checkContent(s, c); err != nil {
		return nil, false, err
	}
	return p.create(ctx, s, c)
}
