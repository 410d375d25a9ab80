package nodeloss

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// env is a Reconciler on a fake clientset, its listers refreshed from the
// fake API before every Sync (as settled informers would be), on a clock
// the test moves.
type env struct {
	t        *testing.T
	client   *fake.Clientset
	r        *Reconciler
	now      time.Time
	events   *record.FakeRecorder
	metrics  *Metrics
	indexers map[string]cache.Indexer
	// stale, when set, keeps the caches from being refreshed.
	stale bool
}

func newEnv(t *testing.T, objs ...runtime.Object) *env {
	t.Helper()
	e := &env{t: t, client: fake.NewClientset(objs...), now: t0, events: record.NewFakeRecorder(100), indexers: map[string]cache.Indexer{}}
	for _, k := range []string{"nodes", "pvs", "pvcs", "pods", "classes"} {
		e.indexers[k] = cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	e.metrics = m
	e.r = New(Config{
		Client: e.client,
		Listers: Listers{
			Nodes:   corelisters.NewNodeLister(e.indexers["nodes"]),
			PVs:     corelisters.NewPersistentVolumeLister(e.indexers["pvs"]),
			Claims:  corelisters.NewPersistentVolumeClaimLister(e.indexers["pvcs"]),
			Pods:    corelisters.NewPodLister(e.indexers["pods"]),
			Classes: storagelisters.NewStorageClassLister(e.indexers["classes"]),
		},
		Recorder: e.events, Metrics: m, Grace: grace, Now: func() time.Time { return e.now },
	})
	e.refresh()
	return e
}

func (e *env) refresh() {
	ctx := context.Background()
	c := e.client.CoreV1()
	var items []any
	nodes, _ := c.Nodes().List(ctx, metav1.ListOptions{})
	for i := range nodes.Items {
		items = append(items, &nodes.Items[i])
	}
	e.replace("nodes", items)
	items = nil
	pvs, _ := c.PersistentVolumes().List(ctx, metav1.ListOptions{})
	for i := range pvs.Items {
		items = append(items, &pvs.Items[i])
	}
	e.replace("pvs", items)
	items = nil
	pvcs, _ := c.PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
	for i := range pvcs.Items {
		items = append(items, &pvcs.Items[i])
	}
	e.replace("pvcs", items)
	items = nil
	pods, _ := c.Pods("").List(ctx, metav1.ListOptions{})
	for i := range pods.Items {
		items = append(items, &pods.Items[i])
	}
	e.replace("pods", items)
	items = nil
	classes, _ := e.client.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	for i := range classes.Items {
		items = append(items, &classes.Items[i])
	}
	e.replace("classes", items)
}

func (e *env) replace(kind string, items []any) {
	if err := e.indexers[kind].Replace(items, ""); err != nil {
		e.t.Fatal(err)
	}
}

// sync runs a Sync that must succeed.
func (e *env) sync() {
	e.t.Helper()
	if err := e.syncErr(); err != nil {
		e.t.Fatalf("sync: %v", err)
	}
}

// syncErr runs a Sync and returns its error, for tests of refusals.
func (e *env) syncErr() error {
	if !e.stale {
		e.refresh()
	}
	return e.r.Sync(context.Background())
}

// deletes lists the deletions sent to the API: "pvc db/data-0 uid=..." etc.
func (e *env) deletes() []string {
	var out []string
	for _, a := range e.client.Actions() {
		d, ok := a.(k8stesting.DeleteActionImpl)
		if !ok {
			continue
		}
		s := d.GetResource().Resource + " " + d.GetName()
		if p := d.DeleteOptions.Preconditions; p != nil && p.UID != nil {
			s += " uid=" + string(*p.UID)
		}
		out = append(out, s)
	}
	return out
}

func (e *env) exists(gvr schema.GroupVersionResource, ns, name string) bool {
	_, err := e.client.Tracker().Get(gvr, ns, name)
	return err == nil
}

var (
	pvsGVR  = corev1.SchemeGroupVersion.WithResource("persistentvolumes")
	pvcsGVR = corev1.SchemeGroupVersion.WithResource("persistentvolumeclaims")
)

func (e *env) drainEvents() []string {
	var out []string
	for {
		select {
		case ev := <-e.events.Events:
			out = append(out, ev)
		default:
			return out
		}
	}
}

func node(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: "uid-" + types.UID(name)}}
}

