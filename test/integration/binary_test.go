package integration

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/flashpv/flashpv/test/harness"
)

func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "flashpv")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/flashpv/flashpv/cmd/flashpv").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestBinary runs the real command: flags, a stale socket from a crash,
// serving, and a graceful stop on SIGTERM.
func TestBinary(t *testing.T) {
	harness.RequireRoot(t)
	harness.RequireBackend(t, "image")
	bin := buildBinary(t)
	if out, err := exec.Command(bin, "--version").Output(); err != nil || !strings.HasPrefix(string(out), "flashpv ") {
		t.Fatalf("--version: %q %v", out, err)
	}
	if out, err := exec.Command(bin, "--endpoint", "unix:///tmp/x.sock").CombinedOutput(); err == nil || !strings.Contains(string(out), "--node-id is required") {
		t.Fatalf("missing --node-id: %q %v", out, err)
	}
	if out, err := exec.Command(bin, "--node-id", "n", "--pool", "bad name=/x").CombinedOutput(); err == nil || !strings.Contains(string(out), "pool name") {
		t.Fatalf("bad pool: %q %v", out, err)
	}

	dir := t.TempDir()
	sock := filepath.Join(dir, "csi.sock")
	// A socket left behind by a crashed process.
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	healthAddr := hl.Addr().String()
	hl.Close()
	cmd := exec.Command(bin, "--endpoint", "unix://"+sock, "--node-id", "node-bin",
		"--state-dir", filepath.Join(dir, "state"), "--kubelet-dir", filepath.Join(dir, "kubelet"),
		"--health-address", healthAddr, "--kubelet-registration-path", "/var/lib/kubelet/plugins/flashpv.dev/csi.sock",
		"--registration-dir", filepath.Join(dir, "registry"),
		// Two pools whose storage is not set up: reported, not used, and
		// the driver serves the default pool anyway.
		"--pool", "default="+filepath.Join(dir, "state", "pools", "default"),
		"--pool", "q=quota:"+filepath.Join(dir, "not-xfs"), "--pool", "l=lvm:flashpv-no-such-vg")
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var info *csi.NodeGetInfoResponse
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if info, err = csi.NewNodeClient(conn).NodeGetInfo(ctx, &csi.NodeGetInfoRequest{}); err == nil {
			break
		}
	}
	if err != nil || info.GetNodeId() != "node-bin" {
		t.Fatalf("NodeGetInfo: %v %v\n%s", info, err, logs.String())
	}
	if code, body := get(t, "http://"+healthAddr+"/healthz"); code != 200 || !strings.Contains(body, "warning: pool unusable: pool q") || !strings.Contains(body, "volume group flashpv-no-such-vg not found") {
		t.Fatalf("/healthz of the binary with unusable pools: %d %s", code, body)
	}
	sh, err := csi.NewNodeClient(conn).NodeGetStorageHealth(ctx, &csi.NodeGetStorageHealthRequest{})
	if err != nil || len(sh.GetBackendHealth()) != 2 {
		t.Fatalf("storage health with two unusable pools: %v %v", sh, err)
	}
	ctl := csi.NewControllerClient(conn)
	_, err = ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-q", Parameters: map[string]string{"pool": "q"},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap("")}})
	wantCode(t, err, codes.Unavailable, "create in an unusable pool")
	if c, err := ctl.GetCapacity(ctx, &csi.GetCapacityRequest{Parameters: map[string]string{"pool": "l"}}); err != nil || c.GetAvailableCapacity() != 0 {
		t.Fatalf("capacity of an unusable pool: %v %v", c, err)
	}
	if _, err := ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-ok", VolumeCapabilities: []*csi.VolumeCapability{blockCap()}}); err != nil {
		t.Fatalf("create in the usable pool beside unusable ones: %v", err)
	}
	if !strings.Contains(logs.String(), "Pool is unusable") {
		t.Errorf("no log line for the unusable pools:\n%s", logs.String())
	}
	if code, body := get(t, "http://"+healthAddr+"/metrics"); code != 200 || !strings.Contains(body, `flashpv_pool_volumes{pool="default"} 1`) || !strings.Contains(body, "flashpv_csi_requests_total") {
		t.Fatalf("/metrics of the binary: %d\n%s", code, body)
	}
	if _, err := os.Stat(filepath.Join(dir, "registry", "flashpv.dev-reg.sock")); err != nil {
		t.Fatalf("no registration socket: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "pools", "default")); err != nil {
		t.Fatalf("default pool not created under the state dir: %v", err)
	}
	// A second instance must not steal the live socket.
	if out, err := exec.Command(bin, "--endpoint", "unix://"+sock, "--node-id", "x", "--state-dir", filepath.Join(dir, "state2")).CombinedOutput(); err == nil || !strings.Contains(string(out), "in use") {
		t.Fatalf("second instance on a live socket: %v %s", err, out)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
	}
	for _, s := range []string{sock, filepath.Join(dir, "registry", "flashpv.dev-reg.sock")} {
		if _, err := os.Stat(s); !os.IsNotExist(err) {
			t.Errorf("socket %s left behind after a graceful stop", s)
		}
	}
}
