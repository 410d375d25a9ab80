package mover

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

const (
	nodeS  = "node-s"
	nodeT  = "node-t"
	ns     = "db"
	claimN = "data-db-0"
	podN   = "db-0"
	handle = "default.0123456789abcdef0123456789abcdef"
)

// copyState is what a node holds of the volume.
type copyState int

const (
	noCopy copyState = iota
	incoming
	complete
)

// world is a small model of the cluster and the two nodes: what the API
// server, the StatefulSet controller, the scheduler, the kubelets and the
// two flashpv node plugins do with each action.
type world struct {
	t          *testing.T
	gate       bool
	cordoned   bool // the source node: a new pod cannot go there
	pvs        map[string]*corev1.PersistentVolume
	claim      *corev1.PersistentVolumeClaim
	pod        *corev1.Pod
	snapshot   Snapshot
	copies     map[string]copyState
	fenced     bool
	failImport int // imports that fail before one succeeds
	// noLiveSnap: the volume cannot be snapshotted while staged on the
	// source, which it stays for linger settles after its pod stops.
	noLiveSnap     bool
	linger, staged int
	snapshotsTaken int
	ended          string // the reason of the Finish that ended the move
	drain          bool   // the source node is cordoned and the class says drainPolicy: Move
	uids           int
	orders         map[Order]Progress // the controller's memory of answers
	orderErr       string
	history        []string
}

func newWorld(t *testing.T, gate bool) *world {
	w := &world{t: t, gate: gate, pvs: map[string]*corev1.PersistentVolume{}, copies: map[string]copyState{nodeS: complete}, orders: map[Order]Progress{}}
	w.claim = &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: claimN, UID: w.uid(),
		Annotations: map[string]string{AnnRequest: nodeT}}}
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-1", Annotations: map[string]string{}},
		Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: wellknown.DriverName, VolumeHandle: handle}},
			NodeAffinity:                  affinity(nodeS),
			ClaimRef:                      &corev1.ObjectReference{Namespace: ns, Name: claimN, UID: w.claim.UID},
		}}
	w.pvs[pv.Name] = pv
	w.claim.Spec.VolumeName = pv.Name
	w.makePod()
	return w
}

func affinity(node string) *corev1.VolumeNodeAffinity {
	return &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
		MatchExpressions: []corev1.NodeSelectorRequirement{{Key: wellknown.TopologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
	}}}}
}

func (w *world) uid() types.UID { w.uids++; return types.UID(fmt.Sprintf("uid-%d", w.uids)) }

// source is the PV the move is decided for: the first one made.
func (w *world) source() *corev1.PersistentVolume { return w.pvs["pvc-1"] }

// boundPV is the PV the claim is bound to, if any.
func (w *world) boundPV() *corev1.PersistentVolume {
	if w.claim == nil || w.claim.Spec.VolumeName == "" {
		return nil
	}
	return w.pvs[w.claim.Spec.VolumeName]
}

// makePod is the StatefulSet: a pod for the claim (and the claim first,
// which binds to a PV pre-bound to its name), placed by the scheduler on
// the node of the claim's PV, started by that node's kubelet unless the
// volume is fenced there.
func (w *world) makePod() {
	if w.claim == nil {
		w.claim = &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: claimN, UID: w.uid(), Annotations: map[string]string{}}}
		for _, pv := range w.pvs {
			if r := pv.Spec.ClaimRef; r != nil && r.Name == claimN && r.UID == "" {
				r.UID = w.claim.UID
				w.claim.Spec.VolumeName = pv.Name
			}
		}
	}
	w.pod = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: podN, UID: w.uid()},
		Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claimN}}}}}}
	w.pod.Status.Phase = corev1.PodPending
	w.schedule()
}

// schedule places a pending pod and starts it where it can.
func (w *world) schedule() {
	p := w.pod
	if p == nil || p.Status.Phase == corev1.PodRunning || w.claim == nil || w.claim.DeletionTimestamp != nil {
		return
	}
	pv := w.boundPV()
	if pv == nil {
		return
	}
	node := nodeloss.NodeOf(pv)
	if p.Spec.NodeName == "" {
		if node == nodeS && w.cordoned {
			return
		}
		p.Spec.NodeName = node
	}
	if p.Spec.NodeName == nodeS && w.fenced {
		return // NodeStageVolume refused
	}
	if w.copies[p.Spec.NodeName] != complete {
		w.t.Fatalf("a pod starts on node %s, which does not hold the volume's data (history %v)", p.Spec.NodeName, w.last())
	}
	p.Status.Phase = corev1.PodRunning
}

