package tree

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

type hostileCase struct {
	name string
	// stream builds the frames; out is the absolute path of a directory
	// beside the target that holds a canary.
	stream  func(f *frames, out string) *frames
	want    error
	wantMsg string
}

var blk = bytes.Repeat([]byte{0xaa}, 4*kib)

type fr = *frames

func hostileCases() []hostileCase {
	return slices.Concat(hostilePaths(), hostileEntries(), hostileFrames())
}

// hostilePaths are streams whose entries would reach outside the target,
// through what is not a directory, or twice to one path.
func hostilePaths() []hostileCase {
	return []hostileCase{
		{"well formed", func(f fr, _ string) fr {
			return f.root().dir("d").file("d/f", 8*kib).dataAt(4*kib, blk).symlink("d/s", "/etc").fifo("p").link("h", "d/f").end()
		}, nil, ""},

		// Paths that leave the target.
		{"dot-dot component", func(f fr, _ string) fr { return f.root().file("../outside/escape", 0) }, stream.ErrProtocol, `".."`},
		{"dot-dot inside", func(f fr, _ string) fr { return f.root().dir("d").file("d/../../outside/escape", 0) }, stream.ErrProtocol, `".."`},
		{"absolute path", func(f fr, out string) fr { return f.root().file(out+"/escape", 0) }, stream.ErrProtocol, "absolute"},
		{"absolute directory", func(f fr, out string) fr { return f.root().dir(out) }, stream.ErrProtocol, "absolute"},
		{"empty component", func(f fr, _ string) fr { return f.root().dir("d").file("d//f", 0) }, stream.ErrProtocol, `""`},
		{"dot component", func(f fr, _ string) fr { return f.root().file("./f", 0) }, stream.ErrProtocol, `"."`},
		{"trailing slash", func(f fr, _ string) fr { return f.root().dir("d/") }, stream.ErrProtocol, `""`},
		{"NUL byte", func(f fr, _ string) fr { return f.root().file("a\x00b", 0) }, stream.ErrProtocol, "NUL"},
		{"path over 4096 bytes", func(f fr, _ string) fr { return f.root().file(longPath(MaxPath+1), 0) }, stream.ErrProtocol, "path of"},
		{"name over 255 bytes", func(f fr, _ string) fr { return f.root().file(strings.Repeat("n", 256), 0) }, stream.ErrProtocol, "component of"},

		// Through symlinks and non-directories.
		{"file beneath a symlink", func(f fr, out string) fr { return f.root().symlink("s", out).file("s/escape", 0) }, stream.ErrProtocol, "beneath"},
		{"directory beneath a symlink", func(f fr, _ string) fr {
			return f.root().symlink("s", "../outside").dir("s/escape")
		}, stream.ErrProtocol, "beneath"},
		{"symlink beneath a symlink", func(f fr, out string) fr {
			return f.root().symlink("s", out).symlink("s/escape", "/")
		}, stream.ErrProtocol, "beneath"},
		{"hardlink through a symlink to outside", func(f fr, out string) fr {
			return f.root().symlink("s", out).link("h", "s/canary")
		}, stream.ErrProtocol, "not received"},
		{"hardlink through a relative symlink", func(f fr, _ string) fr {
			return f.root().dir("d").symlink("d/s", "../../outside").link("h", "d/s/canary")
		}, stream.ErrProtocol, "not received"},
		{"hardlink through a symlink in the middle", func(f fr, out string) fr {
			return f.root().symlink("s", filepath.Dir(out)).link("h", "s/outside/canary")
		}, stream.ErrProtocol, "symbolic links"},
		{"hardlink into a symlinked directory", func(f fr, _ string) fr {
			return f.root().file("f", 0).symlink("s", "../outside").link("s/h", "f")
		}, stream.ErrProtocol, "beneath"},
		{"hardlink to an absolute path", func(f fr, out string) fr { return f.root().link("h", out+"/canary") }, stream.ErrProtocol, "absolute"},
		{"hardlink with dot-dot", func(f fr, _ string) fr { return f.root().link("h", "../outside/canary") }, stream.ErrProtocol, `".."`},
		{"entry beneath a file", func(f fr, _ string) fr { return f.root().file("f", 0).file("f/x", 0) }, stream.ErrProtocol, "beneath"},
		{"entry beneath a fifo", func(f fr, _ string) fr { return f.root().fifo("p").dir("p/x") }, stream.ErrProtocol, "beneath"},
		{"entry beneath a directory never sent", func(f fr, _ string) fr { return f.root().file("d/f", 0) }, stream.ErrProtocol, "beneath"},
		{"entry in a directory the stream left", func(f fr, _ string) fr {
			return f.root().dir("a").dir("b").file("a/late", 0)
		}, stream.ErrProtocol, "depth first"},

		// The same path twice.
		{"file twice", func(f fr, _ string) fr { return f.root().file("f", 0).file("f", 0) }, stream.ErrProtocol, "twice"},
		{"directory twice", func(f fr, _ string) fr { return f.root().dir("d").dir("e").dir("d") }, stream.ErrProtocol, "twice"},
		{"symlink over a file", func(f fr, out string) fr { return f.root().file("f", 0).symlink("f", out) }, stream.ErrProtocol, "twice"},
		{"hardlink over an entry", func(f fr, _ string) fr { return f.root().file("f", 0).fifo("p").link("p", "f") }, stream.ErrProtocol, "twice"},
		{"second root", func(f fr, _ string) fr { return f.root().root() }, stream.ErrProtocol, "empty path"},
	}
}

