//go:build apiserver

package nodeloss

// The reconciler against a real kube-apiserver and etcd (test/apiserver):
// what the fake clientset cannot show. Its UID preconditions and
// resourceVersions are checked by the server; the finalizers admission
// adds (kubernetes.io/pvc-protection, kubernetes.io/pv-protection) keep
// deleted objects until the test, playing the controller-manager, drops
// them. Races are injected between the reconciler's requests by a hook on
// its HTTP transport.

import (
	"context"
	"errors"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/flashpv/flashpv/pkg/wellknown"
	"github.com/flashpv/flashpv/test/apiserver"
)

var srv *apiserver.Server

func TestMain(m *testing.M) { os.Exit(apiserver.Main(m, &srv)) }

const pvcProtection, pvProtection = "kubernetes.io/pvc-protection", "kubernetes.io/pv-protection"

// realEnv is a Reconciler whose client talks to the real API server as
// the deployed controller (its ServiceAccount and RBAC) through a hook, its listers refreshed from the server before each Sync
// (settled informers) with the test's objects only.
type realEnv struct {
	t        *testing.T
	ns       string // the test's namespace; also its label on cluster-scoped objects
	admin    kubernetes.Interface
	r        *Reconciler
	metrics  *Metrics
	now      time.Time
	indexers map[string]cache.Indexer
	stale    bool // keep the caches as they are

	mu      sync.Mutex
	hook    func(*http.Request) // runs before each request of the reconciler is sent
	deletes []string            // "persistentvolumeclaims NS/NAME" of the reconciler, as sent
}

type hookTransport struct {
	e    *realEnv
	next http.RoundTripper
}

func (h hookTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	h.e.mu.Lock()
	hook := h.e.hook
	if req.Method == http.MethodDelete {
		h.e.deletes = append(h.e.deletes, req.URL.Path)
	}
	h.e.mu.Unlock()
	if hook != nil {
		hook(req)
	}
	return h.next.RoundTrip(req)
}

func newRealEnv(t *testing.T) *realEnv {
	t.Helper()
	e := &realEnv{t: t, ns: srv.Namespace(t), admin: srv.Client, now: time.Now(), indexers: map[string]cache.Indexer{}}
	// The reconciler acts as the controller, with the deployment's RBAC.
	cfg := srv.ControllerConfig(t, e.ns)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return hookTransport{e: e, next: rt} }
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"nodes", "pvs", "pvcs", "pods", "classes"} {
		e.indexers[k] = cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	if e.metrics, err = NewMetrics(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	e.r = New(Config{
		Client: client,
		Listers: Listers{
			Nodes:   corelisters.NewNodeLister(e.indexers["nodes"]),
			PVs:     corelisters.NewPersistentVolumeLister(e.indexers["pvs"]),
			Claims:  corelisters.NewPersistentVolumeClaimLister(e.indexers["pvcs"]),
			Pods:    corelisters.NewPodLister(e.indexers["pods"]),
			Classes: storagelisters.NewStorageClassLister(e.indexers["classes"]),
		},
		Recorder: record.NewFakeRecorder(1000), Metrics: e.metrics, Grace: grace, Now: func() time.Time { return e.now },
	})
	return e
}

func (e *realEnv) setHook(h func(*http.Request)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hook = h
}

func (e *realEnv) sentDeletes() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.deletes)
}

func (e *realEnv) name(s string) string { return e.ns + "-" + s }

