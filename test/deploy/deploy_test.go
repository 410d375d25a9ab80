// Package deploy renders deploy/kubernetes with kustomize, as
// `kubectl apply -k` does, and checks the objects against flashpv's rules.
package deploy

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

type rendered struct {
	kinds map[string][]string // kind -> names
	objs  map[string][]byte   // kind/name -> YAML
}

func render(t *testing.T, dir string) rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	r := rendered{kinds: map[string][]string{}, objs: map[string][]byte{}}
	for _, rs := range res.Resources() {
		b, err := rs.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		r.kinds[rs.GetKind()] = append(r.kinds[rs.GetKind()], rs.GetName())
		r.objs[rs.GetKind()+"/"+rs.GetName()] = b
	}
	return r
}

func (r rendered) decode(t *testing.T, kind, name string, into any) {
	t.Helper()
	b, ok := r.objs[kind+"/"+name]
	if !ok {
		t.Fatalf("no %s %s in %v", kind, name, r.kinds)
	}
	if err := yaml.UnmarshalStrict(b, into); err != nil {
		t.Fatalf("%s %s: %v", kind, name, err)
	}
}

func TestBase(t *testing.T) {
	r := render(t, "../../deploy/kubernetes")
	// Two of each RBAC kind: the node plugin's and the controller's.
	for kind, n := range map[string]int{"Namespace": 1, "CSIDriver": 1, "ServiceAccount": 2, "ClusterRole": 2, "ClusterRoleBinding": 2, "Role": 2, "RoleBinding": 2, "ConfigMap": 1, "DaemonSet": 1, "Deployment": 1, "Service": 1} {
		if len(r.kinds[kind]) != n {
			t.Errorf("%d %s objects, want %d", len(r.kinds[kind]), kind, n)
		}
	}

	checkCSIDriver(t, r)
	var ds appsv1.DaemonSet
	r.decode(t, "DaemonSet", "flashpv-node", &ds)
	checkNodePlugin(t, ds, baseImages)
	var cm corev1.ConfigMap
	r.decode(t, "ConfigMap", "flashpv-pools", &cm)
	if !strings.HasPrefix(cm.Data["pools"], "default=/var/lib/flashpv/") {
		t.Errorf("pool config %q is not below the pool mount", cm.Data["pools"])
	}
}

// nodeImages: the flashpv image a node plugin must run, and the prefix
// (repository and major version) of each sidecar's.
type nodeImages struct {
	flashpv  string
	sidecars map[string]string
}

var baseImages = nodeImages{flashpv: "flashpv:latest", sidecars: map[string]string{
	"csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v6.",
	"csi-resizer":     "registry.k8s.io/sig-storage/csi-resizer:v2.",
	"csi-snapshotter": "registry.k8s.io/sig-storage/csi-snapshotter:v8.",
}}

func checkCSIDriver(t *testing.T, r rendered) {
	t.Helper()
	var drv storagev1.CSIDriver
	r.decode(t, "CSIDriver", "flashpv.dev", &drv)
	s := drv.Spec
	if s.AttachRequired == nil || *s.AttachRequired || s.PodInfoOnMount == nil || *s.PodInfoOnMount ||
		s.StorageCapacity == nil || !*s.StorageCapacity || s.FSGroupPolicy == nil || *s.FSGroupPolicy != storagev1.FileFSGroupPolicy ||
		!slices.Equal(s.VolumeLifecycleModes, []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}) {
		t.Errorf("CSIDriver spec %+v", s)
	}
}

