// Package stream moves a block image from one node to another over a
// connection: sparse (holes, unwritten extents and all-zero blocks of the
// source are not sent), verified (a CRC-32C per segment, checked before the
// segment is synced and committed) and resumable (a new connection starts at
// the first segment the target has not committed).
//
// The stream is a sequence of frames, all integers big-endian:
//
//	'D' data:        u64 offset, u32 length, length bytes
//	'S' segment end: u64 end offset, u32 CRC-32C
//	'E' end:         u64 size, u64 data bytes sent
//	'X' error:       u16 length, message
//
// A segment's hash covers, for each of its data frames in order, the frame's
// offset, length and data (the 12 bytes after the type byte and the
// payload). The checksum is there for what TLS cannot see: a frame lost,
// repeated or misplaced between the source's read and the target's write.
// Tampering on the wire is TLS's to catch (every record is authenticated),
// and a source node, which owns the data, could send anything anyway; so a
// cryptographic hash would only cost CPU (SHA-256 was a third of each
// side's). CRC-32C runs in the CPU's own instruction where it has one.
//
// A delta stream (SendDelta, ReceiveDelta) brings a target that holds an
// earlier state of the content up to date, with two more frames (delta.go).
//
// The receiver trusts nothing it reads: every offset and length is
// checked against the segment it expects before anything is read or written.
package stream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Errors.
var (
	// ErrProtocol is a stream that breaks the framing rules.
	ErrProtocol = errors.New("transfer stream protocol violation")
	// ErrChecksum is a segment whose data does not match its hash.
	ErrChecksum = errors.New("transfer stream checksum mismatch")
	// ErrSender is the sender reporting that it failed (its message is
	// in the error's text).
	ErrSender = errors.New("transfer sender failed")
	// ErrInvalid is a bad argument from the local caller.
	ErrInvalid = errors.New("invalid transfer stream argument")
)

const (
	// DefaultSegment is the unit of verification and resume.
	DefaultSegment = 64 << 20
	// MaxFrame is the largest data frame's payload.
	MaxFrame = 1 << 20
)

const (
	frameData    = 'D'
	frameSegment = 'S'
	frameEnd     = 'E'
	frameError   = 'X'

	// Sizes after the type byte.
	dataHdrLen = 8 + 4
	segmentLen = 8 + 4
	endLen     = 8 + 8
	errHdrLen  = 2
	maxHdrLen  = max(dataHdrLen, segmentLen, endLen, errHdrLen, zeroLen, checkedLen)

	// blockSize is the granularity of zero detection: a file system block,
	// aligned to the device offset.
	blockSize = 4 << 10
	// maxErrorSent bounds the message of an error frame as sent and as
	// reported by the receiver.
	maxErrorSent = 1 << 10
	// bufSize is the buffer on either side of the connection: large
	// enough that frame headers do not cost a write each.
	bufSize = 256 << 10
)

// Stats counts what a Send or Receive did.
type Stats struct {
	// DataBytes is data frames' payload.
	DataBytes int64
	// WireBytes is all frames' bytes.
	WireBytes int64
	// ZeroBytesSkipped is, for Send, data the source holds that was not
	// sent because it was all zeros; for Receive, the bytes of committed
	// segments that no data frame covered, zeroed in the target.
	ZeroBytesSkipped int64
	// Segments is the number of segments sent, or verified and committed.
	Segments int
	// For a delta: ZeroedBytes is what zero frames cover, UnchangedBytes
	// (Send only) the data read that matched the base and was not sent.
	ZeroedBytes, UnchangedBytes int64
}

// checkRange validates the arguments both ends share. from is where the
// target last committed: a segment boundary, or size once all is done.
func checkRange(size, from, seg int64) error {
	switch {
	case size < 0:
		return fmt.Errorf("%w: size %d", ErrInvalid, size)
	case seg <= 0:
		return fmt.Errorf("%w: segment size %d", ErrInvalid, seg)
	case from < 0 || from > size:
		return fmt.Errorf("%w: start %d outside [0, %d]", ErrInvalid, from, size)
	case from%seg != 0 && from != size:
		return fmt.Errorf("%w: start %d is not a multiple of the segment size %d", ErrInvalid, from, seg)
	}
	return nil
}

// segmentEnd is where the segment that starts at start ends.
func segmentEnd(start, size, seg int64) int64 {
	return start + min(seg, size-start)
}

// putDataHeader encodes a data frame's header into b (1+dataHdrLen bytes).
func putDataHeader(b []byte, off int64, n int) {
	b[0] = frameData
	binary.BigEndian.PutUint64(b[1:9], uint64(off))
	binary.BigEndian.PutUint32(b[9:13], uint32(n))
}

// castagnoli is the CRC-32C table of the segment checksums.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)
