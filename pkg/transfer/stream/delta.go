package stream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// A delta stream turns a target that holds base into a copy of cur, where
// base is an earlier state of cur (a snapshot of it) that the target
// already received. Only what differs is sent: cur's blocks that differ
// from base's as data frames, and where cur reads zeros but base does not,
// zero frames. What no frame covers is left as it is. Two more frames:
//
//	'Z' zero:          u64 offset, u64 length
//	'C' checked end:   u64 end offset, u32 CRC-32C of the frames,
//	                   u32 CRC-32C of cur's whole content in the segment
//
// A delta segment ends with 'C', never 'S': the receiver checks the frames'
// checksum as in a full stream, then reads the segment back from its target
// and checks it against the content checksum, so a target that did not
// hold base (or lost a write) fails before it is synced and committed.
// Applying a segment twice is harmless, so a delta resumes at the first
// segment not committed, like a full stream.

const (
	frameZero    = 'Z'
	frameChecked = 'C'

	zeroLen    = 8 + 8
	checkedLen = 8 + 4 + 4
)

// SendDelta writes the frames that turn base (baseSize bytes; what lies
// beyond reads as zeros) into cur (size bytes), from segment boundary from
// on, and an end frame. It reads base and cur wherever either holds data.
// Otherwise it behaves as Send.
func SendDelta(ctx context.Context, w io.Writer, cur, base BlockSource, size, baseSize, from, seg int64, lim *Limiter) (Stats, error) {
	if err := checkRange(size, from, seg); err != nil {
		return Stats{}, err
	}
	if baseSize < 0 {
		return Stats{}, fmt.Errorf("%w: base size %d", ErrInvalid, baseSize)
	}
	d := &deltaSender{sender: newSender(ctx, w, cur, lim), base: base, baseSize: baseSize, bbuf: make([]byte, MaxFrame)}
	err := d.run(size, from, seg, d.segment)
	return d.st, err
}

// deltaSender is a sender with a base to compare with.
type deltaSender struct {
	*sender
	base     BlockSource
	baseSize int64
	bbuf     []byte
	content  uint32 // CRC-32C of the segment's content so far
}

// segment sends what differs in [start, end) and the checked end frame.
func (d *deltaSender) segment(start, end int64) error {
	d.h.Reset()
	d.content = 0
	for pos := start; pos < end; {
		if err := d.ctx.Err(); err != nil {
			return err
		}
		a, b, err := d.nextChunk(pos, end)
		if err != nil {
			return err
		}
		d.feedZeros(a - pos)
		if a >= end {
			break
		}
		if err := d.chunk(a, b); err != nil {
			return err
		}
		pos = b
	}
	d.hdr[0] = frameChecked
	binary.BigEndian.PutUint64(d.hdr[1:9], uint64(end))
	d.h.Sum(d.hdr[9:9])
	binary.BigEndian.PutUint32(d.hdr[13:17], d.content)
	if err := d.frame(d.hdr[:1+checkedLen]); err != nil {
		return err
	}
	d.st.Segments++
	return nil
}

// nextChunk finds the next range from pos on, before end, where cur or
// base holds data: [a, b), at most MaxFrame long. a is end when there is
// none.
func (d *deltaSender) nextChunk(pos, end int64) (a, b int64, err error) {
	var r [2]Extent // cur's and base's next data, clipped; Len 0: none
	for i, x := range []struct {
		src   BlockSource
		limit int64
	}{{d.src, end}, {d.base, min(end, d.baseSize)}} {
		if pos >= x.limit {
			continue
		}
		e, ok, err := x.src.NextData(pos)
		if err != nil {
			return 0, 0, fmt.Errorf("finding data at %d: %w", pos, err)
		}
		if lo, hi := max(e.Off, pos), min(e.End(), x.limit); ok && lo < hi {
			r[i] = Extent{Off: lo, Len: hi - lo}
		}
	}
	if r[0].Len == 0 || (r[1].Len > 0 && r[1].Off < r[0].Off) {
		r[0], r[1] = r[1], r[0]
	}
	if r[0].Len == 0 {
		return end, end, nil
	}
	a, b = r[0].Off, r[0].End()
	if r[1].Len > 0 && r[1].Off <= b {
		b = max(b, r[1].End())
	}
	b = min(b, a+MaxFrame)
	if c := b / blockSize * blockSize; b < end && c > a {
		b = c
	}
	return a, b, nil
}

// feedZeros adds n zero bytes to the segment's content checksum.
func (d *deltaSender) feedZeros(n int64) {
	for n > 0 {
		k := min(n, int64(len(d.zeros)))
		d.content = crc32.Update(d.content, castagnoli, d.zeros[:k])
		n -= k
	}
}

// read fills p with src's bytes at off, zeros past limit.
func read(src BlockSource, p []byte, off, limit int64) error {
	n := 0
	if off < limit {
		want := int(min(int64(len(p)), limit-off))
		k, err := src.ReadAt(p[:want], off)
		if k < want {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("reading at %d: %w", off+int64(k), err)
		}
		n = want
	}
	clear(p[n:])
	return nil
}

// chunk compares cur and base in [a, b), block by block, and sends the runs
// of blocks that differ: data where cur has any, else zero frames.
func (d *deltaSender) chunk(a, b int64) error {
	p, q := d.buf[:b-a], d.bbuf[:b-a]
	if err := read(d.src, p, a, b); err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if err := read(d.base, q, a, d.baseSize); err != nil {
		return fmt.Errorf("base: %w", err)
	}
	d.content = crc32.Update(d.content, castagnoli, p)
	var kind byte // of the run being gathered: 0, frameData or frameZero
	run := 0
	flush := func(i int) error {
		defer func() { kind = 0 }()
		switch kind {
		case frameData:
			return d.data(p[run:i], a+int64(run))
		case frameZero:
			return d.zeroFrame(a+int64(run), int64(i-run))
		}
		return nil
	}
	for i := 0; i < len(p); {
		j := min(len(p), i+blockSize-int((a+int64(i))%blockSize))
		var k byte
		switch {
		case bytes.Equal(p[i:j], q[i:j]):
			d.st.UnchangedBytes += int64(j - i)
		case bytes.Equal(p[i:j], d.zeros[:j-i]):
			k = frameZero
		default:
			k = frameData
		}
		if k != kind {
			if err := flush(i); err != nil {
				return err
			}
			kind, run = k, i
		}
		i = j
	}
	return flush(len(p))
}

// zeroFrame sends a zero frame and adds it to the segment's hash.
func (d *deltaSender) zeroFrame(off, n int64) error {
	d.hdr[0] = frameZero
	binary.BigEndian.PutUint64(d.hdr[1:9], uint64(off))
	binary.BigEndian.PutUint64(d.hdr[9:17], uint64(n))
	d.h.Write(d.hdr[1 : 1+zeroLen])
	if err := d.frame(d.hdr[:1+zeroLen]); err != nil {
		return err
	}
	d.st.ZeroedBytes += n
	return nil
}
