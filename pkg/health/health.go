// Package health decides whether the node plugin is healthy, for the
// /healthz that package daemon serves (so the DaemonSet needs no
// livenessprobe sidecar). The cluster controller has its own idea of
// health and does not import this package, which knows pools.
package health

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

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
