//go:build powerloss

// Package powerloss cuts the power of a VM running flashpv under load, again
// and again, and checks after each cut that nothing acknowledged is lost:
// every volume and snapshot a call reported made is listed and stageable,
// every record whose fsync returned is there, everything deletes, and the
// filesystems and LVM metadata check clean. See docs/powerloss.md.
//
// TestPowerLoss runs on the host (make test-powerloss); TestGuest is its
// other half, in the VM. The build tag keeps both out of `go test ./...`.
package powerloss

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// hostConfig is a run's shape: FLASHPV_POWERLOSS_SEED, _CUTS, _WINDOW.
type hostConfig struct {
	seed   uint64
	cuts   int
	window time.Duration // a cut lands uniformly in the first window of a workload
}

func loadHostConfig(t *testing.T) hostConfig {
	c := hostConfig{seed: rand.Uint64() >> 1, cuts: 20, window: 10 * time.Second}
	if s := os.Getenv("FLASHPV_POWERLOSS_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 63)
		if err != nil {
			t.Fatalf("FLASHPV_POWERLOSS_SEED=%q: want a number", s)
		}
		c.seed = n
	}
	if s := os.Getenv("FLASHPV_POWERLOSS_CUTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("FLASHPV_POWERLOSS_CUTS=%q: want a positive number", s)
		}
		c.cuts = n
	}
	if s := os.Getenv("FLASHPV_POWERLOSS_WINDOW"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("FLASHPV_POWERLOSS_WINDOW=%q: want a duration", s)
		}
		c.window = d
	}
	return c
}

// bootResult is what the host saw of one boot.
type bootResult struct {
	n        int
	rc       int
	took     time.Duration // from vmexec's start to its end
	vmTime   time.Duration // of that, the VM's life (not waiting for another VM)
	cut      bool
	cutAfter time.Duration // from the workload's ready line to the cut
	events   []event
	checks   []string // the guest's check lines
	marks    []string // how far it got when
	fails    []string
}

