package mover

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// Candidates is what a target is picked from.
type Candidates struct {
	Nodes []*corev1.Node
	// Capacities are the CSIStorageCapacity objects of flashpv.dev.
	Capacities []*storagev1.CSIStorageCapacity
	// Pod is the pod (or the StatefulSet's pod template, as a pod) that
	// will use the claim, if known: its node selector, required node
	// affinity and tolerations must fit the target.
	Pod *corev1.Pod
	// Serving reports whether a node runs a ready flashpv node plugin.
	Serving func(node string) bool
}

// PickTarget returns the node a PV's move goes to: request (a node name)
// if it fits, or for RequestAny the fitting node with the most free
// capacity; else "" and why nothing fits, node by node.
func PickTarget(pv *corev1.PersistentVolume, request string, c Candidates) (string, string) {
	source := nodeloss.NodeOf(pv)
	size := pv.Spec.Capacity[corev1.ResourceStorage]
	var reasons []string
	best, bestFree := "", int64(-1)
	for _, n := range c.Nodes {
		if request != RequestAny && n.Name != request {
			continue
		}
		free, why := fits(n, pv, source, size.Value(), c)
		if why != "" {
			reasons = append(reasons, n.Name+": "+why)
			continue
		}
		if free > bestFree || (free == bestFree && n.Name < best) {
			best, bestFree = n.Name, free
		}
	}
	if best != "" {
		return best, ""
	}
	if len(reasons) == 0 {
		if request != RequestAny {
			return "", fmt.Sprintf("node %s does not exist", request)
		}
		return "", "no other node"
	}
	sort.Strings(reasons)
	return "", strings.Join(reasons, "; ")
}

// fits says why node n cannot take the PV's volume, or how much its pool
// has free for the PV's class.
func fits(n *corev1.Node, pv *corev1.PersistentVolume, source string, size int64, c Candidates) (int64, string) {
	switch {
	case n.Name == source:
		return 0, "the volume is there"
	case n.Spec.Unschedulable:
		return 0, "cordoned"
	case !nodeReady(n):
		return 0, "not Ready"
	case c.Serving != nil && !c.Serving(n.Name):
		return 0, "no ready flashpv node plugin"
	}
	if p := c.Pod; p != nil {
		if ok, _ := nodeaffinity.GetRequiredNodeAffinity(p).Match(n); !ok {
			return 0, "the pod's node selector or affinity does not match"
		}
		if t := untolerated(n.Spec.Taints, p.Spec.Tolerations); t != nil {
			return 0, fmt.Sprintf("taint %s=%s:%s is not tolerated", t.Key, t.Value, t.Effect)
		}
	}
	free := int64(-1)
	for _, cap := range c.Capacities {
		if cap.StorageClassName != pv.Spec.StorageClassName || cap.Capacity == nil || !capacityFor(cap, n) {
			continue
		}
		free = max(free, cap.Capacity.Value())
	}
	switch {
	case free < 0:
		return 0, fmt.Sprintf("no storage capacity is published for class %q", pv.Spec.StorageClassName)
	case free < size:
		return 0, fmt.Sprintf("%d bytes free, the volume needs %d", free, size)
	}
	return free, ""
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// untolerated returns a NoSchedule or NoExecute taint none of the
// tolerations tolerates.
func untolerated(taints []corev1.Taint, tolerations []corev1.Toleration) *corev1.Taint {
	for i := range taints {
		t := &taints[i]
		if t.Effect == corev1.TaintEffectPreferNoSchedule {
			continue
		}
		ok := false
		for j := range tolerations {
			if tolerations[j].ToleratesTaint(klog.Background(), t, false) {
				ok = true
				break
			}
		}
		if !ok {
			return t
		}
	}
	return nil
}

// capacityFor: the capacity object's topology is node n's flashpv.dev
// topology.
func capacityFor(c *storagev1.CSIStorageCapacity, n *corev1.Node) bool {
	t := c.NodeTopology
	if t == nil {
		return false
	}
	if v, ok := t.MatchLabels[wellknown.TopologyKey]; ok {
		return v == n.Name
	}
	for _, e := range t.MatchExpressions {
		if e.Key == wellknown.TopologyKey && e.Operator == "In" {
			for _, v := range e.Values {
				if v == n.Name {
					return true
				}
			}
		}
	}
	return false
}
