package deploy

import (
	"flag"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"

	"github.com/flashpv/flashpv/pkg/clustercontroller"
	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/driver"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

const fullValues = "testdata/helm-full-values.yaml"

var fullImages = nodeImages{flashpv: "registry.example.com/storage/flashpv:v0.2.0", sidecars: map[string]string{
	"csi-provisioner": "registry.example.com/mirror/csi-provisioner@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
	"csi-resizer":     "registry.example.com/mirror/csi-resizer:v2.",
	"csi-snapshotter": "registry.example.com/mirror/csi-snapshotter:v8.",
}}

// fullGroups: the node groups of the full values, their DaemonSets, pools
// ConfigMaps and pool host paths.
var fullGroups = []struct{ daemonSet, pools, hostPath string }{
	{"flashpv-node", "flashpv-pools", "/var/lib/flashpv"},
	{"flashpv-node-nvme", "flashpv-pools-nvme", "/mnt/nvme0/flashpv"},
	{"flashpv-node-big", "flashpv-pools-big", "/mnt/raid/flashpv"},
}

// TestHelmFullValues: every value set; the objects follow the rules of
// the kustomize base's (TestBase, TestRBACLeastPrivilege, TestController,
// TestSnapshotController) and the chart's own.
func TestHelmFullValues(t *testing.T) {
	r := helmTemplate(t, "--values", fullValues)
	checkCSIDriver(t, r)
	checkNodeRBAC(t, r)
	var dsNames []string
	for _, g := range fullGroups {
		var ds appsv1.DaemonSet
		r.decode(t, "DaemonSet", g.daemonSet, &ds)
		checkNodePlugin(t, ds, fullImages)
		checkNodeArgs(t, r, ds)
		checkGroup(t, ds, g.pools, g.hostPath)
		dsNames = append(dsNames, g.daemonSet)
	}
	if len(r.kinds["DaemonSet"]) != len(fullGroups) || len(r.kinds["ConfigMap"]) != len(fullGroups) {
		t.Errorf("DaemonSets %v and ConfigMaps %v; want one of each per node group", r.kinds["DaemonSet"], r.kinds["ConfigMap"])
	}
	checkController(t, r, fullImages.flashpv, 9821, dsNames...)
	checkControllerArgs(t, r)
	checkSnapshotController(t, r, "registry.example.com/mirror/snapshot-controller:v8.", "snapshot-system")
	checkScheduling(t, r)
	checkClasses(t, r)
	checkMonitoring(t, r, true)
	checkPrometheusRule(t, r)

	// Every pod pulls with the values' Secret and policy.
	for _, kind := range []string{"DaemonSet", "Deployment"} {
		for _, name := range r.kinds[kind] {
			var obj struct {
				Spec struct{ Template corev1.PodTemplateSpec }
			}
			if err := yaml.Unmarshal(r.objs[kind+"/"+name], &obj); err != nil {
				t.Fatal(err)
			}
			pod := obj.Spec.Template.Spec
			if len(pod.ImagePullSecrets) != 1 || pod.ImagePullSecrets[0].Name != "registry-example" {
				t.Errorf("%s %s pulls with %v", kind, name, pod.ImagePullSecrets)
			}
			for _, c := range pod.Containers {
				if c.ImagePullPolicy != corev1.PullAlways {
					t.Errorf("%s %s: container %s pull policy %s", kind, name, c.Name, c.ImagePullPolicy)
				}
			}
		}
	}

	var ns corev1.Namespace
	r.decode(t, "Namespace", "flashpv", &ns)
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace labels %v", ns.Labels)
	}
}

