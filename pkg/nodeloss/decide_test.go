package nodeloss

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flashpv/flashpv/pkg/wellknown"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const grace = 5 * time.Minute

func affinity(values ...string) *corev1.VolumeNodeAffinity {
	return &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
		MatchExpressions: []corev1.NodeSelectorRequirement{{Key: wellknown.TopologyKey, Operator: corev1.NodeSelectorOpIn, Values: values}},
	}}}}
}

// pv is a flashpv PV on node bound to claim ns/name with claimUID.
func pv(name, node, claim string, claimUID types.UID, attrs map[string]string) *corev1.PersistentVolume {
	p := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name), CreationTimestamp: metav1.NewTime(t0.Add(-time.Hour)),
			Finalizers: []string{"kubernetes.io/pv-protection", ProvisionerFinalizer}},
		Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              "fast",
			NodeAffinity:                  affinity(node),
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: wellknown.DriverName, VolumeHandle: "default." + name, VolumeAttributes: attrs}},
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound},
	}
	if claim != "" {
		p.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "db", Name: claim, UID: claimUID}
	}
	return p
}

func pvc(name string, uid types.UID, volume string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: name, UID: uid},
		Spec:       corev1.PersistentVolumeClaimSpec{VolumeName: volume},
		Status:     corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound},
	}
}

func pod(name, node, claim string, phase corev1.PodPhase) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "db", Name: name},
		Spec: corev1.PodSpec{NodeName: node, Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}},
		Status: corev1.PodStatus{Phase: phase},
	}
}

func class(name string, params map[string]string) *storagev1.StorageClass {
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: wellknown.DriverName, Parameters: params}
}

var recreate = map[string]string{wellknown.ParamNodeLossPolicy: wellknown.NodeLossRecreate}

