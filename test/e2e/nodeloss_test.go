//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Node loss (issue 16): a node stopped for good (hack/cluster/node.sh stop:
// kubelet, containerd and every pod of it killed, its disk kept) and its
// Node object deleted. These tests change the flashpv controller's grace
// period and the DaemonSet's orphan settings, and put both back.

const lossGrace = 45 * time.Second

// nodeCmd runs hack/cluster/node.sh stop|start NODE.
func nodeCmd(t *testing.T, cmd, node string) {
	t.Helper()
	c := exec.Command(filepath.Join(repo, "hack/cluster/node.sh"), cmd, node)
	c.Env = append(os.Environ(), "STATE="+stateDir, "BIN="+binDir)
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("node.sh %s %s: %v\n%s", cmd, node, err, out)
	}
}

// loseNode stops a node and deletes its Node object; the node comes back
// (start, Ready) when the test ends. It returns when the Node was deleted.
func loseNode(t *testing.T, node string) time.Time {
	t.Helper()
	t.Cleanup(func() { bringBack(t, node) })
	nodeCmd(t, "stop", node)
	must(t, "delete", "node", node, "--wait=true")
	return time.Now()
}

func bringBack(t *testing.T, node string) {
	t.Helper()
	if out, _ := kubectl("get", "node", node, "-o", "name"); out != "" && flashpvPod(t, node) != "" {
		return
	}
	nodeCmd(t, "start", node)
	eventually(t, 3*time.Minute, node+" Ready with flashpv", func() error {
		if s := jsonpath(t, "", "node/"+node, `{.status.conditions[?(@.type=="Ready")].status}`); s != "True" {
			return fmt.Errorf("Ready=%q", s)
		}
		if flashpvPod(t, node) == "" {
			return fmt.Errorf("no flashpv pod on %s", node)
		}
		return nil
	})
}

// setArgs replaces a flashpv workload's container args and waits for the
// rollout; the old args come back when the test ends.
func setArgs(t *testing.T, kind, name string, container int, edit func([]string) []string) {
	t.Helper()
	path := fmt.Sprintf("{.spec.template.spec.containers[%d].args}", container)
	var old []string
	if err := json.Unmarshal([]byte(jsonpath(t, "flashpv", kind+"/"+name, path)), &old); err != nil {
		t.Fatalf("%s/%s args: %v", kind, name, err)
	}
	apply := func(args []string) {
		b, _ := json.Marshal([]map[string]any{{"op": "replace", "path": fmt.Sprintf("/spec/template/spec/containers/%d/args", container), "value": args}})
		must(t, "patch", "-n", "flashpv", kind, name, "--type=json", "-p", string(b))
		must(t, "rollout", "status", "-n", "flashpv", kind+"/"+name, "--timeout=300s")
	}
	t.Cleanup(func() { apply(old) })
	apply(edit(append([]string(nil), old...)))
}

func withArg(args []string, flag, value string) []string {
	out := args[:0:0]
	for _, a := range args {
		if !strings.HasPrefix(a, flag+"=") {
			out = append(out, a)
		}
	}
	return append(out, flag+"="+value)
}

func controllerGrace(t *testing.T, grace time.Duration) {
	setArgs(t, "deployment", "flashpv-controller", 0, func(a []string) []string {
		return withArg(a, "--node-loss-grace", grace.String())
	})
}

// lossClass creates a StorageClass with the given nodeLossPolicy ("" for
// none: the default, Report).
func lossClass(t *testing.T, name, policy string) {
	t.Helper()
	var params []string
	if policy != "" {
		params = append(params, "nodeLossPolicy: "+policy)
	}
	flashpvClass(t, name, params...)
}