// hostileEntries are streams with entries flashpv does not make.
func hostileEntries() []hostileCase {
	return []hostileCase{
		{"character device", func(f fr, _ string) fr { return f.root().mode("null", unix.S_IFCHR|0o666) }, ErrUnsupported, "device node"},
		{"block device", func(f fr, _ string) fr { return f.root().mode("sda", unix.S_IFBLK|0o660) }, ErrUnsupported, "device node"},
		{"socket", func(f fr, _ string) fr { return f.root().mode("sock", unix.S_IFSOCK|0o777) }, ErrUnsupported, "socket"},
		{"no type", func(f fr, _ string) fr { return f.root().mode("x", 0o644) }, stream.ErrProtocol, "unknown type"},
		{"stray mode bits", func(f fr, _ string) fr { return f.root().mode("x", unix.S_IFREG|0o1000000) }, stream.ErrProtocol, "mode"},

		// Hard links to what was not sent.
		{"hardlink to nothing", func(f fr, _ string) fr { return f.root().link("h", "nowhere") }, stream.ErrProtocol, "not received"},
		{"hardlink to a directory", func(f fr, _ string) fr { return f.root().dir("d").link("h", "d") }, stream.ErrProtocol, "directory"},
		{"hardlink to the root", func(f fr, _ string) fr { return f.root().link("h", "") }, stream.ErrProtocol, "empty path"},
		{"hardlink to itself", func(f fr, _ string) fr { return f.root().link("h", "h") }, stream.ErrProtocol, "itself"},
		{"hardlink before the root", func(f fr, _ string) fr { return f.link("h", "f") }, stream.ErrProtocol, "begins"},
	}
}

