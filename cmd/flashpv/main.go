// Command flashpv is the flashpv CSI driver: Identity, Controller and Node
// services for the node-local pools of the node it runs on, plus kubelet
// plugin registration, /healthz and /metrics. `flashpv controller` is the
// cluster-level controller instead (pkg/clustercontroller), the one part of
// flashpv that talks to the Kubernetes API.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/clustercontroller"
	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/daemon"
	"github.com/flashpv/flashpv/pkg/health"
	"github.com/flashpv/flashpv/pkg/nodeplugin"
	"github.com/flashpv/flashpv/pkg/orphans"
	"github.com/flashpv/flashpv/pkg/registration"
	"github.com/flashpv/flashpv/pkg/unixsock"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "controller" {
		os.Exit(clustercontroller.Main(os.Args[2:], version))
	}
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
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	plugin, err := nodeplugin.Open(context.Background(), opts, nodeplugin.Settings{Version: version, Metrics: reg})
	if err != nil {
		return err
	}
	defer plugin.Close()
	d, pools := plugin.Driver, plugin.Pools
	// Listen before anything else: the kubelet calls the CSI socket as soon
	// as the registration succeeds.
	lis, err := unixsock.Listen(opts.SocketPath())
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	tasks := []daemon.Task{{Name: "CSI server", Run: func(ctx context.Context) error { return d.Serve(ctx, lis) }}}
	checker := &health.Checker{CSISocket: opts.SocketPath(), Pools: pools}
	nodeStatus := &nodeplugin.Status{Node: opts.NodeID, Version: version, Driver: d}
	if opts.RegistrationPath != "" {
		r := registration.New(wellknown.DriverName, opts.RegistrationPath)
		checker.Registration = r
		sock := registration.SocketPath(opts.RegistrationDir, wellknown.DriverName)
		tasks = append(tasks, daemon.Task{Name: "kubelet registration", Run: func(ctx context.Context) error { return r.Serve(ctx, sock) }})
	}
	if opts.VolumeListDir != "" {
		finder, err := orphans.New(orphans.Config{Node: opts.NodeID, ListDir: opts.VolumeListDir, Pools: pools,
			Deleter: d, Delete: orphanPools(opts.DeleteOrphans), Grace: opts.OrphanGrace, Metrics: reg})
		if err != nil {
			return err
		}
		checker.Orphans = finder
		nodeStatus.Orphans = finder
		tasks = append(tasks, daemon.Task{Name: "orphan finder", Run: func(ctx context.Context) error { return finder.Run(ctx, time.Minute) }})
	}
	if plugin.Transfer != nil {
		tasks = append(tasks, plugin.Transfer.Tasks()...)
	}
	if opts.HealthAddress != "" {
		h := nodeplugin.WithStatus(daemon.Handler(checker, reg), nodeStatus)
		tasks = append(tasks, daemon.Task{Name: "health server", Run: func(ctx context.Context) error {
			return daemon.ListenAndServe(ctx, opts.HealthAddress, h)
		}})
	}
	return daemon.Run(ctx, tasks...)
}

func orphanPools(names []string) map[string]bool {
	m := map[string]bool{}
	for _, n := range names {
		m[n] = true
	}
	return m
}
