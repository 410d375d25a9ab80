package driver

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/pkg/move"
	"github.com/flashpv/flashpv/pkg/pool"
)

// fakeFreezer records what it froze and runs fn. With hold set, a freeze
// sends its context to entered and waits for hold to close before fn runs:
// a copy that takes long.
type fakeFreezer struct {
	frozen  []string
	hold    chan struct{}
	entered chan context.Context
}

func (f *fakeFreezer) WithFrozen(ctx context.Context, mp string, fn func(context.Context) error) error {
	f.frozen = append(f.frozen, mp)
	if f.hold != nil {
		f.entered <- ctx
		<-f.hold
	}
	return fn(ctx)
}

type snapEnv struct {
	c       *Controller
	d       *Driver
	devs    *fakeDevices
	mounts  *fakeMounts
	freezer *fakeFreezer
	pool    *pool.ImagePool
}

func newSnapEnv(t *testing.T) *snapEnv {
	t.Helper()
	p, err := pool.OpenImage("default", t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	e := &snapEnv{devs: &fakeDevices{attached: map[string]string{}, busy: map[string]bool{}}, mounts: newFakeMounts(), freezer: &fakeFreezer{}, pool: p}
	e.d, err = New(Config{NodeID: "n1", Pools: []pool.Pool{p}, KubeletDir: "/kubelet", MaxVolumes: 10, Loops: e.devs, Mounts: e.mounts, Freezer: e.freezer})
	if err != nil {
		t.Fatal(err)
	}
	e.c = &Controller{d: e.d}
	return e
}

func mountCaps(fsType string) []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
}

func (e *snapEnv) create(t *testing.T, name string, size int64, caps []*csi.VolumeCapability, src *csi.VolumeContentSource, params map[string]string) (*csi.Volume, error) {
	t.Helper()
	resp, err := e.c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapabilities: caps,
		VolumeContentSource: src, Parameters: params,
	})
	return resp.GetVolume(), err
}

func fromSnapshot(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
}

func fromVolume(id string) *csi.VolumeContentSource {
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
}

// stage makes the volume look staged (and, with a pod path, published)
// in the fake mount table.
func (e *snapEnv) stage(t *testing.T, id string, paths ...string) {
	t.Helper()
	_, key, _ := strings.Cut(id, ".")
	dev, err := e.devs.Attach(e.pool.ImagePath(key))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		e.mounts.table[p] = &mounter.Point{Source: dev}
	}
}

