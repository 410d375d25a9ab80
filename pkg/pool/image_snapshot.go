package pool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/durable"
	"github.com/flashpv/flashpv/pkg/fscopy"
)

// An image pool's snapshot is a copy of the volume's image in the pool
// directory: a reflink (FICLONE, one atomic call that shares every block,
// milliseconds for any size) where the pool's filesystem can share blocks,
// else a sparse copy of the image's data extents. A restore or clone is the
// same copy the other way, into a new volume's image.

var (
	_ Snapshotter = (*ImagePool)(nil)
	_ Cloner      = (*ImagePool)(nil)
)

// copyOptions is how the pool copies images: reflinks only where it can
// share blocks (a failed reflink then is an error, not a slow copy where an
// instant one was promised), else a sparse copy.
func (p *dirPool) copyOptions() fscopy.Options {
	if p.reflink {
		return fscopy.Options{Mode: fscopy.ReflinkOnly}
	}
	return fscopy.Options{Mode: fscopy.ReflinkOrCopy}
}

// CreateSnapshot copies the source's image into the snapshot's file.
func (p *ImagePool) CreateSnapshot(ctx context.Context, s SnapshotSpec) (*Snapshot, bool, error) {
	key, err := checkSnapshotSpec(s)
	if err != nil {
		return nil, false, err
	}
	dst := p.snapPath(key)
	existing, err := p.beginSnapshot(key, s, func() (claim, error) {
		// Data without metadata is what an interrupted create of this
		// very snapshot left: start over.
		if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return claim{}, err
		}
		c := claim{size: s.Source.SizeBytes}
		if !p.reflink {
			c.file = dst
		}
		return c, p.checkSpace(s.Source.SizeBytes)
	})
	if existing != nil || err != nil {
		return existing, false, err
	}
	defer p.done(snapClaim(key))
	snap := newSnapshot(p.name, key, s)
	snap.Shared = p.reflink
	// A copy is never written to: the space its source allocated but never
	// wrote stays holes in it (a restore allocates its image in full).
	opt := p.copyOptions()
	opt.Sparse = true
	err = s.Quiesce.run(ctx, p.reflink, func(ctx context.Context) error {
		_, err := fscopy.File(ctx, p.ImagePath(s.Source.Key()), dst, opt)
		return err
	})
	if err != nil {
		return nil, false, p.copyFailed(err, dst)
	}
	if err := writeSnapshot(&p.mirror, p.snapMetaPath(key), key, snap); err != nil {
		return nil, false, p.createFailed(err, dst, p.snapMetaPath(key))
	}
	return snap, true, nil
}

// checkSpace fails unless n more bytes can be promised; p.mu must be held.
func (p *ImagePool) checkSpace(n int64) error {
	avail, err := p.available()
	if err != nil {
		return err
	}
	if n > avail {
		return fmt.Errorf("%w %s: %d bytes requested, %d available", ErrNoSpace, p.name, n, avail)
	}
	return nil
}

// copyFailed removes what a failed copy to dst made and names the error:
// a source that is gone, or a filesystem that filled up under the copy.
func (p *dirPool) copyFailed(err error, dst string) error {
	os.RemoveAll(dst)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: the data of the source is gone: %v", ErrStorageMissing, err)
	}
	return p.noSpace(err)
}

// DeleteSnapshot removes a snapshot's metadata, then its file.
func (p *ImagePool) DeleteSnapshot(_ context.Context, key string) error {
	return p.removeSnapshot(key, func() error {
		if err := os.Remove(p.snapPath(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return durable.SyncDir(p.dir)
	})
}

// CreateFrom makes a volume whose image is a copy of a snapshot's or of
// another volume's, grown to the requested size.
func (p *ImagePool) CreateFrom(ctx context.Context, s Spec, c Content) (*Volume, bool, error) {
	if err := ValidateName(s.Name); err != nil {
		return nil, false, err
	}
	if err := checkContent(s, c); err != nil {
		return nil, false, err
	}
	key := KeyForName(s.Name)
	img := p.ImagePath(key)
	var src string
	var quiesce Quiesce // a snapshot never changes
	need := s.SizeBytes
	if c.Snapshot != nil {
		src = p.snapPath(c.Snapshot.Key())
	} else {
		src, quiesce = p.ImagePath(c.Volume.Key()), c.Quiesce
		if p.reflink {
			// The source shares its blocks from now on, too.
			need += c.Volume.SizeBytes
		}
	}
	existing, err := p.begin(key, s, func() (claim, error) {
		if err := os.Remove(img); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return claim{}, err
		}
		if c.Volume != nil {
			if err := p.idle(c.Volume.Key()); err != nil {
				return claim{}, err
			}
		}
		// Until the source is marked shared, the claim holds its part.
		c := claim{size: need}
		if !p.reflink {
			c.file = img
		}
		return c, p.checkSpace(need)
	})
	if existing != nil || err != nil {
		return existing, false, err
	}
	defer p.done(key)
	if c.Volume != nil && p.reflink {
		if err := p.markShared(c.Volume); err != nil {
			return nil, false, p.noSpace(err)
		}
	}
	err = quiesce.run(ctx, p.reflink, func(ctx context.Context) error {
		_, err := fscopy.File(ctx, src, img, p.copyOptions())
		return err
	})
	if err != nil {
		return nil, false, p.copyFailed(err, img)
	}
	// A copied image is preallocated like any other (its holes filled); a
	// reflinked one keeps sharing, so only the growth is allocated.
	from, _ := c.size()
	if !p.reflink {
		from = 0
	}
	if s.SizeBytes > from {
		if err := allocate(ctx, img, from, s.SizeBytes-from, false); err != nil {
			return nil, false, p.createFailed(err, img, "")
		}
	}
	v := newVolume(p.name, key, s, p.Layout())
	_, v.Format = c.size()
	v.Shared = p.reflink
	if err := writeVolume(&p.mirror, p.metaPath(key), key, v); err != nil {
		return nil, false, p.createFailed(err, img, p.metaPath(key))
	}
	klog.V(2).InfoS("Volume data copied", "volumeID", v.ID, "from", c.ID(), "reflink", p.reflink)
	return v, true, nil
}

// collectSnapshotGarbage removes what interrupted snapshot creates and
// deletes left.
func (p *dirPool) collectSnapshotGarbage(remove func(path string) error) error {
	names, err := snapshotLeftovers(p.dir)
	if err != nil {
		return err
	}
	for _, n := range names {
		klog.InfoS("Removing leftover of an interrupted snapshot operation", "pool", p.name, "file", n)
		if err := remove(filepath.Join(p.dir, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}