// evict deletes the pod, as a drain does; the StatefulSet makes it again.
func (w *world) evict() {
	w.pod = nil
	w.makePod()
}

func (w *world) view() View {
	v := View{
		PV: w.source(),
		Claim: func(namespace, name string) *corev1.PersistentVolumeClaim {
			if w.claim != nil && namespace == ns && name == claimN {
				return w.claim
			}
			return nil
		},
		Pods: func(string) []*corev1.Pod {
			if w.pod == nil {
				return nil
			}
			return []*corev1.Pod{w.pod}
		},
		Snapshot:        w.snapshot,
		Orders:          w.orders,
		OrderError:      w.orderErr,
		MutableAffinity: w.gate,
		Drain:           w.drain && nodeloss.NodeOf(w.source()) == nodeS,
		Target:          nodeT,
		NewID:           func() string { return "m1" },
	}
	if rec, ok := RecordOf(v.PV); ok {
		v.NewPV = w.pvs[NewPVName(v.PV, rec)]
	}
	return v
}

// apply carries an action out as the API server and the nodes would.
func (w *world) apply(a Action) {
	w.history = append(w.history, string(a.Kind)+":"+string(a.Order)+":"+string(a.Record.State))
	src := w.source()
	if src == nil {
		return // gone with its claim: the move was over
	}
	switch a.Kind {
	case Write:
		for k, val := range a.Record.Annotations() {
			src.Annotations[k] = val
		}
		if w.claim != nil {
			w.claim.Annotations[AnnState] = string(a.Record.State)
		}
	case TakeSnapshot:
		w.snapshot = Snapshot{Exists: true}
		w.snapshotsTaken++
	case DeleteSnapshot:
		w.snapshot = Snapshot{}
	case Send:
		w.orders[a.Order] = w.send(a)
	case SetAffinity:
		if !w.gate {
			w.t.Fatal("node affinity changed without MutablePVNodeAffinity")
		}
		src.Spec.NodeAffinity = affinity(a.Record.Target)
	case CreatePV:
		pv := src.DeepCopy()
		pv.Name = NewPVName(src, a.Record)
		pv.Annotations = map[string]string{}
		pv.Spec.NodeAffinity = affinity(a.Record.Target)
		pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
		pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: ns, Name: claimN}
		w.pvs[pv.Name] = pv
	case SetReclaim:
		if pv := w.pvs[a.PV.Name]; pv != nil {
			pv.Spec.PersistentVolumeReclaimPolicy = a.Policy
		}
	case DeleteClaim:
		if w.claim == nil || w.claim.UID != a.Claim.UID {
			return // the UID precondition
		}
		w.claim.DeletionTimestamp = &metav1.Time{}
	case DeletePod:
		if w.pod != nil && w.pod.UID == a.Pod.UID {
			w.pod = nil
		}
	case Finish:
		w.ended = a.Reason
		for k := range a.Record.Annotations() {
			delete(src.Annotations, k)
		}
		if w.claim != nil {
			delete(w.claim.Annotations, AnnRequest)
			if a.Record.State == RollingBack {
				w.claim.Annotations[AnnState] = stateRolledBack
			}
		}
	case Wait, Refuse:
	default:
		w.t.Fatalf("unknown action %+v", a)
	}
	w.settle()
}

// send is a node carrying out an order (idempotent).
func (w *world) send(a Action) Progress {
	switch a.Order {
	case OrderImport:
		if w.failImport > 0 {
			w.failImport--
			w.orderErr = "no space"
			return Failed
		}
		if !w.snapshot.Ready {
			w.t.Fatal("import before the snapshot is ready")
		}
		if w.copies[a.Node] == noCopy {
			w.copies[a.Node] = incoming
		}
	case OrderFence:
		w.fenced = true
	case OrderUnfence:
		w.fenced = false
	case OrderCatchUp:
		if !w.fenced || (w.pod != nil && w.pod.Status.Phase == corev1.PodRunning && w.pod.Spec.NodeName == nodeS) {
			w.orderErr = "the volume is in use on the source"
			return Failed
		}
		if w.copies[a.Node] == noCopy || w.copies[nodeS] != complete {
			w.t.Fatalf("catch-up with copies %v (history %v)", w.copies, w.last())
		}
		w.copies[a.Node] = complete
	case OrderDrop:
		if a.Node == nodeS && (w.copies[nodeT] != complete || nodeloss.NodeOf(w.boundPV()) != nodeT) {
			w.t.Fatalf("the source's copy dropped before the claim is bound to a complete copy on the target (history %v)", w.last())
		}
		delete(w.copies, a.Node)
	}
	return Finished
}

