//go:build powerloss

package powerloss

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// vol is what the previous boot's events say of one volume.
type vol struct {
	create   event // the create call
	acked    bool  // its CreateVolume returned
	deleting bool  // its DeleteVolume was called
	deleted  bool  // its DeleteVolume returned
	size     int64 // the largest size an acknowledged expansion asked for
	recs     int   // records whose fsync returned (a writer's volume)
	wantRecs int   // records a restore must hold
}

// snap is what they say of one snapshot.
type snap struct {
	create   event
	acked    bool
	deleting bool
	deleted  bool
}

// history is the previous boot's events, by name.
type history struct {
	vols  map[string]*vol
	snaps map[string]*snap
	byID  map[string]string // volume and snapshot IDs to names
}

func readHistory(path string) (*history, error) {
	h := &history{vols: map[string]*vol{}, snaps: map[string]*snap{}, byID: map[string]string{}}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	calls := map[int]event{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		ev, ok := parseEvent(sc.Text())
		if !ok {
			continue
		}
		if ev.Ev == "call" {
			calls[ev.Seq] = ev
		}
		h.apply(ev, calls[ev.Seq])
	}
	return h, sc.Err()
}

// apply takes in one event; call is the call line of an ack.
func (h *history) apply(ev, call event) {
	switch {
	case ev.Op == "create" && ev.Ev == "call":
		h.vols[ev.Name] = &vol{create: ev, size: ev.Size, wantRecs: ev.Recs}
		h.byID[idFor(ev.Pool, ev.Name)] = ev.Name
	case ev.Op == "create" && ev.Ev == "ack":
		h.vols[call.Name].acked = true
	case ev.Op == "delete" && ev.Ev == "call":
		h.vols[ev.Name].deleting = true
	case ev.Op == "delsnap" && ev.Ev == "call":
		h.snaps[ev.Name].deleting = true
	case ev.Op == "delete" && ev.Ev == "ack":
		h.vols[call.Name].deleted = true
	case ev.Op == "expand" && ev.Ev == "ack":
		v := h.vols[call.Name]
		v.size = max(v.size, call.Size)
	case ev.Op == "rec" && ev.Ev == "ack":
		h.vols[h.byID[ev.ID]].recs = max(h.vols[h.byID[ev.ID]].recs, ev.Recs)
	case ev.Op == "snap" && ev.Ev == "call":
		h.snaps[ev.Name] = &snap{create: ev}
		h.byID[idFor(ev.Pool, ev.Name)] = ev.Name
	case ev.Op == "snap" && ev.Ev == "ack":
		h.snaps[call.Name].acked = true
	case ev.Op == "delsnap" && ev.Ev == "ack":
		h.snaps[call.Name].deleted = true
	}
}

// checker runs the checks of a boot after a power cut.
type checker struct {
	t    *testing.T
	em   *emitter
	drv  *flashpv
	h    *history
	caps map[string]int64 // listed volumes' capacities
	// figures for the report
	listed                                int
	checked, leftovers, records, restores atomic.Int64
}

func (c *checker) failf(format string, args ...any) {
	c.t.Helper()
	msg := fmt.Sprintf(format, args...)
	c.em.progress("fail", "%s", msg)
	c.t.Error(msg)
}

func (c *checker) run(prev string) {
	h, err := readHistory(prev)
	if err != nil {
		c.t.Fatalf("the previous boot's events: %v", err)
	}
	c.h = h
	c.compareLists()
	// The pools are independent: one goroutine each.
	var wg sync.WaitGroup
	for _, p := range pools {
		wg.Go(func() {
			c.finishInFlight(p.name)
			c.checkSnapshots(p.name)
			c.checkVolumes(p.name)
			c.deleteAll(p.name)
		})
	}
	wg.Wait()
	c.checkEmpty()
	c.em.progress("check", "listed %d, checked %d (stage, publish, contents, fsck), in-flight leftovers %d, records verified %d, restores %d, unpublishes retried as busy %d",
		c.listed, c.checked.Load(), c.leftovers.Load(), c.records.Load(), c.restores.Load(), c.drv.busy.Load())
}

