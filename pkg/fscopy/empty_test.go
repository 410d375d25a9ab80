package fscopy

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestEmptyDir: everything in the directory goes, deep and unwritable
// directories too; the directory itself stays (the same inode, its mode);
// symlinks and hard links to what lies outside are removed as names, and
// what they point to is untouched.
func TestEmptyDir(t *testing.T) {
	base := t.TempDir()
	dir, out := filepath.Join(base, "dir"), filepath.Join(base, "outside")
	in := func(p string) string { return filepath.Join(dir, p) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(out, "keep"), 0o755))
	must(os.WriteFile(filepath.Join(out, "canary"), []byte("canary"), 0o600))
	must(os.MkdirAll(in("a/b/c"), 0o755))
	must(os.WriteFile(in("a/b/c/f"), []byte("x"), 0o644))
	must(os.WriteFile(in("a/f"), []byte("x"), 0o644))
	must(os.Mkdir(in("locked"), 0o755))
	must(os.WriteFile(in("locked/f"), []byte("x"), 0o644))
	must(os.Chmod(in("locked"), 0o500))
	must(os.Mkdir(in("none"), 0o000))
	must(os.Symlink(out, in("dirlink")))
	must(os.Symlink(filepath.Join(out, "canary"), in("a/filelink")))
	must(os.Link(filepath.Join(out, "canary"), in("hardlink")))
	must(unix.Mkfifo(in("fifo"), 0o600))
	must(os.Chmod(dir, 0o2751))
	var before unix.Stat_t
	must(unix.Stat(dir, &before))

	f, err := os.Open(dir)
	must(err)
	defer f.Close()
	if err := EmptyDir(f); err != nil {
		t.Fatalf("EmptyDir: %v", err)
	}
	if names := dirNames(t, dir); len(names) != 0 {
		t.Errorf("left %v", names)
	}
	var after unix.Stat_t
	must(unix.Stat(dir, &after))
	if after.Ino != before.Ino || after.Mode != before.Mode {
		t.Errorf("the directory changed: inode %d mode %o, was %d %o", after.Ino, after.Mode, before.Ino, before.Mode)
	}
	if names := dirNames(t, out); len(names) != 2 {
		t.Errorf("outside holds %v, want canary and keep", names)
	}
	var st unix.Stat_t
	must(unix.Stat(filepath.Join(out, "canary"), &st))
	if data, _ := os.ReadFile(filepath.Join(out, "canary")); string(data) != "canary" || st.Nlink != 1 {
		t.Errorf("canary: %q with %d links", data, st.Nlink)
	}
	// An empty directory is no error.
	if err := EmptyDir(f); err != nil {
		t.Errorf("EmptyDir of an empty directory: %v", err)
	}
}
