package fault

import (
	"bytes"
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/test/harness"
)

// Two nodes. With image pools a second flashpv, node-b, runs beside node-a,
// and both ask a broker served by this test for their certificates and
// capabilities (the real broker server and signer; the Kubernetes checks
// are a table, see harness.Broker). Now and then an operation copies a
// snapshot of node-a (a remote restore) or a volume of node-a that is not
// staged (a remote clone) into a new volume of node-b, as node-b's
// provisioner does: CreateVolume with the claim's name, retried with the
// same name until it answers. Kills hit either side at a random moment of
// the call. The copy must equal its source byte for byte and hold its data
// when staged and published on node-b; a later operation deletes it.
// Only image runs have node-b: the lvm and quota runs are short runs in
// VMs, where a second driver's restarts cost more, and quota pools refuse
// transfers by design.

const (
	// remoteCreate is how a CreateVolume that copies from node-a is
	// counted, learned and reported.
	remoteCreate = "CreateVolume(remote)"
	// remoteShare is the percentage of operations that are remote.
	remoteShare = 4
	// maxCopies bounds node-b's copies kept at once.
	maxCopies = 2
	// transferRate (--transfer-bandwidth) makes copies of a few tens of
	// MiB take long enough to be killed inside, and no longer.
	transferRate = 64 * mib
)

// copyStats count what the two-node operations did.
type copyStats struct {
	restores, clones, deletes, compared int
	// midway counts, per node killed, kills that left the copy's data
	// partly committed (incoming, next > 0); resumable the copies from a
	// snapshot one of these left, whose retry must go on from there;
	// resumed those whose retry was seen (in node-b's log) doing so.
	midway             map[string]int
	resumable, resumed int
	servedDeleted      int // snapshots deleted after serving copies
}

// twoNodes tells whether the run has node-b.
func (r *run) twoNodes() bool { return r.cfg.backend == "image" }

// setupPeer starts the broker and makes node-b.
func (r *run) setupPeer(runDir string) {
	logToFile(r.t, filepath.Join(runDir, "broker.log"))
	r.broker = harness.StartBroker(r.t)
	r.stats.copies.midway = map[string]int{}
	r.node.transfer = r.transferFlags(r.node.name)
	r.peer = r.newNode("node-b", "2G", filepath.Join(runDir, "driver-node-b.log"))
	r.peer.transfer = r.transferFlags(r.peer.name)
}

// transferFlags are a node's --transfer-* flags: the broker's URL, the
// token and trust directory it hands out, a free port to serve on.
func (r *run) transferFlags(name string) []string {
	o := r.broker.Node(r.t, name)
	return []string{
		"--transfer-address", o.Address, "--transfer-broker", o.Broker, "--transfer-broker-name", "localhost",
		"--transfer-token-file", o.TokenFile, "--transfer-trust-dir", o.TrustDir,
		"--transfer-bandwidth", strconv.Itoa(transferRate), "--transfer-abandon-after", "5m",
	}
}

