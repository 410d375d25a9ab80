package tree

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/fscopy"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

type inode struct{ dev, ino uint64 }

// sender holds one Send's state and buffers.
type sender struct {
	ctx context.Context
	w   *bufio.Writer
	lim *stream.Limiter
	h   hash.Hash
	buf []byte // one data chunk, behind its offset
	enc []byte // one entry frame's payload
	st  Stats
	dev uint64 // the root's filesystem: the walk does not leave it
	// links maps an inode with several names to the path of the first
	// name sent.
	links map[inode]string
	opt   Options
	// cpEntries and cpWire are the counts at the last checkpoint (or
	// where the stream began to be sent).
	cpEntries, cpWire int64
	// dirs are the entries of the directories the walk is in, the root
	// first: a resumed stream sends them again.
	dirs []entry
	// skip is the checkpoint a resumed stream goes on after: until the
	// walk reaches it, nothing is sent.
	skip *Checkpoint
}

// Send writes the frames of the tree at root (an open directory) to w: its
// root, then every entry depth first in name order, then the end frame. It
// walks from directory descriptors and never follows a symlink; a
// directory on another filesystem is sent empty (like cp -x). Device nodes
// and sockets are sent as entries, which receivers refuse with the path
// (ErrUnsupported). It waits on lim before each frame and looks at ctx
// between frames. When reading fails, it tells the receiver in an error
// frame before returning the error. It does not close w. With
// opt.Checkpoints it sends a resumable stream, from after opt.From if set
// (see the package comment); a tree that no longer matches opt.From fails
// with ErrResume.
func Send(ctx context.Context, w io.Writer, root *os.File, lim *stream.Limiter, opt Options) (Stats, error) {
	if err := opt.check(); err != nil {
		return Stats{}, err
	}
	s := &sender{
		opt:   opt,
		skip:  opt.From,
		ctx:   ctx,
		w:     bufio.NewWriterSize(w, bufSize),
		lim:   lim,
		h:     sha256.New(),
		buf:   make([]byte, 8+dataChunk),
		links: map[inode]string{},
	}
	fd := int(root.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return s.st, s.fail(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return s.st, fmt.Errorf("%w: %s is not a directory", stream.ErrInvalid, root.Name())
	}
	s.dev = st.Dev
	xs, err := fdXattrs(fd)
	if err == nil {
		e := entryOf(&st, "", xs)
		s.dirs = append(s.dirs, e)
		err = s.entry(e)
	}
	if err == nil {
		err = s.walk(fd, "")
	}
	if err == nil && s.skip != nil {
		err = fmt.Errorf("%w: the source ends before %s", ErrResume, s.skip.describe())
	}
	if err == nil {
		err = s.end()
	}
	if err != nil {
		return s.st, s.fail(err)
	}
	return s.st, s.w.Flush()
}

func entryOf(st *unix.Stat_t, rel string, xs []xattr) entry {
	return entry{mode: st.Mode, uid: st.Uid, gid: st.Gid, atime: st.Atim, mtime: st.Mtim, path: rel, xattrs: xs}
}

// walk sends the entries of the directory dfd, whose path is rel.
func (s *sender) walk(dfd int, rel string) error {
	d, err := openDir(dfd, ".")
	if err != nil {
		return fmt.Errorf("%s: %w", displayPath(rel), err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", displayPath(rel), err)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		p := path.Join(rel, name)
		if len(p) > MaxPath {
			return fmt.Errorf("%s: a path longer than %d bytes is not copied between nodes", p, MaxPath)
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("lstat %s: %w", p, err)
		}
		if err := s.send(dfd, name, p, &st); err != nil {
			return err
		}
	}
	return nil
}

// send sends one entry, and what a directory or regular file holds.
func (s *sender) send(dfd int, name, rel string, st *unix.Stat_t) error {
	typ := st.Mode & unix.S_IFMT
	key := inode{st.Dev, st.Ino}
	if typ != unix.S_IFDIR && st.Nlink > 1 {
		if first, ok := s.links[key]; ok {
			return s.hardlink(rel, first)
		}
		s.links[key] = rel
	}
	switch typ {
	case unix.S_IFDIR:
		return s.dir(dfd, name, rel, st)
	case unix.S_IFREG:
		return s.regular(dfd, name, rel, st)
	}
	xs, err := entryXattrs(dfd, name)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	e := entryOf(st, rel, xs)
	if typ == unix.S_IFLNK {
		if e.link, err = readLink(dfd, name); err != nil {
			return fmt.Errorf("readlink %s: %w", rel, err)
		}
	}
	return s.entry(e)
}

func (s *sender) dir(dfd int, name, rel string, st *unix.Stat_t) error {
	d, err := openDir(dfd, name)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	defer d.Close()
	xs, err := fdXattrs(int(d.Fd()))
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	e := entryOf(st, rel, xs)
	s.dirs = append(s.dirs, e)
	defer func() { s.dirs = s.dirs[:len(s.dirs)-1] }()
	if err := s.entry(e); err != nil {
		return err
	}
	if st.Dev != s.dev {
		return nil
	}
	return s.walk(int(d.Fd()), rel)
}

func (s *sender) regular(dfd int, name, rel string, st *unix.Stat_t) error {
	// O_NONBLOCK: should the entry have become a fifo since the stat, the
	// open must not hang; the fstat below catches the swap.
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", rel, err)
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil {
		return fmt.Errorf("stat %s: %w", rel, err)
	}
	if now.Ino != st.Ino || now.Dev != st.Dev {
		return fmt.Errorf("%s changed while it was sent", rel)
	}
	xs, err := fdXattrs(fd)
	if err != nil {
		return fmt.Errorf("%s: %w", rel, err)
	}
	e := entryOf(&now, rel, xs)
	e.size = now.Size
	from, err := s.fileEntry(e, f)
	if err != nil {
		return err
	}
	return s.data(f, rel, now.Size, from)
}

// data sends the data extents of f, size bytes long, in chunks; those
// below from only count.
func (s *sender) data(f *os.File, rel string, size, from int64) error {
	it := fscopy.DataExtents(f, 0, size)
	for {
		a, b, ok, err := it.Next()
		if err != nil {
			return fmt.Errorf("extents of %s: %w", rel, err)
		}
		if !ok || a >= size {
			return nil
		}
		s.st.DataBytes += max(0, min(b, size, from)-a)
		for off := max(a, from); off < min(b, size); {
			if err := s.ctx.Err(); err != nil {
				return err
			}
			if err := s.checkpoint(); err != nil {
				return err
			}
			// Chunks end on chunk boundaries of the file, so writes are
			// aligned.
			end := min(b, size, (off/dataChunk+1)*dataChunk)
			p := s.buf[8 : 8+end-off]
			if n, err := f.ReadAt(p, off); n < len(p) {
				if err == nil || errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("reading %s at %d: %w", rel, off+int64(n), err)
			}
			binary.BigEndian.PutUint64(s.buf[:8], uint64(off))
			if err := s.frame(frameData, s.buf[:8+len(p)]); err != nil {
				return err
			}
			s.st.DataBytes += int64(len(p))
			off = end
		}
	}
}

func (s *sender) entry(e entry) error {
	s.enc = e.encode(s.enc[:0])
	if len(s.enc) > MaxFrame {
		return fmt.Errorf("%s: its extended attributes take more than %d bytes", displayPath(e.path), MaxFrame)
	}
	if s.skip != nil {
		s.count(e.typ())
		kind := byte(KindOther)
		if e.typ() == unix.S_IFDIR {
			kind = KindDir
		}
		return s.skipped(e.path, kind, 0)
	}
	if err := s.checkpoint(); err != nil {
		return err
	}
	s.count(e.typ())
	return s.frame(frameEntry, s.enc)
}

func (s *sender) count(typ uint32) {
	s.st.Entries++
	switch typ {
	case unix.S_IFDIR:
		s.st.Dirs++
	case unix.S_IFREG:
		s.st.Files++
	case unix.S_IFLNK:
		s.st.Symlinks++
	case unix.S_IFIFO:
		s.st.Fifos++
	}
}

func (s *sender) hardlink(rel, first string) error {
	if s.skip == nil {
		if err := s.checkpoint(); err != nil {
			return err
		}
	}
	s.st.Entries++
	s.st.HardLinks++
	if s.skip != nil {
		return s.skipped(rel, KindOther, 0)
	}
	s.enc = encodeLink(s.enc[:0], rel, first)
	return s.frame(frameLink, s.enc)
}

func (s *sender) end() error {
	var p [endLen]byte
	binary.BigEndian.PutUint64(p[0:8], uint64(s.st.Entries))
	binary.BigEndian.PutUint64(p[8:16], uint64(s.st.DataBytes))
	s.h.Sum(p[16:16])
	return s.frame(frameEnd, p[:])
}

// checkpoint sends a checkpoint frame when one is due: the counts so far
// and the hash of the frames since the last, which it starts anew.
func (s *sender) checkpoint() error {
	bytes, entries := s.opt.every()
	if !s.opt.Checkpoints || (s.st.WireBytes-s.cpWire < bytes && s.st.Entries-s.cpEntries < entries) {
		return nil
	}
	var p [endLen]byte
	binary.BigEndian.PutUint64(p[0:8], uint64(s.st.Entries))
	binary.BigEndian.PutUint64(p[8:16], uint64(s.st.DataBytes))
	s.h.Sum(p[16:16])
	if err := s.frame(frameCheckpoint, p[:]); err != nil {
		return err
	}
	s.h.Reset()
	s.cpEntries, s.cpWire = s.st.Entries, s.st.WireBytes
	return nil
}

// frame sends one frame and adds it to the hash (the end frame's and a
// checkpoint's own bytes come after the hash they carry, and change
// nothing).
func (s *sender) frame(typ byte, p []byte) error {
	var hdr [frameHdrLen]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(p)))
	if err := s.lim.Wait(s.ctx, frameHdrLen+len(p)); err != nil {
		return err
	}
	s.h.Write(hdr[:])
	s.h.Write(p)
	if _, err := s.w.Write(hdr[:]); err != nil {
		return stream.WriteError{Err: err}
	}
	if _, err := s.w.Write(p); err != nil {
		return stream.WriteError{Err: err}
	}
	s.st.WireBytes += int64(frameHdrLen + len(p))
	return nil
}

// fail tries to tell the receiver why the stream stops, and returns err.
func (s *sender) fail(err error) error {
	msg, ok, err := stream.FailureMessage(err, maxErrorShown)
	if !ok {
		return err
	}
	var hdr [frameHdrLen]byte
	hdr[0] = frameError
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(msg)))
	// The error is what matters; these writes are a courtesy.
	s.w.Write(hdr[:])
	s.w.WriteString(msg)
	s.w.Flush()
	return err
}

func readLink(dfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// openDir opens the directory name of dfd without following a symlink.
func openDir(dfd int, name string) (*os.File, error) {
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), name), nil
}

// displayPath names a path of the tree in messages.
func displayPath(p string) string {
	if p == "" {
		return "the root directory"
	}
	return p
}
