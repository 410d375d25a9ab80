package fscopy

import "os"

// ExtentIter lists the data extents of a file in order, for readers outside
// this package (the node-to-node transfer sends only these). Space that is
// allocated but unwritten reads as zeros and counts as a hole, as it does
// for a copy.
type ExtentIter struct {
	f     *os.File // kept so that the descriptor outlives the iterator
	spans *spanReader
}

// DataExtents lists f's data extents in [from, size), from FIEMAP where the
// filesystem has it, else from SEEK_DATA and SEEK_HOLE (which cannot tell
// unwritten extents from data). The first look syncs the file, as a copy's
// does.
func DataExtents(f *os.File, from, size int64) *ExtentIter {
	r := newSpanReader(int(f.Fd()), size)
	r.pos = max(from, 0)
	return &ExtentIter{f: f, spans: r}
}

// Next returns the next data extent, [off, end) with off < end, merged with
// its neighbours; ok is false after the last.
func (it *ExtentIter) Next() (off, end int64, ok bool, err error) {
	for {
		s, ok, err := it.spans.next()
		if err != nil || !ok {
			return 0, 0, false, err
		}
		if !s.unwritten {
			return s.off, s.end, true, nil
		}
	}
}
