package mover

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/wellknown"
)

// Event reasons on the claim.
const (
	ReasonMoveStep       = "MoveStep"
	ReasonMoveRefused    = "MoveRefused"
	ReasonMoveDone       = "MoveDone"
	ReasonMoveRolledBack = "MoveRolledBack"
	ReasonMoveStepFailed = "MoveStepFailed"
)

var (
	snapshotsGVR = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}
	contentsGVR  = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents"}
	classesGVR   = schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotclasses"}
)

// Reconciler carries out Decide's actions against the API server and the
// nodes. The node plugins' side of the orders is Orders; Capability signs
// what a target presents to the source.
type Reconciler struct {
	Client   kubernetes.Interface
	Dynamic  dynamic.Interface
	PVs      corelisters.PersistentVolumeLister
	Claims   corelisters.PersistentVolumeClaimLister
	Orders   Orders
	Recorder record.EventRecorder
	// Target picks the node a PV's move goes to (RequestAny or a node
	// name), or says why none fits.
	Target func(pv *corev1.PersistentVolume, claim *corev1.PersistentVolumeClaim, request string) (string, string)
	// Address is the transfer server of a node's flashpv.
	Address func(node string) (string, error)
	// Capability signs what the target of an import or a catch-up
	// presents to the source.
	Capability func(req OrderRequest) (string, error)
	// Drained reports whether a PV's node is cordoned and its class says
	// drainPolicy: Move (nil: never).
	Drained func(pv *corev1.PersistentVolume) bool
	// SnapshotClass is the VolumeSnapshotClass of pre-copies ("":
	// flashpv.dev's default class, or its only one).
	SnapshotClass string
	// MaxSteps bounds the steps one Sync takes for one PV.
	MaxSteps int
	// Metrics, if set, count moves and steps.
	Metrics *Metrics

	mu      sync.Mutex
	answers map[string]map[Order]Progress // by move ID
	errs    map[string]string
	refused map[types.UID]string // the last refusal told, by claim
	failed  map[string]string    // the last step failure told, by move
	mutable *bool
}

// Sync takes every move as far as it goes now: PVs with a record, and PVs
// whose claim asks for a move.
func (r *Reconciler) Sync(ctx context.Context) error {
	pvs, err := r.PVs.List(labels.Everything())
	if err != nil {
		return err
	}
	var errs []error
	states := map[State]int{}
	for _, pv := range pvs {
		if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != wellknown.DriverName {
			continue
		}
		if rec, ok := RecordOf(pv); ok {
			states[rec.State]++
		} else if !r.asked(pv) && !r.drained(pv) {
			continue
		}
		if err := r.syncPV(ctx, pv.Name); err != nil {
			errs = append(errs, fmt.Errorf("PV %s: %w", pv.Name, err))
		}
	}
	if m := r.Metrics; m != nil {
		m.inProgress.Reset()
		for s, n := range states {
			if s != Done {
				m.inProgress.WithLabelValues(string(s)).Set(float64(n))
			}
		}
	}
	return errors.Join(errs...)
}

// count records a step and what it means for the move counters.
func (r *Reconciler) count(a Action, err error) {
	m := r.Metrics
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.steps.WithLabelValues(string(a.Kind), result).Inc()
	if err != nil {
		return
	}
	switch {
	case a.Kind == Write && a.Record.State == Planned:
		m.started.Inc()
	case a.Kind == Finish && a.Record.State == RollingBack:
		m.finished.WithLabelValues("rolled-back").Inc()
	case a.Kind == Finish, a.Kind == Write && a.Record.State == Done:
		m.finished.WithLabelValues("moved").Inc()
	}
}

func (r *Reconciler) drained(pv *corev1.PersistentVolume) bool {
	return r.Drained != nil && r.Drained(pv)
}

// asked: the PV's claim carries a move request.
func (r *Reconciler) asked(pv *corev1.PersistentVolume) bool {
	ref := pv.Spec.ClaimRef
	if ref == nil {
		return false
	}
	c, err := r.Claims.PersistentVolumeClaims(ref.Namespace).Get(ref.Name)
	return err == nil && c.Annotations[AnnRequest] != ""
}

