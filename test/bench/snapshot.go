package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/test/harness"
)

// snapshotOptions size the snapshot phase: a volume of size bytes with
// written bytes of data, snapshotted, restored and cloned on pool
// filesystems the bench makes on loop devices.
type snapshotOptions struct {
	size, written   string
	sizeB, writtenB int64
	fsBytes         int64
}

func (o *snapshotOptions) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.size, "snapshot-size", "1Gi", "snapshot: size of the volume snapshotted, restored and cloned")
	fs.StringVar(&o.written, "snapshot-written", "512Mi", "snapshot: data written into it first")
}

func (o *snapshotOptions) finish(quick bool) error {
	if quick {
		o.size, o.written = "256Mi", "128Mi"
	}
	var err error
	if o.sizeB, err = config.ParseSize(o.size); err != nil {
		return fmt.Errorf("-snapshot-size: %w", err)
	}
	if o.writtenB, err = config.ParseSize(o.written); err != nil {
		return fmt.Errorf("-snapshot-written: %w", err)
	}
	if o.writtenB > o.sizeB*3/4 {
		return fmt.Errorf("-snapshot-written: %s do not fit in a volume of %s with its filesystem", o.written, o.size)
	}
	// The volume, a snapshot, a restore, a clone and cp's copy at once,
	// and what reflinks share reserved again: room for eight.
	o.fsBytes = max(8*o.sizeB, 2<<30)
	return nil
}

// snapshotResult is the snapshot phase on one pool filesystem. Latencies are
// per run, in ms; a ratio is flashpv's call ÷ the cp with fsync run right
// before or after it.
type snapshotResult struct {
	Pool         string               `json:"pool"`   // the pool's filesystem
	Method       string               `json:"method"` // how the pool copies images
	VolumeBytes  int64                `json:"volume_bytes"`
	WrittenBytes int64                `json:"written_bytes"`
	Runs         map[string][]float64 `json:"runs_ms"`
	Latency      map[string]spread    `json:"latency_ms"`
	RatioRuns    map[string][]float64 `json:"ratio_runs"`
	Ratio        map[string]spread    `json:"ratio_to_cp"`
	// Blocks allocated to a snapshot (its reservation, kept by copying
	// preallocated space as preallocated) and to cp's copy (sparse).
	SnapshotAllocated int64 `json:"snapshot_allocated_bytes"`
	CpAllocated       int64 `json:"cp_allocated_bytes"`
}

// The measured operations, in report order, and the reference the ratios
// are taken against.
const (
	opSnapshot = "CreateSnapshot"
	opRestore  = "CreateVolume from snapshot"
	opClone    = "CreateVolume from volume (clone)"
	opCp       = "cp --sparse=always"
	opCpSync   = "cp --sparse=always + fsync"
)

var snapshotOps = []string{opSnapshot, opRestore, opClone, opCp, opCpSync}

// snapshotPools are the pool filesystems: XFS shares blocks (reflink), ext4
// copies.
var snapshotPools = []struct {
	name, fstype, method string
	mkfs                 []string
}{
	{"xfs (reflink=1)", "xfs", "reflink", []string{"-f", "-m", "reflink=1"}},
	{"ext4", "ext4", "copy", []string{"-F", "-q"}},
}

// runSnapshot measures snapshots, restores and clones on each pool
// filesystem against cp of the same image.
func (b *bench) runSnapshot(ctx context.Context) ([]snapshotResult, error) {
	var out []snapshotResult
	for _, p := range snapshotPools {
		res, err := b.snapshotPool(ctx, p.name, p.fstype, p.method, p.mkfs)
		if err != nil {
			return out, fmt.Errorf("%s pool: %w", p.name, err)
		}
		out = append(out, *res)
	}
	return out, nil
}

