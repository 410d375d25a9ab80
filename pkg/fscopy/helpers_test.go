package fscopy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

type extent struct{ off, len int64 }

// writeSparse makes a file of size with random data at exts and holes
// elsewhere.
func writeSparse(t *testing.T, path string, size int64, exts []extent) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for _, e := range exts {
		for done := int64(0); done < e.len; {
			b := buf[:min(int64(len(buf)), e.len-done)]
			rand.Read(b)
			if _, err := f.WriteAt(b, e.off+done); err != nil {
				t.Fatal(err)
			}
			done += int64(len(b))
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// dataMap lists a file's data extents as SEEK_DATA and SEEK_HOLE see them.
func dataMap(t *testing.T, path string) []extent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	var m []extent
	for off := int64(0); off < st.Size(); {
		start, end, err := nextData(int(f.Fd()), off, st.Size())
		if err != nil {
			t.Fatal(err)
		}
		if start < end {
			m = append(m, extent{start, end - start})
		}
		off = max(end, off+1)
	}
	return m
}

func hashFile(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// sameFile checks the content of a copy, that the source's holes are holes
// in the copy (give or take a block: filesystems differ in block size and in
// how much they allocate around writes), and that it allocates no more.
func sameFile(t *testing.T, src, dst string) {
	t.Helper()
	if hashFile(t, src) != hashFile(t, dst) {
		t.Errorf("%s: content differs from %s", dst, src)
	}
	const slack = 64 << 10
	f, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	prev := int64(0)
	for _, e := range append(dataMap(t, src), extent{st.Size(), 0}) {
		a, b := (prev+2*slack-1)/slack*slack, e.off-slack
		if a < b {
			if start, _, _ := nextData(int(f.Fd()), a, st.Size()); start < b {
				t.Errorf("%s: data at %d, in the source's hole [%d, %d)", dst, start, prev, e.off)
			}
		}
		prev = e.off + e.len
	}
	sa, da := allocated(t, src), allocated(t, dst)
	if da > sa+sa/8+(1<<20) {
		t.Errorf("copy allocates %d bytes, source %d: holes were filled", da, sa)
	}
}

// sameExtents checks that a copy on the same filesystem has exactly the
// source's data extents.
func sameExtents(t *testing.T, src, dst string) {
	t.Helper()
	sm, dm := dataMap(t, src), dataMap(t, dst)
	if !slices.Equal(sm, dm) {
		t.Errorf("data extents: source %v, copy %v", sm, dm)
	}
}

// fiemapOf lists path's extents as FIEMAP reports them, after a sync.
func fiemapOf(t *testing.T, path string) []fiemapExtent {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var all []fiemapExtent
	for start := uint64(0); ; {
		var q fiemapReq
		q.fiemapHeader = fiemapHeader{Start: start, Length: ^uint64(0), Flags: fiemapFlagSync, ExtentCount: fiemapBatch}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&q))); errno != 0 {
			t.Fatalf("FIEMAP %s: %v", path, errno)
		}
		if q.MappedExtents == 0 {
			return all
		}
		for _, e := range q.Extents[:q.MappedExtents] {
			all = append(all, e)
			if e.Flags&fiemapLast != 0 {
				return all
			}
			start = e.Logical + e.Length
		}
	}
}

// sharedBytes sums the extents of path that FIEMAP flags as shared.
func sharedBytes(t *testing.T, path string) int64 {
	t.Helper()
	const extentShared = 0x2000
	var shared int64
	for _, e := range fiemapOf(t, path) {
		if e.Flags&extentShared != 0 {
			shared += int64(e.Length)
		}
	}
	return shared
}

// countdownCtx is a context whose Err reports cancellation from its n-th
// call on: a copy cancelled deterministically between two chunks.
type countdownCtx struct {
	context.Context
	left  atomic.Int64
	calls atomic.Int64
}

func cancelAfter(n int64) *countdownCtx {
	c := &countdownCtx{Context: context.Background()}
	c.left.Store(n)
	return c
}

func (c *countdownCtx) Err() error {
	c.calls.Add(1)
	if c.left.Add(-1) < 0 {
		return context.Canceled
	}
	return nil
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// reflinks tells whether dir's filesystem shares blocks on FICLONE.
func reflinks(t *testing.T, dir string) bool {
	t.Helper()
	a, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(a.Name())
	defer a.Close()
	a.Write(bytes.Repeat([]byte{1}, 4096))
	b, err := os.CreateTemp(dir, "probe")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(b.Name())
	defer b.Close()
	err = unix.IoctlFileClone(int(b.Fd()), int(a.Fd()))
	if err != nil && !cloneUnsupported(err) {
		t.Fatal(err)
	}
	return err == nil
}
