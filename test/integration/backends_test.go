package integration

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/xfsquota"
	"github.com/flashpv/flashpv/test/harness"
)

// Tests of what only one backend has: quota enforcement and project IDs,
// LVM wiping and ownership.

// TestQuotaEnforcedAndGrown fills a quota volume past its size, then grows it.
func TestQuotaEnforcedAndGrown(t *testing.T) {
	harness.RequireBackend(t, "quota")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	id := c.create("pvc-q", 16<<20, mountCap("")).GetVolumeId()
	staging, target := c.stagePublish(id, "pvc-q", mountCap(""))
	if got := fsSize(t, target); got != 16<<20 {
		t.Fatalf("df in the volume shows %d bytes, want its size %d", got, 16<<20)
	}
	fill := func(name string, n int) error {
		f, err := os.Create(filepath.Join(target, name))
		if err != nil {
			return err
		}
		defer f.Close()
		buf := bytes.Repeat([]byte{1}, 1<<20)
		for i := 0; i < n; i++ {
			if _, err := f.Write(buf); err != nil {
				return err
			}
		}
		return f.Sync()
	}
	// XFS answers ENOSPC (not EDQUOT) at a project's hard limit.
	if err := fill("big", 32); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("writing 32 MiB into a 16 MiB volume: %v, want ENOSPC", err)
	}
	stats, err := c.nd.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	if err != nil {
		t.Fatal(err)
	}
	if u := stats.GetUsage()[0]; u.GetTotal() != 16<<20 || u.GetUsed() < 15<<20 || u.GetAvailable() > 1<<20 {
		t.Fatalf("stats of a full volume: %v", u)
	}
	os.Remove(filepath.Join(target, "big"))
	if got, err := c.expand(id, target, 48<<20); err != nil || got != 48<<20 {
		t.Fatalf("expand: %d %v", got, err)
	}
	if got := fsSize(t, target); got != 48<<20 {
		t.Fatalf("df after growth shows %d bytes", got)
	}
	if err := fill("big", 32); err != nil {
		t.Fatalf("writing 32 MiB into the grown volume: %v", err)
	}
	c.unpublishUnstage(id, staging, target)
	c.delete(id)
}

// TestQuotaProjectIDs checks project IDs are recorded, never shared with
// something else on the filesystem, and reused once free.
func TestQuotaProjectIDs(t *testing.T) {
	harness.RequireBackend(t, "quota")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	dir := strings.TrimPrefix(env.Pools["default"], "quota:")
	// Someone else's directory holds files in the first ID flashpv would take.
	foreign := filepath.Join(filepath.Dir(dir), "foreign")
	if err := os.Mkdir(foreign, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(foreign)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := xfsquota.SetProject(f, pool.FirstProjectID); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(foreign, "data"), []byte("theirs"), 0o600)

	project := func(id string) uint32 {
		t.Helper()
		d, err := os.Open(c.storagePath(id))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		p, inherit, err := xfsquota.Project(d)
		if err != nil || !inherit {
			t.Fatalf("project of %s: %d %v %v", id, p, inherit, err)
		}
		return p
	}
	a := c.create("pvc-a", 8<<20, mountCap("")).GetVolumeId()
	b := c.create("pvc-b", 8<<20, mountCap("")).GetVolumeId()
	pa, pb := project(a), project(b)
	if pa == pool.FirstProjectID || pb == pool.FirstProjectID || pa == pb {
		t.Fatalf("projects %d and %d (the foreign one is %d)", pa, pb, pool.FirstProjectID)
	}
	os.WriteFile(filepath.Join(c.storagePath(a), "x"), []byte("a's data"), 0o600)
	c.delete(a)
	if _, err := os.Stat(c.storagePath(a)); !os.IsNotExist(err) {
		t.Fatalf("directory of a deleted volume: %v", err)
	}
	if q, err := xfsquota.Get(f, pa); err != nil || !q.Unused() {
		t.Fatalf("project %d after delete: %+v %v", pa, q, err)
	}
	cc := c.create("pvc-c", 8<<20, mountCap("")).GetVolumeId()
	if pc := project(cc); pc != pa {
		t.Fatalf("a free project ID was not reused: got %d, want %d", pc, pa)
	}
	if b, err := os.ReadFile(filepath.Join(foreign, "data")); err != nil || string(b) != "theirs" {
		t.Fatal("a directory that is not flashpv's was touched")
	}
	// Block volumes and other filesystems are refused clearly.
	_, err = c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-blk", VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
	wantCode(t, err, codes.InvalidArgument, "Block volume in a quota pool")
	_, err = c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-ext4", VolumeCapabilities: []*csi.VolumeCapability{mountCap("ext4")}})
	wantCode(t, err, codes.InvalidArgument, "ext4 volume in a quota pool")
}

