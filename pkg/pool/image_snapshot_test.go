package pool

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/test/loopfs"
)

// On a pool without reflinks a snapshot is a copy of a preallocated image:
// its data are copied and the space never written stays holes (a snapshot
// is never written to, and the pool's promise is to its volumes), without
// zeros copied, also when the page cache holds the image (where SEEK_DATA
// calls unwritten space data). Creating it still needs the source's full
// size free. A restore from it has the source's data and is preallocated in
// full.
func TestImageSnapshotCopyIsSparse(t *testing.T) {
	const size, written = 32 << 20, 8 << 20
	mnt := loopfs.Mount(t, "ext4", 256<<20)
	p, err := OpenImage("ext4", mnt, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	ctx := context.Background()
	src, _, err := p.Create(ctx, spec("src", size))
	if err != nil {
		t.Fatal(err)
	}
	img := p.ImagePath(src.Key())
	data := make([]byte, written)
	rand.Read(data)
	writeAndCache(t, img, data)
	before, err := p.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	snap, _, err := p.CreateSnapshot(ctx, SnapshotSpec{Name: "snap", Source: src})
	if err != nil {
		t.Fatal(err)
	}
	after, err := p.Capacity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Give or take the filesystem's own blocks (an extent tree's).
	const slack = 64 << 10
	if took := before.Available - after.Available; took < written || took > written+slack {
		t.Errorf("the snapshot took %d bytes of the pool's available space, want its %d bytes of data", took, written)
	}
	snapFile := p.snapPath(snap.Key())
	if a := allocatedBytes(t, snapFile); a < written || a > written+slack {
		t.Errorf("snapshot allocates %d bytes, want %d", a, written)
	}
	if u := unwrittenBytes(t, snapFile); u != 0 {
		t.Errorf("snapshot has %d unwritten bytes allocated, want holes", u)
	}
	// Creating one needs the source's whole size free.
	hog, _, err := p.Create(ctx, spec("hog", after.Available-size+written))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.CreateSnapshot(ctx, SnapshotSpec{Name: "snap2", Source: src}); !errors.Is(err, ErrNoSpace) {
		t.Errorf("a snapshot without the source's size free: %v, want ErrNoSpace", err)
	}
	if err := p.Delete(ctx, hog.Key()); err != nil {
		t.Fatal(err)
	}
	rs := spec("restored", 2*size)
	rs.Source = snap.ID
	restored, _, err := p.CreateFrom(ctx, rs, Content{Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	rimg := p.ImagePath(restored.Key())
	if a := allocatedBytes(t, rimg); a < 2*size || a > 2*size+slack {
		t.Errorf("restored image allocates %d bytes, want all %d", a, 2*size)
	}
	got, err := os.ReadFile(rimg)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:written], data) || !bytes.Equal(got[written:], make([]byte, 2*size-written)) {
		t.Error("restored image differs from the source")
	}
}

// writeAndCache writes data at the start of path, syncs it and reads the
// whole file through the page cache.
func writeAndCache(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, f); err != nil {
		t.Fatal(err)
	}
}

func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// unwrittenBytes sums the extents filefrag flags unwritten.
func unwrittenBytes(t *testing.T, path string) int64 {
	t.Helper()
	out, err := exec.Command("filefrag", "-v", "-b1", path).Output()
	if err != nil {
		t.Skipf("filefrag: %v", err)
	}
	var n int64
	for _, line := range strings.Split(string(out), "\n") {
		// " 3:  131072..  190463:  169984..  229375:  59392:   unwritten"
		f := strings.Split(line, ":")
		if len(f) < 5 || !strings.Contains(line, "unwritten") {
			continue
		}
		l, err := strconv.ParseInt(strings.TrimSpace(f[3]), 10, 64)
		if err != nil {
			t.Fatalf("filefrag line %q: %v", line, err)
		}
		n += l
	}
	return n
}