// flashpvClass makes a WaitForFirstConsumer class of ext4 volumes with
// the given parameters ("key: value").
func flashpvClass(t *testing.T, name string, params ...string) {
	t.Helper()
	lines := "  csi.storage.k8s.io/fstype: ext4\n"
	for _, p := range params {
		lines += "  " + p + "\n"
	}
	f := filepath.Join(t.TempDir(), "sc.yaml")
	os.WriteFile(f, []byte(`apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: `+name+`
provisioner: flashpv.dev
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
parameters:
`+lines), 0o600)
	must(t, "apply", "-f", f)
}

type replica struct{ pod, claim, claimUID, pv, handle, node string }

// journal starts the example StatefulSet (preferred anti-affinity, so a
// lost replica can run on a node that has one already) on class, waits for
// its replicas and marks each volume.
func journal(t *testing.T, ns, class string) []replica {
	t.Helper()
	m := strings.Replace(exampleStatefulSet(t, false), "storageClassName: flashpv\n", "storageClassName: "+class+"\n", 1)
	if !strings.Contains(m, "storageClassName: "+class) {
		t.Fatal("examples/statefulset.yaml names no storageClassName flashpv to replace")
	}
	applyYAML(t, ns, m)
	var out []replica
	for i := range 3 {
		r := replica{pod: fmt.Sprintf("journal-%d", i), claim: fmt.Sprintf("data-journal-%d", i)}
		waitPodReady(t, ns, r.pod, 4*time.Minute)
		r.claimUID = jsonpath(t, ns, "pvc/"+r.claim, "{.metadata.uid}")
		r.pv, r.handle = pvOf(t, ns, r.claim)
		r.node = podNode(t, ns, r.pod)
		execIn(t, ns, r.pod, "sh", "-c", "echo "+r.claimUID+" > /data/marker && sync")
		out = append(out, r)
	}
	return out
}

// victim is the node of replica 1, and the replicas it holds.
func victim(rs []replica) (string, []replica, []replica) {
	node := rs[1].node
	var lost, kept []replica
	for _, r := range rs {
		if r.node == node {
			lost = append(lost, r)
		} else {
			kept = append(kept, r)
		}
	}
	return node, lost, kept
}

func pvsOn(t *testing.T, node string) []string {
	t.Helper()
	var out []string
	for _, pv := range strings.Fields(must(t, "get", "pv", "-o", "jsonpath={.items[*].metadata.name}")) {
		if pinnedNode(t, pv) == node {
			out = append(out, pv)
		}
	}
	return out
}

func eventsWithReason(t *testing.T, ns, reason string) string {
	t.Helper()
	out, _ := kubectl("get", "events", "-n", ns, "--field-selector", "reason="+reason,
		"-o", "jsonpath={range .items[*]}{.involvedObject.kind}/{.involvedObject.name}: {.message}{\"\\n\"}{end}")
	return out
}

// controllerMetrics scrapes the active controller's /metrics through the
// API server's pod proxy.
func controllerMetrics(t *testing.T) string {
	t.Helper()
	var all []string
	for _, p := range strings.Fields(must(t, "get", "pods", "-n", "flashpv", "-l", "app.kubernetes.io/name=flashpv-controller", "-o", "jsonpath={.items[*].metadata.name}")) {
		out, err := kubectl("get", "--raw", "/api/v1/namespaces/flashpv/pods/"+p+":9809/proxy/metrics")
		if err != nil {
			t.Logf("metrics of %s: %v", p, err)
		}
		all = append(all, out)
	}
	return strings.Join(all, "\n")
}

