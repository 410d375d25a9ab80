package driver

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/flashpv/flashpv/pkg/pool"
)

// volumeContent is the source of a volume made from a snapshot or another
// volume, found in this node's pools.
type volumeContent struct {
	pool *poolEntry
	snap *pool.Snapshot // or
	vol  *pool.Volume
}

func (c *volumeContent) id() string {
	if c.snap != nil {
		return c.snap.ID
	}
	return c.vol.ID
}

// lock is the in-flight key that keeps the source from being deleted (or,
// for a volume, staged or unstaged) while it is copied.
func (c *volumeContent) lock() string {
	if c.snap != nil {
		return snapshotLock(c.snap.ID)
	}
	return c.vol.ID
}

func (c *volumeContent) mode() (pool.Mode, string, int64) {
	if c.snap != nil {
		return c.snap.Mode, c.snap.FsType, c.snap.SizeBytes
	}
	return c.vol.Mode, c.vol.FsType, c.vol.SizeBytes
}

// content finds a CreateVolume's content source on this node: nil for none.
// A source that is not here is NotFound, as the CSI spec asks, with a
// message that says where restores happen (see notHere).
func (d *Driver) content(src *csi.VolumeContentSource) (*volumeContent, error) {
	if src == nil {
		return nil, nil
	}
	if sn := src.GetSnapshot(); sn != nil {
		id := sn.GetSnapshotId()
		if id == "" {
			return nil, invalid("content source snapshot ID is missing")
		}
		c, err := d.findSnapshot(id)
		return c, notHere(err, "snapshot", id, d.nodeID)
	}
	if v := src.GetVolume(); v != nil {
		id := v.GetVolumeId()
		if id == "" {
			return nil, invalid("content source volume ID is missing")
		}
		p, vol, err := d.lookup(id)
		if err != nil {
			return nil, notHere(err, "volume", id, d.nodeID)
		}
		if err := notIncoming(vol); err != nil {
			return nil, err
		}
		return &volumeContent{pool: p, vol: vol}, nil
	}
	return nil, invalid("content source is neither a snapshot nor a volume")
}

// findSnapshot finds snapshot id in this node's pools; NotFound when it
// is not here.
func (d *Driver) findSnapshot(id string) (*volumeContent, error) {
	sid, err := pool.ParseVolumeID(id)
	if err != nil {
		return nil, err
	}
	p := d.pools[sid.Pool]
	if p == nil {
		return nil, fmt.Errorf("%w: no pool %q here", pool.ErrNotFound, sid.Pool)
	}
	if p.snap == nil {
		return nil, fmt.Errorf("%w: pool %s has no snapshots", pool.ErrNotFound, sid.Pool)
	}
	s, err := p.snap.GetSnapshot(sid.Key)
	if err != nil {
		return nil, err
	}
	return &volumeContent{pool: p, snap: s}, nil
}

// poolFor is the pool of a volume made from c: its source's. A StorageClass
// that names another pool is refused.
func (c *volumeContent) poolFor(params map[string]string) (*poolEntry, error) {
	if name, ok := params[ParamPool]; ok && name != c.pool.Name() {
		return nil, invalid("source %s is in pool %s; a volume made from it is in the same pool, not %q", c.id(), c.pool.Name(), name)
	}
	if c.pool.cloner == nil {
		return nil, fmt.Errorf("%w: pool %s cannot make volumes from snapshots or volumes", errUnsupported, c.pool.Name())
	}
	return c.pool, nil
}

// fits checks that the capabilities ask for what the source holds and
// returns the new volume's fsType: the source's when the capabilities name
// none.
func (c *volumeContent) fits(mode pool.Mode, fsType string, caps []*csi.VolumeCapability) (string, error) {
	srcMode, srcFs, _ := c.mode()
	return fitsSource(c.id(), srcMode, srcFs, mode, caps)
}

// fitSize makes a volume at least as big as its source.
func (c *volumeContent) fitSize(size, limit int64) (int64, error) {
	_, _, srcSize := c.mode()
	return sizeFor(c.id(), srcSize, size, limit)
}

// fitsSource checks that capabilities ask for what source id holds (a
// srcMode volume of srcFs) and returns the new volume's fsType: the
// source's. A restore on this node and one from another node judge alike.
func fitsSource(id string, srcMode pool.Mode, srcFs string, mode pool.Mode, caps []*csi.VolumeCapability) (string, error) {
	if mode != srcMode {
		return "", invalid("source %s is a %s volume; a %s volume cannot be made from it", id, srcMode, mode)
	}
	if mode == pool.ModeBlock {
		return "", nil
	}
	for _, cp := range caps {
		if fs := cp.GetMount().GetFsType(); fs != "" && fs != srcFs {
			return "", invalid("source %s holds %s, not %s", id, srcFs, fs)
		}
	}
	return srcFs, nil
}

// sizeFor makes a volume of the requested size at least as big as its
// source of srcSize bytes, within limit.
func sizeFor(id string, srcSize, size, limit int64) (int64, error) {
	if limit > 0 && srcSize > limit {
		return 0, fmt.Errorf("%w: source %s has %d bytes, more than the limit of %d", pool.ErrOutOfRange, id, srcSize, limit)
	}
	return max(size, srcSize), nil
}

// createFrom makes a volume holding a copy of c, under c's lock.
func (d *Driver) createFrom(ctx context.Context, s pool.Spec, c *volumeContent) (*pool.Volume, bool, error) {
	release, err := d.locks.acquire(c.lock())
	if err != nil {
		return nil, false, err
	}
	defer release()
	s.Source = c.id()
	pc := pool.Content{Snapshot: c.snap, Volume: c.vol}
	if c.vol != nil {
		pc.Quiesce = d.quiesce(c.pool, c.vol)
	}
	return c.pool.cloner.CreateFrom(ctx, s, pc)
}

// madeFrom finds the volume named name made from src, in any pool.
func (d *Driver) madeFrom(name string, src *csi.VolumeContentSource) (*poolEntry, *pool.Volume) {
	id := src.GetSnapshot().GetSnapshotId()
	if id == "" {
		id = src.GetVolume().GetVolumeId()
	}
	if id == "" {
		return nil, nil
	}
	for _, pn := range d.poolNames {
		p := d.pools[pn]
		if v, err := p.GetByName(name); err == nil && v.Source == id && v.Incoming == nil {
			return p, v
		}
	}
	return nil, nil
}
