package driver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/transfer"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
	"github.com/flashpv/flashpv/pkg/transfer/tree"
)

// incoming makes a volume whose data is still arriving, last updated at
// updated.
func incoming(t *testing.T, d *Driver, name string, updated time.Time) *pool.Volume {
	t.Helper()
	p := d.pools["default"]
	v, _, err := p.Create(context.Background(), pool.Spec{Name: name, SizeBytes: 1 << 20, Mode: pool.ModeBlock, Source: "default.0123456789abcdef0123456789abcdef",
		Incoming: &pool.Incoming{Source: "default.0123456789abcdef0123456789abcdef", SourceNode: "n2", Size: 1 << 20, Updated: updated}})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestCollectAbandoned(t *testing.T) {
	d, _, _ := newTestDriver(t, t.TempDir())
	ctx := context.Background()
	old := incoming(t, d, "old", time.Now().Add(-2*time.Hour))
	busy := incoming(t, d, "busy", time.Now().Add(-2*time.Hour))
	fresh := incoming(t, d, "fresh", time.Now())
	done, _, err := d.pools["default"].Create(ctx, pool.Spec{Name: "done", SizeBytes: 1 << 20, Mode: pool.ModeBlock})
	if err != nil {
		t.Fatal(err)
	}
	release, err := d.locks.acquire(busy.ID) // a transfer still running
	if err != nil {
		t.Fatal(err)
	}
	d.CollectAbandoned(ctx, time.Hour)
	release()
	for _, c := range []struct {
		v    *pool.Volume
		kept bool
	}{{old, false}, {busy, true}, {fresh, true}, {done, true}} {
		_, _, err := d.lookup(c.v.ID)
		if kept := err == nil; kept != c.kept {
			t.Errorf("%s: kept %v, want %v (%v)", c.v.Name, kept, c.kept, err)
		}
	}
}

// A volume listed as abandoned that a retry finished before the lock was
// taken is not deleted: its PV may exist already.
func TestCollectAbandonedRechecksUnderLock(t *testing.T) {
	d, _, _ := newTestDriver(t, t.TempDir())
	ctx := context.Background()
	v := incoming(t, d, "finished", time.Now().Add(-2*time.Hour))
	p := d.pools["default"]
	if _, err := p.SetNodeState(ctx, v.Key(), pool.NodeState{}); err != nil {
		t.Fatal(err)
	}
	d.collectAbandoned(ctx, p, v.ID, time.Hour) // v, as listed, was abandoned
	if _, _, err := d.lookup(v.ID); err != nil {
		t.Errorf("a volume finished since it was listed was deleted: %v", err)
	}
}

func TestIncomingVolumeIsNotUsed(t *testing.T) {
	d, _, _ := newTestDriver(t, t.TempDir())
	v := incoming(t, d, "arriving", time.Now())
	ctx := context.Background()
	node := &Node{d: d}
	_, err := node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.ID, StagingTargetPath: d.kubeletDir + "/plugins/x/globalmount", VolumeCapability: blockCaps()[0]})
	if code := status.Code(err); code != codes.Aborted {
		t.Errorf("NodeStageVolume of an incoming volume: %v, want Aborted", err)
	}
	c := &Controller{d: d}
	_, err = c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "s", SourceVolumeId: v.ID})
	if code := status.Code(err); code != codes.Aborted {
		t.Errorf("CreateSnapshot of an incoming volume: %v, want Aborted", err)
	}
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "copy", VolumeCapabilities: blockCaps(),
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.ID}}}})
	if code := status.Code(err); code != codes.Aborted {
		t.Errorf("a clone of an incoming volume: %v, want Aborted", err)
	}
	// Without a transfer client, a retry of its own create does not
	// return it as made.
	if _, v2 := d.madeFrom("arriving", &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.Incoming.Source}}}); v2 != nil {
		t.Errorf("madeFrom returns the incoming volume %s", v2.ID)
	}
}

type recordZero struct {
	zeroed [][2]int64
}

func (r *recordZero) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (r *recordZero) Sync() error                              { return nil }
func (r *recordZero) Zero(off, n int64) error {
	r.zeroed = append(r.zeroed, [2]int64{off, n})
	return nil
}

func TestZeroBelow(t *testing.T) {
	r := &recordZero{}
	z := zeroBelow{r, 100}
	for _, c := range [][2]int64{{0, 10}, {90, 20}, {100, 5}, {200, 1}} {
		if err := z.Zero(c[0], c[1]); err != nil {
			t.Fatal(err)
		}
	}
	want := [][2]int64{{0, 10}, {90, 10}}
	if len(r.zeroed) != len(want) || r.zeroed[0] != want[0] || r.zeroed[1] != want[1] {
		t.Errorf("zeroed %v, want %v", r.zeroed, want)
	}
}

func TestFromRemoteCodes(t *testing.T) {
	for _, c := range []struct {
		code string
		want error
	}{
		{"NotFound", pool.ErrNotFound}, {"InvalidArgument", pool.ErrInvalid}, {"Unavailable", errAborted},
		{"Aborted", errAborted}, {"PermissionDenied", errPrecondition}, {"FailedPrecondition", errPrecondition},
	} {
		err := fromRemote(&transfer.RemoteError{Code: c.code, Message: "m"})
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.code, err, c.want)
		}
	}
}

// fakeTreePool is a quota pool as far as fitsLayout can tell.
type fakeTreePool struct{ pool.Pool }

