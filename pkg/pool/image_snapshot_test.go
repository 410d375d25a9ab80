package pool

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/test/loopfs"
)

// On a pool without reflinks a snapshot is a copy, and the image it copies
// is preallocated: the space never written is allocated in the snapshot as
// unwritten space (it takes the source's full size, as the pool promised,
// without 24 MiB of zeros being copied), also when the page cache holds the
// image (where SEEK_DATA calls unwritten space data). A restore from it has
// the source's data and is preallocated in full.
func TestImageSnapshotCopyKeepsPreallocation(t *testing.T) {
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
	if took := before.Available - after.Available; took < size {
		t.Errorf("the snapshot took %d bytes of the pool's available space, want its full size %d", took, size)
	}
	snapFile := p.snapPath(snap.Key())
	// Give or take the filesystem's own blocks (an extent tree's).
	const slack = 64 << 10
	if a := allocatedBytes(t, snapFile); a < size || a > size+slack {
		t.Errorf("snapshot allocates %d bytes, want %d", a, size)
	}
	if u := unwrittenBytes(t, snapFile); u < size-written-(1<<20) {
		t.Errorf("snapshot has %d unwritten bytes, want about %d: zeros were copied as data", u, size-written)
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
