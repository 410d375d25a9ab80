package deploy

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

// controllerAllowed is the most `flashpv controller` may be granted.
var controllerAllowed = map[string][]string{
	"/nodes":                        {"get", "list", "watch"},
	"/persistentvolumes":            {"get", "list", "watch", "update", "delete"},
	"/persistentvolumeclaims":       {"get", "list", "watch", "delete"},
	"/pods":                         {"list", "watch"},
	"storage.k8s.io/storageclasses": {"list", "watch"},
	"/events":                       {"create", "patch", "update"},
}

// Named: get and update only of its own Lease and ConfigMap.
var controllerNamespaced = map[string][]string{
	"coordination.k8s.io/leases": {"create", "get", "update"},
	"/configmaps":                {"create", "get", "update"},
}

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
				}
			}
		}
	}
}

func TestController(t *testing.T) {
	r := render(t, "../../deploy/kubernetes")
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
	if c.Image != "flashpv:latest" || len(c.Args) == 0 || c.Args[0] != "controller" {
		t.Errorf("controller runs %s %v; want the flashpv image's controller subcommand", c.Image, c.Args)
	}
	wantArgs(t, c, "--namespace=$(POD_NAMESPACE)", "--health-address=:9809")
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

	// The node plugin reads the controller's volume lists from a mount.
	var ds appsv1.DaemonSet
	r.decode(t, "DaemonSet", "flashpv-node", &ds)
	wantArgs(t, ds.Spec.Template.Spec.Containers[0], "--volume-list-dir=/etc/flashpv-volumes")
	found := false
	for _, v := range ds.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == "flashpv-volumes" {
			found = v.ConfigMap.Optional != nil && *v.ConfigMap.Optional
		}
	}
	if !found {
		t.Error("the DaemonSet does not mount the optional flashpv-volumes ConfigMap")
	}
}
