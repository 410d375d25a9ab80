package main

import (
	"context"
	"fmt"
	"log"
	"maps"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// scaleUpResult compares a StatefulSet on flashpv volumes scaled from 0 to
// N replicas with the same StatefulSet on static local volumes (the floor,
// cluster_static.go) and on emptyDir, round by round.
type scaleUpResult struct {
	Replicas    int          `json:"replicas"`
	VolumeBytes int64        `json:"volume_bytes"`
	Rounds      []scaleRound `json:"rounds"`
	FlashpvSec  spread       `json:"flashpv_ready_sec"`  // scale to all Ready
	StaticSec   spread       `json:"static_ready_sec"`   // the same on static local volumes
	EmptyDirSec spread       `json:"emptydir_ready_sec"` // the same on emptyDir
	BoundSec    spread       `json:"flashpv_bound_sec"`  // scale to all claims Bound
	Ratio       spread       `json:"ratio"`              // flashpv ÷ emptyDir, per round
	// Per round, flashpv ÷ static (its Max is the worst round) and static ÷
	// emptyDir (what any PersistentVolume costs).
	VsStatic         spread  `json:"flashpv_to_static"`
	StaticVsEmptyDir spread  `json:"static_to_emptydir"`
	StaticTarget     float64 `json:"flashpv_to_static_target,omitempty"`
	// Whether flashpv ÷ static was within StaticTarget in every round.
	WithinStatic bool   `json:"flashpv_within_static_target"`
	TeardownSec  spread `json:"flashpv_teardown_sec"`
	// Per stage, the medians over the rounds.
	FlashpvStages  []stage `json:"flashpv_stages,omitempty"`
	StaticStages   []stage `json:"static_stages,omitempty"`
	EmptyDirStages []stage `json:"emptydir_stages,omitempty"`
	// Every replica's PV pinned to the replica's node; what was not.
	Checked    int      `json:"affinity_checked"`
	Mismatches []string `json:"affinity_mismatches,omitempty"`
}

type scaleRound struct {
	Order []string `json:"order,omitempty"` // the StatefulSets, in the order they ran
	// Per stage, the median and last replica's time to it: flashpv's,
	// static volumes' and emptyDir's.
	FlashpvStages    []stage        `json:"flashpv_stages,omitempty"`
	StaticStages     []stage        `json:"static_stages,omitempty"`
	EmptyDirStages   []stage        `json:"emptydir_stages,omitempty"`
	FlashpvSec       float64        `json:"flashpv_ready_sec"`
	StaticSec        float64        `json:"static_ready_sec,omitempty"`
	EmptyDirSec      float64        `json:"emptydir_ready_sec"`
	VsStatic         float64        `json:"flashpv_to_static,omitempty"`
	StaticVsEmptyDir float64        `json:"static_to_emptydir,omitempty"`
	BoundSec         float64        `json:"flashpv_bound_sec"`
	TeardownSec      float64        `json:"flashpv_teardown_sec"`
	PerNode          map[string]int `json:"flashpv_replicas_per_node"`
	// Pods whose kubelet was refused their claim once (the API server's
	// node authorizer had not yet linked pod, claim and node), each then
	// waiting for the kubelet's retry.
	AuthorizerLag       int `json:"flashpv_authorizer_lag_pods"`
	StaticAuthorizerLag int `json:"static_authorizer_lag_pods"`
}

// staticTarget is how far above the static floor flashpv may be, in every
// round.
const staticTarget = 1.1

// scaleTimeout bounds one scale-up or scale-down.
const scaleTimeout = 10 * time.Minute

// The StatefulSets of the comparison (and staticSet, cluster_static.go).
const flashpvSet, emptyDirSet = "bench-flashpv", "bench-emptydir"

// runScaleUp makes the three StatefulSets with 0 replicas from
// examples/statefulset.yaml (on flashpv, on static local volumes, on
// emptyDir) and the static volumes, warms up, then in every round scales
// each to N and back to 0, rotating which goes first; the flashpv claims
// are deleted after each scale-down and the static volumes recycled, so
// every round starts without volumes.
func (k *kube) runScaleUp(ctx context.Context, o *clusterOptions, class string, nodes []string) (*scaleUpResult, error) {
	var model appsv1.StatefulSet
	if err := readExample("statefulset.yaml", "StatefulSet", &model); err != nil {
		return nil, err
	}
	size := *resource.NewQuantity(o.volumeBytes, resource.BinarySI)
	sets := []*appsv1.StatefulSet{benchSet(&model, flashpvSet, false, size, class),
		benchSet(&model, staticSet, false, size, staticClass), benchSet(&model, emptyDirSet, true, size, class)}
	for _, s := range sets {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: s.Name}, Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone, Selector: s.Spec.Selector.MatchLabels,
			Ports: []corev1.ServicePort{{Name: "none", Port: 80}}}}
		if _, err := k.cs.CoreV1().Services(k.ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
		if _, err := k.cs.AppsV1().StatefulSets(k.ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	// As many per node as replicas: the scheduler may put them all on one.
	if err := k.makeStatic(ctx, nodes, o.replicas, size); err != nil {
		return nil, fmt.Errorf("static volumes: %w", err)
	}
	// An unmeasured round of a few replicas: the first pods on a node pay
	// for cold caches (binaries, images, the pool's metadata).
	log.Printf("cluster: warm-up")
	for _, set := range scaleSets {
		if _, err := k.scaleUp(ctx, set, min(3, o.replicas), set != emptyDirSet); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
		if _, err := k.scaleDown(ctx, set); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	res := &scaleUpResult{Replicas: o.replicas, VolumeBytes: o.volumeBytes}
	for i := range o.rounds {
		r := scaleRound{Order: roundOrder(i)}
		for _, set := range r.Order {
			if err := k.scaleRound(ctx, o, set, &r, res); err != nil {
				return res, fmt.Errorf("round %d, %s: %w", i+1, set, err)
			}
		}
		r.ratios()
		log.Printf("cluster: round %d (%v): %d replicas Ready in %.1f s on flashpv (claims Bound in %.1f s, spread %v), %.1f s on static local volumes, %.1f s on emptyDir; flashpv ÷ static %.2fx (target %.1f), static ÷ emptyDir %.2fx, flashpv ÷ emptyDir %.2fx; flashpv torn down in %.1f s",
			i+1, r.Order, o.replicas, r.FlashpvSec, r.BoundSec, r.PerNode, r.StaticSec, r.EmptyDirSec, r.VsStatic, staticTarget, r.StaticVsEmptyDir, r.FlashpvSec/r.EmptyDirSec, r.TeardownSec)
		log.Printf("cluster: round %d stages, flashpv: %v; static: %v; emptyDir: %v; pods refused their claim once by the node authorizer: %d on flashpv, %d on static",
			i+1, r.FlashpvStages, r.StaticStages, r.EmptyDirStages, r.AuthorizerLag, r.StaticAuthorizerLag)
		res.Rounds = append(res.Rounds, r)
	}
	res.summarize()
	return res, nil
}

// scaleSets are the scale-up's StatefulSets, in the first round's order.
var scaleSets = []string{flashpvSet, staticSet, emptyDirSet}

// roundOrder is the order of the StatefulSets in round i (from 0): rotated
// by one each round, so that each runs first, second and last equally
// often.
func roundOrder(i int) []string {
	n := len(scaleSets)
	out := make([]string, 0, n)
	for j := range n {
		out = append(out, scaleSets[(i+j)%n])
	}
	return out
}

// scaleRound scales one StatefulSet up and down and records it in r (and
// flashpv's node affinity check in res).
func (k *kube) scaleRound(ctx context.Context, o *clusterOptions, set string, r *scaleRound, res *scaleUpResult) error {
	up, err := k.scaleUp(ctx, set, o.replicas, set != emptyDirSet)
	if err != nil {
		return err
	}
	switch set {
	case flashpvSet:
		r.FlashpvSec, r.BoundSec = up.ready.Seconds(), up.bound.Seconds()
		r.PerNode, r.FlashpvStages = up.perNode, up.stages.summary()
		if r.AuthorizerLag, err = k.authorizerLag(ctx, set, up.started); err != nil {
			return err
		}
		mism, err := k.checkAffinity(ctx, set, o.replicas)
		if err != nil {
			return err
		}
		res.Checked += o.replicas
		res.Mismatches = append(res.Mismatches, mism...)
	case staticSet:
		r.StaticSec, r.StaticStages = up.ready.Seconds(), up.stages.summary()
		if r.StaticAuthorizerLag, err = k.authorizerLag(ctx, set, up.started); err != nil {
			return err
		}
	default:
		r.EmptyDirSec, r.EmptyDirStages = up.ready.Seconds(), up.stages.summary()
	}
	down, err := k.scaleDown(ctx, set)
	if err != nil {
		return err
	}
	if set == flashpvSet {
		r.TeardownSec = down.Seconds()
	}
	return nil
}

// ratios sets the round's ratios to the static floor (0 where a time is
// missing: a report of a run before the static arm).
func (r *scaleRound) ratios() {
	r.VsStatic, r.StaticVsEmptyDir = 0, 0
	if r.StaticSec > 0 {
		r.VsStatic = r.FlashpvSec / r.StaticSec
	}
	if r.EmptyDirSec > 0 {
		r.StaticVsEmptyDir = r.StaticSec / r.EmptyDirSec
	}
}

func (res *scaleUpResult) summarize() {
	var fl, st, ed, bound, down, ratio, vsStatic, floor []float64
	var fls, sts, eds [][]stage
	for i := range res.Rounds {
		r := &res.Rounds[i]
		r.ratios()
		fl, ed, bound, down = append(fl, r.FlashpvSec), append(ed, r.EmptyDirSec), append(bound, r.BoundSec), append(down, r.TeardownSec)
		if r.EmptyDirSec > 0 {
			ratio = append(ratio, r.FlashpvSec/r.EmptyDirSec)
		}
		if r.StaticSec > 0 {
			st, vsStatic, floor = append(st, r.StaticSec), append(vsStatic, r.VsStatic), append(floor, r.StaticVsEmptyDir)
		}
		fls, sts, eds = append(fls, r.FlashpvStages), append(sts, r.StaticStages), append(eds, r.EmptyDirStages)
	}
	res.FlashpvSec, res.EmptyDirSec, res.BoundSec, res.TeardownSec, res.Ratio = spreadOf(fl), spreadOf(ed), spreadOf(bound), spreadOf(down), spreadOf(ratio)
	res.StaticSec, res.VsStatic, res.StaticVsEmptyDir = spreadOf(st), spreadOf(vsStatic), spreadOf(floor)
	res.StaticTarget, res.WithinStatic = 0, false
	if len(vsStatic) > 0 {
		res.StaticTarget, res.WithinStatic = staticTarget, res.VsStatic.Max <= staticTarget
	}
	res.FlashpvStages, res.StaticStages, res.EmptyDirStages = medianStages(fls), medianStages(sts), medianStages(eds)
}

// benchSet is the example StatefulSet renamed, with 0 replicas and volumes
// of the given size in the given class, or on emptyDir instead of claims.
func benchSet(model *appsv1.StatefulSet, name string, emptyDir bool, size resource.Quantity, class string) *appsv1.StatefulSet {
	s := model.DeepCopy()
	labels := map[string]string{"app": name}
	s.ObjectMeta = metav1.ObjectMeta{Name: name, Labels: labels}
	s.Spec.ServiceName = name
	s.Spec.Replicas = new(int32)
	s.Spec.Selector = &metav1.LabelSelector{MatchLabels: labels}
	s.Spec.Template.Labels = maps.Clone(labels)
	// The example's anti-affinity spreads the replicas of its own set.
	if a := s.Spec.Template.Spec.Affinity; a != nil && a.PodAntiAffinity != nil {
		for i := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[i].PodAffinityTerm.LabelSelector = &metav1.LabelSelector{MatchLabels: maps.Clone(labels)}
		}
		for i := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
			a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[i].LabelSelector = &metav1.LabelSelector{MatchLabels: maps.Clone(labels)}
		}
	}
	claims := s.Spec.VolumeClaimTemplates
	if emptyDir {
		s.Spec.VolumeClaimTemplates = nil
		for _, c := range claims {
			s.Spec.Template.Spec.Volumes = append(s.Spec.Template.Spec.Volumes,
				corev1.Volume{Name: c.Name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}})
		}
		return s
	}
	for i := range claims {
		claims[i].Spec.StorageClassName = &class
		claims[i].Spec.Resources.Requests = corev1.ResourceList{corev1.ResourceStorage: size}
	}
	return s
}

