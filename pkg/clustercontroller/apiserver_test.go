//go:build apiserver

package clustercontroller

// The controller's API code against a real kube-apiserver and etcd
// (test/apiserver), acting as the deployed controller (its ServiceAccount
// and deploy/kubernetes' RBAC): real TokenReviews of real bound tokens,
// the VolumeSnapshot CRDs' schema, resourceVersion conflicts and the
// ConfigMap size limit, none of which the fake clientset has. Races are
// injected between the code's requests by a hook on its HTTP transport.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/volumelist"
	"github.com/flashpv/flashpv/pkg/wellknown"
	"github.com/flashpv/flashpv/test/apiserver"
)

var srv *apiserver.Server

func TestMain(m *testing.M) { os.Exit(apiserver.Main(m, &srv)) }

// controller is the clients of the deployed controller in a test's
// namespace, with a hook run before each of their requests.
type controller struct {
	ns      string
	client  kubernetes.Interface
	dynamic dynamic.Interface

	mu   sync.Mutex
	hook func(*http.Request)
}

type hookTransport struct {
	c    *controller
	next http.RoundTripper
}

func (h hookTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	h.c.mu.Lock()
	hook := h.c.hook
	h.c.mu.Unlock()
	if hook != nil {
		hook(req)
	}
	return h.next.RoundTrip(req)
}

func newController(t *testing.T) *controller {
	t.Helper()
	c := &controller{ns: srv.Namespace(t)}
	cfg := srv.ControllerConfig(t, c.ns)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return hookTransport{c: c, next: rt} }
	var err error
	if c.client, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if c.dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	return c
}

// once sets a hook that runs f before the first request matching method
// and path; it reports whether it ran.
func (c *controller) once(method, path string, f func()) func() bool {
	ran := false
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hook = func(req *http.Request) {
		if ran || req.Method != method || req.URL.Path != path {
			return
		}
		ran = true
		f()
	}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.hook = nil
		return ran
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func brokerCode(err error) string {
	var e *broker.Error
	if errors.As(err, &e) {
		return e.Code
	}
	if err != nil {
		return broker.CodeInternal
	}
	return ""
}

func makePod(t *testing.T, ns, name, node, serviceAccount string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/name": "flashpv"}},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: serviceAccount,
			Containers: []corev1.Container{{Name: "flashpv", Image: "flashpv"}}},
	}
	return must[*corev1.Pod](t)(srv.Client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}))
}

func makeNode(t *testing.T, name string) {
	t.Helper()
	must[*corev1.Node](t)(srv.Client.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}))
}

func podLister(t *testing.T, ns string) corelisters.PodLister {
	t.Helper()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	pods := must[*corev1.PodList](t)(srv.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{}))
	for i := range pods.Items {
		if err := idx.Add(&pods.Items[i]); err != nil {
			t.Fatal(err)
		}
	}
	return corelisters.NewPodLister(idx)
}

