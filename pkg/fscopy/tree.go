package fscopy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/flashpv/flashpv/pkg/durable"
	"golang.org/x/sys/unix"
)

// TreeResult counts what Tree copied.
type TreeResult struct {
	// Dirs excludes the root; HardLinks counts the names made with link(2)
	// for inodes already copied under another name.
	Dirs, Files, Symlinks, HardLinks, Specials int
	// Method is the slowest method any regular file was copied with, zero
	// when there was none.
	Method Method
	// Copied is the data bytes moved (holes and reflinked files move none),
	// Preallocated the unwritten space allocated as in the source (see
	// Result).
	Copied, Preallocated int64
}

// Tree copies the directory tree at src to dst: directories, regular files
// (reflinked or sparse-copied as File does), symlinks (as links, never
// followed, wherever they point), hard links (one inode, as in src), device
// nodes, fifos and sockets, with owners, modes, timestamps and extended
// attributes. A directory on another filesystem mounted inside src is copied
// as an empty directory (like cp -x). Every path is resolved from the
// directory file descriptors of the walk, so nothing outside src is read and
// nothing outside dst is written, even if src changes during the copy.
//
// dst either does not exist, and is then built under a hidden temporary name
// beside it (see IsTemp) and renamed into place once complete, or is an empty
// directory the caller made (to give it a quota project, say), which Tree
// fills; its own owner, mode, times and extended attributes become src's.
// On success everything is durable (syncfs). On any error, including a
// cancelled ctx, nothing of the copy remains: no dst in the first case, an
// empty dst in the second.
func Tree(ctx context.Context, src, dst string, opt Options) (TreeResult, error) {
	if err := ctx.Err(); err != nil {
		return TreeResult{}, err
	}
	sdir, err := openDir(unix.AT_FDCWD, src, 0)
	if err != nil {
		return TreeResult{}, err
	}
	defer sdir.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(sdir.Fd()), &st); err != nil {
		return TreeResult{}, &os.PathError{Op: "stat", Path: src, Err: err}
	}
	target, inPlace, err := prepareTree(dst)
	if err != nil {
		return TreeResult{}, err
	}
	t := &treeCopier{copier: newCopier(opt), ctx: ctx, dev: st.Dev, links: map[inode]string{}}
	err = t.copyRoot(sdir, target, &st)
	if err != nil {
		if inPlace {
			err = errors.Join(err, emptyDir(dst))
		} else {
			err = errors.Join(err, os.RemoveAll(target))
		}
		return TreeResult{}, err
	}
	if !inPlace {
		if err := renameNoReplace(target, dst); err != nil {
			return TreeResult{}, errors.Join(err, os.RemoveAll(target))
		}
		if err := durable.SyncDir(filepath.Dir(dst)); err != nil {
			return TreeResult{}, err
		}
	}
	return t.res, nil
}

type inode struct{ dev, ino uint64 }

type treeCopier struct {
	*copier
	ctx  context.Context
	dev  uint64 // src's filesystem: the walk does not leave it
	root int    // the destination root's fd, for hard links
	// links maps an inode with several names to the destination path
	// (relative to root) of the first name copied.
	links map[inode]string
	res   TreeResult
}

func (t *treeCopier) copyRoot(sdir *os.File, target string, st *unix.Stat_t) error {
	ddir, err := openDir(unix.AT_FDCWD, target, unix.O_NOFOLLOW)
	if err != nil {
		return err
	}
	defer ddir.Close()
	t.root = int(ddir.Fd())
	if err := t.copyDir(sdir, ddir, ""); err != nil {
		return err
	}
	if err := setRootMeta(sdir, ddir, st); err != nil {
		return err
	}
	if err := unix.Syncfs(t.root); err != nil {
		return &os.PathError{Op: "syncfs", Path: target, Err: err}
	}
	return nil
}

// copyDir copies the entries of the directory src into dst; rel is their
// directory's path below the root.
func (t *treeCopier) copyDir(src, dst *os.File, rel string) error {
	names, err := src.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := t.ctx.Err(); err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstatat(int(src.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return &os.PathError{Op: "lstat", Path: path.Join(rel, name), Err: err}
		}
		if err := t.copyEntry(int(src.Fd()), int(dst.Fd()), name, path.Join(rel, name), &st); err != nil {
			return err
		}
	}
	return nil
}

