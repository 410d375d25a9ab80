//go:build powerloss

package powerloss

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// maxWorkload bounds a boot's workload: the host cuts the power long
// before; a workload that ends by itself fails the run.
const maxWorkload = 5 * time.Minute

// workload is what runs in every pool until the power goes: a writer
// appending records to a file in a published Filesystem volume, one
// writing them to a published Block volume, and CSI calls (create, stage,
// publish, expand, snapshot, restore, delete) one after the other.
type workload struct {
	t   *testing.T
	em  *emitter
	drv *flashpv
	g   guestEnv
}

func newWorkload(t *testing.T, em *emitter, drv *flashpv, g guestEnv) *workload {
	return &workload{t: t, em: em, drv: drv, g: g}
}

func (w *workload) run() {
	ctx, cancel := context.WithTimeout(context.Background(), maxWorkload)
	defer cancel()
	w.em.progress("start", "workload of boot %d", w.g.boot)
	var wg, ready sync.WaitGroup
	ready.Add(len(pools))
	all := make(chan struct{})
	for i, p := range pools {
		rng := rand.New(rand.NewPCG(w.g.seed, uint64(w.g.boot)<<8|uint64(i)))
		wg.Go(func() { w.pool(ctx, p, p.kinds[w.g.boot%len(p.kinds)], rng, ready.Done, all) })
	}
	// The host draws the cut's moment from here: every pool has its
	// writers going, and its calls start. The pools start their calls
	// together: the fast ones would leave the lvm pools little of the
	// emulated CPUs to come up with.
	ready.Wait()
	w.em.progress("ready", "writers running in every pool")
	close(all)
	wg.Wait()
	if ctx.Err() != nil {
		w.t.Errorf("the workload ran %v and no power cut came", maxWorkload)
	}
}

// failf reports a failed call of the workload: without faults every call
// must succeed.
func (w *workload) failf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	w.em.progress("fail", "%s", msg)
	w.t.Error(msg)
}

func (w *workload) create(ev event) (string, bool) {
	ev.Op = "create"
	seq := w.em.call(ev)
	var resp *csi.CreateVolumeResponse
	err := retry(func(ctx context.Context) (err error) {
		resp, err = w.drv.ctl.CreateVolume(ctx, createRequest(ev))
		return err
	})
	if err != nil {
		w.failf("CreateVolume %s: %v", ev.Name, err)
		return "", false
	}
	id := resp.GetVolume().GetVolumeId()
	w.em.ack(seq, event{Op: "create", ID: id})
	return id, true
}

// up creates a volume, stages and publishes it.
func (w *workload) up(ev event) (string, bool) {
	id, ok := w.create(ev)
	if !ok {
		return "", false
	}
	if err := w.drv.stage(id, ev.Name, ev.Kind); err != nil {
		w.failf("NodeStageVolume %s: %v", ev.Name, err)
		return "", false
	}
	if err := w.drv.publish(id, ev.Name, ev.Kind); err != nil {
		w.failf("NodePublishVolume %s: %v", ev.Name, err)
		return "", false
	}
	return id, true
}

