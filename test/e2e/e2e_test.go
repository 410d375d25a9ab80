//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	for _, f := range []string{"storageclass.yaml", "storageclass-xfs.yaml"} {
		if out, err := kubectl("apply", "-f", filepath.Join(repo, "examples", f)); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: is the cluster up (make cluster-up)?", out, err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// exampleStatefulSet is examples/statefulset.yaml; with required set, its
// preferred anti-affinity becomes required (one replica per node).
func exampleStatefulSet(t *testing.T, required bool) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "examples", "statefulset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := string(b)
	if !required {
		return m
	}
	const preferred = `          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    app: journal
`
	const req = `          requiredDuringSchedulingIgnoredDuringExecution:
            - topologyKey: kubernetes.io/hostname
              labelSelector:
                matchLabels:
                  app: journal
`
	if !strings.Contains(m, preferred) {
		t.Fatalf("examples/statefulset.yaml no longer has the preferred anti-affinity this test makes required:\n%s", m)
	}
	return strings.Replace(m, preferred, req, 1)
}

// TestStatefulSet: the example StatefulSet gets a volume per replica on the
// replica's node (with three nodes or more, with required anti-affinity: one
// replica per node), each replica's data survives deleting its pod, which
// comes back on the same node; a replica whose node is cordoned stays
// Pending for its volume's node affinity and runs again after uncordon.
func TestStatefulSet(t *testing.T) {
	nodes := clusterNodes(t)
	spread := len(nodes) >= 3
	ns := namespace(t, "e2e-sts")
	applyYAML(t, ns, exampleStatefulSet(t, spread))
	for i := range 3 {
		waitPodReady(t, ns, fmt.Sprintf("journal-%d", i), 4*time.Minute)
	}
	placed := map[string]string{} // pod -> node
	used := map[string]bool{}
	for i := range 3 {
		pod, pvc := fmt.Sprintf("journal-%d", i), fmt.Sprintf("data-journal-%d", i)
		if phase := jsonpath(t, ns, "pvc/"+pvc, "{.status.phase}"); phase != "Bound" {
			t.Fatalf("%s is %s", pvc, phase)
		}
		node := podNode(t, ns, pod)
		placed[pod] = node
		if spread && used[node] {
			t.Errorf("two replicas on %s despite the required anti-affinity: %v", node, placed)
		}
		used[node] = true
		pv, handle := pvOf(t, ns, pvc)
		if n := pinnedNode(t, pv); n != node {
			t.Errorf("%s (of %s on %s) is pinned to flashpv.dev/node=%q", pv, pod, node, n)
		}
		if st, err := os.Stat(imageOf(t, node, handle)); err != nil || st.Size() != 1<<30 {
			t.Errorf("image of %s in %s's pool: %v", handle, node, err)
		}
		for _, other := range nodes {
			if other != node {
				if _, err := os.Stat(imageOf(t, other, handle)); err == nil {
					t.Errorf("image of %s (on %s) also in %s's pool", handle, node, other)
				}
			}
		}
	}
	if t.Failed() {
		return
	}
	for i := range 3 {
		pod := fmt.Sprintf("journal-%d", i)
		before := must(t, "logs", "-n", ns, pod)
		if strings.Count(before, pod+" started") != 1 {
			t.Fatalf("%s's first log: %q", pod, before)
		}
		must(t, "delete", "pod", "-n", ns, pod, "--wait=true")
		waitPodReady(t, ns, pod, 3*time.Minute)
		after := must(t, "logs", "-n", ns, pod)
		if strings.Count(after, pod+" started") != 2 || !strings.Contains(after, strings.TrimSpace(before)) {
			t.Fatalf("the replacement of %s does not see what the first wrote:\n%s", pod, after)
		}
		if n := podNode(t, ns, pod); n != placed[pod] {
			t.Fatalf("%s came back on %s, its volume is on %s", pod, n, placed[pod])
		}
	}
	if len(nodes) < 2 {
		return // cordoning the only node leaves nothing to compare with
	}

	// A cordoned node keeps its replica's volume: the replica waits for it.
	pod := "journal-0"
	node := placed[pod]
	must(t, "cordon", node)
	t.Cleanup(func() { kubectl("uncordon", node) })
	must(t, "delete", "pod", "-n", ns, pod, "--wait=true")
	eventually(t, 2*time.Minute, pod+" Pending for its volume's node affinity", func() error {
		msg := jsonpath(t, ns, "pod/"+pod, `{.status.conditions[?(@.type=="PodScheduled")].message}`)
		// The scheduler's wording: "didn't match PersistentVolume's node
		// affinity" (1.37), "had volume node affinity conflict" (older).
		if !strings.Contains(msg, "PersistentVolume's node affinity") && !strings.Contains(msg, "volume node affinity conflict") {
			return fmt.Errorf("phase %q, PodScheduled: %q", jsonpath(t, ns, "pod/"+pod, "{.status.phase}"), msg)
		}
		return nil
	})
	if n := jsonpath(t, ns, "pod/"+pod, "{.spec.nodeName}"); n != "" {
		t.Fatalf("%s was scheduled to %s while %s is cordoned", pod, n, node)
	}
	must(t, "uncordon", node)
	waitPodReady(t, ns, pod, 3*time.Minute)
	if n := podNode(t, ns, pod); n != node {
		t.Fatalf("%s runs on %s after uncordon, its volume is on %s", pod, n, node)
	}
	if out := must(t, "logs", "-n", ns, pod); strings.Count(out, pod+" started") != 3 {
		t.Fatalf("%s after uncordon does not see its history:\n%s", pod, out)
	}
}