// logToFile sends klog's and the log package's output, which are the
// broker's in this process, to a file of the run rather than to the test's
// output.
func logToFile(t *testing.T, path string) {
	f, err := openLog(path)
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	for k, v := range map[string]string{"logtostderr": "false", "alsologtostderr": "false", "stderrthreshold": "FATAL"} {
		if err := fs.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	klog.SetOutput(f)
	log.SetOutput(f) // the broker's http.Server's own errors
	t.Cleanup(func() {
		klog.Flush()
		klog.SetOutput(io.Discard)
		log.SetOutput(os.Stderr)
		f.Close()
	})
}

// createRPC is how a CreateVolume of v is counted: a copy from another
// node apart.
func (r *run) createRPC(v *volume) string {
	if v.source != nil && r.on(v) != r.node {
		return remoteCreate
	}
	return "CreateVolume"
}

// victim is the node a kill in this attempt of rpc on v hits: in a
// transfer either side, drawn every time so that the draws do not depend
// on whether a kill is planned.
func (r *run) victim(rpc string, v *volume, tr trigger) *node {
	n := r.on(v)
	if rpc != remoteCreate {
		return n
	}
	if r.killRng.IntN(2) == 0 && tr.kind != noKill {
		return r.node
	}
	return n
}

// afterKill notes, after a kill inside a transfer, how far the copy got:
// a retry from a snapshot must resume there.
func (r *run) afterKill(rpc string, v *volume, victim *node) {
	if rpc != remoteCreate {
		return
	}
	n := r.on(v)
	next, ok := incomingNext(filepath.Join(n.poolDir, pool.KeyForName(v.name)+".json"))
	if !ok || next == 0 {
		return
	}
	r.stats.copies.midway[victim.name]++
	r.event("op %d: %s holds %d MiB of its data, committed", r.opNum, v.name, next/mib)
	if v.source.GetSnapshot() != nil {
		r.resumeFrom = max(r.resumeFrom, next)
	}
}

// checkTransferError fails the run on an attempt of a transfer that ends
// in another error than docs/transfer.md promises for a cut: Aborted when
// either side was killed or was still starting, Unavailable when the
// connection to the side called was lost.
func (r *run) checkTransferError(rpc string, v *volume, err error) {
	if rpc != remoteCreate || err == nil {
		return
	}
	switch status.Code(err) {
	case codes.Aborted, codes.Unavailable:
		return
	}
	r.failf(v, "%s: %v (want Aborted or Unavailable for a transfer cut short)", rpc, err)
}

// remoteStep is, now and then, an operation across the nodes instead of
// one on a slot: a copy deleted on node-b, or a new copy made there (after
// a delete when node-b has enough). ok is false when it is not its turn.
func (r *run) remoteStep() (did string, ok bool) {
	if r.peer == nil || r.opRng.IntN(100) >= remoteShare {
		return "", false
	}
	roll := r.opRng.IntN(100)
	live := slices.DeleteFunc(slices.Clone(r.copies), func(c *volume) bool { return c.stuck != "" })
	var done []string
	if len(live) >= maxCopies || (len(live) > 0 && roll < 20) {
		done = append(done, r.deleteCopy(live[r.opRng.IntN(len(live))]))
		if roll < 20 {
			return strings.Join(done, ", "), true
		}
	}
	done = append(done, r.makeCopy())
	return strings.Join(done, ", "), true
}

// makeCopy copies a snapshot or an unstaged volume of node-a to node-b.
func (r *run) makeCopy() string {
	var vols []*volume
	for _, v := range r.vols {
		if v.state == created && v.stuck == "" {
			vols = append(vols, v)
		}
	}
	pick := r.opRng.IntN(1 << 30)
	switch {
	case len(r.snaps) > 0 && (len(vols) == 0 || pick%2 == 0):
		s := r.snaps[(pick/2)%len(r.snaps)]
		c := r.newCopy(s.kind, s.size, s.files, s.blocks, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: s.id}}})
		s.copies++
		if r.copyFrom(c, s.id, keyOf(s.id)+".snap") {
			r.stats.copies.restores++
		}
		return "remote restore of " + s.name + " to " + c.String()
	case len(vols) > 0:
		v := vols[(pick/2)%len(vols)]
		c := r.newCopy(v.kind, v.size, v.files, v.blocks, &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.id}}})
		c.formatted = v.formatted
		if r.copyFrom(c, v.id, keyOf(v.id)+".img") {
			r.stats.copies.clones++
		}
		return "remote clone of " + v.name + " to " + c.String()
	}
	return "remote: nothing on node-a to copy"
}

// newCopy is node-b's new claim from a source of node-a: at the source's
// size or bigger, with the parameters csi-provisioner's
// --extra-create-metadata adds.
func (r *run) newCopy(kind string, size int64, files []fileRecord, blocks map[int64]uint64, src *csi.VolumeContentSource) *volume {
	r.copyGen++
	name := fmt.Sprintf("pvc-%x-b-%d", r.cfg.seed&0xffffff, r.copyGen)
	return &volume{n: r.peer, slot: r.copyGen, name: name, kind: kind, initial: size, size: size + int64(r.opRng.IntN(2))*32*mib,
		files: slices.Clone(files), blocks: maps.Clone(blocks), formatted: true, source: src,
		params: map[string]string{"csi.storage.k8s.io/pvc/name": "claim-" + name, "csi.storage.k8s.io/pvc/namespace": "fault"}}
}