// TestNodeLossRecreate: with an opted-in class, the replicas of a node lost
// for good run again on other nodes with new, empty volumes within the
// grace period plus a measured bound; the others keep their volumes and
// data; no PV is left for the lost node. Then the node returns: its old
// volumes, which no PV names, are reported and (the pool opts in here)
// removed; nothing else is touched.
func TestNodeLossRecreate(t *testing.T) {
	needNodes(t, 3)
	setArgs(t, "deployment", "flashpv-controller", 0, func(a []string) []string {
		// A node plugin judges a volume only by a list written at least
		// the orphan margin (2m) after the volume was made. The replicas'
		// volumes are younger than that when the node returns; with the
		// default refresh (5m) the next list could leave too little of
		// the wait below for the grace and the scans.
		return withArg(withArg(a, "--node-loss-grace", lossGrace.String()), "--volume-list-refresh", "30s")
	})
	setArgs(t, "daemonset", "flashpv-node", 0, func(a []string) []string {
		return withArg(withArg(a, "--delete-orphans", "default"), "--orphan-grace", "1m")
	})
	lossClass(t, "flashpv-recreate", "Recreate")
	ns := namespace(t, "e2e-nodeloss")
	rs := journal(t, ns, "flashpv-recreate")
	node, lost, kept := victim(rs)

	deleted := loseNode(t, node)
	for _, r := range lost {
		eventually(t, lossGrace+8*time.Minute, r.pod+" running elsewhere on a new claim", func() error {
			uid := jsonpath(t, ns, "pvc/"+r.claim, "{.metadata.uid}")
			if uid == "" || uid == r.claimUID {
				return fmt.Errorf("claim %s UID %q", r.claim, uid)
			}
			if s := jsonpath(t, ns, "pod/"+r.pod, `{.status.conditions[?(@.type=="Ready")].status}`); s != "True" {
				return fmt.Errorf("pod Ready=%q", s)
			}
			return nil
		})
		t.Logf("%s Running on %s with a new volume %s after the Node was deleted (grace %s)",
			r.pod, podNode(t, ns, r.pod), time.Since(deleted).Round(time.Second), lossGrace)
		if n := podNode(t, ns, r.pod); n == node {
			t.Fatalf("%s is on the lost node", r.pod)
		}
		if out, _ := kubectl("exec", "-n", ns, r.pod, "--", "cat", "/data/marker"); out != "" {
			t.Fatalf("%s's new volume has the old marker %q", r.pod, out)
		}
		if evs := eventsWithReason(t, ns, "NodeLossClaimDeleted"); !strings.Contains(evs, r.claim) {
			t.Errorf("no NodeLossClaimDeleted Event names %s:\n%s", r.claim, evs)
		}
	}
	for _, r := range kept {
		if uid := jsonpath(t, ns, "pvc/"+r.claim, "{.metadata.uid}"); uid != r.claimUID {
			t.Fatalf("%s of a live node was replaced", r.claim)
		}
		if got := execIn(t, ns, r.pod, "cat", "/data/marker"); got != r.claimUID {
			t.Fatalf("%s's data: %q", r.pod, got)
		}
	}
	eventually(t, 2*time.Minute, "no PV left for "+node, func() error {
		if pvs := pvsOn(t, node); len(pvs) != 0 {
			return fmt.Errorf("PVs %v", pvs)
		}
		return nil
	})
	if m := controllerMetrics(t); !strings.Contains(m, `flashpv_nodeloss_actions_total{action="DeleteClaim",result="ok"}`) {
		t.Errorf("controller metrics lack the DeleteClaim count:\n%s", grepLines(m, "flashpv_nodeloss"))
	}

	// The node returns with its disk: its old volumes are orphans.
	bringBack(t, node)
	start := time.Now()
	for _, r := range lost {
		img := imageOf(t, node, r.handle)
		eventually(t, 8*time.Minute, "orphan "+r.handle+" removed from "+node, func() error {
			if _, err := os.Stat(img); err == nil {
				return fmt.Errorf("%s still there", img)
			}
			return nil
		})
	}
	t.Logf("orphans removed %s after %s returned (orphan grace 1m)", time.Since(start).Round(time.Second), node)
	logs, _ := kubectl("logs", "-n", "flashpv", flashpvPod(t, node), "-c", "flashpv")
	if !strings.Contains(logs, "Orphaned volume") {
		t.Errorf("flashpv on %s did not report its orphans", node)
	}
	for _, r := range kept {
		if _, err := os.Stat(imageOf(t, r.node, r.handle)); err != nil {
			t.Fatalf("a live volume was touched: %v", err)
		}
		if got := execIn(t, ns, r.pod, "cat", "/data/marker"); got != r.claimUID {
			t.Fatalf("%s's data: %q", r.pod, got)
		}
	}
}