// syncPV decides and acts until the move waits. It reads from the API
// server, not the caches, so that each step sees the last one's writes.
func (r *Reconciler) syncPV(ctx context.Context, name string) error {
	steps := r.MaxSteps
	if steps <= 0 {
		steps = 32
	}
	for range steps {
		pv, err := r.Client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		v, err := r.view(ctx, pv)
		if err != nil {
			return err
		}
		a := Decide(v)
		if a.Kind == Wait {
			klog.V(4).InfoS("Move waits", "pv", name, "state", a.Record.State, "reason", a.Reason)
			return nil
		}
		klog.InfoS("Move step", "pv", name, "move", a.Record.ID, "state", a.Record.State, "action", a.Kind, "order", a.Order, "node", a.Node, "reason", a.Reason)
		err = r.act(ctx, pv, a)
		r.count(a, err)
		if err != nil {
			err = fmt.Errorf("%s %s: %w", a.Kind, a.Order, err)
			r.stepFailed(ctx, pv, a, err)
			return err
		}
		if a.Kind == Refuse || a.Kind == Finish {
			return nil
		}
	}
	return nil
}

// view gathers what Decide needs about pv.
func (r *Reconciler) view(ctx context.Context, pv *corev1.PersistentVolume) (View, error) {
	v := View{
		PV:    pv,
		Claim: r.claim(ctx),
		Pods:  r.pods(ctx),
		NewID: newID,
	}
	v.Drain = r.drained(pv)
	rec, ok := RecordOf(pv)
	if !ok {
		claim := v.claim()
		if claim == nil {
			return v, nil
		}
		req := claim.Annotations[AnnRequest]
		if req == "" {
			req = RequestAny // a drain
		}
		v.Target, v.TargetReason = r.Target(pv, claim, req)
		if v.Target != "" {
			m, err := r.mutableAffinity(ctx, pv, v.Target)
			if err != nil {
				return v, err
			}
			v.MutableAffinity = m
		}
		return v, nil
	}
	if rec.Mode == ModeSwap {
		np, err := r.Client.CoreV1().PersistentVolumes().Get(ctx, NewPVName(pv, rec), metav1.GetOptions{})
		switch {
		case err == nil:
			v.NewPV = np
		case !apierrors.IsNotFound(err):
			return v, err
		}
	}
	snap, err := r.snapshot(ctx, pv, rec)
	if err != nil {
		return v, err
	}
	v.Snapshot = snap
	r.mu.Lock()
	v.Orders = map[Order]Progress{}
	for o, p := range r.answers[rec.ID] {
		v.Orders[o] = p
	}
	v.OrderError = r.errs[rec.ID]
	r.mu.Unlock()
	return v, nil
}

// pods lists a namespace's pods from the API server: a step must see the
// pod the step before deleted as gone, which a cache may not yet.
func (r *Reconciler) pods(ctx context.Context) func(ns string) []*corev1.Pod {
	return func(ns string) []*corev1.Pod {
		list, err := r.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			klog.ErrorS(err, "Listing pods for a move", "namespace", ns)
			return nil
		}
		pods := make([]*corev1.Pod, len(list.Items))
		for i := range list.Items {
			pods[i] = &list.Items[i]
		}
		return pods
	}
}

func (r *Reconciler) claim(ctx context.Context) func(ns, name string) *corev1.PersistentVolumeClaim {
	return func(ns, name string) *corev1.PersistentVolumeClaim {
		c, err := r.Client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return c
	}
}

// snapshot reads the move's VolumeSnapshot.
func (r *Reconciler) snapshot(ctx context.Context, pv *corev1.PersistentVolume, rec Record) (Snapshot, error) {
	ns := claimNamespace(pv)
	vs, err := r.Dynamic.Resource(snapshotsGVR).Namespace(ns).Get(ctx, SnapshotName(rec), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Snapshot{}, nil
	}
	if err != nil {
		return Snapshot{}, err
	}
	ready, _, _ := unstructured.NestedBool(vs.Object, "status", "readyToUse")
	msg, _, _ := unstructured.NestedString(vs.Object, "status", "error", "message")
	return Snapshot{Exists: true, Ready: ready, Error: msg}, nil
}

