package fscopy

// Preallocated files (fallocate, as image volumes are) on real filesystems:
// space allocated but never written is allocated in the copy, not copied as
// zeros, even where SEEK_DATA calls it data.

import (
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/test/loopfs"
)

const preallocSize = 48<<20 + 1000

// writePreallocated makes a preallocated file as a volume leaves it: data
// at the start, in the middle and at the very end (a partial last block),
// unwritten space between, a hole punched by a discard, and the page cache
// full of it (a buffered read), where SEEK_DATA reports the unwritten space
// as data on ext4 and XFS. Last, one MiB is written into unwritten space and
// left dirty: a copy must see it as data.
func writePreallocated(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fd := int(f.Fd())
	if err := unix.Fallocate(fd, 0, 0, 48<<20); err != nil {
		t.Fatal(err)
	}
	for _, e := range []extent{{0, 4 << 20}, {20 << 20, 2 << 20}, {44 << 20, 4<<20 + 1000}} {
		b := make([]byte, e.len)
		rand.Read(b)
		if _, err := f.WriteAt(b, e.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 30<<20, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, f); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1<<20)
	rand.Read(b)
	if _, err := f.WriteAt(b, 10<<20); err != nil {
		t.Fatal(err)
	}
}

// layout is a file's first size bytes as spans of data and of unwritten
// space, adjacent ones of a kind merged, straight from FIEMAP.
func layout(t *testing.T, path string, size int64) []span {
	t.Helper()
	var m []span
	for _, e := range fiemapOf(t, path) {
		s := span{off: int64(e.Logical), end: min(int64(e.Logical+e.Length), size), unwritten: e.Flags&fiemapUnwritten != 0}
		if s.off >= s.end {
			continue
		}
		if n := len(m); n > 0 && m[n-1].end == s.off && m[n-1].unwritten == s.unwritten {
			m[n-1].end = s.end
			continue
		}
		m = append(m, s)
	}
	return m
}

func sumSpans(m []span, unwritten bool) int64 {
	var n int64
	for _, s := range m {
		if s.unwritten == unwritten {
			n += s.end - s.off
		}
	}
	return n
}

func TestCopyKeepsUnwrittenSpace(t *testing.T) {
	for _, fsys := range []struct {
		name, fstype string
		size         int64
		args         []string
		modes        []Mode
	}{
		{"ext4", "ext4", 256 << 20, nil, []Mode{ReflinkOrCopy, CopyOnly}},
		{"xfs", "xfs", 512 << 20, []string{"-m", "reflink=0"}, []Mode{ReflinkOrCopy, CopyOnly}},
		// Where a reflink would share, a physical copy still preallocates.
		{"xfs-reflink", "xfs", 512 << 20, []string{"-m", "reflink=1"}, []Mode{CopyOnly}},
	} {
		t.Run(fsys.name, func(t *testing.T) {
			mnt := loopfs.Mount(t, fsys.fstype, fsys.size, fsys.args...)
			for _, mode := range fsys.modes {
				t.Run(mode.String(), func(t *testing.T) {
					src, dst := filepath.Join(mnt, "src-"+mode.String()), filepath.Join(mnt, "dst-"+mode.String())
					writePreallocated(t, src)
					res, err := File(context.Background(), src, dst, Options{Mode: mode, ChunkSize: 1 << 20})
					if err != nil {
						t.Fatal(err)
					}
					want := layout(t, src, preallocSize)
					if unwritten := sumSpans(want, true); unwritten < 24<<20 {
						t.Fatalf("source %v has %d unwritten bytes, want at least 24 MiB: the test needs a filesystem that keeps them", want, unwritten)
					}
					if hashFile(t, src) != hashFile(t, dst) {
						t.Fatal("content differs")
					}
					got := layout(t, dst, preallocSize)
					if !slices.Equal(got, want) {
						t.Errorf("copy's extents\n%v, want the source's\n%v", got, want)
					}
					if res.Copied != sumSpans(want, false) || res.Preallocated != sumSpans(want, true) || res.Size != preallocSize {
						t.Errorf("result %+v, want %d bytes copied, %d preallocated", res, sumSpans(want, false), sumSpans(want, true))
					}
					// Blocks within the size, the last one whole; XFS may
					// keep some allocated beyond the end for a while.
					var st unix.Stat_t
					unix.Stat(dst, &st)
					bs := int64(st.Blksize)
					inSize := (sumSpans(want, false) + sumSpans(want, true) + bs - 1) / bs * bs
					if da := allocated(t, dst); da < inSize || da > inSize+(1<<20) {
						t.Errorf("copy allocates %d bytes, want the source's %d within its size", da, inSize)
					}
					if fi, _ := os.Stat(dst); fi.Size() != preallocSize {
						t.Errorf("size %d, want %d", fi.Size(), preallocSize)
					}
				})
			}
		})
	}
}

// A sparse copy (Options.Sparse, for snapshots) has the source's data spans
// and nothing else: the unwritten space stays holes.
func TestSparseCopyLeavesUnwrittenSpaceOut(t *testing.T) {
	mnt := loopfs.Mount(t, "ext4", 256<<20)
	src, dst := filepath.Join(mnt, "src"), filepath.Join(mnt, "dst")
	writePreallocated(t, src)
	res, err := File(context.Background(), src, dst, Options{Sparse: true, ChunkSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if hashFile(t, src) != hashFile(t, dst) {
		t.Fatal("content differs")
	}
	var want []span
	for _, s := range layout(t, src, preallocSize) {
		if !s.unwritten {
			want = append(want, s)
		}
	}
	if got := layout(t, dst, preallocSize); !slices.Equal(got, want) {
		t.Errorf("sparse copy's extents\n%v, want the source's data only\n%v", got, want)
	}
	if res.Preallocated != 0 || res.Copied != sumSpans(want, false) {
		t.Errorf("result %+v, want %d bytes copied and none preallocated", res, sumSpans(want, false))
	}
}

// Where the source's filesystem has no FIEMAP (tmpfs), the copy falls back
// to SEEK_DATA and SEEK_HOLE and is still exact.
func TestCopyWithoutFiemap(t *testing.T) {
	loopfs.RequireRoot(t)
	mnt := t.TempDir()
	loopfs.Run(t, "mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt)
	t.Cleanup(func() { loopfs.Run(t, "umount", mnt) })
	src, dst := filepath.Join(mnt, "src"), filepath.Join(mnt, "dst")
	writePreallocated(t, src)
	if _, err := File(context.Background(), src, dst, Options{}); err != nil {
		t.Fatal(err)
	}
	if hashFile(t, src) != hashFile(t, dst) {
		t.Fatal("content differs")
	}
	if fi, _ := os.Stat(dst); fi.Size() != preallocSize {
		t.Errorf("size %d, want %d", fi.Size(), preallocSize)
	}
	// tmpfs reports holes as holes: the punched one stays.
	if f, err := os.Open(dst); err == nil {
		defer f.Close()
		if start, _, _ := nextData(int(f.Fd()), 30<<20, preallocSize); start < 34<<20 {
			t.Errorf("data at %d, in the source's hole [30 MiB, 34 MiB)", start)
		}
	}
}
