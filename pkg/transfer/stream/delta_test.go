package stream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
)

// zero writes a zero frame.
func (f *frames) zero(off, n int64) *frames {
	var h [zeroLen]byte
	binary.BigEndian.PutUint64(h[0:8], uint64(off))
	binary.BigEndian.PutUint64(h[8:16], uint64(n))
	f.WriteByte(frameZero)
	f.Write(h[:])
	f.h = append(f.h, h[:])
	return f
}

// checked ends a delta segment whose content has the given CRC-32C.
func (f *frames) checked(end int64, content uint32) *frames {
	s := crc32.New(castagnoli)
	for _, p := range f.h {
		s.Write(p)
	}
	f.h = nil
	f.WriteByte(frameChecked)
	f.Write(binary.BigEndian.AppendUint64(nil, uint64(end)))
	f.Write(s.Sum(nil))
	f.Write(binary.BigEndian.AppendUint32(nil, content))
	return f
}

// deltaCase is a base and what became of it.
type deltaCase struct {
	name             string
	baseSize, size   int64
	seg              int64
	base, changes    []op
	punch            []Extent // holes punched into cur after changes
	wantData         int64    // bytes that must be sent as data
	wantZeroedAtMost int64
}

func deltaCases() []deltaCase {
	return []deltaCase{
		{name: "nothing changed", baseSize: 4 * mib, size: 4 * mib, seg: mib,
			base: []op{{'r', 0, 3 * mib}}},
		{name: "blocks rewritten", baseSize: 4 * mib, size: 4 * mib, seg: mib,
			base:     []op{{'r', 0, 3 * mib}},
			changes:  []op{{'r', 100 * kib, 8 * kib}, {'r', 2*mib - 4*kib, 12 * kib}, {'b', 3*mib - 1, 1}},
			wantData: 8*kib + 12*kib + 4*kib},
		{name: "data written into holes", baseSize: 4 * mib, size: 4 * mib, seg: mib,
			base:     []op{{'r', 0, mib}},
			changes:  []op{{'r', 3 * mib, 64 * kib}},
			wantData: 64 * kib},
		{name: "blocks zeroed and holes punched", baseSize: 4 * mib, size: 4 * mib, seg: mib,
			base:             []op{{'r', 0, 4 * mib}},
			changes:          []op{{'z', 8 * kib, 8 * kib}},
			punch:            []Extent{{Off: 2 * mib, Len: mib + 4*kib}},
			wantZeroedAtMost: 8*kib + mib + 4*kib},
		{name: "grown", baseSize: 2*mib + 100, size: 5*mib + 7, seg: 2 * mib,
			base:     []op{{'r', 0, 2*mib + 100}},
			changes:  []op{{'r', 4 * mib, mib + 7}},
			wantData: mib + 7},
		{name: "unaligned segments", baseSize: 300*kib + 3, size: 300*kib + 3, seg: 5000,
			base:     []op{{'r', 0, 300*kib + 3}},
			changes:  []op{{'r', 17, 9000}, {'z', 100 * kib, 20 * kib}},
			wantData: -1, wantZeroedAtMost: -1},
	}
}

// makeDelta makes the base file and cur (a copy of base with the changes)
// and returns their paths.
func makeDelta(t *testing.T, c deltaCase) (basePath, curPath string) {
	t.Helper()
	basePath = makeFile(t, c.baseSize, c.base)
	curPath = makeFile(t, c.size, nil)
	b, err := os.ReadFile(basePath)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := os.OpenFile(curPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	// Copy base's data extents only, so holes stay holes.
	it := FileSource(openFile(t, basePath), c.baseSize)
	for pos := int64(0); ; {
		e, ok, err := it.NextData(pos)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		end := min(e.End(), c.baseSize, c.size)
		if _, err := cur.WriteAt(b[e.Off:end], e.Off); err != nil {
			t.Fatal(err)
		}
		pos = e.End()
	}
	applyOps(t, cur, c.changes)
	for _, e := range c.punch {
		punchHole(t, cur, e)
	}
	return basePath, curPath
}

// targetWithBase makes the target: base's bytes, grown to size with zeros,
// then scribbled over from garbage on (an earlier attempt's writes).
func targetWithBase(t *testing.T, basePath string, size int64) *os.File {
	t.Helper()
	b, err := os.ReadFile(basePath)
	if err != nil {
		t.Fatal(err)
	}
	dst := makeTarget(t, 0)
	if _, err := dst.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	if err := dst.Truncate(max(size, int64(len(b)))); err != nil {
		t.Fatal(err)
	}
	return dst
}

// deltaTransfer sends the delta of cur over base and applies it to dst.
func deltaTransfer(ctx context.Context, cur, base BlockSource, dst DeltaTarget, size, baseSize, from, seg int64) (sent, got Stats, commits []int64, err error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		var err error
		sent, err = SendDelta(ctx, pw, cur, base, size, baseSize, from, seg, nil)
		pw.CloseWithError(err)
		done <- err
	}()
	got, err = ReceiveDelta(ctx, pr, dst, size, from, seg, nil, func(next int64) error {
		commits = append(commits, next)
		return nil
	})
	pr.Close()
	if serr := <-done; err == nil {
		err = serr
	}
	return sent, got, commits, err
}

