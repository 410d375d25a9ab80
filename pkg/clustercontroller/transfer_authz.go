package clustercontroller

import (
	"context"
	"net"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// annSelectedNode is where the scheduler puts a claim's node.
const annSelectedNode = "volume.kubernetes.io/selected-node"

// grantAuthorizer decides whether a node may copy a snapshot or a volume:
// only when a claim that its provisioner is making asks for exactly that
// copy onto exactly that node.
type grantAuthorizer struct {
	client      kubernetes.Interface
	dynamic     dynamic.Interface
	pvs         corelisters.PersistentVolumeLister
	pods        corelisters.PodLister
	namespace   string          // the node plugins'
	podSelector labels.Selector // the node plugins' pods
	nodePort    int
}

func denied(format string, args ...any) error {
	return broker.Errorf(broker.CodeDenied, format, args...)
}

func notFound(format string, args ...any) error {
	return broker.Errorf(broker.CodeNotFound, format, args...)
}

func unavailable(format string, args ...any) error {
	return broker.Errorf(broker.CodeUnavailable, format, args...)
}

// Authorize returns the source's node and its transfer server's address.
func (a *grantAuthorizer) Authorize(ctx context.Context, node string, req broker.GrantRequest) (string, string, error) {
	claim, err := a.claim(ctx, node, req)
	if err != nil {
		return "", "", err
	}
	var source string
	switch req.Kind {
	case broker.KindSnapshot:
		source, err = a.snapshotNode(ctx, claim, req.Source)
	case broker.KindVolume:
		source, err = a.volumeNode(ctx, claim, req.Source)
	default:
		err = broker.Errorf(broker.CodeInvalid, "kind %q", req.Kind)
	}
	if err != nil {
		return "", "", err
	}
	if source == node {
		return "", "", denied("the source is on this node; copy locally")
	}
	addr, err := a.address(source)
	if err != nil {
		return "", "", err
	}
	return source, addr, nil
}

// claim reads the claim from the API server (never the cache: this is an
// authorization) and checks that it is being provisioned, as req.Target,
// on node, in a flashpv class that allows copies across nodes.
func (a *grantAuthorizer) claim(ctx context.Context, node string, req broker.GrantRequest) (*corev1.PersistentVolumeClaim, error) {
	claim, err := a.client.CoreV1().PersistentVolumeClaims(req.ClaimNamespace).Get(ctx, req.ClaimName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, notFound("claim %s/%s not found", req.ClaimNamespace, req.ClaimName)
	}
	if err != nil {
		return nil, err
	}
	ref := req.ClaimNamespace + "/" + req.ClaimName
	switch {
	case claim.DeletionTimestamp != nil:
		return nil, denied("claim %s is being deleted", ref)
	case claim.Spec.VolumeName != "" || (claim.Status.Phase != corev1.ClaimPending && claim.Status.Phase != ""):
		return nil, denied("claim %s is already bound", ref)
	case "pvc-"+string(claim.UID) != req.Target:
		return nil, denied("claim %s is not provisioned as %s", ref, req.Target)
	}
	className := ""
	if claim.Spec.StorageClassName != nil {
		className = *claim.Spec.StorageClassName
	}
	if className == "" {
		return nil, denied("claim %s has no storage class", ref)
	}
	class, err := a.client.StorageV1().StorageClasses().Get(ctx, className, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, notFound("storage class %s not found", className)
	}
	if err != nil {
		return nil, err
	}
	if class.Provisioner != wellknown.DriverName {
		return nil, denied("storage class %s is provisioned by %s, not %s", className, class.Provisioner, wellknown.DriverName)
	}
	switch v := class.Parameters[wellknown.ParamCrossNode]; v {
	case "", "true":
	case "false":
		return nil, denied("storage class %s forbids copies across nodes (%s: \"false\")", className, wellknown.ParamCrossNode)
	default:
		return nil, denied("storage class %s: %s %q is neither \"true\" nor \"false\"", className, wellknown.ParamCrossNode, v)
	}
	// Every claim flashpv provisions has its node: the scheduler's pick
	// (WaitForFirstConsumer), or the node whose provisioner took an
	// Immediate claim (it marks the claim before it provisions). Without
	// one no node is entitled to the source.
	switch selected := claim.Annotations[annSelectedNode]; {
	case selected == "":
		return nil, denied("claim %s has no selected node", ref)
	case selected != node:
		return nil, denied("claim %s is for node %s, not %s", ref, selected, node)
	}
	return claim, nil
}

// dataSource returns the claim's data source (dataSourceRef, else
// dataSource) if it is of the given group and kind in its own namespace.
func dataSource(claim *corev1.PersistentVolumeClaim, group, kind string) (string, error) {
	var g, k, name string
	switch ds, ref := claim.Spec.DataSource, claim.Spec.DataSourceRef; {
	case ref != nil:
		if ref.Namespace != nil && *ref.Namespace != "" && *ref.Namespace != claim.Namespace {
			return "", denied("claim %s/%s: data sources in other namespaces are not supported", claim.Namespace, claim.Name)
		}
		g, k, name = deref(ref.APIGroup), ref.Kind, ref.Name
	case ds != nil:
		g, k, name = deref(ds.APIGroup), ds.Kind, ds.Name
	default:
		return "", denied("claim %s/%s has no data source", claim.Namespace, claim.Name)
	}
	if g != group || k != kind {
		return "", denied("claim %s/%s is made from a %s, not a %s", claim.Namespace, claim.Name, k, kind)
	}
	return name, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// volumeNode checks that the claim clones the claim whose PV is the
// flashpv volume source, and returns the volume's node.
func (a *grantAuthorizer) volumeNode(ctx context.Context, claim *corev1.PersistentVolumeClaim, source string) (string, error) {
	name, err := dataSource(claim, "", "PersistentVolumeClaim")
	if err != nil {
		return "", err
	}
	src, err := a.client.CoreV1().PersistentVolumeClaims(claim.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", notFound("source claim %s/%s not found", claim.Namespace, name)
	}
	if err != nil {
		return "", err
	}
	if src.Spec.VolumeName == "" {
		return "", unavailable("source claim %s/%s is not bound yet", claim.Namespace, name)
	}
	pv, err := a.client.CoreV1().PersistentVolumes().Get(ctx, src.Spec.VolumeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", notFound("volume %s of source claim %s/%s not found", src.Spec.VolumeName, claim.Namespace, name)
	}
	if err != nil {
		return "", err
	}
	if r := pv.Spec.ClaimRef; r == nil || r.Namespace != src.Namespace || r.Name != src.Name || (r.UID != "" && r.UID != src.UID) {
		return "", denied("volume %s is not bound to source claim %s/%s", pv.Name, claim.Namespace, name)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != wellknown.DriverName {
		return "", denied("source claim %s/%s is not a %s volume", claim.Namespace, name, wellknown.DriverName)
	}
	if pv.Spec.CSI.VolumeHandle != source {
		return "", denied("source claim %s/%s is not volume %s", claim.Namespace, name, source)
	}
	node := nodeloss.NodeOf(pv)
	if node == "" {
		return "", notFound("volume %s names no node", pv.Name)
	}
	return node, nil
}

// address is host:port of the transfer server of node's flashpv: the
// newest running, ready node plugin pod there.
func (a *grantAuthorizer) address(node string) (string, error) {
	pods, err := a.pods.Pods(a.namespace).List(a.podSelector)
	if err != nil {
		return "", err
	}
	var best *corev1.Pod
	for _, p := range pods {
		if p.Spec.NodeName != node || p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || !podReady(p) {
			continue
		}
		if best == nil || best.CreationTimestamp.Before(&p.CreationTimestamp) {
			best = p
		}
	}
	if best == nil {
		return "", unavailable("no ready flashpv node plugin on node %s", node)
	}
	return net.JoinHostPort(best.Status.PodIP, strconv.Itoa(a.nodePort)), nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
