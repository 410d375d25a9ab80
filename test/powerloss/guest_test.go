//go:build powerloss

package powerloss

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The guest's side: TestGuest runs in the VM (hack/vm/vmexec), once per
// boot. On the first boot it makes the pools on the VM's blank disks; on
// every later one it checks what the previous boot, cut short by the power
// cut, left (check_test.go), deletes all of it, and runs the workload
// (workload_test.go) until the host cuts the power again. The last boot
// only checks, and unmounts everything cleanly.

// poolDef is one of the five pools a boot runs at once, one per pool kind.
type poolDef struct {
	name   string
	disk   string   // serial of its disk (the host's disk file name)
	arg    string   // --pool value without the name
	kinds  []string // Filesystem kinds its volumes get
	block  bool     // whether it has Block volumes
	mount  string   // mount point of its filesystem (image, quota)
	fsType string   // that filesystem's type
	vg     string   // volume group (lvm)
}

const (
	base       = "/pl"
	kubeletDir = base + "/ext4/kubelet" // on a persistent disk, as a node's /var/lib/kubelet
	stateDir   = base + "/ext4/state"
	socket     = "/run/flashpv-pl.sock"
	nodeID     = "pl-node"
)

var pools = []poolDef{
	{name: "img-ext4", disk: "disk1", arg: base + "/ext4/pool", kinds: []string{"ext4", "xfs", "btrfs"}, block: true, mount: base + "/ext4", fsType: "ext4"},
	{name: "img-xfs", disk: "disk2", arg: base + "/xfs/pool", kinds: []string{"xfs", "ext4", "btrfs"}, block: true, mount: base + "/xfs", fsType: "xfs"},
	{name: "thick", disk: "disk3", arg: "lvm:plthick", kinds: []string{"btrfs", "ext4", "xfs"}, block: true, vg: "plthick"},
	{name: "thin", disk: "disk4", arg: "lvm:plthin,thin=thin", kinds: []string{"ext4", "btrfs", "xfs"}, block: true, vg: "plthin"},
	{name: "quota", disk: "disk5", arg: "quota:" + base + "/quota/pool", kinds: []string{"xfs"}, mount: base + "/quota", fsType: "xfs"},
}

// guestEnv is what the host tells a boot.
type guestEnv struct {
	boot   int
	seed   uint64
	final  bool   // check only, then shut down cleanly
	prev   string // events of the previous boot (a file on the share)
	bin    string // the flashpv binary
	logDir string // where flashpv's log goes (on the share)
}

func TestGuest(t *testing.T) {
	if os.Getenv("FLASHPV_POWERLOSS_GUEST") != "1" {
		t.Skip("runs in the VM only, started by TestPowerLoss")
	}
	g := guestEnv{prev: os.Getenv("FLASHPV_POWERLOSS_PREV"), bin: os.Getenv("FLASHPV_POWERLOSS_BIN"),
		logDir: os.Getenv("FLASHPV_POWERLOSS_LOGDIR"), final: os.Getenv("FLASHPV_POWERLOSS_FINAL") == "1"}
	g.boot, _ = strconv.Atoi(os.Getenv("FLASHPV_POWERLOSS_BOOT"))
	g.seed, _ = strconv.ParseUint(os.Getenv("FLASHPV_POWERLOSS_SEED"), 10, 64)
	em := &emitter{}
	em.mark("test started")
	devs := disksBySerial(t)
	if g.boot == 0 {
		makePools(t, devs)
	} else {
		checkPools(t, em, devs)
		em.progress("check", "pools checked: filesystems, volume groups, thin pool metadata")
	}
	mountPools(t, devs)
	if t.Failed() {
		return
	}
	em.mark("pools checked and mounted")
	drv := startFlashpv(t, g)
	defer drv.stop()
	em.mark("flashpv answers")
	if g.boot > 0 {
		c := &checker{t: t, em: em, drv: drv}
		c.run(g.prev)
		if t.Failed() {
			return
		}
		em.mark("volumes checked and deleted")
	}
	if g.final {
		drv.stop()
		unmountPools(t)
		checkPools(t, em, devs)
		em.progress("check", "pools checked again after a clean unmount")
		em.progress("done", "final check done")
		return
	}
	w := newWorkload(t, em, drv, g)
	w.run()
}

// disksBySerial maps the serial of each virtio disk (vmexec names them
// after their files) to its device.
func disksBySerial(t *testing.T) map[string]string {
	m := map[string]string{}
	ents, _ := filepath.Glob("/sys/block/vd*")
	for _, d := range ents {
		b, err := os.ReadFile(filepath.Join(d, "serial"))
		if err == nil {
			m[strings.TrimSpace(string(b))] = "/dev/" + filepath.Base(d)
		}
	}
	for _, p := range pools {
		if m[p.disk] == "" {
			t.Fatalf("no disk %s in the VM (disks: %v)", p.disk, m)
		}
	}
	return m
}

// sh runs a command; its failure fails the test.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func makePools(t *testing.T, devs map[string]string) {
	for _, p := range pools {
		dev := devs[p.disk]
		switch {
		case p.vg != "":
			sh(t, "lvm", "pvcreate", "-q", "-y", dev)
			sh(t, "lvm", "vgcreate", "-q", "-y", "-s", "4m", p.vg, dev)
			if strings.Contains(p.arg, "thin=") {
				sh(t, "lvm", "lvcreate", "-q", "-y", "--type", "thin-pool", "-L", "2500m", "-n", "thin", p.vg)
			}
		case p.fsType == "ext4":
			sh(t, "mkfs.ext4", "-q", "-F", dev)
		default:
			sh(t, "mkfs.xfs", "-q", "-f", dev)
		}
	}
	sh(t, "lvm", "vgchange", "-q", "-an", "plthick", "plthin")
}

