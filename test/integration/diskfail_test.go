package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/daemon"
	"github.com/flashpv/flashpv/pkg/health"
	"github.com/flashpv/flashpv/pkg/wellknown"
	"github.com/flashpv/flashpv/test/harness"
)

// callDeadline is the deadline of every call made while a disk fails: each
// must answer within it, with an answer rather than DeadlineExceeded.
const callDeadline = 10 * time.Second

// dmDisk is a device-mapper device over a loop device, whose table can be
// switched between the loop device's bytes and I/O errors.
type dmDisk struct {
	t       *testing.T
	name    string
	loop    string
	sectors int64
}

// dmOffset: the mapped device starts 1 MiB into the loop device, so that
// what is made on it (an LVM label, a filesystem) is not seen on the loop
// device too (LVM would find the PV twice).
const dmOffset = 2048

// newDMDisk makes a linear device-mapper device of size bytes over a new
// loop device. Everything goes at cleanup.
func newDMDisk(t *testing.T, name string, size int64) *dmDisk {
	t.Helper()
	img := filepath.Join(t.TempDir(), name+".img")
	harness.Run(t, "truncate", "-s", fmt.Sprint(size+dmOffset*512), img)
	loop := harness.Run(t, "losetup", "--find", "--show", img)
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	d := &dmDisk{t: t, name: fmt.Sprintf("fpv%s%x", name, time.Now().UnixNano()&0xffffff), loop: loop, sectors: size / 512}
	harness.Run(t, "dmsetup", "create", d.name, "--table", d.linear())
	t.Cleanup(func() {
		if out, err := exec.Command("dmsetup", "remove", "--retry", d.name).CombinedOutput(); err != nil {
			t.Logf("dmsetup remove %s: %v: %s", d.name, err, out)
		}
	})
	harness.Run(t, "dmsetup", "mknodes", d.name)
	return d
}

func (d *dmDisk) dev() string { return "/dev/mapper/" + d.name }
func (d *dmDisk) linear() string {
	return fmt.Sprintf("0 %d linear %s %d", d.sectors, d.loop, dmOffset)
}

// load swaps the device's table while I/O runs: no freezing of what is
// mounted on it, as when a disk fails under a running system.
func (d *dmDisk) load(table string) {
	d.t.Helper()
	harness.Run(d.t, "dmsetup", "suspend", "--nolockfs", d.name)
	harness.Run(d.t, "dmsetup", "load", d.name, "--table", table)
	harness.Run(d.t, "dmsetup", "resume", d.name)
}

func (d *dmDisk) fail() { d.load(fmt.Sprintf("0 %d error", d.sectors)) }
func (d *dmDisk) heal() { d.load(d.linear()) }

// writer writes and syncs 4 KiB blocks into a published Block volume with
// O_DIRECT, over and over, and counts what succeeds and fails.
type writer struct {
	mu       sync.Mutex
	ok, errs int
	lastErr  error
	stop     chan struct{}
	done     chan struct{}
}