// Real bound ServiceAccount tokens (TokenRequest), reviewed by the real
// API server: the node plugin's token bound to its pod names the pod's
// node; a token for another audience, of another ServiceAccount, bound to
// nothing, or of a pod since deleted (or replaced under its name) is
// refused.
func TestAPIServerTokenReview(t *testing.T) {
	ctx := context.Background()
	c := newController(t)
	node := c.ns + "-n1"
	makeNode(t, node)
	must[*corev1.ServiceAccount](t)(srv.Client.CoreV1().ServiceAccounts(c.ns).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "flashpv-node"}}, metav1.CreateOptions{}))
	plugin := makePod(t, c.ns, "flashpv-node-a", node, "flashpv-node")
	other := makePod(t, c.ns, "other", node, "default")
	token := func(sa string, pod *corev1.Pod, audience string) string {
		t.Helper()
		req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}}}
		if pod != nil {
			req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		}
		tr := must[*authnv1.TokenRequest](t)(srv.Client.CoreV1().ServiceAccounts(c.ns).CreateToken(ctx, sa, req, metav1.CreateOptions{}))
		return tr.Status.Token
	}
	a := &tokenAuthenticator{client: c.client, namespace: c.ns, serviceAccount: "flashpv-node", pods: podLister(t, c.ns)}
	good := token("flashpv-node", plugin, broker.Audience)
	for _, tc := range []struct {
		name, token, node string
	}{
		{"bound to the node plugin's pod", good, node},
		{"another audience", token("flashpv-node", plugin, "https://kubernetes.default.svc.cluster.local"), ""},
		{"another ServiceAccount", token("default", other, broker.Audience), ""},
		{"bound to nothing", token("flashpv-node", nil, broker.Audience), ""},
		{"not a token", "x" + good[1:], ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := a.Authenticate(ctx, tc.token)
			if tc.node != "" {
				if err != nil || got != tc.node {
					t.Fatalf("node %q, %v; want %s", got, err, tc.node)
				}
				return
			}
			if code := brokerCode(err); got != "" || code != broker.CodeUnauthenticated {
				t.Fatalf("node %q, %v; want %s", got, err, broker.CodeUnauthenticated)
			}
		})
	}
	// The server caches a successful review for 10 s: right after the
	// pod is gone it still says the token is valid. The pod cache must
	// not (a deleted pod may still be on its way into the cache: try
	// again).
	zero := int64(0)
	if err := srv.Client.CoreV1().Pods(c.ns).Delete(ctx, plugin.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	a.pods = podLister(t, c.ns)
	if got, err := a.Authenticate(ctx, good); got != "" || (brokerCode(err) != broker.CodeUnauthenticated && brokerCode(err) != broker.CodeUnavailable) {
		t.Errorf("token of a deleted pod: node %q, %v", got, err)
	}
	makePod(t, c.ns, plugin.Name, node, "flashpv-node")
	a.pods = podLister(t, c.ns)
	if got, err := a.Authenticate(ctx, good); got != "" || brokerCode(err) != broker.CodeUnauthenticated {
		t.Errorf("token of a pod replaced under its name: node %q, %v", got, err)
	}
}

// grantWorld: node plugins on n1 (source) and n2 (target); claim src
// bound to a flashpv PV on n1; a VolumeSnapshot of it bound to its
// content (made on n1); claims restore (of the snapshot) and clone (of
// src), pending, selected for n2, in a flashpv class.
type grantWorld struct {
	n1, n2, class, pv, content string
	restore, clone             *corev1.PersistentVolumeClaim
}

