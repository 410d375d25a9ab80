package stream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"strings"
	"sync"
)

// receiver holds one Receive's state and buffers, reused for every frame.
type receiver struct {
	ctx    context.Context
	r      *bufio.Reader
	dst    BlockTarget
	lim    *Limiter
	commit func(next int64) error
	size   int64
	seg    int64
	// The segment being received is [start, end); the target holds this
	// stream's bytes (data or zeros) in [start, pos).
	start, end, pos int64
	buf             []byte // one frame's payload
	hdr             [maxHdrLen]byte
	sum             [crc32.Size]byte
	h               hash.Hash
	st              Stats
	// delta: the target holds the base of a delta stream (ReceiveDelta),
	// which reads the segments back from it.
	delta  bool
	reader io.ReaderAt
	// committer syncs and commits the segments verified so far.
	c *committer
}

// CommitLag is how many segments past its last durable commit a receiver
// may have written: the segment it receives, one waiting to be synced and
// one being synced. A caller that records how far attempts may have
// written (so that a retry zeroes the gaps of what it rewrites) records
// the commit plus this many segments.
const CommitLag = 3

// committer syncs the target and commits each segment the receiver has
// checked, in order, on a goroutine of its own: the socket is read while
// the last segment reaches the disk, instead of the sender stalling for
// each segment's sync.
type committer struct {
	dst    BlockTarget
	commit func(next int64) error
	ends   chan int64 // one waits here while one is synced: CommitLag
	done   chan struct{}
	mu     sync.Mutex
	err    error
	// committed counts the segments synced and committed (read after done)
	committed int
}

func startCommitter(dst BlockTarget, commit func(next int64) error) *committer {
	c := &committer{dst: dst, commit: commit, ends: make(chan int64, 1), done: make(chan struct{})}
	go c.run()
	return c
}

func (c *committer) run() {
	defer close(c.done)
	for end := range c.ends {
		if c.failure() != nil {
			continue // nothing after a failure is committed
		}
		err := c.dst.Sync()
		if err != nil {
			err = fmt.Errorf("syncing target: %w", err)
		} else if c.commit != nil {
			if err = c.commit(end); err != nil {
				err = fmt.Errorf("committing %d: %w", end, err)
			}
		}
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			continue
		}
		c.committed++
	}
}

