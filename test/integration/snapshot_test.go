package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/test/harness"
)

func (c *client) snapshot(name, source string) (*csi.Snapshot, error) {
	resp, err := c.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: source})
	return resp.GetSnapshot(), err
}

func (c *client) mustSnapshot(name, source string) *csi.Snapshot {
	c.t.Helper()
	s, err := c.snapshot(name, source)
	if err != nil {
		c.t.Fatalf("CreateSnapshot %s of %s: %v", name, source, err)
	}
	return s
}

// createFrom makes a volume from a snapshot (snap true) or a volume.
func (c *client) createFrom(name string, size int64, vc *csi.VolumeCapability, snap bool, id string) (*csi.Volume, error) {
	src := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
	if snap {
		src = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
	}
	resp, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{vc}, VolumeContentSource: src,
	})
	return resp.GetVolume(), err
}

func (c *client) mustCreateFrom(name string, size int64, vc *csi.VolumeCapability, snap bool, id string) *csi.Volume {
	c.t.Helper()
	v, err := c.createFrom(name, size, vc, snap, id)
	if err != nil {
		c.t.Fatalf("CreateVolume %s from %s: %v", name, id, err)
	}
	return v
}

func (c *client) listSnapshots(req *csi.ListSnapshotsRequest) []*csi.Snapshot {
	c.t.Helper()
	resp, err := c.ctl.ListSnapshots(ctx, req)
	if err != nil {
		c.t.Fatalf("ListSnapshots: %v", err)
	}
	var out []*csi.Snapshot
	for _, e := range resp.GetEntries() {
		out = append(out, e.GetSnapshot())
	}
	return out
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	return string(data)
}