func TestSnapshotRPCs(t *testing.T) {
	e := newSnapEnv(t)
	ctx := context.Background()
	src, err := e.create(t, "src", 8<<20, blockCaps(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := e.create(t, "other", 8<<20, blockCaps(), nil, nil)

	bad := []struct {
		name string
		req  *csi.CreateSnapshotRequest
		code codes.Code
	}{
		{"no name", &csi.CreateSnapshotRequest{SourceVolumeId: src.VolumeId}, codes.InvalidArgument},
		{"no source", &csi.CreateSnapshotRequest{Name: "s"}, codes.InvalidArgument},
		{"unknown source", &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "default.0123456789abcdef0123456789abcdef"}, codes.NotFound},
		{"foreign source", &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: "vol-123"}, codes.NotFound},
		{"unknown parameter", &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: src.VolumeId, Parameters: map[string]string{"speed": "fast"}}, codes.InvalidArgument},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.c.CreateSnapshot(ctx, tc.req); status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
		})
	}

	snap, err := e.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: src.VolumeId,
		Parameters: map[string]string{"csi.storage.k8s.io/volumesnapshot/name": "x"}})
	if err != nil {
		t.Fatal(err)
	}
	s := snap.GetSnapshot()
	if s.SnapshotId != pool.IDFor("default", "s").String() || s.SizeBytes != src.CapacityBytes || !s.ReadyToUse || s.CreationTime == nil {
		t.Fatalf("snapshot %v", s)
	}
	again, err := e.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: src.VolumeId})
	if err != nil || again.GetSnapshot().SnapshotId != s.SnapshotId {
		t.Fatalf("retried CreateSnapshot: %v %v", again, err)
	}
	if _, err := e.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: other.VolumeId}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("same name, other source: %v", err)
	}
	s2, err := e.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s2", SourceVolumeId: other.VolumeId})
	if err != nil {
		t.Fatal(err)
	}

	// ListSnapshots: filters and pages.
	list := func(req *csi.ListSnapshotsRequest) ([]string, string, error) {
		resp, err := e.c.ListSnapshots(ctx, req)
		var ids []string
		for _, en := range resp.GetEntries() {
			ids = append(ids, en.GetSnapshot().SnapshotId)
		}
		return ids, resp.GetNextToken(), err
	}
	if ids, _, _ := list(&csi.ListSnapshotsRequest{}); len(ids) != 2 {
		t.Fatalf("all snapshots: %v", ids)
	}
	if ids, _, _ := list(&csi.ListSnapshotsRequest{SourceVolumeId: other.VolumeId}); len(ids) != 1 || ids[0] != s2.GetSnapshot().SnapshotId {
		t.Fatalf("by source: %v", ids)
	}
	if ids, _, _ := list(&csi.ListSnapshotsRequest{SnapshotId: s.SnapshotId}); len(ids) != 1 || ids[0] != s.SnapshotId {
		t.Fatalf("by ID: %v", ids)
	}
	if ids, _, err := list(&csi.ListSnapshotsRequest{SnapshotId: "default.0123456789abcdef0123456789abcdef"}); err != nil || len(ids) != 0 {
		t.Fatalf("unknown ID: %v %v", ids, err)
	}
	first, next, _ := list(&csi.ListSnapshotsRequest{MaxEntries: 1})
	rest, last, _ := list(&csi.ListSnapshotsRequest{MaxEntries: 1, StartingToken: next})
	if len(first) != 1 || len(rest) != 1 || first[0] == rest[0] || last != "" {
		t.Fatalf("pages %v (next %q) %v (next %q)", first, next, rest, last)
	}
	if _, _, err := list(&csi.ListSnapshotsRequest{StartingToken: "nonsense"}); status.Code(err) != codes.Aborted {
		t.Fatalf("bad token: %v", err)
	}
	if _, _, err := list(&csi.ListSnapshotsRequest{MaxEntries: -1}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("negative max: %v", err)
	}

	// Restores.
	restoreCases := []struct {
		name   string
		size   int64
		caps   []*csi.VolumeCapability
		src    *csi.VolumeContentSource
		params map[string]string
		code   codes.Code
	}{
		{"smaller than the snapshot grows to it", 1 << 20, blockCaps(), fromSnapshot(s.SnapshotId), nil, codes.OK},
		{"other pool", 8 << 20, blockCaps(), fromSnapshot(s.SnapshotId), map[string]string{ParamPool: "fast"}, codes.InvalidArgument},
		{"other mode", 8 << 20, mountCaps("ext4"), fromSnapshot(s.SnapshotId), nil, codes.InvalidArgument},
		{"snapshot elsewhere", 8 << 20, blockCaps(), fromSnapshot("default.0123456789abcdef0123456789abcdef"), nil, codes.NotFound},
		{"pool elsewhere", 8 << 20, blockCaps(), fromSnapshot("nvme.0123456789abcdef0123456789abcdef"), nil, codes.NotFound},
		{"volume elsewhere", 8 << 20, blockCaps(), fromVolume("default.0123456789abcdef0123456789abcdef"), nil, codes.NotFound},
		{"clone", 16 << 20, blockCaps(), fromVolume(src.VolumeId), nil, codes.OK},
	}
	for i, tc := range restoreCases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := e.create(t, "r"+string(rune('a'+i)), tc.size, tc.caps, tc.src, tc.params)
			if status.Code(err) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
			if tc.code == codes.NotFound && !strings.Contains(err.Error(), "node n1") {
				t.Errorf("the answer does not say where it looked: %v", err)
			}
			if err == nil && (v.CapacityBytes < src.CapacityBytes || v.CapacityBytes < tc.size || v.ContentSource == nil) {
				t.Errorf("volume %v", v)
			}
		})
	}

	if v, err := e.create(t, "ra", 1<<20, blockCaps(), fromSnapshot(s.SnapshotId), nil); err != nil || v.CapacityBytes != src.CapacityBytes {
		t.Fatalf("retried restore: %v %v", v, err)
	}
	if _, err := e.create(t, "ra", 1<<20, blockCaps(), fromVolume(src.VolumeId), nil); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("same name, other source: %v", err)
	}

	// The source goes, the snapshot stays.
	if _, err := e.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: src.VolumeId}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.create(t, "late", 8<<20, blockCaps(), fromSnapshot(s.SnapshotId), nil); err != nil {
		t.Fatalf("restore after the source's delete: %v", err)
	}
	for _, id := range []string{s.SnapshotId, s.SnapshotId, "vol-123", "nvme.0123456789abcdef0123456789abcdef"} {
		if _, err := e.c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
			t.Fatalf("DeleteSnapshot %s: %v", id, err)
		}
	}
	if v, err := e.create(t, "late", 8<<20, blockCaps(), fromSnapshot(s.SnapshotId), nil); err != nil || v.ContentSource == nil {
		t.Fatalf("retried restore after the snapshot's delete: %v %v", v, err)
	}
	if _, err := e.create(t, "later", 8<<20, blockCaps(), fromSnapshot(s.SnapshotId), nil); status.Code(err) != codes.NotFound {
		t.Fatalf("new restore of a deleted snapshot: %v", err)
	}
	for _, id := range []string{s.SnapshotId} {
		if _, err := e.c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
			t.Fatalf("DeleteSnapshot %s: %v", id, err)
		}
	}
	if _, err := e.c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("DeleteSnapshot without ID: %v", err)
	}
}

