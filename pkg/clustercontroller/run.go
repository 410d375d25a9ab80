// Package clustercontroller is `flashpv controller`: the one process of
// flashpv that talks to the Kubernetes API. With client-go informers, one
// active replica (a Lease), /healthz and /metrics, it
//   - handles nodes gone for good (pkg/nodeloss): claims of opted-in classes
//     are deleted so StatefulSets recreate them on live nodes, the others
//     are reported;
//   - tells every node plugin which of its volumes have a PV, through one
//     ConfigMap the DaemonSet mounts, so orphans are found on the node
//     without the node plugin calling the API;
//   - collects what every node plugin reports of itself (pools, volumes'
//     used space and health, orphans) into the ConfigMap flashpv-status,
//     for `kubectl flashpv` (status.go);
//   - brokers transfers between nodes (a restore or clone onto another
//     node): it issues node plugins their TLS certificates and signs a
//     capability for each copy a claim asks for (transfer*.go).
package clustercontroller

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
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/daemon"
	"github.com/flashpv/flashpv/pkg/nodeloss"
)

// Main runs `flashpv controller ARGS...` and returns the exit code.
func Main(args []string, version string) int {
	var opts Options
	fs := flag.NewFlagSet("flashpv controller", flag.ExitOnError)
	opts.AddFlags(fs)
	klog.InitFlags(fs)
	_ = fs.Parse(args)
	if err := opts.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "flashpv controller:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Run(ctx, opts, version); err != nil {
		klog.ErrorS(err, "flashpv controller stopped")
		klog.Flush()
		return 1
	}
	klog.Flush()
	return 0
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return rest.InClusterConfig()
}

// stripManagedFields keeps the caches small: nothing here reads them.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// Run runs the controller until ctx ends or it loses its leadership.
func Run(ctx context.Context, opts Options, version string) error {
	cfg, err := restConfig(opts.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.UserAgent = "flashpv-controller/" + version
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := nodeloss.NewMetrics(reg)
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(stripManagedFields))
	core, storage := factory.Core().V1(), factory.Storage().V1()
	listers := nodeloss.Listers{
		Nodes: core.Nodes().Lister(), PVs: core.PersistentVolumes().Lister(),
		Claims: core.PersistentVolumeClaims().Lister(), Pods: core.Pods().Lister(),
		Classes: storage.StorageClasses().Lister(),
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartStructuredLogging(2)
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "flashpv-controller"})

	rec := nodeloss.New(nodeloss.Config{Client: client, Listers: listers, Recorder: recorder, Metrics: metrics, Grace: opts.NodeLossGrace})
	if _, err := core.Nodes().Informer().AddEventHandler(nodeHandler(rec)); err != nil {
		return err
	}
	writer, err := newListWriter(client, opts.Namespace, listers.Nodes, listers.PVs, opts.VolumeListRefresh, reg)
	if err != nil {
		return err
	}
	st := &status{}
	var xfer *transferBroker
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	if opts.Transfer.Address != "" {
		synced := []cache.InformerSynced{core.Pods().Informer().HasSynced, core.PersistentVolumes().Informer().HasSynced}
		if xfer, err = newTransferBroker(opts.Transfer, opts.Namespace, client, dyn, listers, synced, reg); err != nil {
			return err
		}
	}
	moves, err := moveTask(opts, client, dyn, factory, listers, xfer, recorder, reg, st)
	if err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()

	work := func(ctx context.Context) error {
		for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
			if !ok && ctx.Err() == nil {
				return fmt.Errorf("cache of %v did not sync", typ)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		st.setSynced()
		klog.InfoS("Caches synced: watching for lost nodes", "grace", opts.NodeLossGrace)
		loop(ctx, opts.Resync, "node loss", rec.Sync, st)
		return nil
	}
	writeLists := func(ctx context.Context) error {
		if !cache.WaitForCacheSync(ctx.Done(), core.Nodes().Informer().HasSynced, core.PersistentVolumes().Informer().HasSynced) {
			return nil
		}
		loop(ctx, opts.Resync, "volume lists", writer.Sync, st)
		return nil
	}
	leaderTasks := []daemon.Task{{Name: "node loss", Run: work}, {Name: "volume lists", Run: writeLists}}
	collect, err := statusTask(opts, client, listers, []cache.InformerSynced{core.Nodes().Informer().HasSynced, core.Pods().Informer().HasSynced}, reg, st)
	if err != nil {
		return err
	}
	if collect != nil {
		leaderTasks = append(leaderTasks, daemon.Task{Name: "node status", Run: collect})
	}
	if moves != nil {
		leaderTasks = append(leaderTasks, daemon.Task{Name: "moves", Run: moves})
	}
	var tasks []daemon.Task
	if xfer != nil {
		leaderTasks = append(leaderTasks, daemon.Task{Name: "transfer keys", Run: func(ctx context.Context) error {
			loop(ctx, opts.Resync, "transfer keys", xfer.ensureKeys, st)
			return nil
		}})
		// Every replica serves the broker, once it has the key.
		tasks = append(tasks, daemon.Task{Name: "transfer broker", Run: func(ctx context.Context) error { return xfer.Serve(ctx, st) }})
	}
	var le *leaderelection.LeaderElector
	if opts.LeaderElection {
		var elect daemon.Task
		if elect, le, err = leaderElection(opts, client, recorder, leaderTasks); err != nil {
			return err
		}
		tasks = append(tasks, elect)
	} else {
		tasks = append(tasks, leaderTasks...)
	}
	if opts.HealthAddress != "" {
		h := daemon.Handler(healthz{st: st, le: le}, reg)
		tasks = append(tasks, daemon.Task{Name: "health server", Run: func(ctx context.Context) error {
			return daemon.ListenAndServe(ctx, opts.HealthAddress, h)
		}})
	}
	return daemon.Run(ctx, tasks...)
}

func nodeHandler(rec *nodeloss.Reconciler) cache.ResourceEventHandlerFuncs {
	name := func(obj any) string {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if n, ok := obj.(*corev1.Node); ok {
			return n.Name
		}
		return ""
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n := name(obj); n != "" {
				rec.NodeAdded(n)
			}
		},
		DeleteFunc: func(obj any) {
			if n := name(obj); n != "" {
				rec.NodeDeleted(n)
			}
		},
	}
}

// loop runs f every period until ctx ends, recording its outcome.
func loop(ctx context.Context, period time.Duration, what string, f func(context.Context) error, st *status) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		err := f(ctx)
		if err != nil && ctx.Err() == nil {
			klog.ErrorS(err, "Sync failed", "loop", what)
		}
		st.record(what, err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
