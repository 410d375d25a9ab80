package mounter

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

// Origin identifies what a volume's mounts come from, so they can be told
// from others: a device (its filesystem mounted, found by source or device
// number, btrfs reporting an anonymous one; or its device node bound, for
// Block volumes), or a directory (bound, found by the filesystem's device
// number and the inode).
type Origin struct {
	Path         string
	Dir          bool
	Major, Minor int
	Rdev         uint64
	Ino          uint64
}

// Identify stats a volume's source: a device, or with dir a directory.
func Identify(path string, dir bool) Origin {
	o := Origin{Path: path, Dir: dir, Major: -1, Minor: -1}
	var st unix.Stat_t
	if path == "" || unix.Stat(path, &st) != nil {
		return o
	}
	if dir {
		o.Major, o.Minor, o.Ino = int(unix.Major(st.Dev)), int(unix.Minor(st.Dev)), st.Ino
	} else {
		o.Major, o.Minor, o.Rdev = int(unix.Major(st.Rdev)), int(unix.Minor(st.Rdev)), st.Rdev
	}
	return o
}

// Point is what the driver needs to know of a mount.
type Point struct {
	Source       string // "" when not read from the mount table
	Major, Minor int    // the device of the mounted filesystem
	Rdev         uint64 // a bind-mounted device node's device, or 0
	DevName      string // a bind from devtmpfs: its root ("/loop3")
	Ino          uint64 // the inode at the mount point, when known
	ReadOnly     bool
}

func fromInfo(m *mountinfo.Info) *Point {
	mp := &Point{Source: m.Source, Major: m.Major, Minor: m.Minor,
		ReadOnly: slices.Contains(strings.Split(m.Options, ","), "ro")}
	if m.FSType == "devtmpfs" {
		mp.DevName = m.Root
	}
	return mp
}

func (mp *Point) String() string {
	if mp.Source != "" {
		return mp.Source
	}
	return fmt.Sprintf("device %d:%d", mp.Major, mp.Minor)
}

// Owns tells whether mount m comes from o.
func (o Origin) Owns(m *Point) bool {
	if o.Path == "" || m == nil {
		return false
	}
	if o.Dir {
		return m.Major == o.Major && m.Minor == o.Minor && m.Ino == o.Ino && m.Ino != 0
	}
	return (m.Source != "" && m.Source == o.Path) ||
		(m.Major == o.Major && m.Minor == o.Minor) ||
		(m.Rdev != 0 && m.Rdev == o.Rdev) ||
		// devtmpfs roots are paths below /dev: /loop3, /mapper/vg-lv.
		(m.DevName != "" && (m.DevName == "/"+filepath.Base(o.Path) || "/dev"+m.DevName == o.Path))
}

// MountsOf lists the mount points of o.
func (Linux) MountsOf(o Origin) ([]string, error) {
	infos, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		mp := fromInfo(m)
		if o.Dir && m.Major == o.Major && m.Minor == o.Minor {
			var st unix.Stat_t
			if unix.Stat(m.Mountpoint, &st) == nil {
				mp.Ino = st.Ino
			}
		}
		return !o.Owns(mp), false
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

// At returns the topmost mount at path, or nil.
func (Linux) At(path string) (*Point, error) {
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
		mp := &Point{Major: int(unix.Major(st.Dev)), Minor: int(unix.Minor(st.Dev)), Ino: st.Ino, ReadOnly: sfs.Flags&unix.ST_RDONLY != 0}
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			mp.Rdev = st.Rdev
		}
		return mp, nil
	}
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil || len(infos) == 0 {
		return nil, err
	}
	mp := fromInfo(infos[len(infos)-1])
	if unix.Stat(path, &st) == nil {
		mp.Ino = st.Ino
	}
	return mp, nil
}
