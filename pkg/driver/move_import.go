package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/flashpv/flashpv/pkg/move"
	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/transfer"
	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

// The target's side of a move. import makes the volume, under the ID it
// has on the source, as an incoming volume (nothing stages it) and fetches
// the snapshot into it, resumable by segment as a restore is; the copy
// then stays incoming, marked received. catch-up fetches the volume's
// delta against the snapshot, applies it, and makes the volume complete.

// grant is what the order lets this node read from the source.
func grant(req move.OrderRequest) transfer.Grant {
	return transfer.Grant{SourceNode: req.Source, Address: req.SourceAddress, Capability: req.Capability}
}

// importCopy carries out an import.
func (o *MoveOrders) importCopy(ctx context.Context, req move.OrderRequest) (string, error) {
	d := o.d
	id, _ := pool.ParseVolumeID(req.Volume) // Order checked it
	p := d.pools[id.Pool]
	if _, ok := p.Pool.(pool.Importer); !ok {
		if _, ok := p.Pool.(pool.TreeImporter); !ok {
			return "", fmt.Errorf("pool %s (%s) on node %s cannot receive data from another node", p.Name(), p.Kind(), d.nodeID)
		}
	}
	release, err := o.lockVolume(req.Volume)
	if err != nil {
		return "", err
	}
	defer release()
	var have transfer.Have
	v, err := p.Get(id.Key)
	switch {
	case errors.Is(err, pool.ErrNotFound):
	case err != nil:
		return "", fmt.Errorf("%w: %v", errRetry, err)
	case v.Move == nil || v.Move.ID != req.MoveID:
		return "", fmt.Errorf("volume %s exists on node %s already, and is not this move's copy", v.ID, d.nodeID)
	case v.Incoming == nil:
		return "complete already", nil
	case v.Incoming.Received:
		return "snapshot received", nil
	default:
		have = transfer.Have{From: v.Incoming.Next, Version: v.Incoming.Version, Checkpoint: v.Incoming.Checkpoint}
	}
	sess, err := d.remote.OpenGranted(ctx, grant(req), transfer.ReadRequest{Kind: broker.KindSnapshot, Source: req.Snapshot, Target: req.Volume}, have)
	if err != nil {
		return "", orderErr(fromRemote(err))
	}
	defer sess.Close()
	spec, err := moveSpec(p, sess.Header, req)
	if err != nil {
		return "", err
	}
	if v == nil {
		if v, _, err = p.Create(ctx, spec); err != nil {
			return "", orderErr(err)
		}
	}
	if sess.IsTree() {
		_, _, err = d.receiveTree(ctx, p, v, sess, true)
	} else {
		_, _, err = d.receive(ctx, p, v, sess, true)
	}
	d.remote.Metrics.Received(receivedResult(err))
	if err != nil {
		return "", orderErr(err)
	}
	return "snapshot received", nil
}

// moveSpec is the copy's spec: the source's volume as the header
// describes it, under the same name, so the same ID.
func moveSpec(p *poolEntry, h transfer.Header, req move.OrderRequest) (pool.Spec, error) {
	if err := fitsLayout(h, p, req.Source); err != nil {
		return pool.Spec{}, err
	}
	if h.Name == "" || pool.ValidateName(h.Name) != nil || pool.IDFor(p.Name(), h.Name).String() != req.Volume {
		return pool.Spec{}, fmt.Errorf("node %s sends snapshot %s of a volume named %q, whose ID here is not %s", req.Source, req.Snapshot, h.Name, req.Volume)
	}
	mode := pool.Mode(h.Mode)
	switch {
	case mode == pool.ModeBlock && p.layout.Block:
	case mode == pool.ModeFilesystem && p.layout.Directory:
	case mode == pool.ModeFilesystem && minFsSize[h.FsType] > 0:
	default:
		return pool.Spec{}, fmt.Errorf("snapshot %s holds a %s volume (%q), which pool %s (%s) cannot hold", req.Snapshot, h.Mode, h.FsType, p.Name(), p.Kind())
	}
	return pool.Spec{
		Name: h.Name, SizeBytes: roundUp(h.Size, mib), Mode: mode, FsType: h.FsType,
		Incoming: &pool.Incoming{Source: req.Snapshot, SourceNode: req.Source, Version: h.Version, Size: h.Size, Updated: time.Now().UTC()},
		Move:     &pool.Move{ID: req.MoveID, Peer: req.Source},
	}, nil
}

