package tree

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/fscopy"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

func openDirPath(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Open(p)
	must(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// transfer sends the tree at src into the empty directory dst over a pipe.
func transfer(t *testing.T, src, dst string, lim *stream.Limiter) (sent, got Stats, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		var err error
		sent, err = Send(ctx, pw, openDirPath(t, src), lim, Options{})
		pw.CloseWithError(err)
		done <- err
	}()
	got, err = Receive(ctx, pr, openDirPath(t, dst), lim, Options{}, nil)
	pr.Close()
	if serr := <-done; err == nil && serr != nil {
		err = serr
	}
	return sent, got, err
}

// sendAll is the stream Send makes of the tree at src.
func sendAll(t *testing.T, src string) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := Send(t.Context(), &b, openDirPath(t, src), nil, Options{}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func newDir(t *testing.T) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), "root")
	must(t, os.Mkdir(d, 0o755))
	return d
}

func TestRoundTrip(t *testing.T) {
	src, dst := newDir(t), newDir(t)
	buildTree(t, src)
	sent, got, err := transfer(t, src, dst, nil)
	if err != nil {
		t.Fatalf("transfer: %v", err)
	}
	sameTree(t, src, dst)
	if sent != got {
		t.Errorf("sent %+v, received %+v", sent, got)
	}
	want := Stats{Entries: 23, Dirs: 6, Files: 7, Symlinks: 5, HardLinks: 4, Fifos: 1}
	got.DataBytes, got.WireBytes = 0, 0
	if got != want {
		t.Errorf("counted %+v, want %+v", got, want)
	}
	// Only data extents travel (whole blocks, within the size): not the
	// holes of a/b/sparse (5 MiB) or holes-only (8 MiB).
	if data := sent.DataBytes; data != 300*kib+100*kib+52*kib+3*mib+17+12+1 {
		t.Errorf("%d data bytes sent", data)
	}
}

func TestRoundTripOfEmptyTree(t *testing.T) {
	src, dst := newDir(t), newDir(t)
	must(t, os.Chmod(src, 0o700))
	stampTimes(t, src)
	if _, _, err := transfer(t, src, dst, nil); err != nil {
		t.Fatal(err)
	}
	sameTree(t, src, dst)
}

// TestSpecialFilesRefused: a source with a socket or a device node fails
// with the entry's path, as ErrUnsupported.
func TestSpecialFilesRefused(t *testing.T) {
	cases := map[string]uint32{"socket": unix.S_IFSOCK | 0o755}
	if os.Geteuid() == 0 {
		cases["null"] = unix.S_IFCHR | 0o666
		cases["loop"] = unix.S_IFBLK | 0o600
	}
	for name, mode := range cases {
		t.Run(name, func(t *testing.T) {
			src, dst := newDir(t), newDir(t)
			must(t, os.Mkdir(filepath.Join(src, "d"), 0o755))
			must(t, unix.Mknod(filepath.Join(src, "d", name), mode, int(unix.Mkdev(1, 3))))
			_, _, err := transfer(t, src, dst, nil)
			if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "d/"+name) {
				t.Errorf("err %v, want ErrUnsupported naming d/%s", err, name)
			}
		})
	}
}

// TestStartsOverAfterCut: a receive cut short leaves part of the tree;
// emptied (the directory itself kept), the next receive makes all of it.
func TestStartsOverAfterCut(t *testing.T) {
	src, dst := newDir(t), newDir(t)
	buildTree(t, src)
	full := sendAll(t, src)
	root := openDirPath(t, dst)
	var before unix.Stat_t
	must(t, unix.Fstat(int(root.Fd()), &before))
	_, err := Receive(t.Context(), bytes.NewReader(full[:len(full)*2/3]), root, nil, Options{}, nil)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("cut stream: %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := Receive(t.Context(), bytes.NewReader(full), root, nil, Options{}, nil); !errors.Is(err, stream.ErrInvalid) {
		t.Fatalf("receiving into what the cut left: %v, want ErrInvalid", err)
	}
	must(t, fscopy.EmptyDir(root))
	if _, err := Receive(t.Context(), bytes.NewReader(full), root, nil, Options{}, nil); err != nil {
		t.Fatalf("receiving again: %v", err)
	}
	sameTree(t, src, dst)
	var after unix.Stat_t
	must(t, unix.Fstat(int(root.Fd()), &after))
	if after.Ino != before.Ino {
		t.Error("the target directory was replaced")
	}
}

// TestDataAlteredInTransit: one flipped bit of file data fails the hash.
func TestDataAlteredInTransit(t *testing.T) {
	src := newDir(t)
	must(t, os.WriteFile(filepath.Join(src, "f"), bytes.Repeat([]byte("flashpv!"), 4096), 0o644))
	b := sendAll(t, src)
	i := bytes.Index(b, []byte("flashpv!flashpv!"))
	if i < 0 {
		t.Fatal("no data in the stream")
	}
	b[i+5] ^= 1
	_, err := Receive(t.Context(), bytes.NewReader(b), openDirPath(t, newDir(t)), nil, Options{}, nil)
	if !errors.Is(err, stream.ErrChecksum) {
		t.Errorf("err %v, want ErrChecksum", err)
	}
}

// TestBandwidthLimit: both ends wait on the limiter.
func TestBandwidthLimit(t *testing.T) {
	src, dst := newDir(t), newDir(t)
	writeSparse(t, filepath.Join(src, "f"), 4*mib, map[int64]int{0: 4 * mib})
	start := time.Now()
	// A burst of about 1 MiB, then 3 MiB at 3 MiB/s.
	if _, _, err := transfer(t, src, dst, stream.NewLimiter(3*mib)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Errorf("4 MiB at 3 MiB/s took %v", d)
	}
	sameTree(t, src, dst)
}

// TestSenderError: a sender that fails says why.
func TestSenderError(t *testing.T) {
	f := newFrames().root()
	f.raw(frameError, []byte("disk on fire"))
	_, err := Receive(t.Context(), f.reader(), openDirPath(t, newDir(t)), nil, Options{}, nil)
	if !errors.Is(err, stream.ErrSender) || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("err %v, want ErrSender with the message", err)
	}
}

func TestSendRefusesFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	must(t, os.WriteFile(p, nil, 0o644))
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	if _, err := Send(t.Context(), io.Discard, f, nil, Options{}); !errors.Is(err, stream.ErrInvalid) {
		t.Errorf("Send of a file: %v, want ErrInvalid", err)
	}
}