func newGrantWorld(t *testing.T, c *controller) *grantWorld {
	t.Helper()
	ctx := context.Background()
	w := &grantWorld{n1: c.ns + "-n1", n2: c.ns + "-n2", class: c.ns + "-flashpv", pv: c.ns + "-pv-src", content: c.ns + "-content"}
	for i, n := range []string{w.n1, w.n2} {
		makeNode(t, n)
		p := makePod(t, c.ns, fmt.Sprintf("flashpv-node-%d", i+1), n, "")
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.0.0.%d", i+1),
			PodIPs:     []corev1.PodIP{{IP: fmt.Sprintf("10.0.0.%d", i+1)}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		must[*corev1.Pod](t)(srv.Client.CoreV1().Pods(c.ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}))
	}
	wffc := storagev1.VolumeBindingWaitForFirstConsumer
	must[*storagev1.StorageClass](t)(srv.Client.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{Name: w.class}, Provisioner: wellknown.DriverName, VolumeBindingMode: &wffc}, metav1.CreateOptions{}))
	claim := func(name, volume string, selected string, ds *corev1.TypedObjectReference) *corev1.PersistentVolumeClaim {
		pvc := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.ns},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
				StorageClassName: &w.class, VolumeName: volume, DataSourceRef: ds,
			},
		}
		if selected != "" {
			pvc.Annotations = map[string]string{annSelectedNode: selected}
		}
		return must[*corev1.PersistentVolumeClaim](t)(srv.Client.CoreV1().PersistentVolumeClaims(c.ns).Create(ctx, pvc, metav1.CreateOptions{}))
	}
	src := claim("src", w.pv, "", nil)
	pv := testPV(w.pv, w.n1, wellknown.DriverName)
	pv.Spec.Capacity = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}
	pv.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	pv.Spec.StorageClassName = w.class
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: c.ns, Name: "src", UID: src.UID}
	must[*corev1.PersistentVolume](t)(srv.Client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}))

	snapGroup := snapshotGroup
	vs := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": snapshotGroup + "/v1", "kind": "VolumeSnapshot",
		"metadata": map[string]any{"name": "snap", "namespace": c.ns},
		"spec":     map[string]any{"source": map[string]any{"persistentVolumeClaimName": "src"}},
	}}
	vs = must[*unstructured.Unstructured](t)(srv.Dynamic.Resource(snapshotsGVR).Namespace(c.ns).Create(ctx, vs, metav1.CreateOptions{}))
	content := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": snapshotGroup + "/v1", "kind": "VolumeSnapshotContent",
		"metadata": map[string]any{"name": w.content, "labels": map[string]any{labelManagedBy: w.n1}},
		"spec": map[string]any{
			"driver": wellknown.DriverName, "deletionPolicy": "Delete",
			"source":            map[string]any{"volumeHandle": "default." + w.pv},
			"volumeSnapshotRef": map[string]any{"namespace": c.ns, "name": "snap", "uid": string(vs.GetUID())},
		},
	}}
	content = must[*unstructured.Unstructured](t)(srv.Dynamic.Resource(contentsGVR).Create(ctx, content, metav1.CreateOptions{}))
	if err := unstructured.SetNestedField(content.Object, "default.snap-1", "status", "snapshotHandle"); err != nil {
		t.Fatal(err)
	}
	must[*unstructured.Unstructured](t)(srv.Dynamic.Resource(contentsGVR).UpdateStatus(ctx, content, metav1.UpdateOptions{}))
	if err := unstructured.SetNestedField(vs.Object, w.content, "status", "boundVolumeSnapshotContentName"); err != nil {
		t.Fatal(err)
	}
	must[*unstructured.Unstructured](t)(srv.Dynamic.Resource(snapshotsGVR).Namespace(c.ns).UpdateStatus(ctx, vs, metav1.UpdateOptions{}))

	w.restore = claim("restore", "", w.n2, &corev1.TypedObjectReference{APIGroup: &snapGroup, Kind: "VolumeSnapshot", Name: "snap"})
	w.clone = claim("clone", "", w.n2, &corev1.TypedObjectReference{Kind: "PersistentVolumeClaim", Name: "src"})
	t.Cleanup(func() {
		_ = srv.Dynamic.Resource(contentsGVR).Delete(ctx, w.content, metav1.DeleteOptions{})
		_ = srv.Client.StorageV1().StorageClasses().Delete(ctx, w.class, metav1.DeleteOptions{})
	})
	return w
}

