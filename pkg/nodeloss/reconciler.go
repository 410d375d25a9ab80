package nodeloss

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

// Event reasons.
const (
	ReasonNodeLost      = "NodeLost"
	ReasonClaimDeleted  = "NodeLossClaimDeleted"
	ReasonVolumeRemoved = "NodeLossVolumeRemoved"
	ReasonActionRefused = "NodeLossActionRefused"
	reportedEventsPerPV = 1
)

// Listers are the informer caches the reconciler reads.
type Listers struct {
	Nodes   corelisters.NodeLister
	PVs     corelisters.PersistentVolumeLister
	Claims  corelisters.PersistentVolumeClaimLister
	Pods    corelisters.PodLister
	Classes storagelisters.StorageClassLister
}

// Reconciler tracks nodes that are gone and, past the grace period, acts on
// their PVs. Losses live in memory: a controller that restarts (or a new
// leader) starts every grace period anew, which only ever waits longer.
type Reconciler struct {
	client   kubernetes.Interface
	list     Listers
	recorder record.EventRecorder
	metrics  *Metrics
	grace    time.Duration
	now      func() time.Time

	mu       sync.Mutex
	since    map[string]time.Time // node name -> first seen gone
	reported map[types.UID]int    // PV -> stuck reports made for it
}

// Config wires a Reconciler.
type Config struct {
	Client   kubernetes.Interface
	Listers  Listers
	Recorder record.EventRecorder
	Metrics  *Metrics // may be nil
	Grace    time.Duration
	Now      func() time.Time // nil: time.Now
}

// New returns a Reconciler.
func New(c Config) *Reconciler {
	now := c.Now
	if now == nil {
		now = time.Now
	}
	return &Reconciler{client: c.Client, list: c.Listers, recorder: c.Recorder, metrics: c.Metrics,
		grace: c.Grace, now: now, since: map[string]time.Time{}, reported: map[types.UID]int{}}
}

// NodeDeleted records that the Node name was deleted: its grace period
// starts (again) now.
func (r *Reconciler) NodeDeleted(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.since[name] = r.now()
	klog.InfoS("Node deleted: its flashpv volumes are acted on if it stays gone for the grace period", "node", name, "grace", r.grace)
}

// NodeAdded cancels any loss of a node of that name, whatever its UID: a
// machine that registers again gets a new UID and may well hold its data.
func (r *Reconciler) NodeAdded(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.since[name]; ok {
		klog.InfoS("Node is back: nothing of it is deleted", "node", name)
		delete(r.since, name)
	}
}

// Losses returns the nodes currently thought gone.
func (r *Reconciler) Losses() []Loss {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Loss
	for n, t := range r.since {
		out = append(out, Loss{Node: n, Since: t})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// Sync looks at every node named by a flashpv PV and acts on those gone
// past the grace period.
func (r *Reconciler) Sync(ctx context.Context) error {
	pvs, err := r.list.PVs.List(labels.Everything())
	if err != nil {
		return err
	}
	byNode := map[string][]*corev1.PersistentVolume{}
	exists := map[types.UID]bool{}
	for _, pv := range pvs {
		if n := NodeOf(pv); n != "" {
			byNode[n] = append(byNode[n], pv)
			exists[pv.UID] = true
		}
	}
	now := r.now()
	r.mu.Lock()
	for uid := range r.reported {
		if !exists[uid] {
			delete(r.reported, uid)
		}
	}
	for n := range byNode {
		_, err := r.list.Nodes.Get(n)
		switch {
		case err == nil:
			delete(r.since, n)
		case apierrors.IsNotFound(err):
			if _, ok := r.since[n]; !ok {
				// Gone before this controller saw it go: the grace period
				// starts now.
				r.since[n] = now
				klog.InfoS("Node named by flashpv PVs does not exist", "node", n, "pvs", len(byNode[n]), "grace", r.grace)
			}
		}
	}
	for n := range r.since {
		if len(byNode[n]) == 0 {
			delete(r.since, n) // nothing of flashpv there (any more)
		}
	}
	r.mu.Unlock()

	losses := r.Losses()
	if r.metrics != nil {
		r.metrics.lost.Set(float64(len(losses)))
		r.metrics.stuck.Reset()
		r.metrics.waiting.Reset()
	}
	var errs []error
	for _, loss := range losses {
		if err := r.syncNode(ctx, loss, byNode[loss.Node], now); err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", loss.Node, err))
		}
	}
	return errors.Join(errs...)
}

func (r *Reconciler) syncNode(ctx context.Context, loss Loss, pvs []*corev1.PersistentVolume, now time.Time) error {
	view, err := r.view(ctx, loss, pvs, now)
	if err != nil {
		return err
	}
	if view.NodeExists {
		// The loss ends; Decide waits on every PV of the node.
		r.NodeAdded(loss.Node)
	}
	var errs []error
	for _, a := range Decide(loss, view) {
		if err := r.execute(ctx, loss, a); err != nil {
			errs = append(errs, err)
			if errors.Is(err, errNodeBack) {
				break
			}
		}
	}
	return errors.Join(errs...)
}

var errNodeBack = errors.New("the node is back")

// view is what Decide sees of a lost node. Whether a Node of its name
// exists comes from the cache within the grace period, when nothing
// destructive can come out, and from the API server itself past it: the
// cache may lag.
func (r *Reconciler) view(ctx context.Context, loss Loss, pvs []*corev1.PersistentVolume, now time.Time) (View, error) {
	v := View{Now: now, Grace: r.grace, PVs: pvs, Claim: r.claim, Pods: r.pods, Class: r.class}
	if now.Before(loss.Since.Add(r.grace)) {
		_, err := r.list.Nodes.Get(loss.Node)
		v.NodeExists = !apierrors.IsNotFound(err)
		return v, nil
	}
	exists, err := r.nodeExists(ctx, loss.Node)
	if err != nil {
		return View{}, err
	}
	v.NodeExists = exists
	return v, nil
}

func (r *Reconciler) nodeExists(ctx context.Context, name string) (bool, error) {
	_, err := r.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("checking that node %s is gone: %w", name, err)
	}
	return true, nil
}