// snapshotHandle is the flashpv ID of the move's snapshot.
func (r *Reconciler) snapshotHandle(ctx context.Context, pv *corev1.PersistentVolume, rec Record) (string, error) {
	vs, err := r.Dynamic.Resource(snapshotsGVR).Namespace(claimNamespace(pv)).Get(ctx, SnapshotName(rec), metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	name, _, _ := unstructured.NestedString(vs.Object, "status", "boundVolumeSnapshotContentName")
	if name == "" {
		return "", fmt.Errorf("VolumeSnapshot %s has no content yet", SnapshotName(rec))
	}
	content, err := r.Dynamic.Resource(contentsGVR).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	h, _, _ := unstructured.NestedString(content.Object, "status", "snapshotHandle")
	if h == "" {
		return "", fmt.Errorf("VolumeSnapshotContent %s has no snapshot handle yet", name)
	}
	return h, nil
}

func claimNamespace(pv *corev1.PersistentVolume) string {
	if pv.Spec.ClaimRef == nil {
		return ""
	}
	return pv.Spec.ClaimRef.Namespace
}

// mutableAffinity finds out, once, whether the API server lets a PV's
// node affinity change (MutablePVNodeAffinity): a dry-run update.
func (r *Reconciler) mutableAffinity(ctx context.Context, pv *corev1.PersistentVolume, target string) (bool, error) {
	r.mu.Lock()
	known := r.mutable
	r.mu.Unlock()
	if known != nil {
		return *known, nil
	}
	try := pv.DeepCopy()
	try.Spec.NodeAffinity = nodeAffinity(target)
	_, err := r.Client.CoreV1().PersistentVolumes().Update(ctx, try, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
	var m bool
	switch {
	case err == nil:
		m = true
	case apierrors.IsInvalid(err) || apierrors.IsForbidden(err):
	default:
		return false, err
	}
	r.mu.Lock()
	r.mutable = &m
	r.mu.Unlock()
	klog.InfoS("Found out how claims are rebound on a move", "mutablePVNodeAffinity", m)
	return m, nil
}

// nodeAffinity pins a PV to node, as flashpv's provisioning does.
func nodeAffinity(node string) *corev1.VolumeNodeAffinity {
	return &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
		MatchExpressions: []corev1.NodeSelectorRequirement{{Key: wellknown.TopologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
	}}}}
}

func newID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// act carries out one action.
func (r *Reconciler) act(ctx context.Context, pv *corev1.PersistentVolume, a Action) error {
	pvs := r.Client.CoreV1().PersistentVolumes()
	switch a.Kind {
	case Refuse:
		r.refuse(a)
		return nil
	case Write:
		return r.write(ctx, pv, a)
	case TakeSnapshot:
		return r.takeSnapshot(ctx, pv, a.Record)
	case DeleteSnapshot:
		return ignoreNotFound(r.Dynamic.Resource(snapshotsGVR).Namespace(claimNamespace(pv)).Delete(ctx, SnapshotName(a.Record), metav1.DeleteOptions{}))
	case Send:
		return r.send(ctx, pv, a)
	case SetAffinity:
		next := pv.DeepCopy()
		next.Spec.NodeAffinity = nodeAffinity(a.Record.Target)
		_, err := pvs.Update(ctx, next, metav1.UpdateOptions{})
		return err
	case CreatePV:
		_, err := pvs.Create(ctx, newPV(pv, a.Record), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	case SetReclaim:
		next := a.PV.DeepCopy()
		next.Spec.PersistentVolumeReclaimPolicy = a.Policy
		_, err := pvs.Update(ctx, next, metav1.UpdateOptions{})
		return err
	case DeleteClaim:
		return ignoreNotFound(r.Client.CoreV1().PersistentVolumeClaims(a.Claim.Namespace).Delete(ctx, a.Claim.Name, uidPrecondition(a.Claim.UID)))
	case DeletePod:
		return ignoreNotFound(r.Client.CoreV1().Pods(a.Pod.Namespace).Delete(ctx, a.Pod.Name, uidPrecondition(a.Pod.UID)))
	case Finish:
		return r.finish(ctx, pv, a)
	}
	return fmt.Errorf("unknown action %q", a.Kind)
}

// refuse tells a claim why its move cannot start, once per reason.
func (r *Reconciler) refuse(a Action) {
	r.mu.Lock()
	if r.refused == nil {
		r.refused = map[types.UID]string{}
	}
	told := r.refused[a.Claim.UID] == a.Reason
	r.refused[a.Claim.UID] = a.Reason
	r.mu.Unlock()
	if !told {
		r.Recorder.Event(a.Claim, corev1.EventTypeWarning, ReasonMoveRefused, a.Reason)
	}
}

// stepFailed tells the claim that a step of its move failed and is being
// retried, once per move and message: a move that cannot go on (no
// snapshot class, a node that does not answer) must not look merely slow.
func (r *Reconciler) stepFailed(ctx context.Context, pv *corev1.PersistentVolume, a Action, err error) {
	if a.Record.ID == "" || pv.Spec.ClaimRef == nil {
		return
	}
	r.mu.Lock()
	if r.failed == nil {
		r.failed = map[string]string{}
	}
	told := r.failed[a.Record.ID] == err.Error()
	r.failed[a.Record.ID] = err.Error()
	r.mu.Unlock()
	if told {
		return
	}
	ref := pv.Spec.ClaimRef
	c, gerr := r.Client.CoreV1().PersistentVolumeClaims(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if gerr != nil {
		return
	}
	r.Recorder.Event(c, corev1.EventTypeWarning, ReasonMoveStepFailed, fmt.Sprintf("%s (retried): %v", a.Record.State, err))
}

// write records a step on the PV and shows it on the claim.
func (r *Reconciler) write(ctx context.Context, pv *corev1.PersistentVolume, a Action) error {
	ann := map[string]any{}
	for k, val := range a.Record.Annotations() {
		ann[k] = val
		if val == "" {
			ann[k] = nil // a merge patch's null removes it
		}
	}
	if err := r.patchMeta(ctx, pv, ann); err != nil {
		return err
	}
	r.claimState(ctx, pv, string(a.Record.State), ReasonMoveStep, a.Reason, corev1.EventTypeNormal)
	return nil
}

// finish removes the record and tells the claim how the move ended.
func (r *Reconciler) finish(ctx context.Context, pv *corev1.PersistentVolume, a Action) error {
	ann := map[string]any{}
	for k := range a.Record.Annotations() {
		ann[k] = nil
	}
	if err := r.patchMeta(ctx, pv, ann); err != nil {
		return err
	}
	outcome, reason, typ := string(Done), ReasonMoveDone, corev1.EventTypeNormal
	if a.Record.State == RollingBack {
		outcome, reason, typ = stateRolledBack, ReasonMoveRolledBack, corev1.EventTypeWarning
	}
	r.claimState(ctx, pv, outcome, reason, a.Reason, typ)
	r.mu.Lock()
	delete(r.answers, a.Record.ID)
	delete(r.errs, a.Record.ID)
	delete(r.failed, a.Record.ID)
	r.mu.Unlock()
	return nil
}

func uidPrecondition(uid types.UID) metav1.DeleteOptions {
	return metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}}
}

