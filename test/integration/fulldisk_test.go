package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"

	"github.com/flashpv/flashpv/pkg/driver"
	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/test/harness"
)

// hostFS is the filesystem an image pool lives on, which another process
// (a log, a container image, a download) can fill behind flashpv's back.
type hostFS struct {
	t    *testing.T
	mnt  string // the filesystem's mount point
	pool string // the pool directory on it
}

// newHostFS makes a 512 MiB filesystem of fsType for one image pool: ext4
// (snapshots and clones are copies), XFS with reflink or btrfs (they share
// blocks).
func newHostFS(t *testing.T, fsType string) *hostFS {
	t.Helper()
	var mnt string
	switch fsType {
	case "ext4":
		mnt = harness.PoolFS(t, "512M")
	case "xfs":
		mnt = reflinkXFS(t, "512M")
	case "btrfs":
		mnt = btrfsFS(t, "512M")
	default:
		t.Fatalf("no host filesystem %q", fsType)
	}
	return &hostFS{t: t, mnt: mnt, pool: filepath.Join(mnt, "pool")}
}

// btrfsFS makes a btrfs on a loop device for an image pool.
func btrfsFS(t *testing.T, size string) string {
	t.Helper()
	if _, err := exec.LookPath("mkfs.btrfs"); err != nil {
		t.Skip("no mkfs.btrfs")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "btrfs.img")
	harness.Run(t, "truncate", "-s", size, img)
	harness.Run(t, "mkfs.btrfs", "-q", "-f", img)
	mnt := filepath.Join(dir, "mnt")
	must(t, os.Mkdir(mnt, 0o700))
	harness.Run(t, "mount", "-o", "loop", img, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	return mnt
}

// avail is what the filesystem says an unprivileged writer can still have.
func (h *hostFS) avail() int64 {
	h.t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(h.mnt, &st); err != nil {
		h.t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// fill has other processes take every block of the filesystem but keep
// bytes, which stay free in one piece: a file holding them is made first
// and removed at the end. The filler files lie beside the pool directory,
// as another program's files would.
func (h *hostFS) fill(keep int64) {
	h.t.Helper()
	if keep > 0 {
		sh(h.t, fmt.Sprintf("fallocate -l %d %s/keep", keep, h.mnt))
	}
	bulk := h.avail() - 8<<20
	if bulk > 0 {
		sh(h.t, fmt.Sprintf("fallocate -l %d %s/filler", bulk, h.mnt))
	}
	// The last blocks, one at a time, until the filesystem refuses.
	out, err := exec.Command("dd", "if=/dev/zero", "of="+h.mnt+"/filler.tail", "bs=4096", "oflag=direct", "status=none").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "No space left on device") {
		h.t.Fatalf("filling %s: dd ended with %v: %s", h.mnt, err, out)
	}
	if keep > 0 {
		sh(h.t, "rm "+h.mnt+"/keep")
	}
	sh(h.t, "sync -f "+h.mnt)
	h.t.Logf("%s filled: %d bytes left", h.mnt, h.avail())
}

// free removes what fill made.
func (h *hostFS) free() {
	h.t.Helper()
	sh(h.t, fmt.Sprintf("rm -f %[1]s/filler %[1]s/filler.tail %[1]s/keep && sync -f %[1]s", h.mnt))
}

// entries lists the pool directory, hidden files included.
func (h *hostFS) entries() []string {
	h.t.Helper()
	es, err := os.ReadDir(h.pool)
	if err != nil {
		h.t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// loops counts the loop devices attached to the pool's files.
func (h *hostFS) loops() int {
	h.t.Helper()
	att, err := loopdev.New().Attached(h.pool)
	if err != nil {
		h.t.Fatal(err)
	}
	return len(att)
}

// unchanged fails unless the pool directory holds what it held before, by
// name: a refused call left no image, metadata, copy or temp file.
func (h *hostFS) unchanged(before []string, what string) {
	h.t.Helper()
	if now := h.entries(); !slices.Equal(now, before) {
		h.t.Errorf("%s: the pool directory changed from %v to %v", what, before, now)
	}
}

func gaugeOf(t *testing.T, reg *prometheus.Registry, name string) int64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return int64(mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestFullHostDisk: another process fills the filesystem an image pool
// lives on to its last block. What flashpv made before keeps working (its
// images are allocated in full), what it is asked to make is refused with
// RESOURCE_EXHAUSTED (the provisioner then gives the pod back to the
// scheduler) and leaves nothing behind, the capacity it reports drops at
// once, and once the space is back everything works again without a
// restart.
func TestFullHostDisk(t *testing.T) {
	harness.RequireBackend(t, "image")
	for _, fsType := range []string{"ext4", "xfs", "btrfs"} {
		t.Run(fsType, func(t *testing.T) { fullHostDisk(t, fsType) })
	}
}

func fullHostDisk(t *testing.T, fsType string) {
	h := newHostFS(t, fsType)
	reg := prometheus.NewRegistry()
	env := harness.Start(t, harness.Options{Metrics: reg, Pools: map[string]string{"default": h.pool}})
	c := newClient(t, env)
	const size = 32 << 20
	fsCap, blk := mountCap("ext4"), blockCap()

	// Before the fill: a filesystem volume and a Block volume in use, with
	// data; a snapshot of a third; a fourth never staged yet; a fifth to
	// delete while the disk is full.
	fsv := c.create("fs", size, fsCap).GetVolumeId()
	bv := c.create("blk", size, blk).GetVolumeId()
	src := c.create("src", size, fsCap).GetVolumeId()
	late := c.create("late", size, fsCap).GetVolumeId()
	gone := c.create("gone", 2*size, blk).GetVolumeId()
	for _, id := range []string{fsv, bv, src, late, gone} {
		if got := statBlocks(t, c.imagePath(id)); got < size {
			t.Fatalf("the image of %s has %d of its %d bytes allocated: not preallocated", id, got, size)
		}
	}
	fsStaging, fsTarget := c.stagePublish(fsv, "fs", fsCap)
	bStaging, bTarget := c.stagePublish(bv, "blk", blk)
	sh(t, "dd if=/dev/urandom of="+fsTarget+"/old bs=1M count=8 conv=fsync status=none")
	sh(t, "dd if=/dev/urandom of="+bTarget+" bs=1M count=32 oflag=direct conv=fsync status=none")
	snap := c.mustSnapshot("before", src)

	h.fill(0)
	left := h.avail()
	if left >= driver.MinVolumeSize {
		t.Fatalf("the filesystem kept %d bytes free after the fill; the test proves nothing", left)
	}
	// Capacity is measured at every call: the first one after the fill
	// sees it, and so does the metric the node exports.
	if got := c.capacity(); got > left {
		t.Errorf("GetCapacity says %d bytes after the fill, the filesystem has %d", got, left)
	}
	if got := gaugeOf(t, reg, "flashpv_pool_available_bytes"); got > left {
		t.Errorf("flashpv_pool_available_bytes is %d after the fill, the filesystem has %d", got, left)
	}

	// Writes into what was made before go on: overwrites and new data in
	// the filesystem, and into the Block volume, scattered so that every
	// write splits an unwritten extent of the image (the host filesystem
	// records those splits in blocks of its own reserve).
	sh(t, "dd if=/dev/urandom of="+fsTarget+"/old bs=1M count=8 conv=notrunc,fsync status=none")
	sh(t, "dd if=/dev/urandom of="+fsTarget+"/new bs=1M count=16 conv=fsync status=none")
	sh(t, "sync -f "+fsTarget)
	sh(t, "for i in $(seq 0 255); do dd if=/dev/urandom of="+bTarget+" bs=4k count=1 seek=$((i*31)) oflag=direct conv=notrunc,fsync status=none || exit 1; done")
	wantFS := sh(t, "cd "+fsTarget+" && sha256sum old new")
	wantBlk := sh(t, "sha256sum <"+bTarget)

	// New volumes, snapshots and copies are refused, and leave nothing.
	before, loops := h.entries(), h.loops()
	_, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "new", CapacityRange: &csi.CapacityRange{RequiredBytes: driver.MinVolumeSize},
		VolumeCapabilities: []*csi.VolumeCapability{blk},
	})
	wantCode(t, err, codes.ResourceExhausted, "CreateVolume on a full disk")
	h.unchanged(before, "CreateVolume")
	_, err = c.snapshot("full", fsv) // in use: the filesystem is frozen around the copy, if there is one
	wantCode(t, err, codes.ResourceExhausted, "CreateSnapshot on a full disk")
	h.unchanged(before, "CreateSnapshot")
	_, err = c.createFrom("clone", size, fsCap, false, fsv)
	wantCode(t, err, codes.ResourceExhausted, "a clone on a full disk")
	h.unchanged(before, "clone")
	_, err = c.createFrom("restore", size, fsCap, true, snap.GetSnapshotId())
	wantCode(t, err, codes.ResourceExhausted, "a restore on a full disk")
	h.unchanged(before, "restore")
	if h.loops() != loops {
		t.Errorf("%d loop devices on the pool's images after the refused calls, %d before", h.loops(), loops)
	}
	// The refused snapshot left the volume's filesystem thawed.
	sh(t, "echo after > "+fsTarget+"/after && sync -f "+fsTarget)

	// A volume made before is staged while the disk is full: staging
	// records that its filesystem was made, which takes a block the disk
	// may not have; a retry once there is space finishes it.
	lateStaging, lateTarget := c.paths("late")
	must(t, os.MkdirAll(lateStaging, 0o750))
	must(t, os.MkdirAll(filepath.Dir(lateTarget), 0o750))
	_, lateErr := c.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: late, StagingTargetPath: lateStaging, VolumeCapability: fsCap})
	t.Logf("staging a volume made before the fill: %v", lateErr)

	// A delete needs no space, and what it frees shows at the next call:
	// 2*size, less the size the reflinked snapshot on XFS keeps reserved.
	c.delete(gone)
	if _, err := os.Stat(c.imagePath(gone)); !os.IsNotExist(err) {
		t.Errorf("the deleted volume's image is still there: %v", err)
	}
	if fsType == "btrfs" {
		// btrfs hands a removed file's blocks back when its transaction
		// commits (every 30 s by default), not when the removal is synced.
		sh(t, "sync -f "+h.mnt)
	}
	if got := c.capacity(); got < size-1<<20 {
		t.Errorf("GetCapacity says %d bytes after a %d-byte volume was deleted on a full disk", got, 2*size)
	}

	// The space comes back: everything works, without a restart.
	h.free()
	if lateErr != nil {
		if _, err := c.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: late, StagingTargetPath: lateStaging, VolumeCapability: fsCap}); err != nil {
			t.Fatalf("staging again once the space is back: %v", err)
		}
	}
	if _, err := c.nd.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: late, StagingTargetPath: lateStaging, TargetPath: lateTarget, VolumeCapability: fsCap}); err != nil {
		t.Fatalf("publishing the volume staged on the full disk: %v", err)
	}
	sh(t, "echo late > "+lateTarget+"/late && sync -f "+lateTarget)
	c.unpublishUnstage(late, lateStaging, lateTarget)
	c.create("new", driver.MinVolumeSize, blk)
	c.mustSnapshot("full", fsv)
	c.mustCreateFrom("clone", size, fsCap, false, fsv)
	c.mustCreateFrom("restore", size, fsCap, true, snap.GetSnapshotId())
	// What was written on the full disk is on the images: a fresh stage
	// reads it back.
	c.unpublishUnstage(fsv, fsStaging, fsTarget)
	c.unpublishUnstage(bv, bStaging, bTarget)
	fsStaging, fsTarget = c.stagePublish(fsv, "fs", fsCap)
	bStaging, bTarget = c.stagePublish(bv, "blk", blk)
	if got := sh(t, "cd "+fsTarget+" && sha256sum old new"); got != wantFS {
		t.Errorf("files written on the full disk read back as\n%s\nwant\n%s", got, wantFS)
	}
	if got := sh(t, "sha256sum <"+bTarget); got != wantBlk {
		t.Errorf("the Block volume written on the full disk reads back as %s, want %s", got, wantBlk)
	}
	c.unpublishUnstage(fsv, fsStaging, fsTarget)
	c.unpublishUnstage(bv, bStaging, bTarget)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestFullHostDiskMetadata: the disk fills up so tightly that the data of
