package kubectlflashpv

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"sigs.k8s.io/yaml"

	"github.com/flashpv/flashpv/pkg/nodestatus"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// cluster is a fake cluster: the objects of a small flashpv installation.
type cluster struct {
	objs    []runtime.Object
	dynObjs []runtime.Object
	noCRDs  bool
}

func pv(name, id, node, claim string, mode corev1.PersistentVolumeMode, fsType string, attrs map[string]string) *corev1.PersistentVolume {
	p := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:   corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			VolumeMode: &mode,
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: wellknown.TopologyKey, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
			}}}},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: wellknown.DriverName, VolumeHandle: id, FSType: fsType, VolumeAttributes: attrs}},
		},
	}
	if claim != "" {
		p.Spec.ClaimRef = &corev1.ObjectReference{Namespace: "default", Name: claim}
	}
	return p
}

func statusConfigMap(entries map[string]nodestatus.Entry) *corev1.ConfigMap {
	data := map[string]string{}
	for n, e := range entries {
		data[n], _ = nodestatus.EncodeEntry(e)
	}
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: wellknown.NodeStatusConfigMap, Namespace: "flashpv"}, Data: data}
}

func n1Status() *nodestatus.Status {
	return &nodestatus.Status{Node: "n1", Version: "v1.2.3", AsOf: now.Add(-30 * time.Second),
		Pools: []nodestatus.Pool{
			{Name: "fast", Kind: "image", Capacity: 100 << 30, Allocated: 2 << 30, Available: 98 << 30, Volumes: 2, Healthy: true},
			{Name: "db", Kind: "lvm", Capacity: -1, Allocated: -1, Available: -1, Reason: "PoolUnusable", Message: "no volume group flashpv"},
		},
		Volumes: []nodestatus.Volume{
			{ID: "fast.aa", Size: 1 << 30, Used: 5 << 20},
			{ID: "fast.cc", Size: 1 << 30, Used: -1, Problems: []nodestatus.Problem{{Reason: "VolumeIOError", Message: "read: input/output error"}}},
		},
		Orphans: nodestatus.Orphans{Judged: true, State: "current", Volumes: []nodestatus.Orphan{
			{ID: "fast.dd", Pool: "fast", Name: "pvc-old", Created: now.Add(-48 * time.Hour), Since: now.Add(-2 * time.Hour)}}},
	}
}

func dsPod(name, node string, ready bool) *corev1.Pod {
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "flashpv", Labels: map[string]string{"app.kubernetes.io/name": "flashpv"},
			OwnerReferences: []metav1.OwnerReference{{Kind: "DaemonSet", Name: "flashpv-node"}}},
		Spec:   corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}},
	}
}

func content(name, source string) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
		"metadata": map[string]any{"name": name, "creationTimestamp": now.Add(-time.Hour).Format(time.RFC3339)},
		"spec": map[string]any{"driver": wellknown.DriverName, "source": map[string]any{"volumeHandle": source},
			"volumeSnapshotRef": map[string]any{"namespace": "default", "name": "snap-1"}},
		"status": map[string]any{"snapshotHandle": "fast.ee", "restoreSize": int64(1 << 30), "readyToUse": true},
	}}
}