func TestPowerLoss(t *testing.T) {
	if os.Getenv("FLASHPV_POWERLOSS_GUEST") == "1" {
		t.Skip("the host's half")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: qemu and the VM harness")
	}
	cfg := loadHostConfig(t)
	fmt.Fprintf(os.Stderr, "powerloss: seed %d (FLASHPV_POWERLOSS_SEED=%d reproduces the cut moments), %d cuts, window %v\n",
		cfg.seed, cfg.seed, cfg.cuts, cfg.window)
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(repo, "_output/powerloss")
	os.RemoveAll(out)
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	build(t, repo, out)
	disks, err := os.MkdirTemp("/var/tmp", "flashpv-powerloss.")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(disks)
	// Sparse: they cost what the guest writes.
	for i, size := range []int64{3 << 30, 3 << 30, 3 << 30, 3 << 30, 4 << 30} {
		f, err := os.Create(filepath.Join(disks, fmt.Sprintf("disk%d.raw", i+1)))
		if err == nil {
			err = errors.Join(f.Truncate(size), f.Close())
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(cfg.seed, 0x706c))
	start := time.Now()
	var boots []*bootResult
	for n := 0; n <= cfg.cuts; n++ {
		final := n == cfg.cuts
		delay := time.Duration(rng.Float64() * float64(cfg.window))
		b := runBoot(t, repo, out, disks, cfg.seed, n, final, delay)
		boots = append(boots, b)
		fmt.Fprintf(os.Stderr, "powerloss: %s\n", b.summary())
		writeReport(t, out, cfg, boots, time.Since(start)) // so far
		bad := b.rc != 0 && !b.cut || len(b.fails) > 0 || (!final && !b.cut)
		if bad {
			writeReport(t, out, cfg, boots, time.Since(start))
			t.Fatalf("boot %d failed (seed %d): exit %d; %v; its output is %s", n, cfg.seed, b.rc, b.fails,
				filepath.Join(out, fmt.Sprintf("boot%d.log", n)))
		}
	}
	rep := writeReport(t, out, cfg, boots, time.Since(start))
	t.Log("\n" + rep)
}

// build makes the flashpv binary and the guest's test binary (static: the
// guest has its own libc).
func build(t *testing.T, repo, out string) {
	for _, args := range [][]string{
		{"build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(out, "flashpv"), "./cmd/flashpv"},
		{"test", "-c", "-tags", "powerloss", "-o", filepath.Join(out, "guest.test"), "./test/powerloss"},
	} {
		cmd := exec.Command("go", args...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %v: %v\n%s", args, err, b)
		}
	}
}

// runBoot boots the VM on the disks, and unless it is the final boot cuts
// its power delay after the guest's workload is ready (every writer running).
func runBoot(t *testing.T, repo, out, disks string, seed uint64, n int, final bool, delay time.Duration) *bootResult {
	b := &bootResult{n: n}
	logf, err := os.Create(filepath.Join(out, fmt.Sprintf("boot%d.log", n)))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	evf, err := os.Create(filepath.Join(out, fmt.Sprintf("events-boot%d.txt", n)))
	if err != nil {
		t.Fatal(err)
	}
	defer evf.Close()
	cmd := exec.Command(filepath.Join(repo, "hack/vm/vmexec"), filepath.Join(out, "guest.test"), "-test.run", "^TestGuest$", "-test.v")
	cmd.Env = append(os.Environ(), "FLASHPV_POWERLOSS_GUEST=1", fmt.Sprintf("FLASHPV_POWERLOSS_BOOT=%d", n),
		fmt.Sprintf("FLASHPV_POWERLOSS_SEED=%d", seed), "FLASHPV_POWERLOSS_BIN="+filepath.Join(out, "flashpv"),
		"FLASHPV_POWERLOSS_LOGDIR="+out, "FLASHPV_VM_DISKDIR="+disks, "FLASHPV_VM_TIMEOUT=1200",
		"FLASHPV_POWERLOSS_PREV="+filepath.Join(out, fmt.Sprintf("events-boot%d.txt", n-1)))
	if final {
		cmd.Env = append(cmd.Env, "FLASHPV_POWERLOSS_FINAL=1")
	}
	// vmexec stops its VM on SIGTERM, also when this test dies; a test
	// stopped by a signal still removes its disks.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	began := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var timer *time.Timer
	var started, ran time.Time
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if strings.HasPrefix(line, "=== RUN") && ran.IsZero() {
				ran = time.Now()
			}
			ev, ok := parseEvent(line)
			if !ok {
				continue
			}
			fmt.Fprintln(evf, line)
			b.events = append(b.events, ev)
			switch ev.Ev {
			case "ready":
				if !final {
					mu.Lock()
					started = time.Now()
					timer = time.AfterFunc(delay, func() {
						mu.Lock()
						defer mu.Unlock()
						b.cut, b.cutAfter = true, time.Since(started)
						cmd.Process.Signal(syscall.SIGUSR1)
					})
					mu.Unlock()
				}
			case "check":
				b.checks = append(b.checks, ev.Msg)
			case "mark":
				b.marks = append(b.marks, ev.Msg)
			case "fail":
				b.fails = append(b.fails, ev.Msg)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err = cmd.Wait()
	pw.Close()
	<-done
	mu.Lock()
	if timer != nil {
		timer.Stop()
	}
	mu.Unlock()
	b.took = time.Since(began)
	b.vmTime = b.took
	if !ran.IsZero() && len(b.marks) > 0 {
		// The kernel's uptime when the test began covers the boot.
		up, _ := strconv.ParseFloat(b.marks[0][strings.LastIndexByte(b.marks[0], ' ')+1:], 64)
		b.vmTime = time.Since(ran) + time.Duration(up*float64(time.Second))
	}
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		b.rc = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("boot %d: %v", n, err)
	}
	if b.cut && b.rc != 137 {
		// The guest ended before the cut landed: no cut.
		b.cut = false
	}
	return b
}
