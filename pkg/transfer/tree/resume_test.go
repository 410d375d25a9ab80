package tree

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/fscopy"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

// small spaces checkpoints closely, so that a small tree has many.
var small = Options{Checkpoints: true, CheckpointBytes: 700 * kib, CheckpointEntries: 12}

// buildResumeTree is buildTree with a file that spans many checkpoints
// and a directory of many small files.
func buildResumeTree(t *testing.T, root string) {
	t.Helper()
	buildTree(t, root)
	writeSparse(t, filepath.Join(root, "a/b/large"), 4*mib, map[int64]int{0: 2 * mib, 3 * mib: mib - 5})
	many := filepath.Join(root, "many")
	must(t, os.Mkdir(many, 0o755))
	for i := range 40 {
		must(t, os.WriteFile(filepath.Join(many, fmt.Sprintf("f%02d", i)), []byte(fmt.Sprint("small ", i)), 0o644))
	}
	must(t, os.Link(filepath.Join(many, "f03"), filepath.Join(many, "link-to-f03")))
	stampTimes(t, root)
}

func sendWith(t *testing.T, src string, opt Options) ([]byte, error) {
	t.Helper()
	var b bytes.Buffer
	_, err := Send(t.Context(), &b, openDirPath(t, src), nil, opt)
	return b.Bytes(), err
}

// boundaries lists where each frame of s begins, and its end.
func boundaries(t *testing.T, s []byte) []int {
	t.Helper()
	var out []int
	for i := 0; i < len(s); {
		out = append(out, i)
		i += frameHdrLen + int(binary.BigEndian.Uint32(s[i+1:i+frameHdrLen]))
	}
	return append(out, len(s))
}

// receiveCut receives s into dst with opt, and returns the last
// checkpoint reported.
func receiveCut(t *testing.T, s []byte, dst *os.File, opt Options) (*Checkpoint, error) {
	t.Helper()
	var last *Checkpoint
	_, err := Receive(t.Context(), bytes.NewReader(s), dst, nil, opt, func(_ Stats, c *Checkpoint) error {
		last = c
		return nil
	})
	return last, err
}

// resume sends the tree at src from after c (or whole, with c nil, into
// an emptied dst) and receives it, as a retry does.
func resume(t *testing.T, src string, dst *os.File, c *Checkpoint) (wire int, err error) {
	t.Helper()
	opt := small
	opt.From = c
	if c == nil {
		must(t, fscopy.EmptyDir(dst))
	}
	s, err := sendWith(t, src, opt)
	if err != nil {
		return 0, err
	}
	_, err = receiveCut(t, s, dst, opt)
	return len(s), err
}

// TestResumeAtEveryCut cuts a resumable stream at every frame boundary and
// in the middle of every frame, resumes from the last checkpoint the
// receiver reported, and compares the result with the source. Resuming
// sends less than the whole stream once a checkpoint passed.
func TestResumeAtEveryCut(t *testing.T) {
	src := newDir(t)
	buildResumeTree(t, src)
	full, err := sendWith(t, src, small)
	must(t, err)
	bs := boundaries(t, full)
	var cuts []int
	for i, b := range bs[:len(bs)-1] {
		cuts = append(cuts, b, (b+bs[i+1])/2)
	}
	var resumed atomic.Int64
	t.Cleanup(func() {
		if n := resumed.Load(); n < int64(len(cuts))*3/4 {
			t.Errorf("%d of %d cuts resumed", n, len(cuts))
		}
	})
	for _, cut := range cuts {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			t.Parallel()
			dst := newDir(t)
			root := openDirPath(t, dst)
			c, err := receiveCut(t, full[:cut], root, small)
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("cut at %d: %v, want io.ErrUnexpectedEOF", cut, err)
			}
			wire, err := resume(t, src, root, c)
			if err != nil {
				t.Fatalf("resuming after %+v: %v", c, err)
			}
			sameTree(t, src, dst)
			if c != nil {
				resumed.Add(1)
				if wire >= len(full) {
					t.Errorf("resuming after %+v sent %d bytes, the whole stream is %d", c, wire, len(full))
				}
			}
		})
	}
}