func startWriter(t *testing.T, target string) *writer {
	t.Helper()
	f, err := os.OpenFile(target, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	buf := alignedBuf()
	go func() {
		defer close(w.done)
		defer f.Close()
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			_, err := f.WriteAt(buf, int64(i%64)*4096)
			if err == nil {
				err = unix.Fdatasync(int(f.Fd()))
			}
			w.mu.Lock()
			if err != nil {
				w.errs++
				w.lastErr = err
			} else {
				w.ok++
			}
			w.mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	t.Cleanup(w.end)
	return w
}

func (w *writer) end() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *writer) counts() (ok, errs int, last error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ok, w.errs, w.lastErr
}

// waitFor polls cond, which the writer's progress decides, for at most a
// minute: a test that hangs tells nothing.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 600 {
		if cond() {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("gave up waiting for %s", what)
}

// alignedBuf is a 4 KiB block aligned for O_DIRECT.
func alignedBuf() []byte {
	b := make([]byte, 8192)
	for i := range b {
		b[i] = byte(i)
	}
	off := int(uintptr(unsafe.Pointer(&b[0])) % 4096)
	if off != 0 {
		off = 4096 - off
	}
	return b[off : off+4096]
}

// requireDM skips a test on a kernel without device-mapper.
func requireDM(t *testing.T) {
	t.Helper()
	if out, err := exec.Command("dmsetup", "targets").CombinedOutput(); err != nil || !strings.Contains(string(out), "error") {
		t.Skipf("needs device-mapper's linear and error targets, which this kernel lacks (the VM has them: make test-vm): %v %s", err, out)
	}
}

// diskEnv starts flashpv on pools (and a healthy image pool "ok") with
// metrics and /healthz, and returns what checks them and publishes Block
// volumes in them.
func diskEnv(t *testing.T, pools map[string]string) (*diskCheck, func(poolName, name string) vol) {
	t.Helper()
	pools["ok"] = harness.PoolFS(t, "256M")
	reg := prometheus.NewRegistry()
	env := harness.Start(t, harness.Options{Metrics: reg, Pools: pools})
	c := newClient(t, env)
	// Longer than the pools' own 5 s bound, so that what a pool says is what
	// is checked (LVM commands are slow under emulation).
	checker := &health.Checker{CSISocket: env.Socket, Pools: env.Open, Timeout: 8 * time.Second}
	srv := httptest.NewServer(daemon.Handler(checker, reg))
	t.Cleanup(srv.Close)
	publish := func(poolName, name string) vol {
		t.Helper()
		resp, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
			VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
			Parameters:         map[string]string{wellknown.ParamPool: poolName},
		})
		if err != nil {
			t.Fatalf("CreateVolume %s in pool %s: %v", name, poolName, err)
		}
		v := vol{id: resp.GetVolume().GetVolumeId()}
		v.staging, v.target = c.stagePublish(v.id, name, blockCap())
		return v
	}
	return &diskCheck{t: t, c: c, reg: reg, url: srv.URL}, publish
}

// TestFailingDisks switches the device under an lvm pool's PV, then the one
// under the ext4 an image pool lives on, to I/O errors while a writer runs
// in a volume of each, and back; and suspends the PV, so that its I/O waits
// in the kernel. While a device fails: the volume's health names the I/O
// error, storage health, /healthz and the metrics name the pool, every call
// answers within its deadline, and the other pools keep creating and
// staging. Once the device is back (and, for the image pool's ext4, which
// stays read-only, once the operator has done what the health message
// says: unstage its volumes, unmount, repair, mount), health is normal
// again, with the same flashpv. TestFailingXFSImagePool does the same for
// an image pool on XFS.
func TestFailingDisks(t *testing.T) {
	// The test makes its own pools (a VG and an ext4 on device-mapper), so
	// one VM pass is enough.
	harness.RequireBackend(t, "lvm-thick")
	requireDM(t)
	pvDisk := newDMDisk(t, "pv", 256<<20)
	vg := fmt.Sprintf("fpvdf%x", time.Now().UnixNano()&0xffffff)
	harness.Run(t, "lvm", "pvcreate", "-q", "-y", pvDisk.dev())
	harness.Run(t, "lvm", "vgcreate", "-q", "-y", "-s", "4m", vg, pvDisk.dev())
	t.Cleanup(func() {
		exec.Command("lvm", "vgchange", "-an", vg).Run()
		exec.Command("lvm", "vgremove", "-q", "-ff", "-y", vg).Run()
		exec.Command("lvm", "pvremove", "-q", "-ff", "-y", pvDisk.dev()).Run()
	})
	ext4 := newImageFS(t, "ext4")
	d, publish := diskEnv(t, map[string]string{"lvm": "lvm:" + vg, "ext4": ext4.mnt + "/pool"})
	// Whatever happens, the devices work again before anything is taken down.
	t.Cleanup(func() { pvDisk.heal(); ext4.disk.heal() })
	lvmVol := publish("lvm", "pvc-lvm")
	d.healthy("lvm", lvmVol.id)

	// The lvm pool's PV fails under a writer, then heals.
	w := startWriter(t, lvmVol.target)
	waitFor(t, "the writer's first writes", func() bool { ok, _, _ := w.counts(); return ok > 0 })
	pvDisk.fail()
	waitFor(t, "a write into the failing LV to fail", func() bool { _, errs, _ := w.counts(); return errs > 0 })
	d.failing("lvm", lvmVol.id, "input/output error")
	d.othersServe("lvm", "pvc-other1")
	pvDisk.heal()
	_, errsAtHeal, _ := w.counts()
	waitFor(t, "writes into the healed LV", func() bool { ok, errs, _ := w.counts(); return errs == errsAtHeal && ok > 0 })
	d.healthy("lvm", lvmVol.id)
	w.end()
	if _, _, last := w.counts(); !errors.Is(last, unix.EIO) {
		t.Errorf("the writer's last error: %v, want EIO", last)
	}

	// The PV stops answering (suspended: its I/O waits in the kernel, LVM
	// commands with it). Health calls still answer in time, naming the pool.
	harness.Run(t, "dmsetup", "suspend", "--nolockfs", pvDisk.name)
	d.failing("lvm", lvmVol.id, "not answering")
	d.othersServe("", "pvc-other0")
	harness.Run(t, "dmsetup", "resume", pvDisk.name)
	d.healthy("lvm", lvmVol.id)

	imagePoolFails(t, d, ext4, publish("ext4", "pvc-ext4"))
	d.c.unpublishUnstage(lvmVol.id, lvmVol.staging, lvmVol.target)
}