// TestHelmWithoutController: the node plugins run alone: no transfers, no
// orphan lists, nothing that waits for the controller's Service.
func TestHelmWithoutController(t *testing.T) {
	data, err := os.ReadFile(fullValues)
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	values["controller"].(map[string]any)["enabled"] = false
	for _, g := range values["nodeGroups"].([]any) {
		for _, p := range g.(map[string]any)["pools"].([]any) {
			delete(p.(map[string]any), "deleteOrphans")
		}
	}
	file := filepath.Join(t.TempDir(), "values.yaml")
	if data, err = yaml.Marshal(values); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r := helmTemplate(t, "--values", file)
	for kind, names := range r.kinds {
		if slices.Contains(names, "flashpv-controller") {
			t.Errorf("%s flashpv-controller rendered without the controller", kind)
		}
	}
	for _, g := range fullGroups {
		var ds appsv1.DaemonSet
		r.decode(t, "DaemonSet", g.daemonSet, &ds)
		checkNodePlugin(t, ds, fullImages)
		checkNodeArgs(t, r, ds)
		for _, a := range ds.Spec.Template.Spec.Containers[0].Args {
			if strings.HasPrefix(a, "--transfer-") || strings.HasPrefix(a, "--volume-list-dir") || strings.HasPrefix(a, "--delete-orphans") {
				t.Errorf("%s: %s without the controller", ds.Name, a)
			}
		}
		for _, v := range ds.Spec.Template.Spec.Volumes {
			if v.Projected != nil || v.ConfigMap != nil && v.ConfigMap.Name != g.pools {
				t.Errorf("%s: volume %s is the controller's", ds.Name, v.Name)
			}
		}
	}
	checkMonitoring(t, r, false)
}

// TestHelmKubeletDir: every kubelet path follows node.kubeletDir.
func TestHelmKubeletDir(t *testing.T) {
	const dir = "/var/snap/microk8s/common/var/lib/kubelet"
	r := helmTemplate(t, "--set", "node.kubeletDir="+dir+"/")
	doc := string(r.objs["DaemonSet/flashpv-node"])
	if n := strings.Count(doc, "/var/lib/kubelet"); n != strings.Count(doc, dir) || n < 9 {
		t.Errorf("%d kubelet paths, %d of them below %s:\n%s", n, strings.Count(doc, dir), dir, doc)
	}
	var ds appsv1.DaemonSet
	r.decode(t, "DaemonSet", "flashpv-node", &ds)
	o := checkNodeArgs(t, r, ds)
	if o.KubeletDir != dir || o.RegistrationPath != dir+"/plugins/flashpv.dev/csi.sock" {
		t.Errorf("kubelet dir %q, registration path %q", o.KubeletDir, o.RegistrationPath)
	}
}

var variable = regexp.MustCompile(`\$\(([A-Z_]+)\)`)

// checkNodeArgs parses the flashpv container's arguments with flashpv's own
// flags and validation, its pools file being the ConfigMap it mounts, and
// the variables set as the kubelet would.
func checkNodeArgs(t *testing.T, r rendered, ds appsv1.DaemonSet) config.Options {
	t.Helper()
	var cmName string
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == "pools-config" && v.ConfigMap != nil {
			cmName = v.ConfigMap.Name
		}
	}
	var cm corev1.ConfigMap
	r.decode(t, "ConfigMap", cmName, &cm)
	pools := filepath.Join(t.TempDir(), "pools")
	if err := os.WriteFile(pools, []byte(cm.Data["pools"]), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"NODE_NAME": "node-1", "NAMESPACE": "flashpv", "FLASHPV_CONTROLLER_SERVICE_HOST": "10.96.0.10", "FLASHPV_CONTROLLER_SERVICE_PORT_TRANSFER": "9810"}
	var args []string
	for _, a := range ds.Spec.Template.Spec.Containers[0].Args {
		a = variable.ReplaceAllStringFunc(a, func(v string) string { return env[v[2:len(v)-1]] })
		if strings.HasPrefix(a, "--pools-file=") {
			a = "--pools-file=" + pools
		}
		args = append(args, a)
	}
	var o config.Options
	fs := flag.NewFlagSet("flashpv", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.AddFlags(fs)
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		t.Errorf("%s: flashpv %v: %v (left over %v)", ds.Name, args, err, fs.Args())
	} else if err := o.Validate(); err != nil {
		t.Errorf("%s: flashpv %v: %v", ds.Name, args, err)
	}
	return o
}

