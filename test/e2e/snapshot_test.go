//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Snapshots and clones through Kubernetes: the VolumeSnapshot CRDs, the
// snapshot-controller (distributed snapshotting) and each node's
// csi-snapshotter, as hack/cluster/deploy.sh installs them. Most pods of
// restored or cloned claims here are placed on the source's node (a local
// copy); transfer_test.go covers copies onto other nodes.

// snapshotClass applies the example VolumeSnapshotClass.
func snapshotClass(t *testing.T) {
	t.Helper()
	must(t, "apply", "-f", filepath.Join(repo, "examples", "volumesnapshotclass.yaml"))
}

// nodesForSnapshots are the cluster's nodes, the biggest pool first, so a
// test that keeps a source and its copies can go where they fit.
func nodesForSnapshots(t *testing.T) []string {
	t.Helper()
	nodes := clusterNodes(t)
	caps := map[string]int64{}
	eventually(t, 2*time.Minute, "a CSIStorageCapacity for every node", func() error {
		for _, n := range nodes {
			if caps[n] = capacityFor(t, "flashpv", n); caps[n] <= 0 {
				return fmt.Errorf("none for %s: %v", n, capacities(t))
			}
		}
		return nil
	})
	sort.Slice(nodes, func(i, j int) bool { return caps[nodes[i]] > caps[nodes[j]] })
	return nodes
}

// takeSnapshot makes a VolumeSnapshot of a claim and waits until it is
// ready to use; it returns how long that took.
func takeSnapshot(t *testing.T, ns, name, pvc string) time.Duration {
	t.Helper()
	start := time.Now()
	applyYAML(t, ns, fmt.Sprintf(`
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: %s
spec:
  volumeSnapshotClassName: flashpv
  source:
    persistentVolumeClaimName: %s
`, name, pvc))
	waitSnapshotReady(t, ns, name, 3*time.Minute)
	return time.Since(start)
}

func waitSnapshotReady(t *testing.T, ns, name string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "VolumeSnapshot "+name+" ready to use", func() error {
		if r := jsonpath(t, ns, "volumesnapshot/"+name, "{.status.readyToUse}"); r != "true" {
			return fmt.Errorf("readyToUse=%q error=%q", r, jsonpath(t, ns, "volumesnapshot/"+name, "{.status.error.message}"))
		}
		return nil
	})
}

// snapshotHandle is the driver's ID of a ready VolumeSnapshot.
func snapshotHandle(t *testing.T, ns, name string) string {
	t.Helper()
	content := jsonpath(t, ns, "volumesnapshot/"+name, "{.status.boundVolumeSnapshotContentName}")
	h := jsonpath(t, "", "volumesnapshotcontent/"+content, "{.status.snapshotHandle}")
	if h == "" {
		t.Fatalf("VolumeSnapshot %s (content %q) has no snapshot handle", name, content)
	}
	return h
}

const fromSourceClaim = `
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: %[1]s
spec:
  accessModes: ["ReadWriteOnce"]
  storageClassName: %[7]s
  volumeMode: %[5]s
  dataSource:
    %[2]s
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
%[4]s
  containers:
    - name: c
      image: busybox:1.36
      command: ["sh", "-c", "exec sleep 2147483647"]
%[6]s
  volumes:
    - name: v
      persistentVolumeClaim:
        claimName: %[1]s
`

// fromSource makes a claim from a VolumeSnapshot ("snapshot/NAME") or a
// claim ("pvc/NAME") with a pod on node, Filesystem at /data or Block at
// /dev/xvda, and waits for the pod; it returns how long that took.
func fromSource(t *testing.T, ns, name, source, size, node string, block bool) time.Duration {
	t.Helper()
	start := time.Now()
	// The README's way: the label flashpv's nodes carry.
	applyFromSource(t, ns, name, source, size, "flashpv", "  nodeSelector:\n    flashpv.dev/node: "+node, block)
	waitPodReady(t, ns, name, 3*time.Minute)
	pv, _ := pvOf(t, ns, name)
	if n := pinnedNode(t, pv); n != node {
		t.Fatalf("%s (from %s) is on %q, its source on %s", pv, source, n, node)
	}
	return time.Since(start)
}

