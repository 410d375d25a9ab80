// Package tree moves a directory tree from one node to another over a
// connection: a quota pool's snapshot or volume into the directory of a new
// volume of another node's quota pool. It keeps what fscopy.Tree keeps of a
// local copy (directories, regular files with their holes, symlinks, hard
// links, fifos; owners, modes with their set-ID bits, times, extended
// attributes), verifies everything with SHA-256, and trusts nothing the
// sender says: every entry is created beneath the target directory,
// relative to directory descriptors resolved with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), never through a symlink,
// never twice, never as a device node or socket.
//
// The stream is a sequence of frames: a type byte, a u32 payload length (at
// most MaxFrame) and the payload; integers are big-endian.
//
//	'N' entry:      u32 st_mode (type and permission bits), u32 uid, u32 gid,
//	                i64 atime s, u32 atime ns, i64 mtime s, u32 mtime ns,
//	                u64 size (a regular file's; 0 otherwise),
//	                u16 path length, path, u16 link length, link (a symlink's target),
//	                u16 xattr count, per xattr: u8 name length, name, u32 value length, value
//	'H' hardlink:   u16 path length, path, u16 length, the path of an earlier entry
//	'D' data:       u64 offset, bytes of the regular file of the entry before
//	'C' checkpoint: u64 entries, u64 data bytes, the SHA-256 of the frames since
//	                the last checkpoint (resumable streams only)
//	'E' end:        u64 entries, u64 data bytes, the SHA-256 of the frames since
//	                the last checkpoint, or of every frame before it
//	'X' error:      a message: the sender failed
//
// The first frame is the root directory's entry, with the empty path. Then
// entries come depth first, a directory before what it holds: an entry's
// directory is the root or a directory entry whose subtree the stream is
// still in (the previous entry, or one of its ancestors). Paths are relative,
// without empty, "." or ".." components. A regular file's data frames follow
// its entry, in order, without overlaps, within its size; what they leave out
// is a hole. Entries and hard links count as entries.
//
// A resumable stream (Options.Checkpoints) also sends the entries of each
// directory in name order, and a checkpoint frame between any two frames
// every 64 MiB of stream or 4096 entries. At a checkpoint the receiver
// checks the counts and the hash, syncs the filesystem and reports the
// Checkpoint: the counts and the last entry (and how far its data went).
// The walk is the same every time for a tree that does not change (a
// snapshot), so a sender asked to resume after a checkpoint walks again,
// sends nothing up to it (it still counts, and notes hard links), checks
// that its own counts and last entry there are the checkpoint's, then
// sends the root's entry and the entries of the directories the
// checkpoint is in again, the last entry too if it is a regular file
// whose data goes on, and everything after. The receiver first removes
// what the cut attempt made after the checkpoint (in walk order: names
// after the checkpoint's path in each directory on it), takes those
// entries back (nothing else may come before them), and goes on; what it
// finds not as it left it fails the resume (ErrResume), and the caller
// starts over. A stream without checkpoints is never resumed: a receiver
// that was cut short is emptied and starts over (fscopy.EmptyDir).
package tree

import (
	"errors"
	"fmt"
	"strings"

	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

// ErrUnsupported is an entry flashpv does not copy between nodes: a device
// node or a socket. It names the entry.
var ErrUnsupported = errors.New("not copied between nodes")

// Errors shared with the block stream: stream.ErrProtocol for a stream
// that breaks the rules above, stream.ErrChecksum for a hash that does not
// match, stream.ErrSender for the sender's own failure, stream.ErrInvalid
// for a bad argument of the local caller.
var (
	errProtocol = stream.ErrProtocol
	errChecksum = stream.ErrChecksum
)

// Bounds of what a stream may hold.
const (
	// MaxFrame is the largest frame payload.
	MaxFrame = 1 << 20
	// MaxPath is the longest path, MaxName the longest component.
	MaxPath = 4096
	MaxName = 255
	// MaxLink is the longest symlink target (PATH_MAX less its NUL).
	MaxLink = 4095
	// MaxXattrName and MaxXattrValue are the kernel's own limits;
	// MaxXattrs bounds an entry's attributes.
	MaxXattrName  = 255
	MaxXattrValue = 64 << 10
	MaxXattrs     = 1024
	// MaxEntries bounds the entries of a stream, MaxFileSize a file's size.
	MaxEntries  = 1 << 26
	MaxFileSize = 1 << 60
)

const (
	frameEntry      = 'N'
	frameLink       = 'H'
	frameData       = 'D'
	frameEnd        = 'E'
	frameError      = 'X'
	frameCheckpoint = 'C'

	// frameHdrLen is the type byte and the length.
	frameHdrLen = 1 + 4
	// endLen is the end frame's payload, and a checkpoint's.
	endLen = 8 + 8 + 32
	// dataChunk is the most data a sender puts in one frame: aligned
	// writes, well within MaxFrame.
	dataChunk = 512 << 10
	// maxErrorShown bounds the sender's message as sent and as reported.
	maxErrorShown = 1 << 10
	// bufSize is the buffer on either side of the connection.
	bufSize = 256 << 10
	// progressEvery is how many stream bytes pass between progress calls
	// in a stream without checkpoints.
	progressEvery = 64 << 20
	// checkpointBytes and checkpointEntries space a sender's checkpoints.
	checkpointBytes   = 64 << 20
	checkpointEntries = 4096
)

// Stats counts what a Send or Receive did.
type Stats struct {
	// Entries counts every entry and hard link, the root included.
	Entries                                 int64
	Dirs, Files, Symlinks, HardLinks, Fifos int64
	// DataBytes is the regular files' data sent (holes are not).
	DataBytes int64
	// WireBytes is all frames' bytes.
	WireBytes int64
}

// xattrPrefixes are the kernel's extended attribute namespaces.
var xattrPrefixes = []string{"user.", "trusted.", "security.", "system."}

// checkPath refuses a path that is not a clean relative path within the
// bounds: no leading '/', no empty, "." or ".." component, no NUL.
func checkPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("%w: empty path", errProtocol)
	case len(p) > MaxPath:
		return fmt.Errorf("%w: path of %d bytes", errProtocol, len(p))
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("%w: path %q holds a NUL byte", errProtocol, p)
	case p[0] == '/':
		return fmt.Errorf("%w: absolute path %q", errProtocol, p)
	}
	for c := range strings.SplitSeq(p, "/") {
		switch {
		case c == "" || c == "." || c == "..":
			return fmt.Errorf("%w: path %q has a component %q", errProtocol, p, c)
		case len(c) > MaxName:
			return fmt.Errorf("%w: path %q has a component of %d bytes", errProtocol, p, len(c))
		}
	}
	return nil
}

// split cuts a checked path into its directory ("" for the root) and name.
func split(p string) (dir, name string) {
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return "", p
	}
	return p[:i], p[i+1:]
}

// checkXattrName refuses a name outside the kernel's namespaces or bounds.
func checkXattrName(n string) error {
	if n == "" || len(n) > MaxXattrName || strings.IndexByte(n, 0) >= 0 {
		return fmt.Errorf("%w: extended attribute name %q", errProtocol, n)
	}
	for _, p := range xattrPrefixes {
		if strings.HasPrefix(n, p) && len(n) > len(p) {
			return nil
		}
	}
	return fmt.Errorf("%w: extended attribute %q is in no namespace", errProtocol, n)
}