// ignoreNotFound: deleting what is gone already is done.
func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// patchMeta merges annotations into pv's, on the condition that pv has
// not changed since it was read (nil removes one).
func (r *Reconciler) patchMeta(ctx context.Context, pv *corev1.PersistentVolume, ann map[string]any) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": pv.ResourceVersion, "annotations": ann}})
	if err != nil {
		return err
	}
	_, err = r.Client.CoreV1().PersistentVolumes().Patch(ctx, pv.Name, types.MergePatchType, body, metav1.PatchOptions{})
	return err
}

// claimState shows the move's state on the claim the PV is bound to and
// tells it in an Event. The claim may be gone (ModeSwap); the record on
// the PV is what counts, so this is best effort.
func (r *Reconciler) claimState(ctx context.Context, pv *corev1.PersistentVolume, state, reason, msg, typ string) {
	ref := pv.Spec.ClaimRef
	if ref == nil {
		return
	}
	claims := r.Client.CoreV1().PersistentVolumeClaims(ref.Namespace)
	c, err := claims.Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return
	}
	ann := map[string]any{AnnState: state}
	if state == string(Done) || state == stateRolledBack {
		ann[AnnRequest] = nil
	}
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if _, err := claims.Patch(ctx, c.Name, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		klog.ErrorS(err, "Showing a move's state on its claim", "claim", klog.KObj(c))
	}
	r.Recorder.Event(c, typ, reason, msg)
}

