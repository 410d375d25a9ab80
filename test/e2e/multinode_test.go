//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The tests of this file need several nodes with pools of different sizes
// (make e2e: three nodes, pools of 3, 6 and 10 GiB).

const placedClaim = `
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: %[1]s
spec:
  accessModes: ["ReadWriteOnce"]
  storageClassName: flashpv
  resources:
    requests:
      storage: %[2]s
---
apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
spec:
  terminationGracePeriodSeconds: 1
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
          - matchExpressions:
              - {key: kubernetes.io/hostname, operator: In, values: [%[3]s]}
%[4]s
  containers:
    - name: c
      image: busybox:1.36
      command: ["sh", "-c", "echo written-by-%[1]s > /data/mark && exec sleep 2147483647"]
      volumeMounts:
        - name: v
          mountPath: /data
  volumes:
    - name: v
      persistentVolumeClaim:
        claimName: %[1]s
`

// claimOn makes a claim and a pod that may run only on the given nodes and
// prefers the node prefer, if set.
func claimOn(t *testing.T, ns, name, size string, nodes []string, prefer string) {
	t.Helper()
	pref := ""
	if prefer != "" {
		pref = `      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          preference:
            matchExpressions:
              - {key: kubernetes.io/hostname, operator: In, values: [` + prefer + `]}`
	}
	applyYAML(t, ns, fmt.Sprintf(placedClaim, name, size, strings.Join(nodes, ", "), pref))
}

// flashpvPod is the name of the flashpv pod on a node, or "".
func flashpvPod(t *testing.T, node string) string {
	t.Helper()
	return must(t, "get", "pods", "-n", "flashpv", "-l", "app.kubernetes.io/name=flashpv",
		"--field-selector", "spec.nodeName="+node, "-o", "jsonpath={.items[*].metadata.name}")
}

// nodesBySize are the nodes, smallest class-flashpv capacity first, with
// their capacities, once every node reports one.
func nodesBySize(t *testing.T) ([]string, map[string]int64) {
	t.Helper()
	nodes := needNodes(t, 3)
	caps := map[string]int64{}
	eventually(t, 2*time.Minute, "a CSIStorageCapacity for every node", func() error {
		for _, n := range nodes {
			if caps[n] = capacityFor(t, "flashpv", n); caps[n] <= 0 {
				return fmt.Errorf("none for %s: %v", n, capacities(t))
			}
		}
		return nil
	})
	sorted := append([]string(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return caps[sorted[i]] < caps[sorted[j]] })
	return sorted, caps
}

// events lists "reason: message" of the events about one object.
func events(t *testing.T, ns, name string) string {
	return must(t, "get", "events", "-n", ns, "--field-selector", "involvedObject.name="+name,
		"-o", `jsonpath={range .items[*]}{.reason}: {.message}{"\n"}{end}`)
}

