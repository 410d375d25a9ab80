// Package nodeloss decides, and carries out, what flashpv's cluster
// controller does when a node is gone for good: for the PVs of flashpv.dev
// on that node whose class opted in (nodeLossPolicy: Recreate), delete the
// claim (so a StatefulSet recreates it, empty, on a live node) and remove
// the PV, never touching any disk; for the others, report the stuck claim.
//
// The decisions (Decide) are pure functions of what the controller sees;
// Reconciler feeds them from informers and carries them out with UID
// preconditions, re-checking the node right before every deletion.
package nodeloss

import (
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"

	"github.com/flashpv/flashpv/pkg/wellknown"
)

// ProvisionerFinalizer is the finalizer external-provisioner puts on the PVs
// it creates and removes once it has deleted their volume, which the
// provisioner of a lost node never will. flashpv removes it from the PVs it
// removes; kubernetes.io/pv-protection it leaves to Kubernetes, which drops
// it once the PV is no longer bound.
const ProvisionerFinalizer = "external-provisioner.volume.kubernetes.io/finalizer"

// Kind is what to do with one PV.
type Kind string

const (
	// Wait: nothing now; the reason says what is awaited.
	Wait Kind = "Wait"
	// Report: the class did not opt in (or the PV is retained): the claim
	// is stuck and an operator must decide.
	Report Kind = "Report"
	// DeleteClaim: delete the claim, preconditioned on its UID.
	DeleteClaim Kind = "DeleteClaim"
	// DeletePV: delete the PV, preconditioned on its UID.
	DeletePV Kind = "DeletePV"
	// RemoveFinalizer: the PV is being deleted; drop ProvisionerFinalizer.
	RemoveFinalizer Kind = "RemoveFinalizer"
)

// Action is the decision for one PV.
type Action struct {
	Kind   Kind
	PV     *corev1.PersistentVolume
	Claim  *corev1.PersistentVolumeClaim // the claim to delete or report, when known
	Reason string
}

// Loss is a node the controller has seen missing since a time.
type Loss struct {
	Node  string
	Since time.Time
}

// View is what the controller knows when it decides about one lost node.
type View struct {
	Now   time.Time
	Grace time.Duration
	// NodeExists: a Node of the lost node's name exists (any UID), as
	// Reconciler.view found it: in the cache within the grace period, on
	// the API server past it.
	NodeExists bool
	// PVs are flashpv.dev PVs whose node affinity names the node.
	PVs []*corev1.PersistentVolume
	// Claim returns the claim of that namespace and name, or nil.
	Claim func(namespace, name string) *corev1.PersistentVolumeClaim
	// Pods returns the pods of a namespace.
	Pods func(namespace string) []*corev1.Pod
	// Class returns the StorageClass of that name, or nil.
	Class func(name string) *storagev1.StorageClass
}

// Decide returns one action per PV of the lost node. Nothing destructive
// comes out unless no Node of that name exists and the grace period since
// the loss was first seen is over.
func Decide(loss Loss, v View) []Action {
	var out []Action
	for _, pv := range v.PVs {
		out = append(out, decidePV(loss, v, pv))
	}
	return out
}

