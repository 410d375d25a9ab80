package clustercontroller

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flashpv/flashpv/pkg/volumelist"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

func testPV(name, node, driver string) *corev1.PersistentVolume {
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: wellknown.TopologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
			}}}},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: "default." + name}},
		},
	}
}

// The lists: one key per existing node (empty when it has no PV) and per
// node named by a flashpv PV; other drivers' PVs left out; rewritten when
// they change or are due, not otherwise.
func TestListWriter(t *testing.T) {
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	pvs := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, n := range []string{"n1", "n2"} {
		_ = nodes.Add(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	_ = pvs.Add(testPV("pv-b", "n1", wellknown.DriverName))
	_ = pvs.Add(testPV("pv-a", "n1", wellknown.DriverName))
	_ = pvs.Add(testPV("pv-c", "gone", wellknown.DriverName))
	_ = pvs.Add(testPV("pv-x", "n2", "other.dev"))
	client := fake.NewClientset()
	w, err := newListWriter(client, "flashpv", corelisters.NewNodeLister(nodes), corelisters.NewPersistentVolumeLister(pvs), time.Minute, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	w.now = func() time.Time { return now }
	ctx := context.Background()
	if err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	read := func() map[string]volumelist.List {
		t.Helper()
		cm, err := client.CoreV1().ConfigMaps("flashpv").Get(ctx, wellknown.VolumeListConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]volumelist.List{}
		for k, v := range cm.Data {
			l, err := volumelist.Decode([]byte(v))
			if err != nil {
				t.Fatalf("%s: %v", k, err)
			}
			out[k] = l
		}
		return out
	}
	got := read()
	if len(got) != 3 || len(got["n1"].Volumes) != 2 || got["n1"].Volumes[0] != "default.pv-a" ||
		len(got["n2"].Volumes) != 0 || !got["gone"].Has("default.pv-c") || !got["n1"].AsOf.Equal(now) {
		t.Fatalf("lists %+v", got)
	}
	writes := func() int {
		n := 0
		for _, a := range client.Actions() {
			if a.GetVerb() == "create" || a.GetVerb() == "update" {
				n++
			}
		}
		return n
	}
	now = now.Add(10 * time.Second)
	if err := w.Sync(ctx); err != nil || writes() != 1 {
		t.Fatalf("unchanged lists rewritten: %d writes, %v", writes(), err)
	}
	_ = pvs.Delete(testPV("pv-a", "n1", wellknown.DriverName))
	if err := w.Sync(ctx); err != nil || writes() != 2 {
		t.Fatalf("changed lists: %d writes, %v", writes(), err)
	}
	if got := read(); got["n1"].Has("default.pv-a") || !got["n1"].Has("default.pv-b") {
		t.Fatalf("after a PV went: %+v", got["n1"])
	}
	now = now.Add(time.Minute)
	if err := w.Sync(ctx); err != nil || writes() != 3 {
		t.Fatalf("refresh: %d writes, %v", writes(), err)
	}
	if got := read(); !got["n2"].AsOf.Equal(now) {
		t.Fatalf("refresh did not move asOf: %v", got["n2"].AsOf)
	}
}
