package driver

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// failingPool is an image pool whose probe fails with err (its storage is
// otherwise fine, so volumes can be made in it first).
type failingPool struct {
	*pool.ImagePool
	err error
}

func (f *failingPool) Probe(context.Context) error { return f.err }

// TestFailingPoolIsNamed checks that a pool whose probe fails is named, with
// its error and a reason, by storage health, by the health of each of its
// volumes (and of no other) and by the metrics.
func TestFailingPoolIsNamed(t *testing.T) {
	open := func(name string) *pool.ImagePool {
		p, err := pool.OpenImage(name, t.TempDir(), 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	bad := &failingPool{ImagePool: open("bad")}
	d, err := New(Config{NodeID: "n1", Pools: []pool.Pool{open("good"), bad}, KubeletDir: t.TempDir(), MaxVolumes: 10,
		Loops: &fakeDevices{attached: map[string]string{}, busy: map[string]bool{}}, Mounts: newFakeMounts()})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := d.registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ctl, node := &Controller{d: d}, &Node{d: d}
	ids := map[string]string{}
	for _, p := range []string{"good", "bad"} {
		resp, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v-" + p, CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
			VolumeCapabilities: blockCaps(), Parameters: map[string]string{wellknown.ParamPool: p}})
		if err != nil {
			t.Fatal(err)
		}
		ids[p] = resp.GetVolume().GetVolumeId()
	}
	bad.err = fmt.Errorf("writing probe file: %w", unix.EIO)

	sh, err := node.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
	if err != nil || len(sh.GetBackendHealth()) != 1 {
		t.Fatalf("storage health: %v %v", sh, err)
	}
	if b := sh.GetBackendHealth()[0]; b.GetReason() != "PoolIOError" || b.GetStatus() != csi.StorageHealthErrorType_STORAGE_UNREACHABLE ||
		!strings.Contains(b.GetMessage(), "pool bad: writing probe file: input/output error") {
		t.Errorf("storage health entry: %v", b)
	}
	lh, err := ctl.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{})
	if err != nil || len(lh.GetEntries()) != 2 {
		t.Fatalf("volume health: %v %v", lh, err)
	}
	for _, h := range lh.GetEntries() {
		var reasons []string
		for _, e := range h.GetHealthStatuses() {
			reasons = append(reasons, e.GetReason())
		}
		want := ""
		if h.GetVolumeId() == ids["bad"] {
			want = "PoolIOError"
		}
		if strings.Join(reasons, ",") != want {
			t.Errorf("volume %s: reasons %q, want %q", h.GetVolumeId(), reasons, want)
		}
	}
	vh, err := node.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: ids["bad"]})
	if err != nil || len(vh.GetVolumeHealth().GetHealthStatuses()) != 1 || !strings.Contains(vh.GetVolumeHealth().GetHealthStatuses()[0].GetMessage(), "input/output error") {
		t.Errorf("node volume health: %v %v", vh, err)
	}
	want := `
# HELP flashpv_pool_error 1 for a pool whose probe fails, with the reason (PoolIOError, PoolReadOnly, PoolNotAnswering...).
# TYPE flashpv_pool_error gauge
flashpv_pool_error{pool="bad",reason="PoolIOError"} 1
# HELP flashpv_pool_up 1 when the pool's storage answers and can be written and read, else 0.
# TYPE flashpv_pool_up gauge
flashpv_pool_up{pool="bad"} 0
flashpv_pool_up{pool="good"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "flashpv_pool_up", "flashpv_pool_error"); err != nil {
		t.Error(err)
	}

	// Healed: nothing is reported any more, by the same driver.
	bad.err = nil
	if sh, _ := node.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{}); len(sh.GetBackendHealth()) != 0 {
		t.Errorf("storage health after healing: %v", sh)
	}
	if n, _ := testutil.GatherAndCount(reg, "flashpv_pool_error"); n != 0 {
		t.Errorf("%d pool error metrics after healing", n)
	}
}

func TestPoolCondition(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status csi.StorageHealthErrorType
		reason string
	}{
		{fmt.Errorf("x: %w", pool.ErrNotAnswering), csi.StorageHealthErrorType_STORAGE_UNREACHABLE, "PoolNotAnswering"},
		{fmt.Errorf("open: %w", unix.EROFS), csi.StorageHealthErrorType_STORAGE_DEGRADED, "PoolReadOnly"},
		{fmt.Errorf("sync: %w", unix.EIO), csi.StorageHealthErrorType_STORAGE_UNREACHABLE, "PoolIOError"},
		{fmt.Errorf("%w: no VG", pool.ErrUnusable), csi.StorageHealthErrorType_STORAGE_UNREACHABLE, "PoolUnusable"},
		{fmt.Errorf("volume group not found"), csi.StorageHealthErrorType_STORAGE_UNREACHABLE, "PoolUnreachable"},
	} {
		st, reason := poolCondition(tc.err)
		if st != tc.status || reason != tc.reason {
			t.Errorf("%v: %v %s, want %v %s", tc.err, st, reason, tc.status, tc.reason)
		}
	}
}
