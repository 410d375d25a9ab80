// Package mover decides the steps of moving a volume, with its data, from
// one node to another (docs/moving.md): a snapshot copied ahead while the
// pod runs, the source fenced and the rest sent as a delta once it stops,
// the claim pointed at the target's copy, the source's copy dropped.
//
// Decide is a pure function of what the controller sees: the move's record
// (annotations on the source PV, written with resourceVersion
// preconditions), the claim, its pods, the snapshot, and what the two nodes
// answer about their orders. Every action it returns is one API write or
// one idempotent order, so a controller killed anywhere decides the same
// step again, or the next one, from what it finds.
package mover

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flashpv/flashpv/pkg/nodeloss"
)

// Mode is how the claim is pointed at the target's copy.
type Mode string

const (
	// ModeAffinity: the PV's node affinity is rewritten
	// (MutablePVNodeAffinity).
	ModeAffinity Mode = "affinity"
	// ModeSwap: a new PV pre-bound to the claim, the claim deleted and
	// recreated by its StatefulSet.
	ModeSwap Mode = "swap"
)

// Record is a move as recorded on its source PV.
type Record struct {
	ID, Source, Target string
	State              State
	ClaimUID           types.UID
	Mode               Mode
	Reclaim            corev1.PersistentVolumeReclaimPolicy // the PV's, before the move
	// Late: the snapshot is taken once the pod has stopped, behind the
	// fence (the volume cannot be snapshotted while in use).
	Late bool
	// Why the move is being rolled back.
	Why string
}

// RecordOf reads the record on pv.
func RecordOf(pv *corev1.PersistentVolume) (Record, bool) {
	a := pv.Annotations
	if a[AnnID] == "" {
		return Record{}, false
	}
	return Record{
		ID: a[AnnID], Source: a[AnnSource], Target: a[AnnTarget], State: State(a[AnnState]),
		ClaimUID: types.UID(a[AnnClaimUID]), Mode: Mode(a[AnnMode]),
		Reclaim: corev1.PersistentVolumeReclaimPolicy(a[AnnReclaim]),
		Late:    a[AnnLate] == "true", Why: a[AnnWhy],
	}, true
}

// Annotations are the record's annotations; "" for one the record does
// not carry.
func (r Record) Annotations() map[string]string {
	late := ""
	if r.Late {
		late = "true"
	}
	return map[string]string{
		AnnID: r.ID, AnnSource: r.Source, AnnTarget: r.Target, AnnState: string(r.State),
		AnnClaimUID: string(r.ClaimUID), AnnMode: string(r.Mode), AnnReclaim: string(r.Reclaim),
		AnnLate: late, AnnWhy: r.Why,
	}
}

// Snapshot is the state of a move's VolumeSnapshot.
type Snapshot struct {
	Exists, Ready bool
	Error         string
}

// View is what the controller knows when it decides about one PV.
type View struct {
	// PV is a flashpv.dev PV: one with a record, or one whose claim asks
	// for a move.
	PV *corev1.PersistentVolume
	// Claim returns the claim of that namespace and name, or nil.
	Claim func(namespace, name string) *corev1.PersistentVolumeClaim
	// Pods returns the pods of a namespace.
	Pods func(namespace string) []*corev1.Pod
	// NewPV is, in ModeSwap, the PV made for the target's copy
	// (NewPVName), or nil.
	NewPV *corev1.PersistentVolume
	// Snapshot is the move's snapshot (SnapshotName).
	Snapshot Snapshot
	// Orders are the nodes' last answers, by order; Unknown where not
	// asked since the controller started.
	Orders map[Order]Progress
	// OrderError is what a node said about a Failed order.
	OrderError string
	// Drain: the PV's node is cordoned and its class says drainPolicy:
	// Move; a move to any fitting node is then asked for as long as it
	// lasts.
	Drain bool
	// MutableAffinity: the API server lets a PV's node affinity change.
	MutableAffinity bool
	// Target is the node a new move would go to, or "" with TargetReason
	// saying why none fits.
	Target, TargetReason string
	// NewID returns a fresh move ID.
	NewID func() string
}

