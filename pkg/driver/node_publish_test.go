package driver

import (
	"os"
	"slices"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/flashpv/flashpv/pkg/pool"
)

func TestNodePublishVolume(t *testing.T) {
	t.Run("requires staging", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.create("v", mountCap(""))
		wantCode(t, e.publish(id, e.target(id, "p"), mountCap(""), false), codes.FailedPrecondition)
		staged := e.staged("w", mountCap(""))
		_, err := e.node.NodePublishVolume(e.ctx, &csi.NodePublishVolumeRequest{VolumeId: staged, StagingTargetPath: e.staging("other"),
			TargetPath: e.target(staged, "p"), VolumeCapability: mountCap("")})
		wantCode(t, err, codes.FailedPrecondition)
	})
	t.Run("binds the staging mount, idempotently", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap(""))
		target := e.target(id, "p")
		e.must(e.publish(id, target, mountCap(""), false))
		e.must(e.publish(id, target, mountCap(""), false))
		m, _ := e.mounts.At(target)
		if m == nil || m.Source != e.dev(id) || m.ReadOnly || e.count("bind") != 1 {
			t.Fatalf("mount %+v, calls %q", m, e.mounts.calls)
		}
		if fi, err := os.Stat(target); err != nil || !fi.IsDir() {
			t.Fatalf("target: %v", err)
		}
	})
	t.Run("readonly", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap(""))
		e.must(e.publish(id, e.target(id, "p"), mountCap(""), true))
		if m, _ := e.mounts.At(e.target(id, "p")); m == nil || !m.ReadOnly {
			t.Fatalf("mount %+v", m)
		}
		wantCode(t, e.publish(id, e.target(id, "p"), mountCap(""), false), codes.AlreadyExists)
	})
	t.Run("target holding another mount", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap(""))
		e.must(e.mounts.Bind("/elsewhere", e.target(id, "p"), nil))
		wantCode(t, e.publish(id, e.target(id, "p"), mountCap(""), false), codes.AlreadyExists)
	})
	t.Run("single writer is published once", func(t *testing.T) {
		e := newNodeEnv(t)
		c := mountCap("")
		c.AccessMode = accessMode(csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
		id := e.staged("v", c)
		e.must(e.publish(id, e.target(id, "p"), c, false))
		e.must(e.publish(id, e.target(id, "p"), c, false))
		wantCode(t, e.publish(id, e.target(id, "q"), c, false), codes.FailedPrecondition)
		e.must(e.publish(id, e.target(id, "q"), mountCap(""), false)) // another mode may share
	})
	t.Run("block volume binds its device onto a file", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", blockCap())
		target := e.target(id, "p")
		e.must(e.publish(id, target, blockCap(), false))
		if m, _ := e.mounts.At(target); m == nil || m.Source != e.dev(id) {
			t.Fatalf("mount %+v", m)
		}
		if fi, err := os.Stat(target); err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("target: %v", err)
		}
		wantCode(t, e.publish(id, target, mountCap(""), false), codes.InvalidArgument)
	})
	t.Run("outgrown ext4 is grown offline between unmount and remount", func(t *testing.T) {
		e := newNodeEnv(t)
		e.mounts.growOnline = false
		id := e.staged("v", mountCap("ext4"))
		dev, staging, target := e.dev(id), e.staging(id), e.target(id, "p")
		e.mounts.extNeedsGrow[dev] = true
		e.mounts.calls = nil
		e.must(e.publish(id, target, mountCap("ext4"), false))
		want := []string{"unmount " + staging, "e2fsck " + dev, "mount ext4 " + dev + " " + staging, "bind " + staging + " " + target}
		if !slices.Equal(e.mounts.calls, want) {
			t.Fatalf("calls %q, want %q", e.mounts.calls, want)
		}
		if r := e.vol(id).Remount; r != nil {
			t.Fatalf("remount %+v left recorded", r)
		}
	})
	t.Run("outgrown ext4 published elsewhere stays mounted", func(t *testing.T) {
		e := newNodeEnv(t)
		e.mounts.growOnline = false
		id := e.staged("v", mountCap("ext4"))
		e.must(e.publish(id, e.target(id, "p"), mountCap("ext4"), false))
		e.mounts.extNeedsGrow[e.dev(id)] = true
		e.must(e.publish(id, e.target(id, "q"), mountCap("ext4"), false))
		if e.count("unmount") != 0 {
			t.Fatalf("staging mount of a published volume taken down: %q", e.mounts.calls)
		}
	})
}

