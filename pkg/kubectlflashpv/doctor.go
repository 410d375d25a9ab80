package kubectlflashpv

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// Finding is one check of `doctor`.
type Finding struct {
	Check string `json:"check"`
	// Result is ok, warning, error, or unknown (the check could not run).
	Result  string `json:"result"`
	Message string `json:"message"`
	// Fix says what to do about it.
	Fix string `json:"fix,omitempty"`
}

// findings is doctor's error when a check found an error: the findings
// were printed, so Main prints nothing more.
type findings int

func (f findings) Error() string { return fmt.Sprintf("%d problems", int(f)) }

// Doctor runs every check and prints what it found and what to do.
func (a *App) Doctor(ctx context.Context) error {
	var out []Finding
	for _, check := range []func(context.Context) []Finding{
		a.checkCSIDriver, a.checkDaemonSet, a.checkSnapshots, a.checkCapacity, a.checkPools, a.checkNodeLoss,
	} {
		out = append(out, check(ctx)...)
	}
	if err := a.print(out, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CHECK\tRESULT\tMESSAGE")
		for _, f := range out {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Check, f.Result, f.Message)
			if f.Fix != "" {
				fmt.Fprintf(tw, "\t\t-> %s\n", f.Fix)
			}
		}
		tw.Flush()
	}); err != nil {
		return err
	}
	n := 0
	for _, f := range out {
		if f.Result == "error" {
			n++
		}
	}
	if n > 0 {
		return findings(n)
	}
	return nil
}

// unknown is a check that could not run, with the reason.
func (a *App) unknown(check string, err error) []Finding {
	return []Finding{{Check: check, Result: "unknown", Message: a.explain(err).Error()}}
}

func (a *App) checkCSIDriver(ctx context.Context) []Finding {
	const check = "csidriver"
	d, err := a.Client.StorageV1().CSIDrivers().Get(ctx, wellknown.DriverName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return []Finding{{check, "error", "no CSIDriver " + wellknown.DriverName + ": the kubelet will not mount flashpv volumes",
			"kubectl apply -k deploy/kubernetes (or install the Helm chart)"}}
	}
	if err != nil {
		return a.unknown(check, api(err, "get", "csidrivers.storage.k8s.io", ""))
	}
	if d.Spec.AttachRequired == nil || *d.Spec.AttachRequired {
		return []Finding{{check, "error", "CSIDriver " + wellknown.DriverName + " requires attach, which flashpv does not do: volumes never attach",
			"apply deploy/kubernetes/csidriver.yaml (attachRequired: false); the field is immutable: delete the CSIDriver first"}}
	}
	return []Finding{{Check: check, Result: "ok", Message: "CSIDriver " + wellknown.DriverName + " present"}}
}

