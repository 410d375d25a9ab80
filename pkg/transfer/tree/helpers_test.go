package tree

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// writeSparse makes the file p of size bytes, with n random bytes at each
// offset of at and holes elsewhere.
func writeSparse(t *testing.T, p string, size int64, at map[int64]int) {
	t.Helper()
	f, err := os.Create(p)
	must(t, err)
	defer f.Close()
	must(t, f.Truncate(size))
	for off, n := range at {
		b := make([]byte, n)
		rand.Read(b)
		_, err := f.WriteAt(b, off)
		must(t, err)
	}
}

// buildTree fills root with every kind of entry a tree transfer carries:
// nested directories with unusual modes, files with holes (leading,
// inner, trailing), an empty file, set-ID bits, symlinks wherever they
// point, hard links across directories (also of a symlink), a fifo,
// extended attributes, foreign owners (as root) and distinct times.
func buildTree(t *testing.T, root string) {
	t.Helper()
	in := func(p string) string { return filepath.Join(root, p) }
	must(t, os.MkdirAll(in("a/b/c"), 0o755))
	must(t, os.Mkdir(in("sticky"), 0o755))
	must(t, os.Chmod(in("sticky"), 0o1777))
	must(t, os.Mkdir(in("setgid"), 0o755))
	must(t, os.Chmod(in("setgid"), 0o2750))
	must(t, os.Chmod(in("a"), 0o750))
	writeSparse(t, in("a/file"), 300*kib, map[int64]int{0: 300 * kib})
	writeSparse(t, in("a/b/sparse"), 5*mib, map[int64]int{64 * kib: 100 * kib, 2 * mib: 50*kib + 3})
	writeSparse(t, in("a/b/c/big"), 3*mib+17, map[int64]int{0: 3*mib + 17})
	must(t, os.WriteFile(in("empty"), nil, 0o600))
	writeSparse(t, in("holes-only"), 8*mib, nil)
	must(t, os.WriteFile(in("setuid"), []byte("#!/bin/true\n"), 0o755))
	must(t, os.Chmod(in("setuid"), 0o4755))
	must(t, os.WriteFile(in("setgid/setgid-file"), []byte("x"), 0o755))
	must(t, os.Chmod(in("setgid/setgid-file"), 0o2711))
	must(t, os.Link(in("a/file"), in("hardlink")))
	must(t, os.Link(in("a/file"), in("a/b/c/hardlink")))
	must(t, os.Symlink("a/file", in("rel")))
	must(t, os.Symlink("/etc/hostname", in("abs-out")))
	must(t, os.Symlink("../../../outside", in("a/b/dotdot-out")))
	must(t, os.Symlink("a", in("dirlink")))
	must(t, os.Symlink("nowhere", in("dangling")))
	must(t, os.Link(in("rel"), in("sticky/rel-hardlink")))
	must(t, unix.Mkfifo(in("a/fifo"), 0o620))
	must(t, os.Link(in("a/fifo"), in("fifo-hardlink")))
	if os.Geteuid() == 0 {
		must(t, os.Lchown(in("a/file"), 1234, 5678))
		must(t, os.Lchown(in("a/b"), 2345, 6789))
		must(t, os.Lchown(in("rel"), 4321, 8765))
		must(t, os.Lchown(in("a/fifo"), 99, 98))
		must(t, os.Lchown(in("setuid"), 0, 0))
		must(t, os.Chmod(in("setuid"), 0o4755)) // chown cleared it
	}
	for _, p := range []string{"a/file", "a/b", ".", "empty"} {
		must(t, unix.Setxattr(in(p), "user.flashpv", []byte("v-"+p), 0))
	}
	must(t, unix.Setxattr(in("a/b/sparse"), "user.big", bytes.Repeat([]byte{7}, 3000), 0))
	stampTimes(t, root)
}

// stampTimes gives every entry of root its own times, deepest first (making
// entries changes a directory's).
func stampTimes(t *testing.T, root string) {
	t.Helper()
	var paths []string
	must(t, filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	}))
	for i := len(paths) - 1; i >= 0; i-- {
		at := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(i) * time.Hour).UnixNano()
		ts := []unix.Timespec{unix.NsecToTimespec(at + 111), unix.NsecToTimespec(at + 222)}
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// sameTree compares every entry of two trees: type, mode, owner, mtime,
// size, content, data map (holes), link targets, user xattrs, and that
// names share an inode in one tree exactly when they do in the other.
func sameTree(t *testing.T, src, dst string) {
	t.Helper()
	srcToDst, dstToSrc := map[uint64]uint64{}, map[uint64]uint64{}
	n := 0
	must(t, filepath.WalkDir(src, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n++
		rel, _ := filepath.Rel(src, p)
		q := filepath.Join(dst, rel)
		var s, c unix.Stat_t
		must(t, unix.Lstat(p, &s))
		if err := unix.Lstat(q, &c); err != nil {
			t.Errorf("%s: %v", rel, err)
			return nil
		}
		if s.Mode != c.Mode || s.Uid != c.Uid || s.Gid != c.Gid {
			t.Errorf("%s: mode %o owner %d:%d, want %o %d:%d", rel, c.Mode, c.Uid, c.Gid, s.Mode, s.Uid, s.Gid)
		}
		if s.Mtim != c.Mtim {
			t.Errorf("%s: mtime %v, want %v", rel, c.Mtim, s.Mtim)
		}
		if s.Mode&unix.S_IFMT != unix.S_IFDIR {
			if d, ok := srcToDst[s.Ino]; ok && d != c.Ino {
				t.Errorf("%s: a hard link of the source became another inode", rel)
			}
			if o, ok := dstToSrc[c.Ino]; ok && o != s.Ino {
				t.Errorf("%s: two source inodes became one", rel)
			}
			srcToDst[s.Ino], dstToSrc[c.Ino] = c.Ino, s.Ino
		}
		switch s.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			sameFile(t, rel, p, q)
		case unix.S_IFLNK:
			a, _ := os.Readlink(p)
			b, _ := os.Readlink(q)
			if a != b {
				t.Errorf("%s: link to %q, want %q", rel, b, a)
			}
		}
		if w, g := userXattrs(t, p), userXattrs(t, q); !slices.Equal(w, g) {
			t.Errorf("%s: xattrs %q, want %q", rel, g, w)
		}
		return nil
	}))
	m := 0
	filepath.WalkDir(dst, func(string, fs.DirEntry, error) error { m++; return nil })
	if m != n {
		t.Errorf("copy has %d entries, source %d", m, n)
	}
}