// takeSnapshot makes the move's VolumeSnapshot of the claim.
func (r *Reconciler) takeSnapshot(ctx context.Context, pv *corev1.PersistentVolume, rec Record) error {
	ref := pv.Spec.ClaimRef
	spec := map[string]any{"source": map[string]any{"persistentVolumeClaimName": ref.Name}}
	class, err := r.snapshotClass(ctx)
	if err != nil {
		return err
	}
	spec["volumeSnapshotClassName"] = class
	vs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": snapshotsGVR.GroupVersion().String(),
		"kind":       "VolumeSnapshot",
		"metadata": map[string]any{
			"name": SnapshotName(rec), "namespace": ref.Namespace,
			"labels":      map[string]any{"app.kubernetes.io/managed-by": "flashpv-controller"},
			"annotations": map[string]any{AnnID: rec.ID},
		},
		"spec": spec,
	}}
	_, err = r.Dynamic.Resource(snapshotsGVR).Namespace(ref.Namespace).Create(ctx, vs, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// snapshotClass is the VolumeSnapshotClass of pre-copies: SnapshotClass,
// else flashpv.dev's class marked default, else its only class.
func (r *Reconciler) snapshotClass(ctx context.Context) (string, error) {
	if r.SnapshotClass != "" {
		return r.SnapshotClass, nil
	}
	list, err := r.Dynamic.Resource(classesGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("listing VolumeSnapshotClasses: %w", err)
	}
	var classes []snapshotClassInfo
	for _, c := range list.Items {
		if d, _, _ := unstructured.NestedString(c.Object, "driver"); d != wellknown.DriverName {
			continue
		}
		policy, _, _ := unstructured.NestedString(c.Object, "deletionPolicy")
		classes = append(classes, snapshotClassInfo{name: c.GetName(), policy: policy,
			isDefault: c.GetAnnotations()["snapshot.storage.kubernetes.io/is-default-class"] == "true"})
	}
	return pickSnapshotClass(classes)
}

type snapshotClassInfo struct {
	name, policy string
	isDefault    bool
}

// pickSnapshotClass picks the class of a move's snapshot: one whose
// deletionPolicy is Delete (the move deletes its snapshot at the end; with
// Retain its data would stay in the pool), the default one if it is such,
// else the first by name. Several classes without a default must not stall
// every move.
func pickSnapshotClass(classes []snapshotClassInfo) (string, error) {
	var names []string
	best := ""
	for _, c := range classes {
		names = append(names, c.name)
		switch {
		case c.policy != "Delete":
		case c.isDefault:
			return c.name, nil
		case best == "" || c.name < best:
			best = c.name
		}
	}
	switch {
	case best != "":
		return best, nil
	case len(classes) == 0:
		return "", fmt.Errorf("no VolumeSnapshotClass of %s: a move needs one for its pre-copy", wellknown.DriverName)
	}
	sort.Strings(names)
	return "", fmt.Errorf("VolumeSnapshotClasses %v of %s all retain their snapshots' data, which a move would leave behind: make one with deletionPolicy: Delete, or name one with --move-snapshot-class", names, wellknown.DriverName)
}

// send sends an order and keeps the node's answer for the next decision.
func (r *Reconciler) send(ctx context.Context, pv *corev1.PersistentVolume, a Action) error {
	rec := a.Record
	req := OrderRequest{MoveID: rec.ID, Order: a.Order, Volume: pv.Spec.CSI.VolumeHandle, Source: rec.Source, Target: rec.Target}
	if a.Order == OrderImport || a.Order == OrderCatchUp {
		h, err := r.snapshotHandle(ctx, pv, rec)
		if err != nil {
			return err
		}
		req.Snapshot = h
		if req.SourceAddress, err = r.Address(rec.Source); err != nil {
			return err
		}
		if req.Capability, err = r.Capability(req); err != nil {
			return err
		}
	}
	p, msg, err := r.Orders.Send(ctx, a.Node, req)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.answers == nil {
		r.answers, r.errs = map[string]map[Order]Progress{}, map[string]string{}
	}
	if r.answers[rec.ID] == nil {
		r.answers[rec.ID] = map[Order]Progress{}
	}
	r.answers[rec.ID][a.Order] = p
	if p == Failed {
		r.errs[rec.ID] = msg
	}
	return nil
}

// newPV is the PV of the target's copy (ModeSwap): the old one's volume on
// the target node, pre-bound to the claim's name (any UID: the claim its
// StatefulSet makes again), kept (Retain) until the move is done.
func newPV(old *corev1.PersistentVolume, rec Record) *corev1.PersistentVolume {
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        NewPVName(old, rec),
			Labels:      old.Labels,
			Annotations: map[string]string{AnnID + "-of": rec.ID},
		},
		Spec: *old.Spec.DeepCopy(),
	}
	if p := old.Annotations["pv.kubernetes.io/provisioned-by"]; p != "" {
		pv.Annotations["pv.kubernetes.io/provisioned-by"] = p
	}
	pv.Spec.NodeAffinity = nodeAffinity(rec.Target)
	pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRetain
	ref := old.Spec.ClaimRef
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: ref.Namespace, Name: ref.Name}
	return pv
}
