package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestStaticPV(t *testing.T) {
	size := resource.MustParse("16Mi")
	pv := staticPV("node-2", 7, size)
	if pv.Name != "bench-static-node-2-7" || pv.Labels[staticLabel] != "true" {
		t.Errorf("name or label: %+v", pv.ObjectMeta)
	}
	terms := pv.Spec.NodeAffinity.Required.NodeSelectorTerms
	if len(terms) != 1 || len(terms[0].MatchExpressions) != 1 || affinityNode(pv, hostnameKey) != "node-2" {
		t.Errorf("node affinity: %+v", terms)
	}
	if got := pv.Spec.Capacity[corev1.ResourceStorage]; got.Cmp(size) != 0 {
		t.Errorf("capacity %s, want the claims' %s", got.String(), size.String())
	}
	if pv.Spec.StorageClassName != staticClass || pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimRetain {
		t.Errorf("class %q, reclaim policy %q", pv.Spec.StorageClassName, pv.Spec.PersistentVolumeReclaimPolicy)
	}
	if !slices.Equal(pv.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) || *pv.Spec.VolumeMode != corev1.PersistentVolumeFilesystem {
		t.Errorf("access modes %v, mode %v", pv.Spec.AccessModes, *pv.Spec.VolumeMode)
	}
	if pv.Spec.Local == nil || pv.Spec.Local.Path != "/var/lib/flashpv/bench-static/bench-static-node-2-7" {
		t.Errorf("source: %+v", pv.Spec.PersistentVolumeSource)
	}
}

func TestStaticStorageClass(t *testing.T) {
	sc := staticStorageClass()
	if sc.Name != staticClass || sc.Provisioner != "kubernetes.io/no-provisioner" ||
		*sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer || *sc.ReclaimPolicy != corev1.PersistentVolumeReclaimRetain {
		t.Errorf("class: %+v", sc)
	}
}

func TestRoundOrder(t *testing.T) {
	first := map[string]int{}
	for i := range 3 {
		o := roundOrder(i)
		if s := slices.Sorted(slices.Values(o)); !slices.Equal(s, []string{"bench-emptydir", "bench-flashpv", "bench-static"}) {
			t.Fatalf("round %d: %v", i, o)
		}
		first[o[0]]++
	}
	if len(first) != 3 {
		t.Errorf("over three rounds, not every set went first: %v", first)
	}
}

// claimedPV is a static volume of node bound to a claim, its directory
// under root holding a file.
func claimedPV(t *testing.T, root, node string, i int) *corev1.PersistentVolume {
	pv := staticPV(node, i, resource.MustParse("16Mi"))
	pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: "flashpv-bench", Name: "data-" + pv.Name}
	dir := filepath.Join(root, pv.Spec.Local.Path)
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "history"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	return pv
}

func TestReleaseStatic(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	used, free := claimedPV(t, root, "node-1", 0), staticPV("node-1", 1, resource.MustParse("16Mi"))
	other := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-1"},
		Spec: corev1.PersistentVolumeSpec{ClaimRef: &corev1.ObjectReference{Namespace: "flashpv-bench", Name: "x"}}}
	k := &kube{cs: fake.NewSimpleClientset(used, free, other), ns: "flashpv-bench", staticRoots: map[string]string{"node-1": root}}
	n, err := k.releaseStatic(ctx)
	if err != nil || n != 2 {
		t.Fatalf("releaseStatic = %d, %v; want the 2 static volumes", n, err)
	}
	got, _ := k.cs.CoreV1().PersistentVolumes().Get(ctx, used.Name, metav1.GetOptions{})
	if got.Spec.ClaimRef != nil {
		t.Errorf("claimRef kept: %+v", got.Spec.ClaimRef)
	}
	ents, err := os.ReadDir(filepath.Join(root, used.Spec.Local.Path))
	if err != nil || len(ents) != 0 {
		t.Errorf("directory not emptied (or gone): %v, %v", ents, err)
	}
	if got, _ := k.cs.CoreV1().PersistentVolumes().Get(ctx, other.Name, metav1.GetOptions{}); got.Spec.ClaimRef == nil {
		t.Error("a provisioned volume was released too")
	}
	// A volume on a node the bench has no root for is an error, not a
	// directory it guesses.
	k = &kube{cs: fake.NewSimpleClientset(claimedPV(t, root, "node-9", 0)), staticRoots: map[string]string{"node-1": root}}
	if _, err := k.releaseStatic(ctx); err == nil {
		t.Error("a volume of an unknown node was released")
	}
}

