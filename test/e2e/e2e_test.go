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

	"github.com/flashpv/flashpv/pkg/mounter"
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

// TestStatefulSet: the example StatefulSet gets a volume per replica on this
// node, and a replica's data survives the replica.
func TestStatefulSet(t *testing.T) {
	ns := namespace(t, "e2e-sts")
	must(t, "apply", "-n", ns, "-f", filepath.Join(repo, "examples", "statefulset.yaml"))
	for i := range 3 {
		waitPodReady(t, ns, fmt.Sprintf("journal-%d", i), 3*time.Minute)
	}
	for i := range 3 {
		pvc := fmt.Sprintf("data-journal-%d", i)
		if phase := jsonpath(t, ns, "pvc/"+pvc, "{.status.phase}"); phase != "Bound" {
			t.Fatalf("%s is %s", pvc, phase)
		}
		pv, handle := pvOf(t, ns, pvc)
		if n := pinnedNode(t, pv); n != nodeName {
			t.Errorf("%s is pinned to %q, want flashpv.dev/node=%s", pv, n, nodeName)
		}
		if st, err := os.Stat(imageOf(handle)); err != nil || st.Size() != 1<<30 {
			t.Errorf("image of %s in the pool: %v", handle, err)
		}
	}
	before := must(t, "logs", "-n", ns, "journal-1")
	if strings.Count(before, "journal-1 started") != 1 {
		t.Fatalf("journal-1's first log: %q", before)
	}
	must(t, "delete", "pod", "-n", ns, "journal-1", "--wait=true")
	waitPodReady(t, ns, "journal-1", 3*time.Minute)
	after := must(t, "logs", "-n", ns, "journal-1")
	if strings.Count(after, "journal-1 started") != 2 || !strings.Contains(after, strings.TrimSpace(before)) {
		t.Fatalf("the replacement of journal-1 does not see what the first wrote:\n%s", after)
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

func capacityFor(t *testing.T, class string) int64 {
	for _, c := range capacities(t) {
		if c.Class == class && c.Node == nodeName {
			return c.Bytes
		}
	}
	return -1
}

// TestCapacity: CSIStorageCapacity describes this node's pool, drops when a
// volume is made, and a claim larger than the pool is refused for lack of
// space without leaving anything behind.
func TestCapacity(t *testing.T) {
	ns := namespace(t, "e2e-capacity")
	var before int64
	eventually(t, 2*time.Minute, "a CSIStorageCapacity for class flashpv on "+nodeName, func() error {
		if before = capacityFor(t, "flashpv"); before <= 0 {
			return fmt.Errorf("objects: %v", capacities(t))
		}
		return nil
	})
	claim(t, ns, "four-gig", "flashpv", "4Gi", "")
	waitPodReady(t, ns, "four-gig", 2*time.Minute)
	eventually(t, 2*time.Minute, "capacity to drop by the new volume", func() error {
		// The pool shares the node's filesystem: other files come and go
		// meanwhile, so allow 64 MiB either way.
		if now := capacityFor(t, "flashpv"); before-now < 4<<30-64<<20 {
			return fmt.Errorf("capacity %d, was %d", now, before)
		}
		return nil
	})

	images := func() int { m, _ := filepath.Glob(filepath.Join(poolDir, "*.img")); return len(m) }
	pvs := func() int { return len(strings.Fields(must(t, "get", "pv", "-o", "name"))) }
	imgBefore, pvBefore := images(), pvs()
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
	if images() != imgBefore || pvs() != pvBefore {
		t.Fatalf("a refused claim left something: images %d->%d, PVs %d->%d", imgBefore, images(), pvBefore, pvs())
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
			if tc.fs == "ext4" && !mounter.CanGrowMountedExt4() {
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
	old := must(t, "get", "pod", "-n", "flashpv", "-l", "app.kubernetes.io/name=flashpv", "-o", "name")
	must(t, "delete", "-n", "flashpv", old, "--wait=true")
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
	var handles, pvNames []string
	for i := range 3 {
		pv, h := pvOf(t, ns, fmt.Sprintf("data-journal-%d", i))
		handles, pvNames = append(handles, h), append(pvNames, pv)
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
		for _, h := range handles {
			if _, err := os.Stat(imageOf(h)); err == nil {
				return fmt.Errorf("image of %s still in the pool", h)
			}
			if out, _ := kubectl("get", "pv", "-o", "jsonpath={.items[*].spec.csi.volumeHandle}"); strings.Contains(out, h) {
				return fmt.Errorf("PV of %s still exists", h)
			}
		}
		mounts, _ := os.ReadFile("/proc/self/mountinfo")
		for _, pv := range pvNames {
			if strings.Contains(string(mounts), pv) {
				return fmt.Errorf("a mount of %s is left", pv)
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
