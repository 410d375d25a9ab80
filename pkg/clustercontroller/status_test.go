package clustercontroller

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/flashpv/flashpv/pkg/nodestatus"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

func pluginPod(name, node, ip string, phase corev1.PodPhase, created time.Time) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "flashpv", Labels: map[string]string{"app.kubernetes.io/name": "flashpv"}, CreationTimestamp: metav1.NewTime(created)},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: phase, PodIP: ip},
	}
}

type statusEnv struct {
	nodes, pods cache.Indexer
	client      *fake.Clientset
	c           *statusCollector
	answers     map[string]func() (nodestatus.Status, error) // by address
}

func newStatusEnv(t *testing.T) *statusEnv {
	t.Helper()
	e := &statusEnv{nodes: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{}),
		pods:   cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}),
		client: fake.NewClientset(), answers: map[string]func() (nodestatus.Status, error){}}
	sel := labels.SelectorFromSet(labels.Set{"app.kubernetes.io/name": "flashpv"})
	c, err := newStatusCollector(e.client, "flashpv", corelisters.NewNodeLister(e.nodes), corelisters.NewPodLister(e.pods), sel, 9808, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC) }
	c.fetch = func(_ context.Context, addr string) (nodestatus.Status, error) {
		if f, ok := e.answers[addr]; ok {
			return f()
		}
		return nodestatus.Status{}, errors.New("connection refused")
	}
	e.c = c
	return e
}

func (e *statusEnv) read(t *testing.T) map[string]nodestatus.Entry {
	t.Helper()
	cm, err := e.client.CoreV1().ConfigMaps("flashpv").Get(context.Background(), wellknown.NodeStatusConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]nodestatus.Entry{}
	for n, v := range cm.Data {
		en, err := nodestatus.DecodeEntry(v)
		if err != nil {
			t.Fatalf("node %s: %v", n, err)
		}
		out[n] = en
	}
	return out
}

func nodeStatus(node string) nodestatus.Status {
	return nodestatus.Status{Node: node, Version: "v1", AsOf: time.Now(), Pools: []nodestatus.Pool{{Name: "default", Kind: "image", Healthy: true}},
		Volumes: []nodestatus.Volume{{ID: "default.aa", Size: 1 << 30, Used: 1 << 20}}}
}

// Each node's newest running pod is asked; a node whose pod does not
// answer keeps its last status with the error; a pod answering for
// another node is refused; a node with no running pod says so; a node
// deleted with its pod is dropped.
func TestStatusCollector(t *testing.T) {
	e := newStatusEnv(t)
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, n := range []string{"n1", "n2", "n3", "n4"} {
		_ = e.nodes.Add(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})
	}
	_ = e.pods.Add(pluginPod("old", "n1", "10.0.0.1", corev1.PodRunning, t0))
	_ = e.pods.Add(pluginPod("new", "n1", "10.0.0.11", corev1.PodRunning, t0.Add(time.Hour)))
	_ = e.pods.Add(pluginPod("b", "n2", "10.0.0.2", corev1.PodRunning, t0))
	_ = e.pods.Add(pluginPod("c", "n3", "10.0.0.3", corev1.PodRunning, t0))
	_ = e.pods.Add(pluginPod("d", "n4", "", corev1.PodPending, t0))
	e.answers["10.0.0.11:9808"] = func() (nodestatus.Status, error) { return nodeStatus("n1"), nil }
	e.answers["10.0.0.2:9808"] = func() (nodestatus.Status, error) { return nodeStatus("n2"), nil }
	e.answers["10.0.0.3:9808"] = func() (nodestatus.Status, error) { return nodeStatus("n1"), nil }
	if err := e.c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got := e.read(t)
	if len(got) != 4 {
		t.Fatalf("entries: %+v", got)
	}
	if en := got["n1"]; en.Error != "" || en.Status == nil || en.Status.Node != "n1" || en.Fetched.IsZero() || len(en.Status.Volumes) != 1 {
		t.Errorf("n1: %+v", en)
	}
	if en := got["n3"]; en.Status != nil || !strings.Contains(en.Error, `on node "n1"`) {
		t.Errorf("n3 (answers for n1): %+v", en)
	}
	if en := got["n4"]; en.Status != nil || !strings.Contains(en.Error, "no running flashpv node plugin pod") {
		t.Errorf("n4: %+v", en)
	}

	// n2 stops answering: its last status stays, with the error. n1's
	// node is deleted with its pods: dropped.
	delete(e.answers, "10.0.0.2:9808")
	for _, p := range []string{"old", "new"} {
		_ = e.pods.Delete(pluginPod(p, "n1", "", "", t0))
	}
	_ = e.nodes.Delete(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	// n4's pod is deleted, the node stays: it stays listed, without a pod.
	_ = e.pods.Delete(pluginPod("d", "n4", "", "", t0))
	if err := e.c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got = e.read(t)
	if _, ok := got["n1"]; ok || len(got) != 3 {
		t.Errorf("entries after n1 was deleted: %+v", got)
	}
	if en := got["n2"]; en.Status == nil || en.Status.Node != "n2" || !strings.Contains(en.Error, "connection refused") || en.Fetched.IsZero() {
		t.Errorf("n2 after it stopped answering: %+v", en)
	}
	if en := got["n4"]; !strings.Contains(en.Error, "no running flashpv node plugin pod") {
		t.Errorf("n4 without a pod: %+v", en)
	}
}

// Above the ConfigMap's limit the volumes are left out, pools kept.
func TestStatusCollectorTooLarge(t *testing.T) {
	e := newStatusEnv(t)
	big := nodeStatus("n1")
	for range 20000 {
		big.Volumes = append(big.Volumes, nodestatus.Volume{ID: "default.0123456789abcdef0123456789abcdef", Size: 1 << 30, Used: 1 << 29})
	}
	_ = e.nodes.Add(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}})
	_ = e.pods.Add(pluginPod("a", "n1", "10.0.0.1", corev1.PodRunning, time.Now()))
	e.answers["10.0.0.1:9808"] = func() (nodestatus.Status, error) { return big, nil }
	if err := e.c.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	en := e.read(t)["n1"]
	if en.Status == nil || !en.Status.VolumesOmitted || len(en.Status.Volumes) != 0 || len(en.Status.Pools) != 1 {
		t.Errorf("entry: %+v", en)
	}
}

// The real request: the node's JSON, bounded; an error status is an error.
func TestFetchStatus(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case nodestatus.Path:
			_ = json.NewEncoder(w).Encode(nodeStatus("n1"))
		case "/big" + nodestatus.Path:
			w.Write([]byte(`{"node":"` + strings.Repeat("x", nodestatus.MaxBytes) + `"}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	st, err := fetchStatus(context.Background(), addr)
	if err != nil || st.Node != "n1" || len(st.Pools) != 1 {
		t.Errorf("fetch: %+v %v", st, err)
	}
	if _, err := fetchStatus(context.Background(), addr+"/big"); err == nil {
		t.Error("an oversized answer was taken")
	}
	host, _, _ := net.SplitHostPort(addr)
	if _, err := fetchStatus(context.Background(), net.JoinHostPort(host, "1")); err == nil {
		t.Error("no error from a closed port")
	}
}
