package stream

import (
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/fscopy"
)

// Extent is a byte range.
type Extent struct{ Off, Len int64 }

// End is where the extent ends.
func (e Extent) End() int64 { return e.Off + e.Len }

// BlockSource is block content to send. It is used by one Send at a time.
type BlockSource interface {
	io.ReaderAt
	// NextData returns the first data extent that ends after off (it may
	// start before off; callers clip), or ok=false when there is no more
	// data. Holes and unwritten extents are not data.
	NextData(off int64) (e Extent, ok bool, err error)
}

// FileSource is a regular file's first size bytes, of which only the data
// extents are sent (FIEMAP; SEEK_DATA and SEEK_HOLE where the filesystem has
// no FIEMAP).
func FileSource(f *os.File, size int64) BlockSource {
	// A larger readahead window: Send reads each extent front to back.
	unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_SEQUENTIAL)
	return &fileSource{f: f, size: size}
}

type fileSource struct {
	f    *os.File
	size int64
	it   *fscopy.ExtentIter
	last int64 // the off of the last NextData call
	cur  Extent
	has  bool // cur holds an extent from it
	done bool // it has no more
}

func (s *fileSource) ReadAt(p []byte, off int64) (int, error) { return s.f.ReadAt(p, off) }

// NextData walks the file's extents forward, so that a Send costs one pass
// over the extent map; a call for an earlier offset starts a new pass.
func (s *fileSource) NextData(off int64) (Extent, bool, error) {
	if s.it == nil || off < s.last {
		s.it = fscopy.DataExtents(s.f, off, s.size)
		s.has, s.done = false, false
	}
	s.last = off
	for !s.done && (!s.has || s.cur.End() <= off) {
		a, b, ok, err := s.it.Next()
		if err != nil {
			s.it = nil
			return Extent{}, false, err
		}
		if !ok {
			s.done = true
			break
		}
		s.cur, s.has = Extent{Off: a, Len: b - a}, true
	}
	if s.has && s.cur.End() > off {
		return s.cur, true, nil
	}
	return Extent{}, false, nil
}

// DeviceSource is a block device (or any file) read whole: one extent
// [0, size). Send still leaves out its all-zero blocks.
func DeviceSource(r io.ReaderAt, size int64) BlockSource {
	return deviceSource{r: r, size: size}
}

type deviceSource struct {
	r    io.ReaderAt
	size int64
}

func (s deviceSource) ReadAt(p []byte, off int64) (int, error) { return s.r.ReadAt(p, off) }

func (s deviceSource) NextData(off int64) (Extent, bool, error) {
	if off >= s.size {
		return Extent{}, false, nil
	}
	return Extent{Off: 0, Len: s.size}, true, nil
}