// flashpvPods lists the node plugin pods by node.
func (a *App) flashpvPods(ctx context.Context) (map[string][]corev1.Pod, error) {
	pods, err := a.Client.CoreV1().Pods(a.System).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=flashpv"})
	if err != nil {
		return nil, api(err, "list", "pods", a.System)
	}
	out := map[string][]corev1.Pod{}
	for _, p := range pods.Items {
		if p.Spec.NodeName != "" && p.OwnerReferences != nil && p.OwnerReferences[0].Kind == "DaemonSet" {
			out[p.Spec.NodeName] = append(out[p.Spec.NodeName], p)
		}
	}
	return out, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (a *App) checkDaemonSet(ctx context.Context) []Finding {
	const check = "daemonset"
	dss, err := a.Client.AppsV1().DaemonSets(a.System).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=flashpv"})
	if err != nil {
		return a.unknown(check, api(err, "list", "daemonsets.apps", a.System))
	}
	if len(dss.Items) == 0 {
		return []Finding{{check, "error", "no flashpv DaemonSet in namespace " + a.System, "kubectl apply -k deploy/kubernetes, or pass --flashpv-namespace"}}
	}
	var out []Finding
	for _, ds := range dss.Items {
		s := ds.Status
		if s.DesiredNumberScheduled == 0 || s.NumberReady < s.DesiredNumberScheduled {
			out = append(out, Finding{check, "error", fmt.Sprintf("DaemonSet %s: %d of %d pods ready", ds.Name, s.NumberReady, s.DesiredNumberScheduled),
				fmt.Sprintf("kubectl -n %s get pods -l app.kubernetes.io/name=flashpv -o wide; kubectl -n %s logs POD -c flashpv", a.System, a.System)})
		}
	}
	nodes, err := a.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return append(out, a.unknown(check, api(err, "list", "nodes", ""))...)
	}
	pods, err := a.flashpvPods(ctx)
	if err != nil {
		return append(out, a.unknown(check, err)...)
	}
	var missing []string
	schedulable := 0
	for _, n := range nodes.Items {
		if n.Spec.Unschedulable || hasNoScheduleTaint(&n) {
			continue
		}
		schedulable++
		if !slices.ContainsFunc(pods[n.Name], func(p corev1.Pod) bool { return podReady(&p) }) {
			missing = append(missing, n.Name)
		}
	}
	if len(missing) > 0 {
		out = append(out, Finding{check, "error", "no ready flashpv pod on schedulable nodes " + strings.Join(missing, ", ") + ": claims cannot be provisioned or mounted there",
			"kubectl -n " + a.System + " describe daemonset; a node taint the DaemonSet does not tolerate, or a failing pod (kubectl -n " + a.System + " get pods -o wide)"})
	}
	if len(out) == 0 {
		out = append(out, Finding{Check: check, Result: "ok", Message: fmt.Sprintf("a ready flashpv pod on each of %d schedulable nodes", schedulable)})
	}
	return out
}

func hasNoScheduleTaint(n *corev1.Node) bool {
	for _, t := range n.Spec.Taints {
		if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
			return true
		}
	}
	return false
}

func (a *App) checkSnapshots(ctx context.Context) []Finding {
	const check = "snapshots"
	var missing []string
	for _, r := range []string{"volumesnapshotclasses", "volumesnapshots", "volumesnapshotcontents"} {
		_, err := a.Dynamic.Resource(schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: r}).List(ctx, metav1.ListOptions{Limit: 1})
		if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
			missing = append(missing, r)
		} else if err != nil {
			return a.unknown(check, api(err, "list", r+".snapshot.storage.k8s.io", ""))
		}
	}
	if len(missing) > 0 {
		return []Finding{{check, "warning", "snapshot CRDs missing: " + strings.Join(missing, ", ") + ": VolumeSnapshots do not work",
			"install the external-snapshotter's CRDs (v8) and deploy/kubernetes/snapshot-controller"}}
	}
	deps, err := a.Client.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return a.unknown(check, api(err, "list", "deployments.apps", ""))
	}
	found, distributed := "", false
	for _, d := range deps.Items {
		for _, c := range d.Spec.Template.Spec.Containers {
			if !strings.Contains(c.Image, "snapshot-controller") {
				continue
			}
			found = d.Namespace + "/" + d.Name
			distributed = distributed || slices.ContainsFunc(c.Args, func(s string) bool {
				return s == "--enable-distributed-snapshotting" || s == "--enable-distributed-snapshotting=true"
			})
		}
	}
	switch {
	case found == "":
		return []Finding{{check, "warning", "no snapshot-controller Deployment: VolumeSnapshots stay unready",
			"kubectl apply -k deploy/kubernetes/snapshot-controller"}}
	case !distributed:
		return []Finding{{check, "error", "snapshot-controller " + found + " runs without --enable-distributed-snapshotting: flashpv's per-node snapshotters never get a snapshot",
			"add --enable-distributed-snapshotting=true to its args (deploy/kubernetes/snapshot-controller does)"}}
	}
	return []Finding{{Check: check, Result: "ok", Message: "snapshot CRDs and snapshot-controller " + found + " with distributed snapshotting"}}
}