// settle lets the cluster react: the snapshot becomes ready, the
// protection controller removes a claim no pod uses, the StatefulSet makes
// what is missing, the scheduler and kubelets start the pod.
func (w *world) settle() {
	if w.pod != nil && w.pod.Status.Phase == corev1.PodRunning && w.pod.Spec.NodeName == nodeS {
		w.staged = w.linger
	} else if w.staged > 0 {
		w.staged--
	}
	if w.snapshot.Exists && !w.snapshot.Ready && w.snapshot.Error == "" {
		if w.noLiveSnap && (w.staged > 0 || w.pod != nil && w.pod.Status.Phase == corev1.PodRunning && w.pod.Spec.NodeName == nodeS) {
			w.snapshot.Error = "volume " + handle + " " + SnapshotNeedsStop + ": it is in use"
		} else {
			w.snapshot.Ready = true
		}
	}
	if w.claim != nil && w.claim.DeletionTimestamp != nil && (w.pod == nil || w.pod.Spec.NodeName == "") {
		w.claim = nil
		if w.pod != nil {
			w.pod = nil
		}
	}
	// A released PV: with Delete, its node's provisioner deletes the
	// volume there, and the PV.
	for name, pv := range w.pvs {
		if r := pv.Spec.ClaimRef; r != nil && r.UID != "" && (w.claim == nil || w.claim.UID != r.UID) &&
			pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete {
			delete(w.copies, nodeloss.NodeOf(pv))
			delete(w.pvs, name)
		}
	}
	if w.pod == nil {
		w.makePod()
	}
	w.schedule()
	bound := 0
	for _, pv := range w.pvs {
		if r := pv.Spec.ClaimRef; w.claim != nil && r != nil && r.UID == w.claim.UID {
			bound++
		}
	}
	if bound > 1 {
		w.t.Fatalf("%d PVs bound to the claim (history %v)", bound, w.last())
	}
}

// run decides and applies until the move is over, with the controller
// killed at random: its memory of the orders' answers lost, an action
// lost before it reached the API, or carried out twice. evictAt is the
// step at which the pod is evicted (-1: never; the pod stops by itself
// at step 3).
func (w *world) run(rng *rand.Rand, evictAt int) {
	waits := 0
	for step := 0; step < 400; step++ {
		if step == evictAt || (evictAt < 0 && step == 3) {
			w.evict()
		}
		if w.source() == nil {
			return // moved, and the old PV is gone
		}
		a := Decide(w.view())
		// The drain (or the operator) evicts again a pod that came back.
		if a.Kind == Wait && strings.Contains(a.Reason, "runs with the claim") {
			if waits++; waits%5 == 0 {
				w.evict()
			}
		}
		if a.Kind == Wait && strings.HasPrefix(a.Reason, "no move asked") {
			return
		}
		if a.Kind == Wait && strings.HasPrefix(a.Reason, "moved; the provisioner") {
			return
		}
		switch rng.IntN(10) {
		case 0:
			w.orders = map[Order]Progress{} // restarted before acting
			continue
		case 1:
			w.apply(a)
			w.orders = map[Order]Progress{} // restarted after acting
		case 2:
			w.apply(a)
			w.apply(a)
		default:
			w.apply(a)
		}
	}
	w.t.Fatalf("no end after 400 steps (history %v)", w.last())
}

