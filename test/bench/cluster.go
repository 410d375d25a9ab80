package main

// The cluster phase (-cluster) measures flashpv as a user meets it, on the
// local cluster that hack/cluster starts (make bench brings it up with three
// nodes and deploys flashpv): a StatefulSet scaled from 0 to N replicas
// against the same StatefulSet on local PersistentVolumes made in advance
// and on emptyDir (cluster_scale.go, cluster_static.go), a pod on a
// claim restored from a VolumeSnapshot (cluster_restore.go), and a restore
// onto another node than the snapshot's against a plain TCP copy between
// the two nodes (cluster_transfer.go), and a drained replica's move to
// another node against its plain restart (cluster_move.go). Everything it makes lives in its own
// namespace and is deleted, also when a step fails; it never brings the
// cluster up or down. -cluster-parts picks the parts.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/flashpv/flashpv/pkg/config"
)

// clusterOptions shape the cluster phase.
type clusterOptions struct {
	enabled       bool
	kubeconfig    string
	state         string // hack/cluster's state directory
	namespace     string
	parts         map[string]bool
	rounds        int
	replicas      int
	restoreRounds int
	// transfer: rounds, nodes (empty: the scheduler's pick for the source,
	// the roomiest other node for the target), whether to lift the cap
	transferRounds                 int
	transferSource, transferTarget string
	transferUncapped               string
	// sizes as given, and in bytes
	size, restoreSize, restoreData, transferSize, transferData string
	volumeBytes, restoreBytes, restoreDataBytes                int64
	transferBytes, transferDataBytes                           int64
	// move: rounds and sizes
	moveRounds                                 int
	moveSize, moveData, moveChanged            string
	moveBytes, moveDataBytes, moveChangedBytes int64
}

// clusterParts are the parts of the cluster phase, in the order they run.
var clusterParts = []string{"scale", "restore", "transfer", "move"}

func (o *clusterOptions) addFlags(fs *flag.FlagSet) {
	state := os.Getenv("STATE")
	if state == "" {
		state = filepath.Join("_output", "cluster")
	}
	fs.BoolVar(&o.enabled, "cluster", false, "run the cluster phase only, on the local cluster (up, flashpv deployed; make bench does both), and add it to the report in -out")
	fs.StringVar(&o.kubeconfig, "kubeconfig", filepath.Join(state, "kc", "admin.kubeconfig"), "cluster: the local cluster's kubeconfig")
	fs.StringVar(&o.state, "cluster-state", state, "cluster: hack/cluster's state directory (its nodes' holder processes; default $STATE)")
	fs.Func("cluster-parts", "cluster: what to run, of "+strings.Join(clusterParts, ",")+" (default all)", func(v string) error {
		o.parts = map[string]bool{}
		for _, p := range strings.Split(v, ",") {
			if !slices.Contains(clusterParts, p) {
				return fmt.Errorf("unknown part %q", p)
			}
			o.parts[p] = true
		}
		return nil
	})
	fs.StringVar(&o.namespace, "cluster-namespace", "flashpv-bench", "cluster: the bench's own namespace (deleted when done)")
	fs.IntVar(&o.rounds, "cluster-rounds", 3, "cluster: rounds of the scale-up, flashpv, static local volumes and emptyDir rotated")
	fs.IntVar(&o.replicas, "cluster-replicas", 30, "cluster: replicas of the StatefulSet")
	fs.StringVar(&o.size, "cluster-size", "16Mi", "cluster: size of each replica's volume")
	fs.IntVar(&o.restoreRounds, "restore-rounds", 5, "cluster: rounds of restore-to-Ready, alternated with a new empty claim")
	fs.StringVar(&o.restoreSize, "restore-size", "512Mi", "cluster: size of the snapshotted volume")
	fs.StringVar(&o.restoreData, "restore-data", "256Mi", "cluster: bytes written into it before the snapshot")
	fs.IntVar(&o.transferRounds, "transfer-rounds", 5, "cluster: rounds of a restore onto another node beside a plain TCP copy, per bandwidth")
	fs.StringVar(&o.transferSize, "transfer-size", "1Gi", "cluster: size of the volume restored onto another node")
	fs.StringVar(&o.transferData, "transfer-data", "512Mi", "cluster: bytes written into it before the snapshot")
	fs.StringVar(&o.transferSource, "transfer-source-node", "", "cluster: the snapshot's node (default: the scheduler's pick)")
	fs.StringVar(&o.transferTarget, "transfer-target-node", "", "cluster: the node restored onto (default: the other node with the most capacity)")
	fs.IntVar(&o.moveRounds, "move-rounds", 3, "cluster: rounds of a drained replica moved to another node, alternated with its plain restart")
	fs.StringVar(&o.moveSize, "move-size", "1Gi", "cluster: size of the moved replica's volume")
	fs.StringVar(&o.moveData, "move-data", "512Mi", "cluster: bytes written into it before the move")
	fs.StringVar(&o.moveChanged, "move-changed", "16Mi", "cluster: bytes rewritten after the move's snapshot, before the eviction")
	fs.StringVar(&o.transferUncapped, "transfer-uncapped", "auto", "cluster: also run with flashpv's --transfer-bandwidth=0 (the DaemonSet patched, and restored after): auto (when the plain copy is faster than the cap), yes, no")
}

