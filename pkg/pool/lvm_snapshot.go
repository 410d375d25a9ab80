package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/lvm"
)

// An lvm pool's snapshot is an LV "flashpvsnap-<pool>-<key>" with its
// metadata in its tags, like a volume's. In a thin pool it is a thin
// snapshot (instant; its activation skipped until a restore needs it) and a
// restore or clone is a thin snapshot of the snapshot or volume, so all of
// them share blocks, counted against the pool's overprovision limit like
// any thin LV. In a thick pool both are full copies into a new LV of the
// source's size (see docs/how-it-works.md for why not LVM's COW snapshots):
// the LV carries lvTagIncomplete until its copy is done, so a crash leaves
// nothing that passes for a snapshot or a volume.

const (
	lvTagIncomplete = "flashpv.dev/incomplete"
	snapLVPrefix    = "flashpvsnap-"
	copyChunk       = 4 << 20
)

var (
	_ Snapshotter = (*LVMPool)(nil)
	_ Cloner      = (*LVMPool)(nil)
)

func (p *LVMPool) snapLVName(key string) string { return snapLVPrefix + p.name + "-" + key }

// snapKeyOf tells whether an LV is one of this pool's snapshots.
func (p *LVMPool) snapKeyOf(l lvm.LV) (string, bool) {
	key, ok := strings.CutPrefix(l.Name, snapLVPrefix+p.name+"-")
	if !ok || !keyRE.MatchString(key) || !slices.Contains(l.Tags, lvTagPool+p.name) {
		return "", false
	}
	return key, true
}

func incomplete(l lvm.LV) bool { return slices.Contains(l.Tags, lvTagIncomplete) }

// loadSnapshots reads the pool's snapshots from the LVs at Open and
// removes what interrupted snapshot creates, restores and clones left.
func (p *LVMPool) loadSnapshots(ctx context.Context, lvs []lvm.LV) error {
	for _, l := range lvs {
		_, isVol := p.keyOf(l)
		key, isSnap := p.snapKeyOf(l)
		if (isVol || isSnap) && incomplete(l) {
			klog.InfoS("Removing leftover of an interrupted copy", "pool", p.name, "lv", l.Name)
			if err := p.destroy(ctx, l.Name); err != nil {
				return err
			}
			continue
		}
		if !isSnap {
			continue
		}
		s, err := p.decodeSnapshot(l, key)
		if err != nil {
			klog.ErrorS(err, "Unreadable snapshot metadata", "pool", p.name, "lv", l.Name)
			p.badSnaps[key] = err
			continue
		}
		p.snaps[key] = s
	}
	return nil
}

func (p *LVMPool) decodeSnapshot(l lvm.LV, key string) (*Snapshot, error) {
	data, err := metaJSON(l)
	if err != nil {
		return nil, err
	}
	s, err := parseSnapshot(data, "snapshot metadata of LV "+l.Name)
	if err != nil {
		return nil, err
	}
	if s.ID != (VolumeID{p.name, key}).String() {
		return nil, fmt.Errorf("LV %s: metadata names snapshot %s", l.Name, s.ID)
	}
	return s, nil
}

// reloadSnapshot reads one snapshot LV back into the mirror.
func (p *LVMPool) reloadSnapshot(ctx context.Context, key string) (*Snapshot, error) {
	l, err := p.lvm.LV(ctx, p.cfg.VG, p.snapLVName(key))
	if err != nil {
		return nil, err
	}
	if _, ok := p.snapKeyOf(*l); !ok || incomplete(*l) {
		return nil, fmt.Errorf("LV %s/%s is not a complete snapshot of pool %s", p.cfg.VG, l.Name, p.name)
	}
	s, err := p.decodeSnapshot(*l, key)
	if err != nil {
		return nil, err
	}
	p.rememberSnapshot(key, s)
	return s, nil
}