const claimAndPod = `
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: %[1]s
spec:
  accessModes: ["ReadWriteOnce"]
  storageClassName: %[2]s
  resources:
    requests:
      storage: %[3]s
---
apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: c
      image: busybox:1.36
      command: ["sh", "-c", "%[4]s"]
      volumeMounts:
        - name: v
          mountPath: /data
  volumes:
    - name: v
      persistentVolumeClaim:
        claimName: %[1]s
`

func claim(t *testing.T, ns, name, class, size, script string) {
	t.Helper()
	if script == "" {
		script = "exec sleep 2147483647"
	}
	applyYAML(t, ns, fmt.Sprintf(claimAndPod, name, class, size, script))
}

type capacityObject struct {
	Class, Node string
	Bytes       int64
}

func capacities(t *testing.T) []capacityObject {
	t.Helper()
	out := must(t, "get", "csistoragecapacities", "-n", "flashpv", "-o",
		`jsonpath={range .items[*]}{.storageClassName} {.nodeTopology.matchLabels.flashpv\.dev/node} {.capacity}{"\n"}{end}`)
	var cs []capacityObject
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		cs = append(cs, capacityObject{f[0], f[1], parseQuantity(t, f[2])})
	}
	return cs
}

// parseQuantity reads the forms Kubernetes prints capacities in.
func parseQuantity(t *testing.T, q string) int64 {
	for suffix, mult := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 1e3, "M": 1e6, "G": 1e9} {
		if n, ok := strings.CutSuffix(q, suffix); ok {
			v, err := strconv.ParseInt(n, 10, 64)
			if err != nil {
				t.Fatalf("quantity %q", q)
			}
			return v * mult
		}
	}
	v, err := strconv.ParseInt(q, 10, 64)
	if err != nil {
		t.Fatalf("quantity %q", q)
	}
	return v
}

func capacityFor(t *testing.T, class, node string) int64 {
	for _, c := range capacities(t) {
		if c.Class == class && c.Node == node {
			return c.Bytes
		}
	}
	return -1
}

// poolImages counts the volume images in every node's pool.
func poolImages(t *testing.T) int {
	n := 0
	for _, node := range clusterNodes(t) {
		m, _ := filepath.Glob(filepath.Join(poolDir(t, node), "*.img"))
		n += len(m)
	}
	return n
}