func (e *realEnv) refresh() {
	ctx := context.Background()
	c := e.admin.CoreV1()
	own := metav1.ListOptions{LabelSelector: "test=" + e.ns}
	var items []any
	add := func(o any) { items = append(items, o) }
	replace := func(kind string) {
		if err := e.indexers[kind].Replace(items, ""); err != nil {
			e.t.Fatal(err)
		}
		items = nil
	}
	nodes, err := c.Nodes().List(ctx, own)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := range nodes.Items {
		add(&nodes.Items[i])
	}
	replace("nodes")
	pvs, err := c.PersistentVolumes().List(ctx, own)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := range pvs.Items {
		add(&pvs.Items[i])
	}
	replace("pvs")
	pvcs, err := c.PersistentVolumeClaims(e.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	for i := range pvcs.Items {
		add(&pvcs.Items[i])
	}
	replace("pvcs")
	pods, err := c.Pods(e.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	for i := range pods.Items {
		add(&pods.Items[i])
	}
	replace("pods")
	classes, err := e.admin.StorageV1().StorageClasses().List(ctx, own)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := range classes.Items {
		add(&classes.Items[i])
	}
	replace("classes")
}

func (e *realEnv) syncErr() error {
	if !e.stale {
		e.refresh()
	}
	return e.r.Sync(context.Background())
}

func (e *realEnv) sync() {
	e.t.Helper()
	if err := e.syncErr(); err != nil {
		e.t.Fatalf("sync: %v", err)
	}
}

// lose starts the loss of node (a Node that never existed) and moves the
// clock past its grace period.
func (e *realEnv) lose() {
	e.t.Helper()
	// The next whole second, after every object made so far (the
	// server's timestamps are whole seconds): PVs made as a loss began
	// are kept.
	e.now = time.Now().Truncate(time.Second).Add(time.Second)
	e.sync()
	if len(e.r.Losses()) != 1 {
		e.t.Fatalf("losses: %v", e.r.Losses())
	}
	e.now = e.now.Add(grace + time.Second)
}

func (e *realEnv) labels() map[string]string { return map[string]string{"test": e.ns} }

func (e *realEnv) createNode(name string) {
	e.t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: e.name(name), Labels: e.labels()}}
	if _, err := e.admin.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *realEnv) createClaim(name, volume string) *corev1.PersistentVolumeClaim {
	e.t.Helper()
	class := e.name("fast")
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			StorageClassName: &class, VolumeName: volume,
		},
	}
	out, err := e.admin.CoreV1().PersistentVolumeClaims(e.ns).Create(context.Background(), c, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// createPV makes a flashpv PV of node (the test's name) bound to claim,
// with the provisioner's finalizer, as external-provisioner makes it.
func (e *realEnv) createPV(name, node string, claim *corev1.PersistentVolumeClaim) *corev1.PersistentVolume {
	e.t.Helper()
	p := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: e.name(name), Labels: e.labels(), Finalizers: []string{ProvisionerFinalizer}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              e.name("fast"),
			NodeAffinity:                  affinity(e.name(node)),
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: wellknown.DriverName, VolumeHandle: "default." + e.name(name), VolumeAttributes: recreate}},
		},
	}
	if claim != nil {
		p.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID}
	}
	out, err := e.admin.CoreV1().PersistentVolumes().Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// lostVolume: node n1 never existed (n2 does); PV pv-a there, bound to