// checkCapacity: every node with a ready flashpv pod has CSIStorageCapacity
// for every WaitForFirstConsumer flashpv class, none names a node that is
// gone, and the node plugins' status is current.
func (a *App) checkCapacity(ctx context.Context) []Finding {
	const check = "capacity"
	classes, err := a.Client.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return a.unknown(check, api(err, "list", "storageclasses.storage.k8s.io", ""))
	}
	caps, err := a.Client.StorageV1().CSIStorageCapacities(a.System).List(ctx, metav1.ListOptions{})
	if err != nil {
		return a.unknown(check, api(err, "list", "csistoragecapacities.storage.k8s.io", a.System))
	}
	pods, err := a.flashpvPods(ctx)
	if err != nil {
		return a.unknown(check, err)
	}
	nodes, err := a.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return a.unknown(check, api(err, "list", "nodes", ""))
	}
	have := map[string]bool{} // class/node
	var out []Finding
	var gone []string
	for _, c := range caps.Items {
		node := capacityNode(&c)
		have[c.StorageClassName+"/"+node] = true
		if node != "" && !slices.ContainsFunc(nodes.Items, func(n corev1.Node) bool { return n.Name == node }) {
			gone = append(gone, c.Name+" ("+node+")")
		}
	}
	var lacking []string
	for _, sc := range classes.Items {
		if sc.Provisioner != wellknown.DriverName || sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer {
			continue
		}
		for node, ps := range pods {
			if slices.ContainsFunc(ps, func(p corev1.Pod) bool { return podReady(&p) }) && !have[sc.Name+"/"+node] {
				lacking = append(lacking, sc.Name+" on "+node)
			}
		}
	}
	slices.Sort(lacking)
	if len(lacking) > 0 {
		out = append(out, Finding{check, "error", "no CSIStorageCapacity for " + strings.Join(lacking, ", ") + ": the scheduler will not place claims of these classes there",
			"the node's csi-provisioner publishes it (--enable-capacity, every 30 s): kubectl -n " + a.System + " logs POD -c csi-provisioner"})
	}
	if len(gone) > 0 {
		out = append(out, Finding{check, "warning", "CSIStorageCapacity of nodes that are gone: " + strings.Join(gone, ", "),
			"they go with their owner; kubectl -n " + a.System + " delete csistoragecapacity NAME if they stay"})
	}
	entries, found, err := a.statusEntries(ctx)
	switch {
	case err != nil:
		out = append(out, a.unknown(check, err)...)
	case !found:
		out = append(out, Finding{check, "warning", "no node status (ConfigMap " + a.System + "/" + wellknown.NodeStatusConfigMap + "): info, volumes' used space and health, and orphans are unknown",
			"run the flashpv controller with --node-status-port (the default), and give it get/update on that ConfigMap (deploy/kubernetes/controller-role.yaml)"})
	default:
		for _, node := range sortedKeys(entries) {
			e := entries[node]
			switch {
			case e.Error != "":
				out = append(out, Finding{check, "warning", "node " + node + ": status not fetched: " + e.Error,
					"the controller reads it from the node plugin's health port (9808); a NetworkPolicy or a failing pod may stop it"})
			case e.Status != nil && a.Now().Sub(e.Status.AsOf) > staleAfter:
				out = append(out, Finding{check, "warning", "node " + node + ": status is " + age(a.Now().Sub(e.Status.AsOf)) + " old",
					"is the flashpv controller running? kubectl -n " + a.System + " logs deploy/flashpv-controller"})
			}
		}
	}
	if len(out) == 0 {
		out = append(out, Finding{Check: check, Result: "ok", Message: fmt.Sprintf("%d CSIStorageCapacity objects cover every node and class; node status current", len(caps.Items))})
	}
	return out
}

