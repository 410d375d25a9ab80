package pool

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// A volume's data can cross nodes: the node that holds a snapshot or a
// volume exports it, and a pool on another node imports it into a new
// volume whose metadata says, until the transfer has finished, that its
// data is incoming. Image and LVM pools export and import block content
// (an image file or an LV's device); quota pools, whose volumes are
// directories, export and import a file tree (TreeExporter,
// TreeImporter). Neither kind can become the other.

// Incoming is the state of a transfer into a volume, kept in its metadata
// so that a retry after a restart resumes it.
type Incoming struct {
	// Source is the snapshot or volume ID the data comes from, SourceNode
	// the node that holds it.
	Source     string `json:"source"`
	SourceNode string `json:"sourceNode,omitempty"`
	// Version identifies the source's content (a snapshot never changes;
	// a retry that finds another version starts over).
	Version string `json:"version,omitempty"`
	// Size is the content's size in bytes, Next how much of it has been
	// received, verified and synced (of a tree: its data bytes up to
	// Checkpoint).
	Size int64 `json:"size"`
	Next int64 `json:"next"`
	// Checkpoint is a tree's last checkpoint, verified and synced, as its
	// text (package transfer/tree): a retry from a snapshot of the same
	// Version resumes after it.
	Checkpoint string `json:"checkpoint,omitempty"`
	// Dirty bounds what any attempt may have written: past it, the new
	// volume still reads as zeros, so a retry need not zero its gaps.
	Dirty int64 `json:"dirty,omitempty"`
	// Received: all of Source is here, verified and synced, and the volume
	// stays incoming for the move that made it, until the move's catch-up
	// brings it up to date with the source's volume.
	Received bool `json:"received,omitempty"`
	// Updated is when the transfer last made progress: one that makes none
	// for long is abandoned and its volume deleted.
	Updated time.Time `json:"updated"`
}

// BlockContent is a snapshot's or a volume's data opened for reading.
type BlockContent struct {
	File *os.File
	// Size is the content's size (the snapshot's or volume's).
	Size int64
	// Device: File is a block device, read whole; otherwise a regular
	// file whose holes and unwritten extents are not data.
	Device bool
}

// Close closes the content's file.
func (c *BlockContent) Close() error { return c.File.Close() }

// Exporter is implemented by pools whose snapshots and volumes can be read
// as block content by another node.
type Exporter interface {
	// OpenContent opens c's data for reading. The caller keeps c from
	// changing (a volume that is not staged, under its lock).
	OpenContent(ctx context.Context, c Content) (*BlockContent, error)
}

// Importer is implemented by pools that can make a volume whose data comes
// from another node: Create with Spec.Incoming makes it (space reserved as
// for any volume), OpenImport opens its data for writing, and
// SetNodeState with Incoming cleared makes it complete.
type Importer interface {
	OpenImport(ctx context.Context, v *Volume) (*os.File, error)
}

// TreeContent is a quota snapshot's or volume's directory opened for
// reading.
type TreeContent struct {
	Dir *os.File
	// Size is the snapshot's or volume's size: the new volume's limit is
	// at least this.
	Size int64
}

// Close closes the directory.
func (c *TreeContent) Close() error { return c.Dir.Close() }

// TreeExporter is implemented by pools whose snapshots and volumes are
// directory trees another node can read.
type TreeExporter interface {
	// OpenTree opens c's directory. The caller keeps c from changing (a
	// volume that is not mounted, under its lock).
	OpenTree(ctx context.Context, c Content) (*TreeContent, error)
}

// TreeImporter is implemented by pools that can receive a directory tree
// from another node into a volume: Create with Spec.Incoming makes it as
// any volume (its directory, project and limit), OpenTreeImport opens its
// directory, emptied of what an earlier attempt left unless the transfer
// resumes it (keep), and SetNodeState with Incoming cleared makes it
// complete.
type TreeImporter interface {
	OpenTreeImport(ctx context.Context, v *Volume, keep bool) (*os.File, error)
}

var (
	_ Exporter = (*ImagePool)(nil)
	_ Importer = (*ImagePool)(nil)
	_ Exporter = (*LVMPool)(nil)
	_ Importer = (*LVMPool)(nil)
)

// OpenContent opens a snapshot's file or a volume's image.
func (p *ImagePool) OpenContent(_ context.Context, c Content) (*BlockContent, error) {
	path, size, err := p.contentPath(c)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: the data of %s: %v", ErrStorageMissing, c.ID(), err)
	}
	st, err := f.Stat()
	if err == nil && st.Size() < size {
		err = fmt.Errorf("%w: the data of %s has %d bytes, not %d", ErrStorageMissing, c.ID(), st.Size(), size)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &BlockContent{File: f, Size: size}, nil
}

func (p *ImagePool) contentPath(c Content) (string, int64, error) {
	switch {
	case c.Snapshot != nil:
		return p.snapPath(c.Snapshot.Key()), c.Snapshot.SizeBytes, nil
	case c.Volume != nil:
		return p.ImagePath(c.Volume.Key()), c.Volume.SizeBytes, nil
	}
	return "", 0, fmt.Errorf("%w: no content", ErrInvalid)
}

// OpenImport opens an incoming volume's image for writing (and reading).
func (p *ImagePool) OpenImport(_ context.Context, v *Volume) (*os.File, error) {
	if v.Incoming == nil {
		return nil, fmt.Errorf("%w: volume %s is not incoming", ErrInvalid, v.ID)
	}
	// Read and write: a move's catch-up reads each segment back.
	return os.OpenFile(p.ImagePath(v.Key()), os.O_RDWR, 0)
}

// OpenContent opens the device of a snapshot's or volume's LV (activating
// a thin snapshot, whose activation is skipped by default).
func (p *LVMPool) OpenContent(ctx context.Context, c Content) (*BlockContent, error) {
	var name string
	var size int64
	switch {
	case c.Snapshot != nil:
		name, size = p.snapLVName(c.Snapshot.Key()), c.Snapshot.SizeBytes
	case c.Volume != nil:
		name, size = p.lvName(c.Volume.Key()), c.Volume.SizeBytes
	default:
		return nil, fmt.Errorf("%w: no content", ErrInvalid)
	}
	dev, err := p.lvDevice(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("%w: the LV of %s: %v", ErrStorageMissing, c.ID(), err)
	}
	f, err := os.Open(dev)
	if err != nil {
		return nil, err
	}
	return &BlockContent{File: f, Size: size, Device: true}, nil
}

// OpenImport opens an incoming volume's LV for writing (and reading), exclusively: no
// one may have it open meanwhile.
func (p *LVMPool) OpenImport(ctx context.Context, v *Volume) (*os.File, error) {
	if v.Incoming == nil {
		return nil, fmt.Errorf("%w: volume %s is not incoming", ErrInvalid, v.ID)
	}
	dev, err := p.Device(ctx, v.Key())
	if err != nil {
		return nil, err
	}
	return os.OpenFile(dev, os.O_RDWR|unix.O_EXCL, 0)
}
