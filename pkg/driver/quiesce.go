package driver

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/move"
	"github.com/flashpv/flashpv/pkg/pool"
)

// Freezer freezes a mounted filesystem around fn and always thaws it (also
// after a crash: see pkg/fsfreeze).
type Freezer interface {
	WithFrozen(ctx context.Context, mountpoint string, fn func(context.Context) error) error
}

// quiesce makes the step of a snapshot or clone that reads volume v a
// point-in-time copy, or refuses: v's filesystem staged on this node is
// frozen around the step; an instant step (a reflink, a thin snapshot) of a
// published Block volume is atomic against its writes, so it sees what a
// crash at that instant would leave; a copy that takes time of a volume in
// use that cannot be frozen would be torn. The caller holds v's lock, so
// nothing stages or unstages v meanwhile.
func (d *Driver) quiesce(p *poolEntry, v *pool.Volume) pool.Quiesce {
	return func(ctx context.Context, instant bool, step func(context.Context) error) error {
		src, _, mounts, err := d.sourceMounts(&nodeVolume{pool: p, vol: v})
		if err != nil {
			return err
		}
		switch {
		case src == "" || len(mounts) == 0:
			// Not staged: nothing writes to it.
			return step(ctx)
		case p.layout.Directory:
			return fmt.Errorf("%w: volume %s %s: it is in use at %v, and its directory shares the filesystem of pool %s, which cannot be frozen for a point-in-time copy; stop the pods using it (scale the StatefulSet down) and retry",
				errPrecondition, v.ID, move.SnapshotNeedsStop, mounts, p.Name())
		case v.Mode == pool.ModeBlock && instant:
			return step(ctx)
		case v.Mode == pool.ModeBlock:
			return fmt.Errorf("%w: Block volume %s %s: it is published at %v, a copy of its data would be torn while the pod writes, and a raw device cannot be frozen; stop the pod and retry (pools that can share blocks take instant snapshots of published Block volumes)",
				errPrecondition, v.ID, move.SnapshotNeedsStop, mounts)
		case d.freezer == nil:
			return fmt.Errorf("%w: volume %s %s: it is staged and this driver cannot freeze filesystems", errPrecondition, v.ID, move.SnapshotNeedsStop)
		}
		mp := d.stagingFirst(mounts)
		klog.V(2).InfoS("Freezing filesystem for a point-in-time copy", "volumeID", v.ID, "mountpoint", mp, "instant", instant)
		return d.freezer.WithFrozen(ctx, mp, step)
	}
}

// stagingFirst picks the mount point to freeze by: the staging mount rather
// than a pod's, since it is the one that stays until the volume is
// unstaged, so a restarted flashpv finds it to thaw.
func (d *Driver) stagingFirst(mounts []string) string {
	pods := filepath.Join(d.kubeletDir, "pods") + "/"
	for _, m := range mounts {
		if !strings.HasPrefix(m, pods) {
			return m
		}
	}
	return mounts[0]
}
