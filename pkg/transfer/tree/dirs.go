package tree

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// beneath is how the receiver resolves a path of the tree: below root
// only, through no symlink (nor /proc magic link) and no mount point.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// openBeneath opens the directory at the tree path p (not the root) below
// root.
func openBeneath(root *os.File, p string) (*os.File, error) {
	fd, err := unix.Openat2(int(root.Fd()), p, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: beneath,
	})
	if err != nil {
		return nil, &os.PathError{Op: "openat2", Path: p, Err: err}
	}
	return os.NewFile(uintptr(fd), p), nil
}

// enter makes dir, the directory of the entry at p, the one the stream is
// in, and returns its descriptor. dir must be on the stack: the root, or a
// directory received whose subtree the stream is still in. Directories
// above it on the stack are finished: no entry can come into them any
// more. A path beneath a file, a symlink, a directory the stream left or
// one never sent is refused here, before anything is resolved.
func (v *receiver) enter(dir, p string) (int, error) {
	i := len(v.stack) - 1
	for i >= 0 && v.stack[i].path != dir {
		i--
	}
	if i < 0 {
		return -1, fmt.Errorf("%w: %q is not in a directory received and still open (entries come depth first, and nothing is made beneath a file or a symlink)", errProtocol, p)
	}
	for len(v.stack)-1 > i {
		if err := v.pop(); err != nil {
			return -1, err
		}
	}
	if err := v.inOrder(p); err != nil {
		return -1, err
	}
	return v.top()
}

// level is a directory the stream is in, and the name of the last entry
// made in it.
type level struct {
	entry
	last string
}

// inOrder refuses, in a resumable stream, an entry whose name does not
// come after the last one made in its directory: a resumed receiver
// removes what comes after its checkpoint by name, so nothing may come
// before.
func (v *receiver) inOrder(p string) error {
	if !v.opt.Checkpoints {
		return nil
	}
	_, name := split(p)
	top := &v.stack[len(v.stack)-1]
	if name <= top.last {
		return fmt.Errorf("%w: %q is sent twice or out of name order (after %q)", errProtocol, p, top.last)
	}
	top.last = name
	return nil
}

// top is the descriptor of the directory the stream is in.
func (v *receiver) top() (int, error) {
	if len(v.stack) == 1 {
		return int(v.root.Fd()), nil
	}
	if v.cur == nil {
		d, err := openBeneath(v.root, v.stack[len(v.stack)-1].path)
		if err != nil {
			return -1, err
		}
		v.cur = d
	}
	return int(v.cur.Fd()), nil
}

// pop finishes the directory the stream is in: its mode and times, which
// its entries would have changed.
func (v *receiver) pop() error {
	e := v.stack[len(v.stack)-1]
	fd, err := v.top()
	if err == nil {
		err = modeAndTimes(fd, &e.entry)
	}
	v.closeCur()
	v.stack = v.stack[:len(v.stack)-1]
	if err != nil {
		return fmt.Errorf("finishing %s: %w", displayPath(e.path), err)
	}
	return nil
}

func (v *receiver) closeCur() {
	if v.cur != nil {
		v.cur.Close()
		v.cur = nil
	}
}

func (v *receiver) closeAll() {
	v.closeCur()
	if v.file != nil {
		v.file.f.Close()
		v.file = nil
	}
}

// hardlink makes a second name for an entry received before.
func (v *receiver) hardlink(p []byte) error {
	if len(v.stack) == 0 {
		return fmt.Errorf("%w: the stream begins with a hardlink, not the root directory", errProtocol)
	}
	path, target, err := decodeLink(p)
	if err != nil {
		return err
	}
	if err := v.count(0); err != nil {
		return err
	}
	dir, name := split(path)
	dfd, err := v.enter(dir, path)
	if err != nil {
		return err
	}
	tdir, tname := split(target)
	tfd := int(v.root.Fd())
	if tdir != "" {
		d, err := openBeneath(v.root, tdir)
		if err != nil {
			return fmt.Errorf("%w: hardlink %q to %q, which was not received before: %v", errProtocol, path, target, err)
		}
		defer d.Close()
		tfd = int(d.Fd())
	}
	var st unix.Stat_t
	if err := unix.Fstatat(tfd, tname, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("%w: hardlink %q to %q, which was not received before: %v", errProtocol, path, target, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("%w: hardlink %q to the directory %q", errProtocol, path, target)
	}
	v.last, v.lastKind = path, KindOther
	// Flags 0: a symlink gets a second name; it is not followed.
	return made(path, unix.Linkat(tfd, tname, dfd, name, 0))
}