// TestQuiesce: what a snapshot's copy step does with its source's state on
// the node.
func TestQuiesce(t *testing.T) {
	staging, pod := "/kubelet/plugins/x/globalmount", "/kubelet/pods/p/volumes/x/mount"
	cases := []struct {
		name    string
		caps    []*csi.VolumeCapability
		mounts  []string
		instant bool
		frozen  string // mount point frozen, "" for none
		code    codes.Code
	}{
		{"unstaged filesystem", mountCaps("ext4"), nil, false, "", codes.OK},
		{"staged filesystem, copy", mountCaps("ext4"), []string{pod, staging}, false, staging, codes.OK},
		{"staged filesystem, reflink", mountCaps("ext4"), []string{staging}, true, staging, codes.OK},
		{"published Block, reflink", blockCaps(), []string{pod}, true, "", codes.OK},
		{"published Block, copy", blockCaps(), []string{pod}, false, "", codes.FailedPrecondition},
		{"staged, unpublished Block, copy", blockCaps(), nil, false, "", codes.OK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newSnapEnv(t)
			vol, err := e.create(t, "v", 8<<20, tc.caps, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.mounts != nil || tc.caps[0].GetBlock() != nil {
				e.stage(t, vol.VolumeId, tc.mounts...)
			}
			p, v, err := e.d.lookup(vol.VolumeId)
			if err != nil {
				t.Fatal(err)
			}
			ran := false
			err = e.d.quiesce(p, v)(context.Background(), tc.instant, func(context.Context) error { ran = true; return nil })
			if status.Code(toStatus(err)) != tc.code {
				t.Fatalf("got %v, want %v", err, tc.code)
			}
			// A move recognises the refusal by this phrase, and snapshots
			// the volume once its pod has stopped.
			if tc.code == codes.FailedPrecondition && !strings.Contains(err.Error(), move.SnapshotNeedsStop) {
				t.Errorf("the refusal does not say %q: %v", move.SnapshotNeedsStop, err)
			}
			if ran != (tc.code == codes.OK) {
				t.Errorf("step ran: %v", ran)
			}
			var frozen string
			if len(e.freezer.frozen) > 0 {
				frozen = e.freezer.frozen[0]
			}
			if frozen != tc.frozen {
				t.Errorf("froze %q, want %q", frozen, tc.frozen)
			}
		})
	}
}

// TestQuiesceDirectory: a directory volume in use is refused (its
// filesystem is the pool's, which holds the copy too).
func TestQuiesceDirectory(t *testing.T) {
	e := newSnapEnv(t)
	p := &poolEntry{Pool: e.pool, src: fakeDirSource{}, layout: pool.Layout{Directory: true, FsType: "xfs"}}
	v := &pool.Volume{ID: "default.0123456789abcdef0123456789abcdef", Mode: pool.ModeFilesystem}
	e.mounts.table["/kubelet/plugins/x"] = &mounter.Point{Source: "/pool/dir"}
	err := e.d.quiesce(p, v)(context.Background(), false, func(context.Context) error { return errors.New("ran") })
	if status.Code(toStatus(err)) != codes.FailedPrecondition || !strings.Contains(err.Error(), "scale") || !strings.Contains(err.Error(), move.SnapshotNeedsStop) {
		t.Fatalf("directory volume in use: %v", err)
	}
	delete(e.mounts.table, "/kubelet/plugins/x")
	if err := e.d.quiesce(p, v)(context.Background(), false, func(context.Context) error { return nil }); err != nil {
		t.Fatalf("directory volume not in use: %v", err)
	}
}

