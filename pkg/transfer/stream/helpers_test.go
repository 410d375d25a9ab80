package stream

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// op is one step of making a source file.
type op struct {
	kind     byte // 'r' random data, 'z' written zeros, 'f' fallocated (unwritten), 'b' one byte of 0xff
	off, len int64
}

// makeFile makes a file of size bytes by ops, synced, and returns its path.
func makeFile(t testing.TB, size int64, ops []op) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "src")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	applyOps(t, f, ops)
	return path
}

// applyOps does ops to f and syncs it.
func applyOps(t testing.TB, f *os.File, ops []op) {
	t.Helper()
	for _, o := range ops {
		switch o.kind {
		case 'f':
			if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, o.off, o.len); err != nil {
				t.Fatal(err)
			}
		case 'b':
			if _, err := f.WriteAt([]byte{0xff}, o.off); err != nil {
				t.Fatal(err)
			}
		default:
			b := make([]byte, o.len)
			if o.kind == 'r' {
				rand.Read(b)
			}
			if _, err := f.WriteAt(b, o.off); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// punchHole deallocates e of f.
func punchHole(t testing.TB, f *os.File, e Extent) {
	t.Helper()
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, e.Off, e.Len); err != nil {
		t.Fatal(err)
	}
}

// makeTarget makes a file of size bytes of random garbage, as an image an
// earlier attempt (or an earlier volume) left behind.
func makeTarget(t testing.TB, size int64) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "dst"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	scribble(t, f, 0, size)
	return f
}

// scribble writes random bytes over [off, off+n) of f.
func scribble(t testing.TB, f *os.File, off, n int64) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func openFile(t testing.TB, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// sameContent fails the test unless the files hold the same bytes.
func sameContent(t testing.TB, a, b *os.File) {
	t.Helper()
	x, err := io.ReadAll(io.NewSectionReader(a, 0, 1<<40))
	if err != nil {
		t.Fatal(err)
	}
	y, err := io.ReadAll(io.NewSectionReader(b, 0, 1<<40))
	if err != nil {
		t.Fatal(err)
	}
	if len(x) != len(y) {
		t.Fatalf("sizes %d and %d differ", len(x), len(y))
	}
	for i := range x {
		if x[i] != y[i] {
			t.Fatalf("first difference at byte %d", i)
		}
	}
}

// nonzeroBytes is what Send should send of content: its 4 KiB blocks, cut
// at segment boundaries, that are not all zeros.
func nonzeroBytes(content []byte, seg int64) int64 {
	var n int64
	zeros := make([]byte, blockSize)
	for i := int64(0); i < int64(len(content)); {
		j := min(int64(len(content)), (i/blockSize+1)*blockSize, (i/seg+1)*seg)
		if !bytes.Equal(content[i:j], zeros[:j-i]) {
			n += j - i
		}
		i = j
	}
	return n
}

// transfer sends src to dst over a pipe and returns both ends' stats and
// the committed positions.
func transfer(t testing.TB, src BlockSource, dst BlockTarget, size, from, seg int64) (sent, got Stats, commits []int64) {
	t.Helper()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		var err error
		sent, err = Send(context.Background(), pw, src, size, from, seg, nil)
		pw.CloseWithError(err)
		done <- err
	}()
	got, err := Receive(context.Background(), pr, dst, size, from, seg, nil, func(next int64) error {
		commits = append(commits, next)
		return nil
	})
	pr.Close()
	if err := <-done; err != nil {
		t.Fatalf("send: %v", err)
	}
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	return sent, got, commits
}

// memTarget is a BlockTarget in memory that refuses writes outside it.
type memTarget struct {
	b      []byte
	syncs  int
	zeroed int64
}

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, fmt.Errorf("write [%d, %d) outside %d bytes", off, off+int64(len(p)), len(m.b))
	}
	return copy(m.b[off:], p), nil
}

func (m *memTarget) Zero(off, n int64) error {
	if off < 0 || off+n > int64(len(m.b)) {
		return fmt.Errorf("zero [%d, %d) outside %d bytes", off, off+n, len(m.b))
	}
	clear(m.b[off : off+n])
	m.zeroed += n
	return nil
}

// ReadAt makes a memTarget a source too.
func (m *memTarget) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memTarget) Sync() error { m.syncs++; return nil }

// frames builds a stream by hand; its segment frames hash what was added
// since the previous one, unless told otherwise.
type frames struct {
	bytes.Buffer
	h [][]byte // the current segment's hashed parts
}

func (f *frames) data(off int64, p []byte) *frames {
	return f.dataLen(off, uint32(len(p)), p)
}

// dataLen writes a data frame that claims length n and carries p.
func (f *frames) dataLen(off int64, n uint32, p []byte) *frames {
	var h [1 + dataHdrLen]byte
	putDataHeader(h[:], off, int(n))
	f.Write(h[:])
	f.Write(p)
	f.h = append(f.h, append(h[1:], p...))
	return f
}

func (f *frames) segment(end int64) *frames {
	s := crc32.New(castagnoli)
	for _, p := range f.h {
		s.Write(p)
	}
	f.h = nil
	f.WriteByte(frameSegment)
	f.Write(binary.BigEndian.AppendUint64(nil, uint64(end)))
	f.Write(s.Sum(nil))
	return f
}

func (f *frames) end(size, data int64) *frames {
	f.WriteByte(frameEnd)
	f.Write(binary.BigEndian.AppendUint64(nil, uint64(size)))
	f.Write(binary.BigEndian.AppendUint64(nil, uint64(data)))
	return f
}

func (f *frames) fail(n uint16, msg string) *frames {
	f.WriteByte(frameError)
	f.Write(binary.BigEndian.AppendUint16(nil, n))
	f.WriteString(msg)
	return f
}

func (f *frames) raw(b ...byte) *frames {
	f.Write(b)
	return f
}