// a new volume, snapshot or copy still fits but its metadata file does not
// (another process took the rest between the capacity check and the last
// write). The call is refused with RESOURCE_EXHAUSTED and leaves nothing
// half made: no file, nothing listed, a delete of the ID it would have had
// succeeds; retried once there is space, it makes what was asked.
func TestFullHostDiskMetadata(t *testing.T) {
	harness.RequireBackend(t, "image")
	for _, fsType := range []string{"ext4", "xfs", "btrfs"} {
		t.Run(fsType, func(t *testing.T) { fullHostDiskMetadata(t, fsType) })
	}
}

func fullHostDiskMetadata(t *testing.T, fsType string) {
	h := newHostFS(t, fsType)
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": h.pool}})
	c := newClient(t, env)
	const size = driver.MinVolumeSize
	blk := blockCap()
	src := c.create("src", size, blk).GetVolumeId()
	staging, target := c.stagePublish(src, "src", blk)
	sh(t, fmt.Sprintf("dd if=/dev/urandom of=%s bs=%d count=1 oflag=direct conv=fsync status=none", target, size))
	want := sh(t, "sha256sum <"+target)
	c.unpublishUnstage(src, staging, target)
	var snap string // the snapshot the snapshot step makes, which the restore restores

	volumeCall := func(call func() (*csi.Volume, error)) func() (string, bool, error) {
		return func() (string, bool, error) {
			v, err := call()
			return v.GetVolumeId(), true, err
		}
	}
	for _, op := range []struct {
		name string
		call func() (id string, volume bool, err error)
	}{
		{"create", volumeCall(func() (*csi.Volume, error) {
			resp, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
				Name: "create", CapacityRange: &csi.CapacityRange{RequiredBytes: size},
				VolumeCapabilities: []*csi.VolumeCapability{blk},
			})
			return resp.GetVolume(), err
		})},
		{"snapshot", func() (string, bool, error) {
			s, err := c.snapshot("snapshot", src)
			return s.GetSnapshotId(), false, err
		}},
		{"clone", volumeCall(func() (*csi.Volume, error) { return c.createFrom("clone", size, blk, false, src) })},
		{"restore", volumeCall(func() (*csi.Volume, error) { return c.createFrom("restore", size, blk, true, snap) })},
	} {
		t.Run(op.name, func(t *testing.T) {
			before, loops := h.entries(), h.loops()
			h.fill(size)
			left := h.avail()
			id, volume, err := op.call()
			// A refused call gives back every block it took: no file
			// left, and none held open (an unnamed temp file of a copy).
			sh(t, "sync -f "+h.mnt)
			if now := h.avail(); err != nil && now < left {
				t.Errorf("%s was refused, yet the filesystem has %d bytes left, %d before it", op.name, now, left)
			}
			h.free()
			if h.loops() != loops {
				t.Errorf("%d loop devices on the pool's images after %s, %d before", h.loops(), op.name, loops)
			}
			wouldBe := "default." + keyOf(op.name)
			switch {
			case err == nil:
				t.Logf("%s fit in the space left", op.name)
			case strings.Contains(err.Error(), ".json"):
				t.Logf("%s: its metadata did not fit: %v", op.name, err)
			default:
				t.Logf("%s: its data did not fit: %v", op.name, err)
			}
			if err != nil {
				wantCode(t, err, codes.ResourceExhausted, op.name+" on a full disk")
				h.unchanged(before, op.name)
				if volume {
					c.delete(wouldBe)
				} else if _, err := c.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: wouldBe}); err != nil {
					t.Errorf("deleting the snapshot that was not made: %v", err)
				}
				// The volume's own create is the one whose data takes all
				// the space but one block: it must have got as far as its
				// metadata, or this test did not test that.
				if op.name == "create" && !strings.Contains(err.Error(), ".json") {
					t.Errorf("the create failed before its metadata: %v", err)
				}
				id, volume, err = op.call()
				if err != nil {
					t.Fatalf("%s retried once the space is back: %v", op.name, err)
				}
			}
			if id != wouldBe {
				t.Errorf("%s made %s, want %s", op.name, id, wouldBe)
			}
			if !volume {
				if got := c.listSnapshots(&csi.ListSnapshotsRequest{SnapshotId: id}); len(got) != 1 {
					t.Errorf("snapshot %s listed %d times", id, len(got))
				}
				snap = id
				return
			}
			staging, target := c.stagePublish(id, op.name, blk)
			if got := sh(t, "sha256sum <"+target); op.name != "create" && got != want {
				t.Errorf("%s holds %s, its source %s", op.name, got, want)
			}
			c.unpublishUnstage(id, staging, target)
			c.delete(id)
		})
	}
}
