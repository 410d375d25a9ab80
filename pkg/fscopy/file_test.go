package fscopy

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A file with holes at the start, between extents and at the end, and a
// size that is no multiple of the block size.
var sparseLayout = []extent{{1 << 20, 3 << 20}, {6 << 20, 100 << 10}, {9<<20 + 4096, 5000}}

const sparseSize = 12<<20 + 123

func TestFileCopiesDataAndHoles(t *testing.T) {
	for _, tc := range []struct {
		name   string
		size   int64
		layout []extent
	}{
		{"sparse", sparseSize, sparseLayout},
		{"dense", 3<<20 + 7, []extent{{0, 3<<20 + 7}}},
		{"empty", 0, nil},
		{"all hole", 5 << 20, nil},
	} {
		for _, mode := range []Mode{ReflinkOrCopy, CopyOnly} {
			t.Run(tc.name+"/"+mode.String(), func(t *testing.T) {
				dir := t.TempDir()
				src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
				writeSparse(t, src, tc.size, tc.layout)
				os.Chmod(src, 0o640)
				// Small chunks: the copy crosses chunk boundaries.
				res, err := File(context.Background(), src, dst, Options{Mode: mode, ChunkSize: 1 << 20})
				if err != nil {
					t.Fatal(err)
				}
				sameFile(t, src, dst)
				if res.Method != Reflink {
					sameExtents(t, src, dst)
				}
				if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o640 {
					t.Errorf("mode %v, want 0640", fi.Mode())
				}
				want := []Method{CopyRange, ReadWrite, Reflink}
				if mode == CopyOnly {
					want = []Method{ReadWrite}
				}
				if !slices.Contains(want, res.Method) {
					t.Errorf("method %v, want one of %v", res.Method, want)
				}
				// Data extents are whole blocks: sum them as the
				// filesystem has them, not as written.
				var data int64
				for _, e := range dataMap(t, src) {
					data += e.len
				}
				if res.Size != tc.size || (res.Method != Reflink && res.Copied != data) {
					t.Errorf("result %+v, want size %d, %d bytes copied", res, tc.size, data)
				}
				if names := dirNames(t, dir); len(names) != 2 {
					t.Errorf("directory holds %v, want src and dst only", names)
				}
			})
		}
	}
}

func TestFileNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	writeSparse(t, src, 1<<20, []extent{{0, 1 << 20}})
	os.WriteFile(dst, []byte("keep me"), 0o600)
	_, err := File(context.Background(), src, dst, Options{})
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("copy onto an existing file: %v, want ErrExist", err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "keep me" {
		t.Fatalf("existing file changed to %d bytes", len(b))
	}
}

func TestFileRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	_, err := File(context.Background(), dir, filepath.Join(dir, "dst"), Options{})
	if !errors.Is(err, ErrNotRegular) {
		t.Fatalf("copy of a directory: %v, want ErrNotRegular", err)
	}
}

// A copy cancelled between two chunks returns the context's error and
// leaves nothing: no destination, no temporary file.
func TestFileCancelledMidCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	writeSparse(t, src, 16<<20, []extent{{0, 16 << 20}})
	modes := []Mode{CopyOnly}
	if !reflinks(t, dir) {
		modes = append(modes, ReflinkOrCopy)
	}
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			dst := filepath.Join(dir, "dst")
			// One look before the copy, then four chunks, then cancelled.
			ctx := cancelAfter(5)
			_, err := File(ctx, src, dst, Options{Mode: mode, ChunkSize: 1 << 20})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled copy: %v, want context.Canceled", err)
			}
			if ctx.calls.Load() != 6 {
				t.Errorf("context looked at %d times, want 6 (once per chunk until cancelled)", ctx.calls.Load())
			}
			if names := dirNames(t, dir); len(names) != 1 {
				t.Errorf("after a cancelled copy the directory holds %v, want src only", names)
			}
		})
	}
}

func TestIsTemp(t *testing.T) {
	name, err := tempName("/pool/snap-1.img")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(name) != "/pool" || !IsTemp(filepath.Base(name)) {
		t.Errorf("temp name %s is not recognised", name)
	}
	for _, n := range []string{"snap-1.img", ".snap-1.img", "fscopy-tmp-1", ".meta.json"} {
		if IsTemp(n) {
			t.Errorf("IsTemp(%q) = true", n)
		}
	}
}
