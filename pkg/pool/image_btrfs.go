package pool

import (
	"os"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// fsNoCOW is FS_NOCOW_FL of linux/fs.h (chattr +C).
const fsNoCOW = 0x00800000

// noCOWOnBtrfs gives a new image pool's directory on btrfs the No_COW
// attribute. btrfs writes every overwrite of a file's data to new blocks
// (copy on write), so an image allocated in full could still fail a write
// once another process has filled the filesystem; a No_COW file is
// overwritten in place. Every file made in the directory inherits the
// attribute (images, snapshots, the temp files of copies), which keeps
// reflinks between them possible: btrfs refuses a reflink between a file
// with the attribute and one without. So a directory that already holds
// images or snapshots is left as it is.
func noCOWOnBtrfs(dir string) error {
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return err
	}
	if sfs.Type != unix.BTRFS_SUPER_MAGIC {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if n := e.Name(); strings.HasSuffix(n, imageSuffix) || strings.HasSuffix(n, snapSuffix) {
			return nil
		}
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	flags, err := unix.IoctlGetInt(int(d.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil || flags&fsNoCOW != 0 {
		return err
	}
	klog.InfoS("Image pool on btrfs: its files are overwritten in place (No_COW)", "dir", dir)
	return unix.IoctlSetPointerInt(int(d.Fd()), unix.FS_IOC_SETFLAGS, flags|fsNoCOW)
}