// compareLists: every acknowledged volume and snapshot is listed, none
// whose deletion was acknowledged is.
func (c *checker) compareLists() {
	caps, err := c.drv.listVolumes()
	if err != nil {
		c.t.Fatalf("ListVolumes: %v", err)
	}
	snaps, err := c.drv.listSnapshots()
	if err != nil {
		c.t.Fatalf("ListSnapshots: %v", err)
	}
	c.caps = caps
	c.listed = len(caps) + len(snaps)
	for _, name := range slices.Sorted(maps.Keys(c.h.vols)) {
		v := c.h.vols[name]
		id := idFor(v.create.Pool, name)
		_, listed := caps[id]
		switch {
		case v.deleted && listed:
			c.failf("volume %s (%s): its deletion was acknowledged, but it is listed again", name, id)
		case v.acked && !v.deleting && !listed:
			c.failf("volume %s (%s) in pool %s: acknowledged, not listed after the cut", name, id, v.create.Pool)
		case listed && caps[id] < v.size:
			c.failf("volume %s: %d bytes listed, an acknowledged expansion made it %d", name, caps[id], v.size)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.h.snaps)) {
		s := c.h.snaps[name]
		id := idFor(s.create.Pool, name)
		got, listed := snaps[id]
		switch {
		case s.deleted && listed:
			c.failf("snapshot %s: its deletion was acknowledged, but it is listed again", name)
		case s.acked && !s.deleting && !listed:
			c.failf("snapshot %s in pool %s: acknowledged, not listed after the cut", name, s.create.Pool)
		case listed && !got.GetReadyToUse():
			c.failf("snapshot %s: acknowledged, listed as not ready", name)
		}
	}
	for id := range caps {
		if c.h.byID[id] == "" {
			c.failf("volume %s is listed, but no call of the previous boot made it", id)
		}
	}
	for id := range snaps {
		if c.h.byID[id] == "" {
			c.failf("snapshot %s is listed, but no call of the previous boot made it", id)
		}
	}
}

// finishInFlight retries every create the cut left without an answer, as
// the provisioner and the snapshotter do: it must succeed (a restore whose
// snapshot is gone may answer NotFound), and then the result counts as made.
func (c *checker) finishInFlight(poolName string) {
	for _, name := range slices.Sorted(maps.Keys(c.h.snaps)) {
		s := c.h.snaps[name]
		if s.acked || s.deleting || s.create.Pool != poolName {
			continue
		}
		c.leftovers.Add(1)
		err := retry(func(ctx context.Context) error {
			_, err := c.drv.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: s.create.Src})
			return err
		})
		if err != nil {
			c.failf("snapshot %s, in flight at the cut: CreateSnapshot again: %v", name, err)
			continue
		}
		s.acked = true
	}
	for _, name := range slices.Sorted(maps.Keys(c.h.vols)) {
		v := c.h.vols[name]
		if v.acked || v.deleting || v.create.Pool != poolName {
			continue
		}
		c.leftovers.Add(1)
		err := retry(func(ctx context.Context) error {
			_, err := c.drv.ctl.CreateVolume(ctx, createRequest(v.create))
			return err
		})
		if status.Code(err) == codes.NotFound && v.create.Snap != "" && c.h.snaps[c.h.byID[v.create.Snap]].deleting {
			v.deleted = true // the CO would give up on it; nothing may be left
			if _, listed := c.caps[idFor(v.create.Pool, name)]; listed {
				c.failf("volume %s, in flight at the cut: restore from a deleted snapshot is listed", name)
			}
			continue
		}
		if err != nil {
			c.failf("volume %s, in flight at the cut: CreateVolume again: %v", name, err)
			continue
		}
		v.acked = true
	}
}

