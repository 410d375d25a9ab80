package tree

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/fscopy"
)

// Metadata is applied as fscopy applies it: owner first (chown clears the
// set-ID bits and file capabilities), then extended attributes, then the
// mode, times last. A directory's mode and times wait until its entries
// are made.

// procPath names an open descriptor (and an entry below it) without
// resolving any path again: the l*xattr calls have no *at form.
func procPath(fd int, name string) string {
	p := "/proc/self/fd/" + strconv.Itoa(fd)
	if name != "" {
		p += "/" + name
	}
	return p
}

// readXattrs reads every extended attribute that list names, with get; a
// filesystem without extended attributes has none.
func readXattrs(list func([]byte) (int, error), get func(string, []byte) (int, error)) ([]xattr, error) {
	names, err := fscopy.ReadSized(list)
	if err != nil {
		if notSupported(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("listxattr: %w", err)
	}
	var out []xattr
	for n := range bytes.SplitSeq(names, []byte{0}) {
		if len(n) == 0 {
			continue
		}
		name := string(n)
		val, err := fscopy.ReadSized(func(b []byte) (int, error) { return get(name, b) })
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("getxattr %s: %w", name, err)
		}
		out = append(out, xattr{name: name, value: val})
	}
	return out, nil
}

// fdXattrs reads the extended attributes of an open file or directory.
func fdXattrs(fd int) ([]xattr, error) {
	return readXattrs(func(b []byte) (int, error) { return unix.Flistxattr(fd, b) },
		func(n string, b []byte) (int, error) { return unix.Fgetxattr(fd, n, b) })
}

// entryXattrs reads the extended attributes of the entry name of the
// directory dfd, without following it.
func entryXattrs(dfd int, name string) ([]xattr, error) {
	p := procPath(dfd, name)
	return readXattrs(func(b []byte) (int, error) { return unix.Llistxattr(p, b) },
		func(n string, b []byte) (int, error) { return unix.Lgetxattr(p, n, b) })
}

// setXattrs sets xs with set. An attribute the target filesystem has no
// namespace for is left out, as a local copy leaves it out.
func setXattrs(xs []xattr, set func(string, []byte) error) error {
	for _, x := range xs {
		if err := set(x.name, x.value); err != nil && !notSupported(err) {
			return fmt.Errorf("setxattr %s: %w", x.name, err)
		}
	}
	return nil
}

func notSupported(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}

// ownAndLabel gives the open file or directory fd e's owner and extended
// attributes.
func ownAndLabel(fd int, e *entry) error {
	if err := unix.Fchown(fd, int(e.uid), int(e.gid)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	return setXattrs(e.xattrs, func(n string, v []byte) error { return unix.Fsetxattr(fd, n, v, 0) })
}

// modeAndTimes gives the open file or directory fd e's mode and times.
func modeAndTimes(fd int, e *entry) error {
	if err := unix.Fchmod(fd, e.mode&0o7777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return setTimes(unix.AT_FDCWD, procPath(fd, ""), e, 0)
}

func setTimes(dfd int, name string, e *entry, flags int) error {
	if err := unix.UtimesNanoAt(dfd, name, []unix.Timespec{e.atime, e.mtime}, flags); err != nil {
		return fmt.Errorf("utimensat: %w", err)
	}
	return nil
}

// setOpenMeta gives an open regular file all of e's metadata.
func setOpenMeta(fd int, e *entry) error {
	if err := ownAndLabel(fd, e); err != nil {
		return err
	}
	return modeAndTimes(fd, e)
}

// setLinkMeta gives the symlink name of dfd e's owner, attributes and
// times; a symlink has no mode of its own.
func setLinkMeta(dfd int, name string, e *entry) error {
	if err := unix.Fchownat(dfd, name, int(e.uid), int(e.gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	p := procPath(dfd, name)
	if err := setXattrs(e.xattrs, func(n string, v []byte) error { return unix.Lsetxattr(p, n, v, 0) }); err != nil {
		return err
	}
	return setTimes(dfd, name, e, unix.AT_SYMLINK_NOFOLLOW)
}

// setFifoMeta gives the fifo name of dfd e's metadata through an O_PATH
// descriptor of it (opening a fifo for reading would wait for a writer).
func setFifoMeta(dfd int, name string, e *entry) error {
	fd, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFIFO {
		return fmt.Errorf("%w: %q is no longer the fifo just made", errProtocol, e.path)
	}
	p := procPath(fd, "")
	if err := unix.Fchownat(unix.AT_FDCWD, p, int(e.uid), int(e.gid), 0); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := setXattrs(e.xattrs, func(n string, v []byte) error { return unix.Setxattr(p, n, v, 0) }); err != nil {
		return err
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, p, e.mode&0o7777, 0); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return setTimes(unix.AT_FDCWD, p, e, 0)
}
