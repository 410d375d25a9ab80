//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// upgradeFrom is the earlier flashpv the upgrade test installs: the last
// commit before the transfer layer and moves (2026-12-02), with image
// pools of ext4, xfs, btrfs and Block volumes, snapshots, the cluster
// controller and nodeLossPolicy, and a deploy/kubernetes that the
// harness's overlay still fits. Its records carry no format version.
const upgradeFrom = "73eee6f6064a0ab2b1acf4aae0fac1987c96e0d2"

// upgradeVolume is one claim the upgrade test makes with the old flashpv.
type upgradeVolume struct {
	name, class  string
	size, grown  string // requested, then expanded to
	block        bool
	node, handle string
	sum          string // md5 of the 4 MiB written
	dfKiB        int64  // the filesystem's size (df) before the expansion
}

const upgradeClaim = `
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: %[1]s
spec:
  accessModes: ["ReadWriteOnce"]
  storageClassName: %[2]s
  volumeMode: %[3]s
  resources:
    requests:
      storage: %[4]s
`

const upgradePod = `
apiVersion: v1
kind: Pod
metadata:
  name: %[1]s
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: c
      image: busybox:1.36
      command: ["sh", "-c", "exec sleep 2147483647"]
%[2]s
  volumes:
    - name: v
      persistentVolumeClaim:
        claimName: %[1]s
`

func (v *upgradeVolume) mode() (mode, use string) {
	if v.block {
		return "Block", "      volumeDevices:\n        - {name: v, devicePath: /dev/xvda}"
	}
	return "Filesystem", "      volumeMounts:\n        - {name: v, mountPath: /data}"
}

func (v *upgradeVolume) startPod(t *testing.T, ns string) {
	t.Helper()
	_, use := v.mode()
	applyYAML(t, ns, fmt.Sprintf(upgradePod, v.name, use))
}

// upgradeData reads the md5 of the 4 MiB the test wrote into pod's volume.
func upgradeData(t *testing.T, ns, pod string, block bool) string {
	t.Helper()
	read := "md5sum /data/blob"
	if block {
		read = "dd if=/dev/xvda bs=1M count=4 2>/dev/null | md5sum"
	}
	return strings.Fields(execIn(t, ns, pod, "sh", "-c", read))[0]
}

// runDeploy runs hack/cluster/deploy.sh with env added to the test's.
func runDeploy(env ...string) error {
	cmd := exec.Command(filepath.Join(repo, "hack", "cluster", "deploy.sh"))
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("deploy.sh %s: %v\n%s", strings.Join(env, " "), err, out)
	}
	return nil
}

// flashpvImages are the flashpv images of the DaemonSet and the controller.
func flashpvImages(t *testing.T) string {
	t.Helper()
	image := func(obj, container string) string {
		return jsonpath(t, "flashpv", obj, `{.spec.template.spec.containers[?(@.name=="`+container+`")].image}`)
	}
	return image("daemonset/flashpv-node", "flashpv") + " " + image("deployment/flashpv-controller", "controller")
}

func upgradeClass(t *testing.T, name, fsType string, params ...string) {
	t.Helper()
	lines := "  csi.storage.k8s.io/fstype: " + fsType + "\n"
	for _, p := range params {
		lines += "  " + p + "\n"
	}
	applyYAML(t, "default", `apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: `+name+`
provisioner: flashpv.dev
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
reclaimPolicy: Delete
parameters:
`+lines)
	t.Cleanup(func() { kubectl("delete", "storageclass", name, "--ignore-not-found") })
}