func TestDeltaRoundTrip(t *testing.T) {
	sources := []struct {
		name string
		src  func(f *os.File, size int64) BlockSource
	}{
		{"files", FileSource},
		{"devices", func(f *os.File, size int64) BlockSource { return DeviceSource(f, size) }},
	}
	for _, c := range deltaCases() {
		for _, sk := range sources {
			t.Run(c.name+"/"+sk.name, func(t *testing.T) {
				testDeltaRoundTrip(t, c, sk.src)
			})
		}
	}
}

func testDeltaRoundTrip(t *testing.T, c deltaCase, source func(f *os.File, size int64) BlockSource) {
	basePath, curPath := makeDelta(t, c)
	cur, base := openFile(t, curPath), openFile(t, basePath)
	dst := targetWithBase(t, basePath, c.size)
	sent, got, commits, err := deltaTransfer(t.Context(), source(cur, c.size), source(base, c.baseSize), FileTarget(dst), c.size, c.baseSize, 0, c.seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Truncate(c.size); err != nil {
		t.Fatal(err)
	}
	sameContent(t, cur, dst)
	if c.wantData >= 0 && (sent.DataBytes != c.wantData || got.DataBytes != c.wantData) {
		t.Errorf("data bytes sent %d, received %d, want %d", sent.DataBytes, got.DataBytes, c.wantData)
	}
	if c.wantZeroedAtMost >= 0 && got.ZeroedBytes > c.wantZeroedAtMost {
		t.Errorf("%d bytes zeroed, want at most %d", got.ZeroedBytes, c.wantZeroedAtMost)
	}
	if sent.WireBytes != got.WireBytes || sent.ZeroedBytes != got.ZeroedBytes {
		t.Errorf("sent %+v, received %+v", sent, got)
	}
	var want []int64
	for s := int64(0); s < c.size; s += c.seg {
		want = append(want, min(s+c.seg, c.size))
	}
	if !slices.Equal(commits, want) {
		t.Errorf("commits %v, want %v", commits, want)
	}
}

// A target that does not hold the base fails the content check, before
// the segment is committed: a delta never makes a wrong volume look done.
func TestDeltaNeedsTheBase(t *testing.T) {
	c := deltaCases()[1]
	basePath, curPath := makeDelta(t, c)
	cur, base := openFile(t, curPath), openFile(t, basePath)
	dst := targetWithBase(t, basePath, c.size)
	scribble(t, dst, mib+12*kib, 4*kib) // in the second segment, where nothing changed
	_, _, commits, err := deltaTransfer(t.Context(), FileSource(cur, c.size), FileSource(base, c.baseSize), FileTarget(dst), c.size, c.baseSize, 0, c.seg)
	if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "base") {
		t.Fatalf("err %v, want a content checksum error", err)
	}
	if !slices.Equal(commits, []int64{mib}) {
		t.Errorf("commits %v, want only the first segment's", commits)
	}
}