type scaleUpTimes struct {
	started      time.Time
	ready, bound time.Duration
	perNode      map[string]int
	stages       stageTimes
}

// selectedNode is the annotation by which the scheduler asks for a claim's
// volume on a node.
const selectedNode = "volume.kubernetes.io/selected-node"

// scaleUp sets a StatefulSet's replicas and waits until all its pods are
// Ready (and, with claims, all its claims Bound), timed from the update.
func (k *kube) scaleUp(ctx context.Context, set string, n int, claims bool) (scaleUpTimes, error) {
	ctx, cancel := context.WithTimeout(ctx, scaleTimeout)
	defer cancel()
	start := time.Now()
	t := scaleUpTimes{stages: stageTimes{}, started: start}
	if err := k.setReplicas(ctx, set, n); err != nil {
		return t, err
	}
	sel := metav1.ListOptions{LabelSelector: "app=" + set}
	err := poll(ctx, 200*time.Millisecond, func() (bool, string, error) {
		pods, err := k.cs.CoreV1().Pods(k.ns).List(ctx, sel)
		if err != nil {
			return false, "", err
		}
		ready, pending := 0, map[string]int{}
		t.perNode = map[string]int{}
		now := time.Since(start)
		for _, p := range pods.Items {
			t.stages.see("created", p.Name, now)
			if p.Spec.NodeName != "" {
				t.stages.see("pod scheduled", p.Name, now)
			}
			if podReady(&p) {
				t.stages.see("pod ready", p.Name, now)
				ready++
				t.perNode[p.Spec.NodeName]++
			} else {
				pending[podState(&p)]++
			}
		}
		if claims && t.bound == 0 {
			pvcs, err := k.cs.CoreV1().PersistentVolumeClaims(k.ns).List(ctx, sel)
			if err != nil {
				return false, "", err
			}
			bound := 0
			for _, c := range pvcs.Items {
				if c.Annotations[selectedNode] != "" {
					t.stages.see("node picked", c.Name, now)
				}
				if c.Status.Phase == corev1.ClaimBound {
					t.stages.see("claim bound", c.Name, now)
					bound++
				}
			}
			if bound >= n {
				t.bound = time.Since(start)
			}
		}
		if ready >= n && (!claims || t.bound > 0) {
			t.ready = time.Since(start)
			return true, "", nil
		}
		return false, fmt.Sprintf("%s: %d of %d Ready, others %v", set, ready, n, pending), nil
	})
	return t, err
}