// TestFailingXFSImagePool is TestFailingDisks' image pool on XFS, which
// shuts itself down and answers EIO to everything until it is mounted
// again. It runs in the quota pass, so that each VM pass stays short.
func TestFailingXFSImagePool(t *testing.T) {
	harness.RequireBackend(t, "quota")
	requireDM(t)
	xfs := newImageFS(t, "xfs")
	d, publish := diskEnv(t, map[string]string{"xfs": xfs.mnt + "/pool"})
	t.Cleanup(xfs.disk.heal)
	imagePoolFails(t, d, xfs, publish("xfs", "pvc-xfs"))
}

// vol is a published volume.
type vol struct{ id, staging, target string }

// imageFS is the filesystem an image pool lives on, on a device-mapper
// device.
type imageFS struct {
	fsType, mnt string
	disk        *dmDisk
}

func newImageFS(t *testing.T, fsType string) *imageFS {
	t.Helper()
	f := &imageFS{fsType: fsType, disk: newDMDisk(t, fsType, 320<<20), mnt: filepath.Join(t.TempDir(), fsType)}
	if fsType == "xfs" {
		harness.Run(t, "mkfs.xfs", "-q", "-f", f.disk.dev())
	} else {
		harness.Run(t, "mkfs.ext4", "-q", "-F", "-m0", f.disk.dev())
	}
	if err := os.Mkdir(f.mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	harness.Run(t, "mount", f.disk.dev(), f.mnt)
	t.Cleanup(func() { exec.Command("umount", f.mnt).Run() })
	return f
}

// repair does what docs/health.md tells the operator: unmount, repair,
// mount again. XFS replays its log at a mount, which xfs_repair wants done
// first.
func (f *imageFS) repair(t *testing.T) {
	t.Helper()
	harness.Run(t, "umount", f.mnt)
	if f.fsType == "xfs" {
		harness.Run(t, "mount", f.disk.dev(), f.mnt)
		harness.Run(t, "umount", f.mnt)
		harness.Run(t, "xfs_repair", f.disk.dev())
	} else if out, err := exec.Command("e2fsck", "-f", "-y", f.disk.dev()).CombinedOutput(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() > 2 {
			t.Fatalf("e2fsck: %v\n%s", err, out)
		}
	}
	harness.Run(t, "mount", f.disk.dev(), f.mnt)
}

// imagePoolFails fails the filesystem of an image pool (named after it)
// under a writer in v. ext4 aborts its journal and XFS shuts down, and both
// stay so when the device heals: flashpv says so and what to do, and lets
// go of the filesystem, so that the operator's repair needs no restart.
func imagePoolFails(t *testing.T, d *diskCheck, f *imageFS, v vol) {
	t.Helper()
	poolName := f.fsType
	t.Logf("the %s under image pool %s fails", f.fsType, poolName)
	d.healthy(poolName, v.id)
	w := startWriter(t, v.target)
	waitFor(t, "the writer's first writes", func() bool { ok, _, _ := w.counts(); return ok > 0 })
	f.disk.fail()
	waitFor(t, "a write into the failing image to fail", func() bool { _, errs, _ := w.counts(); return errs > 0 })
	d.failing(poolName, v.id, "input/output error")
	d.othersServe(poolName, "pvc-other-"+poolName)
	f.disk.heal()
	w.end()
	if msg := d.failing(poolName, v.id, ""); !strings.Contains(msg, "mounted again") {
		t.Errorf("the health of a pool whose %s stays down does not say what to do: %s", f.fsType, msg)
	}
	// The pool's volumes unstaged, then the filesystem unmounted (which
	// fails while flashpv holds it), repaired and mounted again.
	d.c.unpublishUnstage(v.id, v.staging, v.target)
	f.repair(t)
	d.healthy(poolName, v.id)
	v.staging, v.target = d.c.stagePublish(v.id, "pvc-"+poolName, blockCap())
	w = startWriter(t, v.target)
	waitFor(t, "writes into the image on the repaired filesystem", func() bool { ok, _, _ := w.counts(); return ok > 0 })
	w.end()
	if _, errs, last := w.counts(); errs != 0 {
		t.Errorf("writes into the image on the repaired filesystem fail: %d, %v", errs, last)
	}
	d.healthy(poolName, v.id)
	d.c.unpublishUnstage(v.id, v.staging, v.target)
}

// diskCheck asks flashpv, through every way it reports health, about a
// pool and one of its volumes.
type diskCheck struct {
	t   *testing.T
	c   *client
	reg *prometheus.Registry
	url string
}

// within gives a call its deadline and says if it did not answer in it.
func (d *diskCheck) within(what string, f func(ctx context.Context) error) error {
	cctx, cancel := context.WithTimeout(ctx, callDeadline)
	defer cancel()
	err := f(cctx)
	if code := status.Code(err); code == codes.DeadlineExceeded || code == codes.Canceled || code == codes.Unavailable {
		return fmt.Errorf("%s did not answer within %s: %w", what, callDeadline, err)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// states returns the volume's health entries, the storage health entries,
// /healthz's body and the pool's metrics, asked all at once (each may wait
// its bound on a device that stopped answering).
func (d *diskCheck) states(poolName, id string) (vh []*csi.VolumeHealth_VolumeHealthEntry, sh []string, healthz string, up float64, abnormal float64) {
	d.t.Helper()
	up, abnormal = -1, -1
	var wg sync.WaitGroup
	errs := make([]error, 4)
	wg.Go(func() {
		errs[0] = d.within("NodeGetVolumeHealth", func(ctx context.Context) error {
			resp, err := d.c.nd.NodeGetVolumeHealth(ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: id})
			vh = resp.GetVolumeHealth().GetHealthStatuses()
			return err
		})
	})
	wg.Go(func() {
		errs[1] = d.within("NodeGetStorageHealth", func(ctx context.Context) error {
			resp, err := d.c.nd.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
			for _, b := range resp.GetBackendHealth() {
				sh = append(sh, b.GetReason()+": "+b.GetMessage())
			}
			return err
		})
	})
	wg.Go(func() {
		hc := &http.Client{Timeout: callDeadline}
		resp, err := hc.Get(d.url + "/healthz")
		if err != nil {
			errs[2] = fmt.Errorf("/healthz: %w", err)
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		healthz = string(b)
		if resp.StatusCode != 200 {
			errs[2] = fmt.Errorf("/healthz answers %d: %s", resp.StatusCode, healthz)
		}
	})
	wg.Go(func() {
		gathered := make(chan error, 1)
		go func() {
			mfs, err := d.reg.Gather()
			for _, mf := range mfs {
				for _, m := range mf.GetMetric() {
					for _, l := range m.GetLabel() {
						if l.GetName() != "pool" || l.GetValue() != poolName {
							continue
						}
						switch mf.GetName() {
						case "flashpv_pool_up":
							up = m.GetGauge().GetValue()
						case "flashpv_pool_abnormal_volumes":
							abnormal = m.GetGauge().GetValue()
						}
					}
				}
			}
			gathered <- err
		}()
		select {
		case errs[3] = <-gathered:
		case <-time.After(callDeadline):
			errs[3] = fmt.Errorf("a metrics scrape did not answer within %s", callDeadline)
		}
	})
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		d.t.Fatal(err)
	}
	return vh, sh, healthz, up, abnormal
}

// failing checks that every report names the pool, and the volume's health
// the error (when want is set). It returns the storage health message.
func (d *diskCheck) failing(poolName, id, want string) string {
	d.t.Helper()
	vh, sh, healthz, up, abnormal := d.states(poolName, id)
	var msgs []string
	for _, e := range vh {
		msgs = append(msgs, e.GetReason()+": "+e.GetMessage())
	}
	d.t.Logf("pool %s failing: volume health %q; storage health %q; /healthz %q", poolName, msgs, sh, healthz)
	if len(vh) == 0 || !strings.Contains(strings.Join(msgs, "\n"), want) {
		d.t.Errorf("volume %s's health does not name %q: %q", id, want, msgs)
	}
	var poolMsg string
	for _, m := range sh {
		if strings.Contains(m, "pool "+poolName+":") {
			poolMsg = m
		}
		if strings.Contains(m, "pool ok:") {
			d.t.Errorf("the healthy pool is reported: %s", m)
		}
	}
	if poolMsg == "" {
		d.t.Errorf("storage health does not name pool %s: %q", poolName, sh)
	}
	if !strings.Contains(healthz, "warning: pool "+poolName+":") || strings.Contains(healthz, "pool ok:") {
		d.t.Errorf("/healthz does not name pool %s alone: %q", poolName, healthz)
	}
	if up != 0 || abnormal != 1 {
		d.t.Errorf("metrics of pool %s: up %v, abnormal volumes %v; want 0 and 1", poolName, up, abnormal)
	}
	return poolMsg
}

// healthy checks that nothing reports the pool or the volume.
func (d *diskCheck) healthy(poolName, id string) {
	d.t.Helper()
	vh, sh, healthz, up, abnormal := d.states(poolName, id)
	if len(vh) != 0 || len(sh) != 0 || strings.TrimSpace(healthz) != "ok" || up != 1 || abnormal != 0 {
		d.t.Errorf("pool %s not healthy: volume health %v; storage health %q; /healthz %q; up %v; abnormal volumes %v", poolName, vh, sh, healthz, up, abnormal)
	}
}

// othersServe makes, stages, publishes and deletes a volume in the healthy
// pool, and checks that a create in the failing pool (unless "") answers in
// time, with an error.
func (d *diskCheck) othersServe(failing, name string) {
	d.t.Helper()
	create := func(poolName string) (string, error) {
		var id string
		err := d.within("CreateVolume in pool "+poolName, func(ctx context.Context) error {
			resp, err := d.c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
				Name: name + "-" + poolName, CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
				VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
				Parameters:         map[string]string{wellknown.ParamPool: poolName},
			})
			id = resp.GetVolume().GetVolumeId()
			return err
		})
		return id, err
	}
	if failing == "" {
		// A stuck device holds the LVM commands of a create in the kernel.
	} else if id, err := create(failing); err == nil || strings.Contains(err.Error(), "did not answer") {
		d.t.Errorf("a create in failing pool %s: %q %v, want an error in time", failing, id, err)
	} else {
		d.t.Logf("a create in failing pool %s: %v", failing, err)
	}
	id, err := create("ok")
	if err != nil {
		d.t.Fatalf("a create in the healthy pool: %v", err)
	}
	staging, target := d.c.stagePublish(id, name, blockCap())
	d.c.unpublishUnstage(id, staging, target)
	d.c.delete(id)
}

