package driver

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/pool"
)

// snapshotLock is the in-flight key of a snapshot: apart from volumes',
// whose IDs have the same form.
func snapshotLock(id string) string { return "snapshot/" + id }

func (s *Controller) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	snap, err := s.createSnapshot(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
}

func (s *Controller) createSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*pool.Snapshot, error) {
	name := req.GetName()
	if err := pool.ValidateName(name); err != nil {
		return nil, err
	}
	sourceID := req.GetSourceVolumeId()
	if sourceID == "" {
		return nil, invalid("source volume ID is missing")
	}
	for k := range req.GetParameters() {
		// VolumeSnapshotClass parameters: flashpv has none of its own.
		if !strings.HasPrefix(k, "csi.storage.k8s.io/") {
			return nil, invalid("unknown snapshot parameter %q", k)
		}
	}
	release, err := s.d.locks.acquire("snapshot-name/" + name)
	if err != nil {
		return nil, err
	}
	defer func() {
		if release != nil {
			release()
		}
	}()
	p, v, err := s.d.lookup(sourceID)
	if err != nil {
		return nil, notHere(err, "volume", sourceID, s.d.nodeID)
	}
	if err := notIncoming(v); err != nil {
		return nil, err
	}
	if p.snap == nil {
		return nil, fmt.Errorf("%w: pool %s has no snapshots", errUnsupported, p.Name())
	}
	// The ID depends on the pool, so a name is unique across all pools.
	for _, other := range s.d.poolNames {
		if o := s.d.pools[other]; other != p.Name() && o.snap != nil {
			if sn, err := o.snap.GetSnapshot(pool.KeyForName(name)); err == nil && sn.Name == name {
				return nil, fmt.Errorf("%w: snapshot %q exists in pool %s, of volume %s", pool.ErrAlreadyExists, name, other, sn.SourceVolumeID)
			}
		}
	}
	// The source stays as it is (no stage, unstage, expansion or delete)
	// while it is read, and a copy may outlast the call (see detach).
	releaseVol, err := s.d.locks.acquire(v.ID)
	if err != nil {
		return nil, err
	}
	hold := release
	release = nil
	var snap *pool.Snapshot
	err = s.d.locks.detach(ctx, func(ctx context.Context) error {
		defer hold()
		defer releaseVol()
		made, created, err := p.snap.CreateSnapshot(ctx, pool.SnapshotSpec{Name: name, Source: v, Quiesce: s.d.quiesce(p, v)})
		if created {
			klog.InfoS("Snapshot created", "snapshotID", made.ID, "name", name, "sourceVolumeID", v.ID, "bytes", made.SizeBytes, "shared", made.Shared)
		}
		snap = made // read by the call only if it waited for this
		return err
	})
	if err != nil {
		return nil, err
	}
	return snap, nil
}

// notHere explains a source that this node does not have: snapshots and
// clones are made on the node that holds their source, which the
// provisioner cannot know, so the user has to pin the pod (see
// docs/how-it-works.md).
func notHere(err error, what, id, node string) error {
	if !errors.Is(err, pool.ErrNotFound) {
		return err
	}
	return fmt.Errorf("%w: %s %s is not on node %s, and its data is not copied across nodes here (a class with crossNode: \"false\", or a driver without --transfer-broker): schedule the pod that uses the new claim on the source's node (the node in the source PersistentVolume's nodeAffinity): %v",
		pool.ErrNotFound, what, id, node, err)
}

func csiSnapshot(s *pool.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     s.ID,
		SourceVolumeId: s.SourceVolumeID,
		SizeBytes:      s.SizeBytes,
		CreationTime:   timestamppb.New(s.Created),
		ReadyToUse:     true,
	}
}

func (s *Controller) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if err := s.deleteSnapshot(ctx, req.GetSnapshotId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (s *Controller) deleteSnapshot(ctx context.Context, id string) error {
	if id == "" {
		return invalid("snapshot ID is missing")
	}
	sid, err := pool.ParseVolumeID(id)
	if err != nil {
		if errors.Is(err, pool.ErrNotFound) {
			return nil // not ours: nothing to delete
		}
		return err
	}
	p := s.d.pools[sid.Pool]
	if p == nil || p.snap == nil {
		return nil
	}
	release, err := s.d.locks.acquire(snapshotLock(id))
	if err != nil {
		return err
	}
	defer release()
	snap, err := p.snap.GetSnapshot(sid.Key)
	if errors.Is(err, pool.ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	if err := p.snap.DeleteSnapshot(ctx, sid.Key); err != nil {
		return err
	}
	klog.InfoS("Snapshot deleted", "snapshotID", id, "name", snap.Name)
	return nil
}

func (s *Controller) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	page, next, err := s.d.listSnapshots(req)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, sn := range page {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(sn)})
	}
	return resp, nil
}

// listSnapshots returns a page of the snapshots that match the request's
// filters, in ID order, and the token of the next page (the ID it starts
// at, valid also when that snapshot is deleted meanwhile).
func (d *Driver) listSnapshots(req *csi.ListSnapshotsRequest) ([]*pool.Snapshot, string, error) {
	if req.GetMaxEntries() < 0 {
		return nil, "", invalid("max_entries is negative")
	}
	token := req.GetStartingToken()
	if token != "" {
		if _, err := pool.ParseVolumeID(token); err != nil {
			return nil, "", fmt.Errorf("%w: starting token %q is not a flashpv token", errAborted, token)
		}
	}
	var all []*pool.Snapshot
	for _, name := range d.poolNames {
		p := d.pools[name]
		if p.snap == nil {
			continue
		}
		snaps, err := p.snap.ListSnapshots()
		if err != nil {
			return nil, "", err
		}
		for _, sn := range snaps {
			switch {
			case sn.ID < token:
			case req.GetSnapshotId() != "" && sn.ID != req.GetSnapshotId():
			case req.GetSourceVolumeId() != "" && sn.SourceVolumeID != req.GetSourceVolumeId():
			default:
				all = append(all, sn)
			}
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].ID < all[j].ID })
	if n := int(req.GetMaxEntries()); n > 0 && len(all) > n {
		return all[:n], all[n].ID, nil
	}
	return all, "", nil
}