// hostileFrames are streams with malformed frames and fields.
func hostileFrames() []hostileCase {
	return []hostileCase{
		{"first entry not the root", func(f fr, _ string) fr { return f.file("f", 0) }, stream.ErrProtocol, "begins"},
		{"root that is a file", func(f fr, _ string) fr { return f.mode("", unix.S_IFREG|0o644) }, stream.ErrProtocol, "begins"},
		{"frame over MaxFrame", func(f fr, _ string) fr { return f.root().rawLen(frameData, MaxFrame+1, blk) }, stream.ErrProtocol, "frame of"},
		{"frame of 4 GiB", func(f fr, _ string) fr { return f.root().rawLen(frameEntry, 1<<32-1, blk) }, stream.ErrProtocol, "frame of"},
		{"unknown frame", func(f fr, _ string) fr { return f.root().raw('Z', nil) }, stream.ErrProtocol, "unknown frame"},
		{"short entry", func(f fr, _ string) fr { return f.root().raw(frameEntry, make([]byte, 20)) }, stream.ErrProtocol, "too short"},
		{"entry with trailing bytes", func(f fr, _ string) fr {
			e := ent(unix.S_IFREG|0o644, "f")
			return f.root().raw(frameEntry, append(e.encode(nil), 0))
		}, stream.ErrProtocol, "after the entry"},
		{"xattr value over 64 KiB", func(f fr, _ string) fr {
			return f.root().withXattr("f", xattr{"user.x", make([]byte, MaxXattrValue+1)})
		}, stream.ErrProtocol, "extended attribute"},
		{"xattr in no namespace", func(f fr, _ string) fr { return f.root().withXattr("f", xattr{"evil", []byte("x")}) }, stream.ErrProtocol, "namespace"},
		{"xattr with an empty name", func(f fr, _ string) fr { return f.root().withXattr("f", xattr{"", nil}) }, stream.ErrProtocol, "name"},
		{"xattr prefix alone", func(f fr, _ string) fr { return f.root().withXattr("f", xattr{"user.", nil}) }, stream.ErrProtocol, "namespace"},
		{"too many xattrs", func(f fr, _ string) fr {
			e := ent(unix.S_IFREG|0o644, "f")
			p := e.encode(nil)
			binary.BigEndian.PutUint16(p[len(p)-2:], MaxXattrs+1)
			return f.root().raw(frameEntry, p)
		}, stream.ErrProtocol, "extended attributes"},
		{"symlink without target", func(f fr, _ string) fr { return f.root().symlink("s", "") }, stream.ErrProtocol, "target"},
		{"symlink target over 4095 bytes", func(f fr, _ string) fr { return f.root().symlink("s", longPath(MaxLink+1)) }, stream.ErrProtocol, "target"},
		{"link target on a file", func(f fr, _ string) fr {
			e := ent(unix.S_IFREG|0o644, "f")
			e.link = "x"
			return f.root().entry(e)
		}, stream.ErrProtocol, "no symlink"},
		{"size of a directory", func(f fr, _ string) fr {
			e := ent(unix.S_IFDIR|0o755, "d")
			e.size = 10
			return f.root().entry(e)
		}, stream.ErrProtocol, "size"},
		{"file over MaxFileSize", func(f fr, _ string) fr { return f.root().file("f", MaxFileSize+1) }, stream.ErrProtocol, "bytes"},
		{"UTIME_OMIT as a time", func(f fr, _ string) fr {
			e := ent(unix.S_IFREG|0o644, "f")
			e.mtime.Nsec = (1 << 30) - 2
			return f.root().entry(e)
		}, stream.ErrProtocol, "time"},

		// Data frames.
		{"data without a file", func(f fr, _ string) fr { return f.root().dir("d").dataAt(0, blk) }, stream.ErrProtocol, "no regular file"},
		{"data after a later entry", func(f fr, _ string) fr {
			return f.root().file("f", 8*kib).fifo("p").dataAt(0, blk)
		}, stream.ErrProtocol, "no regular file"},
		{"empty data frame", func(f fr, _ string) fr { return f.root().file("f", 8*kib).raw(frameData, make([]byte, 8)) }, stream.ErrProtocol, "data frame of"},
		{"overlapping data", func(f fr, _ string) fr {
			return f.root().file("f", 16*kib).dataAt(0, blk).dataAt(2*kib, blk)
		}, stream.ErrProtocol, "outside"},
		{"data past the size", func(f fr, _ string) fr { return f.root().file("f", 6*kib).dataAt(4*kib, blk) }, stream.ErrProtocol, "outside"},
		{"data at a wrapping offset", func(f fr, _ string) fr { return f.root().file("f", 8*kib).dataAt(1<<64-16, blk) }, stream.ErrProtocol, "outside"},

		// The end.
		{"forged hash", func(f fr, _ string) fr {
			f.root().file("f", 4*kib).dataAt(0, blk)
			return f.endWith(f.entries, f.data, make([]byte, 32))
		}, stream.ErrChecksum, ""},
		{"end with another count", func(f fr, _ string) fr {
			f.root().file("f", 0)
			return f.endWith(f.entries+1, f.data, f.h.Sum(nil))
		}, stream.ErrProtocol, "end frame says"},
		{"short end frame", func(f fr, _ string) fr { return f.root().raw(frameEnd, make([]byte, 40)) }, stream.ErrProtocol, "end frame of"},
		{"end before the root", func(f fr, _ string) fr { return f.end() }, stream.ErrProtocol, "before the root"},
		{"bytes after the end", func(f fr, _ string) fr { return f.root().end().raw(0, nil) }, stream.ErrProtocol, "after the end"},
		{"nothing", func(f fr, _ string) fr { return f }, io.ErrUnexpectedEOF, ""},
		{"stops before the end", func(f fr, _ string) fr { return f.root().file("f", 4*kib).dataAt(0, blk) }, io.ErrUnexpectedEOF, ""},
		{"stops in a frame", func(f fr, _ string) fr { return f.root().rawLen(frameData, 64*kib, blk) }, io.ErrUnexpectedEOF, ""},
	}
}