// TestFullPoolIsNotFailing fills an image pool's filesystem to the last
// block: its probe still passes (the device answers; capacity says it is
// full), so no health report calls it failing.
func TestFullPoolIsNotFailing(t *testing.T) {
	harness.RequireBackend(t, "image")
	fs := harness.PoolFS(t, "64M")
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": fs + "/pool"}})
	c := newClient(t, env)
	c.create("pvc-full", 8<<20, blockCap())
	filler := filepath.Join(fs, "filler")
	t.Cleanup(func() { os.Remove(filler) })
	if out, err := exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=1M").CombinedOutput(); err == nil || !strings.Contains(string(out), "No space left") {
		t.Fatalf("filling the pool's filesystem: %v %s", err, out)
	}
	// Whatever ext4 keeps back for its own metadata, the rest goes too.
	exec.Command("sh", "-c", "for i in $(seq 64); do dd if=/dev/zero of="+filler+"$i bs=4k 2>/dev/null || break; done").Run()
	t.Cleanup(func() { exec.Command("sh", "-c", "rm -f "+filler+"*").Run() })
	resp, err := c.nd.NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
	if err != nil || len(resp.GetBackendHealth()) != 0 {
		t.Fatalf("storage health of a full pool: %v %v", resp, err)
	}
	checker := &health.Checker{CSISocket: env.Socket, Pools: env.Open}
	if w := checker.Warnings(ctx); len(w) != 0 {
		t.Fatalf("/healthz warnings for a full pool: %q", w)
	}
}
