package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/transfer"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
	"github.com/flashpv/flashpv/pkg/transfer/tree"
)

// fitsLayout refuses content that p cannot hold: a quota pool's directory
// tree goes only into a quota pool, and the block content of an image or
// LVM pool only into an image or LVM pool. Neither can become the other
// by copying.
func fitsLayout(h transfer.Header, p *poolEntry, node string) error {
	src := fmt.Sprintf("%s %s on node %s", h.Kind, h.Source, node)
	from := h.PoolKind
	if from == "" {
		from = "image or lvm" // a peer that predates trees sends blocks only
	}
	switch {
	case h.IsTree() && !p.layout.Directory:
		return invalid("%s comes from a %s pool, as a directory tree; pool %s on this node is of kind %s, whose volumes each hold a filesystem of their own, and a tree cannot become one: restore it into a quota pool (StorageClass parameter pool)", src, from, p.Name(), p.Kind())
	case !h.IsTree() && p.layout.Directory:
		return invalid("%s comes from a pool of kind %s, as block content (a filesystem image or a device); pool %s on this node is a %s pool, whose volumes are directories of its %s, and blocks cannot become one: restore it into an image or lvm pool (StorageClass parameter pool)", src, from, p.Name(), p.Kind(), p.layout.FsType)
	}
	var ok bool
	if h.IsTree() {
		_, ok = p.Pool.(pool.TreeImporter)
	} else {
		_, ok = p.Pool.(pool.Importer)
	}
	if !ok {
		return invalid("pool %s (%s) cannot receive %s", p.Name(), p.Kind(), src)
	}
	return nil
}

// receiveTree makes the session's directory tree in v's directory and
// makes v complete. A tree from a snapshot is resumable: at every
// checkpoint (verified and synced) the volume's metadata records it, and
// a retry that the source resumes after it keeps the directory as the
// cut attempt left it. Any other attempt empties the directory and starts
// over: a volume as source (it may have changed since), a source node
// that does not resume trees, a checkpoint of another version.
// A move's copy (hold) stays incoming, marked received.
func (d *Driver) receiveTree(ctx context.Context, p *poolEntry, v *pool.Volume, sess *transfer.Session, hold bool) (*pool.Volume, stream.Stats, error) {
	imp := p.Pool.(pool.TreeImporter) // fitsLayout checked it
	in := pool.Incoming{Source: v.Incoming.Source, SourceNode: sess.SourceNode, Version: sess.Version, Size: sess.Size}
	resumed := sess.Resume != ""
	if resumed {
		if sess.Resume != v.Incoming.Checkpoint || sess.Version != v.Incoming.Version {
			return nil, stream.Stats{}, fmt.Errorf("%w: node %s resumes %s at another checkpoint than this volume holds", errAborted, sess.SourceNode, sess.Source)
		}
		in.Checkpoint, in.Next = v.Incoming.Checkpoint, v.Incoming.Next
	}
	touch := func() error {
		in.Updated = time.Now().UTC()
		made, err := p.SetNodeState(ctx, v.Key(), pool.NodeState{Incoming: &in, Move: v.Move})
		if err == nil {
			v = made
		}
		return err
	}
	if err := touch(); err != nil {
		return nil, stream.Stats{}, err
	}
	dir, err := imp.OpenTreeImport(ctx, v, resumed)
	if err != nil {
		return nil, stream.Stats{}, err
	}
	defer dir.Close()
	ts, err := sess.ReceiveTree(ctx, dir, func(_ tree.Stats, c *tree.Checkpoint) error {
		if c != nil && sess.Version != "" {
			in.Checkpoint, in.Next = c.String(), c.DataBytes
		}
		return touch()
	})
	st := stream.Stats{DataBytes: ts.DataBytes, WireBytes: ts.WireBytes}
	if err != nil {
		if in.Checkpoint != "" && !resumable(err) {
			// Fail closed: what the target holds is not to be merged with.
			in.Checkpoint, in.Next = "", 0
			_ = touch()
		}
		return nil, st, treeFailed(err, sess, v, in)
	}
	if err := dir.Close(); err != nil {
		return nil, st, err
	}
	final := pool.NodeState{Move: v.Move}
	if hold {
		in.Received, in.Updated = true, time.Now().UTC()
		final.Incoming = &in
	}
	v, err = p.SetNodeState(ctx, v.Key(), final)
	return v, st, err
}

// resumable tells whether a tree transfer that failed with err may resume
// at its last checkpoint: it was cut (the connection, either side's
// process and so a sender that failed, a full disk), not refused. A
// stream that broke the rules, data that does not match its hash, and a
// resume that found the target or the source otherwise than the
// checkpoint says start over.
func resumable(err error) bool {
	for _, e := range []error{tree.ErrResume, stream.ErrProtocol, stream.ErrChecksum, tree.ErrUnsupported} {
		if errors.Is(err, e) {
			return false
		}
	}
	return true
}

// treeFailed gives a failed tree transfer its code: a source that holds
// what is not copied between nodes, or more than the new volume's limit,
// fails the same way on every retry (FailedPrecondition, retried with
// backoff); anything else is Aborted, and the retry resumes after in's
// checkpoint, or starts over.
func treeFailed(err error, sess *transfer.Session, v *pool.Volume, in pool.Incoming) error {
	what := fmt.Sprintf("receiving the tree of %s from node %s", sess.Source, sess.SourceNode)
	switch {
	case errors.Is(err, tree.ErrUnsupported):
		return fmt.Errorf("%w: %s: %v: remove it from the source, or restore on node %s", errPrecondition, what, err, sess.SourceNode)
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return fmt.Errorf("%w: %s: %v: the tree does not fit in the new volume's %d bytes; ask for a bigger claim", errPrecondition, what, err, v.SizeBytes)
	case in.Checkpoint != "":
		return fmt.Errorf("%w: %s: %v (a retry resumes after %d data bytes)", errAborted, what, err, in.Next)
	}
	return fmt.Errorf("%w: %s: %v (a retry starts over)", errAborted, what, err)
}