// TestUpgrade installs the flashpv of upgradeFrom (built from this
// repository's history by the harness), makes ext4, xfs, btrfs and Block
// volumes, one of a node-loss class, with data written from pods and a
// snapshot, then upgrades the DaemonSet and the controller to this tree by
// the normal deploy while the pods run. The pods keep running and reading
// their data; afterwards every volume is restaged, expanded, snapshotted,
// restored and deleted, and the old snapshot is restored too.
//
// Alone: go test -count=1 -timeout 30m -tags e2e -v -run TestUpgrade ./test/e2e/
func TestUpgrade(t *testing.T) {
	// The earlier flashpv is built from this repository's history; a
	// checkout without it (a shallow clone, an exported tree) cannot.
	if out, err := exec.Command("git", "-C", repo, "rev-parse", "--verify", "--quiet", upgradeFrom+"^{commit}").CombinedOutput(); err != nil {
		t.Skipf("commit %s is not in %s's history (a shallow clone?): %v %s; the upgrade test needs it", upgradeFrom, repo, err, out)
	}
	ns := namespace(t, "e2e-upgrade")
	tag := upgradeFrom[:12]
	head := envOr("FLASHPV_DEPLOY", "helm") // make e2e's
	t.Cleanup(func() {
		// Whatever happened, the tests after this one find this tree's
		// flashpv; the old sources go.
		if err := runDeploy("FLASHPV_DEPLOY="+head, "FLASHPV_REF="); err != nil {
			t.Errorf("deploying this tree's flashpv again: %v", err)
		}
		os.RemoveAll(filepath.Join(repo, "_output", "src", "flashpv-"+tag))
		os.Remove(filepath.Join(stateDir, "images", "flashpv-"+tag+".tar"))
	})
	if err := runDeploy("FLASHPV_DEPLOY=kustomize", "FLASHPV_REF="+upgradeFrom); err != nil {
		t.Fatal(err)
	}
	if imgs := flashpvImages(t); imgs != "localhost/flashpv:"+tag+" localhost/flashpv:"+tag {
		t.Fatalf("after deploying %s: images %s", tag, imgs)
	}
	upgradeClass(t, "upgrade-btrfs", "btrfs")
	upgradeClass(t, "upgrade-loss", "ext4", "nodeLossPolicy: Recreate")
	snapshotClass(t)
	vols := []*upgradeVolume{
		{name: "ext4", class: "flashpv", size: "64Mi", grown: "96Mi"},
		{name: "xfs", class: "flashpv-xfs", size: "320Mi", grown: "384Mi"},
		{name: "btrfs", class: "upgrade-btrfs", size: "256Mi", grown: "320Mi"}, // flashpv makes btrfs 256 MiB at least
		{name: "block", class: "flashpv", size: "32Mi", grown: "64Mi", block: true},
		{name: "loss", class: "upgrade-loss", size: "64Mi", grown: "96Mi"},
	}
	for _, v := range vols {
		mode, _ := v.mode()
		applyYAML(t, ns, fmt.Sprintf(upgradeClaim, v.name, v.class, mode, v.size))
		v.startPod(t, ns)
	}
	uids := map[string]string{}
	for _, v := range vols {
		waitPodReady(t, ns, v.name, 3*time.Minute)
		write := "dd if=/dev/urandom of=/data/blob bs=1M count=4 2>/dev/null && sync"
		if v.block {
			write = "dd if=/dev/urandom of=/dev/xvda bs=1M count=4 conv=fsync 2>/dev/null"
		}
		execIn(t, ns, v.name, "sh", "-c", write)
		v.sum = upgradeData(t, ns, v.name, v.block)
		v.node = podNode(t, ns, v.name)
		_, v.handle = pvOf(t, ns, v.name)
		uids[v.name] = jsonpath(t, ns, "pod/"+v.name, "{.metadata.uid}")
	}
	if attrs := jsonpath(t, "", "pv/"+must(t, "get", "pvc", "-n", ns, "loss", "-o", "jsonpath={.spec.volumeName}"), "{.spec.csi.volumeAttributes}"); !strings.Contains(attrs, "Recreate") {
		t.Errorf("the node-loss class's volume context: %s", attrs)
	}
	takeSnapshot(t, ns, "before", "ext4")

	// The upgrade: the normal deploy of this tree, pods running.
	if err := runDeploy("FLASHPV_DEPLOY="+head, "FLASHPV_REF="); err != nil {
		t.Fatal(err)
	}
	if imgs := flashpvImages(t); imgs != "localhost/flashpv:e2e localhost/flashpv:e2e" {
		t.Fatalf("after the upgrade: images %s", imgs)
	}
	for _, v := range vols {
		uid := jsonpath(t, ns, "pod/"+v.name, "{.metadata.uid}")
		restarts := jsonpath(t, ns, "pod/"+v.name, "{.status.containerStatuses[0].restartCount}")
		if uid != uids[v.name] || restarts != "0" {
			t.Errorf("pod %s was replaced or restarted by the upgrade (uid %s, was %s; restarts %s)", v.name, uid, uids[v.name], restarts)
		}
		if got := upgradeData(t, ns, v.name, v.block); got != v.sum {
			t.Errorf("%s reads %s through the upgrade, wrote %s", v.name, got, v.sum)
		}
	}
	if t.Failed() {
		return
	}

	// Expanded and restaged: the growth of every kind finishes when the
	// volume is staged again, online or not.
	for _, v := range vols {
		if !v.block {
			v.dfKiB = dfKiB(t, ns, v.name)
		}
		must(t, "patch", "pvc", "-n", ns, v.name, "-p", `{"spec":{"resources":{"requests":{"storage":"`+v.grown+`"}}}}`)
	}
	// The kubelet expands each in use first: online, or, for a mounted
	// ext4 where flashpv lacks CAP_SYS_RESOURCE, the storage only, the
	// filesystem growing when the restage below mounts it again.
	for _, v := range vols {
		eventually(t, 4*time.Minute, v.name+" expanded while in use", func() error {
			conds := jsonpath(t, ns, "pvc/"+v.name, "{.status.conditions}")
			if jsonpath(t, ns, "pvc/"+v.name, "{.status.capacity.storage}") == v.grown || strings.Contains(conds, "CAP_SYS_RESOURCE") {
				return nil
			}
			return fmt.Errorf("conditions %s", conds)
		})
	}
	for _, v := range vols {
		must(t, "delete", "pod", "-n", ns, v.name, "--wait=true")
		v.startPod(t, ns)
	}
	for _, v := range vols {
		waitPodReady(t, ns, v.name, 3*time.Minute)
		eventually(t, 3*time.Minute, v.name+" expanded to "+v.grown, func() error {
			if c := jsonpath(t, ns, "pvc/"+v.name, "{.status.capacity.storage}"); c != v.grown {
				return fmt.Errorf("capacity %s, conditions %s", c, jsonpath(t, ns, "pvc/"+v.name, "{.status.conditions}"))
			}
			return nil
		})
		if got := upgradeData(t, ns, v.name, v.block); got != v.sum {
			t.Errorf("%s reads %s after restaging, wrote %s", v.name, got, v.sum)
		}
		if v.block {
			if size := execIn(t, ns, v.name, "blockdev", "--getsize64", "/dev/xvda"); size != fmt.Sprint(parseQuantity(t, v.grown)) {
				t.Errorf("%s's device has %s bytes, want %s", v.name, size, v.grown)
			}
		} else if now := dfKiB(t, ns, v.name); now <= v.dfKiB {
			// Compared with df before, not with the size: df leaves out
			// an XFS's internal log (64 MiB from 300 MB up).
			t.Errorf("%s's filesystem after growing to %s: %d KiB, %d before", v.name, v.grown, now, v.dfKiB)
		}
	}
	// What the new flashpv writes of an old volume carries the format version.
	_, key, _ := strings.Cut(vols[0].handle, ".")
	if meta, err := os.ReadFile(filepath.Join(poolDir(t, vols[0].node), key+".json")); err != nil || !strings.Contains(string(meta), `"formatVersion": 1`) {
		t.Errorf("metadata of %s after restaging: %s %v", vols[0].handle, meta, err)
	}

	// Snapshotted and restored with the new flashpv, and the old snapshot
	// restored, each on its source's node.
	for _, v := range vols {
		if v.block {
			// A published Block volume is snapshotted only where the
			// pool shares blocks (not on the nodes' ext4).
			must(t, "delete", "pod", "-n", ns, v.name, "--wait=true")
		}
		takeSnapshot(t, ns, "snap-"+v.name, v.name)
	}
	for _, v := range vols {
		applyFromSource(t, ns, v.name+"-r", "snapshot/snap-"+v.name, v.grown, v.class, "  nodeSelector:\n    flashpv.dev/node: "+v.node, v.block)
	}
	applyFromSource(t, ns, "before-r", "snapshot/before", vols[0].size, "flashpv", "  nodeSelector:\n    flashpv.dev/node: "+vols[0].node, false)
	for _, v := range vols {
		waitPodReady(t, ns, v.name+"-r", 3*time.Minute)
		if got := upgradeData(t, ns, v.name+"-r", v.block); got != v.sum {
			t.Errorf("%s's restore reads %s, wrote %s", v.name, got, v.sum)
		}
	}
	waitPodReady(t, ns, "before-r", 3*time.Minute)
	if got := upgradeData(t, ns, "before-r", false); got != vols[0].sum {
		t.Errorf("the restore of the snapshot the old flashpv took reads %s, wrote %s", got, vols[0].sum)
	}

	// Deleted: claims, snapshots, and their images in the pools.
	before := snapshotHandle(t, ns, "before")
	must(t, "delete", "pods", "--all", "-n", ns, "--wait=true")
	must(t, "delete", "volumesnapshots", "--all", "-n", ns, "--wait=true")
	must(t, "delete", "pvc", "--all", "-n", ns, "--wait=true")
	eventually(t, 3*time.Minute, "the old volumes and snapshot to leave the pools", func() error {
		for _, v := range vols {
			if _, err := os.Stat(imageOf(t, v.node, v.handle)); err == nil {
				return fmt.Errorf("image of %s still in %s's pool", v.handle, v.node)
			}
		}
		_, key, _ := strings.Cut(before, ".")
		if _, err := os.Stat(filepath.Join(poolDir(t, vols[0].node), key+".snap")); err == nil {
			return fmt.Errorf("snapshot %s still in %s's pool", before, vols[0].node)
		}
		if out := must(t, "get", "pv", "-o", "jsonpath={.items[*].spec.csi.volumeHandle}"); containsAny(out, vols) {
			return fmt.Errorf("PVs left: %s", out)
		}
		return nil
	})
}

func containsAny(s string, vols []*upgradeVolume) bool {
	for _, v := range vols {
		if strings.Contains(s, v.handle) {
			return true
		}
	}
	return false
}

// dfKiB is the size df gives the filesystem at /data in pod.
func dfKiB(t *testing.T, ns, pod string) int64 {
	t.Helper()
	lines := strings.Split(execIn(t, ns, pod, "df", "-k", "/data"), "\n")
	if len(lines) < 2 || len(strings.Fields(lines[1])) < 2 {
		t.Fatalf("df in %s: %q", pod, lines)
	}
	n, err := strconv.ParseInt(strings.Fields(lines[1])[1], 10, 64)
	if err != nil {
		t.Fatalf("df in %s: %q: %v", pod, lines, err)
	}
	return n
}
