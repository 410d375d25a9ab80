package mounter

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
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

// btrfs superblock layout (struct btrfs_super_block, little endian).
const (
	btrfsSuperOffset = 64 << 10
	btrfsFsidOffset  = 0x20
	btrfsFlagsOffset = 0x38
	btrfsMagicOffset = 0x40
	btrfsMagic       = "_BHRfS_M"
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
	id := formatUUID(want)
	if out, err := command.Output(ctx, "btrfstune", "-M", id, dev); err != nil {
		return fmt.Errorf("btrfstune -M %s %s: %v: %s", id, dev, err, out)
	}
	klog.V(2).InfoS("Copied btrfs given its own filesystem ID", "volumeID", volumeID, "device", dev, "fsid", id, "was", formatUUID(fsid))
	return nil
}
