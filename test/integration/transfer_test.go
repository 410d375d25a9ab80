package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/test/harness"
)

// nodePair is two drivers, node-a and node-b, each with its own pools,
// socket and transfer server, and a broker that knows them.
type nodePair struct {
	b          *harness.Broker
	ta         config.Transfer // node-a's, to restart it with
	envA, envB *harness.Env
	a, bn      *client
	regB       *prometheus.Registry // node-b's metrics
}

// startPair starts a nodePair; pools makes each node's pools, and
// bandwidth caps what node-a sends (0: no cap).
func startPair(t *testing.T, pools func() map[string]string, bandwidth int64) *nodePair {
	t.Helper()
	n := &nodePair{b: harness.StartBroker(t), regB: prometheus.NewRegistry()}
	n.ta = n.b.Node(t, "node-a")
	n.ta.Bandwidth = bandwidth
	n.envA = harness.Start(t, harness.Options{NodeID: "node-a", Transfer: n.ta, Pools: pools()})
	n.envB = harness.Start(t, harness.Options{NodeID: "node-b", Transfer: n.b.Node(t, "node-b"), Metrics: n.regB, Pools: pools()})
	n.a, n.bn = newClient(t, n.envA), newClient(t, n.envB)
	return n
}

// defaultPool is one pool "default" of the test's backend, of size.
func defaultPool(t *testing.T, size string) func() map[string]string {
	return func() map[string]string { return map[string]string{"default": harness.NewPool(t, size)} }
}

// twoNodes is a nodePair with a 2G default pool on each node and no cap.
func twoNodes(t *testing.T) (b *harness.Broker, a, bn *client) {
	t.Helper()
	n := startPair(t, defaultPool(t, "2G"), 0)
	return n.b, n.a, n.bn
}

// createRemote asks c for a volume from a snapshot (snap) or volume id,
// with the claim parameters the provisioner adds.
func (c *client) createRemote(name string, size int64, vc *csi.VolumeCapability, snap bool, id string, params map[string]string) (*csi.Volume, error) {
	src := &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: id}}}
	if snap {
		src = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
	}
	p := map[string]string{"csi.storage.k8s.io/pvc/name": "claim-" + name, "csi.storage.k8s.io/pvc/namespace": "default"}
	for k, v := range params {
		p[k] = v
	}
	resp, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size}, Parameters: p,
		VolumeCapabilities: []*csi.VolumeCapability{vc}, VolumeContentSource: src,
	})
	return resp.GetVolume(), err
}

