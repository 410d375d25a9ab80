//go:build apiserver

package mover

// The reconciler against a real kube-apiserver and etcd (test/apiserver),
// acting with the deployed controller's RBAC: the record's
// resourceVersion preconditions, the UID-preconditioned deletes, the
// dry-run that finds out whether PVs' node affinity may change, and
// every verb the move needs. The test plays the rest of the cluster: the
// snapshot-controller, the protection controller, the PV controller's
// binding, the StatefulSet controller and the kubelets; the nodes answer
// orders from a small model.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/flashpv/flashpv/pkg/wellknown"
	"github.com/flashpv/flashpv/test/apiserver"
)

var srv *apiserver.Server

func TestMain(m *testing.M) { os.Exit(apiserver.Main(m, &srv)) }

// nodeModel answers orders as the two nodes' flashpv would.
type nodeModel struct {
	mu     sync.Mutex
	copies map[string]copyState
	fenced bool
	sent   []OrderRequest
}

func (n *nodeModel) Send(_ context.Context, node string, req OrderRequest) (Progress, string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sent = append(n.sent, req)
	switch req.Order {
	case OrderImport:
		if req.Snapshot == "" || req.Capability != "cap:"+req.Snapshot || req.SourceAddress != nodeS+":9811" {
			return Failed, fmt.Sprintf("bad import %+v", req), nil
		}
		if n.copies[node] == noCopy {
			n.copies[node] = incoming
		}
	case OrderFence:
		n.fenced = true
	case OrderUnfence:
		n.fenced = false
	case OrderCatchUp:
		if !n.fenced {
			return Failed, "not fenced", nil
		}
		n.copies[node] = complete
	case OrderDrop:
		delete(n.copies, node)
	}
	return Finished, "", nil
}

type moveEnv struct {
	t        *testing.T
	ns       string
	admin    kubernetes.Interface
	dyn      dynamic.Interface
	r        *Reconciler
	nodes    *nodeModel
	indexers map[string]cache.Indexer
	events   *record.FakeRecorder
	metrics  *Metrics
}

func newMoveEnv(t *testing.T) *moveEnv {
	t.Helper()
	e := &moveEnv{t: t, ns: srv.Namespace(t), admin: srv.Client, dyn: srv.Dynamic, indexers: map[string]cache.Indexer{},
		nodes: &nodeModel{copies: map[string]copyState{nodeS: complete}}, events: record.NewFakeRecorder(1000)}
	// The deployed controller's RBAC: a verb a move needs and the
	// ClusterRole lacks fails the test.
	cfg := srv.ControllerConfig(t, e.ns)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"pvs", "pvcs", "pods"} {
		e.indexers[k] = cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	if e.metrics, err = NewMetrics(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	e.r = &Reconciler{
		Client: client, Dynamic: dyn,
		PVs:    corelisters.NewPersistentVolumeLister(e.indexers["pvs"]),
		Claims: corelisters.NewPersistentVolumeClaimLister(e.indexers["pvcs"]),
		Orders: e.nodes, Recorder: e.events,
		Target: func(*corev1.PersistentVolume, *corev1.PersistentVolumeClaim, string) (string, string) {
			return nodeT, ""
		},
		Address:    func(node string) (string, error) { return node + ":9811", nil },
		Metrics:    e.metrics,
		Capability: func(req OrderRequest) (string, error) { return "cap:" + req.Snapshot, nil },
	}
	return e
}

func (e *moveEnv) pvName() string { return "pvc-" + e.ns }

// refresh fills the listers from the server (settled informers).
func (e *moveEnv) refresh() {
	ctx := context.Background()
	c := e.admin.CoreV1()
	fill := func(kind string, items []any) {
		if err := e.indexers[kind].Replace(items, ""); err != nil {
			e.t.Fatal(err)
		}
	}
	var items []any
	if pv, err := c.PersistentVolumes().Get(ctx, e.pvName(), metav1.GetOptions{}); err == nil {
		items = append(items, pv)
	}
	fill("pvs", items)
	items = nil
	pvcs, err := c.PersistentVolumeClaims(e.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	for i := range pvcs.Items {
		items = append(items, &pvcs.Items[i])
	}
	fill("pvcs", items)
	items = nil
	pods, err := c.Pods(e.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	for i := range pods.Items {
		items = append(items, &pods.Items[i])
	}
	fill("pods", items)
}

// setup makes a bound claim on node-s, its PV and a running pod, and asks
// for a move to node-t.
func (e *moveEnv) setup() {
	ctx := context.Background()
	c := e.admin.CoreV1()
	claim := e.makeClaim()
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: e.pvName(), Labels: map[string]string{"test": e.ns},
			Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": wellknown.DriverName}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              "flashpv",
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: wellknown.DriverName, VolumeHandle: handle}},
			NodeAffinity:                  affinity(nodeS),
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: e.ns, Name: claimN, UID: claim.UID},
		},
	}
	if _, err := c.PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		for _, n := range []string{e.pvName(), e.pvName() + "-"} {
			_ = c.PersistentVolumes().Delete(context.Background(), n, metav1.DeleteOptions{})
		}
	})
	e.bind(claim, e.pvName())
	e.makePod(nodeS, corev1.PodRunning)
	// The class a move's snapshot is taken with: the test's own, by name
	// (the server holds every test's classes).
	class := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
		"metadata": map[string]any{"name": e.ns}, "driver": wellknown.DriverName, "deletionPolicy": "Delete",
	}}
	if _, err := e.dyn.Resource(classesGVR).Create(ctx, class, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = e.dyn.Resource(classesGVR).Delete(context.Background(), e.ns, metav1.DeleteOptions{}) })
	e.r.SnapshotClass = e.ns
	e.patchClaim(map[string]any{AnnRequest: nodeT})
}

