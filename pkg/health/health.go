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

// Checker decides whether flashpv is healthy: its CSI socket answers Probe,
// every pool can be read and written, and the kubelet did not refuse it.
type Checker struct {
	CSISocket    string
	Pools        []pool.Pool
	Registration interface{ Healthy() error } // nil when not registering
	Timeout      time.Duration
	// Orphans, when set, adds its warnings (volumes no PV names).
	Orphans interface{ Warnings() []string }
}

// Check returns why flashpv is unhealthy, or nil.
func (c *Checker) Check(ctx context.Context) error {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 3 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var errs []error
	if err := probeCSI(ctx, c.CSISocket); err != nil {
		errs = append(errs, fmt.Errorf("CSI socket %s: %w", c.CSISocket, err))
	}
	for _, p := range c.Pools {
		if !pool.Usable(p) {
			continue // see Warnings: restarting would not fix it
		}
		if err := p.Probe(ctx); err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", p.Name(), err))
		}
	}
	if c.Registration != nil {
		if err := c.Registration.Healthy(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
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
// whose storage is not set up for their kind, orphaned volumes.
func (c *Checker) Warnings() []string {
	var out []string
	for _, p := range c.Pools {
		if !pool.Usable(p) {
			out = append(out, p.Probe(context.Background()).Error())
		}
	}
	if c.Orphans != nil {
		out = append(out, c.Orphans.Warnings()...)
	}
	return out
}

// Handler serves /healthz (200 "ok", or 503 with the reasons) and /metrics.
// Unusable pools are listed as warnings under a 200: the process is fine,
// and failing its liveness probe would only restart it over and over.
func Handler(c *Checker, g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := c.Check(r.Context()); err != nil {
			klog.V(2).InfoS("Health check failed", "err", err)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
		for _, warn := range c.Warnings() {
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