// TestCapacity: CSIStorageCapacity describes each node's pool, drops on the
// node where a volume is made, and a claim larger than every pool is refused
// for lack of space without leaving anything behind.
func TestCapacity(t *testing.T) {
	ns := namespace(t, "e2e-capacity")
	nodes := clusterNodes(t)
	before := map[string]int64{}
	eventually(t, 2*time.Minute, "a CSIStorageCapacity for class flashpv on every node", func() error {
		for _, n := range nodes {
			if before[n] = capacityFor(t, "flashpv", n); before[n] <= 0 {
				return fmt.Errorf("none for %s; objects: %v", n, capacities(t))
			}
		}
		return nil
	})
	claim(t, ns, "four-gig", "flashpv", "4Gi", "")
	waitPodReady(t, ns, "four-gig", 2*time.Minute)
	node := podNode(t, ns, "four-gig")
	eventually(t, 2*time.Minute, "capacity of "+node+" to drop by the new volume", func() error {
		if now := capacityFor(t, "flashpv", node); before[node]-now < 4<<30-64<<20 {
			return fmt.Errorf("capacity %d, was %d", now, before[node])
		}
		return nil
	})

	pvs := func() int { return len(strings.Fields(must(t, "get", "pv", "-o", "name"))) }
	imgBefore, pvBefore := poolImages(t), pvs()
	claim(t, ns, "too-big", "flashpv", "100Ti", "")
	eventually(t, 2*time.Minute, "an event naming the lack of space", func() error {
		ev := must(t, "get", "events", "-n", ns, "-o", `jsonpath={range .items[*]}{.reason}: {.message}{"\n"}{end}`)
		for _, line := range strings.Split(ev, "\n") {
			// Either the scheduler sees the capacity objects and finds no
			// node, or the provisioner tried and flashpv refused.
			if (strings.HasPrefix(line, "ProvisioningFailed") && strings.Contains(line, "not enough space")) ||
				(strings.HasPrefix(line, "FailedScheduling") && strings.Contains(line, "enough free storage")) {
				return nil
			}
		}
		return fmt.Errorf("events:\n%s", ev)
	})
	if phase := jsonpath(t, ns, "pvc/too-big", "{.status.phase}"); phase != "Pending" {
		t.Fatalf("too-big is %s", phase)
	}
	if poolImages(t) != imgBefore || pvs() != pvBefore {
		t.Fatalf("a refused claim left something: images %d->%d, PVs %d->%d", imgBefore, poolImages(t), pvBefore, pvs())
	}
}

// TestOnlineExpansion grows the claim of a running pod, for ext4 and xfs.
func TestOnlineExpansion(t *testing.T) {
	for _, tc := range []struct{ fs, class string }{{"xfs", "flashpv-xfs"}, {"ext4", "flashpv"}} {
		t.Run(tc.fs, func(t *testing.T) {
			ns := namespace(t, "e2e-grow-"+tc.fs)
			claim(t, ns, "grow", tc.class, "1Gi", "dd if=/dev/urandom of=/data/blob bs=1M count=8 && md5sum /data/blob > /data/blob.md5 && exec sleep 2147483647")
			waitPodReady(t, ns, "grow", 2*time.Minute)
			sum := execIn(t, ns, "grow", "cat", "/data/blob.md5")
			must(t, "patch", "pvc", "-n", ns, "grow", "-p", `{"spec":{"resources":{"requests":{"storage":"2Gi"}}}}`)
			if tc.fs == "ext4" && !canGrowMountedExt4(t, podNode(t, ns, "grow")) {
				// The kernel grows a mounted ext4 only for CAP_SYS_RESOURCE,
				// which this machine withholds even from privileged pods:
				// flashpv says so, and grows the filesystem when the volume
				// is staged again.
				eventually(t, 4*time.Minute, "the PVC to report that growth needs CAP_SYS_RESOURCE", func() error {
					conds := jsonpath(t, ns, "pvc/grow", "{.status.conditions}")
					if !strings.Contains(conds, "CAP_SYS_RESOURCE") {
						return fmt.Errorf("conditions: %s", conds)
					}
					return nil
				})
				must(t, "delete", "pod", "-n", ns, "grow", "--wait=true")
				claim(t, ns, "grow", tc.class, "2Gi", "exec sleep 2147483647")
				waitPodReady(t, ns, "grow", 2*time.Minute)
			}
			eventually(t, 3*time.Minute, "PVC status 2Gi", func() error {
				if c := jsonpath(t, ns, "pvc/grow", "{.status.capacity.storage}"); c != "2Gi" {
					return fmt.Errorf("capacity %s, conditions %s", c, jsonpath(t, ns, "pvc/grow", "{.status.conditions}"))
				}
				return nil
			})
			eventually(t, time.Minute, "df in the pod to show about 2 GiB", func() error {
				f := strings.Fields(strings.Split(execIn(t, ns, "grow", "df", "-k", "/data"), "\n")[1])
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				if kb < 1900*1024 {
					return fmt.Errorf("df: %v", f)
				}
				return nil
			})
			if now := execIn(t, ns, "grow", "cat", "/data/blob.md5"); now != sum || !strings.HasPrefix(execIn(t, ns, "grow", "md5sum", "/data/blob"), strings.Fields(sum)[0]) {
				t.Fatal("data changed by the expansion")
			}
		})
	}
}