// authorizerLag counts the pods of a StatefulSet that, since start, had a
// FailedMount event because their kubelet could not read their claim yet:
// the node authorizer of the API server answers "no relationship found"
// until its graph links the just-bound pod to the node. The kubelet then
// retries the pod after a back-off, which the pod's start time shows.
func (k *kube) authorizerLag(ctx context.Context, set string, start time.Time) (int, error) {
	evs, err := k.cs.CoreV1().Events(k.ns).List(ctx, metav1.ListOptions{FieldSelector: "reason=FailedMount"})
	if err != nil {
		return 0, err
	}
	pods := map[string]bool{}
	for _, e := range evs.Items {
		last := e.LastTimestamp.Time
		if last.IsZero() {
			last = e.EventTime.Time
		}
		if strings.HasPrefix(e.InvolvedObject.Name, set+"-") && !last.Before(start.Truncate(time.Second)) &&
			strings.Contains(e.Message, "no relationship found") {
			pods[e.InvolvedObject.Name] = true
		}
	}
	return len(pods), nil
}

// podState says briefly why a pod is not Ready.
func podState(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status != corev1.ConditionTrue {
			return "unscheduled: " + firstLine(c.Message)
		}
	}
	for _, cs := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			return w.Reason
		}
	}
	return string(p.Status.Phase)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

