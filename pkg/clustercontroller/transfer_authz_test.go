package clustercontroller

import (
	"context"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

const testNS = "flashpv"

// world is what the authorizer sees: a restore claim "restore" of the
// snapshot "snap" and a clone "clone" of the claim "src", both in "apps"
// and selected for n2; the source volume and snapshot on n1; node plugin
// pods on n1 and n2.
type world struct {
	claims   []*corev1.PersistentVolumeClaim
	classes  []*storagev1.StorageClass
	pvs      []*corev1.PersistentVolume
	pods     []*corev1.Pod
	snapshot *unstructured.Unstructured
	content  *unstructured.Unstructured
}

func (w *world) claim(name string) *corev1.PersistentVolumeClaim {
	for _, c := range w.claims {
		if c.Name == name {
			return c
		}
	}
	panic(name)
}

func ptr[T any](v T) *T { return &v }

func testClaim(name, uid string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: name, UID: types.UID(uid),
			Annotations: map[string]string{annSelectedNode: "n2"}},
		Spec:   corev1.PersistentVolumeClaimSpec{StorageClassName: ptr("flashpv")},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimPending},
	}
}

func testClass(name, provisioner string, params map[string]string) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisioner, Parameters: params,
		VolumeBindingMode: ptr(storagev1.VolumeBindingWaitForFirstConsumer)}
}

func nodePod(name, node, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: name, UID: types.UID(name + "-uid"), Labels: map[string]string{"app.kubernetes.io/name": "flashpv"}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}

func newWorld() *world {
	restore := testClaim("restore", "r-uid")
	restore.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: ptr("snapshot.storage.k8s.io"), Kind: "VolumeSnapshot", Name: "snap"}
	clone := testClaim("clone", "c-uid")
	clone.Spec.DataSourceRef = &corev1.TypedObjectReference{Kind: "PersistentVolumeClaim", Name: "src"}
	src := testClaim("src", "src-uid")
	src.Spec.VolumeName, src.Status.Phase = "pv-src", corev1.ClaimBound
	pv := testPV("pv-src", "n1", wellknown.DriverName)
	pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: "apps", Name: "src", UID: "src-uid"}
	snapshot := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"namespace": "apps", "name": "snap", "uid": "snap-uid"},
		"spec":     map[string]any{"source": map[string]any{"persistentVolumeClaimName": "src"}},
		"status":   map[string]any{"boundVolumeSnapshotContentName": "snapcontent-1", "readyToUse": true},
	}}
	content := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
		"metadata": map[string]any{"name": "snapcontent-1", "labels": map[string]any{labelManagedBy: "n1"}},
		"spec": map[string]any{
			"driver":            wellknown.DriverName,
			"volumeSnapshotRef": map[string]any{"namespace": "apps", "name": "snap", "uid": "snap-uid"},
			"source":            map[string]any{"volumeHandle": "default.pv-src"},
		},
		"status": map[string]any{"snapshotHandle": "default.snap-1", "readyToUse": true},
	}}
	return &world{
		claims: []*corev1.PersistentVolumeClaim{restore, clone, src},
		classes: []*storagev1.StorageClass{
			testClass("flashpv", wellknown.DriverName, nil),
			testClass("no-cross", wellknown.DriverName, map[string]string{wellknown.ParamCrossNode: "false"}),
			testClass("cross", wellknown.DriverName, map[string]string{wellknown.ParamCrossNode: "true"}),
			testClass("other", "other.dev", nil),
		},
		pvs:      []*corev1.PersistentVolume{pv},
		pods:     []*corev1.Pod{nodePod("flashpv-node-a", "n1", "10.0.0.1"), nodePod("flashpv-node-b", "n2", "10.0.0.2")},
		snapshot: snapshot,
		content:  content,
	}
}