func (c *committer) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// add queues the end of a checked segment; it waits while one is queued.
func (c *committer) add(ctx context.Context, end int64) error {
	if err := c.failure(); err != nil {
		return err
	}
	select {
	case c.ends <- end:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close commits what is queued and returns the first failure.
func (c *committer) close() error {
	close(c.ends)
	<-c.done
	return c.failure()
}

// Receive reads Send's frames from r into dst: content of size bytes, from
// the target's committed position from (a multiple of seg, or size). In each
// segment it writes the data frames, zeroes what they leave out (a resumed
// segment may hold bytes of an earlier attempt) and checks the segment's
// hash; then, on a goroutine of its own while the next segments arrive,
// dst is synced and commit called with the segment's end, for the caller
// to persist (commit may be nil), segment after segment in order, at most
// CommitLag segments behind what has been written. A commit error stops
// the stream. Receive returns once every checked segment is committed.
//
// It returns after the end frame and the end of r, so the sender closes or
// half-closes (tls.Conn.CloseWrite) its side after Send; anything after the
// end frame is ErrProtocol. It waits on lim before each frame's payload and
// looks at ctx between frames; a read that blocks is the caller's to
// interrupt (a deadline, or closing the connection when ctx is done).
func Receive(ctx context.Context, r io.Reader, dst BlockTarget, size, from, seg int64, lim *Limiter, commit func(next int64) error) (Stats, error) {
	if err := checkRange(size, from, seg); err != nil {
		return Stats{}, err
	}
	return newReceiver(ctx, r, dst, size, seg, lim, commit).run(from)
}

// DeltaTarget is where a delta is applied: it is read back to check each
// segment.
type DeltaTarget interface {
	BlockTarget
	io.ReaderAt
}

// ReceiveDelta applies SendDelta's frames to dst, which holds the delta's
// base (grown to size, if it was smaller, with zeros): data frames and
// zero frames are written, what they leave out is kept. Each segment's
// frames are checked against their checksum, then the segment is read
// back from dst and checked against the content checksum before dst is
// synced and commit is called. Otherwise it behaves as Receive.
func ReceiveDelta(ctx context.Context, r io.Reader, dst DeltaTarget, size, from, seg int64, lim *Limiter, commit func(next int64) error) (Stats, error) {
	if err := checkRange(size, from, seg); err != nil {
		return Stats{}, err
	}
	v := newReceiver(ctx, r, dst, size, seg, lim, commit)
	v.delta, v.reader = true, dst
	return v.run(from)
}

func newReceiver(ctx context.Context, r io.Reader, dst BlockTarget, size, seg int64, lim *Limiter, commit func(next int64) error) *receiver {
	return &receiver{
		ctx:    ctx,
		r:      bufio.NewReaderSize(r, bufSize),
		dst:    dst,
		lim:    lim,
		commit: commit,
		size:   size,
		seg:    seg,
		buf:    make([]byte, MaxFrame),
		h:      crc32.New(castagnoli),
	}
}

// run reads frames until the end frame, from the segment at from on, and
// returns once every segment checked is synced and committed.
func (v *receiver) run(from int64) (Stats, error) {
	v.c = startCommitter(v.dst, v.commit)
	st, err := v.frames(from)
	if cerr := v.c.close(); err == nil {
		err = cerr
	}
	st.Segments = v.c.committed
	return st, err
}

// frames reads frames until the end frame.
func (v *receiver) frames(from int64) (Stats, error) {
	v.startSegment(from)
	for {
		if err := v.ctx.Err(); err != nil {
			return v.st, err
		}
		t, err := v.r.ReadByte()
		if err != nil {
			return v.st, v.readErr("frame", err)
		}
		switch t {
		case frameData:
			err = v.data()
		case frameSegment:
			if v.delta {
				err = fmt.Errorf("%w: a full segment's end in a delta stream", ErrProtocol)
				break
			}
			err = v.segment()
		case frameZero:
			if !v.delta {
				err = fmt.Errorf("%w: a zero frame in a full stream", ErrProtocol)
				break
			}
			err = v.zeroFrame()
		case frameChecked:
			if !v.delta {
				err = fmt.Errorf("%w: a delta segment's end in a full stream", ErrProtocol)
				break
			}
			err = v.segment()
		case frameError:
			err = v.senderError()
		case frameEnd:
			return v.st, v.finish()
		default:
			err = fmt.Errorf("%w: unknown frame type %#x at stream byte %d", ErrProtocol, t, v.st.WireBytes)
		}
		if err != nil {
			return v.st, err
		}
	}
}

func (v *receiver) startSegment(start int64) {
	v.start, v.pos = start, start
	v.end = start
	if start < v.size {
		v.end = segmentEnd(start, v.size, v.seg)
	}
	v.h.Reset()
}

// readErr describes a failed read of a frame's part: a stream that stops
// before its end frame is io.ErrUnexpectedEOF.
func (v *receiver) readErr(what string, err error) error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("reading %s at stream byte %d (segment [%d, %d)): %w", what, v.st.WireBytes, v.start, v.end, err)
}

// readFull reads n bytes of the current frame into the start of b.
func (v *receiver) readFull(b []byte, what string) error {
	if _, err := io.ReadFull(v.r, b); err != nil {
		return v.readErr(what, err)
	}
	return nil
}

// data checks a data frame's header against the segment before it reads
// the payload (so that no claimed length is trusted), then writes it.
func (v *receiver) data() error {
	h := v.hdr[:dataHdrLen]
	if err := v.readFull(h, "data frame header"); err != nil {
		return err
	}
	off, n := binary.BigEndian.Uint64(h[0:8]), binary.BigEndian.Uint32(h[8:12])
	switch {
	case n == 0 || n > MaxFrame:
		return fmt.Errorf("%w: data frame length %d at offset %d", ErrProtocol, n, off)
	case off < uint64(v.pos) || off > uint64(v.end) || off+uint64(n) > uint64(v.end):
		// Before pos: out of order or overlapping. The end of a segment
		// is also within [0, size).
		return fmt.Errorf("%w: data frame [%d, %d) outside [%d, %d) of segment [%d, %d)",
			ErrProtocol, off, off+uint64(n), v.pos, v.end, v.start, v.end)
	}
	if err := v.lim.Wait(v.ctx, 1+dataHdrLen+int(n)); err != nil {
		return err
	}
	p := v.buf[:n]
	if err := v.readFull(p, "data"); err != nil {
		return err
	}
	v.h.Write(h)
	v.h.Write(p)
	at := int64(off)
	if !v.delta {
		if err := v.zero(v.pos, at); err != nil {
			return err
		}
	}
	if _, err := v.dst.WriteAt(p, at); err != nil {
		return fmt.Errorf("writing target at %d: %w", at, err)
	}
	v.pos = at + int64(n)
	v.st.DataBytes += int64(n)
	v.st.WireBytes += int64(1 + dataHdrLen + int(n))
	return nil
}

// zero zeroes [a, b) of the target, which no data frame covers.
func (v *receiver) zero(a, b int64) error {
	if a >= b {
		return nil
	}
	if err := v.dst.Zero(a, b-a); err != nil {
		return fmt.Errorf("zeroing target [%d, %d): %w", a, b, err)
	}
	v.st.ZeroBytesSkipped += b - a
	return nil
}

// segment checks a segment frame and commits the segment.
// A delta's segment frame also carries the content's checksum, checked by
// reading the segment back.
func (v *receiver) segment() error {
	n := segmentLen
	if v.delta {
		n = checkedLen
	}
	h := v.hdr[:n]
	if err := v.readFull(h, "segment frame"); err != nil {
		return err
	}
	if end := binary.BigEndian.Uint64(h[0:8]); v.start >= v.size || end != uint64(v.end) {
		return fmt.Errorf("%w: segment end %d, want %d", ErrProtocol, end, v.end)
	}
	if err := v.lim.Wait(v.ctx, 1+n); err != nil {
		return err
	}
	v.st.WireBytes += 1 + int64(n)
	if !bytes.Equal(v.h.Sum(v.sum[:0]), h[8:12]) {
		return fmt.Errorf("%w: segment [%d, %d)", ErrChecksum, v.start, v.end)
	}
	if v.delta {
		if err := v.checkContent(binary.BigEndian.Uint32(h[12:16])); err != nil {
			return err
		}
	} else if err := v.zero(v.pos, v.end); err != nil {
		return err
	}
	if err := v.c.add(v.ctx, v.end); err != nil {
		return err
	}
	v.startSegment(v.end)
	return nil
}

// finish checks the end frame and that nothing follows it.
func (v *receiver) finish() error {
	h := v.hdr[:endLen]
	if err := v.readFull(h, "end frame"); err != nil {
		return err
	}
	v.st.WireBytes += 1 + endLen
	size, data := binary.BigEndian.Uint64(h[0:8]), binary.BigEndian.Uint64(h[8:16])
	switch {
	case v.start < v.size:
		return fmt.Errorf("%w: end frame in segment [%d, %d) of %d bytes", ErrProtocol, v.start, v.end, v.size)
	case size != uint64(v.size) || data != uint64(v.st.DataBytes):
		return fmt.Errorf("%w: end frame says %d bytes with %d sent, want %d with %d",
			ErrProtocol, size, data, v.size, v.st.DataBytes)
	}
	switch _, err := v.r.ReadByte(); {
	case err == nil:
		return fmt.Errorf("%w: bytes after the end frame", ErrProtocol)
	case !errors.Is(err, io.EOF):
		return fmt.Errorf("reading after the end frame: %w", err)
	}
	return nil
}

// senderError reads an error frame and returns it as ErrSender.
func (v *receiver) senderError() error {
	h := v.hdr[:errHdrLen]
	if err := v.readFull(h, "error frame"); err != nil {
		return err
	}
	// At most 64 KiB, which the frame buffer holds.
	p := v.buf[:binary.BigEndian.Uint16(h)]
	if err := v.readFull(p, "error message"); err != nil {
		return err
	}
	msg := strings.ToValidUTF8(string(p[:min(len(p), maxErrorSent)]), "?")
	return fmt.Errorf("%w: %q", ErrSender, msg)
}

// zeroFrame checks a zero frame against the segment, then zeroes its range.
func (v *receiver) zeroFrame() error {
	h := v.hdr[:zeroLen]
	if err := v.readFull(h, "zero frame"); err != nil {
		return err
	}
	off, n := binary.BigEndian.Uint64(h[0:8]), binary.BigEndian.Uint64(h[8:16])
	if n == 0 || off < uint64(v.pos) || off > uint64(v.end) || n > uint64(v.end)-off {
		return fmt.Errorf("%w: zero frame at %d of %d bytes outside [%d, %d) of segment [%d, %d)",
			ErrProtocol, off, n, v.pos, v.end, v.start, v.end)
	}
	if err := v.lim.Wait(v.ctx, 1+zeroLen); err != nil {
		return err
	}
	v.h.Write(h)
	if err := v.dst.Zero(int64(off), int64(n)); err != nil {
		return fmt.Errorf("zeroing target [%d, %d): %w", off, off+n, err)
	}
	v.pos = int64(off + n)
	v.st.ZeroedBytes += int64(n)
	v.st.WireBytes += 1 + zeroLen
	return nil
}

// checkContent reads the segment back from the target and compares its
// CRC-32C with the sender's.
func (v *receiver) checkContent(want uint32) error {
	var sum uint32
	for off := v.start; off < v.end; {
		p := v.buf[:min(int64(len(v.buf)), v.end-off)]
		if k, err := v.reader.ReadAt(p, off); k < len(p) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("reading the target back at %d: %w", off+int64(k), err)
		}
		sum = crc32.Update(sum, castagnoli, p)
		off += int64(len(p))
	}
	if sum != want {
		return fmt.Errorf("%w: segment [%d, %d) of the target does not hold what the source has after the delta (did the target hold the base?)", ErrChecksum, v.start, v.end)
	}
	return nil
}
