package integration

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/move"
	"github.com/flashpv/flashpv/pkg/transfer"
	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/test/harness"
)

// movePair is two drivers, node-a (the source) and node-b (the target),
// with their own pools, sockets and transfer servers, and the cluster
// controller's side of a move: its orders, with its own certificate, and
// the capabilities it signs.
type movePair struct {
	t          *testing.T
	b          *harness.Broker
	ta, tb     config.Transfer
	envA, envB *harness.Env
	a, bn      *client
	regB       *prometheus.Registry
	orders     *transfer.OrderClient
}

// startMovePair starts a movePair with a pool "default" of size on each
// node; bandwidth caps what node-a sends (0: no cap).
func startMovePair(t *testing.T, size string, bandwidth int64) *movePair {
	t.Helper()
	m := &movePair{t: t, b: harness.StartBroker(t), regB: prometheus.NewRegistry()}
	m.ta, m.tb = m.b.Node(t, "node-a"), m.b.Node(t, "node-b")
	m.ta.Bandwidth = bandwidth
	m.envA = harness.Start(t, harness.Options{NodeID: "node-a", Transfer: m.ta, Pools: map[string]string{"default": harness.NewPool(t, size)}})
	m.envB = harness.Start(t, harness.Options{NodeID: "node-b", Transfer: m.tb, Metrics: m.regB, Pools: map[string]string{"default": harness.NewPool(t, size)}})
	m.a, m.bn = newClient(t, m.envA), newClient(t, m.envB)
	key, err := auth.NewControllerKey(func() (*auth.Signer, error) { return m.b.Signer, nil }, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	trust, err := auth.NewTrust(m.b.Signer.CAPEM())
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{"node-a": m.ta.Address, "node-b": m.tb.Address}
	m.orders = &transfer.OrderClient{
		Key: key, Trust: func() (*auth.Trust, error) { return trust, nil },
		Address: func(_ context.Context, node string) (string, error) { return addrs[node], nil },
	}
	return m
}

func (m *movePair) restartA() {
	m.envA.Restart(m.t, harness.Options{NodeID: "node-a", Transfer: m.ta})
	m.a.refresh()
}

// restartB restarts node-b, with new metrics.
func (m *movePair) restartB() {
	m.regB = prometheus.NewRegistry()
	m.envB.Restart(m.t, harness.Options{NodeID: "node-b", Transfer: m.tb, Metrics: m.regB})
	m.bn.refresh()
}

// request is order o of move id for volume, from node-a to node-b.
func (m *movePair) request(id string, o move.Order, volume, snapshot string) move.OrderRequest {
	return move.OrderRequest{MoveID: id, Order: o, Volume: volume, Snapshot: snapshot, Source: "node-a", Target: "node-b", SourceAddress: m.ta.Address}
}

// send sends req once, as the controller does: to the node the order is
// for, with a fresh capability for an import or a catch-up. An error (a
// node restarting) is Unknown.
func (m *movePair) send(req move.OrderRequest) (move.Progress, string) {
	m.t.Helper()
	node := req.Target
	switch req.Order {
	case move.OrderFence, move.OrderUnfence:
		node = req.Source
	case move.OrderImport, move.OrderCatchUp:
		c, err := transfer.OrderCapability(m.b.Signer, req, time.Now(), 5*time.Minute)
		if err != nil {
			m.t.Fatal(err)
		}
		req.Capability = c
	}
	if req.Order == move.OrderDrop && req.Source == "" {
		node = req.Target
	}
	p, msg, err := m.orders.Send(ctx, node, req)
	if err != nil {
		return move.Unknown, err.Error()
	}
	return p, msg
}

// dropAt sends a drop of req's move to node.
func (m *movePair) dropAt(node string, req move.OrderRequest) (move.Progress, string) {
	m.t.Helper()
	req.Order = move.OrderDrop
	p, msg, err := m.orders.Send(ctx, node, req)
	if err != nil {
		return move.Unknown, err.Error()
	}
	return p, msg
}

// until sends req until the node answers anything but Running (or no
// answer), as the controller repeats an order, and returns that answer.
func (m *movePair) until(req move.OrderRequest) (move.Progress, string) {
	m.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		p, msg := m.send(req)
		if p == move.Finished || p == move.Failed {
			return p, msg
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s still %q after a minute: %s", req.Order, p, msg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// mustFinish carries req out and fails the test unless it is Finished.
func (m *movePair) mustFinish(req move.OrderRequest) string {
	m.t.Helper()
	p, msg := m.until(req)
	if p != move.Finished {
		m.t.Fatalf("%s: %s %q, want Finished", req.Order, p, msg)
	}
	return msg
}

// mustFail carries req out and fails the test unless it is Failed with a
// message that says want.
func (m *movePair) mustFail(req move.OrderRequest, want string) {
	m.t.Helper()
	p, msg := m.until(req)
	if p != move.Failed || !strings.Contains(msg, want) {
		m.t.Fatalf("%s: %s %q, want Failed saying %q", req.Order, p, msg, want)
	}
}

// deviceSum is the SHA-256 of the first size bytes of a volume's data.
func deviceSum(t *testing.T, path string, size int64) string {
	t.Helper()
	return sh(t, "head -c "+strconv.FormatInt(size, 10)+" "+path+" | sha256sum")
}

// TestMoveVolume moves a staged ext4 volume from node-a to node-b as the
// controller does: a snapshot imported while the volume is in use, more
// written and the volume grown after it, the fence, the pod's stop, the
// catch-up, the copy staged on node-b with the same data, the source
// dropped. Every pool kind: a quota pool's tree is sent whole again by
// the catch-up.
func TestMoveVolume(t *testing.T) {
	m := startMovePair(t, "1G", 0)
	a, bn := m.a, m.bn
	quota := harness.Backend() == "quota"
	vc := fsCap()
	vol := a.create("moved", 64<<20, vc)
	id := vol.VolumeId
	staging, target := a.stagePublish(id, "moved", vc)
	sh(t, "head -c 8M /dev/urandom >"+target+"/first && sync")
	if quota {
		// A quota volume in use has no point-in-time copy: its pod stops
		// for the snapshot (docs/moving.md).
		a.unpublishUnstage(id, staging, target)
	}
	snap := a.mustSnapshot("moved-snap", id)
	if quota {
		staging, target = a.stagePublish(id, "moved", vc)
	}

	req := m.request("move-1", move.OrderImport, id, snap.SnapshotId)
	m.mustFinish(req)
	// The copy is incoming: nothing stages it on node-b.
	bStaging, _ := bn.paths("moved")
	if err := os.MkdirAll(bStaging, 0o750); err != nil {
		t.Fatal(err)
	}
	_, err := bn.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: bStaging, VolumeCapability: vc})
	wantCode(t, err, codes.Aborted, "staging the incoming copy")
	m.mustFinish(req) // again: the same answer

	// The pod goes on writing, and its volume grows, after the snapshot.
	sh(t, "head -c 4M /dev/urandom >"+target+"/second && dd if=/dev/urandom of="+target+"/first bs=1M seek=2 count=1 conv=notrunc,fsync status=none && sync")
	// Where this process cannot grow a mounted ext4, the device grows now
	// and the filesystem at the next stage: on node-b.
	if _, err := a.expand(id, target, 96<<20); err != nil && !strings.Contains(err.Error(), "grow offline") {
		t.Fatalf("NodeExpandVolume: %v", err)
	}
	want := sh(t, "cd "+target+" && sha256sum first second")

	fence := m.request("move-1", move.OrderFence, id, "")
	m.mustFinish(fence)
	_, other := a.paths("moved-again")
	if err := os.MkdirAll(filepath.Dir(other), 0o750); err != nil {
		t.Fatal(err)
	}
	_, err = a.nd.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: other, VolumeCapability: vc})
	wantCode(t, err, codes.FailedPrecondition, "publishing a fenced volume")
	a.unpublishUnstage(id, staging, target)
	_, err = a.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: vc})
	wantCode(t, err, codes.FailedPrecondition, "staging a fenced volume")
	m.mustFinish(fence) // again

	msg := m.mustFinish(m.request("move-1", move.OrderCatchUp, id, snap.SnapshotId))
	t.Logf("catch-up: %s", msg)
	size := int64(96 << 20)
	if quota {
		list := "sha256sum first second && find . ! -name lost+found -printf '%p %y %m %U:%G %n %s %T@\\n' | sort"
		if got, src := sh(t, "cd "+bn.storagePath(id)+" && "+list), sh(t, "cd "+a.storagePath(id)+" && "+list); got != src {
			t.Errorf("node-b's copy:\n%s\nnode-a's volume:\n%s", got, src)
		}
	} else if got, src := deviceSum(t, bn.storagePath(id), size), deviceSum(t, a.storagePath(id), size); got != src {
		t.Errorf("node-b's copy %s, node-a's volume %s", got, src)
	}
	_, bTarget := bn.stagePublish(id, "moved", vc)
	if got := sh(t, "cd "+bTarget+" && sha256sum first second"); got != want {
		t.Errorf("files on node-b:\n%s\nwant\n%s", got, want)
	}
	if got := fsSize(t, bTarget); !quota && got < 80<<20 {
		t.Errorf("node-b's filesystem has %d bytes; the volume grew to 96 MiB", got)
	}

	m.mustFinish(m.request("move-1", move.OrderCatchUp, id, snap.SnapshotId)) // again: complete already
	// node-b's copy is staged: a drop there is refused; node-a's goes.
	drop := m.request("move-1", move.OrderDrop, id, "")
	if p, msg := m.dropAt("node-b", drop); p != move.Failed || !strings.Contains(msg, "mounted") {
		t.Errorf("dropping the staged copy on node-b: %s %q, want Failed", p, msg)
	}
	if p, msg := m.dropAt("node-a", drop); p != move.Finished {
		t.Fatalf("dropping node-a's volume: %s %q", p, msg)
	}
	if _, err := os.Stat(a.storagePath(id)); !os.IsNotExist(err) {
		t.Errorf("node-a's volume is still there: %v", err)
	}
	if p, msg := m.dropAt("node-a", drop); p != move.Finished {
		t.Errorf("dropping node-a's volume again: %s %q", p, msg)
	}
}