// Kind is what to do.
type Kind string

const (
	// Wait: nothing now; Reason says what is awaited.
	Wait Kind = "Wait"
	// Refuse: the move cannot start; Reason says why (an Event).
	Refuse Kind = "Refuse"
	// Write: write Record on the PV (and its state on the claim).
	Write Kind = "Write"
	// TakeSnapshot, DeleteSnapshot: the move's VolumeSnapshot.
	TakeSnapshot   Kind = "TakeSnapshot"
	DeleteSnapshot Kind = "DeleteSnapshot"
	// Send sends Order to Node and records its answer.
	Send Kind = "Send"
	// SetAffinity points the PV at the target node (ModeAffinity).
	SetAffinity Kind = "SetAffinity"
	// CreatePV makes NewPV: the volume handle on the target node,
	// pre-bound to the claim's name, Retain.
	CreatePV Kind = "CreatePV"
	// SetReclaim sets Target's reclaim policy to Policy.
	SetReclaim Kind = "SetReclaim"
	// DeleteClaim deletes Claim, preconditioned on its UID.
	DeleteClaim Kind = "DeleteClaim"
	// DeletePod deletes Pod, preconditioned on its UID.
	DeletePod Kind = "DeletePod"
	// Finish removes the record (and the request from the claim), the
	// claim's state set to Reason's outcome.
	Finish Kind = "Finish"
)

// Action is the decision for one PV.
type Action struct {
	Kind   Kind
	Record Record // Write: the record to write; else the current one
	Order  Order
	Node   string
	Claim  *corev1.PersistentVolumeClaim
	Pod    *corev1.Pod
	PV     *corev1.PersistentVolume // SetReclaim: the PV to change
	Policy corev1.PersistentVolumeReclaimPolicy
	Reason string
}

// SnapshotName is the VolumeSnapshot of a move, in the claim's namespace.
func SnapshotName(r Record) string { return "flashpv-move-" + r.ID }

// NewPVName is the PV made for the target's copy in ModeSwap.
func NewPVName(pv *corev1.PersistentVolume, r Record) string {
	return pv.Name + "-" + r.ID
}

// Decide returns the next step for v.PV.
func Decide(v View) Action {
	rec, ok := RecordOf(v.PV)
	if !ok {
		return start(v)
	}
	d := &decision{v: v, a: Action{Record: rec}, claim: v.claim()}
	c := d.claim
	if c != nil && c.UID == rec.ClaimUID && c.Annotations[AnnRequest] == "" && !v.Drain && canRollBack(rec.State) {
		return d.to(RollingBack, "the claim no longer asks for the move, and its node is not drained")
	}
	if step, ok := steps[rec.State]; ok {
		return step(d)
	}
	return d.wait("unknown move state %q", rec.State)
}

// steps decide, for each state of a move, its next step.
var steps = map[State]func(d *decision) Action{
	Planned: (*decision).planned, PreCopying: (*decision).preCopying, WaitingForPod: (*decision).waitingForPod,
	CatchingUp: (*decision).catchingUp, Rebinding: (*decision).rebinding, Cleaning: (*decision).cleaning,
	Done: (*decision).done, RollingBack: (*decision).rollingBack,
}

// decision is one Decide of a move under way.
type decision struct {
	v     View
	a     Action // the record as read, the action being made
	claim *corev1.PersistentVolumeClaim
}

func (d *decision) wait(format string, args ...any) Action {
	d.a.Kind, d.a.Reason = Wait, fmt.Sprintf(format, args...)
	return d.a
}

func (d *decision) to(s State, format string, args ...any) Action {
	d.a.Kind, d.a.Reason = Write, fmt.Sprintf(format, args...)
	d.a.Record.State = s
	if s == RollingBack {
		d.a.Record.Why = d.a.Reason
	}
	return d.a
}