func (w *workload) pool(ctx context.Context, p poolDef, kind string, rng *rand.Rand, ready func(), all <-chan struct{}) {
	readyOnce := sync.OnceFunc(ready)
	defer readyOnce()
	// The Block volume's writer comes up beside the other.
	blockReady := make(chan struct{})
	defer func() { <-blockReady }()
	if !p.block {
		close(blockReady)
	} else {
		go func() {
			defer close(blockReady)
			bname := fmt.Sprintf("b%d-%s-wb", w.g.boot, p.name)
			if bid, ok := w.up(event{Pool: p.name, Name: bname, Kind: "block", Size: initialSize("block")}); ok {
				bw := &writer{w: w, id: bid, tag: volumeTag(bname)}
				go bw.block(targetPath(bname, "block"), initialSize("block"))
			}
		}()
	}
	name := fmt.Sprintf("b%d-%s-w", w.g.boot, p.name)
	ev := event{Pool: p.name, Name: name, Kind: kind, Size: initialSize(kind)}
	wid, ok := w.up(ev)
	if !ok {
		return
	}
	fsw := &writer{w: w, id: wid, tag: volumeTag(name)}
	go fsw.file(filepath.Join(targetPath(name, kind), "records"), -1)
	src := snapSource{ev: ev, id: wid, w: fsw}
	if strings.HasPrefix(p.arg, "quota:") {
		// A quota pool cannot freeze a directory in use for a
		// point-in-time copy: its snapshots are of a volume taken down
		// after a few records.
		src.ev = event{Pool: p.name, Name: fmt.Sprintf("b%d-%s-src", w.g.boot, p.name), Kind: kind, Size: initialSize(kind)}
		if src.id, ok = w.up(src.ev); !ok {
			return
		}
		src.w = &writer{w: w, id: src.id, tag: volumeTag(src.ev.Name)}
		if !src.w.file(filepath.Join(targetPath(src.ev.Name, kind), "records"), 8) {
			return
		}
		if err := w.drv.release(src.id, src.ev.Name, kind); err != nil {
			w.failf("taking %s down: %v", src.ev.Name, err)
			return
		}
	}
	<-blockReady
	readyOnce()
	<-all
	// Two lanes of calls at once, so that whenever the cut comes both
	// kinds are under way.
	var lanes sync.WaitGroup
	lanes.Go(func() {
		for r := 0; ctx.Err() == nil && w.volumeRound(p, r, rng); r++ {
		}
	})
	lanes.Go(func() {
		prev := ""
		for r := 0; ctx.Err() == nil; r++ {
			if prev = w.snapshotRound(p, r, src, prev); prev == "" {
				return
			}
		}
	})
	lanes.Wait()
}

// volumeRound creates a volume, stages, publishes and grows it, appends a
// few records, takes it down and deletes it. It reports success.
func (w *workload) volumeRound(p poolDef, r int, rng *rand.Rand) bool {
	kinds := p.kinds
	if p.block {
		kinds = append(kinds, "block")
	}
	kind := kinds[rng.IntN(len(kinds))]
	v := event{Pool: p.name, Name: fmt.Sprintf("b%d-%s-v%d", w.g.boot, p.name, r), Kind: kind, Size: initialSize(kind)}
	vid, ok := w.up(v)
	if !ok {
		return false
	}
	size := v.Size + expandStep
	seq := w.em.call(event{Op: "expand", Name: v.Name, ID: vid, Size: size})
	err := retry(func(ctx context.Context) error {
		_, err := w.drv.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{VolumeId: vid, VolumePath: targetPath(v.Name, kind),
			StagingTargetPath: stagingPath(v.Name, kind), CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapability: capability(kind)})
		return err
	})
	if err != nil {
		w.failf("NodeExpandVolume %s: %v", v.Name, err)
		return false
	}
	w.em.ack(seq, event{Op: "expand"})
	vw := &writer{w: w, id: vid, tag: volumeTag(v.Name)}
	if kind != "block" && !vw.file(filepath.Join(targetPath(v.Name, kind), "records"), 8) {
		return false
	}
	return w.down(v.Name, vid, kind)
}

// down takes a volume down and deletes it.
func (w *workload) down(name, id, kind string) bool {
	if err := w.drv.release(id, name, kind); err != nil {
		w.failf("taking %s down: %v", name, err)
		return false
	}
	seq := w.em.call(event{Op: "delete", Name: name, ID: id})
	if err := w.drv.deleteVolume(id); err != nil {
		w.failf("DeleteVolume %s: %v", name, err)
		return false
	}
	w.em.ack(seq, event{Op: "delete"})
	return true
}

// snapSource is the volume a pool's snapshots are taken of.
type snapSource struct {
	ev event
	id string
	w  *writer
}

