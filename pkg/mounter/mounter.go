// Package mounter is the node's mount layer: it mounts, binds and unmounts
// with the system calls, tells which mounts belong to a volume, and creates,
// checks and grows filesystems with their tools. Interface is what the
// driver uses of it, so the Node service can be tested without root.
package mounter

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
	"k8s.io/mount-utils"

	"github.com/flashpv/flashpv/pkg/command"
	"github.com/flashpv/flashpv/pkg/loopdev"
)

// Errors a caller can act on.
var (
	// ErrBusy: a mount is in use.
	ErrBusy = errors.New("mount busy")
	// ErrOption: a mount option that is not allowed.
	ErrOption = errors.New("mount option not allowed")
	// ErrNeedsOperator: a filesystem check found what only a person can fix.
	ErrNeedsOperator = errors.New("filesystem needs repair")
	// ErrCannotGrowOnline: this process may not grow the mounted filesystem.
	ErrCannotGrowOnline = errors.New("filesystem cannot grow while mounted")
)

// Interface is the mount layer as the driver uses it.
type Interface interface {
	// Identify stats a volume's source (a device, or with dir a directory)
	// so its mounts can be told from others.
	Identify(path string, dir bool) Origin
	// At returns the topmost mount at path, or nil when there is none.
	At(path string) (*Point, error)
	// MountsOf lists the mount points of o.
	MountsOf(o Origin) ([]string, error)
	Mount(dev, target, fsType string, opts []string) error
	Bind(source, target string, opts []string) error
	Unmount(target string) error
	// Probe returns the type of the filesystem on dev, "" for none.
	Probe(ctx context.Context, dev string) (string, error)
	// Format makes a new filesystem on dev, over whatever is there.
	Format(ctx context.Context, dev, fsType string) error
	// CheckExt checks an unmounted ext4 and grows it to its device,
	// first undoing a growth of the volume that was interrupted.
	CheckExt(ctx context.Context, dev, volumeID string) error
	// UndoExtGrowth undoes an interrupted offline growth of the volume's
	// ext4 on dev, if there was one.
	UndoExtGrowth(ctx context.Context, dev, volumeID string) (bool, error)
	// ForgetExtGrowth drops what an interrupted growth of a deleted volume
	// left behind.
	ForgetExtGrowth(volumeID string) error
	// RenewBtrfsID gives the unmounted btrfs on dev, copied from another
	// volume or a snapshot, a filesystem ID of its own (derived from
	// volumeID), so that it mounts beside its source.
	RenewBtrfsID(ctx context.Context, dev, volumeID string) error
	// ExtNeedsGrow tells whether dev has outgrown its ext4.
	ExtNeedsGrow(dev string) (bool, error)
	// Grow grows the filesystem on dev, mounted at mountPath, to dev.
	Grow(ctx context.Context, dev, mountPath, fsType string) error
	// CanGrowMountedExt4 tells whether Grow works on a mounted ext4.
	CanGrowMountedExt4() bool
	// Statfs reports a mounted filesystem's space and inodes.
	Statfs(path string) (Stats, error)
	// DeviceSize is the size of a block device.
	DeviceSize(path string) (int64, error)
}

// Stats are a filesystem's space and inodes.
type Stats struct {
	Total, Available, Used int64
	Inodes, InodesFree     int64
}

// Linux is the real mount layer.
type Linux struct {
	growMountedExt4 bool
	// undoDir keeps the metadata copies that make offline ext4 growth
	// restartable (on the node's own disk); "" leaves growth unprotected.
	undoDir string
}

// New returns the real mount layer of this process, keeping what it needs
// to recover from an interrupted growth in undoDir.
func New(undoDir string) Linux {
	return Linux{growMountedExt4: CanGrowMountedExt4(), undoDir: undoDir}
}

var _ Interface = Linux{}

func (Linux) Identify(path string, dir bool) Origin { return Identify(path, dir) }

func (l Linux) CanGrowMountedExt4() bool { return l.growMountedExt4 }

// Probe asks blkid what dev holds.
func (Linux) Probe(ctx context.Context, dev string) (string, error) {
	m := mount.SafeFormatAndMount{Interface: mount.New(""), Exec: command.Exec(ctx)}
	format, err := m.GetDiskFormat(dev)
	if err != nil {
		return "", fmt.Errorf("probing %s: %w", dev, err)
	}
	return format, nil
}

// mkfsArgs are the arguments of mkfs.<fsType> for a new volume: forced, so
// what a killed mkfs left is overwritten. None of them discards the device:
// a discard would punch a preallocated image full of holes before the first
// write.
func mkfsArgs(fsType, dev string) []string {
	switch fsType {
	case "ext4":
		// No blocks reserved for root: the volume belongs to its pod.
		// Inode tables and journal are zeroed now, which on a loop device
		// costs an fallocate, instead of by the kernel's lazyinit thread
		// writing in the background for minutes after the first mount.
		return []string{"-F", "-q", "-m0", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", dev}
	default: // xfs, btrfs
		return []string{"-f", "-K", "-q", dev}
	}
}

// Format runs mkfs.
func (Linux) Format(ctx context.Context, dev, fsType string) error {
	if out, err := command.Output(ctx, "mkfs."+fsType, mkfsArgs(fsType, dev)...); err != nil {
		return fmt.Errorf("mkfs.%s %s: %v: %s", fsType, dev, err, out)
	}
	return nil
}

func (Linux) Statfs(path string) (Stats, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return Stats{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := int64(st.Bsize)
	return Stats{
		Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs,
		Inodes: int64(st.Files), InodesFree: int64(st.Ffree),
	}, nil
}

func (Linux) DeviceSize(path string) (int64, error) { return loopdev.Size(path) }