func (w *world) authorizer(t *testing.T) *grantAuthorizer {
	t.Helper()
	var objs []runtime.Object
	pvs := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	pods := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, c := range w.claims {
		objs = append(objs, c)
	}
	for _, c := range w.classes {
		objs = append(objs, c)
	}
	for _, pv := range w.pvs {
		objs = append(objs, pv)
		_ = pvs.Add(pv)
	}
	for _, p := range w.pods {
		_ = pods.Add(p)
	}
	var dyn []runtime.Object
	for _, o := range []*unstructured.Unstructured{w.snapshot, w.content} {
		if o != nil {
			dyn = append(dyn, o)
		}
	}
	return &grantAuthorizer{
		client: fake.NewClientset(objs...), dynamic: dynamicfake.NewSimpleDynamicClient(runtime.NewScheme(), dyn...),
		pvs: corelisters.NewPersistentVolumeLister(pvs), pods: corelisters.NewPodLister(pods),
		namespace: testNS, podSelector: labels.SelectorFromSet(labels.Set{"app.kubernetes.io/name": "flashpv"}), nodePort: 9811,
	}
}

var (
	restoreReq = broker.GrantRequest{Kind: broker.KindSnapshot, Source: "default.snap-1", Target: "pvc-r-uid", ClaimNamespace: "apps", ClaimName: "restore"}
	cloneReq   = broker.GrantRequest{Kind: broker.KindVolume, Source: "default.pv-src", Target: "pvc-c-uid", ClaimNamespace: "apps", ClaimName: "clone"}
)

