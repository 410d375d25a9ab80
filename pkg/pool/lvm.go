package pool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/lvm"
)

const (
	// lvTagPool marks the LVs a pool made; nothing without it is touched.
	lvTagPool = "flashpv.dev/pool="
	// lvTagMeta prefixes the tags that carry a volume's metadata, JSON in
	// base64url, split to fit LVM's 1024-byte tag limit.
	lvTagMeta  = "flashpv.dev/m"
	lvTagChunk = 900
	// thinFullPercent is when a thin pool's data is reported as a problem.
	thinFullPercent = 95
)

// LVMPool is one `lvm` pool: every volume is a logical volume of an existing
// volume group, thick or in a thin pool. The metadata lives in the LV's
// tags, so it is in the VG's own metadata and moves with it.
type LVMPool struct {
	mirror
	cfg    Config
	lvm    *lvm.Runner
	extent int64

	// mu makes a capacity check and the create or growth that follows one
	// step.
	mu sync.Mutex
	// checks runs probes and volume checks that cannot hang a caller.
	checks flights
}

// OpenLVM opens an lvm pool. A missing volume group or thin pool gives an
// error wrapping ErrUnusable.
func OpenLVM(ctx context.Context, c Config) (*LVMPool, error) {
	if c.Overprovision == 0 {
		c.Overprovision = 1
	}
	switch {
	case !lvm.ValidName(c.VG):
		return nil, fmt.Errorf("%w: pool %s: bad volume group name %q", ErrInvalid, c.Name, c.VG)
	case c.ThinPool != "" && !lvm.ValidName(c.ThinPool):
		return nil, fmt.Errorf("%w: pool %s: bad thin pool name %q", ErrInvalid, c.Name, c.ThinPool)
	case c.Overprovision < 1:
		return nil, fmt.Errorf("%w: pool %s: overprovision must be at least 1", ErrInvalid, c.Name)
	case c.ThinPool == "" && c.Overprovision != 1:
		return nil, fmt.Errorf("%w: pool %s: overprovision needs a thin pool", ErrInvalid, c.Name)
	case c.ThinPool != "" && c.Stripes > 1:
		return nil, fmt.Errorf("%w: pool %s: stripes apply to thick volumes; stripe the thin pool instead", ErrInvalid, c.Name)
	case c.Stripes < 0 || c.StripeSize < 0:
		return nil, fmt.Errorf("%w: pool %s: negative stripes", ErrInvalid, c.Name)
	}
	p := &LVMPool{mirror: newMirror(c.Name), cfg: c, lvm: lvm.New()}
	vg, err := p.lvm.VG(ctx, c.VG)
	if errors.Is(err, lvm.ErrNotFound) {
		return nil, fmt.Errorf("%w: pool %s: volume group %s not found", ErrUnusable, c.Name, c.VG)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: pool %s: %v", ErrUnusable, c.Name, err)
	}
	if c.Stripes > vg.PVCount {
		return nil, fmt.Errorf("%w: pool %s: %d stripes but volume group %s has %d physical volumes", ErrUnusable, c.Name, c.Stripes, c.VG, vg.PVCount)
	}
	p.extent = vg.ExtentSize
	lvs, err := p.lvm.LVs(ctx, c.VG)
	if err != nil {
		return nil, fmt.Errorf("pool %s: %w", c.Name, err)
	}
	if c.ThinPool != "" {
		if tp := findLV(lvs, c.ThinPool); tp == nil || !tp.IsThinPool() {
			return nil, fmt.Errorf("%w: pool %s: %s/%s is not a thin pool", ErrUnusable, c.Name, c.VG, c.ThinPool)
		}
	}
	if err := p.refuseNewerLVs(lvs); err != nil {
		return nil, err
	}
	for _, l := range lvs {
		key, ok := p.keyOf(l)
		if !ok || incomplete(l) {
			continue
		}
		v, err := p.decode(l)
		if err != nil {
			klog.ErrorS(err, "Unreadable volume metadata", "pool", c.Name, "lv", l.Name)
			p.bad[key] = err
			continue
		}
		p.vols[key] = v
	}
	if err := p.loadSnapshots(ctx, lvs); err != nil {
		return nil, fmt.Errorf("pool %s: %w", c.Name, err)
	}
	return p, nil
}

