package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/flashpv/flashpv/test/harness"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// driverProc is a running flashpv binary and a CSI client on its socket.
type driverProc struct {
	cmd     *exec.Cmd
	conn    *grpc.ClientConn
	ctl     csi.ControllerClient
	node    csi.NodeClient
	ident   csi.IdentityClient
	kubelet string
	exited  chan error
}

// driverConfig is how the bench runs flashpv: one pool, its own kubelet
// directory, no registration and no HTTP endpoint.
type driverConfig struct {
	bin, socket, pool, kubelet, logFile string
	maxVolumes                          int
}

// startDriver starts flashpv and returns once Probe answers ready, with the
// time from exec to that answer.
func startDriver(ctx context.Context, c driverConfig) (*driverProc, time.Duration, error) {
	logs, err := os.OpenFile(c.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, 0, err
	}
	defer logs.Close()
	cmd := exec.Command(c.bin, "--endpoint", "unix://"+c.socket, "--node-id", "bench",
		"--kubelet-dir", c.kubelet, "--pool", "default="+c.pool,
		// Beside the kubelet directory: nothing of the bench's driver
		// lands in the machine's own /var/lib/flashpv.
		"--state-dir", filepath.Join(filepath.Dir(c.kubelet), "state"),
		"--max-volumes", strconv.Itoa(c.maxVolumes), "--health-address", "")
	cmd.Stdout, cmd.Stderr = logs, logs
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, 0, err
	}
	d := &driverProc{cmd: cmd, kubelet: c.kubelet, exited: make(chan error, 1)}
	go func() { d.exited <- cmd.Wait() }()
	// Reconnect at once while the socket is not there yet: the default
	// backoff (1 s) would be measured as the driver's start time.
	d.conn, err = grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: time.Millisecond, Multiplier: 1.2, MaxDelay: 5 * time.Millisecond}, MinConnectTimeout: time.Second}))
	if err != nil {
		d.stop()
		return nil, 0, err
	}
	d.ctl, d.node, d.ident = csi.NewControllerClient(d.conn), csi.NewNodeClient(d.conn), csi.NewIdentityClient(d.conn)
	for {
		select {
		case err := <-d.exited:
			return nil, 0, fmt.Errorf("flashpv exited at start (%v); see %s", err, c.logFile)
		default:
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := d.ident.Probe(pctx, &csi.ProbeRequest{}, grpc.WaitForReady(true))
		cancel()
		if err == nil && resp.GetReady().GetValue() {
			return d, time.Since(start), nil
		}
		if time.Since(start) > 30*time.Second {
			d.stop()
			return nil, 0, fmt.Errorf("flashpv not ready after 30s: %v", err)
		}
		time.Sleep(time.Millisecond)
	}
}

// stop ends the driver with SIGTERM (SIGKILL after 30 s) and returns how long
// it took to exit.
func (d *driverProc) stop() time.Duration {
	start := time.Now()
	if d.conn != nil {
		d.conn.Close()
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
	return time.Since(start)
}

// rss is the driver's resident memory and its peak, in bytes.
func (d *driverProc) rss() (cur, peak int64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			cur = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	return cur, peak
}

// recorder collects the latency of each call by name.
type recorder struct {
	mu  sync.Mutex
	lat map[string][]time.Duration
}

func newRecorder() *recorder { return &recorder{lat: map[string][]time.Duration{}} }

func (r *recorder) add(name string, d time.Duration) {
	r.mu.Lock()
	r.lat[name] = append(r.lat[name], d)
	r.mu.Unlock()
}

// time runs f and records its latency under name when it succeeds.
func (r *recorder) time(name string, f func() error) error {
	start := time.Now()
	if err := f(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.add(name, time.Since(start))
	return nil
}

// latencyStats summarises the latencies of one call.
type latencyStats struct {
	Count int     `json:"count"`
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
}

func (r *recorder) stats(name string) latencyStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.lat[name]
	return latencyStats{Count: len(l), P50ms: ms(percentile(l, 50)), P99ms: ms(percentile(l, 99))}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// percentile is the nearest-rank percentile p of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(p/100*float64(len(s))+0.999999) - 1
	return s[max(0, min(rank, len(s)-1))]
}

// vol is a volume the bench made, with the paths the kubelet would use.
type vol struct {
	name, id        string
	cap             *csi.VolumeCapability
	staging, target string
}

// The capabilities the harness builds.
var mountCap, blockCap = harness.MountCap, harness.BlockCap

// newVol names a volume and lays out its kubelet paths like the kubelet does.
func (d *driverProc) newVol(name string, vc *csi.VolumeCapability) *vol {
	sum := sha256.Sum256([]byte(name))
	h := hex.EncodeToString(sum[:8])
	return &vol{
		name: name, cap: vc,
		staging: filepath.Join(d.kubelet, "plugins/kubernetes.io/csi/flashpv.dev", h, "globalmount"),
		target:  filepath.Join(d.kubelet, "pods", h, "volumes/kubernetes.io~csi", name, "mount"),
	}
}

func (d *driverProc) create(ctx context.Context, r *recorder, v *vol, size int64) error {
	return r.time("CreateVolume", func() error {
		resp, err := d.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{
			Name: v.name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
			VolumeCapabilities: []*csi.VolumeCapability{v.cap},
		})
		v.id = resp.GetVolume().GetVolumeId()
		return err
	})
}

