package fscopy

// Integration tests on real filesystems on loop devices (root only): the
// reflink path on XFS and btrfs, the sparse copy on ext4, the fallbacks
// across filesystems.

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/test/loopfs"
)

// reflinkFS are the filesystems that share blocks, with their mkfs flags.
var reflinkFS = []struct {
	fstype string
	args   []string
}{
	{"xfs", []string{"-m", "reflink=1"}},
	{"btrfs", nil},
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	exec.Command("sync", "-f", dir).Run()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

func TestReflink(t *testing.T) {
	const size, data = 96 << 20, 64 << 20
	layout := []extent{{0, 32 << 20}, {48 << 20, 32 << 20}}
	for _, fsys := range reflinkFS {
		t.Run(fsys.fstype, func(t *testing.T) {
			mnt := loopfs.Mount(t, fsys.fstype, 512<<20, fsys.args...)
			src := filepath.Join(mnt, "src")
			writeSparse(t, src, size, layout)
			for _, mode := range []Mode{ReflinkOrCopy, ReflinkOnly} {
				dst := filepath.Join(mnt, mode.String())
				free := freeBytes(t, mnt)
				res, err := File(context.Background(), src, dst, Options{Mode: mode})
				if err != nil {
					t.Fatal(err)
				}
				if res.Method != Reflink || res.Copied != 0 {
					t.Errorf("%v: %+v, want a reflink", mode, res)
				}
				sameFile(t, src, dst)
				if used := free - freeBytes(t, mnt); used > 4<<20 {
					t.Errorf("%v: the clone used %d bytes of free space, want next to none", mode, used)
				}
				if shared := sharedBytes(t, dst); shared != data {
					t.Errorf("%v: %d bytes shared with the source, want %d", mode, shared, data)
				}
			}
			// A physical copy shares nothing, even where copy_file_range
			// would clone.
			dst := filepath.Join(mnt, "copy")
			free := freeBytes(t, mnt)
			res, err := File(context.Background(), src, dst, Options{Mode: CopyOnly})
			if err != nil {
				t.Fatal(err)
			}
			// XFS may allocate (and zero) blocks around the writes: the
			// source can have more data than was written.
			if res.Method != ReadWrite || res.Copied < data || res.Copied > size {
				t.Errorf("copy only: %+v, want read/write of %d to %d bytes", res, data, size)
			}
			sameFile(t, src, dst)
			if shared := sharedBytes(t, dst); shared != 0 {
				t.Errorf("copy only: %d bytes shared with the source", shared)
			}
			if used := free - freeBytes(t, mnt); used < data {
				t.Errorf("copy only used %d bytes of free space, want at least %d", used, data)
			}
		})
	}
}

func TestReflinkTree(t *testing.T) {
	for _, fsys := range reflinkFS {
		t.Run(fsys.fstype, func(t *testing.T) {
			mnt := loopfs.Mount(t, fsys.fstype, 512<<20, fsys.args...)
			src, dst := filepath.Join(mnt, "src"), filepath.Join(mnt, "dst")
			os.Mkdir(src, 0o755)
			buildTree(t, src)
			res, err := Tree(context.Background(), src, dst, Options{Mode: ReflinkOnly})
			if err != nil {
				t.Fatal(err)
			}
			if res.Method != Reflink || res.Copied != 0 {
				t.Errorf("result %+v, want every file reflinked", res)
			}
			sameTree(t, src, dst)
			if sharedBytes(t, filepath.Join(dst, "a/file")) == 0 {
				t.Error("a/file shares no blocks with its source")
			}
		})
	}
}

// ext4 has no reflink: ReflinkOnly refuses, the others copy the data
// extents and keep the holes.
func TestSparseCopyExt4(t *testing.T) {
	mnt := loopfs.Mount(t, "ext4", 256<<20)
	src := filepath.Join(mnt, "src")
	writeSparse(t, src, sparseSize, sparseLayout)
	_, err := File(context.Background(), src, filepath.Join(mnt, "refused"), Options{Mode: ReflinkOnly})
	if !errors.Is(err, ErrNoReflink) {
		t.Fatalf("ReflinkOnly on ext4: %v, want ErrNoReflink", err)
	}
	if names := dirNames(t, mnt); len(names) != 2 { // src, lost+found
		t.Fatalf("a refused copy left %v", names)
	}
	for _, tc := range []struct {
		mode Mode
		want Method
	}{{ReflinkOrCopy, CopyRange}, {CopyOnly, ReadWrite}} {
		dst := filepath.Join(mnt, tc.mode.String())
		res, err := File(context.Background(), src, dst, Options{Mode: tc.mode})
		if err != nil {
			t.Fatal(err)
		}
		if res.Method != tc.want {
			t.Errorf("%v: method %v, want %v", tc.mode, res.Method, tc.want)
		}
		sameFile(t, src, dst)
		sameExtents(t, src, dst)
	}
	// A tree on ext4: sparse files stay sparse.
	tsrc, tdst := filepath.Join(mnt, "tree"), filepath.Join(mnt, "tree-copy")
	os.Mkdir(tsrc, 0o755)
	buildTree(t, tsrc)
	res, err := Tree(context.Background(), tsrc, tdst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Method != CopyRange {
		t.Errorf("tree copied with %v, want %v", res.Method, CopyRange)
	}
	sameTree(t, tsrc, tdst)
}

// Across filesystems neither FICLONE nor copy_file_range works (EXDEV):
// the copy falls back to read and write.
func TestCopyAcrossFilesystems(t *testing.T) {
	a := loopfs.Mount(t, "ext4", 128<<20)
	b := loopfs.Mount(t, "xfs", 320<<20, "-m", "reflink=1")
	src, dst := filepath.Join(a, "src"), filepath.Join(b, "dst")
	writeSparse(t, src, sparseSize, sparseLayout)
	if _, err := File(context.Background(), src, dst+"-refused", Options{Mode: ReflinkOnly}); !errors.Is(err, ErrNoReflink) {
		t.Fatalf("ReflinkOnly across filesystems: %v, want ErrNoReflink", err)
	}
	res, err := File(context.Background(), src, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Method != ReadWrite {
		t.Errorf("method %v, want %v", res.Method, ReadWrite)
	}
	sameFile(t, src, dst)
}

// A large copy cancelled while it runs leaves nothing behind, not even the
// blocks it had written.
func TestCancelLargeCopy(t *testing.T) {
	const size = 256 << 20
	mnt := loopfs.Mount(t, "ext4", 1<<30)
	src := filepath.Join(mnt, "src")
	writeSparse(t, src, size, []extent{{0, size}})
	used := func() int64 {
		exec.Command("sync", "-f", mnt).Run()
		var st unix.Statfs_t
		if err := unix.Statfs(mnt, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Blocks-st.Bfree) * st.Bsize
	}
	before := used()
	// 20 chunks of 8 MiB copied (160 MiB), then cancelled.
	ctx := cancelAfter(21)
	_, err := File(ctx, src, filepath.Join(mnt, "dst"), Options{ChunkSize: 8 << 20})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled copy: %v, want context.Canceled", err)
	}
	if names := dirNames(t, mnt); len(names) != 2 {
		t.Fatalf("a cancelled copy left %v", names)
	}
	if grew := used() - before; grew > 16<<20 {
		t.Errorf("after a cancelled copy %d more bytes are in use: the partial copy was not freed", grew)
	}
}