// TestResumeTwice: a resumed stream cut again resumes again, from its own
// later checkpoint.
func TestResumeTwice(t *testing.T) {
	src := newDir(t)
	buildResumeTree(t, src)
	full, err := sendWith(t, src, small)
	must(t, err)
	dst := newDir(t)
	root := openDirPath(t, dst)
	c1, _ := receiveCut(t, full[:len(full)/3], root, small)
	if c1 == nil {
		t.Fatal("no checkpoint in the first third")
	}
	opt := small
	opt.From = c1
	second, err := sendWith(t, src, opt)
	must(t, err)
	c2, err := receiveCut(t, second[:len(second)/2], root, opt)
	if !errors.Is(err, io.ErrUnexpectedEOF) || c2 == nil || c2.Entries <= c1.Entries {
		t.Fatalf("second attempt: %v, checkpoint %+v after %+v", err, c2, c1)
	}
	if _, err := resume(t, src, root, c2); err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, dst)
}

// TestResumeWithoutCheckpointsRefused: a stream without checkpoints is
// never resumed.
func TestResumeWithoutCheckpointsRefused(t *testing.T) {
	c := &Checkpoint{Entries: 1, Kind: KindDir}
	if _, err := Send(t.Context(), io.Discard, openDirPath(t, newDir(t)), nil, Options{From: c}); !errors.Is(err, ErrResume) {
		t.Errorf("Send: %v, want ErrResume", err)
	}
	if _, err := Receive(t.Context(), bytes.NewReader(nil), openDirPath(t, newDir(t)), nil, Options{From: c}, nil); !errors.Is(err, ErrResume) {
		t.Errorf("Receive: %v, want ErrResume", err)
	}
}

// TestCheckpointText: a checkpoint survives its text; malformed or
// impossible ones are refused.
func TestCheckpointText(t *testing.T) {
	good := Checkpoint{Entries: 12, DataBytes: 5 << 20, Path: "a/b\nc:d", Kind: KindFile, Offset: 1 << 20}
	got, err := ParseCheckpoint(good.String())
	if err != nil || got != good {
		t.Errorf("round trip: %+v, %v", got, err)
	}
	for name, c := range map[string]Checkpoint{
		"no entries":          {Kind: KindDir},
		"root, not first":     {Entries: 3, Kind: KindDir},
		"root as a file":      {Entries: 1, Kind: KindFile},
		"unknown kind":        {Entries: 2, Path: "x", Kind: 'z'},
		"offset of a dir":     {Entries: 2, Path: "x", Kind: KindDir, Offset: 4},
		"dot-dot":             {Entries: 2, Path: "../x", Kind: KindOther},
		"absolute":            {Entries: 2, Path: "/etc", Kind: KindDir},
		"negative data":       {Entries: 2, Path: "x", Kind: KindOther, DataBytes: -1},
		"too many entries":    {Entries: MaxEntries + 1, Path: "x", Kind: KindOther},
		"negative file ofset": {Entries: 2, Path: "x", Kind: KindFile, Offset: -1},
	} {
		if _, err := ParseCheckpoint(c.String()); !errors.Is(err, ErrResume) {
			t.Errorf("%s: %v, want ErrResume", name, err)
		}
	}
	for _, s := range []string{"", "!!", "AQ", good.String()[:10]} {
		if _, err := ParseCheckpoint(s); !errors.Is(err, ErrResume) {
			t.Errorf("%q: %v, want ErrResume", s, err)
		}
	}
}

// cutAt receives the stream of src cut at the first checkpoint whose last
// entry satisfies ok, and returns the target and that checkpoint.
func cutAt(t *testing.T, src string, ok func(*Checkpoint) bool) (string, *os.File, *Checkpoint) {
	t.Helper()
	full, err := sendWith(t, src, small)
	must(t, err)
	dst := newDir(t)
	root := openDirPath(t, dst)
	var at *Checkpoint
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	_, err = Receive(ctx, bytes.NewReader(full), root, nil, small, func(_ Stats, c *Checkpoint) error {
		if ok(c) {
			at = c
			return errors.New("cut")
		}
		return nil
	})
	if at == nil {
		t.Fatalf("no checkpoint fits (%v)", err)
	}
	return dst, root, at
}