// TestMoveRefusals: a catch-up of a volume that is not fenced, or is in
// use, is refused by the source; a fenced volume is not staged until it is
// unfenced; a drop deletes only the move's own copy.
func TestMoveRefusals(t *testing.T) {
	harness.RequireBackend(t, "image")
	m := startMovePair(t, "1G", 0)
	a, bn := m.a, m.bn
	id := a.create("refused", 16<<20, blockCap()).VolumeId
	sh(t, "head -c 4M /dev/urandom | dd of="+a.imagePath(id)+" bs=1M conv=notrunc,fsync status=none")
	snap := a.mustSnapshot("refused-snap", id)

	m.mustFinish(m.request("m1", move.OrderImport, id, snap.SnapshotId))
	m.mustFail(m.request("m1", move.OrderCatchUp, id, snap.SnapshotId), "not fenced")
	// Another move's drop leaves node-b's copy; this one's deletes it.
	if p, msg := m.dropAt("node-b", m.request("m0", move.OrderDrop, id, "")); p != move.Failed || !strings.Contains(msg, "not part of move") {
		t.Errorf("a drop of another move: %s %q, want Failed", p, msg)
	}
	m.mustFinish(m.request("m1", move.OrderDrop, id, ""))
	if _, err := os.Stat(bn.imagePath(id)); !os.IsNotExist(err) {
		t.Errorf("node-b's copy is still there after the drop: %v", err)
	}

	m.mustFinish(m.request("m2", move.OrderImport, id, snap.SnapshotId))
	staging, target := a.stagePublish(id, "refused", blockCap())
	m.mustFinish(m.request("m2", move.OrderFence, id, "")) // a running pod is not disturbed
	m.mustFail(m.request("m3", move.OrderFence, id, ""), "fenced by another move")
	m.mustFail(m.request("m2", move.OrderCatchUp, id, snap.SnapshotId), "in use")
	if p, msg := m.dropAt("node-a", m.request("m2", move.OrderDrop, id, "")); p != move.Failed {
		t.Errorf("dropping node-a's volume while it is published: %s %q, want Failed", p, msg)
	}
	a.unpublishUnstage(id, staging, target)
	_, err := a.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: blockCap()})
	wantCode(t, err, codes.FailedPrecondition, "staging a fenced volume")
	m.mustFinish(m.request("m2", move.OrderUnfence, id, ""))
	m.mustFinish(m.request("m2", move.OrderUnfence, id, "")) // again
	if _, err := a.nd.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: blockCap()}); err != nil {
		t.Errorf("staging the unfenced volume: %v", err)
	}
	if p, msg := m.dropAt("node-a", m.request("m2", move.OrderDrop, id, "")); p != move.Failed || !strings.Contains(msg, "not part of move") {
		t.Errorf("a drop of a volume no move holds: %s %q, want Failed", p, msg)
	}
	if _, err := os.Stat(a.imagePath(id)); err != nil {
		t.Errorf("node-a's volume: %v", err)
	}
	// An import into a pool this node does not have.
	other := strings.Replace(id, "default.", "fast.", 1)
	m.mustFail(m.request("m4", move.OrderImport, other, snap.SnapshotId), "no pool fast")
}

