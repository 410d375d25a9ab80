package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/flashpv/flashpv/test/harness"
)

// TestHostileInput sends malformed and escaping IDs, names and paths to every
// RPC that takes them, and checks the code and that nothing outside the pool
// and the kubelet directory was touched.
func TestHostileInput(t *testing.T) {
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	outside := t.TempDir() // a directory no RPC may touch
	os.WriteFile(filepath.Join(outside, "precious"), []byte("keep"), 0o600)
	if err := os.Symlink(outside, filepath.Join(env.KubeletDir, "escape")); err != nil {
		t.Fatal(err)
	}
	vol := c.create("pvc-real", 16<<20, fsCap())
	id := vol.GetVolumeId()
	okStaging, okTarget := c.paths("pvc-real")

	// Strings that cannot be IDs are refused; well-formed strings that are
	// not of flashpv's form (csi-sanity's made-up IDs, other drivers' IDs)
	// name no volume.
	badIDs := map[string]codes.Code{
		"../../etc":    codes.InvalidArgument,
		"/etc/passwd":  codes.InvalidArgument,
		"default/../x": codes.InvalidArgument,
		"default." + strings.Repeat("a", 32) + "\x00": codes.InvalidArgument,
		strings.Repeat("x", 5000):                     codes.InvalidArgument,
		"default.ABCDEF":                              codes.NotFound,
		"fake-vol-id-0123456789":                      codes.NotFound,
		"nopool." + keyOf("x"):                        codes.NotFound,
		"default.." + keyOf("x"):                      codes.NotFound,
	}
	for bad, want := range badIDs {
		_, err := c.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: bad, StagingTargetPath: okStaging, VolumeCapability: fsCap()})
		wantCode(t, err, want, "NodeStageVolume id "+truncate(bad))
		_, err = c.nd.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: bad, StagingTargetPath: okStaging, TargetPath: okTarget, VolumeCapability: fsCap()})
		wantCode(t, err, want, "NodePublishVolume id "+truncate(bad))
		_, err = c.nd.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: bad, VolumePath: okTarget, CapacityRange: &csi.CapacityRange{RequiredBytes: 32 << 20}})
		wantCode(t, err, want, "NodeExpandVolume id "+truncate(bad))
		_, err = c.ctl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: bad})
		wantCode(t, err, want, "ControllerGetVolume id "+truncate(bad))
		_, err = c.ctl.ValidateVolumeCapabilities(ctx, &csi.ValidateVolumeCapabilitiesRequest{VolumeId: bad, VolumeCapabilities: []*csi.VolumeCapability{fsCap()}})
		wantCode(t, err, want, "ValidateVolumeCapabilities id "+truncate(bad))
		// Deleting something that cannot exist succeeds and deletes nothing.
		if _, err := c.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: bad}); err != nil {
			t.Errorf("DeleteVolume %q: %v", truncate(bad), err)
		}
	}

	badNames := []string{"", strings.Repeat("n", 129), "a\x00b"}
	for _, bad := range badNames {
		_, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: bad, VolumeCapabilities: []*csi.VolumeCapability{anyCap()}})
		wantCode(t, err, codes.InvalidArgument, "CreateVolume name "+truncate(bad))
	}
	// Names that look like paths are just names: they are hashed, never used
	// as paths.
	pathy := c.create("../../../../tmp/evil", 8<<20, anyCap())
	if strings.Contains(pathy.GetVolumeId(), "/") {
		t.Fatalf("volume ID %q contains a slash", pathy.GetVolumeId())
	}
	c.delete(pathy.GetVolumeId())

	badPaths := map[string]string{
		"relative":         "kubelet/pods/x",
		"unclean":          env.KubeletDir + "/pods/../../x",
		"outside":          filepath.Join(outside, "target"),
		"root":             "/",
		"symlink escape":   filepath.Join(env.KubeletDir, "escape", "target"),
		"nul":              env.KubeletDir + "/pods/a\x00b",
		"kubelet dir peer": env.KubeletDir + "-other/x",
	}
	for what, bad := range badPaths {
		_, err := c.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: bad, VolumeCapability: fsCap()})
		wantCode(t, err, codes.InvalidArgument, "NodeStageVolume staging "+what)
		_, err = c.nd.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: okStaging, TargetPath: bad, VolumeCapability: fsCap()})
		wantCode(t, err, codes.InvalidArgument, "NodePublishVolume target "+what)
		_, err = c.nd.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: bad})
		wantCode(t, err, codes.InvalidArgument, "NodeUnpublishVolume target "+what)
		_, err = c.nd.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: bad})
		wantCode(t, err, codes.InvalidArgument, "NodeUnstageVolume staging "+what)
	}

	// Unsupported capabilities and parameters.
	multi := fsCap()
	multi.AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	for what, req := range map[string]*csi.CreateVolumeRequest{
		"multi-node":    {Name: "x", VolumeCapabilities: []*csi.VolumeCapability{multi}},
		"no caps":       {Name: "x"},
		"fsType ntfs":   {Name: "x", VolumeCapabilities: []*csi.VolumeCapability{mountCap("ntfs")}},
		"unknown pool":  {Name: "x", VolumeCapabilities: []*csi.VolumeCapability{anyCap()}, Parameters: map[string]string{"pool": "nope"}},
		"unknown param": {Name: "x", VolumeCapabilities: []*csi.VolumeCapability{anyCap()}, Parameters: map[string]string{"poool": "default"}},
		"mixed caps":    {Name: "x", VolumeCapabilities: []*csi.VolumeCapability{blockCap(), fsCap()}},
		"req > limit":   {Name: "x", VolumeCapabilities: []*csi.VolumeCapability{anyCap()}, CapacityRange: &csi.CapacityRange{RequiredBytes: 10 << 20, LimitBytes: 5 << 20}},
	} {
		_, err := c.ctl.CreateVolume(ctx, req)
		wantCode(t, err, codes.InvalidArgument, "CreateVolume "+what)
	}
	// mkfs.xfs needs 300 MiB; quota pools make no filesystem.
	_, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "x", VolumeCapabilities: []*csi.VolumeCapability{mountCap("xfs")}, CapacityRange: &csi.CapacityRange{LimitBytes: 100 << 20}})
	if harness.Backend() != "quota" {
		wantCode(t, err, codes.OutOfRange, "xfs volume limited below 300 MiB")
	}

	// Staging a Mount volume as Block (and the reverse) is refused.
	_, err = c.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: okStaging, VolumeCapability: blockCap()})
	wantCode(t, err, codes.InvalidArgument, "staging a Mount volume as Block")

	entries, _ := os.ReadDir(outside)
	if len(entries) != 1 {
		t.Fatalf("the outside directory was touched: %v", entries)
	}
}