// checkPools checks the pools' own storage while nothing uses it: each
// filesystem is mounted once (to replay its journal, as a boot does) and
// checked unmounted; each volume group's metadata, and the thin pool's, is
// checked before the volume groups are activated.
func checkPools(t *testing.T, em *emitter, devs map[string]string) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, p := range pools {
		if p.mount != "" {
			wg.Go(func() { checkPoolFS(t, em, p, devs[p.disk]) })
		}
	}
	wg.Go(func() { checkVGs(t, em) })
}

func checkPoolFS(t *testing.T, em *emitter, p poolDef, dev string) {
	dir := filepath.Join(os.TempDir(), "replay-"+p.name)
	os.MkdirAll(dir, 0o700)
	// With the options it always has: XFS replays a quota's log items
	// only when mounted with quotas on.
	if _, err := exec.Command("mount", append(mountOpts(p), dev, dir)...).CombinedOutput(); err != nil {
		em.progress("fail", "pool %s: mounting its %s: %v", p.name, p.fsType, err)
		t.Errorf("pool %s: mount %s: %v", p.name, dev, err)
		return
	}
	sh(t, "umount", dir)
	fsck(t, em, "pool "+p.name, p.fsType, dev)
}

func checkVGs(t *testing.T, em *emitter) {
	if out, err := exec.Command("lvm", "vgck", "plthick", "plthin").CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		em.progress("fail", "vgck: %v: %s", err, out)
		t.Errorf("vgck: %v: %s", err, out)
	}
	// The thin pool is inactive here (no LVM activation at boot in the VM):
	// its metadata LV can be activated on its own, read-only.
	if out, err := exec.Command("lvm", "lvchange", "-q", "-ay", "-y", "plthin/thin_tmeta").CombinedOutput(); err != nil {
		t.Errorf("activating the thin pool's metadata: %v: %s", err, out)
	} else {
		if out, err := exec.Command("thin_check", "/dev/plthin/thin_tmeta").CombinedOutput(); err != nil {
			em.progress("fail", "thin_check: %v: %s", err, out)
			t.Errorf("thin_check: %v: %s", err, out)
		}
		sh(t, "lvm", "lvchange", "-q", "-an", "plthin/thin_tmeta")
	}
}

// fsck checks an unmounted filesystem without changing it.
func fsck(t *testing.T, em *emitter, what, fsType, dev string) {
	var cmd *exec.Cmd
	switch fsType {
	case "ext4":
		cmd = exec.Command("e2fsck", "-fn", dev)
	case "xfs":
		cmd = exec.Command("xfs_repair", "-n", dev)
	case "btrfs":
		cmd = exec.Command("btrfs", "check", "--readonly", dev)
	default:
		return
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		em.progress("fail", "%s: %s found errors: %v", what, cmd.Args[0], err)
		t.Errorf("%s: %s: %v\n%s", what, strings.Join(cmd.Args, " "), err, out)
	}
}

func mountPools(t *testing.T, devs map[string]string) {
	for _, p := range pools {
		if p.mount == "" {
			continue
		}
		os.MkdirAll(p.mount, 0o755)
		sh(t, "mount", append(mountOpts(p), devs[p.disk], p.mount)...)
		os.MkdirAll(filepath.Join(p.mount, "pool"), 0o755)
	}
	os.MkdirAll(kubeletDir, 0o750)
	os.MkdirAll(stateDir, 0o750)
	// A booting node activates its volume groups.
	sh(t, "lvm", "vgchange", "-q", "-ay", "plthick", "plthin")
}

func mountOpts(p poolDef) []string {
	if strings.HasPrefix(p.arg, "quota:") {
		return []string{"-o", "prjquota"}
	}
	return nil
}

func unmountPools(t *testing.T) {
	for i := len(pools) - 1; i >= 0; i-- {
		if p := pools[i]; p.mount != "" {
			sh(t, "umount", p.mount)
		}
	}
	sh(t, "lvm", "vgchange", "-q", "-an", "plthick", "plthin")
	syscall.Sync()
}

// flashpv is the driver process of a boot.
type flashpv struct {
	cmd  *exec.Cmd
	conn *grpc.ClientConn
	ctl  csi.ControllerClient
	node csi.NodeClient
	busy atomic.Int64 // unpublishes retried because the mount was busy
}

func startFlashpv(t *testing.T, g guestEnv) *flashpv {
	args := []string{"--endpoint", "unix://" + socket, "--node-id", nodeID, "--kubelet-dir", kubeletDir,
		"--state-dir", stateDir, "--health-address", "", "-v", "2"}
	for _, p := range pools {
		args = append(args, "--pool", p.name+"="+p.arg)
	}
	logf, err := os.Create(filepath.Join(g.logDir, fmt.Sprintf("flashpv-boot%d.log", g.boot)))
	if err != nil {
		t.Fatal(err)
	}
	// From the guest's memory: a binary run from the 9p share is paged in
	// 4 KiB at a time, seconds for flashpv under emulation.
	bin := filepath.Join(os.TempDir(), "flashpv")
	if out, err := exec.Command("cp", g.bin, bin).CombinedOutput(); err != nil {
		t.Fatalf("cp %s: %v: %s", g.bin, err, out)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	d := &flashpv{cmd: cmd, conn: conn, ctl: csi.NewControllerClient(conn), node: csi.NewNodeClient(conn)}
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := d.node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
		cancel()
		if err == nil {
			return d
		}
		if time.Since(start) > 2*time.Minute {
			d.stop()
			t.Fatalf("flashpv does not answer: %v", err)
		}
	}
}

func (d *flashpv) stop() {
	if d.cmd.Process == nil || d.cmd.ProcessState != nil {
		return
	}
	d.conn.Close()
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
}