// checkControllerArgs: the controller's arguments pass its own flags and
// validation.
func checkControllerArgs(t *testing.T, r rendered) {
	t.Helper()
	var d appsv1.Deployment
	r.decode(t, "Deployment", "flashpv-controller", &d)
	args := slices.Clone(d.Spec.Template.Spec.Containers[0].Args[1:])
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "$(POD_NAMESPACE)", "flashpv")
	}
	var o clustercontroller.Options
	fs := flag.NewFlagSet("flashpv controller", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.AddFlags(fs)
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		t.Errorf("flashpv controller %v: %v (left over %v)", args, err, fs.Args())
	} else if err := o.Validate(); err != nil {
		t.Errorf("flashpv controller %v: %v", args, err)
	}
}

// checkGroup: a node group's DaemonSet mounts its own pools file and its
// own host directory, and restarts when its pools change.
func checkGroup(t *testing.T, ds appsv1.DaemonSet, pools, hostPath string) {
	t.Helper()
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == "pools" && (v.HostPath == nil || v.HostPath.Path != hostPath) {
			t.Errorf("%s: pool host path %+v, want %s", ds.Name, v.HostPath, hostPath)
		}
		if v.Name == "pools-config" && (v.ConfigMap == nil || v.ConfigMap.Name != pools) {
			t.Errorf("%s: pools from %+v, want %s", ds.Name, v.ConfigMap, pools)
		}
	}
	if ds.Spec.Template.Annotations["checksum/pools"] == "" {
		t.Errorf("%s: no checksum/pools annotation", ds.Name)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("%s: selector %v does not select its pods %v", ds.Name, ds.Spec.Selector, ds.Spec.Template.Labels)
	}
}

// checkScheduling: every node runs the node plugin of exactly one group
// (a second flashpv on a node would share its pools and socket), and none
// on a node that node.nodeAffinityExpressions leaves out.
func checkScheduling(t *testing.T, r rendered) {
	t.Helper()
	pods := map[string]corev1.PodSpec{}
	for _, g := range fullGroups {
		var ds appsv1.DaemonSet
		r.decode(t, "DaemonSet", g.daemonSet, &ds)
		pods[g.daemonSet] = ds.Spec.Template.Spec
	}
	for _, tc := range []struct {
		node map[string]string
		want string
	}{
		{map[string]string{}, "flashpv-node"},
		{map[string]string{"storage.example.com/disk": "nvme"}, "flashpv-node-nvme"},
		{map[string]string{"storage.example.com/disk": "sata"}, "flashpv-node"},
		{map[string]string{"node.kubernetes.io/instance-type": "i4i.4xlarge", "topology.kubernetes.io/zone": "eu-1a"}, "flashpv-node-big"},
		{map[string]string{"node.kubernetes.io/instance-type": "i4i.4xlarge", "topology.kubernetes.io/zone": "eu-1b"}, "flashpv-node"},
		{map[string]string{"node.kubernetes.io/instance-type": "m5.large", "topology.kubernetes.io/zone": "eu-1a"}, "flashpv-node"},
		{map[string]string{"topology.kubernetes.io/zone": "eu-1a"}, "flashpv-node"},
		{map[string]string{"storage.example.com/no-flashpv": ""}, ""},
		{map[string]string{"storage.example.com/disk": "nvme", "storage.example.com/no-flashpv": "true"}, ""},
	} {
		var got []string
		for name, pod := range pods {
			if schedules(t, pod, tc.node) {
				got = append(got, name)
			}
		}
		if want := []string{tc.want}; tc.want == "" && len(got) != 0 || tc.want != "" && !slices.Equal(got, want) {
			t.Errorf("node %v runs %v, want %q", tc.node, got, tc.want)
		}
	}
}

// schedules tells whether a pod's node selector and required node affinity
// let it onto a node with these labels.
func schedules(t *testing.T, pod corev1.PodSpec, node map[string]string) bool {
	t.Helper()
	if !labels.SelectorFromSet(pod.NodeSelector).Matches(labels.Set(node)) {
		return false
	}
	a := pod.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return true
	}
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		sel := labels.NewSelector()
		for _, e := range term.MatchExpressions {
			op, ok := map[corev1.NodeSelectorOperator]selection.Operator{corev1.NodeSelectorOpIn: selection.In, corev1.NodeSelectorOpNotIn: selection.NotIn,
				corev1.NodeSelectorOpExists: selection.Exists, corev1.NodeSelectorOpDoesNotExist: selection.DoesNotExist}[e.Operator]
			if !ok {
				t.Fatalf("node affinity %+v: operator not handled here", e)
			}
			req, err := labels.NewRequirement(e.Key, op, e.Values)
			if err != nil {
				t.Fatalf("node affinity %+v: %v", e, err)
			}
			sel = sel.Add(*req)
		}
		if len(term.MatchFields) > 0 {
			t.Fatalf("node affinity by fields %+v", term.MatchFields)
		}
		if sel.Matches(labels.Set(node)) {
			return true
		}
	}
	return false
}