func (p *LVMPool) Kind() Kind     { return KindLVM }
func (p *LVMPool) Layout() Layout { return Layout{Block: true} }
func (p *LVMPool) Close() error   { return nil }

// Thin tells whether the pool's volumes are thin LVs.
func (p *LVMPool) Thin() bool { return p.cfg.ThinPool != "" }

// lvName is the LV of a key: the pool's name keeps two pools of one VG
// apart, and only [a-z0-9-] is used, which LVM always accepts.
func (p *LVMPool) lvName(key string) string { return "flashpv-" + p.name + "-" + key }

// keyOf tells whether an LV is one of this pool's volumes.
func (p *LVMPool) keyOf(l lvm.LV) (string, bool) {
	key, ok := strings.CutPrefix(l.Name, "flashpv-"+p.name+"-")
	if !ok || !keyRE.MatchString(key) {
		return "", false
	}
	for _, t := range l.Tags {
		if t == lvTagPool+p.name {
			return key, true
		}
	}
	return "", false
}

func findLV(lvs []lvm.LV, name string) *lvm.LV {
	for i := range lvs {
		if lvs[i].Name == name {
			return &lvs[i]
		}
	}
	return nil
}

// roundExtent rounds a size up to whole extents, which is what LVM allocates.
func (p *LVMPool) roundExtent(size int64) int64 {
	return (size + p.extent - 1) / p.extent * p.extent
}

// Create makes a logical volume, its metadata in its tags (one LVM
// metadata commit, so there is nothing half made after a crash).
func (p *LVMPool) Create(ctx context.Context, s Spec) (*Volume, bool, error) {
	if err := ValidateName(s.Name); err != nil {
		return nil, false, err
	}
	if s.SizeBytes <= 0 {
		return nil, false, fmt.Errorf("%w: size must be positive", ErrInvalid)
	}
	key := KeyForName(s.Name)
	size := p.roundExtent(s.SizeBytes)
	if s.MaxBytes > 0 && size > s.MaxBytes {
		return nil, false, fmt.Errorf("%w: %d bytes rounded to whole extents of %d exceed the limit %d", ErrOutOfRange, s.SizeBytes, p.extent, s.MaxBytes)
	}
	// The whole create runs under the pool's lock: LVM changes a VG's
	// metadata one command at a time anyway, and the capacity check then
	// sees every earlier create finished.
	p.mu.Lock()
	defer p.mu.Unlock()
	existing, err := p.Get(key)
	if err == nil {
		if half, err := p.dropHalfMade(ctx, key); err != nil || !half {
			return existing, false, errors.Join(err, existing.compatible(s))
		}
	} else if !errors.Is(err, ErrNotFound) {
		return nil, false, err
	}
	c, err := p.capacity(ctx)
	if err != nil {
		return nil, false, err
	}
	if size > c.Available {
		return nil, false, fmt.Errorf("%w %s: %d bytes requested, %d available", ErrNoSpace, p.name, size, c.Available)
	}
	// Pending until the node has mounted the filesystem it made: what a
	// killed mkfs leaves on the new LV is made over, never mounted.
	v := newVolume(p.name, key, s, p.Layout())
	v.SizeBytes = size
	tags, err := p.tags(v)
	if err != nil {
		return nil, false, err
	}
	err = p.lvm.Create(ctx, lvm.CreateOptions{
		VG: p.cfg.VG, Name: p.lvName(key), Size: size, Tags: tags,
		ThinPool: p.cfg.ThinPool, Stripes: p.cfg.Stripes, StripeSize: p.cfg.StripeSize, Activate: true,
	})
	switch {
	case errors.Is(err, lvm.ErrNoSpace):
		return nil, false, fmt.Errorf("%w %s: %v", ErrNoSpace, p.name, err)
	case errors.Is(err, lvm.ErrExists):
		// An earlier attempt made it after all (a timeout that was not):
		// adopt it if it is ours.
		existing, rerr := p.reload(ctx, key)
		if rerr != nil {
			return nil, false, errors.Join(err, rerr)
		}
		if half, herr := p.dropHalfMade(ctx, key); herr != nil || half {
			return nil, false, errors.Join(herr, fmt.Errorf("%w: removed what a killed lvcreate left of %s; try again", ErrInProgress, p.lvName(key)))
		}
		return existing, false, existing.compatible(s)
	case err != nil:
		return nil, false, err
	}
	v, err = p.reload(ctx, key)
	return v, err == nil, err
}

