package kubectlflashpv

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/flashpv/flashpv/pkg/nodestatus"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// controllerStates plays the move controller: after the request, each get
// of the claim sees the next state; event, when set, is recorded on the
// claim with the last state.
func controllerStates(client *fake.Clientset, states []string, event *corev1.Event) {
	i := 0
	client.PrependReactor("get", "persistentvolumeclaims", func(act k8stesting.Action) (bool, runtime.Object, error) {
		obj, err := client.Tracker().Get(act.GetResource(), act.GetNamespace(), act.(k8stesting.GetAction).GetName())
		if err != nil {
			return true, nil, err
		}
		c := obj.(*corev1.PersistentVolumeClaim)
		if c.Annotations[annRequest] == "" || i >= len(states) {
			return true, c, nil
		}
		c = c.DeepCopy()
		c.Annotations[annState] = states[i]
		i++
		if i == len(states) && event != nil {
			event.InvolvedObject.UID = c.UID
			_ = client.Tracker().Add(event)
		}
		return true, c, client.Tracker().Update(act.GetResource(), c, c.Namespace)
	})
}

func claim(state string) *corev1.PersistentVolumeClaim {
	c := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "data-0", Namespace: "default", UID: types.UID("uid-1"), Annotations: map[string]string{}}}
	if state != "" {
		c.Annotations[annState] = state
	}
	return c
}

func event(reason, msg string) *corev1.Event {
	return &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "e1", Namespace: "default"}, Reason: reason, Message: msg, LastTimestamp: metav1.NewTime(now)}
}

func TestMove(t *testing.T) {
	for _, tc := range []struct {
		name    string
		old     string // the claim's state before: a finished move's
		states  []string
		event   *corev1.Event
		timeout time.Duration
		state   string
		err     string
	}{
		{name: "done", old: "Done", states: []string{"", "Planned", "PreCopying", "Rebinding", "Done"}, state: "Done"},
		{name: "rolled back", states: []string{"Planned", "PreCopying", "RolledBack"}, event: event("MoveRolledBack", "the target node n2 is gone"),
			state: "RolledBack", err: "rolled back: the target node n2 is gone"},
		{name: "refused", states: []string{""}, event: event("MoveRefused", "no node fits: n2 is cordoned"), state: "Refused", err: "refused the move: no node fits: n2 is cordoned"},
		{name: "timeout", states: []string{"Planned", "PreCopying"}, timeout: 50 * time.Millisecond, state: "PreCopying", err: `still "PreCopying" when the wait timed out`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := healthy()
			c.objs = append(c.objs, claim(tc.old))
			a, client, out, errOut := c.app("json")
			a.Poll = time.Millisecond
			controllerStates(client, tc.states, tc.event)
			timeout := tc.timeout
			if timeout == 0 {
				timeout = time.Hour
			}
			err := a.Move(context.Background(), "data-0", moveOptions{to: "n2", wait: true, timeout: timeout})
			if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("error %v, want %q", err, tc.err)
			}
			var res MoveResult
			if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.State != tc.state || res.Claim != "default/data-0" || res.To != "n2" {
				t.Errorf("result %+v %v (stderr %q)", res, err, errOut)
			}
			got, _ := client.CoreV1().PersistentVolumeClaims("default").Get(context.Background(), "data-0", metav1.GetOptions{})
			if got.Annotations[annRequest] != "n2" {
				t.Errorf("annotations %v", got.Annotations)
			}
		})
	}
}

func TestMoveNoWait(t *testing.T) {
	c := healthy()
	c.objs = append(c.objs, claim("PreCopying"))
	a, client, out, _ := c.app("table")
	if err := a.Move(context.Background(), "data-0", moveOptions{to: "any"}); err != nil {
		t.Fatal(err)
	}
	got, _ := client.CoreV1().PersistentVolumeClaims("default").Get(context.Background(), "data-0", metav1.GetOptions{})
	// A move under way keeps its state.
	if got.Annotations[annRequest] != "any" || got.Annotations[annState] != "PreCopying" || out.String() != "default/data-0: Requested\n" {
		t.Errorf("annotations %v, out %q", got.Annotations, out)
	}
	// A finished move's state goes, so that it is not read as this one's.
	c = healthy()
	c.objs = append(c.objs, claim("Done"))
	a, client, _, _ = c.app("table")
	if err := a.Move(context.Background(), "data-0", moveOptions{to: "n1"}); err != nil {
		t.Fatal(err)
	}
	got, _ = client.CoreV1().PersistentVolumeClaims("default").Get(context.Background(), "data-0", metav1.GetOptions{})
	if _, ok := got.Annotations[annState]; ok || got.Annotations[annRequest] != "n1" {
		t.Errorf("after a finished move: annotations %v", got.Annotations)
	}
	if err := a.Move(context.Background(), "nope", moveOptions{to: "any"}); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("missing claim: %v", err)
	}
	if err := a.Move(context.Background(), "data-0", moveOptions{}); err == nil {
		t.Error("no --to: no error")
	}
}