// createRemoteRetried retries createRemote while it answers Aborted, as
// the provisioner does: a source node that has just restarted serves again
// once the broker has given it a certificate.
func (c *client) createRemoteRetried(name string, size int64, vc *csi.VolumeCapability, snap bool, id string) (*csi.Volume, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := c.createRemote(name, size, vc, snap, id, nil)
		if status.Code(err) != codes.Aborted || time.Now().After(deadline) {
			return v, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// fill writes data a test can check: a file of random bytes with a hole
// between two halves, a small file with a foreign owner, the setuid bit
// and a second name, a directory with the setgid bit, a symlink and a
// fifo, with times of their own. It returns what contents says of it.
func fill(t *testing.T, dir string, mib int) string {
	t.Helper()
	sh(t, "cd "+dir+" && head -c "+itoa(mib/2)+"M /dev/urandom >data && truncate -s +"+itoa(mib)+"M data && head -c "+itoa(mib/2)+"M /dev/urandom >>data && echo hello >small"+
		" && mkdir -p sub/deeper && ln small sub/hard && ln -s ../data sub/link && mkfifo sub/fifo"+
		" && chown 1234:5678 small && chmod 4750 small && chmod 2750 sub/deeper"+
		" && touch -h -d @1600000000.123456789 sub/link sub/fifo sub/deeper sub && sync")
	return contents(t, dir)
}

// contents is the checksums of fill's files and a listing of every entry
// under dir: type, mode, owner, links, size (but a directory's, which
// depends on its filesystem), mtime and link target.
func contents(t *testing.T, dir string) string {
	t.Helper()
	return sh(t, "cd "+dir+" && sha256sum data small && find . ! -type d -printf '%p %y %m %U:%G %n %s %T@ %l\\n' | sort"+
		" && find . -type d -printf '%p %m %U:%G %T@\\n' | sort")
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestTransferRestoreAndCloneAcrossNodes restores a snapshot of node-a and
// clones a volume of node-a on node-b, for every filesystem and Block (a
// quota pool's file tree, with the quota backend), and checks the data
// byte for byte and every entry's metadata.
func TestTransferRestoreAndCloneAcrossNodes(t *testing.T) {
	b, a, bn := twoNodes(t)
	types := fsTypes()
	switch harness.Backend() {
	case "image", "quota": // quota pools hold xfs only
	default:
		// In a VM every filesystem costs minutes; the filesystems differ
		// only above the block layer, which the image backend covers.
		types = []string{"ext4"}
	}
	for _, fs := range types {
		t.Run(fs, func(t *testing.T) {
			a.t, bn.t = t, t
			vc := mountCap(fs)
			size := int64(320 << 20) // xfs wants 300 MiB
			if fs == "ext4" {
				size = 96 << 20
			}
			src := a.create("src-"+fs, size, vc)
			staging, target := a.stagePublish(src.VolumeId, "src-"+fs, vc)
			want := fill(t, target, 40)
			a.unpublishUnstage(src.VolumeId, staging, target)
			snap := a.mustSnapshot("snap-"+fs, src.VolumeId)
			b.Locate(snap.SnapshotId, "node-a")
			b.Locate(src.VolumeId, "node-a")

			for _, c := range []struct {
				name string
				snap bool
				id   string
			}{{"restore-" + fs, true, snap.SnapshotId}, {"clone-" + fs, false, src.VolumeId}} {
				v, err := bn.createRemote(c.name, size, vc, c.snap, c.id, nil)
				if err != nil {
					t.Fatalf("CreateVolume %s on node-b from %s of node-a: %v", c.name, c.id, err)
				}
				// A retry gets the same volume.
				again, err := bn.createRemote(c.name, size, vc, c.snap, c.id, nil)
				if err != nil || again.VolumeId != v.VolumeId {
					t.Fatalf("retried CreateVolume: %v, %v", again, err)
				}
				if seg := v.AccessibleTopology[0].Segments["flashpv.dev/node"]; seg != "node-b" {
					t.Errorf("topology %q, want node-b", seg)
				}
				bn.checkCopy(v, c.name, vc, want)
			}
			// Room for the next filesystem's source and snapshot.
			if _, err := a.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.SnapshotId}); err != nil {
				t.Fatal(err)
			}
			a.delete(src.VolumeId)
		})
	}
	if harness.SupportsBlock() {
		t.Run("block", func(t *testing.T) {
			a.t, bn.t = t, t
			src := a.create("src-block", 64<<20, blockCap())
			dev := a.storagePath(src.VolumeId)
			if harness.Backend() == "image" {
				dev = a.imagePath(src.VolumeId)
			}
			sh(t, "head -c 8M /dev/urandom | dd of="+dev+" bs=1M seek=20 conv=notrunc,fsync status=none")
			want := sh(t, "head -c 64M "+dev+" | sha256sum")
			snap := a.mustSnapshot("snap-block", src.VolumeId)
			b.Locate(snap.SnapshotId, "node-a")
			v, err := bn.createRemote("restore-block", 64<<20, blockCap(), true, snap.SnapshotId, nil)
			if err != nil {
				t.Fatalf("CreateVolume: %v", err)
			}
			got := bn.storagePath(v.VolumeId)
			if harness.Backend() == "image" {
				got = bn.imagePath(v.VolumeId)
			}
			if g := sh(t, "head -c 64M "+got+" | sha256sum"); g != want {
				t.Errorf("Block data differs: %s, want %s", g, want)
			}
		})
	}
}

// checkCopy stages and publishes a copy, compares its contents with want,
// checks a quota volume's own limit, and deletes the copy.
func (c *client) checkCopy(v *csi.Volume, name string, vc *csi.VolumeCapability, want string) {
	c.t.Helper()
	st, tg := c.stagePublish(v.VolumeId, name, vc)
	if got := contents(c.t, tg); got != want {
		c.t.Errorf("%s: data differs:\n got %s\nwant %s", name, got, want)
	}
	if harness.Backend() == "quota" {
		ownLimit(c.t, tg, v.CapacityBytes)
	}
	c.unpublishUnstage(v.VolumeId, st, tg)
	c.delete(v.VolumeId)
}

// TestTransferRefusals: a class that forbids crossing nodes keeps the old
// answer; a volume in use on its node is not copied; nothing is left
// behind on the target.
func TestTransferRefusals(t *testing.T) {
	harness.RequireBackend(t, "image")
	b, a, bn := twoNodes(t)
	vc := mountCap("ext4")
	src := a.create("busy", 64<<20, vc)
	b.Locate(src.VolumeId, "node-a")
	snap := a.mustSnapshot("snap-busy", src.VolumeId)
	b.Locate(snap.SnapshotId, "node-a")

	_, err := bn.createRemote("forbidden", 64<<20, vc, true, snap.SnapshotId, map[string]string{"crossNode": "false"})
	wantCode(t, err, codes.NotFound, "restore with crossNode=false")
	if err != nil && !strings.Contains(err.Error(), "node-b") {
		t.Errorf("the refusal names no node: %v", err)
	}

	staging, target := a.stagePublish(src.VolumeId, "busy", vc)
	_, err = bn.createRemote("clone-busy", 64<<20, vc, false, src.VolumeId, nil)
	wantCode(t, err, codes.FailedPrecondition, "clone of a volume in use on its node")
	a.unpublishUnstage(src.VolumeId, staging, target)

	_, err = bn.createRemote("nowhere", 64<<20, vc, true, "default.0123456789abcdef0123456789abcdef", nil)
	wantCode(t, err, codes.NotFound, "restore of an unknown snapshot")

	_, err = bn.createRemote("bad-param", 64<<20, vc, true, snap.SnapshotId, map[string]string{"crossNode": "maybe"})
	wantCode(t, err, codes.InvalidArgument, "crossNode=maybe")

	resp, err := bn.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(resp.GetEntries()) != 0 {
		t.Errorf("node-b has volumes after refusals: %v, %v", resp.GetEntries(), err)
	}
}

// TestTransferResumes cuts a restore short by restarting the source's
// driver once the first segment is in, and checks that the retry goes on
// from there rather than from the start, and that the volume refuses to be
// staged meanwhile.
func TestTransferResumes(t *testing.T) {
	harness.RequireBackend(t, "image")
	// Slow enough to cut it in the middle.
	n := startPair(t, func() map[string]string { return map[string]string{"default": harness.PoolFS(t, "2G")} }, 24<<20)
	b, ta, envA, envB, a, bn, reg := n.b, n.ta, n.envA, n.envB, n.a, n.bn, n.regB

	src := a.create("big", 256<<20, blockCap())
	sh(t, "head -c 160M /dev/urandom | dd of="+a.imagePath(src.VolumeId)+" bs=1M conv=notrunc,fsync status=none")
	want := sh(t, "head -c 256M "+a.imagePath(src.VolumeId)+" | sha256sum")
	snap := a.mustSnapshot("snap-big", src.VolumeId)
	b.Locate(snap.SnapshotId, "node-a")

	done := make(chan error, 1)
	go func() {
		_, err := bn.createRemote("resumed", 256<<20, blockCap(), true, snap.SnapshotId, nil)
		done <- err
	}()
	meta := filepath.Join(envB.Pools["default"], keyOf("resumed")+".json")
	deadline := time.Now().Add(time.Minute)
	for next := int64(0); next < 64<<20; next = incomingNext(t, meta) {
		if time.Now().After(deadline) {
			t.Fatal("no segment committed within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
	id := "default." + keyOf("resumed")
	_, err := bn.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: filepath.Join(envB.KubeletDir, "plugins", "x", "globalmount"), VolumeCapability: blockCap()})
	if code := status.Code(err); code != codes.Aborted && code != codes.FailedPrecondition {
		t.Errorf("staging an incoming volume: %v, want Aborted", err)
	}

	envA.Restart(t, harness.Options{NodeID: "node-a", Transfer: ta})
	if err := <-done; status.Code(err) != codes.Aborted {
		t.Fatalf("CreateVolume cut short by the source's restart: %v, want Aborted", err)
	}
	at := incomingNext(t, meta)
	if at < 64<<20 || at >= 256<<20 {
		t.Fatalf("after the cut the volume holds %d bytes, want at least one segment and not all", at)
	}
	before := received(t, reg)
	if _, err := bn.createRemoteRetried("resumed", 256<<20, blockCap(), true, snap.SnapshotId); err != nil {
		t.Fatalf("retried CreateVolume: %v", err)
	}
	if g := sh(t, "head -c 256M "+bn.imagePath(id)+" | sha256sum"); g != want {
		t.Errorf("data differs after resuming: %s, want %s", g, want)
	}
	if got := received(t, reg) - before; got > float64(160<<20-at) {
		t.Errorf("the resumed transfer received %.0f data bytes; only %d were left after byte %d", got, 160<<20-at, at)
	}
}

// received is the data bytes a node has received over transfers.
func received(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "flashpv_transfer_bytes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["direction"] == "in" && l["kind"] == "data" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// incomingNext is how far an incoming volume's metadata says it is (the
// whole size once it is complete).
func incomingNext(t *testing.T, meta string) int64 {
	t.Helper()
	data, err := os.ReadFile(meta)
	if err != nil {
		return 0
	}
	var v pool.Volume
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	if v.Incoming == nil {
		return v.SizeBytes
	}
	return v.Incoming.Next
}

// ownLimit checks that the quota volume mounted at dir has its own limit
// of size bytes: df shows it, and XFS allocates nothing past it.
func ownLimit(t *testing.T, dir string, size int64) {
	t.Helper()
	if got := fsSize(t, dir); got != size {
		t.Errorf("df shows %d bytes, want the volume's %d", got, size)
	}
	big := filepath.Join(dir, "too-big")
	if out, err := exec.Command("fallocate", "-l", strconv.FormatInt(size, 10), big).CombinedOutput(); err == nil {
		t.Errorf("fallocate of %d bytes in a volume of %d that holds data succeeded", size, size)
	} else if !strings.Contains(string(out), "space") && !strings.Contains(string(out), "quota") {
		t.Errorf("fallocate past the limit: %v: %s", err, out)
	}
	os.Remove(big)
}

// TestTransferRefusesOtherPoolKind: a quota pool's tree is not copied into
// an image pool, nor an image volume's blocks into a quota pool; each
// refusal names both kinds, and leaves nothing behind.
func TestTransferRefusesOtherPoolKind(t *testing.T) {
	harness.RequireBackend(t, "quota")
	n := startPair(t, func() map[string]string {
		return map[string]string{"default": harness.NewPool(t, "1G"), "img": harness.PoolFS(t, "1G")}
	}, 0)
	b, a, bn := n.b, n.a, n.bn
	vc := mountCap("xfs")

	q := a.create("quota-src", 64<<20, vc)
	snap := a.mustSnapshot("quota-snap", q.VolumeId)
	resp, err := a.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "image-src", CapacityRange: &csi.CapacityRange{RequiredBytes: 300 << 20},
		Parameters: map[string]string{"pool": "img"}, VolumeCapabilities: []*csi.VolumeCapability{vc}})
	if err != nil {
		t.Fatal(err)
	}
	img := resp.GetVolume()
	for _, id := range []string{q.VolumeId, snap.SnapshotId, img.VolumeId} {
		b.Locate(id, "node-a")
	}

	for _, c := range []struct {
		name, pool string
		snap       bool
		id         string
	}{
		{"snapshot into image", "img", true, snap.SnapshotId},
		{"volume into image", "img", false, q.VolumeId},
		{"image into quota", "default", false, img.VolumeId},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := bn.createRemote("copy", 300<<20, vc, c.snap, c.id, map[string]string{"pool": c.pool})
			wantCode(t, err, codes.InvalidArgument, c.name)
			if msg := status.Convert(err).Message(); !strings.Contains(msg, "quota") || !strings.Contains(msg, "image") || !strings.Contains(msg, c.id) {
				t.Errorf("the refusal does not name both pool kinds and the source: %s", msg)
			}
		})
	}
	resp2, err := bn.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(resp2.GetEntries()) != 0 {
		t.Errorf("node-b has volumes after refusals: %v, %v", resp2.GetEntries(), err)
	}
}