// dropHalfMade removes a thin volume's LV that a killed lvcreate left
// without its thin device (see lvm.ErrNoThinDevice) and tells whether it
// did. Such an LV can never be activated, so it never held a byte; it is
// found when a retried create adopts it. An active LV is whole. The caller
// holds p.mu.
func (p *LVMPool) dropHalfMade(ctx context.Context, key string) (bool, error) {
	if !p.Thin() {
		return false, nil
	}
	name := p.lvName(key)
	l, err := p.lvm.LV(ctx, p.cfg.VG, name)
	if err != nil || l.Active {
		return false, err
	}
	err = p.lvm.Activate(ctx, p.cfg.VG, name)
	if !errors.Is(err, lvm.ErrNoThinDevice) {
		return false, err
	}
	klog.InfoS("Removing a thin LV that has no thin device (its lvcreate was killed)", "pool", p.name, "lv", p.cfg.VG+"/"+name)
	if err := p.lvm.Remove(ctx, p.cfg.VG, name); err != nil {
		return false, err
	}
	p.remember(key, nil)
	return true, nil
}

// reload reads one LV back into the mirror.
func (p *LVMPool) reload(ctx context.Context, key string) (*Volume, error) {
	l, err := p.lvm.LV(ctx, p.cfg.VG, p.lvName(key))
	if err != nil {
		return nil, err
	}
	if _, ok := p.keyOf(*l); !ok {
		return nil, fmt.Errorf("LV %s/%s exists but was not made by pool %s; leaving it alone", p.cfg.VG, l.Name, p.name)
	}
	v, err := p.decode(*l)
	if err != nil {
		return nil, err
	}
	p.remember(key, v)
	return v, nil
}

// Capacity reports the pool's space.
func (p *LVMPool) Capacity(ctx context.Context) (Capacity, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.capacity(ctx)
}

// capacity is, for thick volumes, the VG's free extents; for thin ones, the
// thin pool's size times the overprovision ratio minus the virtual size of
// every thin LV in it (ours or not).
func (p *LVMPool) capacity(ctx context.Context) (Capacity, error) {
	var c Capacity
	p.vmu.RLock()
	for _, v := range p.vols {
		c.Allocated += v.SizeBytes
	}
	c.Volumes = len(p.vols) + len(p.bad)
	p.vmu.RUnlock()
	if !p.Thin() {
		vg, err := p.lvm.VG(ctx, p.cfg.VG)
		if err != nil {
			return Capacity{}, err
		}
		c.Total = max(vg.Size-p.cfg.Reserve, 0)
		c.Available = max(vg.Free-p.cfg.Reserve, 0)
		return c, nil
	}
	lvs, err := p.lvm.LVs(ctx, p.cfg.VG)
	if err != nil {
		return Capacity{}, err
	}
	tp := findLV(lvs, p.cfg.ThinPool)
	if tp == nil {
		return Capacity{}, fmt.Errorf("thin pool %s/%s is gone", p.cfg.VG, p.cfg.ThinPool)
	}
	var virtual int64
	for _, l := range lvs {
		if l.IsThin() && l.Pool == p.cfg.ThinPool {
			virtual += l.Size
		}
	}
	promised := int64(float64(tp.Size) * p.cfg.Overprovision)
	c.Total = max(promised-p.cfg.Reserve, 0)
	c.Available = max(promised-virtual-p.cfg.Reserve, 0)
	c.Thin = thinFill(tp)
	return c, nil
}

// thinFill is a thin pool's fill as LVM reports it, or nil while the pool
// is inactive: LVM then reports no percentages, and 0 would read as empty.
func thinFill(tp *lvm.LV) *ThinFill {
	if !tp.Active {
		return nil
	}
	return &ThinFill{Data: tp.DataPercent / 100, Metadata: tp.MetadataPercent / 100}
}