func capacityNode(c *storagev1.CSIStorageCapacity) string {
	if c.NodeTopology == nil {
		return ""
	}
	if v, ok := c.NodeTopology.MatchLabels[wellknown.TopologyKey]; ok {
		return v
	}
	for _, e := range c.NodeTopology.MatchExpressions {
		if e.Key == wellknown.TopologyKey && len(e.Values) == 1 {
			return e.Values[0]
		}
	}
	return ""
}

// poolFix says what to do about a pool by its reason.
var poolFix = map[string]string{
	"PoolUnusable":     "set the storage up for the pool's kind (the volume group, thin pool, or an XFS mounted with prjquota), or remove the pool from the pools ConfigMap; then restart the node's flashpv pod",
	"PoolIOError":      "the pool's device or filesystem fails: see docs/health.md (unmount, repair, the pool comes back when a probe passes)",
	"PoolReadOnly":     "the pool's filesystem went read-only (usually after errors): see docs/health.md",
	"PoolNotAnswering": "the pool's device does not answer: check the disk (dmesg); see docs/health.md",
}

func (a *App) checkPools(ctx context.Context) []Finding {
	const check = "pools"
	entries, _, err := a.statusEntries(ctx)
	if err != nil {
		return a.unknown(check, err)
	}
	var out []Finding
	n := 0
	for _, node := range sortedKeys(entries) {
		st := entries[node].Status
		if st == nil {
			continue
		}
		for _, p := range st.Pools {
			n++
			if p.Healthy {
				continue
			}
			fix := poolFix[p.Reason]
			if fix == "" {
				fix = "see docs/health.md"
			}
			out = append(out, Finding{check, "error", fmt.Sprintf("node %s: pool %s (%s) is unusable: %s", node, p.Name, p.Kind, poolHealth(p)), fix})
		}
		if k := len(st.Orphans.Volumes); k > 0 {
			out = append(out, Finding{check, "warning", fmt.Sprintf("node %s: %d orphaned volumes (no PersistentVolume names them): kubectl flashpv orphans", node, k),
				"delete them with --delete-orphans POOL on the node plugin (after --orphan-grace), or keep them for their data"})
		}
	}
	if len(out) == 0 {
		out = append(out, Finding{Check: check, Result: "ok", Message: fmt.Sprintf("%d pools on %d nodes healthy, no orphans", n, len(entries))})
	}
	return out
}

// checkNodeLoss: bound flashpv claims whose node is gone.
func (a *App) checkNodeLoss(ctx context.Context) []Finding {
	const check = "node-loss"
	pvs, err := a.flashpvPVs(ctx)
	if err != nil {
		return a.unknown(check, err)
	}
	nodes, err := a.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return a.unknown(check, api(err, "list", "nodes", ""))
	}
	exists := map[string]bool{}
	for _, n := range nodes.Items {
		exists[n.Name] = true
	}
	var out []Finding
	for _, pv := range pvs {
		node := nodeloss.NodeOf(&pv)
		if node == "" || exists[node] || pv.Spec.ClaimRef == nil {
			continue
		}
		claim := pv.Spec.ClaimRef.Namespace + "/" + pv.Spec.ClaimRef.Name
		policy := pv.Spec.CSI.VolumeAttributes[wellknown.ParamNodeLossPolicy]
		fix := "its data is on the lost node: bring the node back, or delete the claim (and its pod) so the StatefulSet recreates it empty elsewhere; opt the class in with nodeLossPolicy: Recreate to have the controller do that (docs/node-loss.md)"
		if policy == wellknown.NodeLossRecreate {
			fix = "the flashpv controller deletes it after --node-loss-grace; if it does not, see its Events (kubectl -n " + pv.Spec.ClaimRef.Namespace + " describe pvc " + pv.Spec.ClaimRef.Name + ") and the controller's log"
		}
		out = append(out, Finding{check, "error", fmt.Sprintf("claim %s is stuck: its volume %s is on node %s, which is gone", claim, pv.Name, node), fix})
	}
	if len(out) == 0 {
		out = append(out, Finding{Check: check, Result: "ok", Message: "no claim stuck on a lost node"})
	}
	return out
}