func decidePV(loss Loss, v View, pv *corev1.PersistentVolume) Action {
	wait := func(format string, args ...any) Action {
		return Action{Kind: Wait, PV: pv, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case NodeOf(pv) != loss.Node:
		return wait("the PV is not a flashpv volume of node %s alone", loss.Node)
	case v.NodeExists:
		return wait("node %s exists", loss.Node)
	case v.Now.Before(loss.Since.Add(v.Grace)):
		return wait("node %s gone since %s, grace period %s", loss.Node, loss.Since.UTC().Format(time.RFC3339), v.Grace)
	case !pv.CreationTimestamp.Time.Before(loss.Since.Truncate(time.Second)):
		// Only a live provisioner makes PVs: the node was alive after it
		// was thought gone. The API server keeps whole seconds, so a PV
		// made in the second the loss began may be the younger: it waits
		// too (until the node is back, or a new leader starts the loss
		// anew).
		return wait("the PV was created after node %s was seen gone", loss.Node)
	}
	claim, claimState := boundClaim(v, pv)
	if claimState != "" && claimState != claimGone {
		return Action{Kind: Wait, PV: pv, Claim: claim, Reason: claimState}
	}
	if policy := PolicyOf(pv, v.Class); policy != wellknown.NodeLossRecreate {
		return Action{Kind: Report, PV: pv, Claim: claim,
			Reason: fmt.Sprintf("%s is %q, not %s", wellknown.ParamNodeLossPolicy, policy, wellknown.NodeLossRecreate)}
	}
	if claim != nil {
		if pod := blockingPod(v.Pods(claim.Namespace), claim.Name); pod != nil {
			return Action{Kind: Wait, PV: pv, Claim: claim,
				Reason: fmt.Sprintf("pod %s/%s on node %s still uses the claim", pod.Namespace, pod.Name, pod.Spec.NodeName)}
		}
		if claim.DeletionTimestamp != nil {
			return Action{Kind: Wait, PV: pv, Claim: claim, Reason: "the claim is being deleted"}
		}
		return Action{Kind: DeleteClaim, PV: pv, Claim: claim, Reason: "its node is gone for good"}
	}
	// The claim is gone (or is another claim of the same name by now).
	if pv.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimRetain {
		return Action{Kind: Report, PV: pv, Reason: "the PV's reclaim policy is Retain: it is kept for an operator"}
	}
	if pv.DeletionTimestamp == nil {
		return Action{Kind: DeletePV, PV: pv, Reason: "its claim is gone and its node is gone for good"}
	}
	if slices.Contains(pv.Finalizers, ProvisionerFinalizer) {
		return Action{Kind: RemoveFinalizer, PV: pv, Reason: "the provisioner of a lost node never deletes its volume"}
	}
	return wait("the PV is being deleted (finalizers %v)", pv.Finalizers)
}

const claimGone = "claim gone"

// boundClaim returns the claim the PV is bound to if that claim still
// references the PV, or why it cannot be acted on; claimGone when no claim
// of the PV's claimRef UID exists any more.
func boundClaim(v View, pv *corev1.PersistentVolume) (*corev1.PersistentVolumeClaim, string) {
	ref := pv.Spec.ClaimRef
	if ref == nil {
		return nil, claimGone
	}
	c := v.Claim(ref.Namespace, ref.Name)
	if c == nil || (ref.UID != "" && c.UID != ref.UID) {
		return nil, claimGone
	}
	if ref.UID == "" {
		return c, "the PV is not bound yet (claimRef has no UID)"
	}
	if c.Spec.VolumeName != pv.Name {
		return c, fmt.Sprintf("claim %s/%s does not reference this PV (volumeName %q)", c.Namespace, c.Name, c.Spec.VolumeName)
	}
	return c, ""
}

// blockingPod returns a pod that uses the claim and may be running: one that
// is bound to a node (whichever: even on the lost node, until the pod
// garbage collector removes it) and has not finished.
func blockingPod(pods []*corev1.Pod, claim string) *corev1.Pod {
	for _, p := range pods {
		if p.Spec.NodeName == "" || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if UsesClaim(p, claim) {
			return p
		}
	}
	return nil
}

// UsesClaim reports whether the pod mounts the claim, directly or as a
// generic ephemeral volume (whose claim is <pod>-<volume>).
func UsesClaim(p *corev1.Pod, claim string) bool {
	for _, vol := range p.Spec.Volumes {
		if c := vol.PersistentVolumeClaim; c != nil && c.ClaimName == claim {
			return true
		}
		if vol.Ephemeral != nil && p.Name+"-"+vol.Name == claim {
			return true
		}
	}
	return false
}

// NodeOf returns the node a flashpv.dev PV lives on: the one value of the
// flashpv.dev/node key in its node affinity, or "" for any other PV (another
// driver, no affinity, or affinity naming more than one node).
func NodeOf(pv *corev1.PersistentVolume) string {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != wellknown.DriverName {
		return ""
	}
	aff := pv.Spec.NodeAffinity
	if aff == nil || aff.Required == nil {
		return ""
	}
	node := ""
	for _, term := range aff.Required.NodeSelectorTerms {
		found := false
		for _, e := range term.MatchExpressions {
			if e.Key != wellknown.TopologyKey {
				continue
			}
			if e.Operator != corev1.NodeSelectorOpIn || len(e.Values) != 1 || (node != "" && node != e.Values[0]) {
				return ""
			}
			node, found = e.Values[0], true
		}
		if !found {
			return "" // a term that does not pin the node
		}
	}
	return node
}

// PolicyOf returns the node loss policy of a PV: the one recorded in its
// volume attributes at provisioning, else its StorageClass's parameter,
// else Report.
func PolicyOf(pv *corev1.PersistentVolume, class func(string) *storagev1.StorageClass) string {
	if pv.Spec.CSI != nil {
		if p, ok := pv.Spec.CSI.VolumeAttributes[wellknown.ParamNodeLossPolicy]; ok {
			return p
		}
	}
	if name := pv.Spec.StorageClassName; name != "" && class != nil {
		if sc := class(name); sc != nil {
			if p, ok := sc.Parameters[wellknown.ParamNodeLossPolicy]; ok {
				return p
			}
		}
	}
	return wellknown.NodeLossReport
}
