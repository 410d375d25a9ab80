//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestDrainMovesVolumes: `kubectl drain` of a node holding replicas of a
// drainPolicy: Move class; each replica runs again on another node with
// its data, through the same claim and PV (the cluster has
// MutablePVNodeAffinity), and the drained node's pool no longer holds the
// volumes.
func TestDrainMovesVolumes(t *testing.T) {
	needNodes(t, 2)
	snapshotClass(t) // a move's pre-copy is a snapshot
	ns := namespace(t, "drain-move")
	flashpvClass(t, "flashpv-move", "drainPolicy: Move")
	t.Cleanup(func() { kubectl("delete", "storageclass", "flashpv-move", "--wait=false") })
	rs := journal(t, ns, "flashpv-move")
	node, moved, _ := victim(rs)

	start := time.Now()
	t.Cleanup(func() { kubectl("uncordon", node) })
	if out, err := kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout=5m"); err != nil {
		t.Fatalf("drain %s: %v\n%s", node, err, out)
	}
	for _, r := range moved {
		eventually(t, 6*time.Minute, "replica "+r.pod+" Ready on another node", func() error {
			return readyElsewhere(ns, r.pod, node)
		})
		t.Logf("%s Ready on %s %.1fs after the drain began", r.pod, podNode(t, ns, r.pod), time.Since(start).Seconds())
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
