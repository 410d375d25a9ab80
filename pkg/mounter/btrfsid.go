package mounter

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/command"
)

// A restored or cloned btrfs is a block-for-block copy of its source and so
// carries the source's filesystem ID (fsid). Kernels before 6.7 refuse to
// mount a second device with an fsid they know from a mounted one (EEXIST,
// "file exists"), so a copy gets an ID of its own before its first mount.
// btrfstune -M rewrites only the superblocks (the old ID stays in the
// metadata blocks as metadata_uuid): instant at any size.
//
// The new ID is derived from the volume's ID, so a retry after a restart in
// the middle of btrfstune asks for the same ID and the change converges.
// btrfstune works in two steps: it first sets a "changing fsid" flag in the
// superblocks, then writes the new ID and clears the flag. Killed between
// the two, it leaves a filesystem the kernel will not mount and that
// btrfs-progs before 6.5 refuse to touch again ("UUID rewrite in progress").
// For a copy that nothing has mounted, that flag is all the first step
// changed, so flashpv clears it itself and runs btrfstune again.

// btrfs superblock layout (struct btrfs_super_block, little endian).
const (
	btrfsSuperOffset = 64 << 10
	btrfsFsidOffset  = 0x20
	btrfsFlagsOffset = 0x38
	btrfsMagicOffset = 0x40
	btrfsMagic       = "_BHRfS_M"
	btrfsSuperSize   = 4096
	btrfsCsumStart   = 0x20  // the checksum covers the rest of the superblock
	btrfsCsumType    = 0xc4  // csum_type: 0 is crc32c
	btrfsLogRoot     = 0x60  // the log tree's root block; 0 when none
	btrfsIncompat    = 0xbc  // incompat_flags
	btrfsMetaUUID    = 0x23b // metadata_uuid
	// The incompat flag of a filesystem whose fsid differs from the ID in
	// its metadata blocks (metadata_uuid).
	btrfsMetadataUUID = 1 << 10
	// The superblock flag btrfstune sets while it changes the fsid.
	btrfsChangingFsid = 1 << 36
)

// btrfsFsidFor is the fsid a copied volume's btrfs gets: a version 4
// (random-looking) UUID made from the volume ID.
func btrfsFsidFor(volumeID string) [16]byte {
	sum := sha256.Sum256([]byte("flashpv btrfs fsid\x00" + volumeID))
	var id [16]byte
	copy(id[:], sum[:16])
	id[6] = id[6]&0x0f | 0x40
	id[8] = id[8]&0x3f | 0x80
	return id
}

