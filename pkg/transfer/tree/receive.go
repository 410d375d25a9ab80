package tree

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

// receiver holds one Receive's state and buffers.
type receiver struct {
	ctx      context.Context
	r        *bufio.Reader
	root     *os.File
	lim      *stream.Limiter
	progress func(Stats, *Checkpoint) error
	h        hash.Hash
	buf      []byte // one frame's payload
	st       Stats
	next     int64 // the WireBytes of the next progress call
	// stack is the directories the stream is in, the root first; cur is
	// the descriptor of the last one (nil: not open yet, or the root).
	stack []level
	cur   *os.File
	// file is the regular file whose data frames may follow.
	file *openFile
	opt  Options
	// last is the last entry made, and lastKind what it is (a
	// checkpoint's Path and Kind).
	last     string
	lastKind byte
	// again is what a resumed stream sends again before it goes on: the
	// paths of the directories (and maybe the file) of its checkpoint,
	// the root first; nil once they came.
	again []string
}

type openFile struct {
	f   *os.File
	e   entry
	pos int64 // where its data may go on
}

// Receive reads Send's frames from r and makes the tree they describe in
// root, an open empty directory (the root entry's metadata goes to root
// itself). Every entry is made relative to a directory descriptor that
// was resolved beneath root without following a symlink; see the package
// comment for what is refused. After the end frame it checks the stream's
// hash and that nothing follows, gives the directories their modes and
// times, and syncs root's filesystem: only then is the tree complete. On
// an error what was made stays: the caller empties root before it starts
// over (fscopy.EmptyDir), or resumes from its last checkpoint.
//
// opt says the stream's format, as Send's. With opt.From, root holds what
// an attempt cut short made; what it made after the checkpoint is removed
// first, and a root that does not match the checkpoint fails (ErrResume).
// It waits on lim before each frame's payload and looks at ctx between
// frames; progress (may be nil) is called at each checkpoint, once it is
// verified and synced, or, in a stream without checkpoints, every 64 MiB
// of stream with a nil checkpoint. An error from progress stops the
// stream.
func Receive(ctx context.Context, r io.Reader, root *os.File, lim *stream.Limiter, opt Options, progress func(Stats, *Checkpoint) error) (Stats, error) {
	v, err := newReceiver(ctx, r, root, lim, opt)
	if err != nil {
		return Stats{}, err
	}
	v.progress = progress
	defer v.closeAll()
	for {
		if err := ctx.Err(); err != nil {
			return v.st, err
		}
		typ, p, err := v.frame()
		if err != nil {
			return v.st, err
		}
		if typ == frameEnd {
			if err := v.finishFile(); err != nil {
				return v.st, err
			}
			return v.st, v.end(p)
		}
		if err := v.dispatch(typ, p); err != nil {
			return v.st, err
		}
	}
}

// newReceiver checks root and opt, and readies root: empty, or pruned back
// to opt.From.
func newReceiver(ctx context.Context, r io.Reader, root *os.File, lim *stream.Limiter, opt Options) (*receiver, error) {
	if err := opt.check(); err != nil {
		return nil, err
	}
	v := &receiver{
		ctx:  ctx,
		r:    bufio.NewReaderSize(r, bufSize),
		root: root,
		lim:  lim,
		opt:  opt,
		h:    sha256.New(),
		buf:  make([]byte, MaxFrame),
		next: progressEvery,
	}
	if opt.From == nil {
		return v, checkEmpty(root)
	}
	if err := prune(root, opt.From); err != nil {
		return nil, err
	}
	v.again = sentAgain(opt.From)
	v.st.Entries, v.st.DataBytes = opt.From.Entries, opt.From.DataBytes
	return v, nil
}

// dispatch takes one frame other than the end frame.
func (v *receiver) dispatch(typ byte, p []byte) error {
	if typ != frameData && typ != frameCheckpoint {
		if err := v.finishFile(); err != nil {
			return err
		}
	}
	if v.again != nil && typ != frameEntry && typ != frameError {
		return fmt.Errorf("%w: a resumed stream sends a %q frame before the entries of its checkpoint", ErrResume, typ)
	}
	var err error
	switch {
	case typ == frameEntry:
		err = v.entry(p)
	case typ == frameLink:
		err = v.hardlink(p)
	case typ == frameData:
		err = v.data(p)
	case typ == frameCheckpoint && v.opt.Checkpoints:
		return v.checkpoint(p)
	case typ == frameError:
		msg := strings.ToValidUTF8(string(p[:min(len(p), maxErrorShown)]), "?")
		if v.again != nil {
			// It failed while it walked to the checkpoint: most likely
			// it found the tree otherwise; the next attempt starts over.
			return fmt.Errorf("%w: %w: %q", ErrResume, stream.ErrSender, msg)
		}
		return fmt.Errorf("%w: %q", stream.ErrSender, msg)
	default:
		return fmt.Errorf("%w: unknown frame type %#x at stream byte %d", errProtocol, typ, v.st.WireBytes)
	}
	if err == nil {
		err = v.report()
	}
	return err
}

