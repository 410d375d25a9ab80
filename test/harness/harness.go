// Package harness starts the real flashpv driver for tests: real pools on
// real filesystems, a real gRPC socket, and cleanup of every loop device and
// mount it made, also when a test fails.
package harness

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/pkg/nodeplugin"
	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/unixsock"
)

// RequireRoot skips a test that needs loop devices and mounts when not root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
}

// Run runs a command and fails the test on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// PoolFS makes a filesystem of the given size (a sparse file on a loop
// device, mounted), so that a pool's capacity is small and known. It returns
// the mount point.
func PoolFS(t testing.TB, size string) string {
	t.Helper()
	dir := t.TempDir()
	img := filepath.Join(dir, "poolfs.img")
	mnt := filepath.Join(dir, "mnt")
	Run(t, "truncate", "-s", size, img)
	Run(t, "mkfs.ext4", "-q", "-F", "-m0", "-b", "4096", img)
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	dev := Run(t, "losetup", "--find", "--show", img)
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	Run(t, "mount", dev, mnt)
	t.Cleanup(func() { unmountPool(t, mnt) })
	return mnt
}

// Backend is the pool kind the backend-agnostic tests run against, from
// FLASHPV_TEST_BACKEND: image (the default), lvm-thick, lvm-thin or quota.
// The last three need device-mapper or XFS quotas, so `make test-vm` runs
// them inside a VM.
func Backend() string {
	if b := os.Getenv("FLASHPV_TEST_BACKEND"); b != "" {
		return b
	}
	return "image"
}

// RequireBackend skips a test written for some backends only.
func RequireBackend(t testing.TB, backends ...string) {
	t.Helper()
	if !slices.Contains(backends, Backend()) {
		t.Skipf("tests the %v backends; this run is %s", backends, Backend())
	}
}

// Supports tells whether the backend has Block volumes (quota pools do not).
func SupportsBlock() bool { return Backend() != "quota" }

// NewPool makes a pool of about the given size for Backend() and returns its
// --pool value without the name: a directory on its own filesystem (image),
// quota:DIR on an XFS mounted with prjquota, or lvm:VG[,thin=POOL] on a
// volume group made on a loop device. Everything goes at cleanup.
func NewPool(t testing.TB, size string) string {
	t.Helper()
	switch Backend() {
	case "image":
		return PoolFS(t, size)
	case "quota":
		return "quota:" + xfsQuotaFS(t, size) + "/pool"
	case "lvm-thick":
		return "lvm:" + VolumeGroup(t, size, 1, false)
	case "lvm-thin":
		return "lvm:" + VolumeGroup(t, size, 1, true) + ",thin=thin"
	}
	t.Fatalf("FLASHPV_TEST_BACKEND=%q: want image, lvm-thick, lvm-thin or quota", Backend())
	return ""
}

// loopFile attaches a new sparse file of size as a loop device.
func loopFile(t testing.TB, size string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.img")
	Run(t, "truncate", "-s", size, img)
	dev := Run(t, "losetup", "--find", "--show", img)
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// xfsQuotaFS makes an XFS of size (at least the 300 MiB mkfs.xfs wants)
// mounted with prjquota and returns the mount point.
func xfsQuotaFS(t testing.TB, size string) string {
	t.Helper()
	if n, err := config.ParseSize(size); err == nil && n < 320<<20 {
		size = "320M"
	}
	dev := loopFile(t, size)
	Run(t, "mkfs.xfs", "-q", "-f", dev)
	mnt := filepath.Join(t.TempDir(), "xfs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	Run(t, "mount", "-o", "prjquota", dev, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	return mnt
}

// VolumeGroup makes a VG on pvs loop devices of size each; with thin, a
// thin pool "thin" of about size in it (the VG is a little bigger for the
// pool's metadata). It returns the VG's name.
func VolumeGroup(t testing.TB, size string, pvs int, thin bool) string {
	t.Helper()
	n, err := config.ParseSize(size)
	if err != nil {
		t.Fatal(err)
	}
	disk := n
	if thin {
		disk += 64 << 20
	}
	var devs []string
	for range pvs {
		devs = append(devs, loopFile(t, fmt.Sprint(disk)))
	}
	vg := fmt.Sprintf("fpvtest%x", time.Now().UnixNano()&0xffffffffff)
	Run(t, "lvm", append([]string{"pvcreate", "-q", "-y"}, devs...)...)
	Run(t, "lvm", append([]string{"vgcreate", "-q", "-y", "-s", "4m", vg}, devs...)...)
	t.Cleanup(func() {
		exec.Command("lvm", "vgremove", "-q", "-ff", "-y", vg).Run()
		exec.Command("lvm", append([]string{"pvremove", "-q", "-ff", "-y"}, devs...)...).Run()
	})
	if thin {
		Run(t, "lvm", "lvcreate", "-q", "-y", "--type", "thin-pool", "-L", fmt.Sprintf("%db", n/(4<<20)*(4<<20)), "-n", "thin", vg)
	}
	return vg
}

// Env is a running driver.
type Env struct {
	Root       string // temp dir holding everything
	KubeletDir string
	Socket     string
	Pools      map[string]string // name -> --pool value without the name
	Conn       *grpc.ClientConn
	Open       []pool.Pool // the running driver's pools
	stop       func()
}

// Options shape an Env.
type Options struct {
	NodeID     string
	Pools      map[string]string // name -> --pool value; default: one pool "default" of NewPool(1G)
	Reserve    int64
	MaxVolumes int64
	FsType     string
	Metrics    prometheus.Registerer
	// Transfer turns on transfers between nodes (see Broker.Node).
	Transfer config.Transfer
}

// Start starts the driver on a fresh socket. Cleanup stops it and removes
// every mount under the kubelet directory and every loop device of its pools.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	RequireRoot(t)
	root := t.TempDir()
	e := &Env{Root: root, KubeletDir: filepath.Join(root, "kubelet"), Socket: filepath.Join(root, "csi.sock"), Pools: o.Pools}
	if e.Pools == nil {
		e.Pools = map[string]string{"default": NewPool(t, "1G")}
	}
	if err := os.MkdirAll(e.KubeletDir, 0o750); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cleanup(t) })
	e.start(t, o)
	return e
}

