package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/test/harness"
)

// twoNodes starts two drivers, node-a and node-b, each with its own pools,
// socket and transfer server, and a broker that knows them.
func twoNodes(t *testing.T, metricsB prometheus.Registerer) (b *harness.Broker, a, bn *client) {
	t.Helper()
	b = harness.StartBroker(t)
	envA := harness.Start(t, harness.Options{NodeID: "node-a", Transfer: b.Node(t, "node-a"), Pools: map[string]string{"default": harness.NewPool(t, "2G")}})
	envB := harness.Start(t, harness.Options{NodeID: "node-b", Transfer: b.Node(t, "node-b"), Metrics: metricsB, Pools: map[string]string{"default": harness.NewPool(t, "2G")}})
	return b, newClient(t, envA), newClient(t, envB)
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

// fill writes data a test can check: a file of random bytes with a hole
// between two halves, and its checksum.
func fill(t *testing.T, dir string, mib int) string {
	t.Helper()
	return sh(t, "cd "+dir+" && head -c "+itoa(mib/2)+"M /dev/urandom >data && truncate -s +"+itoa(mib)+"M data && head -c "+itoa(mib/2)+"M /dev/urandom >>data && echo hello >small && sync && sha256sum data small")
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestTransferRestoreAndCloneAcrossNodes restores a snapshot of node-a and
// clones a volume of node-a on node-b, for every filesystem and Block, and
// checks the data byte for byte.
func TestTransferRestoreAndCloneAcrossNodes(t *testing.T) {
	harness.RequireBackend(t, "image", "lvm-thick", "lvm-thin")
	b, a, bn := twoNodes(t, nil)
	for _, fs := range fsTypes() {
		t.Run(fs, func(t *testing.T) {
			a.t, bn.t = t, t
			vc := mountCap(fs)
			src := a.create("src-"+fs, 320<<20, vc)
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
				v, err := bn.createRemote(c.name, 320<<20, vc, c.snap, c.id, nil)
				if err != nil {
					t.Fatalf("CreateVolume %s on node-b from %s of node-a: %v", c.name, c.id, err)
				}
				// A retry gets the same volume.
				again, err := bn.createRemote(c.name, 320<<20, vc, c.snap, c.id, nil)
				if err != nil || again.VolumeId != v.VolumeId {
					t.Fatalf("retried CreateVolume: %v, %v", again, err)
				}
				if seg := v.AccessibleTopology[0].Segments["flashpv.dev/node"]; seg != "node-b" {
					t.Errorf("topology %q, want node-b", seg)
				}
				st, tg := bn.stagePublish(v.VolumeId, c.name, vc)
				if got := sh(t, "cd "+tg+" && sha256sum data small"); got != want {
					t.Errorf("%s: data differs:\n got %s\nwant %s", c.name, got, want)
				}
				bn.unpublishUnstage(v.VolumeId, st, tg)
				bn.delete(v.VolumeId)
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

// TestTransferRefusals: a class that forbids crossing nodes keeps the old
// answer; a volume in use on its node is not copied; nothing is left
// behind on the target.
func TestTransferRefusals(t *testing.T) {
	harness.RequireBackend(t, "image")
	b, a, bn := twoNodes(t, nil)
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
	b := harness.StartBroker(t)
	ta := b.Node(t, "node-a")
	ta.Bandwidth = 24 << 20 // slow enough to cut it in the middle
	envA := harness.Start(t, harness.Options{NodeID: "node-a", Transfer: ta, Pools: map[string]string{"default": harness.PoolFS(t, "2G")}})
	reg := prometheus.NewRegistry()
	envB := harness.Start(t, harness.Options{NodeID: "node-b", Transfer: b.Node(t, "node-b"), Metrics: reg, Pools: map[string]string{"default": harness.PoolFS(t, "2G")}})
	a, bn := newClient(t, envA), newClient(t, envB)

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
	if _, err := bn.createRemote("resumed", 256<<20, blockCap(), true, snap.SnapshotId, nil); err != nil {
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
