//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/flashpv/flashpv/pkg/kubectlflashpv"
)

var (
	pluginOnce sync.Once
	pluginDir  string
	pluginErr  error
)

// pluginBin builds cmd/kubectl-flashpv once per run, into a directory of
// its own that `kubectl flashpv` finds on the PATH.
func pluginBin(t *testing.T) string {
	t.Helper()
	pluginOnce.Do(func() {
		pluginDir, pluginErr = os.MkdirTemp("", "kubectl-flashpv-e2e")
		if pluginErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(pluginDir, "kubectl-flashpv"), "./cmd/kubectl-flashpv")
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			pluginErr = fmt.Errorf("go build ./cmd/kubectl-flashpv: %v: %s", err, out)
		}
	})
	if pluginErr != nil {
		t.Fatal(pluginErr)
	}
	return filepath.Join(pluginDir, "kubectl-flashpv")
}

// plugin runs kubectl-flashpv against the local cluster (or the kubeconfig
// given in env) and returns its stdout, stderr and exit code.
func plugin(t *testing.T, env []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(pluginBin(t), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(stateDir, "kc", "admin.kubeconfig"))
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("kubectl-flashpv %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// pluginJSON runs a command with -o json into v; it must succeed.
func pluginJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out, errOut, code := plugin(t, nil, append(args, "-o", "json")...)
	if code != 0 {
		t.Fatalf("kubectl flashpv %v: exit %d: %s", args, code, errOut)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("kubectl flashpv %v -o json: %v: %s", args, err, out)
	}
}

// TestKubectlPlugin runs every read-only command of `kubectl flashpv`
// against the cluster with a volume, a pod and a snapshot in it, and checks
// what each shows against the objects and the nodes. The node plugins'
// status comes through the controller (--node-status-interval 10s here).
func TestKubectlPlugin(t *testing.T) {
	nodes := clusterNodes(t)
	ns := namespace(t, "kubectl-plugin")
	setArgs(t, "deployment", "flashpv-controller", 0, func(a []string) []string {
		return withArg(a, "--node-status-interval", "10s")
	})
	claim(t, ns, "data", "flashpv", "64Mi", "dd if=/dev/urandom of=/data/f bs=1M count=8 && sync && exec sleep 2147483647")
	waitPodReady(t, ns, "data", 3*time.Minute)
	node := podNode(t, ns, "data")
	pv, handle := pvOf(t, ns, "data")
	snapshotClass(t)
	takeSnapshot(t, ns, "snap", "data")

	t.Run("kubectl finds the plugin", func(t *testing.T) {
		pluginBin(t)
		cmd := exec.Command(kubectlEx, "flashpv", "version")
		cmd.Env = append(os.Environ(), "PATH="+pluginDir+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "kubectl-flashpv ") {
			t.Errorf("kubectl flashpv version: %v: %s", err, out)
		}
	})

	t.Run("info", func(t *testing.T) {
		var infos []kubectlflashpv.NodeInfo
		eventually(t, 2*time.Minute, "every node's status", func() error {
			pluginJSON(t, &infos, "info")
			for _, n := range nodes {
				i := slices.IndexFunc(infos, func(x kubectlflashpv.NodeInfo) bool { return x.Node == n })
				if i < 0 || infos[i].Status != "ok" || len(infos[i].Pools) == 0 {
					return fmt.Errorf("node %s: %+v", n, infos)
				}
			}
			return nil
		})
		for _, info := range infos {
			if !slices.Contains(nodes, info.Node) {
				continue
			}
			p := info.Pools[0]
			if info.Version == "" || p.Name != "default" || p.Kind != "image" || p.Health != "ok" || p.Size <= 0 || p.Free <= 0 || p.Free > p.Size {
				t.Errorf("node %s: %+v", info.Node, info)
			}
			if info.Node == node && (p.Volumes < 1 || p.Promised < 64<<20) {
				t.Errorf("node %s holds the claim's volume: %+v", node, p)
			}
		}
		out, _, code := plugin(t, nil, "info")
		if code != 0 || !strings.HasPrefix(out, "NODE") || !strings.Contains(out, node) {
			t.Errorf("table (exit %d):\n%s", code, out)
		}
	})

	t.Run("volumes", func(t *testing.T) {
		var v kubectlflashpv.VolumeInfo
		eventually(t, 2*time.Minute, "the volume's used space and snapshot", func() error {
			var vols []kubectlflashpv.VolumeInfo
			pluginJSON(t, &vols, "volumes")
			i := slices.IndexFunc(vols, func(x kubectlflashpv.VolumeInfo) bool { return x.PV == pv })
			if i < 0 {
				return fmt.Errorf("no %s in %+v", pv, vols)
			}
			if v = vols[i]; v.Used < 8<<20 || v.Snapshots != 1 {
				return fmt.Errorf("%+v", v)
			}
			return nil
		})
		if v.ID != handle || v.Claim != ns+"/data" || !slices.Equal(v.Pods, []string{"data"}) || v.Node != node || v.Pool != "default" ||
			v.Size != 64<<20 || v.Used > v.Size || v.Filesystem != "ext4" || v.Health != "ok" {
			t.Errorf("volume: %+v", v)
		}
		out, _, code := plugin(t, nil, "volumes", "-o", "yaml")
		var vols []kubectlflashpv.VolumeInfo
		if err := yaml.Unmarshal([]byte(out), &vols); code != 0 || err != nil || !slices.ContainsFunc(vols, func(x kubectlflashpv.VolumeInfo) bool { return x.PV == pv }) {
			t.Errorf("yaml (exit %d, %v):\n%s", code, err, out)
		}
	})

	t.Run("snapshots", func(t *testing.T) {
		var snaps []kubectlflashpv.SnapshotInfo
		pluginJSON(t, &snaps, "snapshots")
		i := slices.IndexFunc(snaps, func(s kubectlflashpv.SnapshotInfo) bool { return s.Snapshot == ns+"/snap" })
		if i < 0 {
			t.Fatalf("no snapshot %s/snap in %+v", ns, snaps)
		}
		if s := snaps[i]; !s.Ready || s.Source != handle || s.PV != pv || s.Claim != ns+"/data" || s.Node != node || s.Size < 64<<20 || !strings.HasPrefix(s.ID, "default.") {
			t.Errorf("snapshot: %+v", s)
		}
		out, _, _ := plugin(t, nil, "snapshots")
		if !strings.HasPrefix(out, "CONTENT") || !strings.Contains(out, ns+"/snap") {
			t.Errorf("table:\n%s", out)
		}
	})

	t.Run("orphans", func(t *testing.T) {
		var reports []kubectlflashpv.NodeOrphans
		eventually(t, 2*time.Minute, "every node judging orphans", func() error {
			pluginJSON(t, &reports, "orphans")
			for _, n := range nodes {
				i := slices.IndexFunc(reports, func(r kubectlflashpv.NodeOrphans) bool { return r.Node == n })
				if i < 0 || !reports[i].Judged {
					return fmt.Errorf("node %s: %+v", n, reports)
				}
			}
			return nil
		})
		for _, r := range reports {
			for _, o := range r.Orphans {
				if o.ID == handle {
					t.Errorf("the claim's volume is reported orphaned on %s: %+v", r.Node, o)
				}
			}
		}
		if out, _, code := plugin(t, nil, "orphans"); code != 0 || !strings.HasPrefix(out, "NODE") {
			t.Errorf("table (exit %d):\n%s", code, out)
		}
	})

	t.Run("doctor", func(t *testing.T) {
		out, errOut, _ := plugin(t, nil, "doctor", "-o", "json")
		var fs []kubectlflashpv.Finding
		if err := json.Unmarshal([]byte(out), &fs); err != nil {
			t.Fatalf("%v: %s %s", err, out, errOut)
		}
		result := map[string][]string{}
		for _, f := range fs {
			result[f.Check] = append(result[f.Check], f.Result+": "+f.Message)
		}
		for _, check := range []string{"csidriver", "daemonset", "snapshots", "pools", "node-loss"} {
			if len(result[check]) == 0 || !strings.HasPrefix(result[check][0], "ok") {
				t.Errorf("%s: %v", check, result[check])
			}
		}
		for _, r := range result["capacity"] {
			if strings.HasPrefix(r, "unknown") {
				t.Errorf("capacity: %v", result["capacity"])
			}
		}
		table, _, _ := plugin(t, nil, "doctor")
		if !strings.HasPrefix(table, "CHECK") || !strings.Contains(table, "csidriver") {
			t.Errorf("table:\n%s", table)
		}
	})
}

// TestKubectlPluginErrors: without a cluster, and as a ServiceAccount
// without permissions, the plugin says what is missing in one line.
func TestKubectlPluginErrors(t *testing.T) {
	_, errOut, code := plugin(t, []string{"KUBECONFIG=" + filepath.Join(t.TempDir(), "none"), "HOME=" + t.TempDir()}, "info")
	if code != 1 || !strings.Contains(errOut, "no cluster") {
		t.Errorf("no kubeconfig: exit %d: %s", code, errOut)
	}

	ns := namespace(t, "kubectl-plugin-rbac")
	must(t, "create", "serviceaccount", "-n", ns, "nobody")
	token := must(t, "create", "token", "-n", ns, "nobody", "--duration=10m")
	server := must(t, "config", "view", "--raw", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}")
	ca := must(t, "config", "view", "--raw", "--minify", "--flatten", "-o", "jsonpath={.clusters[0].cluster.certificate-authority-data}")
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(kc, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q, certificate-authority-data: %q}}]
contexts: [{name: c, context: {cluster: c, user: u, namespace: %s}}]
current-context: c
users: [{name: u, user: {token: %q}}]
`, server, ca, ns, token)), 0o600)
	for _, tc := range []struct{ cmd, want string }{
		{"volumes", "forbidden: this needs permission to list persistentvolumes cluster-wide"},
		{"info", "forbidden: this needs permission to list nodes cluster-wide"},
	} {
		_, errOut, code := plugin(t, []string{"KUBECONFIG=" + kc}, tc.cmd)
		if code != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%s as a ServiceAccount without permissions: exit %d: %s", tc.cmd, code, errOut)
		}
	}
}

// TestKubectlPluginMove moves a claim whose pod has stopped to another node
// with `kubectl flashpv move --wait` and checks that `volumes` shows it
// there with its data. It needs the move controller.
func TestKubectlPluginMove(t *testing.T) {
	needNodes(t, 2)
	snapshotClass(t) // a move's pre-copy is a snapshot
	ns := namespace(t, "kubectl-plugin-move")
	claim(t, ns, "data", "flashpv", "64Mi", "echo moved-data > /data/f && sync && exec sleep 2147483647")
	waitPodReady(t, ns, "data", 3*time.Minute)
	from := podNode(t, ns, "data")
	pv, _ := pvOf(t, ns, "data")
	must(t, "delete", "pod", "-n", ns, "data", "--wait=true")
	var to string
	for _, n := range clusterNodes(t) {
		if n != from {
			to = n
			break
		}
	}
	out, errOut, code := plugin(t, nil, "move", "-n", ns, "data", "--to", to, "--timeout", "10m", "-o", "json")
	var res kubectlflashpv.MoveResult
	if err := json.Unmarshal([]byte(out), &res); code != 0 || err != nil || res.State != "Done" || res.To != to {
		t.Fatalf("move (exit %d, %v): %s\n%s", code, err, out, errOut)
	}
	if !strings.Contains(errOut, "Done") {
		t.Errorf("the states it went through: %s", errOut)
	}
	var vols []kubectlflashpv.VolumeInfo
	pluginJSON(t, &vols, "volumes")
	i := slices.IndexFunc(vols, func(v kubectlflashpv.VolumeInfo) bool { return v.Claim == ns+"/data" })
	if i < 0 || vols[i].Node != to {
		t.Errorf("after the move (the PV was %s on %s): %+v", pv, from, vols)
	}
	// The same claim and pod again (the claim is unchanged): the pod
	// follows the volume.
	claim(t, ns, "data", "flashpv", "64Mi", "")
	waitPodReady(t, ns, "data", 3*time.Minute)
	if n := podNode(t, ns, "data"); n != to {
		t.Errorf("the claim's pod runs on %s, not %s", n, to)
	}
	if got := execIn(t, ns, "data", "cat", "/data/f"); got != "moved-data" {
		t.Errorf("data after the move: %q", got)
	}
}
