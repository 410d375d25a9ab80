package mounter

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flashpv/flashpv/test/loopfs"
)

// growth is an ext4 geometry and the growth it gets.
type growth struct {
	name          string
	block         string // mkfs.ext4 -b
	before, after int64
}

// Two kinds of growth: 16 to 64 MiB with 1 KiB blocks stays within the
// backup groups the filesystem has (2 groups to 8); 96 to 160 MiB with
// 4 KiB blocks (what flashpv's volumes get on its 4 KiB loop devices)
// turns a filesystem of one group, whose reserved descriptor blocks are all
// zeros, into one of two, the second holding backups.
var growths = []growth{
	{"1k-blocks", "1024", 16 << 20, 64 << 20},
	{"one-group-to-two", "4096", 96 << 20, 160 << 20},
}

// extOnLoop makes an ext4 of g.before holding a file, in an image that then
// grows to g.after, and attaches it to a loop device. It returns the
// device, the pristine filesystem and the file's content. Needs root and a
// loop device; skips without.
func extOnLoop(t *testing.T, g growth) (dev string, pristine, data []byte) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "e2image", "resize2fs", "debugfs", "losetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	loopfs.RequireRoot(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	data = bytes.Repeat([]byte("flashpv keeps this file through an interrupted growth\n"), 40000)
	src := filepath.Join(dir, "data")
	must(t, os.WriteFile(src, data, 0o600))
	must(t, os.WriteFile(img, nil, 0o600))
	must(t, os.Truncate(img, g.before))
	loopfs.Run(t, "mkfs.ext4", "-q", "-F", "-b", g.block, "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", img)
	loopfs.Run(t, "debugfs", "-w", "-R", "write "+src+" data", img)
	var err error
	pristine, err = os.ReadFile(img)
	must(t, err)
	must(t, os.Truncate(img, g.after))
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Skipf("no loop device: %v", err)
	}
	dev = strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	return dev, pristine, data
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// checkGrown asserts the filesystem on dev is clean, fills its device and
// still holds data.
func checkGrown(t *testing.T, l Linux, dev string, data []byte) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-f", "-n", dev).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn after the check: %v: %s", err, out)
	}
	if need, err := l.ExtNeedsGrow(dev); err != nil || need {
		t.Fatalf("still needs growing: %v %v", need, err)
	}
	got, err := exec.Command("debugfs", "-R", "cat data", dev).Output()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file changed by the growth (%d bytes, want %d): %v", len(got), len(data), err)
	}
}

func writeAt(t *testing.T, dev string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	must(t, err)
	defer f.Close()
	_, err = f.WriteAt(b, off)
	must(t, err)
	must(t, f.Sync())
}

// A growth that resize2fs did not finish is undone from the saved metadata
// and done again: first a deterministic stand-in (the growth written, the
// primary superblock torn, as a kill between resize2fs's superblock writes
// leaves it, which e2fsck -p refuses), then resize2fs killed at moments
// spread over its run.
func TestCheckExtUndoesInterruptedGrowth(t *testing.T) {
	for _, g := range growths {
		t.Run(g.name, func(t *testing.T) { testUndoGrowth(t, g) })
	}
}

func testUndoGrowth(t *testing.T, g growth) {
	dev, pristine, data := extOnLoop(t, g)
	l := Linux{undoDir: t.TempDir()}
	undo := l.extUndoPath("pool.vol")
	ctx := context.Background()

	must(t, saveExtMetadata(ctx, dev, undo))
	loopfs.Run(t, "resize2fs", dev)
	sb := make([]byte, 4)
	f, err := os.Open(dev)
	must(t, err)
	_, err = f.ReadAt(sb, 1024+0x0c) // s_free_blocks_count, without its checksum update
	f.Close()
	must(t, err)
	sb[0] ^= 0xff
	writeAt(t, dev, sb, 1024+0x0c)
	if err := exec.Command("e2fsck", "-p", dev).Run(); err == nil {
		t.Fatal("e2fsck -p accepted the torn superblock: the stand-in tests nothing")
	}
	must(t, l.CheckExt(ctx, dev, "pool.vol"))
	if _, err := os.Stat(undo); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the metadata copy outlived the growth: %v", err)
	}
	checkGrown(t, l, dev, data)

	broken := 0
	for i := range 16 {
		writeAt(t, dev, pristine, 0)
		must(t, saveExtMetadata(ctx, dev, undo))
		cmd := exec.Command("resize2fs", dev)
		must(t, cmd.Start())
		time.AfterFunc(time.Duration(i)*3*time.Millisecond, func() { _ = cmd.Process.Kill() })
		_ = cmd.Wait()
		if exec.Command("e2fsck", "-f", "-n", dev).Run() != nil {
			broken++
		}
		must(t, l.CheckExt(ctx, dev, "pool.vol"))
		checkGrown(t, l, dev, data)
	}
	t.Logf("%d of 16 kills left a filesystem e2fsck -n faults; all were undone and grown again", broken)
}

