package mounter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/command"
	"github.com/flashpv/flashpv/pkg/durable"
)

// Offline growth of an ext4 is resize2fs rewriting the filesystem's
// metadata in place: superblocks, group descriptors, bitmaps, the resize
// inode. It is not crash-safe: killed in the middle (the node plugin's
// container restarted), it can leave a superblock whose checksum does not
// match, which e2fsck -p refuses to touch, and the volume could not be
// mounted again. resize2fs's own undo file (-z) does not help: it buffers
// the undo records and their index in memory and writes the index only when
// it finishes, so after a kill the undo file is as good as empty.
//
// So flashpv keeps its own copy of the metadata. Growing never moves data
// blocks or inodes (only shrinking does), and it writes nothing that the
// old filesystem reads except its metadata blocks: new groups' tables go to
// space beyond the old end or to blocks the old filesystem counts as free.
// Before resize2fs runs, e2image -r saves every metadata block of the
// unmounted filesystem (a sparse file of the filesystem's size, without the
// blocks that are all zeros), and the copy is made durable and renamed into
// place. resize2fs then runs, and the copy is removed once it has finished.
// If the copy is still there when the volume is next checked, the growth
// was interrupted: the saved blocks are written back, and so are the
// superblocks, descriptors and reserved descriptor blocks of every group,
// zeros included (see writeBackGeometry). That leaves the filesystem exactly
// as it was before the growth (its data were never touched), and the growth
// starts over. Writing back is idempotent, so a kill during the restore is
// handled the same way.

const (
	extMagicOffset = 1024 + 0x38 // s_magic within the device
	extUUIDOffset  = 1024 + 0x68 // s_uuid within the device
)

// extUndoPath is where the metadata copy for a volume's growth is kept, ""
// when growth runs unprotected (no state directory configured).
func (l Linux) extUndoPath(volumeID string) string {
	if l.undoDir == "" || volumeID == "" {
		return ""
	}
	return filepath.Join(l.undoDir, volumeID+".e2i")
}

// ForgetExtGrowth removes what an interrupted growth of the volume left:
// called when the volume is deleted, so that a later volume with the same
// ID never meets it (restoring checks the filesystem's UUID as well).
func (l Linux) ForgetExtGrowth(volumeID string) error {
	p := l.extUndoPath(volumeID)
	if p == "" {
		return nil
	}
	return durable.Remove(p, p+".tmp")
}

// UndoExtGrowth puts back the metadata of the volume's ext4 on dev if an
// offline growth of it was interrupted, and reports whether it did. Callers
// run it before anything else reads the filesystem.
func (l Linux) UndoExtGrowth(ctx context.Context, dev, volumeID string) (bool, error) {
	restored, err := restoreExtMetadata(ctx, dev, l.extUndoPath(volumeID))
	if restored {
		klog.InfoS("Undid an interrupted offline growth of an ext4", "device", dev, "volumeID", volumeID)
	}
	return restored, err
}

// saveExtMetadata copies the metadata blocks of the unmounted ext4 on dev
// to path, durably, before a growth.
func saveExtMetadata(ctx context.Context, dev, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := durable.Remove(tmp); err != nil {
		return err
	}
	if out, err := command.Output(ctx, "e2image", "-r", dev, tmp); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("e2image -r %s (saving its metadata before growing it): %v: %s", dev, err, out)
	}
	f, err := os.Open(tmp)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return durable.SyncDir(filepath.Dir(path))
}

// restoreExtMetadata writes back the metadata saved before a growth that
// did not finish, then removes the copy. It reports whether it restored
// anything. A copy of another filesystem (other UUID) is discarded unused.
func restoreExtMetadata(ctx context.Context, dev, path string) (bool, error) {
	if path == "" {
		return false, nil
	}
	if err := durable.Remove(path + ".tmp"); err != nil { // a save that never finished: nothing was grown
		return false, err
	}
	img, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer img.Close()
	d, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return false, err
	}
	defer d.Close()
	same, err := sameExtFilesystem(img, d)
	if err != nil {
		return false, err
	}
	if !same {
		klog.InfoS("Discarding saved ext4 metadata of another filesystem", "device", dev, "copy", path)
		return false, durable.Remove(path)
	}
	if err := writeBackExtents(img, d); err != nil {
		return false, fmt.Errorf("restoring the metadata of %s from %s: %w", dev, path, err)
	}
	if err := writeBackGeometry(ctx, img, d); err != nil {
		return false, fmt.Errorf("restoring the metadata of %s from %s: %w", dev, path, err)
	}
	if err := d.Sync(); err != nil {
		return false, err
	}
	return true, durable.Remove(path)
}