// TestSnapshotRestoreClone covers the life of a snapshot on every backend:
// a point-in-time copy taken while the volume is in use (quota pools refuse
// that, having nothing to freeze), restored into a bigger volume whose
// filesystem grows, cloned, surviving its source and a restart.
func TestSnapshotRestoreClone(t *testing.T) {
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": harness.NewPool(t, "2G")}})
	c := newClient(t, env)
	vc := fsCap()
	src := c.create("src", 64<<20, vc)
	staging, target := c.stagePublish(src.VolumeId, "src", vc)
	sh(t, "echo before > "+target+"/data && sync")

	if harness.Backend() == "quota" {
		_, err := c.snapshot("snap", src.VolumeId)
		wantCode(t, err, codes.FailedPrecondition, "snapshot of a quota volume in use")
		c.unpublishUnstage(src.VolumeId, staging, target)
	}
	snap := c.mustSnapshot("snap", src.VolumeId)
	if snap.GetSourceVolumeId() != src.VolumeId || snap.GetSizeBytes() != src.CapacityBytes || !snap.GetReadyToUse() {
		t.Fatalf("snapshot: %v", snap)
	}
	if again := c.mustSnapshot("snap", src.VolumeId); again.SnapshotId != snap.SnapshotId {
		t.Fatalf("retried CreateSnapshot made %s, want %s", again.SnapshotId, snap.SnapshotId)
	}
	other := c.create("other", 64<<20, vc)
	_, err := c.snapshot("snap", other.VolumeId)
	wantCode(t, err, codes.AlreadyExists, "same snapshot name, other source")

	if harness.Backend() == "quota" {
		staging, target = c.stagePublish(src.VolumeId, "src", vc)
	}
	sh(t, "echo after > "+target+"/data && sync")

	// Restore into a bigger volume: the data of the snapshot, grown.
	restored := c.mustCreateFrom("restored", 128<<20, vc, true, snap.SnapshotId)
	if restored.CapacityBytes < 128<<20 || restored.GetContentSource().GetSnapshot().GetSnapshotId() != snap.SnapshotId {
		t.Fatalf("restored volume: %v", restored)
	}
	_, err = c.createFrom("small", 32<<20, vc, true, snap.SnapshotId)
	if err != nil {
		t.Logf("a restore asked smaller than its snapshot: %v", err)
	}
	rs, rt := c.stagePublish(restored.VolumeId, "restored", vc)
	if got := readFile(t, rt+"/data"); got != "before\n" {
		t.Fatalf("restored data %q, want the snapshot's", got)
	}
	if harness.Backend() != "quota" {
		if size := fsSize(t, rt); size < 100<<20 {
			t.Errorf("restored filesystem has %d bytes; it should have grown to its volume", size)
		}
	}
	sh(t, "echo restored > "+rt+"/data && sync")
	c.unpublishUnstage(restored.VolumeId, rs, rt)

	// Clone of the (unpublished) restored volume.
	clone := c.mustCreateFrom("clone", 128<<20, vc, false, restored.VolumeId)
	cs, ct := c.stagePublish(clone.VolumeId, "clone", vc)
	if got := readFile(t, ct+"/data"); got != "restored\n" {
		t.Fatalf("cloned data %q", got)
	}
	c.unpublishUnstage(clone.VolumeId, cs, ct)

	// The source goes; the snapshot stays, and restores after a restart.
	c.unpublishUnstage(src.VolumeId, staging, target)
	c.delete(src.VolumeId)
	env.Restart(t, harness.Options{})
	c.refresh()
	if got := c.listSnapshots(&csi.ListSnapshotsRequest{SnapshotId: snap.SnapshotId}); len(got) != 1 || got[0].SourceVolumeId != src.VolumeId {
		t.Fatalf("snapshot after its source's delete and a restart: %v", got)
	}
	if got := c.listSnapshots(&csi.ListSnapshotsRequest{SourceVolumeId: src.VolumeId}); len(got) != 1 {
		t.Fatalf("snapshots of the deleted source: %v", got)
	}
	again := c.mustCreateFrom("again", 64<<20, vc, true, snap.SnapshotId)
	as, at := c.stagePublish(again.VolumeId, "again", vc)
	if got := readFile(t, at+"/data"); got != "before\n" {
		t.Fatalf("data restored after the source's delete %q", got)
	}
	c.unpublishUnstage(again.VolumeId, as, at)

	if _, err := c.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.SnapshotId}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.SnapshotId}); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if got := c.listSnapshots(&csi.ListSnapshotsRequest{}); len(got) != 0 {
		t.Fatalf("snapshots left: %v", got)
	}
	_, err = c.createFrom("late", 64<<20, vc, true, snap.SnapshotId)
	wantCode(t, err, codes.NotFound, "restore of a deleted snapshot")
	for _, id := range []string{again.VolumeId, clone.VolumeId, restored.VolumeId, other.VolumeId} {
		c.delete(id)
	}
	if harness.Backend() == "image" {
		if left, _ := filepath.Glob(filepath.Join(env.Pools["default"], "*.snap*")); len(left) > 0 {
			t.Errorf("snapshot files left: %v", left)
		}
	}
}

