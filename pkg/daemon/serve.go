package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/klog/v2"
)

// Health is what /healthz reports of a command. Each command keeps its
// own idea of health (the node plugin its CSI socket and pools, the
// controller its Lease); the answer's shape is the same for both.
type Health interface {
	// Check returns why the process should be restarted, or nil.
	Check(ctx context.Context) error
	// Warnings lists what is wrong but a restart would not fix.
	Warnings(ctx context.Context) []string
}

// Handler serves /healthz and /metrics. /healthz answers 503 with the
// reason when h.Check fails, and otherwise 200 "ok" followed by one
// "warning: ..." line per warning: it is a liveness probe, and failing it
// for what a restart does not fix would only restart the process over and
// over.
func Handler(h Health, g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := h.Check(r.Context()); err != nil {
			klog.V(2).InfoS("Health check failed", "err", err)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
		for _, warn := range h.Warnings(r.Context()) {
			fmt.Fprintln(w, "warning:", warn)
		}
	})
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}

// shutdownTimeout bounds how long Serve waits for requests in flight
// once its context ends: a scrape that hangs must not hold the process.
const shutdownTimeout = 5 * time.Second

// ListenAndServe serves h on the TCP address addr until ctx ends.
func ListenAndServe(ctx context.Context, addr string, h http.Handler) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return Serve(ctx, lis, h)
}

// Serve serves h on lis until ctx ends, then lets requests in flight
// finish (for at most shutdownTimeout) and returns nil. It closes lis.
func Serve(ctx context.Context, lis net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	klog.InfoS("Serving health and metrics", "address", lis.Addr().String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		klog.InfoS("Health and metrics server: closing requests still in flight", "err", err)
		srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