// sameExtFilesystem compares the saved copy's superblock with the device's:
// ext4 magic in the copy, same UUID (which a growth never changes).
func sameExtFilesystem(img, dev *os.File) (bool, error) {
	read := func(f *os.File, off int64, n int) ([]byte, error) {
		b := make([]byte, n)
		_, err := f.ReadAt(b, off)
		return b, err
	}
	magic, err := read(img, extMagicOffset, 2)
	if err != nil {
		return false, fmt.Errorf("reading the saved superblock: %w", err)
	}
	if magic[0] != 0x53 || magic[1] != 0xef {
		return false, nil
	}
	a, err := read(img, extUUIDOffset, 16)
	if err != nil {
		return false, err
	}
	b, err := read(dev, extUUIDOffset, 16)
	if err != nil {
		return false, err
	}
	return bytes.Equal(a, b), nil
}

// superblock and descriptor copies of a group, and the blocks reserved for
// descriptors, as dumpe2fs lists them.
var (
	groupCopiesRE = regexp.MustCompile(`superblock at (\d+), Group descriptors at (\d+)-(\d+)`)
	reservedGDTRE = regexp.MustCompile(`Reserved GDT blocks at (\d+)-(\d+)`)
	blockSizeRE   = regexp.MustCompile(`(?m)^Block size:\s+(\d+)`)
)

// writeBackGeometry writes back, from the copy, the superblock, the group
// descriptors and the reserved descriptor blocks of every group of the old
// filesystem, primary and backups, zeros included. e2image leaves out
// blocks that are all zeros, so the sparse copy alone cannot tell a zero
// metadata block from one it did not save; and a growth writes into
// exactly such blocks: the reserved descriptor blocks of a filesystem with
// a single group list no backups and are all zeros, until the growth adds
// the backups of the group it makes. dumpe2fs reads where they are from
// the copy itself, which holds the old filesystem's metadata.
func writeBackGeometry(ctx context.Context, img, dev *os.File) error {
	out, err := command.Output(ctx, "dumpe2fs", img.Name())
	if err != nil {
		return fmt.Errorf("dumpe2fs %s: %v", img.Name(), err)
	}
	m := blockSizeRE.FindSubmatch(out)
	if m == nil {
		return fmt.Errorf("dumpe2fs %s shows no block size", img.Name())
	}
	bs, _ := strconv.ParseInt(string(m[1]), 10, 64)
	var ranges [][2]int64 // first and last block
	for _, g := range groupCopiesRE.FindAllSubmatch(out, -1) {
		sb, _ := strconv.ParseInt(string(g[1]), 10, 64)
		last, _ := strconv.ParseInt(string(g[3]), 10, 64)
		ranges = append(ranges, [2]int64{sb, last})
	}
	for _, g := range reservedGDTRE.FindAllSubmatch(out, -1) {
		first, _ := strconv.ParseInt(string(g[1]), 10, 64)
		last, _ := strconv.ParseInt(string(g[2]), 10, 64)
		ranges = append(ranges, [2]int64{first, last})
	}
	if bs <= 0 || len(ranges) == 0 {
		return fmt.Errorf("dumpe2fs %s shows no superblock or descriptors", img.Name())
	}
	for _, r := range ranges {
		// A hole of the copy reads as zeros, which is what those blocks held.
		buf := make([]byte, (r[1]-r[0]+1)*bs)
		if _, err := img.ReadAt(buf, r[0]*bs); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if _, err := dev.WriteAt(buf, r[0]*bs); err != nil {
			return err
		}
	}
	return nil
}

// writeBackExtents writes every data range of the sparse file src (its
// holes are blocks e2image did not save) to the same offsets of dst.
func writeBackExtents(src, dst *os.File) error {
	fd := int(src.Fd())
	buf := make([]byte, 1<<20)
	var off int64
	for {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // no data after off
		}
		if err != nil {
			return err
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		for pos := start; pos < end; {
			n := min(int64(len(buf)), end-pos)
			if _, err := src.ReadAt(buf[:n], pos); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if _, err := dst.WriteAt(buf[:n], pos); err != nil {
				return err
			}
			pos += n
		}
		off = end
	}
}