func (e *moveEnv) makeClaim() *corev1.PersistentVolumeClaim {
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: claimN, Namespace: e.ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: ptr("flashpv"),
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
	claim, err := e.admin.CoreV1().PersistentVolumeClaims(e.ns).Create(context.Background(), claim, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return claim
}

func ptr[T any](v T) *T { return &v }

// bind plays the PV controller: claim and PV point at each other.
func (e *moveEnv) bind(claim *corev1.PersistentVolumeClaim, pvName string) {
	ctx := context.Background()
	c := e.admin.CoreV1()
	claim.Spec.VolumeName = pvName
	claim, err := c.PersistentVolumeClaims(e.ns).Update(ctx, claim, metav1.UpdateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	claim.Status.Phase = corev1.ClaimBound
	if _, err := c.PersistentVolumeClaims(e.ns).UpdateStatus(ctx, claim, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	pv, err := c.PersistentVolumes().Get(ctx, pvName, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	pv.Spec.ClaimRef.UID = claim.UID
	if _, err := c.PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *moveEnv) makePod(node string, phase corev1.PodPhase) {
	ctx := context.Background()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: podN, Namespace: e.ns},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "db", Image: "db"}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claimN}}}}}}
	pod, err := e.admin.CoreV1().Pods(e.ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	pod.Status.Phase = phase
	if _, err := e.admin.CoreV1().Pods(e.ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

func (e *moveEnv) patchClaim(ann map[string]any) {
	body := fmt.Sprintf(`{"metadata":{"annotations":%s}}`, mustJSON(e.t, ann))
	if _, err := e.admin.CoreV1().PersistentVolumeClaims(e.ns).Patch(context.Background(), claimN, "application/merge-patch+json", []byte(body), metav1.PatchOptions{}); err != nil {
		e.t.Fatal(err)
	}
}

// cluster plays the other controllers and the kubelets once.
func (e *moveEnv) cluster() {
	ctx := context.Background()
	c := e.admin.CoreV1()
	// The snapshot-controller and csi-snapshotter: a content, ready.
	snaps, err := e.dyn.Resource(snapshotsGVR).Namespace(e.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, vs := range snaps.Items {
		if ready, _, _ := unstructured.NestedBool(vs.Object, "status", "readyToUse"); ready {
			continue
		}
		content := "snapcontent-" + string(vs.GetUID())
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
			"metadata": map[string]any{"name": content},
			"spec": map[string]any{"driver": wellknown.DriverName, "deletionPolicy": "Delete",
				"source":            map[string]any{"volumeHandle": handle},
				"volumeSnapshotRef": map[string]any{"namespace": e.ns, "name": vs.GetName(), "uid": string(vs.GetUID())}},
		}}
		created, err := e.dyn.Resource(contentsGVR).Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() { _ = e.dyn.Resource(contentsGVR).Delete(context.Background(), content, metav1.DeleteOptions{}) })
		_ = unstructured.SetNestedField(created.Object, "default.snap-"+vs.GetName(), "status", "snapshotHandle")
		_ = unstructured.SetNestedField(created.Object, true, "status", "readyToUse")
		if _, err := e.dyn.Resource(contentsGVR).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			e.t.Fatal(err)
		}
		_ = unstructured.SetNestedField(vs.Object, content, "status", "boundVolumeSnapshotContentName")
		_ = unstructured.SetNestedField(vs.Object, true, "status", "readyToUse")
		if _, err := e.dyn.Resource(snapshotsGVR).Namespace(e.ns).UpdateStatus(ctx, &vs, metav1.UpdateOptions{}); err != nil {
			e.t.Fatal(err)
		}
	}
	// The kubelet: a deleted pod's containers stop.
	pods, _ := c.Pods(e.ns).List(ctx, metav1.ListOptions{})
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			_ = c.Pods(e.ns).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
		}
	}
	claim, err := c.PersistentVolumeClaims(e.ns).Get(ctx, claimN, metav1.GetOptions{})
	pods, _ = c.Pods(e.ns).List(ctx, metav1.ListOptions{})
	switch {
	case err == nil && claim.DeletionTimestamp != nil && len(pods.Items) == 0:
		// The protection controller: no pod uses it any more.
		claim.Finalizers = nil
		if _, err := c.PersistentVolumeClaims(e.ns).Update(ctx, claim, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			e.t.Fatal(err)
		}
	case apierrors.IsNotFound(err):
		// The StatefulSet makes the claim again; the PV controller binds
		// it to the PV pre-bound to its name.
		claim = e.makeClaim()
		pvs, err := c.PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			e.t.Fatal(err)
		}
		for _, pv := range pvs.Items {
			if r := pv.Spec.ClaimRef; r != nil && r.Namespace == e.ns && r.Name == claimN && r.UID == "" {
				e.bind(claim, pv.Name)
			}
		}
	}
	// The StatefulSet makes a missing pod; the scheduler puts it where
	// its claim's PV is, the kubelet starts it unless the fence holds it.
	if pods, _ = c.Pods(e.ns).List(ctx, metav1.ListOptions{}); len(pods.Items) == 0 {
		claim, err := c.PersistentVolumeClaims(e.ns).Get(ctx, claimN, metav1.GetOptions{})
		if err == nil && claim.DeletionTimestamp == nil && claim.Spec.VolumeName != "" {
			pv, err := c.PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
			if err != nil {
				e.t.Fatal(err)
			}
			node := pv.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values[0]
			e.nodes.mu.Lock()
			phase := corev1.PodRunning
			if node == nodeS && e.nodes.fenced {
				phase = corev1.PodPending
			}
			if phase == corev1.PodRunning && e.nodes.copies[node] != complete {
				e.t.Fatalf("a pod starts on %s, whose copy is %v", node, e.nodes.copies[node])
			}
			e.nodes.mu.Unlock()
			e.makePod(node, phase)
		}
	}
}

