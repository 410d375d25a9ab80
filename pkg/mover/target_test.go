package mover

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flashpv/flashpv/pkg/wellknown"
)

func testNode(name string, mod func(n *corev1.Node)) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"zone": "a"}},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	if mod != nil {
		mod(n)
	}
	return n
}

func testCapacity(node, class string, free string) *storagev1.CSIStorageCapacity {
	q := resource.MustParse(free)
	return &storagev1.CSIStorageCapacity{StorageClassName: class, Capacity: &q,
		NodeTopology: &metav1.LabelSelector{MatchLabels: map[string]string{wellknown.TopologyKey: node}}}
}

func TestPickTarget(t *testing.T) {
	pv := newWorld(t, true).source()
	pv.Spec.StorageClassName = "fast"
	pv.Spec.Capacity = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}
	nodes := []*corev1.Node{
		testNode(nodeS, nil),
		testNode("node-a", nil),
		testNode("node-b", nil),
		testNode("node-cordoned", func(n *corev1.Node) { n.Spec.Unschedulable = true }),
		testNode("node-notready", func(n *corev1.Node) { n.Status.Conditions[0].Status = corev1.ConditionFalse }),
		testNode("node-tainted", func(n *corev1.Node) {
			n.Spec.Taints = []corev1.Taint{{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}}
		}),
		testNode("node-zone-b", func(n *corev1.Node) { n.Labels["zone"] = "b" }),
		testNode("node-small", nil),
		testNode("node-nocap", nil),
		testNode("node-noplugin", nil),
	}
	caps := []*storagev1.CSIStorageCapacity{testCapacity("node-small", "fast", "512Mi"), testCapacity("node-a", "fast", "2Gi"),
		testCapacity("node-b", "fast", "5Gi"), testCapacity("node-b", "slow", "50Gi"), testCapacity("node-nocap", "slow", "9Gi")}
	for _, n := range []string{"node-cordoned", "node-notready", "node-tainted", "node-zone-b", "node-noplugin"} {
		caps = append(caps, testCapacity(n, "fast", "10Gi"))
	}
	pod := &corev1.Pod{Spec: corev1.PodSpec{NodeSelector: map[string]string{"zone": "a"}}}
	c := Candidates{Nodes: nodes, Capacities: caps, Pod: pod, Serving: func(n string) bool { return n != "node-noplugin" }}
	tests := []struct {
		request, want, why string
	}{
		{RequestAny, "node-b", ""},
		{"node-a", "node-a", ""},
		{nodeS, "", "the volume is there"},
		{"node-cordoned", "", "cordoned"},
		{"node-notready", "", "not Ready"},
		{"node-tainted", "", "taint dedicated=gpu:NoSchedule"},
		{"node-zone-b", "", "node selector"},
		{"node-small", "", "bytes free"},
		{"node-nocap", "", `no storage capacity is published for class "fast"`},
		{"node-noplugin", "", "no ready flashpv node plugin"},
		{"node-x", "", "does not exist"},
	}
	for _, tc := range tests {
		got, why := PickTarget(pv, tc.request, c)
		if got != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("PickTarget(%q) = %q, %q; want %q, %q", tc.request, got, why, tc.want, tc.why)
		}
	}
	// Tolerated, the taint is no obstacle.
	pod.Spec.Tolerations = []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "gpu", Effect: corev1.TaintEffectNoSchedule}}
	if got, why := PickTarget(pv, "node-tainted", c); got != "node-tainted" {
		t.Errorf("tolerated taint: %q, %q", got, why)
	}
	// Nothing fits: every node says why.
	c.Capacities = nil
	if got, why := PickTarget(pv, RequestAny, c); got != "" || !strings.Contains(why, "node-a: no storage capacity") {
		t.Errorf("no capacity anywhere: %q, %q", got, why)
	}
}

func TestPickSnapshotClass(t *testing.T) {
	del := func(name string, def bool) snapshotClassInfo {
		return snapshotClassInfo{name: name, policy: "Delete", isDefault: def}
	}
	retain := snapshotClassInfo{name: "a-retain", policy: "Retain", isDefault: true}
	for _, tc := range []struct {
		name    string
		classes []snapshotClassInfo
		want    string
		err     string
	}{
		{"the default", []snapshotClassInfo{del("b", false), del("c", true), del("a", false)}, "c", ""},
		{"none default: the first by name", []snapshotClassInfo{del("flashpv-bench", false), del("flashpv", false)}, "flashpv", ""},
		{"a Retain default is passed over", []snapshotClassInfo{retain, del("z", false)}, "z", ""},
		{"only Retain", []snapshotClassInfo{retain}, "", "retain"},
		{"none", nil, "", "no VolumeSnapshotClass"},
	} {
		got, err := pickSnapshotClass(tc.classes)
		if got != tc.want || (tc.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: got %q, %v", tc.name, got, err)
		}
	}
}