type fakeDirSource struct{ pool.Source }

func (fakeDirSource) Find(*pool.Volume) (string, error) { return filepath.Clean("/pool/dir"), nil }

// TestCopyOutlivesItsCall: a copy whose caller gives up (the sidecars'
// --timeout) goes on; a retry meanwhile is Aborted, and a retry once it is
// done gets what it made, made once.
func TestCopyOutlivesItsCall(t *testing.T) {
	e := newSnapEnv(t)
	src, err := e.create(t, "src", 8<<20, mountCaps("ext4"), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.stage(t, src.VolumeId, "/kubelet/plugins/x/globalmount")
	e.freezer.entered = make(chan context.Context, 4)
	calls := []struct {
		name string
		call func(context.Context) error
	}{
		{"snapshot", func(ctx context.Context) error {
			_, err := e.c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: src.VolumeId})
			return err
		}},
		{"clone", func(ctx context.Context) error {
			_, err := e.c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "c", CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20},
				VolumeCapabilities: mountCaps("ext4"), VolumeContentSource: fromVolume(src.VolumeId)})
			return err
		}},
	}
	for _, tc := range calls {
		t.Run(tc.name, func(t *testing.T) {
			hold := make(chan struct{})
			e.freezer.hold = hold
			released := false
			defer func() {
				if !released {
					close(hold)
				}
			}()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			answer := make(chan error, 1)
			go func() { answer <- tc.call(ctx) }()
			var copyCtx context.Context
			select {
			case copyCtx = <-e.freezer.entered:
			case err := <-answer:
				t.Fatalf("answered before its copy began: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("the copy did not begin")
			}
			cancel() // the caller gives up
			select {
			case err := <-answer:
				if status.Code(err) != codes.Aborted {
					t.Fatalf("call given up: %v, want Aborted", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the call did not answer when its caller gave up")
			}
			if copyCtx.Err() != nil {
				t.Fatalf("the copy was cancelled with its call: %v", copyCtx.Err())
			}
			if err := tc.call(context.Background()); status.Code(err) != codes.Aborted {
				t.Fatalf("retry during the copy: %v, want Aborted", err)
			}
			close(hold)
			released = true
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				err := tc.call(context.Background())
				if err == nil {
					break
				}
				if status.Code(err) != codes.Aborted || time.Now().After(deadline) {
					t.Fatalf("retry after the copy: %v", err)
				}
			}
			select {
			case <-e.freezer.entered:
				t.Fatal("the copy was made again")
			default:
			}
		})
	}
}

// TestDetachedCopyEndsWithTheDriver: a copy that outlived its call is
// given until the stop's deadline, then ended (its context is done, so a
// frozen filesystem is thawed), and the stop waits for it to return.
func TestDetachedCopyEndsWithTheDriver(t *testing.T) {
	l := newKeyLocks()
	began, returned := make(chan context.Context, 1), make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	answer := make(chan error, 1)
	go func() {
		answer <- l.detach(ctx, func(ctx context.Context) error {
			began <- ctx
			<-ctx.Done()
			close(returned)
			return ctx.Err()
		})
	}()
	opCtx := <-began
	cancel()
	if err := <-answer; !errors.Is(err, errAborted) {
		t.Fatalf("call given up: %v, want errAborted", err)
	}
	if opCtx.Err() != nil {
		t.Fatal("the copy ended with its call")
	}
	start := time.Now()
	l.endDetached(start.Add(200 * time.Millisecond))
	select {
	case <-returned:
	default:
		t.Fatal("endDetached returned before the copy did")
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("the copy was ended after %v, before its deadline", took)
	}
	// Nothing in flight: the stop does not wait.
	l2 := newKeyLocks()
	if err := l2.detach(context.Background(), func(context.Context) error { return nil }); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	l2.endDetached(start.Add(time.Minute))
	if time.Since(start) > 10*time.Second {
		t.Error("endDetached waited with nothing in flight")
	}
}
