// Package integration drives the real driver over its socket on real loop
// devices, mkfs and mounts.
package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/test/harness"
)

// TestLifecycleAcrossRestart walks a volume through its whole life, with a
// driver restart while it is published, for every filesystem and Block.
func TestLifecycleAcrossRestart(t *testing.T) {
	for _, tc := range []struct {
		name string
		vc   *csi.VolumeCapability
		size int64
	}{
		{"ext4", mountCap("ext4"), 64 << 20},
		{"xfs", mountCap("xfs"), 300 << 20},
		{"btrfs", mountCap("btrfs"), 256 << 20},
		{"block", blockCap(), 8 << 20},
	} {
		if tc.name == "block" && !harness.SupportsBlock() || tc.name != "block" && !slices.Contains(fsTypes(), tc.name) {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			env := harness.Start(t, harness.Options{})
			c := newClient(t, env)
			vol := c.create("pvc-"+tc.name, tc.size, tc.vc)
			id := vol.GetVolumeId()
			if vol.GetCapacityBytes() != tc.size {
				t.Fatalf("capacity %d, want %d", vol.GetCapacityBytes(), tc.size)
			}
			if seg := vol.GetAccessibleTopology()[0].GetSegments()["flashpv.dev/node"]; seg != "node-1" {
				t.Fatalf("topology %q, want node-1", seg)
			}
			img := c.storagePath(id)
			if st, err := os.Stat(img); err != nil || harness.Backend() == "image" && st.Size() != tc.size {
				t.Fatalf("storage %s: %v", img, err)
			}
			staging, target := c.stagePublish(id, "pvc-"+tc.name, tc.vc)

			data := bytes.Repeat([]byte("flashpv!"), 512)
			isBlock := tc.vc.GetBlock() != nil
			if isBlock {
				f, err := os.OpenFile(target, os.O_WRONLY, 0)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.WriteAt(data, 4096); err != nil {
					t.Fatal(err)
				}
				f.Sync()
				f.Close()
			} else if err := os.WriteFile(filepath.Join(target, "data"), data, 0o600); err != nil {
				t.Fatal(err)
			}

			env.Restart(t, harness.Options{})
			c.refresh()

			// After the restart every step is still idempotent and finds the
			// same device.
			c.stagePublish(id, "pvc-"+tc.name, tc.vc)
			var got []byte
			if isBlock {
				got = make([]byte, len(data))
				f, err := os.Open(target)
				if err != nil {
					t.Fatal(err)
				}
				f.ReadAt(got, 4096)
				f.Close()
			} else {
				var err error
				if got, err = os.ReadFile(filepath.Join(target, "data")); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got, data) {
				t.Fatal("data written before the restart is not there after it")
			}
			stats, err := c.nd.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
			if err != nil {
				t.Fatal(err)
			}
			if total := stats.GetUsage()[0].GetTotal(); total <= 0 || total > tc.size {
				t.Fatalf("stats total %d for a %d-byte volume", total, tc.size)
			}
			health, err := c.nd.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id, StagingTargetPath: staging, VolumePublishPath: target})
			if err != nil || len(health.GetVolumeHealth().GetHealthStatuses()) != 0 {
				t.Fatalf("health of a healthy volume: %v %v", health, err)
			}

			_, err = c.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
			wantCode(t, err, codes.FailedPrecondition, "DeleteVolume of a staged volume")
			if _, err := os.Stat(img); err != nil {
				t.Fatal("DeleteVolume of a staged volume removed its image")
			}

			c.unpublishUnstage(id, staging, target)
			c.unpublishUnstage(id, staging, target) // idempotent
			if _, err := os.Stat(target); !os.IsNotExist(err) {
				t.Errorf("target %s still exists after unpublish", target)
			}
			if dev, _ := loopdev.New().Find(img); harness.Backend() == "image" && dev != "" {
				t.Errorf("loop device %s still attached after unstage", dev)
			}
			c.delete(id)
			c.delete(id) // idempotent
			if _, err := os.Stat(img); !os.IsNotExist(err) {
				t.Errorf("image still there after delete: %v", err)
			}
		})
	}
}

// TestHealthReportsProblems breaks a staged volume in the ways a node can and
// checks NodeGetVolumeHealth says so.
func TestHealthReportsProblems(t *testing.T) {
	harness.RequireBackend(t, "image")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	vol := c.create("pvc-health", 16<<20, mountCap("ext4"))
	id := vol.GetVolumeId()
	staging, target := c.stagePublish(id, "pvc-health", mountCap("ext4"))
	sh(t, "umount "+target)
	h, err := c.nd.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id, StagingTargetPath: staging, VolumePublishPath: target})
	if err != nil {
		t.Fatal(err)
	}
	st := h.GetVolumeHealth().GetHealthStatuses()
	if len(st) != 1 || st[0].GetReason() != "PublishMountMissing" || st[0].GetStatus() != csi.VolumeHealthErrorType_INACCESSIBLE {
		t.Fatalf("health after losing the publish mount: %v", st)
	}
	c.unpublishUnstage(id, staging, target)
	h, err = c.nd.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id, StagingTargetPath: staging})
	if err != nil || h.GetVolumeHealth().GetHealthStatuses()[0].GetReason() != "DeviceDetached" {
		t.Fatalf("health of an unstaged volume queried at its staging path: %v %v", h, err)
	}
	// An image that vanished from the pool is data loss, seen by the controller too.
	if err := os.Rename(c.imagePath(id), c.imagePath(id)+".moved"); err != nil {
		t.Fatal(err)
	}
	defer os.Rename(c.imagePath(id)+".moved", c.imagePath(id))
	ch, err := c.ctl.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil || ch.GetVolumeHealth().GetHealthStatuses()[0].GetStatus() != csi.VolumeHealthErrorType_DATA_LOSS {
		t.Fatalf("controller health of a volume without image: %v %v", ch, err)
	}
}

// TestHalfMadeFilesystemIsMadeOver: what a killed mkfs leaves on a new
// volume (an xfs whose first allocation group headers were never written:
// blkid calls it xfs, mount answers "structure needs cleaning") is made
// over at the first stage, on every backend whose volumes are devices.
func TestHalfMadeFilesystemIsMadeOver(t *testing.T) {
	if harness.Backend() == "quota" {
		t.Skip("quota volumes are directories of the pool's own filesystem")
	}
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": harness.NewPool(t, "2G")}})
	c := newClient(t, env)
	vc := mountCap("xfs")
	id := c.create("pvc-half-made", 320<<20, vc).GetVolumeId()
	dev := c.storagePath(id)
	sh(t, "mkfs.xfs -q -f -K "+dev+" && dd if=/dev/zero of="+dev+" bs=512 seek=1 count=3 conv=notrunc,fsync status=none")
	if got := strings.TrimSpace(sh(t, "blkid -p -o value -s TYPE "+dev)); got != "xfs" {
		t.Fatalf("the stand-in for a killed mkfs shows %q, not xfs: it tests nothing", got)
	}
	staging, target := c.stagePublish(id, "pvc-half-made", vc)
	sh(t, "echo kept >"+filepath.Join(target, "f")+" && sync")
	c.unpublishUnstage(id, staging, target)
	c.delete(id)
}