// A restore and a clone are mounted on the node while their source stays
// mounted there, for every filesystem: a copy carries its source's UUID
// (and btrfs's fsid), which XFS refuses to mount twice unless told not to
// check (found by the upstream suite's multiVolume tests).
func TestRestoreAndCloneBesideSource(t *testing.T) {
	harness.RequireBackend(t, "image", "lvm-thick", "lvm-thin")
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": harness.NewPool(t, "3G")}})
	c := newClient(t, env)
	for _, fs := range fsTypes() {
		t.Run(fs, func(t *testing.T) {
			vc := mountCap(fs)
			// xfs needs 300 MiB.
			const size = 320 << 20
			src := c.create("src-"+fs, size, vc)
			staging, target := c.stagePublish(src.VolumeId, "src-"+fs, vc)
			sh(t, "echo "+fs+" > "+target+"/data && sync")
			snap := c.mustSnapshot("snap-"+fs, src.VolumeId)
			restored := c.mustCreateFrom("restored-"+fs, size, vc, true, snap.SnapshotId)
			clone := c.mustCreateFrom("clone-"+fs, size, vc, false, src.VolumeId)
			var mounted [][3]string
			for _, v := range []*csi.Volume{restored, clone} {
				vs, vt := c.stagePublish(v.VolumeId, v.VolumeId, vc)
				if got := readFile(t, vt+"/data"); got != fs+"\n" {
					t.Fatalf("%s beside its source: data %q", v.VolumeId, got)
				}
				mounted = append(mounted, [3]string{v.VolumeId, vs, vt})
			}
			for _, m := range mounted {
				c.unpublishUnstage(m[0], m[1], m[2])
				c.delete(m[0])
			}
			c.unpublishUnstage(src.VolumeId, staging, target)
			c.delete(src.VolumeId)
			if _, err := c.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.SnapshotId}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSnapshotPointInTime snapshots a filesystem while a writer appends
// numbered, synced records to it: the restored copy is a clean filesystem
// whose file holds an unbroken run of records.
func TestSnapshotPointInTime(t *testing.T) {
	harness.RequireBackend(t, "image", "lvm-thin", "lvm-thick")
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": harness.NewPool(t, "2G")}})
	c := newClient(t, env)
	vc := mountCap("ext4")
	src := c.create("src", 128<<20, vc)
	staging, target := c.stagePublish(src.VolumeId, "src", vc)
	writer := exec.Command("sh", "-c", `i=0; while :; do i=$((i+1)); echo "record $i" >> `+target+`/log; done`)
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			writer.Process.Kill()
			writer.Wait()
			stopped = true
		}
	}
	defer stop()
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	snap := c.mustSnapshot("pit", src.VolumeId)
	t.Logf("snapshot of a volume being written took %v", time.Since(start))
	time.Sleep(200 * time.Millisecond)
	stop()
	restored := c.mustCreateFrom("restored", 128<<20, vc, true, snap.SnapshotId)
	// The restored filesystem was frozen (clean) when it was copied.
	dev := harness.Run(t, "losetup", "--find", "--show", "--read-only", c.storagePathOf(restored.VolumeId, "restored"))
	if harness.Backend() != "image" {
		harness.Run(t, "losetup", "-d", dev)
		dev = c.storagePathOf(restored.VolumeId, "restored")
	} else {
		defer exec.Command("losetup", "-d", dev).Run()
	}
	if out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
		t.Errorf("the restored filesystem is not clean: %v\n%s", err, out)
	}
	if harness.Backend() == "image" {
		harness.Run(t, "losetup", "-d", dev)
	}
	rs, rt := c.stagePublish(restored.VolumeId, "restored", vc)
	lines := strings.Split(strings.TrimSuffix(readFile(t, rt+"/log"), "\n"), "\n")
	for i, l := range lines {
		if l != "record "+strconv.Itoa(i+1) {
			t.Fatalf("record %d of %d is %q: the copy is torn", i+1, len(lines), l)
		}
	}
	full := strings.Count(readFile(t, target+"/log"), "\n")
	if len(lines) >= full {
		t.Errorf("the snapshot has %d records, the source %d: not taken while it was written", len(lines), full)
	}
	t.Logf("snapshot holds %d of %d records", len(lines), full)
	c.unpublishUnstage(restored.VolumeId, rs, rt)
	c.unpublishUnstage(src.VolumeId, staging, target)
}

// storagePathOf is storagePath for a volume of the default pool.
func (c *client) storagePathOf(id, _ string) string { return c.storagePath(id) }

