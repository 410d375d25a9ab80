package clustercontroller

// The other direction of test/deploy's RBAC check (which refuses
// over-granting): every request the controller's code makes is one the
// deployed ClusterRole and Role grant. The whole controller (run, as Run
// wires it: informers, the Lease, Events, node loss, volume lists, the
// transfer broker's keys, moves) and the broker's authenticator and
// authorizer run against fake clients that record each request, on a
// cluster where every one of them has work: a lost node with an opted-in
// claim, a claim asking for a move, a restore and a clone. Without a
// cluster. Not reached here: a move's steps after its snapshot (no
// snapshot-controller makes it ready, no node answers orders) and the
// removal of the provisioner's finalizer (the fake deletes at once); the
// apiserver-tagged tests take those with the deployed RBAC.

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/flashpv/flashpv/pkg/mover"
	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// apiCall is one request as RBAC sees it.
type apiCall struct {
	verb, group, resource, subresource, namespace, name string
}

func (c apiCall) String() string {
	res := c.resource
	if c.subresource != "" {
		res += "/" + c.subresource
	}
	if c.group != "" {
		res += "." + c.group
	}
	where := c.name
	if c.namespace != "" {
		where = c.namespace + "/" + c.name
	}
	return fmt.Sprintf("%s %s %s", c.verb, res, where)
}

// callLog records every request made through the fakes it watches.
type callLog struct {
	mu    sync.Mutex
	calls map[apiCall]bool
}

func (l *callLog) watch(f *k8stesting.Fake) {
	f.PrependReactor("*", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		l.add(a)
		return false, nil, nil
	})
	f.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		l.add(a)
		return false, nil, nil
	})
}

func (l *callLog) add(a k8stesting.Action) {
	gvr := a.GetResource()
	c := apiCall{verb: a.GetVerb(), group: gvr.Group, resource: gvr.Resource, subresource: a.GetSubresource(), namespace: a.GetNamespace()}
	// RBAC sees a name on get, update, patch and delete; never on create,
	// list or watch.
	switch a := a.(type) {
	case k8stesting.GetAction:
		c.name = a.GetName()
	case k8stesting.DeleteAction:
		c.name = a.GetName()
	case k8stesting.PatchAction:
		c.name = a.GetName()
	case k8stesting.UpdateAction:
		if m, err := meta.Accessor(a.GetObject()); err == nil && c.verb == "update" {
			c.name = m.GetName()
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls[c] = true
}

func (l *callLog) sorted() []apiCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []apiCall
	for c := range l.calls {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// deployedRules are the rules of the controller's ClusterRole and Role in
// deploy/kubernetes (which the Helm chart links to).
func deployedRules(t *testing.T) (cluster, namespaced []rbacv1.PolicyRule) {
	t.Helper()
	var cr rbacv1.ClusterRole
	var role rbacv1.Role
	for path, obj := range map[string]any{"controller-clusterrole.yaml": &cr, "controller-role.yaml": &role} {
		b, err := os.ReadFile("../../deploy/kubernetes/" + path)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(b, obj); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	if cr.Name != "flashpv-controller" || role.Name != "flashpv-controller" {
		t.Fatalf("read ClusterRole %q and Role %q", cr.Name, role.Name)
	}
	return cr.Rules, role.Rules
}

// grants is RBAC's rule match: verb, group and resource (or
// resource/subresource) listed or *, and a name among resourceNames when
// the rule has any (a request without a name, list or create, then never
// matches).
func grants(rules []rbacv1.PolicyRule, c apiCall) bool {
	has := func(list []string, v string) bool { return slices.Contains(list, v) || slices.Contains(list, "*") }
	res := c.resource
	if c.subresource != "" {
		res += "/" + c.subresource
	}
	for _, r := range rules {
		if has(r.Verbs, c.verb) && has(r.APIGroups, c.group) && has(r.Resources, res) &&
			(len(r.ResourceNames) == 0 || c.name != "" && slices.Contains(r.ResourceNames, c.name)) {
			return true
		}
	}
	return false
}

// rbacWorld is the authorizer's world (transfer_authz_test.go) with live
// nodes n1 and n2, capacity on n2, a move of claim apps/src to n2, and a
// claim of a Recreate class on a node gone for good.
func rbacWorld() (objs, dyn []runtime.Object) {
	w := newWorld()
	w.claim("src").Annotations = map[string]string{mover.AnnRequest: "n2"}
	pv := w.pvs[0]
	pv.Spec.StorageClassName = "flashpv"
	pv.Spec.Capacity = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}
	pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete

	lostClaim := testClaim("lost", "lost-uid")
	lostClaim.Spec.StorageClassName = ptr("recreate")
	lostClaim.Spec.VolumeName, lostClaim.Status.Phase = "pv-lost", corev1.ClaimBound
	lostPV := testPV("pv-lost", "gone", wellknown.DriverName)
	lostPV.Finalizers = []string{nodeloss.ProvisionerFinalizer}
	lostPV.Spec.StorageClassName = "recreate"
	lostPV.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
	lostPV.Spec.ClaimRef = &corev1.ObjectReference{Namespace: "apps", Name: "lost", UID: "lost-uid"}
	w.claims = append(w.claims, lostClaim)
	w.pvs = append(w.pvs, lostPV)
	w.classes = append(w.classes, testClass("recreate", wellknown.DriverName, map[string]string{wellknown.ParamNodeLossPolicy: wellknown.NodeLossRecreate}))

	app := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "db-0", UID: "db-0-uid"},
		Spec: corev1.PodSpec{NodeName: "n1", Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "src"}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	objs = append(objs, app)
	for _, n := range []string{"n1", "n2"} {
		objs = append(objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{wellknown.TopologyKey: n}},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}})
	}
	objs = append(objs, &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "csisc-n2"},
		StorageClassName: "flashpv", Capacity: ptr(resource.MustParse("10Gi")),
		NodeTopology: &metav1.LabelSelector{MatchLabels: map[string]string{wellknown.TopologyKey: "n2"}}})
	for _, c := range w.claims {
		objs = append(objs, c)
	}
	for _, c := range w.classes {
		objs = append(objs, c)
	}
	for _, pv := range w.pvs {
		objs = append(objs, pv)
	}
	for _, p := range w.pods {
		objs = append(objs, p)
	}
	class := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
		"metadata": map[string]any{"name": "flashpv"}, "driver": wellknown.DriverName, "deletionPolicy": "Delete",
	}}
	return objs, []runtime.Object{w.snapshot, w.content, class}
}

