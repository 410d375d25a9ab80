package stream

import (
	"errors"
	"os"
	"slices"
	"testing"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
)

func TestRoundTrip(t *testing.T) {
	alternate := func(off, n int64) []op { // zeros over every other block of [off, off+n)
		var ops []op
		for o := off; o < off+n; o += 2 * blockSize {
			ops = append(ops, op{'z', o, blockSize})
		}
		return ops
	}
	tests := []struct {
		name      string
		size, seg int64
		ops       []op
		// fileSkipped is the zeros FileSource reads (what its extents
		// hold beyond data); -1: not checked.
		fileSkipped int64
	}{
		{"holes", 10 * mib, 4 * mib, []op{{'r', 0, mib}, {'r', 3*mib + 4*kib, 100 * kib}, {'r', 9 * mib, mib}}, 0},
		{"unwritten extents are holes", 8 * mib, DefaultSegment, []op{{'f', mib, 4 * mib}, {'r', 0, 64 * kib}, {'r', 6 * mib, 8 * kib}}, 0},
		{"data inside unwritten", 8 * mib, 2 * mib, []op{{'f', 0, 8 * mib}, {'r', 3 * mib, 12 * kib}}, -1},
		{"fallocated past the end", mib, DefaultSegment, []op{{'f', mib, mib}, {'r', 0, 4 * kib}}, 0},
		{"written zeros", 4 * mib, DefaultSegment, []op{{'z', 0, 2 * mib}, {'r', 2 * mib, mib}}, 2 * mib},
		{"zero blocks within data", 2 * mib, DefaultSegment, append([]op{{'r', 0, 2 * mib}}, alternate(0, 2*mib)...), mib},
		{"data at the very end", 5*mib + 123, 2 * mib, []op{{'r', 5*mib - 4*kib, 4*kib + 123}}, 0},
		{"size not a multiple of the segment", 3*mib + mib/2 + 7, mib, []op{{'r', 0, 3*mib + mib/2 + 7}}, 0},
		{"segment not a multiple of a block", 100*kib + 1, 5000, []op{{'r', 0, 20 * kib}, {'r', 60 * kib, 40*kib + 1}}, 0},
		{"single bytes", mib, 256 * kib, []op{{'b', 0, 1}, {'b', 4095, 1}, {'b', 40*kib + 17, 1}, {'b', mib - 1, 1}}, -1},
		{"all holes", 3 * mib, mib, nil, 0},
		{"empty", 0, DefaultSegment, nil, 0},
	}
	for _, tc := range tests {
		path := makeFile(t, tc.size, tc.ops)
		content, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		want := nonzeroBytes(content, tc.seg)
		var wantCommits []int64
		for s := int64(0); s < tc.size; s += tc.seg {
			wantCommits = append(wantCommits, min(s+tc.seg, tc.size))
		}
		sources := []struct {
			name string
			src  func(f *os.File) BlockSource
		}{
			{"file", func(f *os.File) BlockSource { return FileSource(f, tc.size) }},
			{"device", func(f *os.File) BlockSource { return DeviceSource(f, tc.size) }},
		}
		for _, s := range sources {
			t.Run(tc.name+"/"+s.name, func(t *testing.T) {
				src := openFile(t, path)
				dst := makeTarget(t, tc.size)
				sent, got, commits := transfer(t, s.src(src), FileTarget(dst), tc.size, 0, tc.seg)
				sameContent(t, src, dst)
				if sent.DataBytes != want || got.DataBytes != want {
					t.Errorf("data bytes sent %d, received %d, want %d", sent.DataBytes, got.DataBytes, want)
				}
				if sent.WireBytes != got.WireBytes || got.ZeroBytesSkipped+got.DataBytes != tc.size {
					t.Errorf("sent %+v, received %+v", sent, got)
				}
				overhead := 1 + endLen + int64(len(wantCommits))*(1+segmentLen)
				if limit := want + want/20 + overhead; sent.WireBytes > limit {
					t.Errorf("%d bytes on the wire for %d of data, want at most %d", sent.WireBytes, want, limit)
				}
				if !slices.Equal(commits, wantCommits) || sent.Segments != len(wantCommits) || got.Segments != len(wantCommits) {
					t.Errorf("commits %v (%d segments sent, %d received), want %v", commits, sent.Segments, got.Segments, wantCommits)
				}
				if s.name == "file" && tc.fileSkipped >= 0 && sent.ZeroBytesSkipped != tc.fileSkipped {
					t.Errorf("file source read %d bytes of zeros, want %d", sent.ZeroBytesSkipped, tc.fileSkipped)
				}
			})
		}
	}
}

func TestFileSourceNextData(t *testing.T) {
	path := makeFile(t, 8*mib, []op{{'r', mib, mib}, {'f', 3 * mib, mib}, {'r', 5 * mib, mib}})
	src := FileSource(openFile(t, path), 8*mib)
	// In order, then backwards: a Send that starts over gets the same
	// answers.
	tests := []struct {
		off  int64
		want Extent
		ok   bool
	}{
		{0, Extent{mib, mib}, true},
		{mib + 5, Extent{mib, mib}, true},
		{2 * mib, Extent{5 * mib, mib}, true},
		{6 * mib, Extent{}, false},
		{0, Extent{mib, mib}, true},
		{6*mib - 1, Extent{5 * mib, mib}, true},
		{8 * mib, Extent{}, false},
	}
	for _, tc := range tests {
		e, ok, err := src.NextData(tc.off)
		if err != nil || ok != tc.ok || e != tc.want {
			t.Errorf("NextData(%d) = %+v, %v, %v; want %+v, %v", tc.off, e, ok, err, tc.want, tc.ok)
		}
	}
}

func TestInvalidArguments(t *testing.T) {
	tests := []struct {
		name            string
		size, from, seg int64
	}{
		{"negative size", -1, 0, mib},
		{"no segment", mib, 0, 0},
		{"negative start", mib, -mib, mib},
		{"start past the size", mib, 2 * mib, mib},
		{"start off a boundary", 4 * mib, mib + 1, mib},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := DeviceSource(&memTarget{}, 0)
			if _, err := Send(t.Context(), &discard{}, src, tc.size, tc.from, tc.seg, nil); !errors.Is(err, ErrInvalid) {
				t.Errorf("Send: %v, want ErrInvalid", err)
			}
			if _, err := Receive(t.Context(), &discard{}, &memTarget{}, tc.size, tc.from, tc.seg, nil, nil); !errors.Is(err, ErrInvalid) {
				t.Errorf("Receive: %v, want ErrInvalid", err)
			}
		})
	}
}

// discard is an empty reader and a writer that drops everything.
type discard struct{ n int64 }

func (d *discard) Write(p []byte) (int, error) { d.n += int64(len(p)); return len(p), nil }
func (d *discard) Read([]byte) (int, error)    { return 0, errors.New("nothing to read") }