// healthy is a cluster where every check passes, but for n1's unusable
// pool and orphan, which the data of other tests need.
func healthy() *cluster {
	fsMode, wffc := corev1.PersistentVolumeFilesystem, storagev1.VolumeBindingWaitForFirstConsumer
	attach := false
	return &cluster{
		objs: []runtime.Object{
			&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}},
			&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n2"}},
			pv("pv-a", "fast.aa", "n1", "data-0", fsMode, "xfs", nil),
			pv("pv-c", "fast.cc", "n1", "data-2", fsMode, "", nil),
			&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "default"}, Status: corev1.PodStatus{Phase: corev1.PodRunning},
				Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
					PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data-0"}}}}}},
			statusConfigMap(map[string]nodestatus.Entry{
				"n1": {Fetched: now, Status: n1Status()},
				"n2": {Error: "dial tcp 10.0.0.2:9808: connect: connection refused"},
			}),
			&storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: wellknown.DriverName}, Spec: storagev1.CSIDriverSpec{AttachRequired: &attach}},
			&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Name: "flashpv-node", Namespace: "flashpv", Labels: map[string]string{"app.kubernetes.io/name": "flashpv"}},
				Status: appsv1.DaemonSetStatus{DesiredNumberScheduled: 2, NumberReady: 2}},
			dsPod("flashpv-node-1", "n1", true), dsPod("flashpv-node-2", "n2", true),
			&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "snapshot-controller", Namespace: "kube-system"},
				Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Image: "registry.k8s.io/sig-storage/snapshot-controller:v8.3.0", Args: []string{"--enable-distributed-snapshotting=true"}}}}}}},
			&storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "flashpv"}, Provisioner: wellknown.DriverName, VolumeBindingMode: &wffc},
			capacity("c1", "flashpv", "n1"), capacity("c2", "flashpv", "n2"),
		},
		dynObjs: []runtime.Object{content("snapcontent-1", "fast.aa")},
	}
}

// setStatus replaces the node status ConfigMap.
func (c *cluster) setStatus(entries map[string]nodestatus.Entry) {
	for i, o := range c.objs {
		if cm, ok := o.(*corev1.ConfigMap); ok && cm.Name == wellknown.NodeStatusConfigMap {
			c.objs[i] = statusConfigMap(entries)
			return
		}
	}
	c.objs = append(c.objs, statusConfigMap(entries))
}

func capacity(name, class, node string) *storagev1.CSIStorageCapacity {
	return &storagev1.CSIStorageCapacity{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "flashpv"}, StorageClassName: class,
		NodeTopology: &metav1.LabelSelector{MatchLabels: map[string]string{wellknown.TopologyKey: node}}}
}

var snapshotGVRs = map[schema.GroupVersionResource]string{
	contentsGVR: "VolumeSnapshotContentList",
	{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshots"}:       "VolumeSnapshotList",
	{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotclasses"}: "VolumeSnapshotClassList",
}

// app returns an App on the cluster, writing to buffers.
func (c *cluster) app(output string) (*App, *fake.Clientset, *bytes.Buffer, *bytes.Buffer) {
	client := fake.NewClientset(c.objs...)
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), snapshotGVRs, c.dynObjs...)
	if c.noCRDs {
		dyn.PrependReactor("list", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, apierrors.NewNotFound(a.GetResource().GroupResource(), "")
		})
	}
	var out, errOut bytes.Buffer
	return &App{Client: client, Dynamic: dyn, Out: &out, Err: &errOut, System: "flashpv", Namespace: "default", Output: output,
		Now: func() time.Time { return now }, Server: "https://test"}, client, &out, &errOut
}

// row finds the table line that starts with the first field and checks it
// has the others, in order.
func row(t *testing.T, table string, fields ...string) {
	t.Helper()
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != fields[0] {
			continue
		}
		rest := strings.Join(f, " ")
		if strings.Contains(rest, strings.Join(fields, " ")) {
			return
		}
	}
	t.Errorf("no row %q in\n%s", fields, table)
}

func TestInfo(t *testing.T) {
	a, _, out, _ := healthy().app("table")
	if err := a.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	row(t, out.String(), "n1", "fast", "image", "100Gi", "2Gi", "98Gi", "2", "ok", "v1.2.3", "ok")
	row(t, out.String(), "n1", "db", "lvm", "-", "-", "-", "0", "PoolUnusable:", "no", "volume", "group", "flashpv", "v1.2.3", "ok")
	row(t, out.String(), "n2", "-", "-", "-", "-", "-", "-", "-", "-", "not", "answering:")

	a, _, out, _ = healthy().app("json")
	if err := a.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	var nodes []NodeInfo
	if err := json.Unmarshal(out.Bytes(), &nodes); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(nodes) != 2 || nodes[0].Node != "n1" || len(nodes[0].Pools) != 2 || nodes[0].Pools[0].Free != 98<<30 || nodes[0].Version != "v1.2.3" ||
		nodes[1].Node != "n2" || !strings.Contains(nodes[1].Status, "connection refused") || len(nodes[1].Pools) != 0 {
		t.Errorf("json: %+v", nodes)
	}
}