// applyFromSource applies a claim of class from source ("snapshot/NAME" or
// "pvc/NAME") and its pod, placed by placement (a pod spec fragment, or
// "" for wherever the scheduler puts it).
func applyFromSource(t *testing.T, ns, name, source, size, class, placement string, block bool) {
	t.Helper()
	kind, src, _ := strings.Cut(source, "/")
	ds := "kind: PersistentVolumeClaim\n    name: " + src
	if kind == "snapshot" {
		ds = "apiGroup: snapshot.storage.k8s.io\n    kind: VolumeSnapshot\n    name: " + src
	}
	mode, use := "Filesystem", "      volumeMounts:\n        - {name: v, mountPath: /data}"
	if block {
		mode, use = "Block", "      volumeDevices:\n        - {name: v, devicePath: /dev/xvda}"
	}
	applyYAML(t, ns, fmt.Sprintf(fromSourceClaim, name, ds, size, placement, mode, use, class))
}

// writerSet is a StatefulSet of one replica on a given node that appends
// numbered lines to /data/log as fast as the shell can, each line one
// write(2) that the page cache holds until the filesystem syncs.
const writerSet = `
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: writer
spec:
  serviceName: writer
  replicas: 1
  selector:
    matchLabels: {app: writer}
  template:
    metadata:
      labels: {app: writer}
    spec:
      terminationGracePeriodSeconds: 1
      nodeSelector:
        kubernetes.io/hostname: %s
      containers:
        - name: c
          image: busybox:1.36
          command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i >> /data/log; done"]
          volumeMounts:
            - {name: data, mountPath: /data}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        storageClassName: flashpv
        resources:
          requests:
            storage: 1Gi
`