func TestCleanupStaticAndVolumesLeft(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	static := claimedPV(t, root, "node-1", 0)
	flashpv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-1"},
		Spec: corev1.PersistentVolumeSpec{StorageClassName: "flashpv", ClaimRef: &corev1.ObjectReference{Namespace: "flashpv-bench", Name: "x"}}}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}
	// No holder in the state directory: the node's directories are not
	// the bench's to reach, and are left alone.
	k := &kube{cs: fake.NewSimpleClientset(static, flashpv, node, staticStorageClass()), ns: "flashpv-bench", state: t.TempDir()}
	if n, err := k.volumesLeft(ctx); err != nil || n != 1 {
		t.Errorf("volumesLeft = %d, %v; want only the provisioned volume", n, err)
	}
	if err := k.cleanupStatic(ctx); err != nil {
		t.Fatal(err)
	}
	pvs, _ := k.cs.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if len(pvs.Items) != 1 || pvs.Items[0].Name != "pvc-1" {
		t.Errorf("volumes left: %v", pvs.Items)
	}
	if _, err := k.cs.StorageV1().StorageClasses().Get(ctx, staticClass, metav1.GetOptions{}); err == nil {
		t.Error("static class left")
	}
	// Again, with nothing left to delete.
	if err := k.cleanupStatic(ctx); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
}

func TestScaleUpAgainstStatic(t *testing.T) {
	round := func(order []string, fl, st, ed float64) scaleRound {
		return scaleRound{Order: order, FlashpvSec: fl, StaticSec: st, EmptyDirSec: ed, BoundSec: 5, TeardownSec: 10,
			FlashpvStages:  stageTimes{"claim bound": {"a": 2e9}, "pod ready": {"a": 5e9}}.summary(),
			StaticStages:   stageTimes{"claim bound": {"a": 1e9}, "pod ready": {"a": 4e9}}.summary(),
			EmptyDirStages: stageTimes{"pod ready": {"a": 3e9}}.summary(), StaticAuthorizerLag: 2}
	}
	for _, tc := range []struct {
		name   string
		rounds []scaleRound
		within bool
		want   []string
	}{
		{"a round above", []scaleRound{round(roundOrder(0), 30, 30, 20), round(roundOrder(1), 37.8, 30, 20), round(roundOrder(2), 31.5, 30, 25)}, false, []string{
			"| **flashpv ÷ static** (per round; target ≤ 1.1 in every round) | **1.05 [1.00–1.26]** |",
			"| static ÷ emptyDir (per round: the floor any PersistentVolume pays) | 1.50 [1.20–1.50] |",
			"| 2 | bench-static, bench-emptydir, bench-flashpv | 37.8 | 30.0 | 20.0 | 1.26 | 1.50 |",
			"median 1.05; worst round 2 at 1.26 against the target 1.1 in every round: **not met**.",
			"| claim bound | 2.0 / 2.0 | 1.0 / 1.0 | – |", "static 2, 2, 2."}},
		{"every round within", []scaleRound{round(roundOrder(0), 31, 30, 20), round(roundOrder(1), 32, 30, 20)}, true, []string{
			"worst round 2 at 1.07 against the target 1.1 in every round: met."}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &scaleUpResult{Replicas: 30, VolumeBytes: 16 << 20, Rounds: tc.rounds}
			s.summarize()
			if s.WithinStatic != tc.within || s.StaticTarget != staticTarget {
				t.Errorf("within %v, target %v", s.WithinStatic, s.StaticTarget)
			}
			var b strings.Builder
			s.markdown(&b)
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("lacks %q:\n%s", w, b.String())
				}
			}
		})
	}
}
