package driver

import (
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