func (e *Env) start(t testing.TB, o Options) {
	t.Helper()
	if o.NodeID == "" {
		o.NodeID = "node-1"
	}
	if o.MaxVolumes == 0 {
		o.MaxVolumes = 100
	}
	opts := config.Options{NodeID: o.NodeID, KubeletDir: e.KubeletDir, StateDir: filepath.Join(e.Root, "state"), MaxVolumes: o.MaxVolumes, FsType: o.FsType, Transfer: o.Transfer}
	for _, name := range slices.Sorted(maps.Keys(e.Pools)) {
		spec, err := config.ParsePoolSpec(name + "=" + e.Pools[name])
		if err != nil {
			t.Fatal(err)
		}
		spec.Reserve = o.Reserve
		opts.Pools = append(opts.Pools, spec)
	}
	defaultPool := ""
	if _, ok := e.Pools["default"]; ok {
		defaultPool = "default"
	}
	plugin, err := nodeplugin.Open(context.Background(), opts, nodeplugin.Settings{Version: "test", DefaultPool: defaultPool, Metrics: o.Metrics})
	if err != nil {
		t.Fatal(err)
	}
	e.Open = plugin.Pools
	closePools := plugin.Close
	d := plugin.Driver
	lis, err := unixsock.Listen(e.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx, lis) }()
	var side sync.WaitGroup
	if plugin.Transfer != nil {
		for _, task := range plugin.Transfer.Tasks() {
			side.Go(func() {
				if err := task.Run(ctx); err != nil {
					t.Errorf("%s: %v", task.Name, err)
				}
			})
		}
	}
	conn, err := grpc.NewClient("unix://"+e.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	e.Conn = conn
	e.stop = func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("driver: %v", err)
		}
		side.Wait()
		closePools()
	}
}

// Restart stops the driver and starts a new one on the same pools, as after a
// crash or an upgrade of the DaemonSet.
func (e *Env) Restart(t testing.TB, o Options) {
	t.Helper()
	e.stop()
	e.stop = nil
	e.start(t, o)
}

func (e *Env) cleanup(t testing.TB) {
	if e.stop != nil {
		e.stop()
	}
	var dirs []string
	for _, where := range e.Pools {
		if !strings.Contains(where, ":") {
			dirs = append(dirs, where)
		}
	}
	for _, err := range Sweep(e.KubeletDir, dirs...) {
		t.Logf("cleanup: %v", err)
	}
}

// Sweep unmounts, deepest first, everything mounted below kubeletDir and
// detaches the loop device of every image in poolDirs. It returns what it
// could not undo.
func Sweep(kubeletDir string, poolDirs ...string) []error {
	var errs []error
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var mps []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], kubeletDir+"/") {
			mps = append(mps, f[4])
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		if out, err := exec.Command("umount", mps[i]).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("umount %s: %v: %s", mps[i], err, out))
		}
	}
	m := loopdev.New()
	// Devices are matched by inode, so symlinks in the pool paths do not matter.
	for _, dir := range poolDirs {
		att, _ := m.Attached(dir)
		for file := range att {
			if err := m.Detach(file); err != nil {
				errs = append(errs, fmt.Errorf("detach %s: %w", file, err))
			}
		}
	}
	return errs
}

// MountCap is a single-node writer capability for a filesystem volume.
func MountCap(fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// BlockCap is a single-node writer capability for a Block volume.
func BlockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// unmountPool takes a test pool's filesystem down. A process the test
// started may still be closing files on it (a driver being stopped): retry
// for a while, then detach it lazily, so that neither the mount nor its loop
// device outlives the test.
func unmountPool(t testing.TB, mnt string) {
	var out []byte
	var err error
	for range 50 {
		if out, err = exec.Command("umount", mnt).CombinedOutput(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("unmounting %s: %v: %s; detaching it lazily", mnt, err, out)
	if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
		t.Errorf("umount -l %s: %v: %s", mnt, err, out)
	}
}
