package pool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFullInodeTableLeavesNoCapacity: free blocks but no free inodes make
// no room for a volume, so the pool reports none and refuses the create
// with ErrNoSpace before it makes a file.
func TestFullInodeTableLeavesNoCapacity(t *testing.T) {
	p := newTestPool(t, 0)
	blocks := fakeFS(1<<30, 500<<20)
	for _, tc := range []struct {
		files, free uint64
		want        bool
	}{
		{0, 0, true},     // no inode table (btrfs)
		{1000, 2, true},  // just enough
		{1000, 1, false}, // an image but no metadata
		{1000, 0, false},
	} {
		p.statfs = func(dir string, st *unix.Statfs_t) error {
			err := blocks(dir, st)
			st.Files, st.Ffree = tc.files, tc.free
			return err
		}
		c, err := p.Capacity(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Available > 0; got != tc.want {
			t.Errorf("%d of %d inodes free: available %d", tc.free, tc.files, c.Available)
		}
		name := fmt.Sprintf("v-%d-%d", tc.files, tc.free)
		_, _, err = p.Create(context.Background(), spec(name, 1<<20))
		if tc.want != (err == nil) || (err != nil && !errors.Is(err, ErrNoSpace)) {
			t.Errorf("%d of %d inodes free: create: %v", tc.free, tc.files, err)
		}
		if err != nil {
			if _, serr := os.Stat(p.ImagePath(KeyForName(name))); !errors.Is(serr, fs.ErrNotExist) {
				t.Errorf("a refused create left its image: %v", serr)
			}
		}
	}
}

func TestNoSpaceNamesFullFilesystems(t *testing.T) {
	p := &dirPool{mirror: newMirror("p")}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&fs.PathError{Op: "open", Path: "x.json.tmp", Err: unix.ENOSPC}, true},
		{fmt.Errorf("copy: %w", unix.EDQUOT), true},
		{fmt.Errorf("%w: fallocate", ErrNoSpace), true},
		{unix.EIO, false},
		{nil, false},
	} {
		got := p.noSpace(tc.err)
		if errors.Is(got, ErrNoSpace) != tc.want {
			t.Errorf("noSpace(%v) = %v", tc.err, got)
		}
		if tc.err != nil && !errors.Is(got, tc.err) {
			t.Errorf("noSpace(%v) lost the cause: %v", tc.err, got)
		}
	}
}