func (b *bench) snapshotPool(ctx context.Context, name, fstype, method string, mkfs []string) (res *snapshotResult, err error) {
	o := b.snap
	mnt, undo, err := b.loopFS(ctx, fstype, o.fsBytes, mkfs)
	if err != nil {
		return nil, err
	}
	cfg := b.driverConfig(16)
	cfg.pool = filepath.Join(mnt, "pool")
	defer func() {
		// Nothing of the volumes may stay mounted or attached before the
		// pool's filesystem goes.
		for _, e := range harness.Sweep(cfg.kubelet, cfg.pool) {
			log.Printf("cleanup: %v", e)
		}
		err = errors.Join(err, undo())
	}()
	if err := os.MkdirAll(cfg.pool, 0o755); err != nil {
		return nil, err
	}
	d, _, err := startDriver(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer d.stop()

	setup := newRecorder()
	src := d.newVol("bench-snap-src", mountCap("ext4"))
	if err := d.up(ctx, setup, src, o.sizeB); err != nil {
		return nil, err
	}
	defer d.down(context.Background(), setup, src)
	log.Printf("snapshot: %s: writing %d MiB into a %d MiB volume", name, o.writtenB>>20, o.sizeB>>20)
	if err := writeData(ctx, filepath.Join(src.target, "data"), o.writtenB); err != nil {
		return nil, err
	}
	srcImage, err := imageOf(cfg.pool, src.id)
	if err != nil {
		return nil, err
	}
	res = &snapshotResult{Pool: name, Method: method, VolumeBytes: o.sizeB, WrittenBytes: o.writtenB,
		Runs: map[string][]float64{}, RatioRuns: map[string][]float64{}, Latency: map[string]spread{}, Ratio: map[string]spread{}}
	cpDst := filepath.Join(mnt, "cp-copy")
	for round := range b.rounds {
		if err := b.snapshotRound(ctx, d, cfg.pool, srcImage, cpDst, src, round, res); err != nil {
			return nil, err
		}
	}
	for _, op := range snapshotOps {
		res.Latency[op] = spreadOf(res.Runs[op])
	}
	for _, op := range []string{opSnapshot, opRestore, opClone} {
		res.Ratio[op] = spreadOf(res.RatioRuns[op])
	}
	log.Printf("snapshot: %s: medians CreateSnapshot %.0f ms, restore %.0f ms, clone %.0f ms, cp+fsync %.0f ms; CreateSnapshot ÷ cp+fsync %.2f",
		name, res.Latency[opSnapshot].Median, res.Latency[opRestore].Median, res.Latency[opClone].Median,
		res.Latency[opCpSync].Median, res.Ratio[opSnapshot].Median)
	return res, nil
}

// snapshotRound times one snapshot, one restore from it and one clone of
// the volume, each paired with a cp of the volume's image, all from a cold
// page cache, then removes what they made. The machine's disk is shared and
// slows down after bursts of writes: cp runs first in the pairs of even
// rounds and second in odd ones, so that neither side always follows the
// other's writes.
func (b *bench) snapshotRound(ctx context.Context, d *driverProc, pool, srcImage, cpDst string, src *vol, round int, res *snapshotResult) error {
	timed := func(op string, f func() error) error {
		if err := coldCache(pool); err != nil {
			return err
		}
		start := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		res.Runs[op] = append(res.Runs[op], ms(time.Since(start)))
		return nil
	}
	cp := func() error {
		if err := coldCache(pool); err != nil {
			return err
		}
		start := time.Now()
		if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", srcImage, cpDst).CombinedOutput(); err != nil {
			return fmt.Errorf("cp: %v: %s", err, out)
		}
		copied := time.Since(start)
		if err := fsyncFile(cpDst); err != nil {
			return err
		}
		res.Runs[opCp] = append(res.Runs[opCp], ms(copied))
		res.Runs[opCpSync] = append(res.Runs[opCpSync], ms(time.Since(start)))
		res.CpAllocated = allocatedBytes(cpDst)
		return os.Remove(cpDst)
	}
	pair := func(op string, f func() error) error {
		steps := []func() error{cp, func() error { return timed(op, f) }}
		if round%2 == 1 {
			steps[0], steps[1] = steps[1], steps[0]
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return err
			}
		}
		last := func(xs []float64) float64 { return xs[len(xs)-1] }
		res.RatioRuns[op] = append(res.RatioRuns[op], last(res.Runs[op])/last(res.Runs[opCpSync]))
		return nil
	}
	snapName := fmt.Sprintf("bench-snap-%d", round)
	var snapID string
	if err := pair(opSnapshot, func() error {
		resp, err := d.ctl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: snapName, SourceVolumeId: src.id})
		snapID = resp.GetSnapshot().GetSnapshotId()
		return err
	}); err != nil {
		return err
	}
	defer d.ctl.DeleteSnapshot(context.Background(), &csi.DeleteSnapshotRequest{SnapshotId: snapID})
	if a, err := snapshotAllocated(pool, snapID); err == nil {
		res.SnapshotAllocated = a
	}
	from := func(op, name string, source *csi.VolumeContentSource) error {
		var id string
		defer func() {
			if id != "" {
				d.ctl.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: id})
			}
		}()
		return pair(op, func() error {
			resp, err := d.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
				Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: b.snap.sizeB},
				VolumeCapabilities: []*csi.VolumeCapability{mountCap("ext4")}, VolumeContentSource: source,
			})
			id = resp.GetVolume().GetVolumeId()
			return err
		})
	}
	if err := from(opRestore, fmt.Sprintf("bench-restore-%d", round), &csi.VolumeContentSource{
		Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snapID}}}); err != nil {
		return err
	}
	if err := from(opClone, fmt.Sprintf("bench-clone-%d", round), &csi.VolumeContentSource{
		Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.id}}}); err != nil {
		return err
	}
	r, n := res.Runs, round
	c := r[opCpSync][3*n:]
	log.Printf("snapshot: round %d: CreateSnapshot %.0f ms (cp+fsync %.0f), restore %.0f ms (cp+fsync %.0f), clone %.0f ms (cp+fsync %.0f)",
		round+1, r[opSnapshot][n], c[0], r[opRestore][n], c[1], r[opClone][n], c[2])
	return nil
}

