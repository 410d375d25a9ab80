// Command flashpv is the flashpv CSI driver: Identity, Controller and Node
// services for the node-local pools of the node it runs on.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"k8s.io/klog/v2"
	"k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/driver"
	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/pkg/pool"
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
	var pools []*pool.Pool
	for _, spec := range opts.Pools {
		p, err := pool.Open(spec.Name, spec.Path, spec.Reserve)
		if err != nil {
			return err
		}
		defer p.Close()
		pools = append(pools, p)
	}
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
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return d.Serve(ctx, opts.SocketPath())
}