// CreateSnapshot makes a thin snapshot, or a full copy in a thick pool.
func (p *LVMPool) CreateSnapshot(ctx context.Context, s SnapshotSpec) (*Snapshot, bool, error) {
	key, err := checkSnapshotSpec(s)
	if err != nil {
		return nil, false, err
	}
	name := p.snapLVName(key)
	p.mu.Lock()
	locked := true
	defer func() {
		if locked {
			p.mu.Unlock()
		}
	}()
	if existing, err := p.GetSnapshot(key); err == nil {
		return existing, false, existing.sameSnapshot(s)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, false, err
	}
	if err := p.clearIncomplete(ctx, name); err != nil {
		return nil, false, err
	}
	snap := newSnapshot(p.name, key, s)
	snap.Shared = p.Thin()
	tags, err := p.snapshotTags(snap)
	if err != nil {
		return nil, false, err
	}
	if p.Thin() {
		// A thin snapshot's virtual size counts against the pool's limit
		// like a volume's: it can come to own every block of it.
		c, err := p.capacity(ctx)
		if err != nil {
			return nil, false, err
		}
		if s.Source.SizeBytes > c.Available {
			return nil, false, fmt.Errorf("%w %s: %d bytes requested, %d available", ErrNoSpace, p.name, s.Source.SizeBytes, c.Available)
		}
		// LVM suspends the origin for the snapshot, which flushes its I/O
		// and freezes a filesystem mounted from it (dm's lockfs): instant
		// and point-in-time without a freeze of ours, which would make
		// that suspend fail on kernels where freezes do not nest.
		err = p.lvm.Snapshot(ctx, lvm.SnapshotOptions{VG: p.cfg.VG, Origin: p.lvName(s.Source.Key()), Name: name, Tags: tags})
		if err != nil {
			return nil, false, p.lvmErr(err)
		}
		snap, err = p.reloadSnapshot(ctx, key)
		return snap, err == nil, err
	}
	if err := p.createIncomplete(ctx, name, s.Source.SizeBytes, tags); err != nil {
		return nil, false, err
	}
	p.mu.Unlock()
	locked = false
	err = s.Quiesce.run(ctx, false, func(ctx context.Context) error {
		return p.copyLV(ctx, p.lvName(s.Source.Key()), name, s.Source.SizeBytes)
	})
	if err == nil {
		err = p.lvm.SetTags(ctx, p.cfg.VG, name, nil, []string{lvTagIncomplete})
	}
	if err != nil {
		return nil, false, errors.Join(err, p.destroy(context.WithoutCancel(ctx), name))
	}
	snap, err = p.reloadSnapshot(ctx, key)
	return snap, err == nil, err
}

// createIncomplete makes a thick LV for a copy, marked incomplete;
// p.mu must be held.
func (p *LVMPool) createIncomplete(ctx context.Context, name string, size int64, tags []string) error {
	c, err := p.capacity(ctx)
	if err != nil {
		return err
	}
	if size > c.Available {
		return fmt.Errorf("%w %s: %d bytes requested, %d available", ErrNoSpace, p.name, size, c.Available)
	}
	err = p.lvm.Create(ctx, lvm.CreateOptions{
		VG: p.cfg.VG, Name: name, Size: size, Tags: append(tags, lvTagIncomplete),
		Stripes: p.cfg.Stripes, StripeSize: p.cfg.StripeSize, Activate: true,
	})
	return p.lvmErr(err)
}

func (p *LVMPool) lvmErr(err error) error {
	if errors.Is(err, lvm.ErrNoSpace) {
		return fmt.Errorf("%w %s: %v", ErrNoSpace, p.name, err)
	}
	return err
}