// checkClasses: the StorageClasses are flashpv's, take only parameters the
// driver accepts, with values it accepts and pools some node group has,
// and together use every parameter the driver knows.
func checkClasses(t *testing.T, r rendered) {
	t.Helper()
	pools := map[string]bool{}
	for _, g := range fullGroups {
		var cm corev1.ConfigMap
		r.decode(t, "ConfigMap", g.pools, &cm)
		for line := range strings.Lines(cm.Data["pools"]) {
			if p, err := config.ParsePoolSpec(strings.TrimSpace(line)); err == nil {
				pools[p.Name] = true
			}
		}
	}
	valid := map[string][]string{
		wellknown.ParamNodeLossPolicy: {wellknown.NodeLossRecreate, wellknown.NodeLossReport},
		wellknown.ParamCrossNode:      {"true", "false"},
		wellknown.ParamDrainPolicy:    {wellknown.DrainMove, wellknown.DrainStay},
		"csi.storage.k8s.io/fstype":   {"ext4", "xfs", "btrfs"},
	}
	used := map[string]bool{}
	defaults := 0
	for _, name := range r.kinds["StorageClass"] {
		var sc storagev1.StorageClass
		r.decode(t, "StorageClass", name, &sc)
		if sc.Provisioner != wellknown.DriverName || sc.VolumeBindingMode == nil || sc.ReclaimPolicy == nil || sc.AllowVolumeExpansion == nil {
			t.Errorf("StorageClass %s: %+v", name, sc)
		}
		if sc.Annotations["storageclass.kubernetes.io/is-default-class"] == "true" {
			defaults++
		}
		for k, v := range sc.Parameters {
			used[k] = true
			switch {
			case k == wellknown.ParamPool:
				if !pools[v] {
					t.Errorf("StorageClass %s: pool %q is no node group's", name, v)
				}
			case valid[k] != nil:
				if !slices.Contains(valid[k], v) {
					t.Errorf("StorageClass %s: %s=%q, want one of %v", name, k, v, valid[k])
				}
			default:
				t.Errorf("StorageClass %s: parameter %q would be refused by the driver", name, k)
			}
		}
	}
	if len(r.kinds["StorageClass"]) != 3 || defaults != 1 {
		t.Errorf("StorageClasses %v, %d of them default; want 3, one default", r.kinds["StorageClass"], defaults)
	}
	for _, p := range append(driver.StorageClassParameters(), "csi.storage.k8s.io/fstype") {
		if !used[p] {
			t.Errorf("no StorageClass of the full values sets %s: the chart lacks a parameter the driver knows", p)
		}
	}

	var vsc struct {
		Metadata       metav1.ObjectMeta
		Driver         string
		DeletionPolicy string
		Parameters     map[string]string
	}
	if err := yaml.Unmarshal(r.objs["VolumeSnapshotClass/flashpv-snapshots"], &vsc); err != nil || vsc.Driver != wellknown.DriverName ||
		vsc.DeletionPolicy != "Retain" || len(vsc.Parameters) != 0 || vsc.Metadata.Annotations["snapshot.storage.kubernetes.io/is-default-class"] != "true" {
		t.Errorf("VolumeSnapshotClass: %+v %v", vsc, err)
	}
}