// TestTransferTreeStartsOver cuts a quota clone (a volume as source: it
// may change between attempts) short by restarting the source's driver,
// puts a stray file into what the cut left, and checks that the volume
// refuses to be staged meanwhile and that the retry starts over: all the
// data again, nothing of the earlier attempt left.
func TestTransferTreeStartsOver(t *testing.T) {
	harness.RequireBackend(t, "quota")
	// Slow enough to cut it in the middle.
	n := startPair(t, defaultPool(t, "1G"), 8<<20)
	b, ta, envA, envB, a, bn, reg := n.b, n.ta, n.envA, n.envB, n.a, n.bn, n.regB
	vc := mountCap("xfs")

	src := a.create("tree-src", 128<<20, vc)
	staging, target := a.stagePublish(src.VolumeId, "tree-src", vc)
	want := fill(t, target, 48)
	a.unpublishUnstage(src.VolumeId, staging, target)
	b.Locate(src.VolumeId, "node-a")

	done := make(chan error, 1)
	go func() {
		_, err := bn.createRemote("restarted", 128<<20, vc, false, src.VolumeId, nil)
		done <- err
	}()
	id := "default." + keyOf("restarted")
	dir := bn.storagePath(id)
	deadline := time.Now().Add(2 * time.Minute)
	for allocated(filepath.Join(dir, "data")) < 8<<20 {
		if time.Now().After(deadline) {
			t.Fatal("no data received within two minutes")
		}
		time.Sleep(50 * time.Millisecond)
	}
	_, err := bn.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: filepath.Join(envB.KubeletDir, "plugins", "x", "globalmount"), VolumeCapability: vc})
	if code := status.Code(err); code != codes.Aborted && code != codes.FailedPrecondition {
		t.Errorf("staging an incoming volume: %v, want Aborted", err)
	}

	envA.Restart(t, harness.Options{NodeID: "node-a", Transfer: ta})
	if err := <-done; status.Code(err) != codes.Aborted {
		t.Fatalf("CreateVolume cut short by the source's restart: %v, want Aborted", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "stray"), []byte("left by an earlier attempt"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := received(t, reg)
	v, err := bn.createRemoteRetried("restarted", 128<<20, vc, false, src.VolumeId)
	if err != nil {
		t.Fatalf("retried CreateVolume: %v", err)
	}
	st, tg := bn.stagePublish(v.VolumeId, "restarted", vc)
	if got := contents(t, tg); got != want {
		t.Errorf("data differs after starting over:\n got %s\nwant %s", got, want)
	}
	ownLimit(t, tg, 128<<20)
	bn.unpublishUnstage(v.VolumeId, st, tg)
	if got := received(t, reg) - before; got < 48<<20 {
		t.Errorf("the retry received %.0f data bytes, want all %d again", got, 48<<20)
	}
}

// TestTransferTreeResumes cuts a quota restore from a snapshot short by
// restarting the source's driver once a checkpoint is recorded, and checks
// that the retry resumes after it (it receives only the data after the
// checkpoint), that an entry the cut attempt made after the checkpoint is
// gone, and that the copy is the source's, byte for byte and entry for
// entry.
func TestTransferTreeResumes(t *testing.T) {
	harness.RequireBackend(t, "quota")
	// Slow enough to cut it in the middle.
	n := startPair(t, defaultPool(t, "1G"), 8<<20)
	b, ta, envA, envB, a, bn, reg := n.b, n.ta, n.envA, n.envB, n.a, n.bn, n.regB
	vc := mountCap("xfs")

	src := a.create("tree-src", 384<<20, vc)
	staging, target := a.stagePublish(src.VolumeId, "tree-src", vc)
	want := fill(t, target, 160) // 160 MiB of data: checkpoints every 64 MiB of stream
	a.unpublishUnstage(src.VolumeId, staging, target)
	snap := a.mustSnapshot("tree-snap", src.VolumeId)
	b.Locate(snap.SnapshotId, "node-a")

	done := make(chan error, 1)
	go func() {
		_, err := bn.createRemote("resumed", 384<<20, vc, true, snap.SnapshotId, nil)
		done <- err
	}()
	id := "default." + keyOf("resumed")
	meta := filepath.Join(strings.TrimPrefix(envB.Pools["default"], "quota:"), keyOf("resumed")+".json")
	deadline := time.Now().Add(2 * time.Minute)
	for incomingNext(t, meta) < 64<<20 {
		if time.Now().After(deadline) {
			t.Fatal("no checkpoint recorded within two minutes")
		}
		time.Sleep(50 * time.Millisecond)
	}
	envA.Restart(t, harness.Options{NodeID: "node-a", Transfer: ta})
	if err := <-done; status.Code(err) != codes.Aborted {
		t.Fatalf("CreateVolume cut short by the source's restart: %v, want Aborted", err)
	}
	at := incomingNext(t, meta)
	if at < 64<<20 || at >= 160<<20 {
		t.Fatalf("after the cut the volume's checkpoint is at %d data bytes, want at least 64 MiB and not all", at)
	}
	// Names after the checkpoint's ("data") go: an attempt may have made
	// them after it.
	if err := os.WriteFile(filepath.Join(bn.storagePath(id), "stray"), []byte("after the checkpoint"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := received(t, reg)
	v, err := bn.createRemoteRetried("resumed", 384<<20, vc, true, snap.SnapshotId)
	if err != nil {
		t.Fatalf("retried CreateVolume: %v", err)
	}
	st, tg := bn.stagePublish(v.VolumeId, "resumed", vc)
	if got := contents(t, tg); got != want {
		t.Errorf("data differs after resuming:\n got %s\nwant %s", got, want)
	}
	bn.unpublishUnstage(v.VolumeId, st, tg)
	// What is left: data after the checkpoint, and the small file after it.
	if got := received(t, reg) - before; got > float64(160<<20-at+4<<10) {
		t.Errorf("the resumed transfer received %.0f data bytes; only %d were left after the checkpoint at %d", got, 160<<20-at, at)
	}
}

// allocated is the bytes a file has on disk (0 if it does not exist).
func allocated(path string) int64 {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}