// checkSnapshots restores every snapshot and checks the restore holds the
// records acknowledged before the snapshot was asked for.
func (c *checker) checkSnapshots(poolName string) {
	for _, name := range slices.Sorted(maps.Keys(c.h.snaps)) {
		s := c.h.snaps[name]
		if !s.acked || s.deleting || s.create.Pool != poolName {
			continue
		}
		src := c.h.vols[c.h.byID[s.create.Src]]
		ev := event{Op: "create", Pool: s.create.Pool, Name: "chk-" + name, Kind: src.create.Kind,
			Size: src.size, Snap: idFor(s.create.Pool, name), Recs: s.create.Recs}
		err := retry(func(ctx context.Context) error {
			_, err := c.drv.ctl.CreateVolume(ctx, createRequest(ev))
			return err
		})
		if err != nil {
			c.failf("snapshot %s: restoring it: %v", name, err)
			continue
		}
		c.restores.Add(1)
		v := &vol{create: ev, acked: true, size: ev.Size, wantRecs: ev.Recs}
		c.checkVolume(ev.Name, v)
		id := idFor(ev.Pool, ev.Name)
		if err := c.drv.deleteVolume(id); err != nil {
			c.failf("deleting restore %s: %v", id, err)
		}
	}
}

func (c *checker) checkVolumes(poolName string) {
	for _, name := range slices.Sorted(maps.Keys(c.h.vols)) {
		if v := c.h.vols[name]; v.acked && !v.deleting && v.create.Pool == poolName {
			c.checkVolume(name, v)
		}
	}
}

// checkVolume stages and publishes a volume, checks its records and size,
// takes it down and checks its filesystem.
func (c *checker) checkVolume(name string, v *vol) {
	ev := v.create
	id, kind := idFor(ev.Pool, name), ev.Kind
	if err := c.drv.stage(id, name, kind); err != nil {
		c.failf("volume %s (%s, %s in %s): NodeStageVolume after the cut: %v", name, id, kind, ev.Pool, err)
		return
	}
	if err := c.drv.publish(id, name, kind); err != nil {
		c.failf("volume %s (%s, %s in %s): NodePublishVolume after the cut: %v", name, id, kind, ev.Pool, err)
		return
	}
	c.checked.Add(1)
	target := targetPath(name, kind)
	want := max(v.recs, v.wantRecs)
	path := target
	if kind != "block" {
		path = filepath.Join(target, "records")
		if total, err := fsSize(target, kind); err != nil {
			c.failf("volume %s: %v", name, err)
		} else if v.size > initialSize(kind) && total <= v.size-expandStep {
			c.failf("volume %s (%s in %s): its filesystem has %d bytes; an acknowledged expansion made the volume %d", name, kind, ev.Pool, total, v.size)
		}
	}
	if want > 0 {
		good, err := verifyRecords(path, volumeTag(recordOwner(v, c.h)), want)
		if err != nil {
			c.failf("volume %s (%s in %s): %v", name, kind, ev.Pool, err)
		}
		c.records.Add(int64(min(good, want)))
	}
	if err := c.drv.release(id, name, kind); err != nil {
		c.failf("volume %s: taking it down: %v", name, err)
		return
	}
	c.fsckVolume(name, id, ev.Pool, kind)
}

// recordOwner is the name of the writer's volume whose records v holds.
func recordOwner(v *vol, h *history) string {
	if v.create.Snap == "" {
		return v.create.Name
	}
	s := h.snaps[h.byID[v.create.Snap]]
	return h.byID[s.create.Src]
}

// fsckVolume checks an unstaged volume's filesystem read-only.
func (c *checker) fsckVolume(name, id, poolName, kind string) {
	if kind == "block" {
		return
	}
	var p poolDef
	for _, q := range pools {
		if q.name == poolName {
			p = q
		}
	}
	key := strings.TrimPrefix(id, poolName+".")
	switch {
	case p.vg != "":
		dev := filepath.Join("/dev", p.vg, "flashpv-"+poolName+"-"+key)
		fsck(c.t, c.em, "volume "+name, kind, dev)
	case strings.HasPrefix(p.arg, "quota:"):
		// A directory of the pool's XFS, checked with it.
	default:
		out, err := exec.Command("losetup", "-r", "-f", "--show", filepath.Join(p.arg, key+".img")).Output()
		if err != nil {
			c.failf("volume %s: attaching its image read-only: %v", name, err)
			return
		}
		dev := strings.TrimSpace(string(out))
		fsck(c.t, c.em, "volume "+name, kind, dev)
		exec.Command("losetup", "-d", dev).Run()
	}
}