// copyFrom makes copy c on node-b from source (its file in node-a's pool
// is srcFile) and checks it: byte for byte against the source, then
// staged and published on node-b with its data checked, and taken down
// again. It reports whether the copy was made.
func (r *run) copyFrom(c *volume, source, srcFile string) bool {
	r.broker.Locate(source, r.node.name)
	r.resumeFrom, r.logFrom = 0, logSize(r.peer)
	// Kills are aimed anywhere in this copy's transfer: an average learned
	// over copies of 1 to 40 MiB would fit none of them.
	r.transferTime = 50*time.Millisecond + time.Duration(dataBytes(c))*time.Second/transferRate
	r.copies = append(r.copies, c)
	start := time.Now()
	r.create(c)
	if c.state != created {
		return false // stuck, and a failure already
	}
	r.event("op %d: %s made in %v", r.opNum, c.name, time.Since(start).Round(time.Millisecond))
	r.checkResumed(c)
	start = time.Now()
	defer func() { r.event("op %d: %s checked in %v", r.opNum, c.name, time.Since(start).Round(time.Millisecond)) }()
	if err := sameContent(filepath.Join(r.node.poolDir, srcFile), filepath.Join(r.peer.poolDir, keyOf(c.id)+".img")); err != nil {
		r.failf(c, "the copy of %s differs from its source: %v", source, err)
	} else {
		r.stats.copies.compared++
	}
	for _, step := range []func(*volume){r.stage, r.publish, r.unpublish, r.unstage} {
		if c.stuck != "" {
			break
		}
		step(c)
	}
	return true
}

// dataBytes is how much data the test wrote to v.
func dataBytes(v *volume) int64 {
	n := int64(len(v.blocks)) * blockSize
	for _, f := range v.files {
		n += int64(f.bytes())
	}
	return n
}

// deleteCopy deletes one of node-b's copies, as its claim's deletion does.
func (r *run) deleteCopy(c *volume) string {
	did := "delete copy " + c.String()
	r.deleteVolume(c)
	if c.stuck == "" {
		r.copies = slices.DeleteFunc(r.copies, func(o *volume) bool { return o == c })
		r.stats.copies.deletes++
	}
	return did
}

// received matches node-b's log line for a finished transfer.
var received = regexp.MustCompile(`"Volume data received from another node" volumeID="([^"]+)".* from=(\d+)`)

// checkResumed checks, when an earlier attempt of c's CreateVolume had
// committed data from a snapshot, that the attempt that finished went on
// from there rather than from the start.
func (r *run) checkResumed(c *volume) {
	if r.resumeFrom == 0 {
		return
	}
	r.stats.copies.resumable++
	data, err := os.ReadFile(r.peer.driverLog.Name())
	if err != nil || int64(len(data)) < r.logFrom {
		r.fatal(fmt.Errorf("reading node-b's log: %v", err))
	}
	from := int64(-1)
	for _, line := range strings.Split(string(data[r.logFrom:]), "\n") {
		if m := received.FindStringSubmatch(line); m != nil && m[1] == c.id {
			from, _ = strconv.ParseInt(m[2], 10, 64)
		}
	}
	switch {
	case from < 0:
		r.event("op %d: node-b's log does not say where the transfer of %s resumed", r.opNum, c.name)
	case from < r.resumeFrom:
		r.failf(c, "the transfer started again at byte %d after an attempt had committed %d bytes of the same snapshot", from, r.resumeFrom)
	default:
		r.stats.copies.resumed++
	}
}

// logSize is how much a node's log holds now.
func logSize(n *node) int64 {
	st, err := n.driverLog.Stat()
	if err != nil {
		return 0
	}
	return st.Size()
}