func TestAuthorize(t *testing.T) {
	for _, tc := range []struct {
		name   string
		node   string // default n2
		req    broker.GrantRequest
		change func(*world, *broker.GrantRequest)
		code   string // "": granted from n1
		msg    string // in the refusal
	}{
		{name: "restore", req: restoreReq},
		{name: "clone", req: cloneReq},
		{name: "restore, class allows explicitly", req: restoreReq, change: func(w *world, _ *broker.GrantRequest) {
			w.claim("restore").Spec.StorageClassName = ptr("cross")
		}},
		{name: "restore, node from the PV", req: restoreReq, change: func(w *world, _ *broker.GrantRequest) {
			w.content.SetLabels(nil)
		}},
		{name: "restore, Immediate class, taken by this node", req: restoreReq, change: func(w *world, _ *broker.GrantRequest) {
			w.classes[0].VolumeBindingMode = ptr(storagev1.VolumeBindingImmediate)
		}},
		{name: "newest ready pod", req: cloneReq, change: func(w *world, _ *broker.GrantRequest) {
			old := nodePod("flashpv-node-old", "n1", "10.0.0.9")
			old.CreationTimestamp = metav1.Unix(1, 0)
			w.pods[0].CreationTimestamp = metav1.Unix(2, 0)
			w.pods = append(w.pods, old)
		}},
		{name: "wrong node", node: "n3", req: restoreReq, code: broker.CodeDenied, msg: "is for node n2"},
		{name: "no selected node", req: restoreReq, code: broker.CodeDenied, msg: "no selected node", change: func(w *world, _ *broker.GrantRequest) {
			delete(w.claim("restore").Annotations, annSelectedNode)
		}},
		{name: "Immediate class, no node took it yet", req: restoreReq, code: broker.CodeDenied, msg: "no selected node", change: func(w *world, _ *broker.GrantRequest) {
			delete(w.claim("restore").Annotations, annSelectedNode)
			w.classes[0].VolumeBindingMode = ptr(storagev1.VolumeBindingImmediate)
		}},
		{name: "bound claim", req: restoreReq, code: broker.CodeDenied, msg: "already bound", change: func(w *world, _ *broker.GrantRequest) {
			w.claim("restore").Spec.VolumeName, w.claim("restore").Status.Phase = "pvc-r-uid", corev1.ClaimBound
		}},
		{name: "claim being deleted", req: restoreReq, code: broker.CodeDenied, msg: "being deleted", change: func(w *world, _ *broker.GrantRequest) {
			w.claim("restore").DeletionTimestamp = ptr(metav1.Now())
			w.claim("restore").Finalizers = []string{"kubernetes.io/pvc-protection"}
		}},
		{name: "wrong target name", req: restoreReq, code: broker.CodeDenied, msg: "not provisioned as", change: func(_ *world, r *broker.GrantRequest) {
			r.Target = "pvc-other"
		}},
		{name: "other snapshot handle", req: restoreReq, code: broker.CodeDenied, msg: "is not snapshot", change: func(_ *world, r *broker.GrantRequest) {
			r.Source = "default.snap-2"
		}},
		{name: "other volume handle", req: cloneReq, code: broker.CodeDenied, msg: "is not volume", change: func(_ *world, r *broker.GrantRequest) {
			r.Source = "default.pv-other"
		}},
		{name: "kind is not the claim's", req: restoreReq, code: broker.CodeDenied, msg: "not a PersistentVolumeClaim", change: func(_ *world, r *broker.GrantRequest) {
			r.Kind, r.Source = broker.KindVolume, "default.pv-src"
		}},
		{name: "content of another snapshot", req: restoreReq, code: broker.CodeDenied, msg: "not bound to VolumeSnapshot", change: func(w *world, _ *broker.GrantRequest) {
			_ = unstructured.SetNestedField(w.content.Object, "other", "spec", "volumeSnapshotRef", "name")
		}},
		{name: "content of another driver", req: restoreReq, code: broker.CodeDenied, msg: "not a flashpv.dev snapshot", change: func(w *world, _ *broker.GrantRequest) {
			_ = unstructured.SetNestedField(w.content.Object, "other.dev", "spec", "driver")
		}},
		{name: "class forbids", req: restoreReq, code: broker.CodeDenied, msg: "forbids copies across nodes", change: func(w *world, _ *broker.GrantRequest) {
			w.claim("restore").Spec.StorageClassName = ptr("no-cross")
		}},
		{name: "class of another provisioner", req: cloneReq, code: broker.CodeDenied, msg: "provisioned by other.dev", change: func(w *world, _ *broker.GrantRequest) {
			w.claim("clone").Spec.StorageClassName = ptr("other")
		}},
		{name: "source on this node", node: "n1", req: restoreReq, code: broker.CodeDenied, msg: "copy locally", change: func(w *world, _ *broker.GrantRequest) {
			w.claim("restore").Annotations[annSelectedNode] = "n1"
		}},
		{name: "clone source on this node", node: "n1", req: cloneReq, code: broker.CodeDenied, msg: "copy locally", change: func(w *world, _ *broker.GrantRequest) {
			w.claim("clone").Annotations[annSelectedNode] = "n1"
		}},
		{name: "no claim", req: restoreReq, code: broker.CodeNotFound, msg: "not found", change: func(_ *world, r *broker.GrantRequest) {
			r.ClaimName = "nothing"
		}},
		{name: "no snapshot", req: restoreReq, code: broker.CodeNotFound, msg: "VolumeSnapshot apps/snap not found", change: func(w *world, _ *broker.GrantRequest) {
			w.snapshot = nil
		}},
		{name: "no source pod", req: restoreReq, code: broker.CodeUnavailable, msg: "no ready flashpv node plugin on node n1", change: func(w *world, _ *broker.GrantRequest) {
			w.pods = w.pods[1:]
		}},
		{name: "source pod not ready", req: cloneReq, code: broker.CodeUnavailable, msg: "no ready", change: func(w *world, _ *broker.GrantRequest) {
			w.pods[0].Status.Conditions[0].Status = corev1.ConditionFalse
		}},
		{name: "source pod of another DaemonSet", req: cloneReq, code: broker.CodeUnavailable, msg: "no ready", change: func(w *world, _ *broker.GrantRequest) {
			w.pods[0].Labels = map[string]string{"app.kubernetes.io/name": "impostor"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, req, node := newWorld(), tc.req, tc.node
			if node == "" {
				node = "n2"
			}
			if tc.change != nil {
				tc.change(w, &req)
			}
			source, addr, err := w.authorizer(t).Authorize(context.Background(), node, req)
			if tc.code == "" {
				if err != nil || source != "n1" || addr != "10.0.0.1:9811" {
					t.Fatalf("got %q %q %v, want n1 10.0.0.1:9811", source, addr, err)
				}
				return
			}
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != tc.code || !strings.Contains(e.Message, tc.msg) {
				t.Fatalf("got %q %q %v, want %s containing %q", source, addr, err, tc.code, tc.msg)
			}
		})
	}
}