// guard re-checks, right before a deletion, that the node is still gone.
func (r *Reconciler) guard(ctx context.Context, node string) error {
	exists, err := r.nodeExists(ctx, node)
	if err != nil {
		return err
	}
	if exists {
		r.NodeAdded(node)
		return errNodeBack
	}
	return nil
}

func (r *Reconciler) claim(ns, name string) *corev1.PersistentVolumeClaim {
	c, err := r.list.Claims.PersistentVolumeClaims(ns).Get(name)
	if err != nil {
		return nil
	}
	return c
}

func (r *Reconciler) pods(ns string) []*corev1.Pod {
	pods, _ := r.list.Pods.Pods(ns).List(labels.Everything())
	return pods
}

func (r *Reconciler) class(name string) *storagev1.StorageClass {
	sc, err := r.list.Classes.Get(name)
	if err != nil {
		return nil
	}
	return sc
}

// claimRef is an object reference to the PV's claim, for Events once the
// claim itself is gone.
func claimRef(pv *corev1.PersistentVolume) *corev1.ObjectReference {
	ref := pv.Spec.ClaimRef
	if ref == nil {
		return nil
	}
	return &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: ref.Namespace, Name: ref.Name, UID: ref.UID}
}

func claimName(pv *corev1.PersistentVolume) string {
	if ref := pv.Spec.ClaimRef; ref != nil {
		return ref.Namespace + "/" + ref.Name
	}
	return ""
}

func (r *Reconciler) event(objs []runtime.Object, typ, reason, format string, args ...any) {
	if r.recorder == nil {
		return
	}
	for _, o := range objs {
		if o == nil || (isNilRef(o)) {
			continue
		}
		r.recorder.Eventf(o, typ, reason, format, args...)
	}
}

func isNilRef(o runtime.Object) bool {
	ref, ok := o.(*corev1.ObjectReference)
	return ok && ref == nil
}

func (r *Reconciler) count(action Kind, err error) {
	if r.metrics == nil {
		return
	}
	result := "ok"
	switch {
	case apierrors.IsConflict(err) || apierrors.IsNotFound(err) || errors.Is(err, errRefused) || errors.Is(err, errNodeBack):
		result = "refused"
	case err != nil:
		result = "error"
	}
	r.metrics.actions.WithLabelValues(string(action), result).Inc()
}

var errRefused = errors.New("refused by a re-check")

func (r *Reconciler) execute(ctx context.Context, loss Loss, a Action) error {
	pv := a.PV
	switch a.Kind {
	case Wait:
		klog.V(2).InfoS("Lost node's volume: waiting", "node", loss.Node, "pv", pv.Name, "claim", claimName(pv), "reason", a.Reason)
		if r.metrics != nil && !loss.Since.IsZero() {
			r.metrics.waiting.WithLabelValues(loss.Node).Inc()
		}
		return nil
	case Report:
		r.report(loss, a)
		return nil
	case DeleteClaim:
		err := r.deleteClaim(ctx, loss, a)
		r.count(a.Kind, err)
		return err
	case DeletePV:
		err := r.deletePV(ctx, loss, pv)
		r.count(a.Kind, err)
		if err != nil {
			return err
		}
		err = r.removeFinalizer(ctx, loss, pv)
		r.count(RemoveFinalizer, err)
		return err
	case RemoveFinalizer:
		err := r.removeFinalizer(ctx, loss, pv)
		r.count(a.Kind, err)
		return err
	}
	return fmt.Errorf("unknown action %q", a.Kind)
}

