package pool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/flashpv/flashpv/pkg/durable"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

const (
	lockFile    = ".flashpv.lock"
	imageSuffix = ".img"
	metaSuffix  = ".json"
	tmpSuffix   = ".tmp"
)

// ImagePool is one `image` pool: a directory holding, per volume, a
// preallocated image file and its metadata.
type ImagePool struct {
	dirPool
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
	if err := noCOWOnBtrfs(real); err != nil {
		lock.Close()
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	p := &ImagePool{dirPool: newDirPool(name, real, reserve, lock), statfs: unix.Statfs}
	// Records first: a pool holding one of a newer format is refused
	// before anything in it is collected.
	err = loadDir(&p.mirror, real)
	if err == nil {
		err = loadSnapshots(&p.mirror, real)
	}
	if err == nil {
		err = p.collectGarbage()
	}
	if err == nil {
		err = p.collectSnapshotGarbage(os.Remove)
	}
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("pool %s: %w", name, err)
	}
	return p, nil
}

func (p *ImagePool) Kind() Kind     { return KindImage }
func (p *ImagePool) Layout() Layout { return Layout{Block: true} }

// ImagePath is the image file of the volume with the given key.
func (p *ImagePool) ImagePath(key string) string { return filepath.Join(p.dir, key+imageSuffix) }

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
		} else if probeLeftover(n) {
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
func (p *ImagePool) Create(ctx context.Context, s Spec) (v *Volume, created bool, err error) {
	if err := ValidateName(s.Name); err != nil {
		return nil, false, err
	}
	if s.SizeBytes <= 0 {
		return nil, false, fmt.Errorf("%w: size must be positive", ErrInvalid)
	}
	key := KeyForName(s.Name)
	img := p.ImagePath(key)
	existing, err := p.begin(key, s, func() (claim, error) {
		// An image without metadata is the remains of an interrupted
		// create of this very name: start over.
		if err := os.Remove(img); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return claim{}, err
		}
		avail, err := p.available()
		if err != nil {
			return claim{}, err
		}
		if s.SizeBytes > avail {
			return claim{}, fmt.Errorf("%w %s: %d bytes requested, %d available", ErrNoSpace, p.name, s.SizeBytes, avail)
		}
		return claim{size: s.SizeBytes, file: img}, nil
	})
	if existing != nil || err != nil {
		return existing, false, err
	}
	defer p.done(key)
	if err := allocate(ctx, img, 0, s.SizeBytes, true); err != nil {
		return nil, false, p.createFailed(err, img, "")
	}
	v = newVolume(p.name, key, s, p.Layout())
	if err := writeVolume(&p.mirror, p.metaPath(key), key, v); err != nil {
		return nil, false, p.createFailed(err, img, p.metaPath(key))
	}
	return v, true, nil
}

// createFailed undoes a create that failed after it began to make files:
// the metadata goes first (a failed directory sync may have left it renamed
// into place), then the data, so that nothing half made stays and the
// retry starts over. It returns err as the create's error.
func (p *ImagePool) createFailed(err error, data, meta string) error {
	var paths []string
	if meta != "" {
		paths = append(paths, meta)
	}
	if rerr := durable.Remove(append(paths, data)...); rerr != nil {
		// What stays has no metadata: the retry, or Open, removes it.
		klog.ErrorS(rerr, "Removing what a failed create made", "pool", p.name, "file", data)
	}
	return p.noSpace(err)
}

// noSpace names a full filesystem's error (ENOSPC, EDQUOT) as ErrNoSpace:
// another process may fill the pool's filesystem after the capacity check,
// and a create that runs into that is refused like one the check refused.
func (p *dirPool) noSpace(err error) error {
	if errors.Is(err, ErrNoSpace) || !(errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)) {
		return err
	}
	return fmt.Errorf("%w %s (its filesystem is full): %w", ErrNoSpace, p.name, err)
}

// Delete removes a volume. Deleting a missing volume succeeds. The caller
// makes sure the volume is not in use.
func (p *ImagePool) Delete(_ context.Context, key string) error {
	return p.remove(key, func() error {
		if err := os.Remove(p.ImagePath(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return durable.SyncDir(p.dir)
	})
}

// Expand grows a volume's image to size bytes. Asking for no more than the
// current size changes nothing and returns the volume as it is.
func (p *ImagePool) Expand(ctx context.Context, key string, size int64) (*Volume, error) {
	return p.grow(key, size, func(v *Volume) error {
		img := p.ImagePath(key)
		var st unix.Stat_t
		if err := unix.Stat(img, &st); err != nil {
			return fmt.Errorf("volume %s image: %w", v.ID, err)
		}
		// A crash after a previous grow may have left the image bigger
		// than the metadata says: only the part beyond the image is new
		// reservation.
		grow := size - st.Size
		if grow <= 0 {
			return nil
		}
		avail, err := p.available()
		if err != nil {
			return err
		}
		if grow > avail {
			return fmt.Errorf("%w %s: %d more bytes requested, %d available", ErrNoSpace, p.name, grow, avail)
		}
		return allocate(ctx, img, st.Size, grow, false)
	})
}

// allocate reserves [off, off+n) of an image with fallocate, so the blocks
// exist before anything is written into the volume.
func allocate(ctx context.Context, path string, off, n int64, create bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
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

// Check finds images that are gone or shorter than their volumes.
func (p *ImagePool) Check(_ context.Context, vols []*Volume) map[string][]Problem {
	return checkEach(vols, p.check)
}

func (p *ImagePool) check(v *Volume) []Problem {
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
