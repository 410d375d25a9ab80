package health

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flashpv/flashpv/pkg/daemon"
	"github.com/flashpv/flashpv/pkg/pool"
)

// fakePool has only what the checker asks of a pool.
type fakePool struct {
	pool.Pool
	name  string
	probe func(context.Context) error
}

func (f fakePool) Name() string                    { return f.name }
func (f fakePool) Probe(ctx context.Context) error { return f.probe(ctx) }

// TestPoolsAreWarnings checks that failing pools are named under a 200 (a
// restart would not heal them), that a pool whose probe never returns holds
// the answer no longer than the timeout, and that the CSI socket still
// decides the status.
func TestPoolsAreWarnings(t *testing.T) {
	never := make(chan struct{})
	defer close(never)
	c := &Checker{CSISocket: "/nonexistent/csi.sock", Timeout: 200 * time.Millisecond, Pools: []pool.Pool{
		fakePool{name: "good", probe: func(context.Context) error { return nil }},
		fakePool{name: "bad", probe: func(context.Context) error { return errors.New("input/output error") }},
		// A probe that ignores its context, as a system call on a stuck device.
		fakePool{name: "stuck", probe: func(context.Context) error { <-never; return nil }},
		pool.NewUnusable("nope", pool.KindQuota, errors.New("not XFS")),
	}}
	done := make(chan []string)
	go func() { done <- c.PoolErrors(context.Background()) }()
	var warns []string
	select {
	case warns = <-done:
	case <-time.After(time.Minute):
		t.Fatal("a stuck pool holds the health answer")
	}
	got := strings.Join(warns, "\n")
	for _, want := range []string{"pool bad: input/output error", "pool stuck: no answer within", "pool nope"} {
		if !strings.Contains(got, want) {
			t.Errorf("warnings %q lack %q", got, want)
		}
	}
	if strings.Contains(got, "good") || len(warns) != 3 {
		t.Errorf("warnings %q", got)
	}

	srv := httptest.NewServer(daemon.Handler(c, prometheus.NewRegistry()))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("a dead CSI socket: %d, want 503", resp.StatusCode)
	}
}