func (e *moveEnv) evict() {
	err := e.admin.CoreV1().Pods(e.ns).Delete(context.Background(), podN, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	if err != nil && !apierrors.IsNotFound(err) {
		e.t.Fatal(err)
	}
}

// TestMoveAgainstAPIServer moves a claim's volume with a real API server,
// which here has no MutablePVNodeAffinity: the claim is swapped.
func TestMoveAgainstAPIServer(t *testing.T) {
	e := newMoveEnv(t)
	e.setup()
	ctx := context.Background()
	evicted := false
	for round := range 60 {
		e.refresh()
		if err := e.r.Sync(ctx); err != nil {
			t.Logf("round %d: %v", round, err) // conflicts are retried next round
		}
		pv, err := e.admin.CoreV1().PersistentVolumes().Get(ctx, e.pvName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		rec, _ := RecordOf(pv)
		if rec.State == WaitingForPod && !evicted {
			if rec.Mode != ModeSwap {
				t.Fatalf("mode %q on a server without MutablePVNodeAffinity", rec.Mode)
			}
			e.evict()
			evicted = true
		}
		if rec.State == Done {
			// The provisioner of the source node deletes the released PV.
			if err := e.admin.CoreV1().PersistentVolumes().Delete(ctx, e.pvName(), metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			break
		}
		e.cluster()
	}
	claim, err := e.admin.CoreV1().PersistentVolumeClaims(e.ns).Get(ctx, claimN, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	newPV, err := e.admin.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case !strings.HasPrefix(newPV.Name, e.pvName()+"-"):
		t.Fatalf("the claim is bound to %s", newPV.Name)
	case newPV.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values[0] != nodeT:
		t.Fatalf("the new PV is not on %s", nodeT)
	case newPV.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete:
		t.Errorf("the new PV's reclaim policy is %s", newPV.Spec.PersistentVolumeReclaimPolicy)
	case newPV.Spec.CSI.VolumeHandle != handle:
		t.Errorf("the new PV's volume is %s", newPV.Spec.CSI.VolumeHandle)
	case claim.Annotations[AnnRequest] != "" || claim.Annotations[AnnState] != string(Done):
		t.Errorf("the claim's annotations: %v", claim.Annotations)
	case e.nodes.copies[nodeT] != complete || e.nodes.copies[nodeS] != noCopy:
		t.Errorf("copies %v", e.nodes.copies)
	}
	snaps, err := e.dyn.Resource(snapshotsGVR).Namespace(e.ns).List(ctx, metav1.ListOptions{})
	if err != nil || len(snaps.Items) != 0 {
		t.Errorf("snapshots left: %d %v", len(snaps.Items), err)
	}
	if s, m := testutil.ToFloat64(e.metrics.started), testutil.ToFloat64(e.metrics.finished.WithLabelValues("moved")); s != 1 || m != 1 {
		t.Errorf("moves started %v, moved %v; want 1 and 1", s, m)
	}
	var reasons []string
	for len(e.events.Events) > 0 {
		reasons = append(reasons, strings.Fields(<-e.events.Events)[1])
	}
	if !slices.Contains(reasons, ReasonMoveStep) {
		t.Errorf("Events %v, want %s among them", reasons, ReasonMoveStep)
	}
}

// A claim replaced under its name between the reconciler's read and its
// delete is not deleted: the UID precondition holds on the server.
func TestMoveDeletesOnlyTheClaimItRead(t *testing.T) {
	e := newMoveEnv(t)
	e.setup()
	ctx := context.Background()
	claims := e.admin.CoreV1().PersistentVolumeClaims(e.ns)
	old, err := claims.Get(ctx, claimN, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := claims.Delete(ctx, claimN, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if deleting, err := claims.Get(ctx, claimN, metav1.GetOptions{}); err == nil {
		deleting.Finalizers = nil
		if _, err := claims.Update(ctx, deleting, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	replacement := e.makeClaim()
	err = e.r.act(ctx, nil, Action{Kind: DeleteClaim, Claim: old})
	if !apierrors.IsConflict(err) {
		t.Fatalf("delete of the replaced claim: %v, want a precondition conflict", err)
	}
	if got, err := claims.Get(ctx, claimN, metav1.GetOptions{}); err != nil || got.UID != replacement.UID || got.DeletionTimestamp != nil {
		t.Fatalf("the replacement claim: %v %v", got, err)
	}
}

// The record is written only over the PV the decision was made on.
func TestMoveRecordIsConditional(t *testing.T) {
	e := newMoveEnv(t)
	e.setup()
	ctx := context.Background()
	pvs := e.admin.CoreV1().PersistentVolumes()
	read, err := pvs.Get(ctx, e.pvName(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	changed := read.DeepCopy()
	changed.Labels["changed"] = "yes"
	if _, err := pvs.Update(ctx, changed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = e.r.act(ctx, read, Action{Kind: Write, Record: Record{ID: "x", State: Planned}})
	if !apierrors.IsConflict(err) {
		t.Fatalf("record over a changed PV: %v, want a conflict", err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
