package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/pool"
)

// A volume's source on the node is where its data is reached: a loop device
// (image pools), an LV's device (lvm pools) or a directory (quota pools).

// attach makes a volume's source available and returns it.
func (d *Driver) attach(nv *nodeVolume) (string, error) {
	key := nv.vol.Key()
	switch p := nv.pool.(type) {
	case *pool.ImagePool:
		return d.attachImage(p.ImagePath(key))
	case *pool.LVMPool:
		return p.Device(key)
	case *pool.QuotaPool:
		dir, err := d.find(nv)
		if err == nil && dir == "" {
			err = fmt.Errorf("%w: the directory of volume %s is gone", errPrecondition, nv.vol.ID)
		}
		return dir, err
	}
	return "", fmt.Errorf("%w: pool %s cannot be used", errPrecondition, nv.pool.Name())
}

// find returns a volume's source if it is available, or "".
func (d *Driver) find(nv *nodeVolume) (string, error) {
	key := nv.vol.Key()
	switch p := nv.pool.(type) {
	case *pool.ImagePool:
		return d.devices.Find(p.ImagePath(key))
	case *pool.LVMPool:
		return p.FindDevice(key)
	case *pool.QuotaPool:
		dir := p.VolumeDir(key)
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			return "", nil
		} else if err != nil {
			return "", err
		}
		return dir, nil
	}
	return "", nil
}

// detach releases what attach set up: the loop device of an image. An LV
// stays active and a directory stays where it is.
func (d *Driver) detach(nv *nodeVolume) error {
	if p, ok := nv.pool.(*pool.ImagePool); ok {
		return d.devices.Detach(p.ImagePath(nv.vol.Key()))
	}
	return nil
}

// mountsOf finds the mounts of a volume's source.
func (d *Driver) mountsOf(nv *nodeVolume, src string) deviceMounts {
	if nv.pool.Kind() == pool.KindQuota {
		return newDirMounts(src)
	}
	return newDeviceMounts(src)
}

// checkUnused refuses to delete a volume that is staged or mounted here.
func (d *Driver) checkUnused(p pool.Pool, v *pool.Volume) error {
	nv := &nodeVolume{pool: p, vol: v}
	src, err := d.find(nv)
	if err != nil || src == "" {
		return err
	}
	if p.Kind() == pool.KindImage {
		return fmt.Errorf("%w: volume %s is still staged on this node (%s); unstage it first", errPrecondition, v.ID, src)
	}
	mounts, err := d.mountsOf(nv, src).all()
	if err != nil {
		return err
	}
	if len(mounts) > 0 {
		return fmt.Errorf("%w: volume %s is still mounted at %v; unstage it first", errPrecondition, v.ID, mounts)
	}
	return nil
}

// stageDirectory binds a quota volume's directory at the staging path.
func stageDirectory(v *pool.Volume, dir, staging string, flags []string) error {
	dm := newDirMounts(dir)
	m, err := mountAt(staging)
	if err != nil {
		return err
	}
	if m != nil {
		if !dm.owns(m) {
			return fmt.Errorf("%w: staging path %s already holds another mount (%s)", errPrecondition, staging, m)
		}
		return nil
	}
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return err
	}
	if err := bindMount(dir, staging, flags); err != nil {
		return err
	}
	klog.V(2).InfoS("Volume staged", "volumeID", v.ID, "directory", dir, "path", staging)
	return nil
}