func (d *decision) send(o Order, node string) Action {
	d.a.Kind, d.a.Order, d.a.Node = Send, o, node
	return d.a
}

func (d *decision) do(k Kind) Action {
	d.a.Kind = k
	return d.a
}

func (d *decision) planned() Action {
	if d.a.Record.Late {
		return d.plannedLate()
	}
	switch s := d.v.Snapshot; {
	case s.Error != "" && strings.Contains(s.Error, SnapshotNeedsStop):
		d.a.Record.Late = true
		return d.to(Planned, "the volume %s: it is fenced first, and snapshotted once its pod has stopped", SnapshotNeedsStop)
	case s.Error != "":
		return d.to(RollingBack, "the snapshot failed: %s", s.Error)
	}
	return d.snapshotReady()
}

// plannedLate: a volume that cannot be snapshotted while in use (a
// directory of a quota pool, a published Block volume of a pool that
// cannot share blocks) is fenced, and snapshotted once no pod uses it. The
// pre-copy then holds all its data, and the catch-up sends what differs
// (nothing, unless a pod wrote in between).
func (d *decision) plannedLate() Action {
	if a, up := d.fenced(); !up {
		return a
	}
	switch s := d.v.Snapshot; {
	case s.Error != "" && strings.Contains(s.Error, SnapshotNeedsStop):
		// Taken before the kubelet let go of the volume: again.
		return d.do(DeleteSnapshot)
	case s.Error != "":
		return d.to(RollingBack, "the snapshot failed: %s", s.Error)
	}
	if pod, _ := d.v.pods(d.claim); pod != nil {
		return d.wait("pod %s/%s runs with the claim; the volume %s", pod.Namespace, pod.Name, SnapshotNeedsStop)
	}
	return d.snapshotReady()
}

// snapshotReady takes the move's snapshot and waits for it, then starts
// the pre-copy.
func (d *decision) snapshotReady() Action {
	switch s := d.v.Snapshot; {
	case !s.Exists:
		d.a.Claim = d.claim
		return d.do(TakeSnapshot)
	case !s.Ready:
		return d.wait("the snapshot is not ready yet")
	}
	return d.to(PreCopying, "the snapshot is ready")
}

// fenced reports whether the source node has fenced the volume, and
// otherwise the step toward it (or the rollback when it could not).
func (d *decision) fenced() (Action, bool) {
	rec := d.a.Record
	switch d.v.Orders[OrderFence] {
	case Finished:
		return Action{}, true
	case Failed:
		return d.to(RollingBack, "node %s could not fence the volume: %s", rec.Source, d.v.OrderError), false
	}
	return d.send(OrderFence, rec.Source), false
}

func (d *decision) preCopying() Action {
	rec := d.a.Record
	switch d.v.Orders[OrderImport] {
	case Finished:
		return d.to(WaitingForPod, "node %s holds the snapshot", rec.Target)
	case Failed:
		return d.to(RollingBack, "node %s could not import the snapshot: %s", rec.Target, d.v.OrderError)
	}
	return d.send(OrderImport, rec.Target)
}

// waitingForPod fences first: a StatefulSet makes a stopped pod again at
// once, and on the source's node (unless it is cordoned) it would start
// with the volume again. The fence holds it there until the move is over;
// a pod that runs already is not disturbed.
func (d *decision) waitingForPod() Action {
	if a, up := d.fenced(); !up {
		return a
	}
	if pod, _ := d.v.pods(d.claim); pod != nil {
		return d.wait("pod %s/%s runs with the claim", pod.Namespace, pod.Name)
	}
	return d.to(CatchingUp, "no pod runs with the claim")
}

// catchingUp: a pod that got past the fence makes the source refuse the
// catch-up; this sees it sooner.
func (d *decision) catchingUp() Action {
	rec := d.a.Record
	if pod, _ := d.v.pods(d.claim); pod != nil {
		return d.to(RollingBack, "pod %s/%s started with the claim during the move", pod.Namespace, pod.Name)
	}
	switch d.v.Orders[OrderCatchUp] {
	case Finished:
		return d.to(Rebinding, "node %s holds the volume's data, verified", rec.Target)
	case Failed:
		return d.to(RollingBack, "node %s could not catch up: %s", rec.Target, d.v.OrderError)
	}
	return d.send(OrderCatchUp, rec.Target)
}