// waitUntil sends req, as the controller repeats it, until cond holds.
func (m *movePair) waitUntil(req move.OrderRequest, what string, cond func() bool) {
	m.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if p, msg := m.send(req); p == move.Finished || p == move.Failed {
			m.t.Fatalf("%s %s (%s) before %s", req.Order, p, msg, what)
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("no %s within a minute", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMoveImportRestarts restarts each node in the middle of an import;
// the order sent again converges: node-b's copy resumes at its last
// segment and is the snapshot.
func TestMoveImportRestarts(t *testing.T) {
	harness.RequireBackend(t, "image")
	m := startMovePair(t, "1G", 32<<20) // slow enough to cut in the middle
	a, bn := m.a, m.bn
	id := a.create("restarted", 128<<20, blockCap()).VolumeId
	sh(t, "head -c 120M /dev/urandom | dd of="+a.imagePath(id)+" bs=1M conv=notrunc,fsync status=none")
	snap := a.mustSnapshot("restarted-snap", id)
	want := deviceSum(t, a.imagePath(id), 128<<20)
	meta := filepath.Join(m.envB.Pools["default"], strings.TrimPrefix(id, "default.")+".json")

	imp := m.request("move-r", move.OrderImport, id, snap.SnapshotId)
	m.waitUntil(imp, "data at node-b", func() bool { return nonZeroAt(t, bn.imagePath(id), 8<<20) })
	m.restartA() // the source, in the middle
	m.waitUntil(imp, "a segment committed", func() bool { return incomingNext(t, meta) >= 64<<20 })
	m.restartB() // the target, after a segment
	at := incomingNext(t, meta)
	if at < 64<<20 || at >= 128<<20 {
		t.Fatalf("after the cut node-b holds %d bytes, want at least one segment and not all", at)
	}
	m.mustFinish(imp)
	if got := received(t, m.regB); got > float64(120<<20-at) {
		t.Errorf("the resumed import received %.0f data bytes; only %d were left after byte %d", got, 120<<20-at, at)
	}
	if got := deviceSum(t, bn.imagePath(id), 128<<20); got != want {
		t.Errorf("node-b's copy %s, the snapshot %s", got, want)
	}
}

// TestMoveCatchUpRestarts restarts each node in the middle of a catch-up;
// the order sent again starts it over, and node-b's copy ends up node-a's
// volume, and usable.
func TestMoveCatchUpRestarts(t *testing.T) {
	harness.RequireBackend(t, "image")
	m := startMovePair(t, "1G", 0)
	a, bn := m.a, m.bn
	id := a.create("caught", 128<<20, blockCap()).VolumeId
	sh(t, "head -c 32M /dev/urandom | dd of="+a.imagePath(id)+" bs=1M conv=notrunc,fsync status=none")
	snap := a.mustSnapshot("caught-snap", id)
	m.mustFinish(m.request("move-c", move.OrderImport, id, snap.SnapshotId))

	// Changes after the snapshot: new data, and data overwritten; sent
	// slowly enough to cut in the middle.
	sh(t, "head -c 80M /dev/urandom | dd of="+a.imagePath(id)+" bs=1M seek=40 conv=notrunc,fsync status=none")
	sh(t, "head -c 8M /dev/urandom | dd of="+a.imagePath(id)+" bs=1M conv=notrunc,fsync status=none")
	m.ta.Bandwidth = 24 << 20
	m.restartA()
	m.mustFinish(m.request("move-c", move.OrderFence, id, ""))
	cu := m.request("move-c", move.OrderCatchUp, id, snap.SnapshotId)
	m.waitUntil(cu, "changes at node-b", func() bool { return nonZeroAt(t, bn.imagePath(id), 44<<20) })
	m.restartB() // the target
	m.waitUntil(cu, "changes at node-b again", func() bool { return nonZeroAt(t, bn.imagePath(id), 50<<20) })
	m.restartA() // the source
	m.mustFinish(cu)
	if got, want := deviceSum(t, bn.imagePath(id), 128<<20), deviceSum(t, a.imagePath(id), 128<<20); got != want {
		t.Errorf("node-b's copy %s, node-a's volume %s", got, want)
	}
	staging, target := bn.stagePublish(id, "caught", blockCap())
	bn.unpublishUnstage(id, staging, target)
}

// nonZeroAt tells whether the 4 KiB at off in path hold anything but
// zeros: where a volume has only random data, whether it has been written.
func nonZeroAt(t *testing.T, path string, off int64) bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	b := make([]byte, 4096)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(b, func(c byte) bool { return c != 0 })
}

// TestMoveDropWhileImporting rolls a move back in the middle of its
// import: the drop ends the fetch and deletes the incoming copy, and
// nothing of it is left on node-b.
func TestMoveDropWhileImporting(t *testing.T) {
	harness.RequireBackend(t, "image")
	m := startMovePair(t, "1G", 16<<20)
	a, bn := m.a, m.bn
	id := a.create("dropped", 128<<20, blockCap()).VolumeId
	sh(t, "head -c 96M /dev/urandom | dd of="+a.imagePath(id)+" bs=1M conv=notrunc,fsync status=none")
	snap := a.mustSnapshot("dropped-snap", id)
	imp := m.request("move-d", move.OrderImport, id, snap.SnapshotId)
	m.waitUntil(imp, "data at node-b", func() bool { return nonZeroAt(t, bn.imagePath(id), 4<<20) })
	m.mustFinish(m.request("move-d", move.OrderDrop, id, ""))
	for _, suffix := range []string{".img", ".json"} {
		if _, err := os.Stat(strings.TrimSuffix(bn.imagePath(id), ".img") + suffix); !os.IsNotExist(err) {
			t.Errorf("node-b's incoming copy (%s) is still there: %v", suffix, err)
		}
	}
	if _, err := bn.ctl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id}); err == nil {
		t.Error("node-b still knows the volume")
	}
	if _, err := os.Stat(a.imagePath(id)); err != nil {
		t.Errorf("node-a's volume: %v", err)
	}
}
