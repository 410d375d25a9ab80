package fscopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// rwBufSize is the buffer of a read/write copy; a chunk takes several.
const rwBufSize = 1 << 20

// moved counts what a file copy did with the source's bytes: data copied,
// and allocated-but-unwritten space allocated again in the copy without
// moving its zeros.
type moved struct{ copied, preallocated int64 }

// copyExtents copies the data extents of in's first size bytes into out at
// the same offsets and sets out's size, so that holes stay holes and space
// the source has allocated but never written (fallocate) is allocated in out
// the same way, not copied as zeros. The context is looked at before every
// chunk of data.
func (c *copier) copyExtents(ctx context.Context, in, out *os.File, size int64) (Method, moved, error) {
	var m moved
	if err := out.Truncate(size); err != nil {
		return 0, m, err
	}
	method := CopyRange
	if c.opt.Mode == CopyOnly {
		method = ReadWrite
	}
	ifd := int(in.Fd())
	// A larger readahead window: what cp does, and worth 2x on cold reads.
	unix.Fadvise(ifd, 0, 0, unix.FADV_SEQUENTIAL)
	spans := newSpanReader(ifd, size)
	for {
		s, ok, err := spans.next()
		if err != nil {
			return 0, m, err
		}
		if !ok {
			return method, m, nil
		}
		if s.unwritten && c.opt.Sparse {
			continue // reads as zeros, as the hole it stays does
		}
		if s.unwritten {
			done, err := c.preallocate(out, s.off, s.end-s.off)
			if err != nil {
				return 0, m, err
			}
			m.preallocated += done
			continue
		}
		for pos := s.off; pos < s.end; {
			if err := ctx.Err(); err != nil {
				return 0, m, err
			}
			n := min(c.opt.ChunkSize, s.end-pos)
			if method == CopyRange {
				done, err := copyRange(ifd, int(out.Fd()), pos, n)
				pos += done
				m.copied += done
				n -= done
				if err == nil {
					continue
				}
				if !rangeUnsupported(err) {
					return 0, m, err
				}
				method = ReadWrite
			}
			if err := c.readWrite(in, out, pos, n); err != nil {
				return 0, m, err
			}
			pos += n
			m.copied += n
		}
	}
}

// preallocate allocates [off, off+n) of out as the source had it: blocks
// that read as zeros. Where out's filesystem cannot, the range stays a hole,
// which reads the same; it returns how much it allocated.
func (c *copier) preallocate(out *os.File, off, n int64) (int64, error) {
	if c.noFallocate {
		return 0, nil
	}
	err := unix.Fallocate(int(out.Fd()), 0, off, n)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		c.noFallocate = true
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("fallocate at %d: %w", off, err)
	}
	return n, nil
}

// nextData finds the first data extent at or after off: [start, end). At
// the end of the data it returns start == end == size. A filesystem without
// SEEK_DATA is all data.
func nextData(fd int, off, size int64) (int64, int64, error) {
	start, err := unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return size, size, nil
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
		return off, size, nil
	case err != nil:
		return 0, 0, fmt.Errorf("SEEK_DATA: %w", err)
	}
	if start >= size {
		return size, size, nil
	}
	end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
	if err != nil || end > size {
		end = size
	}
	return start, end, nil
}

// copyRange copies n bytes at off with copy_file_range and returns how many
// it copied before any error.
func copyRange(ifd, ofd int, off, n int64) (int64, error) {
	var done int64
	for done < n {
		roff, woff := off+done, off+done
		k, err := unix.CopyFileRange(ifd, &roff, ofd, &woff, int(min(n-done, 1<<30)), 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return done, fmt.Errorf("copy_file_range: %w", err)
		}
		if k == 0 {
			return done, fmt.Errorf("copy_file_range at %d: %w (source shrank)", off+done, io.ErrUnexpectedEOF)
		}
		done += int64(k)
	}
	return done, nil
}

// rangeUnsupported tells the copy_file_range errors after which read and
// write still work.
func rangeUnsupported(err error) bool {
	for _, e := range []error{unix.EXDEV, unix.ENOSYS, unix.EOPNOTSUPP, unix.EINVAL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// readWrite copies n bytes at off through a buffer.
func (c *copier) readWrite(in, out *os.File, off, n int64) error {
	if c.buf == nil {
		c.buf = make([]byte, rwBufSize)
	}
	for n > 0 {
		b := c.buf[:min(n, int64(len(c.buf)))]
		k, err := in.ReadAt(b, off)
		if k < len(b) {
			if err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w (source shrank)", io.ErrUnexpectedEOF)
			}
			return fmt.Errorf("read at %d: %w", off+int64(k), err)
		}
		if _, err := out.WriteAt(b, off); err != nil {
			return err
		}
		off += int64(k)
		n -= int64(k)
	}
	return nil
}