func (t *treeCopier) copyEntry(sfd, dfd int, name, rel string, st *unix.Stat_t) error {
	typ := st.Mode & unix.S_IFMT
	key := inode{st.Dev, st.Ino}
	if typ != unix.S_IFDIR && st.Nlink > 1 {
		if first, ok := t.links[key]; ok {
			if err := unix.Linkat(t.root, first, dfd, name, 0); err != nil {
				return &os.LinkError{Op: "link", Old: first, New: rel, Err: err}
			}
			t.res.HardLinks++
			return nil
		}
	}
	var err error
	switch typ {
	case unix.S_IFDIR:
		return t.copySubdir(sfd, dfd, name, rel, st)
	case unix.S_IFREG:
		err = t.copyRegular(sfd, dfd, name, rel, st)
		t.res.Files++
	case unix.S_IFLNK:
		err = copySymlink(sfd, dfd, name)
		t.res.Symlinks++
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK:
		err = unix.Mknodat(dfd, name, st.Mode, int(st.Rdev))
		t.res.Specials++
	default:
		err = fmt.Errorf("unknown file type %#o", typ)
	}
	if err == nil {
		err = setMeta(sfd, dfd, name, st)
	}
	if err != nil {
		return &os.PathError{Op: "copy", Path: rel, Err: err}
	}
	if st.Nlink > 1 {
		t.links[key] = rel
	}
	return nil
}

func (t *treeCopier) copySubdir(sfd, dfd int, name, rel string, st *unix.Stat_t) error {
	if err := unix.Mkdirat(dfd, name, 0o700); err != nil {
		return &os.PathError{Op: "mkdir", Path: rel, Err: err}
	}
	t.res.Dirs++
	if st.Dev == t.dev {
		s, err := openDir(sfd, name, unix.O_NOFOLLOW)
		if err != nil {
			return err
		}
		defer s.Close()
		d, err := openDir(dfd, name, unix.O_NOFOLLOW)
		if err != nil {
			return err
		}
		defer d.Close()
		if err := t.copyDir(s, d, rel); err != nil {
			return err
		}
	}
	// After the entries, which change a directory's times.
	if err := setMeta(sfd, dfd, name, st); err != nil {
		return &os.PathError{Op: "copy", Path: rel, Err: err}
	}
	return nil
}

func (t *treeCopier) copyRegular(sfd, dfd int, name, rel string, st *unix.Stat_t) error {
	// O_NONBLOCK: should the entry have become a fifo since the stat, the
	// open must not hang; the fstat below catches the swap.
	ifd, err := unix.Openat(sfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	in := os.NewFile(uintptr(ifd), rel)
	defer in.Close()
	var now unix.Stat_t
	if err := unix.Fstat(ifd, &now); err != nil {
		return err
	}
	if now.Ino != st.Ino || now.Dev != st.Dev {
		return fmt.Errorf("changed during the copy")
	}
	ofd, err := unix.Openat(dfd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	out := os.NewFile(uintptr(ofd), rel)
	defer out.Close()
	method, m, err := t.copyFile(t.ctx, in, out, now.Size)
	if err != nil {
		return err
	}
	t.res.Method = max(t.res.Method, method)
	t.res.Copied += m.copied
	t.res.Preallocated += m.preallocated
	return nil
}

func copySymlink(sfd, dfd int, name string) error {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(sfd, name, buf)
		if err != nil {
			return err
		}
		if n < size {
			return unix.Symlinkat(string(buf[:n]), dfd, name)
		}
	}
}

func openDir(dirfd int, name string, flags int) (*os.File, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|flags, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: name, Err: err}
	}
	return os.NewFile(uintptr(fd), name), nil
}

// prepareTree returns the directory to copy into: dst itself if it is an
// empty directory, else a new hidden directory beside it.
func prepareTree(dst string) (target string, inPlace bool, err error) {
	fi, err := os.Lstat(dst)
	if err == nil {
		if !fi.IsDir() {
			return "", false, &fs.PathError{Op: "copy", Path: dst, Err: fs.ErrExist}
		}
		d, err := os.Open(dst)
		if err != nil {
			return "", false, err
		}
		defer d.Close()
		if names, _ := d.Readdirnames(1); len(names) > 0 {
			return "", false, fmt.Errorf("%s is not empty: %w", dst, fs.ErrExist)
		}
		return dst, true, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", false, err
	}
	name, err := tempName(dst)
	if err != nil {
		return "", false, err
	}
	return name, false, os.Mkdir(name, 0o700)
}

// emptyDir removes everything in dir, after a failed copy into it.
func emptyDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		err = errors.Join(err, os.RemoveAll(filepath.Join(dir, n)))
	}
	return err
}

func renameNoReplace(from, to string) error {
	err := unix.Renameat2(unix.AT_FDCWD, from, unix.AT_FDCWD, to, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) {
		// A filesystem without RENAME_NOREPLACE; the check is racy, the
		// rename would replace only an empty directory.
		if _, lerr := os.Lstat(to); lerr == nil {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: fs.ErrExist}
		}
		return os.Rename(from, to)
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}
