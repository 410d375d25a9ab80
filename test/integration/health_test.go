package integration

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flashpv/flashpv/pkg/daemon"
	"github.com/flashpv/flashpv/pkg/health"
	"github.com/flashpv/flashpv/test/harness"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type refused struct{}

func (refused) Healthy() error { return errString("the kubelet refused the registration: bad version") }

type errString string

func (e errString) Error() string { return string(e) }

// TestHealthz checks /healthz against a healthy driver, a pool directory that
// vanished, a pool that turned read-only (both named as warnings), a dead
// socket and a kubelet refusal.
func TestHealthz(t *testing.T) {
	harness.RequireBackend(t, "image")
	poolFS := harness.PoolFS(t, "256M")
	env := harness.Start(t, harness.Options{Pools: map[string]string{"default": poolFS + "/pool"}})
	checker := &health.Checker{CSISocket: env.Socket, Pools: env.Open}
	srv := httptest.NewServer(daemon.Handler(checker, prometheus.NewRegistry()))
	defer srv.Close()

	if code, body := get(t, srv.URL+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("healthy driver: %d %q", code, body)
	}

	// A read-only view of the pool, as after an I/O error remounts it.
	dir := poolFS + "/pool"
	sh(t, "mount --bind "+dir+" "+dir)
	roMounted := true
	t.Cleanup(func() {
		if roMounted {
			exec.Command("umount", dir).Run()
		}
	})
	sh(t, "mount -o remount,bind,ro "+dir)
	code, body := get(t, srv.URL+"/healthz")
	sh(t, "umount "+dir)
	roMounted = false
	// A failing pool is named under a 200: restarting flashpv would not fix it.
	if code != 200 || !strings.Contains(body, "warning: pool default") || !strings.Contains(body, "read-only") {
		t.Fatalf("read-only pool: %d %q", code, body)
	}

	if err := os.Rename(poolFS+"/pool", poolFS+"/moved"); err != nil {
		t.Fatal(err)
	}
	code, body = get(t, srv.URL+"/healthz")
	os.Rename(poolFS+"/moved", poolFS+"/pool")
	if code != 200 || !strings.Contains(body, "warning: pool default") {
		t.Fatalf("missing pool directory: %d %q", code, body)
	}
	if code, body := get(t, srv.URL+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
		t.Fatalf("pool back: %d %q", code, body)
	}

	checker.Registration = refused{}
	if code, body := get(t, srv.URL+"/healthz"); code != 503 || !strings.Contains(body, "refused") {
		t.Fatalf("refused registration: %d %q", code, body)
	}
	checker.Registration = nil

	dead := &health.Checker{CSISocket: env.Root + "/nothing.sock", Pools: env.Open}
	if err := dead.Check(ctx); err == nil || !strings.Contains(err.Error(), "CSI socket") {
		t.Fatalf("dead socket: %v", err)
	}
}

// TestMetricsFollowVolumes checks that pool and call metrics move when
// volumes are created, fail and are deleted.
func TestMetricsFollowVolumes(t *testing.T) {
	harness.RequireBackend(t, "image")
	reg := prometheus.NewRegistry()
	env := harness.Start(t, harness.Options{Metrics: reg, Pools: map[string]string{"default": harness.PoolFS(t, "256M")}})
	c := newClient(t, env)
	gauge := func(name string) float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatalf("no metric %s", name)
		return 0
	}
	calls := func(method, code string) float64 {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() != "flashpv_csi_requests_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				labels := map[string]string{}
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["method"] == method && labels["code"] == code {
					return m.GetCounter().GetValue()
				}
			}
		}
		return 0
	}
	avail0 := gauge("flashpv_pool_available_bytes")
	id := c.create("pvc-m", 32<<20, blockCap()).GetVolumeId()
	if gauge("flashpv_pool_volumes") != 1 || gauge("flashpv_pool_allocated_bytes") != 32<<20 || avail0-gauge("flashpv_pool_available_bytes") < 32<<20 {
		t.Fatal("pool metrics did not follow a create")
	}
	if calls("CreateVolume", "OK") != 1 {
		t.Fatalf("CreateVolume OK count %v", calls("CreateVolume", "OK"))
	}
	_, err := c.ctl.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "pvc-too-big", CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 40}, VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
	if err == nil || calls("CreateVolume", "ResourceExhausted") != 1 {
		t.Fatalf("failed create not counted: %v", err)
	}
	os.Rename(c.imagePath(id), c.imagePath(id)+".gone")
	if gauge("flashpv_pool_abnormal_volumes") != 1 {
		t.Fatal("a volume without image is not counted abnormal")
	}
	os.Rename(c.imagePath(id)+".gone", c.imagePath(id))
	c.delete(id)
	if gauge("flashpv_pool_volumes") != 0 || gauge("flashpv_pool_abnormal_volumes") != 0 || gauge("flashpv_pool_up") != 1 {
		t.Fatal("pool metrics did not follow a delete")
	}
	if n, err := testutil.GatherAndCount(reg, "flashpv_csi_request_duration_seconds"); err != nil || n == 0 {
		t.Fatalf("no latency histogram: %d %v", n, err)
	}
}