func sameFile(t *testing.T, rel, p, q string) {
	t.Helper()
	a, err := os.ReadFile(p)
	must(t, err)
	b, err := os.ReadFile(q)
	must(t, err)
	if !bytes.Equal(a, b) {
		t.Errorf("%s: content differs (%d bytes, want %d)", rel, len(b), len(a))
	}
	if w, g := dataMap(t, p), dataMap(t, q); !slices.Equal(w, g) {
		t.Errorf("%s: data at %v, want %v", rel, g, w)
	}
}

// dataMap lists a file's data ranges (SEEK_DATA, SEEK_HOLE).
func dataMap(t *testing.T, p string) []int64 {
	t.Helper()
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	st, err := f.Stat()
	must(t, err)
	var out []int64
	for off := int64(0); off < st.Size(); {
		a, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		must(t, err)
		b, err := unix.Seek(int(f.Fd()), a, unix.SEEK_HOLE)
		must(t, err)
		out = append(out, a, b)
		off = b
	}
	return out
}

// userXattrs lists an entry's user.* attributes as name=value.
func userXattrs(t *testing.T, p string) []string {
	t.Helper()
	xs, err := readXattrs(func(b []byte) (int, error) { return unix.Llistxattr(p, b) },
		func(n string, b []byte) (int, error) { return unix.Lgetxattr(p, n, b) })
	must(t, err)
	var out []string
	for _, x := range xs {
		if strings.HasPrefix(x.name, "user.") {
			out = append(out, fmt.Sprintf("%s=%x", x.name, sha256.Sum256(x.value)))
		}
	}
	slices.Sort(out)
	return out
}

// frames builds a stream by hand, hashing as a sender does.
type frames struct {
	b             bytes.Buffer
	h             hash.Hash
	entries, data int64
}

func newFrames() *frames { return &frames{h: sha256.New()} }

func (f *frames) raw(typ byte, p []byte) *frames {
	var hdr [frameHdrLen]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(p)))
	f.b.Write(hdr[:])
	f.b.Write(p)
	f.h.Write(hdr[:])
	f.h.Write(p)
	return f
}

func (f *frames) entry(e entry) *frames {
	f.entries++
	return f.raw(frameEntry, e.encode(nil))
}

func ent(mode uint32, p string) entry {
	ts := unix.NsecToTimespec(time.Date(2021, 5, 6, 7, 8, 9, 10, time.UTC).UnixNano())
	return entry{mode: mode, atime: ts, mtime: ts, path: p}
}

func (f *frames) root() *frames                   { return f.entry(ent(unix.S_IFDIR|0o755, "")) }
func (f *frames) dir(p string) *frames            { return f.entry(ent(unix.S_IFDIR|0o755, p)) }
func (f *frames) fifo(p string) *frames           { return f.entry(ent(unix.S_IFIFO|0o644, p)) }
func (f *frames) mode(p string, m uint32) *frames { return f.entry(ent(m, p)) }

func (f *frames) file(p string, size int64) *frames {
	e := ent(unix.S_IFREG|0o644, p)
	e.size = size
	return f.entry(e)
}

func (f *frames) symlink(p, target string) *frames {
	e := ent(unix.S_IFLNK|0o777, p)
	e.link = target
	return f.entry(e)
}

func (f *frames) link(p, target string) *frames {
	f.entries++
	return f.raw(frameLink, encodeLink(nil, p, target))
}

func (f *frames) dataAt(off uint64, b []byte) *frames {
	f.data += int64(len(b))
	return f.raw(frameData, append(binary.BigEndian.AppendUint64(nil, off), b...))
}

// end appends the end frame a sender would send.
func (f *frames) end() *frames { return f.endWith(f.entries, f.data, f.h.Sum(nil)) }

func (f *frames) endWith(entries, data int64, sum []byte) *frames {
	p := binary.BigEndian.AppendUint64(nil, uint64(entries))
	p = binary.BigEndian.AppendUint64(p, uint64(data))
	return f.raw(frameEnd, append(p, sum...))
}

func (f *frames) reader() io.Reader { return bytes.NewReader(f.b.Bytes()) }
