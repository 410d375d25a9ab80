//go:build apiserver

package apiserver

import (
	"context"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
)

var srv *Server

func TestMain(m *testing.M) { os.Exit(Main(m, &srv)) }

// What the helper is for: the server refuses a delete whose UID
// precondition names an object since replaced, and an update carrying an
// old resourceVersion.
func TestPreconditionsAreReal(t *testing.T) {
	ctx := context.Background()
	ns := srv.Namespace(t)
	cms := srv.Client.CoreV1().ConfigMaps(ns)
	old, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "c"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cms.Delete(ctx, "c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "c"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	uid := old.UID
	err = cms.Delete(ctx, "c", metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if !apierrors.IsConflict(err) {
		t.Fatalf("delete with the old UID: %v, want a conflict", err)
	}
	cur, err := cms.Get(ctx, "c", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stale := cur.DeepCopy()
	cur.Data = map[string]string{"a": "1"}
	if _, err := cms.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	stale.Data = map[string]string{"b": "2"}
	if _, err := cms.Update(ctx, stale, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
		t.Fatalf("update with an old resourceVersion: %v, want a conflict", err)
	}
}

// The VolumeSnapshot CRDs are served, with their schema: unknown fields
// are pruned.
func TestSnapshotCRDs(t *testing.T) {
	ctx := context.Background()
	ns := srv.Namespace(t)
	gvr := schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}
	vs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": "s"},
		"spec":     map[string]any{"source": map[string]any{"persistentVolumeClaimName": "data"}, "bogus": "x"},
	}}
	got, err := srv.Dynamic.Resource(gvr).Namespace(ns).Create(ctx, vs, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if name, _, _ := unstructured.NestedString(got.Object, "spec", "source", "persistentVolumeClaimName"); name != "data" {
		t.Errorf("source %q", name)
	}
	if _, found, _ := unstructured.NestedFieldNoCopy(got.Object, "spec", "bogus"); found {
		t.Error("an unknown field was kept: the CRD's schema is not applied")
	}
}

// ControllerConfig acts with the deployment's RBAC: what the controller
// may do is allowed, the rest refused.
func TestControllerConfig(t *testing.T) {
	ctx := context.Background()
	ns := srv.Namespace(t)
	c, err := kubernetes.NewForConfig(srv.ControllerConfig(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("listing nodes: %v", err)
	}
	if _, err := c.CoreV1().Secrets(ns).Get(ctx, "flashpv-transfer-key", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("getting its own Secret: %v, want NotFound", err)
	}
	if _, err := c.CoreV1().Secrets(ns).Get(ctx, "other", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("getting another Secret: %v, want Forbidden", err)
	}
	if _, err := c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}}, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("creating a pod: %v, want Forbidden", err)
	}
}
