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

// nodeFS is where a node's pools live (its own ext4, see
// docs/local-cluster.md), and the files a process on the node fills it with.
const (
	nodeFS       = "/var/lib/flashpv"
	nodeFSFiller = nodeFS + "/e2e-full-disk"
)

// onNode runs a shell script in a node's mount namespace, as a process on
// that node would: it sees the node's pool filesystem at nodeFS.
func onNode(t *testing.T, node, script string) string {
	t.Helper()
	pid := strings.TrimSuffix(strings.TrimPrefix(nodeRoot(t, node), "/proc/"), "/root")
	out, err := exec.Command("nsenter", "--target", pid, "--mount", "--", "sh", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("on %s: %s: %v\n%s", node, script, err, out)
	}
	return strings.TrimSpace(string(out))
}

// nodeFSFree is what the node's pool filesystem has left for an
// unprivileged writer.
func nodeFSFree(t *testing.T, node string) int64 {
	t.Helper()
	out := onNode(t, node, "stat -f -c '%a %S' "+nodeFS)
	f := strings.Fields(out)
	if len(f) != 2 {
		t.Fatalf("stat -f on %s: %q", node, out)
	}
	blocks, err1 := strconv.ParseInt(f[0], 10, 64)
	bsize, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("stat -f on %s: %q", node, out)
	}
	return blocks * bsize
}

// TestFullNodeDisk: a process on a node fills the filesystem the node's
// pool lives on to its last block. A volume made there before keeps taking
// writes (its image is allocated in full); a new claim whose pod may run
// there or on another node is bound on the other node (flashpv answers
// RESOURCE_EXHAUSTED should the scheduler still pick the full node, and
// the provisioner gives the claim back to the scheduler); the full node's
// CSIStorageCapacity drops to nothing at the provisioner's next poll.
// Once the space is freed, the capacity comes back and the node takes new
// volumes again, flashpv never restarted.
func TestFullNodeDisk(t *testing.T) {
	sorted, _ := nodesBySize(t)
	ns := namespace(t, "e2e-full-disk")
	full, other := sorted[len(sorted)-1], sorted[len(sorted)-2]
	restarts := func() string {
		return must(t, "get", "pods", "-n", "flashpv", "--field-selector", "spec.nodeName="+full,
			"-o", `jsonpath={range .items[*]}{.metadata.name}={.status.containerStatuses[*].restartCount}{" "}{end}`)
	}
	before := restarts()

	claimOn(t, ns, "before", "512Mi", []string{full}, "")
	waitPodReady(t, ns, "before", 3*time.Minute)
	images := func() int {
		m, _ := filepath.Glob(filepath.Join(poolDir(t, full), "*.img"))
		return len(m)
	}
	imagesBefore := images()
	var capBefore int64
	eventually(t, 2*time.Minute, "the capacity of "+full+" to show the claim", func() error {
		capBefore = capacityFor(t, "flashpv", full)
		if free := nodeFSFree(t, full); capBefore <= 0 || capBefore > free {
			return fmt.Errorf("capacity %d, the filesystem has %d", capBefore, free)
		}
		return nil
	})

	t.Cleanup(func() { onNode(t, full, "rm -f "+nodeFSFiller+" "+nodeFSFiller+".tail; sync -f "+nodeFS) })
	start := time.Now()
	// Nearly all at once, then the last blocks one by one until the
	// filesystem refuses.
	onNode(t, full, fmt.Sprintf(`fallocate -l $(( $(stat -f -c '%%a*%%S' %[1]s) - 8*1024*1024 )) %[2]s &&
		{ dd if=/dev/zero of=%[2]s.tail bs=4096 oflag=direct status=none 2>&1 | grep -q 'No space left' ; } &&
		sync -f %[1]s`, nodeFS, nodeFSFiller))
	if free := nodeFSFree(t, full); free >= 1<<20 {
		t.Fatalf("%s's pool filesystem has %d bytes left after the fill", full, free)
	}

	// The volume made before takes writes, also new blocks of its own
	// filesystem, and syncs them.
	execIn(t, ns, "before", "sh", "-c", "dd if=/dev/urandom of=/data/after-fill bs=1M count=64 conv=fsync 2>/dev/null && sync")
	if got := execIn(t, ns, "before", "sh", "-c", "wc -c </data/after-fill"); got != strconv.Itoa(64<<20) {
		t.Fatalf("the volume made before the fill holds %s bytes of the 64 MiB written", got)
	}

	// A new claim that prefers the full node is bound on the other.
	claimOn(t, ns, "after", "512Mi", []string{full, other}, full)
	waitPodReady(t, ns, "after", 5*time.Minute)
	took := time.Since(start)
	if n := podNode(t, ns, "after"); n != other {
		t.Fatalf("the claim's pod runs on %s; %s's disk is full and %s has room:\n%s", n, full, other, events(t, ns, "after"))
	}
	pv, handle := pvOf(t, ns, "after")
	if n := pinnedNode(t, pv); n != other {
		t.Fatalf("%s pinned to %q, want %s", pv, n, other)
	}
	if _, err := os.Stat(imageOf(t, full, handle)); err == nil {
		t.Errorf("the claim's image is (also) in the full node's pool")
	}
	if n := images(); n != imagesBefore {
		t.Errorf("%d images in %s's pool after the refused create, %d before", n, full, imagesBefore)
	}
	how := "the scheduler knew from the capacity objects"
	if strings.Contains(events(t, ns, "after"), "ResourceExhausted") {
		how = "RESOURCE_EXHAUSTED on the full node, rescheduled"
	}
	t.Logf("full disk on %s: claim bound and pod Ready on %s %.1fs after the fill began (%s)", full, other, took.Seconds(), how)

	eventually(t, 2*time.Minute, "the capacity of "+full+" to drop", func() error {
		if now := capacityFor(t, "flashpv", full); now >= 1<<20 {
			return fmt.Errorf("%s: %d bytes", full, now)
		}
		return nil
	})
	t.Logf("full disk on %s: its CSIStorageCapacity dropped from %d to 0 within %.1fs of the fill", full, capBefore, time.Since(start).Seconds())

	// The space comes back, and so does the node.
	onNode(t, full, "rm -f "+nodeFSFiller+" "+nodeFSFiller+".tail && sync -f "+nodeFS)
	eventually(t, 2*time.Minute, "the capacity of "+full+" to come back", func() error {
		if now := capacityFor(t, "flashpv", full); now < capBefore-64<<20 {
			return fmt.Errorf("%s: %d, was %d before the fill", full, now, capBefore)
		}
		return nil
	})
	claimOn(t, ns, "freed", "512Mi", []string{full}, "")
	waitPodReady(t, ns, "freed", 3*time.Minute)
	if pv, _ := pvOf(t, ns, "freed"); pinnedNode(t, pv) != full {
		t.Fatalf("%s pinned to %q, want %s", pv, pinnedNode(t, pv), full)
	}
	if after := restarts(); after != before {
		t.Errorf("flashpv on %s restarted meanwhile: %s, before %s", full, after, before)
	}
}