// checkEmpty refuses a root that holds anything.
func checkEmpty(root *os.File) error {
	d, err := openDir(int(root.Fd()), ".")
	if err != nil {
		return fmt.Errorf("%w: %s: %v", stream.ErrInvalid, root.Name(), err)
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if len(names) > 0 {
		return fmt.Errorf("%w: %s is not empty", stream.ErrInvalid, root.Name())
	}
	return nil
}

// frame reads one frame, checking its length before it reads the payload
// (no claimed length is trusted), and adds all but the end frame to the
// hash.
func (v *receiver) frame() (byte, []byte, error) {
	var hdr [frameHdrLen]byte
	if _, err := io.ReadFull(v.r, hdr[:]); err != nil {
		return 0, nil, v.readErr("frame header", err)
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > MaxFrame {
		return 0, nil, fmt.Errorf("%w: frame of %d bytes at stream byte %d", errProtocol, n, v.st.WireBytes)
	}
	if err := v.lim.Wait(v.ctx, frameHdrLen+int(n)); err != nil {
		return 0, nil, err
	}
	p := v.buf[:n]
	if _, err := io.ReadFull(v.r, p); err != nil {
		return 0, nil, v.readErr("frame", err)
	}
	if hdr[0] != frameEnd && hdr[0] != frameCheckpoint {
		v.h.Write(hdr[:])
		v.h.Write(p)
	}
	v.st.WireBytes += int64(frameHdrLen) + int64(n)
	return hdr[0], p, nil
}

// readErr describes a failed read: a stream that stops before its end
// frame is io.ErrUnexpectedEOF.
func (v *receiver) readErr(what string, err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("reading %s at stream byte %d: %w", what, v.st.WireBytes, err)
}

func (v *receiver) report() error {
	if v.progress == nil || v.opt.Checkpoints || v.st.WireBytes < v.next {
		return nil
	}
	v.next = v.st.WireBytes + progressEvery
	return v.progress(v.st, nil)
}

// entry makes the entry a frame describes.
func (v *receiver) entry(p []byte) error {
	e, err := decodeEntry(p)
	if err != nil {
		return err
	}
	if v.again != nil {
		return v.takeBack(e)
	}
	if len(v.stack) == 0 {
		return v.rootEntry(e)
	}
	if err := checkPath(e.path); err != nil {
		return err
	}
	if err := v.count(e.typ()); err != nil {
		return err
	}
	dir, name := split(e.path)
	dfd, err := v.enter(dir, e.path)
	if err != nil {
		return err
	}
	switch e.typ() {
	case unix.S_IFDIR:
		err = v.mkdir(dfd, name, e)
	case unix.S_IFREG:
		err = v.create(dfd, name, e)
	case unix.S_IFLNK:
		err = unix.Symlinkat(e.link, dfd, name)
		if err == nil {
			err = setLinkMeta(dfd, name, &e)
		}
	case unix.S_IFIFO:
		err = unix.Mknodat(dfd, name, unix.S_IFIFO|0o600, 0)
		if err == nil {
			err = setFifoMeta(dfd, name, &e)
		}
	}
	v.last, v.lastKind = e.path, kindOf(e.typ())
	return made(e.path, err)
}

// made describes a failure to make the entry at p.
func made(p string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("%w: %q is sent twice", errProtocol, p)
	case errors.Is(err, errProtocol):
		return err
	}
	return fmt.Errorf("making %s: %w", p, err)
}

// rootEntry takes the first entry: the root's, whose owner and attributes
// go to root now, its mode and times at the end.
func (v *receiver) rootEntry(e entry) error {
	if e.path != "" || e.typ() != unix.S_IFDIR {
		return fmt.Errorf("%w: the stream begins with %q, not the root directory", errProtocol, e.path)
	}
	if err := ownAndLabel(int(v.root.Fd()), &e); err != nil {
		return fmt.Errorf("the root directory: %w", err)
	}
	v.stack = append(v.stack, level{entry: e})
	v.last, v.lastKind = "", KindDir
	return v.count(e.typ())
}

// count counts an entry of type typ, or a hard link (0).
func (v *receiver) count(typ uint32) error {
	if v.st.Entries >= MaxEntries {
		return fmt.Errorf("%w: more than %d entries", errProtocol, MaxEntries)
	}
	v.st.Entries++
	switch typ {
	case unix.S_IFDIR:
		v.st.Dirs++
	case unix.S_IFREG:
		v.st.Files++
	case unix.S_IFLNK:
		v.st.Symlinks++
	case unix.S_IFIFO:
		v.st.Fifos++
	case 0:
		v.st.HardLinks++
	}
	return nil
}

func (v *receiver) mkdir(dfd int, name string, e entry) error {
	if err := unix.Mkdirat(dfd, name, 0o700); err != nil {
		return err
	}
	d, err := openDir(dfd, name)
	if err != nil {
		return err
	}
	if err := ownAndLabel(int(d.Fd()), &e); err != nil {
		d.Close()
		return err
	}
	v.closeCur()
	v.stack = append(v.stack, level{entry: e})
	v.cur = d
	return nil
}

func (v *receiver) create(dfd int, name string, e entry) error {
	fd, err := unix.Openat(dfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), e.path)
	// The size first: what no data frame covers stays a hole.
	if err := f.Truncate(e.size); err != nil {
		f.Close()
		return err
	}
	v.file = &openFile{f: f, e: e}
	return nil
}