func (d *driverProc) stage(ctx context.Context, r *recorder, v *vol) error {
	if err := os.MkdirAll(v.staging, 0o750); err != nil {
		return err
	}
	return r.time("NodeStageVolume", func() error {
		_, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: v.cap})
		return err
	})
}

func (d *driverProc) publish(ctx context.Context, r *recorder, v *vol) error {
	if err := os.MkdirAll(filepath.Dir(v.target), 0o750); err != nil {
		return err
	}
	return r.time("NodePublishVolume", func() error {
		_, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target, VolumeCapability: v.cap})
		return err
	})
}

func (d *driverProc) unpublish(ctx context.Context, r *recorder, v *vol) error {
	return r.time("NodeUnpublishVolume", func() error {
		_, err := d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target})
		return err
	})
}

func (d *driverProc) unstage(ctx context.Context, r *recorder, v *vol) error {
	return r.time("NodeUnstageVolume", func() error {
		_, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging})
		return err
	})
}

func (d *driverProc) delete(ctx context.Context, r *recorder, v *vol) error {
	return r.time("DeleteVolume", func() error {
		_, err := d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
		return err
	})
}

func (d *driverProc) expand(ctx context.Context, r *recorder, v *vol, size int64) error {
	return r.time("NodeExpandVolume", func() error {
		_, err := d.node.NodeExpandVolume(ctx, &csi.NodeExpandVolumeRequest{
			VolumeId: v.id, VolumePath: v.target, StagingTargetPath: v.staging,
			CapacityRange: &csi.CapacityRange{RequiredBytes: size}, VolumeCapability: v.cap,
		})
		return err
	})
}

// up creates, stages and publishes v, recording the three together as
// "create+stage+publish".
func (d *driverProc) up(ctx context.Context, r *recorder, v *vol, size int64) error {
	start := time.Now()
	if err := d.create(ctx, r, v, size); err != nil {
		return err
	}
	if err := d.stage(ctx, r, v); err != nil {
		return err
	}
	if err := d.publish(ctx, r, v); err != nil {
		return err
	}
	r.add("create+stage+publish", time.Since(start))
	return nil
}

// down unpublishes, unstages and deletes v.
func (d *driverProc) down(ctx context.Context, r *recorder, v *vol) error {
	start := time.Now()
	if err := d.unpublish(ctx, r, v); err != nil {
		return err
	}
	if err := d.unstage(ctx, r, v); err != nil {
		return err
	}
	if err := d.delete(ctx, r, v); err != nil {
		return err
	}
	r.add("unpublish+unstage+delete", time.Since(start))
	return nil
}

// parallel runs f for i in [0, n) on c workers and returns the wall time and
// the first error.
func parallel(n, c int, f func(i int) error) (time.Duration, error) {
	start := time.Now()
	next := make(chan int)
	errs := make(chan error, c)
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range n {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return time.Since(start), err
}

// listAll pages through ListVolumes and returns how many volumes it saw.
func (d *driverProc) listAll(ctx context.Context) (int, error) {
	n, token := 0, ""
	for {
		resp, err := d.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token})
		if err != nil {
			return n, err
		}
		n += len(resp.GetEntries())
		if token = resp.GetNextToken(); token == "" {
			return n, nil
		}
	}
}

// listPage asks for the first n volumes.
func (d *driverProc) listPage(ctx context.Context, n int32) error {
	_, err := d.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: n})
	return err
}

// volumeStats calls NodeGetVolumeStats on a published volume, recording its
// latency when r is not nil.
func (d *driverProc) volumeStats(ctx context.Context, r *recorder, v *vol) error {
	call := func() error {
		_, err := d.node.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: v.id, VolumePath: v.target, StagingTargetPath: v.staging})
		return err
	}
	if r == nil {
		return call()
	}
	return r.time("NodeGetVolumeStats", call)
}

// available is what GetCapacity offers for ext4 volumes.
func (d *driverProc) available(ctx context.Context) (int64, error) {
	resp, err := d.ctl.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{mountCap("ext4")}})
	return resp.GetAvailableCapacity(), err
}

func (d *driverProc) capacity(ctx context.Context) error {
	_, err := d.ctl.GetCapacity(ctx, &csi.GetCapacityRequest{VolumeCapabilities: []*csi.VolumeCapability{mountCap("ext4")}})
	return err
}