func lostNodeObjects(policy map[string]string) []runtime.Object {
	return []runtime.Object{
		node("n2"), node("n3"),
		class("fast", policy),
		pv("pv-a", "n1", "data-0", "c1", policy),
		pvc("data-0", "c1", "pv-a"),
		pod("db-0", "", "data-0", corev1.PodPending), // recreated, Pending: the PV pins it to n1
		pv("pv-b", "n2", "data-1", "c2", policy),
		pvc("data-1", "c2", "pv-b"),
		pod("db-1", "n2", "data-1", corev1.PodRunning),
	}
}

// The whole recovery: nothing before the grace period; then the claim
// (UID precondition), then the PV (UID precondition) and the provisioner's
// finalizer; Events on the claim and the PV; metrics; the live node's
// replica untouched.
func TestRecreateAfterGrace(t *testing.T) {
	e := newEnv(t, lostNodeObjects(recreate)...)
	e.sync() // n1 is named by a PV and absent: the loss starts now
	e.now = e.now.Add(grace - time.Second)
	e.sync()
	if d := e.deletes(); len(d) != 0 {
		t.Fatalf("deleted within the grace period: %v", d)
	}
	if got := testutil.ToFloat64(e.metrics.lost); got != 1 {
		t.Errorf("lost nodes = %v", got)
	}
	e.now = e.now.Add(2 * time.Second)
	e.sync()
	if d := e.deletes(); len(d) != 1 || d[0] != "persistentvolumeclaims data-0 uid=c1" {
		t.Fatalf("deletes after the grace period: %v", d)
	}
	evs := strings.Join(e.drainEvents(), "\n")
	if strings.Count(evs, ReasonClaimDeleted) != 2 {
		t.Errorf("want a %s Event on the claim and on the PV:\n%s", ReasonClaimDeleted, evs)
	}
	e.sync() // the claim is gone: the PV goes
	d := e.deletes()
	if len(d) != 2 || d[1] != "persistentvolumes pv-a uid=uid-pv-a" {
		t.Fatalf("deletes: %v", d)
	}
	// The fake API deletes at once; a real one keeps the PV for its
	// finalizers, which the next sync handles.
	if e.exists(pvsGVR, "", "pv-a") || !e.exists(pvsGVR, "", "pv-b") || !e.exists(pvcsGVR, "db", "data-1") {
		t.Fatal("wrong objects deleted")
	}
	if evs := strings.Join(e.drainEvents(), "\n"); strings.Count(evs, ReasonVolumeRemoved) != 2 {
		t.Errorf("want a %s Event on the PV and its claim:\n%s", ReasonVolumeRemoved, evs)
	}
	if got := testutil.ToFloat64(e.metrics.actions.WithLabelValues(string(DeleteClaim), "ok")); got != 1 {
		t.Errorf("DeleteClaim ok = %v", got)
	}
	if got := testutil.ToFloat64(e.metrics.actions.WithLabelValues(string(DeletePV), "ok")); got != 1 {
		t.Errorf("DeletePV ok = %v", got)
	}
	e.sync()
	if got := testutil.ToFloat64(e.metrics.lost); got != 0 {
		t.Errorf("lost nodes after recovery = %v", got)
	}
}

// A PV being deleted keeps the provisioner's finalizer forever when its node
// is lost: flashpv removes it (and only it).
func TestRemovesProvisionerFinalizer(t *testing.T) {
	p := pv("pv-a", "n1", "data-0", "c1", recreate)
	p.DeletionTimestamp = &metav1.Time{Time: t0}
	e := newEnv(t, p)
	e.sync()
	e.now = e.now.Add(grace)
	e.sync()
	got, err := e.client.CoreV1().PersistentVolumes().Get(context.Background(), "pv-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Finalizers) != 1 || got.Finalizers[0] != "kubernetes.io/pv-protection" {
		t.Fatalf("finalizers %v", got.Finalizers)
	}
}

