package driver

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/pkg/pool"
)

// nodeVolume is a known volume, locked against concurrent operations.
type nodeVolume struct {
	pool    *poolEntry
	vol     *pool.Volume
	release func()
}

// pathArg is a path from the CO and what the error calls it.
type pathArg struct{ path, what string }

// openNodeVolume validates a node request's volume ID and paths, takes the
// volume's in-flight lock, loads it and finishes what a call cut short left
// half done. The caller must call release.
func (d *Driver) openNodeVolume(ctx context.Context, volumeID string, paths ...pathArg) (*nodeVolume, error) {
	if volumeID == "" {
		return nil, invalid("volume ID is missing")
	}
	for _, p := range paths {
		if err := d.checkPath(p.path, p.what); err != nil {
			return nil, err
		}
	}
	release, err := d.locks.acquire(volumeID)
	if err != nil {
		return nil, err
	}
	p, v, err := d.lookup(volumeID)
	if err != nil {
		release()
		return nil, err
	}
	nv := &nodeVolume{pool: p, vol: v, release: release}
	if err := d.restoreMount(ctx, nv); err != nil {
		release()
		return nil, err
	}
	return nv, nil
}

// origin identifies the mounts of a volume's source src.
func (d *Driver) origin(nv *nodeVolume, src string) mounter.Origin {
	return d.mounts.Identify(src, nv.pool.layout.Directory)
}

// sourceMounts finds a volume's source and the mount points it has; src
// is "" when the source is not available here.
func (d *Driver) sourceMounts(nv *nodeVolume) (src string, o mounter.Origin, mounts []string, err error) {
	src, err = nv.pool.src.Find(nv.vol)
	if err != nil || src == "" {
		return src, mounter.Origin{}, nil, err
	}
	o = d.origin(nv, src)
	mounts, err = d.mounts.MountsOf(o)
	return src, o, mounts, err
}

// release frees a volume's source on this node before it is deleted: a
// volume still mounted anywhere is refused; a source nothing is mounted
// from (a loop device a retried unstage left attached, say) is detached.
func (d *Driver) releaseForDelete(ctx context.Context, p *poolEntry, v *pool.Volume) error {
	nv := &nodeVolume{pool: p, vol: v}
	src, _, mounts, err := d.sourceMounts(nv)
	if err != nil || src == "" {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("%w: volume %s is still mounted at %v; unstage it first", errPrecondition, v.ID, mounts)
	}
	if err := p.src.Detach(ctx, v); err != nil {
		if errors.Is(err, loopdev.ErrBusy) {
			return fmt.Errorf("%w: volume %s is still staged on this node (%s is open): %v", errPrecondition, v.ID, src, err)
		}
		return err
	}
	klog.V(2).InfoS("Released the source of a volume to delete", "volumeID", v.ID, "source", src)
	return nil
}
