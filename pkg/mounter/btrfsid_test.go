package mounter

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/flashpv/flashpv/test/loopfs"
)

func TestBtrfsFsidFor(t *testing.T) {
	a, b := btrfsFsidFor("pool.a"), btrfsFsidFor("pool.b")
	if a == b {
		t.Fatal("two volumes got the same fsid")
	}
	if a != btrfsFsidFor("pool.a") {
		t.Fatal("the fsid of a volume is not stable")
	}
	if a[6]>>4 != 4 || a[8]>>6 != 2 {
		t.Fatalf("%s is not a version 4 UUID", formatUUID(a))
	}
}

// A copied btrfs gets its own ID once; its source keeps its ID, and both
// stay valid filesystems.
func TestRenewBtrfsID(t *testing.T) {
	for _, tool := range []string{"mkfs.btrfs", "btrfstune", "btrfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	loopfs.RequireRoot(t)
	dir := t.TempDir()
	src, cp := filepath.Join(dir, "src.img"), filepath.Join(dir, "copy.img")
	must(t, os.WriteFile(src, nil, 0o600))
	must(t, os.Truncate(src, 256<<20))
	loopfs.Run(t, "mkfs.btrfs", "-q", "-f", src)
	data, err := os.ReadFile(src)
	must(t, err)
	must(t, os.WriteFile(cp, data, 0o600))
	before, _, err := readBtrfsSuper(src)
	must(t, err)

	ctx := context.Background()
	var m Linux
	must(t, m.RenewBtrfsID(ctx, cp, "pool.copy"))
	got, flags, err := readBtrfsSuper(cp)
	must(t, err)
	if got != btrfsFsidFor("pool.copy") || flags&btrfsChangingFsid != 0 {
		t.Fatalf("copy has fsid %s (flags %#x), want %s", formatUUID(got), flags, formatUUID(btrfsFsidFor("pool.copy")))
	}
	// Again, as a retry would: nothing to do (btrfstune itself would refuse
	// an fsid that is already in use).
	must(t, m.RenewBtrfsID(ctx, cp, "pool.copy"))
	if still, _, _ := readBtrfsSuper(src); still != before {
		t.Fatal("the source's fsid changed")
	}
	for _, img := range []string{src, cp} {
		if out, err := exec.Command("btrfs", "check", "--readonly", img).CombinedOutput(); err != nil {
			t.Fatalf("btrfs check %s: %v\n%s", img, err, out)
		}
	}
	if err := m.RenewBtrfsID(ctx, filepath.Join(dir, "missing"), "pool.x"); err == nil {
		t.Fatal("no error for a missing device")
	}

	// Killed between btrfstune's two steps: the flag set, the old ID still
	// there. btrfs-progs before 6.5 refuse to go on from that, and the
	// kernel refuses to mount it; flashpv clears the flag and goes on.
	must(t, os.WriteFile(cp, data, 0o600))
	setChangingFsid(t, cp)
	if _, flags, _ := readBtrfsSuper(cp); flags&btrfsChangingFsid == 0 {
		t.Fatal("the stand-in for an interrupted btrfstune did not set the flag")
	}
	must(t, m.RenewBtrfsID(ctx, cp, "pool.copy"))
	got, flags, err = readBtrfsSuper(cp)
	must(t, err)
	if got != btrfsFsidFor("pool.copy") || flags&btrfsChangingFsid != 0 {
		t.Fatalf("after an interrupted change: fsid %s, flags %#x", formatUUID(got), flags)
	}
	if out, err := exec.Command("btrfs", "check", "--readonly", cp).CombinedOutput(); err != nil {
		t.Fatalf("btrfs check after an interrupted change: %v\n%s", err, out)
	}
}

// setChangingFsid does what btrfstune -M's first step does: the
// changing-fsid flag in the superblocks, checksums made again.
func setChangingFsid(t *testing.T, img string) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	for _, off := range btrfsSuperOffsets[:2] {
		sb := make([]byte, btrfsSuperSize)
		must(t, func() error { _, err := f.ReadAt(sb, off); return err }())
		flags := binary.LittleEndian.Uint64(sb[btrfsFlagsOffset:])
		binary.LittleEndian.PutUint64(sb[btrfsFlagsOffset:], flags|btrfsChangingFsid)
		binary.LittleEndian.PutUint32(sb, crc32.Checksum(sb[btrfsCsumStart:], crc32.MakeTable(crc32.Castagnoli)))
		must(t, func() error { _, err := f.WriteAt(sb, off); return err }())
	}
}

// A copy of a btrfs cut off by a power loss holds a log of fsynced writes
// to replay at its first mount. Its new ID must keep that log valid: the
// copy mounts and has the fsynced file (after btrfstune's transaction the
// kernel rejected the log and the copy did not mount; test/powerloss
// found it).
func TestRenewBtrfsIDKeepsTheLog(t *testing.T) {
	for _, tool := range []string{"mkfs.btrfs", "btrfs", "losetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	loopfs.RequireRoot(t)
	dir := t.TempDir()
	src, cp, mnt := filepath.Join(dir, "src.img"), filepath.Join(dir, "copy.img"), filepath.Join(dir, "mnt")
	must(t, os.Mkdir(mnt, 0o700))
	must(t, os.WriteFile(src, nil, 0o600))
	must(t, os.Truncate(src, 256<<20))
	loopfs.Run(t, "mkfs.btrfs", "-q", "-f", src)
	dev := loopfs.Run(t, "losetup", "--find", "--show", src)
	defer exec.Command("losetup", "-d", dev).Run()
	// No commit for minutes: the fsync below goes to the log tree only.
	loopfs.Run(t, "mount", "-o", "commit=300", dev, mnt)
	want := []byte("fsynced before the power went\n")
	f, err := os.Create(filepath.Join(mnt, "f"))
	must(t, err)
	_, err = f.Write(want)
	must(t, err)
	must(t, f.Sync())
	must(t, f.Close())
	// What the device holds now is what a power cut leaves.
	data, err := os.ReadFile(src)
	must(t, err)
	must(t, os.WriteFile(cp, data, 0o600))
	loopfs.Run(t, "umount", mnt)
	if logged, err := btrfsNeedsLogReplay(cp); err != nil || !logged {
		t.Fatalf("the copy has no log to replay (%v): the test does not test", err)
	}

	var m Linux
	must(t, m.RenewBtrfsID(context.Background(), cp, "pool.copy"))
	if got, _, err := readBtrfsSuper(cp); err != nil || got != btrfsFsidFor("pool.copy") {
		t.Fatalf("copy has fsid %s (%v), want %s", formatUUID(got), err, formatUUID(btrfsFsidFor("pool.copy")))
	}
	cdev := loopfs.Run(t, "losetup", "--find", "--show", cp)
	defer exec.Command("losetup", "-d", cdev).Run()
	if out, err := exec.Command("mount", cdev, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mounting the copy: %v: %s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "f"))
	loopfs.Run(t, "umount", mnt)
	if err != nil || string(got) != string(want) {
		t.Fatalf("the fsynced file in the copy: %q, %v", got, err)
	}
	if out, err := exec.Command("btrfs", "check", "--readonly", cdev).CombinedOutput(); err != nil {
		t.Fatalf("btrfs check of the copy: %v\n%s", err, out)
	}
	// Again, as a retry would: nothing to do.
	must(t, m.RenewBtrfsID(context.Background(), cp, "pool.copy"))
}
