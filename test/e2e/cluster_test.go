//go:build e2e

// Package e2e tests flashpv on the real local cluster that hack/cluster
// starts (make e2e): real kubelet, real containers, the deploy/ manifests and
// the examples/ objects.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	repo, _   = filepath.Abs("../..")
	stateDir  = envOr("STATE", filepath.Join(repo, "_output/cluster"))
	binDir    = envOr("BIN", filepath.Join(repo, "_output/bin"))
	logsDir   = filepath.Join(repo, "_output", "e2e-logs")
	kubectlEx = filepath.Join(binDir, "kubectl")
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// clusterNodes are the names of the harness's nodes (node-1 ... node-N).
func clusterNodes(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, "nodes"))
	if err != nil {
		t.Fatalf("the cluster's node list: %v (is it up? make cluster-up)", err)
	}
	return strings.Fields(string(b))
}

// needNodes skips a test that needs more nodes than the cluster has.
func needNodes(t *testing.T, n int) []string {
	t.Helper()
	nodes := clusterNodes(t)
	if len(nodes) < n {
		t.Skipf("needs %d nodes, the cluster has %d (NODES=%d make e2e)", n, len(nodes), n)
	}
	return nodes
}

// nodeRoot is a path to a node's root directory as the host sees it: the
// node's holder process's root, seen through /proc, resolves paths in the
// node's own mount namespace (its pool filesystem, its mounts).
func nodeRoot(t *testing.T, node string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stateDir, node, "holder.pid"))
	if err != nil {
		t.Fatalf("holder of %s: %v", node, err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		t.Fatalf("holder of %s: empty pid file", node)
	}
	return "/proc/" + f[0] + "/root"
}

// poolDir is a node's default pool, seen from the host.
func poolDir(t *testing.T, node string) string {
	return filepath.Join(nodeRoot(t, node), "var/lib/flashpv/pools/default")
}

// kubectl runs kubectl against the local cluster.
func kubectl(args ...string) (string, error) {
	cmd := exec.Command(kubectlEx, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(stateDir, "kc", "admin.kubeconfig"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return strings.TrimSpace(out.String()), nil
}

func must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := kubectl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// applyYAML applies a manifest given as text.
func applyYAML(t *testing.T, ns, manifest string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "m.yaml")
	os.WriteFile(f, []byte(manifest), 0o600)
	must(t, "apply", "-n", ns, "-f", f)
}

// eventually polls f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
}

// namespace makes a namespace for one test and, when the test fails,
// collects what explains it; then deletes the namespace and waits for its
// volumes to go.
func namespace(t *testing.T, name string) string {
	t.Helper()
	kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s")
	must(t, "create", "namespace", name)
	t.Cleanup(func() {
		if t.Failed() {
			collectLogs(t, name)
		}
		kubectl("delete", "namespace", name, "--wait=true", "--timeout=180s")
	})
	return name
}

func collectLogs(t *testing.T, ns string) {
	dir := filepath.Join(logsDir, t.Name())
	os.MkdirAll(dir, 0o755)
	save := func(file string, args ...string) {
		out, err := kubectl(args...)
		if err != nil {
			out += "\n" + err.Error()
		}
		os.WriteFile(filepath.Join(dir, file), []byte(out), 0o644)
	}
	save("namespace.txt", "describe", "all,pvc", "-n", ns)
	save("events.txt", "get", "events", "-A", "--sort-by=.lastTimestamp")
	save("pv.txt", "describe", "pv")
	save("csistoragecapacities.txt", "get", "csistoragecapacities", "-A", "-o", "yaml")
	for _, c := range []string{"flashpv", "csi-provisioner", "csi-resizer", "csi-snapshotter"} {
		save(c+".log", "logs", "-n", "flashpv", "-l", "app.kubernetes.io/name=flashpv", "-c", c, "--tail=400", "--prefix", "--max-log-requests=10")
	}
	save("snapshots.txt", "describe", "volumesnapshots,volumesnapshotcontents", "-A")
	save("snapshot-controller.log", "logs", "-n", "kube-system", "-l", "app.kubernetes.io/name=snapshot-controller", "--tail=400", "--prefix")
	save("nodes.txt", "describe", "nodes")
	logs, _ := filepath.Glob(filepath.Join(stateDir, "*", "logs", "*.log"))
	for _, f := range logs {
		if b, err := os.ReadFile(f); err == nil {
			if len(b) > 400_000 {
				b = b[len(b)-400_000:]
			}
			machine := filepath.Base(filepath.Dir(filepath.Dir(f)))
			os.WriteFile(filepath.Join(dir, machine+"-"+filepath.Base(f)), b, 0o644)
		}
	}
	t.Logf("cluster and driver logs saved in %s", dir)
}

func jsonpath(t *testing.T, ns, obj, path string) string {
	t.Helper()
	out, _ := kubectl("get", "-n", ns, obj, "-o", "jsonpath="+path)
	return out
}

// waitPodReady waits for a pod to be Ready.
func waitPodReady(t *testing.T, ns, pod string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "pod "+pod+" Ready", func() error {
		if s := jsonpath(t, ns, "pod/"+pod, `{.status.conditions[?(@.type=="Ready")].status}`); s != "True" {
			return fmt.Errorf("Ready=%q phase=%q", s, jsonpath(t, ns, "pod/"+pod, "{.status.phase}"))
		}
		return nil
	})
}

// pvOf returns the PV bound to a claim and its volume handle.
func pvOf(t *testing.T, ns, pvc string) (pv, handle string) {
	t.Helper()
	pv = jsonpath(t, ns, "pvc/"+pvc, "{.spec.volumeName}")
	if pv == "" {
		t.Fatalf("claim %s is not bound", pvc)
	}
	return pv, jsonpath(t, "", "pv/"+pv, "{.spec.csi.volumeHandle}")
}

// imageOf is the pool file of a volume handle (<pool>.<key>) on a node.
func imageOf(t *testing.T, node, handle string) string {
	_, key, _ := strings.Cut(handle, ".")
	return filepath.Join(poolDir(t, node), key+".img")
}

// podNode is the node a pod runs on.
func podNode(t *testing.T, ns, pod string) string {
	t.Helper()
	n := jsonpath(t, ns, "pod/"+pod, "{.spec.nodeName}")
	if n == "" {
		t.Fatalf("pod %s has no node", pod)
	}
	return n
}

type nodeAffinity struct {
	Required struct {
		NodeSelectorTerms []struct {
			MatchExpressions []struct {
				Key    string   `json:"key"`
				Values []string `json:"values"`
			} `json:"matchExpressions"`
		} `json:"nodeSelectorTerms"`
	} `json:"required"`
}

// pinnedNode returns the flashpv.dev/node value of a PV's node affinity.
func pinnedNode(t *testing.T, pv string) string {
	t.Helper()
	var na nodeAffinity
	if err := json.Unmarshal([]byte(jsonpath(t, "", "pv/"+pv, "{.spec.nodeAffinity}")), &na); err != nil {
		t.Fatalf("PV %s node affinity: %v", pv, err)
	}
	for _, term := range na.Required.NodeSelectorTerms {
		for _, e := range term.MatchExpressions {
			if e.Key == "flashpv.dev/node" && len(e.Values) == 1 {
				return e.Values[0]
			}
		}
	}
	return ""
}

// execIn runs a command in a pod's container.
func execIn(t *testing.T, ns, pod string, cmd ...string) string {
	t.Helper()
	return must(t, append([]string{"exec", "-n", ns, pod, "--"}, cmd...)...)
}

func execHost(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
