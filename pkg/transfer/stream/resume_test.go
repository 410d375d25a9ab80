package stream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

var errCut = errors.New("connection cut")

// record returns the whole stream Send makes of src.
func record(t *testing.T, src BlockSource, size, from, seg int64) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := Send(context.Background(), &b, src, size, from, seg, nil); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// frameAt is where a frame of a well-formed stream starts, and its type.
type frameAt struct {
	pos int
	typ byte
}

// parse lists the frames of a stream Send made.
func parse(b []byte) []frameAt {
	var fs []frameAt
	for pos := 0; pos < len(b); {
		fs = append(fs, frameAt{pos, b[pos]})
		switch b[pos] {
		case frameData:
			pos += 1 + dataHdrLen + int(binary.BigEndian.Uint32(b[pos+9:]))
		case frameSegment:
			pos += 1 + segmentLen
		default:
			pos += 1 + endLen
		}
	}
	return fs
}

func TestResume(t *testing.T) {
	const seg = 256 * kib
	const size = 4*seg + 3000
	path := makeFile(t, size, []op{{'r', 0, 300 * kib}, {'r', 400 * kib, 500 * kib}, {'r', 4 * seg, 3000}})
	content, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	src := openFile(t, path)
	stream := record(t, FileSource(src, size), size, 0, seg)
	var afterSecondSegment, segments int
	for _, f := range parse(stream) {
		if f.typ == frameSegment {
			if segments++; segments == 2 {
				afterSecondSegment = f.pos + 1 + segmentLen
			}
		}
	}
	tests := []struct {
		name string
		cut  int
	}{
		{"nothing received", 0},
		{"one byte", 1},
		{"a third", len(stream) / 3},
		{"half", len(stream) / 2},
		{"just after a segment frame", afterSecondSegment},
		{"in the end frame", len(stream) - 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := makeTarget(t, size)
			var committed int64
			first := io.MultiReader(bytes.NewReader(stream[:tc.cut]), errReader{errCut})
			_, err := Receive(t.Context(), first, FileTarget(dst), size, 0, seg, nil, func(next int64) error {
				committed = next
				return nil
			})
			if !errors.Is(err, errCut) {
				t.Fatalf("cut receive: %v, want %v", err, errCut)
			}
			// What an attempt may leave past its last commit.
			scribble(t, dst, committed, size-committed)
			sent, _, commits := transfer(t, FileSource(src, size), FileTarget(dst), size, committed, seg)
			sameContent(t, src, dst)
			if want := nonzeroBytes(content[committed:], seg); sent.DataBytes != want {
				t.Errorf("resumed at %d: sent %d bytes of data, want %d", committed, sent.DataBytes, want)
			}
			if committed < size && (len(commits) == 0 || commits[0] != min(committed+seg, size) || commits[len(commits)-1] != size) {
				t.Errorf("resumed at %d: commits %v", committed, commits)
			}
		})
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// flipReader is a middle-man that inverts one byte of a stream.
type flipReader struct {
	r   io.Reader
	at  int64
	pos int64
}

func (f *flipReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if i := f.at - f.pos; i >= 0 && i < int64(n) {
		p[i] ^= 0xff
	}
	f.pos += int64(n)
	return n, err
}

func TestChecksumMismatch(t *testing.T) {
	const seg = 256 * kib
	const size = 4 * seg
	path := makeFile(t, size, []op{{'r', 0, size}})
	src := openFile(t, path)
	stream := record(t, FileSource(src, size), size, 0, seg)
	// The first data frame and the segment frame of the second segment.
	var data2, seg2 int
	segments := 0
	for _, f := range parse(stream) {
		switch {
		case f.typ == frameSegment:
			segments++
			if segments == 2 {
				seg2 = f.pos
			}
		case segments == 1 && data2 == 0:
			data2 = f.pos
		}
	}
	tests := []struct {
		name string
		at   int
	}{
		{"a data byte", data2 + 1 + dataHdrLen + 1000},
		{"the checksum", seg2 + 1 + 8 + 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var commits []int64
			r := &flipReader{r: bytes.NewReader(stream), at: int64(tc.at)}
			_, err := Receive(t.Context(), r, FileTarget(makeTarget(t, size)), size, 0, seg, nil, func(next int64) error {
				commits = append(commits, next)
				return nil
			})
			if !errors.Is(err, ErrChecksum) {
				t.Errorf("err %v, want ErrChecksum", err)
			}
			if !slices.Equal(commits, []int64{seg}) {
				t.Errorf("commits %v, want only the first segment's", commits)
			}
		})
	}
}

