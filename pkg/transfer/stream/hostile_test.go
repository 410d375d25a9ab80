package stream

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

// The content of the hostile streams: the last segment ends off a block
// boundary.
const (
	hostileSeg  = 64 * kib
	hostileSize = 3*hostileSeg - 1000
)

type hostileCase struct {
	name    string
	from    int64
	stream  func(f *frames) *frames
	want    error
	wantMsg string // in the error's text
}

func hostileCases() []hostileCase {
	const seg, size = hostileSeg, hostileSize
	blk := bytes.Repeat([]byte{0xaa}, int(4*kib))
	all := func(f *frames) *frames { return f.segment(seg).segment(2 * seg).segment(size) }
	return []hostileCase{
		{"well formed", 0, func(f *frames) *frames {
			return all(f.data(4*kib, blk)).end(size, 4*kib)
		}, nil, ""},
		{"well formed, resumed", seg, func(f *frames) *frames {
			return f.data(seg, blk).segment(2*seg).data(size-8, blk[:8]).segment(size).end(size, 4*kib+8)
		}, nil, ""},
		{"unknown frame type", 0, func(f *frames) *frames { return f.raw('Q') }, ErrProtocol, "unknown"},
		{"zero frame in a full stream", 0, func(f *frames) *frames { return f.zero(0, 4*kib) }, ErrProtocol, "zero frame in a full stream"},
		{"delta segment end in a full stream", 0, func(f *frames) *frames { return f.checked(seg, 0) }, ErrProtocol, "delta segment"},
		{"frame type zero", 0, func(f *frames) *frames { return f.raw(0) }, ErrProtocol, "unknown"},
		{"empty data frame", 0, func(f *frames) *frames { return f.dataLen(0, 0, nil) }, ErrProtocol, "length 0"},
		{"data frame over MaxFrame", 0, func(f *frames) *frames { return f.dataLen(0, MaxFrame+1, blk) }, ErrProtocol, "length"},
		{"data frame of 4 GiB", 0, func(f *frames) *frames { return f.dataLen(0, 1<<32-1, blk) }, ErrProtocol, "length"},
		{"overlapping data", 0, func(f *frames) *frames { return f.data(0, blk).data(2*kib, blk) }, ErrProtocol, "outside"},
		{"repeated data", 0, func(f *frames) *frames { return f.data(0, blk).data(0, blk) }, ErrProtocol, "outside"},
		{"data out of order", 0, func(f *frames) *frames { return f.data(8*kib, blk).data(0, blk) }, ErrProtocol, "outside"},
		{"data in the next segment", 0, func(f *frames) *frames { return f.data(seg, blk) }, ErrProtocol, "outside"},
		{"data across the segment end", 0, func(f *frames) *frames { return f.data(seg-2*kib, blk) }, ErrProtocol, "outside"},
		{"data before the start", seg, func(f *frames) *frames { return f.data(0, blk) }, ErrProtocol, "outside"},
		{"data past the size", 0, func(f *frames) *frames {
			return f.segment(seg).segment(2*seg).data(size-8, blk)
		}, ErrProtocol, "outside"},
		{"data at a wrapping offset", 0, func(f *frames) *frames { return f.data(-16, blk) }, ErrProtocol, "outside"},
		{"data after the last segment", 0, func(f *frames) *frames { return all(f).data(size, blk) }, ErrProtocol, "outside"},
		{"segment ends early", 0, func(f *frames) *frames { return f.segment(seg / 2) }, ErrProtocol, "segment end"},
		{"segment ends late", 0, func(f *frames) *frames { return f.segment(2 * seg) }, ErrProtocol, "segment end"},
		{"segment after the last", 0, func(f *frames) *frames { return all(f).segment(size) }, ErrProtocol, "segment end"},
		{"forged hash", 0, func(f *frames) *frames {
			f.data(0, blk)
			f.h = nil
			return f.segment(seg)
		}, ErrChecksum, ""},
		{"end before the last segment", 0, func(f *frames) *frames { return f.segment(seg).end(size, 0) }, ErrProtocol, "end frame in segment"},
		{"end with another size", 0, func(f *frames) *frames { return all(f).end(size+1, 0) }, ErrProtocol, "end frame says"},
		{"end with another data total", 0, func(f *frames) *frames { return all(f.data(0, blk)).end(size, 8*kib) }, ErrProtocol, "end frame says"},
		{"bytes after the end", 0, func(f *frames) *frames { return all(f).end(size, 0).raw(0) }, ErrProtocol, "after the end"},
		{"nothing", 0, func(f *frames) *frames { return f }, io.ErrUnexpectedEOF, ""},
		{"stops in a data header", 0, func(f *frames) *frames { return f.raw(frameData, 0, 0) }, io.ErrUnexpectedEOF, ""},
		{"stops in data", 0, func(f *frames) *frames { return f.dataLen(0, 8<<10, blk) }, io.ErrUnexpectedEOF, ""},
		{"stops in a segment frame", 0, func(f *frames) *frames { return f.raw(frameSegment, 1, 2, 3) }, io.ErrUnexpectedEOF, ""},
		{"stops before the end frame", 0, all, io.ErrUnexpectedEOF, ""},
		{"stops in the end frame", 0, func(f *frames) *frames { return all(f).raw(frameEnd, 0) }, io.ErrUnexpectedEOF, ""},
		{"error frame", 0, func(f *frames) *frames { return f.data(0, blk).fail(10, "no space\x00!") }, ErrSender, `"no space\x00!"`},
		{"long error message", 0, func(f *frames) *frames { return f.fail(60000, strings.Repeat("x", 60000)) }, ErrSender, ""},
		{"error frame stops early", 0, func(f *frames) *frames { return f.fail(100, "short") }, io.ErrUnexpectedEOF, ""},
	}
}