func truncate(s string) string {
	if len(s) > 30 {
		return s[:30]
	}
	return s
}

// TestNeverReformats: an image that already holds another filesystem is
// refused, and the filesystem stays intact.
func TestNeverReformats(t *testing.T) {
	harness.RequireBackend(t, "image", "lvm-thick", "lvm-thin")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	id := c.create("pvc-foreign", 300<<20, mountCap("xfs")).GetVolumeId()
	img := c.storagePath(id)
	sh(t, "mkfs.ext4 -q -F -L foreigndata "+img)
	staging, _ := c.paths("pvc-foreign")
	os.MkdirAll(staging, 0o750)
	_, err := c.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap("xfs")})
	wantCode(t, err, codes.FailedPrecondition, "staging an xfs volume whose image holds ext4")
	if label := sh(t, "blkid -o value -s LABEL "+img); label != "foreigndata" {
		t.Fatalf("the foreign filesystem was changed: label %q", label)
	}
	c.nd.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
}

// TestStateAndIdempotency covers CreateVolume idempotency, the volume limit
// of a node (counted over all its pools), the single-writer rule and
// incompatible republication.
func TestStateAndIdempotency(t *testing.T) {
	harness.RequireBackend(t, "image") // the volume limit counts loop devices
	env := harness.Start(t, harness.Options{MaxVolumes: 2, Pools: map[string]string{
		"default": harness.PoolFS(t, "256M"), "fast": harness.PoolFS(t, "256M"),
	}})
	c := newClient(t, env)
	a := c.create("pvc-a", 16<<20, blockCap())
	again := c.create("pvc-a", 16<<20, blockCap())
	if a.GetVolumeId() != again.GetVolumeId() || again.GetCapacityBytes() != 16<<20 {
		t.Fatalf("repeated create returned %v, first %v", again, a)
	}
	_, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-a", CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20}, VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
	wantCode(t, err, codes.AlreadyExists, "same name, bigger size")
	_, err = c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-a", CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20}, VolumeCapabilities: []*csi.VolumeCapability{mountCap("ext4")}})
	wantCode(t, err, codes.AlreadyExists, "same name, other mode")

	// pvc-b lives in the other pool: the limit counts both.
	rb, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-b", CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{blockCap()}, Parameters: map[string]string{"pool": "fast"}})
	if err != nil || !strings.HasPrefix(rb.GetVolume().GetVolumeId(), "fast.") {
		t.Fatalf("create in pool fast: %v %v", rb, err)
	}
	b := rb.GetVolume()
	x := c.create("pvc-x", 16<<20, blockCap())
	sa, ta := c.stagePublish(a.GetVolumeId(), "pvc-a", blockCap())
	sb, tb := c.stagePublish(b.GetVolumeId(), "pvc-b", blockCap())
	sx, _ := c.paths("pvc-x")
	os.MkdirAll(sx, 0o750)
	_, err = c.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: x.GetVolumeId(), StagingTargetPath: sx, VolumeCapability: blockCap()})
	wantCode(t, err, codes.ResourceExhausted, "staging beyond --max-volumes")

	// A second target for a single-writer volume is refused.
	sw := blockCap()
	sw.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	_, err = c.nd.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: a.GetVolumeId(), StagingTargetPath: sa, TargetPath: ta + "-2", VolumeCapability: sw})
	wantCode(t, err, codes.FailedPrecondition, "second publish of a single-writer volume")
	// Publishing again at the same target, read-only this time, is a
	// different publication: AlreadyExists, and the first stays.
	_, err = c.nd.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: a.GetVolumeId(), StagingTargetPath: sa, TargetPath: ta, VolumeCapability: blockCap(), Readonly: true})
	wantCode(t, err, codes.AlreadyExists, "republish at the same target with another read-only flag")
	// Unstage while still published is refused, and changes nothing.
	_, err = c.nd.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: a.GetVolumeId(), StagingTargetPath: sa})
	wantCode(t, err, codes.FailedPrecondition, "unstage while published")
	if _, err := os.Stat(ta); err != nil {
		t.Fatal("publication lost by a refused unstage")
	}
	c.unpublishUnstage(a.GetVolumeId(), sa, ta)
	c.unpublishUnstage(b.GetVolumeId(), sb, tb)
}