func longPath(n int) string {
	var b strings.Builder
	for b.Len() < n {
		b.WriteString("d123456789/")
	}
	return strings.TrimSuffix(b.String()[:n-1], "/") + "x"
}

func (f *frames) withXattr(p string, x xattr) *frames {
	e := ent(unix.S_IFREG|0o644, p)
	e.xattrs = []xattr{x}
	return f.entry(e)
}

// rawLen writes a frame header that claims n bytes, followed by p only.
func (f *frames) rawLen(typ byte, n uint32, p []byte) *frames {
	var hdr [frameHdrLen]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], n)
	f.b.Write(hdr[:])
	f.b.Write(p)
	return f
}

// TestHostileStreams: every stream that breaks the rules is refused with
// the error it deserves, and nothing outside the target is made, changed
// or linked to, whatever the stream says.
func TestHostileStreams(t *testing.T) {
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			root, out := filepath.Join(base, "root"), filepath.Join(base, "outside")
			must(t, os.Mkdir(root, 0o755))
			must(t, os.Mkdir(out, 0o755))
			canary := filepath.Join(out, "canary")
			must(t, os.WriteFile(canary, []byte("canary"), 0o600))

			_, err := Receive(t.Context(), tc.stream(newFrames(), out).reader(), openDirPath(t, root), nil, Options{}, nil)
			switch {
			case tc.want == nil && err != nil:
				t.Fatalf("err %v", err)
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("err %v, want %v", err, tc.want)
			case err != nil && !strings.Contains(err.Error(), tc.wantMsg):
				t.Errorf("err %v, want it to say %q", err, tc.wantMsg)
			}
			untouched(t, base, canary)
		})
	}
}

// untouched checks that base holds only root and outside, outside only
// the canary, and the canary its one name and its content.
func untouched(t *testing.T, base, canary string) {
	t.Helper()
	for dir, want := range map[string][]string{base: {"outside", "root"}, filepath.Dir(canary): {"canary"}} {
		entries, err := os.ReadDir(dir)
		must(t, err)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if !slices.Equal(names, want) {
			t.Errorf("%s holds %v, want %v", dir, names, want)
		}
	}
	var st unix.Stat_t
	must(t, unix.Lstat(canary, &st))
	data, err := os.ReadFile(canary)
	must(t, err)
	if st.Nlink != 1 || string(data) != "canary" || st.Mode&0o7777 != 0o600 {
		t.Errorf("canary: %d links, mode %o, content %q", st.Nlink, st.Mode, data)
	}
}

// TestClaimedLengthsDoNotAllocate: a frame that claims more than it
// brings costs the receiver no more than its one frame buffer.
func TestClaimedLengthsDoNotAllocate(t *testing.T) {
	for _, n := range []uint32{MaxFrame, 1<<32 - 1} {
		b := newFrames().root().rawLen(frameData, n, []byte("tiny")).b.Bytes()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, err := Receive(t.Context(), bytes.NewReader(b), openDirPath(t, newDir(t)), nil, Options{}, nil)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatalf("claimed %d bytes: no error", n)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 3*MaxFrame {
			t.Errorf("claimed %d bytes: %d bytes allocated", n, grew)
		}
	}
}

func TestReceiveRefusesNonEmptyRoot(t *testing.T) {
	root := newDir(t)
	must(t, os.WriteFile(filepath.Join(root, "x"), nil, 0o644))
	_, err := Receive(t.Context(), newFrames().root().end().reader(), openDirPath(t, root), nil, Options{}, nil)
	if !errors.Is(err, stream.ErrInvalid) {
		t.Errorf("err %v, want ErrInvalid", err)
	}
}