// The PV in the cache is being deleted, but the API server's PV of that
// name is another (recreated, or not being deleted): the live re-check
// refuses, and the other PV keeps its finalizers.
func TestFinalizerLiveRecheck(t *testing.T) {
	for name, change := range map[string]func(*corev1.PersistentVolume){
		"PV recreated":         func(p *corev1.PersistentVolume) { p.UID = "uid-new"; p.DeletionTimestamp = nil },
		"PV not being deleted": func(p *corev1.PersistentVolume) { p.DeletionTimestamp = nil },
	} {
		t.Run(name, func(t *testing.T) {
			p := pv("pv-a", "n1", "data-0", "c1", recreate)
			p.DeletionTimestamp = &metav1.Time{Time: t0}
			e := newEnv(t, p)
			e.sync()
			e.now = e.now.Add(grace)
			live := pv("pv-a", "n1", "data-0", "c1", recreate)
			change(live)
			if err := e.client.Tracker().Update(pvsGVR, live, ""); err != nil {
				t.Fatal(err)
			}
			e.stale = true
			if err := e.syncErr(); !errors.Is(err, errRefused) {
				t.Errorf("sync: %v, want %v", err, errRefused)
			}
			got, err := e.client.CoreV1().PersistentVolumes().Get(context.Background(), "pv-a", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.Finalizers, live.Finalizers) {
				t.Errorf("finalizers %v, want %v", got.Finalizers, live.Finalizers)
			}
			if got := testutil.ToFloat64(e.metrics.actions.WithLabelValues(string(RemoveFinalizer), "refused")); got != 1 {
				t.Errorf("RemoveFinalizer refused = %v", got)
			}
		})
	}
}

// The View a lost node's PVs are decided on says whether its Node exists:
// from the cache within the grace period, from the API server past it
// (here the cache lags and has no n1). Decide alone then keeps everything.
func TestViewNodeExists(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, lostNodeObjects(recreate)...)
	e.sync()
	loss := Loss{Node: "n1", Since: t0}
	pvs := []*corev1.PersistentVolume{pv("pv-a", "n1", "data-0", "c1", recreate)}
	for _, tc := range []struct {
		name        string
		after       time.Duration
		inCache, up bool
		want        bool
	}{
		{name: "gone, within grace", want: false},
		{name: "gone, past grace", after: grace, want: false},
		{name: "in the cache, within grace", inCache: true, up: true, want: true},
		{name: "on the API server only, past grace", after: grace, up: true, want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cached []any
			if tc.inCache {
				cached = append(cached, node("n1"))
			}
			e.replace("nodes", cached)
			_ = e.client.Tracker().Delete(corev1.SchemeGroupVersion.WithResource("nodes"), "", "n1")
			if tc.up {
				if err := e.client.Tracker().Add(node("n1")); err != nil {
					t.Fatal(err)
				}
			}
			v, err := e.r.view(ctx, loss, pvs, t0.Add(tc.after))
			if err != nil {
				t.Fatal(err)
			}
			if v.NodeExists != tc.want {
				t.Fatalf("NodeExists = %v, want %v", v.NodeExists, tc.want)
			}
			if !tc.want {
				return
			}
			for _, a := range Decide(loss, v) {
				if a.Kind != Wait {
					t.Errorf("with node n1 up: %s %s", a.Kind, a.PV.Name)
				}
			}
		})
	}
}

