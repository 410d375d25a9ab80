package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// fakeHealth answers as told; the test changes its answer while the
// server reads it.
type fakeHealth struct {
	mu    sync.Mutex
	err   error
	warns []string
}

func (f *fakeHealth) Check(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func (f *fakeHealth) Warnings(context.Context) []string { return f.warns }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// The server on a real TCP listener: /healthz's two answers, /metrics
// from the registry it is given, and a clean stop that frees the port.
func TestServe(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "flashpv_test_total", Help: "a counter"}))
	h := &fakeHealth{warns: []string{"pool a: input/output error"}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, lis, Handler(h, reg)) }()

	code, body := get(t, "http://"+addr+"/healthz")
	if code != http.StatusOK || body != "ok\nwarning: pool a: input/output error\n" {
		t.Errorf("/healthz when healthy: %d %q", code, body)
	}
	h.mu.Lock()
	h.err = errors.New("CSI socket does not answer")
	h.mu.Unlock()
	code, body = get(t, "http://"+addr+"/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "CSI socket does not answer") {
		t.Errorf("/healthz when unhealthy: %d %q", code, body)
	}
	code, body = get(t, "http://"+addr+"/metrics")
	if code != http.StatusOK || !strings.Contains(body, "flashpv_test_total 0") {
		t.Errorf("/metrics: %d %q", code, body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after cancellation: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("still listening after Serve returned")
	}
}

// A server that cannot listen fails at once, so Run reports it by name.
func TestListenAndServeBusyAddress(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	err = Run(context.Background(), Task{Name: "health server", Run: func(ctx context.Context) error {
		return ListenAndServe(ctx, lis.Addr().String(), Handler(&fakeHealth{}, prometheus.NewRegistry()))
	}})
	if err == nil || !strings.HasPrefix(err.Error(), "health server: ") {
		t.Errorf("Run: %v, want the listen error of the health server", err)
	}
}
