package driver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/transfer"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// The provisioner's parameters that name the claim (with
// --extra-create-metadata).
const (
	paramClaimName      = "csi.storage.k8s.io/pvc/name"
	paramClaimNamespace = "csi.storage.k8s.io/pvc/namespace"
)

// crossNode tells whether a content source that is not on this node is
// fetched from its node: the driver has a transfer client and the class
// does not forbid it.
func (d *Driver) crossNode(err error, params map[string]string) bool {
	return d.remote != nil && errors.Is(err, pool.ErrNotFound) && params[wellknown.ParamCrossNode] != "false"
}

// remoteSpec is what CreateVolume asked for, validated.
type remoteSpec struct {
	name   string
	mode   pool.Mode
	fsType string
	params map[string]string
}

// createRemote makes a volume in this node's pool from a snapshot or
// volume of another node: the broker grants the copy, the source's node
// streams the data, and the volume is recorded as incoming until every
// segment has been verified and synced. A retry resumes where the last
// attempt stopped; the copy goes on after the call ends, as local copies
// do.
func (s *Controller) createRemote(ctx context.Context, req *csi.CreateVolumeRequest, rs remoteSpec) (*csi.Volume, error) {
	g, err := grantRequest(req)
	if err != nil {
		return nil, err
	}
	p, err := s.d.poolFor(rs.params)
	if err != nil {
		return nil, err
	}
	switch p.Pool.(type) {
	case pool.Importer, pool.TreeImporter:
	default:
		return nil, invalid("pool %s (%s) cannot receive data from another node (%s %s)", p.Name(), p.Kind(), g.Kind, g.Source)
	}
	if err := s.d.checkAccessible(req.GetAccessibilityRequirements()); err != nil {
		return nil, err
	}
	if rs.fsType, err = poolFsType(p, rs.mode, rs.fsType, req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	size, lo, hi, err := volumeSize(req.GetCapacityRange(), minSize(p, rs.mode, rs.fsType))
	if err != nil {
		return nil, err
	}
	release, err := s.d.locks.acquire("name/" + rs.name)
	if err != nil {
		return nil, err
	}
	if err := s.d.nameFree(rs.name, p); err != nil {
		release()
		return nil, err
	}
	spec := pool.Spec{Name: rs.name, SizeBytes: size, MinBytes: lo, MaxBytes: hi, Mode: rs.mode, Parameters: rs.params, Source: g.Source}
	var v *pool.Volume
	err = s.d.locks.detach(ctx, func(ctx context.Context) error {
		defer release()
		made, err := s.d.fetch(ctx, p, spec, g, req.GetVolumeCapabilities())
		v = made
		return err
	})
	if err != nil {
		return nil, err
	}
	vol := s.d.csiVolume(p, v)
	vol.ContentSource = req.GetVolumeContentSource()
	return vol, nil
}

// grantRequest is what the broker is asked for a CreateVolume.
func grantRequest(req *csi.CreateVolumeRequest) (broker.GrantRequest, error) {
	g := broker.GrantRequest{
		Target:         req.GetName(),
		ClaimName:      req.GetParameters()[paramClaimName],
		ClaimNamespace: req.GetParameters()[paramClaimNamespace],
	}
	src := req.GetVolumeContentSource()
	if id := src.GetSnapshot().GetSnapshotId(); id != "" {
		g.Kind, g.Source = broker.KindSnapshot, id
	} else {
		g.Kind, g.Source = broker.KindVolume, src.GetVolume().GetVolumeId()
	}
	if g.ClaimName == "" || g.ClaimNamespace == "" {
		return g, fmt.Errorf("%w: %s %s is on another node, and copying it here needs the claim's name (csi-provisioner --extra-create-metadata)", errPrecondition, g.Kind, g.Source)
	}
	return g, nil
}

// fetch finds or makes the incoming volume and receives its data.
func (d *Driver) fetch(ctx context.Context, p *poolEntry, spec pool.Spec, g broker.GrantRequest, caps []*csi.VolumeCapability) (*pool.Volume, error) {
	id := pool.VolumeID{Pool: p.Name(), Key: pool.KeyForName(spec.Name)}.String()
	unlock, err := d.locks.acquire(id)
	if err != nil {
		return nil, err
	}
	defer unlock()
	var have transfer.Have
	if v, err := p.GetByName(spec.Name); err == nil {
		if v.Incoming == nil {
			return v, checkMade(v, spec)
		}
		have = transfer.Have{From: v.Incoming.Next, Version: v.Incoming.Version, Checkpoint: v.Incoming.Checkpoint}
	}
	sess, err := d.remote.Open(ctx, g, have)
	if err != nil {
		return nil, fromRemote(err)
	}
	defer sess.Close()
	if err := fitsLayout(sess.Header, p, sess.SourceNode); err != nil {
		return nil, err
	}
	if err := fitsHeader(sess.Header, &spec, caps); err != nil {
		return nil, err
	}
	spec.Incoming = &pool.Incoming{Source: g.Source, SourceNode: sess.SourceNode, Version: sess.Version, Size: sess.Size, Updated: time.Now().UTC()}
	v, _, err := p.Create(ctx, spec)
	if err != nil {
		return nil, err
	}
	if v.Incoming == nil {
		return v, nil
	}
	start := time.Now()
	var st stream.Stats
	if sess.IsTree() {
		v, st, err = d.receiveTree(ctx, p, v, sess, false)
	} else {
		v, st, err = d.receive(ctx, p, v, sess, false)
	}
	if err != nil {
		d.remote.Metrics.Received("failed")
		return nil, err
	}
	d.remote.Metrics.Received("done")
	klog.InfoS("Volume data received from another node", "volumeID", v.ID, "source", g.Source, "node", sess.SourceNode,
		"from", sess.Start, "dataBytes", st.DataBytes, "wireBytes", st.WireBytes, "duration", time.Since(start))
	logCreated(v)
	return v, nil
}

// incomingFor is the state a transfer of sess continues from: in, when
// sess resumes where in stopped, else a new start that keeps in's Dirty,
// since what an earlier attempt wrote is still there (a volume's content
// may have changed since: where it now has holes, the stream sends
// nothing, and those bytes must be zeroed).
func incomingFor(in pool.Incoming, sess *transfer.Session) (pool.Incoming, error) {
	if in.Version == sess.Version && in.Size == sess.Size && sess.Start == in.Next {
		return in, nil
	}
	if sess.Start != 0 {
		return in, fmt.Errorf("node %s resumes %s at %d, this volume holds %d of version %q", sess.SourceNode, sess.Source, sess.Start, in.Next, in.Version)
	}
	return pool.Incoming{Source: in.Source, SourceNode: sess.SourceNode, Version: sess.Version, Size: sess.Size, Dirty: in.Dirty}, nil
}

// receive writes the session's block content into v and makes v
// complete, or, for a move (hold), keeps it incoming and received.
func (d *Driver) receive(ctx context.Context, p *poolEntry, v *pool.Volume, sess *transfer.Session, hold bool) (*pool.Volume, stream.Stats, error) {
	imp := p.Pool.(pool.Importer) // fitsLayout checked it
	in, err := incomingFor(*v.Incoming, sess)
	if err != nil {
		return nil, stream.Stats{}, err
	}
	f, err := imp.OpenImport(ctx, v)
	if err != nil {
		return nil, stream.Stats{}, err
	}
	defer f.Close()
	format := v.Format
	// Bytes an earlier attempt wrote past what it verified may be garbage;
	// everywhere else a new volume reads as zeros already.
	dirty := in.Dirty
	commit := func(next int64) error {
		in.Next, in.Updated = next, time.Now().UTC()
		// The receiver writes up to stream.CommitLag segments past
		// the last commit that reached the disk.
		in.Dirty = max(in.Dirty, min(next+stream.CommitLag*sess.Segment, in.Size))
		made, err := p.SetNodeState(ctx, v.Key(), pool.NodeState{Format: format, Incoming: &in, Move: v.Move})
		if err == nil {
			v = made
		}
		return err
	}
	if err := commit(sess.Start); err != nil {
		return nil, stream.Stats{}, err
	}
	st, err := sess.Receive(ctx, zeroBelow{stream.FileTarget(f), dirty}, commit)
	if err != nil {
		return nil, st, fmt.Errorf("%w: receiving %s from node %s: %v (a retry resumes at byte %d)", errAborted, sess.Source, sess.SourceNode, err, in.Next)
	}
	if err := f.Close(); err != nil {
		return nil, st, err
	}
	final := pool.NodeState{Move: v.Move}
	if hold {
		in.Received, in.Updated = true, time.Now().UTC()
		final.Format, final.Incoming = format, &in
	} else if v.Mode == pool.ModeFilesystem && !p.layout.Directory {
		final.Format = sess.Format
	}
	v, err = p.SetNodeState(ctx, v.Key(), final)
	return v, st, err
}

// zeroBelow zeroes only below limit: the rest of a new volume reads as
// zeros, and zeroing it would allocate what a thin LV or a sparse source
// never needed.
type zeroBelow struct {
	stream.BlockTarget
	limit int64
}

func (z zeroBelow) Zero(off, n int64) error {
	if off >= z.limit {
		return nil
	}
	return z.BlockTarget.Zero(off, min(n, z.limit-off))
}

// fitsHeader checks that the capabilities fit what the source holds and
// completes spec from it: the source's fsType, at least its size.
func fitsHeader(h transfer.Header, spec *pool.Spec, caps []*csi.VolumeCapability) error {
	fsType, err := fitsSource(h.Source, pool.Mode(h.Mode), h.FsType, spec.Mode, caps)
	if err != nil {
		return err
	}
	if _, ok := minFsSize[fsType]; spec.Mode == pool.ModeFilesystem && !ok {
		return invalid("source %s holds %q, which flashpv does not mount", h.Source, fsType)
	}
	spec.FsType = fsType
	size, err := sizeFor(h.Source, h.Size, spec.SizeBytes, spec.MaxBytes)
	spec.SizeBytes = roundUp(size, mib)
	return err
}

// checkMade makes a retry after the transfer finished return its volume.
func checkMade(v *pool.Volume, spec pool.Spec) error {
	if v.Source != spec.Source || v.Mode != spec.Mode {
		return fmt.Errorf("%w: volume %q exists, made from %q", pool.ErrAlreadyExists, v.Name, v.Source)
	}
	return nil
}

// notIncoming refuses a volume whose data is still arriving.
func notIncoming(v *pool.Volume) error {
	if v.Incoming == nil {
		return nil
	}
	return fmt.Errorf("%w: volume %s is still being copied from %s on node %s (%d of %d bytes)", errAborted, v.ID, v.Incoming.Source, v.Incoming.SourceNode, v.Incoming.Next, v.Incoming.Size)
}

// fromRemote gives a refusal from the broker or the source node its code.
func fromRemote(err error) error {
	var re *transfer.RemoteError
	if !errors.As(err, &re) {
		return err
	}
	switch re.Code {
	case transfer.CodeNotFound:
		return fmt.Errorf("%w: %s", pool.ErrNotFound, re.Message)
	case transfer.CodeInvalid:
		return invalid("%s", re.Message)
	case transfer.CodeBusy, transfer.CodeAborted:
		return fmt.Errorf("%w: %s", errAborted, re.Message)
	case transfer.CodeDenied, transfer.CodePrecondition:
		return fmt.Errorf("%w: %s", errPrecondition, re.Message)
	}
	return err
}

// CollectAbandoned deletes incoming volumes whose transfer has made no
// progress for longer than idle. No CreateVolume has returned them, so no
// PV names them; a provisioner that retries later starts over.
func (d *Driver) CollectAbandoned(ctx context.Context, idle time.Duration) {
	for _, name := range d.poolNames {
		p := d.pools[name]
		vols, err := p.List()
		if err != nil {
			continue
		}
		for _, v := range vols {
			if abandoned(v, idle) {
				d.collectAbandoned(ctx, p, v.ID, idle)
			}
		}
	}
}

// A move's copy is not abandoned: it waits for the pod to stop, which may
// take long, and the move's controller drops it when the move rolls back.
func abandoned(v *pool.Volume, idle time.Duration) bool {
	return v.Incoming != nil && v.Move == nil && time.Since(v.Incoming.Updated) >= idle
}

// collectAbandoned deletes volume id if, under its lock, it is still an
// abandoned incoming volume: a retry may have finished it since it was
// listed, and a finished volume may already have a PV.
func (d *Driver) collectAbandoned(ctx context.Context, p *poolEntry, id string, idle time.Duration) {
	release, err := d.locks.acquire(id)
	if err != nil {
		return // a transfer is running
	}
	defer release()
	_, v, err := d.lookup(id)
	if err != nil || !abandoned(v, idle) {
		return
	}
	err = p.Delete(ctx, v.Key())
	klog.InfoS("Deleted an abandoned incoming volume", "volumeID", v.ID, "source", v.Incoming.Source, "lastProgress", v.Incoming.Updated, "err", err)
}
