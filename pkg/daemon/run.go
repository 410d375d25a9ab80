// Package daemon is what both flashpv commands, the node plugin and
// `flashpv controller`, share as long-running processes: one way to run
// their parts together (Run) and one /healthz and /metrics server
// (Handler, Serve).
//
// How a command stops, the same for both: every task runs until the
// context ends (SIGTERM), and returns nil when it stops because of it.
// The first task to end before that ends them all: Run cancels the
// others, waits until every one has returned, and returns why the first
// one ended, prefixed with its name. Ending with an error is the obvious
// case; ending with nil while the context is live is one too
// (ErrEndedEarly), because a process one of whose parts quietly stopped
// (a server, a sync loop) looks alive to its liveness probe but no longer
// does its work, and only a restart brings the part back. A task marked
// MayFinish is the exception: its nil means its work is done, and the
// others go on. An error is an error whenever it comes, also while
// stopping; errors after the first are logged, not returned.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"k8s.io/klog/v2"
)

// ErrEndedEarly is why Run stopped when a task returned nil before the
// context ended without being allowed to (Task.MayFinish).
var ErrEndedEarly = errors.New("ended before the process was stopped")

// Task is one long-running part of a command.
type Task struct {
	// Name says which part ended, in Run's error and the log.
	Name string
	// Run does the work until ctx ends.
	Run func(ctx context.Context) error
	// MayFinish lets Run return nil before ctx ends without stopping the
	// others.
	MayFinish bool
}

// Run runs tasks until ctx ends or one of them ends; see the package
// comment for the rule. It returns only once every task has returned.
func Run(ctx context.Context, tasks ...Task) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	for _, t := range tasks {
		wg.Go(func() {
			err := t.Run(ctx)
			// Under the lock, so that a task returning nil because the
			// first one cancelled it is not taken for one ending early.
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				err = fmt.Errorf("%s: %w", t.Name, err)
			case ctx.Err() == nil && !t.MayFinish:
				err = fmt.Errorf("%s: %w", t.Name, ErrEndedEarly)
			default:
				return
			}
			if first != nil {
				klog.ErrorS(err, "Another task failed while stopping", "task", t.Name)
				return
			}
			first = err
			cancel(err)
		})
	}
	wg.Wait()
	return first
}