func TestMoveConverges(t *testing.T) {
	for _, gate := range []bool{true, false} {
		for _, cordoned := range []bool{true, false} {
			for seed := range uint64(40) {
				name := fmt.Sprintf("gate=%v/cordoned=%v/seed=%d", gate, cordoned, seed)
				t.Run(name, func(t *testing.T) {
					w := newWorld(t, gate)
					w.cordoned = cordoned
					w.run(rand.New(rand.NewPCG(seed, 7)), int(seed%8))
					pv := w.boundPV()
					switch {
					case pv == nil || nodeloss.NodeOf(pv) != nodeT:
						t.Fatalf("the claim is bound to %v, not to a PV on %s", pv, nodeT)
					case w.copies[nodeT] != complete || w.copies[nodeS] != noCopy:
						t.Fatalf("copies %v", w.copies)
					case w.pod == nil || w.pod.Spec.NodeName != nodeT || w.pod.Status.Phase != corev1.PodRunning:
						t.Fatalf("pod %v (history %v)", w.pod != nil && w.pod.Status.Phase == corev1.PodRunning, w.last())
					case w.snapshot.Exists:
						t.Fatal("the move's snapshot is left")
					case w.claim.Annotations[AnnRequest] != "":
						t.Fatal("the request is left on the claim")
					}
					if _, ok := RecordOf(pv); ok {
						t.Fatal("a record is left on the claim's PV")
					}
					if !gate && pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
						t.Errorf("the new PV's reclaim policy is %s", pv.Spec.PersistentVolumeReclaimPolicy)
					}
				})
			}
		}
	}
}

// A volume that cannot be snapshotted while in use (a quota pool's
// directory, a published Block volume without reflinks) is fenced first
// and snapshotted once its pod has stopped and the kubelet let go of it.
func TestMoveSnapshotAfterStop(t *testing.T) {
	retaken := 0
	for _, gate := range []bool{true, false} {
		for seed := range uint64(20) {
			t.Run(fmt.Sprintf("gate=%v/seed=%d", gate, seed), func(t *testing.T) {
				w := newWorld(t, gate)
				w.cordoned, w.noLiveSnap, w.linger = true, true, int(seed%3)
				w.run(rand.New(rand.NewPCG(seed, 13)), int(seed%6)+2)
				if pv := w.boundPV(); pv == nil || nodeloss.NodeOf(pv) != nodeT || w.copies[nodeT] != complete || w.copies[nodeS] != noCopy {
					t.Fatalf("not moved: copies %v (history %v)", w.copies, w.last())
				}
				if w.snapshot.Exists {
					t.Fatal("the move's snapshot is left")
				}
				if w.snapshotsTaken > 1 {
					retaken++
				}
				// Not taken again and again while the pod runs.
				if w.snapshotsTaken > 3+w.linger {
					t.Errorf("%d snapshots taken", w.snapshotsTaken)
				}
				if strings.Contains(w.ended, "rolled back") {
					t.Fatalf("ended: %s", w.ended)
				}
			})
		}
	}
	// Most runs meet the refusal (the others evict the pod before the
	// first snapshot): the test must exercise the late snapshot.
	if retaken < 20 {
		t.Fatalf("only %d of 40 moves had their snapshot refused and taken again", retaken)
	}
}

// A failed import rolls the move back: the target's copy dropped, the
// source unfenced and untouched, the snapshot deleted, the request gone.
func TestMoveRollsBack(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			w := newWorld(t, seed%2 == 0)
			w.failImport = 1000
			w.run(rand.New(rand.NewPCG(seed, 11)), -1)
			pv := w.boundPV()
			switch {
			case pv != w.source() || nodeloss.NodeOf(pv) != nodeS:
				t.Fatalf("the claim is bound to %v", pv)
			case w.copies[nodeS] != complete || w.copies[nodeT] != noCopy || w.fenced:
				t.Fatalf("copies %v, fenced %v", w.copies, w.fenced)
			case w.snapshot.Exists || w.claim.Annotations[AnnRequest] != "":
				t.Fatal("the snapshot or the request is left")
			case !strings.Contains(w.ended, "rolled back") || !strings.Contains(w.ended, "no space"):
				t.Fatalf("the move ended with %q, which does not say why it was rolled back", w.ended)
			}
			if _, ok := RecordOf(pv); ok {
				t.Fatal("a record is left")
			}
		})
	}
}

