package main

// What the transfer part reads about the nodes of the local cluster from
// outside Kubernetes: each node's holder process (its namespaces and root,
// as hack/cluster makes them and test/e2e finds them), flashpv's pods,
// metrics, logs and processes, and the DaemonSet's bandwidth flag.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/flashpv/flashpv/pkg/wellknown"
)

// flashpv's namespace, DaemonSet and container, as deploy/kubernetes names
// them.
const (
	flashpvNamespace = "flashpv"
	flashpvDaemonSet = "flashpv-node"
	flashpvContainer = "flashpv"
	bandwidthFlag    = "--transfer-bandwidth="
)

// clusterNode is a node of the local cluster as the host sees it.
type clusterNode struct {
	name   string
	holder string // PID of the process that owns its namespaces
	root   string // its root directory, seen from the host
	ip     string // its address on the cluster's bridge
	state  string // hack/cluster's directory of this node
}

// node finds a node's holder process in hack/cluster's state directory.
func (k *kube) node(ctx context.Context, state, name string) (*clusterNode, error) {
	b, err := os.ReadFile(filepath.Join(state, name, "holder.pid"))
	if err != nil {
		return nil, fmt.Errorf("node %s's holder (is this the local cluster of hack/cluster? -cluster-state): %w", name, err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return nil, fmt.Errorf("node %s: empty holder.pid", name)
	}
	n := &clusterNode{name: name, holder: f[0], root: "/proc/" + f[0] + "/root", state: filepath.Join(state, name)}
	if _, err := os.Stat(n.root); err != nil {
		return nil, fmt.Errorf("node %s's holder: %w", name, err)
	}
	node, err := k.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			n.ip = a.Address
		}
	}
	if n.ip == "" {
		return nil, fmt.Errorf("node %s has no InternalIP", name)
	}
	return n, nil
}

// coldFile writes back and drops the page cache of a file on a node, and
// of the node's pool image on the host (the loop device's backing file),
// so that a copy reads it from the disk.
func (n *clusterNode) coldFile(path string) error {
	for _, p := range []string{path, filepath.Join(n.state, "pool.img")} {
		f, err := os.Open(p)
		if err != nil {
			if p == path {
				return err
			}
			continue
		}
		unix.Syncfs(int(f.Fd()))
		unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
	}
	return nil
}

// flashpvPod is the flashpv pod on a node.
func (k *kube) flashpvPod(ctx context.Context, node string) (*corev1.Pod, error) {
	pods, err := k.cs.CoreV1().Pods(flashpvNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=flashpv", FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; podReady(p) {
			return p, nil
		}
	}
	return nil, fmt.Errorf("no Ready flashpv pod on %s", node)
}

// transferBytesIn reads flashpv_transfer_bytes_total{direction="in"} from
// a flashpv pod's metrics, through the API server's proxy.
func (k *kube) transferBytesIn(ctx context.Context, pod string) (data, wire int64, err error) {
	raw, err := k.cs.CoreV1().Pods(flashpvNamespace).ProxyGet("http", pod, "9808", "metrics", nil).DoRaw(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("metrics of %s: %w", pod, err)
	}
	return metricValue(raw, "flashpv_transfer_bytes_total", `direction="in"`, `kind="data"`),
		metricValue(raw, "flashpv_transfer_bytes_total", `direction="in"`, `kind="wire"`), nil
}

// metricValue is the value of the sample of name whose labels include all
// of labels, in Prometheus' text format; 0 when there is none (a counter
// not yet touched is not exposed).
func metricValue(text []byte, name string, labels ...string) int64 {
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		set, value, ok := strings.Cut(rest, "} ")
		if !ok {
			continue
		}
		all := true
		for _, l := range labels {
			all = all && slices.Contains(strings.Split(set, ","), l)
		}
		if all {
			v, _ := strconv.ParseFloat(strings.Fields(value)[0], 64)
			return int64(v)
		}
	}
	return 0
}