func (d *decision) rebinding() Action {
	rec := d.a.Record
	if rec.Mode != ModeAffinity {
		return d.rebindSwap()
	}
	if nodeloss.NodeOf(d.v.PV) != rec.Target {
		d.a.Reason = "the PV follows its data"
		return d.do(SetAffinity)
	}
	// A pod the fence holds on the source's node stays there; made again,
	// it is placed by the PV's new affinity.
	if _, waiting := d.v.pods(d.claim); waiting != nil && waiting.Spec.NodeName == rec.Source {
		d.a.Pod, d.a.Reason = waiting, fmt.Sprintf("it waits on node %s for a volume that moved", rec.Source)
		return d.do(DeletePod)
	}
	return d.to(Cleaning, "the PV is on node %s", rec.Target)
}

func (d *decision) cleaning() Action {
	rec := d.a.Record
	switch {
	case d.v.Orders[OrderDrop] != Finished:
		return d.send(OrderDrop, rec.Source)
	case d.v.Snapshot.Exists:
		return d.do(DeleteSnapshot)
	case rec.Mode != ModeSwap:
		d.a.Reason = fmt.Sprintf("moved to node %s", rec.Target)
		return d.do(Finish)
	case d.v.NewPV != nil && d.v.NewPV.Spec.PersistentVolumeReclaimPolicy != rec.Reclaim:
		d.a.PV, d.a.Policy = d.v.NewPV, rec.Reclaim
		return d.do(SetReclaim)
	}
	// The old PV's claim is gone; with Delete, its provisioner removes it
	// (its volume is dropped already).
	return d.to(Done, "moved to node %s", rec.Target)
}

func (d *decision) done() Action {
	if d.v.PV.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		d.a.PV, d.a.Policy = d.v.PV, corev1.PersistentVolumeReclaimDelete
		return d.do(SetReclaim)
	}
	return d.wait("moved; the provisioner removes this PV")
}

func (d *decision) rollingBack() Action {
	rec := d.a.Record
	switch {
	case d.v.Orders[OrderDrop] != Finished:
		return d.send(OrderDrop, rec.Target)
	case d.v.Orders[OrderUnfence] != Finished:
		return d.send(OrderUnfence, rec.Source)
	case d.v.Snapshot.Exists:
		return d.do(DeleteSnapshot)
	}
	d.a.Reason = "rolled back"
	if rec.Why != "" {
		d.a.Reason += ": " + rec.Why
	}
	return d.do(Finish)
}