// part says whether a part of the cluster phase runs.
func (o *clusterOptions) part(name string) bool { return o.parts == nil || o.parts[name] }

// finish parses the sizes; quick makes a short run that checks the phase.
func (o *clusterOptions) finish(quick bool) error {
	if quick {
		o.rounds, o.replicas, o.restoreRounds, o.restoreData = 1, 6, 1, "16Mi"
		o.transferRounds, o.transferSize, o.transferData = 1, "256Mi", "64Mi"
		o.moveRounds, o.moveSize, o.moveData, o.moveChanged = 1, "256Mi", "64Mi", "4Mi"
	}
	for _, s := range []struct {
		flag, v string
		to      *int64
	}{{"cluster-size", o.size, &o.volumeBytes}, {"restore-size", o.restoreSize, &o.restoreBytes}, {"restore-data", o.restoreData, &o.restoreDataBytes},
		{"transfer-size", o.transferSize, &o.transferBytes}, {"transfer-data", o.transferData, &o.transferDataBytes},
		{"move-size", o.moveSize, &o.moveBytes}, {"move-data", o.moveData, &o.moveDataBytes}, {"move-changed", o.moveChanged, &o.moveChangedBytes}} {
		n, err := config.ParseSize(s.v)
		if err != nil {
			return fmt.Errorf("-%s: %w", s.flag, err)
		}
		*s.to = n
	}
	if o.rounds < 1 || o.replicas < 1 || o.restoreRounds < 1 || o.transferRounds < 1 || o.moveRounds < 1 {
		return errors.New("-cluster-rounds, -cluster-replicas, -restore-rounds, -transfer-rounds and -move-rounds must be at least 1")
	}
	if o.moveDataBytes > o.moveBytes/2 || o.moveChangedBytes < 1<<20 || o.moveChangedBytes > o.moveDataBytes {
		return errors.New("-move-data must be at most half of -move-size, and -move-changed at least 1 MiB and at most -move-data")
	}
	if o.restoreDataBytes > o.restoreBytes/2 || o.transferDataBytes > o.transferBytes/2 {
		return errors.New("-restore-data and -transfer-data must be at most half of -restore-size and -transfer-size")
	}
	if !slices.Contains([]string{"auto", "yes", "no"}, o.transferUncapped) {
		return fmt.Errorf("-transfer-uncapped %q: auto, yes or no", o.transferUncapped)
	}
	return nil
}

// clusterResult is the cluster phase's part of the report.
type clusterResult struct {
	Date     string          `json:"date"`
	Flashpv  string          `json:"flashpv"` // git describe of the checkout deployed
	Nodes    []string        `json:"nodes"`
	Seconds  float64         `json:"seconds"`
	Scale    *scaleUpResult  `json:"scale_up,omitempty"`
	Restore  *restoreResult  `json:"restore,omitempty"`
	Transfer *transferResult `json:"transfer,omitempty"`
	Move     *moveResult     `json:"move,omitempty"`
}