// What is left over but must not be applied: a copy whose saving never
// finished (resize2fs had not started), and a copy of another filesystem
// under the same volume ID (the volume deleted and made again).
func TestCheckExtIgnoresForeignCopies(t *testing.T) {
	dev, _, data := extOnLoop(t, growths[0])
	l := Linux{undoDir: t.TempDir()}
	undo := l.extUndoPath("pool.vol")
	must(t, os.WriteFile(undo+".tmp", []byte("half an image"), 0o600))

	other := filepath.Join(t.TempDir(), "other.img")
	must(t, os.WriteFile(other, nil, 0o600))
	must(t, os.Truncate(other, 16<<20))
	loopfs.Run(t, "mkfs.ext4", "-q", "-F", "-b", "1024", other)
	loopfs.Run(t, "e2image", "-r", other, undo)

	must(t, l.CheckExt(context.Background(), dev, "pool.vol"))
	for _, p := range []string{undo, undo + ".tmp"} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
	checkGrown(t, l, dev, data)

	must(t, os.WriteFile(undo, []byte("x"), 0o600))
	must(t, l.ForgetExtGrowth("pool.vol"))
	if _, err := os.Stat(undo); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ForgetExtGrowth left %s: %v", undo, err)
	}
}

// resize2fs that fails by itself (flashpv's call not cancelled): the saved
// metadata is put back at once, the call fails, and the filesystem is the
// one from before the growth, clean, with its data; the next check grows
// it. The stand-in runs the real resize2fs, stops it after a while (or lets
// it finish) and then reports failure.
func TestCheckExtRestoresWhenResize2fsFails(t *testing.T) {
	real, err := exec.LookPath("resize2fs")
	if err != nil {
		t.Skip("no resize2fs")
	}
	g := growths[1]
	dev, pristine, data := extOnLoop(t, g)
	l := Linux{undoDir: t.TempDir()}
	ctx := context.Background()
	path := os.Getenv("PATH")
	for _, stop := range []string{"0", "0.005", "0.02", "finish"} {
		writeAt(t, dev, pristine, 0)
		shim := t.TempDir()
		script := "#!/bin/sh\n\"" + real + "\" \"$@\" & pid=$!\n"
		if stop != "finish" {
			script += "sleep " + stop + "; kill -9 $pid 2>/dev/null\n"
		}
		script += "wait $pid; echo 'resize2fs: giving up' >&2; exit 1\n"
		must(t, os.WriteFile(filepath.Join(shim, "resize2fs"), []byte(script), 0o755))
		t.Setenv("PATH", shim+":"+path)
		err := l.CheckExt(ctx, dev, "pool.vol")
		if err == nil || !strings.Contains(err.Error(), "giving up") {
			t.Fatalf("stop %s: CheckExt = %v, want resize2fs's failure", stop, err)
		}
		if _, err := os.Stat(l.extUndoPath("pool.vol")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stop %s: the metadata copy was not applied and dropped: %v", stop, err)
		}
		if out, err := exec.Command("e2fsck", "-f", "-n", dev).CombinedOutput(); err != nil {
			t.Fatalf("stop %s: e2fsck -fn after the restore: %v: %s", stop, err, out)
		}
		if need, err := l.ExtNeedsGrow(dev); err != nil || !need {
			t.Fatalf("stop %s: the growth was not undone (needs growing: %v, %v)", stop, need, err)
		}
		t.Setenv("PATH", path)
		must(t, l.CheckExt(ctx, dev, "pool.vol"))
		checkGrown(t, l, dev, data)
	}
}

// A restore that was itself cut short (the data extents of the copy written
// back, the geometry not yet) is finished by the next check, which then
// grows: the write-back only ever writes the same blocks again.
func TestCheckExtFinishesInterruptedRestore(t *testing.T) {
	g := growths[1] // one group to two: the geometry write-back matters
	dev, _, data := extOnLoop(t, g)
	l := Linux{undoDir: t.TempDir()}
	undo := l.extUndoPath("pool.vol")
	ctx := context.Background()
	must(t, saveExtMetadata(ctx, dev, undo))
	loopfs.Run(t, "resize2fs", dev) // grown; killed before the copy was dropped
	img, err := os.Open(undo)
	must(t, err)
	d, err := os.OpenFile(dev, os.O_RDWR, 0)
	must(t, err)
	must(t, writeBackExtents(img, d))
	must(t, d.Sync())
	img.Close()
	d.Close()
	if out, err := exec.Command("e2fsck", "-f", "-n", dev).CombinedOutput(); err == nil {
		t.Fatalf("the half-restored filesystem passes e2fsck -fn: the test tests nothing\n%s", out)
	}
	must(t, l.CheckExt(ctx, dev, "pool.vol"))
	if _, err := os.Stat(undo); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the metadata copy outlived the growth: %v", err)
	}
	checkGrown(t, l, dev, data)
}