// A delta cut anywhere and resumed from the last commit converges: a
// segment applied twice, or half of it twice, ends the same.
func TestDeltaResume(t *testing.T) {
	c := deltaCases()[3]
	c.changes = append(c.changes, op{'r', 3*mib + 100*kib, 200 * kib})
	basePath, curPath := makeDelta(t, c)
	cur, base := openFile(t, curPath), openFile(t, basePath)
	var whole bytes.Buffer
	if _, err := SendDelta(t.Context(), &whole, FileSource(cur, c.size), FileSource(base, c.baseSize), c.size, c.baseSize, 0, c.seg, nil); err != nil {
		t.Fatal(err)
	}
	stream := whole.Bytes()
	for _, cut := range []int{0, 1, 30, len(stream) / 3, len(stream) / 2, len(stream) - 40, len(stream) - 1} {
		dst := targetWithBase(t, basePath, c.size)
		var committed int64
		_, err := ReceiveDelta(t.Context(), io.MultiReader(bytes.NewReader(stream[:cut]), errReader{errCut}), FileTarget(dst), c.size, 0, c.seg, nil, func(next int64) error {
			committed = next
			return nil
		})
		if !errors.Is(err, errCut) {
			t.Fatalf("cut at %d: err %v", cut, err)
		}
		if _, _, _, err := deltaTransfer(t.Context(), FileSource(cur, c.size), FileSource(base, c.baseSize), FileTarget(dst), c.size, c.baseSize, committed, c.seg); err != nil {
			t.Fatalf("resumed at %d after a cut at %d: %v", committed, cut, err)
		}
		sameContent(t, cur, dst)
	}
}

func TestHostileDeltaStreams(t *testing.T) {
	const seg, size = hostileSeg, hostileSize
	blk := bytes.Repeat([]byte{0xaa}, int(4*kib))
	// The target holds a base of all 0x55; the content checksums are of
	// what it holds after the frames.
	base := bytes.Repeat([]byte{0x55}, int(size))
	crcOf := func(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
	after := slices.Clone(base)
	copy(after[4*kib:], blk)
	clear(after[seg : seg+8*kib])
	tests := []struct {
		name    string
		stream  func(f *frames) *frames
		want    error
		wantMsg string
	}{
		{"well formed", func(f *frames) *frames {
			f.data(4*kib, blk).checked(seg, crcOf(after[:seg]))
			f.zero(seg, 8*kib).checked(2*seg, crcOf(after[seg:2*seg]))
			return f.checked(size, crcOf(after[2*seg:])).end(size, 4*kib)
		}, nil, ""},
		{"content checksum wrong", func(f *frames) *frames {
			return f.data(4*kib, blk).checked(seg, crcOf(base[:seg]))
		}, ErrChecksum, "does not hold"},
		{"full segment end", func(f *frames) *frames { return f.segment(seg) }, ErrProtocol, "full segment"},
		{"empty zero frame", func(f *frames) *frames { return f.zero(0, 0) }, ErrProtocol, "zero frame"},
		{"zero frame across the segment end", func(f *frames) *frames { return f.zero(seg-4*kib, 8*kib) }, ErrProtocol, "zero frame"},
		{"zero frame of 2^64-1 bytes", func(f *frames) *frames { return f.zero(4*kib, -1) }, ErrProtocol, "zero frame"},
		{"zero frame at a wrapping offset", func(f *frames) *frames { return f.zero(-4096, 8192) }, ErrProtocol, "zero frame"},
		{"zero frame before the last write", func(f *frames) *frames { return f.data(8*kib, blk).zero(0, 4*kib) }, ErrProtocol, "zero frame"},
		{"stops in a zero frame", func(f *frames) *frames { return f.raw(frameZero, 1, 2) }, io.ErrUnexpectedEOF, ""},
		{"stops in a checked end", func(f *frames) *frames { return f.raw(frameChecked, 1, 2) }, io.ErrUnexpectedEOF, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := &memTarget{b: slices.Clone(base)}
			var commits []int64
			st, err := ReceiveDelta(t.Context(), bytes.NewReader(tc.stream(&frames{}).Bytes()), dst, size, 0, seg, nil, func(next int64) error {
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
			}
			if tc.want == nil && !bytes.Equal(dst.b, after) {
				t.Error("the target does not hold the delta's result")
			}
			if st.Segments != len(commits) {
				t.Errorf("%d segments, %d commits", st.Segments, len(commits))
			}
		})
	}
}
