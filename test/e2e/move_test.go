//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flashpv/flashpv/pkg/move"
)

// TestDrainMovesVolumes: `kubectl drain` of a node holding replicas of a
// drainPolicy: Move class; each replica runs again on another node with
// its data, through the same claim and PV (the cluster has
// MutablePVNodeAffinity), and the drained node's pool no longer holds the
// volumes. Beside them on the node: a Block replica of the Move class
// (published, it cannot be snapshotted on an ext4 image pool, so its move
// snapshots it once the pod has stopped), and a replica of the default
// class (drainPolicy Stay), which stays Pending with its volume. The
// controller is killed while the moves are under way.
func TestDrainMovesVolumes(t *testing.T) {
	needNodes(t, 2)
	snapshotClass(t) // a move's pre-copy is a snapshot
	ns := namespace(t, "drain-move")
	flashpvClass(t, "flashpv-move", "drainPolicy: Move")
	t.Cleanup(func() { kubectl("delete", "storageclass", "flashpv-move", "--wait=false") })
	rs := journal(t, ns, "flashpv-move")
	node, moved, _ := victim(rs)
	applyYAML(t, ns, fmt.Sprintf(drainSet, "stay", "flashpv", node, "Filesystem", "volumeMounts", "mountPath: /data"))
	applyYAML(t, ns, fmt.Sprintf(drainSet, "raw", "flashpv-move", node, "Block", "volumeDevices", "devicePath: /dev/xvda"))
	for _, p := range []string{"stay-0", "raw-0"} {
		waitPodReady(t, ns, p, 4*time.Minute)
		if n := podNode(t, ns, p); n != node {
			t.Fatalf("%s runs on %s; it prefers %s, which has room", p, n, node)
		}
	}
	rawUID := jsonpath(t, ns, "pvc/data-raw-0", "{.metadata.uid}")
	execIn(t, ns, "raw-0", "sh", "-c", "echo raw-"+rawUID+" | dd of=/dev/xvda conv=fsync 2>/dev/null")
	stayPV, _ := pvOf(t, ns, "data-stay-0")

	start := time.Now()
	t.Cleanup(func() { kubectl("uncordon", node) })
	// Cordoned first, as operators do: the moves pre-copy while the pods
	// still run, and the Block volume's snapshot is refused while its pod
	// runs, so its move goes the snapshot-once-stopped way.
	must(t, "cordon", node)
	eventually(t, 2*time.Minute, "the Block volume's move to wait for its pod to stop", func() error {
		if ev := eventsWithReason(t, ns, "MoveStep"); !strings.Contains(ev, "data-raw-0: the volume "+move.SnapshotNeedsStop) {
			return fmt.Errorf("MoveStep Events:\n%s", ev)
		}
		return nil
	})
	if out, err := kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout=5m"); err != nil {
		t.Fatalf("drain %s: %v\n%s", node, err, out)
	}
	// The controller killed in the middle of the moves: its Deployment
	// makes it again, and the new leader takes each move on from its
	// record.
	var states []string
	for _, c := range append([]string{"data-raw-0"}, moved[0].claim) {
		states = append(states, c+"="+jsonpath(t, ns, "pvc/"+c, `{.metadata.annotations.flashpv\.dev/move-state}`))
	}
	must(t, "delete", "pod", "-n", "flashpv", "-l", "app.kubernetes.io/name=flashpv-controller", "--grace-period=0", "--force")
	t.Logf("controller killed %.1fs after the cordon, moves at %v", time.Since(start).Seconds(), states)
	for _, r := range moved {
		eventually(t, 6*time.Minute, "replica "+r.pod+" Ready on another node", func() error {
			return readyElsewhere(ns, r.pod, node)
		})
		t.Logf("%s Ready on %s %.1fs after the cordon", r.pod, podNode(t, ns, r.pod), time.Since(start).Seconds())
		if got := execIn(t, ns, r.pod, "cat", "/data/marker"); got != r.claimUID {
			t.Errorf("%s: marker %q after the move, want %q", r.pod, got, r.claimUID)
		}
		if pv, _ := pvOf(t, ns, r.claim); pv != r.pv {
			t.Errorf("%s: claim bound to %s after the move, want its PV %s", r.claim, pv, r.pv)
		}
		if n := pinnedNode(t, r.pv); n == node {
			t.Errorf("%s still pinned to %s", r.pv, node)
		}
		// The pod may start while the move still cleans up after itself.
		eventually(t, 2*time.Minute, r.claim+"'s move Done", func() error {
			if s := jsonpath(t, ns, "pvc/"+r.claim, `{.metadata.annotations.flashpv\.dev/move-state}`); s != "Done" {
				return fmt.Errorf("move state %q", s)
			}
			return nil
		})
		eventually(t, 2*time.Minute, "the old copy of "+r.pv+" gone from "+node, func() error {
			if _, err := os.Stat(imageOf(t, node, r.handle)); err == nil {
				return os.ErrExist
			}
			return nil
		})
	}
	eventually(t, 6*time.Minute, "the Block replica Ready on another node", func() error {
		return readyElsewhere(ns, "raw-0", node)
	})
	t.Logf("raw-0 (Block, snapshotted once stopped) Ready on %s %.1fs after the cordon", podNode(t, ns, "raw-0"), time.Since(start).Seconds())
	if got := execIn(t, ns, "raw-0", "sh", "-c", "dd if=/dev/xvda bs=64 count=1 2>/dev/null | head -n1"); got != "raw-"+rawUID {
		t.Errorf("the Block volume holds %q after the move, want raw-%s", got, rawUID)
	}
	_, rawHandle := pvOf(t, ns, "data-raw-0")
	eventually(t, 2*time.Minute, "the Block volume's old copy gone from "+node, func() error {
		if _, err := os.Stat(imageOf(t, node, rawHandle)); err == nil {
			return os.ErrExist
		}
		return nil
	})

	// The Stay class's replica waits for its node, as it always did.
	if phase := jsonpath(t, ns, "pod/stay-0", "{.status.phase}"); phase != "Pending" {
		t.Errorf("stay-0 is %s, want Pending while its node is drained", phase)
	}
	if n := pinnedNode(t, stayPV); n != node {
		t.Errorf("the Stay class's %s was moved to %s", stayPV, n)
	}
	if s := jsonpath(t, ns, "pvc/data-stay-0", `{.metadata.annotations.flashpv\.dev/move-state}`); s != "" {
		t.Errorf("the Stay class's claim has a move state %q", s)
	}
	if ev := eventsWithReason(t, ns, "MoveStep"); ev == "" {
		t.Error("no MoveStep Events")
	}
	if m := controllerMetrics(t); !strings.Contains(m, `flashpv_moves_finished_total{outcome="moved"}`) {
		t.Error("no moves counted as finished")
	}
}

// readyElsewhere: the pod is Ready on a node other than node.
func readyElsewhere(ns, pod, node string) error {
	out, err := kubectl("get", "pod", "-n", ns, pod, "-o",
		`jsonpath={.spec.nodeName} {.status.conditions[?(@.type=="Ready")].status}`)
	if err != nil {
		return err
	}
	f := strings.Fields(out)
	if len(f) != 2 || f[0] == node || f[1] != "True" {
		return os.ErrNotExist
	}
	return nil
}

// drainSet is a one-replica StatefulSet (name, class) that prefers a node,
// with a Filesystem or a Block volume.
const drainSet = `
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: %[1]s
spec:
  serviceName: %[1]s
  replicas: 1
  selector:
    matchLabels: {app: %[1]s}
  template:
    metadata:
      labels: {app: %[1]s}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              preference:
                matchExpressions:
                  - {key: kubernetes.io/hostname, operator: In, values: [%[3]s]}
      containers:
        - name: c
          image: busybox:1.36
          command: ["sh", "-c", "exec sleep 2147483647"]
          %[5]s:
            - name: data
              %[6]s
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
        storageClassName: %[2]s
        volumeMode: %[4]s
        resources:
          requests:
            storage: 64Mi
`