func TestSyncBeforeCommit(t *testing.T) {
	src := &memTarget{b: bytes.Repeat([]byte{1}, 3*int(mib))}
	dst := &memTarget{b: make([]byte, 3*mib)}
	var commits int
	errBoom := errors.New("boom")
	pr, pw := io.Pipe()
	go func() {
		_, err := Send(context.Background(), pw, DeviceSource(src, 3*mib), 3*mib, 0, mib, nil)
		pw.CloseWithError(err)
	}()
	st, err := Receive(t.Context(), pr, dst, 3*mib, 0, mib, nil, func(next int64) error {
		commits++
		if dst.syncs != commits {
			t.Errorf("commit %d after %d syncs", commits, dst.syncs)
		}
		if commits == 2 {
			return errBoom
		}
		return nil
	})
	pr.Close()
	if !errors.Is(err, errBoom) || st.Segments != 1 {
		t.Errorf("err %v after %d segments, want %v after 1", err, st.Segments, errBoom)
	}
}

// failingSource fails to read at and after failAt, with err or errFire.
type failingSource struct {
	memTarget
	failAt int64
	err    error
}

var errFire = errors.New("disk on fire")

func (s *failingSource) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > s.failAt {
		if s.err != nil {
			return 0, s.err
		}
		return 0, errFire
	}
	return s.memTarget.ReadAt(p, off)
}

func (s *failingSource) NextData(off int64) (Extent, bool, error) {
	return DeviceSource(s, int64(len(s.b))).NextData(off)
}

func TestSenderError(t *testing.T) {
	const size = 4 * mib
	tests := []struct {
		name        string
		failAt      int64
		cancel      bool
		wantSendErr error
		wantCommits []int64
	}{
		{"read fails", 2*mib + 5, false, errFire, []int64{mib, 2 * mib}},
		{"cancelled", size, true, context.Canceled, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := &failingSource{memTarget: memTarget{b: bytes.Repeat([]byte{7}, int(size))}, failAt: tc.failAt}
			ctx, cancel := context.WithCancel(t.Context())
			if tc.cancel {
				cancel()
			}
			defer cancel()
			pr, pw := io.Pipe()
			sendErr := make(chan error, 1)
			go func() {
				_, err := Send(ctx, pw, src, size, 0, mib, nil)
				pw.Close()
				sendErr <- err
			}()
			var commits []int64
			_, err := Receive(t.Context(), pr, &memTarget{b: make([]byte, size)}, size, 0, mib, nil, func(next int64) error {
				commits = append(commits, next)
				return nil
			})
			if !errors.Is(err, ErrSender) || !strings.Contains(err.Error(), tc.wantSendErr.Error()) {
				t.Errorf("receive: %v, want ErrSender with %q", err, tc.wantSendErr)
			}
			if err := <-sendErr; !errors.Is(err, tc.wantSendErr) {
				t.Errorf("send: %v, want %v", err, tc.wantSendErr)
			}
			if !slices.Equal(commits, tc.wantCommits) {
				t.Errorf("commits %v, want %v", commits, tc.wantCommits)
			}
		})
	}
}

// TestErrorFrameBounded: a long message is cut to 1 KiB of valid UTF-8.
func TestErrorFrameBounded(t *testing.T) {
	long := errors.New(strings.Repeat("\u00e9", 2000) + "\xff")
	src := &failingSource{memTarget: memTarget{b: make([]byte, mib)}, err: long}
	var b bytes.Buffer
	if _, err := Send(t.Context(), &b, src, mib, 0, mib, nil); !errors.Is(err, long) {
		t.Fatalf("send: %v, want %v", err, long)
	}
	stream := b.Bytes()
	if len(stream) < 3 || stream[0] != frameError {
		t.Fatalf("stream %q, want an error frame", stream[:min(len(stream), 16)])
	}
	n := int(binary.BigEndian.Uint16(stream[1:3]))
	if msg := stream[3:]; n != len(msg) || n > maxErrorSent || n < maxErrorSent-4 || !utf8.Valid(msg) {
		t.Errorf("error frame of %d bytes claims %d, valid UTF-8: %v", len(msg), n, utf8.Valid(msg))
	}
}