// The broker's authorization reads the claim, its class, the
// VolumeSnapshot and its content (through the CRDs' real schema, status
// subresources included) or the source claim and PV, as the deployed
// controller: the copies the claims ask for are granted to n2 from n1's
// node plugin, anything else is not.
func TestAPIServerAuthorize(t *testing.T) {
	ctx := context.Background()
	c := newController(t)
	w := newGrantWorld(t, c)
	pvIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	a := &grantAuthorizer{client: c.client, dynamic: c.dynamic, pvs: corelisters.NewPersistentVolumeLister(pvIdx), pods: podLister(t, c.ns),
		namespace: c.ns, podSelector: labels.SelectorFromSet(labels.Set{"app.kubernetes.io/name": "flashpv"}), nodePort: 9443}
	restore := broker.GrantRequest{Kind: broker.KindSnapshot, Source: "default.snap-1", Target: "pvc-" + string(w.restore.UID),
		ClaimNamespace: c.ns, ClaimName: "restore"}
	clone := broker.GrantRequest{Kind: broker.KindVolume, Source: "default." + w.pv, Target: "pvc-" + string(w.clone.UID),
		ClaimNamespace: c.ns, ClaimName: "clone"}
	for _, tc := range []struct {
		name string
		node string
		req  broker.GrantRequest
		code string
	}{
		{"restore", w.n2, restore, ""},
		{"clone", w.n2, clone, ""},
		{"restore onto another node", w.n1, restore, broker.CodeDenied},
		{"another snapshot", w.n2, func() broker.GrantRequest { r := restore; r.Source = "default.snap-2"; return r }(), broker.CodeDenied},
		{"another volume", w.n2, func() broker.GrantRequest { r := clone; r.Source = "default.other"; return r }(), broker.CodeDenied},
		{"snapshot for the clone", w.n2, func() broker.GrantRequest { r := clone; r.Kind = broker.KindSnapshot; return r }(), broker.CodeDenied},
		{"another target", w.n2, func() broker.GrantRequest { r := restore; r.Target = "pvc-x"; return r }(), broker.CodeDenied},
		{"no such claim", w.n2, func() broker.GrantRequest { r := restore; r.ClaimName = "nope"; return r }(), broker.CodeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			source, addr, err := a.Authorize(ctx, tc.node, tc.req)
			if tc.code == "" {
				if err != nil || source != w.n1 || addr != "10.0.0.1:9443" {
					t.Fatalf("source %q at %q, %v; want %s at 10.0.0.1:9443", source, addr, err, w.n1)
				}
				return
			}
			if code := brokerCode(err); code != tc.code || source != "" {
				t.Fatalf("source %q, %v; want %s", source, err, tc.code)
			}
		})
	}
	// Without the content's node label the snapshot's node is its source
	// volume's PV's.
	content := must[*unstructured.Unstructured](t)(srv.Dynamic.Resource(contentsGVR).Get(ctx, w.content, metav1.GetOptions{}))
	content.SetLabels(nil)
	must[*unstructured.Unstructured](t)(srv.Dynamic.Resource(contentsGVR).Update(ctx, content, metav1.UpdateOptions{}))
	if _, _, err := a.Authorize(ctx, w.n2, restore); brokerCode(err) != broker.CodeNotFound {
		t.Fatalf("no node label, no PV cached: %v, want %s", err, broker.CodeNotFound)
	}
	if err := pvIdx.Add(must[*corev1.PersistentVolume](t)(srv.Client.CoreV1().PersistentVolumes().Get(ctx, w.pv, metav1.GetOptions{}))); err != nil {
		t.Fatal(err)
	}
	if source, _, err := a.Authorize(ctx, w.n2, restore); err != nil || source != w.n1 {
		t.Fatalf("no node label: source %q, %v; want %s", source, err, w.n1)
	}
}

