package fscopy

import (
	"errors"
	"os"
	"path"

	"golang.org/x/sys/unix"
)

// EmptyDir removes everything in the open directory dir and keeps dir
// itself, with its owner, mode, attributes and (on XFS) project. It works
// from directory descriptors and never follows a symlink, so nothing
// outside dir is removed, whatever dir holds.
func EmptyDir(dir *os.File) error {
	return emptyAt(int(dir.Fd()), dir.Name())
}

// emptyAt removes the entries of the directory fd, named at for errors.
func emptyAt(fd int, at string) error {
	d, err := openDir(fd, ".", 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: at, Err: err}
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return &os.PathError{Op: "readdir", Path: at, Err: err}
	}
	for _, n := range names {
		if err := removeAt(fd, n, path.Join(at, n)); err != nil {
			return err
		}
	}
	return nil
}

// removeAt removes the entry name of the directory dfd, and what it holds
// if it is a directory.
func removeAt(dfd int, name, at string) error {
	err := unix.Unlinkat(dfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) {
		return &os.PathError{Op: "unlink", Path: at, Err: err}
	}
	sub, err := openDir(dfd, name, unix.O_NOFOLLOW)
	if err != nil {
		return &os.PathError{Op: "open", Path: at, Err: err}
	}
	// Its entries can be removed even when its mode says otherwise (for a
	// caller that is not root); it goes anyway.
	_ = unix.Fchmod(int(sub.Fd()), 0o700)
	err = emptyAt(int(sub.Fd()), at)
	sub.Close()
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "rmdir", Path: at, Err: err}
	}
	return nil
}

// RemoveEntry removes the entry name of the open directory dir, and
// everything in it if it is a directory, as EmptyDir removes: from
// descriptors, never through a symlink.
func RemoveEntry(dir *os.File, name string) error {
	return removeAt(int(dir.Fd()), name, path.Join(dir.Name(), name))
}
