package driver

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/transfer"
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