// checkNodePlugin: the rules every node plugin DaemonSet follows (the
// kustomize base's, and each node group's of the Helm chart).
func checkNodePlugin(t *testing.T, ds appsv1.DaemonSet, img nodeImages) {
	t.Helper()
	if ds.Namespace != "flashpv" {
		t.Errorf("DaemonSet in namespace %q", ds.Namespace)
	}
	pod := ds.Spec.Template.Spec
	var names []string
	for _, c := range pod.Containers {
		names = append(names, c.Name)
		priv := c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged
		if priv != (c.Name == "flashpv") {
			t.Errorf("container %s privileged=%v; only flashpv may be", c.Name, priv)
		}
		if c.Resources.Requests.Memory().IsZero() || c.Resources.Requests.Cpu().IsZero() {
			t.Errorf("container %s has no resource requests", c.Name)
		}
		if strings.Contains(c.Image, "node-driver-registrar") || strings.Contains(c.Image, "livenessprobe") {
			t.Errorf("sidecar %s is not needed: flashpv registers itself and serves /healthz", c.Image)
		}
	}
	if !slices.Equal(names, []string{"flashpv", "csi-provisioner", "csi-resizer", "csi-snapshotter"}) {
		t.Errorf("containers %v", names)
	}
	if pod.PriorityClassName != "system-node-critical" || len(pod.Tolerations) == 0 || pod.Tolerations[0].Operator != corev1.TolerationOpExists {
		t.Errorf("not scheduled on every node: priority %q, tolerations %v", pod.PriorityClassName, pod.Tolerations)
	}

	fp := pod.Containers[0]
	if fp.Image != img.flashpv {
		t.Errorf("flashpv image %q", fp.Image)
	}
	wantArgs(t, fp, "--node-id=$(NODE_NAME)", "--kubelet-registration-path=/var/lib/kubelet/plugins/flashpv.dev/csi.sock",
		"--endpoint=unix:///var/lib/kubelet/plugins/flashpv.dev/csi.sock", "--pools-file=/etc/flashpv/pools", "--health-address=:9808")
	if fp.LivenessProbe == nil || fp.LivenessProbe.HTTPGet == nil || fp.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("flashpv liveness probe %+v", fp.LivenessProbe)
	}
	if fp.Env[0].Name != "NODE_NAME" || fp.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME not from the downward API: %+v", fp.Env)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range fp.VolumeMounts {
		mounts[m.MountPath] = m
	}
	for _, p := range []string{"/var/lib/kubelet/plugins", "/var/lib/kubelet/pods"} {
		if m, ok := mounts[p]; !ok || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
			t.Errorf("%s must be mounted with Bidirectional propagation: %+v", p, m)
		}
	}
	for _, p := range []string{"/dev", "/var/lib/kubelet/plugins_registry", "/var/lib/flashpv", "/etc/flashpv"} {
		if _, ok := mounts[p]; !ok {
			t.Errorf("flashpv lacks a mount at %s", p)
		}
	}

	prov := pod.Containers[1]
	wantArgs(t, prov, "--node-deployment=true", "--strict-topology=true", "--enable-capacity=true",
		"--capacity-ownerref-level=1", "--feature-gates=Topology=true", "--csi-address=/csi/csi.sock")
	if !strings.HasPrefix(prov.Image, img.sidecars[prov.Name]) {
		t.Errorf("provisioner image %s", prov.Image)
	}
	env := map[string]bool{}
	for _, e := range prov.Env {
		env[e.Name] = e.ValueFrom != nil && e.ValueFrom.FieldRef != nil
	}
	for _, e := range []string{"NODE_NAME", "NAMESPACE", "POD_NAME"} {
		if !env[e] {
			t.Errorf("provisioner lacks %s from the downward API", e)
		}
	}
	res := pod.Containers[2]
	wantArgs(t, res, "--leader-election=true", "--csi-address=/csi/csi.sock")
	if !strings.HasPrefix(res.Image, img.sidecars[res.Name]) {
		t.Errorf("resizer image %s", res.Image)
	}

	snap := pod.Containers[3]
	wantArgs(t, snap, "--node-deployment=true", "--csi-address=/csi/csi.sock", "--feature-gates=CSIVolumeGroupSnapshot=false")
	if !strings.HasPrefix(snap.Image, img.sidecars[snap.Name]) {
		t.Errorf("snapshotter image %s", snap.Image)
	}
	if len(snap.Env) != 1 || snap.Env[0].Name != "NODE_NAME" || snap.Env[0].ValueFrom == nil || snap.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("snapshotter's NODE_NAME not from the downward API: %+v", snap.Env)
	}
	if len(snap.VolumeMounts) != 1 || snap.VolumeMounts[0].MountPath != "/csi" {
		t.Errorf("snapshotter mounts %+v, want the socket only", snap.VolumeMounts)
	}
}

func wantArgs(t *testing.T, c corev1.Container, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(c.Args, w) {
			t.Errorf("container %s lacks %s (has %v)", c.Name, w, c.Args)
		}
	}
}