// deleteAll deletes every snapshot and volume left in a pool.
func (c *checker) deleteAll(poolName string) {
	snaps, err := c.drv.listSnapshots()
	if err != nil {
		c.failf("ListSnapshots: %v", err)
		return
	}
	for id := range snaps {
		if strings.HasPrefix(id, poolName+".") {
			if err := c.drv.deleteSnapshot(id); err != nil {
				c.failf("snapshot %s: DeleteSnapshot: %v", id, err)
			}
		}
	}
	caps, err := c.drv.listVolumes()
	if err != nil {
		c.failf("ListVolumes: %v", err)
		return
	}
	for id := range caps {
		if !strings.HasPrefix(id, poolName+".") {
			continue
		}
		name := c.h.byID[id]
		if v := c.h.vols[name]; v != nil {
			if err := c.drv.release(id, name, v.create.Kind); err != nil {
				c.failf("volume %s: NodeUnpublish/NodeUnstage before the delete: %v", id, err)
			}
		}
		if err := c.drv.deleteVolume(id); err != nil {
			c.failf("volume %s: DeleteVolume: %v", id, err)
		}
	}
}

// checkEmpty: after every delete nothing of a volume is left in any pool.
func (c *checker) checkEmpty() {
	if caps, err := c.drv.listVolumes(); err != nil || len(caps) > 0 {
		c.failf("after deleting every volume, ListVolumes: %v, %v", slices.Collect(maps.Keys(caps)), err)
	}
	if snaps, err := c.drv.listSnapshots(); err != nil || len(snaps) > 0 {
		c.failf("after deleting every snapshot, ListSnapshots: %d left, %v", len(snaps), err)
	}
	for _, p := range pools {
		if p.mount == "" {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(p.mount, "pool"))
		if err != nil {
			c.failf("pool %s: %v", p.name, err)
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".") {
				c.failf("pool %s: %s left after every volume and snapshot was deleted", p.name, e.Name())
			}
		}
	}
	out, err := exec.Command("lvm", "lvs", "--noheadings", "-o", "vg_name,lv_name", "plthick", "plthin").CombinedOutput()
	if err != nil {
		c.failf("lvs: %v: %s", err, out)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] != "thin" {
			c.failf("LV %s/%s left after every volume and snapshot was deleted", f[0], f[1])
		}
	}
}

// fsSize is the size of the filesystem mounted at path: statfs's total,
// but for XFS the data section's (XFS_IOC_FSGEOMETRY through xfs_io),
// because statfs leaves out an internal log, which mkfs.xfs makes 64 MiB
// on a filesystem of 300 MB or more: exactly one expansion step.
func fsSize(path, kind string) (int64, error) {
	if kind != "xfs" {
		var st syscall.Statfs_t
		if err := syscall.Statfs(path, &st); err != nil {
			return 0, fmt.Errorf("statfs: %w", err)
		}
		return int64(st.Blocks) * st.Bsize, nil
	}
	out, err := exec.Command("xfs_io", "-r", "-c", "statfs", path).Output()
	if err != nil {
		return 0, fmt.Errorf("xfs_io statfs %s: %w", path, err)
	}
	var blocks, bsize int64
	for _, line := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(line, " = ")
		switch strings.TrimSpace(k) {
		case "geom.datablocks":
			fmt.Sscan(v, &blocks)
		case "geom.bsize":
			fmt.Sscan(v, &bsize)
		}
	}
	if blocks == 0 || bsize == 0 {
		return 0, fmt.Errorf("xfs_io statfs %s: no geometry in %q", path, out)
	}
	return blocks * bsize, nil
}