// catchUp carries out a catch-up.
func (o *MoveOrders) catchUp(ctx context.Context, req move.OrderRequest) (string, error) {
	d := o.d
	release, err := o.lockVolume(req.Volume)
	if err != nil {
		return "", err
	}
	defer release()
	p, v, err := d.lookup(req.Volume)
	switch {
	case errors.Is(err, pool.ErrNotFound):
		return "", fmt.Errorf("node %s holds no copy of volume %s to catch up: import the snapshot first", d.nodeID, req.Volume)
	case err != nil:
		return "", fmt.Errorf("%w: %v", errRetry, err)
	case v.Move == nil || v.Move.ID != req.MoveID:
		return "", fmt.Errorf("volume %s on node %s is not this move's copy", v.ID, d.nodeID)
	case v.Incoming == nil:
		return "complete already", nil
	case !v.Incoming.Received:
		return "", fmt.Errorf("the snapshot is not all here yet (%d of %d bytes): import it first", v.Incoming.Next, v.Incoming.Size)
	}
	sess, err := d.remote.OpenGranted(ctx, grant(req), transfer.ReadRequest{Kind: auth.KindDelta, Source: req.Volume, Base: req.Snapshot, Target: req.Volume}, transfer.Have{})
	if err != nil {
		return "", orderErr(fromRemote(err))
	}
	defer sess.Close()
	if err := fitsLayout(sess.Header, p, req.Source); err != nil {
		return "", err
	}
	if pool.Mode(sess.Mode) != v.Mode || sess.Name != v.Name {
		return "", fmt.Errorf("node %s sends a %s volume named %q; the copy is a %s volume named %q", req.Source, sess.Mode, sess.Name, v.Mode, v.Name)
	}
	if sess.IsTree() {
		// No delta of a directory: the copy is made over, whole.
		_, _, err := d.receiveTree(ctx, p, v, sess, false)
		d.remote.Metrics.Received(receivedResult(err))
		if err != nil {
			return "", orderErr(err)
		}
		return "tree received whole", nil
	}
	st, err := d.applyDelta(ctx, p, v, sess)
	d.remote.Metrics.Received(receivedResult(err))
	if err != nil {
		return "", orderErr(err)
	}
	return fmt.Sprintf("caught up: %d bytes of changes", st.DataBytes), nil
}

// applyDelta grows the copy to the volume's size and applies the delta;
// every segment is checked against the source's content before the copy
// is made complete.
func (d *Driver) applyDelta(ctx context.Context, p *poolEntry, v *pool.Volume, sess *transfer.Session) (stream.Stats, error) {
	if sess.Size > v.SizeBytes {
		grown, err := p.Expand(ctx, v.Key(), roundUp(sess.Size, mib))
		if err != nil {
			return stream.Stats{}, err
		}
		v = grown
	}
	f, err := p.Pool.(pool.Importer).OpenImport(ctx, v) // fitsLayout checked it
	if err != nil {
		return stream.Stats{}, err
	}
	defer f.Close()
	st, err := sess.ReceiveDelta(ctx, stream.FileTarget(f), nil)
	if errors.Is(err, stream.ErrChecksum) {
		// The copy did not hold the snapshot, or lost a write: the
		// delta cannot make it the volume.
		return st, fmt.Errorf("node %s's changes to %s do not make this copy the volume: %v", sess.SourceNode, v.ID, err)
	}
	if err != nil {
		return st, fmt.Errorf("%w: receiving the changes to %s from node %s: %v (a retry starts over)", errAborted, v.ID, sess.SourceNode, err)
	}
	if err := f.Close(); err != nil {
		return st, err
	}
	final := pool.NodeState{Move: v.Move}
	if v.Mode == pool.ModeFilesystem && !p.layout.Directory {
		final.Format = sess.Format
	}
	_, err = p.SetNodeState(ctx, v.Key(), final)
	return st, err
}

// orderErr keeps what a new attempt may get past (Aborted: a cut, a busy
// node) retryable, and everything else a failure of the order.
func orderErr(err error) error {
	if errors.Is(err, errAborted) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w: %v", errRetry, err)
	}
	return err
}

// receivedResult is a transfer's result for flashpv_transfers_total.
func receivedResult(err error) string {
	if err != nil {
		return "failed"
	}
	return "done"
}