// checkMonitoring: the chart's PodMonitors are deploy/monitoring's
// (podmonitors.yaml, with the interval of the values), the controller's
// only with the controller; flashpv-node selects the pods of every node
// group, flashpv-controller the controller's, each scraping a port they have.
func checkMonitoring(t *testing.T, r rendered, controller bool) {
	t.Helper()
	data, err := os.ReadFile("../../deploy/monitoring/podmonitors.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type podMonitor struct {
		Metadata metav1.ObjectMeta
		Spec     struct {
			Selector            metav1.LabelSelector
			PodMetricsEndpoints []map[string]any
		}
	}
	want := map[string]podMonitor{}
	for _, doc := range docSeparator.Split(string(data), -1) {
		var pm podMonitor
		if err := yaml.Unmarshal([]byte(doc), &pm); err != nil {
			t.Fatal(err)
		}
		if pm.Metadata.Name != "" && (controller || pm.Metadata.Name != "flashpv-controller") {
			for _, e := range pm.Spec.PodMetricsEndpoints {
				e["interval"] = "30s"
			}
			want[pm.Metadata.Name] = pm
		}
	}
	if !slices.Equal(slices.Sorted(maps.Keys(want)), slices.Sorted(slices.Values(r.kinds["PodMonitor"]))) {
		t.Errorf("PodMonitors %v, want deploy/monitoring's %v", r.kinds["PodMonitor"], slices.Sorted(maps.Keys(want)))
	}
	pods := map[string]corev1.PodTemplateSpec{}
	for _, name := range r.kinds["DaemonSet"] {
		var ds appsv1.DaemonSet
		r.decode(t, "DaemonSet", name, &ds)
		pods["DaemonSet/"+name] = ds.Spec.Template
	}
	for _, name := range r.kinds["Deployment"] {
		var d appsv1.Deployment
		r.decode(t, "Deployment", name, &d)
		pods["Deployment/"+name] = d.Spec.Template
	}
	for name, w := range want {
		var pm podMonitor
		if err := yaml.Unmarshal(r.objs["PodMonitor/"+name], &pm); err != nil {
			t.Fatal(err)
		}
		if pm.Metadata.Namespace != "flashpv" || pm.Metadata.Labels["release"] != "prometheus" {
			t.Errorf("PodMonitor %s: namespace %q, labels %v", name, pm.Metadata.Namespace, pm.Metadata.Labels)
		}
		for _, d := range differences("PodMonitor/"+name+".spec", w.Spec, pm.Spec) {
			t.Errorf("differs from deploy/monitoring/podmonitors.yaml: %s", d)
		}
		sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		port := pm.Spec.PodMetricsEndpoints[0]["port"]
		for pod, tmpl := range pods {
			selects := strings.HasPrefix(pod, "DaemonSet/") && name == "flashpv-node" || pod == "Deployment/flashpv-controller" && name == "flashpv-controller"
			if got := sel.Matches(labels.Set(tmpl.Labels)); got != selects {
				t.Errorf("PodMonitor %s selects %s: %v, want %v", name, pod, got, selects)
				continue
			}
			if selects && !slices.ContainsFunc(tmpl.Spec.Containers[0].Ports, func(p corev1.ContainerPort) bool { return p.Name == port }) {
				t.Errorf("%s has no port %v to scrape", pod, port)
			}
		}
	}
}

// checkPrometheusRule: the PrometheusRule holds deploy/monitoring's rules
// unchanged (the chart reads them through a link to that file).
func checkPrometheusRule(t *testing.T, r rendered) {
	t.Helper()
	var rule struct {
		Metadata metav1.ObjectMeta
		Spec     struct{ Groups []any }
	}
	if err := yaml.Unmarshal(r.objs["PrometheusRule/flashpv"], &rule); err != nil || rule.Metadata.Labels["release"] != "prometheus" {
		t.Fatalf("PrometheusRule: %+v %v", rule, err)
	}
	data, err := os.ReadFile("../../deploy/monitoring/flashpv-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var file struct{ Groups []any }
	if err := yaml.Unmarshal(data, &file); err != nil || len(file.Groups) == 0 {
		t.Fatalf("deploy/monitoring/flashpv-rules.yaml: %v, %d groups", err, len(file.Groups))
	}
	for _, d := range differences("groups", file.Groups, rule.Spec.Groups) {
		t.Errorf("PrometheusRule differs from deploy/monitoring/flashpv-rules.yaml: %s", d)
	}
}