// claim data-0, which a Pending pod (its node pinned to n1) waits for.
func (e *realEnv) lostVolume() (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume) {
	e.t.Helper()
	e.createNode("n2")
	c := e.createClaim("data-0", e.name("pv-a"))
	p := e.createPV("pv-a", "n1", c)
	pd := pod("db-0", "", "data-0", corev1.PodPending)
	pd.Namespace = e.ns
	pd.Spec.Containers = []corev1.Container{{Name: "c", Image: "db"}}
	pd.Status = corev1.PodStatus{}
	if _, err := e.admin.CoreV1().Pods(e.ns).Create(context.Background(), pd, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	if !slices.Contains(c.Finalizers, pvcProtection) {
		e.t.Fatalf("the API server did not add %s: %v", pvcProtection, c.Finalizers)
	}
	return c, p
}

// dropFinalizer removes one finalizer, as the controller owning it would.
func dropFinalizer(t *testing.T, kind, ns, name, finalizer string) {
	t.Helper()
	ctx := context.Background()
	var err error
	switch kind {
	case "pvc":
		var c *corev1.PersistentVolumeClaim
		if c, err = srv.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
			c.Finalizers = slices.DeleteFunc(c.Finalizers, func(f string) bool { return f == finalizer })
			_, err = srv.Client.CoreV1().PersistentVolumeClaims(ns).Update(ctx, c, metav1.UpdateOptions{})
		}
	case "pv":
		var p *corev1.PersistentVolume
		if p, err = srv.Client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{}); err == nil {
			p.Finalizers = slices.DeleteFunc(p.Finalizers, func(f string) bool { return f == finalizer })
			_, err = srv.Client.CoreV1().PersistentVolumes().Update(ctx, p, metav1.UpdateOptions{})
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}

func (e *realEnv) getPV(name string) (*corev1.PersistentVolume, error) {
	return e.admin.CoreV1().PersistentVolumes().Get(context.Background(), name, metav1.GetOptions{})
}

func (e *realEnv) getClaim(name string) (*corev1.PersistentVolumeClaim, error) {
	return e.admin.CoreV1().PersistentVolumeClaims(e.ns).Get(context.Background(), name, metav1.GetOptions{})
}

// The whole recovery against a real server, where a deletion waits for
// finalizers: the claim is deleted (UID precondition) and waited for
// while pvc-protection holds it; once it is gone the PV is deleted (UID
// precondition) and loses the provisioner's finalizer, keeping
// pv-protection for Kubernetes to remove; then the loss ends.
func TestAPIServerRecreate(t *testing.T) {
	e := newRealEnv(t)
	claim, pv := e.lostVolume()
	e.lose()
	e.sync()
	c, err := e.getClaim("data-0")
	if err != nil || c.DeletionTimestamp == nil || c.UID != claim.UID {
		t.Fatalf("claim after the grace period: %v, %+v", err, c)
	}
	e.sync() // the claim is being deleted: wait
	if _, err := e.getPV(pv.Name); err != nil {
		t.Fatalf("PV deleted while its claim still exists: %v", err)
	}
	dropFinalizer(t, "pvc", e.ns, "data-0", pvcProtection)
	e.sync()
	got, err := e.getPV(pv.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got.DeletionTimestamp == nil || !slices.Equal(got.Finalizers, []string{pvProtection}) {
		t.Fatalf("PV: deletion %v, finalizers %v; want it being deleted with %s only", got.DeletionTimestamp, got.Finalizers, pvProtection)
	}
	e.sync() // nothing more to do while pv-protection holds it
	dropFinalizer(t, "pv", "", pv.Name, pvProtection)
	e.sync()
	if len(e.r.Losses()) != 0 {
		t.Errorf("losses after recovery: %v", e.r.Losses())
	}
	want := []string{"/api/v1/namespaces/" + e.ns + "/persistentvolumeclaims/data-0", "/api/v1/persistentvolumes/" + pv.Name}
	if d := e.sentDeletes(); !slices.Equal(d, want) {
		t.Errorf("deletes sent: %q, want %q", d, want)
	}
}

// The claim is deleted and made again under the same name after the
// reconciler read it live and before its delete: the server refuses the
// delete (the UID precondition), the new claim stays, and the reconciler
// converges: the old claim's PV goes, the new claim is never deleted.
func TestAPIServerClaimRecreatedBeforeDelete(t *testing.T) {
	e := newRealEnv(t)
	old, pv := e.lostVolume()
	e.lose()
	var replaced *corev1.PersistentVolumeClaim
	e.setHook(func(req *http.Request) {
		// The reconciler lists the namespace's pods right after its live
		// read of the claim and before the delete.
		if req.Method != http.MethodGet || req.URL.Path != "/api/v1/namespaces/"+e.ns+"/pods" || replaced != nil {
			return
		}
		dropFinalizer(t, "pvc", e.ns, "data-0", pvcProtection)
		if err := srv.Client.CoreV1().PersistentVolumeClaims(e.ns).Delete(context.Background(), "data-0", metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
		replaced = e.createClaim("data-0", "")
	})
	err := e.syncErr()
	e.setHook(nil)
	if replaced == nil {
		t.Fatal("the hook did not run: the reconciler no longer lists pods before deleting")
	}
	if !apierrors.IsConflict(err) {
		t.Fatalf("sync: %v, want the server's conflict", err)
	}
	if got := testutil.ToFloat64(e.metrics.actions.WithLabelValues(string(DeleteClaim), "refused")); got != 1 {
		t.Errorf("DeleteClaim refused = %v", got)
	}
	for range 3 {
		e.sync()
	}
	c, err := e.getClaim("data-0")
	if err != nil || c.UID != replaced.UID || c.DeletionTimestamp != nil {
		t.Fatalf("the new claim: %v, %+v", err, c)
	}
	p, err := e.getPV(pv.Name)
	if err != nil || p.DeletionTimestamp == nil || slices.Contains(p.Finalizers, ProvisionerFinalizer) {
		t.Fatalf("the old claim's PV %s: %v, %+v; want it being deleted without %s", pv.Name, err, p, ProvisionerFinalizer)
	}
	claimDeletes := 0
	for _, d := range e.sentDeletes() {
		if strings.Contains(d, "/persistentvolumeclaims/") {
			claimDeletes++
		}
	}
	if claimDeletes != 1 || old.UID == replaced.UID {
		t.Errorf("claim deletes sent: %d (want only the refused one)", claimDeletes)
	}
}

// The cache still has a PV the server has replaced by another of the
// same name (here a static PV on a live node): the delete's UID
// precondition keeps the new PV, and with fresh caches the loss ends.
func TestAPIServerPVRecreatedBeforeDelete(t *testing.T) {
	e := newRealEnv(t)
	e.createNode("n2")
	pv := e.createPV("pv-a", "n1", nil) // its claim is gone
	e.lose()
	e.refresh()
	e.stale = true
	dropFinalizer(t, "pv", "", pv.Name, ProvisionerFinalizer)
	dropFinalizer(t, "pv", "", pv.Name, pvProtection)
	if err := e.admin.CoreV1().PersistentVolumes().Delete(context.Background(), pv.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	replaced := e.createPV("pv-a", "n2", nil)
	if err := e.syncErr(); !apierrors.IsConflict(err) {
		t.Fatalf("sync with a stale cache: %v, want the server's conflict", err)
	}
	e.stale = false
	e.sync()
	got, err := e.getPV(pv.Name)
	if err != nil || got.UID != replaced.UID || got.DeletionTimestamp != nil {
		t.Fatalf("the new PV: %v, %+v", err, got)
	}
	if len(e.r.Losses()) != 0 {
		t.Errorf("losses: %v", e.r.Losses())
	}
}

// A PV being deleted, its claim gone: the provisioner's finalizer is
// removed with an update that carries the resourceVersion read. When
// someone changes the PV between that read and the update, the server
// refuses it; the next Sync removes the finalizer and keeps the change.
func TestAPIServerFinalizerConflict(t *testing.T) {
	e := newRealEnv(t)
	e.createNode("n2")
	pv := e.createPV("pv-a", "n1", nil)
	if err := e.admin.CoreV1().PersistentVolumes().Delete(context.Background(), pv.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.lose()
	changed := false
	e.setHook(func(req *http.Request) {
		if req.Method != http.MethodPut || req.URL.Path != "/api/v1/persistentvolumes/"+pv.Name || changed {
			return
		}
		changed = true
		p, err := e.getPV(pv.Name)
		if err != nil {
			t.Error(err)
			return
		}
		p.Annotations = map[string]string{"operator": "was here"}
		if _, err := srv.Client.CoreV1().PersistentVolumes().Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
			t.Error(err)
		}
	})
	err := e.syncErr()
	e.setHook(nil)
	if !changed {
		t.Fatal("the reconciler sent no update of the PV")
	}
	if !apierrors.IsConflict(err) {
		t.Fatalf("sync: %v, want the server's conflict", err)
	}
	got, err := e.getPV(pv.Name)
	if err != nil || !slices.Contains(got.Finalizers, ProvisionerFinalizer) {
		t.Fatalf("PV after the refused update: %v, %+v", err, got)
	}
	e.sync()
	got, err = e.getPV(pv.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Finalizers, []string{pvProtection}) || got.Annotations["operator"] != "was here" {
		t.Fatalf("PV after the next sync: finalizers %v, annotations %v", got.Finalizers, got.Annotations)
	}
}

// The PV is deleted for good and another made under its name, not being
// deleted, between the reconciler's live read and its update: the server
// refuses the update (the old UID and resourceVersion), and the new PV
// keeps the provisioner's finalizer.
func TestAPIServerFinalizerOnReplacedPV(t *testing.T) {
	e := newRealEnv(t)
	e.createNode("n2")
	pv := e.createPV("pv-a", "n1", nil)
	if err := e.admin.CoreV1().PersistentVolumes().Delete(context.Background(), pv.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.lose()
	var replaced *corev1.PersistentVolume
	e.setHook(func(req *http.Request) {
		if req.Method != http.MethodPut || req.URL.Path != "/api/v1/persistentvolumes/"+pv.Name || replaced != nil {
			return
		}
		dropFinalizer(t, "pv", "", pv.Name, ProvisionerFinalizer)
		dropFinalizer(t, "pv", "", pv.Name, pvProtection)
		replaced = e.createPV("pv-a", "n1", nil)
	})
	err := e.syncErr()
	e.setHook(nil)
	if replaced == nil {
		t.Fatal("the reconciler sent no update of the PV")
	}
	if err == nil || !(apierrors.IsConflict(err) || errors.Is(err, errRefused)) {
		t.Fatalf("sync: %v, want a refusal", err)
	}
	got, err := e.getPV(pv.Name)
	if err != nil || got.UID != replaced.UID || !slices.Contains(got.Finalizers, ProvisionerFinalizer) || got.DeletionTimestamp != nil {
		t.Fatalf("the new PV: %v, %+v", err, got)
	}
}

// A PV the lost node's provisioner made right after the loss began, in
// the same second: the server keeps whole seconds, so its creation time
// reads as no later than the loss's start. The node was alive after it
// was seen gone: its claim is kept.
func TestAPIServerPVCreatedAsLossBegan(t *testing.T) {
	for attempt := 1; ; attempt++ {
		e := newRealEnv(t) // each attempt in its own namespace
		e.createNode("n2")
		for time.Now().Nanosecond() > 200_000_000 {
			time.Sleep(10 * time.Millisecond) // early in a second, so the PV is made in it
		}
		e.now = time.Now()
		e.r.NodeDeleted(e.name("n1"))
		c := e.createClaim("data-0", e.name("pv-a"))
		p := e.createPV("pv-a", "n1", c)
		if !p.CreationTimestamp.Time.Equal(e.now.Truncate(time.Second)) {
			if attempt == 5 {
				t.Fatalf("could not make a PV in the second a loss began (%s, %s)", p.CreationTimestamp, e.now)
			}
			continue
		}
		e.sync()
		e.now = e.now.Add(grace + time.Second)
		e.sync()
		if d := e.sentDeletes(); len(d) != 0 {
			t.Fatalf("deleted %q: the PV was made after the loss began", d)
		}
		return
	}
}
