package stream

import (
	"context"
	"sync"

	"golang.org/x/time/rate"
)

// Limiter bounds the bytes per second of all the transfers that share it
// (one per node). A nil Limiter does not limit.
type Limiter struct {
	r *rate.Limiter
}

// minBurst is the smallest burst: one whole data frame with its header, so
// that a frame never waits in pieces.
const minBurst = 1 + dataHdrLen + MaxFrame

// NewLimiter returns a limiter of bytesPerSecond, with a burst of an
// eighth of a second's bytes or one frame, whichever is larger: a stream
// that stalled for a segment's sync catches up instead of losing the time
// for good (with a one-frame burst, 256 MiB/s delivered 175 MB/s). nil (no
// limit) for bytesPerSecond <= 0.
func NewLimiter(bytesPerSecond int64) *Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return &Limiter{r: rate.NewLimiter(rate.Limit(bytesPerSecond), int(max(bytesPerSecond/8, minBurst)))}
}

// Wait blocks until n bytes may pass, or ctx is done.
func (l *Limiter) Wait(ctx context.Context, n int) error {
	if l == nil {
		return ctx.Err()
	}
	// WaitN refuses more than the burst at once.
	for b := l.r.Burst(); n > b; n -= b {
		if err := l.r.WaitN(ctx, b); err != nil {
			return err
		}
	}
	return l.r.WaitN(ctx, n)
}

// Slots bounds the transfers that run at once. A nil Slots does not bound.
type Slots struct {
	ch chan struct{}
}

// NewSlots returns n slots; nil (no bound) for n <= 0.
func NewSlots(n int) *Slots {
	if n <= 0 {
		return nil
	}
	return &Slots{ch: make(chan struct{}, n)}
}

// TryAcquire takes a slot if one is free, without waiting. release gives it
// back; calling it again does nothing.
func (s *Slots) TryAcquire() (release func(), ok bool) {
	if s == nil {
		return func() {}, true
	}
	select {
	case s.ch <- struct{}{}:
		return sync.OnceFunc(func() { <-s.ch }), true
	default:
		return nil, false
	}
}