// TestQuotaCrashLeftovers restarts over a directory whose create (or delete)
// never finished: it goes, and so does its limit.
func TestQuotaCrashLeftovers(t *testing.T) {
	harness.RequireBackend(t, "quota")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	id := c.create("pvc-gone", 8<<20, mountCap("")).GetVolumeId()
	dir := c.storagePath(id)
	os.WriteFile(filepath.Join(dir, "data"), []byte("x"), 0o600)
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	project, _, err := xfsquota.Project(d)
	d.Close()
	if err != nil {
		t.Fatal(err)
	}
	// The crash: metadata gone (the first step of a delete), the rest not.
	os.Remove(dir + ".json")
	env.Restart(t, harness.Options{})
	c.refresh()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("leftover directory survived the restart: %v", err)
	}
	root, _ := os.Open(filepath.Dir(dir))
	defer root.Close()
	if q, err := xfsquota.Get(root, project); err != nil || !q.Unused() {
		t.Fatalf("leftover project %d: %+v %v", project, q, err)
	}
	c.create("pvc-gone", 8<<20, mountCap(""))
}

// TestLVMWipesOnDelete checks a new volume on a deleted one's extents reads
// zeros, not the old bytes.
func TestLVMWipesOnDelete(t *testing.T) {
	harness.RequireBackend(t, "lvm-thick", "lvm-thin")
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": harness.NewPool(t, "64M")}})
	c := newClient(t, env)
	secret := bytes.Repeat([]byte("secret!!"), 512)
	for i := 0; i < 2; i++ {
		name := []string{"pvc-old", "pvc-new"}[i]
		id := c.create(name, 32<<20, blockCap()).GetVolumeId()
		staging, target := c.stagePublish(id, name, blockCap())
		f, err := os.OpenFile(target, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(secret))
		for off := int64(0); off < 32<<20; off += 4 << 20 {
			if i == 0 {
				f.WriteAt(secret, off)
			} else if f.ReadAt(got, off); bytes.Contains(got, []byte("secret")) {
				t.Fatalf("a new volume shows a deleted one's data at offset %d", off)
			}
		}
		f.Sync()
		f.Close()
		c.unpublishUnstage(id, staging, target)
		c.delete(id)
	}
}

// TestKilledThinCreateIsMadeOver: LVM commits a new thin LV to the VG's
// metadata before the pool makes its thin device, so an lvcreate killed in
// between leaves an LV no activation can load. The stand-in: a volume's LV
// deactivated and its thin device deleted behind LVM's back. The retried
// CreateVolume makes it over, and it stages; one that was never made over
// deletes, also where the delete would wipe it first.
func TestKilledThinCreateIsMadeOver(t *testing.T) {
	harness.RequireBackend(t, "lvm-thin")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	vg := strings.TrimPrefix(strings.TrimSuffix(env.Pools["default"], ",thin=thin"), "lvm:")
	halfMake := func(name string) string {
		lv := vg + "/flashpv-default-" + keyOf(name)
		id := strings.TrimSpace(harness.Run(t, "lvm", "lvs", "--noheadings", "-o", "thin_id", lv))
		harness.Run(t, "lvm", "lvchange", "-an", lv)
		harness.Run(t, "dmsetup", "message", vg+"-thin-tpool", "0", "delete "+id)
		if out, err := exec.Command("lvm", "lvchange", "-ay", lv).CombinedOutput(); err == nil || !strings.Contains(string(out), "No data available") {
			t.Fatalf("the stand-in for a killed lvcreate activates (%v): it tests nothing: %s", err, out)
		}
		return lv
	}
	vc := mountCap("ext4")
	id := c.create("pvc-half-thin", 16<<20, vc).GetVolumeId()
	halfMake("pvc-half-thin")
	if again := c.create("pvc-half-thin", 16<<20, vc).GetVolumeId(); again != id {
		t.Fatalf("the retried create answered %s, want %s", again, id)
	}
	staging, target := c.stagePublish(id, "pvc-half-thin", vc)
	sh(t, "echo kept >"+filepath.Join(target, "f")+" && sync")
	c.unpublishUnstage(id, staging, target)
	c.delete(id)

	// A pool that does not zero new blocks makes a delete wipe the LV
	// first, which needs the device that a half-made LV cannot have.
	harness.Run(t, "lvm", "lvchange", "-q", "--zero", "n", vg+"/thin")
	other := c.create("pvc-half-gone", 16<<20, blockCap()).GetVolumeId()
	lv := halfMake("pvc-half-gone")
	c.delete(other)
	if out := harness.Run(t, "lvm", "lvs", "--noheadings", "-o", "lv_name", vg); strings.Contains(out, strings.TrimPrefix(lv, vg+"/")) {
		t.Fatalf("DeleteVolume left the half-made LV: %s", out)
	}
}

