//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestVolumeHealthReachesPod: a volume whose storage breaks under a
// running pod is reported abnormal by flashpv, and the kubelet (with
// CSIVolumeHealth) puts that into the pod's status.volumeHealth, naming
// the problem; once the storage is whole again, the report clears. The
// break: the volume's image file shortened behind its loop device (what
// a file lost to an administrator's mistake looks like to flashpv).
func TestVolumeHealthReachesPod(t *testing.T) {
	ns := namespace(t, "volume-health")
	claim(t, ns, "data", "flashpv", "64Mi", "echo x > /data/f && sync && exec sleep 2147483647")
	waitPodReady(t, ns, "data", 3*time.Minute)
	node := podNode(t, ns, "data")
	_, handle := pvOf(t, ns, "data")
	img := imageOf(t, node, handle)
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, st.Size()/2); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := os.Truncate(img, st.Size()); err != nil {
				t.Errorf("restoring %s: %v", img, err)
			}
		}
	}
	defer restore()
	health := func() string {
		out, _ := kubectl("get", "pod", "-n", ns, "data", "-o",
			`jsonpath={range .status.volumeHealth[*]}{.name}:{range .healthConditions[*]}{.status}/{.reason}/{.message};{end}{end}`)
		return out
	}
	eventually(t, 3*time.Minute, "the pod's status.volumeHealth to report the short image", func() error {
		// The pod's volume "v" (claim's helper); a short image is data lost.
		if h := health(); !strings.Contains(h, "v:DataLoss/ImageTruncated/") {
			return fmt.Errorf("volumeHealth %q", h)
		}
		return nil
	})
	t.Logf("reported: %s", health())
	restore()
	eventually(t, 3*time.Minute, "the report to clear", func() error {
		if h := health(); strings.Contains(h, "Inaccessible") || strings.Contains(h, "DataLoss") {
			return fmt.Errorf("volumeHealth %q", h)
		}
		return nil
	})
}