// Removing the request before the claim is pointed at the target rolls
// the move back.
func TestMoveCancelled(t *testing.T) {
	for _, at := range []State{Planned, PreCopying, WaitingForPod, CatchingUp} {
		t.Run(string(at), func(t *testing.T) {
			w := newWorld(t, true)
			w.cordoned = true
			rng := rand.New(rand.NewPCG(1, 2))
			for range 50 {
				if rec, ok := RecordOf(w.source()); ok && rec.State == at {
					break
				}
				if rec, ok := RecordOf(w.source()); ok && rec.State == WaitingForPod {
					w.evict()
				}
				w.apply(Decide(w.view()))
			}
			if rec, _ := RecordOf(w.source()); rec.State != at {
				t.Fatalf("never reached %s", at)
			}
			delete(w.claim.Annotations, AnnRequest)
			w.run(rng, 1000)
			if w.copies[nodeT] != noCopy || w.fenced || nodeloss.NodeOf(w.boundPV()) != nodeS {
				t.Fatalf("copies %v, fenced %v", w.copies, w.fenced)
			}
		})
	}
}

func TestMoveRefused(t *testing.T) {
	w := newWorld(t, true)
	v := w.view()
	v.Target, v.TargetReason = "", "no node has 1 GiB free"
	if a := Decide(v); a.Kind != Refuse || !strings.Contains(a.Reason, "1 GiB") {
		t.Errorf("no target: %+v", a)
	}
	w.claim.Annotations[AnnRequest] = nodeS
	if a := Decide(w.view()); a.Kind != Refuse || !strings.Contains(a.Reason, "already") {
		t.Errorf("to its own node: %+v", a)
	}
	w.claim.Annotations[AnnRequest] = "node-x"
	if a := Decide(w.view()); a.Kind != Refuse || !strings.HasPrefix(a.Reason, "node node-x does not fit") {
		t.Errorf("to a node that does not fit: %+v", a)
	}
	v = w.view()
	v.Target, v.TargetReason = "", "node-x: 5 bytes free, the volume needs 9"
	if a := Decide(v); a.Kind != Refuse || a.Reason != "node node-x does not fit: node-x: 5 bytes free, the volume needs 9" {
		t.Errorf("to a node that does not fit, none other asked: %+v", a)
	}
	w.source().Spec.NodeAffinity = nil
	w.claim.Annotations[AnnRequest] = RequestAny
	if a := Decide(w.view()); a.Kind != Refuse {
		t.Errorf("a PV without a node: %+v", a)
	}
}

// last is the end of the history, for failure messages.
func (w *world) last() []string { return w.history[max(0, len(w.history)-30):] }

// A drained node's volume moves without a request; the move stops (and is
// rolled back) when the node is uncordoned before the claim is pointed at
// the target; one rolled back is not started again by the drain.
func TestMoveOnDrain(t *testing.T) {
	for _, gate := range []bool{true, false} {
		w := newWorld(t, gate)
		delete(w.claim.Annotations, AnnRequest)
		w.cordoned, w.drain = true, true
		w.run(rand.New(rand.NewPCG(3, 4)), 12)
		if pv := w.boundPV(); pv == nil || nodeloss.NodeOf(pv) != nodeT || w.copies[nodeS] != noCopy {
			t.Fatalf("gate=%v: a drained volume did not move: copies %v", gate, w.copies)
		}
	}

	w := newWorld(t, true)
	delete(w.claim.Annotations, AnnRequest)
	w.cordoned, w.drain = true, true
	for range 10 {
		w.apply(Decide(w.view()))
	}
	if rec, _ := RecordOf(w.source()); rec.State != WaitingForPod {
		t.Fatalf("state %s, want the pod awaited", rec.State)
	}
	w.cordoned, w.drain = false, false // uncordoned
	w.run(rand.New(rand.NewPCG(5, 6)), 1000)
	if w.copies[nodeT] != noCopy || w.fenced || nodeloss.NodeOf(w.boundPV()) != nodeS {
		t.Fatalf("after the uncordon: copies %v, fenced %v", w.copies, w.fenced)
	}

	w = newWorld(t, true)
	delete(w.claim.Annotations, AnnRequest)
	w.cordoned, w.drain, w.failImport = true, true, 1000
	w.run(rand.New(rand.NewPCG(7, 8)), -1)
	if a := Decide(w.view()); a.Kind != Wait || !strings.Contains(a.Reason, "rolled back") {
		t.Fatalf("after a rolled back drain move: %+v", a)
	}
}