// loopFS makes a filesystem of fstype on a sparse file of size bytes on a
// loop device (direct I/O where the backing filesystem allows it, so that
// its page cache does not cache the pool twice) and mounts it. undo takes
// it all down again.
func (b *bench) loopFS(ctx context.Context, fstype string, size int64, mkfs []string) (string, func() error, error) {
	dir := filepath.Join(b.work, "snapshot-"+fstype)
	backing, mnt := dir+".img", filepath.Join(dir, "mnt")
	var dev string
	undo := func() error {
		var errs []error
		if mounted(mnt) {
			if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("umount %s: %v: %s", mnt, err, out))
			}
		}
		if dev != "" {
			if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("losetup -d %s: %v: %s", dev, err, out))
			}
		}
		if len(errs) == 0 {
			os.RemoveAll(dir)
			os.Remove(backing)
		}
		return errors.Join(errs...)
	}
	fail := func(err error) (string, func() error, error) { return "", nil, errors.Join(err, undo()) }
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		return fail(err)
	}
	out, err := exec.CommandContext(ctx, "losetup", "--find", "--show", "--direct-io=on", backing).Output()
	if err != nil {
		out, err = exec.CommandContext(ctx, "losetup", "--find", "--show", backing).Output()
	}
	if err != nil {
		return fail(fmt.Errorf("losetup %s: %w", backing, err))
	}
	dev = strings.TrimSpace(string(out))
	if out, err := exec.CommandContext(ctx, "mkfs."+fstype, append(mkfs, dev)...).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("mkfs.%s: %v: %s", fstype, err, out))
	}
	if out, err := exec.CommandContext(ctx, "mount", dev, mnt).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("mount: %v: %s", err, out))
	}
	return mnt, undo, nil
}

