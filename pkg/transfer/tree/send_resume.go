package tree

import (
	"fmt"
	"os"

	"github.com/flashpv/flashpv/pkg/fscopy"
)

// A resumed Send walks the whole tree again, as the first attempt did, and
// sends nothing until it reaches its checkpoint (s.skip): the entries
// before it only count, and hard links are noted as they were.

// fileEntry sends a regular file's entry, or skips it, and returns where
// its data is to be sent from: 0, its size when the file comes before the
// checkpoint, or the checkpoint's offset when it is the checkpoint's.
func (s *sender) fileEntry(e entry, f *os.File) (int64, error) {
	if s.skip == nil {
		return 0, s.entry(e)
	}
	s.count(e.typ())
	if s.st.Entries < s.skip.Entries {
		return e.size, nil
	}
	off := s.skip.Offset
	if off > e.size {
		return 0, fmt.Errorf("%w: %s is %d bytes, shorter than %s", ErrResume, e.path, e.size, s.skip.describe())
	}
	below, err := dataBelow(f, e.size, off)
	if err != nil {
		return 0, fmt.Errorf("extents of %s: %w", e.path, err)
	}
	if err := s.reached(e.path, KindFile, below); err != nil {
		return 0, err
	}
	s.enc = e.encode(s.enc[:0])
	return off, s.frame(frameEntry, s.enc)
}

// dataBelow is the data f sends below off.
func dataBelow(f *os.File, size, off int64) (int64, error) {
	var n int64
	it := fscopy.DataExtents(f, 0, size)
	for {
		a, b, ok, err := it.Next()
		if err != nil || !ok || a >= min(size, off) {
			return n, err
		}
		n += min(b, size, off) - a
	}
}

// skipped takes an entry (KindDir or KindOther) the walk passed while it
// skips; at the checkpoint's, it resumes.
func (s *sender) skipped(path string, kind byte, data int64) error {
	if s.st.Entries < s.skip.Entries {
		return nil
	}
	return s.reached(path, kind, data)
}

// reached checks that the walk's last entry and counts are the
// checkpoint's (more data than counted yet: a resumed file's below its
// offset), then sends the entries of the directories it is in again, the
// root first, and sends from now on.
func (s *sender) reached(path string, kind byte, more int64) error {
	c := s.skip
	if path != c.Path || kind != c.Kind || s.st.DataBytes+more != c.DataBytes {
		return fmt.Errorf("%w: the source has %s %q after %d entries and %d data bytes, not %s",
			ErrResume, kindName(kind), path, s.st.Entries, s.st.DataBytes+more, c.describe())
	}
	s.skip = nil
	s.cpEntries = s.st.Entries
	for _, d := range s.dirs {
		s.enc = d.encode(s.enc[:0])
		if err := s.frame(frameEntry, s.enc); err != nil {
			return err
		}
	}
	return nil
}

func (c *Checkpoint) describe() string {
	return fmt.Sprintf("the checkpoint after %s %q (%d entries, %d data bytes)", kindName(c.Kind), c.Path, c.Entries, c.DataBytes)
}

func kindName(k byte) string {
	switch k {
	case KindDir:
		return "directory"
	case KindFile:
		return "file"
	}
	return "entry"
}
