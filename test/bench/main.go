// Command bench measures flashpv on the machine it runs on and writes a
// report (report.md, report.json, ratios.png):
//
//   - data path: fio with O_DIRECT and libaio on a file on the pool's own
//     filesystem (the limit for a file-backed volume) and on ext4, xfs and
//     Block volumes provisioned through CSI, alternated round after round;
//   - control path: p50/p99 of each CSI call and lifecycles per second at
//     several concurrencies;
//   - scale: one node with 1000 published volumes, per-call latency against a
//     node with 10, and a driver restart (time to serve, RSS);
//   - snapshot: snapshot, restore and clone latency of a volume on an XFS
//     pool with reflinks and on an ext4 pool, against cp (snapshot.go);
//   - cluster (-cluster, on its own, added to the report in -out): on the
//     local cluster, a StatefulSet scaled to 30 replicas against emptyDir,
//     a pod on a claim restored from a VolumeSnapshot, and a restore onto
//     another node against a plain TCP copy between the nodes (cluster.go).
//
// It runs the real flashpv binary on a real socket, as root. Nothing here is
// a test: it reports medians and ratios, and asserts no time.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/test/harness"
)

type bench struct {
	out, work, bin string
	rounds         int
	runtime, ramp  time.Duration
	fioSize        int64
	volumes        int
	concurrency    []int
	expandFs       string
	scale          int
	scaleSize      int64
	snap           snapshotOptions
	cluster        clusterOptions
}

func (b *bench) driverConfig(maxVolumes int) driverConfig {
	return driverConfig{
		bin: b.bin, socket: filepath.Join(b.work, "csi.sock"), pool: filepath.Join(b.work, "pool"),
		kubelet: filepath.Join(b.work, "kubelet"), logFile: filepath.Join(b.out, "flashpv.log"), maxVolumes: maxVolumes,
	}
}

func main() {
	// The cluster phase runs the bench again inside a node's network
	// namespace as the two sides of its plain copy.
	if len(os.Args) > 1 && os.Args[1] == plainCopyCommand {
		if err := runPlainCopy(os.Args[2:]); err != nil {
			log.Fatal(err)
		}
		return
	}
	b := &bench{}
	var phases, fioSize, scaleSize, conc string
	var quick bool
	flag.StringVar(&b.out, "out", "_output/bench", "directory of the report")
	flag.StringVar(&b.work, "work", "", "where the bench makes its pool, kubelet paths and raw file (in WORK/flashpv-bench), on the filesystem to measure (default: OUT)")
	flag.StringVar(&b.bin, "flashpv", "", "flashpv binary (default: built from this checkout)")
	flag.StringVar(&phases, "phases", "data,control,scale,snapshot", "what to run")
	flag.IntVar(&b.rounds, "rounds", 5, "data path: rounds of every case on every target")
	flag.DurationVar(&b.runtime, "runtime", 5*time.Second, "data path: measured time of each fio run")
	flag.DurationVar(&b.ramp, "ramp", time.Second, "data path: unmeasured warm-up of each fio run")
	flag.StringVar(&fioSize, "fio-size", "1Gi", "data path: bytes each fio job spans")
	flag.IntVar(&b.volumes, "volumes", 32, "control path: volumes per concurrency (at least the concurrency)")
	flag.StringVar(&conc, "concurrency", "1,8,32", "control path: concurrencies")
	flag.StringVar(&b.expandFs, "expand-fstype", "", "control path: filesystem grown online (default ext4 with CAP_SYS_RESOURCE, else xfs)")
	flag.IntVar(&b.scale, "scale", 1000, "scale: volumes on the node")
	flag.StringVar(&scaleSize, "scale-size", "8Mi", "scale: size of each volume")
	flag.BoolVar(&quick, "quick", false, "a short run that checks the bench itself: 1 round, tiny sizes, 50 volumes")
	b.cluster.addFlags(flag.CommandLine)
	b.snap.addFlags(flag.CommandLine)
	flag.Parse()
	if err := b.snap.finish(quick); err != nil {
		log.Fatal(err)
	}
	if err := b.cluster.finish(quick); err != nil {
		log.Fatal(err)
	}
	if b.cluster.enabled {
		if err := b.runClusterPhase(); err != nil {
			log.Fatal(err)
		}
		return
	}
	if quick {
		b.rounds, b.runtime, b.ramp, fioSize, b.volumes, conc, b.scale = 1, time.Second, 0, "64Mi", 8, "1,8", 50
	}
	var err error
	if b.fioSize, err = config.ParseSize(fioSize); err != nil {
		log.Fatalf("-fio-size: %v", err)
	}
	if b.scaleSize, err = config.ParseSize(scaleSize); err != nil {
		log.Fatalf("-scale-size: %v", err)
	}
	for _, s := range strings.Split(conc, ",") {
		var c int
		if _, err := fmt.Sscan(s, &c); err != nil || c < 1 {
			log.Fatalf("-concurrency: bad value %q", s)
		}
		b.concurrency = append(b.concurrency, c)
	}
	if b.expandFs == "" {
		b.expandFs = "xfs"
		if mounter.CanGrowMountedExt4() {
			b.expandFs = "ext4"
		}
	}
	if os.Geteuid() != 0 {
		log.Fatal("bench needs root: loop devices, mkfs and mounts")
	}
	if err := b.run(phases); err != nil {
		log.Fatal(err)
	}
}

