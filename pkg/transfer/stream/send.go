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
	"unicode/utf8"
)

// sender holds one Send's buffers, reused for every frame.
type sender struct {
	ctx   context.Context
	w     *bufio.Writer
	src   BlockSource
	lim   *Limiter
	buf   []byte // one chunk of source data
	zeros []byte // one block of zeros to compare with
	hdr   [1 + maxHdrLen]byte
	h     hash.Hash
	st    Stats
}

// Send writes the frames of src's data in [from, size) to w, segment by
// segment (seg bytes each, the last shorter), and an end frame. from is the
// receiver's committed position: a multiple of seg, or size. Aligned 4 KiB
// blocks of zeros are not sent. It waits on lim before each frame and looks
// at ctx between frames. When reading fails, it tells the receiver in an
// error frame before returning the error. It does not close w.
func Send(ctx context.Context, w io.Writer, src BlockSource, size, from, seg int64, lim *Limiter) (Stats, error) {
	if err := checkRange(size, from, seg); err != nil {
		return Stats{}, err
	}
	s := newSender(ctx, w, src, lim)
	err := s.run(size, from, seg, s.segment)
	return s.st, err
}

// newSender makes a sender of src's frames to w.
func newSender(ctx context.Context, w io.Writer, src BlockSource, lim *Limiter) *sender {
	return &sender{
		ctx:   ctx,
		w:     bufio.NewWriterSize(w, bufSize),
		src:   src,
		lim:   lim,
		buf:   make([]byte, MaxFrame),
		zeros: make([]byte, MaxFrame),
		h:     crc32.New(castagnoli),
	}
}

// run sends [from, size) segment by segment with segment, then the end
// frame.
func (s *sender) run(size, from, seg int64, segment func(start, end int64) error) error {
	for start := from; start < size; {
		end := segmentEnd(start, size, seg)
		if err := segment(start, end); err != nil {
			return s.fail(err)
		}
		start = end
	}
	return s.end(size)
}

// end sends the end frame and flushes.
func (s *sender) end(size int64) error {
	s.hdr[0] = frameEnd
	binary.BigEndian.PutUint64(s.hdr[1:9], uint64(size))
	binary.BigEndian.PutUint64(s.hdr[9:17], uint64(s.st.DataBytes))
	if err := s.frame(s.hdr[:1+endLen]); err != nil {
		return s.fail(err)
	}
	return s.w.Flush()
}

// WriteError marks the errors of writing to the receiver: there is no
// telling it about them. The tree format's sender uses it too.
type WriteError struct{ Err error }

func (e WriteError) Error() string { return e.Err.Error() }
func (e WriteError) Unwrap() error { return e.Err }

// FailureMessage is what a sender that stops on err tells its receiver:
// ok is false when err is a WriteError (the stream is gone; the returned
// error says so), else msg is err's message, valid UTF-8 and at most limit
// bytes, cut at a rune's start.
func FailureMessage(err error, limit int) (msg string, ok bool, _ error) {
	var we WriteError
	if errors.As(err, &we) {
		return "", false, fmt.Errorf("sending: %w", we.Err)
	}
	msg = strings.ToValidUTF8(err.Error(), "?")
	if len(msg) > limit {
		n := limit
		for !utf8.RuneStart(msg[n]) {
			n--
		}
		msg = msg[:n]
	}
	return msg, true, err
}

// fail tries to tell the receiver why the stream stops, and returns err.
func (s *sender) fail(err error) error {
	msg, ok, err := FailureMessage(err, maxErrorSent)
	if !ok {
		return err
	}
	var hdr [1 + errHdrLen]byte
	hdr[0] = frameError
	binary.BigEndian.PutUint16(hdr[1:], uint16(len(msg)))
	// The error is what matters; these writes are a courtesy.
	s.w.Write(hdr[:])
	s.w.WriteString(msg)
	s.w.Flush()
	return err
}

// segment sends the data of [start, end) and the segment frame.
func (s *sender) segment(start, end int64) error {
	s.h.Reset()
	for pos := start; pos < end; {
		if err := s.ctx.Err(); err != nil {
			return err
		}
		e, ok, err := s.src.NextData(pos)
		if err != nil {
			return fmt.Errorf("finding data at %d: %w", pos, err)
		}
		a, b := max(e.Off, pos), min(e.End(), end)
		if !ok || a >= end {
			break
		}
		if b <= a {
			// A source bug; looping on it would never end.
			return fmt.Errorf("source returned extent [%d, %d) for data after %d", e.Off, e.End(), pos)
		}
		if err := s.extent(a, b); err != nil {
			return err
		}
		pos = b
	}
	s.hdr[0] = frameSegment
	binary.BigEndian.PutUint64(s.hdr[1:9], uint64(end))
	s.h.Sum(s.hdr[9:9])
	if err := s.frame(s.hdr[:1+segmentLen]); err != nil {
		return err
	}
	s.st.Segments++
	return nil
}

// extent sends the data of [a, b), read in chunks of up to MaxFrame that
// end on block boundaries where they can.
func (s *sender) extent(a, b int64) error {
	for off := a; off < b; {
		c := off + min(b-off, MaxFrame)
		if aligned := c / blockSize * blockSize; c < b && aligned > off {
			c = aligned
		}
		p := s.buf[:c-off]
		n, err := s.src.ReadAt(p, off)
		if n < len(p) {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("reading source at %d: %w", off+int64(n), err)
		}
		if err := s.chunk(p, off); err != nil {
			return err
		}
		off = c
	}
	return nil
}

// chunk sends p, the source's bytes at off, as data frames of its runs of
// blocks that are not all zeros.
func (s *sender) chunk(p []byte, off int64) error {
	run := -1 // where the current run of nonzero blocks starts in p
	for i := 0; i < len(p); {
		j := min(len(p), i+blockSize-int((off+int64(i))%blockSize))
		if !bytes.Equal(p[i:j], s.zeros[:j-i]) {
			if run < 0 {
				run = i
			}
		} else {
			s.st.ZeroBytesSkipped += int64(j - i)
			if run >= 0 {
				if err := s.data(p[run:i], off+int64(run)); err != nil {
					return err
				}
				run = -1
			}
		}
		i = j
	}
	if run >= 0 {
		return s.data(p[run:], off+int64(run))
	}
	return nil
}

// data sends one data frame and adds it to the segment's hash.
func (s *sender) data(p []byte, off int64) error {
	putDataHeader(s.hdr[:], off, len(p))
	if err := s.lim.Wait(s.ctx, 1+dataHdrLen+len(p)); err != nil {
		return err
	}
	s.h.Write(s.hdr[1 : 1+dataHdrLen])
	s.h.Write(p)
	if _, err := s.w.Write(s.hdr[:1+dataHdrLen]); err != nil {
		return WriteError{Err: err}
	}
	if _, err := s.w.Write(p); err != nil {
		return WriteError{Err: err}
	}
	s.st.DataBytes += int64(len(p))
	s.st.WireBytes += int64(1 + dataHdrLen + len(p))
	return nil
}

// frame sends a frame without payload.
func (s *sender) frame(b []byte) error {
	if err := s.lim.Wait(s.ctx, len(b)); err != nil {
		return err
	}
	if _, err := s.w.Write(b); err != nil {
		return WriteError{Err: err}
	}
	s.st.WireBytes += int64(len(b))
	return nil
}