// TestCapacityDecides: a claim that only the biggest pool can hold lands on
// that node at the first attempt (the scheduler reads the capacity objects;
// no provisioning fails), a move of it to a smaller node is refused with a
// MoveRefused Event, and the capacity objects follow the create and the
// delete on that node while the others stay as they were.
func TestCapacityDecides(t *testing.T) {
	sorted, caps := nodesBySize(t)
	ns := namespace(t, "e2e-capacity-decides")
	big, second := sorted[len(sorted)-1], sorted[len(sorted)-2]
	// More than the second biggest pool offers, well within the biggest.
	size := (caps[second]>>30 + 1) << 30
	if size > caps[big]-512<<20 {
		t.Fatalf("pools too alike for this test: capacities %v (POOL_SIZES)", caps)
	}
	claimOn(t, ns, "only-one", fmt.Sprintf("%dGi", size>>30), sorted, "")
	waitPodReady(t, ns, "only-one", 3*time.Minute)
	if n := podNode(t, ns, "only-one"); n != big {
		t.Fatalf("a %d GiB claim landed on %s; only %s can hold it (capacities %v)", size>>30, n, big, caps)
	}
	pv, _ := pvOf(t, ns, "only-one")
	if n := pinnedNode(t, pv); n != big {
		t.Fatalf("%s pinned to %q, want %s", pv, n, big)
	}
	if ev := events(t, ns, "only-one"); strings.Contains(ev, "ProvisioningFailed") {
		t.Fatalf("provisioning failed on the way; the scheduler should have known from the capacity objects:\n%s", ev)
	}

	// A move to a node that cannot hold it is refused, with an Event
	// saying why, and nothing is started.
	must(t, "annotate", "pvc", "-n", ns, "only-one", "flashpv.dev/move-to="+second)
	eventually(t, 2*time.Minute, "a MoveRefused Event on the claim", func() error {
		ev := events(t, ns, "only-one")
		if !strings.Contains(ev, "MoveRefused: node "+second+" does not fit") || !strings.Contains(ev, "bytes free, the volume needs") {
			return fmt.Errorf("events:\n%s", ev)
		}
		return nil
	})
	if s := jsonpath(t, ns, "pv/"+pv, `{.metadata.annotations.flashpv\.dev/move-state}`); s != "" {
		t.Errorf("a refused move left the state %q on %s", s, pv)
	}
	must(t, "annotate", "pvc", "-n", ns, "only-one", "flashpv.dev/move-to-")
	const slack = 64 << 20
	eventually(t, 2*time.Minute, "the capacity of "+big+" to drop by the volume", func() error {
		if now := capacityFor(t, "flashpv", big); caps[big]-now < size-slack {
			return fmt.Errorf("%s: %d, was %d", big, now, caps[big])
		}
		return nil
	})
	for _, n := range sorted[:len(sorted)-1] {
		if now := capacityFor(t, "flashpv", n); now < caps[n]-slack || now > caps[n]+slack {
			t.Errorf("capacity of %s changed from %d to %d by a volume on %s", n, caps[n], now, big)
		}
	}
	must(t, "delete", "pod", "-n", ns, "only-one", "--wait=true")
	must(t, "delete", "pvc", "-n", ns, "only-one", "--wait=true")
	eventually(t, 3*time.Minute, "the capacity of "+big+" to come back", func() error {
		if now := capacityFor(t, "flashpv", big); now < caps[big]-slack {
			return fmt.Errorf("%s: %d, was %d before the volume", big, now, caps[big])
		}
		return nil
	})
}

// TestStaleCapacity: the pool of the node the scheduler prefers is filled
// behind flashpv's back, so its capacity object is stale. The claim goes
// there first, flashpv answers RESOURCE_EXHAUSTED, the provisioner hands the
// claim back to the scheduler and it is provisioned on another node. The
// time this takes is logged (for the docs), never asserted.
func TestStaleCapacity(t *testing.T) {
	sorted, caps := nodesBySize(t)
	ns := namespace(t, "e2e-stale-capacity")
	target, other := sorted[len(sorted)-1], sorted[len(sorted)-2]
	size := int64(2 << 30)
	if caps[other] < size+256<<20 {
		t.Fatalf("%s cannot hold a 2 GiB claim: capacities %v", other, caps)
	}
	pool := filepath.Join(nodeRoot(t, target), "var/lib/flashpv")
	filler := filepath.Join(pool, "e2e-filler")
	t.Cleanup(func() { os.Remove(filler) })

	// The provisioner refreshes capacity every 30 s: should a refresh land
	// between the filling and the scheduling, the scheduler knows and the
	// claim goes to the other node at once. Then free the pool, wait for
	// the capacity to come back and try again.
	for attempt := 1; ; attempt++ {
		name := fmt.Sprintf("stale-%d", attempt)
		// Leave the pool 512 MiB, too little for the claim.
		var st syscall.Statfs_t
		if err := syscall.Statfs(pool, &st); err != nil {
			t.Fatal(err)
		}
		free := int64(st.Bavail) * st.Bsize
		f, err := os.Create(filler)
		if err != nil {
			t.Fatal(err)
		}
		err = syscall.Fallocate(int(f.Fd()), 0, 0, free-512<<20)
		f.Close()
		if err != nil {
			t.Fatalf("filling %s's pool: %v", target, err)
		}
		start := time.Now()
		claimOn(t, ns, name, "2Gi", []string{target, other}, target)
		waitPodReady(t, ns, name, 5*time.Minute)
		took := time.Since(start)
		node := podNode(t, ns, name)
		ev := events(t, ns, name)
		if node != other {
			t.Fatalf("the claim landed on %s; %s's pool is full and %s has room:\n%s", node, target, other, ev)
		}
		if pv, _ := pvOf(t, ns, name); pinnedNode(t, pv) != other {
			t.Fatalf("%s pinned to %q, want %s", pv, pinnedNode(t, pv), other)
		}
		if strings.Contains(ev, "ResourceExhausted") {
			t.Logf("stale capacity: %s's pool full behind flashpv's back; RESOURCE_EXHAUSTED there, claim bound and pod Ready on %s %.1fs after creation (attempt %d)",
				target, other, took.Seconds(), attempt)
			return
		}
		if attempt == 3 {
			t.Fatalf("three times the scheduler already knew the pool of %s was full; no RESOURCE_EXHAUSTED seen:\n%s", target, ev)
		}
		t.Logf("attempt %d: a capacity refresh came first (no stale capacity to test); again", attempt)
		os.Remove(filler)
		eventually(t, 2*time.Minute, "the capacity of "+target+" to come back", func() error {
			if now := capacityFor(t, "flashpv", target); now < caps[target]-64<<20 {
				return fmt.Errorf("%d, was %d", now, caps[target])
			}
			return nil
		})
	}
}