func doctor(t *testing.T, c *cluster) ([]Finding, error, string) {
	t.Helper()
	a, _, out, _ := c.app("json")
	err := a.Doctor(context.Background())
	var fs []Finding
	if jerr := json.Unmarshal(out.Bytes(), &fs); jerr != nil {
		t.Fatalf("%v: %s", jerr, out)
	}
	a, _, out, _ = c.app("table")
	_ = a.Doctor(context.Background())
	return fs, err, out.String()
}

func finding(fs []Finding, check, result, msg string) *Finding {
	for i, f := range fs {
		if f.Check == check && f.Result == result && strings.Contains(f.Message, msg) {
			return &fs[i]
		}
	}
	return nil
}

func TestDoctorHealthy(t *testing.T) {
	c := healthy()
	// n2 answers; n1's pools are all healthy, no orphans.
	st := n1Status()
	st.Pools, st.Orphans = st.Pools[:1], nodestatus.Orphans{Judged: true}
	n2 := n1Status()
	n2.Node, n2.Pools, n2.Volumes, n2.Orphans = "n2", st.Pools, nil, nodestatus.Orphans{Judged: true}
	c.setStatus(map[string]nodestatus.Entry{"n1": {Fetched: now, Status: st}, "n2": {Fetched: now, Status: n2}})
	fs, err, table := doctor(t, c)
	if err != nil {
		t.Errorf("doctor: %v\n%s", err, table)
	}
	for _, check := range []string{"csidriver", "daemonset", "snapshots", "capacity", "pools", "node-loss"} {
		if finding(fs, check, "ok", "") == nil {
			t.Errorf("check %s not ok:\n%s", check, table)
		}
	}
	if len(fs) != 6 {
		t.Errorf("findings:\n%s", table)
	}
}

func TestDoctorProblems(t *testing.T) {
	c := healthy()
	var objs []runtime.Object
	for _, o := range c.objs {
		switch o := o.(type) {
		case *storagev1.CSIDriver:
			continue // no CSIDriver
		case *storagev1.CSIStorageCapacity:
			if capacityNode(o) == "n1" {
				o = capacity("c9", "flashpv", "gone") // n1 has none; one of a node that is gone
			}
			objs = append(objs, o)
			continue
		case *corev1.Pod:
			if o.Name == "flashpv-node-2" {
				objs = append(objs, dsPod(o.Name, "n2", false))
				continue
			}
		}
		objs = append(objs, o)
	}
	objs = append(objs, pv("pv-lost", "fast.ll", "n9", "data-9", corev1.PersistentVolumeFilesystem, "", map[string]string{wellknown.ParamNodeLossPolicy: wellknown.NodeLossReport}))
	c.objs = objs
	c.objs = append(c.objs, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cp"}, Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: "control-plane", Effect: corev1.TaintEffectNoSchedule}}}})
	fs, err, table := doctor(t, c)
	var n findings
	if !errors.As(err, &n) || n < 5 {
		t.Errorf("doctor: %v\n%s", err, table)
	}
	for _, want := range []struct{ check, result, msg, fix string }{
		{"csidriver", "error", "no CSIDriver flashpv.dev", "kubectl apply -k deploy/kubernetes"},
		{"daemonset", "error", "no ready flashpv pod on schedulable nodes n2:", "describe daemonset"},
		{"capacity", "error", "no CSIStorageCapacity for flashpv on n1", "csi-provisioner"},
		{"capacity", "warning", "CSIStorageCapacity of nodes that are gone: c9 (gone)", ""},
		{"capacity", "warning", "node n2: status not fetched: dial tcp", "health port"},
		{"pools", "error", "node n1: pool db (lvm) is unusable: PoolUnusable: no volume group flashpv", "set the storage up"},
		{"pools", "warning", "node n1: 1 orphaned volumes", "--delete-orphans"},
		{"node-loss", "error", "claim default/data-9 is stuck: its volume pv-lost is on node n9, which is gone", "nodeLossPolicy: Recreate"},
	} {
		f := finding(fs, want.check, want.result, want.msg)
		if f == nil || !strings.Contains(f.Fix, want.fix) {
			t.Errorf("no %s %s %q (fix %q) in\n%s", want.check, want.result, want.msg, want.fix, table)
		}
	}
	// The tainted control plane node needs no flashpv pod.
	if f := finding(fs, "daemonset", "error", "schedulable nodes"); f != nil && strings.Contains(f.Message, "cp") {
		t.Errorf("a tainted node was counted:\n%s", table)
	}
}

func TestDoctorSnapshotController(t *testing.T) {
	c := healthy()
	for _, o := range c.objs {
		if d, ok := o.(*appsv1.Deployment); ok {
			d.Spec.Template.Spec.Containers[0].Args = nil
		}
	}
	fs, _, table := doctor(t, c)
	if finding(fs, "snapshots", "error", "without --enable-distributed-snapshotting") == nil {
		t.Errorf("snapshot-controller without distributed snapshotting not found:\n%s", table)
	}
	c = healthy()
	c.noCRDs = true
	fs, _, table = doctor(t, c)
	if finding(fs, "snapshots", "warning", "snapshot CRDs missing: volumesnapshotclasses, volumesnapshots, volumesnapshotcontents") == nil {
		t.Errorf("missing CRDs not found:\n%s", table)
	}
}