// TestNodeLossReport: a class that did not opt in: nothing is deleted, an
// Event and the metric name the stuck claim; when the node returns, the
// replica runs again with its data.
func TestNodeLossReport(t *testing.T) {
	needNodes(t, 3)
	controllerGrace(t, lossGrace)
	lossClass(t, "flashpv-report", "")
	ns := namespace(t, "e2e-nodeloss-report")
	rs := journal(t, ns, "flashpv-report")
	node, lost, _ := victim(rs)

	loseNode(t, node)
	for _, r := range lost {
		eventually(t, lossGrace+3*time.Minute, "a NodeLost Event naming "+r.claim, func() error {
			if evs := eventsWithReason(t, ns, "NodeLost"); !strings.Contains(evs, ns+"/"+r.claim) {
				return fmt.Errorf("events: %q", evs)
			}
			return nil
		})
	}
	m := controllerMetrics(t)
	for _, r := range lost {
		if !strings.Contains(m, `claim="`+ns+"/"+r.claim+`"`) {
			t.Errorf("flashpv_nodeloss_stuck_claims does not name %s:\n%s", r.claim, grepLines(m, "flashpv_nodeloss"))
		}
		if uid := jsonpath(t, ns, "pvc/"+r.claim, "{.metadata.uid}"); uid != r.claimUID {
			t.Fatalf("claim %s was deleted", r.claim)
		}
	}
	if pvs := pvsOn(t, node); len(pvs) != len(lost) {
		t.Fatalf("PVs of %s: %v, want %d", node, pvs, len(lost))
	}
	bringBack(t, node)
	for _, r := range lost {
		waitPodReady(t, ns, r.pod, 5*time.Minute)
		if got := execIn(t, ns, r.pod, "cat", "/data/marker"); got != r.claimUID {
			t.Fatalf("%s after its node returned: %q", r.pod, got)
		}
	}
}

// TestNodeBackWithinGrace: a node deleted and registered again under the
// same name (a new Node UID) before the grace period ends: nothing is
// deleted, also after the grace period.
func TestNodeBackWithinGrace(t *testing.T) {
	needNodes(t, 3)
	const grace = 3 * time.Minute
	controllerGrace(t, grace)
	lossClass(t, "flashpv-recreate", "Recreate")
	ns := namespace(t, "e2e-nodeloss-back")
	rs := journal(t, ns, "flashpv-recreate")
	node, lost, _ := victim(rs)
	oldUID := jsonpath(t, "", "node/"+node, "{.metadata.uid}")

	deleted := loseNode(t, node)
	bringBack(t, node)
	if uid := jsonpath(t, "", "node/"+node, "{.metadata.uid}"); uid == oldUID || uid == "" {
		t.Fatalf("node %s UID %q after re-registering (was %s)", node, uid, oldUID)
	}
	if back := time.Since(deleted); back >= grace {
		t.Fatalf("the node took %s to come back, longer than the grace period %s", back, grace)
	}
	time.Sleep(time.Until(deleted.Add(grace + 30*time.Second)))
	for _, r := range lost {
		if uid := jsonpath(t, ns, "pvc/"+r.claim, "{.metadata.uid}"); uid != r.claimUID {
			t.Fatalf("claim %s was replaced", r.claim)
		}
		waitPodReady(t, ns, r.pod, 5*time.Minute)
		if got := execIn(t, ns, r.pod, "cat", "/data/marker"); got != r.claimUID {
			t.Fatalf("%s's data: %q", r.pod, got)
		}
	}
	if evs := eventsWithReason(t, ns, "NodeLossClaimDeleted"); evs != "" {
		t.Fatalf("claims deleted: %s", evs)
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
