// Package fault kills the real flashpv binary at random moments inside CSI
// calls (its whole process group, child commands included, as a node loses
// a container), restarts it and retries each call as the kubelet and the
// provisioner do. Afterwards no call may have failed for good, every byte
// written to a published volume must be there, every volume must delete,
// and nothing may be left: no mount, no loop device, no file in the pool.
// With image pools a second node runs beside the first, and restores and
// clones are copied from one to the other with either side killed inside
// the transfer (remote_test.go).
//
// FLASHPV_FAULT_SEED reproduces a run's choices (kill timing still varies),
// FLASHPV_FAULT_OPS sets its length, FLASHPV_TEST_BACKEND its pool kind,
// FLASHPV_FAULT_BIN a prebuilt binary. Reports, events and driver logs go to
// _output/fault.
package fault

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/test/harness"
)

type config struct {
	seed     uint64
	ops      int
	slots    int
	killRate float64 // chance that a call's first attempt is killed
	backend  string
	dropCap  bool // run the driver without CAP_SYS_RESOURCE
}

func loadConfig(t *testing.T) config {
	t.Helper()
	c := config{ops: 300, slots: 5, killRate: 0.35, backend: harness.Backend()}
	c.seed = rand.Uint64() >> 1
	if s := os.Getenv("FLASHPV_FAULT_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 63)
		if err != nil {
			t.Fatalf("FLASHPV_FAULT_SEED=%q: want a number", s)
		}
		c.seed = n
	}
	if s := os.Getenv("FLASHPV_FAULT_OPS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("FLASHPV_FAULT_OPS=%q: want a positive number", s)
		}
		c.ops = n
	}
	// Where this process may grow a mounted ext4, half the seeds run the
	// driver without the capability, so both ways of growing ext4 are hit.
	if mounter.CanGrowMountedExt4() {
		if _, err := exec.LookPath("setpriv"); err == nil {
			c.dropCap = c.seed%2 == 1
		}
	}
	return c
}

// run is one fault injection run.
type run struct {
	t       *testing.T
	cfg     config
	opRng   *rand.Rand // which operations, on which volumes
	killRng *rand.Rand // which calls are killed, and where

	bin         string
	canGrowExt4 bool

	// *node is node-a, where the slots' volumes and their snapshots live.
	// peer is node-b (nil with one node), where copies of them are made.
	*node
	peer   *node
	broker *harness.Broker
	killMu sync.Mutex
	events *os.File
	outDir string

	vols    []*volume
	snaps   []*snapshot
	snapGen int
	copies  []*volume // node-b's volumes copied from node-a
	copyGen int
	// The copy being made: where its retries must resume, where its
	// transfers' lines in node-b's log begin, how long it should take.
	resumeFrom, logFrom int64
	transferTime        time.Duration
	opNum               int
	learned             *learned
	stats               *stats
	failures            []string
}

func TestFault(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("fault injection needs root: loop devices, mounts, mkfs, and killing the driver's process group")
	}
	cfg := loadConfig(t)
	t.Logf("seed %d: FLASHPV_FAULT_SEED=%d reproduces this run; %d operations; backend %s", cfg.seed, cfg.seed, cfg.ops, cfg.backend)
	fmt.Fprintf(os.Stderr, "fault: seed %d, %d operations, backend %s\n", cfg.seed, cfg.ops, cfg.backend)

	r := &run{t: t, cfg: cfg, opRng: newRng(cfg.seed, 1), killRng: newRng(cfg.seed, 2),
		learned: newLearned(), stats: newStats(), canGrowExt4: mounter.CanGrowMountedExt4() && !cfg.dropCap}
	r.setup()
	r.loop()
	r.finish()

	rep := r.report()
	t.Log("\n" + rep)
	for _, name := range []string{"report.txt", fmt.Sprintf("report-%d.txt", cfg.seed)} {
		if err := os.WriteFile(filepath.Join(r.outDir, name), []byte(rep), 0o644); err != nil {
			t.Errorf("writing the report: %v", err)
		}
	}
	r.checkKillFloors()
	if len(r.failures) > 0 {
		logs := r.driverLog.Name()
		if r.peer != nil {
			logs += ", " + r.peer.driverLog.Name()
		}
		t.Errorf("%d failures with seed %d (FLASHPV_FAULT_SEED=%d to run it again); report %s, events %s, driver logs %s",
			len(r.failures), cfg.seed, cfg.seed, filepath.Join(r.outDir, "report.txt"), r.events.Name(), logs)
	}
}