// keyOf is the key of a volume or snapshot ID ("default.KEY").
func keyOf(id string) string {
	_, key, _ := strings.Cut(id, ".")
	return key
}

// sameContent checks that dst holds what src holds, and zeros past src's
// end: a copy at least its source's size. Only where either file has data
// is read: elsewhere both read as zeros.
func sameContent(src, dst string) error {
	a, err := os.Open(src)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := os.Open(dst)
	if err != nil {
		return err
	}
	defer b.Close()
	ia, err := a.Stat()
	if err != nil {
		return err
	}
	ib, err := b.Stat()
	if err != nil {
		return err
	}
	if ib.Size() < ia.Size() {
		return fmt.Errorf("%d bytes, its source %d", ib.Size(), ia.Size())
	}
	ra, err := dataRanges(a, ia.Size())
	if err != nil {
		return err
	}
	rb, err := dataRanges(b, ib.Size())
	if err != nil {
		return err
	}
	const chunk = 1 << 20
	want, got := make([]byte, chunk), make([]byte, chunk)
	for _, rg := range union(ra, rb) {
		for off := rg[0]; off < rg[1]; off += chunk {
			n := int(min(chunk, rg[1]-off))
			clear(want)
			if _, err := a.ReadAt(want[:n], off); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if _, err := b.ReadAt(got[:n], off); err != nil {
				return err
			}
			if bytes.Equal(want[:n], got[:n]) {
				continue
			}
			for i := 0; i < n; i += 4096 {
				if j := min(i+4096, n); !bytes.Equal(want[i:j], got[i:j]) {
					return fmt.Errorf("the 4 KiB block at byte %d differs (source size %d)", off+int64(i), ia.Size())
				}
			}
		}
	}
	return nil
}

// dataRanges lists where f has data (SEEK_DATA), in 4 KiB blocks.
func dataRanges(f *os.File, size int64) ([][2]int64, error) {
	var out [][2]int64
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("SEEK_DATA in %s: %w", f.Name(), err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("SEEK_HOLE in %s: %w", f.Name(), err)
		}
		out = append(out, [2]int64{start &^ 4095, min(end, size)})
		off = end
	}
	return out, nil
}

// union merges two sorted lists of ranges.
func union(a, b [][2]int64) [][2]int64 {
	all := slices.SortedFunc(slices.Values(append(slices.Clone(a), b...)), func(x, y [2]int64) int { return cmp.Compare(x[0], y[0]) })
	var out [][2]int64
	for _, rg := range all {
		if n := len(out); n > 0 && rg[0] <= out[n-1][1] {
			out[n-1][1] = max(out[n-1][1], rg[1])
			continue
		}
		out = append(out, rg)
	}
	return out
}

// reportCopies adds what the two-node operations did to the report.
func (r *run) reportCopies(b *strings.Builder) {
	s := r.stats
	c := s.copies
	fmt.Fprintf(b, "\ntwo nodes (transfers at %d MiB/s): %d copies made on node-b (%d remote restores, %d remote clones), %d compared byte for byte with their source, %d deleted\n",
		transferRate/mib, c.restores+c.clones, c.restores, c.clones, c.compared, c.deletes)
	fmt.Fprintf(b, "%s kills: node-a %d, node-b %d\n", remoteCreate, s.sides[remoteCreate][r.node.name], s.sides[remoteCreate][r.peer.name])
	fmt.Fprintf(b, "kills that left a copy with data committed: after node-a %d, after node-b %d; from a snapshot %d, retries seen resuming there %d\n",
		c.midway[r.node.name], c.midway[r.peer.name], c.resumable, c.resumed)
	fmt.Fprintf(b, "snapshots deleted after serving copies: %d\n", c.servedDeleted)
	fmt.Fprintf(b, "kills by node:")
	for _, rpc := range slices.Sorted(maps.Keys(s.sides)) {
		fmt.Fprintf(b, " %s %d/%d", rpc, s.sides[rpc][r.node.name], s.sides[rpc][r.peer.name])
	}
	b.WriteString(" (node-a/node-b)\n")
}