// start decides about a PV without a record: a move starts when its bound
// claim asks for one and a target fits.
func start(v View) Action {
	claim := v.claim()
	if claim == nil || claim.Spec.VolumeName != v.PV.Name {
		return Action{Kind: Wait, Reason: "no move asked"}
	}
	req := claim.Annotations[AnnRequest]
	if req == "" && v.Drain {
		if claim.Annotations[AnnState] == stateRolledBack {
			return Action{Kind: Wait, Reason: fmt.Sprintf("no move asked: the last one was rolled back; remove %s from the claim to try again", AnnState)}
		}
		req = RequestAny
	}
	if req == "" {
		return Action{Kind: Wait, Reason: "no move asked"}
	}
	source := nodeloss.NodeOf(v.PV)
	refuse := func(format string, args ...any) Action {
		return Action{Kind: Refuse, Claim: claim, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case source == "":
		return refuse("the PV is not a flashpv volume of one node")
	case claim.DeletionTimestamp != nil || v.PV.DeletionTimestamp != nil:
		return Action{Kind: Wait, Reason: "the claim or the PV is being deleted"}
	case req == source || v.Target == source:
		return refuse("the volume is on node %s already", source)
	case req != RequestAny && req != v.Target:
		return refuse("node %s does not fit: %s", req, v.TargetReason)
	case v.Target == "":
		return refuse("no node fits: %s", v.TargetReason)
	}
	mode := ModeSwap
	if v.MutableAffinity {
		mode = ModeAffinity
	}
	return Action{Kind: Write, Claim: claim, Reason: fmt.Sprintf("moving from node %s to node %s", source, v.Target), Record: Record{
		ID: v.NewID(), Source: source, Target: v.Target, State: Planned, ClaimUID: claim.UID,
		Mode: mode, Reclaim: v.PV.Spec.PersistentVolumeReclaimPolicy,
	}}
}

// rebindSwap points the claim at a new PV: the old one kept (Retain) while
// the claim is deleted and its StatefulSet makes it again, which binds to
// the new one, pre-bound to its name.
func (d *decision) rebindSwap() Action {
	v, a, claim := d.v, d.a, d.claim
	rec := a.Record
	switch {
	case v.PV.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimRetain:
		a.Kind, a.PV, a.Policy = SetReclaim, v.PV, corev1.PersistentVolumeReclaimRetain
		a.Reason = "no delete may reach the source while the claim is swapped"
		return a
	case v.NewPV == nil:
		a.Kind, a.Reason = CreatePV, fmt.Sprintf("a PV for the copy on node %s", rec.Target)
		return a
	case claim == nil:
		a.Kind, a.Reason = Wait, "waiting for the claim to be made again (by its StatefulSet)"
		return a
	case claim.UID == rec.ClaimUID:
		running, waiting := v.pods(claim)
		switch {
		case running != nil:
			a.Kind, a.Reason = Wait, fmt.Sprintf("pod %s/%s runs with the claim", running.Namespace, running.Name)
		case claim.DeletionTimestamp == nil:
			a.Kind, a.Claim, a.Reason = DeleteClaim, claim, "its StatefulSet makes it again, bound to the new PV"
		case waiting != nil:
			// Held by the fence on the source's node, it keeps the claim
			// from going; made again, it finds the claim gone.
			a.Kind, a.Pod, a.Reason = DeletePod, waiting, "it waits for a claim that is being replaced"
		default:
			a.Kind, a.Reason = Wait, "the old claim is being deleted"
		}
		return a
	case claim.Spec.VolumeName == v.NewPV.Name && v.NewPV.Spec.ClaimRef != nil && v.NewPV.Spec.ClaimRef.UID == claim.UID:
		a.Kind, a.Reason = Write, fmt.Sprintf("claim %s/%s is bound to %s", claim.Namespace, claim.Name, v.NewPV.Name)
		a.Record.State = Cleaning
		return a
	}
	a.Kind, a.Reason = Wait, "waiting for the new claim to bind to the new PV"
	return a
}

// claim is the claim the PV's claimRef names (any UID), or nil.
func (v View) claim() *corev1.PersistentVolumeClaim {
	ref := v.PV.Spec.ClaimRef
	if ref == nil || v.Claim == nil {
		return nil
	}
	return v.Claim(ref.Namespace, ref.Name)
}

// pods returns a pod that runs with the claim, and one that uses it but
// does not run (Pending: unscheduled, or held by the fence), if any.
func (v View) pods(claim *corev1.PersistentVolumeClaim) (running, waiting *corev1.Pod) {
	if claim == nil || v.Pods == nil {
		return nil, nil
	}
	for _, p := range v.Pods(claim.Namespace) {
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || !nodeloss.UsesClaim(p, claim.Name) {
			continue
		}
		if p.Status.Phase == corev1.PodRunning {
			running = p
		} else {
			waiting = p
		}
	}
	return running, waiting
}

// stateRolledBack is the claim's state after a move was undone.
const stateRolledBack = "RolledBack"

// canRollBack: the steps before the claim is pointed at the target.
func canRollBack(s State) bool {
	switch s {
	case Planned, PreCopying, WaitingForPod, CatchingUp:
		return true
	}
	return false
}
