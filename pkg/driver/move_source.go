package driver

import (
	"context"
	"fmt"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/transfer"
	"github.com/flashpv/flashpv/pkg/transfer/auth"
)

// The source's side of a move's catch-up: the volume, fenced and not in
// use, as it differs from the move's snapshot (the target holds the
// snapshot already). A quota pool's volume, a directory tree, has no
// delta: it is sent whole, and the target makes its copy over.

var _ transfer.DeltaOpener = (*Driver)(nil)

// nameOf is the name of the volume a content is, or a snapshot was taken
// of ("" when that volume is gone): a move's copy takes the same name,
// and so the same volume ID.
func (d *Driver) nameOf(c *volumeContent) string {
	if c.vol != nil {
		return c.vol.Name
	}
	if _, v, err := d.lookup(c.snap.SourceVolumeID); err == nil {
		return v.Name
	}
	return ""
}

// OpenDelta opens volume as it differs from base, a snapshot of it, for a
// move's catch-up. It holds both locks until Close, and refuses unless the
// volume is fenced (so nothing stages it meanwhile) and not in use.
func (d *Driver) OpenDelta(ctx context.Context, volume, base string) (*transfer.Content, error) {
	p, v, err := d.lookup(volume)
	if err != nil {
		return nil, remoteErr(err)
	}
	sc, err := d.findSnapshot(base)
	if err != nil {
		return nil, remoteErr(err)
	}
	if sc.pool != p || sc.snap.SourceVolumeID != v.ID {
		return nil, &transfer.RemoteError{Code: transfer.CodeInvalid, Message: fmt.Sprintf("snapshot %s is not a snapshot of volume %s", base, volume)}
	}
	release, err := d.locks.acquire(v.ID)
	if err != nil {
		return nil, remoteErr(err)
	}
	releaseSnap, err := d.locks.acquire(snapshotLock(sc.snap.ID))
	if err != nil {
		release()
		return nil, remoteErr(err)
	}
	unlock := func() { releaseSnap(); release() }
	c, err := d.openDelta(ctx, p, v.ID, sc.snap)
	if err != nil {
		unlock()
		return nil, remoteErr(err)
	}
	closeData := c.Close
	c.Close = func() { closeData(); unlock() }
	return c, nil
}

// openDelta opens the contents under their locks.
func (d *Driver) openDelta(ctx context.Context, p *poolEntry, id string, snap *pool.Snapshot) (*transfer.Content, error) {
	_, v, err := d.lookup(id) // again, under its lock
	if err != nil {
		return nil, err
	}
	if v.Move == nil || !v.Move.Fenced {
		return nil, fmt.Errorf("%w: volume %s is not fenced for a move; a catch-up reads only a volume nothing can stage", errPrecondition, v.ID)
	}
	vc := &volumeContent{pool: p, vol: v}
	h, err := d.exportable(vc)
	if err != nil {
		return nil, err
	}
	if _, ok := p.Pool.(pool.Exporter); !ok {
		if _, ok := p.Pool.(pool.TreeExporter); !ok {
			return nil, fmt.Errorf("%w: pool %s (%s) cannot send its data to another node", pool.ErrInvalid, p.Name(), p.Kind())
		}
	}
	cur, err := openContent(ctx, p, pool.Content{Volume: v})
	if err != nil {
		return nil, err
	}
	h.Kind, h.Size, h.PoolKind, h.Name = auth.KindDelta, cur.Size, string(p.Kind()), v.Name
	cur.Header = h
	if cur.Tree != nil {
		return cur, nil // a tree has no delta: sent whole
	}
	base, err := openContent(ctx, p, pool.Content{Snapshot: snap})
	if err != nil {
		cur.Close()
		return nil, err
	}
	cur.Header.Base = snap.ID
	cur.Base, cur.BaseSize = base.Data, base.Size
	closeCur := cur.Close
	cur.Close = func() { closeCur(); base.Close() }
	return cur, nil
}

// fenced refuses to stage or publish a volume a move has fenced.
func fenced(v *pool.Volume) error {
	if v.Move == nil || !v.Move.Fenced {
		return nil
	}
	return fmt.Errorf("%w: volume %s is being moved to node %s (move %s); it is not staged or published on this node until the move is over", errPrecondition, v.ID, v.Move.Peer, v.Move.ID)
}
