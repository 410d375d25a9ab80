package deploy

import (
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

// snapshotControllerAllowed is the most the snapshot-controller may be
// granted cluster-wide: VolumeSnapshots without group snapshots, and nodes
// for distributed snapshotting.
var snapshotControllerAllowed = map[string][]string{
	"/persistentvolumes":      {"get", "list", "watch"},
	"/persistentvolumeclaims": {"get", "list", "watch", "update"},
	"/nodes":                  {"get", "list", "watch"},
	"/events":                 {"create", "update", "patch"},
	"snapshot.storage.k8s.io/volumesnapshotclasses":  {"get", "list", "watch"},
	"snapshot.storage.k8s.io/volumesnapshotcontents": {"get", "list", "watch", "create", "patch", "delete"},
	"snapshot.storage.k8s.io/volumesnapshots":        {"get", "list", "watch", "update", "patch"},
	"snapshot.storage.k8s.io/volumesnapshots/status": {"update", "patch"},
}

// TestSnapshotController: deploy/kubernetes/snapshot-controller stands
// alone (clusters that have a snapshot-controller skip it), runs with
// distributed snapshotting and is granted no more than it uses.
func TestSnapshotController(t *testing.T) {
	r := render(t, "../../deploy/kubernetes/snapshot-controller")
	for kind, n := range map[string]int{"ServiceAccount": 1, "ClusterRole": 1, "ClusterRoleBinding": 1, "Role": 1, "RoleBinding": 1, "Deployment": 1} {
		if len(r.kinds[kind]) != n {
			t.Errorf("%d %s objects, want %d", len(r.kinds[kind]), kind, n)
		}
	}
	if len(r.kinds) != 6 {
		t.Errorf("kinds %v", r.kinds)
	}
	checkSnapshotController(t, r, "registry.k8s.io/sig-storage/snapshot-controller:v8.", "kube-system")
}

// checkSnapshotController: in its namespace, distributed snapshotting, the
// image (prefix), and no more RBAC than it uses.
func checkSnapshotController(t *testing.T, r rendered, image, namespace string) {
	t.Helper()
	var d appsv1.Deployment
	r.decode(t, "Deployment", "snapshot-controller", &d)
	if d.Namespace != namespace {
		t.Errorf("Deployment in namespace %q", d.Namespace)
	}
	c := d.Spec.Template.Spec.Containers[0]
	wantArgs(t, c, "--enable-distributed-snapshotting=true", "--leader-election=true", "--feature-gates=CSIVolumeGroupSnapshot=false")
	if !strings.HasPrefix(c.Image, image) {
		t.Errorf("image %s", c.Image)
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("container %+v", c)
	}

	var cr rbacv1.ClusterRole
	r.decode(t, "ClusterRole", "snapshot-controller", &cr)
	checkControllerRules(t, "snapshot-controller ClusterRole", cr.Rules, snapshotControllerAllowed)
	var role rbacv1.Role
	r.decode(t, "Role", "snapshot-controller", &role)
	for _, rule := range role.Rules {
		for _, v := range rule.Verbs {
			if !slices.Equal(rule.Resources, []string{"leases"}) || v != "create" && !slices.Equal(rule.ResourceNames, []string{"snapshot-controller-leader"}) {
				t.Errorf("Role grants %s on %v %v; want only its own Lease", v, rule.Resources, rule.ResourceNames)
			}
		}
	}
	var crb rbacv1.ClusterRoleBinding
	r.decode(t, "ClusterRoleBinding", "snapshot-controller", &crb)
	if crb.Subjects[0].Name != "snapshot-controller" || crb.Subjects[0].Namespace != namespace || crb.RoleRef.Name != "snapshot-controller" {
		t.Errorf("binding %+v", crb)
	}
}