// A staging mount that an offline step took down, then a restart kept from
// coming back, is put back by the next call on the volume, whichever it is.
func TestNodeRestoresRecordedRemount(t *testing.T) {
	for _, tc := range []struct {
		name string
		call func(e *nodeEnv, id string) error
	}{
		{"publish", func(e *nodeEnv, id string) error { return e.publish(id, e.target(id, "p"), mountCap(""), false) }},
		{"health", func(e *nodeEnv, id string) error {
			_, err := e.node.NodeGetVolumeHealth(e.ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id})
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			id := e.staged("v", mountCap("ext4"))
			v, dev := e.vol(id), e.dev(id)
			_, err := e.d.pools["default"].SetNodeState(e.ctx, v.Key(), pool.NodeState{Format: v.Format, Remount: &pool.Remount{Path: e.staging(id)}})
			e.must(err)
			e.must(e.mounts.Unmount(e.staging(id)))
			e.mounts.calls = nil
			e.must(tc.call(e, id))
			if !e.mounts.mounted(e.staging(id)) || !e.mounts.did("e2fsck "+dev) || e.vol(id).Remount != nil {
				t.Fatalf("calls %q, remount %+v", e.mounts.calls, e.vol(id).Remount)
			}
		})
	}
}

func TestNodeUnpublishVolume(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    *csi.VolumeCapability
	}{{"filesystem", mountCap("")}, {"block", blockCap()}} {
		c := tc.c
		t.Run("unmounts and removes the target, idempotently: "+tc.name, func(t *testing.T) {
			e := newNodeEnv(t)
			id := e.staged("v", c)
			target := e.target(id, "p")
			e.must(e.publish(id, target, c, false))
			e.must(e.unpublish(id, target))
			if _, err := os.Lstat(target); e.mounts.mounted(target) || !os.IsNotExist(err) {
				t.Fatalf("target left: %v", err)
			}
			e.must(e.unpublish(id, target))
			if c.GetMount() != nil && !e.mounts.mounted(e.staging(id)) {
				t.Fatal("staging mount gone")
			}
		})
	}
	t.Run("refuses a foreign mount", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap(""))
		e.must(e.mounts.Bind("/elsewhere", e.target(id, "p"), nil))
		wantCode(t, e.unpublish(id, e.target(id, "p")), codes.FailedPrecondition)
		if !e.mounts.mounted(e.target(id, "p")) {
			t.Fatal("a foreign mount was unmounted")
		}
	})
	t.Run("bad arguments", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.create("v", mountCap(""))
		wantCode(t, e.unpublish("", e.target(id, "p")), codes.InvalidArgument)
		wantCode(t, e.unpublish(id, ""), codes.InvalidArgument)
		wantCode(t, e.unpublish(id, "/elsewhere/p"), codes.InvalidArgument)
		wantCode(t, e.unpublish(pool.IDFor("default", "nope").String(), e.target(id, "p")), codes.NotFound)
	})
}

