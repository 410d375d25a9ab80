package driver

import (
	"context"
	"fmt"
	"sync"
)

// keyLocks is the set of volume IDs and names with an operation in flight.
// A second operation on the same key is answered Aborted rather than queued:
// the CO retries, and a stuck operation cannot pile up callers behind it.
type keyLocks struct {
	mu   sync.Mutex
	busy map[string]struct{}
}

func newKeyLocks() *keyLocks { return &keyLocks{busy: map[string]struct{}{}} }

// acquire marks key busy and returns its release, or errAborted.
func (l *keyLocks) acquire(key string) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.busy[key]; ok {
		return nil, fmt.Errorf("%w: an operation on %s is already in progress", errAborted, key)
	}
	l.busy[key] = struct{}{}
	return func() {
		l.mu.Lock()
		delete(l.busy, key)
		l.mu.Unlock()
	}, nil
}

// detach runs op, the slow part of a create (a copy of data), so that it
// ends as if its caller had waited. The provisioner and the snapshotter
// give a call minutes at most (csi-provisioner's and csi-snapshotter's
// --timeout) and then retry it: a copy cut short at every try would start
// over for ever. op keeps ctx's values but not its end, and holds the locks
// it takes until it returns; the call answers when op is done or ctx ends,
// whichever is first. A retry meanwhile finds op's locks taken (Aborted,
// which both sidecars retry) and, once op is done, what it made. A restart
// of flashpv ends op like any other call: the retry starts the copy over.
func detach(ctx context.Context, op func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- op(context.WithoutCancel(ctx)) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: the copy goes on after this call's end (%v); a retry answers once it is done", errAborted, ctx.Err())
	}
}