// snapshotRound snapshots the source, restores the snapshot into a new
// volume and checks its records, deletes the restore and the previous
// round's snapshot. It returns the snapshot it leaves, "" after a failure.
func (w *workload) snapshotRound(p poolDef, r int, src snapSource, prevSnap string) string {
	sname := fmt.Sprintf("b%d-%s-s%d", w.g.boot, p.name, r)
	recs := int(src.w.acked.Load())
	seq := w.em.call(event{Op: "snap", Pool: p.name, Name: sname, Src: src.id, Recs: recs})
	var sresp *csi.CreateSnapshotResponse
	err := retry(func(ctx context.Context) (err error) {
		sresp, err = w.drv.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: sname, SourceVolumeId: src.id})
		return err
	})
	if err != nil {
		w.failf("CreateSnapshot %s: %v", sname, err)
		return ""
	}
	sid := sresp.GetSnapshot().GetSnapshotId()
	w.em.ack(seq, event{Op: "snap", ID: sid})

	rv := event{Pool: p.name, Name: fmt.Sprintf("b%d-%s-r%d", w.g.boot, p.name, r), Kind: src.ev.Kind, Size: src.ev.Size, Snap: sid, Recs: recs}
	rid, ok := w.up(rv)
	if !ok {
		return ""
	}
	if recs > 0 {
		if _, err := verifyRecords(filepath.Join(targetPath(rv.Name, rv.Kind), "records"), src.w.tag, recs); err != nil {
			w.failf("restore %s of snapshot %s: %v", rv.Name, sname, err)
		}
	}
	if !w.down(rv.Name, rid, rv.Kind) {
		return ""
	}
	if prevSnap != "" {
		name := fmt.Sprintf("b%d-%s-s%d", w.g.boot, p.name, r-1)
		seq := w.em.call(event{Op: "delsnap", Name: name, ID: prevSnap})
		if err := w.drv.deleteSnapshot(prevSnap); err != nil {
			w.failf("DeleteSnapshot %s: %v", name, err)
			return ""
		}
		w.em.ack(seq, event{Op: "delsnap"})
	}
	return sid
}

// writer appends records to a volume, each made durable (fsync) before it
// is acknowledged.
type writer struct {
	w     *workload
	id    string
	tag   uint64
	acked atomic.Int64
}

// pace leaves the emulated CPUs to the calls.
const pace = 50 * time.Millisecond

// file appends n records (n < 0: until it fails) and reports whether
// all were written.
func (wr *writer) file(path string, n int) bool {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		wr.w.failf("writer of %s: %v", wr.id, err)
		return false
	}
	defer f.Close()
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	b := make([]byte, recSize)
	for seq := 0; seq != n; seq++ {
		fillRecord(b, wr.tag, seq)
		if _, err := f.Write(b); err != nil {
			wr.w.failf("writer of %s: record %d: %v", wr.id, seq, err)
			return false
		}
		if err := f.Sync(); err != nil {
			wr.w.failf("writer of %s: fsync of record %d: %v", wr.id, seq, err)
			return false
		}
		wr.acked.Store(int64(seq + 1))
		wr.w.em.emit(event{Ev: "ack", Op: "rec", ID: wr.id, Recs: seq + 1})
		time.Sleep(pace)
	}
	return true
}

// block writes records with O_DIRECT to a Block volume's device, and
// flushes the device's cache after each.
func (wr *writer) block(path string, size int64) {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		wr.w.failf("writer of %s: %v", wr.id, err)
		return
	}
	buf := make([]byte, 2*recSize)
	off := int(uintptr(unsafe.Pointer(&buf[0])) & (recSize - 1))
	b := buf[recSize-off : 2*recSize-off] // aligned for O_DIRECT
	for seq := 0; int64(seq+1)*recSize <= size; seq++ {
		fillRecord(b, wr.tag, seq)
		if _, err := f.WriteAt(b, int64(seq)*recSize); err != nil {
			wr.w.failf("writer of %s: record %d: %v", wr.id, seq, err)
			return
		}
		if err := f.Sync(); err != nil {
			wr.w.failf("writer of %s: flush after record %d: %v", wr.id, seq, err)
			return
		}
		wr.acked.Store(int64(seq + 1))
		wr.w.em.emit(event{Ev: "ack", Op: "rec", ID: wr.id, Recs: seq + 1})
		time.Sleep(pace)
	}
}