// An old status is flagged; no ConfigMap at all says what is missing.
func TestInfoWithoutStatus(t *testing.T) {
	c := healthy()
	c.objs = c.objs[:2]
	a, _, out, _ := c.app("table")
	if err := a.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	row(t, out.String(), "n1", "-", "-", "-", "-", "-", "-", "-", "-", "no", "status:", "the", "ConfigMap", "flashpv/flashpv-status", "is", "missing")

	old := n1Status()
	old.AsOf = now.Add(-time.Hour)
	c = healthy()
	c.setStatus(map[string]nodestatus.Entry{"n1": {Fetched: old.AsOf, Status: old}})
	a, _, out, _ = c.app("table")
	if err := a.Info(context.Background()); err != nil {
		t.Fatal(err)
	}
	row(t, out.String(), "n1", "fast", "image", "100Gi", "2Gi", "98Gi", "2", "ok", "v1.2.3", "status", "from", "60m", "ago")
}

func TestVolumes(t *testing.T) {
	c := healthy()
	c.objs = append(c.objs, pv("pv-b", "fast.bb", "n9", "data-1", corev1.PersistentVolumeBlock, "", nil),
		pv("pv-x", "other", "n1", "", corev1.PersistentVolumeFilesystem, "", nil))
	c.objs[len(c.objs)-1].(*corev1.PersistentVolume).Spec.CSI.Driver = "other.dev"
	a, _, out, _ := c.app("table")
	if err := a.Volumes(context.Background()); err != nil {
		t.Fatal(err)
	}
	row(t, out.String(), "pv-a", "default/data-0", "web-0", "n1", "fast", "1Gi", "5Mi", "xfs", "ok", "1")
	row(t, out.String(), "pv-b", "default/data-1", "-", "n9", "fast", "1Gi", "-", "block", "unknown", "(no", "status", "from", "node", "n9)", "0")
	row(t, out.String(), "pv-c", "default/data-2", "-", "n1", "fast", "1Gi", "-", "ext4", "VolumeIOError", "0")
	if strings.Contains(out.String(), "pv-x") {
		t.Errorf("another driver's PV listed:\n%s", out)
	}

	a, _, out, _ = c.app("yaml")
	if err := a.Volumes(context.Background()); err != nil {
		t.Fatal(err)
	}
	var vols []VolumeInfo
	if err := yaml.Unmarshal(out.Bytes(), &vols); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(vols) != 3 || vols[0].PV != "pv-a" || vols[0].Used != 5<<20 || vols[0].Snapshots != 1 || vols[0].Pods[0] != "web-0" || vols[1].Filesystem != "block" {
		t.Errorf("yaml: %+v", vols)
	}
}

// A volume the node does not list is said to be missing there.
func TestVolumesMissingOnNode(t *testing.T) {
	c := healthy()
	c.objs = append(c.objs, pv("pv-m", "fast.mm", "n1", "", corev1.PersistentVolumeFilesystem, "", nil))
	a, _, out, _ := c.app("table")
	if err := a.Volumes(context.Background()); err != nil {
		t.Fatal(err)
	}
	row(t, out.String(), "pv-m", "-", "-", "n1", "fast", "1Gi", "-", "ext4", "missing:", "node", "n1", "does", "not", "have", "it")
}

func TestSnapshots(t *testing.T) {
	a, _, out, _ := healthy().app("table")
	if err := a.Snapshots(context.Background()); err != nil {
		t.Fatal(err)
	}
	row(t, out.String(), "snapcontent-1", "default/snap-1", "pv-a", "default/data-0", "n1", "1Gi", "true", "60m")

	a, _, out, _ = healthy().app("json")
	if err := a.Snapshots(context.Background()); err != nil {
		t.Fatal(err)
	}
	var snaps []SnapshotInfo
	if err := json.Unmarshal(out.Bytes(), &snaps); err != nil || len(snaps) != 1 || snaps[0].ID != "fast.ee" || snaps[0].Source != "fast.aa" || !snaps[0].Ready {
		t.Errorf("json: %+v %v", snaps, err)
	}

	c := healthy()
	c.noCRDs = true
	a, _, out, errOut := c.app("table")
	if err := a.Snapshots(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut.String(), "CRDs are not installed") || strings.Count(out.String(), "\n") != 1 {
		t.Errorf("without CRDs: %q %q", out, errOut)
	}
}

