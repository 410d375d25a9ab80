// Package fscopy copies files and directory trees as cheaply as the
// filesystem allows: a reflink (FICLONE) where the source and destination
// can share blocks (XFS made with reflink=1, btrfs), else a sparse-aware copy
// that moves only the source's data extents, leaves its holes as holes and
// allocates the space the source has allocated but never written
// (fallocate) without copying its zeros: a copy of a preallocated file is
// as preallocated as its source.
//
// Copies are cancellable through their context between chunks, and a copy
// that fails or is cancelled leaves no partial destination behind: a file is
// written as an unnamed O_TMPFILE inode and linked to its name once complete
// and synced, so not even a killed process leaves a half-written file. Where a
// filesystem has no O_TMPFILE, and for directory trees, the work happens under
// a hidden temporary name in the destination's directory (see IsTemp), which
// a crash can leave behind for the caller to remove when it starts.
package fscopy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// Mode says which mechanisms a copy may use.
type Mode int

const (
	// ReflinkOrCopy shares blocks where the filesystem can, else copies the
	// data extents (copy_file_range, which XFS and btrfs may also answer by
	// sharing blocks).
	ReflinkOrCopy Mode = iota
	// ReflinkOnly shares blocks or fails with ErrNoReflink.
	ReflinkOnly
	// CopyOnly moves every data byte through read and write, so that the
	// destination shares no block with the source (copy_file_range is not
	// used: on XFS and btrfs the kernel answers it with a reflink).
	CopyOnly
)

func (m Mode) String() string {
	switch m {
	case ReflinkOrCopy:
		return "reflink-or-copy"
	case ReflinkOnly:
		return "reflink-only"
	case CopyOnly:
		return "copy-only"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Method is how a file's data reached its destination. Larger is slower.
type Method int

const (
	// Reflink shared the source's blocks (FICLONE); no data moved.
	Reflink Method = iota + 1
	// CopyRange copied the data extents inside the kernel (copy_file_range).
	CopyRange
	// ReadWrite copied the data extents through user space.
	ReadWrite
)

func (m Method) String() string {
	switch m {
	case Reflink:
		return "reflink"
	case CopyRange:
		return "copy_file_range"
	case ReadWrite:
		return "read/write"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// DefaultChunkSize is how much data is copied between two looks at the
// context when Options.ChunkSize is zero.
const DefaultChunkSize = 32 << 20

var (
	// ErrNoReflink: ReflinkOnly was asked where blocks cannot be shared
	// (another filesystem, or one without reflink support).
	ErrNoReflink = errors.New("reflink not supported")
	// ErrNotRegular: File was given something other than a regular file.
	ErrNotRegular = errors.New("not a regular file")
)

// Options tune a copy. The zero value is ReflinkOrCopy in DefaultChunkSize
// chunks.
type Options struct {
	Mode Mode
	// ChunkSize is the most data copied between two looks at the context.
	ChunkSize int64
	// Sparse leaves the space the source allocated but never wrote
	// (fallocate) as holes in the copy, instead of allocating it the same
	// way: for copies that are never written to (snapshots), whose
	// unwritten space would only take room.
	Sparse bool
}

// Result tells how File copied.
type Result struct {
	Method Method
	// Size is the destination's size, Copied the data bytes moved (zero for
	// a reflink; holes are never moved). Preallocated is the space the
	// source had allocated but never written (fallocate), allocated in the
	// destination the same way instead of copied as zeros.
	Size, Copied, Preallocated int64
}

// File copies the regular file src to dst, which must not exist: an
// existing dst fails with an error matching fs.ErrExist and is left alone.
// dst gets src's permission bits and is durable (file and directory synced)
// when File returns nil. On any error, including a cancelled ctx, dst does
// not exist afterwards.
func File(ctx context.Context, src, dst string, opt Options) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	in, err := os.Open(src)
	if err != nil {
		return Result{}, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return Result{}, err
	}
	if !st.Mode().IsRegular() {
		return Result{}, fmt.Errorf("%s: %w", src, ErrNotRegular)
	}
	if _, err := os.Lstat(dst); err == nil {
		return Result{}, &fs.PathError{Op: "copy", Path: dst, Err: fs.ErrExist}
	}
	out, err := createTemp(dst, st.Mode().Perm())
	if err != nil {
		return Result{}, err
	}
	defer out.discard()
	c := newCopier(opt)
	method, m, err := c.copyFile(ctx, in, out.f, st.Size())
	if err != nil {
		return Result{}, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.f.Sync(); err != nil {
		return Result{}, err
	}
	if err := out.publish(); err != nil {
		return Result{}, err
	}
	return Result{Method: method, Size: st.Size(), Copied: m.copied, Preallocated: m.preallocated}, nil
}

// copier holds what one File or Tree call learns as it goes.
type copier struct {
	opt Options
	// noReflink is set once the destination filesystem refused a clone, so
	// that a tree does not ask again for every file.
	noReflink bool
	// noFallocate is set once the destination filesystem refused to
	// preallocate: unwritten ranges then stay holes.
	noFallocate bool
	buf         []byte
}

func newCopier(opt Options) *copier {
	if opt.ChunkSize <= 0 {
		opt.ChunkSize = DefaultChunkSize
	}
	return &copier{opt: opt}
}

// copyFile copies size bytes of in into the empty file out. It does not
// sync out.
func (c *copier) copyFile(ctx context.Context, in, out *os.File, size int64) (Method, moved, error) {
	if c.opt.Mode != CopyOnly && !c.noReflink {
		err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
		if err == nil {
			return Reflink, moved{}, nil
		}
		if !cloneUnsupported(err) {
			return 0, moved{}, fmt.Errorf("FICLONE: %w", err)
		}
		if c.opt.Mode == ReflinkOnly {
			return 0, moved{}, fmt.Errorf("%w: %v", ErrNoReflink, err)
		}
		c.noReflink = true
	}
	return c.copyExtents(ctx, in, out, size)
}

// cloneUnsupported tells the FICLONE errors that mean "not here" (another
// filesystem, no reflink support, a file the filesystem will not share) from
// real failures.
func cloneUnsupported(err error) bool {
	for _, e := range []error{unix.EOPNOTSUPP, unix.ENOTTY, unix.EXDEV, unix.EINVAL, unix.ENOSYS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
