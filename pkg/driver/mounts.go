package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// deviceMounts are the mounts that expose one loop device: filesystem mounts
// of it (found by source or device number; btrfs reports an anonymous device
// number) and bind mounts of its device node (Block volumes).
type deviceMounts struct {
	dev          string
	major, minor int
	rdev         uint64
	// dir: dev is a directory (a quota volume); its mounts are binds of
	// it, found by the filesystem's device number and the inode.
	dir bool
	ino uint64
}

// newDirMounts finds the bind mounts of a directory.
func newDirMounts(dir string) deviceMounts {
	dm := deviceMounts{dev: dir, major: -1, minor: -1, dir: true}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err == nil {
		dm.major, dm.minor, dm.ino = int(unix.Major(st.Dev)), int(unix.Minor(st.Dev)), st.Ino
	}
	return dm
}

func newDeviceMounts(dev string) deviceMounts {
	dm := deviceMounts{dev: dev, major: -1, minor: -1}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err == nil {
		dm.major, dm.minor, dm.rdev = int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev)), st.Rdev
	}
	return dm
}

// mountPoint is what the driver needs to know of a mount.
type mountPoint struct {
	source       string // "" when not read from the mount table
	major, minor int    // the device of the mounted filesystem
	rdev         uint64 // a bind-mounted device node's device, or 0
	devName      string // a bind from devtmpfs: its root ("/loop3")
	ino          uint64 // the inode at the mount point, when known
	readOnly     bool
}

func fromInfo(m *mountinfo.Info) *mountPoint {
	mp := &mountPoint{source: m.Source, major: m.Major, minor: m.Minor,
		readOnly: slices.Contains(strings.Split(m.Options, ","), "ro")}
	if m.FSType == "devtmpfs" {
		mp.devName = m.Root
	}
	return mp
}

func (mp *mountPoint) String() string {
	if mp.source != "" {
		return mp.source
	}
	return fmt.Sprintf("device %d:%d", mp.major, mp.minor)
}

func (dm deviceMounts) owns(m *mountPoint) bool {
	if dm.dev == "" {
		return false
	}
	if dm.dir {
		return m.major == dm.major && m.minor == dm.minor && m.ino == dm.ino && m.ino != 0
	}
	return (m.source != "" && m.source == dm.dev) ||
		(m.major == dm.major && m.minor == dm.minor) ||
		(m.rdev != 0 && m.rdev == dm.rdev) ||
		// devtmpfs roots are paths below /dev: /loop3, /mapper/vg-lv.
		(m.devName != "" && (m.devName == "/"+filepath.Base(dm.dev) || "/dev"+m.devName == dm.dev))
}

// all lists the mount points of the device.
func (dm deviceMounts) all() ([]string, error) {
	infos, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		mp := fromInfo(m)
		if dm.dir && m.Major == dm.major && m.Minor == dm.minor {
			var st unix.Stat_t
			if unix.Stat(m.Mountpoint, &st) == nil {
				mp.ino = st.Ino
			}
		}
		return !dm.owns(mp), false
	})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range infos {
		out = append(out, m.Mountpoint)
	}
	return out, nil
}

// mountAt returns the topmost mount at path, or nil.
func mountAt(path string) (*mountPoint, error) {
	// Reading the mount table costs time in proportion to the node's mounts;
	// whether path is a mount point at all costs one openat2, and for all but
	// btrfs (whose mounts report an anonymous device number) stat and statfs
	// tell the rest.
	mounted, err := mountinfo.Mounted(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !mounted) {
		return nil, nil
	}
	var st unix.Stat_t
	var sfs unix.Statfs_t
	if err == nil && unix.Stat(path, &st) == nil && unix.Statfs(path, &sfs) == nil && sfs.Type != unix.BTRFS_SUPER_MAGIC {
		mp := &mountPoint{major: int(unix.Major(st.Dev)), minor: int(unix.Minor(st.Dev)), ino: st.Ino, readOnly: sfs.Flags&unix.ST_RDONLY != 0}
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			mp.rdev = st.Rdev
		}
		return mp, nil
	}
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil || len(infos) == 0 {
		return nil, err
	}
	mp := fromInfo(infos[len(infos)-1])
	if unix.Stat(path, &st) == nil {
		mp.ino = st.Ino
	}
	return mp, nil
}
