// Command flashpv is the flashpv CSI driver: Identity, Controller and Node
// services for the node-local pools of the node it runs on, plus kubelet
// plugin registration, /healthz and /metrics.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/klog/v2"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/driver"
	"github.com/flashpv/flashpv/pkg/health"
	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/registration"
	"github.com/flashpv/flashpv/pkg/unixsock"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	var opts config.Options
	fs := flag.NewFlagSet("flashpv", flag.ExitOnError)
	opts.AddFlags(fs)
	klog.InitFlags(fs)
	_ = fs.Parse(os.Args[1:])
	if opts.ShowVersion {
		fmt.Println("flashpv", version)
		return
	}
	if err := opts.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "flashpv:", err)
		os.Exit(2)
	}
	if err := run(opts); err != nil {
		klog.ErrorS(err, "flashpv stopped")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

func run(opts config.Options) error {
	var pools []pool.Pool
	for _, spec := range opts.Pools {
		p, err := pool.Open(spec)
		if errors.Is(err, pool.ErrUnusable) {
			// Storage not set up for its kind: report it (log, /healthz,
			// storage health, metrics) and serve the other pools.
			klog.ErrorS(err, "Pool is unusable and will not be used", "pool", spec.Name, "kind", spec.Kind)
			p = pool.NewUnusable(spec.Name, spec.Kind, err)
		} else if err != nil {
			return err
		}
		defer p.Close()
		pools = append(pools, p)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d, err := driver.New(driver.Config{
		NodeID:        opts.NodeID,
		Version:       version,
		Pools:         pools,
		KubeletDir:    opts.KubeletDir,
		MaxVolumes:    opts.MaxVolumes,
		DefaultFsType: opts.FsType,
		Devices:       loopdev.New(),
		Mounter:       mount.New(""),
		Exec:          utilexec.New(),
		Metrics:       reg,
	})
	if err != nil {
		return err
	}
	// Listen before anything else: the kubelet calls the CSI socket as soon
	// as the registration succeeds.
	lis, err := unixsock.Listen(opts.SocketPath())
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var tasks []func() error
	tasks = append(tasks, func() error { return d.Serve(ctx, lis) })
	checker := &health.Checker{CSISocket: opts.SocketPath(), Pools: pools}
	if opts.RegistrationPath != "" {
		r := registration.New(driver.Name, opts.RegistrationPath)
		checker.Registration = r
		sock := registration.SocketPath(opts.RegistrationDir, driver.Name)
		tasks = append(tasks, func() error { return r.Serve(ctx, sock) })
	}
	if opts.HealthAddress != "" {
		h := health.Handler(checker, reg)
		tasks = append(tasks, func() error { return health.Serve(ctx, opts.HealthAddress, h) })
	}
	// Every task runs until ctx ends; the first to fail ends the others.
	errc := make(chan error, len(tasks))
	for _, task := range tasks {
		go func() {
			err := task()
			if err != nil {
				cancel(err)
			}
			errc <- err
		}()
	}
	var first error
	for range tasks {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	return first
}