func TestOrphans(t *testing.T) {
	a, _, out, errOut := healthy().app("table")
	if err := a.Orphans(context.Background()); err != nil {
		t.Fatal(err)
	}
	row(t, out.String(), "n1", "fast", "fast.dd", "pvc-old", "2026-02-27T12:00:00Z", "2h")
	if !strings.Contains(errOut.String(), "node n2: orphans not judged: no status: dial tcp") {
		t.Errorf("stderr: %q", errOut)
	}
	a, _, out, _ = healthy().app("json")
	if err := a.Orphans(context.Background()); err != nil {
		t.Fatal(err)
	}
	var nodes []NodeOrphans
	if err := json.Unmarshal(out.Bytes(), &nodes); err != nil || len(nodes) != 2 || !nodes[0].Judged || len(nodes[0].Orphans) != 1 || nodes[1].Judged {
		t.Errorf("json: %+v %v", nodes, err)
	}
}

// Forbidden calls name the permission they need.
func TestForbidden(t *testing.T) {
	for _, tc := range []struct {
		name     string
		verb     string
		resource string
		run      func(*App) error
		want     string
	}{
		{"volumes", "list", "persistentvolumes", func(a *App) error { return a.Volumes(context.Background()) }, "permission to list persistentvolumes cluster-wide"},
		{"info", "get", "configmaps", func(a *App) error { return a.Info(context.Background()) }, "permission to get configmaps/flashpv-status in namespace flashpv"},
		{"snapshots", "list", "volumesnapshotcontents", func(a *App) error { return a.Snapshots(context.Background()) }, "permission to list volumesnapshotcontents.snapshot.storage.k8s.io cluster-wide"},
		{"move", "patch", "persistentvolumeclaims", func(a *App) error {
			return a.Move(context.Background(), "data-0", moveOptions{to: "n2"})
		}, "permission to patch persistentvolumeclaims in namespace default"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := healthy()
			c.objs = append(c.objs, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "data-0", Namespace: "default"}})
			a, client, _, _ := c.app("table")
			deny := func(act k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewForbidden(act.GetResource().GroupResource(), "", nil)
			}
			client.PrependReactor(tc.verb, tc.resource, deny)
			a.Dynamic.(*dynamicfake.FakeDynamicClient).PrependReactor(tc.verb, tc.resource, deny)
			err := tc.run(a)
			if err == nil || !strings.Contains(a.explain(err).Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}

// Main without a kubeconfig, or with a server that does not answer, says
// so in one line and exits 1; bad flags and commands exit 2.
func TestMainErrors(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("KUBECONFIG", "")
	var out, errOut bytes.Buffer
	if rc := Main([]string{"info"}, "v", &out, &errOut); rc != 1 || !strings.Contains(errOut.String(), "no cluster: no kubeconfig found") {
		t.Errorf("no kubeconfig: rc %d, %q", rc, errOut.String())
	}
	kc := filepath.Join(dir, "kc")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
users: [{name: u, user: {token: x}}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	errOut.Reset()
	if rc := Main([]string{"--kubeconfig", kc, "volumes"}, "v", &out, &errOut); rc != 1 || !strings.Contains(errOut.String(), "cannot reach the Kubernetes API server at https://127.0.0.1:1") {
		t.Errorf("unreachable: rc %d, %q", rc, errOut.String())
	}
	for _, args := range [][]string{{"nonsense"}, {"info", "extra"}, {"info", "-o", "xml"}, {"info", "--bogus"}} {
		errOut.Reset()
		if rc := Main(append(args, "--kubeconfig", kc), "v", &out, &errOut); rc != 2 {
			t.Errorf("%q: rc %d, %q", args, rc, errOut.String())
		}
	}
	out.Reset()
	if rc := Main([]string{"version"}, "v9", &out, &errOut); rc != 0 || out.String() != "kubectl-flashpv v9\n" {
		t.Errorf("version: %d %q", rc, out.String())
	}
}