func (b *bench) run(phases string) error {
	var err error
	if b.out, err = filepath.Abs(b.out); err != nil {
		return err
	}
	if b.work == "" {
		b.work = b.out
	}
	// Everything the bench makes lives in a directory of its own, which it
	// removes when done.
	if b.work, err = filepath.Abs(filepath.Join(b.work, "flashpv-bench")); err != nil {
		return err
	}
	for _, dir := range []string{b.out, b.work} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if b.bin == "" {
		b.bin = filepath.Join(b.work, "flashpv")
		if out, err := exec.Command("go", "build", "-o", b.bin, "github.com/flashpv/flashpv/cmd/flashpv").CombinedOutput(); err != nil {
			return fmt.Errorf("building flashpv: %v\n%s", err, out)
		}
	}
	os.Remove(filepath.Join(b.out, "flashpv.log"))
	// Whatever happens, leave no mount and no loop device behind.
	defer b.sweep()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	rep := &report{Machine: describeMachine(b.work), Settings: settings{
		Rounds: b.rounds, RuntimeSec: b.runtime.Seconds(), RampSec: b.ramp.Seconds(), FioBytes: b.fioSize,
		Volumes: b.volumes, Concurrency: b.concurrency, Scale: b.scale, ScaleVolumeBytes: b.scaleSize,
	}}
	start := time.Now()
	for _, phase := range strings.Split(phases, ",") {
		log.Printf("== %s", phase)
		switch phase {
		case "data":
			rep.Data, err = b.runData(ctx)
		case "control":
			rep.Control, err = b.runControl(ctx)
		case "scale":
			rep.Scale, err = b.runScale(ctx)
		case "snapshot":
			rep.Snapshot, err = b.runSnapshot(ctx)
		default:
			err = fmt.Errorf("unknown phase %q", phase)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", phase, err)
		}
		b.sweep()
		// Keep what is measured so far, should a later phase fail.
		rep.Seconds = time.Since(start).Seconds()
		if err := rep.write(b.out, false); err != nil {
			return err
		}
	}
	return rep.write(b.out, true)
}

// sweep undoes what a failed phase left: mounts below the bench's kubelet
// directory, loop devices of its pool, and the pool's images.
func (b *bench) sweep() {
	cfg := b.driverConfig(0)
	for _, err := range harness.Sweep(cfg.kubelet, cfg.pool) {
		log.Printf("cleanup: %v", err)
	}
	// Remove files only once nothing is mounted or attached any more.
	if len(harness.Sweep(cfg.kubelet, cfg.pool)) == 0 {
		os.RemoveAll(cfg.kubelet)
		os.RemoveAll(cfg.pool)
		os.RemoveAll(filepath.Join(b.work, "raw"))
	}
}

// machine says where the figures come from.
type machine struct {
	Date    string `json:"date"`
	Host    string `json:"host"`
	Kernel  string `json:"kernel"`
	CPU     string `json:"cpu"`
	CPUs    int    `json:"cpus"`
	Memory  string `json:"memory"`
	PoolFS  string `json:"pool_fs"`
	Device  string `json:"device"`
	Fio     string `json:"fio"`
	Flashpv string `json:"flashpv"`
}

func describeMachine(dir string) machine {
	run := func(name string, args ...string) string {
		out, _ := exec.Command(name, args...).Output()
		return strings.TrimSpace(string(out))
	}
	m := machine{Date: time.Now().UTC().Format(time.DateOnly), Kernel: run("uname", "-r"), CPUs: runtime.NumCPU(),
		Fio: run("fio", "--version"), Flashpv: run("git", "describe", "--always", "--dirty")}
	m.Host, _ = os.Hostname()
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(string(data), "MemTotal: %d kB", &kb)
		m.Memory = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
	}
	src := run("findmnt", "-n", "-o", "SOURCE", "--target", dir)
	m.PoolFS = run("findmnt", "-n", "-o", "FSTYPE,OPTIONS", "--target", dir)
	m.Device = src
	if dev := strings.TrimPrefix(src, "/dev/"); dev != src {
		queue := "/sys/class/block/" + dev + "/queue/"
		sched, _ := os.ReadFile(queue + "scheduler")
		rot, _ := os.ReadFile(queue + "rotational")
		m.Device = fmt.Sprintf("%s (scheduler %s, rotational %s)", src, strings.TrimSpace(string(sched)), strings.TrimSpace(string(rot)))
	}
	return m
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