// TestSnapshotBlock: a published Block volume is snapshotted at once where
// the pool shares blocks (atomic against its writes), and refused where a
// copy would be torn.
func TestSnapshotBlock(t *testing.T) {
	harness.RequireBackend(t, "image", "lvm-thin", "lvm-thick")
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": harness.NewPool(t, "1G")}})
	c := newClient(t, env)
	vc := blockCap()
	src := c.create("src", 32<<20, vc)
	staging, target := c.stagePublish(src.VolumeId, "src", vc)
	sh(t, "printf block-data | dd of="+target+" oflag=direct bs=4096 conv=sync,fsync status=none")
	_, err := c.snapshot("snap", src.VolumeId)
	switch harness.Backend() {
	case "lvm-thin":
		if err != nil {
			t.Fatalf("thin snapshot of a published Block volume: %v", err)
		}
	default:
		// ext4 image pool and thick LVM: a full copy.
		wantCode(t, err, codes.FailedPrecondition, "full copy of a published Block volume")
		c.unpublishUnstage(src.VolumeId, staging, target)
		c.mustSnapshot("snap", src.VolumeId)
		staging, target = c.stagePublish(src.VolumeId, "src", vc)
	}
	snaps := c.listSnapshots(&csi.ListSnapshotsRequest{SourceVolumeId: src.VolumeId})
	if len(snaps) != 1 {
		t.Fatalf("snapshots: %v", snaps)
	}
	_, err = c.createFrom("fs", 32<<20, mountCap("ext4"), true, snaps[0].SnapshotId)
	wantCode(t, err, codes.InvalidArgument, "a Filesystem volume from a Block snapshot")
	r := c.mustCreateFrom("restored", 32<<20, vc, true, snaps[0].SnapshotId)
	rs, rt := c.stagePublish(r.VolumeId, "restored", vc)
	if got := sh(t, "dd if="+rt+" bs=10 count=1 status=none"); got != "block-data" {
		t.Fatalf("restored Block data %q", got)
	}
	c.unpublishUnstage(r.VolumeId, rs, rt)
	c.unpublishUnstage(src.VolumeId, staging, target)
}

// reflinkXFS makes an XFS with reflink on a loop device for an image pool.
func reflinkXFS(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "xfs.img")
	harness.Run(t, "truncate", "-s", size, img)
	harness.Run(t, "mkfs.xfs", "-q", "-f", "-m", "reflink=1", img)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	harness.Run(t, "mount", "-o", "loop", img, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	return mnt
}

// TestSnapshotReflinkKeepsPromise: on an XFS pool a snapshot is a reflink
// that shares every block, yet it reserves the source's size, so that when
// the rest of the pool is promised away, the source can still be rewritten
// whole (every write taking a new block) without running out of space.
func TestSnapshotReflinkKeepsPromise(t *testing.T) {
	harness.RequireBackend(t, "image")
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": reflinkXFS(t, "1536M")}})
	c := newClient(t, env)
	vc := blockCap()
	const size = 256 << 20
	src := c.create("src", size, vc)
	staging, target := c.stagePublish(src.VolumeId, "src", vc)
	sh(t, fmt.Sprintf("dd if=/dev/urandom of=%s bs=1M count=%d oflag=direct status=none", target, size>>20))
	capBefore := c.capacity()
	start := time.Now()
	c.mustSnapshot("snap", src.VolumeId) // published: a reflink is instant and atomic
	t.Logf("reflink snapshot of %d MiB took %v", size>>20, time.Since(start))
	capAfter := c.capacity()
	if capBefore-capAfter < size {
		t.Fatalf("the snapshot reserved %d bytes, want at least %d", capBefore-capAfter, size)
	}
	// Promise the rest of the pool away, and fill that volume.
	rest := capAfter / (1 << 20) * (1 << 20)
	filler := c.create("filler", rest, vc)
	fs, ft := c.stagePublish(filler.VolumeId, "filler", vc)
	sh(t, fmt.Sprintf("dd if=/dev/zero of=%s bs=1M count=%d oflag=direct status=none", ft, rest>>20))
	// Rewrite the source whole: every block unshares.
	out, err := exec.Command("sh", "-c", fmt.Sprintf("dd if=/dev/urandom of=%s bs=1M count=%d oflag=direct conv=fsync status=none", target, size>>20)).CombinedOutput()
	if err != nil {
		t.Fatalf("rewriting the snapshotted volume failed: %v\n%s", err, out)
	}
	c.unpublishUnstage(filler.VolumeId, fs, ft)
	c.delete(filler.VolumeId)
	// A restore of a reflink reserves its whole size too.
	capBefore = c.capacity()
	c.mustCreateFrom("restored", size, vc, true, c.listSnapshots(&csi.ListSnapshotsRequest{})[0].SnapshotId)
	if got := capBefore - c.capacity(); got < size {
		t.Errorf("a reflinked restore reserved %d bytes, want %d", got, size)
	}
	c.unpublishUnstage(src.VolumeId, staging, target)
}