func (r *run) setup() {
	t := r.t
	r.outDir = filepath.Join(repoRoot(t), "_output", "fault")
	runDir := filepath.Join(r.outDir, fmt.Sprintf("seed-%d", r.cfg.seed))
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var err error
	if r.events, err = openLog(filepath.Join(runDir, "events.log")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.events.Close() })
	r.event("seed %d, %d operations, backend %s, driver can grow mounted ext4: %v", r.cfg.seed, r.cfg.ops, r.cfg.backend, r.canGrowExt4)

	r.bin = buildBinary(t)
	// Volumes at their largest, with room to spare.
	r.node = r.newNode("node-a", "4G", filepath.Join(runDir, "driver.log"))
	if r.twoNodes() {
		r.setupPeer(runDir)
	}
	// Runs before the pools' own cleanup (registered earlier), also when
	// the test fails: nothing of the drivers outlives the test.
	t.Cleanup(r.cleanup)
	for i := range r.cfg.slots {
		r.vols = append(r.vols, &volume{slot: i})
	}
	for _, n := range r.nodes() {
		if err := n.startDriver(); err != nil {
			t.Fatal(err)
		}
		n.baseline = n.poolContents()
	}
}

// loop runs the operations.
func (r *run) loop() {
	for r.opNum = 1; r.opNum <= r.cfg.ops; r.opNum++ {
		var live []*volume
		for _, v := range r.vols {
			if v.stuck == "" {
				live = append(live, v)
			}
		}
		if len(live) == 0 {
			r.event("op %d: every volume is stuck; stopping", r.opNum)
			break
		}
		if did, ok := r.remoteStep(); ok {
			r.stats.ops++
			r.event("op %d: %s", r.opNum, did)
		} else {
			v := live[r.opRng.IntN(len(live))]
			did := r.step(v)
			r.stats.ops++
			r.event("op %d: %s %s -> %s", r.opNum, did, v, v.state)
		}
		// Now and then the driver is killed between calls, idle.
		if r.killRng.IntN(100) < 2 {
			r.stats.idleKills++
			r.stats.commands["-"]++
			r.event("op %d: KILL between calls", r.opNum)
			if err := r.restart(); err != nil {
				r.fatal(err)
			}
		}
	}
}

// finish checks every volume's data one last time, takes every volume down
// and deletes it, stops the driver, and looks for anything left behind.
func (r *run) finish() {
	r.cfg.killRate = 0 // the end state is judged, not disturbed
	// Copies on node-b are checked and taken down like the slots' volumes.
	all := append(slices.Clone(r.vols), r.copies...)
	for _, v := range all {
		if v.stuck != "" || v.state == absent {
			continue
		}
		if len(v.files) > 0 || len(v.blocks) > 0 {
			if v.state == created {
				r.stage(v)
			}
			if v.state == staged {
				r.publish(v)
			}
			r.verifyData(v)
		}
	}
	for _, v := range all {
		if v.state == absent && v.id == "" {
			continue
		}
		if v.stuck != "" {
			// A stuck volume gets the teardown its pod's deletion
			// brings: the kubelet unmounts what a call left uncertain
			// (not what failed with a final error), the provisioner
			// deletes. Does that bring it back?
			v.state, v.stuck = max(v.state, v.reaching), ""
			r.event("final teardown of stuck volume %s", v)
		}
		if v.state == published {
			r.unpublish(v)
		}
		if v.state == staged && v.stuck == "" {
			r.unstage(v)
		}
		if v.state == created && v.stuck == "" {
			r.deleteVolume(v)
		}
	}
	r.deleteSnapshots()
	for _, n := range r.nodes() {
		if err := n.stop(); err != nil {
			r.failf(nil, "%s: %v", n.name, err)
		}
	}
	r.checkLeftovers()
}

// failf records a failure of the driver; the run goes on.
func (r *run) failf(v *volume, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if v != nil {
		msg = fmt.Sprintf("op %d, volume %s: %s", r.opNum, v, msg)
	} else {
		msg = fmt.Sprintf("op %d: %s", r.opNum, msg)
	}
	r.failures = append(r.failures, msg)
	r.event("FAILURE %s", msg)
	r.t.Errorf("seed %d: %s", r.cfg.seed, msg)
}

// fatal ends the run on an error of the test itself.
func (r *run) fatal(err error) {
	r.event("FATAL %v", err)
	r.t.Fatalf("seed %d, op %d: %v", r.cfg.seed, r.opNum, err)
}

func (r *run) event(format string, args ...any) {
	fmt.Fprintf(r.events, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// repoRoot is the directory of go.mod.
func repoRoot(t *testing.T) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}
