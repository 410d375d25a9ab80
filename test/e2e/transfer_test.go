//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Restores and clones onto another node: the source's node is cordoned,
// so the scheduler puts each copy's pod elsewhere, and flashpv copies the
// data over its authenticated node-to-node transfer.

// copyAnywhere makes a claim from "snapshot/NAME" or "pvc/NAME" of class
// with a pod the scheduler places.
func copyAnywhere(t *testing.T, ns, name, source, size, class string) {
	t.Helper()
	applyFromSource(t, ns, name, source, size, class, "", false)
}

func cordon(t *testing.T, node string) {
	t.Helper()
	must(t, "cordon", node)
	t.Cleanup(func() { kubectl("uncordon", node) })
}

func TestCrossNodeRestoreAndClone(t *testing.T) {
	nodes := nodesForSnapshots(t)
	if len(nodes) < 2 {
		t.Skip("needs two nodes")
	}
	source := nodes[0]
	snapshotClass(t)
	ns := namespace(t, "e2e-cross-node")
	applyYAML(t, ns, fmt.Sprintf(`
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: src
spec:
  accessModes: ["ReadWriteOnce"]
  storageClassName: flashpv
  resources:
    requests:
      storage: 256Mi
---
apiVersion: v1
kind: Pod
metadata:
  name: src
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector:
    kubernetes.io/hostname: %s
  containers:
    - name: c
      image: busybox:1.36
      command: ["sh", "-c", "head -c 48m /dev/urandom > /data/blob && sha256sum /data/blob > /data/sum && sync && exec sleep 2147483647"]
      volumeMounts:
        - {name: v, mountPath: /data}
  volumes:
    - name: v
      persistentVolumeClaim:
        claimName: src
`, source))
	waitPodReady(t, ns, "src", 3*time.Minute)
	eventually(t, time.Minute, "the source's checksum file", func() error {
		_, err := kubectl("exec", "-n", ns, "src", "--", "test", "-s", "/data/sum")
		return err
	})
	want := execIn(t, ns, "src", "cat", "/data/sum")
	takeSnapshot(t, ns, "src-snap", "src")
	// The clone reads a volume no pod uses.
	must(t, "delete", "pod", "-n", ns, "src", "--wait=true")
	cordon(t, source)

	for _, c := range []struct{ name, source string }{{"restored", "snapshot/src-snap"}, {"cloned", "pvc/src"}} {
		start := time.Now()
		copyAnywhere(t, ns, c.name, c.source, "256Mi", "flashpv")
		waitPodReady(t, ns, c.name, 5*time.Minute)
		node := podNode(t, ns, c.name)
		pv, _ := pvOf(t, ns, c.name)
		if node == source || pinnedNode(t, pv) != node {
			t.Fatalf("%s: pod on %s, PV %s pinned to %s, source on %s", c.name, node, pv, pinnedNode(t, pv), source)
		}
		if got := execIn(t, ns, c.name, "sh", "-c", "cd /data && sha256sum -c sum >/dev/null && cat sum"); got != want {
			t.Errorf("%s on %s: %q, want %q", c.name, node, got, want)
		}
		t.Logf("%s from %s on %s: pod Ready on %s after %v", c.name, c.source, source, node, time.Since(start).Round(time.Millisecond))
	}

	// An Immediate class: the claim is provisioned before any pod, by the
	// node that wins it (here the only node the class allows, not the
	// source's), and the pod follows the volume.
	target := nodes[1]
	applyYAML(t, "", fmt.Sprintf(`
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: flashpv-immediate
provisioner: flashpv.dev
volumeBindingMode: Immediate
allowedTopologies:
  - matchLabelExpressions:
      - key: flashpv.dev/node
        values: [%s]
`, target))
	t.Cleanup(func() { kubectl("delete", "storageclass", "flashpv-immediate", "--ignore-not-found") })
	start := time.Now()
	copyAnywhere(t, ns, "immediate", "snapshot/src-snap", "256Mi", "flashpv-immediate")
	waitPodReady(t, ns, "immediate", 5*time.Minute)
	pv, _ := pvOf(t, ns, "immediate")
	if node := podNode(t, ns, "immediate"); node != target || pinnedNode(t, pv) != target {
		t.Fatalf("immediate: pod on %s, PV %s pinned to %s, want both on %s", node, pv, pinnedNode(t, pv), target)
	}
	if got := execIn(t, ns, "immediate", "sh", "-c", "cd /data && sha256sum -c sum >/dev/null && cat sum"); got != want {
		t.Errorf("immediate on %s: %q, want %q", target, got, want)
	}
	t.Logf("immediate restore from %s onto %s: pod Ready after %v", source, target, time.Since(start).Round(time.Millisecond))

	// A class that keeps data on its node refuses, and says where to go.
	applyYAML(t, "", `
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: flashpv-stay
provisioner: flashpv.dev
volumeBindingMode: WaitForFirstConsumer
parameters:
  crossNode: "false"
`)
	t.Cleanup(func() { kubectl("delete", "storageclass", "flashpv-stay", "--ignore-not-found") })
	copyAnywhere(t, ns, "stays", "snapshot/src-snap", "256Mi", "flashpv-stay")
	eventually(t, 2*time.Minute, "a refusal on the claim", func() error {
		ev := events(t, ns, "stays")
		if !strings.Contains(ev, "ProvisioningFailed") || !strings.Contains(ev, "is not on node") {
			return fmt.Errorf("events: %s", ev)
		}
		return nil
	})
	if phase := jsonpath(t, ns, "pvc/stays", "{.status.phase}"); phase != "Pending" {
		t.Errorf("the claim of the crossNode=false class is %s", phase)
	}
}