func TestNodeGetVolumeStats(t *testing.T) {
	stats := func(e *nodeEnv, id, path string) (*csi.NodeGetVolumeStatsResponse, error) {
		return e.node.NodeGetVolumeStats(e.ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: path})
	}
	e := newNodeEnv(t)
	fsVol, blockVol := e.staged("fs", mountCap("")), e.staged("block", blockCap())
	e.must(e.publish(fsVol, e.target(fsVol, "p"), mountCap(""), false))
	e.must(e.publish(blockVol, e.target(blockVol, "p"), blockCap(), false))
	t.Run("filesystem: bytes and inodes", func(t *testing.T) {
		resp, err := stats(e, fsVol, e.target(fsVol, "p"))
		e.must(err)
		u := resp.GetUsage()
		if len(u) != 2 || u[0].GetUnit() != csi.VolumeUsage_BYTES || u[0].GetTotal() != 100 || u[0].GetAvailable() != 60 || u[0].GetUsed() != 40 ||
			u[1].GetUnit() != csi.VolumeUsage_INODES || u[1].GetTotal() != 10 || u[1].GetAvailable() != 7 || u[1].GetUsed() != 3 {
			t.Fatalf("usage %v", u)
		}
	})
	t.Run("block: total only", func(t *testing.T) {
		resp, err := stats(e, blockVol, e.target(blockVol, "p"))
		e.must(err)
		if u := resp.GetUsage(); len(u) != 1 || u[0].GetUnit() != csi.VolumeUsage_BYTES || u[0].GetTotal() != e.mounts.size {
			t.Fatalf("usage %v", u)
		}
	})
	for _, tc := range []struct {
		name, id, path string
		want           codes.Code
	}{
		{"not published there", fsVol, e.target(fsVol, "q"), codes.NotFound},
		{"another volume's path", fsVol, e.target(blockVol, "p"), codes.NotFound},
		{"relative path", fsVol, "pods/p", codes.NotFound},
		{"path outside", fsVol, "/elsewhere", codes.InvalidArgument},
		{"missing path", fsVol, "", codes.InvalidArgument},
		{"missing volume ID", "", e.target(fsVol, "p"), codes.InvalidArgument},
		{"unknown volume", pool.IDFor("default", "nope").String(), e.target(fsVol, "p"), codes.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := stats(e, tc.id, tc.path)
			wantCode(t, err, tc.want)
		})
	}
}

func TestNodeGetVolumeHealth(t *testing.T) {
	reasons := func(e *nodeEnv, id, staging, publish string) []string {
		e.t.Helper()
		resp, err := e.node.NodeGetVolumeHealth(e.ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id, StagingTargetPath: staging, VolumePublishPath: publish})
		e.must(err)
		var out []string
		for _, h := range resp.GetVolumeHealth().GetHealthStatuses() {
			out = append(out, h.GetReason())
		}
		return out
	}
	e := newNodeEnv(t)
	id := e.staged("v", mountCap(""))
	target := e.target(id, "p")
	e.must(e.publish(id, target, mountCap(""), false))
	blockVol := e.staged("b", blockCap())
	for _, tc := range []struct {
		name            string
		id, stage, publ string
		want            []string
	}{
		{"healthy", id, e.staging(id), target, nil},
		{"no paths", id, "", "", nil},
		{"not published there", id, e.staging(id), e.target(id, "q"), []string{"PublishMountMissing"}},
		{"block volume has no staging mount", blockVol, e.staging(blockVol), "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := reasons(e, tc.id, tc.stage, tc.publ); !slices.Equal(got, tc.want) {
				t.Fatalf("reasons %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("staging mount missing", func(t *testing.T) {
		e.must(e.mounts.Unmount(e.staging(id)))
		if got := reasons(e, id, e.staging(id), ""); !slices.Equal(got, []string{"StagingMountMissing"}) {
			t.Fatalf("reasons %q", got)
		}
	})
	t.Run("device detached", func(t *testing.T) {
		e.must(e.unstage(blockVol))
		if got := reasons(e, blockVol, e.staging(blockVol), ""); !slices.Equal(got, []string{"DeviceDetached"}) {
			t.Fatalf("reasons %q", got)
		}
	})
	t.Run("image gone", func(t *testing.T) {
		e.must(os.Remove(e.d.pools["default"].Pool.(*pool.ImagePool).ImagePath(e.vol(blockVol).Key())))
		if got := reasons(e, blockVol, "", ""); !slices.Equal(got, []string{"ImageMissing"}) {
			t.Fatalf("reasons %q", got)
		}
	})
	t.Run("bad arguments", func(t *testing.T) {
		_, err := e.node.NodeGetVolumeHealth(e.ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id, StagingTargetPath: "/elsewhere"})
		wantCode(t, err, codes.InvalidArgument)
		_, err = e.node.NodeGetVolumeHealth(e.ctx, &csi.NodeGetVolumeHealthRequest{})
		wantCode(t, err, codes.InvalidArgument)
		_, err = e.node.NodeGetVolumeHealth(e.ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: pool.IDFor("default", "nope").String()})
		wantCode(t, err, codes.NotFound)
	})
}
