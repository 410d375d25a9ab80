package tree

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/fscopy"
)

func kindOf(typ uint32) byte {
	switch typ {
	case unix.S_IFDIR:
		return KindDir
	case unix.S_IFREG:
		return KindFile
	}
	return KindOther
}

// checkpoint checks a checkpoint frame against what was received since
// the last, syncs what was made, and reports it.
func (v *receiver) checkpoint(p []byte) error {
	if len(p) != endLen {
		return fmt.Errorf("%w: checkpoint frame of %d bytes", errProtocol, len(p))
	}
	if len(v.stack) == 0 {
		return fmt.Errorf("%w: checkpoint before the root directory", errProtocol)
	}
	if !bytes.Equal(v.h.Sum(nil), p[16:]) {
		return fmt.Errorf("%w: the hash at the checkpoint after %d entries differs", errChecksum, v.st.Entries)
	}
	entries, data := binary.BigEndian.Uint64(p[0:8]), binary.BigEndian.Uint64(p[8:16])
	if entries != uint64(v.st.Entries) || data != uint64(v.st.DataBytes) {
		return fmt.Errorf("%w: checkpoint says %d entries and %d data bytes, received %d and %d",
			errProtocol, entries, data, v.st.Entries, v.st.DataBytes)
	}
	v.h.Reset()
	if err := unix.Syncfs(int(v.root.Fd())); err != nil {
		return fmt.Errorf("syncfs: %w", err)
	}
	c := Checkpoint{Entries: v.st.Entries, DataBytes: v.st.DataBytes, Path: v.last, Kind: v.lastKind}
	switch {
	case v.file != nil:
		c.Kind, c.Offset = KindFile, v.file.pos
	case c.Kind == KindFile:
		c.Kind = KindOther // finished: its data does not go on
	}
	if v.progress == nil {
		return nil
	}
	return v.progress(v.st, &c)
}

// sentAgain is what a stream resumed after c sends before it goes on: the
// root's entry, those of the directories c's last entry is in (and its
// own if it is a directory, or a file whose data goes on).
func sentAgain(c *Checkpoint) []string {
	out := []string{""}
	if c.Path == "" {
		return out
	}
	parts := strings.Split(c.Path, "/")
	for i := range parts[:len(parts)-1] {
		out = append(out, path.Join(parts[:i+1]...))
	}
	if c.Kind != KindOther {
		out = append(out, c.Path)
	}
	return out
}

// takeBack takes an entry that a resumed stream sends again: exactly the
// next of v.again, of the type the checkpoint says. Its directory (or
// file) is opened as it is, never through a symlink, and entered again.
func (v *receiver) takeBack(e entry) error {
	want := v.again[0]
	last := len(v.again) == 1
	isFile := last && v.opt.From.Kind == KindFile
	switch {
	case e.path != want:
		return fmt.Errorf("%w: a resumed stream sends %q where %q is due", ErrResume, e.path, displayPath(want))
	case isFile && e.typ() != unix.S_IFREG, !isFile && e.typ() != unix.S_IFDIR:
		return fmt.Errorf("%w: a resumed stream sends %s as another type than before", ErrResume, displayPath(want))
	}
	var err error
	switch {
	case want == "":
		err = ownAndLabel(int(v.root.Fd()), &e)
		v.stack = append(v.stack, level{entry: e})
	case isFile:
		err = v.reopen(e)
	default:
		err = v.reenter(e)
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrResume, displayPath(want), err)
	}
	v.again = v.again[1:]
	if len(v.again) == 0 {
		v.again = nil
		c := v.opt.From
		if c.Kind != KindDir {
			_, v.stack[len(v.stack)-1].last = split(c.Path)
		}
		v.last, v.lastKind = c.Path, c.Kind
	}
	return nil
}

// reenter opens the directory e again, the child of the one the stream
// is in, and goes into it.
func (v *receiver) reenter(e entry) error {
	dfd, err := v.top()
	if err != nil {
		return err
	}
	_, name := split(e.path)
	d, err := openDir(dfd, name)
	if err != nil {
		return err
	}
	// Writable again, as mkdir made it: an attempt past the checkpoint
	// may have given it its own mode.
	err = unix.Fchmod(int(d.Fd()), 0o700)
	if err == nil {
		err = ownAndLabel(int(d.Fd()), &e)
	}
	if err != nil {
		d.Close()
		return err
	}
	v.stack[len(v.stack)-1].last = name
	v.closeCur()
	v.stack = append(v.stack, level{entry: e})
	v.cur = d
	return nil
}

// reopen opens the regular file e again, whose data goes on from the
// checkpoint's offset: what an attempt wrote past it is dropped (the
// stream sends it again, and leaves holes where it has none).
func (v *receiver) reopen(e entry) error {
	dfd, err := v.top()
	if err != nil {
		return err
	}
	off := v.opt.From.Offset
	if off > e.size {
		return fmt.Errorf("%d bytes, shorter than the checkpoint's %d", e.size, off)
	}
	_, name := split(e.path)
	// O_NONBLOCK: a fifo in its place fails (ENXIO) rather than waits.
	fd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), e.path)
	var st unix.Stat_t
	if err = unix.Fstat(fd, &st); err == nil && (st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1) {
		err = errors.New("not the regular file of one name it was")
	}
	if err == nil {
		err = f.Truncate(off)
	}
	if err == nil {
		err = f.Truncate(e.size)
	}
	if err != nil {
		f.Close()
		return err
	}
	v.stack[len(v.stack)-1].last = name
	v.file = &openFile{f: f, e: e, pos: off}
	return nil
}

// prune removes from root what an attempt cut short made after c: in
// every directory on c's path, the entries whose names come after it (a
// resumable stream sends them in name order), and everything in c's own
// directory. Each directory is opened beneath root, never through a
// symlink; one that is missing or not a directory fails (ErrResume).
func prune(root *os.File, c *Checkpoint) error {
	var parts []string
	if c.Path != "" {
		parts = strings.Split(c.Path, "/")
	}
	dir := root
	defer func() {
		if dir != root {
			dir.Close()
		}
	}()
	for i := 0; ; i++ {
		after := ""
		if i < len(parts) {
			after = parts[i]
		}
		if err := removeAfter(dir, after); err != nil {
			return fmt.Errorf("%w: %v", ErrResume, err)
		}
		if i == len(parts) || (i == len(parts)-1 && c.Kind != KindDir) {
			return nil
		}
		next, err := openBeneath(root, path.Join(parts[:i+1]...))
		if err != nil {
			return fmt.Errorf("%w: %v", ErrResume, err)
		}
		if dir != root {
			dir.Close()
		}
		dir = next
	}
}

// removeAfter removes the entries of dir whose names come after after
// ("": all).
func removeAfter(dir *os.File, after string) error {
	d, err := openDir(int(dir.Fd()), ".")
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	for _, n := range names {
		if n > after {
			if err := fscopy.RemoveEntry(dir, n); err != nil {
				return err
			}
		}
	}
	return nil
}