// lines counts the lines of a file in a pod.
func lines(t *testing.T, ns, pod, file string) int {
	t.Helper()
	n, err := strconv.Atoi(strings.Fields(execIn(t, ns, pod, "wc", "-l", file))[0])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSnapshotWhileWriting: a snapshot of a StatefulSet replica's claim
// taken while the replica writes holds the data as of the snapshot: a file
// written before it, not one written after it, and the replica's log as a
// whole prefix of numbered lines (nothing torn) between the lengths seen
// before and after it. The restore is on the replica's node.
func TestSnapshotWhileWriting(t *testing.T) {
	nodes := nodesForSnapshots(t)
	node := nodes[min(1, len(nodes)-1)]
	snapshotClass(t)
	ns := namespace(t, "e2e-snap-write")
	applyYAML(t, ns, fmt.Sprintf(writerSet, node))
	waitPodReady(t, ns, "writer-0", 3*time.Minute)
	eventually(t, time.Minute, "the writer's first thousand lines", func() error {
		if n := lines(t, ns, "writer-0", "/data/log"); n < 1000 {
			return fmt.Errorf("%d lines", n)
		}
		return nil
	})
	execIn(t, ns, "writer-0", "sh", "-c", "echo before > /data/before")
	before := lines(t, ns, "writer-0", "/data/log")
	took := takeSnapshot(t, ns, "writer-snap", "data-writer-0")
	execIn(t, ns, "writer-0", "sh", "-c", "echo after > /data/after")
	after := lines(t, ns, "writer-0", "/data/log")
	t.Logf("snapshot of a 1 GiB volume under writes ready in %v (%d to %d lines)", took.Round(time.Millisecond), before, after)

	took = fromSource(t, ns, "restored", "snapshot/writer-snap", "1Gi", node, false)
	t.Logf("restored claim's pod Ready in %v", took.Round(time.Millisecond))
	if got := execIn(t, ns, "restored", "cat", "/data/before"); got != "before" {
		t.Errorf("the file written before the snapshot reads %q", got)
	}
	if out, err := kubectl("exec", "-n", ns, "restored", "--", "ls", "/data/after"); err == nil {
		t.Errorf("the file written after the snapshot is in the restore: %s", out)
	}
	log := execIn(t, ns, "restored", "sh", "-c", "cat /data/log; echo END")
	ls := strings.Split(strings.TrimSuffix(log, "END"), "\n")
	if ls[len(ls)-1] != "" {
		t.Fatalf("the restored log ends in a torn line %q", ls[len(ls)-1])
	}
	ls = ls[:len(ls)-1]
	for i, l := range ls {
		if l != strconv.Itoa(i+1) {
			t.Fatalf("line %d of the restored log is %q", i+1, l)
		}
	}
	if len(ls) < before || len(ls) > after {
		t.Errorf("the restore has %d lines; the log had %d before the snapshot and %d after it", len(ls), before, after)
	}
	// The source goes on writing, independent of its copy.
	if n := lines(t, ns, "writer-0", "/data/log"); n <= after {
		t.Errorf("the source stopped writing: %d lines, %d before", n, after)
	}
}

// TestSnapshotExamples runs examples/ as the README shows them: a snapshot
// of the StatefulSet's replica 0, a restore and a clone of its claim, with
// pods that go where journal-0 runs and print its history.
func TestSnapshotExamples(t *testing.T) {
	nodes := nodesForSnapshots(t)
	snapshotClass(t)
	ns := namespace(t, "e2e-snap-examples")
	// One replica, on the biggest pool: it holds the source and both copies.
	sts := exampleStatefulSet(t, false)
	const spec = "    spec:\n      # Spread replicas"
	if !strings.Contains(sts, "replicas: 3") || !strings.Contains(sts, spec) {
		t.Fatalf("examples/statefulset.yaml changed:\n%s", sts)
	}
	sts = strings.Replace(sts, "replicas: 3", "replicas: 1", 1)
	sts = strings.Replace(sts, spec, "    spec:\n      nodeSelector: {kubernetes.io/hostname: "+nodes[0]+"}\n      # Spread replicas", 1)
	applyYAML(t, ns, sts)
	waitPodReady(t, ns, "journal-0", 3*time.Minute)
	history := execIn(t, ns, "journal-0", "cat", "/data/history")

	start := time.Now()
	must(t, "apply", "-n", ns, "-f", filepath.Join(repo, "examples", "snapshot.yaml"))
	waitSnapshotReady(t, ns, "journal-0-snap", 3*time.Minute)
	t.Logf("examples/snapshot.yaml ready in %v", time.Since(start).Round(time.Millisecond))
	for _, ex := range []string{"restore", "clone"} {
		start := time.Now()
		must(t, "apply", "-n", ns, "-f", filepath.Join(repo, "examples", ex+".yaml"))
		pod := "journal-0-" + ex
		waitPodReady(t, ns, pod, 3*time.Minute)
		t.Logf("examples/%s.yaml: pod Ready in %v", ex, time.Since(start).Round(time.Millisecond))
		if got := must(t, "logs", "-n", ns, pod); got != history {
			t.Errorf("%s prints %q, journal-0 wrote %q", pod, got, history)
		}
		// The clone follows journal-0 (its source is in use); the
		// restore goes where the scheduler put it.
		node := podNode(t, ns, pod)
		if ex == "clone" && node != nodes[0] {
			t.Errorf("%s runs on %s, journal-0 on %s", pod, node, nodes[0])
		}
		pv, _ := pvOf(t, ns, pod)
		if n := pinnedNode(t, pv); n != node {
			t.Errorf("%s's volume is on %s, its pod on %s", pod, n, node)
		}
	}
}

// TestSnapshotOutlivesSource: a snapshot survives the deletion of its
// claim and volume, restores afterwards on its node, and goes from the
// pool with its VolumeSnapshot.
func TestSnapshotOutlivesSource(t *testing.T) {
	nodes := nodesForSnapshots(t)
	node := nodes[len(nodes)-1] // the smallest pool: the source is gone before the restore
	snapshotClass(t)
	ns := namespace(t, "e2e-snap-outlive")
	claimOn(t, ns, "source", "1Gi", []string{node}, "")
	waitPodReady(t, ns, "source", 2*time.Minute)
	_, volume := pvOf(t, ns, "source")
	takeSnapshot(t, ns, "keep", "source")
	handle := snapshotHandle(t, ns, "keep")
	_, key, _ := strings.Cut(handle, ".")
	snapFile := filepath.Join(poolDir(t, node), key+".snap")
	if _, err := os.Stat(snapFile); err != nil {
		t.Fatalf("snapshot %s not in %s's pool: %v", handle, node, err)
	}

	must(t, "delete", "-n", ns, "pod/source", "pvc/source", "--wait=true")
	eventually(t, 2*time.Minute, "the source volume's image to go", func() error {
		if _, err := os.Stat(imageOf(t, node, volume)); err == nil {
			return fmt.Errorf("%s still there", imageOf(t, node, volume))
		}
		return nil
	})
	if r := jsonpath(t, ns, "volumesnapshot/keep", "{.status.readyToUse}"); r != "true" {
		t.Fatalf("the snapshot is no longer ready after its source went: %q", r)
	}
	fromSource(t, ns, "restored", "snapshot/keep", "1Gi", node, false)
	if got := execIn(t, ns, "restored", "cat", "/data/mark"); got != "written-by-source" {
		t.Errorf("the restore of a deleted claim's snapshot reads %q", got)
	}

	must(t, "delete", "-n", ns, "volumesnapshot/keep", "--wait=true")
	eventually(t, 2*time.Minute, "the snapshot to go from the pool", func() error {
		if _, err := os.Stat(snapFile); err == nil {
			return fmt.Errorf("%s still there", snapFile)
		}
		return nil
	})
	if got := execIn(t, ns, "restored", "cat", "/data/mark"); got != "written-by-source" {
		t.Errorf("the restore changed when its snapshot went: %q", got)
	}
}

// TestBlockSnapshot: a Block volume's snapshot restores into a Block claim
// with the same bytes. On a pool that cannot share blocks (the cluster's
// ext4 pools) a published Block volume cannot be copied at one instant, so
// the snapshot waits, saying why, until the pod is gone.
func TestBlockSnapshot(t *testing.T) {
	nodes := nodesForSnapshots(t)
	node := nodes[0]
	snapshotClass(t)
	ns := namespace(t, "e2e-snap-block")
	applyYAML(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: raw
spec:
  accessModes: ["ReadWriteOnce"]
  storageClassName: flashpv
  volumeMode: Block
  resources:
    requests:
      storage: 256Mi
---
apiVersion: v1
kind: Pod
metadata:
  name: raw
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector:
    kubernetes.io/hostname: %s
  containers:
    - name: c
      image: busybox:1.36
      command: ["sh", "-c", "exec sleep 2147483647"]
      volumeDevices:
        - {name: v, devicePath: /dev/xvda}
  volumes:
    - name: v
      persistentVolumeClaim:
        claimName: raw
`, node))
	waitPodReady(t, ns, "raw", 2*time.Minute)
	execIn(t, ns, "raw", "sh", "-c", "printf flashpv-block | dd of=/dev/xvda bs=4096 seek=1000 conv=sync,notrunc 2>/dev/null && sync")

	applyYAML(t, ns, `
apiVersion: snapshot.storage.k8s.io/v1
kind: VolumeSnapshot
metadata:
  name: raw-snap
spec:
  volumeSnapshotClassName: flashpv
  source:
    persistentVolumeClaimName: raw
`)
	// Either the pool shares blocks (an instant, atomic copy) and the
	// snapshot is ready, or it says why it waits.
	eventually(t, time.Minute, "the snapshot ready, or refused while published", func() error {
		if jsonpath(t, ns, "volumesnapshot/raw-snap", "{.status.readyToUse}") == "true" {
			return nil
		}
		if msg := jsonpath(t, ns, "volumesnapshot/raw-snap", "{.status.error.message}"); strings.Contains(msg, "published") {
			t.Logf("while the pod runs: %s", msg)
			return nil
		}
		return fmt.Errorf("no answer yet")
	})
	must(t, "delete", "-n", ns, "pod/raw", "--wait=true")
	// The snapshotter retries with a backoff that doubles (1 s, 2 s, ...).
	waitSnapshotReady(t, ns, "raw-snap", 3*time.Minute)

	fromSource(t, ns, "raw-restored", "snapshot/raw-snap", "512Mi", node, true)
	if got := execIn(t, ns, "raw-restored", "sh", "-c", "dd if=/dev/xvda bs=4096 skip=1000 count=1 2>/dev/null | head -c 13"); got != "flashpv-block" {
		t.Errorf("the restored Block volume reads %q", got)
	}
	if size := execIn(t, ns, "raw-restored", "blockdev", "--getsize64", "/dev/xvda"); size != "536870912" {
		t.Errorf("a 512 MiB restore of a 256 MiB snapshot is %s bytes", size)
	}
	// And a clone of the restored Block claim, its pod gone (a published
	// one would wait on this cluster's pools, as above).
	must(t, "delete", "-n", ns, "pod/raw-restored", "--wait=true")
	fromSource(t, ns, "raw-clone", "pvc/raw-restored", "512Mi", node, true)
	if got := execIn(t, ns, "raw-clone", "sh", "-c", "dd if=/dev/xvda bs=4096 skip=1000 count=1 2>/dev/null | head -c 13"); got != "flashpv-block" {
		t.Errorf("the clone of a Block volume reads %q", got)
	}
}
