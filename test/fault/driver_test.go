package fault

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// buildBinary builds the real flashpv command, or takes the one named by
// FLASHPV_FAULT_BIN (a VM has no Go toolchain).
func buildBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("FLASHPV_FAULT_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("FLASHPV_FAULT_BIN: %v", err)
		}
		return bin
	}
	bin := filepath.Join(t.TempDir(), "flashpv")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/flashpv/flashpv/cmd/flashpv").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startTimeout bounds a start of the driver.
const startTimeout = 3 * time.Minute

// driverProc is one incarnation of the flashpv binary, in its own process
// group (its pgid is its pid).
type driverProc struct {
	pid    int
	exited chan struct{}
	err    error // the exit status, once exited is closed
	conn   *grpc.ClientConn
	ctl    csi.ControllerClient
	node   csi.NodeClient
}

// startDriver starts the node's binary and waits until it answers on its
// socket.
func (n *node) startDriver() error {
	r := n.r
	args := []string{
		"--endpoint", "unix://" + n.sock, "--node-id", n.name, "--kubelet-dir", n.kubeletDir,
		"--pool", "default=" + n.poolArg, "--state-dir", n.stateDir, "--health-address", "", "--max-volumes", "100", "-v", "2",
	}
	args = append(args, n.transfer...)
	name := r.bin
	if r.cfg.dropCap {
		// setpriv execs the driver in place (same pid, same group) without
		// CAP_SYS_RESOURCE: ext4 then grows offline only.
		args = append([]string{"--inh-caps=-sys_resource", "--bounding-set=-sys_resource", "--", r.bin}, args...)
		name = "setpriv"
	}
	n.starts++
	fmt.Fprintf(n.driverLog, "\n===== flashpv start %d (op %d) %s\n", n.starts, r.opNum, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = n.driverLog, n.driverLog
	// Pdeathsig fires when the thread that forked exits: that thread stays
	// locked to the goroutine that waits for the process, so the driver
	// dies with the test even where no cleanup runs (a test timeout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &driverProc{exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	n.drv = p
	// gRPC's default reconnect backoff starts at a second; the new
	// process listens within milliseconds.
	conn, err := grpc.NewClient("unix://"+n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: time.Second,
			Backoff: backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.5, MaxDelay: 100 * time.Millisecond}}))
	if err != nil {
		return err
	}
	p.conn, p.ctl, p.node = conn, csi.NewControllerClient(conn), csi.NewNodeClient(conn)
	// Opening pools runs commands (lvm reports), which in a VM on a busy
	// host take long; a start that hangs still fails.
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := p.node.NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s: flashpv exited while starting (%v); its log is %s", n.name, p.err, n.driverLog.Name())
		default:
		}
		if time.Now().After(deadline) {
			// Its goroutines' stacks go to its log: where did it hang?
			syscall.Kill(p.pid, syscall.SIGQUIT)
			select {
			case <-p.exited:
			case <-time.After(5 * time.Second):
			}
			return fmt.Errorf("flashpv does not answer on %s after %v (stacks in %s): %v", n.sock, startTimeout, n.driverLog.Name(), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// signalGroup sends SIGKILL to the driver's whole process group and to every
// process below it that left the group (a child in a group of its own): what
// a container runtime does to a killed container. below is what is below the
// driver, if the caller has just read it. It returns every process killed.
func (p *driverProc) signalGroup(below map[int]string) []int {
	if below == nil {
		below = descendants(p.pid)
	}
	// The group goes first and at once; a scan of /proc before it would
	// let fast calls finish before the kill lands.
	syscall.Kill(-p.pid, syscall.SIGKILL)
	victims := []int{p.pid}
	for pid := range below {
		syscall.Kill(pid, syscall.SIGKILL)
		victims = append(victims, pid)
	}
	// Members of the group that are not the driver's children any more
	// (orphans of an earlier incarnation cannot exist: each was waited for).
	return append(victims, groupMembers(p.pid)...)
}

// waitGone waits until the driver and the processes it was killed with are
// gone, as a runtime does before it starts the container again.
func (p *driverProc) waitGone(victims []int) error {
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("flashpv (pid %d) still runs 30s after SIGKILL", p.pid)
	}
	p.conn.Close()
	deadline := time.Now().Add(30 * time.Second)
	for _, pid := range victims {
		for alive(pid) {
			if time.Now().After(deadline) {
				return fmt.Errorf("process %d (%s) of the killed driver still runs 30s after SIGKILL", pid, comm(pid))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// kill kills the running driver's process group and waits until it is gone.
func (n *node) kill() error {
	if n.drv == nil {
		return nil
	}
	victims := n.drv.signalGroup(nil)
	err := n.drv.waitGone(victims)
	n.drv = nil
	return err
}

// restart kills whatever runs and starts the driver again.
func (n *node) restart() error {
	if err := n.kill(); err != nil {
		return err
	}
	n.r.stats.restarts++
	return n.startDriver()
}

// stop ends the driver with SIGTERM, as a rollout does, and waits for it.
func (n *node) stop() error {
	p := n.drv
	if p == nil {
		return nil
	}
	syscall.Kill(p.pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("flashpv does not stop 30s after SIGTERM")
	}
	n.drv = nil
	p.conn.Close()
	if p.err != nil {
		return fmt.Errorf("flashpv after SIGTERM: %v", p.err)
	}
	return nil
}

// crashed tells whether the driver exited without being killed.
func (n *node) crashed() bool {
	if n.drv == nil {
		return false
	}
	select {
	case <-n.drv.exited:
		return true
	default:
		return false
	}
}

// openLog opens the file every incarnation of the driver logs to.
func openLog(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
}