// runClusterPhase runs the cluster phase and adds it to the report in b.out
// (the one the other phases wrote, when there is one).
func (b *bench) runClusterPhase() error {
	var err error
	if b.out, err = filepath.Abs(b.out); err != nil {
		return err
	}
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		return err
	}
	rep, err := readReport(b.out)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Printf("== cluster")
	start := time.Now()
	res, err := runCluster(ctx, &b.cluster)
	if res != nil {
		res.Seconds = time.Since(start).Seconds()
		rep.Cluster = res
		if werr := rep.write(b.out, err == nil); werr != nil && err == nil {
			err = werr
		}
	}
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	return nil
}

// readReport is the report in dir, or a new one for this machine.
func readReport(dir string) (*report, error) {
	rep := &report{}
	data, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if errors.Is(err, os.ErrNotExist) {
		return &report{Machine: describeMachine(dir)}, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, rep); err != nil {
		return nil, fmt.Errorf("%s/report.json: %w", dir, err)
	}
	return rep, nil
}

// kube is the bench's view of the cluster.
type kube struct {
	cs  kubernetes.Interface
	dyn dynamic.Interface
	ns  string
	// kubeconfig is for kubectl exec (execSet)
	kubeconfig string
	// cluster-scoped objects the bench created and deletes at the end
	createdClasses []string
	// hack/cluster's state directory, and the roots of the nodes that hold
	// the scale-up's static volumes (cluster_static.go)
	state       string
	staticRoots map[string]string
}

func runCluster(ctx context.Context, o *clusterOptions) (*clusterResult, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig (is the local cluster up? make bench brings it up): %w", err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	k := &kube{ns: o.namespace, kubeconfig: o.kubeconfig, state: o.state}
	if k.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if k.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		return nil, err
	}
	nodes, err := k.readyNodes(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := k.cs.StorageV1().CSIDrivers().Get(ctx, "flashpv.dev", metav1.GetOptions{}); err != nil {
		return nil, fmt.Errorf("flashpv is not deployed (hack/cluster/deploy.sh): %w", err)
	}
	if len(nodes) < 3 {
		log.Printf("cluster: %d node(s); the reference figures come from 3 (NODES=3)", len(nodes))
	}
	// The report may be older than this phase: say when and what ran.
	m := describeMachine(".")
	res := &clusterResult{Date: m.Date, Flashpv: m.Flashpv, Nodes: nodes}
	// A run that was killed may have left its namespace behind.
	if err := k.cleanup(); err != nil {
		return nil, err
	}
	defer func() {
		if err := k.cleanup(); err != nil {
			log.Printf("cluster: cleanup: %v", err)
		}
	}()
	if _, err := k.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: k.ns}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	class, err := k.exampleClass(ctx)
	if err != nil {
		return nil, err
	}
	if o.part("scale") {
		if res.Scale, err = k.runScaleUp(ctx, o, class, nodes); err != nil {
			return res, fmt.Errorf("scale-up: %w", err)
		}
	}
	if o.part("restore") {
		if res.Restore, err = k.runRestore(ctx, o, class); err != nil {
			return res, fmt.Errorf("restore: %w", err)
		}
	}
	if o.part("transfer") {
		if res.Transfer, err = k.runTransfer(ctx, o, class, nodes); err != nil {
			return res, fmt.Errorf("transfer: %w", err)
		}
	}
	if o.part("move") {
		if res.Move, err = k.runMove(ctx, o, class, nodes); err != nil {
			return res, fmt.Errorf("move: %w", err)
		}
	}
	return res, nil
}

func (k *kube) readyNodes(ctx context.Context) ([]string, error) {
	list, err := k.cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("nodes (is the local cluster up? make bench brings it up): %w", err)
	}
	var names []string
	for _, n := range list.Items {
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue && !n.Spec.Unschedulable {
				names = append(names, n.Name)
			}
		}
	}
	if len(names) == 0 {
		return nil, errors.New("no Ready node")
	}
	slices.Sort(names)
	return names, nil
}