func (r *Reconciler) report(loss Loss, a Action) {
	pv := a.PV
	claim := claimName(pv)
	if r.metrics != nil {
		r.metrics.stuck.WithLabelValues(loss.Node, claim, pv.Name).Set(1)
	}
	r.mu.Lock()
	n := r.reported[pv.UID]
	r.reported[pv.UID] = n + 1
	r.mu.Unlock()
	if n >= reportedEventsPerPV {
		return
	}
	klog.InfoS("Lost node's claim is stuck: flashpv deletes nothing of it", "node", loss.Node, "pv", pv.Name, "claim", claim, "reason", a.Reason)
	msg := "node %s is gone (no Node object since %s); claim %s on PV %s stays stuck because %s. " +
		"To recreate it empty on a live node, delete the claim (and the PV); its data was on the lost node only"
	r.event([]runtime.Object{claimRef(pv), pv}, corev1.EventTypeWarning, ReasonNodeLost, msg,
		loss.Node, loss.Since.UTC().Format(time.RFC3339), claim, pv.Name, a.Reason)
}

func (r *Reconciler) deleteClaim(ctx context.Context, loss Loss, a Action) error {
	c, pv := a.Claim, a.PV
	if err := r.guard(ctx, loss.Node); err != nil {
		return err
	}
	// Read the claim and its namespace's pods from the API server, not
	// the caches, right before deleting.
	live, err := r.client.CoreV1().PersistentVolumeClaims(c.Namespace).Get(ctx, c.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if live.UID != c.UID || live.Spec.VolumeName != pv.Name {
		return fmt.Errorf("%w: claim %s/%s changed (UID %s, volume %q)", errRefused, c.Namespace, c.Name, live.UID, live.Spec.VolumeName)
	}
	pods, err := r.client.CoreV1().Pods(c.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var ptrs []*corev1.Pod
	for i := range pods.Items {
		ptrs = append(ptrs, &pods.Items[i])
	}
	if p := blockingPod(ptrs, c.Name); p != nil {
		return fmt.Errorf("%w: pod %s/%s on node %s uses claim %s", errRefused, p.Namespace, p.Name, p.Spec.NodeName, c.Name)
	}
	uid := c.UID
	err = r.client.CoreV1().PersistentVolumeClaims(c.Namespace).Delete(ctx, c.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil {
		r.event([]runtime.Object{c, pv}, corev1.EventTypeWarning, ReasonActionRefused, "deleting claim %s/%s of lost node %s: %v", c.Namespace, c.Name, loss.Node, err)
		return fmt.Errorf("deleting claim %s/%s: %w", c.Namespace, c.Name, err)
	}
	klog.InfoS("Deleted the claim of a lost node's volume", "node", loss.Node, "claim", klog.KObj(c), "uid", uid, "pv", pv.Name)
	r.event([]runtime.Object{c, pv}, corev1.EventTypeNormal, ReasonClaimDeleted,
		"node %s is gone for good (no Node object since %s, nodeLossPolicy Recreate): deleted claim %s/%s (UID %s) so that it is recreated on a live node; PV %s and its data on the lost node are not used again",
		loss.Node, loss.Since.UTC().Format(time.RFC3339), c.Namespace, c.Name, uid, pv.Name)
	return nil
}

func (r *Reconciler) deletePV(ctx context.Context, loss Loss, pv *corev1.PersistentVolume) error {
	if err := r.guard(ctx, loss.Node); err != nil {
		return err
	}
	uid := pv.UID
	err := r.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil {
		return fmt.Errorf("deleting PV %s: %w", pv.Name, err)
	}
	klog.InfoS("Deleted the PV of a lost node (its disk is not touched)", "node", loss.Node, "pv", pv.Name, "uid", uid, "claim", claimName(pv))
	r.event([]runtime.Object{pv, claimRef(pv)}, corev1.EventTypeNormal, ReasonVolumeRemoved,
		"node %s is gone for good: removed PV %s (volume %s) of claim %s; nothing on any disk was touched",
		loss.Node, pv.Name, volumeHandle(pv), claimName(pv))
	return nil
}

func (r *Reconciler) removeFinalizer(ctx context.Context, loss Loss, pv *corev1.PersistentVolume) error {
	if err := r.guard(ctx, loss.Node); err != nil {
		return err
	}
	live, err := r.client.CoreV1().PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if live.UID != pv.UID || live.DeletionTimestamp == nil {
		return fmt.Errorf("%w: PV %s changed", errRefused, pv.Name)
	}
	if !slices.Contains(live.Finalizers, ProvisionerFinalizer) {
		return nil
	}
	live = live.DeepCopy()
	live.Finalizers = slices.DeleteFunc(live.Finalizers, func(f string) bool { return f == ProvisionerFinalizer })
	// Update carries the resourceVersion: it fails on any change since.
	if _, err := r.client.CoreV1().PersistentVolumes().Update(ctx, live, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("removing %s from PV %s: %w", ProvisionerFinalizer, pv.Name, err)
	}
	klog.InfoS("Removed the provisioner's finalizer from a lost node's PV", "node", loss.Node, "pv", pv.Name)
	return nil
}

func volumeHandle(pv *corev1.PersistentVolume) string {
	if pv.Spec.CSI != nil {
		return pv.Spec.CSI.VolumeHandle
	}
	return ""
}
