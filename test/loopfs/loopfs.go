// Package loopfs makes small real filesystems on loop devices for tests and
// takes them down at cleanup, also when a test fails: thawed should the test
// have left them frozen, unmounted, detached.
package loopfs

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// RequireRoot skips a test that needs loop devices and mounts when not root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
}

// Mount makes a filesystem of type fstype and size bytes (a sparse file on a
// loop device; mkfs.xfs wants at least 300 MiB) with extra mkfs arguments,
// mounts it and returns the mount point. It skips the test when not root or
// when mkfs.<fstype> is missing.
func Mount(t testing.TB, fstype string, size int64, mkfsArgs ...string) string {
	t.Helper()
	RequireRoot(t)
	mkfs := "mkfs." + fstype
	if _, err := exec.LookPath(mkfs); err != nil {
		t.Skipf("%s is not installed", mkfs)
	}
	dir := t.TempDir()
	img := filepath.Join(dir, fstype+".img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	dev := Run(t, "losetup", "--find", "--show", img)
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	args := []string{"-q"}
	if fstype == "xfs" || fstype == "btrfs" {
		args = append(args, "-f")
	} else {
		args = append(args, "-F")
	}
	Run(t, mkfs, append(append(args, mkfsArgs...), dev)...)
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	Run(t, "mount", dev, mnt)
	t.Cleanup(func() {
		// A frozen filesystem would make the unmount hang or fail.
		if fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
			unix.Syscall(unix.SYS_IOCTL, uintptr(fd), 0xC0045878, 0) // FITHAW
			unix.Close(fd)
		}
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", mnt, err, out)
			exec.Command("umount", "-l", mnt).Run()
		}
	})
	return mnt
}

// Run runs a command and fails the test on error; it returns the output,
// trimmed.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}
