package fscopy

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// setMeta gives the entry name in dfd the owner, mode, extended attributes
// and times of st, the entry name in sfd. Owner first (chown clears set-ID
// bits and file capabilities), times last (setting the others changes no
// mtime, but the order keeps it obvious).
func setMeta(sfd, dfd int, name string, st *unix.Stat_t) error {
	if err := unix.Fchownat(dfd, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := copyXattrs(procPath(sfd, name), procPath(dfd, name), false); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		// The entry is one this copy made, not a symlink: following is safe.
		if err := unix.Fchmodat(dfd, name, st.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(dfd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("utimensat: %w", err)
	}
	return nil
}

// setRootMeta is setMeta for the roots of the trees, open as directories.
func setRootMeta(src, dst *os.File, st *unix.Stat_t) error {
	sfd, dfd := int(src.Fd()), int(dst.Fd())
	if err := unix.Fchown(dfd, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown %s: %w", dst.Name(), err)
	}
	if err := copyXattrs(procPath(sfd, ""), procPath(dfd, ""), true); err != nil {
		return err
	}
	if err := unix.Fchmod(dfd, st.Mode&0o7777); err != nil {
		return fmt.Errorf("chmod %s: %w", dst.Name(), err)
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, procPath(dfd, ""), ts, 0); err != nil {
		return fmt.Errorf("utimensat %s: %w", dst.Name(), err)
	}
	return nil
}

// procPath names the entry name of the directory fd without resolving the
// directory's path again (the l*xattr calls have no *at form).
func procPath(fd int, name string) string {
	p := fmt.Sprintf("/proc/self/fd/%d", fd)
	if name != "" {
		p += "/" + name
	}
	return p
}

// copyXattrs copies every extended attribute of src to dst, following the
// last path element only with follow. A filesystem without extended
// attributes (or without a namespace, on either side) is no error.
func copyXattrs(src, dst string, follow bool) error {
	list, get, set := unix.Llistxattr, unix.Lgetxattr, unix.Lsetxattr
	if follow {
		list, get, set = unix.Listxattr, unix.Getxattr, unix.Setxattr
	}
	names, err := ReadSized(func(b []byte) (int, error) { return list(src, b) })
	if err != nil {
		if notSupported(err) {
			return nil
		}
		return fmt.Errorf("listxattr: %w", err)
	}
	for _, n := range bytes.Split(names, []byte{0}) {
		if len(n) == 0 {
			continue
		}
		attr := string(n)
		val, err := ReadSized(func(b []byte) (int, error) { return get(src, attr, b) })
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return fmt.Errorf("getxattr %s: %w", attr, err)
		}
		if err := set(dst, attr, val, 0); err != nil && !notSupported(err) {
			return fmt.Errorf("setxattr %s: %w", attr, err)
		}
	}
	return nil
}

// ReadSized calls read (a listxattr or getxattr) with a buffer large enough
// for its answer, which may grow between the size query and the read. The
// transfer of file trees reads attributes with it too.
func ReadSized(read func([]byte) (int, error)) ([]byte, error) {
	for {
		n, err := read(nil)
		if err != nil || n == 0 {
			return nil, err
		}
		buf := make([]byte, n)
		n, err = read(buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

func notSupported(err error) bool {
	return errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}
