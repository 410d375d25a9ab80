package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/test/harness"
)

// client bundles the CSI clients of one Env with helpers that fail the test.
type client struct {
	t   *testing.T
	env *harness.Env
	ctl csi.ControllerClient
	nd  csi.NodeClient
}

func newClient(t *testing.T, env *harness.Env) *client {
	return &client{t: t, env: env, ctl: csi.NewControllerClient(env.Conn), nd: csi.NewNodeClient(env.Conn)}
}

func (c *client) refresh() {
	c.ctl, c.nd = csi.NewControllerClient(c.env.Conn), csi.NewNodeClient(c.env.Conn)
}

var ctx = context.Background()

// The capabilities the harness builds.
var mountCap, blockCap = harness.MountCap, harness.BlockCap

func (c *client) create(name string, size int64, vc *csi.VolumeCapability) *csi.Volume {
	c.t.Helper()
	resp, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{vc},
	})
	if err != nil {
		c.t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume()
}

func (c *client) paths(name string) (staging, target string) {
	return filepath.Join(c.env.KubeletDir, "plugins", name, "globalmount"),
		filepath.Join(c.env.KubeletDir, "pods", name, "volumes", "mount")
}

// stagePublish stages and publishes a volume like the kubelet does.
func (c *client) stagePublish(id, name string, vc *csi.VolumeCapability) (staging, target string) {
	c.t.Helper()
	staging, target = c.paths(name)
	if err := os.MkdirAll(staging, 0o750); err != nil {
		c.t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc}); err != nil {
		c.t.Fatalf("NodeStageVolume: %v", err)
	}
	if _, err := c.nd.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc}); err != nil {
		c.t.Fatalf("NodePublishVolume: %v", err)
	}
	return staging, target
}

func (c *client) unpublishUnstage(id, staging, target string) {
	c.t.Helper()
	if _, err := c.nd.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		c.t.Fatalf("NodeUnpublishVolume: %v", err)
	}
	if _, err := c.nd.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		c.t.Fatalf("NodeUnstageVolume: %v", err)
	}
}

func (c *client) delete(id string) {
	c.t.Helper()
	if _, err := c.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		c.t.Fatalf("DeleteVolume %s: %v", id, err)
	}
}

func (c *client) expand(id, path string, size int64) (int64, error) {
	resp, err := c.nd.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: path, CapacityRange: &csi.CapacityRange{RequiredBytes: size}})
	return resp.GetCapacityBytes(), err
}

// imagePath is where the volume's image lives in the default (image) pool.
func (c *client) imagePath(id string) string {
	_, key, _ := strings.Cut(id, ".")
	return filepath.Join(c.env.Pools["default"], key+".img")
}

// storagePath is where a volume of the default pool keeps its data, whatever
// the backend: its image, its LV's device link or its directory.
func (c *client) storagePath(id string) string {
	_, key, _ := strings.Cut(id, ".")
	where := c.env.Pools["default"]
	if vg, ok := strings.CutPrefix(where, "lvm:"); ok {
		vg, _, _ = strings.Cut(vg, ",")
		return filepath.Join("/dev", vg, "flashpv-default-"+key)
	}
	if dir, ok := strings.CutPrefix(where, "quota:"); ok {
		return filepath.Join(dir, key)
	}
	return c.imagePath(id)
}

// anyCap is a capability every backend has: Block, or a filesystem in
// quota pools (which have no Block volumes).
func anyCap() *csi.VolumeCapability {
	if harness.SupportsBlock() {
		return blockCap()
	}
	return mountCap("")
}

// fsCap is the backend's usual filesystem: ext4, or the XFS of a quota pool.
func fsCap() *csi.VolumeCapability {
	if harness.Backend() == "quota" {
		return mountCap("")
	}
	return mountCap("ext4")
}

// fsTypes are the filesystems volumes of the backend can have.
func fsTypes() []string {
	if harness.Backend() == "quota" {
		return []string{"xfs"}
	}
	types := []string{"xfs", "ext4"}
	if _, err := exec.LookPath("mkfs.btrfs"); err == nil {
		types = append(types, "btrfs")
	}
	return types
}

func wantCode(t *testing.T, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: got %v (%v), want %v", what, status.Code(err), err, code)
	}
}

func sh(t *testing.T, script string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return strings.TrimSpace(string(out))
}

func fsSize(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks) * int64(st.Bsize)
}

func keyOf(name string) string { return pool.KeyForName(name) }
