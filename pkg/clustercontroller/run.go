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

func restConfig(opts Options) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if opts.Kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", opts.Kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, err
	}
	// client-go's own default (5/10) spaces a move's steps, a handful
	// of requests each, by up to a second.
	cfg.QPS, cfg.Burst = float32(opts.APIQPS), opts.APIBurst
	return cfg, nil
}

// stripManagedFields keeps the caches small: nothing here reads them.
func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// Run runs the controller until ctx ends or one of its parts ends
// (daemon.Run's rule), such as the leader losing its Lease.
func Run(ctx context.Context, opts Options, version string) error {
	w, err := newWiring(opts, version)
	if err != nil {
		return err
	}
	return w.run(ctx)
}

// run is Run once the clients are made (a test gives fake ones).
func (w *wiring) run(ctx context.Context) error {
	opts := w.opts
	recorder, stopEvents := startEvents(ctx, w.client)
	defer stopEvents()
	var xfer *transferBroker
	var err error
	if opts.Transfer.Address != "" {
		if xfer, err = w.transferBroker(); err != nil {
			return err
		}
	}
	leaderTasks, err := w.leaderTasks(recorder, xfer)
	if err != nil {
		return err
	}
	w.factory.Start(ctx.Done())
	defer w.factory.Shutdown()

	var tasks []daemon.Task
	if xfer != nil {
		// Every replica serves the broker, once it has the key.
		tasks = append(tasks, daemon.Task{Name: "transfer broker", Run: func(ctx context.Context) error { return xfer.Serve(ctx, w.st) }})
	}
	var le *leaderelection.LeaderElector
	if opts.LeaderElection {
		var elect daemon.Task
		if elect, le, err = leaderElection(opts, w.client, recorder, leaderTasks); err != nil {
			return err
		}
		tasks = append(tasks, elect)
	} else {
		tasks = append(tasks, leaderTasks...)
	}
	if opts.HealthAddress != "" {
		h := daemon.Handler(healthz{st: w.st, le: le}, w.reg)
		tasks = append(tasks, daemon.Task{Name: "health server", Run: func(ctx context.Context) error {
			return daemon.ListenAndServe(ctx, opts.HealthAddress, h)
		}})
	}
	return daemon.Run(ctx, tasks...)
}

// wiring is what every part of Run is built from: the API clients, the
// informers and their listers, the metrics and what /healthz reports.
type wiring struct {
	opts    Options
	client  kubernetes.Interface
	dyn     dynamic.Interface
	factory informers.SharedInformerFactory
	listers nodeloss.Listers
	reg     *prometheus.Registry
	st      *status
}

func newWiring(opts Options, version string) (*wiring, error) {
	cfg, err := restConfig(opts)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "flashpv-controller/" + version
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return wire(opts, client, dyn), nil
}

func wire(opts Options, client kubernetes.Interface, dyn dynamic.Interface) *wiring {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(stripManagedFields))
	core, storage := factory.Core().V1(), factory.Storage().V1()
	listers := nodeloss.Listers{
		Nodes: core.Nodes().Lister(), PVs: core.PersistentVolumes().Lister(),
		Claims: core.PersistentVolumeClaims().Lister(), Pods: core.Pods().Lister(),
		Classes: storage.StorageClasses().Lister(),
	}
	return &wiring{opts: opts, client: client, dyn: dyn, factory: factory, listers: listers, reg: reg, st: &status{}}
}

// startEvents starts sending Events to the API; the function it returns
// stops it.
func startEvents(ctx context.Context, client kubernetes.Interface) (record.EventRecorder, func()) {
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartStructuredLogging(2)
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "flashpv-controller"}), broadcaster.Shutdown
}

func (w *wiring) transferBroker() (*transferBroker, error) {
	core := w.factory.Core().V1()
	synced := []cache.InformerSynced{core.Pods().Informer().HasSynced, core.PersistentVolumes().Informer().HasSynced}
	return newTransferBroker(w.opts.Transfer, w.opts.Namespace, w.client, w.dyn, w.listers, synced, w.reg)
}

// leaderTasks are what only the active replica runs: node loss and the
// volume lists always; node status, moves and the transfer keys when
// configured (xfer is nil without a broker). They must be built before
// the informers start: each asks for the informers it reads.
func (w *wiring) leaderTasks(recorder record.EventRecorder, xfer *transferBroker) ([]daemon.Task, error) {
	nodeLoss, err := w.nodeLossTask(recorder)
	if err != nil {
		return nil, err
	}
	lists, err := w.volumeListTask()
	if err != nil {
		return nil, err
	}
	tasks := []daemon.Task{nodeLoss, lists}
	moves, err := moveTask(w.opts, w.client, w.dyn, w.factory, w.listers, xfer, recorder, w.reg, w.st)
	if err != nil {
		return nil, err
	}
	core := w.factory.Core().V1()
	collect, err := statusTask(w.opts, w.client, w.listers, []cache.InformerSynced{core.Nodes().Informer().HasSynced, core.Pods().Informer().HasSynced}, w.reg, w.st)
	if err != nil {
		return nil, err
	}
	if collect != nil {
		tasks = append(tasks, daemon.Task{Name: "node status", Run: collect})
	}
	if moves != nil {
		tasks = append(tasks, daemon.Task{Name: "moves", Run: moves})
	}
	if xfer != nil {
		tasks = append(tasks, daemon.Task{Name: "transfer keys", Run: func(ctx context.Context) error {
			loop(ctx, w.opts.Resync, "transfer keys", xfer.ensureKeys, w.st)
			return nil
		}})
	}
	return tasks, nil
}

// nodeLossTask watches for nodes gone for good (pkg/nodeloss) once every
// cache has synced, which is also when /healthz counts the controller as
// synced.
func (w *wiring) nodeLossTask(recorder record.EventRecorder) (daemon.Task, error) {
	metrics, err := nodeloss.NewMetrics(w.reg)
	if err != nil {
		return daemon.Task{}, err
	}
	rec := nodeloss.New(nodeloss.Config{Client: w.client, Listers: w.listers, Recorder: recorder, Metrics: metrics, Grace: w.opts.NodeLossGrace})
	if _, err := w.factory.Core().V1().Nodes().Informer().AddEventHandler(nodeHandler(rec)); err != nil {
		return daemon.Task{}, err
	}
	return daemon.Task{Name: "node loss", Run: func(ctx context.Context) error {
		for typ, ok := range w.factory.WaitForCacheSync(ctx.Done()) {
			if !ok && ctx.Err() == nil {
				return fmt.Errorf("cache of %v did not sync", typ)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		w.st.setSynced()
		klog.InfoS("Caches synced: watching for lost nodes", "grace", w.opts.NodeLossGrace)
		loop(ctx, w.opts.Resync, "node loss", rec.Sync, w.st)
		return nil
	}}, nil
}

// volumeListTask writes every node's volume list (volumes.go).
func (w *wiring) volumeListTask() (daemon.Task, error) {
	writer, err := newListWriter(w.client, w.opts.Namespace, w.listers.Nodes, w.listers.PVs, w.opts.VolumeListRefresh, w.reg)
	if err != nil {
		return daemon.Task{}, err
	}
	core := w.factory.Core().V1()
	synced := []cache.InformerSynced{core.Nodes().Informer().HasSynced, core.PersistentVolumes().Informer().HasSynced}
	return daemon.Task{Name: "volume lists", Run: func(ctx context.Context) error {
		if !cache.WaitForCacheSync(ctx.Done(), synced...) {
			return nil
		}
		loop(ctx, w.opts.Resync, "volume lists", writer.Sync, w.st)
		return nil
	}}, nil
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