// Expand grows the LV to at least size bytes (whole extents).
func (p *LVMPool) Expand(ctx context.Context, key string, size int64) (*Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.Get(key)
	if err != nil {
		return nil, err
	}
	size = p.roundExtent(size)
	if size <= v.SizeBytes {
		return v, nil
	}
	c, err := p.capacity(ctx)
	if err != nil {
		return nil, err
	}
	if grow := size - v.SizeBytes; grow > c.Available {
		return nil, fmt.Errorf("%w %s: %d more bytes requested, %d available", ErrNoSpace, p.name, grow, c.Available)
	}
	if err := p.lvm.Extend(ctx, p.cfg.VG, p.lvName(key), size); err != nil {
		if errors.Is(err, lvm.ErrNoSpace) {
			return nil, fmt.Errorf("%w %s: %v", ErrNoSpace, p.name, err)
		}
		return nil, err
	}
	return p.reload(ctx, key)
}

// Device returns the block device of a volume, activating its LV when it
// is not active (after a reboot without autoactivation, say).
func (p *LVMPool) Device(ctx context.Context, key string) (string, error) {
	if dev, err := p.FindDevice(key); dev != "" || err != nil {
		return dev, err
	}
	if err := p.lvm.Activate(ctx, p.cfg.VG, p.lvName(key)); err != nil {
		return "", err
	}
	dev, err := p.FindDevice(key)
	if err == nil && dev == "" {
		err = fmt.Errorf("LV %s/%s is active but has no device node", p.cfg.VG, p.lvName(key))
	}
	return dev, err
}

// FindDevice returns the device node (/dev/dm-N) of an active volume, or "".
func (p *LVMPool) FindDevice(key string) (string, error) {
	dev, err := filepath.EvalSymlinks(filepath.Join("/dev", p.cfg.VG, p.lvName(key)))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	return dev, err
}

// Delete wipes and removes a volume's LV. A thick LV is zeroed whole (a
// later LV on the same extents must not show this one's bytes); so is a
// thin LV whose pool does not zero the blocks it hands out.
func (p *LVMPool) Delete(ctx context.Context, key string) error {
	if !keyRE.MatchString(key) {
		return fmt.Errorf("%w: malformed volume key", ErrInvalid)
	}
	if _, err := p.Get(key); errors.Is(err, ErrNotFound) {
		return nil
	} else if err != nil {
		return err // unreadable metadata: keep the LV for an operator
	}
	zero, err := p.mustZero(ctx)
	if err != nil {
		return err
	}
	// Zeroing a big LV takes a while: it runs without the pool's lock (the
	// caller holds the volume's), and the extents stay the LV's until the
	// lvremove below.
	if zero {
		dev, err := p.Device(ctx, key)
		if err == nil {
			err = zeroDevice(dev)
		}
		// An LV a killed lvcreate left (lvm.ErrNoThinDevice) never held a byte.
		if err != nil && !errors.Is(err, lvm.ErrNoThinDevice) {
			return err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// A missing LV is a delete done before; a missing VG (a disk gone) is
	// not, and the volume stays known.
	if err := p.lvm.Remove(ctx, p.cfg.VG, p.lvName(key)); err != nil && (!errors.Is(err, lvm.ErrNotFound) || errors.Is(err, lvm.ErrVGNotFound)) {
		return err
	}
	p.remember(key, nil)
	return nil
}

// zeroDevice writes zeros over a whole block device with BLKZEROOUT, which
// devices that can (NVMe, thin LVs, loop) do without moving the data. The
// exclusive open fails while anything has the device mounted or open.
func zeroDevice(dev string) error {
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_EXCL, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: %s is in use", ErrInUse, dev)
		}
		return err
	}
	defer f.Close()
	size, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		return fmt.Errorf("size of %s: %w", dev, err)
	}
	r := [2]uint64{0, size}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r[0]))); e != 0 {
		return fmt.Errorf("zeroing %s: %w", dev, e)
	}
	return f.Sync()
}

// Probe checks that the volume group (and thin pool) can be read, and
// that the thin pool has not failed, within probeWait. The LVM commands
// read the physical volumes with O_DIRECT, so a PV returning I/O errors
// fails them.
func (p *LVMPool) Probe(ctx context.Context) error {
	ctx, cancel := boundedWait(ctx)
	defer cancel()
	return p.checks.check(ctx, "", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), probeRun)
		defer cancel()
		return p.probe(ctx)
	})
}

