package driver

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/pkg/pool"
)

// fakeMounts is a mount table in memory: a mount records the source it
// shows (a bind of a mount point shows that mount's source), so ownership
// works as on Linux, without root.
type fakeMounts struct {
	mu        sync.Mutex
	table     map[string]*mounter.Point // mount point -> mount
	formatted map[string]string         // device -> fsType
	// extNeedsGrow: devices whose ext4 is smaller than the device.
	extNeedsGrow map[string]bool
	growOnline   bool
	calls        []string // what was done, in order
	failMount    error    // returned by Mount when set
	size         int64    // DeviceSize of anything
	stats        mounter.Stats
}

func newFakeMounts() *fakeMounts {
	return &fakeMounts{table: map[string]*mounter.Point{}, formatted: map[string]string{}, extNeedsGrow: map[string]bool{}, growOnline: true, size: 64 << 20,
		stats: mounter.Stats{Total: 100, Available: 60, Used: 40, Inodes: 10, InodesFree: 7}}
}

var _ mounter.Interface = (*fakeMounts)(nil)

func (f *fakeMounts) record(format string, args ...any) {
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeMounts) Identify(path string, dir bool) mounter.Origin {
	return mounter.Origin{Path: path, Dir: dir, Major: -1, Minor: -1}
}

func (f *fakeMounts) At(path string) (*mounter.Point, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m := f.table[path]; m != nil {
		c := *m
		return &c, nil
	}
	return nil, nil
}

// Owns of a directory origin needs an inode; the fake matches on Source
// only, so directory mounts are recorded as device-like.
func (f *fakeMounts) MountsOf(o mounter.Origin) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for p, m := range f.table {
		if m.Source == o.Path {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out, nil
}

func (f *fakeMounts) Mount(dev, target, fsType string, opts []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("mount %s %s %s", fsType, dev, target)
	if f.failMount != nil {
		return f.failMount
	}
	if f.formatted[dev] != fsType {
		return fmt.Errorf("mount %s: no %s filesystem", dev, fsType)
	}
	f.table[target] = &mounter.Point{Source: dev}
	return nil
}

func (f *fakeMounts) Bind(source, target string, opts []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("bind %s %s", source, target)
	p := &mounter.Point{Source: source}
	if m := f.table[source]; m != nil {
		p.Source = m.Source
	}
	for _, o := range opts {
		if o == "ro" {
			p.ReadOnly = true
		}
	}
	f.table[target] = p
	return nil
}

func (f *fakeMounts) Unmount(target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("unmount %s", target)
	if f.table[target] == nil {
		return fmt.Errorf("%s is not mounted", target)
	}
	delete(f.table, target)
	return nil
}

func (f *fakeMounts) Probe(_ context.Context, dev string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.formatted[dev], nil
}

func (f *fakeMounts) Format(_ context.Context, dev, fsType string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("mkfs %s %s", fsType, dev)
	f.formatted[dev] = fsType
	return nil
}

func (f *fakeMounts) RenewBtrfsID(_ context.Context, dev, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("btrfstune %s %s", dev, id)
	return nil
}

func (f *fakeMounts) UndoExtGrowth(_ context.Context, dev, id string) (bool, error) {
	return false, nil
}

func (f *fakeMounts) ForgetExtGrowth(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("forget growth %s", id)
	return nil
}

func (f *fakeMounts) CheckExt(_ context.Context, dev, _ string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("e2fsck %s", dev)
	delete(f.extNeedsGrow, dev)
	return nil
}

func (f *fakeMounts) ExtNeedsGrow(dev string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.extNeedsGrow[dev], nil
}

func (f *fakeMounts) Grow(_ context.Context, dev, mountPath, fsType string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fsType == "ext4" && !f.extNeedsGrow[dev] {
		return nil
	}
	if fsType == "ext4" && !f.growOnline {
		return fmt.Errorf("%w: fake", mounter.ErrCannotGrowOnline)
	}
	f.record("grow %s %s", dev, mountPath)
	delete(f.extNeedsGrow, dev)
	return nil
}

func (f *fakeMounts) CanGrowMountedExt4() bool { return f.growOnline }

func (f *fakeMounts) Statfs(string) (mounter.Stats, error) { return f.stats, nil }

func (f *fakeMounts) DeviceSize(string) (int64, error) { return f.size, nil }

// mounted tells whether path is a mount point.
func (f *fakeMounts) mounted(path string) bool {
	m, _ := f.At(path)
	return m != nil
}

// did tells whether a call was recorded.
func (f *fakeMounts) did(call string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls {
		if c == call {
			return true
		}
	}
	return false
}

// fakeResize stands in for a source's Resized, which for an image pool
// refreshes a real loop device; the rest of the source is kept.
type fakeResize struct {
	pool.Source
	resized []string // sources refreshed, in order
}

func (f *fakeResize) Resized(_ context.Context, _ *pool.Volume, src string) error {
	f.resized = append(f.resized, src)
	return nil
}
