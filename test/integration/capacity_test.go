package integration

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/test/harness"
)

func capacity(t *testing.T, c *client, top *csi.Topology) int64 {
	t.Helper()
	resp, err := c.ctl.GetCapacity(ctx, &csi.GetCapacityRequest{AccessibleTopology: top})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetAvailableCapacity()
}

// TestConcurrentCreatesNeverOvercommit races many creates against a small pool.
func TestConcurrentCreatesNeverOvercommit(t *testing.T) {
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": harness.NewPool(t, "256M")}, Reserve: 16 << 20})
	c := newClient(t, env)
	avail := capacity(t, c, nil)
	const size = 24 << 20
	const n = 24 // asks for far more than the pool has
	var wg sync.WaitGroup
	var mu sync.Mutex
	made := 0
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
				Name: fmt.Sprintf("pvc-race-%d", i), CapacityRange: &csi.CapacityRange{RequiredBytes: size},
				VolumeCapabilities: []*csi.VolumeCapability{anyCap()},
			})
			mu.Lock()
			defer mu.Unlock()
			switch status.Code(err) {
			case codes.OK:
				made++
			case codes.ResourceExhausted:
			default:
				t.Errorf("create %d: %v", i, err)
			}
		}(i)
	}
	wg.Wait()
	if int64(made)*size > avail {
		t.Fatalf("%d volumes of %d bytes made from %d available: overcommitted", made, size, avail)
	}
	if made < int(avail/size)-1 {
		t.Fatalf("only %d volumes made, %d would fit", made, avail/size)
	}
	if left := capacity(t, c, nil); left >= size {
		t.Fatalf("%d bytes still available after the pool filled up", left)
	}
	// The reserve is never handed out, and every volume is fully backed.
	if capacity(t, c, nil) < 0 {
		t.Fatal("negative capacity")
	}
}

// TestHolesStayReserved punches holes into a volume from inside (discard) and
// checks the pool does not hand the space to anyone else.
func TestHolesStayReserved(t *testing.T) {
	harness.RequireBackend(t, "image")
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": harness.PoolFS(t, "256M")}})
	c := newClient(t, env)
	id := c.create("pvc-holes", 64<<20, blockCap()).GetVolumeId()
	staging, target := c.stagePublish(id, "pvc-holes", blockCap())
	before := capacity(t, c, nil)
	sh(t, "blkdiscard "+target)
	var st = statBlocks(t, c.imagePath(id))
	if st >= 64<<20 {
		t.Fatalf("discard punched no holes (image has %d bytes allocated); the test proves nothing", st)
	}
	after := capacity(t, c, nil)
	if diff := after - before; diff > 1<<20 || diff < -(1<<20) {
		t.Fatalf("available capacity moved by %d bytes when the volume was discarded", diff)
	}
	// The whole volume is still writable: every hole can be filled.
	sh(t, "dd if=/dev/zero of="+target+" bs=1M count=64 oflag=direct status=none")
	c.unpublishUnstage(id, staging, target)
}

func statBlocks(t *testing.T, path string) int64 {
	t.Helper()
	out := sh(t, "stat -c %b "+path)
	var blocks int64
	fmt.Sscan(out, &blocks)
	return blocks * 512
}

// TestTopologyAndCapacity: other nodes' topology gets nothing here.
func TestTopologyAndCapacity(t *testing.T) {
	env := harness.Start(t, harness.Options{NodeID: "node-a", Pools: map[string]string{"default": harness.NewPool(t, "2G")}})
	c := newClient(t, env)
	here := &csi.Topology{Segments: map[string]string{"flashpv.dev/node": "node-a"}}
	there := &csi.Topology{Segments: map[string]string{"flashpv.dev/node": "node-b"}}
	if capacity(t, c, there) != 0 {
		t.Error("capacity for another node's topology is not 0")
	}
	if capacity(t, c, here) <= 0 {
		t.Error("no capacity for this node")
	}
	_, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "pvc-elsewhere", VolumeCapabilities: []*csi.VolumeCapability{anyCap()},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{there}, Preferred: []*csi.Topology{there}},
	})
	wantCode(t, err, codes.ResourceExhausted, "create for another node")
	resp, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "pvc-here", VolumeCapabilities: []*csi.VolumeCapability{anyCap()},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{there, here}},
	})
	if err != nil || resp.GetVolume().GetCapacityBytes() != 1<<30 {
		t.Fatalf("default-size create with this node among the requisites: %v %v", resp, err)
	}
	// Too big for the pool.
	_, err = c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "pvc-huge", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 40}, VolumeCapabilities: []*csi.VolumeCapability{anyCap()},
	})
	wantCode(t, err, codes.ResourceExhausted, "create larger than the pool")
	if _, err := os.Stat(c.storagePath("default." + keyOf("pvc-huge"))); !os.IsNotExist(err) {
		t.Error("a refused create left storage behind")
	}
}
