package mounter

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// Mounts and unmounts are made with the system calls rather than mount(8):
// on a node busy with volume churn, a fork and exec of mount per call costs
// more than the call itself. Only what the kernel does is needed here: no
// fstab, no helpers, no mtab.

// mountFlags are the options that are mount(2) flags; set or clear them.
var mountFlags = map[string]struct {
	set, clear uintptr
}{
	"defaults":    {},
	"rw":          {clear: unix.MS_RDONLY},
	"ro":          {set: unix.MS_RDONLY},
	"suid":        {clear: unix.MS_NOSUID},
	"nosuid":      {set: unix.MS_NOSUID},
	"dev":         {clear: unix.MS_NODEV},
	"nodev":       {set: unix.MS_NODEV},
	"exec":        {clear: unix.MS_NOEXEC},
	"noexec":      {set: unix.MS_NOEXEC},
	"sync":        {set: unix.MS_SYNCHRONOUS},
	"async":       {clear: unix.MS_SYNCHRONOUS},
	"dirsync":     {set: unix.MS_DIRSYNC},
	"atime":       {clear: unix.MS_NOATIME},
	"noatime":     {set: unix.MS_NOATIME},
	"diratime":    {clear: unix.MS_NODIRATIME},
	"nodiratime":  {set: unix.MS_NODIRATIME},
	"relatime":    {set: unix.MS_RELATIME},
	"norelatime":  {clear: unix.MS_RELATIME},
	"strictatime": {set: unix.MS_STRICTATIME},
	"lazytime":    {set: unix.MS_LAZYTIME},
	"nolazytime":  {clear: unix.MS_LAZYTIME},
}

// perMountFlags are the flags a bind mount can carry by itself (the others
// belong to the filesystem, which the staging mount already set).
const perMountFlags = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC |
	unix.MS_NOATIME | unix.MS_NODIRATIME | unix.MS_RELATIME | unix.MS_STRICTATIME

// parseMountOptions splits options into mount(2) flags and the filesystem's
// own options (passed on as its data string). Options that only mount(8)
// understands are refused rather than silently handed to the filesystem.
func parseMountOptions(opts []string) (flags uintptr, data []string, err error) {
	for _, o := range opts {
		for _, o := range strings.Split(o, ",") {
			o = strings.TrimSpace(o)
			if o == "" {
				continue
			}
			if f, ok := mountFlags[o]; ok {
				flags = flags&^f.clear | f.set
				continue
			}
			if mount8Only(o) {
				return 0, nil, fmt.Errorf("%w: mount option %q is not allowed", ErrOption, o)
			}
			data = append(data, o)
		}
	}
	return flags, data, nil
}

// CheckOptions refuses mount options that are neither mount(2) flags nor
// plausibly the filesystem's own.
func CheckOptions(opts []string) error {
	_, _, err := parseMountOptions(opts)
	return err
}

// Mount mounts the filesystem on dev at target.
func (Linux) Mount(dev, target, fsType string, opts []string) error {
	flags, data, err := parseMountOptions(opts)
	if err != nil {
		return err
	}
	if err := unix.Mount(dev, target, fsType, flags, strings.Join(data, ",")); err != nil {
		return fmt.Errorf("mount -t %s -o %s %s %s: %w", fsType, strings.Join(opts, ","), dev, target, err)
	}
	return nil
}

// Bind binds source at target with the per-mount flags of opts; a
// read-only bind needs a second call, the kernel ignores flags on MS_BIND.
func (Linux) Bind(source, target string, opts []string) error {
	flags, _, err := parseMountOptions(opts)
	if err != nil {
		return err
	}
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s at %s: %w", source, target, err)
	}
	if flags &= perMountFlags; flags == 0 {
		return nil
	}
	if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_BIND|flags, ""); err != nil {
		// Do not leave a bind without the flags asked for (e.g. writable
		// where read-only was asked).
		if uerr := unix.Unmount(target, 0); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return fmt.Errorf("setting options %v on bind mount %s: %w", opts, target, err)
	}
	return nil
}

// Unmount unmounts the topmost mount at target.
func (Linux) Unmount(target string) error {
	if err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w: unmounting %s: %v", ErrBusy, target, err)
		}
		return fmt.Errorf("unmounting %s: %w", target, err)
	}
	return nil
}

// mount8Only tells options that mean something to mount(8) or fstab, not to
// a filesystem or to mount(2).
func mount8Only(o string) bool {
	switch o {
	case "bind", "rbind", "remount", "move", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev", "nofail", "loop":
		return true
	}
	return strings.HasPrefix(o, "x-") || strings.HasPrefix(o, "loop=")
}