func TestDecide(t *testing.T) {
	now := t0.Add(grace + time.Second)
	opted := func() *corev1.PersistentVolume { return pv("pv-a", "n1", "data-0", "c1", recreate) }
	claim := func() *corev1.PersistentVolumeClaim { return pvc("data-0", "c1", "pv-a") }
	for _, tc := range []struct {
		name       string
		pv         *corev1.PersistentVolume
		claims     []*corev1.PersistentVolumeClaim
		pods       []*corev1.Pod
		classes    []*storagev1.StorageClass
		nodeExists bool
		now        time.Time
		want       Kind
	}{
		{name: "opted in, claim bound, no pod", pv: opted(), claims: []*corev1.PersistentVolumeClaim{claim()}, want: DeleteClaim},
		{name: "grace not over", pv: opted(), claims: []*corev1.PersistentVolumeClaim{claim()}, now: t0.Add(grace - time.Second), want: Wait},
		{name: "a node of that name exists", pv: opted(), claims: []*corev1.PersistentVolumeClaim{claim()}, nodeExists: true, want: Wait},
		{name: "PV created after the node was seen gone", pv: func() *corev1.PersistentVolume {
			p := opted()
			p.CreationTimestamp = metav1.NewTime(t0.Add(time.Second))
			return p
		}(), claims: []*corev1.PersistentVolumeClaim{claim()}, want: Wait},
		// The API server's timestamps are whole seconds: one in the second
		// the loss began may be the later.
		{name: "PV created in the second the node was seen gone", pv: func() *corev1.PersistentVolume {
			p := opted()
			p.CreationTimestamp = metav1.NewTime(t0)
			return p
		}(), claims: []*corev1.PersistentVolumeClaim{claim()}, want: Wait},
		{name: "PV created the second before", pv: func() *corev1.PersistentVolume {
			p := opted()
			p.CreationTimestamp = metav1.NewTime(t0.Add(-time.Second))
			return p
		}(), claims: []*corev1.PersistentVolumeClaim{claim()}, want: DeleteClaim},
		{name: "not opted in: report", pv: pv("pv-a", "n1", "data-0", "c1", nil), claims: []*corev1.PersistentVolumeClaim{claim()},
			classes: []*storagev1.StorageClass{class("fast", nil)}, want: Report},
		{name: "explicit Report", pv: pv("pv-a", "n1", "data-0", "c1", map[string]string{wellknown.ParamNodeLossPolicy: wellknown.NodeLossReport}),
			claims: []*corev1.PersistentVolumeClaim{claim()}, classes: []*storagev1.StorageClass{class("fast", recreate)}, want: Report},
		{name: "class opted in, PV made before the parameter was recorded", pv: pv("pv-a", "n1", "data-0", "c1", nil),
			claims: []*corev1.PersistentVolumeClaim{claim()}, classes: []*storagev1.StorageClass{class("fast", recreate)}, want: DeleteClaim},
		{name: "class gone, nothing recorded: report", pv: pv("pv-a", "n1", "data-0", "c1", nil), claims: []*corev1.PersistentVolumeClaim{claim()}, want: Report},
		{name: "pod running on another node", pv: opted(), claims: []*corev1.PersistentVolumeClaim{claim()},
			pods: []*corev1.Pod{pod("db-0", "n2", "data-0", corev1.PodRunning)}, want: Wait},
		{name: "pod still bound to the lost node", pv: opted(), claims: []*corev1.PersistentVolumeClaim{claim()},
			pods: []*corev1.Pod{pod("db-0", "n1", "data-0", corev1.PodRunning)}, want: Wait},
		{name: "pod pending, unscheduled", pv: opted(), claims: []*corev1.PersistentVolumeClaim{claim()},
			pods: []*corev1.Pod{pod("db-0", "", "data-0", corev1.PodPending)}, want: DeleteClaim},
		{name: "pod finished", pv: opted(), claims: []*corev1.PersistentVolumeClaim{claim()},
			pods: []*corev1.Pod{pod("db-0", "n2", "data-0", corev1.PodFailed)}, want: DeleteClaim},
		{name: "pod of another claim", pv: opted(), claims: []*corev1.PersistentVolumeClaim{claim()},
			pods: []*corev1.Pod{pod("db-1", "n2", "data-1", corev1.PodRunning)}, want: DeleteClaim},
		{name: "claim bound to another PV", pv: opted(), claims: []*corev1.PersistentVolumeClaim{pvc("data-0", "c1", "pv-b")}, want: Wait},
		{name: "claimRef without UID", pv: pv("pv-a", "n1", "data-0", "", recreate), claims: []*corev1.PersistentVolumeClaim{claim()}, want: Wait},
		{name: "claim being deleted", pv: opted(), claims: []*corev1.PersistentVolumeClaim{func() *corev1.PersistentVolumeClaim {
			c := claim()
			c.DeletionTimestamp = &metav1.Time{Time: t0}
			return c
		}()}, want: Wait},
		{name: "claim recreated (other UID): remove the PV", pv: opted(), claims: []*corev1.PersistentVolumeClaim{pvc("data-0", "c2", "")}, want: DeletePV},
		{name: "claim gone: remove the PV", pv: opted(), want: DeletePV},
		{name: "claim gone, Retain: report, keep", pv: func() *corev1.PersistentVolume {
			p := opted()
			p.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
			return p
		}(), want: Report},
		{name: "PV being deleted, provisioner finalizer left", pv: func() *corev1.PersistentVolume {
			p := opted()
			p.DeletionTimestamp = &metav1.Time{Time: now}
			return p
		}(), want: RemoveFinalizer},
		{name: "PV being deleted, only pv-protection left", pv: func() *corev1.PersistentVolume {
			p := opted()
			p.DeletionTimestamp = &metav1.Time{Time: now}
			p.Finalizers = []string{"kubernetes.io/pv-protection"}
			return p
		}(), want: Wait},
		{name: "another driver's PV", pv: func() *corev1.PersistentVolume {
			p := opted()
			p.Spec.CSI.Driver = "other.dev"
			return p
		}(), want: Wait},
		{name: "affinity with a second term not pinning the node", pv: func() *corev1.PersistentVolume {
			p := opted()
			p.Spec.NodeAffinity = affinityOr(p.Spec.NodeAffinity, zoneTerm("a"))
			return p
		}(), claims: []*corev1.PersistentVolumeClaim{claim()}, want: Wait},
		{name: "PV on another node", pv: pv("pv-a", "n2", "data-0", "c1", recreate), claims: []*corev1.PersistentVolumeClaim{claim()}, want: Wait},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at := now
			if !tc.now.IsZero() {
				at = tc.now
			}
			v := View{Now: at, Grace: grace, NodeExists: tc.nodeExists, PVs: []*corev1.PersistentVolume{tc.pv},
				Claim: func(ns, name string) *corev1.PersistentVolumeClaim {
					for _, c := range tc.claims {
						if c.Namespace == ns && c.Name == name {
							return c
						}
					}
					return nil
				},
				Pods: func(string) []*corev1.Pod { return tc.pods },
				Class: func(name string) *storagev1.StorageClass {
					for _, c := range tc.classes {
						if c.Name == name {
							return c
						}
					}
					return nil
				},
			}
			got := Decide(Loss{Node: "n1", Since: t0}, v)
			if len(got) != 1 || got[0].Kind != tc.want {
				t.Fatalf("got %+v, want %s", got, tc.want)
			}
			if got[0].Kind == DeleteClaim && got[0].Claim == nil {
				t.Fatal("DeleteClaim without a claim")
			}
		})
	}
}

