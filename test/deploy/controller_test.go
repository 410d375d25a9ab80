package deploy

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// controllerAllowed is the most `flashpv controller` may be granted.
var controllerAllowed = map[string][]string{
	"/nodes":                        {"get", "list", "watch"},
	"/persistentvolumes":            {"get", "list", "watch", "create", "update", "patch", "delete"},
	"/persistentvolumeclaims":       {"get", "list", "watch", "patch", "delete"},
	"/pods":                         {"list", "watch", "delete"},
	"storage.k8s.io/storageclasses": {"get", "list", "watch"},
	"/events":                       {"create", "patch", "update"},
	// The transfer broker: node plugins' tokens, a restore's snapshot.
	"authentication.k8s.io/tokenreviews":             {"create"},
	"snapshot.storage.k8s.io/volumesnapshots":        {"get", "create", "delete"},
	"snapshot.storage.k8s.io/volumesnapshotcontents": {"get"},
	"snapshot.storage.k8s.io/volumesnapshotclasses":  {"list"},
	// Moves: the target nodes' capacity.
	"storage.k8s.io/csistoragecapacities": {"list", "watch"},
}

// Named: get and update only of its own Lease, ConfigMaps and Secret.
var controllerNamespaced = map[string][]string{
	"coordination.k8s.io/leases": {"create", "get", "update"},
	"/configmaps":                {"create", "get", "update"},
	"/secrets":                   {"create", "get"},
}

// controllerNames are the only objects of its namespace it may read or write.
var controllerNames = []string{"flashpv-controller", "flashpv-volumes", "flashpv-status", "flashpv-transfer-trust", "flashpv-transfer-key"}

func checkControllerRules(t *testing.T, who string, rules []rbacv1.PolicyRule, allowed map[string][]string) {
	t.Helper()
	for _, rule := range rules {
		for _, g := range rule.APIGroups {
			for _, res := range rule.Resources {
				key := g + "/" + res
				ok, known := allowed[key]
				if !known {
					t.Errorf("%s grants %s, which the controller does not need", who, key)
					continue
				}
				for _, v := range rule.Verbs {
					if !slices.Contains(ok, v) {
						t.Errorf("%s grants %s on %s", who, v, key)
					}
					if allowed[key] != nil && v != "create" && len(rule.ResourceNames) == 0 && controllerNamespaced[key] != nil {
						t.Errorf("%s grants %s on every %s; only on its own", who, v, key)
					}
					for _, name := range rule.ResourceNames {
						if controllerNamespaced[key] != nil && !slices.Contains(controllerNames, name) {
							t.Errorf("%s grants %s on %s %s, which is not the controller's", who, v, key, name)
						}
					}
				}
			}
		}
	}
}

func TestController(t *testing.T) {
	checkController(t, render(t, "../../deploy/kubernetes"), "flashpv:latest", 9811, "flashpv-node")
}

// checkController: the controller's RBAC, pod and broker, and what the
// node plugin DaemonSets (named; their transfer servers on nodePort) take
// from it.
func checkController(t *testing.T, r rendered, image string, nodePort int, daemonSets ...string) {
	t.Helper()
	var cr rbacv1.ClusterRole
	r.decode(t, "ClusterRole", "flashpv-controller", &cr)
	checkControllerRules(t, "ClusterRole", cr.Rules, controllerAllowed)
	var role rbacv1.Role
	r.decode(t, "Role", "flashpv-controller", &role)
	checkControllerRules(t, "Role", role.Rules, controllerNamespaced)
	var crb rbacv1.ClusterRoleBinding
	r.decode(t, "ClusterRoleBinding", "flashpv-controller", &crb)
	if crb.Subjects[0].Name != "flashpv-controller" || crb.Subjects[0].Namespace != "flashpv" || crb.RoleRef.Name != "flashpv-controller" {
		t.Errorf("binding %+v", crb)
	}

	var d appsv1.Deployment
	r.decode(t, "Deployment", "flashpv-controller", &d)
	pod := d.Spec.Template.Spec
	if pod.ServiceAccountName != "flashpv-controller" || len(pod.Containers) != 1 {
		t.Fatalf("controller pod %+v", pod)
	}
	c := pod.Containers[0]
	if c.Image != image || len(c.Args) == 0 || c.Args[0] != "controller" {
		t.Errorf("controller runs %s %v; want the flashpv image's controller subcommand", c.Image, c.Args)
	}
	wantArgs(t, c, "--namespace=$(POD_NAMESPACE)", "--health-address=:9809", "--transfer-address=:9810", fmt.Sprintf("--transfer-node-port=%d", nodePort))
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.Privileged != nil && *sc.Privileged ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("controller security context %+v", sc)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Errorf("controller liveness probe %+v", c.LivenessProbe)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("want a standby replica")
	}
	for _, name := range daemonSets {
		var ds appsv1.DaemonSet
		r.decode(t, "DaemonSet", name, &ds)
		checkBroker(t, r, d, ds, nodePort)

		// The node plugin reads the controller's volume lists from a mount.
		wantArgs(t, ds.Spec.Template.Spec.Containers[0], "--volume-list-dir=/etc/flashpv-volumes")
		found := false
		for _, v := range ds.Spec.Template.Spec.Volumes {
			if v.ConfigMap != nil && v.ConfigMap.Name == "flashpv-volumes" {
				found = v.ConfigMap.Optional != nil && *v.ConfigMap.Optional
			}
		}
		if !found {
			t.Errorf("DaemonSet %s does not mount the optional flashpv-volumes ConfigMap", name)
		}
	}
}

// checkBroker: the Service node plugins reach the broker by, in front of
// the controller's transfer port, and the node plugin pods the controller
// looks for as transfer sources.
func checkBroker(t *testing.T, r rendered, d appsv1.Deployment, ds appsv1.DaemonSet, nodePort int) {
	t.Helper()
	c := d.Spec.Template.Spec.Containers[0]
	port := map[string]int32{}
	for _, p := range c.Ports {
		port[p.Name] = p.ContainerPort
	}
	if port["transfer"] != 9810 {
		t.Errorf("controller ports %v: want transfer 9810", c.Ports)
	}
	if p := c.ReadinessProbe; p == nil || p.TCPSocket == nil || p.TCPSocket.Port.String() != "transfer" {
		t.Errorf("controller readiness probe %+v: want the transfer port", p)
	}
	var svc corev1.Service
	r.decode(t, "Service", "flashpv-controller", &svc)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "transfer" || svc.Spec.Ports[0].Port != 9810 ||
		svc.Spec.Ports[0].TargetPort.String() != "transfer" {
		t.Errorf("Service ports %+v", svc.Spec.Ports)
	}
	if !maps.Equal(svc.Spec.Selector, d.Spec.Template.Labels) {
		t.Errorf("Service selects %v, the controller pods are %v", svc.Spec.Selector, d.Spec.Template.Labels)
	}
	var selector string
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--node-pod-label="); ok {
			selector = v
		}
	}
	sel, err := labels.Parse(selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) || sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("--node-pod-label %q (%v) must select the node plugin pods %v and not the controller's", selector, err, ds.Spec.Template.Labels)
	}
	wantArgs(t, ds.Spec.Template.Spec.Containers[0], fmt.Sprintf("--transfer-address=:%d", nodePort),
		"--transfer-broker=https://$(FLASHPV_CONTROLLER_SERVICE_HOST):$(FLASHPV_CONTROLLER_SERVICE_PORT_TRANSFER)")
}