// TestControllerRBACGrantsEveryCall: see the top of this file.
func TestControllerRBACGrantsEveryCall(t *testing.T) {
	objs, dynObjs := rbacWorld()
	client := fake.NewClientset(objs...)
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}:        "VolumeSnapshotList",
		{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotcontents"}: "VolumeSnapshotContentList",
		{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotclasses"}:  "VolumeSnapshotClassList",
	}, dynObjs...)
	log := &callLog{calls: map[apiCall]bool{}}
	log.watch(&client.Fake)
	log.watch(&dyn.Fake)

	var opts Options
	opts.AddFlags(flag.NewFlagSet("flashpv controller", flag.ContinueOnError))
	opts.Namespace = testNS
	opts.HealthAddress = ""
	opts.Transfer.Address = "127.0.0.1:0"
	opts.NodeStatusPort = 0
	opts.NodeLossGrace = time.Millisecond
	opts.Resync, opts.MoveResync = 100*time.Millisecond, 100*time.Millisecond
	opts.LeaseDuration, opts.RenewDeadline, opts.RetryPeriod = 2*time.Second, time.Second, 200*time.Millisecond

	// The broker's side of a node plugin's request: its token and grants.
	w := wire(opts, client, dyn)
	b, err := w.transferBroker()
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(context.Background())
	w.factory.Start(bctx.Done())
	w.factory.WaitForCacheSync(bctx.Done())
	_, _ = b.authn.Authenticate(bctx, "token")
	if _, _, err := b.authz.Authorize(bctx, "n2", restoreReq); err != nil {
		t.Errorf("restore: %v", err)
	}
	if _, _, err := b.authz.Authorize(bctx, "n2", cloneReq); err != nil {
		t.Errorf("clone: %v", err)
	}
	bcancel()

	// The controller as deployed, until the work above has been done (a
	// move waits for its snapshot there, which no snapshot-controller
	// makes ready) or for a bounded time.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	done := make(chan error, 1)
	go func() { done <- wire(opts, client, dyn).run(ctx) }()
	// What the run must get to, or the test checks less than it says.
	want := []apiCall{
		{verb: "update", group: "coordination.k8s.io", resource: "leases", namespace: testNS, name: "flashpv-controller"},
		{verb: "update", resource: "configmaps", namespace: testNS, name: "flashpv-volumes"},
		{verb: "create", resource: "secrets", namespace: testNS},
		{verb: "delete", resource: "persistentvolumeclaims", namespace: "apps", name: "lost"},
		{verb: "delete", resource: "persistentvolumes", name: "pv-lost"},
		{verb: "list", group: "snapshot.storage.k8s.io", resource: "volumesnapshotclasses"},
		{verb: "create", group: "snapshot.storage.k8s.io", resource: "volumesnapshots", namespace: "apps"},
		{verb: "create", resource: "events", namespace: "apps"},
		{verb: "watch", group: "storage.k8s.io", resource: "csistoragecapacities"},
	}
	for slices.ContainsFunc(want, func(c apiCall) bool { return !log.has(c) }) && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range want {
		if !log.has(c) {
			t.Errorf("the controller never made %s: the test does not reach what it means to", c)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}

	cluster, namespaced := deployedRules(t)
	var lines []string
	for _, c := range log.sorted() {
		ok := grants(cluster, c) || c.namespace == testNS && grants(namespaced, c)
		mark := "  "
		if !ok {
			mark = "NO"
			t.Errorf("the controller calls %s, which its ClusterRole and Role do not grant", c)
		}
		lines = append(lines, mark+" "+c.String())
	}
	t.Logf("requests made:\n%s", strings.Join(lines, "\n"))
}

func (l *callLog) has(want apiCall) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls[want]
}