// A node deleted and re-added under the same name (any UID) before the
// grace period ends: nothing is deleted, also later.
func TestNodeBackBeforeGrace(t *testing.T) {
	objs := append(lostNodeObjects(recreate), node("n1"))
	e := newEnv(t, objs...)
	e.sync()
	if err := e.client.CoreV1().Nodes().Delete(context.Background(), "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.r.NodeDeleted("n1")
	e.now = e.now.Add(grace / 2)
	e.sync()
	back := node("n1")
	back.UID = "another-instance"
	if _, err := e.client.CoreV1().Nodes().Create(context.Background(), back, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.r.NodeAdded("n1")
	for range 3 {
		e.now = e.now.Add(grace)
		e.sync()
	}
	if d := e.deletes(); len(d) != 1 || d[0] != "nodes n1" {
		t.Fatalf("deleted: %v", d)
	}
}

// The cache says the node is gone, the API server has it (a lagging
// watch): nothing is deleted.
func TestLiveNodeOverridesCache(t *testing.T) {
	e := newEnv(t, lostNodeObjects(recreate)...)
	e.sync()
	if _, err := e.client.CoreV1().Nodes().Create(context.Background(), node("n1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.stale = true
	e.now = e.now.Add(2 * grace)
	e.sync()
	if d := e.deletes(); len(d) != 0 {
		t.Fatalf("deleted: %v", d)
	}
	if len(e.r.Losses()) != 0 {
		t.Fatalf("loss not cancelled: %v", e.r.Losses())
	}
}

// The node comes back between the decision and the deletion: the re-check
// right before the deletion stops it.
func TestNodeBackRightBeforeDelete(t *testing.T) {
	e := newEnv(t, lostNodeObjects(recreate)...)
	e.sync()
	e.now = e.now.Add(grace)
	gets := 0
	e.client.PrependReactor("get", "nodes", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.(k8stesting.GetAction).GetName() != "n1" {
			return false, nil, nil
		}
		gets++
		if gets == 1 { // the check that starts the node's sync
			return true, nil, apierrors.NewNotFound(corev1.Resource("nodes"), "n1")
		}
		return true, node("n1"), nil
	})
	if err := e.syncErr(); !errors.Is(err, errNodeBack) {
		t.Errorf("sync: %v, want %v", err, errNodeBack)
	}
	if d := e.deletes(); len(d) != 0 {
		t.Fatalf("deleted: %v", d)
	}
	if got := testutil.ToFloat64(e.metrics.actions.WithLabelValues(string(DeleteClaim), "refused")); got != 1 {
		t.Errorf("refused = %v", got)
	}
}

// Caches that lag behind the API server about the claim or its pods: the
// live re-read refuses the deletion.
func TestLiveClaimAndPodChecks(t *testing.T) {
	for name, change := range map[string]func(*env){
		"claim replaced": func(e *env) {
			c := pvc("data-0", "c-new", "pv-a")
			if err := e.client.Tracker().Update(pvcsGVR, c, "db"); err != nil {
				t.Fatal(err)
			}
		},
		"pod started": func(e *env) {
			p := pod("db-0", "n3", "data-0", corev1.PodRunning)
			if err := e.client.Tracker().Update(corev1.SchemeGroupVersion.WithResource("pods"), p, "db"); err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, lostNodeObjects(recreate)...)
			e.sync()
			e.now = e.now.Add(grace)
			change(e)
			e.stale = true
			if err := e.syncErr(); !errors.Is(err, errRefused) {
				t.Errorf("sync: %v, want %v", err, errRefused)
			}
			if d := e.deletes(); len(d) != 0 {
				t.Fatalf("deleted: %v", d)
			}
		})
	}
}

// A class that did not opt in: nothing deleted; an Event on the claim and
// the PV names the stuck claim, once; the metric names it.
func TestReportStuckClaim(t *testing.T) {
	e := newEnv(t, lostNodeObjects(nil)...)
	e.sync()
	e.now = e.now.Add(grace)
	e.sync()
	e.sync()
	if d := e.deletes(); len(d) != 0 {
		t.Fatalf("deleted: %v", d)
	}
	evs := e.drainEvents()
	if len(evs) != 2 {
		t.Fatalf("want one Event on the claim and one on the PV, got %q", evs)
	}
	for _, ev := range evs {
		if !strings.Contains(ev, ReasonNodeLost) || !strings.Contains(ev, "db/data-0") || !strings.Contains(ev, "pv-a") {
			t.Errorf("event %q", ev)
		}
	}
	if got := testutil.ToFloat64(e.metrics.stuck.WithLabelValues("n1", "db/data-0", "pv-a")); got != 1 {
		t.Errorf("stuck claims metric = %v", got)
	}
}

// A failing precondition on the API side (the claim was replaced after the
// live read) is counted as refused and reported on the claim.
func TestPreconditionFailure(t *testing.T) {
	e := newEnv(t, lostNodeObjects(recreate)...)
	e.client.PrependReactor("delete", "persistentvolumeclaims", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewConflict(corev1.Resource("persistentvolumeclaims"), "data-0", errors.New("Precondition failed: UID in precondition: c1, UID in object meta: c9"))
	})
	e.sync()
	e.now = e.now.Add(grace)
	if err := e.syncErr(); !apierrors.IsConflict(err) {
		t.Errorf("sync: %v, want a conflict", err)
	}
	if got := testutil.ToFloat64(e.metrics.actions.WithLabelValues(string(DeleteClaim), "refused")); got != 1 {
		t.Errorf("refused = %v", got)
	}
	if evs := strings.Join(e.drainEvents(), "\n"); !strings.Contains(evs, ReasonActionRefused) {
		t.Errorf("no %s event: %s", ReasonActionRefused, evs)
	}
}