func TestNodeOf(t *testing.T) {
	p := pv("pv-a", "n1", "", "", nil)
	if got := NodeOf(p); got != "n1" {
		t.Errorf("NodeOf = %q", got)
	}
	for name, aff := range map[string]*corev1.VolumeNodeAffinity{
		"two nodes":   affinity("n1", "n2"),
		"no affinity": nil,
		"other key": {Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{"n1"}}}}}}},
		"NotIn": {Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: wellknown.TopologyKey, Operator: corev1.NodeSelectorOpNotIn, Values: []string{"n1"}}}}}}},
		"two terms, two nodes": {Required: &corev1.NodeSelector{NodeSelectorTerms: append(affinity("n1").Required.NodeSelectorTerms, affinity("n2").Required.NodeSelectorTerms...)}},
		// Terms are ORed: the second lets the volume be used on any node
		// of the zone, so it is not n1's alone.
		"a second term not pinning the node": affinityOr(affinity("n1"), zoneTerm("a")),
		"a first term not pinning the node":  affinityOr(nil, zoneTerm("a"), affinity("n1").Required.NodeSelectorTerms[0]),
	} {
		q := p.DeepCopy()
		q.Spec.NodeAffinity = aff
		if got := NodeOf(q); got != "" {
			t.Errorf("%s: NodeOf = %q, want none", name, got)
		}
	}
}

// zoneTerm is a node selector term of a zone, not of a node.
func zoneTerm(zone string) corev1.NodeSelectorTerm {
	return corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{
		{Key: "topology.kubernetes.io/zone", Operator: corev1.NodeSelectorOpIn, Values: []string{zone}}}}
}

// affinityOr is aff (nil: none) with more terms.
func affinityOr(aff *corev1.VolumeNodeAffinity, terms ...corev1.NodeSelectorTerm) *corev1.VolumeNodeAffinity {
	if aff == nil {
		aff = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{}}
	}
	aff.Required.NodeSelectorTerms = append(aff.Required.NodeSelectorTerms, terms...)
	return aff
}

func TestUsesEphemeralClaim(t *testing.T) {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0"}, Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "scratch",
		VolumeSource: corev1.VolumeSource{Ephemeral: &corev1.EphemeralVolumeSource{}}}}}}
	if !UsesClaim(p, "web-0-scratch") || UsesClaim(p, "web-0") {
		t.Fatal("generic ephemeral claim not recognised")
	}
}