// clearIncomplete removes what an interrupted copy into LV name left.
func (p *LVMPool) clearIncomplete(ctx context.Context, name string) error {
	l, err := p.lvm.LV(ctx, p.cfg.VG, name)
	if errors.Is(err, lvm.ErrNotFound) && !errors.Is(err, lvm.ErrVGNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	_, isVol := p.keyOf(*l)
	_, isSnap := p.snapKeyOf(*l)
	if !(isVol || isSnap) || !incomplete(*l) {
		return fmt.Errorf("%w: LV %s/%s exists", ErrAlreadyExists, p.cfg.VG, name)
	}
	return p.destroy(ctx, name)
}

// DeleteSnapshot wipes (where the pool needs it) and removes the snapshot.
func (p *LVMPool) DeleteSnapshot(ctx context.Context, key string) error {
	if !keyRE.MatchString(key) {
		return fmt.Errorf("%w: malformed snapshot key", ErrInvalid)
	}
	if _, err := p.GetSnapshot(key); errors.Is(err, ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	if err := p.destroy(ctx, p.snapLVName(key)); err != nil {
		return err
	}
	p.rememberSnapshot(key, nil)
	return nil
}

// CreateFrom makes a volume from a snapshot or a volume: a thin snapshot of
// it in a thin pool, a full copy in a thick one.
func (p *LVMPool) CreateFrom(ctx context.Context, s Spec, c Content) (*Volume, bool, error) {
	if err := ValidateName(s.Name); err != nil {
		return nil, false, err
	}
	if err := checkContent(s, c); err != nil {
		return nil, false, err
	}
	key := KeyForName(s.Name)
	name := p.lvName(key)
	size := p.roundExtent(s.SizeBytes)
	if s.MaxBytes > 0 && size > s.MaxBytes {
		return nil, false, fmt.Errorf("%w: %d bytes rounded to whole extents exceed the limit %d", ErrOutOfRange, s.SizeBytes, s.MaxBytes)
	}
	origin, srcSize := "", int64(0)
	if c.Snapshot != nil {
		origin, srcSize = p.snapLVName(c.Snapshot.Key()), c.Snapshot.SizeBytes
	} else {
		origin, srcSize = p.lvName(c.Volume.Key()), c.Volume.SizeBytes
	}
	p.mu.Lock()
	locked := true
	defer func() {
		if locked {
			p.mu.Unlock()
		}
	}()
	if existing, err := p.Get(key); err == nil {
		return existing, false, existing.compatible(s)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, false, err
	}
	if err := p.clearIncomplete(ctx, name); err != nil {
		return nil, false, err
	}
	v := newVolume(p.name, key, s, p.Layout())
	v.SizeBytes = size
	_, v.Format = c.size()
	tags, err := p.tags(v)
	if err != nil {
		return nil, false, err
	}
	if p.Thin() {
		c, err := p.capacity(ctx)
		if err != nil {
			return nil, false, err
		}
		if size > c.Available {
			return nil, false, fmt.Errorf("%w %s: %d bytes requested, %d available", ErrNoSpace, p.name, size, c.Available)
		}
		err = p.lvm.Snapshot(ctx, lvm.SnapshotOptions{VG: p.cfg.VG, Origin: origin, Name: name, Tags: append(tags, lvTagIncomplete), Activate: true})
		if err == nil && size > srcSize {
			err = p.lvm.Extend(ctx, p.cfg.VG, name, size)
		}
		if err != nil {
			return nil, false, errors.Join(p.lvmErr(err), p.destroy(context.WithoutCancel(ctx), name))
		}
	} else {
		if err := p.createIncomplete(ctx, name, size, tags); err != nil {
			return nil, false, err
		}
		p.mu.Unlock()
		locked = false
		q := Quiesce(nil) // a snapshot never changes
		if c.Volume != nil {
			q = c.Quiesce
		}
		err = q.run(ctx, false, func(ctx context.Context) error { return p.copyLV(ctx, origin, name, srcSize) })
		if err != nil {
			return nil, false, errors.Join(err, p.destroy(context.WithoutCancel(ctx), name))
		}
	}
	if err := p.lvm.SetTags(ctx, p.cfg.VG, name, nil, []string{lvTagIncomplete}); err != nil {
		return nil, false, err
	}
	v, err = p.reload(ctx, key)
	return v, err == nil, err
}

// lvDevice returns the device of LV name, activating it if needed.
func (p *LVMPool) lvDevice(ctx context.Context, name string) (string, error) {
	link := filepath.Join("/dev", p.cfg.VG, name)
	if dev, err := filepath.EvalSymlinks(link); err == nil {
		return dev, nil
	}
	if err := p.lvm.ActivateSkipped(ctx, p.cfg.VG, name); err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(link)
}

// copyLV copies the first n bytes of LV from to LV to, every byte: a thick
// LV's extents hold whatever was there before, zeros included.
func (p *LVMPool) copyLV(ctx context.Context, from, to string, n int64) error {
	src, err := p.lvDevice(ctx, from)
	if err != nil {
		return err
	}
	dst, err := p.lvDevice(ctx, to)
	if err != nil {
		return err
	}
	return copyDevice(ctx, src, dst, n)
}

func copyDevice(ctx context.Context, src, dst string, n int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|unix.O_EXCL, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	buf := make([]byte, copyChunk)
	for off := int64(0); off < n; {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := min(int64(len(buf)), n-off)
		if _, err := io.ReadFull(io.NewSectionReader(in, off, k), buf[:k]); err != nil {
			return fmt.Errorf("reading %s at %d: %w", src, off, err)
		}
		if _, err := out.WriteAt(buf[:k], off); err != nil {
			return fmt.Errorf("writing %s at %d: %w", dst, off, err)
		}
		off += k
	}
	return out.Sync()
}

// destroy wipes LV name where a later LV could see its bytes (thick, or a
// thin pool that does not zero new blocks), then removes it.
func (p *LVMPool) destroy(ctx context.Context, name string) error {
	zero, err := p.mustZero(ctx)
	if err != nil {
		return err
	}
	if zero {
		dev, err := p.lvDevice(ctx, name)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, lvm.ErrNotFound) {
				return nil
			}
			return err
		}
		if err := zeroDevice(dev); err != nil {
			return err
		}
	}
	if err := p.lvm.Remove(ctx, p.cfg.VG, name); err != nil && (!errors.Is(err, lvm.ErrNotFound) || errors.Is(err, lvm.ErrVGNotFound)) {
		return err
	}
	return nil
}
