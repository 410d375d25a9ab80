package mounter

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
	utilexec "k8s.io/utils/exec"

	"k8s.io/mount-utils"

	"github.com/flashpv/flashpv/pkg/command"
	"github.com/flashpv/flashpv/pkg/durable"
	"github.com/flashpv/flashpv/pkg/loopdev"
)

// extSize reads an ext4 filesystem's size and block size from its
// superblock, mounted or not (the filesystem writes its superblock through
// the device's page cache, which a buffered read shares).
func extSize(dev string) (size, block int64, err error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return 0, 0, fmt.Errorf("reading the superblock of %s: %w", dev, err)
	}
	return parseExtSuperblock(sb)
}

// parseExtSuperblock decodes the block count and size of an ext2/3/4
// superblock (struct ext4_super_block, little endian).
func parseExtSuperblock(sb []byte) (size, block int64, err error) {
	le32 := func(off int) uint64 { return uint64(binary.LittleEndian.Uint32(sb[off:])) }
	if len(sb) < 1024 || binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
		return 0, 0, errors.New("no ext4 superblock")
	}
	logBlock := le32(0x18)
	if logBlock > 6 { // 64 KiB is the largest block ext4 has
		return 0, 0, fmt.Errorf("ext4 superblock with block size 2^%d KiB", logBlock)
	}
	block = 1024 << logBlock
	count := le32(0x04)
	const incompat64bit = 0x80
	if le32(0x60)&incompat64bit != 0 {
		count |= le32(0x150) << 32
	}
	return int64(count) * block, block, nil
}

// ExtNeedsGrow reports whether the ext4 filesystem on dev is smaller than dev.
func (Linux) ExtNeedsGrow(dev string) (bool, error) {
	fsSize, block, err := extSize(dev)
	if err != nil {
		return false, err
	}
	devSize, err := loopdev.Size(dev)
	if err != nil {
		return false, err
	}
	return devSize-fsSize >= block, nil
}

// CheckExt checks an unmounted ext4 filesystem before it is mounted (a
// preen, as fsck at boot does) and grows it to its device. Offline growth
// needs no CAP_SYS_RESOURCE (online growth does) and is what finishes an
// expansion done while the volume was not staged. The growth is protected
// by a copy of the metadata (see extundo.go): a growth of the volume that a
// kill interrupted is undone first, then done again.
func (l Linux) CheckExt(ctx context.Context, dev, volumeID string) error {
	if _, err := l.UndoExtGrowth(ctx, dev, volumeID); err != nil {
		return err
	}
	undo := l.extUndoPath(volumeID)
	grow, err := l.ExtNeedsGrow(dev)
	if err != nil {
		return err
	}
	// resize2fs insists on a freshly checked filesystem, hence -f. Exit
	// code 1 means e2fsck fixed something, which is fine to go on with.
	args := []string{"-p", dev}
	if grow {
		args = []string{"-f", "-p", dev}
	}
	if out, err := command.Output(ctx, "e2fsck", args...); err != nil {
		if ee, ok := err.(utilexec.ExitError); !ok || ee.ExitStatus() > 1 {
			return fmt.Errorf("%w: e2fsck %s found errors it cannot fix without an operator: %v: %s", ErrNeedsOperator, dev, err, out)
		}
	}
	if !grow {
		return nil
	}
	if undo != "" {
		if err := saveExtMetadata(ctx, dev, undo); err != nil {
			return err
		}
	}
	if out, err := command.Output(ctx, "resize2fs", dev); err != nil {
		err = fmt.Errorf("resize2fs %s: %v: %s", dev, err, out)
		if ctx.Err() == nil {
			// It gave up by itself: put the old metadata back now. (Killed,
			// the copy stays for the next check.)
			_, rerr := restoreExtMetadata(ctx, dev, undo)
			err = errors.Join(err, rerr)
		}
		return err
	}
	if undo != "" {
		if err := durable.Remove(undo); err != nil {
			return err
		}
	}
	klog.V(2).InfoS("Filesystem grown offline", "device", dev)
	return nil
}

// Grow grows a mounted filesystem to its device, when it is smaller.
func (l Linux) Grow(ctx context.Context, dev, mountPath, fsType string) error {
	if fsType == "ext4" {
		need, err := l.ExtNeedsGrow(dev)
		if err != nil || !need {
			return err
		}
		if !l.growMountedExt4 {
			return fmt.Errorf("%w: growing mounted ext4 on %s needs CAP_SYS_RESOURCE, which this process lacks; the volume has grown and its filesystem will grow offline when its pod next starts", ErrCannotGrowOnline, dev)
		}
		if out, err := command.Output(ctx, "resize2fs", dev); err != nil {
			return fmt.Errorf("resize2fs %s: %v: %s", dev, err, out)
		}
		klog.V(2).InfoS("Filesystem grown", "device", dev, "path", mountPath)
		return nil
	}
	resizer := mount.NewResizeFs(command.Exec(ctx))
	need, err := resizer.NeedResize(dev, mountPath)
	if err != nil {
		return fmt.Errorf("checking the size of the filesystem on %s: %w", dev, err)
	}
	if !need {
		return nil
	}
	if _, err := resizer.Resize(dev, mountPath); err != nil {
		return fmt.Errorf("growing the filesystem on %s: %w", dev, err)
	}
	klog.V(2).InfoS("Filesystem grown", "device", dev, "path", mountPath)
	return nil
}

// CanGrowMountedExt4 reports whether this process may grow a mounted ext4:
// the kernel wants CAP_SYS_RESOURCE in the effective set for it.
func CanGrowMountedExt4() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}
