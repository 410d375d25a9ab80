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
	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/test/harness"
)

// TestOnlineExpansion grows mounted volumes with data on them.
func TestOnlineExpansion(t *testing.T) {
	for _, tc := range []struct {
		fsType     string
		size, grow int64
	}{
		{"xfs", 300 << 20, 512 << 20},
		{"btrfs", 256 << 20, 400 << 20},
		{"ext4", 64 << 20, 128 << 20},
	} {
		if !slices.Contains(fsTypes(), tc.fsType) {
			continue
		}
		t.Run(tc.fsType, func(t *testing.T) {
			env := harness.Start(t, harness.Options{})
			c := newClient(t, env)
			name := "pvc-grow-" + tc.fsType
			id := c.create(name, tc.size, mountCap(tc.fsType)).GetVolumeId()
			staging, target := c.stagePublish(id, name, mountCap(tc.fsType))
			data := bytes.Repeat([]byte{0xa5}, 1<<20)
			if err := os.WriteFile(filepath.Join(target, "keep"), data, 0o600); err != nil {
				t.Fatal(err)
			}
			before := fsSize(t, target)

			got, err := c.expand(id, target, tc.grow)
			if tc.fsType == "ext4" && !mounter.CanGrowMountedExt4() {
				// The kernel grows a mounted ext4 only for CAP_SYS_RESOURCE.
				// Without it the image grows, the error says why, and the
				// filesystem grows when the pod comes back: here on the same
				// node with the volume still staged, as when the kubelet
				// restarts a pod faster than it unstages (checked below).
				wantCode(t, err, codes.FailedPrecondition, "online ext4 growth without CAP_SYS_RESOURCE")
				if err == nil || !strings.Contains(err.Error(), "CAP_SYS_RESOURCE") {
					t.Fatalf("error does not name the missing capability: %v", err)
				}
				if _, err := c.nd.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
					t.Fatal(err)
				}
				if _, err := c.nd.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap(tc.fsType)}); err != nil {
					t.Fatalf("republish: %v", err)
				}
			} else if err != nil || got != tc.grow {
				t.Fatalf("NodeExpandVolume: %d, %v", got, err)
			}
			after := fsSize(t, target)
			if after-before < (tc.grow-tc.size)*9/10 {
				t.Fatalf("filesystem grew from %d to %d, want about %d more", before, after, tc.grow-tc.size)
			}
			if b, err := os.ReadFile(filepath.Join(target, "keep")); err != nil || !bytes.Equal(b, data) {
				t.Fatal("data changed by the expansion")
			}
			// Grow-only: asking for less returns the current size.
			if got, err := c.expand(id, target, tc.size); err != nil || got != tc.grow {
				t.Fatalf("shrink request: %d, %v; want the current size %d", got, err, tc.grow)
			}
		})
	}
}

// TestOfflineExpansionFinishesAtStage grows unstaged volumes; staging them
// grows the filesystem (ext4 before mounting, xfs after).
func TestOfflineExpansionFinishesAtStage(t *testing.T) {
	for _, tc := range []struct {
		fsType     string
		size, grow int64
	}{{"ext4", 32 << 20, 96 << 20}, {"xfs", 300 << 20, 400 << 20}} {
		if !slices.Contains(fsTypes(), tc.fsType) {
			continue
		}
		t.Run(tc.fsType, func(t *testing.T) {
			env := harness.Start(t, harness.Options{})
			c := newClient(t, env)
			name := "pvc-offline-" + tc.fsType
			id := c.create(name, tc.size, mountCap(tc.fsType)).GetVolumeId()
			staging, target := c.stagePublish(id, name, mountCap(tc.fsType))
			os.WriteFile(filepath.Join(target, "keep"), []byte("still here"), 0o600)
			c.unpublishUnstage(id, staging, target)
			if got, err := c.expand(id, target, tc.grow); err != nil || got != tc.grow {
				t.Fatalf("offline expand: %d %v", got, err)
			}
			c.stagePublish(id, name, mountCap(tc.fsType))
			if size := fsSize(t, target); size < tc.grow*8/10 {
				t.Fatalf("filesystem is %d bytes after staging a %d-byte volume", size, tc.grow)
			}
			if b, _ := os.ReadFile(filepath.Join(target, "keep")); string(b) != "still here" {
				t.Fatal("data lost by offline growth")
			}
		})
	}
}

// TestBlockExpansionInUse grows a Block volume while a reader holds it open.
func TestBlockExpansionInUse(t *testing.T) {
	harness.RequireBackend(t, "image", "lvm-thick", "lvm-thin")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	id := c.create("pvc-block-grow", 16<<20, blockCap()).GetVolumeId()
	staging, target := c.stagePublish(id, "pvc-block-grow", blockCap())
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("head"), 0); err != nil {
		t.Fatal(err)
	}
	if got, err := c.expand(id, target, 48<<20); err != nil || got != 48<<20 {
		t.Fatalf("expand: %d %v", got, err)
	}
	if size, err := loopdev.Size(target); err != nil || size != 48<<20 {
		t.Fatalf("device size after expansion: %d %v", size, err)
	}
	if _, err := f.WriteAt([]byte("tail"), 48<<20-4096); err != nil {
		t.Fatalf("writing into the new space: %v", err)
	}
	head := make([]byte, 4)
	f.ReadAt(head, 0)
	if string(head) != "head" {
		t.Fatal("data at the start changed")
	}
	f.Close()
	stats, err := c.nd.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	if err != nil || stats.GetUsage()[0].GetTotal() != 48<<20 {
		t.Fatalf("block stats: %v %v", stats, err)
	}
	c.unpublishUnstage(id, staging, target)
}

// TestExpansionNeedsRoom refuses growth beyond the pool and leaves the volume
// as it was.
func TestExpansionNeedsRoom(t *testing.T) {
	harness.RequireBackend(t, "image")
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": harness.PoolFS(t, "128M")}})
	c := newClient(t, env)
	id := c.create("pvc-big", 32<<20, blockCap()).GetVolumeId()
	_, err := c.expand(id, filepath.Join(env.KubeletDir, "x"), 1<<30)
	wantCode(t, err, codes.ResourceExhausted, "growing beyond the pool")
	if st, _ := os.Stat(c.imagePath(id)); st.Size() != 32<<20 {
		t.Fatalf("image size %d after a refused expansion", st.Size())
	}
}

// TestUnstageWhileDeviceOpen: a process that still holds a Block volume's
// device keeps it attached; unstage says so instead of pretending, and the
// device goes once the last user closes it.
func TestUnstageWhileDeviceOpen(t *testing.T) {
	harness.RequireBackend(t, "image")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	id := c.create("pvc-held", 16<<20, blockCap()).GetVolumeId()
	staging, target := c.stagePublish(id, "pvc-held", blockCap())
	if _, err := c.nd.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	dev, err := loopdev.New().Find(c.imagePath(id))
	if err != nil || dev == "" {
		t.Fatalf("device of the staged volume: %q %v", dev, err)
	}
	holder, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.nd.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	wantCode(t, err, codes.FailedPrecondition, "unstage while a process holds the device")
	_, err = c.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.FailedPrecondition, "delete while the device is still attached")
	holder.Close()
	if _, err := c.nd.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatalf("unstage after the last user closed the device: %v", err)
	}
	if dev, _ := loopdev.New().Find(c.imagePath(id)); dev != "" {
		t.Fatalf("device %s still attached", dev)
	}
	c.delete(id)
}