// allowed is the most each resource may be granted: what the three
// sidecars need in node deployment, nothing more.
var allowed = map[string][]string{
	"/persistentvolumes":                  {"get", "list", "watch", "create", "patch", "delete"},
	"/persistentvolumeclaims":             {"get", "list", "watch", "update"},
	"/persistentvolumeclaims/status":      {"patch"},
	"/nodes":                              {"get", "list", "watch"},
	"/events":                             {"create", "update", "patch"},
	"/pods":                               {"get"},
	"storage.k8s.io/storageclasses":       {"get", "list", "watch"},
	"storage.k8s.io/csinodes":             {"get", "list", "watch"},
	"storage.k8s.io/csistoragecapacities": {"get", "list", "watch", "create", "update", "patch", "delete"},
	"apps/daemonsets":                     {"get"},
	"coordination.k8s.io/leases":          {"get", "list", "watch", "create", "update", "delete"},
	// snapshotter: no create or delete (the snapshot-controller's), no
	// secrets; provisioner: reads a restore's snapshot, keeps a finalizer on it.
	"snapshot.storage.k8s.io/volumesnapshots":               {"get", "list", "watch", "update"},
	"snapshot.storage.k8s.io/volumesnapshotclasses":         {"get", "list", "watch"},
	"snapshot.storage.k8s.io/volumesnapshotcontents":        {"get", "list", "watch", "patch"},
	"snapshot.storage.k8s.io/volumesnapshotcontents/status": {"update", "patch"},
}

func checkRules(t *testing.T, who string, rules []rbacv1.PolicyRule, namespaced map[string]bool) {
	t.Helper()
	for _, rule := range rules {
		if len(rule.ResourceNames) == 0 && len(rule.NonResourceURLs) > 0 {
			t.Errorf("%s grants non-resource URLs", who)
		}
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				key := g + "/" + res
				ok, known := allowed[key]
				if !known {
					t.Errorf("%s grants %s, which no sidecar needs", who, key)
					continue
				}
				if namespaced != nil && !namespaced[key] {
					t.Errorf("%s grants %s cluster-wide; it is only needed in flashpv's namespace", who, key)
				}
				for _, v := range rule.Verbs {
					if !slices.Contains(ok, v) {
						t.Errorf("%s grants %s on %s", who, v, key)
					}
				}
			}
		}
	}
}

func TestRBACLeastPrivilege(t *testing.T) {
	checkNodeRBAC(t, render(t, "../../deploy/kubernetes"))
}

// checkNodeRBAC: the node plugins' ServiceAccount gets what the sidecars
// need, cluster-wide only where they need it there.
func checkNodeRBAC(t *testing.T, r rendered) {
	t.Helper()
	var cr rbacv1.ClusterRole
	r.decode(t, "ClusterRole", "flashpv-node", &cr)
	checkRules(t, "ClusterRole", cr.Rules, map[string]bool{
		"/persistentvolumes": true, "/persistentvolumeclaims": true, "/persistentvolumeclaims/status": true,
		"/nodes": true, "/events": true, "storage.k8s.io/storageclasses": true, "storage.k8s.io/csinodes": true,
		"snapshot.storage.k8s.io/volumesnapshotclasses": true, "snapshot.storage.k8s.io/volumesnapshotcontents": true,
		"snapshot.storage.k8s.io/volumesnapshots":               true,
		"snapshot.storage.k8s.io/volumesnapshotcontents/status": true,
	})
	var role rbacv1.Role
	r.decode(t, "Role", "flashpv-node", &role)
	checkRules(t, "Role", role.Rules, nil)
	var crb rbacv1.ClusterRoleBinding
	r.decode(t, "ClusterRoleBinding", "flashpv-node", &crb)
	if crb.Subjects[0].Name != "flashpv-node" || crb.Subjects[0].Namespace != "flashpv" || crb.RoleRef.Name != "flashpv-node" {
		t.Errorf("binding %+v", crb)
	}
}

func TestExampleOverlay(t *testing.T) {
	r := render(t, "../../deploy/overlays/example")
	var ds appsv1.DaemonSet
	r.decode(t, "DaemonSet", "flashpv-node", &ds)
	if img := ds.Spec.Template.Spec.Containers[0].Image; img != "registry.example.com/storage/flashpv:v0.1.0" {
		t.Errorf("image %s", img)
	}
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.Name == "pools" && v.HostPath.Path != "/mnt/nvme0/flashpv" {
			t.Errorf("pool host path %s", v.HostPath.Path)
		}
	}
	var base appsv1.DaemonSet
	render(t, "../../deploy/kubernetes").decode(t, "DaemonSet", "flashpv-node", &base)
	if n, want := len(ds.Spec.Template.Spec.Volumes), len(base.Spec.Template.Spec.Volumes); n != want {
		t.Errorf("%d volumes after the overlay, want the base's %d", n, want)
	}
	var cm corev1.ConfigMap
	r.decode(t, "ConfigMap", "flashpv-pools", &cm)
	if !strings.HasPrefix(cm.Data["pools"], "nvme=/var/lib/flashpv/pool") {
		t.Errorf("pools %q", cm.Data["pools"])
	}
}