// data writes a data frame into the regular file of the last entry.
func (v *receiver) data(p []byte) error {
	f := v.file
	if f == nil {
		return fmt.Errorf("%w: data frame after no regular file", errProtocol)
	}
	if len(p) <= 8 {
		return fmt.Errorf("%w: data frame of %d bytes for %q", errProtocol, len(p), f.e.path)
	}
	off, n := binary.BigEndian.Uint64(p[:8]), uint64(len(p)-8)
	if off < uint64(f.pos) || off > uint64(f.e.size) || n > uint64(f.e.size)-off {
		return fmt.Errorf("%w: data [%d, %d) of %q outside [%d, %d)", errProtocol, off, off+n, f.e.path, f.pos, f.e.size)
	}
	if _, err := f.f.WriteAt(p[8:], int64(off)); err != nil {
		return fmt.Errorf("writing %s: %w", f.e.path, err)
	}
	f.pos = int64(off + n)
	v.st.DataBytes += int64(n)
	return nil
}

// finishFile gives the regular file of the last entry its metadata.
func (v *receiver) finishFile() error {
	f := v.file
	if f == nil {
		return nil
	}
	v.file = nil
	err := setOpenMeta(int(f.f.Fd()), &f.e)
	if cerr := f.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("making %s: %w", f.e.path, err)
	}
	return nil
}

// end checks the end frame and the hash, and that nothing follows; then it
// finishes every directory and syncs.
func (v *receiver) end(p []byte) error {
	sum := v.h.Sum(nil)
	if len(p) != endLen {
		return fmt.Errorf("%w: end frame of %d bytes", errProtocol, len(p))
	}
	if len(v.stack) == 0 || v.again != nil {
		return fmt.Errorf("%w: end frame before the root directory or the entries a resumed stream sends again", errProtocol)
	}
	if !bytes.Equal(sum, p[16:]) {
		return fmt.Errorf("%w: the tree's hash differs", errChecksum)
	}
	entries, data := binary.BigEndian.Uint64(p[0:8]), binary.BigEndian.Uint64(p[8:16])
	if entries != uint64(v.st.Entries) || data != uint64(v.st.DataBytes) {
		return fmt.Errorf("%w: end frame says %d entries and %d data bytes, received %d and %d",
			errProtocol, entries, data, v.st.Entries, v.st.DataBytes)
	}
	switch _, err := v.r.ReadByte(); {
	case err == nil:
		return fmt.Errorf("%w: bytes after the end frame", errProtocol)
	case !errors.Is(err, io.EOF):
		return fmt.Errorf("reading after the end frame: %w", err)
	}
	for len(v.stack) > 0 {
		if err := v.pop(); err != nil {
			return err
		}
	}
	if err := unix.Syncfs(int(v.root.Fd())); err != nil {
		return fmt.Errorf("syncfs: %w", err)
	}
	return nil
}
