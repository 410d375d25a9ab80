package fscopy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// buildTree fills root with every kind of entry Tree copies. Device nodes
// and foreign owners need root and are left out otherwise.
func buildTree(t *testing.T, root string) {
	t.Helper()
	asRoot := os.Geteuid() == 0
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	in := func(p string) string { return filepath.Join(root, p) }
	must(os.MkdirAll(in("a/b/c"), 0o755))
	must(os.Mkdir(in("sticky"), 0o755))
	must(os.Chmod(in("sticky"), 0o1777))
	must(os.Chmod(in("a"), 0o750))
	writeSparse(t, in("a/file"), 300<<10, []extent{{0, 300 << 10}})
	writeSparse(t, in("a/b/sparse"), sparseSize, sparseLayout)
	must(os.WriteFile(in("empty"), nil, 0o600))
	must(os.WriteFile(in("setuid"), []byte("#!/bin/true\n"), 0o755))
	must(os.Chmod(in("setuid"), 0o4755))
	// Three names for one inode, in different directories.
	must(os.Link(in("a/file"), in("hardlink")))
	must(os.Link(in("a/file"), in("a/b/c/hardlink")))
	// Symlinks are copied as they are, wherever they point.
	must(os.Symlink("a/file", in("rel")))
	must(os.Symlink("/etc/hostname", in("abs-out")))
	must(os.Symlink("../../../outside", in("a/b/dotdot-out")))
	must(os.Symlink("a", in("dirlink")))
	must(os.Symlink("nowhere", in("dangling")))
	must(os.Link(in("rel"), in("rel-hardlink")))
	must(unix.Mkfifo(in("a/fifo"), 0o620))
	must(unix.Mknod(in("socket"), unix.S_IFSOCK|0o755, 0))
	if asRoot {
		must(unix.Mknod(in("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(unix.Mknod(in("a/blk"), unix.S_IFBLK|0o600, int(unix.Mkdev(7, 200))))
		must(os.Lchown(in("a/file"), 1234, 5678))
		must(os.Lchown(in("a/b"), 2345, 6789))
		must(os.Lchown(in("rel"), 4321, 8765))
		must(os.Lchown(in("a/fifo"), 99, 98))
	}
	for _, p := range []string{"a/file", "a/b", "."} {
		if err := unix.Setxattr(in(p), "user.flashpv", []byte("v-"+p), 0); err != nil && !notSupported(err) {
			t.Fatal(err)
		}
	}
	// Times last, deepest first: making entries changes a directory's.
	var paths []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		paths = append(paths, p)
		return err
	})
	for i := len(paths) - 1; i >= 0; i-- {
		at := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC).Add(time.Duration(i) * time.Hour).UnixNano()
		ts := []unix.Timespec{unix.NsecToTimespec(at + 111), unix.NsecToTimespec(at + 222)}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// sameTree compares every entry of two trees: type, mode, owner, mtime,
// content, holes, link targets, device numbers, user xattrs, and that names
// share an inode in one tree exactly when they do in the other.
func sameTree(t *testing.T, src, dst string) {
	t.Helper()
	srcToDst := map[uint64]uint64{}
	dstToSrc := map[uint64]uint64{}
	n := 0
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n++
		rel, _ := filepath.Rel(src, p)
		q := filepath.Join(dst, rel)
		var s, c unix.Stat_t
		if err := unix.Lstat(p, &s); err != nil {
			return err
		}
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
		if s.Rdev != c.Rdev {
			t.Errorf("%s: device %d, want %d", rel, c.Rdev, s.Rdev)
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
			sameFile(t, p, q)
		case unix.S_IFLNK:
			a, _ := os.Readlink(p)
			b, _ := os.Readlink(q)
			if a != b {
				t.Errorf("%s: link to %q, want %q", rel, b, a)
			}
		}
		if s.Mode&unix.S_IFMT == unix.S_IFREG || s.Mode&unix.S_IFMT == unix.S_IFDIR {
			want := make([]byte, 64)
			got := make([]byte, 64)
			wn, werr := unix.Getxattr(p, "user.flashpv", want)
			gn, gerr := unix.Getxattr(q, "user.flashpv", got)
			if (werr == nil) != (gerr == nil) || (werr == nil && !bytes.Equal(want[:wn], got[:gn])) {
				t.Errorf("%s: xattr %q (%v), want %q (%v)", rel, got[:max(gn, 0)], gerr, want[:max(wn, 0)], werr)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var m int
	filepath.WalkDir(dst, func(string, fs.DirEntry, error) error { m++; return nil })
	if m != n {
		t.Errorf("copy has %d entries, source %d", m, n)
	}
}

func TestTreeCopiesEverything(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	os.Mkdir(src, 0o711)
	buildTree(t, src)
	res, err := Tree(context.Background(), src, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, dst)
	specials := 2
	if os.Geteuid() == 0 {
		specials = 4
	}
	want := TreeResult{Dirs: 4, Files: 4, Symlinks: 5, HardLinks: 3, Specials: specials}
	got := res
	got.Method, got.Copied = 0, 0
	if got != want {
		t.Errorf("result %+v, want %+v", got, want)
	}
	if res.Method == 0 {
		t.Error("no method reported")
	}
	if names := dirNames(t, base); len(names) != 2 {
		t.Errorf("beside the copy: %v, want src and dst only", names)
	}
}

// The caller may make dst (with its quota project, say); Tree fills it and
// gives it the source root's metadata.
func TestTreeIntoEmptyDir(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	os.Mkdir(src, 0o700)
	buildTree(t, src)
	os.Mkdir(dst, 0o700)
	if _, err := Tree(context.Background(), src, dst, Options{Mode: CopyOnly}); err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, dst)
}

func TestTreeRefusesNonEmptyDst(t *testing.T) {
	base := t.TempDir()
	src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
	os.Mkdir(src, 0o700)
	os.WriteFile(filepath.Join(src, "f"), []byte("x"), 0o600)
	os.Mkdir(dst, 0o700)
	os.WriteFile(filepath.Join(dst, "mine"), []byte("keep"), 0o600)
	if _, err := Tree(context.Background(), src, dst, Options{}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("copy into a non-empty directory: %v, want ErrExist", err)
	}
	if names := dirNames(t, dst); len(names) != 1 || names[0] != "mine" {
		t.Fatalf("destination now holds %v", names)
	}
	if _, err := Tree(context.Background(), src, filepath.Join(dst, "mine"), Options{}); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("copy onto a file: %v, want ErrExist", err)
	}
}

// A cancelled tree copy leaves no destination (or an empty one it was
// given) and no temporary directory.
func TestTreeCancelled(t *testing.T) {
	for _, given := range []bool{false, true} {
		for _, after := range []int64{1, 4, 12} {
			name := "new"
			if given {
				name = "given"
			}
			t.Run(fmt.Sprintf("%s/after %d", name, after), func(t *testing.T) {
				base := t.TempDir()
				src, dst := filepath.Join(base, "src"), filepath.Join(base, "dst")
				os.Mkdir(src, 0o700)
				buildTree(t, src)
				if given {
					os.Mkdir(dst, 0o700)
				}
				ctx := cancelAfter(after)
				_, err := Tree(ctx, src, dst, Options{Mode: CopyOnly, ChunkSize: 1 << 20})
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("cancelled copy: %v, want context.Canceled", err)
				}
				want := "src"
				if given {
					want = "dst src"
					if names := dirNames(t, dst); len(names) != 0 {
						t.Errorf("the given destination holds %v after a cancelled copy", names)
					}
				}
				got := dirNames(t, base)
				slices.Sort(got)
				if strings.Join(got, " ") != want {
					t.Errorf("beside the copy: %v, want %s", got, want)
				}
			})
		}
	}
}