// The volume lists: a write that meets a change made since the read is
// refused by the server (resourceVersion) and made by the next Sync.
func TestAPIServerVolumeListConflict(t *testing.T) {
	ctx := context.Background()
	c := newController(t)
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	pvs := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	_ = nodes.Add(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	_ = pvs.Add(testPV("pv-a", "n1", wellknown.DriverName))
	w, err := newListWriter(c.client, c.ns, corelisters.NewNodeLister(nodes), corelisters.NewPersistentVolumeLister(pvs), time.Hour, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	_ = pvs.Add(testPV("pv-b", "n1", wellknown.DriverName))
	cms := srv.Client.CoreV1().ConfigMaps(c.ns)
	done := c.once(http.MethodPut, "/api/v1/namespaces/"+c.ns+"/configmaps/"+volumeListName, func() {
		cm := must[*corev1.ConfigMap](t)(cms.Get(ctx, volumeListName, metav1.GetOptions{}))
		cm.Annotations = map[string]string{"operator": "was here"}
		must[*corev1.ConfigMap](t)(cms.Update(ctx, cm, metav1.UpdateOptions{}))
	})
	err = w.Sync(ctx)
	if !done() {
		t.Fatal("the writer sent no update")
	}
	if !apierrors.IsConflict(err) {
		t.Fatalf("sync: %v, want the server's conflict", err)
	}
	if err := w.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	cm := must[*corev1.ConfigMap](t)(cms.Get(ctx, volumeListName, metav1.GetOptions{}))
	l, err := volumelist.Decode([]byte(cm.Data["n1"]))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(l.Volumes, ",") != "default.pv-a,default.pv-b" || cm.Annotations["operator"] != "was here" {
		t.Fatalf("after the next sync: volumes %v, annotations %v", l.Volumes, cm.Annotations)
	}
}

// Lists as large as the writer lets them be are accepted by the server
// (a ConfigMap's data is limited to 1 MiB).
func TestAPIServerVolumeListSize(t *testing.T) {
	ctx := context.Background()
	c := newController(t)
	nodes := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	pvs := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	w, err := newListWriter(c.client, c.ns, corelisters.NewNodeLister(nodes), corelisters.NewPersistentVolumeLister(pvs), time.Hour, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	// Add volumes until the writer refuses to write, then take some away
	// until it writes: the server must accept that.
	pv := func(i int) *corev1.PersistentVolume {
		return testPV(fmt.Sprintf("pvc-%08d-0000-0000-0000-000000000000", i), fmt.Sprintf("node-%d", i%50), wellknown.DriverName)
	}
	n := 0
	for err == nil {
		for range 1000 {
			_ = pvs.Add(pv(n))
			n++
		}
		err = w.Sync(ctx)
	}
	for err != nil {
		if !strings.Contains(err.Error(), "not written") {
			t.Fatalf("with %d volumes: %v; want the writer's refusal, not the server's", n, err)
		}
		for range 100 {
			n--
			_ = pvs.Delete(pv(n))
		}
		err = w.Sync(ctx)
	}
	cm := must[*corev1.ConfigMap](t)(c.client.CoreV1().ConfigMaps(c.ns).Get(ctx, volumeListName, metav1.GetOptions{}))
	total := 0
	for k, v := range cm.Data {
		total += len(k) + len(v)
	}
	if total < maxListBytes-(100<<10) {
		t.Fatalf("wrote %d bytes; the test meant to come near %d", total, maxListBytes)
	}
}

// The trust ConfigMap: adding a new key's CA to it when someone (an
// operator rotating keys) changed it since the read is refused by the
// server; the next round adds it and keeps the other CA.
func TestAPIServerTrustConflict(t *testing.T) {
	ctx := context.Background()
	c := newController(t)
	k := &keyStore{client: c.client, namespace: c.ns, secret: "flashpv-transfer-key", trust: "flashpv-transfer-trust"}
	first := must[*auth.Signer](t)(k.ensure(ctx))
	if err := srv.Client.CoreV1().Secrets(c.ns).Delete(ctx, k.secret, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	cms := srv.Client.CoreV1().ConfigMaps(c.ns)
	done := c.once(http.MethodPut, "/api/v1/namespaces/"+c.ns+"/configmaps/"+k.trust, func() {
		cm := must[*corev1.ConfigMap](t)(cms.Get(ctx, k.trust, metav1.GetOptions{}))
		cm.Data["ca-operator.pem"] = "kept"
		must[*corev1.ConfigMap](t)(cms.Update(ctx, cm, metav1.UpdateOptions{}))
	})
	_, err := k.ensure(ctx)
	if !done() {
		t.Fatal("the key store sent no update")
	}
	if !apierrors.IsConflict(err) {
		t.Fatalf("ensure: %v, want the server's conflict", err)
	}
	second := must[*auth.Signer](t)(k.ensure(ctx))
	cm := must[*corev1.ConfigMap](t)(cms.Get(ctx, k.trust, metav1.GetOptions{}))
	for _, key := range []string{"ca-" + first.ID() + ".pem", "ca-" + second.ID() + ".pem", "ca-operator.pem"} {
		if cm.Data[key] == "" {
			t.Errorf("trust ConfigMap lost %s: has %d keys", key, len(cm.Data))
		}
	}
}

// Two replicas that both find no key: one creates it, the other is told
// it exists and signs with the same key.
func TestAPIServerKeyCreateRace(t *testing.T) {
	ctx := context.Background()
	c := newController(t)
	k := &keyStore{client: c.client, namespace: c.ns, secret: "flashpv-transfer-key", trust: "flashpv-transfer-trust"}
	k2 := &keyStore{client: c.client, namespace: c.ns, secret: k.secret, trust: k.trust}
	var won *auth.Signer
	done := c.once(http.MethodPost, "/api/v1/namespaces/"+c.ns+"/secrets", func() {
		c.mu.Lock()
		c.hook = nil // k2's own requests pass
		c.mu.Unlock()
		won = must[*auth.Signer](t)(k2.ensure(ctx))
	})
	lost := must[*auth.Signer](t)(k.ensure(ctx))
	done()
	if won == nil || lost.ID() != won.ID() {
		t.Fatalf("two keys: %v and %v", won, lost)
	}
}
