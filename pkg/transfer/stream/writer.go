package stream

import (
	"fmt"
)

// writeBuffers is how many data frames may wait for the target's writes:
// enough that the connection keeps flowing through a segment's sync (tens
// of milliseconds at a few hundred MB/s), at MaxFrame bytes each.
const writeBuffers = 16

// writeOp is one step of the target's writes, in stream order: a data
// frame's bytes (after zeroing the gap before them), or the end of a
// verified segment (zero what is left of it, sync, commit).
type writeOp struct {
	gap  int64  // zero [gap, off) first
	off  int64  // where buf goes, or the segment's end
	buf  []byte // nil: the end of a segment
	free []byte // the whole buffer buf is in, to hand back
}

// writer applies a receiver's writeOps on a goroutine of its own, so that
// the connection is read while the target writes and syncs. After its
// first failure it applies nothing more but still hands buffers back, so
// that the reader never waits on it for ever.
type writer struct {
	dst    BlockTarget
	commit func(next int64) error
	ops    chan writeOp
	free   chan []byte
	failed chan struct{} // closed with err set
	done   chan struct{} // closed when ops is closed and drained
	err    error
	made   int // buffers allocated; the reader's alone
	// Counted here, added to the receiver's Stats at the end.
	zeroed   int64
	segments int
}

func startWriter(dst BlockTarget, commit func(next int64) error) *writer {
	w := &writer{
		dst:    dst,
		commit: commit,
		ops:    make(chan writeOp, writeBuffers),
		free:   make(chan []byte, writeBuffers),
		failed: make(chan struct{}),
		done:   make(chan struct{}),
	}
	go w.run()
	return w
}

func (w *writer) run() {
	defer close(w.done)
	for op := range w.ops {
		if w.err == nil {
			if w.err = w.apply(op); w.err != nil {
				close(w.failed)
			}
		}
		if op.free != nil {
			w.free <- op.free
		}
	}
}

func (w *writer) apply(op writeOp) error {
	if err := w.zero(op.gap, op.off); err != nil {
		return err
	}
	if op.buf == nil {
		if err := w.dst.Sync(); err != nil {
			return fmt.Errorf("syncing target: %w", err)
		}
		if w.commit != nil {
			if err := w.commit(op.off); err != nil {
				return fmt.Errorf("committing %d: %w", op.off, err)
			}
		}
		w.segments++
		return nil
	}
	if _, err := w.dst.WriteAt(op.buf, op.off); err != nil {
		return fmt.Errorf("writing target at %d: %w", op.off, err)
	}
	return nil
}

// zero zeroes [a, b) of the target, which no data frame covers.
func (w *writer) zero(a, b int64) error {
	if a >= b {
		return nil
	}
	if err := w.dst.Zero(a, b-a); err != nil {
		return fmt.Errorf("zeroing target [%d, %d): %w", a, b, err)
	}
	w.zeroed += b - a
	return nil
}

// buffer returns a free buffer, allocated on first need, up to
// writeBuffers of them (so that a stream that stops early costs little);
// then it waits for one. It fails once the writer has.
func (w *writer) buffer() ([]byte, error) {
	select {
	case b := <-w.free:
		return b, nil
	default:
	}
	if w.made < writeBuffers {
		w.made++
		return make([]byte, MaxFrame), nil
	}
	select {
	case b := <-w.free:
		return b, nil
	case <-w.failed:
		return nil, w.err
	}
}

// send queues op; it fails once the writer has.
func (w *writer) send(op writeOp) error {
	select {
	case w.ops <- op:
		return nil
	case <-w.failed:
		if op.free != nil {
			w.free <- op.free
		}
		return w.err
	}
}

// stop waits for the queued writes and returns the writer's error, if any.
func (w *writer) stop() error {
	close(w.ops)
	<-w.done
	return w.err
}
