package integration

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/flashpv/flashpv/test/harness"
)

// Mount flags of the StorageClass reach the staging mount (filesystem
// options included) and the bind mount of each publication (the per-mount
// ones), and a read-only publication is read-only.
func TestMountOptions(t *testing.T) {
	harness.RequireBackend(t, "image", "lvm-thick", "lvm-thin")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	vc := mountCap("ext4")
	vc.GetMount().MountFlags = []string{"noatime", "nodev", "discard"}
	id := c.create("pvc-opts", 64<<20, vc).GetVolumeId()
	staging, target := c.paths("pvc-opts")
	for _, dir := range []string{staging, filepath.Dir(target)} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
	}

	// Options only mount(8) knows are refused before anything happens.
	bad := mountCap("ext4")
	bad.GetMount().MountFlags = []string{"bind"}
	_, err := c.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: bad})
	wantCode(t, err, codes.InvalidArgument, "stage with mount flag bind")
	if m := mountOf(t, staging); m != nil {
		t.Fatalf("refused stage left a mount: %+v", m)
	}

	if _, err := c.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc}); err != nil {
		t.Fatal(err)
	}
	m := mountOf(t, staging)
	if m == nil || !hasOpts(m.Options, "noatime", "nodev") || !hasOpts(m.VFSOptions, "discard") {
		t.Fatalf("staging mount %+v lacks noatime, nodev or discard", m)
	}
	if _, err := c.nd.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc, Readonly: true}); err != nil {
		t.Fatal(err)
	}
	m = mountOf(t, target)
	if m == nil || !hasOpts(m.Options, "ro", "noatime", "nodev") {
		t.Fatalf("target mount %+v is not ro,noatime,nodev", m)
	}
	if err := os.WriteFile(filepath.Join(target, "x"), nil, 0o600); !errors.Is(err, unix.EROFS) {
		t.Fatalf("write to a read-only publication: %v", err)
	}
	// The staging mount stays writable.
	if err := os.WriteFile(filepath.Join(staging, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c.unpublishUnstage(id, staging, target)
	c.delete(id)
}

func mountOf(t *testing.T, path string) *mountinfo.Info {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) == 0 {
		return nil
	}
	return infos[len(infos)-1]
}

func hasOpts(opts string, want ...string) bool {
	have := strings.Split(opts, ",")
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}
