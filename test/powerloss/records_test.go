//go:build powerloss

package powerloss

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"hash/fnv"
	"io"
	"os"
)

// A record is what the writers append: fixed size (one aligned block, so a
// Block volume takes it with O_DIRECT), numbered, and checksummed, so a
// record that is torn, stale, from another volume or out of place is told
// apart from a good one.
const recSize = 4096

var (
	recMagic = [8]byte{'F', 'P', 'V', 'R', 'E', 'C', 0, 1}
	castagn  = crc32.MakeTable(crc32.Castagnoli)
)

// volumeTag ties records to the volume (the writer's name) they were
// written for.
func volumeTag(name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return h.Sum64()
}

// fillRecord writes record seq of tag into b (recSize bytes).
func fillRecord(b []byte, tag uint64, seq int) {
	copy(b, recMagic[:])
	binary.LittleEndian.PutUint64(b[8:], tag)
	binary.LittleEndian.PutUint64(b[16:], uint64(seq))
	x := tag ^ uint64(seq)*0x9e3779b97f4a7c15 | 1
	for i := 24; i < recSize-4; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	binary.LittleEndian.PutUint32(b[recSize-4:], crc32.Checksum(b[:recSize-4], castagn))
}

// checkRecord says what is wrong with b as record seq of tag, or "".
func checkRecord(b []byte, tag uint64, seq int) string {
	switch {
	case len(b) < recSize:
		return fmt.Sprintf("record %d: only %d bytes", seq, len(b))
	case [8]byte(b[:8]) != recMagic:
		return fmt.Sprintf("record %d: no record there (starts % x)", seq, b[:8])
	case binary.LittleEndian.Uint32(b[recSize-4:]) != crc32.Checksum(b[:recSize-4], castagn):
		return fmt.Sprintf("record %d: checksum mismatch", seq)
	case binary.LittleEndian.Uint64(b[8:]) != tag:
		return fmt.Sprintf("record %d: written for another volume", seq)
	case binary.LittleEndian.Uint64(b[16:]) != uint64(seq):
		return fmt.Sprintf("record %d: holds record %d", seq, binary.LittleEndian.Uint64(b[16:]))
	}
	return ""
}

// verifyRecords checks that records 0..want-1 of tag are at the start of
// path (a file or a block device) and returns how many good records lead it.
func verifyRecords(path string, tag uint64, want int) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	b := make([]byte, recSize)
	good := 0
	for {
		if _, err := io.ReadFull(f, b); err != nil {
			if good < want {
				return good, fmt.Errorf("%s: %d of %d acknowledged records, then %v", path, good, want, err)
			}
			return good, nil
		}
		if msg := checkRecord(b, tag, good); msg != "" {
			if good < want {
				return good, fmt.Errorf("%s: %d of %d acknowledged records, then %s", path, good, want, msg)
			}
			return good, nil
		}
		good++
	}
}
