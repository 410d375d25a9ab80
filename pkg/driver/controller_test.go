package driver

import (
	"context"
	"fmt"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/pkg/pool"
)

// fakeDevices pretends files are attached to loop devices.
type fakeDevices struct {
	attached map[string]string
	busy     map[string]bool // files whose device something holds open
}

func (f *fakeDevices) Find(file string) (string, error) { return f.attached[file], nil }
func (f *fakeDevices) Attach(file string) (string, error) {
	f.attached[file] = fmt.Sprintf("/dev/loop-fake%d", len(f.attached))
	return f.attached[file], nil
}
func (f *fakeDevices) AttachLimited(file string, limit *loopdev.Limit) (string, error) {
	if dev := f.attached[file]; dev != "" {
		return dev, nil
	}
	if limit != nil {
		if err := limit.Check(len(f.attached)); err != nil {
			return "", err
		}
	}
	return f.Attach(file)
}
func (f *fakeDevices) Detach(file string) error {
	if f.busy[file] {
		return fmt.Errorf("%w: %s is open", loopdev.ErrBusy, file)
	}
	delete(f.attached, file)
	return nil
}
func (f *fakeDevices) Attached(...string) (map[string]string, error) {
	return f.attached, nil
}

func newTestController(t *testing.T) (*Controller, *fakeDevices) {
	t.Helper()
	d, devs, _ := newTestDriver(t, t.TempDir())
	return &Controller{d: d}, devs
}

// newTestDriver is a driver on a real image pool in a temp dir, with loop
// devices and mounts faked: no root needed.
func newTestDriver(t *testing.T, kubeletDir string) (*Driver, *fakeDevices, *fakeMounts) {
	t.Helper()
	p, err := pool.OpenImage("default", t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	devs := &fakeDevices{attached: map[string]string{}, busy: map[string]bool{}}
	mounts := newFakeMounts()
	d, err := New(Config{NodeID: "n1", Pools: []pool.Pool{p}, KubeletDir: kubeletDir, MaxVolumes: 10, Loops: devs, Mounts: mounts})
	if err != nil {
		t.Fatal(err)
	}
	return d, devs, mounts
}

func blockCaps() []*csi.VolumeCapability {
	return []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
}

func TestListVolumesPagination(t *testing.T) {
	c, _ := newTestController(t)
	ctx := context.Background()
	ids := map[string]bool{}
	for i := range 5 {
		resp, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: fmt.Sprintf("v%d", i), CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, VolumeCapabilities: blockCaps()})
		if err != nil {
			t.Fatal(err)
		}
		ids[resp.GetVolume().GetVolumeId()] = true
	}
	page1, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2})
	if err != nil || len(page1.GetEntries()) != 2 || page1.GetNextToken() == "" {
		t.Fatalf("page 1: %v %v", page1, err)
	}
	// Deleting the volume the token points at must not break the listing.
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: page1.GetNextToken()}); err != nil {
		t.Fatal(err)
	}
	delete(ids, page1.GetNextToken())
	seen := map[string]bool{}
	for _, e := range page1.GetEntries() {
		seen[e.GetVolume().GetVolumeId()] = true
	}
	token := page1.GetNextToken()
	for token != "" {
		page, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range page.GetEntries() {
			if seen[e.GetVolume().GetVolumeId()] {
				t.Fatalf("%s listed twice", e.GetVolume().GetVolumeId())
			}
			seen[e.GetVolume().GetVolumeId()] = true
		}
		token = page.GetNextToken()
	}
	if len(seen) != len(ids) {
		t.Fatalf("listed %d volumes, %d exist", len(seen), len(ids))
	}
	_, err = c.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "garbage"})
	if status.Code(err) != codes.Aborted {
		t.Fatalf("bad token: %v", err)
	}
	_, err = c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: -1})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("negative max_entries: %v", err)
	}
	hl, err := c.ControllerListVolumeHealth(ctx, &csi.ControllerListVolumeHealthRequest{MaxEntries: 3})
	if err != nil || len(hl.GetEntries()) != 3 || hl.GetNextToken() == "" {
		t.Fatalf("health list: %v %v", hl, err)
	}
}

// A volume mounted on the node, or whose device something holds open, is
// not deleted; one whose device a retried unstage left attached with
// nothing on it is detached and deleted.
func TestDeleteRefusesStagedVolume(t *testing.T) {
	c, devs := newTestController(t)
	mounts := c.d.mounts.(*fakeMounts)
	ctx := context.Background()
	resp, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "staged", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, VolumeCapabilities: blockCaps()})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetVolume().GetVolumeId()
	p, v, _ := c.d.lookup(id)
	img := p.Pool.(*pool.ImagePool).ImagePath(v.Key())
	dev, _ := devs.Attach(img)
	mounts.Bind(dev, "/pods/x/volume", nil)
	_, err = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("delete of a published volume: %v", err)
	}
	if mounts.did("forget growth " + id) {
		t.Fatal("a refused delete dropped the volume's growth state")
	}
	if _, err := c.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("volume gone after a refused delete: %v", err)
	}
	mounts.Unmount("/pods/x/volume")
	devs.busy[img] = true
	if _, err = c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("delete of a volume whose device is held open: %v", err)
	}
	devs.busy[img] = false
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatalf("delete of a volume left attached with nothing mounted: %v", err)
	}
	if devs.attached[img] != "" {
		t.Fatal("the leftover loop device was not detached")
	}
	// What an interrupted ext4 growth of the volume kept goes with it.
	if !mounts.did("forget growth " + id) {
		t.Fatal("the delete left the volume's growth state behind")
	}
	_, err = c.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("get after delete: %v", err)
	}
}

func TestCreateHonoursRequestShape(t *testing.T) {
	c, _ := newTestController(t)
	ctx := context.Background()
	mount := []*csi.VolumeCapability{{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "xfs"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}}
	resp, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "x", CapacityRange: &csi.CapacityRange{RequiredBytes: 1}, VolumeCapabilities: mount})
	if err != nil || resp.GetVolume().GetCapacityBytes() != 300*mib {
		t.Fatalf("xfs minimum not applied: %v %v", resp, err)
	}
	cap, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: mount})
	if err != nil || cap.GetMinimumVolumeSize().GetValue() != 300*mib || cap.GetMaximumVolumeSize().GetValue()%mib != 0 {
		t.Fatalf("GetCapacity for xfs: %v %v", cap, err)
	}
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "src", VolumeCapabilities: blockCaps(),
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "default.x"}}}})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("content source not on this node: %v", err)
	}
	vv, err := c.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: resp.GetVolume().GetVolumeId(), VolumeCapabilities: blockCaps()})
	if err != nil || vv.GetConfirmed() != nil || vv.GetMessage() == "" {
		t.Fatalf("Block capability confirmed for a Filesystem volume: %v %v", vv, err)
	}
}