func mounted(dir string) bool {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// writeData writes n bytes of incompressible data (never zeros: cp would
// skip them) with O_DIRECT, as an application does, and syncs.
func writeData(ctx context.Context, path string, n int64) error {
	args := []string{"--name=fill", "--filename=" + path, "--size=" + strconv.FormatInt(n, 10),
		"--rw=write", "--bs=1M", "--iodepth=8", "--direct=1", "--ioengine=libaio", "--end_fsync=1", "--refill_buffers=1"}
	if out, err := exec.CommandContext(ctx, "fio", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("fio: %v: %s", err, out)
	}
	return nil
}

// imageOf is the image file of an image pool's volume (ID <pool>.<key>).
func imageOf(pool, id string) (string, error) {
	_, key, ok := strings.Cut(id, ".")
	if !ok {
		return "", fmt.Errorf("volume ID %q", id)
	}
	p := filepath.Join(pool, key+".img")
	_, err := os.Stat(p)
	return p, err
}

func snapshotAllocated(pool, id string) (int64, error) {
	_, key, ok := strings.Cut(id, ".")
	if !ok {
		return 0, fmt.Errorf("snapshot ID %q", id)
	}
	p := filepath.Join(pool, key+".snap")
	if _, err := os.Stat(p); err != nil {
		return 0, err
	}
	return allocatedBytes(p), nil
}

func allocatedBytes(path string) int64 {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

func fsyncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// coldCache writes back the pool's filesystem and drops the page cache of
// every file in the pool directory, so that each copy reads from the
// device as the first one would.
func coldCache(pool string) error {
	d, err := os.Open(pool)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, n := range names {
		f, err := os.Open(filepath.Join(pool, n))
		if err != nil {
			continue
		}
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
	}
	return nil
}

// snapshotMarkdown is the snapshot section of the report.
func snapshotMarkdown(rs []snapshotResult) string {
	if len(rs) == 0 {
		return ""
	}
	var b strings.Builder
	r0 := rs[0]
	fmt.Fprintf(&b, "## Snapshots and clones\n\n")
	fmt.Fprintf(&b, "A %d MiB ext4 volume (created, staged, published through CSI) with %d MiB written by fio (O_DIRECT), on pool filesystems the bench makes on loop devices (direct I/O). ",
		r0.VolumeBytes>>20, r0.WrittenBytes>>20)
	fmt.Fprintf(&b, "Each round, from a cold page cache: CreateSnapshot of the published volume (frozen around the copy), CreateVolume from that snapshot, CreateVolume from the volume, each paired with `cp --sparse=always` of the volume's image on the same filesystem, timed alone and with an fsync of the copy (flashpv's copies are durable when the call returns); cp runs first in the pairs of every other round. ")
	fmt.Fprintf(&b, "%d rounds; ms, median [lowest–highest]; ratios per pair, flashpv's call ÷ cp with fsync.\n\n", len(r0.Runs[opSnapshot]))
	fmt.Fprintf(&b, "| pool | method |")
	for _, op := range snapshotOps {
		fmt.Fprintf(&b, " %s |", op)
	}
	fmt.Fprintf(&b, " snapshot ÷ cp | restore ÷ cp | clone ÷ cp |\n|---|---|%s\n", strings.Repeat("---|", len(snapshotOps)+3))
	for _, r := range rs {
		fmt.Fprintf(&b, "| %s | %s |", r.Pool, r.Method)
		for _, op := range snapshotOps {
			s := r.Latency[op]
			fmt.Fprintf(&b, " %.0f [%.0f–%.0f] |", s.Median, s.Min, s.Max)
		}
		for _, op := range []string{opSnapshot, opRestore, opClone} {
			fmt.Fprintf(&b, " %s |", fmtSpread(r.Ratio[op]))
		}
		fmt.Fprintf(&b, "\n")
	}
	fmt.Fprintf(&b, "\nBlocks allocated: ")
	for i, r := range rs {
		if i > 0 {
			fmt.Fprintf(&b, "; ")
		}
		fmt.Fprintf(&b, "%s: a snapshot %.0f MiB, cp's copy %.0f MiB", r.Pool, mib(r.SnapshotAllocated), mib(r.CpAllocated))
	}
	fmt.Fprintf(&b, " (a copied snapshot keeps the volume's preallocation: it holds the whole reservation; a reflinked one shares blocks and its reservation is counted by the pool).\n\n")
	return b.String()
}