func formatUUID(id [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", id[0:4], id[4:6], id[6:8], id[8:10], id[10:16])
}

// readBtrfsSuper returns the fsid and flags of the primary superblock.
func readBtrfsSuper(dev string) (fsid [16]byte, flags uint64, err error) {
	f, err := os.Open(dev)
	if err != nil {
		return fsid, 0, err
	}
	defer f.Close()
	sb := make([]byte, btrfsMagicOffset+len(btrfsMagic))
	if _, err := f.ReadAt(sb, btrfsSuperOffset); err != nil {
		return fsid, 0, fmt.Errorf("reading the btrfs superblock of %s: %w", dev, err)
	}
	if string(sb[btrfsMagicOffset:]) != btrfsMagic {
		return fsid, 0, errors.New("no btrfs superblock on " + dev)
	}
	copy(fsid[:], sb[btrfsFsidOffset:])
	return fsid, binary.LittleEndian.Uint64(sb[btrfsFlagsOffset:]), nil
}

// RenewBtrfsID gives the unmounted btrfs on dev, a copy made for volumeID,
// its own filesystem ID, unless it has it already.
func (Linux) RenewBtrfsID(ctx context.Context, dev, volumeID string) error {
	want := btrfsFsidFor(volumeID)
	fsid, flags, err := readBtrfsSuper(dev)
	if err != nil {
		return err
	}
	if fsid == want && flags&btrfsChangingFsid == 0 {
		return nil
	}
	if flags&btrfsChangingFsid != 0 {
		if err := clearChangingFsid(dev); err != nil {
			return fmt.Errorf("finishing an interrupted change of the btrfs ID on %s: %w", dev, err)
		}
		klog.InfoS("Cleared the flag of an interrupted btrfs ID change", "volumeID", volumeID, "device", dev)
	}
	id := formatUUID(want)
	if logged, err := btrfsNeedsLogReplay(dev); err != nil {
		return err
	} else if logged {
		// A copy of a btrfs that was not unmounted cleanly (a power cut,
		// a killed node) holds a log of fsynced writes to replay at its
		// first mount. btrfstune commits a transaction, after which the
		// kernel rejects that log ("parent transid verify failed") and
		// the copy no longer mounts: write the superblocks here instead,
		// as btrfstune -M would, without a transaction.
		if err := setBtrfsFsid(dev, want); err != nil {
			return fmt.Errorf("setting the btrfs ID of %s: %w", dev, err)
		}
		klog.V(2).InfoS("Copied btrfs given its own filesystem ID, its log kept for replay", "volumeID", volumeID, "device", dev, "fsid", id, "was", formatUUID(fsid))
		return nil
	}
	if out, err := command.Output(ctx, "btrfstune", "-M", id, dev); err != nil {
		return fmt.Errorf("btrfstune -M %s %s: %v: %s", id, dev, err, out)
	}
	klog.V(2).InfoS("Copied btrfs given its own filesystem ID", "volumeID", volumeID, "device", dev, "fsid", id, "was", formatUUID(fsid))
	return nil
}

// btrfsSuperOffsets are where btrfs keeps its superblock and its mirrors.
var btrfsSuperOffsets = []int64{btrfsSuperOffset, 64 << 20, 256 << 30}

// clearChangingFsid clears the changing-fsid flag in every superblock copy
// on dev that has it, with the checksum made again, and syncs dev.
func clearChangingFsid(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	crc := crc32.MakeTable(crc32.Castagnoli)
	for _, off := range btrfsSuperOffsets {
		if off+btrfsSuperSize > size {
			break
		}
		sb := make([]byte, btrfsSuperSize)
		if _, err := f.ReadAt(sb, off); err != nil {
			return err
		}
		flags := binary.LittleEndian.Uint64(sb[btrfsFlagsOffset:])
		if string(sb[btrfsMagicOffset:btrfsMagicOffset+len(btrfsMagic)]) != btrfsMagic || flags&btrfsChangingFsid == 0 {
			continue
		}
		if t := binary.LittleEndian.Uint16(sb[btrfsCsumType:]); t != 0 {
			return fmt.Errorf("superblock at %d has checksum type %d, not crc32c", off, t)
		}
		binary.LittleEndian.PutUint64(sb[btrfsFlagsOffset:], flags&^btrfsChangingFsid)
		clear(sb[:btrfsCsumStart])
		binary.LittleEndian.PutUint32(sb, crc32.Checksum(sb[btrfsCsumStart:], crc))
		if _, err := f.WriteAt(sb, off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// btrfsNeedsLogReplay tells whether the primary superblock of dev points to
// a log tree.
func btrfsNeedsLogReplay(dev string) (bool, error) {
	f, err := os.Open(dev)
	if err != nil {
		return false, err
	}
	defer f.Close()
	b := make([]byte, 8)
	if _, err := f.ReadAt(b, btrfsSuperOffset+btrfsLogRoot); err != nil {
		return false, fmt.Errorf("reading the btrfs superblock of %s: %w", dev, err)
	}
	return binary.LittleEndian.Uint64(b) != 0, nil
}

// setBtrfsFsid gives the unmounted btrfs on dev the fsid id by rewriting its
// superblocks only: the old ID becomes the metadata_uuid (unless there is
// one already), as btrfstune -M does. The mirrors go first, so that a kill
// in between leaves the primary as it was and a retry starts over.
func setBtrfsFsid(dev string, id [16]byte) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	crc := crc32.MakeTable(crc32.Castagnoli)
	for i := len(btrfsSuperOffsets) - 1; i >= 0; i-- {
		off := btrfsSuperOffsets[i]
		if off+btrfsSuperSize > size {
			continue
		}
		sb := make([]byte, btrfsSuperSize)
		if _, err := f.ReadAt(sb, off); err != nil {
			return err
		}
		if string(sb[btrfsMagicOffset:btrfsMagicOffset+len(btrfsMagic)]) != btrfsMagic {
			continue
		}
		if t := binary.LittleEndian.Uint16(sb[btrfsCsumType:]); t != 0 {
			return fmt.Errorf("superblock at %d has checksum type %d, not crc32c", off, t)
		}
		incompat := binary.LittleEndian.Uint64(sb[btrfsIncompat:])
		if incompat&btrfsMetadataUUID == 0 {
			// The metadata blocks and the device item keep the old ID.
			copy(sb[btrfsMetaUUID:btrfsMetaUUID+16], sb[btrfsFsidOffset:btrfsFsidOffset+16])
			binary.LittleEndian.PutUint64(sb[btrfsIncompat:], incompat|btrfsMetadataUUID)
		}
		copy(sb[btrfsFsidOffset:], id[:])
		clear(sb[:btrfsCsumStart])
		binary.LittleEndian.PutUint32(sb, crc32.Checksum(sb[btrfsCsumStart:], crc))
		if _, err := f.WriteAt(sb, off); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
	}
	return nil
}