func TestHostileStreams(t *testing.T) {
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			dst := &memTarget{b: make([]byte, hostileSize)}
			var commits []int64
			r := bytes.NewReader(tc.stream(&frames{}).Bytes())
			st, err := Receive(t.Context(), r, dst, hostileSize, tc.from, hostileSeg, nil, func(next int64) error {
				commits = append(commits, next)
				return nil
			})
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("err %v", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("err %v, want %v", err, tc.want)
			case !strings.Contains(errText(err), tc.wantMsg):
				t.Errorf("err %v, want it to say %q", err, tc.wantMsg)
			case len(errText(err)) > 2*maxErrorSent:
				t.Errorf("error of %d bytes", len(errText(err)))
			}
			if int64(st.Segments) != int64(len(commits)) {
				t.Errorf("%d segments, %d commits", st.Segments, len(commits))
			}
		})
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// trickle returns a header, then a few bytes at a time, then waits forever
// in the sense that matters here: it never has the claimed payload.
type trickle struct{ b []byte }

func (r *trickle) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 16)], r.b)
	r.b = r.b[n:]
	return n, nil
}

func TestClaimedLengthsDoNotAllocate(t *testing.T) {
	const size = 8 * mib
	tests := []struct {
		name   string
		stream func(f *frames) *frames
	}{
		{"data of 4 GiB - 1", func(f *frames) *frames { return f.dataLen(0, 1<<32-1, []byte("tiny")) }},
		{"data of MaxFrame", func(f *frames) *frames { return f.dataLen(0, MaxFrame, []byte("tiny")) }},
		{"error of 64 KiB - 1", func(f *frames) *frames { return f.fail(1<<16-1, "tiny") }},
	}
	dst := &memTarget{b: make([]byte, size)}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.stream(&frames{}).Bytes()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := Receive(t.Context(), &trickle{b}, dst, size, 0, DefaultSegment, nil, nil)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatal("no error")
			}
			// The frame buffer, the read buffer and some change.
			if n := after.TotalAlloc - before.TotalAlloc; n > 2*MaxFrame {
				t.Errorf("allocated %d bytes", n)
			}
		})
	}
}