// TestResumeRefusesChangedTarget: between attempts, an ancestor of the
// checkpoint swapped for a symlink to outside, or the file that goes on
// swapped for a symlink or a fifo, fails the resume with ErrResume, and
// nothing outside changes.
func TestResumeRefusesChangedTarget(t *testing.T) {
	src := newDir(t)
	buildResumeTree(t, src)
	inLarge := func(c *Checkpoint) bool { return c.Path == "a/b/large" && c.Kind == KindFile && c.Offset > 0 }
	swaps := map[string]func(dst, out string){
		"ancestor is a symlink": func(dst, out string) {
			must(t, os.Rename(filepath.Join(dst, "a"), filepath.Join(out, "a")))
			must(t, os.Symlink(filepath.Join(out, "a"), filepath.Join(dst, "a")))
		},
		"ancestor is a relative symlink": func(dst, out string) {
			must(t, os.Rename(filepath.Join(dst, "a/b"), filepath.Join(out, "b")))
			must(t, os.Symlink("../../outside/b", filepath.Join(dst, "a/b")))
		},
		"file is a symlink": func(dst, out string) {
			must(t, os.Remove(filepath.Join(dst, "a/b/large")))
			must(t, os.Symlink(filepath.Join(out, "canary"), filepath.Join(dst, "a/b/large")))
		},
		"file is a fifo": func(dst, _ string) {
			must(t, os.Remove(filepath.Join(dst, "a/b/large")))
			must(t, unix.Mkfifo(filepath.Join(dst, "a/b/large"), 0o644))
		},
		"file has another name": func(dst, out string) {
			must(t, os.Link(filepath.Join(dst, "a/b/large"), filepath.Join(out, "large")))
		},
	}
	for name, swap := range swaps {
		t.Run(name, func(t *testing.T) {
			dst, root, c := cutAt(t, src, inLarge)
			out := filepath.Join(filepath.Dir(dst), "outside")
			must(t, os.Mkdir(out, 0o755))
			must(t, os.WriteFile(filepath.Join(out, "canary"), []byte("canary"), 0o600))
			swap(dst, out)
			before := listTree(t, out)
			if _, err := resume(t, src, root, c); !errors.Is(err, ErrResume) {
				t.Fatalf("resume: %v, want ErrResume", err)
			}
			if after := listTree(t, out); after != before {
				t.Errorf("outside changed:\n%s\nwas\n%s", after, before)
			}
		})
	}
}

// listTree describes every entry below dir: path, type, size, content hash.
func listTree(t *testing.T, dir string) string {
	t.Helper()
	var b bytes.Buffer
	must(t, filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v %d", p, fi.Mode(), fi.Size())
		if fi.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			must(t, err)
			fmt.Fprintf(&b, " %x", data)
		}
		b.WriteByte('\n')
		return nil
	}))
	return b.String()
}

// TestResumeRefusesOtherSource: a sender whose tree is not the one the
// checkpoint was made from (an entry more, data changed, a checkpoint
// that no walk reaches) refuses to resume, as ErrResume, and tells the
// receiver.
func TestResumeRefusesOtherSource(t *testing.T) {
	src := newDir(t)
	buildResumeTree(t, src)
	inMany := func(c *Checkpoint) bool { return filepath.Dir(c.Path) == "many" }
	_, _, c := cutAt(t, src, inMany)
	for name, change := range map[string]func(c *Checkpoint){
		"other path":       func(c *Checkpoint) { c.Path += "x" },
		"other data count": func(c *Checkpoint) { c.DataBytes++ },
		"other entries":    func(c *Checkpoint) { c.Entries-- },
		"other kind":       func(c *Checkpoint) { c.Kind, c.Offset = KindOther, 0 },
		"past the end":     func(c *Checkpoint) { c.Entries = 1 << 20 },
	} {
		t.Run(name, func(t *testing.T) {
			o := *c
			change(&o)
			opt := small
			opt.From = &o
			s, err := sendWith(t, src, opt)
			if !errors.Is(err, ErrResume) {
				t.Fatalf("Send: %v, want ErrResume", err)
			}
			// The target holds c, the source walks to o.
			_, root, c := cutAt(t, src, inMany)
			held := small
			held.From = c
			if _, err := Receive(t.Context(), bytes.NewReader(s), root, nil, held, nil); !errors.Is(err, stream.ErrSender) || !errors.Is(err, ErrResume) {
				t.Errorf("the receiver was told: %v, want ErrSender and ErrResume", err)
			}
		})
	}
	// An entry added to the source before the checkpoint.
	must(t, os.WriteFile(filepath.Join(src, "many/a"), nil, 0o644))
	opt := small
	opt.From = c
	if _, err := sendWith(t, src, opt); !errors.Is(err, ErrResume) {
		t.Errorf("Send of a changed tree: %v, want ErrResume", err)
	}
}