// logFields are the key=value pairs of a structured klog line.
var logField = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S+)`)

// findLog waits (klog flushes every few seconds) for the first line of a
// pod's flashpv container since since with msg and the field key=value,
// and returns its fields, unquoted.
func (k *kube) findLog(ctx context.Context, pod string, since time.Time, msg, key, value string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var found map[string]string
	err := poll(ctx, time.Second, func() (bool, string, error) {
		t := metav1.NewTime(since.Add(-time.Second))
		raw, err := k.cs.CoreV1().Pods(flashpvNamespace).GetLogs(pod, &corev1.PodLogOptions{Container: flashpvContainer, SinceTime: &t}).DoRaw(ctx)
		if err != nil {
			return false, "", err
		}
		found = logLine(raw, msg, key, value)
		return found != nil, fmt.Sprintf("no %q with %s=%s in the log of %s", msg, key, value, pod), nil
	})
	return found, err
}

// logLine finds the first line of msg with key=value in klog output.
func logLine(raw []byte, msg, key, value string) map[string]string {
	for _, line := range strings.Split(string(raw), "\n") {
		_, rest, ok := strings.Cut(line, "] \""+msg+"\"")
		if !ok {
			continue
		}
		fields := map[string]string{}
		for _, m := range logField.FindAllStringSubmatch(rest, -1) {
			v := m[2]
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			fields[m[1]] = v
		}
		if fields[key] == value {
			return fields
		}
	}
	return nil
}

// flashpvPID is the host PID of the flashpv process of a node (the nodes
// have no PID namespace of their own; its --node-id names the node).
func flashpvPID(node string) (int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		if filepath.Base(args[0]) == "flashpv" && slices.Contains(args, "--node-id="+node) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no flashpv process of node %s", node)
}

// cpuSeconds is the user and system CPU time of a process so far.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command's closing parenthesis; utime and stime are
	// the 14th and 15th of the whole line, in clock ticks (100 per second
	// on Linux).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100, nil
}

// runQueueSeconds is how long the threads of a process have waited,
// runnable, for a CPU (schedstat's second field, summed over the threads
// it has now): a transfer slowed by a busy machine rather than by its own
// work shows here. 0 where the kernel keeps no schedstat.
func runQueueSeconds(pid string) float64 {
	tasks, err := os.ReadDir("/proc/" + pid + "/task")
	if err != nil {
		return 0
	}
	var ns int64
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/" + pid + "/task/" + t.Name() + "/schedstat")
		if f := strings.Fields(string(b)); err == nil && len(f) == 3 {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			ns += n
		}
	}
	return float64(ns) / 1e9
}

// loadAverage is the machine's load average over the last minute.
func loadAverage() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	var l float64
	fmt.Sscan(string(b), &l)
	return l
}

// transferBandwidth is the DaemonSet's --transfer-bandwidth ("" when not
// given: the flag's default).
func (k *kube) transferBandwidth(ctx context.Context) (string, error) {
	ds, err := k.cs.AppsV1().DaemonSets(flashpvNamespace).Get(ctx, flashpvDaemonSet, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	c := flashpvOf(ds)
	if c == nil {
		return "", fmt.Errorf("DaemonSet %s has no container %s", flashpvDaemonSet, flashpvContainer)
	}
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, bandwidthFlag); ok {
			return v, nil
		}
	}
	return "", nil
}

func flashpvOf(ds *appsv1.DaemonSet) *corev1.Container {
	for i, c := range ds.Spec.Template.Spec.Containers {
		if c.Name == flashpvContainer {
			return &ds.Spec.Template.Spec.Containers[i]
		}
	}
	return nil
}

// setTransferBandwidth sets the DaemonSet's --transfer-bandwidth (removes
// it for "") and waits until the new pods run on every node.
func (k *kube) setTransferBandwidth(ctx context.Context, value string) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ds, err := k.cs.AppsV1().DaemonSets(flashpvNamespace).Get(ctx, flashpvDaemonSet, metav1.GetOptions{})
		if err != nil {
			return err
		}
		c := flashpvOf(ds)
		if c == nil {
			return fmt.Errorf("DaemonSet %s has no container %s", flashpvDaemonSet, flashpvContainer)
		}
		c.Args = withBandwidth(c.Args, value)
		_, err = k.cs.AppsV1().DaemonSets(flashpvNamespace).Update(ctx, ds, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return err
	}
	return k.waitRollout(ctx)
}

// withBandwidth is args with --transfer-bandwidth set to value in place
// (appended when missing), or removed for "".
func withBandwidth(args []string, value string) []string {
	var out []string
	set := false
	for _, a := range args {
		if strings.HasPrefix(a, bandwidthFlag) {
			if value != "" && !set {
				out, set = append(out, bandwidthFlag+value), true
			}
			continue
		}
		out = append(out, a)
	}
	if value != "" && !set {
		out = append(out, bandwidthFlag+value)
	}
	return out
}

// waitRollout waits until every node runs a Ready flashpv pod of the
// DaemonSet's current template.
func (k *kube) waitRollout(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	return poll(ctx, 2*time.Second, func() (bool, string, error) {
		ds, err := k.cs.AppsV1().DaemonSets(flashpvNamespace).Get(ctx, flashpvDaemonSet, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		s := ds.Status
		done := s.ObservedGeneration >= ds.Generation && s.UpdatedNumberScheduled == s.DesiredNumberScheduled &&
			s.NumberAvailable == s.DesiredNumberScheduled && s.NumberUnavailable == 0
		return done, fmt.Sprintf("DaemonSet %s: %d of %d updated, %d available", flashpvDaemonSet, s.UpdatedNumberScheduled, s.DesiredNumberScheduled, s.NumberAvailable), nil
	})
}

// waitSchedulable waits until the nodes are Ready and not cordoned (an e2e
// test may cordon one for a while).
func (k *kube) waitSchedulable(ctx context.Context, nodes ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	logged := false
	return poll(ctx, 5*time.Second, func() (bool, string, error) {
		for _, name := range nodes {
			n, err := k.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			ready := false
			for _, c := range n.Status.Conditions {
				ready = ready || (c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue)
			}
			if !ready || n.Spec.Unschedulable {
				if !logged {
					log.Printf("cluster: waiting for node %s (Ready %v, cordoned %v)", name, ready, n.Spec.Unschedulable)
					logged = true
				}
				return false, "node " + name + " not Ready or cordoned", nil
			}
		}
		return true, "", nil
	})
}

// roomiest is the node of candidates with the most capacity for class in
// its CSIStorageCapacity; the first when none is published.
func (k *kube) roomiest(ctx context.Context, class string, candidates []string) (string, error) {
	list, err := k.cs.StorageV1().CSIStorageCapacities(flashpvNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", err
	}
	best, most := candidates[0], int64(-1)
	for _, c := range list.Items {
		if c.StorageClassName != class || c.NodeTopology == nil || c.Capacity == nil {
			continue
		}
		n := c.NodeTopology.MatchLabels[wellknown.TopologyKey]
		if slices.Contains(candidates, n) && c.Capacity.Value() > most {
			best, most = n, c.Capacity.Value()
		}
	}
	return best, nil
}
