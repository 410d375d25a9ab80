// Package health serves flashpv's /healthz and /metrics, so the DaemonSet
// needs no livenessprobe sidecar.
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/pool"
)

// Checker decides whether flashpv is healthy: its CSI socket answers Probe
// and the kubelet did not refuse it. Pools whose storage fails are reported
// beside it, by name, but do not make flashpv unhealthy: restarting it does
// not heal a disk, and would stop its other pools from serving.
type Checker struct {
	CSISocket    string
	Pools        []pool.Pool
	Registration interface{ Healthy() error } // nil when not registering
	Timeout      time.Duration
	// Orphans, when set, adds its warnings (volumes no PV names).
	Orphans interface{ Warnings() []string }
}

func (c *Checker) timeout() time.Duration {
	if c.Timeout == 0 {
		return 3 * time.Second
	}
	return c.Timeout
}

// Check returns why flashpv is unhealthy, or nil.
func (c *Checker) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	var errs []error
	if err := probeCSI(ctx, c.CSISocket); err != nil {
		errs = append(errs, fmt.Errorf("CSI socket %s: %w", c.CSISocket, err))
	}
	if c.Registration != nil {
		if err := c.Registration.Healthy(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// PoolErrors probes every pool at once, each for a bounded time (a pool
// whose device stopped answering says so rather than hold the answer), and
// returns what fails, one line per pool in the order of Pools. Unusable
// pools are in it too: their storage is not set up for their kind.
func (c *Checker) PoolErrors(ctx context.Context) []string {
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	type result struct {
		i   int
		err error
	}
	// Buffered: a probe that ignores its context finishes into it later.
	results := make(chan result, len(c.Pools))
	for i, p := range c.Pools {
		go func() { results <- result{i, p.Probe(ctx)} }()
	}
	errs := make([]error, len(c.Pools))
	for i := range errs {
		errs[i] = fmt.Errorf("no answer within %s", c.timeout())
	}
	for n := 0; n < len(c.Pools); n++ {
		select {
		case r := <-results:
			errs[r.i] = r.err
		case <-ctx.Done():
			n = len(c.Pools)
		}
	}
	var out []string
	for i, p := range c.Pools {
		switch {
		case errs[i] == nil:
		case !pool.Usable(p):
			out = append(out, errs[i].Error())
		default:
			out = append(out, fmt.Sprintf("pool %s: %v", p.Name(), errs[i]))
		}
	}
	return out
}

func probeCSI(ctx context.Context, socket string) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := csi.NewIdentityClient(conn).Probe(ctx, &csi.ProbeRequest{})
	if err != nil {
		return err
	}
	if r := resp.GetReady(); r != nil && !r.GetValue() {
		return errors.New("driver reports not ready")
	}
	return nil
}

// Warnings lists what is wrong but would not be fixed by a restart: pools
// whose storage fails or is not set up for their kind, orphaned volumes.
func (c *Checker) Warnings(ctx context.Context) []string {
	out := c.PoolErrors(ctx)
	if c.Orphans != nil {
		out = append(out, c.Orphans.Warnings()...)
	}
	return out
}

// Handler serves /healthz (200 "ok", or 503 with the reasons) and /metrics.
// Failing and unusable pools are listed as "warning: pool NAME: ..." lines
// under a 200: the process is fine, and failing its liveness probe would
// only restart it over and over, with its healthy pools.
func Handler(c *Checker, g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := c.Check(r.Context()); err != nil {
			klog.V(2).InfoS("Health check failed", "err", err)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
		for _, warn := range c.Warnings(r.Context()) {
			fmt.Fprintln(w, "warning:", warn)
		}
	})
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}

// Serve serves h on addr until ctx is done.
func Serve(ctx context.Context, addr string, h http.Handler) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	klog.InfoS("Serving health and metrics", "address", lis.Addr().String())
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
