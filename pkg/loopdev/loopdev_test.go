package loopdev

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAttachFindRefreshDetach(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "vol.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 8<<20)
	m := New()
	dev, err := m.Attach(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { New().Detach(img) })
	if again, err := m.Attach(img); err != nil || again != dev {
		t.Fatalf("second Attach: %s %v, want %s", again, err, dev)
	}
	// A new manager (a restarted driver) finds the device by its file.
	if found, err := New().Find(img); err != nil || found != dev {
		t.Fatalf("Find after restart: %q %v, want %s", found, err, dev)
	}
	// The same file seen through another mount (as a restarted pod sees the
	// pool through its own hostPath mount) is recognised by its identity.
	other := filepath.Join(t.TempDir(), "view")
	os.Mkdir(other, 0o700)
	if out, err := exec.Command("mount", "--bind", dir, other).CombinedOutput(); err != nil {
		t.Fatalf("bind mount: %v %s", err, out)
	}
	defer exec.Command("umount", other).Run()
	if found, err := New().Find(filepath.Join(other, "vol.img")); err != nil || found != dev {
		t.Fatalf("Find through another mount: %q %v, want %s", found, err, dev)
	}
	sys := filepath.Join("/sys/block", filepath.Base(dev))
	if b, _ := os.ReadFile(filepath.Join(sys, "queue", "logical_block_size")); strings.TrimSpace(string(b)) != "4096" {
		t.Errorf("logical block size %q, want 4096", b)
	}
	if b, _ := os.ReadFile(filepath.Join(sys, "loop", "dio")); strings.TrimSpace(string(b)) != "1" {
		t.Errorf("direct I/O is off (%q)", b)
	}
	att, err := m.Attached(dir)
	if err != nil || att[img] != dev || len(att) != 1 {
		t.Fatalf("Attached(%s) = %v %v", dir, att, err)
	}
	os.Truncate(img, 24<<20)
	if err := Refresh(dev); err != nil {
		t.Fatal(err)
	}
	if size, err := Size(dev); err != nil || size != 24<<20 {
		t.Fatalf("size after refresh %d %v", size, err)
	}
	if err := m.Detach(img); err != nil {
		t.Fatal(err)
	}
	if err := m.Detach(img); err != nil {
		t.Fatal("second detach:", err)
	}
	if found, _ := New().Find(img); found != "" {
		t.Fatalf("still attached at %s", found)
	}
}

// A manager that has scanned once answers a miss without scanning again when
// the file is open nowhere else, and still sees a device that something else
// bound to one of its files after that scan.
func TestFindAfterScanSeesOthersDevices(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, f := range []string{a, b} {
		if err := os.WriteFile(f, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m := New()
	if _, err := m.Attached(dir); err != nil { // the first scan
		t.Fatal(err)
	}
	f, err := os.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	if !soleOpener(f) {
		t.Fatal("a file open only here is not reported as such")
	}
	f.Close()
	if dev, err := m.Find(a); err != nil || dev != "" {
		t.Fatalf("Find of a file no device holds: %q %v", dev, err)
	}
	// Bound behind the manager's back, as losetup would.
	out, err := exec.Command("losetup", "--find", "--show", b).Output()
	if err != nil {
		t.Fatal(err)
	}
	other := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", other).Run() })
	if dev, err := m.Find(b); err != nil || dev != other {
		t.Fatalf("Find of a file bound by someone else: %q %v, want %s", dev, err, other)
	}
	if dev, err := m.Attach(b); err != nil || dev != other {
		t.Fatalf("Attach of a file bound by someone else: %q %v, want %s", dev, err, other)
	}
}

// A device that something opens only for a moment (a probe, a scan) at the
// time of the detach is detached once that closes, not reported busy.
func TestDetachWaitsForBriefOpeners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	m := New()
	dev, err := m.Attach(img)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { New().Detach(img) })
	probe, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	go func() { time.Sleep(100 * time.Millisecond); probe.Close() }()
	if err := m.Detach(img); err != nil {
		t.Fatalf("Detach with a brief opener: %v", err)
	}
	if found, _ := New().Find(img); found != "" {
		t.Fatalf("still attached to %s", found)
	}
}

// TestFindUnopenable checks that the device of a file that cannot be opened
// (its filesystem shut down after I/O errors, here a path through a regular
// file) is found by the backing file path sysfs shows, so that it can
// still be taken down, and that a file bound nowhere is not.
func TestFindUnopenable(t *testing.T) {
	root := t.TempDir()
	notDir := filepath.Join(root, "plain")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(notDir, "vol.img")
	sys := filepath.Join(root, "sys")
	for dev, backing := range map[string]string{"loop3": "/elsewhere.img\n", "loop7": file + "\n"} {
		if err := os.MkdirAll(filepath.Join(sys, dev, "loop"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sys, dev, "loop", "backing_file"), []byte(backing), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m := &Manager{sysBlock: sys, devDir: "/devx", byID: map[fileID]string{}}
	if dev, err := m.Find(file); err != nil || dev != "/devx/loop7" {
		t.Fatalf("Find: %q %v, want /devx/loop7", dev, err)
	}
	if dev, err := m.Find(filepath.Join(notDir, "other.img")); err == nil || dev != "" {
		t.Fatalf("Find of a file bound nowhere: %q %v, want the open error", dev, err)
	}
}