func (c *client) capacity() int64 {
	c.t.Helper()
	resp, err := c.ctl.GetCapacity(ctx, &csi.GetCapacityRequest{})
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.AvailableCapacity
}

// TestSnapshotLeftoversCollected: what a crash in a snapshot's create left
// in an image pool goes when the pool opens.
func TestSnapshotLeftoversCollected(t *testing.T) {
	harness.RequireBackend(t, "image")
	env := harness.Start(t, harness.Options{})
	dir := env.Pools["default"]
	key := keyOf("crashed")
	for _, n := range []string{key + ".snap", key + ".snap.json.tmp"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env.Restart(t, harness.Options{})
	if left, _ := filepath.Glob(filepath.Join(dir, key+"*")); len(left) > 0 {
		t.Fatalf("leftovers kept: %v", left)
	}
}

// TestCopyLongerThanTheCallersTimeout: a snapshot and a restore whose copy
// takes longer than the caller waits (the sidecars' --timeout) still
// converge, retried with that same short timeout every time: the copy goes
// on after the call, and a retry gets what it made.
func TestCopyLongerThanTheCallersTimeout(t *testing.T) {
	harness.RequireBackend(t, "image", "lvm-thick") // pools that copy
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": harness.NewPool(t, "2G")}})
	c := newClient(t, env)
	vc := blockCap()
	src := c.create("src", 256<<20, vc)
	staging, target := c.stagePublish(src.VolumeId, "src", vc)
	sh(t, "dd if=/dev/urandom of="+target+" bs=1M count=256 oflag=direct conv=fsync status=none")
	want := sh(t, "sha256sum <"+target)
	c.unpublishUnstage(src.VolumeId, staging, target)

	// Like a sidecar with a --timeout far below the copy's time. Calls in
	// an emulated VM (where the lvm tests run) take longer by themselves.
	timeout := 50 * time.Millisecond
	if harness.Backend() != "image" {
		timeout = time.Second
	}
	retry := func(what string, call func(context.Context) error) {
		t.Helper()
		timedOut := 0
		for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(20 * time.Millisecond) {
			cctx, cancel := context.WithTimeout(ctx, timeout)
			err := call(cctx)
			cancel()
			if err == nil {
				break
			}
			switch status.Code(err) {
			case codes.DeadlineExceeded:
				timedOut++
			case codes.Aborted:
			default:
				t.Fatalf("%s: %v", what, err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not converge in 3 minutes of %v calls (%d timed out); last: %v", what, timeout, timedOut, err)
			}
		}
		if timedOut == 0 {
			t.Fatalf("%s: no call timed out; the copy was too quick to test anything", what)
		}
		t.Logf("%s: done after %d calls timed out", what, timedOut)
	}
	var snapID string
	retry("CreateSnapshot", func(cctx context.Context) error {
		resp, err := c.ctl.CreateSnapshot(cctx, &csi.CreateSnapshotRequest{Name: "snap", SourceVolumeId: src.VolumeId})
		snapID = resp.GetSnapshot().GetSnapshotId()
		return err
	})
	var restored *csi.Volume
	retry("CreateVolume from the snapshot", func(cctx context.Context) error {
		resp, err := c.ctl.CreateVolume(cctx, &csi.CreateVolumeRequest{
			Name: "restored", CapacityRange: &csi.CapacityRange{RequiredBytes: 256 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{vc},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
				Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapID}}},
		})
		restored = resp.GetVolume()
		return err
	})
	rs, rt := c.stagePublish(restored.VolumeId, "restored", vc)
	if got := sh(t, "head -c 256M "+rt+" | sha256sum"); got != want {
		t.Errorf("restored data %s, source's %s", got, want)
	}
	c.unpublishUnstage(restored.VolumeId, rs, rt)
}
