package driver

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/transfer"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

// OpenTransfer opens a snapshot or volume of this node for a transfer to
// another node (the capability was checked by the transfer server): the
// bytes of an image or LV, or the directory tree of a quota pool's. It
// holds the content's lock until Close, so that it is neither deleted nor,
// for a volume, staged while it is read. A volume in use is refused: its
// data would change under the copy, and freezing its filesystem for as
// long as a network copy takes would stall its pod.
func (d *Driver) OpenTransfer(ctx context.Context, kind, source string) (*transfer.Content, error) {
	c, err := d.localContent(kind, source)
	if err != nil {
		return nil, remoteErr(err)
	}
	switch c.pool.Pool.(type) {
	case pool.Exporter, pool.TreeExporter:
	default:
		return nil, &transfer.RemoteError{Code: transfer.CodeInvalid, Message: fmt.Sprintf("pool %s (%s) cannot send its data to another node", c.pool.Name(), c.pool.Kind())}
	}
	release, err := d.locks.acquire(c.lock())
	if err != nil {
		return nil, remoteErr(err)
	}
	h, err := d.exportable(c)
	var content *transfer.Content
	if err == nil {
		content, err = openContent(ctx, c.pool, pool.Content{Snapshot: c.snap, Volume: c.vol})
	}
	if err != nil {
		release()
		return nil, remoteErr(err)
	}
	h.Size, h.PoolKind, h.Name = content.Size, string(c.pool.Kind()), d.nameOf(c)
	content.Header = h
	closeData := content.Close
	content.Close = func() {
		closeData()
		release()
	}
	return content, nil
}

// openContent opens a snapshot's or volume's data as its pool holds it:
// block content, or a directory tree.
func openContent(ctx context.Context, p *poolEntry, c pool.Content) (*transfer.Content, error) {
	if tp, ok := p.Pool.(pool.TreeExporter); ok {
		tc, err := tp.OpenTree(ctx, c)
		if err != nil {
			return nil, err
		}
		return &transfer.Content{Header: transfer.Header{Size: tc.Size}, Tree: tc.Dir, Close: func() { tc.Close() }}, nil
	}
	bc, err := p.Pool.(pool.Exporter).OpenContent(ctx, c)
	if err != nil {
		return nil, err
	}
	data := stream.FileSource(bc.File, bc.Size)
	if bc.Device {
		data = stream.DeviceSource(bc.File, bc.Size)
	}
	return &transfer.Content{Header: transfer.Header{Size: bc.Size}, Data: data, Close: func() { bc.Close() }}, nil
}

// localContent finds a transfer's source in this node's pools.
func (d *Driver) localContent(kind, source string) (*volumeContent, error) {
	switch kind {
	case broker.KindSnapshot:
		return d.findSnapshot(source)
	case broker.KindVolume:
		p, v, err := d.lookup(source)
		if err != nil {
			return nil, err
		}
		return &volumeContent{pool: p, vol: v}, nil
	}
	return nil, invalid("unknown transfer kind %q", kind)
}

// exportable checks, under the content's lock, that it may be read now,
// and describes it.
func (d *Driver) exportable(c *volumeContent) (transfer.Header, error) {
	mode, fsType, _ := c.mode()
	h := transfer.Header{Source: c.id(), Mode: string(mode), FsType: fsType}
	if c.snap != nil {
		h.Kind, h.Format = broker.KindSnapshot, c.snap.Format
		// A snapshot never changes: its identity is its creation.
		h.Version = strconv.FormatInt(c.snap.Created.Unix(), 10) + "/" + strconv.FormatInt(c.snap.SizeBytes, 10)
		return h, nil
	}
	h.Kind, h.Format = broker.KindVolume, c.vol.Format
	if err := notIncoming(c.vol); err != nil {
		return h, err
	}
	src, _, mounts, err := d.sourceMounts(&nodeVolume{pool: c.pool, vol: c.vol})
	if err != nil {
		return h, err
	}
	if src != "" && len(mounts) > 0 {
		return h, fmt.Errorf("%w: volume %s is in use at %v on node %s; a copy to another node reads it for a long time and would be torn: stop its pods (or take a VolumeSnapshot and restore that) and retry", errPrecondition, c.vol.ID, mounts, d.nodeID)
	}
	return h, nil
}

// remoteErr gives a transfer refusal the code the target answers with.
func remoteErr(err error) error {
	code := transfer.CodeInternal
	switch {
	case errors.Is(err, pool.ErrNotFound):
		code = transfer.CodeNotFound
	case errors.Is(err, pool.ErrInvalid):
		code = transfer.CodeInvalid
	case errors.Is(err, errAborted), errors.Is(err, pool.ErrInProgress):
		code = transfer.CodeAborted
	case errors.Is(err, errPrecondition), errors.Is(err, pool.ErrStorageMissing):
		code = transfer.CodePrecondition
	}
	if code == transfer.CodeInternal {
		klog.ErrorS(err, "Opening a transfer source")
	}
	return &transfer.RemoteError{Code: code, Message: err.Error()}
}
