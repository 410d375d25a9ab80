package driver

import (
	"errors"
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
}

func newDeviceMounts(dev string) deviceMounts {
	dm := deviceMounts{dev: dev, major: -1, minor: -1}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err == nil {
		dm.major, dm.minor = int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev))
	}
	return dm
}

func (dm deviceMounts) owns(m *mountinfo.Info) bool {
	if dm.dev == "" {
		return false
	}
	return m.Source == dm.dev ||
		(m.Major == dm.major && m.Minor == dm.minor) ||
		(m.FSType == "devtmpfs" && m.Root == "/"+filepath.Base(dm.dev))
}

// all lists the mount points of the device.
func (dm deviceMounts) all() ([]string, error) {
	infos, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !dm.owns(m), false
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
func mountAt(path string) (*mountinfo.Info, error) {
	// Reading the mount table costs time in proportion to the node's mounts;
	// whether path is a mount point at all costs one openat2.
	mounted, err := mountinfo.Mounted(path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !mounted) {
		return nil, nil
	}
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil || len(infos) == 0 {
		return nil, err
	}
	return infos[len(infos)-1], nil
}

func readOnly(m *mountinfo.Info) bool {
	return slices.Contains(strings.Split(m.Options, ","), "ro")
}
