package tree

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrResume is a resumed stream or target that does not match the
// checkpoint it resumes from: what the target holds is not the prefix the
// checkpoint says, or the source no longer yields it. The caller starts
// over (it empties the target) rather than merging.
var ErrResume = errors.New("cannot resume the tree")

// Kinds of the last entry before a checkpoint.
const (
	// KindDir: a directory, which the stream is now in.
	KindDir = 'd'
	// KindFile: a regular file whose data may go on, from Offset.
	KindFile = 'f'
	// KindOther: a symlink, fifo or hard link, finished.
	KindOther = 'o'
)

// Checkpoint is a point of a resumable stream that the receiver verified
// and synced: the counts up to it and the last entry before it. A sender
// resumes after it (Options.From) by walking the same tree again.
type Checkpoint struct {
	Entries, DataBytes int64
	// Path is the last entry's ("" for the root), Kind what it is, Offset
	// where a KindFile's data goes on.
	Path   string
	Kind   byte
	Offset int64
}

// checkpointVersion heads a checkpoint's text: another layout is never
// taken for this one.
const checkpointVersion = 1

// maxCheckpointText bounds a checkpoint's text (its path is at most MaxPath).
const maxCheckpointText = 6 << 10

// String is the checkpoint as text (URL-safe base64, no padding), to keep
// in a volume's metadata and send in a request.
func (c Checkpoint) String() string {
	b := []byte{checkpointVersion}
	b = binary.BigEndian.AppendUint64(b, uint64(c.Entries))
	b = binary.BigEndian.AppendUint64(b, uint64(c.DataBytes))
	b = append(b, c.Kind)
	b = binary.BigEndian.AppendUint64(b, uint64(c.Offset))
	b = append(b, c.Path...)
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParseCheckpoint reads a checkpoint's text and checks it.
func ParseCheckpoint(s string) (Checkpoint, error) {
	var c Checkpoint
	if len(s) > maxCheckpointText {
		return c, fmt.Errorf("%w: a checkpoint of %d bytes", ErrResume, len(s))
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 26 || b[0] != checkpointVersion {
		return c, fmt.Errorf("%w: malformed checkpoint", ErrResume)
	}
	c.Entries = int64(binary.BigEndian.Uint64(b[1:9]))
	c.DataBytes = int64(binary.BigEndian.Uint64(b[9:17]))
	c.Kind = b[17]
	c.Offset = int64(binary.BigEndian.Uint64(b[18:26]))
	c.Path = string(b[26:])
	return c, c.check()
}

// check refuses a checkpoint no receiver records.
func (c Checkpoint) check() error {
	bad := func(what string) error { return fmt.Errorf("%w: checkpoint with %s", ErrResume, what) }
	switch {
	case c.Entries < 1 || c.Entries > MaxEntries:
		return bad(fmt.Sprintf("%d entries", c.Entries))
	case c.DataBytes < 0:
		return bad("negative data")
	case c.Kind != KindDir && c.Kind != KindFile && c.Kind != KindOther:
		return bad(fmt.Sprintf("kind %#x", c.Kind))
	case c.Offset < 0 || c.Offset > MaxFileSize || (c.Offset != 0 && c.Kind != KindFile):
		return bad(fmt.Sprintf("offset %d", c.Offset))
	case c.Path == "":
		if c.Kind != KindDir || c.Entries != 1 {
			return bad("the root as a last entry that is not the first")
		}
		return nil
	}
	if err := checkPath(c.Path); err != nil {
		return fmt.Errorf("%w: %v", ErrResume, err)
	}
	return nil
}

// Options chooses a stream's format, for Send and Receive alike.
type Options struct {
	// Checkpoints makes a resumable stream: checkpoint frames, each
	// hashing the frames since the one before, and entries of each
	// directory in name order.
	Checkpoints bool
	// From resumes after a checkpoint the receiver holds (with
	// Checkpoints only).
	From *Checkpoint
	// CheckpointBytes and CheckpointEntries space the sender's
	// checkpoints: one when either much stream or as many entries passed
	// since the last (0: the defaults).
	CheckpointBytes, CheckpointEntries int64
}

func (o Options) every() (bytes, entries int64) {
	bytes, entries = o.CheckpointBytes, o.CheckpointEntries
	if bytes <= 0 {
		bytes = checkpointBytes
	}
	if entries <= 0 {
		entries = checkpointEntries
	}
	return bytes, entries
}

func (o Options) check() error {
	if o.From != nil && !o.Checkpoints {
		return fmt.Errorf("%w: a resume point in a stream without checkpoints", ErrResume)
	}
	if o.From != nil {
		return o.From.check()
	}
	return nil
}