// exampleClass makes sure examples/storageclass.yaml's class exists, as a
// user would apply it, and returns its name. A class the bench made is
// deleted at the end; one that was there stays as it is.
func (k *kube) exampleClass(ctx context.Context) (string, error) {
	var sc storagev1.StorageClass
	if err := readExample("storageclass.yaml", "StorageClass", &sc); err != nil {
		return "", err
	}
	_, err := k.cs.StorageV1().StorageClasses().Get(ctx, sc.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, err = k.cs.StorageV1().StorageClasses().Create(ctx, &sc, metav1.CreateOptions{}); err == nil {
			k.createdClasses = append(k.createdClasses, sc.Name)
		}
	}
	return sc.Name, err
}

// repoRoot is the repository the bench runs from, or below (go run, go
// test).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the flashpv repository")
		}
		dir = parent
	}
}

// readExample decodes the object of a kind from a file of examples/.
func readExample(file, kind string, into any) error {
	dir, err := repoRoot()
	if err != nil {
		return fmt.Errorf("examples/ not found: %w", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "examples", file))
	if err != nil {
		return err
	}
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			return fmt.Errorf("examples/%s: %w", file, err)
		}
		if meta.Kind == kind {
			return yaml.UnmarshalStrict([]byte(doc), into)
		}
	}
	return fmt.Errorf("examples/%s has no %s", file, kind)
}

// cleanup deletes what the bench made: its snapshots first (their contents
// go while the snapshot class still exists), then its namespace, then waits
// until every provisioned volume of the namespace is gone, then deletes the
// scale-up's static volumes and their directories, then the classes it
// made.
func (k *kube) cleanup() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := k.cs.CoreV1().Namespaces().Get(ctx, k.ns, metav1.GetOptions{}); err == nil {
		log.Printf("cluster: deleting namespace %s", k.ns)
		if err := k.deleteSnapshots(ctx); err != nil {
			log.Printf("cluster: snapshots: %v", err)
		}
		if err := k.cs.CoreV1().Namespaces().Delete(ctx, k.ns, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	err := poll(ctx, time.Second, func() (bool, string, error) {
		_, err := k.cs.CoreV1().Namespaces().Get(ctx, k.ns, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			n, err := k.volumesLeft(ctx)
			return n == 0, fmt.Sprintf("%d volume(s) of namespace %s left", n, k.ns), err
		}
		return false, "namespace " + k.ns + " terminating", err
	})
	if err != nil {
		return err
	}
	if err := k.cleanupStatic(ctx); err != nil {
		return fmt.Errorf("static volumes: %w", err)
	}
	for _, name := range k.createdClasses {
		if err := k.cs.StorageV1().StorageClasses().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	k.createdClasses = nil
	return k.deleteSnapshotClass(ctx)
}

// volumesLeft counts the provisioned PVs that still belong to the bench's
// namespace (the static ones stay, Released, until the bench recycles them).
func (k *kube) volumesLeft(ctx context.Context) (int, error) {
	pvs, err := k.cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, pv := range pvs.Items {
		if ref := pv.Spec.ClaimRef; ref != nil && ref.Namespace == k.ns && pv.Spec.StorageClassName != staticClass {
			n++
		}
	}
	return n, nil
}

// poll calls f every interval until it is done, fails, or ctx ends; the
// last state f described goes into the timeout's error.
func poll(ctx context.Context, interval time.Duration, f func() (done bool, state string, err error)) error {
	for {
		done, state, err := f()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%s)", ctx.Err(), state)
		case <-time.After(interval):
		}
	}
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// pinnedNode is the flashpv.dev/node value of a PV's node affinity.
func pinnedNode(pv *corev1.PersistentVolume) string { return affinityNode(pv, "flashpv.dev/node") }

// affinityNode is the one value a PV's node affinity requires of a label.
func affinityNode(pv *corev1.PersistentVolume, key string) string {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil {
		return ""
	}
	for _, term := range pv.Spec.NodeAffinity.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == key && e.Operator == corev1.NodeSelectorOpIn && len(e.Values) == 1 {
				return e.Values[0]
			}
		}
	}
	return ""
}
