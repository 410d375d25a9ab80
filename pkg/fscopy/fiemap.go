package fscopy

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FIEMAP (linux/fiemap.h): x/sys/unix has no wrapper for it.
const (
	fsIocFiemap     = 0xC020660B
	fiemapFlagSync  = 0x1
	fiemapLast      = 0x1
	fiemapUnknown   = 0x2
	fiemapDelalloc  = 0x4
	fiemapUnwritten = 0x800
	fiemapBatch     = 256
)

type fiemapExtent struct {
	Logical, Physical, Length uint64
	_                         [2]uint64
	Flags                     uint32
	_                         [3]uint32
}

type fiemapHeader struct {
	Start, Length                          uint64
	Flags, MappedExtents, ExtentCount, Res uint32
}

type fiemapReq struct {
	fiemapHeader
	Extents [fiemapBatch]fiemapExtent
}

// span is a part of a file's first size bytes that holds blocks: data to
// copy, or (unwritten) space allocated by fallocate that reads as zeros and
// is allocated in the copy without moving a byte. What lies between spans
// is a hole.
type span struct {
	off, end  int64
	unwritten bool
}

// spanReader lists a file's spans in order, from FIEMAP where the
// filesystem has it (the only interface that tells unwritten extents from
// data: SEEK_DATA counts them as data wherever the page cache holds pages
// of them, which any buffered read leaves behind), else from SEEK_DATA and
// SEEK_HOLE, which see data only.
type spanReader struct {
	fd         int
	size       int64
	pos        int64 // where the next look starts
	seek       bool  // no FIEMAP here: SEEK_DATA and SEEK_HOLE
	synced     bool
	req        *fiemapReq
	batch      []fiemapExtent
	lastBatch  bool
	pending    span
	hasPending bool
}

func newSpanReader(fd int, size int64) *spanReader {
	return &spanReader{fd: fd, size: size}
}

// next returns the next span, merged with the ones adjacent to it of the
// same kind; ok is false at the end.
func (r *spanReader) next() (s span, ok bool, err error) {
	for {
		e, more, err := r.nextExtent()
		if err != nil {
			return span{}, false, err
		}
		if !more {
			s, ok = r.pending, r.hasPending
			r.hasPending = false
			return s, ok, nil
		}
		if !r.hasPending {
			r.pending, r.hasPending = e, true
			continue
		}
		if e.off == r.pending.end && e.unwritten == r.pending.unwritten {
			r.pending.end = e.end
			continue
		}
		s = r.pending
		r.pending = e
		return s, true, nil
	}
}

// nextExtent returns the next extent as the filesystem reports it, cut to
// [pos, size).
func (r *spanReader) nextExtent() (span, bool, error) {
	if r.pos >= r.size {
		return span{}, false, nil
	}
	if r.seek {
		start, end, err := nextData(r.fd, r.pos, r.size)
		if err != nil || start >= end {
			return span{}, false, err
		}
		r.pos = end
		return span{off: start, end: end}, true, nil
	}
	for len(r.batch) == 0 {
		if r.lastBatch {
			return span{}, false, nil
		}
		if err := r.fetch(); err != nil {
			return span{}, false, err
		}
		if r.seek {
			return r.nextExtent()
		}
	}
	e := r.batch[0]
	r.batch = r.batch[1:]
	off, end := max(int64(e.Logical), r.pos), min(int64(e.Logical+e.Length), r.size)
	if end <= off {
		// Before pos (never, from a sane filesystem) or past the size
		// (blocks allocated beyond the end with FALLOC_FL_KEEP_SIZE).
		if int64(e.Logical) >= r.size {
			r.batch, r.lastBatch = nil, true
		}
		return r.nextExtent()
	}
	r.pos = end
	// Delayed or unknown allocations are data that has no blocks yet:
	// copy them.
	unwritten := e.Flags&fiemapUnwritten != 0 && e.Flags&(fiemapUnknown|fiemapDelalloc) == 0
	return span{off: off, end: end, unwritten: unwritten}, true, nil
}

// fetch asks FIEMAP for the next batch of extents from pos on. The first
// call syncs the file, so that data still in the page cache is on disk and
// its extents are no longer unwritten. A filesystem without FIEMAP switches
// the reader to SEEK_DATA.
func (r *spanReader) fetch() error {
	if r.req == nil {
		r.req = new(fiemapReq)
	}
	q := r.req
	q.fiemapHeader = fiemapHeader{Start: uint64(r.pos), Length: uint64(r.size - r.pos), ExtentCount: fiemapBatch}
	if !r.synced {
		q.Flags = fiemapFlagSync
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(r.fd), fsIocFiemap, uintptr(unsafe.Pointer(q)))
	switch {
	case errno == unix.EOPNOTSUPP || errno == unix.ENOTTY || errno == unix.ENOSYS:
		r.seek = true
		return nil
	case errno != 0:
		return fmt.Errorf("FIEMAP: %w", errno)
	}
	r.synced = true
	n := min(q.MappedExtents, fiemapBatch)
	r.batch = q.Extents[:n]
	if n == 0 {
		r.lastBatch = true
		return nil
	}
	last := r.batch[n-1]
	r.lastBatch = last.Flags&fiemapLast != 0
	if next := int64(last.Logical + last.Length); !r.lastBatch && next <= r.pos {
		return fmt.Errorf("FIEMAP at %d: no progress", r.pos)
	}
	return nil
}