// TestLVMLeavesForeignLVsAlone puts LVs flashpv did not make in its volume
// group, one named like a volume of its own, and checks none is used,
// listed or removed.
func TestLVMLeavesForeignLVsAlone(t *testing.T) {
	harness.RequireBackend(t, "lvm-thick")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	vg := strings.TrimPrefix(env.Pools["default"], "lvm:")
	lookalike := "flashpv-default-" + keyOf("pvc-taken")
	harness.Run(t, "lvm", "lvcreate", "-q", "-y", "-L", "8m", "-n", lookalike, vg)
	harness.Run(t, "lvm", "lvcreate", "-q", "-y", "-L", "8m", "-n", "operator-data", vg)
	env.Restart(t, harness.Options{})
	c.refresh()
	list, err := c.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(list.GetEntries()) != 0 {
		t.Fatalf("ListVolumes with only foreign LVs: %v %v", list, err)
	}
	_, err = c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-taken", CapacityRange: &csi.CapacityRange{RequiredBytes: 8 << 20}, VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
	if err == nil {
		t.Fatal("CreateVolume adopted an LV flashpv did not make")
	}
	if _, err := c.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: "default." + keyOf("pvc-taken")}); err != nil {
		t.Fatal(err)
	}
	out := harness.Run(t, "lvm", "lvs", "--noheadings", "-o", "lv_name", vg)
	if !strings.Contains(out, lookalike) || !strings.Contains(out, "operator-data") {
		t.Fatalf("foreign LVs were removed: %s", out)
	}
}

// TestStorageLossIsReported takes a volume's storage away behind the
// driver's back: its health says data loss, on the controller and the node.
func TestStorageLossIsReported(t *testing.T) {
	harness.RequireBackend(t, "quota", "lvm-thick", "lvm-thin")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	id := c.create("pvc-lost", 16<<20, fsCap()).GetVolumeId()
	h, err := c.ctl.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) != 0 {
		t.Fatalf("health of a healthy volume: %v %v", h, err)
	}
	where := c.storagePath(id)
	if harness.Backend() == "quota" {
		if err := os.Rename(where, where+".moved"); err != nil {
			t.Fatal(err)
		}
	} else {
		vg := filepath.Base(filepath.Dir(where))
		harness.Run(t, "lvm", "lvrename", "-q", vg, filepath.Base(where), "operator-took-it")
	}
	h, err = c.ctl.ControllerGetVolumeHealth(ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: id})
	if err != nil || len(h.GetVolumeHealth().GetHealthStatuses()) == 0 || h.GetVolumeHealth().GetHealthStatuses()[0].GetStatus() != csi.VolumeHealthErrorType_DATA_LOSS {
		t.Fatalf("controller health without the volume's storage: %v %v", h, err)
	}
	nh, err := c.nd.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id})
	if err != nil || len(nh.GetVolumeHealth().GetHealthStatuses()) == 0 {
		t.Fatalf("node health without the volume's storage: %v %v", nh, err)
	}
}

// TestLVMStriped stripes a volume over two physical volumes.
func TestLVMStriped(t *testing.T) {
	harness.RequireBackend(t, "lvm-thick")
	vg := harness.VolumeGroup(t, "128M", 2, false)
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": "lvm:" + vg + ",stripes=2,stripesize=64Ki"}})
	c := newClient(t, env)
	id := c.create("pvc-striped", 64<<20, blockCap()).GetVolumeId()
	lv := filepath.Base(c.storagePath(id))
	out := harness.Run(t, "lvm", "lvs", "--noheadings", "-o", "stripes,stripe_size", "--units", "k", vg+"/"+lv)
	if f := strings.Fields(out); len(f) != 2 || f[0] != "2" || !strings.HasPrefix(f[1], "64") {
		t.Fatalf("stripes of %s: %q", lv, out)
	}
	staging, target := c.stagePublish(id, "pvc-striped", blockCap())
	if got, err := c.expand(id, target, 96<<20); err != nil || got != 96<<20 {
		t.Fatalf("expanding a striped volume: %d %v", got, err)
	}
	c.unpublishUnstage(id, staging, target)
	c.delete(id)
}
