package fscopy

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/flashpv/flashpv/pkg/durable"
	"golang.org/x/sys/unix"
)

// tempInfix marks the hidden names a copy works under: "." + the
// destination's base name + tempInfix + random hex.
const tempInfix = ".fscopy-tmp-"

// IsTemp tells whether a directory entry's name is one a copy works under
// before it renames its result into place. Only a crashed process leaves such
// entries; a caller removes them from its directories when it starts, before
// it begins new copies there.
func IsTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, tempInfix)
}

func tempName(dst string) (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+tempInfix+hex.EncodeToString(b[:])), nil
}

// tempFile is a file being written for dst: an unnamed O_TMPFILE inode in
// dst's directory, or a hidden named file where the filesystem has no
// O_TMPFILE.
type tempFile struct {
	f         *os.File
	dst, name string // name is "" for an O_TMPFILE
	published bool
}

func createTemp(dst string, perm os.FileMode) (*tempFile, error) {
	dir := filepath.Dir(dst)
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		t := &tempFile{f: os.NewFile(uintptr(fd), dst), dst: dst}
		if err := t.f.Chmod(perm); err != nil {
			t.discard()
			return nil, err
		}
		return t, nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) {
		return nil, &os.PathError{Op: "open O_TMPFILE", Path: dir, Err: err}
	}
	name, err := tempName(dst)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	t := &tempFile{f: f, dst: dst, name: name}
	if err := f.Chmod(perm); err != nil {
		t.discard()
		return nil, err
	}
	return t, nil
}

// publish gives the (synced) file its name, never replacing an existing
// dst, and syncs the directory.
func (t *tempFile) publish() error {
	var err error
	if t.name == "" {
		fd := int(t.f.Fd())
		err = unix.Linkat(fd, "", unix.AT_FDCWD, t.dst, unix.AT_EMPTY_PATH)
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOENT) {
			// AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc does not.
			err = unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, t.dst, unix.AT_SYMLINK_FOLLOW)
		}
	} else {
		err = unix.Linkat(unix.AT_FDCWD, t.name, unix.AT_FDCWD, t.dst, 0)
	}
	if err != nil {
		return &os.LinkError{Op: "link", Old: t.f.Name(), New: t.dst, Err: err}
	}
	t.published = true
	if t.name != "" {
		if err := os.Remove(t.name); err != nil {
			return err
		}
	}
	if err := t.f.Close(); err != nil {
		return err
	}
	return durable.SyncDir(filepath.Dir(t.dst))
}

// discard closes the file and, unless published, removes its name.
func (t *tempFile) discard() {
	t.f.Close()
	if !t.published && t.name != "" {
		os.Remove(t.name)
	}
}