func (k *kube) setReplicas(ctx context.Context, set string, n int) error {
	patch := fmt.Appendf(nil, `{"spec":{"replicas":%d}}`, n)
	_, err := k.cs.AppsV1().StatefulSets(k.ns).Patch(ctx, set, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// scaleDown sets a StatefulSet's replicas to 0, waits until its pods are
// gone, deletes the claims in the namespace and waits until their volumes
// are deleted (the static set's: recycled), so that the next scale-up
// starts with empty pools.
func (k *kube) scaleDown(ctx context.Context, set string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, scaleTimeout)
	defer cancel()
	start := time.Now()
	if err := k.setReplicas(ctx, set, 0); err != nil {
		return 0, err
	}
	sel := metav1.ListOptions{LabelSelector: "app=" + set}
	err := poll(ctx, 200*time.Millisecond, func() (bool, string, error) {
		pods, err := k.cs.CoreV1().Pods(k.ns).List(ctx, sel)
		return err == nil && len(pods.Items) == 0, fmt.Sprintf("%s: pods left", set), err
	})
	if err != nil {
		return 0, err
	}
	if err := k.cs.CoreV1().PersistentVolumeClaims(k.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		return 0, err
	}
	err = poll(ctx, 200*time.Millisecond, func() (bool, string, error) {
		n, err := k.volumesLeft(ctx)
		return n == 0, fmt.Sprintf("%d volume(s) left", n), err
	})
	if err == nil && set == staticSet {
		err = k.recycleStatic(ctx)
	}
	return time.Since(start), err
}

// checkAffinity compares each replica's node with its claim's PV's
// flashpv.dev/node and returns what differs.
func (k *kube) checkAffinity(ctx context.Context, set string, n int) ([]string, error) {
	pods, err := k.cs.CoreV1().Pods(k.ns).List(ctx, metav1.ListOptions{LabelSelector: "app=" + set})
	if err != nil {
		return nil, err
	}
	if len(pods.Items) != n {
		return nil, fmt.Errorf("%s: %d pods, want %d", set, len(pods.Items), n)
	}
	var bad []string
	for _, p := range pods.Items {
		for _, v := range p.Spec.Volumes {
			if v.PersistentVolumeClaim == nil {
				continue
			}
			pvc, err := k.cs.CoreV1().PersistentVolumeClaims(k.ns).Get(ctx, v.PersistentVolumeClaim.ClaimName, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			pv, err := k.cs.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			if got := pinnedNode(pv); got != p.Spec.NodeName {
				bad = append(bad, fmt.Sprintf("%s on %s, its volume %s on %q", p.Name, p.Spec.NodeName, pv.Name, got))
			}
		}
	}
	for _, b := range bad {
		log.Printf("cluster: node affinity: %s", b)
	}
	return bad, nil
}