func (fakeTreePool) Name() string    { return "quota" }
func (fakeTreePool) Kind() pool.Kind { return pool.KindQuota }
func (fakeTreePool) OpenTreeImport(context.Context, *pool.Volume, bool) (*os.File, error) {
	return nil, errors.New("not here")
}

// TestFitsLayout: trees go only into quota pools and block content only
// into image and lvm pools; a refusal names both kinds.
func TestFitsLayout(t *testing.T) {
	d, _, _ := newTestDriver(t, t.TempDir())
	image := d.pools["default"]
	quota := &poolEntry{Pool: fakeTreePool{}, layout: pool.Layout{Directory: true, FsType: "xfs"}}
	trees := transfer.Header{Kind: "snapshot", Source: "q.1", Layout: transfer.LayoutTree, PoolKind: "quota"}
	blocks := transfer.Header{Kind: "volume", Source: "i.2", PoolKind: "image"}
	old := transfer.Header{Kind: "volume", Source: "i.3"}
	for _, c := range []struct {
		name string
		h    transfer.Header
		p    *poolEntry
		want []string // in the refusal; nil: accepted
	}{
		{"tree into quota", trees, quota, nil},
		{"blocks into image", blocks, image, nil},
		{"tree into image", trees, image, []string{"quota pool", "kind image", "q.1", "node-a"}},
		{"blocks into quota", blocks, quota, []string{"kind image", "quota pool", "i.2"}},
		{"blocks of an older peer into quota", old, quota, []string{"image or lvm", "quota pool"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := fitsLayout(c.h, c.p, "node-a")
			if c.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if status.Code(toStatus(err)) != codes.InvalidArgument {
				t.Fatalf("%v, want InvalidArgument", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%v: does not say %q", err, w)
				}
			}
		})
	}
}

func TestTreeFailedCodes(t *testing.T) {
	sess := &transfer.Session{Header: transfer.Header{Source: "default.x"}, SourceNode: "node-a"}
	v := &pool.Volume{SizeBytes: 1 << 30}
	for _, c := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("%w: \"d/sock\" is a socket", tree.ErrUnsupported), codes.FailedPrecondition},
		{fmt.Errorf("writing f: %w", unix.ENOSPC), codes.FailedPrecondition},
		{fmt.Errorf("writing f: %w", unix.EDQUOT), codes.FailedPrecondition},
		{stream.ErrChecksum, codes.Aborted},
		{io.ErrUnexpectedEOF, codes.Aborted},
	} {
		if got := status.Code(toStatus(treeFailed(c.err, sess, v, pool.Incoming{}))); got != c.want {
			t.Errorf("%v: %v, want %v", c.err, got, c.want)
		}
	}
}

// TestTreeResumable: a cut (also a sender stopped by its restart) keeps a
// tree's checkpoint; a refusal, a corrupt stream or a resume that does
// not fit drop it,
// so that the retry starts over.
func TestTreeResumable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{io.ErrUnexpectedEOF, true},
		{fmt.Errorf("reading frame: %w", unix.ECONNRESET), true},
		{context.Canceled, true},
		{fmt.Errorf("%w: the hash differs", stream.ErrChecksum), false},
		{fmt.Errorf("%w: out of order", stream.ErrProtocol), false},
		{fmt.Errorf("%w: \"context canceled\"", stream.ErrSender), true},
		{fmt.Errorf("%w: %w: \"the source ends before\"", tree.ErrResume, stream.ErrSender), false},
		{fmt.Errorf("%w: a/b: too many levels of symbolic links", tree.ErrResume), false},
		{fmt.Errorf("%w: a socket", tree.ErrUnsupported), false},
	} {
		if got := resumable(c.err); got != c.want {
			t.Errorf("%v: resumable %v, want %v", c.err, got, c.want)
		}
	}
	sess := &transfer.Session{Header: transfer.Header{Source: "default.x"}, SourceNode: "node-a"}
	err := treeFailed(io.ErrUnexpectedEOF, sess, &pool.Volume{}, pool.Incoming{Checkpoint: "x", Next: 5 << 20})
	if !strings.Contains(err.Error(), "resumes after 5242880 data bytes") {
		t.Errorf("a cut with a checkpoint: %v", err)
	}
}

// TestIncomingFor: a transfer resumes only where the last attempt stopped,
// of the same version; a new start forgets the progress but not how far
// the earlier attempts wrote, which the new stream's gaps must zero.
func TestIncomingFor(t *testing.T) {
	in := pool.Incoming{Source: "default.v", SourceNode: "node-a", Size: 256 << 20, Next: 128 << 20, Dirty: 192 << 20}
	sess := func(version string, start int64) *transfer.Session {
		return &transfer.Session{Header: transfer.Header{Source: "default.v", Version: version, Size: 256 << 20, Start: start}, SourceNode: "node-a"}
	}
	snap := in
	snap.Version = "7/256"
	if got, err := incomingFor(snap, sess("7/256", 128<<20)); err != nil || got != snap {
		t.Errorf("a resume: %+v, %v", got, err)
	}
	// A volume's content has no version: each attempt starts over.
	got, err := incomingFor(in, sess("", 0))
	if err != nil || got.Next != 0 || got.Dirty != 192<<20 {
		t.Errorf("starting over: %+v, %v; want Next 0 and Dirty kept", got, err)
	}
	if _, err := incomingFor(snap, sess("8/256", 64<<20)); err == nil {
		t.Error("a resume of another version was taken")
	}
}
