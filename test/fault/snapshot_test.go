package fault

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Snapshots and restores go through the same kills as the rest: the
// snapshotter takes a VolumeSnapshot of a claim (a copy where the pool
// cannot share blocks, with the filesystem frozen if it is staged), the
// provisioner restores one into a new claim, and snapshots are deleted.
// A restored volume must hold what its source held when the snapshot was
// taken, which the usual checks then verify on every publish.

// maxSnapshots bounds the snapshots kept at once, so the pool never fills.
const maxSnapshots = 2

type snapshot struct {
	name, id string
	kind     string
	size     int64
	files    []fileRecord
	blocks   map[int64]uint64
	copies   int // copies of it asked for on node-b
}

// subject is the stand-in volume under which a snapshot's calls are
// counted and reported.
func (s *snapshot) subject() *volume { return &volume{kind: s.kind, name: s.name} }

// canSnapshot tells whether v may be snapshotted now without the answer
// being a refusal by design: a quota volume only while unmounted (its
// directory cannot be frozen), a Block volume only while no pod has it
// (a copy of a raw device in use would be torn).
func (r *run) canSnapshot(v *volume) bool {
	switch {
	case r.cfg.backend == "quota":
		return v.state == created
	case v.kind == "block":
		return v.state != published
	}
	return true
}

// snapshotOrDelete takes a snapshot of v, or, with enough of them kept,
// deletes one.
func (r *run) snapshotOrDelete(v *volume) string {
	if len(r.snaps) >= maxSnapshots {
		r.deleteSnapshot(r.snaps[r.opRng.IntN(len(r.snaps))])
		return "delete snapshot"
	}
	r.takeSnapshot(v)
	return "snapshot"
}

func (r *run) takeSnapshot(v *volume) {
	r.snapGen++
	s := &snapshot{name: fmt.Sprintf("snapshot-%x-%d", r.cfg.seed&0xffffff, r.snapGen), kind: v.kind, size: v.size,
		files: slices.Clone(v.files), blocks: maps.Clone(v.blocks)}
	req := &csi.CreateSnapshotRequest{Name: s.name, SourceVolumeId: v.id}
	var resp *csi.CreateSnapshotResponse
	err := r.call("CreateSnapshot", s.subject(), func(ctx context.Context) (err error) {
		resp, err = r.drv.ctl.CreateSnapshot(ctx, req)
		return err
	}, nil)
	if err != nil {
		r.failf(v, "CreateSnapshot %s: %v", s.name, err)
		return
	}
	snap := resp.GetSnapshot()
	if snap.GetSourceVolumeId() != v.id || !snap.GetReadyToUse() || snap.GetSizeBytes() < v.size {
		r.failf(v, "CreateSnapshot %s answered %v", s.name, snap)
	}
	s.id = snap.GetSnapshotId()
	r.snaps = append(r.snaps, s)
	r.event("op %d: snapshot %s of %s is %s", r.opNum, s.name, v, s.id)
}

func (r *run) deleteSnapshot(s *snapshot) {
	req := &csi.DeleteSnapshotRequest{SnapshotId: s.id}
	err := r.call("DeleteSnapshot", s.subject(), func(ctx context.Context) error {
		_, err := r.drv.ctl.DeleteSnapshot(ctx, req)
		return err
	}, nil)
	if err != nil {
		r.failf(nil, "DeleteSnapshot %s (source of %d copies on node-b): %v", s.id, s.copies, err)
		return // kept: the final deletes try again
	}
	if s.copies > 0 {
		r.stats.copies.servedDeleted++
	}
	r.snaps = slices.DeleteFunc(r.snaps, func(o *snapshot) bool { return o == s })
}

// restore makes the new claim of an absent slot from a snapshot, at the
// snapshot's size or bigger, holding the snapshot's data.
func (r *run) restore(v *volume, s *snapshot) {
	v.gen++
	v.name = fmt.Sprintf("pvc-%x-%d-%d", r.cfg.seed&0xffffff, v.slot, v.gen)
	v.kind, v.initial, v.size = s.kind, s.size, s.size+int64(r.opRng.IntN(2))*32*mib
	v.files, v.blocks = slices.Clone(s.files), maps.Clone(s.blocks)
	v.formatted = true // a copy of its source's filesystem
	v.source = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
		Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: s.id}}}
	r.create(v)
}

// deleteSnapshots deletes every snapshot left at the end.
func (r *run) deleteSnapshots() {
	for _, s := range slices.Clone(r.snaps) {
		r.deleteSnapshot(s)
	}
}
