package pool

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/fscopy"
	"github.com/flashpv/flashpv/pkg/xfsquota"
)

// A quota pool's snapshot or volume crosses nodes as its directory tree
// (package transfer/tree), received into the directory of a new volume of
// the target's quota pool, in its own project with its own limit: XFS
// holds the copy to the new volume's size as it holds the pod.

var (
	_ TreeExporter = (*QuotaPool)(nil)
	_ TreeImporter = (*QuotaPool)(nil)
)

// OpenTree opens a snapshot's or volume's directory.
func (p *QuotaPool) OpenTree(_ context.Context, c Content) (*TreeContent, error) {
	var dir string
	var size int64
	switch {
	case c.Snapshot != nil:
		dir, size = p.snapPath(c.Snapshot.Key()), c.Snapshot.SizeBytes
	case c.Volume != nil:
		dir, size = p.VolumeDir(c.Volume.Key()), c.Volume.SizeBytes
	default:
		return nil, fmt.Errorf("%w: no content", ErrInvalid)
	}
	f, err := openTreeDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: the directory of %s: %v", ErrStorageMissing, c.ID(), err)
	}
	return &TreeContent{Dir: f, Size: size}, nil
}

// OpenTreeImport opens an incoming volume's directory for a tree from
// another node: as an earlier attempt left it when keep (the transfer
// resumes after that attempt's last checkpoint), else emptied. The
// directory itself stays, with its project, inherit flag and limit, so
// everything made in it counts against the volume's size.
func (p *QuotaPool) OpenTreeImport(_ context.Context, v *Volume, keep bool) (*os.File, error) {
	if v.Incoming == nil {
		return nil, fmt.Errorf("%w: volume %s is not incoming", ErrInvalid, v.ID)
	}
	f, err := openTreeDir(p.VolumeDir(v.Key()))
	if err != nil {
		return nil, fmt.Errorf("%w: the directory of volume %s: %v", ErrStorageMissing, v.ID, err)
	}
	fail := func(err error) (*os.File, error) {
		f.Close()
		return nil, err
	}
	id, inherit, err := xfsquota.Project(f)
	if err != nil {
		return fail(err)
	}
	if id != v.ProjectID || !inherit {
		return fail(fmt.Errorf("the directory of volume %s is in project %d (inherit %v), not its own %d", v.ID, id, inherit, v.ProjectID))
	}
	if keep {
		return f, nil
	}
	if err := fscopy.EmptyDir(f); err != nil {
		return fail(fmt.Errorf("emptying volume %s for a new attempt: %w", v.ID, err))
	}
	// XFS frees removed inodes in the background: a syncfs finishes that,
	// so what the last attempt wrote no longer counts against the limit.
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fail(err)
	}
	return f, nil
}

// openTreeDir opens a volume's or snapshot's directory, not a symlink
// someone put in its place.
func openTreeDir(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir), nil
}