// canGrowMountedExt4: the kernel grows a mounted ext4 only for a process
// with CAP_SYS_RESOURCE; does flashpv's container on the node have it?
func canGrowMountedExt4(t *testing.T, node string) bool {
	t.Helper()
	// The image has a shell but no cat.
	v := must(t, "exec", "-n", "flashpv", flashpvPod(t, node), "-c", "flashpv", "--",
		"sh", "-c", `while read -r k v; do [ "$k" = CapEff: ] && echo "$v"; done </proc/1/status; exit 0`)
	caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
	if err != nil {
		t.Fatalf("flashpv's CapEff %q: %v", v, err)
	}
	return caps&(1<<24) != 0 // CAP_SYS_RESOURCE
}

// TestBlockVolume: the example Block claim gives the pod a device of the
// requested size that keeps what is written, and grows online.
func TestBlockVolume(t *testing.T) {
	ns := namespace(t, "e2e-block")
	must(t, "apply", "-n", ns, "-f", filepath.Join(repo, "examples", "block-pvc.yaml"))
	waitPodReady(t, ns, "raw-user", 2*time.Minute)
	if size := execIn(t, ns, "raw-user", "blockdev", "--getsize64", "/dev/xvda"); size != "268435456" {
		t.Fatalf("device size %s, want 256 MiB", size)
	}
	execIn(t, ns, "raw-user", "sh", "-c", "printf flashpv-pattern | dd of=/dev/xvda bs=4096 seek=1000 conv=sync,notrunc 2>/dev/null && sync")
	if got := execIn(t, ns, "raw-user", "sh", "-c", "dd if=/dev/xvda bs=4096 skip=1000 count=1 2>/dev/null | head -c 15"); got != "flashpv-pattern" {
		t.Fatalf("read back %q", got)
	}
	must(t, "patch", "pvc", "-n", ns, "raw", "-p", `{"spec":{"resources":{"requests":{"storage":"512Mi"}}}}`)
	eventually(t, 3*time.Minute, "the device to grow to 512 MiB", func() error {
		if size := execIn(t, ns, "raw-user", "blockdev", "--getsize64", "/dev/xvda"); size != "536870912" {
			return fmt.Errorf("size %s, PVC %s", size, jsonpath(t, ns, "pvc/raw", "{.status.capacity.storage}"))
		}
		return nil
	})
	if got := execIn(t, ns, "raw-user", "sh", "-c", "dd if=/dev/xvda bs=4096 skip=1000 count=1 2>/dev/null | head -c 15"); got != "flashpv-pattern" {
		t.Fatalf("pattern lost by growth: %q", got)
	}
}