// TestNodeDriverDown: flashpv is taken off one node (its DaemonSet pod
// deleted and kept away by a node label, see hack/cluster/deploy.sh). That
// node's new claim waits; a running volume on it keeps working; another
// node's claim is provisioned meanwhile; with flashpv back, the waiting
// claim is provisioned on its node.
func TestNodeDriverDown(t *testing.T) {
	sorted, _ := nodesBySize(t)
	ns := namespace(t, "e2e-driver-down")
	down, up := sorted[1], sorted[2]
	claimOn(t, ns, "running", "512Mi", []string{down}, "")
	waitPodReady(t, ns, "running", 3*time.Minute)

	const label = "flashpv.dev/e2e-no-driver"
	t.Cleanup(func() {
		kubectl("label", "node", down, label+"-")
		kubectl("rollout", "status", "-n", "flashpv", "daemonset/flashpv-node", "--timeout=180s")
	})
	must(t, "label", "node", down, label+"=true")
	eventually(t, 3*time.Minute, "flashpv's pod on "+down+" to go", func() error {
		if p := flashpvPod(t, down); p != "" {
			return fmt.Errorf("still there: %s", p)
		}
		return nil
	})

	claimOn(t, ns, "waiting", "512Mi", []string{down}, "")
	claimOn(t, ns, "elsewhere", "512Mi", []string{up}, "")
	waitPodReady(t, ns, "elsewhere", 3*time.Minute)
	if n := pinnedNode(t, func() string { pv, _ := pvOf(t, ns, "elsewhere"); return pv }()); n != up {
		t.Fatalf("elsewhere's volume is on %q, want %s", n, up)
	}
	// The running volume on the node without flashpv is still usable.
	execIn(t, ns, "running", "sh", "-c", "echo still-writable >> /data/mark && sync")
	if got := execIn(t, ns, "running", "cat", "/data/mark"); got != "written-by-running\nstill-writable" {
		t.Fatalf("the volume of the running pod on %s: %q", down, got)
	}
	// By now the claim on the node without flashpv has had well over the
	// time the other one needed; nothing may have provisioned it.
	if phase := jsonpath(t, ns, "pvc/waiting", "{.status.phase}"); phase != "Pending" {
		t.Fatalf("the claim for %s is %s while flashpv is not running there", down, phase)
	}

	must(t, "label", "node", down, label+"-")
	waitPodReady(t, ns, "waiting", 5*time.Minute)
	pv, _ := pvOf(t, ns, "waiting")
	if n := pinnedNode(t, pv); n != down {
		t.Fatalf("waiting's volume is on %q, want %s", n, down)
	}
}
