package driver

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/klog/v2"
	utilexec "k8s.io/utils/exec"

	"github.com/flashpv/flashpv/pkg/loopdev"
)

// extSize reads an ext4 filesystem's size and block size from its superblock
// (works mounted or not).
func extSize(exec utilexec.Interface, dev string) (size, block int64, err error) {
	out, err := exec.Command("dumpe2fs", "-h", dev).Output()
	if err != nil {
		return 0, 0, fmt.Errorf("dumpe2fs %s: %w", dev, err)
	}
	var count int64
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Block count":
			count, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		case "Block size":
			block, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if count == 0 || block == 0 {
		return 0, 0, fmt.Errorf("dumpe2fs %s: no block count or size in its output", dev)
	}
	return count * block, block, nil
}

// extNeedsGrow reports whether the ext4 filesystem on dev is smaller than dev.
func extNeedsGrow(exec utilexec.Interface, dev string) (bool, error) {
	fsSize, block, err := extSize(exec, dev)
	if err != nil {
		return false, err
	}
	devSize, err := loopdev.Size(dev)
	if err != nil {
		return false, err
	}
	return devSize-fsSize >= block, nil
}

// checkExt checks an unmounted ext4 filesystem before it is mounted (a
// preen, as fsck at boot does) and grows it to its device. Offline growth
// needs no CAP_SYS_RESOURCE (online growth does) and is what finishes an
// expansion done while the volume was not staged.
func (d *Driver) checkExt(dev string) error {
	grow, err := extNeedsGrow(d.exec, dev)
	if err != nil {
		return err
	}
	// resize2fs insists on a freshly checked filesystem, hence -f. Exit
	// code 1 means e2fsck fixed something, which is fine to go on with.
	args := []string{"-p", dev}
	if grow {
		args = []string{"-f", "-p", dev}
	}
	if out, err := d.exec.Command("e2fsck", args...).CombinedOutput(); err != nil {
		if ee, ok := err.(utilexec.ExitError); !ok || ee.ExitStatus() > 1 {
			return fmt.Errorf("%w: e2fsck %s found errors it cannot fix without an operator: %v: %s", errPrecondition, dev, err, out)
		}
	}
	if !grow {
		return nil
	}
	if out, err := d.exec.Command("resize2fs", dev).CombinedOutput(); err != nil {
		return fmt.Errorf("resize2fs %s: %v: %s", dev, err, out)
	}
	klog.V(2).InfoS("Filesystem grown offline", "device", dev)
	return nil
}

// growFilesystem grows a mounted filesystem to its device, when it is smaller.
func (d *Driver) growFilesystem(dev, mountPath, fsType string) error {
	if fsType == "ext4" {
		need, err := extNeedsGrow(d.exec, dev)
		if err != nil || !need {
			return err
		}
		out, err := d.exec.Command("resize2fs", dev).CombinedOutput()
		if err != nil {
			if strings.Contains(string(out), "Permission denied") {
				return fmt.Errorf("%w: growing mounted ext4 on %s needs CAP_SYS_RESOURCE, which this process lacks; the volume has grown and its filesystem will grow when it is next staged", errPrecondition, dev)
			}
			return fmt.Errorf("resize2fs %s: %v: %s", dev, err, out)
		}
		klog.V(2).InfoS("Filesystem grown", "device", dev, "path", mountPath)
		return nil
	}
	need, err := d.resizer.NeedResize(dev, mountPath)
	if err != nil {
		return fmt.Errorf("checking the size of the filesystem on %s: %w", dev, err)
	}
	if !need {
		return nil
	}
	if _, err := d.resizer.Resize(dev, mountPath); err != nil {
		return fmt.Errorf("growing the filesystem on %s: %w", dev, err)
	}
	klog.V(2).InfoS("Filesystem grown", "device", dev, "path", mountPath)
	return nil
}