// TestDriverRestart deletes the flashpv pod under a writing workload.
func TestDriverRestart(t *testing.T) {
	ns := namespace(t, "e2e-restart")
	claim(t, ns, "writer", "flashpv", "1Gi", "i=0; while true; do i=$((i+1)); echo line-$i >> /data/log; sync; sleep 0.2; done")
	waitPodReady(t, ns, "writer", 2*time.Minute)
	time.Sleep(2 * time.Second)
	first := execIn(t, ns, "writer", "head", "-n", "5", "/data/log")
	old := flashpvPod(t, podNode(t, ns, "writer"))
	must(t, "delete", "-n", "flashpv", "pod/"+old, "--wait=true")
	must(t, "rollout", "status", "-n", "flashpv", "daemonset/flashpv-node", "--timeout=180s")
	linesBefore := len(strings.Split(execIn(t, ns, "writer", "cat", "/data/log"), "\n"))
	time.Sleep(2 * time.Second)
	if n := len(strings.Split(execIn(t, ns, "writer", "cat", "/data/log"), "\n")); n <= linesBefore {
		t.Fatalf("the workload stopped writing across the driver restart (%d lines, then %d)", linesBefore, n)
	}
	if got := execIn(t, ns, "writer", "head", "-n", "5", "/data/log"); got != first {
		t.Fatalf("the workload's data changed: %q, was %q", got, first)
	}
	// The new driver serves: stats of the old volume and a new claim.
	claim(t, ns, "after", "flashpv", "1Gi", "")
	waitPodReady(t, ns, "after", 2*time.Minute)
}

// TestTeardown: deleting a StatefulSet and its claims removes the volumes,
// their images, loop devices and mounts.
func TestTeardown(t *testing.T) {
	ns := namespace(t, "e2e-teardown")
	must(t, "apply", "-n", ns, "-f", filepath.Join(repo, "examples", "statefulset.yaml"))
	for i := range 3 {
		waitPodReady(t, ns, fmt.Sprintf("journal-%d", i), 3*time.Minute)
	}
	var handles, pvNames, nodes []string
	for i := range 3 {
		pv, h := pvOf(t, ns, fmt.Sprintf("data-journal-%d", i))
		handles, pvNames = append(handles, h), append(pvNames, pv)
		nodes = append(nodes, podNode(t, ns, fmt.Sprintf("journal-%d", i)))
	}
	must(t, "delete", "-n", ns, "statefulset/journal", "--wait=true")
	eventually(t, 2*time.Minute, "the pods to go", func() error {
		if out := must(t, "get", "pods", "-n", ns, "-o", "name"); out != "" {
			return fmt.Errorf("pods: %s", out)
		}
		return nil
	})
	must(t, "delete", "-n", ns, "pvc", "--all", "--wait=true")
	eventually(t, 2*time.Minute, "the PVs, images, loop devices and mounts to go", func() error {
		for i, h := range handles {
			if _, err := os.Stat(imageOf(t, nodes[i], h)); err == nil {
				return fmt.Errorf("image of %s still in the pool of %s", h, nodes[i])
			}
			if out, _ := kubectl("get", "pv", "-o", "jsonpath={.items[*].spec.csi.volumeHandle}"); strings.Contains(out, h) {
				return fmt.Errorf("PV of %s still exists", h)
			}
		}
		for i, pv := range pvNames {
			mounts, err := os.ReadFile(filepath.Join(nodeRoot(t, nodes[i]), "..", "mountinfo"))
			if err != nil {
				return err
			}
			if strings.Contains(string(mounts), pv) {
				return fmt.Errorf("a mount of %s is left on %s", pv, nodes[i])
			}
		}
		out, _ := execHost("losetup", "-n", "-O", "BACK-FILE")
		for _, h := range handles {
			_, key, _ := strings.Cut(h, ".")
			if strings.Contains(out, key) {
				return fmt.Errorf("loop device of %s still attached", h)
			}
		}
		return nil
	})
}
