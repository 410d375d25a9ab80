package driver

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// keyLocks is the set of volume IDs and names with an operation in flight.
// A second operation on the same key is answered Aborted rather than queued:
// the CO retries, and a stuck operation cannot pile up callers behind it.
type keyLocks struct {
	mu   sync.Mutex
	busy map[string]struct{}

	// Operations that may outlive their calls (detach): end ends them.
	detached sync.WaitGroup
	end      context.Context
	stop     context.CancelFunc
}

func newKeyLocks() *keyLocks {
	l := &keyLocks{busy: map[string]struct{}{}}
	l.end, l.stop = context.WithCancel(context.Background())
	return l
}

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
// which both sidecars retry) and, once op is done, what it made. op ends
// with the driver (see endDetached): a restart ends a copy like any other
// call, and the retry starts it over.
func (l *keyLocks) detach(ctx context.Context, op func(context.Context) error) error {
	opCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	unhook := context.AfterFunc(l.end, cancel)
	done := make(chan error, 1)
	l.detached.Add(1)
	go func() {
		defer l.detached.Done()
		defer cancel()
		defer unhook()
		done <- op(opCtx)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("%w: the copy goes on after this call's end (%v); a retry answers once it is done", errAborted, ctx.Err())
	}
}

// endDetached gives the operations that outlived their calls until
// deadline to finish, then ends them (a staged filesystem frozen for a
// copy is thawed at once) and waits for them to return: a driver that
// stops must not leave a filesystem frozen behind it.
func (l *keyLocks) endDetached(deadline time.Time) {
	all := make(chan struct{})
	go func() { l.detached.Wait(); close(all) }()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-all:
		return
	case <-t.C:
	}
	klog.InfoS("Stopping: ending copies still in flight")
	l.stop()
	<-all
}