// TestCrashLeftovers puts the pool in the states a crash between two steps
// leaves and checks a restarted driver recovers.
func TestCrashLeftovers(t *testing.T) {
	harness.RequireBackend(t, "image")
	env := harness.Start(t, harness.Options{})
	c := newClient(t, env)
	dir := env.Pools["default"]
	// Crash after the image was allocated, before its metadata was written.
	orphan := filepath.Join(dir, keyOf("pvc-never-finished")+".img")
	os.WriteFile(orphan, []byte("half"), 0o600)
	// Crash while writing metadata.
	tmp := filepath.Join(dir, keyOf("pvc-tmp")+".json.tmp")
	os.WriteFile(tmp, []byte("{"), 0o600)
	// Files that are not ours are never touched.
	foreign := filepath.Join(dir, "operator-notes.txt")
	os.WriteFile(foreign, []byte("mine"), 0o600)
	// Crash after the image of an expansion grew, before the metadata did.
	id := c.create("pvc-grown", 16<<20, blockCap()).GetVolumeId()
	sh(t, "fallocate -l 32MiB "+c.imagePath(id))

	env.Restart(t, harness.Options{})
	c.refresh()
	for _, f := range []string{orphan, tmp} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("leftover %s survived the restart", filepath.Base(f))
		}
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Error("a file that is not flashpv's was removed")
	}
	// A retried create of the interrupted name works.
	c.create("pvc-never-finished", 8<<20, blockCap())
	// The interrupted expansion completes on retry without a second reservation.
	if got, err := c.expand(id, filepath.Join(env.KubeletDir, "x"), 32<<20); err != nil || got != 32<<20 {
		t.Fatalf("retried expansion: %d %v", got, err)
	}
	if st, _ := os.Stat(c.imagePath(id)); st.Size() != 32<<20 {
		t.Fatalf("image is %d bytes after the retried expansion", st.Size())
	}
}
