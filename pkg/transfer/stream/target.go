package stream

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BlockTarget is where a receiver writes. It is used by one Receive at a
// time.
type BlockTarget interface {
	WriteAt(p []byte, off int64) (int, error)
	// Zero makes [off, off+n) read as zeros.
	Zero(off, n int64) error
	Sync() error
}

// blkZeroOut is BLKZEROOUT, _IO(0x12, 127) (linux/fs.h); x/sys/unix has no
// constant for it.
const blkZeroOut = 0x127f

// sectorSize is the alignment BLKZEROOUT wants.
const sectorSize = 512

// zeroBufSize is the buffer of zeros written where nothing better works.
const zeroBufSize = 1 << 20

// FileTarget writes into f: a block device (zeroed with BLKZEROOUT) or a
// regular file (zeroed with fallocate, which keeps a preallocated image
// allocated). It does not change f's size: the caller makes f as large as
// the content first. Where f cannot be examined, it is treated as a file.
// It reads f back for a delta (ReceiveDelta).
func FileTarget(f *os.File) DeltaTarget {
	if st, err := f.Stat(); err == nil && st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
		return &deviceTarget{zeroWriter: zeroWriter{f: f}}
	}
	return &fileTarget{zeroWriter: zeroWriter{f: f}}
}

// zeroWriter writes zeros, for the ranges the faster ways cannot zero.
type zeroWriter struct {
	f     *os.File
	zeros []byte
}

// WriteAt writes p and starts its writeback at once, so that the sync at
// the end of a segment finds little left to write and the stream is not
// held up for the whole segment's flush.
func (z *zeroWriter) WriteAt(p []byte, off int64) (int, error) {
	n, err := z.f.WriteAt(p, off)
	if err == nil && n > 0 {
		_ = unix.SyncFileRange(int(z.f.Fd()), off, int64(n), unix.SYNC_FILE_RANGE_WRITE)
	}
	return n, err
}

func (z *zeroWriter) Sync() error { return z.f.Sync() }

func (z *zeroWriter) ReadAt(p []byte, off int64) (int, error) { return z.f.ReadAt(p, off) }

func (z *zeroWriter) writeZeros(off, n int64) error {
	if z.zeros == nil {
		z.zeros = make([]byte, zeroBufSize)
	}
	for n > 0 {
		k := min(n, int64(len(z.zeros)))
		if _, err := z.f.WriteAt(z.zeros[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// unsupported tells the errors of a call the file or kernel does not have.
func unsupported(err error) bool {
	for _, e := range []error{unix.EOPNOTSUPP, unix.ENOSYS, unix.ENOTTY, unix.EINVAL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

type fileTarget struct {
	zeroWriter
	noZeroRange bool
}

// Zero converts the range to unwritten extents: no data written, and the
// blocks stay allocated, as a preallocated image's must.
func (t *fileTarget) Zero(off, n int64) error {
	if n <= 0 {
		return nil
	}
	if !t.noZeroRange {
		err := unix.Fallocate(int(t.f.Fd()), unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if err == nil {
			return nil
		}
		if !unsupported(err) {
			return fmt.Errorf("zero [%d, %d): %w", off, off+n, err)
		}
		t.noZeroRange = true
	}
	return t.writeZeros(off, n)
}

type deviceTarget struct {
	zeroWriter
	noZeroOut bool
}

// Zero asks the device to zero the sector-aligned part of the range (which
// it may do without moving data) and writes zeros around it.
func (t *deviceTarget) Zero(off, n int64) error {
	if n <= 0 {
		return nil
	}
	end := off + n
	a := (off + sectorSize - 1) / sectorSize * sectorSize
	b := end / sectorSize * sectorSize
	if t.noZeroOut || a >= b {
		return t.writeZeros(off, n)
	}
	r := [2]uint64{uint64(a), uint64(b - a)}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, t.f.Fd(), blkZeroOut, uintptr(unsafe.Pointer(&r)))
	switch {
	case errno == 0:
	case unsupported(errno):
		t.noZeroOut = true
		return t.writeZeros(off, n)
	default:
		return fmt.Errorf("BLKZEROOUT [%d, %d): %w", a, b, errno)
	}
	if err := t.writeZeros(off, a-off); err != nil {
		return err
	}
	return t.writeZeros(b, end-b)
}