func (p *LVMPool) probe(ctx context.Context) error {
	if !p.Thin() {
		_, err := p.lvm.VG(ctx, p.cfg.VG)
		return err
	}
	tp, err := p.lvm.LV(ctx, p.cfg.VG, p.cfg.ThinPool)
	if err != nil {
		return err
	}
	if !tp.IsThinPool() {
		return fmt.Errorf("%s/%s is not a thin pool", p.cfg.VG, p.cfg.ThinPool)
	}
	return thinPoolHealth(tp)
}

// thinPoolHealth reads a thin pool's health from the ninth character of
// its lv_attr. A failed pool or one with read-only metadata (after an I/O
// error on its metadata) stays so until it is repaired.
func thinPoolHealth(tp *lvm.LV) error {
	if len(tp.Attr) < 9 {
		return nil
	}
	repair := fmt.Sprintf("; deactivate it and repair it (lvconvert --repair %s/%s) once its devices are healthy", tp.VG, tp.Name)
	switch tp.Attr[8] {
	case 'F':
		return fmt.Errorf("thin pool %s/%s has failed%s", tp.VG, tp.Name, repair)
	case 'M':
		return fmt.Errorf("the metadata of thin pool %s/%s is read-only%s", tp.VG, tp.Name, repair)
	case 'D':
		return fmt.Errorf("thin pool %s/%s is out of data space", tp.VG, tp.Name)
	case 'p':
		return fmt.Errorf("thin pool %s/%s is partial: a physical volume is missing", tp.VG, tp.Name)
	}
	return nil
}

// Check finds LVs that are gone or smaller than their volumes, and a thin
// pool about to run out, from one report of the volume group, which waits
// at most as long as the caller or probeWait.
func (p *LVMPool) Check(ctx context.Context, vols []*Volume) map[string][]Problem {
	out := map[string][]Problem{}
	if len(vols) == 0 {
		return out
	}
	ctx, cancel := boundedWait(ctx)
	defer cancel()
	res, err := p.checks.do(ctx, "lvs", func() (any, error) {
		ctx, cancel := context.WithTimeout(context.Background(), probeRun)
		defer cancel()
		return p.lvm.LVs(ctx, p.cfg.VG)
	})
	if err != nil {
		for _, v := range vols {
			out[v.ID] = []Problem{{Reason: "LogicalVolumeUnreadable", Message: err.Error()}}
		}
		return out
	}
	lvs := res.([]lvm.LV)
	var full *Problem
	if p.Thin() {
		if tp := findLV(lvs, p.cfg.ThinPool); tp != nil && tp.DataPercent >= thinFullPercent {
			full = &Problem{Degraded: true, Reason: "ThinPoolFull", Message: fmt.Sprintf("thin pool %s/%s is %.1f%% full; writes fail when it is full", p.cfg.VG, p.cfg.ThinPool, tp.DataPercent)}
		}
	}
	for _, v := range vols {
		name := p.lvName(v.Key())
		switch l := findLV(lvs, name); {
		case l == nil:
			out[v.ID] = []Problem{{DataLoss: true, Reason: "LogicalVolumeMissing", Message: fmt.Sprintf("LV %s/%s of volume %s is gone", p.cfg.VG, name, v.ID)}}
		case l.Size < v.SizeBytes:
			out[v.ID] = []Problem{{DataLoss: true, Reason: "LogicalVolumeShrunk", Message: fmt.Sprintf("LV %s has %d of %d bytes", l.Name, l.Size, v.SizeBytes)}}
		case full != nil:
			out[v.ID] = []Problem{*full}
		}
	}
	return out
}

// mustZero tells whether a removed LV's bytes must be wiped first: a later
// LV could see them unless it is thin in a pool that zeroes new blocks.
func (p *LVMPool) mustZero(ctx context.Context) (bool, error) {
	if !p.Thin() {
		return true, nil
	}
	tp, err := p.lvm.LV(ctx, p.cfg.VG, p.cfg.ThinPool)
	if err != nil {
		return false, err
	}
	return !tp.ZeroesNewBlocks(), nil
}
